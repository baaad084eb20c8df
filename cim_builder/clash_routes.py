"""``POST /twin/clash`` (issue 17 contract §7) and its reports.

- ``POST /twin/clash`` with JSON ``{"model": "<registered model id>"}`` or ``{"footprint": <GeoJSON
  Polygon / MultiPolygon / Feature in EPSG:4490>, "depth_m": d, "ground_z": optional}``, and
  optionally ``"as_of"`` (date), ``"distance"`` (search distance, m, default 5) and
  ``"clearance"`` ({"给水": 1.5} or {"JS": 1.5}: required clearances instead of the GB 50289
  defaults) → the report as JSON (pipes, structures, summary, ``highlight``: the underground
  tileset's ``pipe_segment.id`` values to colour in /twin) with ``id`` and ``links`` to the HTML
  and XLSX renderings.
- ``GET /twin/clash/{id}`` (JSON), ``/twin/clash/{id}.html``, ``/twin/clash/{id}.xlsx`` (or
  ``?f=json|html|xlsx``): a report kept as a JSON file under ``<home>/clash/`` (so any server
  process can answer; the newest 500 are kept), rendered on request.

Who: the roles that may build the twin (``twin:build``: planner, gis-staff, admin) — 401 without
credentials, 403 for another role; the stored reports too. Errors: 400 naming the field (bad
GeoJSON, depth, distance, clearance), 404 for an unknown model or report.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import HTMLResponse, Response

from cim_builder import clash, clash_report
from cim_builder.geo import CimError
from spatial_api import db, security
from spatial_api.api.errors import ApiError, invalid_parameter, not_found

ACTION = "twin:build"
KEEP = 500
_FIELDS = {"model", "footprint", "depth_m", "ground_z", "as_of", "distance", "clearance"}
_ID = re.compile(r"^([0-9a-f]{32})(\.(json|html|xlsx))?$")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def reports_dir(settings) -> Path:
    return Path(os.environ.get("GEOTWIN_CLASH_DIR") or Path(settings.home) / "clash")


def _save(settings, report: dict) -> str:
    folder = reports_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    rid = uuid.uuid4().hex
    tmp = folder / f"{rid}.json.tmp"
    tmp.write_text(json.dumps(report, ensure_ascii=False))
    os.replace(tmp, folder / f"{rid}.json")
    old = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-KEEP]
    for p in old:
        p.unlink(missing_ok=True)
    return rid


def _links(request: Request, rid: str) -> list[dict]:
    base = str(request.base_url).rstrip("/") + f"/twin/clash/{rid}"
    return [{"rel": "self", "type": "application/json", "href": base},
            {"rel": "report", "type": "text/html", "title": "碰撞检查报告 (HTML)", "href": base + ".html"},
            {"rel": "report", "type": XLSX, "title": "碰撞检查报告 (XLSX)", "href": base + ".xlsx"}]


def _render(report: dict, fmt: str) -> Response:
    if fmt == "html":
        return HTMLResponse(clash_report.html(report))
    if fmt == "xlsx":
        return Response(clash_report.xlsx(report), media_type=XLSX,
                        headers={"Content-Disposition": f'attachment; filename="clash-{report.get("id", "report")}.xlsx"'})
    return Response(json.dumps(report, ensure_ascii=False), media_type="application/json")


def router(settings) -> APIRouter:
    api = APIRouter(tags=["twin"])

    @api.post("/twin/clash", summary="Clash check: a BIM model or a planned basement against the pipes")
    def post_clash(request: Request, payload: dict = Body(..., examples=[{"model": "duplex"}, {
            "footprint": {"type": "Polygon", "coordinates": [[[114.25, 22.72], [114.2502, 22.72],
                                                              [114.2502, 22.7201], [114.25, 22.72]]]},
            "depth_m": 8}])) -> Response:
        security.require(ACTION)
        if not isinstance(payload, dict):
            raise invalid_parameter("body", "a JSON object: {\"model\": id} or {\"footprint\": …, \"depth_m\": d}")
        unknown = sorted(set(payload) - _FIELDS)
        if unknown:
            raise invalid_parameter(unknown[0], f"not a field of a clash request; fields: {', '.join(sorted(_FIELDS))}")
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise invalid_parameter("model", "a registered model id (text)")
        if model is None and payload.get("footprint") is None:
            raise invalid_parameter("model", "give a registered model id, or a footprint (GeoJSON) with depth_m")
        try:
            with db.pool(settings).connection() as conn:
                report = clash.check(settings, model=model, footprint=payload.get("footprint"),
                                     depth_m=payload.get("depth_m"), ground_z=payload.get("ground_z"),
                                     as_of=payload.get("as_of"), distance=payload.get("distance", clash.DEFAULT_DISTANCE_M),
                                     clearances=payload.get("clearance"), conn=conn)
        except clash.UnknownModel as exc:
            raise not_found(str(exc)) from None
        except CimError as exc:
            raise ApiError(400, "InvalidParameterValue", str(exc)) from None
        rid = _save(settings, report)
        report = {"id": rid, **report, "links": _links(request, rid)}
        return Response(json.dumps(report, ensure_ascii=False), media_type="application/json")

    @api.get("/twin/clash/{name}", summary="A clash report (JSON, HTML or XLSX)")
    def get_clash(request: Request, name: str,
                  f: str | None = Query(None, description="json | html | xlsx (or a .html / .xlsx suffix)")) -> Response:
        security.require(ACTION)
        m = _ID.match(name)
        if not m:
            raise not_found(f"no clash report {name!r}")
        fmt = f or m.group(3) or "json"
        if fmt not in ("json", "html", "xlsx"):
            raise invalid_parameter("f", f"{fmt!r}: json, html or xlsx")
        path = reports_dir(settings) / f"{m.group(1)}.json"
        if not path.is_file():
            raise not_found(f"no clash report {m.group(1)} (reports are kept for the newest {KEEP} checks): "
                            "run POST /twin/clash again")
        report = json.loads(path.read_text())
        report = {"id": m.group(1), **report, "links": _links(request, m.group(1))}
        return _render(report, fmt)

    return api
