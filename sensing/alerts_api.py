"""HTTP ``/sensing/alerts…`` and ``/sensing/rules``.

- ``GET /sensing/alerts?state=open|notified|acknowledged|visited|closed|active&community=&device=&since=&limit=``
  → ``{"alerts": [...]}`` newest first, each with its device's address / building / point, the
  15-minute on-site measure (``on_site_minutes``, ``target_met``) and its ``steps``.
- ``GET /sensing/alerts/{id}`` → one alert.
- ``POST /sensing/alerts/{id}/steps`` ``{"step": "acknowledged" | "visited" | "closed", "note"}``
  (``sensing:alerts``: community workers, admins; the author is the caller) → the alert; 409 for
  a step out of order (visited before acknowledged, anything after closed); closing before a
  visit needs a note.
- ``GET /sensing/alerts/stream`` → Server-Sent Events: ``event: alert`` (``id:`` the alert id,
  ``data:`` the alert JSON) whenever an alert the caller may see opens or changes state, a
  ``: keepalive`` comment every 15 s. Fed by PostgreSQL ``LISTEN sensing_alerts`` (one listening
  connection per server process, fanned out to the streams), so alerts opened by the MQTT worker
  or the periodic evaluator in other processes arrive too. Browsers' EventSource cannot send
  headers: pass the key as ``?api_key=`` (redacted from every log).
- ``GET /sensing/rules`` (roles that see internal data, community workers), ``PUT /sensing/rules/{id}``
  (``sensing:manage``): a rule's kind, device_type, observed_property, params, severity, notify,
  enabled, title, description — checked whole (400 naming the field) before anything is written.

Who sees which alert: the rule of the devices (``sensing.devices.visible_devices_sql``) —
households' alerts only for roles that may ``sensing:households`` (a community worker: its own
community's; rows filtered in SQL), other devices' alerts for roles that see internal data and
community workers, none for anonymous callers. Every household alert read is named in the
request's audit entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref

from fastapi import APIRouter, Body, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from sensing import alerts, http, rules
from spatial_api import db, security
from spatial_api.api import time as timepolicy
from spatial_api.api.errors import ApiError, invalid_parameter, not_found

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0


_json = http.json_response

#: the alerts' and rules' errors in HTTP
_ERRORS = {alerts.AlertError: lambda exc: ApiError(exc.status, {404: "NotFound", 409: "Conflict"}.get(
               exc.status, "InvalidParameterValue"), str(exc)),
           rules.RuleError: lambda exc: ApiError(400, "InvalidParameterValue", str(exc))}


def visible_condition(principal: security.Principal) -> tuple[str, dict]:
    """The devices the principal may see as an SQL condition over ``d`` with named parameters
    (the registry's rule, whose placeholders are positional)."""
    from sensing.devices import visible_devices_sql

    cond, params = visible_devices_sql("d", principal)
    parts = cond.split("%s")
    if len(parts) - 1 != len(params):
        raise RuntimeError("visible_devices_sql: placeholders and parameters disagree")
    named = {f"vis_{i}": v for i, v in enumerate(params)}
    out = parts[0] + "".join(f"%(vis_{i})s{p}" for i, p in enumerate(parts[1:]))
    return out, named


def _audit(items: list[dict]) -> None:
    from sensing.devices import note_household_read

    note_household_read(sorted({a["device_id"] for a in items if a.get("restricted")}))


def _clean(a: dict) -> dict:
    a = dict(a)
    a.pop("restricted", None)
    return a


class _Hub:
    """One ``LISTEN sensing_alerts`` connection per event loop, fanned out to the open streams."""

    def __init__(self, settings):
        self.settings = settings
        self.queues: set[asyncio.Queue] = set()
        #: streams that missed events (a full queue, a lost LISTEN connection): they end, so that
        #: the browser reconnects and reloads the list instead of showing it incomplete
        self.dropped: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.schema = db.schema_name(settings)

    async def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.queues.add(q)
        if self.task is None or self.task.done():
            self.ready = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=10)
        except TimeoutError:
            log.warning("sensing alert stream: the LISTEN connection is not ready yet; events follow when it is")
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.queues.discard(q)
        self.dropped.discard(q)
        if not self.queues and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        db.database_url(self.settings), autocommit=True, application_name="geotwin-alert-stream",
                        connect_timeout=db.CONNECT_TIMEOUT) as conn:
                    await conn.execute(f"LISTEN {alerts.CHANNEL}")
                    self.ready.set()
                    async for n in conn.notifies():
                        try:
                            msg = json.loads(n.payload)
                            if msg.get("schema") != self.schema:
                                continue
                            alert_id = int(msg["alert_id"])
                        except (ValueError, KeyError, TypeError):
                            continue
                        for q in list(self.queues):
                            try:
                                q.put_nowait(alert_id)
                            except asyncio.QueueFull:  # a stuck client: its stream ends (see dropped)
                                self.queues.discard(q)
                                self.dropped.add(q)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect after a database outage
                log.warning("sensing alert stream: LISTEN connection lost (%s); reconnecting", exc)
                # what was notified meanwhile is lost to these streams: end them (clients reload)
                for q in self.queues:
                    self.dropped.add(q)
                    with contextlib.suppress(asyncio.QueueFull):
                        q.put_nowait(None)  # wakes the stream, which then ends
                self.queues.clear()
                await asyncio.sleep(1.0)


