"""``geotwin cim build-underground``: the pipe network (layers ``pipe_segments`` and ``pipe_points``)
and the underground structures without BIM (layer ``basements``), as of a date → a 3D Tiles 1.1
tileset (id ``underground``, registered with ``params.kind = "underground"``).

Stages, in order (timing laps in brackets):

1. :func:`_read` — the three layers as of the date (any of them may be missing; none at all is
   an error); values pulled out of the properties by the database, each column aggregated into
   one array; a large layer read in parts of consecutive pages, two at a time on two
   connections that share one exported snapshot [read];
2. :func:`_prepare` — pipes: every vertex of a segment's line (EPSG:4490) with its axis
   elevation interpolated along the line between ``start_axis_z`` and ``end_axis_z`` (a straight
   two-point line, as the survey gives it, is one piece); manholes: the pipe points with
   ``is_manhole``, from ``ground_z`` down to ``bottom_z``; basements: footprint prisms from the
   ground (``ground_z``, else the lowest DEM value under the footprint) down to ``ground − depth_m``.
   Objects that cannot be drawn (no axis elevation, no size, no geometry) are left out with a
   warning naming them. Heights are orthometric; ellipsoidal = orthometric + N (geo.py) [prepare];
3. :func:`_plan` — the quadtree of :mod:`cim_builder.tileset` (each object's size σ picks its
   level, its centre its cell: a 40 m pipe sits where the tiles claim a 40 m error, so pipes
   appear when the view is down to a street or two), ``refine: ADD``; one content hash per tile
   (builder, layout, N, DEM, every (layer, fid, version) in it): an unchanged tile keeps its
   file [layout];
4. :func:`_write_tiles` — per changed tile one glb in the east-north-up frame at the cell's
   centre: a primitive per class (pipes, manholes: vertex colours by type; structures:
   translucent grey), EXT_mesh_features + EXT_structural_metadata (:data:`pipes.SCHEMA`: one
   property table per class) [tiles];
5. :func:`_write_tileset` — tileset.json and the registry in one transaction; files no tile
   references any more removed last [write].

All-or-nothing as ``cim build``: content file names carry their hash, tileset.json is replaced
atomically, the registry is updated in one transaction, and a failure removes the files the
build wrote.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg
import shapely
from psycopg import sql
from psycopg.types.json import Jsonb

from cim_builder import pipes
from cim_builder.build import (
    TILESET_ID_RE,
    TilesetReport,
    _as_datetime,
    _atomic_write,
    _hash,
    _project_to_metric,
    default_out_dir,
)
from cim_builder.geo import (
    DEFAULT_GEOID_SEPARATION,
    GEOGRAPHIC_CRS,
    METRIC_CRS,
    CimError,
    Frame,
    enu_rotation,
    lonlat_to_ecef,
    resolve_dem,
    to_ecef,
    transformer,
)
from cim_builder.glb import GlbWriter, Primitive, PropertyTable
from cim_builder.lod1 import footprints, prism_mesh
from cim_builder.tileset import (
    Layout,
    build_tree,
    cap_levels,
    choose_layout,
    tile_key,
    tileset_json,
)
from spatial_api import db, store
from spatial_api.config import get_settings

BUILDER_VERSION = "geotwin-underground/2"  # 2: one property table per glb (CesiumJS reads one per model)
KIND = "underground"
SEGMENTS, POINTS, BASEMENTS = "pipe_segments", "pipe_points", "basements"
#: Most objects in a tile (sets the quadtree's depth at a full build): 2,500 pipes of 24 vertices
#: keep a primitive under 65,536 vertices (16-bit indices), a tile about 2.5 MB.
MAX_PER_TILE = 2500
_ACCESS_ORDER = {"public": 0, "internal": 1, "restricted": 2}
# metres → radians of latitude / longitude, rounded so that a bound grows rather than shrinks
_M_PER_RAD = 6.33e6


@dataclass
class UndergroundReport(TilesetReport):
    segments: int = 0
    manholes: int = 0
    structures: int = 0
    layers: list[str] = field(default_factory=list)
    vertices: int = 0
    cpu: dict = field(default_factory=dict)  # CPU seconds per lap: this process and its mesh workers

    @property
    def objects(self) -> int:
        return self.segments + self.manholes + self.structures


# ------------------------------------------------------------------------------------------
# reading


def _number(prop: str) -> sql.Composable:
    """A property as float8: JSON numbers and numeric text; anything else NULL (never an error)."""
    p = sql.SQL("f.properties->{}").format(sql.Literal(prop))
    t = sql.SQL("f.properties->>{}").format(sql.Literal(prop))
    return sql.SQL("CASE WHEN jsonb_typeof({p}) = 'number' THEN ({t})::float8 "
                   "WHEN {t} ~ '^\\s*[-+]?[0-9]+(\\.[0-9]*)?\\s*$' THEN ({t})::float8 END").format(p=p, t=t)


def _text(prop: str) -> sql.Composable:
    return sql.SQL("f.properties->>{}").format(sql.Literal(prop))


def _entity_code(conn, layer: str, at) -> sql.Composable:
    """The code of the geographic entity each feature represents as of ``at`` (entity_links,
    spatial_api.entities), or NULL where there is none or no entity table (or no link from the
    layer at all: then the per-row look-up is skipped)."""
    linked = conn.execute("SELECT to_regclass('entity_links') IS NOT NULL AND EXISTS (SELECT 1 FROM entity_links "
                          "WHERE kind = 'feature' AND source = %s)", (layer,)).fetchone()[0]
    if not linked:
        return sql.SQL("NULL::text")
    when = (sql.SQL("l.valid_to IS NULL") if at is None else
            sql.SQL("l.valid_from <= {t} AND (l.valid_to IS NULL OR l.valid_to > {t})").format(t=sql.Literal(at)))
    return sql.SQL("(SELECT l.code FROM entity_links l WHERE l.kind = 'feature' AND l.source = {} AND l.key = f.fid "
                   "AND {} ORDER BY l.valid_from DESC LIMIT 1)").format(sql.Literal(layer), when)


#: Rows a read part aims at: a layer is read in parts of consecutive pages (ctid ranges, each
#: part one query whose columns come back as arrays), two at a time on two connections.
PART_ROWS = 30_000
READ_CONNECTIONS = 2


@dataclass
class ReadJob:
    """One query of the read: a layer's columns, restricted to the pages [first, last) of its
    partition (None: all of it)."""

    layer: str
    texts: dict
    numbers: dict
    geom: sql.Composable
    where: sql.Composable | None = None
    pages: tuple[int, int | None] | None = None


def _read_part(conn, job: ReadJob, at) -> dict:
    """One query: fid, vid, the ``texts`` and ``numbers`` (name → SQL expression) and ``geom`` of
    the layer's features as of ``at`` in the job's pages, each column aggregated into one array
    (binary: no per-row objects; all aggregates of one query see the rows in the same, physical,
    order). Numbers come back as float arrays (NaN for none), text and geometries (WKB) as object
    arrays."""
    texts = {**job.texts, "entity": _entity_code(conn, job.layer, at)}
    cond, params = store.temporal_filter(at, None)
    conds = [sql.SQL("f.layer = %s"), cond] + ([job.where] if job.where is not None else [])
    if job.pages is not None:
        first, last = job.pages
        conds.append(sql.SQL("f.ctid >= {}::tid").format(sql.Literal(f"({first},0)")))
        if last is not None:
            conds.append(sql.SQL("f.ctid < {}::tid").format(sql.Literal(f"({last},0)")))
    columns = [sql.SQL("f.fid"), sql.SQL("f.vid"), *texts.values(), *job.numbers.values(), job.geom]
    # with each row's physical position (tidsend: page, line): the rows in page order whatever the plan
    query = sql.SQL("SELECT string_agg(tidsend(f.ctid), ''::bytea), {} FROM {} f WHERE {}").format(
        sql.SQL(", ").join(sql.SQL("array_agg({})").format(c) for c in columns),
        sql.Identifier(store.partition_name(job.layer)), sql.SQL(" AND ").join(conds))
    with conn.cursor(binary=True) as cur:
        row = cur.execute(query, [job.layer, *params]).fetchone()
    names = ["ctid", "fid", "vid", *texts, *job.numbers, "geom"]
    cols = dict(zip(names, (v if v is not None else [] for v in row)))
    tid = np.frombuffer(cols.pop("ctid") or b"", dtype=[("page", ">u4"), ("line", ">u2")])
    position = (tid["page"].astype(np.int64) << 16) | tid["line"]
    out = {name: _objects(cols[name]) for name in ("fid", *texts, "geom")}
    out["vid"] = np.array(cols["vid"], dtype=np.int64)
    out.update({name: np.array(cols[name], dtype=float).reshape(-1) for name in job.numbers})
    if len(position) > 1 and not (np.diff(position) > 0).all():
        order = np.argsort(position, kind="stable")
        out = {k: v[order] for k, v in out.items()}
    return out


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _concat(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _jobs(conn, layer: str, texts: dict, numbers: dict, geom: sql.Composable,
          where: sql.Composable | None = None) -> list[ReadJob] | None:
    """The read parts of a layer (by page ranges of its partition, about PART_ROWS rows each);
    None when the layer does not exist."""
    if store.get_layer(conn, layer) is None:
        return None
    pages, rows = conn.execute("SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, c.reltuples "
                               "FROM pg_class c WHERE c.oid = to_regclass(%s)",
                               (store.partition_name(layer),)).fetchone() or (0, -1)
    if rows < 0:  # never analysed: about 20 features a page
        rows = 20 * pages
    parts = max(1, min(int(pages), -(-int(rows) // PART_ROWS)))
    if parts == 1:
        return [ReadJob(layer, texts, numbers, geom, where)]
    cuts = [int(pages) * k // parts for k in range(parts)] + [None]
    return [ReadJob(layer, texts, numbers, geom, where, (cuts[k], cuts[k + 1])) for k in range(parts)]


def segment_jobs(conn) -> list[ReadJob] | None:
    texts = {k: _text(k) for k in ("type", "type_code", "material")}
    numbers = {k: _number(k) for k in ("diameter_mm", "width_mm", "height_mm", "start_axis_z", "end_axis_z")}
    return _jobs(conn, SEGMENTS, texts, numbers, sql.SQL("ST_AsBinary(f.geom)"))


def manhole_jobs(conn) -> list[ReadJob] | None:
    """The pipe points with ``is_manhole``, their position as lon / lat (EPSG:4490)."""
    texts = {k: _text(k) for k in ("type", "type_code")}
    numbers = {**{k: _number(k) for k in ("ground_z", "bottom_z", "well_depth")},
               "lon": sql.SQL("ST_X(ST_PointOnSurface(f.geom))::float8"),
               "lat": sql.SQL("ST_Y(ST_PointOnSurface(f.geom))::float8")}
    manhole = sql.SQL("lower(coalesce(f.properties->>'is_manhole', '')) IN ('true', 't', '1', 'yes', '是')")
    return _jobs(conn, POINTS, texts, numbers, sql.SQL("NULL::bytea"), manhole)


def basement_jobs(conn) -> list[ReadJob] | None:
    texts = {k: _text(k) for k in ("building_id", "use")}
    numbers = {k: _number(k) for k in ("levels", "depth_m", "ground_z")}
    return _jobs(conn, BASEMENTS, texts, numbers, sql.SQL("ST_AsBinary(f.geom)"))


def _read_all(conn, layers: dict[str, list[ReadJob]], at) -> dict[str, dict]:
    """Every job of every layer, READ_CONNECTIONS at a time, each on a connection of its own in
    one snapshot exported by ``conn`` (so the parts of a layer, and the layers, agree even while
    a changeset is being written); the parts of a layer concatenated in page order."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(layer, k, job) for layer, js in layers.items() for k, job in enumerate(js)]
    if len(jobs) == 1:
        layer, _, job = jobs[0]
        return {layer: _read_part(conn, job, at)}
    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
    local = threading.local()
    opened: list = []
    lock = threading.Lock()

    def run(job: ReadJob) -> dict:
        c = getattr(local, "conn", None)
        if c is None:
            c = db.connect_like(conn)
            with lock:
                opened.append(c)
            c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            c.read_only = True
            c.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            c.execute("SET LOCAL jit = off")
            local.conn = c
        return _read_part(c, job, at)

    try:
        with ThreadPoolExecutor(max_workers=min(READ_CONNECTIONS, len(jobs))) as pool:
            futures = [(layer, k, pool.submit(run, job)) for layer, k, job in jobs]
            results: dict[str, list] = {layer: [None] * len(js) for layer, js in layers.items()}
            for layer, k, fut in futures:
                results[layer][k] = fut.result()
    finally:
        for c in opened:
            c.close()
    return {layer: _concat(parts) for layer, parts in results.items()}


