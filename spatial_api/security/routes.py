"""``/whoami`` for clients (the web UI shows what the caller may do), and the admin endpoints:
``/admin/audit`` (the audit log, filtered) and ``/admin/keys`` (key listing)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from spatial_api import db, security
from spatial_api.api.errors import error_body
from spatial_api.config import Settings
from spatial_api.security import MAY, SEES, Forbidden, keys, redact
from spatial_api.security.middleware import SecurityMiddleware


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["Access control"])
    pool = db.pool(settings)

    @api.get("/whoami", summary="The caller: name, role, what they see and may do")
    def whoami():
        p = security.current()
        return {"name": p.name, "role": p.role, "via": p.via, "key_id": p.key_id, "community": p.community,
                "sees": sorted(SEES[p.role]), "may": sorted(a for a in MAY if p.may(a))}

    @api.get("/admin/audit", summary="The audit log (admins)")
    def audit(principal: str | None = None, action: str | None = None, target: str | None = Query(
                  None, description="prefix of the path, e.g. /collections/eco_redline"),
              since: datetime | None = None, until: datetime | None = None,
              limit: int = Query(100, ge=1, le=1000)):
        security.require("audit:read")
        where, params = ["TRUE"], []
        for col, val in (("principal", principal), ("action", action)):
            if val:
                where.append(f"{col} = %s")
                params.append(val)
        if target:
            where.append("target LIKE %s")
            params.append(target.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if since:
            where.append("at >= %s")
            params.append(since)
        if until:
            where.append("at < %s")
            params.append(until)
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(f"SELECT * FROM audit_log WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC "
                               "LIMIT %s", [*params, limit]).fetchall()
        # entries recorded before credentials were redacted on the way in are redacted on the way out
        return {"entries": [{**r, "at": r["at"].isoformat(), "detail": redact.detail(r["detail"])} for r in rows],
                "limit": limit}

    @api.get("/admin/keys", summary="API keys (admins; the keys themselves are never shown)")
    def list_keys(include_revoked: bool = False):
        security.require("keys:manage")
        with pool.connection() as conn:
            return {"keys": [{**r.__dict__, "created_at": r.created_at.isoformat(),
                              "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None}
                             for r in keys.listing(conn, include_revoked=include_revoked)]}

    return api


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(SecurityMiddleware, settings=settings)
    redact.install_log_filter()  # the server's own request log: no credentials from query strings

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden):
        code = "Unauthorized" if exc.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer realm="geotwin"'} if exc.status == 401 else {}
        return JSONResponse(error_body(request, exc.status, code, str(exc)), status_code=exc.status, headers=headers)

    app.include_router(router(settings))
