"""OGC API – Tiles *map* tilesets of the imagery collections, so that clients that speak OGC API
rather than XYZ or WMTS — GDAL's OGCAPI driver, QGIS, OpenLayers' ``OGCMapTile`` — can open a
collection and find its tiles by following links:

- ``/imagery/collections/{cid}`` links ``…/map/tiles`` (rel ``tilesets-map``, JSON);
- ``/imagery/collections/{cid}/map/tiles``: the tilesets (one per grid, ``dataType: map``);
- ``/imagery/collections/{cid}/map/tiles/{tms}``: a tileset — the tiling-scheme link (the 2D-TMS
  document of ``/tileMatrixSets/{tms}``), ``tileMatrixSetLimits`` from the collection's extent and
  zooms, and ``item`` links (PNG, JPEG; the collection's default format first) templated
  ``{tileMatrix}/{tileRow}/{tileCol}`` onto the imagery tile route (which is ``{z}/{x}/{y}``, i.e.
  column before row).

``datetime`` on a tileset request is carried into its tile template (the district as imaged then);
a DEM's templates ask for its hillshade (heights as an 8-bit image would be invisible). Tiles where
there is no data are transparent (PNG) or 404 (JPEG), as on every imagery tile route.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from fastapi import APIRouter, Query, Request

from spatial_api.config import Settings
from spatial_api.api.errors import ApiError
from spatial_api.api.responses import link
from tiling.vector import GRIDS, TMS

TILESETS_MAP = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map"
TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
MEDIA = {"png": "image/png", "jpg": "image/jpeg"}


def limits(bbox: list[float] | None, tms_id: str, zooms: list[int] | None) -> list[dict]:
    if not bbox:
        return []
    tms = TMS.get(tms_id)
    lo, hi = zooms or [tms.minzoom, tms.maxzoom]
    w, s, e, n = bbox
    out = []
    for z in range(max(lo, tms.minzoom), min(hi, tms.maxzoom) + 1):
        nw, se = tms.tile(w, n, z), tms.tile(e, s, z)
        out.append({"tileMatrix": str(z), "minTileRow": nw.y, "maxTileRow": se.y,
                    "minTileCol": nw.x, "maxTileCol": se.x})
    return out


def router(settings: Settings, lookups, rendering: Callable[[object], str]) -> APIRouter:
    """The map tileset routes. ``lookups``: tiling.imagery's ImageryRoutes (``collection(cid)`` → a
    visible collection or 404); ``rendering(collection)``: the query string its image tiles are
    advertised with (tiling.imagery.advertised_rendering). Passed in by tiling.imagery.install, so
    that this module does not import tiling.imagery (which imports collection_links from here)."""
    api = APIRouter(tags=["Imagery"])

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def check_tms(tms_id: str) -> None:
        if tms_id not in GRIDS:
            raise ApiError(404, "NotFound", f"tile matrix set {tms_id!r} does not exist; use {', '.join(GRIDS)}")

    def tileset(request: Request, cid: str, tms_id: str, datetime_: str | None, full: bool) -> dict:
        col = lookups.collection(cid)
        url = f"{base(request)}/imagery/collections/{cid}/map/tiles/{tms_id}"
        query = f"?datetime={quote(datetime_, safe='')}" if datetime_ else ""
        doc = {
            "title": f"{col.title or cid} ({tms_id})", "dataType": "map", "crs": TMS.get(tms_id).crs.root,
            "tileMatrixSetURI": f"{base(request)}/tileMatrixSets/{tms_id}",
            "links": [link(url + query, "self", "application/json", "this tileset"),
                      link(f"{base(request)}/tileMatrixSets/{tms_id}", TILING_SCHEME, "application/json",
                            "the grid")],
        }
        if full:
            # a DEM's tiles in its visible rendering (tiling.imagery.advertised_rendering)
            tile_query = "&".join(p for p in (query.lstrip("?"), rendering(col)) if p)
            # the collection's default format first (JPEG for photographs): clients take the first
            fmts = sorted(MEDIA, key=lambda f: f != (col.default_format or "png"))
            for fmt, media in ((f, MEDIA[f]) for f in fmts):
                template = (f"{base(request)}/imagery/collections/{cid}/tiles/{tms_id}/{{tileMatrix}}/{{tileCol}}/"
                            f"{{tileRow}}.{fmt}{'?' + tile_query if tile_query else ''}")
                doc["links"].append({**link(template, "item", media, f"a tile ({fmt})"), "templated": True})
            lim = limits(col.bbox, tms_id, (col.zooms or {}).get(tms_id))
            if lim:
                doc["tileMatrixSetLimits"] = lim
        return doc

    @api.get("/imagery/collections/{cid}/map/tiles", summary="Map tilesets of an imagery collection (OGC API – Tiles)")
    def tilesets(request: Request, cid: str, datetime_: str | None = Query(None, alias="datetime")):
        return {"tilesets": [tileset(request, cid, t, datetime_, full=False) for t in GRIDS],
                "links": [link(f"{base(request)}/imagery/collections/{cid}/map/tiles", "self", "application/json")]}

    @api.get("/imagery/collections/{cid}/map/tiles/{tms_id}", summary="A map tileset of an imagery collection")
    def tileset_doc(request: Request, cid: str, tms_id: str, datetime_: str | None = Query(None, alias="datetime")):
        check_tms(tms_id)
        return tileset(request, cid, tms_id, datetime_, full=True)

    return api


def collection_links(base: str, cid: str) -> list[dict]:
    """The links an imagery collection document adds for OGC API clients."""
    return [link(f"{base}/imagery/collections/{cid}/map/tiles", TILESETS_MAP, "application/json",
                  "map tilesets (OGC API – Tiles)")]
