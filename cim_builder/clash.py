"""The clash check (issue 17): a BIM model, or a planned basement (a footprint and a depth),
against the pipe network and the other underground structures — which pipes it cuts, the
clearance to each, by type, with the element or structure nearest to it.

Inputs
- the subject: a registered model (``cim_models``: its stored file and georef), an IFC file
  placed like ``add-ifc`` (``--at`` / IfcMapConversion / IfcSite), or a footprint polygon
  (GeoJSON, EPSG:4490) with ``depth_m`` below the ground (``ground_z`` given, else the lowest DEM
  value under its vertices, as the twin stands its buildings) → a prism ``F × [ground − depth, ground]``;
- the pipes: store layer ``pipe_segments`` as of a date (issue 17 contract §2): each segment's
  axis from its plan line and ``start_axis_z`` / ``end_axis_z`` (a line with inner vertices is
  split, the height interpolated by plan length), round (``diameter_mm``) or box (``width_mm`` ×
  ``height_mm``, width horizontal across the axis, height across it upward);
- the other structures: layer ``basements`` (prisms: ``ground_z`` or the DEM, minus ``depth_m``)
  and the below-ground elements of the OTHER registered models near the subject.

Everything is measured in EPSG:4547 metres with orthometric heights; an IFC model's vertices go
model → ECEF (its georef, as the twin places it) → CGCS2000 longitude / latitude / ellipsoidal
height → EPSG:4547 and ``H = h − N`` (the geoid separation cancels: the same N both ways).

Clearance (metres, rounded to the millimetre in the report)
- a round pipe: the exact 3D distance between its axis segment and the solid, minus its radius;
  0 − radius when the axis touches or runs inside the solid (no penetration depth is computed);
- a box pipe: the exact distance between the box's surface and the solid's (every box edge
  against the solid's triangles and every triangle edge against the box's, plus containment);
  when they meet, ``min(0, axis distance − min(W, H) / 2)``;
- ``cuts`` when the clearance is ≤ 0, ``too_close`` when 0 < clearance < the required one.
Wall thickness is ignored (the section is the outer size the survey gives). Solids: an IFC
element's mesh as IfcOpenShell tessellates it (curved faces are polygons: exact for the mesh);
a prism exactly (clash_geometry.segment_prism_distance).

Speed (issue 17: one model against 10,000 segments in < 2 s): pipes and triangles meet in
clusters (4 m axis pieces; runs of ≤ 64 triangles of one element) — cluster boxes within reach by
one STRtree query, a tight upper bound per pipe from the exact distances of its nearest few pairs,
then only the pairs whose box gap is below that bound are computed (a pipe at 0, cut, stops
there): exact, not approximate (grouped_min). A registered model's placed mesh is cached beside
its stored copy (MESH_CACHE_VERSION), written at registration: the check never tessellates it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from psycopg import sql

from cim_builder import clash_geometry as cg
from cim_builder.mesh_cache import mesh_cache_path, placed_mesh, read_mesh_cache, write_mesh_cache
from cim_builder.mesh_cache import to_metric as _to_metric
from cim_builder.geo import (
    DEFAULT_GEOID_SEPARATION,
    METRIC_CRS,
    CimError,
    resolve_dem,
    transformer,
)

#: Pipe types of a CJJ 61 survey (issue 17 contract §1): code → Chinese name.
TYPE_NAMES = {"JS": "给水", "PS": "排水", "YS": "雨水", "WS": "污水", "RQ": "燃气", "RL": "热力",
              "DL": "电力", "TX": "通信", "GY": "工业"}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}

#: Required horizontal clearance (m) between a pipe and a building's (structure's) foundation:
#: GB 50289-2016《城市工程管线综合规划规范》表 4.1.9 (工程管线之间及其与建(构)筑物之间的最小水平
#: 净距), column 建(构)筑物. Defaults only — override per type with ``--clearance 给水=1.5`` (or
#: ``"clearance": {"JS": 1.5}`` over HTTP). A rule is a list of (upper bound, metres) on the
#: pipe's diameter in mm (给水) or its pressure class (燃气); the last entry is the fallback.
#: These values need a domain check against the standard's text before they are relied on.
REQUIRED_CLEARANCE: dict[str, dict] = {
    "JS": {"by": "diameter_mm", "rule": [(200, 1.0), (None, 3.0)]},   # d ≤ 200 mm: 1.0; d > 200 mm: 3.0
    "PS": {"by": None, "rule": [(None, 2.5)]},                      # 污水、雨水管线 2.5
    "YS": {"by": None, "rule": [(None, 2.5)]},
    "WS": {"by": None, "rule": [(None, 2.5)]},
    # 燃气: 低压 0.7, 中压 B 1.0, 中压 A 1.5, 次高压 B 5.0, 次高压 A 13.5; unknown pressure: 中压 B
    "RQ": {"by": "pressure", "rule": [("次高压A", 13.5), ("次高压B", 5.0), ("中压A", 1.5), ("中压B", 1.0),
                                      ("低压", 0.7), (None, 1.0)]},
    "RL": {"by": None, "rule": [(None, 3.0)]},                      # 直埋热力管线 3.0
    "DL": {"by": None, "rule": [(None, 0.6)]},                      # 电力 直埋 / 保护管 0.6
    "TX": {"by": None, "rule": [(None, 1.0)]},                      # 通信 直埋 1.0 (管道、通道 1.5)
    "GY": {"by": None, "rule": [(None, 1.5)]},                      # not in 表 4.1.9: assumed, check locally
}
DEFAULT_DISTANCE_M = 5.0
#: the store layers read (issue 17 contract §2, §3)
PIPES_LAYER = "pipe_segments"
BASEMENTS_LAYER = "basements"
_SIZE_MARGIN_M = 5.0  # pipes are fetched this much beyond the search distance (their half size)


class UnknownModel(CimError):
    """The subject names a model the registry does not hold (HTTP 404)."""


def type_code(value: str, what: str = "type") -> str:
    v = (value or "").strip()
    if v.upper() in TYPE_NAMES:
        return v.upper()
    if v in TYPE_CODES:
        return TYPE_CODES[v]
    raise CimError(f"{what} {value!r}: not a pipe type; use one of "
                   + ", ".join(f"{n} ({c})" for c, n in TYPE_NAMES.items()))


def parse_clearances(items) -> dict[str, float]:
    """``["给水=1.5", "RQ=2"]`` or ``{"给水": 1.5}`` → {code: metres}."""
    out: dict[str, float] = {}
    pairs = items.items() if isinstance(items, dict) else [
        (s.split("=", 1) if "=" in str(s) else (s, None)) for s in (items or [])]
    for k, v in pairs:
        code = type_code(str(k), "--clearance type")
        try:
            m = float(v)
        except (TypeError, ValueError):
            m = float("nan")
        if not (math.isfinite(m) and 0 <= m <= 100):
            raise CimError(f"--clearance {k}={v}: give TYPE=METRES, e.g. 给水=1.5 (0 to 100 m)")
        out[code] = m
    return out


def required_clearance(code: str, diameter_mm, pressure, overrides: dict | None = None) -> float | None:
    if overrides and code in overrides:
        return overrides[code]
    spec = REQUIRED_CLEARANCE.get(code)
    if spec is None:
        return None
    for bound, metres in spec["rule"]:
        if bound is None:
            return metres
        if spec["by"] == "diameter_mm" and diameter_mm is not None and diameter_mm <= bound:
            return metres
        if spec["by"] == "pressure" and pressure and bound in str(pressure).replace(" ", "").upper():
            return metres
    return None


# ------------------------------------------------------------------------------------------
# solids


@dataclass
class Solid:
    """One obstacle: a prism (``poly`` in EPSG:4547, ``zb``..``zt``) or a closed triangle soup."""

    info: dict  # what the report says about it (kind, ids, class, storey …)
    poly: object = None
    zb: float = 0.0
    zt: float = 0.0
    tris: np.ndarray | None = None
    _box: tuple | None = field(default=None, repr=False, compare=False)

    def triangles(self) -> np.ndarray:
        if self.tris is None:
            self.tris = cg.prism_triangles(self.poly, self.zb, self.zt)
        return self.tris

    @property
    def is_prism(self) -> bool:
        return self.poly is not None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self._box is None:
            if self.is_prism:
                x0, y0, x1, y1 = self.poly.bounds
                self._box = np.array([x0, y0, self.zb]), np.array([x1, y1, self.zt])
            else:
                t = self.tris.reshape(-1, 3)
                self._box = t.min(axis=0), t.max(axis=0)
        return self._box

    def contains(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, float).reshape(-1, 3)
        if self.is_prism:
            inz = (points[:, 2] >= self.zb) & (points[:, 2] <= self.zt)
            return inz & shapely.covers(self.poly, shapely.points(points[:, :2]))
        lo, hi = self.bounds()
        box = np.all((points >= lo) & (points <= hi), axis=1)
        out = np.zeros(len(points), bool)
        if box.any():
            out[box] = cg.points_in_mesh(points[box], self.tris)
        return out


def _geom_to_metric(g):
    return shapely.transform(g, lambda c: np.column_stack(_to_metric(c[:, 0], c[:, 1])))


def _geom_to_4490(g):
    t = transformer(METRIC_CRS, "EPSG:4490")
    return shapely.transform(g, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])))


def parse_footprint(obj, what: str = "footprint"):
    """A GeoJSON Polygon / MultiPolygon (a geometry, a Feature, or a FeatureCollection whose
    polygons are merged) in EPSG:4490 → a valid shapely polygon in degrees. Errors name the field."""
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise CimError(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CimError(f"{what}: give a GeoJSON object (Polygon, MultiPolygon, Feature or FeatureCollection), "
                       f"not {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list) or not feats:
            raise CimError(f"{what}.features: a FeatureCollection needs at least one polygon feature")
        parts = [parse_footprint(f, f"{what}.features[{i}]") for i, f in enumerate(feats)]
        return shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if kind == "Feature":
        if "geometry" not in obj or obj["geometry"] is None:
            raise CimError(f"{what}.geometry: the Feature has no geometry")
        return parse_footprint(obj["geometry"], f"{what}.geometry")
    if kind not in ("Polygon", "MultiPolygon"):
        raise CimError(f"{what}.type: must be Polygon or MultiPolygon (or a Feature / FeatureCollection of "
                       f"them), got {kind!r}")
    coords = obj.get("coordinates")
    if not isinstance(coords, list) or not coords:
        raise CimError(f"{what}.coordinates: missing or empty; a {kind} needs rings of [lon, lat] positions")
    try:
        g = shapely.geometry.shape(obj)
    except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.GEOSException) as exc:
        raise CimError(f"{what}.coordinates: not a valid {kind} ({exc}); each ring is a list of ≥ 4 "
                       "[lon, lat] positions, the last equal to the first") from None
    xy = shapely.get_coordinates(g)
    if not len(xy) or not np.isfinite(xy).all():
        raise CimError(f"{what}.coordinates: no finite positions")
    if not ((-180 <= xy[:, 0]) & (xy[:, 0] <= 180) & (-90 <= xy[:, 1]) & (xy[:, 1] <= 90)).all():
        raise CimError(f"{what}.coordinates: positions must be EPSG:4490 longitude, latitude in degrees "
                       f"(e.g. [114.2514, 22.7215]); got {xy[0].tolist()} — projected metres?")
    if not g.is_valid:
        raise CimError(f"{what}.coordinates: the polygon is invalid ({shapely.is_valid_reason(g)}); "
                       "fix the ring (no self-intersection, holes inside the shell)")
    if g.is_empty or g.area == 0:
        raise CimError(f"{what}.coordinates: the polygon has no area")
    return g


def _ground_under(conn, poly_m, dem, at) -> float:
    d = resolve_dem(conn, dem, at)
    xy = shapely.get_coordinates(poly_m)
    z = d.sample(xy[:, 0], xy[:, 1], METRIC_CRS)
    if not np.isfinite(z).any():
        raise CimError(f"the DEM {d.path} does not cover the footprint: pass ground_z (--ground-z)")
    return float(np.nanmin(z))


def planned_basement(conn, footprint, depth_m, ground_z=None, dem=None, at=None) -> Solid:
    poly4490 = parse_footprint(footprint)
    try:
        depth = float(depth_m)
    except (TypeError, ValueError):
        depth = float("nan")
    if not (math.isfinite(depth) and 0 < depth <= 200):
        raise CimError(f"depth_m {depth_m!r}: give the basement's depth below the ground in metres (0 < depth ≤ 200)")
    poly = _geom_to_metric(poly4490)
    if ground_z is not None:
        try:
            gz = float(ground_z)
        except (TypeError, ValueError):
            gz = float("nan")
        if not math.isfinite(gz) or not -500 < gz < 9000:
            raise CimError(f"ground_z {ground_z!r}: give the ground's orthometric height in metres")
        how = "given"
    else:
        gz = _ground_under(conn, poly, dem, at)
        how = "DEM (lowest under the footprint's vertices)"
    return Solid({"kind": "planned", "id": "planned basement", "ground_z": round(gz, 3), "ground_from": how,
                  "depth_m": depth, "bottom_z": round(gz - depth, 3)}, poly=poly, zb=gz - depth, zt=gz)


def model_mesh(path: Path, model_id: str, georef, sep: float = DEFAULT_GEOID_SEPARATION,
               sha256: str | None = None) -> dict:
    """The model's placed mesh (see placed_mesh). A registered model (``sha256`` given) reads it from
    the cache beside its stored copy, or places it once and writes the cache; a file given with
    ``--at`` is placed (IfcOpenShell's tessellation, cached in memory by ifc.place)."""
    from cim_builder.ifc import place

    cache = mesh_cache_path(path, sha256, georef, sep) if sha256 else None
    if cache is not None and (mesh := read_mesh_cache(cache)) is not None:
        return mesh
    mesh = placed_mesh(place(Path(path), model_id, georef, sep), sep)
    if cache is not None:
        write_mesh_cache(cache, mesh)
    return mesh


def model_solids(path: Path, model_id: str, georef, *, below_only: bool = False,
                 sep: float = DEFAULT_GEOID_SEPARATION, sha256: str | None = None) -> tuple[list[Solid], object, list[str]]:
    """An IFC model's elements (not spaces) as solids in EPSG:4547 + orthometric height; its
    footprint (EPSG:4490) and warnings."""
    mesh = model_mesh(path, model_id, georef, sep, sha256)
    tris, start = mesh["tris"], mesh["start"]
    solids = []
    for i in range(len(start) - 1):
        below = bool(mesh["below_ground"][i])
        if below_only and not below:
            continue
        solids.append(Solid({"kind": "bim_element", "model_id": model_id, "global_id": str(mesh["global_id"][i]),
                             "ifc_class": str(mesh["ifc_class"][i]), "name": str(mesh["name"][i]),
                             "storey": str(mesh["storey"][i]), "below_ground": below},
                            tris=tris[start[i]:start[i + 1]]))
    footprint = shapely.from_wkb(mesh["footprint"].tobytes())
    return solids, footprint, list(georef.warnings) + [str(w) for w in mesh["warnings"]]


# ------------------------------------------------------------------------------------------
# the pipe network


@dataclass
class Pipes:
    """Axis pieces of the pipe segments (a segment with inner vertices gives several)."""

    p: np.ndarray  # (n, 3)
    q: np.ndarray
    owner: np.ndarray  # (n,) → index into records
    records: list[dict]  # one per segment: id, properties
    radius: np.ndarray  # (segments,) round: d/2; box: 0
    width: np.ndarray  # (segments,) m (box pipes; else the diameter)
    height: np.ndarray
    is_box: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _bbox_4490(bounds_m, pad: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bounds_m
    ring = shapely.segmentize(shapely.box(x0 - pad, y0 - pad, x1 + pad, y1 + pad), 50.0)
    b = _geom_to_4490(ring).bounds
    e = 1e-6
    return b[0] - e, b[1] - e, b[2] + e, b[3] + e


def load_pipes(conn, bounds_m, at, pad: float, layer: str = "pipe_segments") -> Pipes:
    from spatial_api import store

    empty = Pipes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, int), [], np.zeros(0), np.zeros(0),
                  np.zeros(0), np.zeros(0, bool))
    if store.get_layer(conn, layer) is None:
        empty.warnings.append(f"no layer {layer!r}: load the pipe survey with `geotwin ingest pipes` first")
        return empty
    cond, params = store.temporal_filter(at, None)
    q = sql.SQL("SELECT f.fid, f.properties, ST_AsBinary(f.geom) FROM {} f WHERE f.layer = %s AND {} "
                "AND f.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4490) ORDER BY f.fid").format(
        sql.Identifier(store.partition_name(layer)), cond)
    rows = conn.execute(q, [layer, *params, *_bbox_4490(bounds_m, pad)]).fetchall()
    if not rows:
        return empty
    records, geoms, za, zb = [], [], [], []
    radius, width, height, is_box = [], [], [], []
    skipped = []
    for fid, props, wkb in rows:
        props = props or {}
        z0, z1 = _num(props.get("start_axis_z")), _num(props.get("end_axis_z"))
        d = _num(props.get("diameter_mm"))
        w, h = _num(props.get("width_mm")), _num(props.get("height_mm"))
        if z0 is None or z1 is None or not (d or (w and h)):
            skipped.append(fid)
            continue
        box = not d  # a diameter makes the pipe round (contract: then width = height = diameter)
        records.append({"id": fid, **props})
        geoms.append(shapely.from_wkb(bytes(wkb)))
        za.append(z0)
        zb.append(z1)
        radius.append(0.0 if box else d / 2000.0)
        width.append((w if box else d) / 1000.0)
        height.append((h if box else d) / 1000.0)
        is_box.append(box)
    warnings = []
    if skipped:
        warnings.append(f"{len(skipped)} pipe segment(s) without axis heights or size were left out, e.g. "
                        + ", ".join(map(str, skipped[:5])))
    if not records:
        empty.warnings = warnings
        return empty
    coords, idx = shapely.get_coordinates(np.array(geoms, dtype=object), return_index=True)
    x, y = _to_metric(coords[:, 0], coords[:, 1])
    xy = np.column_stack([x, y])
    same = idx[1:] == idx[:-1]
    step = np.where(same, np.hypot(*(xy[1:] - xy[:-1]).T), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(step)])
    first = np.searchsorted(idx, np.arange(len(records)))
    last = np.searchsorted(idx, np.arange(len(records)), side="right") - 1
    total = cum[last] - cum[first]
    frac = np.where(total[idx] > 0, (cum - cum[first][idx]) / np.where(total[idx] > 0, total[idx], 1.0),
                    (np.arange(len(idx)) - first[idx]) / np.maximum(last - first, 1)[idx])
    z = np.asarray(za)[idx] + frac * (np.asarray(zb) - np.asarray(za))[idx]
    pts = np.column_stack([xy, z])
    return Pipes(pts[:-1][same], pts[1:][same], idx[:-1][same], records, np.asarray(radius), np.asarray(width),
                 np.asarray(height), np.asarray(is_box, bool), warnings)


