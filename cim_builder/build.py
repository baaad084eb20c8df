"""``geotwin cim build``: the buildings layer (as of a date) + registered BIM models → a 3D Tiles
1.1 tileset, rebuilt incrementally.

:func:`build` runs these stages in order on one :class:`BuildContext` (timing laps in brackets):

1. :func:`_lock_and_locate` — one build of a tileset at a time; the previous build's folder,
   layout and parameters; :func:`_read_sources` — the buildings as of the date
   (``store.features``), the DEM, the registered BIM models [read];
2. :func:`_to_metric` — footprints → EPSG:4547; :func:`_replace_by_bim` — drop the buildings a
   model replaces (its footprint covers ≥ 30% of theirs, or their centre); :func:`_heights` —
   roof height (height_m, or floors × floor height), centre and size σ [prepare];
3. :func:`_choose_layout` — keep the previous quadtree grid or pick a new one;
   :func:`_order_by_tile` — each building's cell (:mod:`cim_builder.tileset`), buildings sorted by
   tile; :func:`_plan_tiles` — one content hash per tile (builder version, layout, DEM, geoid
   separation, and every (fid, version) in it): what changed [layout];
   :func:`_plan_blocks` — in a district large enough, every cell with buildings below it gets a
   block tile (the far view, :mod:`cim_builder.blocks`), its hash made of the hashes of the tiles
   and models under it [layout];
4. :func:`_stand_on_ground` — base height (lowest DEM value under the footprint's vertices,
   orthometric) and bounds of the buildings in changed tiles only [footprints];
5. :func:`_write_building_tiles` — mesh and write the changed tiles, reuse the others [tiles];
6. :func:`_write_block_tiles` — generalise, mesh and write the changed block tiles [blocks];
7. :func:`_write_bim_tiles` — the models' glbs, converted again only when they changed [bim];
8. :func:`_write_tileset` — tileset.json and the registry (``cim_tilesets`` / ``cim_tiles``);
   :func:`_remove_unreferenced` — files no tile references any more [write].

All-or-nothing: content file names carry their hash, so new files never overwrite the ones the
current tileset.json references; tileset.json is replaced atomically and the registry updated in
one transaction; files no longer referenced are removed last. A failure in stages 5–8 removes
the files it wrote (:func:`_roll_back`).

Object storage (issue 18): ``--store s3`` / ``--store s3://BUCKET/prefix`` writes the tileset to a
bucket (``spatial_api.objectstore``: an ``ObjectPath`` in place of the folder): the content
objects first (hashed names: an upload of an existing name is skipped, so a rebuild uploads only
what changed), tileset.json last; ``cim_tilesets.out_dir`` records the ``s3://`` prefix, which
later builds keep and ``/twin/tilesets`` serves from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import shapely
from psycopg import sql
from psycopg.types.json import Jsonb

from cim_builder import ifc
from cim_builder.blocks import BLOCK_MIN, BLOCKS_VERSION, Blocks, Outlines, generalise
from cim_builder.geo import (DEFAULT_GEOID_SEPARATION, GEOGRAPHIC_CRS, METRIC_CRS, CimError, Dem, Frame,
                             enu_rotation, resolve_dem, tilesets_dir, to_ecef, transformer)
from cim_builder.glb import GlbWriter, Primitive, PropertyTable
from cim_builder.lod1 import Footprints, footprints, prism_mesh
from cim_builder.tileset import Layout, build_tree, cap_levels, choose_layout, tile_key, tileset_json
from spatial_api import db, objectstore, store
from spatial_api.api import time as timepolicy
from spatial_api.config import get_settings

BUILDER_VERSION = "geotwin-cim/2"  # 2: block tiles above the buildings
TILESET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BUILDING_COLOUR = (0.86, 0.84, 0.80, 1.0)
#: A BIM model replaces the LOD1 prism of a building when it covers this share of its footprint.
REPLACE_SHARE = 0.3


@dataclass
class TilesetReport:
    """What a tileset build reports, whatever it builds (the buildings twin here, the underground in
    :mod:`cim_builder.underground`): its tiles, bytes, why it was a full build, its laps."""

    tileset_id: str
    out_dir: str
    tiles: int = 0
    tiles_written: int = 0
    tiles_unchanged: int = 0
    tiles_removed: int = 0
    written: list[str] = field(default_factory=list)
    bytes_total: int = 0
    bytes_written: int = 0
    full_rebuild: bool = False
    reason: str = ""
    max_level: int = 0
    geoid_separation: float = DEFAULT_GEOID_SEPARATION
    dem: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["written"] = self.written[:50]
        return d

    def stats(self) -> dict:
        """The report as cim_tilesets.stats keeps it (no file lists, no folder)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("written", "warnings", "out_dir")}


@dataclass
class BuildReport(TilesetReport):
    buildings: int = 0
    replaced_by_bim: list[str] = field(default_factory=list)
    models: int = 0
    block_tiles: int = 0  # of ``tiles``: block models (the far view)


def default_out_dir(settings, tileset_id: str) -> Path:
    """``<tilesets>/<id>``; for a schema other than the default one, ``<tilesets>/<schema>/<id>``
    (test and bench schemas on one machine must not write into each other's tilesets)."""
    if settings.db_schema != "geotwin":
        return tilesets_dir(settings) / settings.db_schema / tileset_id
    return tilesets_dir(settings) / tileset_id


def _as_datetime(value, settings) -> datetime | None:
    """``--as-of``: the house's time policy (spatial_api.api.time) — a date is the district as it
    stood at the end of that day (district time), a naive date-time is district time."""
    try:
        return timepolicy.to_instant(value, "--as-of", day="end", tz=settings.timezone)
    except timepolicy.TimeError as exc:
        raise CimError(f"--as-of {value!r}: give a date like 2025-06-30 (or an ISO date-time); {exc.message}") from None


