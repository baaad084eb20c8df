"""Mapbox Vector Tiles straight from the layer store: one SQL statement per tile.

The statement filters with the index operator ``&&`` on the stored Web Mercator copy
(``geom_3857``, WebMercatorQuad) or on ``geom`` (the CGCS2000 grid), clips and quantises with
``ST_AsMVTGeom`` (which snaps to the tile grid and drops what collapses) and encodes with
``ST_AsMVT``. Features are those valid at the requested time (current by default); attributes are
the layer's properties (or a chosen subset). A per-geometry ST_SimplifyPreserveTopology was tried
and cost 4x in tiles/s (bench/tiles.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import morecantile
from psycopg import sql

from spatial_api import store
from spatial_api.store.types import SQL_CASTS
from spatial_api.api.grids import CGCS2000_QUAD, GRIDS, TMS  # noqa: F401  (re-exported for the tiling room)

EXTENT, BUFFER = 4096, 64
MAX_FEATURES = 200_000  # per layer per tile: a guard, not a silent cut at ordinary zooms



#: MVT values are typed: numbers and booleans stay numbers and booleans; dates go as text.
_MVT_TYPES = {t: SQL_CASTS[t] for t in ("integer", "number", "boolean")}


class TileError(ValueError):
    """A tile outside the grid or a bad parameter: the message says which."""


@dataclass(frozen=True)
class TileRequest:
    tms: str
    z: int
    x: int  # column
    y: int  # row


def tile_bounds(req: TileRequest) -> tuple[float, float, float, float, int]:
    """(minx, miny, maxx, maxy) in the grid's CRS (x = easting / longitude) and its SRID."""
    if req.tms not in GRIDS:
        raise TileError(f"unknown tile matrix set {req.tms!r}; use one of {', '.join(GRIDS)}")
    tms = TMS.get(req.tms)
    if not (tms.minzoom <= req.z <= tms.maxzoom):
        raise TileError(f"zoom {req.z} is outside {tms.minzoom}..{tms.maxzoom}")
    matrix = tms.matrix(req.z)
    if not (0 <= req.x < matrix.matrixWidth and 0 <= req.y < matrix.matrixHeight):
        raise TileError(f"tile {req.z}/{req.y}/{req.x} is outside the {req.tms} matrix "
                        f"({matrix.matrixHeight} rows × {matrix.matrixWidth} columns)")
    b = tms.xy_bounds(morecantile.Tile(req.x, req.y, req.z))
    return b.left, b.bottom, b.right, b.top, GRIDS[req.tms]


def zoom_range(layer: store.Layer, tms_id: str = "WebMercatorQuad") -> tuple[int, int]:
    """The zooms at which the layer has tiles: its tile options within the grid's own range."""
    tms = TMS.get(tms_id)
    opts = layer.tile_options or {}
    return max(tms.minzoom, opts.get("minzoom", tms.minzoom)), min(tms.maxzoom, opts.get("maxzoom", tms.maxzoom))


def feature_limit(layer: store.Layer, z: int) -> int | None:
    """The layer's feature cap at zoom ``z``: ``max_features`` {"10": 500, "13": 5000} caps zooms
    ≤ 10 at 500 and 11–13 at 5,000; deeper zooms have no cap (beyond the MAX_FEATURES guard)."""
    limits = (layer.tile_options or {}).get("max_features") or {}
    caps = sorted((int(k), n) for k, n in limits.items() if int(k) >= z)
    return caps[0][1] if caps else None


def _priority(layer: store.Layer, geom: sql.Composable) -> sql.Composable:
    """What a feature cap keeps first: the ``priority`` property (largest first), else the largest
    geometries (area, length), else — points without priority — a stable order by fid."""
    prop = (layer.tile_options or {}).get("priority")
    if prop and prop in layer.schema:
        cast = "double precision" if layer.schema[prop] in ("integer", "number") else "text"
        return sql.SQL("(f.properties ->> {})::{} DESC NULLS LAST, f.fid").format(sql.Literal(prop), sql.SQL(cast))
    if layer.geometry_family == "Polygon":
        return sql.SQL("ST_Area(f.{}) DESC, f.fid").format(geom)
    if layer.geometry_family == "LineString":
        return sql.SQL("ST_Length(f.{}) DESC, f.fid").format(geom)
    return sql.SQL("f.fid")