def load_basements(conn, bounds_m, at, pad: float, dem=None, layer: str = "basements") -> tuple[list[Solid], list[str]]:
    from spatial_api import store

    if store.get_layer(conn, layer) is None:
        return [], []
    cond, params = store.temporal_filter(at, None)
    q = sql.SQL("SELECT f.fid, f.properties, ST_AsBinary(f.geom) FROM {} f WHERE f.layer = %s AND {} "
                "AND f.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4490) ORDER BY f.fid").format(
        sql.Identifier(store.partition_name(layer)), cond)
    rows = conn.execute(q, [layer, *params, *_bbox_4490(bounds_m, pad)]).fetchall()
    solids, warnings, the_dem = [], [], None
    for fid, props, wkb in rows:
        props = props or {}
        poly = _geom_to_metric(shapely.from_wkb(bytes(wkb)))
        depth = _num(props.get("depth_m"))
        if not depth or depth <= 0:
            warnings.append(f"basement {fid}: no depth_m, left out")
            continue
        gz = _num(props.get("ground_z"))
        if gz is None:
            try:
                if the_dem is None:
                    the_dem = resolve_dem(conn, dem, at)
                xy = shapely.get_coordinates(poly)
                zs = the_dem.sample(xy[:, 0], xy[:, 1], METRIC_CRS)
                gz = float(np.nanmin(zs)) if np.isfinite(zs).any() else None
            except CimError as exc:
                warnings.append(f"basement {fid}: no ground_z and no DEM ({exc}), left out")
                continue
            if gz is None:
                warnings.append(f"basement {fid}: no ground_z and the DEM does not cover it, left out")
                continue
        solids.append(Solid({"kind": "basement", "id": fid, "basement_id": props.get("basement_id", fid),
                             "building_id": props.get("building_id"), "name": props.get("name"),
                             "use": props.get("use"), "levels": props.get("levels"), "depth_m": depth,
                             "ground_z": gz}, poly=poly, zb=gz - depth, zt=gz))
    return solids, warnings


