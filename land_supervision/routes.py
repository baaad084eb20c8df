"""HTTP: ``/supervision/...`` — rules, runs, findings (JSON / GeoJSON / CSV / XLSX), the diff
against the previous run, statistics, the printable report, cases, and a findings vector-tile
layer for the map client. Access (spatial_api.security): reading needs ``supervision:read``
(planners, land officers, GIS staff, admins), starting a run ``supervision:run`` and every case
step ``cases:write`` (land officers, admins); the author of a run or a case step is the caller.

Errors use the OGC exception JSON (``{"code", "description"}``): 400 names the parameter and
what to do, 404 an unknown run / finding / case / file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from land_supervision import cases, catalogue, engine, report, runs
from land_supervision.catalogue import RuleError
from land_supervision.runs import NotFound
from spatial_api import db, security
from spatial_api.config import Settings
from spatial_api.ogc.features import ApiError

MEDIA = {"geojson": "application/geo+json", "csv": "text/csv; charset=utf-8",
         "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
MVT = "application/vnd.mapbox-vector-tile"


def _author(request: Request) -> str:
    return security.current().name  # the key's or the token's owner (the audit log has the key id)


def _guard(request: Request) -> None:
    """Who may read, run and act on cases (401 without credentials, 403 for a role that may not)."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        security.require("supervision:run" if request.url.path.rstrip("/").endswith("/runs") else "cases:write")
    else:
        security.require("supervision:read")


class RunRequest(BaseModel):
    as_of: str = Field(..., description="The run's date, YYYY-MM-DD")
    rules: list[str] | str | None = Field(None, description="Rule ids (default: all), e.g. [\"R4\", \"R12\"]")
    parameters: dict[str, Any] | None = Field(None, description="Overrides: {\"R4\": {\"fee_rate\": 0.2}}")
    layers: dict[str, str] | None = Field(None, description="Role → layer name, e.g. {\"parcels\": \"parcels_2026\"}")
    known_at: datetime | None = Field(None, description="Evaluate the layers as the store knew them then")
    imagery: bool | None = Field(None, description="Read imagery: V1 start evidence (default: when an imagery layer exists) and R9 "
                                                    "green ratios (default: on); false reads none")


class CaseRequest(BaseModel):
    finding_ids: list[int]
    title: str | None = None
    assignee: str | None = None
    due_date: str | None = None


class AssignRequest(BaseModel):
    assignee: str | None = None
    due_date: str | None = None


class NoteRequest(BaseModel):
    text: str


class CloseRequest(BaseModel):
    disposition: str = Field(..., description=", ".join(cases.DISPOSITIONS))
    reason: str | None = None
    fee_cny: float | None = None


class ReopenRequest(BaseModel):
    reason: str


def _json(data: Any, status: int = 200) -> Response:
    import json

    return Response(json.dumps(data, ensure_ascii=False, default=runs._json_default), status_code=status,
                    media_type="application/json")


