"""Writing vector layers: typed columns (real Date fields) through pyarrow + pyogrio."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyogrio
import shapely

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON"}


def _column(values: pd.Series) -> pa.Array:
    if pd.api.types.is_bool_dtype(values):
        return pa.array(values.to_numpy(), pa.bool_())
    if pd.api.types.is_integer_dtype(values):
        return pa.array(values.to_numpy(), pa.int64())
    if pd.api.types.is_float_dtype(values):
        return pa.array(values.to_numpy(dtype=float), pa.float64())
    vals = values.tolist()
    present = [v for v in vals if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if present and all(isinstance(v, date) for v in present):
        return pa.array([v if isinstance(v, date) else None for v in vals], pa.date32())
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else int(v) for v in vals], pa.int64())
    if present and all(isinstance(v, (float, int, np.floating, np.integer)) for v in present):
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in vals],
                    pa.string())


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Clean polygon geometries: valid, only polygon parts, slivers (< 0.5 m²) dropped; a
    single remaining part becomes a Polygon."""
    g = shapely.make_valid(geoms)
    parts, idx = shapely.get_parts(g, return_index=True)
    # GeometryCollections may nest MultiPolygons
    parts2, j = shapely.get_parts(parts, return_index=True)
    idx = idx[j]
    ok = (shapely.get_type_id(parts2) == 3) & (shapely.area(parts2) >= 0.5)
    parts2, idx = parts2[ok], idx[ok]
    out = np.empty(geoms.size, dtype=object)
    counts = np.bincount(idx, minlength=geoms.size)
    single = counts[idx] == 1
    out[idx[single]] = parts2[single]
    multi = np.flatnonzero(counts > 1)
    if multi.size:
        out[multi] = shapely.multipolygons(parts2[~single], indices=np.searchsorted(multi, idx[~single]))
    empty = counts == 0
    if empty.any():  # keep the row; the largest area of the original (rare, tiny pieces)
        out[empty] = shapely.buffer(shapely.centroid(geoms[empty]), 0.5, quad_segs=2)
    return out


def stable_under_cgcs2000(geoms: np.ndarray, crs: str = "EPSG:4547") -> np.ndarray:
    """Polygons that stay valid once reprojected to CGCS2000 (EPSG:4490), as the ingestion
    does: near-touching vertices (slivers a few centimetres wide) are opened up a little."""
    from pyproj import Transformer

    tr = Transformer.from_crs(crs, "EPSG:4490", always_xy=True)

    def to_geo(xy):
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out = np.asarray(geoms, dtype=object).copy()
    for eps in (0.05, 0.2, 0.5):
        bad = np.flatnonzero(~shapely.is_valid(shapely.transform(out, to_geo)))
        if bad.size == 0:
            break
        fixed = shapely.buffer(shapely.buffer(out[bad], -eps, join_style="mitre"), eps, join_style="mitre")
        fixed = polygonal(shapely.simplify(fixed, eps))
        out[bad] = fixed
    return out


def write_layer(path: Path, frame: pd.DataFrame, geoms: np.ndarray, *, layer: str, crs: str,
                geometry_type: str | None = None, encoding: str | None = None) -> dict:
    """Write one layer to its own file. Returns a small description (count, type, fields)."""
    path = Path(path)
    driver = DRIVERS[path.suffix.lower()]
    if path.exists():
        if driver == "ESRI Shapefile":
            for p in path.parent.glob(path.stem + ".*"):
                p.unlink()
        else:
            path.unlink()
    geoms = np.asarray(geoms, dtype=object)
    types = set(shapely.get_type_id(geoms).tolist())
    if types <= {3, 6} and crs != "EPSG:4490":
        geoms = stable_under_cgcs2000(geoms, crs)
        types = set(shapely.get_type_id(geoms).tolist())
    if geometry_type is None:
        if types <= {3}:
            geometry_type = "Polygon"
        elif types <= {3, 6}:
            geometry_type = "MultiPolygon"
            geoms = np.array([shapely.MultiPolygon([g]) if g.geom_type == "Polygon" else g for g in geoms],
                             dtype=object)
        elif types <= {0}:
            geometry_type = "Point"
        elif types <= {1}:
            geometry_type = "LineString"
        elif types <= {1, 5}:
            geometry_type = "MultiLineString"
            geoms = np.array([shapely.MultiLineString([g]) if g.geom_type == "LineString" else g for g in geoms],
                             dtype=object)
        else:
            raise ValueError(f"{layer}: mixed geometry types {types}")
    cols = {c: _column(frame[c]) for c in frame.columns}
    cols["geometry"] = pa.array(shapely.to_wkb(geoms, output_dimension=2), pa.binary())
    table = pa.table(cols)
    kw = {}
    if driver == "ESRI Shapefile":
        kw["encoding"] = encoding or "UTF-8"
    # a fixed timestamp in gpkg_contents keeps the files byte-identical between builds, so
    # re-loading an unchanged demo is recognised by the ingestion (same file hash)
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2026-06-30T00:00:00Z"})
    try:
        pyogrio.write_arrow(table, str(path), layer=layer, driver=driver, geometry_name="geometry",
                            geometry_type=geometry_type, crs=crs, **kw)
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    return {"count": int(len(frame)), "geometry_type": geometry_type, "fields": list(frame.columns)}