# ------------------------------------------------------------------------------------------
# the objects to draw


def _examples(fids: np.ndarray, mask: np.ndarray, n: int = 5) -> str:
    picked = [str(f) for f in fids[mask][:n]]
    more = int(mask.sum()) - len(picked)
    return ", ".join(picked) + (f" and {more} more" if more > 0 else "")


@dataclass
class Pipes:
    """Drawable pipe segments (one entry per feature) and the pieces of their axes (one per pair
    of consecutive line vertices; ``poff`` the pieces of each segment)."""

    raw: dict  # the read's arrays (segment_jobs), filtered
    box: np.ndarray  # rectangular section
    radius: np.ndarray  # m: cylinder radius, or the half diagonal of a box (bounds)
    width: np.ndarray  # m (boxes; cylinders: the diameter)
    height: np.ndarray
    a_ecef: np.ndarray  # (P, 3) piece start on the axis (ellipsoidal)
    b_ecef: np.ndarray
    up: np.ndarray  # (P, 3) local up at each piece's start (ECEF)
    poff: np.ndarray  # (S+1,)
    x: np.ndarray  # centre, EPSG:4547
    y: np.ndarray
    sigma: np.ndarray
    bounds: np.ndarray  # (S, 6) west, south, east, north (rad), min h, max h (ellipsoidal)
    colours: np.ndarray  # (S, 4) uint8 RGBA by type


