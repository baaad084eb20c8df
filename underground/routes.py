"""HTTP ``/underground/...``:

- ``GET /underground/types``: the pipe types (name, code, depth reference, colour, maximum depth).
- ``GET /underground/under?layer=parcels&fid=…`` (or ``?bbox=minLon,minLat,maxLon,maxLat``)
  ``[&datetime=]``: the pipes under that polygon (by type: id, type, size, depth range, material,
  length inside), the manholes, the basements (layer ``basements``) and the registered BIM models
  with storeys below ground, with totals per type. ``f=html``: a self-contained Chinese page (the
  /map popup's target).

Who sees what: the feature's layer and every layer read must be visible to the caller (a hidden
collection is a 404, a hidden pipe or basement layer contributes nothing and is listed in
``hidden``). Errors: the OGC exception JSON, 400 naming the parameter.
"""

from __future__ import annotations

import html
import json

import shapely
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from spatial_api import db
from spatial_api.api.errors import invalid_parameter, not_found
from spatial_api.api.params import as_of_param
from spatial_api.api.responses import base_url, keyed_html, link, wants_html
from underground import under as under_mod
from underground.catalogue import TYPES


def _json(doc) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False, default=str), media_type="application/json")


def _bbox(text: str) -> bytes:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not (parts[0] < parts[2] and parts[1] < parts[3]):
        raise invalid_parameter("bbox", f"{text!r}: give minLon,minLat,maxLon,maxLat (CGCS2000 degrees), min < max")
    if parts[2] - parts[0] > 0.1 or parts[3] - parts[1] > 0.1:
        raise invalid_parameter("bbox", f"{text!r}: at most 0.1° × 0.1° (about 10 km) at a time")
    return shapely.to_wkb(shapely.box(*parts))


class UndergroundAPI:
    def __init__(self, settings):
        self.settings = settings

    def types(self) -> Response:
        return _json({"types": [t.to_dict() for t in TYPES]})

    def under(self, request: Request,
              layer: str | None = Query(None, description="a polygon layer, e.g. parcels"),
              fid: str | None = Query(None, description="the feature's id in that layer"),
              bbox: str | None = Query(None, description="minLon,minLat,maxLon,maxLat (instead of layer + fid)"),
              datetime: str | None = Query(None, description="as of this time (default: now)"),
              f: str | None = Query(None, description="json | html")) -> Response:
        at = as_of_param(datetime)
        if bbox is None and (layer is None or fid is None):
            raise invalid_parameter("fid", "give layer and fid (a parcel …) or a bbox")
        with db.pool(self.settings).connection() as conn:
            subject: dict = {}
            if bbox is not None and fid is None:
                area = _bbox(bbox)
                subject = {"bbox": [float(v) for v in bbox.split(",")]}
            else:
                try:
                    area, props = under_mod.area_of_feature(conn, layer or "parcels", fid, at)
                except under_mod.NotFound as exc:
                    raise not_found(str(exc)) from None
                except ValueError as exc:
                    raise invalid_parameter("layer", str(exc)) from None
                subject = {"layer": layer or "parcels", "fid": fid, "properties": props}
            doc = under_mod.under(conn, area, at)
        base = base_url(request)
        query = request.url.query
        doc = {"subject": subject, "datetime": at.isoformat() if at else None, **doc,
               "links": [link(f"{base}/underground/under?{query}", "self", "application/json"),
                         link(f"{base}/underground/under?{query}&f=html", "alternate", "text/html", "地下情况")]}
        if wants_html(request, f):
            return keyed_html(render_html(doc))
        return _json(doc)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " – ".join(f"{x:g}" if isinstance(x, (int, float)) else str(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _table(headers: list[str], rows: list[list]) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def render_html(doc: dict) -> str:
    """A self-contained page in Chinese: totals by type, then the pipes, manholes, basements, models."""
    e = html.escape
    s = doc["subject"]
    title = (f"{s['layer']} {s['fid']} 地下情况" if "fid" in s else "范围内地下情况")
    t = doc["totals"]
    parts = ["<!doctype html><html lang='zh'><head><meta charset='utf-8'>",
             f"<title>{e(title)}</title><style>body{{font-family:sans-serif;margin:1em;max-width:60em;font-size:14px}}"
             "table{border-collapse:collapse;margin:.3em 0 1em}td,th{border:1px solid #ccc;padding:.15em .4em;"
             "text-align:left}.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}"
             "</style></head><body>", f"<h1>{e(title)}</h1>"]
    if doc.get("datetime"):
        parts.append(f"<p>时点：{e(doc['datetime'])}</p>")
    parts.append(f"<p>管线 {t['pipes']} 段，检查井 {t['manholes']} 座，地下室 {t['basements']} 处，"
                 f"含地下层的 BIM 模型 {t['models']} 个。</p>")
    if t["by_type"]:
        parts.append("<h2>按管线类型</h2><table><tr><th>类型</th><th>代码</th><th>段数</th><th>范围内长度 (m)</th></tr>"
                     + "".join(f"<tr><td><span class='sw' style='background:{e(b['colour'] or '#999')}'></span>"
                               f"{e(b['type'] or '')}</td><td>{e(b['type_code'] or '')}</td><td>{b['segments']}</td>"
                               f"<td>{b['inside_m']:.1f}</td></tr>" for b in t["by_type"]) + "</table>")
    if doc["pipes"]:
        parts.append("<h2>管线段</h2>" + _table(
            ["编号", "类型", "管径/断面 (mm)", "材质", "埋深 (m)", "轴线高程 (m)", "范围内长度 (m)"],
            [[p["id"], p["type"], p["size"], p["material"], p["depth_m"], p["axis_z"], p["inside_m"]]
             for p in doc["pipes"]]))
    if doc["manholes"]:
        parts.append("<h2>检查井</h2>" + _table(["编号", "类型", "附属物", "地面高程 (m)", "井底高程 (m)"],
                                               [[m["id"], m["type"], m["appurtenance"], m["ground_z"], m["bottom_z"]]
                                                for m in doc["manholes"]]))
    if doc["basements"]:
        parts.append("<h2>地下室 / 地下构筑物</h2>" + _table(
            ["编号", "建筑", "名称", "用途", "层数", "深度 (m)", "范围内面积 (m²)"],
            [[b["basement_id"], b["building_id"], b["name"], b["use"], b["levels"], b["depth_m"], b["inside_m2"]]
             for b in doc["basements"]]))
    if doc["models"]:
        parts.append("<h2>BIM 模型（地下层）</h2>" + _table(["模型", "名称", "地下楼层"], [
            [m["id"], m["name"], "、".join(m["below_ground_storeys"])] for m in doc["models"]]))
    if doc.get("hidden"):
        parts.append(f"<p>无权查看的图层：{e('、'.join(doc['hidden']))}</p>")
    if not (doc["pipes"] or doc["manholes"] or doc["basements"] or doc["models"]):
        parts.append("<p>此范围下没有已登记的管线或地下构筑物。</p>")
    parts.append("</body></html>")
    return "".join(parts)


def router(settings) -> APIRouter:
    r = APIRouter()
    api = UndergroundAPI(settings)
    tags = ["underground"]
    r.add_api_route("/underground/types", api.types, methods=["GET"], tags=tags, summary="Pipe types (CJJ 61)")
    r.add_api_route("/underground/under", api.under, methods=["GET"], tags=tags,
                    summary="Pipes, manholes, basements and BIM basements under a parcel or a bbox")
    return r


__all__ = ["UndergroundAPI", "render_html", "router"]
