"""Data passed from the readers (files) to the ingestion orchestrator and the store.

A reader turns any supported file into a :class:`PreparedBatch`: properties in a
pandas DataFrame, geometries as a numpy array of shapely geometries already in
CGCS2000 (EPSG:4490), plus what validation did (repaired / rejected rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from spatial_api.store.types import GEOMETRY_FAMILIES, PROPERTY_TYPES, StoreError  # noqa: F401  (the store's words)

#: The command-line flag that sets each subject of a StoreError.
CLI_FLAGS = {"access level": "--access", "mode": "--mode", "layer name": "--layer", "valid from": "--valid-from",
             "kind": "--kind", "collection id": "--collection", "item id": "--item-id", "key": "--key"}


class IngestError(Exception):
    """An error the user caused: the message names the file, row or parameter and the fix."""

    @classmethod
    def from_store(cls, exc: StoreError) -> "IngestError":
        """The store's refusal in the command line's words: the flag to use in front."""
        flag = CLI_FLAGS.get(exc.subject or "")
        text = str(exc)
        if flag and exc.subject and text.startswith(exc.subject):
            text = flag + text[len(exc.subject):]
        elif flag:
            text = f"{text} ({flag})"
        return cls(text)


def in_cli_words(fn):
    """Decorator: a StoreError raised inside ``fn`` comes out as an IngestError naming the flag."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            raise IngestError.from_store(exc) from exc
    return wrapper


@dataclass
class Rejected:
    row: int  # 1-based feature / row number in the source file
    reason: str
    key: str | None = None  # the key value, if known
    properties: dict | None = None  # the row's attribute values, if they could be read


@dataclass
class PreparedBatch:
    source: str  # the path as the user gave it
    source_layer: str | None  # the layer inside a multi-layer file
    source_crs: str  # human-readable CRS the file was read as ("EPSG:4547", "GCJ-02", ...)
    geometry_family: str  # one of GEOMETRY_FAMILIES
    schema: dict[str, str]  # property name -> one of PROPERTY_TYPES (file order)
    properties: pd.DataFrame  # one row per accepted feature, columns = schema keys
    geometry: np.ndarray  # shapely geometries in EPSG:4490, same length as properties
    rows: np.ndarray  # 1-based source row number of each accepted feature
    repaired: list[int] = field(default_factory=list)  # rows whose geometry was repaired
    rejected: list[Rejected] = field(default_factory=list)  # rows left out (empty geometry ...)
    encoding: str | None = None  # text encoding used (shapefiles)

    def __len__(self) -> int:
        return len(self.geometry)