def _as_float(value, default=np.nan) -> float:
    """A property value as a finite float, else ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def read_buildings(conn, at: datetime | None, layer: str = "buildings") -> dict:
    """The layer's footprints as of ``at`` (the store's temporal filter), as WKB: one query, the
    properties the twin needs pulled out by the database (4–5× faster than WKT rows)."""
    if store.get_layer(conn, layer) is None:
        raise CimError(f"no {layer!r} layer: load building footprints first "
                       f"(geotwin ingest vector FILE --layer {layer} --key building_id)")
    cond, params = store.temporal_filter(at, None)
    query = sql.SQL(
        "SELECT f.fid, f.vid, f.properties->>'parcel_id', f.properties->>'use', f.properties->>'height_m', "
        "f.properties->>'floors', ST_AsBinary(f.geom) FROM {} f WHERE f.layer = %s AND {}"
    ).format(sql.Identifier(store.partition_name(layer)), cond)
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(query, [layer, *params]).fetchall()
    cols = list(zip(*rows)) if rows else [[]] * 7
    geoms = shapely.from_wkb(np.array(cols[6], dtype=object)) if rows else np.array([], object)
    props = [{"parcel_id": parcel, "use": use, "height_m": height, "floors": floors}
             for parcel, use, height, floors in zip(cols[2], cols[3], cols[4], cols[5])]
    return {"fids": np.array(cols[0], dtype=object), "vids": np.array(cols[1], dtype=np.int64),
            "props": props, "geoms": geoms}


def _hash(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(str(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    if objectstore.is_remote(path):  # an object in a bucket appears whole or not at all
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _project_to_metric(geoms):
    """Geometries (one or an array) from EPSG:4490 to EPSG:4547."""
    to_metric = transformer(GEOGRAPHIC_CRS, METRIC_CRS)
    return shapely.transform(geoms, lambda c: np.column_stack(to_metric.transform(c[:, 0], c[:, 1])))


# ------------------------------------------------------------------------------------------
# the build's state


@dataclass
class Buildings:
    """The buildings to draw: every array (and ``props``) holds one entry per building, in the
    same order. Filled in stage by stage; the fields still ``None`` are not computed yet."""

    geoms: np.ndarray  # footprints, EPSG:4547 (from _to_metric on)
    fids: np.ndarray  # feature ids (str)
    vids: np.ndarray  # feature versions
    props: list[dict]  # parcel_id, use, height_m, floors as read
    height: np.ndarray | None = None  # roof above base, m
    floors: np.ndarray | None = None  # NaN where unknown
    centre_x: np.ndarray | None = None  # footprint bbox centre, EPSG:4547
    centre_y: np.ndarray | None = None
    sigma: np.ndarray | None = None  # size σ = max(bbox diagonal, height): picks the tile level
    level: np.ndarray | None = None  # quadtree cell (level, ix, iy)
    ix: np.ndarray | None = None
    iy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.geoms)

    def take(self, index) -> Buildings:
        """The buildings picked by ``index`` (a boolean mask, or positions in the new order)."""
        index = np.asarray(index)
        positions = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        picked = {}
        for f in fields(self):
            values = getattr(self, f.name)
            if isinstance(values, list):
                picked[f.name] = [values[i] for i in positions]
            else:
                picked[f.name] = None if values is None else values[positions]
        return Buildings(**picked)


@dataclass
class TilePlan:
    """One building tile of the new tileset, before meshing."""

    key: str  # "level/ix/iy"
    level: int
    ix: int
    iy: int
    start: int  # its buildings: ctx.buildings[start:end] (tile-ordered)
    end: int
    content_hash: str
    old: dict | None  # the registry's row from the previous build, if any
    reuse: bool  # unchanged and its file still there: nothing to mesh
    mesh_start: int = 0  # its buildings among those being meshed (MeshInput), if not reused
    mesh_end: int = 0


@dataclass
class BlockPlan:
    """One block tile of the new tileset: the cell's buildings and those below it, generalised."""

    key: str  # "block/level/ix/iy"
    level: int
    ix: int
    iy: int
    members: np.ndarray  # its buildings (positions in the tile-ordered ctx.buildings)
    models: list[int]  # its BIM models (positions in ctx.models)
    content_hash: str
    old: dict | None  # the registry's row from the previous build, if any
    reuse: bool  # unchanged and its file still there
    row: dict | None = None  # its uri, region, transform, feature count and bytes in this build


@dataclass
class MeshInput:
    """The buildings of the tiles to (re)write only, in tile order: their footprints, base and roof
    heights (orthometric m), lon/lat bounds (radians) and local up vectors (ECEF)."""

    fp: Footprints
    vertex_building: np.ndarray  # the building of every footprint vertex
    base: np.ndarray
    top: np.ndarray
    west: np.ndarray
    south: np.ndarray
    east: np.ndarray
    north: np.ndarray
    up: np.ndarray


@dataclass
class BuildContext:
    """One build's options and state, filled in stage by stage (see the module docstring)."""

    conn: object
    tileset_id: str
    at: datetime | None
    geoid_separation: float
    full: bool
    max_per_tile: int
    floor_height_m: float
    layer: str
    title: str | None
    started: float  # perf_counter at the start of build()
    progress: object = None  # called with each stage's lap name
    timings: dict[str, float] = field(default_factory=dict)
    lap_started: float = field(default_factory=time.perf_counter)
    # _lock_and_locate
    out_dir: Path | None = None
    previous: dict | None = None  # the previous build's out_dir, layout and params
    report: BuildReport | None = None
    # _read_sources
    raw: dict | None = None  # read_buildings' result
    dem_source: Dem | None = None
    models: list = field(default_factory=list)  # registered BIM models
    # _to_metric … _order_by_tile
    buildings: Buildings | None = None
    # _choose_layout
    model_tiles: list[dict] = field(default_factory=list)  # ifc.model_tile_info of each model
    params: dict = field(default_factory=dict)  # the build parameters recorded with the tileset
    layout: Layout | None = None
    # _plan_tiles
    stored: dict[str, dict] = field(default_factory=dict)  # the registry's tiles of the previous build
    tiles: list[TilePlan] = field(default_factory=list)
    block_min: int = BLOCK_MIN
    blocks: list[BlockPlan] = field(default_factory=list)
    # _stand_on_ground
    meshing: MeshInput | None = None
    # _write_building_tiles, _write_bim_tiles
    content: dict[str, dict] = field(default_factory=dict)  # building tile key → uri, region, transform
    block_content: dict[str, dict] = field(default_factory=dict)  # cell "l/ix/iy" → its block tile's
    bim_tiles: list[dict] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # the new cim_tiles rows
    written_files: list[Path] = field(default_factory=list)  # new files, removed if the build fails

    def lap(self, name: str) -> None:
        """Ends the timing lap ``name`` (and tells ``progress``)."""
        now = time.perf_counter()
        self.timings[name] = round(now - self.lap_started, 3)
        self.lap_started = now
        if self.progress:
            self.progress(name)

    @property
    def tmp_json(self) -> Path:
        return self.out_dir / f"tileset.json.tmp{os.getpid()}"


