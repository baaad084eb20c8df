"""The indoor map of the twin: ``/twin/models`` (the registered BIM models), ``/twin/models/{id}/storeys`` (a BIM model's storeys, lowest first,
with element and room counts, basements with their outline and bottom) and
``/twin/models/{id}/storeys/{storey}/spaces`` (that storey's rooms as GeoJSON, EPSG:4490;
``f=html`` a plan of them). ``{storey}`` is a storey's name or its index (0 = lowest). Visible to
whoever sees the ``indoor_spaces`` layer (else the ``buildings`` layer): for anyone else the model
has no storeys (404), as a tileset is as visible as its layer."""

from __future__ import annotations

import html
import json
from urllib.parse import quote

import numpy as np
import shapely
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cim_builder import indoor
from cim_builder.geo import METRIC_CRS, CimError, transformer
from cim_builder.routes import CORS
from spatial_api import db, security
from spatial_api.api.errors import ApiError, not_found
from spatial_api.api.params import instant_param
from spatial_api.api.responses import GEOJSON, base_url, keyed_html, link, wants_html


def _items_href(base: str, model_id: str, storey: dict, storeys: list[dict]) -> str:
    """The OGC API Features items of one storey's rooms (CQL2 text filter)."""
    def q(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    unique = sum(1 for s in storeys if s["name"] == storey["name"]) == 1
    where = f"storey={q(storey['name'])}" if storey["name"] and unique else f"storey_index={storey['index']}"
    return (f"{base}/collections/{indoor.LAYER}/items?filter-lang=cql2-text&filter="
            + quote(f"model_id={q(model_id)} AND {where}", safe=""))


def _storey_links(base: str, model_id: str, storey: dict, storeys: list[dict]) -> list[dict]:
    spaces = f"{base}/twin/models/{quote(model_id, safe='')}/storeys/{storey['index']}/spaces"
    return [link(spaces, "items", GEOJSON, f"rooms of {storey['name']} (indoor map)"),
            link(spaces + "?f=html", "items", "text/html", f"rooms of {storey['name']} (plan)"),
            link(_items_href(base, model_id, storey, storeys), "collection-items", GEOJSON,
                 f"OGC API Features: {indoor.LAYER} of {storey['name']}")]


def _plan_svg(features: list[dict], width: int = 720) -> str:
    """An SVG plan of rooms (EPSG:4547 metres, north up), each labelled with its name."""
    geoms = shapely.from_geojson([json.dumps(f["geometry"]) for f in features])
    t = transformer("EPSG:4490", METRIC_CRS)
    metric = shapely.transform(geoms, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])))
    minx, miny, maxx, maxy = shapely.total_bounds(metric)
    span = max(maxx - minx, maxy - miny, 1e-6)
    k = (width - 20) / span
    e = html.escape
    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{int((maxy - miny) * k) + 20}' "
              "style='background:#fafafa;border:1px solid #ccc'>")]
    for f, g in zip(features, metric):
        rings = []
        for poly in getattr(g, "geoms", [g]):
            for ring in [poly.exterior, *poly.interiors]:
                xy = np.asarray(ring.coords)
                pts = " ".join(f"{10 + (x - minx) * k:.1f},{10 + (maxy - y) * k:.1f}" for x, y in xy)
                rings.append(f"M{pts}Z")
        p = f["properties"]
        c = g.representative_point()
        label = p.get("long_name") or p.get("name") or f["id"]
        parts.append(f"<path d='{' '.join(rings)}' fill='#8cbfe8' fill-opacity='0.5' stroke='#1f5fd6' "
                     f"fill-rule='evenodd'><title>{e(str(label))} {p.get('area_m2')} m²</title></path>"
                     f"<text x='{10 + (c.x - minx) * k:.1f}' y='{10 + (maxy - c.y) * k:.1f}' font-size='11' "
                     f"text-anchor='middle'>{e(str(label))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def router(settings) -> APIRouter:
    api = APIRouter(tags=["twin"])

    def storeys_of(conn, model_id: str) -> list[dict]:
        level = indoor.access_level(conn)
        if not security.current().sees(level):
            raise not_found(f"no model {model_id!r} (see /twin/tilesets)")
        if level == "restricted":
            security.note_restricted(f"twin/models/{model_id}")
        try:
            storeys = indoor.model_storeys(conn, model_id)
        except CimError as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
        if storeys is None:
            raise not_found(f"no model {model_id!r} (see /twin/tilesets: bim_models)")
        return storeys

    @api.get("/twin/models", summary="The registered BIM models (active), with links to their storeys")
    def get_models(request: Request) -> Response:
        """What `geotwin cim models` lists: id, name, IFC schema, elements, registration, footprint
        (GeoJSON, EPSG:4490), the number of storeys and rooms; visible like the storeys."""
        with db.pool(settings).connection() as conn:
            level = indoor.access_level(conn)
            if not security.current().sees(level):
                rows = []
            else:
                if level == "restricted":
                    security.note_restricted("twin/models")
                rows = conn.execute(
                    "SELECT id, name, ifc_schema, element_count, registered_at, ST_AsGeoJSON(footprint, 8), "
                    "coalesce(jsonb_array_length(georef->'storeys'), 0), "
                    "coalesce((SELECT sum((s->>'rooms')::int) FROM jsonb_array_elements(georef->'storeys') s), 0) "
                    "FROM cim_models WHERE active ORDER BY id").fetchall()
        base = base_url(request)
        models = [{"id": mid, "name": name, "schema": schema, "elements": n, "registered": at.isoformat(),
                   "footprint": json.loads(fp), "storeys": storeys, "rooms": int(rooms),
                   "links": [link(f"{base}/twin/models/{quote(mid, safe='')}/storeys", "storeys", "application/json")]}
                  for mid, name, schema, n, at, fp, storeys, rooms in rows]
        doc = {"models": models, "links": [link(f"{base}/twin/models", "self", "application/json")]}
        return Response(json.dumps(doc, ensure_ascii=False), media_type="application/json", headers=CORS)

    @api.get("/twin/models/{model_id}/storeys", summary="A BIM model's storeys (lowest first) and their rooms")
    def get_storeys(request: Request, model_id: str,
                    f: str | None = Query(None, description="json (default) or html")) -> Response:
        with db.pool(settings).connection() as conn:
            storeys = storeys_of(conn, model_id)
        base = base_url(request)
        self_href = f"{base}/twin/models/{quote(model_id, safe='')}/storeys"
        out = []
        for s in storeys:
            row = {k: v for k, v in s.items() if v is not None or k in ("elevation", "bottom_z")}
            if not s["below_ground"]:
                row.pop("bottom_z", None)
            row["links"] = _storey_links(base, model_id, s, storeys)
            out.append(row)
        doc = {"model": model_id, "storeys": out, "heights": "orthometric metres (1985 national height datum)",
               "links": [link(self_href, "self", "application/json"),
                         link(self_href + "?f=html", "alternate", "text/html"),
                         link(f"{base}/collections/{indoor.LAYER}", "collection", "application/json",
                              indoor.TITLE_EN)]}
        if wants_html(request, f):
            e = html.escape
            rows = "".join(
                f"<tr><td>{s['index']}</td><td><a href='{e(s['links'][1]['href'])}'>{e(s['name'])}</a></td>"
                f"<td>{'' if s.get('elevation') is None else s['elevation']}</td>"
                f"<td>{'地下 below ground' if s['below_ground'] else ''}</td><td>{s['elements']}</td>"
                f"<td>{s['rooms']}</td><td>{'' if s.get('bottom_z') is None else s['bottom_z']}</td></tr>"
                for s in out)
            return keyed_html(
                f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{e(model_id)} 楼层 storeys"
                "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:.2em .5em}</style></head><body>"
                f"<h1>{e(model_id)}: 楼层 / storeys</h1><table><tr><th>#</th><th>楼层 storey</th>"
                "<th>标高 elevation (m)</th><th></th><th>构件 elements</th><th>房间 rooms</th>"
                f"<th>底标高 bottom (m)</th></tr>{rows}</table></body></html>", headers=CORS)
        return Response(json.dumps(doc, ensure_ascii=False), media_type="application/json", headers=CORS)

    @api.get("/twin/models/{model_id}/storeys/{storey:path}/spaces",
             summary="One storey's rooms (IfcSpace) as GeoJSON: the indoor map")
    def get_spaces(request: Request, model_id: str, storey: str,
                   datetime: str | None = Query(None, description="the rooms as of this date / date-time"),
                   f: str | None = Query(None, description="json (default) or html")) -> Response:
        at = instant_param(datetime)
        with db.pool(settings).connection() as conn:
            storeys = storeys_of(conn, model_id)
            chosen = indoor.find_storey(storeys, storey)
            if chosen is None:
                raise not_found(f"model {model_id!r} has no storey {storey!r}; its storeys (name or index): "
                                + ", ".join(f"{s['index']} {s['name']}" for s in storeys))
            feats = indoor.rooms(conn, model_id, storey=chosen, at=at)
        base = base_url(request)
        summary = {k: chosen[k] for k in ("index", "name", "elevation", "below_ground", "elements", "rooms")}
        doc = {"type": "FeatureCollection", "model": model_id, "storey": summary,
               "numberReturned": len(feats), "features": feats,
               "links": [link(f"{base}/twin/models/{quote(model_id, safe='')}/storeys", "up", "application/json",
                              "storeys"), *_storey_links(base, model_id, chosen, storeys)]}
        if wants_html(request, f):
            e = html.escape
            rows = "".join(
                f"<tr><td>{e(str(x['properties'].get('name') or ''))}</td>"
                f"<td>{e(str(x['properties'].get('long_name') or ''))}</td>"
                f"<td>{e(str(x['properties'].get('use') or ''))}</td><td>{x['properties'].get('area_m2')}</td>"
                f"<td>{x['properties'].get('height_m')}</td><td>{e(x['id'])}</td></tr>" for x in feats)
            plan = _plan_svg(feats) if feats else "<p>本层没有房间 (no rooms on this storey)</p>"
            return keyed_html(
                f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{e(model_id)} "
                f"{e(chosen['name'])} 室内 indoor</title><style>body{{font-family:sans-serif;margin:1.5em}}"
                "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}</style></head><body>"
                f"<h1>{e(model_id)} · {e(chosen['name'])}: 室内空间 / rooms</h1>{plan}"
                "<table><tr><th>名称 name</th><th>全称 long name</th><th>用途 use</th><th>面积 area (m²)</th>"
                f"<th>高度 height (m)</th><th>id</th></tr>{rows}</table></body></html>", headers=CORS)
        return Response(json.dumps(doc, ensure_ascii=False), media_type=GEOJSON, headers=CORS)

    return api