# ------------------------------------------------------------------------------------------
# distances between the pipes and the subject


def _pairs(lo_a, hi_a, lo_b, hi_b) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) whose 3D boxes overlap (STRtree on the plan, then z)."""
    if not len(lo_a) or not len(lo_b):
        return np.zeros(0, int), np.zeros(0, int)
    tree = shapely.STRtree(shapely.box(lo_b[:, 0], lo_b[:, 1], hi_b[:, 0], hi_b[:, 1]))
    i, j = tree.query(shapely.box(lo_a[:, 0], lo_a[:, 1], hi_a[:, 0], hi_a[:, 1]), predicate="intersects")
    keep = (lo_a[i, 2] <= hi_b[j, 2]) & (lo_b[j, 2] <= hi_a[i, 2])
    return i[keep], j[keep]


def _box_gap(lo_a, hi_a, lo_b, hi_b) -> np.ndarray:
    gap = np.maximum(np.maximum(lo_b - hi_a, lo_a - hi_b), 0.0)
    return np.linalg.norm(gap, axis=1)


#: a cluster of triangles (a mesh element, or a run of its triangles) holds at most this many:
#: a cluster pair expands into every member pair, so big elements are cut into runs
CLUSTER_TRIS = 64


def clusters_by(owner: np.ndarray, size: int = CLUSTER_TRIS) -> np.ndarray:
    """Cluster ids (0..k-1) for members labelled by ``owner``: members of one owner, in their
    order, cut into runs of at most ``size`` (the triangles of a mesh element come face by face,
    so a run is compact in space)."""
    owner = np.asarray(owner)
    if not len(owner):
        return np.zeros(0, int)
    order = np.argsort(owner, kind="stable")
    so = owner[order]
    first = np.r_[True, so[1:] != so[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(so)), 0))
    key = np.column_stack([so, (np.arange(len(so)) - start) // size])
    _, lab = np.unique(key, axis=0, return_inverse=True)
    out = np.empty(len(owner), int)
    out[order] = lab.ravel()
    return out


def _cluster_boxes(lo, hi, cluster, n):
    clo = np.full((n, 3), np.inf)
    chi = np.full((n, 3), -np.inf)
    np.minimum.at(clo, cluster, lo)
    np.maximum.at(chi, cluster, hi)
    return clo, chi


def _members(cluster: np.ndarray, n: int):
    """Members sorted by cluster: (order, first position, count) per cluster."""
    order = np.argsort(cluster, kind="stable")
    count = np.bincount(cluster, minlength=n)
    return order, np.cumsum(count) - count, count


def _expand(ca, cb, a_mem, b_mem):
    """Every member pair of the cluster pairs (ca[k], cb[k]): (k, member of a, member of b)."""
    (ao, as_, an), (bo, bs, bn) = a_mem, b_mem
    m = an[ca] * bn[cb]
    k = np.repeat(np.arange(len(ca)), m)
    local = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
    nb = bn[cb][k]
    return k, ao[as_[ca][k] + local // nb], bo[bs[cb][k] + local % nb]


def _rank_in_group(g: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order sorting by (group, key) and each sorted item's rank within its group."""
    order = np.lexsort((key, g))
    gs = g[order]
    return order, np.arange(len(gs)) - np.searchsorted(gs, gs)