# ------------------------------------------------------------------------------------------
# the stages


def build(settings=None, *, tileset_id: str = "twin", as_of=None, out: str | Path | None = None,
          dem: str | Path | None = None, geoid_separation: float | None = None, full: bool = False,
          max_per_tile: int = 1500, floor_height_m: float = 3.0, layer: str = "buildings",
          title: str | None = None, progress=None, block_min: int = BLOCK_MIN, store: str | None = None) -> BuildReport:
    """Build (or incrementally rebuild) tileset ``tileset_id``: the stages of the module
    docstring, in order. ``progress`` is called with each stage's name as it ends. Block tiles
    (the far view) when at least ``block_min`` buildings lie below the root's tile."""
    settings = settings or get_settings()
    started = time.perf_counter()
    if not TILESET_ID_RE.match(tileset_id):
        raise CimError(f"--id {tileset_id!r}: use lower-case letters, digits, '-' and '_' (≤ 63)")
    at = _as_datetime(as_of, settings)
    separation = DEFAULT_GEOID_SEPARATION if geoid_separation is None else float(geoid_separation)
    with db.connect(settings) as conn:
        ctx = BuildContext(conn=conn, tileset_id=tileset_id, at=at, geoid_separation=separation, full=full,
                           max_per_tile=max_per_tile, floor_height_m=floor_height_m, layer=layer, title=title,
                           started=started, progress=progress, block_min=int(block_min))
        _lock_and_locate(ctx, settings, out, store)
        _read_sources(ctx, dem)
        ctx.lap("read")
        _to_metric(ctx)
        _replace_by_bim(ctx)
        _heights(ctx)
        ctx.lap("prepare")
        _choose_layout(ctx)
        _order_by_tile(ctx)
        _plan_tiles(ctx)
        _plan_blocks(ctx)
        ctx.lap("layout")
        _stand_on_ground(ctx)
        ctx.lap("footprints")
        try:
            _write_building_tiles(ctx)
            ctx.lap("tiles")
            _write_block_tiles(ctx)
            ctx.lap("blocks")
            _write_bim_tiles(ctx)
            ctx.lap("bim")
            _write_tileset(ctx)
        except BaseException:
            _roll_back(ctx)
            raise
        _remove_unreferenced(ctx)
        ctx.lap("write")
        ctx.report.seconds = round(time.perf_counter() - started, 3)
    return ctx.report


def _out_location(settings, tileset_id: str, out, store: str | None):
    """``--out`` / ``--store`` as a location (None: neither given). ``--store s3`` is the configured
    bucket's ``tilesets/`` prefix, ``--store s3://BUCKET/prefix`` that prefix; the tileset goes in
    ``<prefix>/[<schema>/]<id>/`` (as in the default folder). ``--out s3://…`` is taken as is."""
    if out and store:
        raise CimError(f"--out {out} and --store {store}: give one of them (where the tileset goes)")
    if out:
        return objectstore.location(out)
    if not store or store == "local":
        return None
    try:
        if store == "s3":
            base = objectstore.ObjectPath(objectstore.s3_settings().bucket, "tilesets")
        elif objectstore.is_remote(store):
            base = objectstore.ObjectPath.parse(store)
        else:
            raise CimError(f"--store {store!r}: give local, s3 (the bucket GEOTWIN_S3_BUCKET) or s3://BUCKET/prefix")
        target = base / tileset_id if settings.db_schema == "geotwin" else base / settings.db_schema / tileset_id
        objectstore.check(target)  # reachable, the credentials, the bucket: before any work
    except objectstore.ObjectStoreError as exc:
        raise CimError(f"--store {store}: {exc}") from None
    return target


def _lock_and_locate(ctx: BuildContext, settings, out: str | Path | None, store: str | None = None) -> None:
    """Takes the tileset id and ``--out`` / ``--store``; takes the tileset's build lock (held until the
    connection's transaction ends) and gives ``ctx.previous`` (the last build's folder, layout and
    parameters, or None), ``ctx.out_dir`` (``--out`` / ``--store``, else the previous folder — or
    bucket prefix —, else the default) and a fresh ``ctx.report``."""
    ctx.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin-cim:{ctx.tileset_id}",))
    row = ctx.conn.execute("SELECT out_dir, layout, params FROM cim_tilesets WHERE id = %s",
                           (ctx.tileset_id,)).fetchone()
    ctx.previous = {"out_dir": row[0], "layout": row[1], "params": row[2]} if row else None
    out_dir = _out_location(settings, ctx.tileset_id, out, store)
    if out_dir is None:
        out_dir = objectstore.location(row[0]) if row else default_out_dir(settings, ctx.tileset_id)
    ctx.out_dir = out_dir.resolve()
    ctx.report = BuildReport(tileset_id=ctx.tileset_id, out_dir=str(ctx.out_dir))
    ctx.report.geoid_separation = ctx.geoid_separation