@dataclass
class Manholes:
    raw: dict
    colours: np.ndarray
    radius: np.ndarray
    top: np.ndarray  # (M, 3) ECEF
    bottom: np.ndarray
    up: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    bounds: np.ndarray


@dataclass
class Structures:
    raw: dict
    geoms: np.ndarray  # EPSG:4547
    ground: np.ndarray  # orthometric
    depth: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    bounds: np.ndarray


def _take(raw: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in raw.items()}


def prepare_pipes(raw: dict, separation: float, warnings: list[str]) -> Pipes:
    fids = raw["fid"]
    geoms = shapely.from_wkb(raw["geom"])
    # a one-part MultiLineString (as shapefiles store lines) is its line; repeated vertices go
    single = (shapely.get_type_id(geoms) == 5) & (shapely.get_num_geometries(geoms) == 1)
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    # (a two-point line has no vertex to drop: only longer lines are rebuilt)
    longer = shapely.get_num_coordinates(geoms) > 2
    if longer.any():
        geoms[longer] = shapely.remove_repeated_points(geoms[longer], 1e-9)
    diameter, width, height = raw["diameter_mm"], raw["width_mm"], raw["height_mm"]
    box = ~(diameter > 0) & (width > 0) & (height > 0)
    sized = (diameter > 0) | box
    z0, z1 = raw["start_axis_z"], raw["end_axis_z"]
    has_z = np.isfinite(z0) & np.isfinite(z1)
    drawable = (shapely.get_type_id(geoms) == 1) & (shapely.length(geoms) > 0)
    for mask, why in ((~drawable, "are not one line with a length"),
                      (drawable & ~has_z, "have no start_axis_z / end_axis_z"),
                      (drawable & has_z & ~sized, "have neither diameter_mm nor width_mm × height_mm")):
        if mask.any():
            warnings.append(f"{int(mask.sum())} pipe segments {why}, left out: {_examples(fids, mask)}")
    keep = drawable & has_z & sized
    raw = _take({**raw, "geom": geoms}, keep)
    if not keep.any():
        none = np.zeros(0)
        return Pipes(raw=raw, box=np.zeros(0, bool), radius=none, width=none, height=none, a_ecef=np.zeros((0, 3)),
                     b_ecef=np.zeros((0, 3)), up=np.zeros((0, 3)), poff=np.zeros(1, np.int64), x=none, y=none,
                     sigma=none, bounds=np.zeros((0, 6)), colours=np.zeros((0, 4), np.uint8))
    geoms, box = raw["geom"], box[keep]
    width = np.where(box, raw["width_mm"], raw["diameter_mm"]) / 1000.0
    height = np.where(box, raw["height_mm"], raw["diameter_mm"]) / 1000.0
    radius = np.where(box, np.hypot(width, height) / 2, width / 2)
    lonlat, line = shapely.get_coordinates(geoms, return_index=True)
    x, y = transformer(GEOGRAPHIC_CRS, METRIC_CRS).transform(lonlat[:, 0], lonlat[:, 1])
    n = len(geoms)
    voff = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(line, minlength=n), out=voff[1:])
    # axis elevation of every vertex: linear in the 2D distance along the line
    step = np.hypot(np.diff(x), np.diff(y))
    step[voff[1:-1] - 1] = 0.0  # no step across two lines
    along = np.r_[0.0, np.cumsum(step)]
    along -= along[voff[:-1]][line]
    total = along[voff[1:] - 1]
    frac = along / np.where(total > 0, total, 1.0)[line]
    zs = raw["start_axis_z"][line] + frac * (raw["end_axis_z"] - raw["start_axis_z"])[line] + separation
    ecef = lonlat_to_ecef(lonlat[:, 0], lonlat[:, 1], zs)
    piece = np.ones(len(x), bool)
    piece[voff[1:] - 1] = False  # a piece starts at every vertex but its line's last
    piece_start = np.flatnonzero(piece)
    poff = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(line[piece_start], minlength=n), out=poff[1:])
    up = enu_rotation(lonlat[piece_start, 0], lonlat[piece_start, 1])[:, 2, :]
    # bounds: the line's vertices widened by the radius
    lon_r, lat_r = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    bounds = np.empty((n, 6))
    starts = voff[:-1]
    bounds[:, 0] = np.minimum.reduceat(lon_r, starts)
    bounds[:, 1] = np.minimum.reduceat(lat_r, starts)
    bounds[:, 2] = np.maximum.reduceat(lon_r, starts)
    bounds[:, 3] = np.maximum.reduceat(lat_r, starts)
    bounds[:, 4] = np.minimum.reduceat(zs, starts) - radius - 0.01
    bounds[:, 5] = np.maximum.reduceat(zs, starts) + radius + 0.01
    _widen(bounds, radius)
    west, south = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
    east, north = np.maximum.reduceat(x, starts), np.maximum.reduceat(y, starts)
    sigma = np.maximum(np.hypot(east - west, north - south), 2 * radius)
    return Pipes(raw=raw, box=box, radius=radius, width=width, height=height, a_ecef=ecef[piece_start],
                 b_ecef=ecef[piece_start + 1], up=up, poff=poff, x=(west + east) / 2, y=(south + north) / 2,
                 sigma=sigma, bounds=bounds, colours=pipes.type_colours(raw["type_code"]))


