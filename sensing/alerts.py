"""Alerts and their life cycle: open → notified → acknowledged → visited → closed.

Every step is a row of ``sensing_alert_steps`` (seq, step, at, author, note) written in the same
transaction as the alert's new state, with ``NOTIFY sensing_alerts`` (payload
``{"schema": "<db schema>", "alert_id": <id>}``) — the live
alert stream (``GET /sensing/alerts/stream``) listens on that channel, so alerts opened by the
MQTT worker or the periodic evaluator reach the browsers of other processes.

Who sets which step:

- ``open``: the evaluator (author ``rule:<rule_id>``) or :func:`open_alert`;
- ``notified``: the notifier's dispatcher, once every outbox message of the alert was delivered;
- ``acknowledged`` (from open / notified), ``visited`` (from acknowledged) and ``closed`` (from any
  active state; a note is required unless the alert was visited): people
  (``POST /sensing/alerts/{id}/steps``, ``geotwin sensing alerts step``); anything else is a
  conflict (409);
- ``closed`` by ``system``: a no-data alert when the device reports again.

The pilot's promise is someone at the door within 15 minutes: per alert ``on_site_minutes`` =
first ``visited`` step − ``opened_at`` and ``target_met`` = on_site_minutes ≤ 15 (None until
visited).
"""

from __future__ import annotations

from datetime import datetime

from psycopg.rows import dict_row

from spatial_api.api import time as timepolicy

STATES = ("open", "notified", "acknowledged", "visited", "closed")
ACTIVE = ("open", "notified", "acknowledged", "visited")
#: step → the states it may follow
FOLLOWS = {
    "notified": ("open",),
    "acknowledged": ("open", "notified"),
    "visited": ("acknowledged",),
    "closed": ACTIVE,
}
PEOPLE_STEPS = ("acknowledged", "visited", "closed")
ON_SITE_TARGET_MINUTES = 15
CHANNEL = "sensing_alerts"


class AlertError(Exception):
    """A refused alert operation: ``status`` 400 (bad input), 404 (no such alert), 409 (out of order)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def notify_changed(conn, alert_ids) -> None:
    """``NOTIFY sensing_alerts`` for each alert (delivered when the transaction commits). The
    payload is ``{"schema": …, "alert_id": …}``: channels are database-wide, schemas are not."""
    conn.execute("SELECT pg_notify(%s, json_build_object('schema', current_schema(), 'alert_id', x)::text) "
                 "FROM unnest(%s::bigint[]) AS x", (CHANNEL, list(alert_ids)))


def add_steps(conn, alert_ids, step: str, *, author: str, at: datetime, note: str | None = None) -> None:
    conn.execute(
        """INSERT INTO sensing_alert_steps (alert_id, seq, step, at, author, note)
           SELECT x, coalesce((SELECT max(seq) FROM sensing_alert_steps s WHERE s.alert_id = x), 0) + 1,
                  %s, %s, %s, %s
           FROM unnest(%s::bigint[]) AS x""", (step, at, author, note, list(alert_ids)))


def opened(conn, alert_ids, *, author: str, at: datetime) -> None:
    """What follows the insertion of new alerts (same transaction): their ``open`` step, the
    outbox messages for the rule's recipients, the notification of the stream."""
    add_steps(conn, alert_ids, "open", author=author, at=at)
    enqueue(conn, alert_ids)
    notify_changed(conn, alert_ids)


def close_many(conn, alert_ids, *, author: str, note: str, at: datetime) -> None:
    conn.execute("UPDATE sensing_alerts SET state = 'closed', closed_at = %s, updated_at = %s "
                 "WHERE alert_id = ANY(%s) AND state <> 'closed'", (at, at, list(alert_ids)))
    add_steps(conn, alert_ids, "closed", author=author, at=at, note=note)
    notify_changed(conn, alert_ids)