def grouped_min(p, q, s_cluster, tris, t_cluster, group_of, n_groups: int, reach, first: int = 8,
                bound: np.ndarray | None = None):
    """Exact segment–triangle distances reduced to a minimum per group.

    Segments (``p``, ``q``) and triangles come in clusters (``s_cluster``, ``t_cluster``: ids from
    0); ``group_of(ci, cj)`` maps a pair of clusters to its group in [0, n_groups). ``reach``:
    per segment cluster (or one number), how far to look. Branch and bound, all vectorised:

    1. cluster pairs whose boxes are within reach (one STRtree query); their box gap is a lower
       bound of every member pair's distance;
    2. an upper bound per group: the exact distances of the ``first`` member pairs with the
       smallest box gap among the group's two nearest cluster pairs;
    3. only the cluster pairs, then the member pairs, whose box gap is below the group's bound are
       computed exactly (nearest first, the bound tightening between the two rounds); a group at
       distance 0 (cut) computes nothing more.

    Returns (distance, segment, triangle) per group (inf, -1, -1 when nothing is within reach;
    ``bound``: an upper bound per group known beforehand — only better pairs are returned)."""
    best = np.full(n_groups, np.inf) if bound is None else np.asarray(bound, float).copy()
    arg_i = np.full(n_groups, -1)
    arg_j = np.full(n_groups, -1)
    if not len(p) or not len(tris) or not n_groups:
        return best, arg_i, arg_j
    ns, nt = int(s_cluster.max()) + 1, int(t_cluster.max()) + 1
    slo, shi = np.minimum(p, q), np.maximum(p, q)
    tlo, thi = tris.min(axis=1), tris.max(axis=1)
    sclo, schi = _cluster_boxes(slo, shi, s_cluster, ns)
    tclo, tchi = _cluster_boxes(tlo, thi, t_cluster, nt)
    reach = np.broadcast_to(np.asarray(reach, float), (ns,))
    ci, cj = _pairs(sclo - reach[:, None], schi + reach[:, None], tclo, tchi)
    cgap = _box_gap(sclo[ci], schi[ci], tclo[cj], tchi[cj])
    g = np.asarray(group_of(ci, cj))
    ok = (cgap <= reach[ci]) & (cgap <= best[g]) & (best[g] > 0)
    ci, cj, g, cgap = ci[ok], cj[ok], g[ok], cgap[ok]
    if not len(ci):
        return best, arg_i, arg_j
    s_mem, t_mem = _members(s_cluster, ns), _members(t_cluster, nt)

    def exact(a, b, k):
        for s in range(0, len(a), 200_000):
            aa, bb, kk = a[s:s + 200_000], b[s:s + 200_000], k[s:s + 200_000]
            d = cg.segment_triangle_distance(p[aa], q[aa], tris[bb, 0], tris[bb, 1], tris[bb, 2])
            o = np.lexsort((d, kk))
            aa, bb, kk, d = aa[o], bb[o], kk[o], d[o]
            head = np.r_[True, kk[1:] != kk[:-1]]
            aa, bb, kk, d = aa[head], bb[head], kk[head], d[head]
            better = d < best[kk]
            best[kk[better]] = d[better]
            arg_i[kk[better]] = aa[better]
            arg_j[kk[better]] = bb[better]

    def member_pairs(sel):
        k, a, b = _expand(ci[sel], cj[sel], s_mem, t_mem)
        gg = g[sel][k]
        gap = _box_gap(slo[a], shi[a], tlo[b], thi[b])
        keep = gap <= best[gg]
        return a[keep], b[keep], gg[keep], gap[keep]

    # 2. an upper bound per group from its nearest cluster pairs
    order, rank = _rank_in_group(g, cgap)
    a, b, gg, gap = member_pairs(order[rank < 2])
    o, r = _rank_in_group(gg, gap)
    o = o[r < first]
    exact(a[o], b[o], gg[o])
    # 3. everything that may still be nearer, nearest first
    live = (cgap <= best[g]) & (best[g] > 0)
    a, b, gg, gap = member_pairs(live)
    o, r = _rank_in_group(gg, gap)
    a, b, gg, gap = a[o], b[o], gg[o], gap[o]  # r: the ranks in this order
    for sel in (r < first, r >= first):
        sel = sel & (gap <= best[gg]) & (best[gg] > 0)
        exact(a[sel], b[sel], gg[sel])
    return best, arg_i, arg_j


