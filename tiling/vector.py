"""Mapbox Vector Tiles straight from the layer store: one SQL statement per layer and tile.

The exact path filters with the index operator ``&&`` on the stored Web Mercator copy
(``geom_3857``, WebMercatorQuad) or on ``geom`` (the CGCS2000 grid), clips and quantises with
``ST_AsMVTGeom`` (which snaps to the tile grid and drops what collapses) and encodes with
``ST_AsMVT``. Features are those valid at the requested time (current by default); attributes are
the layer's properties (or a chosen subset). A per-geometry ST_SimplifyPreserveTopology was tried
and cost 4x in tiles/s (bench/tiles.py).

At WebMercatorQuad zooms 9–13 a layer with zoom generalisations (tiling/generalise.py) is read
from them instead: geometries already snapped to the zoom's pixel grid and valid in their home
tile's coordinates, so a feature inside its home tile is sent as stored (no transformation,
clipping or validation), any other is moved by whole tiles and clipped by ``ST_AsMVTGeom``. The statement checks in its own
snapshot that the generalisations reflect the layer's latest changeset and otherwise takes the
exact path (a one-time filter: the other branch is not run). Each statement also returns the
``xmin`` of the layer's registry row, so that a caller rendering from a cached layer definition
knows whether it was still the current one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime

import morecantile
from psycopg import sql

from spatial_api import store
from spatial_api.store.types import SQL_CASTS
from spatial_api.api.grids import CGCS2000_QUAD, GRIDS, TMS  # noqa: F401  (re-exported for the tiling room)
from tiling import generalise

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


@functools.cache
def grid(tms_id: str) -> morecantile.TileMatrixSet:
    """The grid's TileMatrixSet, made once (``TMS.get`` deep-copies it at every call: ~1 ms)."""
    return TMS.get(tms_id)


@functools.lru_cache(maxsize=4096)
def _bounds(tms_id: str, z: int, x: int, y: int) -> tuple[float, float, float, float, int]:
    tms = grid(tms_id)
    if not (tms.minzoom <= z <= tms.maxzoom):
        raise TileError(f"zoom {z} is outside {tms.minzoom}..{tms.maxzoom}")
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise TileError(f"tile {z}/{y}/{x} is outside the {tms_id} matrix "
                        f"({matrix.matrixHeight} rows × {matrix.matrixWidth} columns)")
    b = tms.xy_bounds(morecantile.Tile(x, y, z))
    return b.left, b.bottom, b.right, b.top, GRIDS[tms_id]


def tile_bounds(req: TileRequest) -> tuple[float, float, float, float, int]:
    """(minx, miny, maxx, maxy) in the grid's CRS (x = easting / longitude) and its SRID."""
    if req.tms not in GRIDS:
        raise TileError(f"unknown tile matrix set {req.tms!r}; use one of {', '.join(GRIDS)}")
    return _bounds(req.tms, req.z, req.x, req.y)


def zoom_range(layer: store.Layer, tms_id: str = "WebMercatorQuad") -> tuple[int, int]:
    """The zooms at which the layer has tiles: its tile options within the grid's own range."""
    tms = grid(tms_id)
    opts = layer.tile_options or {}
    return max(tms.minzoom, opts.get("minzoom", tms.minzoom)), min(tms.maxzoom, opts.get("maxzoom", tms.maxzoom))


def feature_limit(layer: store.Layer, z: int) -> int | None:
    """The layer's feature cap at zoom ``z``: ``max_features`` {"10": 500, "13": 5000} caps zooms
    ≤ 10 at 500 and 11–13 at 5,000; deeper zooms have no cap (beyond the MAX_FEATURES guard)."""
    limits = (layer.tile_options or {}).get("max_features") or {}
    caps = sorted((int(k), n) for k, n in limits.items() if int(k) >= z)
    return caps[0][1] if caps else None


def _priority(layer: store.Layer, geom: sql.Composable, alias: str = "f") -> sql.Composable:
    """What a feature cap keeps first: the ``priority`` property (largest first), else the largest
    geometries (area, length), else — points without priority — a stable order by fid."""
    prop = (layer.tile_options or {}).get("priority")
    a = sql.Identifier(alias)
    if prop and prop in layer.schema:
        cast = "double precision" if layer.schema[prop] in ("integer", "number") else "text"
        return sql.SQL("({a}.properties ->> {})::{} DESC NULLS LAST, {a}.fid").format(
            sql.Literal(prop), sql.SQL(cast), a=a)
    if layer.geometry_family == "Polygon":
        return sql.SQL("ST_Area({a}.{}) DESC, {a}.fid").format(geom, a=a)
    if layer.geometry_family == "LineString":
        return sql.SQL("ST_Length({a}.{}) DESC, {a}.fid").format(geom, a=a)
    return sql.SQL("{a}.fid").format(a=a)