def open_alert(conn, *, device_id: str, rule_id: str, message: str, title: str | None = None,
               window_start: datetime | None = None, window_end: datetime | None = None,
               evidence: dict | None = None, now: datetime | None = None, author: str | None = None) -> dict | None:
    """Open one alert by hand (or from another component) for a device and rule; None when that
    device already has an active alert of that rule. Same steps, outbox and notification as the
    evaluator's."""
    import json

    with conn.transaction():
        rule = conn.execute("SELECT kind, severity, title FROM sensing_rules WHERE rule_id = %s", (rule_id,)).fetchone()
        if rule is None:
            raise AlertError(400, f"rule_id: {rule_id!r} does not exist; `geotwin sensing rules list` shows the rules")
        dev = conn.execute("SELECT community FROM sensing_devices WHERE device_id = %s", (device_id,)).fetchone()
        if dev is None:
            raise AlertError(400, f"device_id: {device_id!r} is not a registered device")
        now = now or conn.execute("SELECT now()").fetchone()[0]
        row = conn.execute(
            """INSERT INTO sensing_alerts (device_id, rule_id, kind, severity, state, title, message, opened_at,
                                           updated_at, window_start, window_end, evidence, community)
               VALUES (%s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s::jsonb, %s)
               ON CONFLICT (device_id, rule_id) WHERE state <> 'closed' DO NOTHING RETURNING alert_id""",
            (device_id, rule_id, rule[0], rule[1], title or rule[2], message, now, now, window_start, window_end,
             json.dumps(evidence or {}, ensure_ascii=False, default=str), dev[0])).fetchone()
        if row is None:
            return None
        opened(conn, [row[0]], author=author or f"rule:{rule_id}", at=now)
        return get(conn, row[0])


def step(conn, alert_id: int, step: str, *, author: str, note: str | None = None, now: datetime | None = None,
         allowed: tuple[str, ...] = PEOPLE_STEPS) -> dict:
    """Move an alert one step (checked against its state, under a row lock); returns the alert."""
    if step not in allowed:
        raise AlertError(400, f"step: {step!r} is not one of {', '.join(allowed)}")
    if not author or not author.strip():
        raise AlertError(400, "author: say who takes the step")
    note = note.strip() if isinstance(note, str) else None
    with conn.transaction():
        row = conn.execute("SELECT state FROM sensing_alerts WHERE alert_id = %s FOR UPDATE", (alert_id,)).fetchone()
        if row is None:
            raise AlertError(404, f"alert {alert_id} does not exist")
        state = row[0]
        if state not in FOLLOWS[step]:
            raise AlertError(409, f"alert {alert_id} is {state}: {step} may follow only "
                                  f"{' / '.join(FOLLOWS[step])}" + ("" if state != "closed" else " (it is closed)"))
        if step == "closed" and state != "visited" and not note:
            raise AlertError(400, f"note: closing alert {alert_id} before anyone visited needs a note saying why")
        now = now or conn.execute("SELECT now()").fetchone()[0]
        conn.execute("UPDATE sensing_alerts SET state = %s, updated_at = %s, "
                     "closed_at = CASE WHEN %s = 'closed' THEN %s END WHERE alert_id = %s",
                     (step, now, step, now, alert_id))
        add_steps(conn, [alert_id], step, author=author.strip(), at=now, note=note or None)
        notify_changed(conn, [alert_id])
    return get(conn, alert_id)


_ENQUEUE = """
INSERT INTO sensing_outbox (alert_id, channel, recipient_kind, recipient, payload)
SELECT a.alert_id, rc.channel, rc.kind, rc.recipient,
       jsonb_build_object(
           'alert_id', a.alert_id, 'device_id', a.device_id, 'rule_id', a.rule_id, 'kind', a.kind,
           'severity', a.severity, 'title', a.title, 'message', a.message, 'community', a.community,
           'address', d.address, 'opened_at', a.opened_at,
           'recipient', jsonb_build_object('kind', rc.kind, 'name', rc.name, 'address', rc.recipient),
           'text', format('【社区关爱】%%s：%%s', a.title, a.message))
FROM sensing_alerts a
JOIN sensing_rules r ON r.rule_id = a.rule_id
JOIN sensing_devices d ON d.device_id = a.device_id
CROSS JOIN LATERAL (
    SELECT 'sms' AS channel, 'person' AS kind, d.household #>> '{resident,phone}' AS recipient,
           d.household #>> '{resident,name}' AS name
    WHERE 'person' = ANY(r.notify) AND d.household #>> '{resident,phone}' IS NOT NULL
    UNION ALL
    SELECT 'sms', 'family', f ->> 'phone', f ->> 'name'
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(d.household -> 'family') = 'array'
                                   THEN d.household -> 'family' ELSE '[]'::jsonb END) AS f
    WHERE 'family' = ANY(r.notify) AND f ->> 'phone' IS NOT NULL
    UNION ALL
    SELECT 'webhook', 'community', 'community:' || a.community, a.community
    WHERE 'community' = ANY(r.notify) AND a.community IS NOT NULL
) rc
WHERE a.alert_id = ANY(%s::bigint[])
"""


