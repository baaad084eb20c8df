"""OGC API – Tiles (vector) and plain XYZ templates over the layer store.

- ``/tileMatrixSets`` and ``/tileMatrixSets/{id}``: WebMercatorQuad and CGCS2000Quad (2D-TMS JSON
  from morecantile);
- ``/collections/{id}/tiles`` and ``/collections/{id}/tiles/{tms}``: tilesets with templated
  links (rel ``item``, type ``application/vnd.mapbox-vector-tile``);
- ``/collections/{id}/tiles/{tms}/{z}/{row}/{col}``: a tile (OGC order: matrix, row, column);
- ``/tiles/{layers}/{z}/{x}/{y}.mvt``: XYZ on WebMercatorQuad, several layers comma-separated.

``datetime`` (an instant) gives the tile as of that valid time. An empty tile is 204; a tile
outside the matrix is 404; bad parameters are 400 — all with the OGC exception JSON.
"""

from __future__ import annotations

import functools
import threading
from urllib.parse import quote

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool

from spatial_api import db, security, store
from spatial_api.config import Settings
from spatial_api.api.collections import Collections
from spatial_api.api.errors import ApiError, invalid_parameter
from spatial_api.api.params import as_of_param
from spatial_api.api.responses import base_url, link
from tiling.cache import Entry, Invalidator, TileCache, TileKey, etag_of, variant
from tiling.generalise import Generaliser, covers
from tiling.vector import GRIDS, TMS, Rendered, TileError, TileRequest, render_tile, tile_bounds, zoom_range

MVT = "application/vnd.mapbox-vector-tile"
_TILEJSON_TYPES = {"integer": "Number", "number": "Number", "boolean": "Boolean"}
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
]


def tms_document(tms_id: str) -> dict:
    """The OGC 2D-TMS 2.0 JSON of a grid, plus the members of its 1.0 encoding (``identifier``,
    ``supportedCRS``, ``boundingBox``, per matrix ``identifier`` and ``topLeftCorner``) that older
    clients still read — GDAL 3.6 (Debian 12) recognises a tile matrix set only by them. Extra
    members are allowed by the 2.0 schema, so newer clients are unaffected."""
    tms = TMS.get(tms_id)
    doc = tms.model_dump(exclude_none=True, mode="json")
    b = tms.xy_bbox  # in x / y order
    lower, upper = [b.left, b.bottom], [b.right, b.top]
    if tms._invert_axis:  # the CRS's own axis order (latitude first for EPSG:4490)
        lower, upper = lower[::-1], upper[::-1]
    doc.update({"identifier": tms_id, "supportedCRS": doc["crs"],
                "boundingBox": {"type": "BoundingBoxType", "crs": doc["crs"], "lowerCorner": lower,
                                "upperCorner": upper}})
    for m in doc["tileMatrices"]:
        m["identifier"], m["topLeftCorner"] = m["id"], m["pointOfOrigin"]
    return doc


MAX_TILE_LAYERS = 32  # layers in one XYZ tile request (a guard against /tiles/a,a,a,…,a/…)


def _layer_names(layers: str) -> list[str]:
    names = [n for n in layers.split(",") if n]
    if not names:
        raise invalid_parameter("layers", "name at least one layer")
    if len(names) > MAX_TILE_LAYERS:
        raise invalid_parameter("layers", f"{len(names)} layers named; at most {MAX_TILE_LAYERS} in one request")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise invalid_parameter("layers", f"{', '.join(twice)[:200]} named more than once")
    return names


@functools.lru_cache(maxsize=1024)
def _recent_variant(datetime_: str | None, properties: str | None) -> str:
    return variant(datetime_, properties)


def _variant(datetime_: str | None, properties: str | None) -> str:
    """cache.variant, memoised for short parameters (a tile client repeats the same few: hashing
    them anew was ~7% of a cache hit's CPU)."""
    if len(datetime_ or "") <= 64 and len(properties or "") <= 256:
        return _recent_variant(datetime_, properties)
    return variant(datetime_, properties)


def _int_param(path_params: dict, name: str) -> int:
    raw = path_params[name]
    try:
        return int(raw)
    except ValueError:
        raise invalid_parameter(name, f"{raw[:50]!r} is not an integer") from None