def _read_sources(ctx: BuildContext, dem: str | Path | None) -> None:
    """Takes the layer, the date and ``--dem``; gives ``ctx.raw`` (the buildings as of the date,
    EPSG:4490), ``ctx.dem_source`` (``--dem`` or the imagery catalogue's) and ``ctx.models`` (the
    registered BIM models)."""
    ctx.raw = read_buildings(ctx.conn, ctx.at, ctx.layer)
    ctx.dem_source = resolve_dem(ctx.conn, dem, ctx.at)
    ctx.report.dem = str(ctx.dem_source.path)
    ctx.models = ifc.registered_models(ctx.conn)


def _to_metric(ctx: BuildContext) -> None:
    """Takes ``ctx.raw``; gives ``ctx.buildings``: those that are polygons with an area, their
    footprints in EPSG:4547 (the others are left out, with a warning)."""
    raw, warnings = ctx.raw, ctx.report.warnings
    geoms = raw["geoms"]
    empty = shapely.is_empty(geoms) | shapely.is_missing(geoms)
    if empty.any():
        warnings.append(f"{int(empty.sum())} buildings without a geometry were left out")
    flat = ~empty & ((~np.isin(shapely.get_type_id(geoms), (3, 6))) | ~(shapely.area(geoms) > 0))
    if flat.any():
        warnings.append(f"{int(flat.sum())} buildings are not polygons with an area, left out (e.g. "
                        + ", ".join(map(str, raw["fids"][flat][:3])) + ")")
    buildings = Buildings(geoms, raw["fids"], raw["vids"], raw["props"]).take(~empty & ~flat)
    buildings.geoms = _project_to_metric(buildings.geoms) if len(geoms) else np.array([], object)
    ctx.buildings = buildings


def _replace_by_bim(ctx: BuildContext) -> None:
    """Takes the buildings and the models; drops the buildings a model replaces (it covers at least
    REPLACE_SHARE of their footprint, or their centre), naming them in ``model.replaces`` and
    ``report.replaced_by_bim``; gives ``report.buildings`` and ``report.models``."""
    buildings, report = ctx.buildings, ctx.report
    if ctx.models and len(buildings):
        tree = shapely.STRtree(buildings.geoms)
        replaced = np.zeros(len(buildings), bool)
        for model in ctx.models:
            model_footprint = _project_to_metric(model.footprint)
            candidates = tree.query(model_footprint, predicate="intersects")
            if len(candidates):
                under = buildings.geoms[candidates]
                overlap = shapely.area(shapely.intersection(under, model_footprint))
                share = overlap / np.maximum(shapely.area(under), 1e-9)
                inside = shapely.contains(model_footprint, shapely.centroid(under))
                hit = candidates[(share >= REPLACE_SHARE) | inside]
                replaced[hit] = True
                model.replaces = sorted(str(f) for f in buildings.fids[hit])
        report.replaced_by_bim = sorted(str(f) for f in buildings.fids[replaced])
        ctx.buildings = buildings.take(~replaced)
    report.buildings = len(ctx.buildings)
    report.models = len(ctx.models)


def _heights(ctx: BuildContext) -> None:
    """Takes the buildings' properties; gives their ``height`` (height_m, else floors × floor
    height, else one floor height, with a warning), ``floors``, footprint centre and size σ."""
    buildings, floor_height = ctx.buildings, ctx.floor_height_m
    height = np.array([_as_float(p.get("height_m")) for p in buildings.props], float)
    floors = np.array([_as_float(p.get("floors")) for p in buildings.props], float)
    from_floors = ~(height > 0) & (floors > 0)
    height = np.where(from_floors, floors * floor_height, height)
    no_height = ~(height > 0)
    if no_height.any():
        ctx.report.warnings.append(f"{int(no_height.sum())} buildings have neither height_m nor floors: "
                                   f"drawn {floor_height} m high")
        height = np.where(no_height, floor_height, height)
    buildings.height, buildings.floors = height, floors
    if len(buildings):
        west, south, east, north = shapely.bounds(buildings.geoms).T
        buildings.centre_x, buildings.centre_y = (west + east) / 2, (south + north) / 2
        buildings.sigma = np.maximum(np.hypot(east - west, north - south), height)
    else:
        buildings.centre_x = buildings.centre_y = buildings.sigma = np.zeros(0)


def _choose_layout(ctx: BuildContext) -> None:
    """Takes the buildings' centres and sizes, the models and ``ctx.previous``; gives
    ``ctx.model_tiles``, ``ctx.params`` and ``ctx.layout``: the previous grid when the parameters
    are the same and every building still fits in it, else (``report.full_rebuild``, with the
    ``report.reason``) a new grid."""
    buildings, report = ctx.buildings, ctx.report
    ctx.model_tiles = [ifc.model_tile_info(m, ctx.geoid_separation) for m in ctx.models]
    ctx.params = {"builder": BUILDER_VERSION, "geoid_separation": ctx.geoid_separation,
                  "dem": ctx.dem_source.identity, "floor_height_m": ctx.floor_height_m, "layer": ctx.layer,
                  "max_per_tile": ctx.max_per_tile, "block_min": ctx.block_min}
    xs = np.r_[buildings.centre_x, [mt["x"] for mt in ctx.model_tiles]]
    ys = np.r_[buildings.centre_y, [mt["y"] for mt in ctx.model_tiles]]
    layout = None
    if ctx.previous and not ctx.full:
        old_layout = Layout.from_json(ctx.previous["layout"])
        if ctx.previous["params"] != ctx.params:
            report.reason = "build parameters changed (DEM, geoid separation, floor height or builder)"
        elif not old_layout.contains(xs, ys):
            report.reason = "buildings outside the previous grid"
        else:
            layout = old_layout
    elif ctx.full:
        report.reason = "--full"
    else:
        report.reason = "first build"
    if layout is None:
        report.full_rebuild = True
        sizes = np.r_[buildings.sigma, [mt["sigma"] for mt in ctx.model_tiles]]
        layout = choose_layout(xs, ys, sizes, max_per_tile=ctx.max_per_tile)
    report.max_level = layout.max_level
    ctx.layout = layout