def _attributes(layer: store.Layer, properties: list[str] | None, alias: str) -> sql.Composable:
    """The tile's attribute columns, each followed by ", ". ``fid`` goes into the tile when all
    properties are asked for, or when ``properties`` names it."""
    names = layer.schema if properties is None else {n: layer.schema[n] for n in properties if n != "fid"}
    a = sql.Identifier(alias)
    items = [sql.SQL("{}.fid").format(a)] if properties is None or "fid" in properties else []
    items += [sql.SQL("({}.properties ->> {})::{} AS {}").format(a, sql.Literal(n), sql.SQL(_MVT_TYPES.get(t, "text")),
                                                                 sql.Identifier(n))
              for n, t in names.items()]
    return sql.SQL("").join(item + sql.SQL(", ") for item in items)


def _temporal(at: bool, alias: str, placeholder: str = "%s") -> sql.Composable:
    a = sql.Identifier(alias)
    if not at:
        return sql.SQL("{}.valid_to IS NULL").format(a)
    p = sql.SQL(placeholder)
    return sql.SQL("{a}.valid_from <= {p} AND ({a}.valid_to IS NULL OR {a}.valid_to > {p}) "
                   "AND {a}.superseded_at IS NULL").format(a=a, p=p)


# -- the statements the tile routes run --------------------------------------------------------------
#
# Named parameters: minx … maxy (the tile), eminx … emaxy (the tile and its buffer), at (a valid
# time), cap (feature limit); generalised statements also x, y (the tile's column and row).


def _exact_branch(layer: store.Layer, srid: int, properties, at: bool, capped: bool) -> sql.Composable:
    geom = sql.Identifier("geom_3857" if srid == 3857 else "geom")
    return sql.SQL(
        """
        SELECT {attrs}ST_AsMVTGeom(f.{geom}, (SELECT ST_MakeEnvelope(%(minx)s, %(miny)s, %(maxx)s, %(maxy)s, {srid})),
                                    {extent}, {buffer}, true) AS geom
        FROM {part} f
        WHERE f.layer = {layer} AND {temporal}
          AND f.{geom} && (SELECT ST_MakeEnvelope(%(eminx)s, %(eminy)s, %(emaxx)s, %(emaxy)s, {srid}))
        {order} LIMIT %(cap)s
        """).format(attrs=_attributes(layer, properties, "f"), geom=geom, srid=sql.Literal(srid),
                    extent=sql.Literal(EXTENT), buffer=sql.Literal(BUFFER),
                    part=sql.Identifier(store.partition_name(layer.name)), layer=sql.Literal(layer.name),
                    temporal=_temporal(at, "f", "%(at)s"),
                    order=sql.SQL("ORDER BY {}").format(_priority(layer, geom)) if capped else sql.SQL(""))


def _generalised_branch(layer: store.Layer, z: int, properties, at: bool, capped: bool) -> sql.Composable:
    col = sql.Identifier(generalise.zoom_column(z))
    k = sql.Literal(generalise.MAX_ZOOM - z)  # the home tile at this zoom: hx >> k, hy >> k
    extent, buffer = sql.Literal(EXTENT), sql.Literal(BUFFER)
    # The column holds this zoom's pixels, relative to the feature's home tile: in its home tile and
    # inside the clip box, a feature is sent as stored; elsewhere it is moved by whole tiles and clipped.
    geom = sql.SQL(
        """CASE WHEN g.hx >> {k} = %(x)s AND g.hy >> {k} = %(y)s AND g.{c} @ ST_MakeEnvelope({lo}, {lo}, {hi}, {hi})
                THEN g.{c}
                ELSE ST_AsMVTGeom(ST_Affine(g.{c}, 1, 0, 0, -1, (((g.hx >> {k}) - %(x)s) * {extent})::float8,
                                            (((g.hy >> {k}) - %(y)s) * -{extent})::float8),
                                  ST_MakeBox2D(ST_Point(0, -{extent}), ST_Point({extent}, 0)), {extent}, {buffer}, true)
           END""").format(k=k, c=col, lo=sql.Literal(-BUFFER), hi=sql.Literal(EXTENT + BUFFER), extent=extent,
                          buffer=buffer)
    return sql.SQL(
        """
        SELECT {attrs}{geom} AS geom
        FROM {gen} g
        WHERE (SELECT ok FROM ready) AND {temporal} AND g.{c} IS NOT NULL
          AND g.bbox && (SELECT box(point(%(eminx)s, %(eminy)s), point(%(emaxx)s, %(emaxy)s)))
        {order} LIMIT %(cap)s
        """).format(attrs=_attributes(layer, properties, "g"), geom=geom, gen=sql.Identifier(generalise.partition_name(layer.name)),
                    temporal=_temporal(at, "g", "%(at)s"), c=col,
                    order=sql.SQL("ORDER BY {}").format(_priority(layer, col, "g")) if capped else sql.SQL(""))


