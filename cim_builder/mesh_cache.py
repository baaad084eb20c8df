"""The clash check's placed mesh of a registered BIM model, cached beside its stored IFC copy
(cim_builder.clash reads it; cim_builder.ifc.register writes it), in a module of its own so that the
registration need not import the clash check."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import shapely

from cim_builder.geo import DEFAULT_GEOID_SEPARATION, METRIC_CRS, ecef_to_lonlat, transformer


def to_metric(lon, lat):
    """EPSG:4490 lon / lat → EPSG:4547 x / y (arrays)."""
    x, y = transformer("EPSG:4490", METRIC_CRS).transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(x), np.asarray(y)


#: the placed mesh of a registered model, cached beside its stored IFC copy (``<sha16>.clash-<key>.npz``,
#: key = the file's sha256, its georef, the geoid separation and this version): written at
#: registration (ifc.register) or by the first check, so a registered model is never tessellated again
MESH_CACHE_VERSION = 1
_MESH_META = ("global_id", "ifc_class", "name", "storey")


def mesh_cache_path(stored_path: str | Path, sha256: str, georef, sep: float = DEFAULT_GEOID_SEPARATION) -> Path:
    g = {k: v for k, v in georef.to_json().items() if k != "warnings"}
    doc = json.dumps({"v": MESH_CACHE_VERSION, "sha256": sha256, "georef": g, "sep": float(sep), "crs": METRIC_CRS},
                     sort_keys=True, default=str)
    stored = Path(stored_path)
    return stored.with_name(f"{stored.stem}.clash-{hashlib.sha256(doc.encode()).hexdigest()[:16]}.npz")


def placed_mesh(pm, sep: float = DEFAULT_GEOID_SEPARATION) -> dict[str, np.ndarray]:
    """A placed model (ifc.PlacedModel) → its solid elements' triangles in EPSG:4547 + orthometric
    height, ordered by element (``start``: each element's first triangle), the elements' attributes
    and the footprint (EPSG:4490 WKB): what the check needs, as plain arrays (the cache's content)."""
    els = pm.elements
    llh = ecef_to_lonlat(pm.ecef)
    x, y = to_metric(llh[:, 0], llh[:, 1])
    xyz = np.column_stack([x, y, llh[:, 2] - sep]).reshape(-1, 3, 3)
    tri_el = els.element[::3]
    meta = els.meta
    keep = ~np.asarray(meta["is_space"], bool)[tri_el]
    order = np.flatnonzero(keep)[np.argsort(tri_el[keep], kind="stable")]
    count = np.bincount(tri_el[order], minlength=els.count)
    ids = np.flatnonzero(count)
    return {"tris": xyz[order], "start": np.concatenate([[0], np.cumsum(count[ids])]),
            "below_ground": np.asarray(meta["below_ground"], bool)[ids],
            **{k: np.asarray([str(meta[k][i] or "") for i in ids], dtype=str) for k in _MESH_META},
            "footprint": np.frombuffer(shapely.to_wkb(pm.footprint), np.uint8),
            "warnings": np.asarray(list(els.warnings), dtype=str)}


def write_mesh_cache(path: Path, mesh: dict) -> bool:
    """Write the cache atomically; a cache that cannot be written (read-only store) is only a slower next check."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **mesh)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def read_mesh_cache(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            mesh = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # missing or damaged: placed again (and rewritten)
    need = {"tris", "start", "below_ground", "footprint", "warnings", *_MESH_META}
    return mesh if need <= set(mesh) else None