def _order_by_tile(ctx: BuildContext) -> None:
    """Takes the layout and the buildings; gives every building its cell (``level``, ``ix``,
    ``iy``: :func:`cap_levels`, ties broken by fid) and sorts ``ctx.buildings`` by cell, then fid,
    so that each tile's buildings are one slice."""
    buildings = ctx.buildings
    fid_rank = np.argsort(np.argsort(buildings.fids.astype(str), kind="stable"), kind="stable")
    buildings.level, buildings.ix, buildings.iy = cap_levels(
        ctx.layout, buildings.centre_x, buildings.centre_y, buildings.sigma, fid_rank, ctx.max_per_tile)
    if len(buildings):
        order = np.lexsort((buildings.fids.astype(str), buildings.iy, buildings.ix, buildings.level))
    else:
        order = np.zeros(0, np.int64)
    ctx.buildings = buildings.take(order)


def _stored_tiles(conn, tileset_id: str) -> dict[str, dict]:
    """The registry's tiles of a tileset: tile key → hash, uri, count, bytes, region, transform."""
    rows = conn.execute("SELECT tile_key, content_hash, uri, feature_count, bytes, region, transform "
                        "FROM cim_tiles WHERE tileset_id = %s", (tileset_id,))
    return {r[0]: {"hash": r[1], "uri": r[2], "count": r[3], "bytes": r[4], "region": r[5], "transform": r[6]}
            for r in rows}


def _plan_tiles(ctx: BuildContext) -> None:
    """Takes the tile-ordered buildings; gives ``ctx.stored`` (the previous build's tiles; none at a
    full build) and ``ctx.tiles``: a :class:`TilePlan` per building tile with its content hash
    (builder, layout, DEM, geoid separation, floor height, every (fid, version) in it) — reused
    when the hash is unchanged and its file is there, else given its slice of the buildings to mesh."""
    buildings = ctx.buildings
    count = len(buildings)
    if count:
        cells = np.stack([buildings.level, buildings.ix, buildings.iy], axis=1)
        starts = np.r_[0, np.flatnonzero(np.any(cells[1:] != cells[:-1], axis=1)) + 1, count]
    else:
        cells, starts = np.zeros((0, 3), np.int64), np.array([0])
    layout_id = json.dumps(ctx.layout.to_json(), sort_keys=True)
    ctx.stored = {} if ctx.report.full_rebuild else _stored_tiles(ctx.conn, ctx.tileset_id)
    to_mesh = 0  # buildings in the tiles to mesh so far
    for start, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
        level, ix, iy = (int(v) for v in cells[start])
        key = tile_key(level, ix, iy)
        content_hash = _hash(BUILDER_VERSION, layout_id, ctx.dem_source.identity, ctx.geoid_separation,
                             ctx.floor_height_m, *(f"{fid}:{vid}" for fid, vid in
                                                   zip(buildings.fids[start:end], buildings.vids[start:end])))
        old = ctx.stored.get(key)
        reuse = bool(old and old["hash"] == content_hash and (ctx.out_dir / old["uri"]).is_file())
        tile = TilePlan(key, level, ix, iy, start, end, content_hash, old, reuse)
        if not reuse:
            tile.mesh_start, tile.mesh_end = to_mesh, to_mesh + (end - start)
            to_mesh += end - start
        ctx.tiles.append(tile)


def _plan_blocks(ctx: BuildContext) -> None:
    """Takes the tile plans; gives ``ctx.blocks``: a :class:`BlockPlan` for every cell that hides
    buildings (in the tiles below it; BIM models count) — when the root hides at least
    ``ctx.block_min`` of them; a district too small for that keeps the plain tree (refine ADD).

    Every cell, not only the crowded ones: under a block (REPLACE) a plain cell without a block of
    its own would draw only its own buildings until it refined too, and a viewer decides that from
    the distance to its own bounding volume, farther than its parent's — its buildings below
    would vanish at the moment its parent's block gave way. So the building tiles are the leaves
    of a REPLACE tree. Each plan has its members — the buildings of the cell's own tile and of
    every tile below it — and a content hash made of the block generalisation's version and the
    hashes of those tiles and models: a block is rewritten exactly when a building under it
    changes."""
    buildings, layout = ctx.buildings, ctx.layout
    tile_hash = {(t.level, t.ix, t.iy): t.content_hash for t in ctx.tiles}
    model_cells = [_bim_parent_cell(layout, mt) for mt in ctx.model_tiles]
    common = (BUILDER_VERSION, BLOCKS_VERSION, json.dumps(layout.to_json(), sort_keys=True),
              ctx.dem_source.identity, ctx.geoid_separation, ctx.floor_height_m)
    for level in range(layout.max_level):  # a leaf hides nothing
        below = np.flatnonzero(buildings.level >= level)
        shift = buildings.level[below] - level
        code = (buildings.ix[below] >> shift) * (1 << 32) + (buildings.iy[below] >> shift)
        order = np.argsort(code, kind="stable")  # stable: each cell's members stay in tile order
        sorted_code = code[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_code)) + 1] if len(below) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(below)]
        hidden = np.add.reduceat((shift > 0)[order], starts) if len(below) else np.zeros(0, np.int64)
        cells = {int(sorted_code[a]): (a, b, int(h)) for a, b, h in zip(starts, ends, hidden)}
        models: dict[int, list[int]] = {}
        for j, (model_level, mx, my) in enumerate(model_cells):  # a model hangs below its cell
            if model_level >= level:
                up = model_level - level
                models.setdefault((mx >> up) * (1 << 32) + (my >> up), []).append(j)
        for cell in sorted(set(cells) | set(models)):
            a, b, hidden_count = cells.get(cell, (0, 0, 0))
            ix, iy = cell >> 32, cell & 0xFFFFFFFF
            cell_models = models.get(cell, [])
            hidden_count += len(cell_models)
            if level == 0 and hidden_count < ctx.block_min:
                return  # a small district: no blocks
            if not hidden_count:
                continue
            members = below[order[a:b]]
            member_cells = np.stack([buildings.level[members], buildings.ix[members], buildings.iy[members]], axis=1)
            firsts = np.r_[0, np.flatnonzero(np.any(np.diff(member_cells, axis=0) != 0, axis=1)) + 1] \
                if len(members) else np.zeros(0, np.int64)
            under = [tuple(int(v) for v in member_cells[i]) for i in firsts]
            key = f"block/{tile_key(level, ix, iy)}"
            content_hash = _hash(*common, key, *(f"{tile_key(*c)}:{tile_hash[c]}" for c in under),
                                 *(f"bim/{ctx.models[j].id}:{ctx.model_tiles[j]['hash']}" for j in cell_models))
            old = ctx.stored.get(key)
            reuse = bool(old and old["hash"] == content_hash and (ctx.out_dir / old["uri"]).is_file())
            ctx.blocks.append(BlockPlan(key, level, ix, iy, members, cell_models, content_hash, old, reuse))