#: long axes are cut into pieces this long before meeting meshes: a diagonal pipe's box would
#: otherwise cover a whole building and pair with all of its triangles (exact either way: the
#: distance to a segment is the smallest distance to its pieces)
PIECE_M = 4.0


def subdivide(p: np.ndarray, q: np.ndarray, max_len: float = PIECE_M) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments cut into pieces of at most ``max_len``: (p', q', index of the segment each came from)."""
    n = np.maximum(np.ceil(np.linalg.norm(q - p, axis=1) / max_len).astype(int), 1)
    parent = np.repeat(np.arange(len(p)), n)
    k = np.arange(len(parent)) - np.repeat(np.cumsum(n) - n, n)
    d = (q - p)[parent]
    t0 = (k / n[parent])[:, None]
    t1 = ((k + 1) / n[parent])[:, None]
    return p[parent] + t0 * d, p[parent] + t1 * d, parent


def _mesh_pool(solids: list[Solid], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The triangles of the given solids in one array, and each triangle's solid index."""
    tris = [solids[k].triangles() for k in ids]
    return np.concatenate(tris), np.repeat(ids, [len(t) for t in tris])


def _inside_any(points: np.ndarray, solids: list[Solid], ids) -> np.ndarray:
    """For each point: the index of a solid (among ``ids``) holding it, else -1."""
    out = np.full(len(points), -1)
    for k in ids:
        lo, hi = solids[k].bounds()
        cand = np.flatnonzero((out < 0) & np.all(points >= lo, axis=1) & np.all(points <= hi, axis=1))
        if len(cand):
            inside = solids[k].contains(points[cand])
            out[cand[inside]] = k
    return out