def enqueue(conn, alert_ids) -> int:
    """Write the outbox messages of new alerts, one per recipient of the rule's ``notify`` list
    (see :mod:`sensing.notify`), in the caller's transaction. Returns the count."""
    return conn.execute(_ENQUEUE, (list(alert_ids),)).rowcount


# --- reading -------------------------------------------------------------------------------------

_SELECT = """
SELECT a.alert_id, a.device_id, a.rule_id, a.kind, a.severity, a.state, a.title, a.message, a.opened_at,
       a.updated_at, a.closed_at, a.window_start, a.window_end, a.evidence, a.community, d.address, d.building_id,
       d.type AS device_type, d.restricted, ST_X(d.geom) AS lon, ST_Y(d.geom) AS lat,
       (SELECT min(s.at) FROM sensing_alert_steps s WHERE s.alert_id = a.alert_id AND s.step = 'visited') AS visited_at
FROM sensing_alerts a
JOIN sensing_devices d ON d.device_id = a.device_id
"""


def _iso(t: datetime | None) -> str | None:
    return timepolicy.local(t).isoformat() if t is not None else None


def _shape(row: dict, steps: list[dict]) -> dict:
    visited = row.pop("visited_at")
    minutes = None if visited is None else round((visited - row["opened_at"]).total_seconds() / 60.0, 1)
    out = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items()}
    out["on_site_minutes"] = minutes
    out["target_met"] = None if minutes is None else minutes <= ON_SITE_TARGET_MINUTES
    out["steps"] = [{"seq": s["seq"], "step": s["step"], "at": _iso(s["at"]), "author": s["author"],
                     "note": s["note"]} for s in steps]
    return out


def _with_steps(conn, rows: list[dict]) -> list[dict]:
    ids = [r["alert_id"] for r in rows]
    by: dict[int, list] = {i: [] for i in ids}
    if ids:
        with conn.cursor(row_factory=dict_row) as cur:
            for s in cur.execute("SELECT alert_id, seq, step, at, author, note FROM sensing_alert_steps "
                                 "WHERE alert_id = ANY(%s) ORDER BY alert_id, seq", (ids,)):
                by[s["alert_id"]].append(s)
    return [_shape(dict(r), by[r["alert_id"]]) for r in rows]


def get(conn, alert_id: int, *, visible: tuple[str, dict] = ("true", {})) -> dict | None:
    """One alert with its steps, if it exists and ``visible`` (an SQL condition over ``d``,
    the device, with named parameters) holds; else None."""
    cond, params = visible
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_SELECT + f" WHERE a.alert_id = %(alert_id)s AND ({cond})",
                          {**params, "alert_id": alert_id}).fetchone()
    return _with_steps(conn, [row])[0] if row else None


def listing(conn, *, state: str | None = None, community: str | None = None, device: str | None = None,
            since: datetime | None = None, limit: int = 100, visible: tuple[str, dict] = ("true", {})) -> list[dict]:
    """Alerts, newest first. ``state``: one of STATES or ``active`` (not closed)."""
    cond, params = visible
    where = [f"({cond})"]
    args = dict(params)
    if state is not None:
        if state == "active":
            where.append("a.state <> 'closed'")
        elif state in STATES:
            where.append("a.state = %(state)s")
            args["state"] = state
        else:
            raise AlertError(400, f"state: {state!r} is not one of {', '.join(STATES)}, active")
    if community:
        where.append("a.community = %(community)s")
        args["community"] = community
    if device:
        where.append("a.device_id = %(device)s")
        args["device"] = device
    if since is not None:
        where.append("a.updated_at >= %(since)s")
        args["since"] = since
    if not 1 <= limit <= 10000:
        raise AlertError(400, f"limit: {limit} must be between 1 and 10000")
    args["limit"] = limit
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SELECT + " WHERE " + " AND ".join(where)
                           + " ORDER BY a.opened_at DESC, a.alert_id DESC LIMIT %(limit)s", args).fetchall()
    return _with_steps(conn, rows)