def _stand_on_ground(ctx: BuildContext) -> None:
    """Takes the tiles to (re)write and the DEM; gives ``ctx.meshing`` for their buildings only (a
    tile's region depends on its own content, so unchanged tiles keep the stored one): base = the
    lowest DEM value under the footprint's vertices (0 m off the DEM, with a warning), roof = base
    + height, lon/lat bounds and up vectors. None when no tile needs meshing."""
    todo = [tile for tile in ctx.tiles if not tile.reuse]
    if not todo:
        return
    buildings = ctx.buildings
    picked = np.concatenate([np.arange(tile.start, tile.end) for tile in todo])
    count = len(picked)
    fp = footprints(buildings.geoms[picked])
    vertex_building = fp.vertex_building()
    ground = ctx.dem_source.sample(fp.xy[:, 0], fp.xy[:, 1], METRIC_CRS)
    ground = np.where(np.isfinite(ground), ground, np.inf)
    base = np.full(count, np.inf)
    np.minimum.at(base, vertex_building, ground)
    off_dem = ~np.isfinite(base)
    if off_dem.any():
        ctx.report.warnings.append(
            f"{int(off_dem.sum())} buildings lie outside the DEM {ctx.dem_source.path}: standing at 0 m (e.g. "
            + ", ".join(map(str, buildings.fids[picked][off_dem][:3])) + ")")
        base = np.where(off_dem, 0.0, base)
    lon, lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(fp.xy[:, 0], fp.xy[:, 1])
    lon_rad, lat_rad = np.radians(lon), np.radians(lat)
    west, south = np.full(count, np.inf), np.full(count, np.inf)
    east, north = np.full(count, -np.inf), np.full(count, -np.inf)
    np.minimum.at(west, vertex_building, lon_rad)
    np.minimum.at(south, vertex_building, lat_rad)
    np.maximum.at(east, vertex_building, lon_rad)
    np.maximum.at(north, vertex_building, lat_rad)
    up = enu_rotation(lon[fp.voff[:-1]], lat[fp.voff[:-1]])[:, 2, :]
    ctx.meshing = MeshInput(fp, vertex_building, base, base + buildings.height[picked], west, south, east,
                            north, up)


def _write_new(ctx: BuildContext, uri: str, data: bytes) -> None:
    """Writes a content file unless it is there already (same name, same hash: same bytes)."""
    path = ctx.out_dir / uri
    if not path.is_file():
        _atomic_write(path, data)
        ctx.written_files.append(path)


def _mesh_tile(ctx: BuildContext, tile: TilePlan) -> tuple[bytes, list[float], list[float]]:
    """Takes one tile to (re)write; gives its glb (LOD1 prisms in the east-north-up frame at the
    cell's centre, one property-table row per building), region (radians, ellipsoidal m) and
    transform."""
    buildings, meshing, separation = ctx.buildings, ctx.meshing, ctx.geoid_separation
    start, end = tile.start, tile.end  # in the tile-ordered buildings
    first, stop = tile.mesh_start, tile.mesh_end  # in the buildings being meshed
    region = [float(meshing.west[first:stop].min()), float(meshing.south[first:stop].min()),
              float(meshing.east[first:stop].max()), float(meshing.north[first:stop].max()),
              float(meshing.base[first:stop].min() + separation), float(meshing.top[first:stop].max() + separation)]
    cell_x, cell_y = ctx.layout.cell_centre(tile.level, tile.ix, tile.iy)
    cell_lon, cell_lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(cell_x, cell_y)
    frame = Frame.at(cell_lon, cell_lat, 0.0)
    fp = meshing.fp
    v0, v1 = fp.voff[first], fp.voff[stop]
    owner = meshing.vertex_building[v0:v1]
    xs, ys = fp.xy[v0:v1, 0], fp.xy[v0:v1, 1]
    ecef = to_ecef(METRIC_CRS)
    base_ecef = np.column_stack(ecef.transform(xs, ys, meshing.base[owner] + separation))
    top_ecef = np.column_stack(ecef.transform(xs, ys, meshing.top[owner] + separation))
    mesh = prism_mesh(fp, first, stop, base_ecef, top_ecef, meshing.up, frame)
    writer = GlbWriter()
    material = writer.material(BUILDING_COLOUR, name="building")
    count = end - start
    floors = buildings.floors[start:end]
    table = PropertyTable("building", count, {
        "building_id": [str(f) for f in buildings.fids[start:end]],
        "parcel_id": [buildings.props[i].get("parcel_id") or "" for i in range(start, end)],
        "use": [buildings.props[i].get("use") or "" for i in range(start, end)],
        "height_m": buildings.height[start:end],
        "floors": np.where(floors > 0, floors, -1).astype(np.int16),
        "base_height_m": meshing.base[first:stop],
        "source": [f"{ctx.layer} layer v{v} (LOD1)" for v in buildings.vids[start:end]],
    })
    primitive = Primitive(mesh.positions, mesh.normals, mesh.indices, mesh.feature_ids, count, 0, material)
    return writer.write([primitive], [table]), region, frame.transform()