def _widen(bounds: np.ndarray, metres: np.ndarray) -> None:
    """Widen lon/lat bounds (radians) by ``metres`` (and a centimetre) on every side."""
    dlat = (np.asarray(metres) + 0.01) / _M_PER_RAD
    dlon = dlat / np.cos(np.maximum(np.abs(bounds[:, 1]), np.abs(bounds[:, 3])))
    bounds[:, 0] -= dlon
    bounds[:, 2] += dlon
    bounds[:, 1] -= dlat
    bounds[:, 3] += dlat


def prepare_manholes(raw: dict, separation: float, warnings: list[str]) -> Manholes:
    fids = raw["fid"]
    ground, bottom = raw["ground_z"], raw["bottom_z"]
    ok = np.isfinite(ground) & np.isfinite(bottom) & (ground > bottom) & np.isfinite(raw["lon"])
    if (~ok).any():
        warnings.append(f"{int((~ok).sum())} manholes have no ground_z above their bottom_z, left out: "
                        f"{_examples(fids, ~ok)}")
    raw = _take(raw, ok)
    ground, bottom, lon, lat = raw["ground_z"], raw["bottom_z"], raw["lon"], raw["lat"]
    depth = np.where(np.isfinite(raw["well_depth"]), raw["well_depth"], ground - bottom)
    radius = pipes.shaft_radius(depth)
    x, y = transformer(GEOGRAPHIC_CRS, METRIC_CRS).transform(lon, lat)
    lon_r, lat_r = np.radians(lon), np.radians(lat)
    bounds = np.column_stack([lon_r, lat_r, lon_r, lat_r, bottom + separation - 0.01, ground + separation + 0.01])
    _widen(bounds, radius)
    return Manholes(raw=raw, colours=pipes.type_colours(raw["type_code"]), radius=radius, top=lonlat_to_ecef(lon, lat, ground + separation),
                    bottom=lonlat_to_ecef(lon, lat, bottom + separation),
                    up=enu_rotation(lon, lat)[:, 2, :] if len(lon) else np.zeros((0, 3)),
                    x=np.asarray(x, float), y=np.asarray(y, float),
                    sigma=np.maximum(2 * radius, ground - bottom), bounds=bounds)


def prepare_structures(raw: dict, separation: float, warnings: list[str], dem_for) -> Structures:
    """``dem_for(fids)`` gives the DEM when some basements have no ground_z (it names them in its
    error when there is none)."""
    fids = raw["fid"]
    geoms = shapely.from_wkb(raw["geom"])
    polygon = np.isin(shapely.get_type_id(geoms), (3, 6)) & (shapely.area(geoms) > 0)
    depth_ok = raw["depth_m"] > 0
    for mask, why in ((~polygon, "are not polygons with an area"), (polygon & ~depth_ok, "have no depth_m > 0")):
        if mask.any():
            warnings.append(f"{int(mask.sum())} basements {why}, left out: {_examples(fids, mask)}")
    keep = polygon & depth_ok
    raw = _take({**raw, "geom": geoms}, keep)
    metric = _project_to_metric(raw["geom"]) if len(raw["geom"]) else np.array([], object)
    ground = raw["ground_z"].copy()
    missing = ~np.isfinite(ground)
    if missing.any():
        dem = dem_for(raw["fid"][missing])
        xy, owner = shapely.get_coordinates(metric[missing], return_index=True)
        z = dem.sample(xy[:, 0], xy[:, 1], METRIC_CRS)
        low = np.full(int(missing.sum()), np.inf)
        np.minimum.at(low, owner, np.where(np.isfinite(z), z, np.inf))
        off = ~np.isfinite(low)
        if off.any():
            raise CimError(f"basements {_examples(raw['fid'][missing], off)} have no ground_z and lie outside "
                           f"the DEM {dem.path}: give them a ground_z or pass a --dem that covers them")
        ground[missing] = low
    depth = raw["depth_m"]
    west, south, east, north = shapely.bounds(metric).T if len(metric) else (np.zeros(0),) * 4
    lonlat, owner = shapely.get_coordinates(raw["geom"], return_index=True)
    n = len(metric)
    bounds = np.empty((n, 6))
    for col, fn, values in ((0, np.minimum, lonlat[:, 0]), (1, np.minimum, lonlat[:, 1]),
                            (2, np.maximum, lonlat[:, 0]), (3, np.maximum, lonlat[:, 1])):
        bounds[:, col] = np.inf if fn is np.minimum else -np.inf
        fn.at(bounds[:, col], owner, np.radians(values))
    bounds[:, 4] = ground - depth + separation - 0.01
    bounds[:, 5] = ground + separation + 0.01
    _widen(bounds, np.full(n, 0.5))  # the footprint is projected again: a generous margin
    return Structures(raw=raw, geoms=metric, ground=ground, depth=depth, x=(west + east) / 2, y=(south + north) / 2,
                      sigma=np.maximum(np.hypot(east - west, north - south), depth), bounds=bounds)


# ------------------------------------------------------------------------------------------
# the build


@dataclass
class TileItems:
    key: str
    level: int
    ix: int
    iy: int
    segments: np.ndarray  # positions in Pipes
    manholes: np.ndarray
    structures: np.ndarray
    content_hash: str
    region: list[float]
    uri: str = ""
    reuse: bool = False


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the mesh workers)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