_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub] = weakref.WeakKeyDictionary()


def _hub(settings) -> _Hub:
    loop = asyncio.get_running_loop()
    hub = _HUBS.get(loop)
    if hub is None:
        hub = _HUBS[loop] = _Hub(settings)
    return hub


class AlertsAPI:
    def __init__(self, settings):
        self.settings = settings

    def call(self, fn, *args, write: bool = False, **kwargs):
        """fn(conn, …) on a pooled connection (committed when ``write``); domain errors → HTTP."""
        return http.call(self.settings, _ERRORS, fn, *args, write=write, **kwargs)

    # ---------------------------------------------------------------------------------- alerts
    def list_alerts(self, state: str | None = Query(None, description="open | notified | acknowledged | visited | "
                                                                       "closed | active (not closed)"),
                    community: str | None = None, device: str | None = None,
                    since: str | None = Query(None, description="changed since (RFC 3339; naive = district time)"),
                    limit: int = Query(100, ge=1, le=10000)) -> Response:
        """The alerts the caller may see, newest first."""
        if state is not None and state not in (*alerts.STATES, "active"):
            raise invalid_parameter("state", f"{state!r} is not one of {', '.join(alerts.STATES)}, active")
        try:
            t = timepolicy.parse_instant(since, "since", day="start")
        except timepolicy.TimeError as exc:
            raise invalid_parameter(exc.parameter, exc.message) from None
        vis = visible_condition(security.current())
        items = self.call(alerts.listing, state=state, community=community, device=device, since=t, limit=limit,
                          visible=vis)
        _audit(items)
        return _json({"alerts": [_clean(a) for a in items]})

    def get_alert(self, alert_id: int) -> Response:
        vis = visible_condition(security.current())
        a = self.call(alerts.get, alert_id, visible=vis)
        if a is None:
            raise not_found(f"alert {alert_id} does not exist")
        _audit([a])
        return _json(_clean(a))

    def add_step(self, alert_id: int, body: dict = Body(..., description='{"step": "acknowledged" | "visited" | '
                                                                         '"closed", "note": "…"}')) -> Response:
        """Take a step of the alert's workflow (author: the caller)."""
        p = security.require("sensing:alerts")
        if not isinstance(body, dict):
            raise invalid_parameter("body", 'give a JSON object {"step": …, "note": …}')
        step, note = body.get("step"), body.get("note")
        if not isinstance(step, str):
            raise invalid_parameter("step", f"give one of {', '.join(alerts.PEOPLE_STEPS)}")
        if note is not None and not isinstance(note, str):
            raise invalid_parameter("note", "give text")
        unknown = sorted(set(body) - {"step", "note"})
        if unknown:
            raise invalid_parameter(unknown[0], "not a field of a step; give step and note")
        vis = visible_condition(p)

        def work(conn):
            if alerts.get(conn, alert_id, visible=vis) is None:
                raise alerts.AlertError(404, f"alert {alert_id} does not exist")
            return alerts.step(conn, alert_id, step, author=p.name, note=note)

        a = self.call(work, write=True)
        _audit([a])
        return _json(_clean(a))

    async def stream(self, request: Request) -> StreamingResponse:
        """Server-Sent Events: every change of an alert the caller may see."""
        principal = security.current()
        vis = visible_condition(principal)
        hub = _hub(self.settings)
        q = await hub.subscribe()

        def fetch(alert_id: int) -> dict | None:
            a = self.call(alerts.get, alert_id, visible=vis)
            if a is not None:
                _audit([a])
            return a

        async def events():
            try:
                yield "retry: 3000\n: connected\n\n"
                while q not in hub.dropped:
                    try:
                        alert_id = await asyncio.wait_for(q.get(), timeout=KEEPALIVE_S)
                        if alert_id is None:
                            break
                    except TimeoutError:
                        if await request.is_disconnected() or q in hub.dropped:
                            break
                        yield ": keepalive\n\n"
                        continue
                    try:
                        a = await run_in_threadpool(fetch, alert_id)
                    except Exception as exc:  # a database hiccup must not end the stream
                        log.warning("sensing alert stream: alert %s not read: %s", alert_id, exc)
                        continue
                    if a is not None:
                        data = json.dumps(_clean(a), ensure_ascii=False, default=str)
                        yield f"event: alert\nid: {alert_id}\ndata: {data}\n\n"
            finally:
                hub.unsubscribe(q)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ----------------------------------------------------------------------------------- rules
    def list_rules(self) -> Response:
        p = security.current()
        if not (p.sees("internal") or p.role == "community-worker"):
            if not p.authenticated:
                raise security.Forbidden(401, "the alert rules need credentials: send an API key")
            raise security.Forbidden(403, f"role {p.role!r} may not read the alert rules")
        return _json({"rules": [r.as_dict() for r in self.call(rules.load_rules)], "kinds": list(rules.KINDS)})

    def put_rule(self, rule_id: str, body: dict = Body(..., description="Fields of the rule: kind, device_type, "
                                                                       "observed_property, params, severity, notify, "
                                                                       "enabled, title, description")) -> Response:
        """Create or change a rule (params merged into the current ones)."""
        p = security.require("sensing:manage")
        if not isinstance(body, dict):
            raise invalid_parameter("body", "give a JSON object with the rule's fields")
        fields = {"kind", "device_type", "observed_property", "params", "severity", "notify", "enabled", "title",
                  "description", "rule_id"}
        unknown = sorted(set(body) - fields)
        if unknown:
            raise invalid_parameter(unknown[0], f"not a field of a rule; known: {', '.join(sorted(fields - {'rule_id'}))}")
        if "rule_id" in body and body["rule_id"] != rule_id:
            raise invalid_parameter("rule_id", f"{body['rule_id']!r} differs from the path's {rule_id!r}")
        for name in ("kind", "severity", "title", "description"):
            if name in body and not isinstance(body[name], str):
                raise invalid_parameter(name, "give text")
        kwargs = {k: body[k] for k in ("kind", "params", "severity", "notify", "enabled", "title", "description")
                  if k in body}
        for k in ("device_type", "observed_property"):
            if k in body:
                kwargs[k] = body[k]
        existed = self.call(lambda conn: conn.execute("SELECT 1 FROM sensing_rules WHERE rule_id = %s",
                                                      (rule_id,)).fetchone() is not None)
        r = self.call(rules.set_rule, rule_id, author=p.name, write=True, **kwargs)
        return _json(r.as_dict(), 200 if existed else 201)


def router(settings) -> APIRouter:
    r = APIRouter()
    api = AlertsAPI(settings)
    tags = ["sensing"]
    r.add_api_route("/sensing/alerts", api.list_alerts, methods=["GET"], tags=tags, summary="Alerts")
    # before /sensing/alerts/{alert_id}: "stream" is no alert id
    r.add_api_route("/sensing/alerts/stream", api.stream, methods=["GET"], tags=tags,
                    summary="Alerts as they open and change (Server-Sent Events)")
    r.add_api_route("/sensing/alerts/{alert_id}", api.get_alert, methods=["GET"], tags=tags, summary="An alert")
    r.add_api_route("/sensing/alerts/{alert_id}/steps", api.add_step, methods=["POST"], tags=tags,
                    summary="A step of an alert's workflow: acknowledged, visited, closed")
    r.add_api_route("/sensing/rules", api.list_rules, methods=["GET"], tags=tags, summary="Alert rules")
    r.add_api_route("/sensing/rules/{rule_id}", api.put_rule, methods=["PUT"], tags=tags,
                    summary="Create or change an alert rule")
    return r


__all__ = ["router", "visible_condition"]
