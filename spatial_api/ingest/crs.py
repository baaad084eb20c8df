"""Coordinate reference systems on ingestion: parsing ``--crs``, labels, reprojection to CGCS2000.

Everything is stored in EPSG:4490 (CGCS2000 lon/lat, 2D). Reprojection runs on whole coordinate
arrays (``shapely.get_coordinates`` → ``pyproj`` in place, split over a few threads since PROJ
releases the GIL → ``shapely.set_coordinates``), never feature by feature.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from .types import IngestError

TARGET_EPSG = 4490
TARGET = CRS.from_epsg(TARGET_EPSG)
TARGET_LABEL = "EPSG:4490"

CRS_EXAMPLE = (
    "e.g. --crs EPSG:4547 (CGCS2000 3-degree Gauss-Kruger CM 114E, metres), --crs EPSG:4490 "
    "(CGCS2000 lon/lat), or a PROJ string / WKT for a custom grid such as "
    "--crs \"+proj=tmerc +lat_0=0 +lon_0=114 +k=1 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m\""
)

#: Below this many coordinates threads are not worth starting.
_PARALLEL_MIN = 200_000


def parse_crs_option(value: str | int) -> CRS:
    """The CRS named by a ``--crs`` value ("EPSG:4547", "4547", PROJ string, WKT, ...)."""
    text = str(value).strip()
    if not text:
        raise IngestError(f"--crs is empty; give a coordinate reference system, {CRS_EXAMPLE}.")
    try:
        return CRS.from_user_input(int(text) if text.isdigit() else text)
    except (CRSError, ValueError, TypeError) as exc:
        raise IngestError(
            f"--crs {text!r} is not a coordinate reference system PROJ understands ({exc}). "
            f"Give an EPSG code or a definition, {CRS_EXAMPLE}."
        ) from None


def crs_label(crs: CRS, given: str | None = None) -> str:
    """A short human-readable name: "EPSG:4547" when the CRS has an authority code."""
    try:
        auth = crs.to_authority(min_confidence=90)
    except CRSError:
        auth = None
    if auth:
        return f"{auth[0]}:{auth[1]}"
    if crs.name and crs.name.lower() != "unknown":
        return crs.name
    return (given or crs.to_string()).strip()


def as_2d(crs: CRS) -> CRS:
    """The horizontal part of a 3D / compound CRS."""
    try:
        return crs.to_2d()
    except CRSError:  # pragma: no cover - exotic definitions
        return crs


def transformer_to_target(src: CRS) -> Transformer | None:
    """A lon/lat-ordered transformer from ``src`` to EPSG:4490, or None if it is a no-op."""
    tr = Transformer.from_crs(as_2d(src), TARGET, always_xy=True)
    if tr.definition.strip().startswith("proj=noop"):
        return None
    return tr


def _chunks(n: int, parts: int) -> list[slice]:
    return [slice(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def apply_xy(geoms: np.ndarray, coords: np.ndarray, fn) -> tuple[np.ndarray, int]:
    """New geometries with every coordinate passed through ``fn(x, y) -> (x, y)``.

    ``coords`` is ``shapely.get_coordinates(geoms)`` (2D). Large arrays are split by rows over
    a few threads (PROJ, numpy and most of GEOS run without the GIL). Returns the geometries
    and the index in ``coords`` of the first coordinate that came out non-finite (-1 if none).
    """
    workers = min(4, os.cpu_count() or 1)

    def part(rows: slice, lo: int, hi: int) -> tuple[np.ndarray, int]:
        x = np.ascontiguousarray(coords[lo:hi, 0])
        y = np.ascontiguousarray(coords[lo:hi, 1])
        x, y = fn(x, y)
        bad = ~(np.isfinite(x) & np.isfinite(y))
        first = lo + int(np.flatnonzero(bad)[0]) if bad.any() else -1
        return shapely.set_coordinates(geoms[rows].copy(), np.column_stack([x, y])), first

    if len(coords) < _PARALLEL_MIN or workers < 2:
        return part(slice(0, len(geoms)), 0, len(coords))
    bounds = np.concatenate([[0], np.cumsum(shapely.get_num_coordinates(geoms))])
    jobs = [(s, int(bounds[s.start]), int(bounds[s.stop])) for s in _chunks(len(geoms), workers)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: part(*job), jobs))
    firsts = [f for _, f in results if f >= 0]
    return np.concatenate([g for g, _ in results]), (min(firsts) if firsts else -1)


def proj_fn(tr: Transformer):
    """``fn`` for :func:`apply_xy` that runs a pyproj transformer in place."""

    def fn(x: np.ndarray, y: np.ndarray):
        tr.transform(x, y, inplace=True)
        return x, y

    return fn


def parallel_map(func, arr: np.ndarray, min_size: int = 50_000) -> np.ndarray:
    """``func`` (a vectorised shapely predicate) over ``arr`` in a few threads."""
    workers = min(4, os.cpu_count() or 1)
    if len(arr) < min_size or workers < 2:
        return func(arr)
    with ThreadPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(func, [arr[s] for s in _chunks(len(arr), workers)])))
