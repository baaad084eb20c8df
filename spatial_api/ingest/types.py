"""Data passed from the readers (files) to the ingestion orchestrator and the store.

A reader turns any supported file into a :class:`PreparedBatch`: properties in a
pandas DataFrame, geometries as a numpy array of shapely geometries already in
CGCS2000 (EPSG:4490), plus what validation did (repaired / rejected rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Property types known to the layer registry.
PROPERTY_TYPES = ("string", "integer", "number", "boolean", "date", "datetime")

#: Geometry families a layer can hold (multi-part variants belong to the family).
GEOMETRY_FAMILIES = ("Point", "LineString", "Polygon")


class IngestError(Exception):
    """An error the user caused: the message names the file, row or parameter and the fix."""


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