def router(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/supervision", tags=["land supervision"], dependencies=[Depends(_guard)])

    def call(fn, *args, **kwargs):
        """Run fn(conn, …) on a pooled connection; map domain errors to HTTP."""
        try:
            with db.pool(settings).connection() as conn:
                return fn(conn, *args, **kwargs)
        except (RuleError, cases.CaseError) as exc:
            raise ApiError(400, "InvalidParameterValue", str(exc)) from None
        except NotFound as exc:
            raise ApiError(404, "NotFound", str(exc)) from None

    @api.get("/rules")
    def rules() -> Response:
        """The rule library: ids, titles, legal basis, default parameters."""
        return _json({"rules": catalogue.describe(), "layers": catalogue.DEFAULT_LAYERS})

    @api.post("/runs", status_code=201)
    async def create_run(request: Request, body: RunRequest = Body(...)) -> Response:
        """Evaluate the rules as of a date and store the run (one transaction)."""
        author = _author(request)

        def work():
            try:
                return engine.run(settings, as_of=body.as_of, rules=body.rules, parameters=body.parameters,
                                  layers=body.layers, known_at=body.known_at, imagery=body.imagery, author=author)
            except RuleError as exc:
                raise ApiError(400, "InvalidParameterValue", str(exc)) from None

        result = await run_in_threadpool(work)
        doc = result.as_dict()
        doc["links"] = {k: f"/supervision/runs/{result.run_id}{v}" for k, v in
                        (("self", ""), ("findings", "/findings"), ("diff", "/diff"),
                         ("statistics", "/statistics"), ("report", "/report"))}
        return _json(doc, 201)

    @api.get("/runs")
    def list_runs(limit: int = Query(50, ge=1, le=1000)) -> Response:
        return _json({"runs": call(runs.list_runs, limit)})

    @api.get("/runs/{run_id}")
    def get_run(run_id: int) -> Response:
        return _json(call(runs.get_run, run_id))

    @api.get("/runs/{run_id}/findings")
    def get_findings(run_id: int, rule: str | None = None, status: str | None = Query(None, pattern="^(new|persisting)$"),
                     severity: str | None = Query(None, pattern="^(low|medium|high|critical)$"),
                     f: str = Query("json", pattern="^(json|geojson|csv|xlsx)$"),
                     limit: int | None = Query(None, ge=1, le=100000), offset: int = Query(0, ge=0)) -> Response:
        """Findings of a run; ``f=geojson|csv|xlsx`` for the exports (one feature / row per finding)."""
        filters = {"rule": rule, "status": status, "severity": severity}
        if f == "json":
            rows = call(runs.findings, run_id, limit=limit, offset=offset, **filters)
            return _json({"run_id": run_id, "findings": rows, "numberReturned": len(rows)})
        data = call(runs.export, run_id, f, **filters)
        headers = {"Content-Disposition": f'attachment; filename="supervision_run_{run_id}.{f}"'}
        return Response(data, media_type=MEDIA[f], headers=headers)

    @api.get("/runs/{run_id}/diff")
    def get_diff(run_id: int) -> Response:
        """New, persisting and resolved findings against the previous run."""
        return _json(call(runs.diff, run_id))

    @api.get("/runs/{run_id}/statistics")
    def get_statistics(run_id: int) -> Response:
        return _json(call(runs.statistics, run_id))

    @api.get("/runs/{run_id}/report", response_class=HTMLResponse)
    def get_report(run_id: int) -> HTMLResponse:
        """A printable HTML report (self-contained: inline SVG maps, no external resources)."""
        return HTMLResponse(call(report.html_report, run_id))

    @api.get("/findings/{finding_id}")
    def get_finding(finding_id: int) -> Response:
        def one(conn):
            row = conn.execute("SELECT run_id FROM sup_findings WHERE id = %s", (finding_id,)).fetchone()
            if not row:
                raise NotFound(f"finding {finding_id} does not exist")
            feats = runs.to_geojson(conn, row[0])["features"]
            return next(f for f in feats if f["id"] == finding_id)
        return _json(call(one))

    @api.get("/tiles/{z}/{x}/{y}.mvt")
    def tile(z: int, x: int, y: int, run: int | None = Query(None, description="Run id (default: the latest)"),
             rule: str | None = None) -> Response:
        """Findings of a run as a Mapbox vector tile (layer ``findings``, WebMercatorQuad)."""
        if not (0 <= z <= 24 and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
            raise ApiError(404, "NotFound", f"tile {z}/{x}/{y} is outside the WebMercatorQuad matrix")

        def render(conn):
            run_id = run
            if run_id is None:
                row = conn.execute("SELECT max(id) FROM sup_runs WHERE finished_at IS NOT NULL").fetchone()
                run_id = row[0]
                if run_id is None:
                    raise NotFound("no supervision run yet: POST /supervision/runs")
            else:
                runs.get_run(conn, run_id)
            return conn.execute(
                """
                WITH t AS (SELECT ST_TileEnvelope(%(z)s, %(x)s, %(y)s) AS env)
                SELECT ST_AsMVT(q, 'findings', 4096, 'geom', 'id') FROM (
                    SELECT f.id, f.rule, f.subject_id, f.parcel_id, f.severity, f.status, f.message,
                           round(f.area_m2::numeric, 1)::float8 AS area_m2, f.street_name AS street,
                           ST_AsMVTGeom(f.geom_3857, t.env, 4096, 64, true) AS geom
                    FROM sup_findings f, t
                    WHERE f.run_id = %(run)s AND f.geom_3857 && t.env
                      AND (%(rule)s::text IS NULL OR f.rule = %(rule)s)
                ) q WHERE q.geom IS NOT NULL
                """, {"z": z, "x": x, "y": y, "run": run_id, "rule": rule.upper() if rule else None}).fetchone()[0]

        data = bytes(call(render) or b"")
        if not data:
            return Response(status_code=204)
        return Response(data, media_type=MVT)

    # ------------------------------------------------------------------ cases
    @api.post("/cases", status_code=201)
    def create_case(request: Request, body: CaseRequest) -> Response:
        case_id = call(lambda conn: cases.open_case(conn, body.finding_ids, author=_author(request), title=body.title,
                                                    assignee=body.assignee, due_date=body.due_date))
        return _json(call(cases.get_case, case_id), 201)

    @api.get("/cases")
    def list_cases(status: str | None = Query(None, pattern="^(open|closed)$")) -> Response:
        return _json({"cases": call(cases.list_cases, status)})

    @api.get("/cases/{case_id}")
    def get_case(case_id: int) -> Response:
        return _json(call(cases.get_case, case_id))

    @api.post("/cases/{case_id}/assign")
    def assign(request: Request, case_id: int, body: AssignRequest) -> Response:
        call(lambda conn: cases.assign(conn, case_id, author=_author(request), assignee=body.assignee,
                                       due_date=body.due_date))
        return _json(call(cases.get_case, case_id))

    @api.post("/cases/{case_id}/inspections", status_code=201)
    async def add_inspection(request: Request, case_id: int, text: str = Form(...),
                             inspected_on: str | None = Form(None), lon: float | None = Form(None),
                             lat: float | None = Form(None), files: list[UploadFile] = File(default=[])) -> Response:
        """An inspection record (multipart form): text, inspected_on, lon / lat, photos as files."""
        payload = [(f.filename or "", f.content_type, await f.read()) for f in files]
        author = _author(request)
        event_id = await run_in_threadpool(call, lambda conn: cases.inspect(
            conn, case_id, author=author, text=text, inspected_on=inspected_on, lon=lon, lat=lat, files=payload))
        return _json({"event_id": event_id, "case": await run_in_threadpool(call, cases.get_case, case_id)}, 201)

    @api.post("/cases/{case_id}/notes", status_code=201)
    def add_note(request: Request, case_id: int, body: NoteRequest) -> Response:
        call(lambda conn: cases.note(conn, case_id, author=_author(request), text=body.text))
        return _json(call(cases.get_case, case_id), 201)

    @api.post("/cases/{case_id}/close")
    def close(request: Request, case_id: int, body: CloseRequest) -> Response:
        call(lambda conn: cases.close(conn, case_id, author=_author(request), disposition=body.disposition,
                                      reason=body.reason, fee_cny=body.fee_cny))
        return _json(call(cases.get_case, case_id))

    @api.post("/cases/{case_id}/reopen")
    def reopen(request: Request, case_id: int, body: ReopenRequest) -> Response:
        call(lambda conn: cases.reopen(conn, case_id, author=_author(request), reason=body.reason))
        return _json(call(cases.get_case, case_id))

    @api.get("/files/{file_id}")
    def get_file(file_id: int) -> Response:
        row = call(cases.get_file, file_id)
        return Response(bytes(row["data"]), media_type=row["content_type"],
                        headers={"Content-Disposition": f"inline; filename*=UTF-8''{_quote(row['file_name'])}",
                                 "X-Content-SHA256": row["sha256"]})

    return api


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


__all__ = ["router", "JSONResponse"]
