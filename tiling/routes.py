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

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from spatial_api import db
from spatial_api.config import Settings
from spatial_api.ogc.features import ApiError, Collections, _instant, _link, bad
from tiling.vector import GRIDS, TMS, TileError, TileRequest, render

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


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["OGC API — Tiles"])
    cols = Collections(settings)
    pool = db.pool(settings)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @api.get("/tileMatrixSets", summary="Tile matrix sets")
    def tile_matrix_sets(request: Request):
        return {"tileMatrixSets": [
            {"id": tms_id, "title": TMS.get(tms_id).title or tms_id,
             "links": [_link(f"{base(request)}/tileMatrixSets/{tms_id}",
                             "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "application/json")]}
            for tms_id in GRIDS]}

    @api.get("/tileMatrixSets/{tms_id}", summary="A tile matrix set (OGC 2D-TMS 2.0)")
    def tile_matrix_set(tms_id: str):
        if tms_id not in GRIDS:
            raise ApiError(404, "NotFound", f"tile matrix set {tms_id!r} does not exist; use {', '.join(GRIDS)}")
        return JSONResponse(TMS.get(tms_id).model_dump(exclude_none=True, mode="json"))

    def tileset(request: Request, collection_id: str, tms_id: str) -> dict:
        url = f"{base(request)}/collections/{collection_id}/tiles/{tms_id}"
        return {
            "title": f"{collection_id} ({tms_id})", "dataType": "vector", "crs": TMS.get(tms_id).crs.root,
            "tileMatrixSetURI": f"{base(request)}/tileMatrixSets/{tms_id}",
            "links": [
                _link(url, "self", "application/json", "this tileset"),
                _link(f"{base(request)}/tileMatrixSets/{tms_id}",
                      "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "application/json", "the grid"),
                {**_link(url + "/{tileMatrix}/{tileRow}/{tileCol}", "item", MVT, "a tile"), "templated": True},
            ],
        }

    @api.get("/collections/{collection_id}/tiles", summary="Vector tilesets of a collection")
    def tilesets(request: Request, collection_id: str):
        with pool.connection() as conn:
            cols.get(conn, collection_id)
        return {"tilesets": [tileset(request, collection_id, t) for t in GRIDS],
                "links": [_link(f"{base(request)}/collections/{collection_id}/tiles", "self", "application/json")]}

    @api.get("/collections/{collection_id}/tiles/{tms_id}", summary="A vector tileset")
    def tileset_doc(request: Request, collection_id: str, tms_id: str):
        if tms_id not in GRIDS:
            raise ApiError(404, "NotFound", f"tile matrix set {tms_id!r} does not exist; use {', '.join(GRIDS)}")
        with pool.connection() as conn:
            cols.get(conn, collection_id)
        return tileset(request, collection_id, tms_id)

    @api.get("/tiles/{layers}/tilejson.json", summary="TileJSON 3 for XYZ vector tiles of one or more layers")
    def tilejson(request: Request, layers: str, datetime_: str | None = Query(None, alias="datetime")):
        names = [n for n in layers.split(",") if n]
        if not names:
            raise bad("layers", "name at least one layer")
        with pool.connection() as conn:
            found = [cols.get(conn, n) for n in names]
            rows = {r["name"]: r for r in cols.visible(conn)}
            extents = [cols.extent(conn, rows[n])["spatial"]["bbox"] for n in names]
        boxes = [b[0] for b in extents if b]
        bounds = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                   max(b[3] for b in boxes)] if boxes else [-180, -85.0511, 180, 85.0511])
        query = f"?datetime={datetime_}" if datetime_ else ""
        tms = TMS.get("WebMercatorQuad")
        return {
            "tilejson": "3.0.0", "name": ",".join(names), "scheme": "xyz", "format": "pbf",
            "tiles": [f"{base(request)}/tiles/{layers}/{{z}}/{{x}}/{{y}}.mvt{query}"],
            "minzoom": tms.minzoom, "maxzoom": min(tms.maxzoom, 22), "bounds": bounds,
            "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 12],
            "vector_layers": [{"id": layer.name, "description": layer.title_zh or layer.title_en or "",
                               "fields": {"fid": "String", **{p["name"]: _TILEJSON_TYPES.get(p["type"], "String")
                                                             for p in layer.properties}}}
                              for layer in found],
        }

    def tile(layer_ids: list[str], req: TileRequest, datetime_: str | None, properties: str | None) -> Response:
        at = _instant(datetime_) if datetime_ else None
        with pool.connection() as conn:
            layers = [cols.get(conn, name) for name in layer_ids]
            names = None
            if properties is not None:
                names = [p for p in properties.split(",") if p]
                for layer in layers:
                    unknown = [n for n in names if n not in layer.schema]
                    if unknown:
                        raise bad("properties", f"{unknown} not in {layer.name!r} ({', '.join(layer.schema)})")
            try:
                body = render(conn, layers, req, at=at, properties=names)
            except TileError as exc:
                raise ApiError(404, "NotFound", str(exc)) from None
        if not body:
            return Response(status_code=204, media_type=MVT)
        return Response(body, media_type=MVT)

    @api.get("/collections/{collection_id}/tiles/{tms_id}/{z}/{row}/{col}", summary="A vector tile")
    def ogc_tile(collection_id: str, tms_id: str, z: int, row: int, col: int,
                 datetime_: str | None = Query(None, alias="datetime"), properties: str | None = None):
        return tile([collection_id], TileRequest(tms_id, z, col, row), datetime_, properties)

    @api.get("/tiles/{layers}/{z}/{x}/{y}.mvt", summary="XYZ vector tile (WebMercatorQuad); layers comma-separated")
    def xyz_tile(layers: str, z: int, x: int, y: int,
                 datetime_: str | None = Query(None, alias="datetime"), properties: str | None = None):
        names = [n for n in layers.split(",") if n]
        if not names:
            raise bad("layers", "name at least one layer")
        return tile(names, TileRequest("WebMercatorQuad", z, x, y), datetime_, properties)

    return api


__all__ = ["CONFORMANCE", "router"]