def _write_building_tiles(ctx: BuildContext) -> None:
    """Takes the tile plans; keeps the unchanged tiles' files, meshes and writes the others (their
    names carry the hash: nothing the current tileset.json references is overwritten); gives
    ``ctx.content`` and the tiles' ``ctx.rows``, and counts tiles and bytes in the report."""
    report = ctx.report
    for tile in ctx.tiles:
        if tile.reuse:
            old = tile.old
            ctx.content[tile.key] = {"uri": old["uri"], "region": old["region"], "transform": old["transform"]}
            ctx.rows.append((tile.key, old["uri"], old["hash"], old["count"], old["bytes"], old["region"],
                             old["transform"]))
            report.tiles_unchanged += 1
            report.bytes_total += old["bytes"]
            continue
        glb, region, transform = _mesh_tile(ctx, tile)
        uri = f"tiles/{tile.level}/{tile.ix}/{tile.iy}-{tile.content_hash[:12]}.glb"
        _write_new(ctx, uri, glb)
        ctx.content[tile.key] = {"uri": uri, "region": region, "transform": transform}
        ctx.rows.append((tile.key, uri, tile.content_hash, tile.end - tile.start, len(glb), region, transform))
        report.tiles_written += 1
        report.written.append(tile.key)
        report.bytes_total += len(glb)
        report.bytes_written += len(glb)


def _block_inputs(ctx: BuildContext) -> tuple[Outlines, np.ndarray, np.ndarray, np.ndarray]:
    """What every block is generalised from: the outlines of the buildings (then of the models'
    footprints), their base (the lowest DEM value under their vertices, 0 m off the DEM, as the
    prisms) and roof elevations (orthometric; a model's: its top), and their ids."""
    buildings = ctx.buildings
    model_fp = [_project_to_metric(m.footprint) for m in ctx.models]
    geoms = np.concatenate([buildings.geoms, np.array(model_fp, dtype=object)]) if model_fp else buildings.geoms
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    ground = ctx.dem_source.sample(xy[:, 0], xy[:, 1], METRIC_CRS)
    base = np.full(len(geoms), np.inf)
    np.minimum.at(base, owner, np.where(np.isfinite(ground), ground, np.inf))
    base = np.where(np.isfinite(base), base, 0.0)
    n = len(buildings)
    tops = np.array([m.z_range[1] for m in ctx.models], float)
    roof = np.r_[base[:n] + buildings.height, np.maximum(tops, base[n:] + 1.0)]
    ids = np.r_[buildings.fids.astype(object), np.array([f"bim:{m.id}" for m in ctx.models], dtype=object)]
    return Outlines.of(geoms), base, roof, ids


def _mesh_blocks(ctx: BuildContext, plan: BlockPlan, features: Blocks) -> tuple[bytes, list[float], list[float]]:
    """One block tile's glb (prisms of its blocks and landmarks in the east-north-up frame at the
    cell's centre, one ``block`` property-table row each), region and transform."""
    separation = ctx.geoid_separation
    fp = footprints(features.polygons)
    owner = fp.vertex_building()
    xs, ys = fp.xy[:, 0], fp.xy[:, 1]
    lon, lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(xs, ys)
    ecef = to_ecef(METRIC_CRS)
    base_ecef = np.column_stack(ecef.transform(xs, ys, features.base[owner] + separation))
    top_ecef = np.column_stack(ecef.transform(xs, ys, features.roof[owner] + separation))
    first = np.minimum(fp.voff[:-1], len(xs) - 1)
    up = enu_rotation(lon[first], lat[first])[:, 2, :]
    cell_lon, cell_lat = transformer(METRIC_CRS, GEOGRAPHIC_CRS).transform(
        *ctx.layout.cell_centre(plan.level, plan.ix, plan.iy))
    frame = Frame.at(cell_lon, cell_lat, 0.0)
    mesh = prism_mesh(fp, 0, fp.count, base_ecef, top_ecef, up, frame)
    lon_rad, lat_rad = np.radians(lon), np.radians(lat)
    region = [float(lon_rad.min()), float(lat_rad.min()), float(lon_rad.max()), float(lat_rad.max()),
              float(features.base.min() + separation), float(features.roof.max() + separation)]
    writer = GlbWriter()
    material = writer.material(BUILDING_COLOUR, name="block")
    count = len(features)
    prefix = tile_key(plan.level, plan.ix, plan.iy)
    table = PropertyTable("block", count, {
        "block_id": [f"{prefix}#{i}" for i in range(count)],
        "building_count": features.building_count.astype(np.uint32),
        "mean_height_m": features.mean_height,
        "max_height_m": features.max_height,
        "landmark_id": features.landmark_id,
    })
    primitive = Primitive(mesh.positions, mesh.normals, mesh.indices, mesh.feature_ids, count, 0, material)
    return writer.write([primitive], [table]), region, frame.transform()


def _write_block_tiles(ctx: BuildContext) -> None:
    """Takes the block plans; keeps the unchanged block tiles, generalises (:func:`blocks.generalise
    <cim_builder.blocks.generalise>`, at the tile's geometric error), meshes and writes the others;
    gives ``ctx.block_content`` and their ``ctx.rows``."""
    report, layout = ctx.report, ctx.layout
    todo = [plan for plan in ctx.blocks if not plan.reuse]
    if todo:
        import rasterio  # GDAL's polygonize; one environment for every tile

        outlines, base, roof, ids = _block_inputs(ctx)
        n = len(ctx.buildings)

        def ground(x, y):
            return ctx.dem_source.sample(x, y, METRIC_CRS)

        with rasterio.Env():
            for plan in todo:
                members = np.r_[plan.members, n + np.asarray(plan.models, np.int64)].astype(np.int64)
                features = generalise(outlines, members, base[members], roof[members], ids[members],
                                      x0=layout.x0, y0=layout.y0, error=layout.block_error(plan.level), ground=ground)
                glb, region, transform = _mesh_blocks(ctx, plan, features)
                uri = f"blocks/{plan.level}/{plan.ix}/{plan.iy}-{plan.content_hash[:12]}.glb"
                _write_new(ctx, uri, glb)
                plan.row = {"uri": uri, "region": region, "transform": transform, "count": len(features),
                            "bytes": len(glb)}
                report.tiles_written += 1
                report.written.append(plan.key)
                report.bytes_written += len(glb)
    for plan in ctx.blocks:
        if plan.reuse:
            plan.row = plan.old
            report.tiles_unchanged += 1
        row = plan.row
        report.bytes_total += row["bytes"]
        ctx.block_content[tile_key(plan.level, plan.ix, plan.iy)] = {
            "uri": row["uri"], "region": row["region"], "transform": row["transform"]}
        ctx.rows.append((plan.key, row["uri"], plan.content_hash, row["count"], row["bytes"], row["region"],
                         row["transform"]))


