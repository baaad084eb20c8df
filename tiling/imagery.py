"""Imagery tiles through TiTiler, over the imagery catalogue (``spatial_api.store.imagery``).

A request names a catalogue collection or item, never a path or URL: the only files a reader
opens are the ``cog_path`` of catalogue rows, looked up by id. A ``url=`` (or ``path=`` …)
parameter is refused with 400; an unknown or non-public collection / item is 404; ``tilesize``,
``max_size``, ``width`` / ``height``, ``buffer`` and ``padding`` beyond SIZE_LIMITS are 400. A
collection tile costs one prepared query (the collection and the items covering the tile).

- ``/imagery/collections``, ``/imagery/collections/{cid}``, ``/imagery/collections/{cid}/items``
  (JSON: titles, kind, bbox in lon/lat, zooms, datetimes, links);
- ``/imagery/collections/{cid}/tiles/{tms}/{z}/{x}/{y}[.{format}]``: a mosaic over the collection's
  items — with ``?datetime=`` those acquired at or before it (a date means through that day),
  newest first, gaps filled from older items (rio-tiler's ``mosaic_reader``, first method); no
  datetime = the newest. TiTiler's ``titiler.mosaic`` factory, with :class:`CatalogueBackend`;
- ``/imagery/collections/{cid}/items/{item_id}/tiles/{tms}/{z}/{x}/{y}[.{format}]``: one item
  (``titiler.core``'s ``TilerFactory``, its ``Reader`` — the same code as ``titiler.application``'s
  ``/cog`` endpoints), plus ``/info``, ``/point``, ``/preview`` and a TileJSON;
- ``/imagery/collections/{cid}/tilejson.json?tms=&datetime=&algorithm=&format=`` (TileJSON 3);
- ``/imagery/collections/{cid}/point/{lon},{lat}``: values of the items at a point.

``tms`` is ``WebMercatorQuad`` or ``CGCS2000Quad`` (tiling.vector's grids). TiTiler's rendering
parameters work as in titiler (``bidx``, ``expression``, ``rescale``, ``colormap_name``,
``color_formula``, ``algorithm`` …). DEM collections: ``?algorithm=hillshade`` (the tile is read
with the algorithm's 3-pixel buffer unless ``buffer`` is given, so it stays 256 px) and
``?algorithm=terrainrgb`` (Mapbox Terrain-RGB PNG, for a MapLibre ``raster-dem`` source with
``encoding: "mapbox"``). An image tile of a DEM that asks for no rendering (no ``algorithm``,
``rescale``, ``colormap_name`` …) is its hillshade — 32-bit heights in an 8-bit PNG were invisible —
and the documents (collection links, TileJSON, map tilesets, WMTS) advertise ``algorithm=hillshade``;
``.tif`` / ``.npy`` keep the heights.

Outside the data (no item covers the tile, none yet at ``datetime``, a tile beside an item) a tile
route answers 200 with a fully transparent tile of the asked format and size, never 204 or an
error; only JPEG, which cannot be transparent, answers 404 (see ``_empty_tile_response``).

Tiles from the grid copies (issue 15): every item has a web-optimised copy per grid
(``spatial_api.ingest.imagery.write_grid_copy``, ``imagery_item_grids``). A tile request on a grid
at a zoom the copy holds (a ``tilesize`` above the grid's reads a finer zoom, which it must hold
too) is read from the copy — the same TiTiler ``Reader``, but the copy is in the grid's CRS and its
levels are aligned with the grid's tiles, so rio-tiler reads a window of one level (one block where
the level is tile-aligned) with no ``WarpedVRT`` (see :func:`copy_read_zoom`). Other grids, other
zooms, ``reproject`` other than nearest and ``nodata`` overrides read the master COG, warped, as
before; a mosaic chooses per item. Photographic collections default to JPEG
(``store.imagery.default_format_for``).

COGs in object storage (issue 18): a catalogue path ``s3://bucket/key`` (masters and copies
ingested with ``--store s3``) is opened by the same ``Reader`` through GDAL's ``/vsis3/`` — HTTP
range requests for the header and the blocks a tile needs — with the store's settings given to
every TiTiler endpoint as its GDAL environment (``environment_dependency``:
``spatial_api.objectstore.gdal_environment``; nothing when no store is configured).

Tile responses carry an ``ETag`` (a digest of the body) and answer ``If-None-Match`` with 304;
``Cache-Control`` comes from the security middleware (public collections:
``public, max-age=0, must-revalidate``; others private to the caller). Rendered PNG / JPEG / WebP
tiles are kept in an in-memory LRU (:class:`ImageryTileCache`, ``GEOTWIN_TILE_CACHE_MB``, apart
from the vector tile cache) under the collection's catalogue ``version``; a hit is served after
one prepared primary-key lookup (access level and version), so a tile rendered before a change of
the catalogue (a new or replaced item, an access level — any writer, in any process, SQL included:
the version is kept by triggers) is never served after it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import attr
import numpy as np
from attrs import define
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from morecantile.defaults import TileMatrixSets
from psycopg_pool import ConnectionPool
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from rio_tiler import errors as rt_errors
from rio_tiler.io import Reader
from rio_tiler.mosaic.backend import BaseBackend
from rio_tiler.utils import CRS_to_uri
from starlette import status

from titiler.core.algorithm import algorithms as available_algorithms
from titiler.core.dependencies import TileParams
from titiler.core.factory import TilerFactory
from titiler.core.utils import render_image
from titiler.mosaic.factory import MosaicTilerFactory

from spatial_api import db, objectstore, security
from spatial_api.api import time as timepolicy
from spatial_api.config import Settings, get_settings
from spatial_api.api.errors import ApiError, invalid_parameter
from spatial_api.api.responses import link
from spatial_api.security.redact import SECRET_PARAMETERS
from spatial_api.store import imagery as cat
from tiling import ogc_maps
from tiling.cache import etag_of
from tiling.ogc_maps import collection_links
from tiling.vector import GRIDS, TMS

#: The grids imagery is served on (the same ids as the vector tiles).
SUPPORTED_TMS = TileMatrixSets({tms_id: TMS.get(tms_id) for tms_id in GRIDS})
#: Formats offered to clients (TiTiler renders these and a few more).
FORMATS = ("png", "jpg", "webp", "tif", "npy")
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
               "tif": "image/tiff; application=geotiff", "npy": "application/x-binary"}
#: Query parameters that name a data source in TiTiler's stock endpoints: never accepted here.
RAW_SOURCE_PARAMS = ("url", "path", "src", "src_path", "file", "filename", "dataset", "mosaic", "uri", "href")
def VISIBLE_LEVELS() -> tuple[str, ...]:
    """The access levels of collections the caller may see (spatial_api.security): the rest do not
    exist for them (404, absent from listings and WMTS)."""
    return tuple(sorted(security.SEES[security.current().role]))
WGS84 = CRS.from_epsg(4326)
CGCS2000 = CRS.from_epsg(4490)
#: Algorithms whose output needs a PNG (exact values) rather than the collection's default format.
LOSSLESS_ALGORITHMS = ("terrainrgb", "terrarium")
#: Query parameters that say how pixels become colours: a request with any of them renders as asked.
RENDERING_PARAMS = ("algorithm", "expression", "rescale", "colormap", "colormap_name", "color_formula")
#: Formats that carry the values themselves (heights of a DEM), never a default rendering.
DATA_FORMATS = ("tif", "tiff", "npy")
#: How an image tile of a DEM is drawn when the request names no rendering: heights are 32-bit
#: floats, which an 8-bit PNG cannot show (rio-tiler's cast gave grey 127 under alpha 0 — an
#: invisible tile); the hillshade is what the WMTS capabilities and the map styles offer too.
DEM_RENDERING = "hillshade"
#: Formats that cannot be transparent: a tile outside the data is 404 in these (as TiTiler answers).
OPAQUE_FORMATS = ("jpg", "jpeg")


#: Upper bounds of the size parameters (pixels): without them one request could ask for an image of
#: tens of gigabytes (TiTiler and rio-tiler set none for GeoTIFFs).
SIZE_LIMITS = {"tilesize": 1024, "max_size": 2048, "width": 2048, "height": 2048, "buffer": 64, "padding": 64}


async def refuse_raw_sources(request: Request) -> None:
    """Router dependency of every imagery route: a data source is named by the catalogue only, and
    an image is at most SIZE_LIMITS pixels a side."""
    for key, value in [*request.query_params.multi_items(), *request.path_params.items()]:
        limit = SIZE_LIMITS.get(key.lower())
        if limit is not None:
            try:
                too_big = float(str(value)) > limit
            except ValueError:
                continue  # not a number: the parameter's own validation answers
            if too_big:
                raise invalid_parameter(key, f"{value} pixels is more than this server renders ({limit}); ask for at most {limit}")
    named = [k for k in request.query_params if k.lower() in RAW_SOURCE_PARAMS]
    if named:
        raise ApiError(
            400, "InvalidParameterValue",
            f"{named[0]}: imagery is served from the imagery catalogue only; a request cannot name a file or URL. "
            "Name a collection instead: /imagery/collections/{collection}/tiles/{tms}/{z}/{x}/{y}.png "
            "(the collections are listed at /imagery/collections; `geotwin ingest imagery` adds files).")


def parse_datetime(value: str | None, tz: str) -> datetime | None:
    """``?datetime=``: the house's time policy (spatial_api.api.time) for a snapshot — a date means
    through the end of that day in the district's time zone; a date-time is that instant (naive =
    district time); ``../b`` and ``a/b`` take the end ``b``."""
    try:
        return timepolicy.as_of(value, "datetime", tz=tz)
    except timepolicy.TimeError as exc:
        raise invalid_parameter(exc.parameter, exc.message) from None


# -- the catalogue-backed mosaic ---------------------------------------------------------------


class CatalogueAsset(str):
    """A COG path taken from the catalogue (what the reader opens), knowing its item id."""

    item_id: str

    def __new__(cls, path: str, item_id: str) -> "CatalogueAsset":
        obj = super().__new__(cls, path)
        obj.item_id = item_id
        return obj


@dataclass(frozen=True)
class CollectionRef:
    """What a collection request resolves to: the collection, the time, and how to reach the catalogue."""

    collection: cat.Collection
    at: datetime | None
    pool: ConnectionPool = field(repr=False, compare=False)
    #: the tile request's (tms id, z, x, y) and the items covering it, found with the collection
    prefetched: tuple[tuple[str, int, int, int], list[tuple[str, Path]]] | None = field(default=None, compare=False)

    def assets(self, bbox: tuple[float, float, float, float]) -> list[CatalogueAsset]:
        with self.pool.connection() as conn:
            rows = cat.items_covering(conn, self.collection.id, bbox, self.at)
        return [CatalogueAsset(str(path), item_id) for item_id, path in rows]

    def tile_assets(self, tms_id: str, z: int, x: int, y: int,
                    bbox: tuple[float, float, float, float]) -> list[CatalogueAsset]:
        if self.prefetched is not None and self.prefetched[0] == (tms_id, z, x, y):
            return [CatalogueAsset(str(path), item_id) for item_id, path in self.prefetched[1]]
        return self.assets(bbox)


@attr.s
class CatalogueBackend(BaseBackend):
    """rio-tiler mosaic backend whose assets are the catalogue items covering a tile, newest first."""

    def __attrs_post_init__(self) -> None:
        col = self.input.collection
        self.crs = CGCS2000
        self.bounds = tuple(col.bbox) if col.bbox else (-180.0, -90.0, 180.0, 90.0)
        zooms = col.zooms.get(self.tms.id) or [self.tms.minzoom, self.tms.maxzoom]
        self.minzoom, self.maxzoom = int(zooms[0]), int(zooms[1])

    def asset_name(self, asset: Any) -> str:
        return getattr(asset, "item_id", "?")

    def assets_for_tile(self, x: int, y: int, z: int, **kwargs: Any) -> list[CatalogueAsset]:
        b = self.tms.bounds(x, y, z)  # in the grid's geographic CRS (lon/lat)
        return self.input.tile_assets(self.tms.id, z, x, y, (b.left, b.bottom, b.right, b.top))

    def assets_for_point(self, lng: float, lat: float, coord_crs: CRS | None = None, **kwargs: Any):
        if coord_crs is not None and coord_crs not in (WGS84, CGCS2000):
            xs, ys = transform_points(coord_crs, CGCS2000, [lng], [lat])
            lng, lat = xs[0], ys[0]
        eps = 1e-9
        return self.input.assets((lng - eps, lat - eps, lng + eps, lat + eps))

    def assets_for_bbox(self, xmin: float, ymin: float, xmax: float, ymax: float,
                        coord_crs: CRS | None = None, **kwargs: Any):
        if coord_crs is not None and coord_crs not in (WGS84, CGCS2000):
            xs, ys = transform_points(coord_crs, CGCS2000, [xmin, xmax, xmin, xmax], [ymin, ymin, ymax, ymax])
            xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
        return self.input.assets((xmin, ymin, xmax, ymax))

    def tile(self, x: int, y: int, z: int, search_options: dict | None = None, **kwargs: Any):
        # Read the items one after the other, newest first, and stop as soon as the tile is full:
        # with threads the mosaic reader would read every covering item whether needed or not.
        kwargs["threads"] = 1
        return super().tile(x, y, z, search_options=search_options, **kwargs)


def render(image, **kwargs) -> tuple[bytes, str]:
    """TiTiler's renderer (the same bytes), with the registered media type for JPEG: TiTiler says
    ``image/jpg`` for ``.jpg``, which is not one (RFC 2046; WMTS and browsers expect image/jpeg)."""
    content, media_type = render_image(image, **kwargs)
    return content, ("image/jpeg" if media_type == "image/jpg" else media_type)


# -- dependencies ------------------------------------------------------------------------------


def default_algorithm(request: Request) -> str | None:
    """The rendering of a tile that names none: DEM_RENDERING for an image tile of a DEM collection
    (the collection's kind is put on ``request.state`` by the path dependencies), else None."""
    if getattr(request.state, "imagery_kind", None) != "dem" or "z" not in request.path_params:
        return None
    if any(k in RENDERING_PARAMS for k in request.query_params):
        return None
    if str(request.path_params.get("format") or "").lower() in DATA_FORMATS:
        return None
    return DEM_RENDERING


_post_process = available_algorithms.dependency


def _process_params(
    request: Request,
    algorithm: Annotated[Literal[tuple(available_algorithms.data)] | None, Query(  # type: ignore[valid-type]
        description="Algorithm name (DEM image tiles: hillshade unless a rendering is asked)")] = None,
    algorithm_params: Annotated[str | None, Query(description="Algorithm parameters (JSON)")] = None,
):
    """TiTiler's post-processing dependency, with the DEM's default rendering (default_algorithm)."""
    return _post_process(algorithm=algorithm or default_algorithm(request), algorithm_params=algorithm_params)


async def _tile_params(
    request: Request,
    buffer: Annotated[float | None, Query(gt=0, description="Buffer on each side of the tile, in pixels "
                                           "(multiple of 0.5). Default: the algorithm's own (hillshade: 3).")] = None,
    padding: Annotated[int | None, Query(gt=0, description="Padding on each tile edge (resampling).")] = None,
    algorithm: Annotated[str | None, Query(include_in_schema=False)] = None,
    algorithm_params: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> TileParams:
    """TiTiler's tile options, with the buffer an algorithm such as hillshade needs by default."""
    algorithm = algorithm or default_algorithm(request)
    if buffer is None and algorithm in available_algorithms.data:
        import json

        try:
            params = json.loads(algorithm_params) if algorithm_params else {}
        except ValueError:
            params = {}
        if not isinstance(params, dict):
            raise invalid_parameter("algorithm_params", "give a JSON object, e.g. {\"azimuth\": 315}")
        declared = available_algorithms.data[algorithm].model_fields.get("buffer")
        algo_buffer = params.get("buffer", declared.default if declared is not None else None)
        if algo_buffer:
            buffer = float(algo_buffer)
    return TileParams(buffer=buffer, padding=padding)


#: The grids, kept uncopied for bounds arithmetic (``TileMatrixSets.get`` deep-copies every call).
_GRID_OBJECTS = {tms_id: TMS.get(tms_id) for tms_id in GRIDS}


def _tile_of(path_params: dict) -> tuple[tuple[str, int, int, int], tuple[float, float, float, float]] | None:
    """((tms id, z, x, y), lon/lat bounds) of a tile route's path, or None (not a tile route, or
    parameters FastAPI will refuse anyway)."""
    try:
        tms_id = path_params["tileMatrixSetId"]
        z, x, y = int(path_params["z"]), int(path_params["x"]), int(path_params["y"])
        grid = _GRID_OBJECTS[tms_id]
        b = grid.bounds(x, y, z)
    except Exception:  # KeyError, ValueError, a tile outside the grid …
        return None
    return (tms_id, z, x, y), (b.left, b.bottom, b.right, b.top)


def _note_collection(request: Request, col: cat.Collection) -> None:
    """Put what later dependencies and response headers need on ``request.state``: the collection's
    kind (default_algorithm), access level (``imagery_access``: a response for a non-public
    collection must not be stored by shared caches) and catalogue version (``imagery_version``:
    what the tile cache files a rendered tile under)."""
    request.state.imagery_kind = col.kind
    request.state.imagery_access = col.access_level
    request.state.imagery_version = col.version
    _note_level(col.access_level)


def _note_level(level: str) -> None:
    security.note_level(level)  # not public: private to the caller, Vary on credentials
    if level == "public":
        security.shareable()  # a public collection's tile may be kept by a shared cache


def copy_read_zoom(query, tms_id: str, z: int) -> int | None:
    """The zoom whose pixels a tile request reads (``z``; finer for a ``tilesize`` above the grid's
    own: 512 px at zoom z are the pixels of zoom z + 1), or None when the request must be read from
    the master COG through TiTiler's warped read: ``reproject`` other than nearest (the kernel is
    applied while warping; the copy was warped with nearest) or a ``nodata`` override (the copy
    masks outside the image with its own mask or nodata)."""
    if query.get("nodata") not in (None, ""):
        return None
    if (query.get("reproject") or "nearest").lower() != "nearest":
        return None
    own = _GRID_OBJECTS[tms_id].matrix(z).tileWidth
    try:
        size = int(query.get("tilesize") or own)
    except ValueError:
        return None  # TiTiler's validation answers
    return z + (math.ceil(math.log2(size / own)) if size > own else 0)


def _source_path(source: cat.TileSource, z: int, level: int | None):
    """The file a tile of ``source`` at zoom ``z`` is read from: the item's copy on the tile's grid
    when it holds zoom ``z`` and the pixels of zoom ``level`` (see copy_read_zoom), else its COG."""
    if level is not None and source.copy is not None and source.copy.serves(z, level):
        return source.copy.cog_path
    return source.cog_path


class ImageryRoutes:
    """The catalogue lookups behind every imagery route, bound to one database pool."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = db.pool(settings)

    def collection(self, cid: str, *, summary: bool = True) -> cat.Collection:
        """A visible collection (with the summary over its items unless ``summary`` is false) or 404."""
        with self.pool.connection() as conn:
            col = (cat.get_collection if summary else cat.collection_entry)(conn, cid, access=VISIBLE_LEVELS())
        if col is None:
            raise ApiError(404, "NotFound", f"imagery collection {cid!r} does not exist; "
                                            "the collections are listed at /imagery/collections")
        return col

    def collection_dependency(self):
        def dependency(
            request: Request,
            cid: Annotated[str, Path(description="Imagery collection id (see /imagery/collections)")],
            datetime_: Annotated[str | None, Query(alias="datetime", description=(
                "Mosaic of the items acquired at or before this date (YYYY-MM-DD: through that day) or "
                "RFC 3339 date-time, newest first. Default: the newest items."))] = None,
        ) -> CollectionRef:
            at = parse_datetime(datetime_, self.settings.timezone)
            tile = _tile_of(request.path_params)
            if tile is None:
                ref = CollectionRef(self.collection(cid, summary=False), at, self.pool)
                _note_collection(request, ref.collection)
                return ref
            # a tile: the collection and the items covering the tile (with their copies on the
            # tile's grid) in one query; each item read from its copy where the copy serves the tile
            (tms_id, z, _, _), bbox = tile
            with self.pool.connection() as conn:
                col, sources = cat.tile_sources(conn, cid, tms_id, bbox, at, access=VISIBLE_LEVELS())
            if col is None:
                raise ApiError(404, "NotFound", f"imagery collection {cid!r} does not exist; "
                                                "the collections are listed at /imagery/collections")
            _note_collection(request, col)
            level = copy_read_zoom(request.query_params, tms_id, z)
            rows = [(s.item_id, _source_path(s, z, level)) for s in sources]
            return CollectionRef(col, at, self.pool, prefetched=(tile[0], rows))

        return dependency

    def item_dependency(self):
        def dependency(
            request: Request,
            cid: Annotated[str, Path(description="Imagery collection id")],
            item_id: Annotated[str, Path(description="Item id (see /imagery/collections/{cid}/items)")],
        ) -> str:
            tile = _tile_of(request.path_params)
            tms_id = tile[0][0] if tile else None
            with self.pool.connection() as conn:  # the collection, the item and its copy: one query
                col, source = cat.item_source(conn, cid, item_id, tms_id, access=VISIBLE_LEVELS())
            if col is None:
                raise ApiError(404, "NotFound", f"imagery collection {cid!r} does not exist; "
                                                "the collections are listed at /imagery/collections")
            _note_collection(request, col)
            if source is None:
                raise ApiError(404, "NotFound", f"collection {cid!r} has no item {item_id!r}; its items are "
                                                f"listed at /imagery/collections/{cid}/items")
            if tile is None:  # info, point, preview, TileJSON: the master COG
                return str(source.cog_path)
            z = tile[0][1]
            return str(_source_path(source, z, copy_read_zoom(request.query_params, tms_id, z)))

        return dependency


@define(kw_only=True)
class ItemTilerFactory(TilerFactory):
    """TiTiler's COG factory for one catalogue item: tiles, TileJSON, info, point, preview."""

    def register_routes(self):
        self.info()
        self.tile()
        self.tilejson()
        self.point()
        self.preview()


@define(kw_only=True)
class CollectionTilerFactory(MosaicTilerFactory):
    """TiTiler's mosaic factory over a catalogue collection: tiles and point values."""

    def register_routes(self):
        self.tile()
        self.point()


# -- documents ---------------------------------------------------------------------------------


def _iso(value: datetime, tz: str | None = None) -> str:
    """An instant in the district's time zone (dates are meant there: 2023-11-15T00:00:00+08:00)."""
    return value.astimezone(ZoneInfo(tz)).isoformat() if tz else value.isoformat()


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _default_format(col: cat.Collection) -> str:
    return col.default_format or "png"


def advertised_rendering(col: cat.Collection) -> str:
    """The query string (without ``?``) the documents put on a collection's image tile URLs: a DEM's
    visible rendering (the plain URL draws it too, see default_algorithm), nothing for the rest."""
    return f"algorithm={DEM_RENDERING}" if col.kind == "dem" else ""


def collection_doc(col: cat.Collection, base: str = "", tz: str | None = None) -> dict:
    url = f"{base}/imagery/collections/{col.id}"
    fmt = _default_format(col)
    zooms = col.zooms.get("WebMercatorQuad") or [0, 24]
    links = [
        link(url, "self", "application/json", "this collection"),
        link(f"{url}/items", "items", "application/json", "the dated items"),
        link(f"{url}/tilejson.json", "describedby", "application/json", "TileJSON 3 (WebMercatorQuad)"),
    ]
    rendering = advertised_rendering(col)
    for tms_id in GRIDS:
        links.append({**link(f"{url}/tiles/{tms_id}/{{z}}/{{x}}/{{y}}.{fmt}{rendering and '?' + rendering}", "item",
                              MEDIA_TYPES[fmt], f"tiles on {tms_id} (z/x/y; ?datetime=YYYY-MM-DD for a past state)"),
                      "templated": True})
    return {
        "id": col.id, "title": col.title, "title_zh": col.title_zh, "title_en": col.title_en, "kind": col.kind,
        "description": col.description, "bbox": col.bbox, "minzoom": zooms[0], "maxzoom": zooms[1],
        "zooms": col.zooms, "items": col.items, "datetimes": [_iso(d, tz) for d in col.datetimes],
        "bands": col.bands, "dtype": col.dtype, "formats": list(FORMATS), "default_format": fmt,
        "tileMatrixSets": list(GRIDS), "links": links + collection_links(base, col.id),
        # OGC API clients (GDAL's OGCAPI driver) read the extent and follow the tilesets-map link.
        "extent": {"spatial": {"bbox": [col.bbox] if col.bbox else [],
                               "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
    }


def item_doc(col: cat.Collection, item: cat.Item, base: str = "", tz: str | None = None) -> dict:
    url = f"{base}/imagery/collections/{col.id}/items/{item.item_id}"
    fmt = _default_format(col)
    links = [link(f"{url}/info", "describedby", "application/json", "TiTiler info")]
    for tms_id in GRIDS:
        links.append({**link(f"{url}/tiles/{tms_id}/{{z}}/{{x}}/{{y}}.{fmt}", "item", MEDIA_TYPES[fmt],
                              f"tiles of this item on {tms_id}"), "templated": True})
        links.append(link(f"{url}/{tms_id}/tilejson.json", "describedby", "application/json", f"TileJSON ({tms_id})"))
    return {
        "id": item.item_id, "collection": col.id, "datetime": _iso(item.datetime, tz), "bbox": item.bbox,
        "resolution_m": item.resolution_m, "width": item.width, "height": item.height, "bands": item.bands,
        "dtype": item.dtype, "nodata": item.nodata, "crs": item.crs, "zooms": item.zooms,
        "file_size": item.file_size, "sha256": item.sha256, "converted": item.converted,
        "created_at": _iso(item.created_at, tz) if item.created_at else None, "author": item.author, "links": links,
    }


def collections_for_capabilities(conn) -> list[dict]:
    """Per visible collection, what a WMTS capabilities writer needs: id, title(s), kind, bbox
    (lon/lat), minzoom / maxzoom (WebMercatorQuad) and ``zooms`` per grid, formats, the default
    format, datetimes (ISO), the grids, and ``tile_path`` — a template relative to the server root
    with ``{tms}``, ``{z}``, ``{x}``, ``{y}`` and ``{format}``."""
    tz = get_settings().timezone
    out = []
    for col in cat.list_collections(conn, access=VISIBLE_LEVELS()):
        if not col.items:
            continue
        doc = collection_doc(col, tz=tz)
        out.append({k: doc[k] for k in ("id", "title", "title_zh", "title_en", "kind", "bbox", "minzoom", "maxzoom",
                                        "zooms", "formats", "default_format", "datetimes", "bands", "dtype")}
                   | {"tile_matrix_sets": list(GRIDS),
                      "tile_path": f"/imagery/collections/{col.id}/tiles/{{tms}}/{{z}}/{{x}}/{{y}}.{{format}}"})
    return out


# -- the tile cache, ETag / 304 ---------------------------------------------------------------

#: Formats whose rendered tiles are kept in memory ("": no extension, TiTiler's PNG-or-JPEG);
#: the data formats (tif, npy) get an ETag but are not kept.
CACHED_FORMATS = ("", "png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class CachedTile:
    body: bytes
    etag: str
    media_type: str
    headers: tuple[tuple[str, str], ...]  # Content-Bbox, Content-Crs as rendered
    level: str  # the collection's access level when rendered


class ImageryTileCache:
    """Rendered imagery tiles in an LRU bounded in bytes, keyed by (collection, catalogue version,
    path, query). Tiles of an older version than the newest seen for their collection are dropped
    as soon as a newer one is seen, and a tile rendered from an older version is not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple, CachedTile] = OrderedDict()
        self._bytes = 0
        self._versions: dict[str, int] = {}  # the newest catalogue version seen per collection
        self._lock = threading.Lock()
        self.hits = self.misses = self.dropped = 0

    def get(self, key: tuple) -> CachedTile | None:
        with self._lock:
            self._see(key[0], key[1])
            tile = self._tiles.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._tiles.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple, tile: CachedTile) -> None:
        with self._lock:
            if not self._see(key[0], key[1]) or len(tile.body) > self.max_bytes:
                return  # rendered from a catalogue that has changed since
            old = self._tiles.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._tiles[key] = tile
            self._bytes += len(tile.body)
            while self._bytes > self.max_bytes:
                _, evicted = self._tiles.popitem(last=False)
                self._bytes -= len(evicted.body)

    def _see(self, cid: str, version: int) -> bool:
        """Note that ``cid`` is at ``version``; False if a newer version was seen already."""
        newest = self._versions.get(cid)
        if newest is not None and version < newest:
            return False
        if newest is not None and version > newest:
            doomed = [k for k in self._tiles if k[0] == cid and k[1] < version]
            for k in doomed:
                self._bytes -= len(self._tiles.pop(k).body)
            self.dropped += len(doomed)
        self._versions[cid] = version
        return True

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._tiles), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "dropped": self.dropped}


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


class ImageryTiles:
    """What every imagery tile route does around TiTiler's endpoint (:meth:`route_class`): an
    ``ETag`` on the tile and 304 for a matching ``If-None-Match``; rendered image tiles kept in an
    :class:`ImageryTileCache` (``settings.tile_cache_mb``; 0: none) and served from it after one
    prepared lookup of the collection's access level and catalogue version."""

    def __init__(self, settings: Settings, pool: ConnectionPool):
        self.pool = pool
        self.cache = ImageryTileCache(settings.tile_cache_mb << 20) if settings.tile_cache_mb > 0 else None

    def _state(self, cid: str) -> tuple[str, int] | None:
        with self.pool.connection() as conn:
            return cat.catalogue_state(conn, cid)

    @staticmethod
    def _key(request: Request, cid: str, version: int) -> tuple:
        query = tuple(sorted((k, v) for k, v in request.query_params.multi_items()
                             if k.lower() not in SECRET_PARAMETERS))
        return cid, version, request.url.path, query

    @staticmethod
    def _answer(request: Request, tile: CachedTile) -> Response:
        if _etag_matches(request, tile.etag):
            return Response(status_code=304, headers={"ETag": tile.etag})
        return Response(tile.body, media_type=tile.media_type, headers={**dict(tile.headers), "ETag": tile.etag})

    async def serve(self, request: Request, endpoint) -> Response:
        """Answer a tile request: from the cache when the collection is visible to the caller and
        at the version the tile was rendered at, else through ``endpoint`` (TiTiler's)."""
        cid = request.path_params.get("cid")
        fmt = str(request.path_params.get("format") or "").lower()
        cached = self.cache is not None and isinstance(cid, str) and fmt in CACHED_FORMATS
        if cached:
            await refuse_raw_sources(request)  # as the route's own dependency would, before any lookup
            state = await run_in_threadpool(self._state, cid)
            if state is not None and security.current().sees(state[0]):
                tile = self.cache.get(self._key(request, cid, state[1]))
                if tile is not None:
                    _note_level(tile.level)
                    return self._answer(request, tile)
        response = await endpoint(request)
        if response.status_code != 200 or not isinstance(getattr(response, "body", None), bytes):
            return response
        tile = CachedTile(response.body, etag_of(response.body), response.media_type or
                          response.headers.get("content-type", "application/octet-stream"),
                          tuple((k, v) for k, v in response.headers.items() if k in ("content-bbox", "content-crs")),
                          getattr(request.state, "imagery_access", "restricted"))
        version = getattr(request.state, "imagery_version", None)
        if cached and version is not None:
            self.cache.put(self._key(request, cid, version), tile)
        if _etag_matches(request, tile.etag):
            return Response(status_code=304, headers={"ETag": tile.etag})
        response.headers["ETag"] = tile.etag
        return response

    def route_class(self) -> type[APIRoute]:
        """An APIRoute class whose tile routes (paths with ``{z}``) go through :meth:`serve`."""
        tiles = self

        class ImageryTileRoute(APIRoute):
            def get_route_handler(self):
                endpoint = super().get_route_handler()
                if "{z}" not in self.path_format:
                    return endpoint

                async def handler(request: Request) -> Response:
                    return await tiles.serve(request, endpoint)

                return handler

        return ImageryTileRoute

    def stats(self) -> dict:
        return {"enabled": False} if self.cache is None else {"enabled": True, **self.cache.stats()}


# -- the router --------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """Every imagery route (mounted at the root by ``install``)."""
    lookups = ImageryRoutes(settings)
    tiles = ImageryTiles(settings, lookups.pool)
    guard = [Depends(refuse_raw_sources)]
    api = APIRouter(tags=["Imagery"], dependencies=guard)

    @api.get("/imagery/collections", summary="Imagery collections")
    def collections(request: Request):
        with lookups.pool.connection() as conn:
            cols = cat.list_collections(conn, access=VISIBLE_LEVELS())
        return {"collections": [collection_doc(c, _base(request), settings.timezone) for c in cols],
                "links": [link(f"{_base(request)}/imagery/collections", "self", "application/json")]}

    @api.get("/imagery/collections/{cid}", summary="An imagery collection")
    def collection(request: Request, cid: str):
        return collection_doc(lookups.collection(cid), _base(request), settings.timezone)

    @api.get("/imagery/collections/{cid}/items", summary="The dated items of an imagery collection, newest first")
    def items(request: Request, cid: str, datetime_: str | None = Query(None, alias="datetime")):
        col = lookups.collection(cid)
        at = parse_datetime(datetime_, settings.timezone)
        with lookups.pool.connection() as conn:
            rows = cat.list_items(conn, cid, at=at)
        return {"collection": cid, "items": [item_doc(col, i, _base(request), settings.timezone) for i in rows],
                "links": [link(f"{_base(request)}/imagery/collections/{cid}/items", "self", "application/json")]}

    @api.get("/imagery/collections/{cid}/items/{item_id}", summary="One item of an imagery collection")
    def item(request: Request, cid: str, item_id: str):
        col = lookups.collection(cid)
        with lookups.pool.connection() as conn:
            found = cat.get_item(conn, cid, item_id)
        if found is None:
            raise ApiError(404, "NotFound", f"collection {cid!r} has no item {item_id!r}; its items are "
                                            f"listed at /imagery/collections/{cid}/items")
        return item_doc(col, found, _base(request), settings.timezone)

    @api.get("/imagery/collections/{cid}/tilejson.json", summary="TileJSON 3 for a collection's tiles")
    def tilejson(
        request: Request, cid: str,
        tms: Literal[tuple(GRIDS)] = Query("WebMercatorQuad", description="Tile matrix set"),  # type: ignore[valid-type]
        datetime_: str | None = Query(None, alias="datetime"),
        format_: str | None = Query(None, alias="format", description="png | jpg | webp | tif | npy"),
        algorithm: str | None = Query(None, description="e.g. hillshade, terrainrgb (DEM collections)"),
        minzoom: int | None = Query(None), maxzoom: int | None = Query(None),
    ):
        col = lookups.collection(cid)
        parse_datetime(datetime_, settings.timezone)  # a bad value is a 400 here, not in every tile
        if algorithm is not None and algorithm not in available_algorithms.data:
            raise invalid_parameter("algorithm", f"{algorithm!r} is not one of {', '.join(available_algorithms.data)}")
        fmt = format_ or ("png" if algorithm in LOSSLESS_ALGORITHMS or algorithm else _default_format(col))
        if fmt not in FORMATS:
            raise invalid_parameter("format", f"{fmt!r}: choose one of {', '.join(FORMATS)}")
        qs = [(k, v) for k, v in request.query_params.multi_items()
              if k.lower() not in ("tms", "format", "minzoom", "maxzoom")]
        if fmt not in DATA_FORMATS and not any(k in RENDERING_PARAMS for k, _ in qs) and advertised_rendering(col):
            qs.insert(0, tuple(advertised_rendering(col).split("=", 1)))
        zooms = col.zooms.get(tms) or [0, 24]
        bounds = col.bbox or [-180.0, -85.0511, 180.0, 85.0511]
        z0 = zooms[0] if minzoom is None else minzoom
        z1 = zooms[1] if maxzoom is None else maxzoom
        return {
            "tilejson": "3.0.0", "name": col.id, "description": col.title, "version": "1.0.0", "scheme": "xyz",
            "tiles": [f"{_base(request)}/imagery/collections/{cid}/tiles/{tms}/{{z}}/{{x}}/{{y}}.{fmt}"
                      + (f"?{urlencode(qs)}" if qs else "")],
            "minzoom": z0, "maxzoom": z1, "bounds": bounds,
            "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, max(z0, min(z1, 14))],
            "attribution": "geotwin imagery catalogue",
        }

    # TiTiler's factories, their readers fed by the catalogue only.
    mosaic = CollectionTilerFactory(
        backend=CatalogueBackend, router=APIRouter(dependencies=guard, route_class=tiles.route_class()),
        router_prefix="/imagery/collections/{cid}",
        path_dependency=lookups.collection_dependency(), tile_dependency=_tile_params, process_dependency=_process_params,
        supported_tms=SUPPORTED_TMS, render_func=render, add_viewer=False, add_part=False, add_statistics=False,
        environment_dependency=objectstore.gdal_environment, name="imagery_collection")
    item_tiles = ItemTilerFactory(
        reader=Reader, router=APIRouter(dependencies=guard, route_class=tiles.route_class()),
        router_prefix="/imagery/collections/{cid}/items/{item_id}",
        path_dependency=lookups.item_dependency(), tile_dependency=_tile_params, process_dependency=_process_params,
        supported_tms=SUPPORTED_TMS, render_func=render, add_viewer=False, add_part=False,
        environment_dependency=objectstore.gdal_environment, name="imagery_item")
    api.include_router(mosaic.router, prefix="/imagery/collections/{cid}", tags=["Imagery"])
    api.include_router(item_tiles.router, prefix="/imagery/collections/{cid}/items/{item_id}", tags=["Imagery"])
    api.add_api_route("/imagery/tiles/cache", tiles.stats, methods=["GET"], include_in_schema=False,
                      summary="Imagery tile cache statistics")
    api.imagery_tiles = tiles  # install() puts it on app.state
    return api


# -- tiles outside the data --------------------------------------------------------------------
#
# TiTiler answers a tile outside a COG with 404 and an empty mosaic tile with 204 and no body.
# Desktop clients take both badly: QGIS decodes the empty 204 body as an image and logs "Returned
# image is flawed"; GDAL's WMS/WMTS drivers fail the read unless told to treat the code as empty
# (ZeroBlockHttpCodes); browsers and CDNs do not always cache a 404. A fully transparent tile of the
# asked format and size is read by every client (the practice of tile services with sparse imagery,
# e.g. LINZ Basemaps). JPEG has no transparency — a black tile would hide the map beneath — so a
# JPEG tile outside the data stays 404 (TiTiler's answer; MapLibre and GDAL take a 404 as "no tile").
# Every imagery tile route answers this way (collection mosaics, single items, both grids); the OGC
# map tilesets and WMTS point at these routes, so they answer the same.


#: Formats whose empty tile does not depend on where it is (no georeferencing inside): rendered once.
_PLACELESS_FORMATS = ("png", "pngraw", "webp", "npy")


@lru_cache(maxsize=32)
def _placeless_empty_image(fmt: str, size: int) -> tuple[bytes, str]:
    return _render_empty(fmt, size, "WebMercatorQuad", 0, 0, 0)


def _empty_image(fmt: str, size: int, tms_id: str, z: int, x: int, y: int) -> tuple[bytes, str]:
    if fmt in _PLACELESS_FORMATS:
        return _placeless_empty_image(fmt, size)
    return _render_empty(fmt, size, tms_id, z, x, y)


def _render_empty(fmt: str, size: int, tms_id: str, z: int, x: int, y: int) -> tuple[bytes, str]:
    """A tile with every pixel masked, rendered by TiTiler's renderer (as a real tile would be)."""
    from rio_tiler.models import ImageData
    from titiler.core.resources.enums import ImageType

    grid = _GRID_OBJECTS[tms_id]
    bands = 1 if fmt in DATA_FORMATS else 3  # images: RGBA with alpha 0
    data = np.ma.MaskedArray(np.zeros((bands, size, size), dtype="uint8"), mask=True)
    bounds = grid.xy_bounds(x, y, z)
    image = ImageData(data, bounds=tuple(bounds), crs=grid.rasterio_crs)
    return render(image, output_format=ImageType(fmt))


def _empty_tile_response(request: Request, exc: Exception):
    """The answer for a tile route whose tile holds no data (None when ``request`` is not a tile)."""
    from titiler.core.resources.enums import ImageType

    tile = _tile_of(request.path_params)
    if tile is None:
        return None
    (tms_id, z, x, y), _ = tile
    fmt = str(request.path_params.get("format") or "png").lower()  # no extension: TiTiler picks PNG when masked
    if fmt in OPAQUE_FORMATS:
        return JSONResponse({"code": "NotFound", "description": (
            f"no imagery of {request.path_params.get('cid')!r} in tile {tms_id}/{z}/{x}/{y}"
            + (f" at {request.query_params['datetime']}" if request.query_params.get("datetime") else "")
            + f" ({exc}); a JPEG tile cannot be transparent: ask for .png (or .webp) to get a transparent tile "
              "where there is no data")}, status_code=404)
    try:
        ImageType(fmt)
        size = int(request.query_params.get("tilesize") or _GRID_OBJECTS[tms_id].matrix(z).tileWidth)
    except ValueError:
        return None  # not a format / size TiTiler renders: its own validation answers
    content, media_type = _empty_image(fmt, size, tms_id, z, x, y)
    grid = _GRID_OBJECTS[tms_id]
    b = grid.xy_bounds(x, y, z)
    headers = {"Content-Bbox": ",".join(map(str, (b.left, b.bottom, b.right, b.top)))}
    uri = CRS_to_uri(grid.rasterio_crs)
    if uri:
        headers["Content-Crs"] = f"<{uri}>"
    return Response(content, media_type=media_type, headers=headers)


#: rio-tiler errors → HTTP, as titiler.application and titiler.mosaic answer them — except that a
#: tile with no data is a transparent tile (above), not 204 / 404.
NO_DATA_ERRORS = (rt_errors.TileOutsideBounds, rt_errors.NoAssetFoundError, rt_errors.EmptyMosaicError)
ERROR_STATUS = {
    rt_errors.TileOutsideBounds: status.HTTP_404_NOT_FOUND,
    rt_errors.PointOutsideBounds: status.HTTP_404_NOT_FOUND,
    rt_errors.NoAssetFoundError: status.HTTP_204_NO_CONTENT,
    rt_errors.EmptyMosaicError: status.HTTP_204_NO_CONTENT,
    rt_errors.InvalidColorFormat: status.HTTP_400_BAD_REQUEST,
    rt_errors.InvalidExpression: status.HTTP_400_BAD_REQUEST,
    rt_errors.InvalidFormat: status.HTTP_400_BAD_REQUEST,
    rt_errors.MissingBands: status.HTTP_400_BAD_REQUEST,
    rt_errors.InvalidBandName: status.HTTP_400_BAD_REQUEST,
    rt_errors.InvalidBufferSize: status.HTTP_400_BAD_REQUEST,
}


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the imagery routes and answer rio-tiler's errors with the OGC exception JSON."""
    api = router(settings)
    app.include_router(api)
    app.state.imagery_tiles = api.imagery_tiles  # its tile cache (shutdown, tests)
    app.include_router(ogc_maps.router(settings, ImageryRoutes(settings), advertised_rendering),
                       dependencies=[Depends(refuse_raw_sources)])

    def handler_for(code: int):
        async def handler(request: Request, exc: Exception):
            if isinstance(exc, NO_DATA_ERRORS):
                empty = _empty_tile_response(request, exc)
                if empty is not None:
                    return empty
            if code == status.HTTP_204_NO_CONTENT:
                return Response(status_code=204)
            return JSONResponse({"code": "NotFound" if code == 404 else "InvalidParameterValue",
                                 "description": str(exc)}, status_code=code)
        return handler

    for exc_class, code in ERROR_STATUS.items():
        app.add_exception_handler(exc_class, handler_for(code))


__all__ = [
    "SUPPORTED_TMS",
    "CatalogueBackend",
    "ImageryTileCache",
    "ImageryTiles",
    "collections_for_capabilities",
    "copy_read_zoom",
    "install",
    "parse_datetime",
    "router",
]
