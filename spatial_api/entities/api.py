"""``/entities``: the ground floor's geographic-entity routes (room ``entities``).

- ``GET /entities/{code}?datetime=&f=json|html`` — the entity with every representation valid then
  (features with their versions, BIM, Things, and the rooms' contributions: prisms, sensors);
- ``GET /entities?bbox=&type=&datetime=&limit=&offset=`` — a GeoJSON FeatureCollection of the
  entities valid then, each with the geometry of its primary feature, with next / prev links;
- ``GET /entities/by-feature/{layer}/{fid}?datetime=`` — 307 to the entity that feature represents
  (what /map and /twin open when a building is clicked).

A caller sees only representations in layers it may read (api.collections / security); a hidden
layer's feature is simply absent, and by-feature in a hidden layer is a 404."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from spatial_api import db, security
from spatial_api.api.errors import ApiError, invalid_parameter, not_found
from spatial_api.api.params import as_of_param
from spatial_api.api.responses import GEOJSON, base_url, keyed_html, link, wants_html
from spatial_api.config import Settings
from spatial_api.entities import html as pages
from spatial_api.entities.core import TYPES, EntityError, check_code, check_type, entity_for_feature
from spatial_api.entities.read import describe, listing

MAX_LIMIT, DEFAULT_LIMIT = 1000, 100


def _layers(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT name, access_level FROM layers"))


def _visible(conn):
    caller, levels = security.current(), _layers(conn)
    seen: dict[str, bool] = {}

    def visible(layer: str) -> bool:
        if layer not in seen:
            level = levels.get(layer)
            seen[layer] = level is not None and caller.sees(level)
            if seen[layer] and level == "restricted":
                security.note_restricted(f"layer:{layer}")
        return seen[layer]
    return visible, [n for n, lvl in levels.items() if caller.sees(lvl)]


def _int(value: str | None, parameter: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise invalid_parameter(parameter, f"{value!r} is not a whole number") from None
    if not low <= n <= high:
        raise invalid_parameter(parameter, f"{n} is out of range: give {low}–{high}")
    return n


def _bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if not value:
        return None
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError:
        raise invalid_parameter("bbox", f"{value!r} is not four comma-separated numbers (lon/lat, EPSG:4490)") from None
    if len(nums) != 4 or nums[0] > nums[2] or nums[1] > nums[3]:
        raise invalid_parameter("bbox", f"{value!r}: give minlon,minlat,maxlon,maxlat with min ≤ max")
    return nums[0], nums[1], nums[2], nums[3]


def router(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/entities", tags=["entities"])

    def run(fn):
        try:
            with db.pool(settings).connection() as conn:
                return fn(conn)
        except EntityError as exc:
            raise invalid_parameter(exc.parameter, exc.detail) from None

    @api.get("", summary="Geographic entities valid at a time, as GeoJSON (geometry of the primary representation)",
             responses={200: {"content": {GEOJSON: {}, "text/html": {}}}})
    def list_entities(
        request: Request,
        bbox: str | None = Query(None, description="minlon,minlat,maxlon,maxlat (EPSG:4490) the primary feature meets"),
        type: str | None = Query(None, description="entity type: " + ", ".join(f"{k} ({v[1]})" for k, v in TYPES.items())),
        datetime: str | None = Query(None, description="valid at this instant (a date: its end); default now"),
        limit: str | None = Query(None, description=f"1–{MAX_LIMIT}, default {DEFAULT_LIMIT}"),
        offset: str | None = Query(None, description="entities to skip (ordered by code)"),
        f: str | None = Query(None, description="json | html"),
    ):
        at = as_of_param(datetime)
        n, skip, box = _int(limit, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), _int(offset, "offset", 0, 0, 10**9), _bbox(bbox)
        try:
            kind = check_type(type, "type") if type else None
        except EntityError as exc:
            raise invalid_parameter(exc.parameter, exc.detail) from None
        html = wants_html(request, f)

        def answer(conn):
            _, layers = _visible(conn)
            rows, more = listing(conn, at=at, visible_layers=layers, entity_type=kind, bbox=box, limit=n, offset=skip)
            return rows, more

        rows, more = run(answer)
        base = base_url(request)
        keep = {k: v for k, v in {"bbox": bbox, "type": type, "datetime": datetime}.items() if v}
        page = lambda o: f"{base}/entities?" + urlencode({**keep, "limit": n, "offset": o})  # noqa: E731
        links = [link(page(skip), "self", GEOJSON, "this page"),
                 link(page(skip) + "&f=html", "alternate", "text/html", "this page as HTML")]
        if more:
            links.append(link(page(skip + n), "next", GEOJSON, "next page"))
        if skip:
            links.append(link(page(max(0, skip - n)), "prev", GEOJSON, "previous page"))
        features = [{
            "type": "Feature", "id": r["code"],
            "geometry": json.loads(r["geometry"]) if r["geometry"] else None,
            "properties": {"code": r["code"], "type": r["type"], "name": r["name"],
                           "validFrom": r["valid_from"].isoformat(),
                           "validTo": r["valid_to"].isoformat() if r["valid_to"] else None,
                           "layer": r["layer"], "fid": r["fid"], "href": f"{base}/entities/{r['code']}"},
        } for r in rows]
        doc = {"type": "FeatureCollection", "numberReturned": len(features), "features": features, "links": links}
        if html:
            return keyed_html(pages.listing_page(doc, at))
        return Response(json.dumps(doc, ensure_ascii=False), media_type=GEOJSON)

    @api.get("/by-feature/{layer}/{fid}", status_code=307, summary="The entity a feature represents (307 redirect)",
             responses={307: {"description": "to /entities/{code}"}, 404: {"description": "no entity, or no such visible layer"}})
    def by_feature(request: Request, layer: str = Path(..., description="layer (collection) id"),
                   fid: str = Path(..., description="the feature's key"),
                   datetime: str | None = Query(None, description="valid at this instant; default now"),
                   f: str | None = Query(None, description="json | html, passed on")):
        at = as_of_param(datetime)

        def answer(conn):
            visible, _ = _visible(conn)
            if not visible(layer):
                raise not_found(f"collection {layer!r} does not exist; see /collections")
            return entity_for_feature(conn, layer, fid, at)

        code = run(answer)
        if code is None:
            raise not_found(f"feature {fid!r} of layer {layer!r} represents no entity"
                            + (f" at {datetime}" if datetime else "") + "; assign entities with `geotwin entities assign`")
        query = urlencode({k: v for k, v in {"datetime": datetime, "f": f}.items() if v})
        return RedirectResponse(f"{base_url(request)}/entities/{code}" + (f"?{query}" if query else ""), status_code=307)

    @api.get("/{code}", summary="A geographic entity with every representation and its versions, as of a time",
             responses={200: {"content": {"application/json": {}, "text/html": {}}}, 404: {"description": "no such entity"}})
    def get_entity(request: Request, code: str = Path(..., description="entity code, e.g. 440307JZ0000001234"),
                   datetime: str | None = Query(None, description="as of this instant (a date: its end); default now"),
                   f: str | None = Query(None, description="json | html")):
        at = as_of_param(datetime)
        html = wants_html(request, f)
        try:
            code = check_code(code)
        except EntityError as exc:
            raise invalid_parameter(exc.parameter, exc.detail) from None
        base = base_url(request)

        def answer(conn):
            visible, _ = _visible(conn)
            try:
                return describe(conn, code, at, visible=visible, base=base)
            except EntityError as exc:
                if exc.parameter == "code":
                    raise not_found(f"entity {code!r} does not exist; see /entities") from None
                raise

        doc = run(answer)
        self_q = urlencode({"datetime": datetime} if datetime else {})
        href = f"{base}/entities/{code}" + (f"?{self_q}" if self_q else "")
        doc["links"] = [link(href, "self", "application/json", "this entity"),
                             link(href + ("&" if self_q else "?") + "f=html", "alternate", "text/html", "实体页面")]
        if html:
            return keyed_html(pages.entity_page(doc))
        return Response(json.dumps(doc, ensure_ascii=False, default=str), media_type="application/json")

    return api


__all__ = ["router", "ApiError"]