@dataclass
class Context:
    conn: object
    tileset_id: str
    at: datetime | None
    separation: float
    max_per_tile: int
    full: bool
    title: str | None
    started: float
    progress: object = None
    report: UndergroundReport | None = None
    out_dir: Path | None = None
    previous: dict | None = None
    dem_arg: str | Path | None = None
    dem: object = None
    raw: dict = field(default_factory=dict)
    pipes: Pipes | None = None
    manholes: Manholes | None = None
    structures: Structures | None = None
    access_layer: str = SEGMENTS
    layout: Layout | None = None
    params: dict = field(default_factory=dict)
    tiles: list[TileItems] = field(default_factory=list)
    content: dict = field(default_factory=dict)
    rows: list[tuple] = field(default_factory=list)
    written_files: list[Path] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    lap_started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=_cpu_seconds)

    def lap(self, name: str) -> None:
        """Ends the lap ``name``: wall-clock seconds in ``timings``, the CPU seconds of this
        process and of its finished mesh workers in ``cpu`` (on a loaded machine the CPU time is
        the steadier measure of the work; the database server's share of the read is not in it)."""
        now, cpu = time.perf_counter(), _cpu_seconds()
        self.timings[name] = round(now - self.lap_started, 3)
        self.cpu[name] = round(cpu - self.cpu_started, 3)
        self.lap_started, self.cpu_started = now, cpu
        if self.progress:
            self.progress(name)

    @property
    def tmp_json(self) -> Path:
        return self.out_dir / f"tileset.json.tmp{os.getpid()}"


def build_underground(settings=None, *, tileset_id: str = "underground", as_of=None, out: str | Path | None = None,
                      dem: str | Path | None = None, geoid_separation: float | None = None, full: bool = False,
                      max_per_tile: int = MAX_PER_TILE, title: str | None = None, progress=None) -> UndergroundReport:
    """Build (or rebuild: unchanged tiles keep their files) the underground tileset."""
    settings = settings or get_settings()
    started = time.perf_counter()
    if not TILESET_ID_RE.match(tileset_id):
        raise CimError(f"--id {tileset_id!r}: use lower-case letters, digits, '-' and '_' (≤ 63)")
    if max_per_tile < 1:
        raise CimError(f"--max-per-tile {max_per_tile}: give a positive number")
    at = _as_datetime(as_of, settings)
    separation = DEFAULT_GEOID_SEPARATION if geoid_separation is None else float(geoid_separation)
    with db.connect(settings) as conn:
        ctx = Context(conn=conn, tileset_id=tileset_id, at=at, separation=separation, max_per_tile=max_per_tile,
                      full=full, title=title, started=started, progress=progress, dem_arg=dem)
        _lock_and_locate(ctx, settings, out)
        _read(ctx)
        ctx.lap("read")
        _prepare(ctx)
        ctx.lap("prepare")
        _plan(ctx)
        ctx.lap("layout")
        try:
            _write_tiles(ctx)
            ctx.lap("tiles")
            _write_tileset(ctx)
        except BaseException:
            ctx.tmp_json.unlink(missing_ok=True)
            for path in ctx.written_files:
                path.unlink(missing_ok=True)
            raise
        _remove_unreferenced(ctx)
        ctx.lap("write")
        ctx.report.seconds = round(time.perf_counter() - started, 3)
        ctx.report.timings, ctx.report.cpu = ctx.timings, ctx.cpu
    return ctx.report


def _lock_and_locate(ctx: Context, settings, out) -> None:
    ctx.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin-cim:{ctx.tileset_id}",))
    row = ctx.conn.execute("SELECT out_dir, layout, params FROM cim_tilesets WHERE id = %s",
                           (ctx.tileset_id,)).fetchone()
    if row and (row[2] or {}).get("kind") != KIND:
        raise CimError(f"--id {ctx.tileset_id!r} is a {(row[2] or {}).get('kind') or 'buildings'} tileset "
                       f"(geotwin cim build): choose another id for the underground")
    ctx.previous = {"out_dir": row[0], "layout": row[1], "params": row[2]} if row else None
    out_dir = Path(out) if out else (Path(row[0]) if row else default_out_dir(settings, ctx.tileset_id))
    ctx.out_dir = out_dir.resolve()
    ctx.report = UndergroundReport(tileset_id=ctx.tileset_id, out_dir=str(ctx.out_dir),
                                   geoid_separation=ctx.separation)


def _read(ctx: Context) -> None:
    conn = ctx.conn
    layers = {}
    for layer, jobs in ((SEGMENTS, segment_jobs), (POINTS, manhole_jobs), (BASEMENTS, basement_jobs)):
        js = jobs(conn)
        if js is not None:
            layers[layer] = js
            ctx.report.layers.append(layer)
    ctx.raw = _read_all(conn, layers, ctx.at) if layers else {}
    if not ctx.raw:
        raise CimError("nothing underground to build: no pipe_segments, pipe_points or basements layer — load a "
                       "survey (geotwin ingest pipes POINTS SEGMENTS --type 给水) or basements (geotwin ingest vector "
                       "FILE --layer basements --key basement_id)")
    levels = {r[0]: r[1] for r in conn.execute("SELECT name, access_level FROM layers WHERE name = ANY(%s)",
                                               (list(ctx.raw),))}
    # the tileset is as visible as its most restricted layer (routes.py reads params.layer)
    ctx.access_layer = max(ctx.raw, key=lambda name: _ACCESS_ORDER.get(levels.get(name), 2))


def _prepare(ctx: Context) -> None:
    warnings, sep = ctx.report.warnings, ctx.separation

    def dem_for(fids):
        if ctx.dem is None:
            try:
                ctx.dem = resolve_dem(ctx.conn, ctx.dem_arg, ctx.at)
            except CimError as exc:
                raise CimError(f"basements {_examples(fids, np.ones(len(fids), bool))} have no ground_z: "
                               f"{exc}") from None
            ctx.report.dem = str(ctx.dem.path)
        return ctx.dem

    if SEGMENTS in ctx.raw:
        ctx.pipes = prepare_pipes(ctx.raw[SEGMENTS], sep, warnings)
        ctx.report.segments = len(ctx.pipes.sigma)
    if POINTS in ctx.raw:
        ctx.manholes = prepare_manholes(ctx.raw[POINTS], sep, warnings)
        ctx.report.manholes = len(ctx.manholes.sigma)
    if BASEMENTS in ctx.raw:
        ctx.structures = prepare_structures(ctx.raw[BASEMENTS], sep, warnings, dem_for)
        ctx.report.structures = len(ctx.structures.sigma)
    if not ctx.report.objects:
        when = f"as of {ctx.at:%Y-%m-%d}" if ctx.at else "now"
        raise CimError(f"nothing underground to draw {when}: layers {', '.join(ctx.raw)} hold no drawable pipe, "
                       "manhole or basement" + (f" ({warnings[0]})" if warnings else ""))