def pipe_distances(pipes: Pipes, solids: list[Solid], search: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pipe segment (record): clearance (m), nearest solid index (-1: none within reach) and
    the axis distance."""
    nrec = len(pipes.records)
    axis = np.full(len(pipes.p), np.inf)
    axis_solid = np.full(len(pipes.p), -1)
    half = np.where(pipes.is_box, np.hypot(pipes.width, pipes.height) / 2, pipes.radius)[pipes.owner]
    reach = search + half
    slo, shi = np.minimum(pipes.p, pipes.q), np.maximum(pipes.p, pipes.q)
    # prisms, exactly
    for k, s in enumerate(solids):
        if not s.is_prism:
            continue
        lo, hi = s.bounds()
        near = np.flatnonzero(np.all(slo - reach[:, None] <= hi, axis=1) & np.all(shi + reach[:, None] >= lo, axis=1))
        if len(near):
            d = cg.segment_prism_distance(pipes.p[near], pipes.q[near], s.poly, s.zb, s.zt)
            better = d < axis[near]
            axis[near[better]] = d[better]
            axis_solid[near[better]] = k
    # meshes: the triangles of every mesh solid at once, then axes inside a solid
    mesh_ids = [k for k, s in enumerate(solids) if not s.is_prism]
    if mesh_ids:
        holder = _inside_any(pipes.p, solids, mesh_ids)
        inside = holder >= 0
        axis[inside] = 0.0
        axis_solid[inside] = holder[inside]
    # per segment record: the nearest of its pieces
    rec_axis = np.full(nrec, np.inf)
    np.minimum.at(rec_axis, pipes.owner, axis)
    piece_best = axis <= rec_axis[pipes.owner]
    rec_solid = np.full(nrec, -1)
    rec_solid[pipes.owner[piece_best]] = axis_solid[piece_best]
    if mesh_ids:
        # grouped by record: a pipe's far pieces search only as far as its nearest piece's bound
        # (an axis already inside a solid starts at 0: nothing more to compute for it)
        tris, owner = _mesh_pool(solids, mesh_ids)
        sp, sq, parent = subdivide(pipes.p, pipes.q)
        rec = pipes.owner[parent]
        d, _, t = grouped_min(sp, sq, np.arange(len(sp)), tris, clusters_by(owner), lambda i, j: rec[i], nrec,
                              reach[parent], bound=rec_axis)
        better = d < rec_axis
        rec_axis[better] = d[better]
        rec_solid[better] = owner[t[better]]
    clearance = rec_axis - pipes.radius
    boxes = np.flatnonzero(pipes.is_box & np.isfinite(rec_axis))
    if len(boxes):
        bd, bs = _box_distances(pipes, boxes, solids, search)
        cut = bd <= 0
        clearance[boxes] = np.where(cut, np.minimum(0.0, rec_axis[boxes]
                                                    - np.minimum(pipes.width, pipes.height)[boxes] / 2), bd)
        rec_solid[boxes] = np.where(bs >= 0, bs, rec_solid[boxes])
    return clearance, rec_solid, rec_axis


def _box_distances(pipes: Pipes, recs: np.ndarray, solids: list[Solid], search: float):
    """Exact surface distances of box pipes (records ``recs``) to the solids: the box's edges
    against the solids' triangles, the solids' triangle edges against the box's triangles, and
    containment either way."""
    pos = np.full(len(pipes.records), -1)
    pos[recs] = np.arange(len(recs))
    pieces = np.flatnonzero(np.isin(pipes.owner, recs))
    # sub-boxes of at most PIECE_M along the axis (the union is the box; exact, as for axes)
    bp, bq, parent = subdivide(pipes.p[pieces], pipes.q[pieces])
    own = pipes.owner[pieces][parent]
    box_rec = pos[own]  # sub-box → position in recs
    corners = cg.box_corners(bp, bq, pipes.width[own], pipes.height[own])  # (m, 8, 3)
    edges = corners[:, cg.BOX_EDGES].reshape(-1, 2, 3)  # (12 sub-boxes, 2, 3)
    btris = corners[:, cg.BOX_TRIS].reshape(-1, 3, 3)  # (12 sub-boxes, 3, 3)
    tris, owner = _mesh_pool(solids, list(range(len(solids))))
    # only the solids within reach of some box take part
    blo, bhi = corners.min(axis=1), corners.max(axis=1)
    slo = np.array([s.bounds()[0] for s in solids])
    shi = np.array([s.bounds()[1] for s in solids])
    _, near = _pairs(blo - search, bhi + search, slo, shi)
    sel = np.flatnonzero(np.isin(owner, np.unique(near)))
    tris, owner = tris[sel], owner[sel]
    tcl = clusters_by(owner)
    n = len(recs)
    # the box's edges against the solids' triangles (an edge cluster: one sub-box's 12 edges)
    d1, _, j1 = grouped_min(edges[:, 0], edges[:, 1], np.arange(len(edges)) // 12, tris, tcl,
                            lambda i, j: box_rec[i], n, search)
    # the solids' triangle edges (clusters: their triangles') against the box's triangles (sub-box)
    te = cg.triangle_edges(tris)
    d2, i2, _ = grouped_min(te[:, 0], te[:, 1], np.repeat(tcl, 3), btris, np.arange(len(btris)) // 12,
                            lambda i, j: box_rec[j], n, search, bound=d1)
    best = np.minimum(d1, d2)
    which = np.where(d2 < d1, np.where(i2 >= 0, owner[np.maximum(i2, 0) // 3], -1),
                     np.where(j1 >= 0, owner[np.maximum(j1, 0)], -1))
    holder = _inside_any(corners[:, 0], solids, range(len(solids)))  # the box inside a solid
    # a solid inside the box: one vertex of each solid tested against the boxes it may be in
    first_v = np.array([s.triangles()[0, 0] for s in solids])
    si, bi = _pairs(first_v, first_v, blo, bhi)
    if len(si):
        held = cg.points_in_boxes(first_v[si], corners[bi])
        holder[bi[held]] = si[held]
    inside = holder >= 0
    best[box_rec[inside]] = 0.0
    which[box_rec[inside]] = holder[inside]
    return best, which


def solid_distance(a: Solid, b: Solid, search: float) -> float:
    """Exact distance between two solids (0 when they meet or one holds the other)."""
    if a.is_prism and b.is_prism:
        d_xy = float(shapely.distance(a.poly, b.poly))
        d_z = max(a.zb - b.zt, b.zb - a.zt, 0.0)
        return math.hypot(d_xy, d_z)
    ta, tb = a.triangles(), b.triangles()
    if b.contains(ta[:1, 0])[0] or a.contains(tb[:1, 0])[0]:
        return 0.0
    best = np.inf
    for x, y in ((ta, tb), (tb, ta)):
        e = cg.triangle_edges(x)
        d, _, _ = grouped_min(e[:, 0], e[:, 1], np.arange(len(e)) // (3 * CLUSTER_TRIS), y,
                              np.arange(len(y)) // CLUSTER_TRIS, lambda i, j: np.zeros_like(i), 1, search,
                              bound=np.array([best]))
        best = min(best, float(d[0]))
    return best


def structure_distances(subject: list[Solid], structures: list[Solid], search: float) -> list[tuple[int, float, int]]:
    """(structure index, clearance, nearest subject solid) for structures within ``search``."""
    if not subject or not structures:
        return []
    lo_s = np.array([s.bounds()[0] for s in subject])
    hi_s = np.array([s.bounds()[1] for s in subject])
    lo_t = np.array([s.bounds()[0] for s in structures])
    hi_t = np.array([s.bounds()[1] for s in structures])
    i, j = _pairs(lo_t - search, hi_t + search, lo_s, hi_s)
    out: dict[int, tuple[float, int]] = {}
    for t, s in zip(i.tolist(), j.tolist()):
        if t in out and out[t][0] <= 0:
            continue
        d = solid_distance(subject[s], structures[t], search)
        if d <= search and (t not in out or d < out[t][0]):
            out[t] = (d, s)
    return sorted(((t, d, s) for t, (d, s) in out.items()), key=lambda x: (x[1], x[0]))


# ------------------------------------------------------------------------------------------
# the check


def _size_text(rec: dict) -> str:
    d, w, h = _num(rec.get("diameter_mm")), _num(rec.get("width_mm")), _num(rec.get("height_mm"))
    if d:
        return f"DN{d:g}"
    if w and h:
        return f"{w:g}×{h:g}"
    return ""


def _solid_ref(s: Solid) -> dict:
    return {k: v for k, v in s.info.items() if v is not None and k not in ("ground_from",)}


def _load_model(conn, model_id: str):
    from cim_builder.ifc import Georef

    row = conn.execute("SELECT stored_path, georef, active, sha256 FROM cim_models WHERE id = %s",
                       (model_id,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT id FROM cim_models WHERE active ORDER BY id LIMIT 20")]
        raise UnknownModel(f"model {model_id!r}: no registered model with this id (registered: "
                       f"{', '.join(known) or 'none'}); register it with `geotwin cim add-ifc`, or give an IFC file "
                       "path (with --at when it is not georeferenced)")
    path = Path(row[0])
    if not path.is_file():
        raise CimError(f"model {model_id!r}: its stored file {path} is missing; register the model again")
    g = dict(row[1])
    g.pop("z_range", None)
    g.pop("replaces", None)
    return path, Georef.from_json(g), bool(row[2]), row[3]


def check(settings, *, model: str | None = None, ifc_path: str | Path | None = None, at=None, rotation=None,
          crs=None, footprint=None, depth_m=None, ground_z=None, dem=None, as_of=None,
          distance: float = DEFAULT_DISTANCE_M, clearances=None, pipes_layer: str | None = None,
          basements_layer: str | None = None, conn=None) -> dict:
    """Run the clash check; returns the report (a JSON-ready dict, issue 17 contract §7)."""
    from cim_builder.build import _as_datetime
    from spatial_api import db

    t0 = time.perf_counter()
    pipes_layer = pipes_layer or PIPES_LAYER
    basements_layer = basements_layer or BASEMENTS_LAYER
    try:
        search = float(distance)
    except (TypeError, ValueError):
        search = float("nan")
    if not (math.isfinite(search) and 0 <= search <= 100):
        raise CimError(f"distance {distance!r}: the search distance is 0 to 100 m (default {DEFAULT_DISTANCE_M:g})")
    overrides = parse_clearances(clearances)
    given = sum(x is not None for x in (model, ifc_path, footprint))
    if given != 1:
        raise CimError("give exactly one subject: a registered model id, an IFC file, or a footprint with depth_m")
    if footprint is None and depth_m is not None:
        raise CimError("depth_m goes with a footprint (a planned basement); a model brings its own geometry")
    when = _as_datetime(as_of, settings)
    if conn is None:
        with db.connect(settings) as c:
            return check(settings, model=model, ifc_path=ifc_path, at=at, rotation=rotation, crs=crs,
                         footprint=footprint, depth_m=depth_m, ground_z=ground_z, dem=dem, as_of=as_of,
                         distance=distance, clearances=clearances, pipes_layer=pipes_layer,
                         basements_layer=basements_layer, conn=c)
    warnings: list[str] = []
    subject_model = None
    if footprint is not None:
        if depth_m is None:
            raise CimError("depth_m: a footprint needs the basement's depth below the ground (--depth)")
        solid = planned_basement(conn, footprint, depth_m, ground_z, dem, when)
        subject = [solid]
        fp4490 = _geom_to_4490(solid.poly)
        subject_info = {"kind": "footprint", **solid.info}
    else:
        if model is not None:
            path, georef, _, sha = _load_model(conn, model)
            subject_model = model
        else:
            from cim_builder.ifc import _slug, open_ifc, read_georef

            path = Path(ifc_path)
            f = open_ifc(path)
            georef = read_georef(f, path, at=at, rotation=rotation, crs=crs)
            subject_model, sha = _slug(path.stem), None
        subject, fp4490, w = model_solids(path, subject_model, georef, sha256=sha)
        warnings += w
        if not subject:
            raise CimError(f"model {subject_model!r}: no solid element to check (only spaces?)")
        subject_info = {"kind": "model", "id": subject_model, "file": path.name, "georef": georef.method,
                        "elements": len(subject)}
    lo = np.min([s.bounds()[0] for s in subject], axis=0)
    hi = np.max([s.bounds()[1] for s in subject], axis=0)
    subject_info["z_range"] = [round(float(lo[2]), 3), round(float(hi[2]), 3)]
    subject_info["footprint"] = json.loads(shapely.to_geojson(fp4490))
    bounds_m = (lo[0], lo[1], hi[0], hi[1])
    t_read = time.perf_counter()
    pipes = load_pipes(conn, bounds_m, when, search + _SIZE_MARGIN_M, pipes_layer)
    warnings += pipes.warnings
    structures, w = load_basements(conn, bounds_m, when, search, dem, basements_layer)
    warnings += w
    structures += _other_models(conn, subject_model, fp4490, search, warnings)
    t_loaded = time.perf_counter()
    clearance, nearest, axis = pipe_distances(pipes, subject, search)
    found = structure_distances(subject, structures, search)
    t_done = time.perf_counter()

    rows = []
    for r in np.flatnonzero(clearance <= search):
        rec = pipes.records[r]
        code = rec.get("type_code") or TYPE_CODES.get(rec.get("type"), "")
        req = required_clearance(code, _num(rec.get("diameter_mm")), rec.get("pressure"), overrides)
        c = float(clearance[r])
        rows.append({
            "id": rec["id"], "segment_id": rec.get("segment_id"), "type": rec.get("type") or TYPE_NAMES.get(code),
            "type_code": code, "size": _size_text(rec), "diameter_mm": _num(rec.get("diameter_mm")),
            "width_mm": _num(rec.get("width_mm")), "height_mm": _num(rec.get("height_mm")),
            "material": rec.get("material"), "pressure": rec.get("pressure"),
            "start_axis_z": _num(rec.get("start_axis_z")), "end_axis_z": _num(rec.get("end_axis_z")),
            "clearance_m": round(c, 3), "axis_distance_m": round(float(axis[r]), 3),
            "cuts": bool(c <= 0), "required_m": req, "too_close": bool(req is not None and 0 < c < req),
            "nearest": _solid_ref(subject[nearest[r]]) if nearest[r] >= 0 else None,
        })
    rows.sort(key=lambda x: (x["clearance_m"], x["id"]))
    codes = _entity_codes(conn, when, {pipes_layer: [x["id"] for x in rows],
                                       basements_layer: [s.info["id"] for s in structures if s.info["kind"] == "basement"]})
    for x in rows:
        x["entity"] = codes.get((pipes_layer, x["id"]))
    for s in structures:
        if s.info["kind"] == "basement":
            s.info["entity"] = codes.get((basements_layer, s.info["id"]))
    srows = []
    for t, d, s in found:
        srows.append({**_solid_ref(structures[t]), "clearance_m": round(d, 3), "overlaps": bool(d <= 0),
                      "nearest": _solid_ref(subject[s])})
    by_type: dict[str, dict] = {}
    for x in rows:
        b = by_type.setdefault(x["type"] or "?", {"type_code": x["type_code"], "pipes": 0, "cuts": 0,
                                                  "too_close": 0, "min_clearance_m": None})
        b["pipes"] += 1
        b["cuts"] += x["cuts"]
        b["too_close"] += x["too_close"]
        if b["min_clearance_m"] is None or x["clearance_m"] < b["min_clearance_m"]:
            b["min_clearance_m"] = x["clearance_m"]
    summary = {"pipes": len(rows), "cuts": sum(x["cuts"] for x in rows),
               "too_close": sum(x["too_close"] for x in rows), "by_type": by_type,
               "structures": len(srows), "structures_overlapping": sum(x["overlaps"] for x in srows),
               "pipes_examined": len(pipes.records), "structures_examined": len(structures),
               "seconds": {"subject": round(t_read - t0, 3), "read": round(t_loaded - t_read, 3),
                           "check": round(t_done - t_loaded, 3), "total": round(time.perf_counter() - t0, 3)}}
    return {"subject": subject_info, "as_of": when.isoformat() if when else None, "search_distance_m": search,
            "required_m": {c: required_clearance(c, None, None, overrides) for c in TYPE_NAMES},
            "required_basis": "GB 50289-2016 表 4.1.9 (defaults; overridden: "
                              + (", ".join(f"{TYPE_NAMES[k]}={v:g}" for k, v in overrides.items()) or "none") + ")",
            "pipes": rows, "structures": srows, "summary": summary,
            "highlight": {"tileset": "underground", "class": "pipe_segment", "property": "id",
                          "cuts": [x["id"] for x in rows if x["cuts"]],
                          "too_close": [x["id"] for x in rows if x["too_close"]]},
            "warnings": warnings}


def _entity_codes(conn, when, keys: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """Geographic entity codes (spatial_api.entities' ``entity_links``) of features, as of ``when``,
    in one query; none when the entities tables are not there."""
    if not any(keys.values()) or conn.execute("SELECT to_regclass('entity_links') IS NULL").fetchone()[0]:
        return {}
    layers = [k for k, v in keys.items() for _ in v]
    fids = [f for v in keys.values() for f in v]
    cond = "l.valid_to IS NULL" if when is None else "(l.valid_from <= %s AND (l.valid_to IS NULL OR l.valid_to > %s))"
    rows = conn.execute(
        "SELECT DISTINCT ON (l.source, l.key) l.source, l.key, l.code FROM entity_links l "
        "JOIN unnest(%s::text[], %s::text[]) AS k(source, key) ON l.source = k.source AND l.key = k.key "
        f"WHERE l.kind = 'feature' AND {cond} ORDER BY l.source, l.key, l.valid_from DESC",
        [layers, fids] + ([] if when is None else [when, when])).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def _other_models(conn, subject_model: str | None, fp4490, search: float, warnings: list[str]) -> list[Solid]:
    """Below-ground elements of the other active registered models within ``search`` of the subject."""
    if conn.execute("SELECT to_regclass('cim_models') IS NULL").fetchone()[0]:
        return []
    rows = conn.execute(
        "SELECT id FROM cim_models WHERE active AND id IS DISTINCT FROM %s AND ST_DWithin(footprint::geography, "
        "ST_GeomFromText(%s, 4490)::geography, %s) ORDER BY id",
        (subject_model, fp4490.wkt, search)).fetchall()
    out: list[Solid] = []
    for (mid,) in rows:
        try:
            path, georef, _, sha = _load_model(conn, mid)
            solids, _, _ = model_solids(path, mid, georef, below_only=True, sha256=sha)
        except CimError as exc:
            warnings.append(f"model {mid!r} left out of the structures: {exc}")
            continue
        out += solids
    return out