def tile_sql(layer: store.Layer, srid: int, *, properties: list[str] | None = None,
             at: datetime | None = None, capped: bool = False) -> tuple[sql.Composable, int]:
    """The statement for one layer's tile, and how many temporal parameters it takes (0 or 2).
    Parameters, in order: minx, miny, maxx, maxy, [valid time ×2], feature cap. ``fid`` goes
    into the tile when all properties are asked for, or when ``properties`` names it. ``capped``:
    the layer's per-zoom limit applies, so the features kept first are chosen (see _priority)."""
    names = layer.schema if properties is None else {n: layer.schema[n] for n in properties if n != "fid"}
    col = "geom_3857" if srid == 3857 else "geom"
    items = [sql.SQL("f.fid")] if properties is None or "fid" in properties else []
    items += [sql.SQL("(f.properties ->> {})::{} AS {}").format(sql.Literal(n), sql.SQL(_MVT_TYPES.get(t, "text")),
                                                                sql.Identifier(n))
              for n, t in names.items()]
    attrs = sql.SQL("").join(item + sql.SQL(", ") for item in items)
    if at is None:
        temporal, n_temporal = sql.SQL("f.valid_to IS NULL"), 0
    else:
        temporal, n_temporal = sql.SQL("f.valid_from <= %s AND (f.valid_to IS NULL OR f.valid_to > %s) "
                                      "AND f.superseded_at IS NULL"), 2
    geom = sql.Identifier(col)
    query = sql.SQL(
        """
        WITH bounds AS (SELECT ST_MakeEnvelope(%s, %s, %s, %s, {srid}) AS env)
        SELECT ST_AsMVT(t, {name}, {extent}, 'geom') FROM (
            SELECT {attrs}
                   ST_AsMVTGeom(f.{geom}, bounds.env, {extent}, {buffer}, true) AS geom
            FROM {part} f, bounds
            WHERE f.layer = {layer_lit} AND {temporal}
              AND f.{geom} && ST_Expand(bounds.env, (ST_XMax(bounds.env) - ST_XMin(bounds.env)) * {margin})
            {order}
            LIMIT %s
        ) t WHERE t.geom IS NOT NULL
        """
    ).format(order=sql.SQL("ORDER BY {}").format(_priority(layer, sql.Identifier(col))) if capped else sql.SQL(""),
             srid=sql.Literal(srid), name=sql.Literal(layer.name), extent=sql.Literal(EXTENT),
             attrs=attrs, geom=geom, buffer=sql.Literal(BUFFER), part=sql.Identifier(store.partition_name(layer.name)),
             layer_lit=sql.Literal(layer.name), temporal=temporal, margin=sql.Literal(BUFFER / EXTENT))
    return query, n_temporal


def render(conn, layers: list[store.Layer], req: TileRequest, *, at: datetime | None = None,
           properties: list[str] | None = None) -> bytes:
    """One MVT holding a layer per requested layer (each its own statement; bytes concatenated —
    MVT layers are independent protobuf messages, so concatenation is a valid multi-layer tile)."""
    minx, miny, maxx, maxy, srid = tile_bounds(req)
    out = b""
    for layer in layers:
        lo, hi = zoom_range(layer, req.tms)
        if not lo <= req.z <= hi:
            continue  # outside the layer's zooms: the layer is absent from the tile
        cap = feature_limit(layer, req.z)
        query, n_temporal = tile_sql(layer, srid, properties=properties, at=at, capped=cap is not None)
        params = [minx, miny, maxx, maxy] + ([at, at] if n_temporal else []) + [cap or MAX_FEATURES]
        row = conn.execute(query, params, prepare=True).fetchone()
        if row and row[0]:
            out += bytes(row[0])
    return out