def statement(layer: store.Layer, tms_id: str, z: int, *, properties: list[str] | None = None,
              at: bool = False, capped: bool = False, generalised: bool = False) -> sql.Composable:
    """One layer's tile as one row: (the ``xmin`` of the layer's registry row, whether its
    generalisations were current — NULL for an exact-only statement —, the MVT bytes)."""
    srid = GRIDS[tms_id]
    exact = _exact_branch(layer, srid, properties, at, capped)
    name = sql.Literal(layer.name)
    head = sql.SQL("(SELECT l.xmin::text FROM layers l WHERE l.name = {})").format(name)
    if not generalised:
        return sql.SQL("SELECT {head}, NULL::boolean, (SELECT ST_AsMVT(t, {name}, {extent}, 'geom') FROM ({exact}) t "
                       "WHERE t.geom IS NOT NULL)").format(head=head, name=name, extent=sql.Literal(EXTENT), exact=exact)
    return sql.SQL(
        """
        WITH ready AS MATERIALIZED (
            SELECT (SELECT s.through_changeset FROM tile_generalised s WHERE s.layer = {name} AND s.rules = {rules})
                   IS NOT DISTINCT FROM (SELECT max(c.id) FROM changesets c WHERE c.layer = {name}) AS ok)
        SELECT {head}, (SELECT ok FROM ready), (SELECT ST_AsMVT(t, {name}, {extent}, 'geom') FROM (
            ({gen})
            UNION ALL
            ({exact_gated})
        ) t WHERE t.geom IS NOT NULL)
        """).format(name=name, rules=sql.Literal(generalise.RULES), head=head, extent=sql.Literal(EXTENT),
                    gen=_generalised_branch(layer, z, properties, at, capped),
                    exact_gated=sql.SQL("SELECT * FROM ({}) e WHERE NOT (SELECT ok FROM ready)").format(exact))


def parameters(req: TileRequest, *, at: datetime | None, cap: int, generalised: bool) -> dict:
    minx, miny, maxx, maxy, _ = tile_bounds(req)
    m = (maxx - minx) * BUFFER / EXTENT
    params = {"minx": minx, "miny": miny, "maxx": maxx, "maxy": maxy,
              "eminx": minx - m, "eminy": miny - m, "emaxx": maxx + m, "emaxy": maxy + m, "cap": cap}
    if at is not None:
        params["at"] = at
    if generalised:
        params.update(x=req.x, y=req.y)
    return params


def _layer_key(layer: store.Layer) -> tuple:
    """What a layer's statement depends on."""
    opts = layer.tile_options or {}
    return (layer.name, layer.geometry_family, tuple((p["name"], p["type"]) for p in layer.properties),
            opts.get("priority"))


class _Keyed:
    """A layer handed to the memoised statement builder, compared by what its statement depends on."""

    __slots__ = ("key", "layer")

    def __init__(self, layer: store.Layer):
        self.layer, self.key = layer, _layer_key(layer)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Keyed) and other.key == self.key


@functools.lru_cache(maxsize=1024)
def _statement_text(keyed: _Keyed, tms_id: str, z: int, properties: tuple | None, at: bool, capped: bool,
                    generalised: bool) -> str:
    # composed once per distinct statement (psycopg's sql objects need no connection for identifiers
    # and literals); the text is then the key of the connection's prepared statement
    return statement(keyed.layer, tms_id, z, properties=None if properties is None else list(properties), at=at,
                     capped=capped, generalised=generalised).as_string(None)


@dataclass
class Rendered:
    body: bytes
    xmins: dict[str, str | None] = field(default_factory=dict)  # layer -> xmin of its registry row
    behind: list[str] = field(default_factory=list)  # layers rendered exactly: generalisations not current


def render_tile(conn, layers: list[store.Layer], req: TileRequest, *, at: datetime | None = None,
                properties: list[str] | None = None, generalised=frozenset()) -> Rendered:
    """One MVT holding a layer per requested layer (each its own statement; bytes concatenated —
    MVT layers are independent protobuf messages, so concatenation is a valid multi-layer tile).
    ``generalised``: the layers that have zoom generalisations (used at WebMercatorQuad zooms 9–13)."""
    tile_bounds(req)
    out = Rendered(b"")
    props = None if properties is None else tuple(properties)
    for layer in layers:
        lo, hi = zoom_range(layer, req.tms)
        if not lo <= req.z <= hi:
            continue  # outside the layer's zooms: the layer is absent from the tile
        cap = feature_limit(layer, req.z)
        gen = generalise.covers(req.tms, req.z) and layer.name in generalised
        text = _statement_text(_Keyed(layer), req.tms, req.z if gen else -1, props, at is not None, cap is not None, gen)
        row = conn.execute(text, parameters(req, at=at, cap=cap or MAX_FEATURES, generalised=gen),
                           prepare=True, binary=True).fetchone()
        out.xmins[layer.name] = row[0]
        if gen and row[1] is False:
            out.behind.append(layer.name)
        if row[2]:
            out.body += bytes(row[2])
    return out


def render(conn, layers: list[store.Layer], req: TileRequest, *, at: datetime | None = None,
           properties: list[str] | None = None, generalised=frozenset()) -> bytes:
    """The tile's bytes (see :func:`render_tile`)."""
    return render_tile(conn, layers, req, at=at, properties=properties, generalised=generalised).body