def _bim_parent_cell(layout: Layout, model_tile: dict) -> tuple[int, int, int]:
    """The quadtree cell a model's tile hangs under: one level above the one its size σ picks."""
    level = int(layout.levels(np.array([model_tile["sigma"]]))[0])
    parent_level = max(level - 1, 0)
    ix, iy = layout.index(np.array([model_tile["x"]]), np.array([model_tile["y"]]), parent_level)
    return parent_level, int(ix[0]), int(iy[0])


def _write_bim_tiles(ctx: BuildContext) -> None:
    """Takes the models; keeps a model's stored glb while its hash is unchanged, else converts it
    (``ifc.model_glb``) and writes it; gives ``ctx.bim_tiles`` and their ``ctx.rows``."""
    report = ctx.report
    for model, model_tile in zip(ctx.models, ctx.model_tiles):
        key = f"bim/{model.id}"
        content_hash = _hash(BUILDER_VERSION, model_tile["hash"])
        old = ctx.stored.get(key)
        if old and old["hash"] == content_hash and (ctx.out_dir / old["uri"]).is_file():
            uri, region, transform, count, size = (old[k] for k in ("uri", "region", "transform", "count", "bytes"))
            report.tiles_unchanged += 1
        else:
            glb, region, transform, count = ifc.model_glb(model, ctx.geoid_separation)
            uri = f"bim/{model.id}-{content_hash[:12]}.glb"
            _write_new(ctx, uri, glb)
            size = len(glb)
            report.tiles_written += 1
            report.written.append(key)
            report.bytes_written += size
        report.bytes_total += size
        ctx.bim_tiles.append({"key": key, "uri": uri, "region": region, "transform": transform,
                              "parent": _bim_parent_cell(ctx.layout, model_tile)})
        ctx.rows.append((key, uri, content_hash, count, size, region, transform))


def _write_tileset(ctx: BuildContext) -> None:
    """Takes the content, BIM tiles and rows; fills in the report's totals, writes tileset.json to
    a temporary file and, in one transaction, updates the registry and moves it into place."""
    report, conn = ctx.report, ctx.conn
    root = build_tree(ctx.layout, ctx.content, ctx.bim_tiles, ctx.block_content)
    separation = ctx.geoid_separation
    doc = tileset_json(root, extras={"geotwin": {
        "tileset": ctx.tileset_id, "as_of": ctx.at.isoformat() if ctx.at else None,
        "built_at": datetime.now().astimezone().isoformat(),
        "heights": f"ellipsoidal = orthometric (DEM) + geoid separation {separation} m",
        "geoid_separation_m": separation, "crs": METRIC_CRS, "buildings": report.buildings,
        "blocks": {"tiles": len(ctx.blocks), "min_buildings": ctx.block_min, "generalisation": BLOCKS_VERSION},
        "bim_models": [m.id for m in ctx.models]}})
    report.tiles = len(ctx.rows)
    report.block_tiles = len(ctx.blocks)
    old_keys = {r[0] for r in conn.execute("SELECT tile_key FROM cim_tiles WHERE tileset_id = %s", (ctx.tileset_id,))}
    report.tiles_removed = len(old_keys - {r[0] for r in ctx.rows})
    report.seconds = round(time.perf_counter() - ctx.started, 3)
    report.timings = ctx.timings
    stats = report.stats()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.tmp_json.write_text(json.dumps(doc, separators=(",", ":")))
    with conn.transaction():
        conn.execute(
            "INSERT INTO cim_tilesets (id, title, out_dir, as_of, built_at, layout, params, stats) "
            "VALUES (%s, %s, %s, %s, now(), %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "title = coalesce(EXCLUDED.title, cim_tilesets.title), out_dir = EXCLUDED.out_dir, "
            "as_of = EXCLUDED.as_of, built_at = now(), layout = EXCLUDED.layout, "
            "params = EXCLUDED.params, stats = EXCLUDED.stats",
            (ctx.tileset_id, ctx.title, str(ctx.out_dir), ctx.at, Jsonb(ctx.layout.to_json()), Jsonb(ctx.params),
             Jsonb(stats)))
        conn.execute("DELETE FROM cim_tiles WHERE tileset_id = %s", (ctx.tileset_id,))
        with conn.cursor().copy("COPY cim_tiles (tileset_id, tile_key, uri, content_hash, feature_count, "
                                "bytes, region, transform) FROM STDIN") as copy:
            for row in ctx.rows:
                copy.write_row((ctx.tileset_id, *row))
        ifc.record_replacements(conn, ctx.models)
        objectstore.replace(ctx.tmp_json, ctx.out_dir / "tileset.json")  # in a bucket: copied last


def _roll_back(ctx: BuildContext) -> None:
    """After a failure while writing: removes the temporary tileset.json and every file this build
    wrote (the registry's transaction rolls back by itself)."""
    ctx.tmp_json.unlink(missing_ok=True)
    for path in ctx.written_files:
        path.unlink(missing_ok=True)


def _remove_unreferenced(ctx: BuildContext) -> None:
    """Once the new tileset is in place: removes the content files no tile references any more."""
    keep_uris = {r[1] for r in ctx.rows}
    for sub in ("tiles", "blocks", "bim"):
        folder = ctx.out_dir / sub
        for path in folder.rglob("*.glb") if folder.exists() else []:
            if path.relative_to(ctx.out_dir).as_posix() not in keep_uris:
                path.unlink(missing_ok=True)
