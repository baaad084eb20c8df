"""``/healthz``: is this API process fit to serve — for the load balancer, the cluster's ``status``
and monitoring.

The ground floor checks the database: ``SELECT`` on the primary (critical) and, when reads go to a
replica (GEOTWIN_READ_DATABASE_URL), the replica — reachable, in recovery, how far behind in bytes
of WAL and seconds. A replica that is down only degrades the process (reads fall back to the
primary), so it stays 200. Rooms add their own checks in their ``install()`` with
:func:`add_check` (the tiling room: its tile-cache listener), so that this module imports no room.

200 with ``{"status": "ok" | "degraded", "checks": {...}}`` when every critical check passes,
else 503 with ``"status": "failing"`` and the same detail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from spatial_api import db
from spatial_api.config import Settings

#: A check returns its detail with ``ok`` (bool); it may raise: then it failed, with the error as detail.
Check = Callable[[], dict]
#: Seconds a check may wait for a pooled connection: a load balancer's probe must not hang.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class HealthCheck:
    name: str
    check: Check
    critical: bool = True  # False: a failure only degrades the process (still 200)


def add_check(app: FastAPI, name: str, check: Check, *, critical: bool = True) -> None:
    """Add a check to this application's ``/healthz`` (rooms call it from their ``install()``)."""
    if not hasattr(app.state, "health_checks"):
        app.state.health_checks = []
    app.state.health_checks.append(HealthCheck(name, check, critical))


def checks_of(app: FastAPI) -> list[HealthCheck]:
    return list(getattr(app.state, "health_checks", []))


def _primary(settings: Settings) -> Check:
    def check() -> dict:
        started = time.perf_counter()
        with db.pool(settings).connection(timeout=PROBE_TIMEOUT) as conn:
            recovery, lsn = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL "
                "ELSE pg_current_wal_lsn()::text END").fetchone()
        return {"ok": not recovery, "wal_lsn": lsn, "ms": round((time.perf_counter() - started) * 1000, 1),
                **({"problem": "the primary's URL leads to a standby (read-only)"} if recovery else {})}
    return check


def _replica(settings: Settings, router: db.ReadRouter) -> Check:
    def check() -> dict:
        started = time.perf_counter()
        try:
            with router.replica.connection(timeout=PROBE_TIMEOUT) as conn:
                recovery, replay, delay = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                    "extract(epoch FROM now() - pg_last_xact_replay_timestamp())").fetchone()
        except psycopg.Error as exc:
            return {"ok": False, "reads": "primary", "problem": str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__}
        out = {"ok": bool(recovery), "replay_lsn": replay, "ms": round((time.perf_counter() - started) * 1000, 1),
               "reads": "primary" if router.replica_down() else "replica",
               "last_replayed_transaction_s_ago": round(float(delay), 1) if delay is not None else None}
        if not recovery:
            out["problem"] = "the read replica is not in recovery (promoted?): reads would miss nothing, " \
                             "but it no longer follows the primary"
        try:
            primary_lsn = db.parse_lsn(db.current_wal_lsn(settings))
            if primary_lsn is not None and replay:
                out["lag_bytes"] = max(0, primary_lsn - db.parse_lsn(replay))
        except psycopg.Error:
            pass  # the primary's own check says it
        return out
    return check


def install(app: FastAPI, settings: Settings) -> None:
    """The database checks and the ``/healthz`` route (the rooms' checks are added as they install)."""
    add_check(app, "database", _primary(settings))
    router = db.read_router(settings)
    if router is not None:
        add_check(app, "read_replica", _replica(settings, router), critical=False)

    @app.get("/healthz", tags=["service"], summary="Health of this API process (200 / 503 with detail)")
    def healthz() -> JSONResponse:
        detail, failing, degraded = {}, False, False
        for hc in checks_of(app):
            try:
                result = hc.check()
            except Exception as exc:  # noqa: BLE001 — any failure of a check is its answer
                result = {"ok": False, "problem": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
            detail[hc.name] = result
            if not result.get("ok"):
                failing |= hc.critical
                degraded |= not hc.critical
        status = "failing" if failing else "degraded" if degraded else "ok"
        return JSONResponse({"status": status, "checks": detail}, status_code=503 if failing else 200,
                            headers={"Cache-Control": "no-store"})
