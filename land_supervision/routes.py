"""HTTP: ``/supervision/...`` — rules, runs, findings (JSON / GeoJSON / CSV / XLSX), the diff
against the previous run, statistics, the printable report, cases, and a findings vector-tile
layer for the map client. Access (spatial_api.security): reading needs ``supervision:read``
(planners, land officers, GIS staff, admins), starting a run ``supervision:run`` and every case
step ``cases:write`` (land officers, admins); the author of a run or a case step is the caller.

Errors use the OGC exception JSON (``{"code", "description"}``): 400 names the parameter and
what to do, 404 an unknown run / finding / case / file.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from land_supervision import cases, catalogue, engine, report, runs
from land_supervision.catalogue import RuleError
from land_supervision.runs import NotFound
from spatial_api import db, security
from spatial_api.api.errors import ApiError, not_found
from spatial_api.config import Settings

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
    return Response(json.dumps(data, ensure_ascii=False, default=runs.json_default), status_code=status,
                    media_type="application/json")


class SupervisionAPI:
    """The /supervision endpoints: one method per endpoint; every database call through call()."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def call(self, fn, *args, **kwargs):
        """Run fn(conn, …) on a pooled connection; map domain errors to HTTP."""
        try:
            with db.pool(self.settings).connection() as conn:
                return fn(conn, *args, **kwargs)
        except (RuleError, cases.CaseError) as exc:
            raise ApiError(400, "InvalidParameterValue", str(exc)) from None
        except NotFound as exc:
            raise not_found(str(exc)) from None

    def rules(self) -> Response:
        """The rule library: ids, titles, legal basis, default parameters."""
        return _json({"rules": catalogue.describe(), "layers": catalogue.DEFAULT_LAYERS})

    async def create_run(self, request: Request, body: RunRequest = Body(...)) -> Response:
        """Evaluate the rules as of a date and store the run (one transaction)."""
        author = _author(request)

        def work():
            try:
                return engine.run(self.settings, as_of=body.as_of, rules=body.rules, parameters=body.parameters,
                                  layers=body.layers, known_at=body.known_at, imagery=body.imagery, author=author)
            except RuleError as exc:
                raise ApiError(400, "InvalidParameterValue", str(exc)) from None

        result = await run_in_threadpool(work)
        doc = result.as_dict()
        doc["links"] = {k: f"/supervision/runs/{result.run_id}{v}" for k, v in
                        (("self", ""), ("findings", "/findings"), ("diff", "/diff"),
                         ("statistics", "/statistics"), ("report", "/report"))}
        return _json(doc, 201)

    def list_runs(self, limit: int = Query(50, ge=1, le=1000)) -> Response:
        return _json({"runs": self.call(runs.list_runs, limit)})

    def get_run(self, run_id: int) -> Response:
        return _json(self.call(runs.get_run, run_id))

    def get_findings(self, run_id: int, rule: str | None = None,
                     status: str | None = Query(None, pattern="^(new|persisting)$"),
                     severity: str | None = Query(None, pattern="^(low|medium|high|critical)$"),
                     f: str = Query("json", pattern="^(json|geojson|csv|xlsx)$"),
                     limit: int | None = Query(None, ge=1, le=100000), offset: int = Query(0, ge=0)) -> Response:
        """Findings of a run; ``f=geojson|csv|xlsx`` for the exports (one feature / row per finding)."""
        filters = {"rule": rule, "status": status, "severity": severity}
        if f == "json":
            rows = self.call(runs.findings, run_id, limit=limit, offset=offset, **filters)
            return _json({"run_id": run_id, "findings": rows, "numberReturned": len(rows)})
        data = self.call(runs.export, run_id, f, **filters)
        headers = {"Content-Disposition": f'attachment; filename="supervision_run_{run_id}.{f}"'}
        return Response(data, media_type=MEDIA[f], headers=headers)

    def get_diff(self, run_id: int) -> Response:
        """New, persisting and resolved findings against the previous run."""
        return _json(self.call(runs.diff, run_id))

    def get_statistics(self, run_id: int) -> Response:
        return _json(self.call(runs.statistics, run_id))

    def get_report(self, run_id: int) -> HTMLResponse:
        """A printable HTML report (self-contained: inline SVG maps, no external resources)."""
        return HTMLResponse(self.call(report.html_report, run_id))

    def get_finding(self, finding_id: int) -> Response:
        def one(conn):
            row = conn.execute("SELECT run_id FROM sup_findings WHERE id = %s", (finding_id,)).fetchone()
            if not row:
                raise NotFound(f"finding {finding_id} does not exist")
            feats = runs.to_geojson(conn, row[0])["features"]
            return next(f for f in feats if f["id"] == finding_id)

        return _json(self.call(one))

    def tile(self, z: int, x: int, y: int,
             run: int | None = Query(None, description="Run id (default: the latest)"),
             rule: str | None = None) -> Response:
        """Findings of a run as a Mapbox vector tile (layer ``findings``, WebMercatorQuad)."""
        if not (0 <= z <= 24 and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
            raise not_found(f"tile {z}/{x}/{y} is outside the WebMercatorQuad matrix")

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

        data = bytes(self.call(render) or b"")
        if not data:
            return Response(status_code=204)
        return Response(data, media_type=MVT)

    # ------------------------------------------------------------------ cases
    def create_case(self, request: Request, body: CaseRequest) -> Response:
        case_id = self.call(lambda conn: cases.open_case(conn, body.finding_ids, author=_author(request),
                                                         title=body.title, assignee=body.assignee,
                                                         due_date=body.due_date))
        return _json(self.call(cases.get_case, case_id), 201)

    def list_cases(self, status: str | None = Query(None, pattern="^(open|closed)$")) -> Response:
        return _json({"cases": self.call(cases.list_cases, status)})

    def get_case(self, case_id: int) -> Response:
        return _json(self.call(cases.get_case, case_id))

    def assign(self, request: Request, case_id: int, body: AssignRequest) -> Response:
        self.call(lambda conn: cases.assign(conn, case_id, author=_author(request), assignee=body.assignee,
                                            due_date=body.due_date))
        return _json(self.call(cases.get_case, case_id))

    async def add_inspection(self, request: Request, case_id: int, text: str = Form(...),
                             inspected_on: str | None = Form(None), lon: float | None = Form(None),
                             lat: float | None = Form(None), files: list[UploadFile] = File(default=[])) -> Response:
        """An inspection record (multipart form): text, inspected_on, lon / lat, photos as files."""
        payload = [(f.filename or "", f.content_type, await f.read()) for f in files]
        author = _author(request)
        event_id = await run_in_threadpool(self.call, lambda conn: cases.inspect(
            conn, case_id, author=author, text=text, inspected_on=inspected_on, lon=lon, lat=lat, files=payload))
        return _json({"event_id": event_id, "case": await run_in_threadpool(self.call, cases.get_case, case_id)}, 201)

    def add_note(self, request: Request, case_id: int, body: NoteRequest) -> Response:
        self.call(lambda conn: cases.note(conn, case_id, author=_author(request), text=body.text))
        return _json(self.call(cases.get_case, case_id), 201)

    def close(self, request: Request, case_id: int, body: CloseRequest) -> Response:
        self.call(lambda conn: cases.close(conn, case_id, author=_author(request), disposition=body.disposition,
                                           reason=body.reason, fee_cny=body.fee_cny))
        return _json(self.call(cases.get_case, case_id))

    def reopen(self, request: Request, case_id: int, body: ReopenRequest) -> Response:
        self.call(lambda conn: cases.reopen(conn, case_id, author=_author(request), reason=body.reason))
        return _json(self.call(cases.get_case, case_id))

    def get_file(self, file_id: int) -> Response:
        row = self.call(cases.get_file, file_id)
        disposition = f"inline; filename*=UTF-8''{quote(row['file_name'], safe='')}"
        return Response(bytes(row["data"]), media_type=row["content_type"],
                        headers={"Content-Disposition": disposition, "X-Content-SHA256": row["sha256"]})

    def router(self) -> APIRouter:
        """The endpoints above, each under its path."""
        api = APIRouter(prefix="/supervision", tags=["land supervision"], dependencies=[Depends(_guard)])
        api.add_api_route("/rules", self.rules, methods=["GET"])
        api.add_api_route("/runs", self.create_run, methods=["POST"], status_code=201)
        api.add_api_route("/runs", self.list_runs, methods=["GET"])
        api.add_api_route("/runs/{run_id}", self.get_run, methods=["GET"])
        api.add_api_route("/runs/{run_id}/findings", self.get_findings, methods=["GET"])
        api.add_api_route("/runs/{run_id}/diff", self.get_diff, methods=["GET"])
        api.add_api_route("/runs/{run_id}/statistics", self.get_statistics, methods=["GET"])
        api.add_api_route("/runs/{run_id}/report", self.get_report, methods=["GET"], response_class=HTMLResponse)
        api.add_api_route("/findings/{finding_id}", self.get_finding, methods=["GET"])
        api.add_api_route("/tiles/{z}/{x}/{y}.mvt", self.tile, methods=["GET"])
        api.add_api_route("/cases", self.create_case, methods=["POST"], status_code=201)
        api.add_api_route("/cases", self.list_cases, methods=["GET"])
        api.add_api_route("/cases/{case_id}", self.get_case, methods=["GET"])
        api.add_api_route("/cases/{case_id}/assign", self.assign, methods=["POST"])
        api.add_api_route("/cases/{case_id}/inspections", self.add_inspection, methods=["POST"], status_code=201)
        api.add_api_route("/cases/{case_id}/notes", self.add_note, methods=["POST"], status_code=201)
        api.add_api_route("/cases/{case_id}/close", self.close, methods=["POST"])
        api.add_api_route("/cases/{case_id}/reopen", self.reopen, methods=["POST"])
        api.add_api_route("/files/{file_id}", self.get_file, methods=["GET"])
        return api


def router(settings: Settings) -> APIRouter:
    return SupervisionAPI(settings).router()


__all__ = ["router", "JSONResponse"]