def _parts(ctx: Context) -> list:
    return [ctx.pipes, ctx.manholes, ctx.structures]


def _plan(ctx: Context) -> None:
    """Layout (the previous one when the parameters are the same and everything fits), each
    object's cell, tiles, content hashes and regions."""
    report = ctx.report
    parts = _parts(ctx)
    kinds, pos, xs, ys, sig, fids, vids, bounds, entities = [], [], [], [], [], [], [], [], []
    for k, part in enumerate(parts):
        if part is None or not len(part.sigma):
            continue
        n = len(part.sigma)
        kinds.append(np.full(n, k))
        pos.append(np.arange(n))
        xs.append(part.x)
        ys.append(part.y)
        sig.append(part.sigma)
        fids.append(part.raw["fid"].astype(str))
        entities.append(np.array(_strings(part.raw["entity"]), dtype=object))
        vids.append(part.raw["vid"])
        bounds.append(part.bounds)
    kind, index, x, y, sigma = (np.concatenate(v) for v in (kinds, pos, xs, ys, sig))
    fid, vid, bound, entity = (np.concatenate(v) for v in (fids, vids, bounds, entities))
    ctx.params = {"kind": KIND, "builder": BUILDER_VERSION, "geoid_separation": ctx.separation,
                  "dem": ctx.dem.identity if ctx.dem is not None else None, "layer": ctx.access_layer,
                  "layers": sorted(ctx.raw), "max_per_tile": ctx.max_per_tile}
    layout = None
    if ctx.previous and not ctx.full:
        old = Layout.from_json(ctx.previous["layout"])
        if ctx.previous["params"] != ctx.params:
            report.reason = "build parameters changed (layers, DEM, geoid separation or builder)"
        elif not old.contains(x, y):
            report.reason = "objects outside the previous grid"
        else:
            layout = old
    else:
        report.reason = "--full" if ctx.full else "first build"
    if layout is None:
        report.full_rebuild = True
        layout = choose_layout(x, y, sigma, max_per_tile=ctx.max_per_tile)
    ctx.layout = layout
    report.max_level = layout.max_level
    # rank by (kind, fid): as the string kind digit + fid sorts, without building those strings
    tiebreak = np.empty(len(kind), np.int64)
    tiebreak[np.lexsort((fid, kind))] = np.arange(len(kind))
    level, ix, iy = cap_levels(layout, x, y, sigma, tiebreak, ctx.max_per_tile)
    order = np.lexsort((tiebreak, iy, ix, level))
    level, ix, iy, kind, index, fid, vid, bound, entity = (
        a[order] for a in (level, ix, iy, kind, index, fid, vid, bound, entity))
    cells = np.stack([level, ix, iy], axis=1)
    starts = np.r_[0, np.flatnonzero(np.any(cells[1:] != cells[:-1], axis=1)) + 1]
    ends = np.r_[starts[1:], len(level)]
    lo = np.column_stack([np.minimum.reduceat(bound[:, c], starts) for c in (0, 1, 4)])
    hi = np.column_stack([np.maximum.reduceat(bound[:, c], starts) for c in (2, 3, 5)])
    layout_id = json.dumps(layout.to_json(), sort_keys=True)
    common = (BUILDER_VERSION, layout_id, ctx.separation, ctx.params["dem"])
    layer_of = np.array([SEGMENTS, POINTS, BASEMENTS], dtype=object)
    # one "layer:fid:vid" line per object (tile order): a tile's hash covers its slice of them
    members = [f"{la}:{f}:{v}:{e}" for la, f, v, e in zip(layer_of[kind].tolist(), fid.tolist(), vid.tolist(),
                                                          entity.tolist())]
    for t, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        lv, cx, cy = (int(v) for v in cells[a])
        k = kind[a:b]
        content_hash = _hash(*common, "\n".join(members[a:b]))
        key = tile_key(lv, cx, cy)
        uri = f"tiles/{lv}/{cx}/{cy}-{content_hash[:12]}.glb"
        region = [float(lo[t, 0]), float(lo[t, 1]), float(hi[t, 0]), float(hi[t, 1]), float(lo[t, 2]),
                  float(hi[t, 2])]
        ctx.tiles.append(TileItems(key, lv, cx, cy, np.sort(index[a:b][k == 0]), np.sort(index[a:b][k == 1]),
                                   np.sort(index[a:b][k == 2]), content_hash, region, uri,
                                   reuse=not report.full_rebuild and (ctx.out_dir / uri).is_file()))


