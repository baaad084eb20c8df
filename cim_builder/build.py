"""``geotwin cim build``: the buildings layer (as of a date) + registered BIM models → a 3D Tiles
1.1 tileset, rebuilt incrementally.

Steps: read the buildings (``store.features``) → EPSG:4547 → drop the buildings a registered BIM
model replaces (its footprint covers ≥ 30% of theirs, or their centre) → footprints → base height
(lowest DEM value under the footprint's vertices, orthometric) and roof (base + height_m, or
floors × floor height) → size σ and quadtree cell (:mod:`cim_builder.tileset`) → one content
hash per tile (builder version, layout, DEM, geoid separation, and every (fid, version) in it) →
only tiles whose hash changed are meshed and written → tileset.json → the registry
(``cim_tilesets`` / ``cim_tiles``).

All-or-nothing: content file names carry their hash, so new files never overwrite the ones the
current tileset.json references; tileset.json is replaced atomically and the registry updated in
one transaction; files no longer referenced are removed last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import shapely
from psycopg.types.json import Jsonb

from spatial_api.api import time as timepolicy
from cim_builder.geo import (DEFAULT_GEOID_SEPARATION, METRIC_CRS, CimError, Frame, enu_rotation,
                             resolve_dem, to_ecef, transformer)
from cim_builder.glb import GlbWriter, Primitive, PropertyTable
from cim_builder.lod1 import footprints, prism_mesh
from cim_builder.tileset import Layout, build_tree, cap_levels, choose_layout, tile_key, tileset_json

BUILDER_VERSION = "geotwin-cim/1"
TILESET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BUILDING_COLOUR = (0.86, 0.84, 0.80, 1.0)
#: A BIM model replaces the LOD1 prism of a building when it covers this share of its footprint.
REPLACE_SHARE = 0.3


@dataclass
class BuildReport:
    tileset_id: str
    out_dir: str
    buildings: int = 0
    replaced_by_bim: list[str] = field(default_factory=list)
    models: int = 0
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


def default_out_dir(settings, tileset_id: str) -> Path:
    """``<tilesets>/<id>``; for a schema other than the default one, ``<tilesets>/<schema>/<id>``
    (test and bench schemas on one machine must not write into each other's tilesets)."""
    from cim_builder.geo import tilesets_dir

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


def _num(v, default=np.nan) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if np.isfinite(f) else default


def read_buildings(conn, at: datetime | None, layer: str = "buildings") -> dict:
    """The layer's footprints as of ``at`` (the store's temporal filter), as WKB: one query, the
    properties the twin needs pulled out by the database (4–5× faster than WKT rows)."""
    from psycopg import sql

    from spatial_api import store

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
    props = [{"parcel_id": p, "use": u, "height_m": h, "floors": fl}
             for p, u, h, fl in zip(cols[2], cols[3], cols[4], cols[5])]
    return {"fids": np.array(cols[0], dtype=object), "vids": np.array(cols[1], dtype=np.int64),
            "props": props, "geoms": geoms}


def _hash(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(str(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(settings=None, *, tileset_id: str = "twin", as_of=None, out: str | Path | None = None,
          dem: str | Path | None = None, geoid_separation: float | None = None, full: bool = False,
          max_per_tile: int = 1500, floor_height_m: float = 3.0, layer: str = "buildings",
          title: str | None = None, progress=None) -> BuildReport:
    from spatial_api import db
    from spatial_api.config import get_settings

    settings = settings or get_settings()
    started = time.perf_counter()
    if not TILESET_ID_RE.match(tileset_id):
        raise CimError(f"--id {tileset_id!r}: use lower-case letters, digits, '-' and '_' (≤ 63)")
    at = _as_datetime(as_of, settings)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        timings[name] = round(t1 - t0, 3)
        if progress:
            progress(name)
        return t1

    with db.connect(settings) as conn:
        t = time.perf_counter()
        # one build of a tileset at a time (held until this transaction ends)
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin-cim:{tileset_id}",))
        existing = conn.execute("SELECT out_dir, layout, params FROM cim_tilesets WHERE id = %s",
                                (tileset_id,)).fetchone()
        out_dir = Path(out) if out else (Path(existing[0]) if existing else default_out_dir(settings, tileset_id))
        out_dir = out_dir.resolve()
        report = BuildReport(tileset_id=tileset_id, out_dir=str(out_dir))
        sep = DEFAULT_GEOID_SEPARATION if geoid_separation is None else float(geoid_separation)
        report.geoid_separation = sep
        data = read_buildings(conn, at, layer)
        demo = resolve_dem(conn, dem, at)
        report.dem = str(demo.path)
        from cim_builder import ifc

        models = ifc.registered_models(conn)
        t = lap("read", t)

        # --- geometry in EPSG:4547, BIM replacement ---------------------------------------
        to_metric = transformer("EPSG:4490", METRIC_CRS)
        geoms = data["geoms"]
        empty = shapely.is_empty(geoms) | shapely.is_missing(geoms)
        if empty.any():
            report.warnings.append(f"{int(empty.sum())} buildings without a geometry were left out")
        flat = ~empty & ((~np.isin(shapely.get_type_id(geoms), (3, 6))) | ~(shapely.area(geoms) > 0))
        if flat.any():
            report.warnings.append(f"{int(flat.sum())} buildings are not polygons with an area, left out (e.g. "
                                   + ", ".join(map(str, data["fids"][flat][:3])) + ")")
        keep = ~empty & ~flat
        if len(geoms):
            g = shapely.transform(geoms[keep], lambda c: np.column_stack(to_metric.transform(c[:, 0], c[:, 1])))
        else:
            g = np.array([], object)
        fids, vids = data["fids"][keep], data["vids"][keep]
        props = [p for p, k in zip(data["props"], keep) if k]
        if models and len(g):
            tree = shapely.STRtree(g)
            replaced = np.zeros(len(g), bool)
            for m in models:
                fp = shapely.transform(m.footprint, lambda c: np.column_stack(to_metric.transform(c[:, 0], c[:, 1])))
                cand = tree.query(fp, predicate="intersects")
                if len(cand):
                    share = shapely.area(shapely.intersection(g[cand], fp)) / np.maximum(shapely.area(g[cand]), 1e-9)
                    inside = shapely.contains(fp, shapely.centroid(g[cand]))
                    hit = cand[(share >= REPLACE_SHARE) | inside]
                    replaced[hit] = True
                    m.replaces = sorted(str(f) for f in fids[hit])
            report.replaced_by_bim = sorted(str(f) for f in fids[replaced])
            g, fids, vids = g[~replaced], fids[~replaced], vids[~replaced]
            props = [p for p, r in zip(props, replaced) if not r]
        report.buildings = len(g)
        report.models = len(models)

        # --- heights -----------------------------------------------------------------------
        height = np.array([_num(p.get("height_m")) for p in props], float)
        floors = np.array([_num(p.get("floors")) for p in props], float)
        from_floors = ~(height > 0) & (floors > 0)
        height = np.where(from_floors, floors * floor_height_m, height)
        no_height = ~(height > 0)
        if no_height.any():
            report.warnings.append(f"{int(no_height.sum())} buildings have neither height_m nor floors: "
                                   f"drawn {floor_height_m} m high")
            height = np.where(no_height, floor_height_m, height)
        nb = len(g)
        if nb:
            bounds = shapely.bounds(g)
            cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
            sigma = np.maximum(np.hypot(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]), height)
        else:
            cx = cy = sigma = np.zeros(0)
        t = lap("prepare", t)

        # --- layout --------------------------------------------------------------------------
        model_tiles = [ifc.model_tile_info(m, sep) for m in models]
        layout = None
        params = {"builder": BUILDER_VERSION, "geoid_separation": sep, "dem": demo.identity,
                  "floor_height_m": floor_height_m, "layer": layer, "max_per_tile": max_per_tile}
        if existing and not full:
            old_layout = Layout.from_json(existing[1])
            mx = np.r_[cx, [mt["x"] for mt in model_tiles]]
            my = np.r_[cy, [mt["y"] for mt in model_tiles]]
            if existing[2] != params:
                report.reason = "build parameters changed (DEM, geoid separation, floor height or builder)"
            elif not old_layout.contains(mx, my):
                report.reason = "buildings outside the previous grid"
            else:
                layout = old_layout
        elif full:
            report.reason = "--full"
        else:
            report.reason = "first build"
        if layout is None:
            report.full_rebuild = True
            layout = choose_layout(np.r_[cx, [mt["x"] for mt in model_tiles]],
                                   np.r_[cy, [mt["y"] for mt in model_tiles]],
                                   np.r_[sigma, [mt["sigma"] for mt in model_tiles]], max_per_tile=max_per_tile)
        report.max_level = layout.max_level
        fid_rank = np.argsort(np.argsort(fids.astype(str), kind="stable"), kind="stable")
        lev, ix, iy = cap_levels(layout, cx, cy, sigma, fid_rank, max_per_tile)
        order = np.lexsort((fids.astype(str), iy, ix, lev)) if nb else np.zeros(0, np.int64)
        # re-order every per-building array by tile, then by fid
        g, fids, vids = g[order], fids[order], vids[order]
        props = [props[i] for i in order]
        height, sigma, lev, ix, iy = (a[order] for a in (height, sigma, lev, ix, iy))
        floors = floors[order]
        codes = np.stack([lev, ix, iy], axis=1) if nb else np.zeros((0, 3), np.int64)
        brk = np.r_[0, np.flatnonzero(np.any(codes[1:] != codes[:-1], axis=1)) + 1, nb] if nb else np.array([0])
        layout_id = json.dumps(layout.to_json(), sort_keys=True)
        stored = {} if report.full_rebuild else {
            r[0]: {"hash": r[1], "uri": r[2], "count": r[3], "bytes": r[4], "region": r[5], "transform": r[6]}
            for r in conn.execute("SELECT tile_key, content_hash, uri, feature_count, bytes, region, transform "
                                  "FROM cim_tiles WHERE tileset_id = %s", (tileset_id,))}
        tiles: list[dict] = []
        todo_count = 0
        for a, b in zip(brk[:-1], brk[1:]):
            l, x, y = (int(v) for v in codes[a])
            key = tile_key(l, x, y)
            h = _hash(BUILDER_VERSION, layout_id, demo.identity, sep, floor_height_m,
                      *(f"{f}:{v}" for f, v in zip(fids[a:b], vids[a:b])))
            old = stored.get(key)
            reuse = bool(old and old["hash"] == h and (out_dir / old["uri"]).is_file())
            tile = {"key": key, "a": int(a), "b": int(b), "level": l, "ix": x, "iy": y, "hash": h, "old": old,
                    "reuse": reuse}
            if not reuse:  # position of its buildings among those to mesh
                tile["sa"], tile["sb"] = todo_count, todo_count + int(b - a)
                todo_count += int(b - a)
            tiles.append(tile)
        t = lap("layout", t)

        # footprints, heights and regions of the buildings in tiles to (re)write only (a tile's
        # region depends on its own content, so unchanged tiles keep the stored one):
        # base = the lowest DEM value under the footprint's vertices
        todo = [tl for tl in tiles if not tl["reuse"]]
        sel = np.concatenate([np.arange(tl["a"], tl["b"]) for tl in todo]) if todo else np.zeros(0, np.int64)
        if len(sel):
            fp = footprints(g[sel])
            ns = len(sel)
            vb = fp.vertex_building()
            ground = demo.sample(fp.xy[:, 0], fp.xy[:, 1], METRIC_CRS)
            ground = np.where(np.isfinite(ground), ground, np.inf)
            base = np.full(ns, np.inf)
            np.minimum.at(base, vb, ground)
            off_dem = ~np.isfinite(base)
            if off_dem.any():
                report.warnings.append(f"{int(off_dem.sum())} buildings lie outside the DEM {demo.path}: "
                                       "standing at 0 m (e.g. " + ", ".join(map(str, fids[sel][off_dem][:3])) + ")")
                base = np.where(off_dem, 0.0, base)
            top = base + height[sel]
            lon, lat = transformer(METRIC_CRS, "EPSG:4490").transform(fp.xy[:, 0], fp.xy[:, 1])
            lon_r, lat_r = np.radians(lon), np.radians(lat)
            bw = np.full(ns, np.inf); bs = np.full(ns, np.inf); be = np.full(ns, -np.inf); bn = np.full(ns, -np.inf)
            np.minimum.at(bw, vb, lon_r); np.minimum.at(bs, vb, lat_r)
            np.maximum.at(be, vb, lon_r); np.maximum.at(bn, vb, lat_r)
            up = enu_rotation(lon[fp.voff[:-1]], lat[fp.voff[:-1]])[:, 2, :]
        t = lap("footprints", t)

        written_files: list[Path] = []
        tmp_json = out_dir / f"tileset.json.tmp{os.getpid()}"
        try:
            # --- mesh and write changed tiles -----------------------------------------------------
            content: dict[str, dict] = {}
            new_rows: list[tuple] = []
            ecef = to_ecef(METRIC_CRS)
            for tinfo in tiles:
                if tinfo["reuse"]:
                    old = tinfo["old"]
                    content[tinfo["key"]] = {"uri": old["uri"], "region": old["region"], "transform": old["transform"]}
                    new_rows.append((tinfo["key"], old["uri"], old["hash"], old["count"], old["bytes"], old["region"],
                                     old["transform"]))
                    report.tiles_unchanged += 1
                    report.bytes_total += old["bytes"]
                    continue
                a, b = tinfo["a"], tinfo["b"]  # in the tile-ordered arrays
                sa, sb = tinfo["sa"], tinfo["sb"]  # in the footprints being meshed
                region = [float(bw[sa:sb].min()), float(bs[sa:sb].min()), float(be[sa:sb].max()),
                          float(bn[sa:sb].max()), float(base[sa:sb].min() + sep), float(top[sa:sb].max() + sep)]
                cxl, cyl = layout.cell_centre(tinfo["level"], tinfo["ix"], tinfo["iy"])
                clon, clat = transformer(METRIC_CRS, "EPSG:4490").transform(cxl, cyl)
                frame = Frame.at(clon, clat, 0.0)
                v0, v1 = fp.voff[sa], fp.voff[sb]
                vb_t = vb[v0:v1]
                xs, ys = fp.xy[v0:v1, 0], fp.xy[v0:v1, 1]
                bx, by, bz = ecef.transform(xs, ys, base[vb_t] + sep)
                tx, ty, tz = ecef.transform(xs, ys, top[vb_t] + sep)
                mesh = prism_mesh(fp, sa, sb, np.column_stack([bx, by, bz]), np.column_stack([tx, ty, tz]), up, frame)
                w = GlbWriter()
                mat = w.material(BUILDING_COLOUR, name="building")
                n = b - a
                table = PropertyTable("building", n, {
                    "building_id": [str(f) for f in fids[a:b]],
                    "parcel_id": [props[i].get("parcel_id") or "" for i in range(a, b)],
                    "use": [props[i].get("use") or "" for i in range(a, b)],
                    "height_m": height[a:b],
                    "floors": np.where(floors[a:b] > 0, floors[a:b], -1).astype(np.int16),
                    "base_height_m": base[sa:sb],
                    "source": [f"{layer} layer v{v} (LOD1)" for v in vids[a:b]],
                })
                glb = w.write([Primitive(mesh.positions, mesh.normals, mesh.indices, mesh.feature_ids, n, 0, mat)],
                              [table])
                uri = f"tiles/{tinfo['level']}/{tinfo['ix']}/{tinfo['iy']}-{tinfo['hash'][:12]}.glb"
                path = out_dir / uri
                if not path.exists():
                    _atomic_write(path, glb)
                    written_files.append(path)
                transform = frame.transform()
                content[tinfo["key"]] = {"uri": uri, "region": region, "transform": transform}
                new_rows.append((tinfo["key"], uri, tinfo["hash"], n, len(glb), region, transform))
                report.tiles_written += 1
                report.written.append(tinfo["key"])
                report.bytes_total += len(glb)
                report.bytes_written += len(glb)
            t = lap("tiles", t)

            # --- BIM models ----------------------------------------------------------------------
            extra = []
            for m, mt in zip(models, model_tiles):
                key = f"bim/{m.id}"
                h = _hash(BUILDER_VERSION, mt["hash"])
                old = stored.get(key)
                lvl = int(layout.levels(np.array([mt["sigma"]]))[0])
                plevel = max(lvl - 1, 0)
                pix, piy = layout.index(np.array([mt["x"]]), np.array([mt["y"]]), plevel)
                parent = (plevel, int(pix[0]), int(piy[0]))
                if old and old["hash"] == h and (out_dir / old["uri"]).is_file():
                    uri, region, transform, count, nbytes = old["uri"], old["region"], old["transform"], old["count"], old["bytes"]
                    report.tiles_unchanged += 1
                else:
                    glb, region, transform, count = ifc.model_glb(m, sep)
                    uri = f"bim/{m.id}-{h[:12]}.glb"
                    if not (out_dir / uri).exists():
                        _atomic_write(out_dir / uri, glb)
                        written_files.append(out_dir / uri)
                    nbytes = len(glb)
                    report.tiles_written += 1
                    report.written.append(key)
                    report.bytes_written += nbytes
                report.bytes_total += nbytes
                extra.append({"key": key, "uri": uri, "region": region, "transform": transform, "parent": parent})
                new_rows.append((key, uri, h, count, nbytes, region, transform))
            t = lap("bim", t)

            root = build_tree(layout, content, extra)
            doc = tileset_json(root, extras={"geotwin": {
                "tileset": tileset_id, "as_of": at.isoformat() if at else None, "built_at": datetime.now().astimezone().isoformat(),
                "heights": f"ellipsoidal = orthometric (DEM) + geoid separation {sep} m",
                "geoid_separation_m": sep, "crs": METRIC_CRS, "buildings": report.buildings,
                "bim_models": [m.id for m in models]}})
            report.tiles = len(new_rows)
            old_keys = {r[0] for r in conn.execute("SELECT tile_key FROM cim_tiles WHERE tileset_id = %s", (tileset_id,))}
            report.tiles_removed = len(old_keys - {r[0] for r in new_rows})
            report.seconds = round(time.perf_counter() - started, 3)
            report.timings = timings
            stats = {k: v for k, v in report.as_dict().items() if k not in ("written", "warnings", "out_dir")}
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp_json.write_text(json.dumps(doc, separators=(",", ":")))
            with conn.transaction():
                conn.execute(
                    "INSERT INTO cim_tilesets (id, title, out_dir, as_of, built_at, layout, params, stats) "
                    "VALUES (%s, %s, %s, %s, now(), %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "title = coalesce(EXCLUDED.title, cim_tilesets.title), out_dir = EXCLUDED.out_dir, "
                    "as_of = EXCLUDED.as_of, built_at = now(), layout = EXCLUDED.layout, "
                    "params = EXCLUDED.params, stats = EXCLUDED.stats",
                    (tileset_id, title, str(out_dir), at, Jsonb(layout.to_json()), Jsonb(params), Jsonb(stats)))
                conn.execute("DELETE FROM cim_tiles WHERE tileset_id = %s", (tileset_id,))
                with conn.cursor().copy("COPY cim_tiles (tileset_id, tile_key, uri, content_hash, feature_count, "
                                        "bytes, region, transform) FROM STDIN") as cp:
                    for row in new_rows:
                        cp.write_row((tileset_id, *row))
                ifc.record_replacements(conn, models)
                os.replace(tmp_json, out_dir / "tileset.json")
        except BaseException:
            tmp_json.unlink(missing_ok=True)
            for p in written_files:
                p.unlink(missing_ok=True)
            raise
        # files no longer referenced
        keep_uris = {r[1] for r in new_rows}
        for sub in ("tiles", "bim"):
            for p in (out_dir / sub).rglob("*.glb") if (out_dir / sub).exists() else []:
                if p.relative_to(out_dir).as_posix() not in keep_uris:
                    p.unlink(missing_ok=True)
        lap("write", t)
        report.seconds = round(time.perf_counter() - started, 3)
    return report