def _tile_parameters(*path: tuple[str, str, str]) -> list[dict]:
    """OpenAPI parameters of a tile endpoint: its path parameters, then datetime and properties."""
    return [{"name": n, "in": "path", "required": True, "schema": {"type": t}, "description": d}
            for n, t, d in path] + [
        {"name": "datetime", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "an instant (RFC 3339 date or date-time): the tile as of that valid time"},
        {"name": "properties", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "the properties to put in the tile, comma-separated (default: all)"}]


class TileAPI:
    """OGC API – Tiles (vector) and XYZ: one method per endpoint (tile matrix sets, tilesets, TileJSON, the tile
    cache's statistics, the OGC and XYZ tiles); the tile cache and its invalidator live here."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cols = Collections(settings)
        self.pool = db.pool(settings)
        self.cache = (TileCache(settings.tile_cache_mb << 20, settings.tile_cache_dir)
                      if settings.tile_cache_mb > 0 else None)
        self.invalidator = Invalidator(self.cache, settings) if self.cache else None
        self.starting = threading.Lock()  # one thread starts the invalidator
        # A tile of public layers is the same for everyone: shared caches may keep it. A tile with any
        # internal / restricted layer is for its caller only: private, varying on the credentials.
        self.cache_control = {level: f"{'public' if level == 'public' else 'private'}, "
                                     f"max-age={settings.tile_max_age}, must-revalidate"
                              for level in ("public", "internal", "restricted")}
        self.generaliser = Generaliser(settings)
        #: layer name -> (its definition, the xmin of its registry row when read): a tile is rendered
        #: from these without reading the registry; its statement returns the row's xmin, and a tile
        #: rendered from a definition that was no longer current is rendered again (see render_entry)
        self.definitions: dict[str, tuple[store.Layer, str]] = {}
        self._render_pool: ConnectionPool | None = None
        self._render_pool_lock = threading.Lock()

    # -- tile matrix sets and tilesets ------------------------------------------------------------

    def tile_matrix_sets(self, request: Request):
        return {"tileMatrixSets": [
            {"id": tms_id, "title": TMS.get(tms_id).title or tms_id,
             "links": [link(f"{base_url(request)}/tileMatrixSets/{tms_id}",
                            "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "application/json")]}
            for tms_id in GRIDS]}

    def tile_matrix_set(self, tms_id: str):
        if tms_id not in GRIDS:
            raise ApiError(404, "NotFound", f"tile matrix set {tms_id!r} does not exist; use {', '.join(GRIDS)}")
        return JSONResponse(tms_document(tms_id))

    def limits(self, conn, layer, tms_id: str) -> list[dict]:
        """tileMatrixSetLimits: per zoom of the layer, the rows and columns its extent covers."""
        row = next((r for r in self.cols.visible(conn) if r["name"] == layer.name), None)
        boxes = self.cols.extent(conn, row)["spatial"]["bbox"] if row else []
        if not boxes:
            return []
        west, south, east, north = boxes[0]
        tms = TMS.get(tms_id)
        lo, hi = zoom_range(layer, tms_id)
        out = []
        for z in range(lo, hi + 1):
            nw, se = tms.tile(west, north, z), tms.tile(east, south, z)
            out.append({"tileMatrix": str(z), "minTileRow": nw.y, "maxTileRow": se.y,
                        "minTileCol": nw.x, "maxTileCol": se.x})
        return out

    @staticmethod
    def tileset(request: Request, collection_id: str, tms_id: str, tm_limits: list[dict] | None = None) -> dict:
        url = f"{base_url(request)}/collections/{collection_id}/tiles/{tms_id}"
        doc = {
            "title": f"{collection_id} ({tms_id})", "dataType": "vector", "crs": TMS.get(tms_id).crs.root,
            "tileMatrixSetURI": f"{base_url(request)}/tileMatrixSets/{tms_id}",
            "links": [
                link(url, "self", "application/json", "this tileset"),
                link(f"{base_url(request)}/tileMatrixSets/{tms_id}",
                     "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "application/json", "the grid"),
                {**link(url + "/{tileMatrix}/{tileRow}/{tileCol}", "item", MVT, "a tile"), "templated": True},
            ],
        }
        if tm_limits:
            doc["tileMatrixSetLimits"] = tm_limits
        return doc

    def tilesets(self, request: Request, collection_id: str):
        with self.pool.connection() as conn:
            self.cols.get(conn, collection_id)
        return {"tilesets": [self.tileset(request, collection_id, t) for t in GRIDS],
                "links": [link(f"{base_url(request)}/collections/{collection_id}/tiles", "self", "application/json")]}

    def tileset_doc(self, request: Request, collection_id: str, tms_id: str):
        if tms_id not in GRIDS:
            raise ApiError(404, "NotFound", f"tile matrix set {tms_id!r} does not exist; use {', '.join(GRIDS)}")
        with self.pool.connection() as conn:
            layer = self.cols.get(conn, collection_id)
            tm_limits = self.limits(conn, layer, tms_id)
        return self.tileset(request, collection_id, tms_id, tm_limits)

    def tilejson(self, request: Request, layers: str, datetime_: str | None = Query(None, alias="datetime")):
        names = _layer_names(layers)
        with self.pool.connection() as conn:
            found = [self.cols.get(conn, n) for n in names]
            rows = {r["name"]: r for r in self.cols.visible(conn)}
            extents = [self.cols.extent(conn, rows[n])["spatial"]["bbox"] for n in names]
        boxes = [b[0] for b in extents if b]
        bounds = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                   max(b[3] for b in boxes)] if boxes else [-180, -85.0511, 180, 85.0511])
        params = [f"datetime={quote(datetime_, safe='')}"] if datetime_ else []  # '+08:00' must survive
        if request.query_params.get("api_key"):  # a client that authenticates by URL keeps doing so
            params.append(f"api_key={quote(request.query_params['api_key'], safe='')}")
        query = "?" + "&".join(params) if params else ""
        ranges = [zoom_range(layer) for layer in found]
        return {
            "tilejson": "3.0.0", "name": ",".join(names), "scheme": "xyz", "format": "pbf",
            "tiles": [f"{base_url(request)}/tiles/{layers}/{{z}}/{{x}}/{{y}}.mvt{query}"],
            "minzoom": min(r[0] for r in ranges), "maxzoom": min(max(r[1] for r in ranges), 22), "bounds": bounds,
            "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 12],
            "vector_layers": [{"id": layer.name, "description": layer.title_zh or layer.title_en or "",
                               "minzoom": r[0], "maxzoom": min(r[1], 22),
                               "fields": {"fid": "String", **{p["name"]: _TILEJSON_TYPES.get(p["type"], "String")
                                                             for p in layer.properties}}}
                              for layer, r in zip(found, ranges)],
        }

    # -- tiles ------------------------------------------------------------------------------------

    def ensure_listening(self) -> None:
        if self.invalidator is not None and not self.invalidator.connected.is_set():
            with self.starting:
                self.invalidator.start()

    def render_pool(self) -> ConnectionPool:
        """Connections that render tiles: autocommit (a tile is one statement: no BEGIN / COMMIT round
        trips) and not checked at each checkout (the shared pool's check is a round trip per request);
        a tile whose statement fails on a broken connection is tried again once after the pool has
        checked its idle connections (see :meth:`render`)."""
        if self._render_pool is None:
            with self._render_pool_lock:
                if self._render_pool is None:
                    self._render_pool = ConnectionPool(
                        db.database_url(self.settings), min_size=1, max_size=16, open=True, name="geotwin-tiles",
                        timeout=db.POOL_TIMEOUT, reconnect_timeout=3600,
                        kwargs={"autocommit": True, "application_name": "geotwin-tiles",
                                "connect_timeout": db.CONNECT_TIMEOUT,
                                "options": f"-c search_path={db.schema_name(self.settings)},public -c timezone=UTC "
                                           f"-c statement_timeout={db.API_STATEMENT_TIMEOUT}"})
        return self._render_pool

    def render(self, layers: list[store.Layer], req: TileRequest, at, names: list[str] | None) -> Rendered:
        """The tile from the given layer definitions (zoom generalisations where the layer has them)."""
        pool = self.render_pool()
        generalised = {layer.name for layer in layers if self.generaliser.has(layer.name)}
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    out = render_tile(conn, layers, req, at=at, properties=names, generalised=generalised)
                break
            except psycopg.errors.UndefinedTable:
                if attempt == 2 or not generalised:
                    raise
                self.generaliser.forget(generalised)  # a generalisations table gone: exact, and made anew
                generalised = set()
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                pool.check()  # a database restart: drop the broken idle connections, then once more
        if covers(req.tms, req.z):
            for layer in layers:
                if layer.name in out.behind or layer.name not in generalised:
                    self.generaliser.wanted(layer.name)
        return out

    @staticmethod
    def _usable(layers: list[store.Layer], req: TileRequest, names: list[str] | None) -> bool:
        """Can the tile be rendered from these definitions as they are (every layer in its zoom range,
        every property known)? When not, the registry is read and the error, if any, raised from it."""
        for layer in layers:
            lo, hi = zoom_range(layer, req.tms)
            if not lo <= req.z <= hi or (names and any(n not in layer.schema for n in names)):
                return False
        return True

    def render_entry(self, key: TileKey, req: TileRequest, datetime_: str | None, properties: str | None) -> Entry:
        try:
            tile_bounds(req)
        except TileError as exc:
            raise ApiError(404, "NotFound", str(exc)) from None
        self.ensure_listening()
        at = as_of_param(datetime_)
        generation = self.cache.generation(key.layers) if self.cache else 0
        names = None if properties is None else [p for p in properties.split(",") if p]
        caller = security.current()
        rendered, layers = None, None
        known = [self.definitions.get(name) for name in key.layers]
        if all(known) and all(caller.sees(k[0].access_level) for k in known):
            layers = [k[0] for k in known]
            if self._usable(layers, req, names):
                for layer in layers:
                    if layer.access_level == "restricted":
                        security.note_restricted(f"layer:{layer.name}")
                rendered = self.render(layers, req, at, names)
                if any(rendered.xmins.get(name) != k[1] for name, k in zip(key.layers, known)):
                    rendered = None  # a definition changed meanwhile: from the registry, below
        if rendered is None:
            with self.pool.connection() as conn:
                # the rows' xmin before the definitions: a change in between makes the first tile
                # rendered from them mismatch, never a stale definition pass for a current one
                xmins = dict(conn.execute("SELECT name, xmin::text FROM layers WHERE name = ANY(%s)",
                                          (list(key.layers),)).fetchall())
                layers = [self.cols.get(conn, name) for name in key.layers]
            if names is not None:
                for layer in layers:
                    unknown = [n for n in names if n not in layer.schema]
                    if unknown:
                        raise invalid_parameter("properties", f"{unknown} not in {layer.name!r} ({', '.join(layer.schema)})")
            if len(layers) == 1:
                lo, hi = zoom_range(layers[0], req.tms)
                if not lo <= req.z <= hi:
                    raise ApiError(404, "NotFound", f"{layers[0].name!r} has tiles at zooms {lo}–{hi} only "
                                   f"(tile matrix {req.z} requested)")
            try:
                rendered = self.render(layers, req, at, names)
            except TileError as exc:
                raise ApiError(404, "NotFound", str(exc)) from None
            for layer in layers:
                if layer.name in rendered.xmins and rendered.xmins[layer.name] == xmins.get(layer.name):
                    self.definitions[layer.name] = (layer, xmins[layer.name])
        body = rendered.body
        order = ("public", "internal", "restricted")
        level = max((layer.access_level for layer in layers), key=order.index)
        if self.cache is None:
            return Entry(body, etag_of(body), level)
        return self.cache.put(key, body, generation=generation, level=level)

    def respond(self, request: Request, entry: Entry) -> Response:
        headers = {"ETag": entry.etag, "Cache-Control": self.cache_control[entry.level]}
        if entry.level != "public":
            headers["Vary"] = "Authorization, X-API-Key"
        if request.headers.get("if-none-match") == entry.etag:
            return Response(status_code=304, headers=headers)
        if not entry.body:
            return Response(status_code=204, headers=headers)
        return Response(entry.body, media_type=MVT, headers=headers)

    async def tile(self, request: Request, layer_ids: list[str], req: TileRequest, datetime_: str | None,
                   properties: str | None) -> Response:
        """Cached tiles are answered on the event loop without touching the database; a miss is
        rendered in the thread pool."""
        key = TileKey(tuple(layer_ids), req.tms, req.z, req.x, req.y, _variant(datetime_, properties))
        entry = self.cache.get(key) if self.cache is not None and self.invalidator.connected.is_set() else None
        if entry is not None and entry.level != "public":
            if not security.current().sees(entry.level):
                entry = None  # rendering path answers 404: the layer does not exist for this caller
            elif entry.level == "restricted":
                security.note_restricted("tiles:" + ",".join(layer_ids))
        if entry is None:
            entry = await run_in_threadpool(self.render_entry, key, req, datetime_, properties)
        return self.respond(request, entry)

    def cache_stats(self):
        if not self.cache:
            return {"enabled": False}
        return {**self.cache.stats(), "listening": self.invalidator.connected.is_set()}

    # The two tile endpoints read their parameters from the request themselves (documented through
    # openapi_extra): FastAPI's validation of six typed parameters was ~20% of a cache hit's CPU
    # (py-spy under bench/tiles.py; see docs/benchmarks.md). Bad integers get the same 400
    # InvalidParameterValue as before.

    async def ogc_tile(self, request: Request):
        path, query = request.path_params, request.query_params
        req = TileRequest(path["tms_id"], _int_param(path, "z"), _int_param(path, "col"), _int_param(path, "row"))
        return await self.tile(request, [path["collection_id"]], req, query.get("datetime"), query.get("properties"))

    async def xyz_tile(self, request: Request):
        path, query = request.path_params, request.query_params
        req = TileRequest("WebMercatorQuad", _int_param(path, "z"), _int_param(path, "x"), _int_param(path, "y"))
        return await self.tile(request, _layer_names(path["layers"]), req, query.get("datetime"),
                               query.get("properties"))

    def router(self) -> APIRouter:
        """The endpoints above, each under its path (in this order: it matters for path matching); the
        router carries the tile cache and its invalidator (app.state exposes them: shutdown, tests)."""
        api = APIRouter(tags=["OGC API — Tiles"])
        api.add_api_route("/tileMatrixSets", self.tile_matrix_sets, methods=["GET"], summary="Tile matrix sets")
        api.add_api_route("/tileMatrixSets/{tms_id}", self.tile_matrix_set, methods=["GET"],
                          summary="A tile matrix set (OGC 2D-TMS 2.0)")
        api.add_api_route("/collections/{collection_id}/tiles", self.tilesets, methods=["GET"],
                          summary="Vector tilesets of a collection")
        api.add_api_route("/collections/{collection_id}/tiles/{tms_id}", self.tileset_doc, methods=["GET"],
                          summary="A vector tileset")
        api.add_api_route("/tiles/{layers}/tilejson.json", self.tilejson, methods=["GET"],
                          summary="TileJSON 3 for XYZ vector tiles of one or more layers")
        api.add_api_route("/tiles/cache", self.cache_stats, methods=["GET"], summary="Tile cache statistics",
                          include_in_schema=False)
        api.add_api_route("/collections/{collection_id}/tiles/{tms_id}/{z}/{row}/{col}", self.ogc_tile,
                          methods=["GET"], summary="A vector tile",
                          openapi_extra={"parameters": _tile_parameters(
                              ("collection_id", "string", "the collection"),
                              ("tms_id", "string", f"the tile matrix set: {', '.join(GRIDS)}"),
                              ("z", "integer", "tile matrix (zoom)"), ("row", "integer", "tile row"),
                              ("col", "integer", "tile column"))})
        api.add_api_route("/tiles/{layers}/{z}/{x}/{y}.mvt", self.xyz_tile, methods=["GET"],
                          summary="XYZ vector tile (WebMercatorQuad); layers comma-separated",
                          openapi_extra={"parameters": _tile_parameters(
                              ("layers", "string", "layer names, comma-separated"), ("z", "integer", "zoom"),
                              ("x", "integer", "column"), ("y", "integer", "row"))})
        api.tile_cache, api.tile_invalidator = self.cache, self.invalidator
        return api


def router(settings: Settings) -> APIRouter:
    return TileAPI(settings).router()


__all__ = ["CONFORMANCE", "router"]