def _ranges(offsets: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions offsets[p]:offsets[p+1] of every picked p, concatenated, and the rank of
    its p in ``picked`` for each."""
    counts = offsets[picked + 1] - offsets[picked]
    rank = np.repeat(np.arange(len(picked)), counts)
    first = np.repeat(offsets[picked] - np.r_[0, np.cumsum(counts)[:-1]], counts)
    return first + np.arange(int(counts.sum())), rank


def _strings(values: np.ndarray) -> list:
    return ["" if v is None else v for v in values.tolist()]


def _nodata(values: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isfinite(values), values, fill)


def mesh_tile(ctx: Context, tile: TileItems) -> tuple[bytes, list[float], int]:
    """One tile's glb (east-north-up frame at its cell's centre), its transform and vertex count."""
    cell_x, cell_y = ctx.layout.cell_centre(tile.level, tile.ix, tile.iy)
    lon, lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(cell_x, cell_y)
    frame = Frame.at(lon, lat, 0.0)
    rot = frame.rotation
    writer = GlbWriter(pipes.SCHEMA)
    solid = None
    prims, tables = [], []
    vertices = 0

    def add(mesh: pipes.Mesh, count: int, table: PropertyTable, material: int, colours: np.ndarray | None):
        nonlocal vertices
        prims.append(Primitive(pipes.to_gltf(mesh.positions), pipes.to_gltf(mesh.normals), mesh.indices,
                               mesh.owner, count, 0, material, colours))
        tables.append(table)
        vertices += len(mesh.positions)

    if len(tile.segments):
        p = ctx.pipes
        solid = writer.material((1.0, 1.0, 1.0, 1.0), name="pipes and manholes (vertex colours by type)")
        seg = tile.segments
        piece, rank = _ranges(p.poff, seg)
        a, b = frame.local(p.a_ecef[piece]), frame.local(p.b_ecef[piece])
        up = p.up[piece] @ rot.T
        box = p.box[seg][rank]
        meshes = []
        if (~box).any():
            m = pipes.cylinders(a[~box], b[~box], (p.width[seg] / 2)[rank][~box], up[~box])
            m.owner = rank[~box][m.owner]
            meshes.append(m)
        if box.any():
            m = pipes.boxes(a[box], b[box], p.width[seg][rank][box], p.height[seg][rank][box], up[box])
            m.owner = rank[box][m.owner]
            meshes.append(m)
        mesh = pipes.Mesh.concat(meshes) if len(meshes) > 1 else meshes[0]
        raw = p.raw
        colours = p.colours[seg][mesh.owner]
        add(mesh, len(seg), PropertyTable("pipe_segment", len(seg), {
            "id": raw["fid"][seg].tolist(), "type": _strings(raw["type"][seg]),
            "type_code": _strings(raw["type_code"][seg]),
            "diameter_mm": _nodata(raw["diameter_mm"][seg], -1.0), "width_mm": _nodata(raw["width_mm"][seg], -1.0),
            "height_mm": _nodata(raw["height_mm"][seg], -1.0), "material": _strings(raw["material"][seg]),
            "start_axis_z": raw["start_axis_z"][seg], "end_axis_z": raw["end_axis_z"][seg],
            "entity": _strings(raw["entity"][seg])}), solid, colours)
    if len(tile.manholes):
        m_, mh = ctx.manholes, tile.manholes
        if solid is None:
            solid = writer.material((1.0, 1.0, 1.0, 1.0), name="pipes and manholes (vertex colours by type)")
        mesh = pipes.shafts(frame.local(m_.top[mh]), frame.local(m_.bottom[mh]), m_.radius[mh], m_.up[mh] @ rot.T)
        colours = m_.colours[mh][mesh.owner]
        add(mesh, len(mh), PropertyTable("manhole", len(mh), {
            "id": m_.raw["fid"][mh].tolist(), "type": _strings(m_.raw["type"][mh]),
            "ground_z": m_.raw["ground_z"][mh], "bottom_z": m_.raw["bottom_z"][mh],
            "entity": _strings(m_.raw["entity"][mh])}), solid, colours)
    if len(tile.structures):
        s, st = ctx.structures, tile.structures
        mesh = structure_mesh(s, st, ctx.separation, frame)
        material = writer.material(pipes.STRUCTURE_RGBA, name="underground structures", blend=True,
                                   double_sided=True)
        levels = s.raw["levels"][st]
        add(mesh, len(st), PropertyTable("underground_structure", len(st), {
            "id": s.raw["fid"][st].tolist(), "basement_id": s.raw["fid"][st].tolist(), "building_id": _strings(s.raw["building_id"][st]),
            "use": _strings(s.raw["use"][st]),
            "levels": np.where(np.isfinite(levels), levels, -1).astype(np.int16),
            "depth_m": s.depth[st], "entity": _strings(s.raw["entity"][st])}), material, None)
    # one property table for the tile (CesiumJS reads one per model): the kinds one after another
    columns, offsets = pipes.one_table([(t.class_name, t.count, t.columns) for t in tables])
    for prim, offset in zip(prims, offsets):
        prim.feature_ids = prim.feature_ids + offset
    table = PropertyTable(pipes.CLASS, sum(t.count for t in tables), columns)
    return writer.write(prims, [table] if tables else []), frame.transform(), vertices


def structure_mesh(s: Structures, picked: np.ndarray, separation: float, frame: Frame) -> pipes.Mesh:
    """Prisms of the picked structures from their ground down to ground − depth, with a floor
    (lod1.prism_mesh draws walls and the top; the floor is its top turned over at the base)."""
    fp = footprints(s.geoms[picked])
    owner = fp.vertex_building()
    xs, ys = fp.xy[:, 0], fp.xy[:, 1]
    ecef = to_ecef(METRIC_CRS)
    top_h = s.ground[picked][owner] + separation
    base_h = top_h - s.depth[picked][owner]
    base_ecef = np.column_stack(ecef.transform(xs, ys, base_h))
    top_ecef = np.column_stack(ecef.transform(xs, ys, top_h))
    lon, lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(xs[fp.voff[:-1]], ys[fp.voff[:-1]])
    up = enu_rotation(lon, lat)[:, 2, :]
    walls = prism_mesh(fp, 0, fp.count, base_ecef, top_ecef, up, frame)
    floor = frame.local(base_ecef)
    floor_normal = -(up @ frame.rotation.T)[owner]
    # prism_mesh works in glTF coordinates: back to ENU for the common Mesh
    enu = np.column_stack([walls.positions[:, 0], -walls.positions[:, 2], walls.positions[:, 1]]).astype(float)
    nrm = np.column_stack([walls.normals[:, 0], -walls.normals[:, 2], walls.normals[:, 1]]).astype(float)
    tri = fp.tri[:, ::-1].reshape(-1) + len(enu)
    return pipes.Mesh(np.concatenate([enu, floor]), np.concatenate([nrm, floor_normal]),
                      np.concatenate([walls.indices, tri]), np.concatenate([walls.feature_ids, owner]))


#: Processes that mesh the tiles when a build writes at least MESH_PARALLEL_TILES of them and
#: the machine has a core to spare: this one and MESH_PROCESSES - 1 forked workers (they inherit
#: the prepared objects; each writes its own files).
MESH_PROCESSES = 2
MESH_PARALLEL_TILES = 8
_FORKED: Context | None = None  # the build a forked mesh worker serves
_FORK_LOCK = threading.Lock()  # one build at a time forks (builds in threads of one server)


def _mesh_write(ctx: Context, tile: TileItems) -> tuple[list[float], int, int, bool]:
    """Mesh one tile and write its glb (unless a file of that name — the same content — is
    there): its transform, vertex count, bytes and whether the file was written."""
    path = ctx.out_dir / tile.uri
    glb, transform, vertices = mesh_tile(ctx, tile)
    written = not path.exists()
    if written:
        _atomic_write(path, glb)
    return transform, vertices, len(glb), written


def _forked_mesh_write(i: int) -> tuple[list[float], int, int, bool]:
    return _mesh_write(_FORKED, _FORKED.tiles[i])


def _processes() -> int:
    """MESH_PROCESSES where processes can fork and the machine is not busy (the 1-minute load
    average, this build included, below cores − ¼); else 1. On a busy machine a worker only adds
    its start and its copy-on-write pages: measured on 2 cores, the tiles of 50,000 pipes took
    0.33 s in 2 processes against 0.49 s in one at load 1.3, but 0.54–0.62 s against 0.48 s at
    load 2–2.5 (and 15–30 % more CPU)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(MESH_PROCESSES, cores) if os.getloadavg()[0] < cores - 0.25 else 1


def _tile_cost(tile: TileItems) -> int:
    return len(tile.segments) + len(tile.manholes) + 4 * len(tile.structures)


def _mesh_tiles(ctx: Context, todo: list[int]) -> dict[int, tuple]:
    """Mesh and write the tiles ``todo`` (positions in ctx.tiles): shared with forked worker
    processes when there are enough of them (the biggest tiles first, each to the process with
    the least work so far), else all here. Every file written is in ctx.written_files, also when
    a tile fails (the build then removes them)."""
    global _FORKED
    processes = _processes()
    results: dict[int, tuple] = {}
    if processes < 2 or len(todo) < MESH_PARALLEL_TILES:
        for i in todo:
            results[i] = _mesh_write(ctx, ctx.tiles[i])
            if results[i][3]:
                ctx.written_files.append(ctx.out_dir / ctx.tiles[i].uri)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares: list[list[int]] = [[] for _ in range(processes)]
    load = [0] * processes
    for i in sorted(todo, key=lambda i: -_tile_cost(ctx.tiles[i])):
        k = load.index(min(load))
        shares[k].append(i)
        load[k] += _tile_cost(ctx.tiles[i])
    paths = {i: ctx.out_dir / ctx.tiles[i].uri for i in todo}
    there = {i for i, path in paths.items() if path.exists()}
    # PROJ objects the meshes use, made here once so that the workers inherit them
    transformer(METRIC_CRS, GEOGRAPHIC_CRS)
    if ctx.structures is not None and len(ctx.structures.sigma):
        to_ecef(METRIC_CRS)
    with _FORK_LOCK:
        _FORKED = ctx
        try:
            with ProcessPoolExecutor(processes - 1, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {i: pool.submit(_forked_mesh_write, i) for share in shares[1:] for i in share}
                for i in shares[0]:
                    results[i] = _mesh_write(ctx, ctx.tiles[i])
                results.update({i: f.result() for i, f in futures.items()})
        finally:
            _FORKED = None
            # whatever happened: the files of this build, for the build to remove when it fails
            ctx.written_files.extend(paths[i] for i in todo if i not in there and paths[i].exists())
    return results


def _write_tiles(ctx: Context) -> None:
    report = ctx.report
    meshed = _mesh_tiles(ctx, [i for i, tile in enumerate(ctx.tiles) if not tile.reuse])
    for i, tile in enumerate(ctx.tiles):
        count = len(tile.segments) + len(tile.manholes) + len(tile.structures)
        path = ctx.out_dir / tile.uri
        if tile.reuse:
            size = path.stat().st_size
            transform = Frame.at(*transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(
                *ctx.layout.cell_centre(tile.level, tile.ix, tile.iy)), 0.0).transform()
            report.tiles_unchanged += 1
        else:
            transform, vertices, size, _ = meshed[i]
            report.tiles_written += 1
            report.written.append(tile.key)
            report.bytes_written += size
            report.vertices += vertices
        report.bytes_total += size
        ctx.content[tile.key] = {"uri": tile.uri, "region": tile.region, "transform": transform}
        ctx.rows.append((tile.key, tile.uri, tile.content_hash, count, size, tile.region, transform))


def _write_tileset(ctx: Context) -> None:
    report, conn = ctx.report, ctx.conn
    root = build_tree(ctx.layout, ctx.content, [])
    doc = tileset_json(root, extras={"geotwin": {
        "tileset": ctx.tileset_id, "kind": KIND, "as_of": ctx.at.isoformat() if ctx.at else None,
        "built_at": datetime.now().astimezone().isoformat(),
        "heights": f"ellipsoidal = orthometric (survey / DEM) + geoid separation {ctx.separation} m",
        "geoid_separation_m": ctx.separation, "crs": METRIC_CRS, "layers": report.layers,
        "segments": report.segments, "manholes": report.manholes, "structures": report.structures,
        "schema": pipes.SCHEMA["id"]}})
    report.tiles = len(ctx.rows)
    old_keys = {r[0] for r in conn.execute("SELECT tile_key FROM cim_tiles WHERE tileset_id = %s", (ctx.tileset_id,))}
    report.tiles_removed = len(old_keys - {r[0] for r in ctx.rows})
    report.seconds = round(time.perf_counter() - ctx.started, 3)
    report.timings = ctx.timings
    stats = report.stats()
    # /twin/tilesets lists these keys for every tileset
    stats.update({"buildings": 0, "models": 0})
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.tmp_json.write_text(json.dumps(doc, separators=(",", ":")))
    with conn.transaction():
        conn.execute(
            "INSERT INTO cim_tilesets (id, title, out_dir, as_of, built_at, layout, params, stats) "
            "VALUES (%s, %s, %s, %s, now(), %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "title = coalesce(EXCLUDED.title, cim_tilesets.title), out_dir = EXCLUDED.out_dir, "
            "as_of = EXCLUDED.as_of, built_at = now(), layout = EXCLUDED.layout, "
            "params = EXCLUDED.params, stats = EXCLUDED.stats",
            (ctx.tileset_id, ctx.title or "地下管线与地下空间", str(ctx.out_dir), ctx.at, Jsonb(ctx.layout.to_json()),
             Jsonb(ctx.params), Jsonb(stats)))
        conn.execute("DELETE FROM cim_tiles WHERE tileset_id = %s", (ctx.tileset_id,))
        with conn.cursor().copy("COPY cim_tiles (tileset_id, tile_key, uri, content_hash, feature_count, "
                                "bytes, region, transform) FROM STDIN") as copy:
            for row in ctx.rows:
                copy.write_row((ctx.tileset_id, *row))
        os.replace(ctx.tmp_json, ctx.out_dir / "tileset.json")


def _remove_unreferenced(ctx: Context) -> None:
    keep = {r[1] for r in ctx.rows}
    folder = ctx.out_dir / "tiles"
    for path in folder.rglob("*.glb") if folder.exists() else []:
        if path.relative_to(ctx.out_dir).as_posix() not in keep:
            path.unlink(missing_ok=True)
