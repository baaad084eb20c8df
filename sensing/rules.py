"""Alert rules as data (table ``sensing_rules``) and the evaluator.

A rule has a ``kind``, the device type and datastream (observed property name, e.g. 用水量) it
reads, ``params`` (checked by :func:`check_params`, defaults filled), a severity and the people
told (``notify``: person, family, community). The kinds:

``threshold``       the latest reading (within ``max_age_hours``, default the device's
                    ``expected_interval × offline_after``) compared with ``value`` by ``op``
                    (< <= > >= = !=); booleans (井盖开启) read as 1 / 0. Readings up to two
                    minutes after ``now`` count (device clocks run ahead).
``rate-of-change``  latest minus first reading within the last ``hours`` beyond ``max_delta``
                    (``direction`` rise | fall | any).
``no-data``         nothing from any of the device's datastreams within ``intervals`` (default the
                    device's ``offline_after``) × ``expected_interval``; devices that never reported
                    are "unknown", not offline. The only rule that closes its own alerts: when data
                    returns the active no-data alert is closed (author ``system``).
``inactivity``      less than ``min_total`` (m³) in the last ``hours`` (the pilot: 0.01 m³ in 12 h).
                    Guards: an announced absence overlapping the window (``sensing_absences``);
                    with ``baseline_guard`` a person whose baseline mean over those half-hours is
                    itself below ``min_total``; the device must have history older than the window
                    and still be reporting (otherwise it is a no-data case).
``continuous-use``  use (> ``min_per_slot``) in EVERY half-hour slot of the last ``hours`` whole
                    slots (the pilot: 24 h) — the quiet night slots included, so a heavy-cleaning
                    day (much use by day, a quiet night) is no leak.
``baseline``        the silence since the last use is unlikely for this person
                    (``sensing.baseline``: Π(1 − p̂) over the silent half-hours < ``alpha``, at least
                    ``min_hours``; only the last ``lookback_hours`` are read). Half-hours in which
                    the person never used water while the baseline was learned (their quiet
                    hours) are no evidence; announced absences suppress it.

:func:`evaluate` runs every enabled rule (or the given ones) for every device (or the given
ones) at ``now`` — one set-based statement per rule over ``sta_observations`` (index range scans
per stream), so the pilot's 200 households × 60 days evaluate in tens of milliseconds. Opening
is idempotent: the partial unique index allows one active alert per device and rule
(``ON CONFLICT DO NOTHING``), and a condition whose window began before the device's last
alert of that rule was closed does not reopen it (a closed alert means "seen to"; the condition
must arise anew). Opened alerts get their ``open`` step, their outbox messages and a
``NOTIFY sensing_alerts`` in the same transaction.

``now`` is a parameter everywhere: the demo evaluates its history at the reference time
(:func:`evaluate_history` replays time), the live worker uses the wall clock (:func:`on_batch`
after each ingested MQTT batch, :func:`run_periodic` for the time-based rules).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from sensing import alerts as alerts_mod
from sensing.baseline import SLOT, slot_start

log = logging.getLogger(__name__)

KINDS = ("threshold", "rate-of-change", "no-data", "inactivity", "continuous-use", "baseline")
SEVERITIES = ("info", "warning", "critical")
NOTIFY = ("person", "family", "community")
OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "=", "!=": "<>"}
DIRECTIONS = ("rise", "fall", "any")
ORIGIN = "timestamptz '2000-01-01 00:00+00'"


class RuleError(ValueError):
    """A bad rule or parameter: the message names it and says what to do."""


@dataclass
class Rule:
    rule_id: str
    kind: str
    device_type: str | None
    observed_property: str | None
    params: dict
    severity: str
    notify: list[str]
    enabled: bool
    title: str
    description: str
    updated_at: datetime | None = None
    updated_by: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return d


# --- parameters ----------------------------------------------------------------------------------

def _number(name, v, *, positive=False, minimum=None, maximum=None, integer=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise RuleError(f"params.{name}: {v!r} is not a number")
    if integer and int(v) != v:
        raise RuleError(f"params.{name}: {v!r} must be a whole number")
    if positive and v <= 0:
        raise RuleError(f"params.{name}: {v!r} must be greater than 0")
    if minimum is not None and v < minimum:
        raise RuleError(f"params.{name}: {v!r} must be at least {minimum}")
    if maximum is not None and v > maximum:
        raise RuleError(f"params.{name}: {v!r} must be at most {maximum}")
    return int(v) if integer else float(v)


def _hours(name, v):
    h = _number(name, v, positive=True, maximum=24 * 31)
    return h


#: kind → {param: (default or REQUIRED, checker)}
REQUIRED = object()
SPEC: dict[str, dict[str, tuple[Any, Any]]] = {
    "threshold": {
        "op": (REQUIRED, lambda n, v: v if v in OPS else (_ for _ in ()).throw(
            RuleError(f"params.op: {v!r} is not one of {' '.join(OPS)}"))),
        "value": (REQUIRED, lambda n, v: v if isinstance(v, bool) else _number(n, v)),
        "max_age_hours": (None, lambda n, v: None if v is None else _hours(n, v)),
    },
    "rate-of-change": {
        "hours": (1.0, _hours),
        "max_delta": (REQUIRED, lambda n, v: _number(n, v, positive=True)),
        "direction": ("any", lambda n, v: v if v in DIRECTIONS else (_ for _ in ()).throw(
            RuleError(f"params.direction: {v!r} is not one of {', '.join(DIRECTIONS)}"))),
    },
    "no-data": {
        "intervals": (None, lambda n, v: None if v is None else _number(n, v, positive=True, integer=True)),
    },
    "inactivity": {
        "hours": (12.0, _hours),
        "min_total": (0.01, lambda n, v: _number(n, v, positive=True)),
        "baseline_guard": (True, lambda n, v: v if isinstance(v, bool) else (_ for _ in ()).throw(
            RuleError(f"params.baseline_guard: {v!r} must be true or false"))),
    },
    "continuous-use": {
        "hours": (24.0, lambda n, v: _number(n, v, positive=True, maximum=24 * 7)),
        "min_per_slot": (0.0, lambda n, v: _number(n, v, minimum=0)),
    },
    "baseline": {
        "alpha": (0.001, lambda n, v: _number(n, v, positive=True, maximum=0.5)),
        "min_hours": (3.0, lambda n, v: _number(n, v, minimum=0, maximum=24 * 7)),
        "lookback_hours": (48.0, _hours),
        "min_use": (0.0, lambda n, v: _number(n, v, minimum=0)),
    },
}


def check_params(kind: str, params: dict | None) -> dict:
    """The parameters of a rule of this kind with defaults filled; RuleError naming a bad one."""
    if kind not in SPEC:
        raise RuleError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RuleError(f"params: give a JSON object, not {type(params).__name__}")
    spec = SPEC[kind]
    unknown = sorted(set(params) - set(spec) - {"title"})
    if unknown:
        raise RuleError(f"params.{unknown[0]}: not a parameter of a {kind} rule; known: {', '.join(spec)}")
    out = {}
    for name, (default, checker) in spec.items():
        if name in params:
            out[name] = checker(name, params[name])
        elif default is REQUIRED:
            raise RuleError(f"params.{name}: a {kind} rule needs it")
        else:
            out[name] = default
    if kind == "continuous-use" and (out["hours"] * 2) != int(out["hours"] * 2):
        raise RuleError(f"params.hours: {out['hours']} must be whole half-hours (e.g. 24 or 23.5)")
    return out


# --- the rule table ------------------------------------------------------------------------------

_COLUMNS = ("rule_id, kind, device_type, observed_property, params, severity, notify, enabled, title, "
            "description, updated_at, updated_by")


def load_rules(conn, *, enabled_only: bool = False, rule_ids: list[str] | None = None) -> list[Rule]:
    sql = f"SELECT {_COLUMNS} FROM sensing_rules WHERE true"
    args: list = []
    if enabled_only:
        sql += " AND enabled"
    if rule_ids is not None:
        sql += " AND rule_id = ANY(%s)"
        args.append(list(rule_ids))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql + " ORDER BY rule_id", args).fetchall()
    if rule_ids is not None:
        missing = sorted(set(rule_ids) - {r["rule_id"] for r in rows})
        if missing:
            raise RuleError(f"rule {missing[0]!r} does not exist; `geotwin sensing rules list` shows the rules")
    return [Rule(**r) for r in rows]


def get_rule(conn, rule_id: str) -> Rule:
    return load_rules(conn, rule_ids=[rule_id])[0]


def set_rule(conn, rule_id: str, *, author: str, kind: str | None = None, device_type: str | None = ...,
             observed_property: str | None = ..., params: dict | None = None, severity: str | None = None,
             notify: list[str] | None = None, enabled: bool | None = None, title: str | None = None,
             description: str | None = None, replace_params: bool = False) -> Rule:
    """Create or change a rule (given fields only; ``params`` are merged into the current ones
    unless ``replace_params``). Checked whole before anything is written."""
    import json
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", rule_id or ""):
        raise RuleError(f"rule_id: {rule_id!r} — use lower-case letters, digits, '-' and '_' (e.g. wm-inactivity)")
    existing = load_rules(conn, rule_ids=None)
    cur = next((r for r in existing if r.rule_id == rule_id), None)
    if cur is None:
        if kind is None:
            raise RuleError(f"rule {rule_id!r} is new: give its kind ({', '.join(KINDS)})")
        cur = Rule(rule_id=rule_id, kind=kind, device_type=None, observed_property=None, params={},
                   severity="warning", notify=["community"], enabled=True, title=title or rule_id, description="")
    new = Rule(**asdict(cur))
    if kind is not None:
        if kind != cur.kind and params is None:
            raise RuleError(f"kind: changing {cur.kind} to {kind} needs the new kind's params")
        new.kind = kind
    if device_type is not ...:
        new.device_type = device_type or None
    if observed_property is not ...:
        new.observed_property = observed_property or None
    if params is not None:
        if not isinstance(params, dict):
            raise RuleError(f"params: give a JSON object, not {type(params).__name__}")
        base = {} if (replace_params or new.kind != cur.kind) else dict(cur.params)
        new.params = {**base, **params}
    new.params = check_params(new.kind, new.params)
    if severity is not None:
        if severity not in SEVERITIES:
            raise RuleError(f"severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
        new.severity = severity
    if notify is not None:
        if not isinstance(notify, list) or not all(isinstance(n, str) and n in NOTIFY for n in notify):
            raise RuleError(f"notify: {notify!r} — a list of {', '.join(NOTIFY)}")
        new.notify = list(dict.fromkeys(notify))
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise RuleError(f"enabled: {enabled!r} must be true or false")
        new.enabled = enabled
    if title is not None:
        if not title.strip():
            raise RuleError("title: give the alert's title (Chinese), e.g. 长时间未用水")
        new.title = title.strip()
    if description is not None:
        new.description = description
    if new.kind != "no-data" and not new.observed_property:
        raise RuleError(f"observed_property: a {new.kind} rule reads one datastream; give its name (e.g. 用水量)")
    with conn.transaction():
        conn.execute(
            f"""INSERT INTO sensing_rules ({_COLUMNS})
                VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, now(), %s)
                ON CONFLICT (rule_id) DO UPDATE SET kind = excluded.kind, device_type = excluded.device_type,
                    observed_property = excluded.observed_property, params = excluded.params,
                    severity = excluded.severity, notify = excluded.notify, enabled = excluded.enabled,
                    title = excluded.title, description = excluded.description, updated_at = now(),
                    updated_by = excluded.updated_by""",
            (new.rule_id, new.kind, new.device_type, new.observed_property, json.dumps(new.params),
             new.severity, new.notify, new.enabled, new.title, new.description, author))
    return get_rule(conn, rule_id)


# --- the evaluator -------------------------------------------------------------------------------

_DEVS = """
devs AS (
    SELECT d.device_id, d.thing_id, d.community, coalesce(d.address, d.name, d.device_id) AS place,
           d.expected_interval, d.offline_after
    FROM sensing_devices d
    WHERE d.retired_at IS NULL AND d.thing_id IS NOT NULL
      AND (%(type)s::text IS NULL OR d.type = %(type)s::text)
      AND (%(ids)s::text[] IS NULL OR d.device_id = ANY(%(ids)s::text[]))
),
streams AS (
    SELECT DISTINCT ON (v.device_id) v.*, ds.id AS stream_id
    FROM devs v
    JOIN sta_datastreams ds ON ds.thing_id = v.thing_id
    JOIN sta_observed_properties op ON op.id = ds.observed_property_id
    WHERE ds.name = %(prop)s OR op.name = %(prop)s
    ORDER BY v.device_id, ds.id
)"""

_VALUE = """coalesce(o.result_number, CASE jsonb_typeof(o.result_json)
                 WHEN 'boolean' THEN CASE WHEN o.result_json = 'true'::jsonb THEN 1.0 ELSE 0.0 END
                 WHEN 'number' THEN (o.result_json #>> '{}')::float8 END)"""

_ABSENT = """EXISTS (SELECT 1 FROM sensing_absences ab WHERE ab.device_id = {dev}
                     AND ab.start_at < {t1} AND ab.end_at > {t0})"""


def _threshold_sql(rule: Rule) -> str:
    op = OPS[rule.params["op"]]
    return f"""
latest AS (
    SELECT s.device_id, s.community, s.place, o.t, o.v
    FROM streams s
    CROSS JOIN LATERAL (
        SELECT o.phenomenon_time_start AS t, {_VALUE} AS v
        FROM sta_observations o
        WHERE o.stream_id = s.stream_id AND o.phenomenon_time_start <= %(now)s + interval '2 minutes'
          AND o.phenomenon_time_start > %(now)s - coalesce(%(max_age_hours)s::float8 * interval '1 hour',
                                                           s.expected_interval * s.offline_after)
        ORDER BY o.phenomenon_time_start DESC LIMIT 1) o
),
cand AS (
    SELECT device_id, community, t AS window_start, t AS window_end,
           jsonb_build_object('value', v, 'at', t, 'op', %(op)s::text, 'threshold', %(value_json)s::jsonb) AS evidence,
           format('%%s：%%s %%s（规则：%%s %%s %%s）', place, %(prop)s::text,
                  CASE WHEN %(is_bool)s THEN (v = 1)::text ELSE round(v::numeric, 3)::text END,
                  %(prop)s::text, %(op)s::text, %(value_text)s::text) AS message
    FROM latest WHERE v IS NOT NULL AND v {op} %(value)s
)"""


def _rate_sql(rule: Rule) -> str:
    cond = {"rise": "(v1 - v0) > %(max_delta)s", "fall": "(v0 - v1) > %(max_delta)s",
            "any": "abs(v1 - v0) > %(max_delta)s"}[rule.params["direction"]]
    one = """SELECT o.phenomenon_time_start AS t, o.result_number AS v FROM sta_observations o
             WHERE o.stream_id = s.stream_id AND o.result_number IS NOT NULL
               AND o.phenomenon_time_start > %(now)s - %(hours)s * interval '1 hour'
               AND o.phenomenon_time_start <= %(now)s + interval '2 minutes'
             ORDER BY o.phenomenon_time_start {d} LIMIT 1"""
    return f"""
win AS (
    SELECT s.device_id, s.community, s.place, f.t AS t0, f.v AS v0, l.t AS t1, l.v AS v1
    FROM streams s
    CROSS JOIN LATERAL ({one.format(d="ASC")}) f
    CROSS JOIN LATERAL ({one.format(d="DESC")}) l
),
cand AS (
    SELECT device_id, community, t0 AS window_start, t1 AS window_end,
           jsonb_build_object('first', v0, 'first_at', t0, 'last', v1, 'last_at', t1, 'delta', v1 - v0,
                              'hours', %(hours)s, 'max_delta', %(max_delta)s) AS evidence,
           format('%%s：%%s 在 %%s 内由 %%s 变为 %%s（变化超过 %%s）', place, %(prop)s::text,
                  to_char(t1 - t0, 'HH24:MI'), round(v0::numeric, 3), round(v1::numeric, 3), %(max_delta)s) AS message
    FROM win WHERE t1 > t0 AND {cond}
)"""


_LAST_SEEN = """
last AS (
    SELECT v.device_id, v.community, v.place, v.expected_interval * coalesce(%(intervals)s::int, v.offline_after) AS grace,
           max(l.t) AS last_t
    FROM devs v
    JOIN sta_datastreams ds ON ds.thing_id = v.thing_id
    CROSS JOIN LATERAL (SELECT o.phenomenon_time_start AS t FROM sta_observations o
                        WHERE o.stream_id = ds.id AND o.phenomenon_time_start <= %(now)s
                        ORDER BY o.phenomenon_time_start DESC LIMIT 1) l
    GROUP BY 1, 2, 3, 4
)"""


def _nodata_sql(rule: Rule) -> str:
    return _LAST_SEEN + """,
cand AS (
    SELECT device_id, community, last_t AS window_start, %(now)s::timestamptz AS window_end,
           jsonb_build_object('last_seen', last_t, 'silent_hours', round((extract(epoch FROM %(now)s - last_t) / 3600)::numeric, 2),
                              'grace_hours', round((extract(epoch FROM grace) / 3600)::numeric, 2)) AS evidence,
           format('%%s：已 %%s 小时未收到数据（最后一次 %%s）', place,
                  round((extract(epoch FROM %(now)s - last_t) / 3600)::numeric, 1),
                  to_char(last_t AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI')) AS message
    FROM last WHERE last_t < %(now)s - grace
)"""


def _inactivity_sql(rule: Rule) -> str:
    absent = _ABSENT.format(dev="w.device_id", t1="%(now)s", t0="%(now)s - %(hours)s * interval '1 hour'")
    return f"""
win AS (
    SELECT s.device_id, s.community, s.place, sum(coalesce(o.result_number, 0)) AS total, count(*) AS readings
    FROM streams s
    JOIN sta_stream_stats st ON st.stream_id = s.stream_id
                            AND st.phenomenon_time_start <= %(now)s - %(hours)s * interval '1 hour'
    JOIN sta_observations o ON o.stream_id = s.stream_id
                           AND o.phenomenon_time_start >= %(now)s - %(hours)s * interval '1 hour'
                           AND o.phenomenon_time_start < %(now)s
    GROUP BY s.device_id, s.community, s.place, s.expected_interval, s.offline_after
    HAVING sum(coalesce(o.result_number, 0)) < %(min_total)s
       AND max(o.phenomenon_time_start) >= %(now)s - s.expected_interval * s.offline_after
),
cand AS (
    SELECT w.device_id, w.community, %(now)s - %(hours)s * interval '1 hour' AS window_start,
           %(now)s::timestamptz AS window_end,
           jsonb_build_object('total', w.total, 'readings', w.readings, 'hours', %(hours)s,
                              'min_total', %(min_total)s, 'baseline_expected', e.expected) AS evidence,
           format('%%s：%%s 小时内用水 %%s m³（低于 %%s m³）', w.place, %(hours)s, round(w.total::numeric, 4),
                  %(min_total)s) AS message
    FROM win w
    LEFT JOIN LATERAL (
        SELECT sum(b.mean) AS expected, count(*) AS slots
        FROM generate_series(date_bin('30 minutes', %(now)s - %(hours)s * interval '1 hour', {ORIGIN}),
                             %(now)s - interval '30 minutes', interval '30 minutes') g
        JOIN sensing_baselines b ON b.device_id = w.device_id AND b.slot = sensing_slot_of_week(g)) e ON true
    WHERE NOT {absent}
      AND NOT (%(baseline_guard)s AND coalesce(e.slots, 0) > 0 AND e.expected < %(min_total)s)
)"""


def _continuous_sql(rule: Rule) -> str:
    return f"""
bins AS (
    SELECT s.device_id, s.community, s.place,
           date_bin('30 minutes', o.phenomenon_time_start, {ORIGIN}) AS b, sum(coalesce(o.result_number, 0)) AS vol
    FROM streams s
    JOIN sta_observations o ON o.stream_id = s.stream_id
                           AND o.phenomenon_time_start >= %(ws)s AND o.phenomenon_time_start < %(we)s
    GROUP BY 1, 2, 3, 4
),
cand AS (
    SELECT x.device_id, x.community, %(ws)s::timestamptz AS window_start, %(we)s::timestamptz AS window_end,
           jsonb_build_object('slots', count(*), 'total', sum(x.vol), 'min_slot', min(x.vol),
                              'quiet_slots_with_use', count(*) FILTER (WHERE bl.p_use < 0.25)) AS evidence,
           format('%%s：连续 %%s 小时每个半小时都有用水，共 %%s m³（最少的半小时 %%s m³）', x.place, %(hours)s,
                  round(sum(x.vol)::numeric, 3), round(min(x.vol)::numeric, 4)) AS message
    FROM bins x
    LEFT JOIN sensing_baselines bl ON bl.device_id = x.device_id AND bl.slot = sensing_slot_of_week(x.b)
    GROUP BY x.device_id, x.community, x.place
    HAVING count(*) FILTER (WHERE x.vol > %(min_per_slot)s) = %(nslots)s
)"""


def _baseline_sql(rule: Rule) -> str:
    absent = _ABSENT.format(dev="l.device_id", t1="%(now)s", t0="l.silent_since")
    return f"""
lu AS (
    SELECT s.device_id, s.community, s.place, s.stream_id, u.last_use,
           coalesce(u.last_use + interval '30 minutes', %(now)s - %(lookback_hours)s * interval '1 hour') AS silent_since
    FROM streams s
    JOIN sta_stream_stats st ON st.stream_id = s.stream_id
    CROSS JOIN LATERAL (
        SELECT max(o.phenomenon_time_start) AS last_use FROM sta_observations o
        WHERE o.stream_id = s.stream_id AND o.result_number > %(min_use)s
          AND o.phenomenon_time_start > %(now)s - %(lookback_hours)s * interval '1 hour'
          AND o.phenomenon_time_start < %(now)s) u
    WHERE EXISTS (SELECT 1 FROM sensing_baselines b WHERE b.device_id = s.device_id)
      AND st.phenomenon_time_start <= coalesce(u.last_use, %(now)s - %(lookback_hours)s * interval '1 hour')
),
silent AS (
    SELECT DISTINCT l.device_id, date_bin('30 minutes', o.phenomenon_time_start, {ORIGIN}) AS t
    FROM lu l
    JOIN sta_observations o ON o.stream_id = l.stream_id AND o.result_number IS NOT NULL
                           AND o.phenomenon_time_start >= l.silent_since AND o.phenomenon_time_start < %(now)s
),
score AS (
    SELECT si.device_id, count(*) AS slots, max(si.t) AS last_t,
           sum(CASE WHEN b.uses > 0 THEN ln(1.0 - (b.uses + 0.5) / (b.weeks + 1.0)) ELSE 0 END) AS logp
    FROM silent si
    JOIN sensing_baselines b ON b.device_id = si.device_id AND b.slot = sensing_slot_of_week(si.t)
    GROUP BY si.device_id
),
cand AS (
    SELECT l.device_id, l.community, l.silent_since AS window_start, %(now)s::timestamptz AS window_end,
           jsonb_build_object('last_use', l.last_use, 'silent_since', l.silent_since, 'silent_slots', sc.slots,
                              'probability', exp(sc.logp), 'alpha', %(alpha)s,
                              'silent_hours', round((extract(epoch FROM %(now)s - l.silent_since) / 3600)::numeric, 2)) AS evidence,
           format('%%s：已 %%s 小时未用水；按本人近几周的用水习惯，这段时间不用水的概率约 %%s', l.place,
                  round((extract(epoch FROM %(now)s - l.silent_since) / 3600)::numeric, 1),
                  btrim(to_char(exp(sc.logp), '9.9EEEE'))) AS message
    FROM lu l JOIN score sc USING (device_id)
    WHERE sc.logp < ln(%(alpha)s)
      AND %(now)s - l.silent_since >= %(min_hours)s * interval '1 hour'
      AND NOT {absent}
)"""


_BUILDERS = {"threshold": _threshold_sql, "rate-of-change": _rate_sql, "no-data": _nodata_sql,
             "inactivity": _inactivity_sql, "continuous-use": _continuous_sql, "baseline": _baseline_sql}

_OPEN = """
INSERT INTO sensing_alerts (device_id, rule_id, kind, severity, state, title, message, opened_at, updated_at,
                            window_start, window_end, evidence, community)
SELECT c.device_id, %(rule_id)s, %(kind)s, %(severity)s, 'open', %(title)s, c.message, %(now)s, %(now)s,
       c.window_start, c.window_end, c.evidence, c.community
FROM cand c
WHERE NOT EXISTS (SELECT 1 FROM sensing_alerts x WHERE x.device_id = c.device_id AND x.rule_id = %(rule_id)s
                                                    AND x.closed_at >= c.window_start)
ORDER BY c.device_id
ON CONFLICT (device_id, rule_id) WHERE state <> 'closed' DO NOTHING
RETURNING alert_id, device_id, rule_id, kind, severity, state, title, message, opened_at, window_start, window_end,
          evidence, community
"""


def _args(rule: Rule, now: datetime, device_ids) -> dict:
    p = rule.params
    args = {"type": rule.device_type, "ids": list(device_ids) if device_ids is not None else None,
            "prop": rule.observed_property or "", "now": now, "rule_id": rule.rule_id, "kind": rule.kind,
            "severity": rule.severity, "title": p.get("title") or rule.title, **p}
    if rule.kind == "threshold":
        import json

        v = p["value"]
        args.update(value=float(v), value_json=json.dumps(v), is_bool=isinstance(v, bool),
                    value_text=("true" if v else "false") if isinstance(v, bool) else f"{v:g}")
    elif rule.kind == "continuous-use":
        we = slot_start(now)
        args.update(we=we, ws=we - timedelta(hours=p["hours"]), nslots=round(p["hours"] * 2))
    return args


def _now(conn, now: datetime | None) -> datetime:
    if now is None:  # the wall clock, not the start of the caller's transaction
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]
    if now.tzinfo is None:
        raise RuleError("now: give an aware datetime (naive times are ambiguous)")
    return now


def evaluate(conn, *, now: datetime | None = None, device_ids: list[str] | None = None,
             rule_ids: list[str] | None = None) -> list[dict]:
    """Run the enabled rules (or ``rule_ids``, enabled or not) for ``device_ids`` (default: all) at
    ``now`` (default: the database's clock); open the alerts found. Returns the alerts opened
    (dicts). Its own transaction (a savepoint inside the caller's)."""
    now = _now(conn, now)
    rules = load_rules(conn, enabled_only=rule_ids is None, rule_ids=rule_ids)
    if device_ids is not None and not device_ids:
        return []
    opened: list[dict] = []
    with conn.transaction():
        for rule in rules:
            params = check_params(rule.kind, rule.params)
            rule.params = {**params, **({"title": rule.params["title"]} if "title" in rule.params else {})}
            args = _args(rule, now, device_ids)
            body = _BUILDERS[rule.kind](rule)
            with conn.cursor(row_factory=dict_row) as cur:
                if rule.kind == "no-data":
                    _resolve_no_data(conn, rule, args, now)
                rows = cur.execute("WITH " + _DEVS + "," + body + _OPEN, args).fetchall()
            if rows:
                alerts_mod.opened(conn, [r["alert_id"] for r in rows], author=f"rule:{rule.rule_id}", at=now)
                opened.extend(rows)
    return opened


def _resolve_no_data(conn, rule: Rule, args: dict, now: datetime) -> list[int]:
    """Close the active no-data alerts of devices that report again (author ``system``)."""
    ids = [r[0] for r in conn.execute(
        "WITH " + _DEVS + "," + _LAST_SEEN + """
        SELECT a.alert_id FROM sensing_alerts a JOIN last l ON l.device_id = a.device_id
        WHERE a.rule_id = %(rule_id)s AND a.state <> 'closed' AND l.last_t > a.window_start
          AND l.last_t >= %(now)s - l.grace
        ORDER BY a.alert_id FOR UPDATE OF a""", args).fetchall()]
    if ids:
        alerts_mod.close_many(conn, ids, author="system", note="数据恢复，自动关闭 / data returned", at=now)
    return ids


def evaluate_history(conn, start: datetime, end: datetime, step: timedelta = SLOT, *,
                     device_ids: list[str] | None = None, rule_ids: list[str] | None = None) -> list[dict]:
    """Replay time: :func:`evaluate` at start, start + step, … ≤ end (each alert opened at the
    evaluation time that found it first). Returns every alert opened, in time order."""
    if start.tzinfo is None or end.tzinfo is None:
        raise RuleError("evaluate_history: give aware datetimes (naive times are ambiguous)")
    if step <= timedelta(0):
        raise RuleError(f"step: {step} must be positive")
    if end < start:
        raise RuleError(f"end {end.isoformat()} is before start {start.isoformat()}")
    out: list[dict] = []
    t = start
    while t <= end:
        out.extend(evaluate(conn, now=t, device_ids=device_ids, rule_ids=rule_ids))
        t += step
    return out


# --- live: after each MQTT batch, and periodically ----------------------------------------------

def devices_of_streams(conn, stream_ids) -> list[str]:
    return [r[0] for r in conn.execute(
        """SELECT DISTINCT d.device_id FROM sta_datastreams ds JOIN sensing_devices d ON d.thing_id = ds.thing_id
           WHERE ds.id = ANY(%s::bigint[]) AND d.retired_at IS NULL ORDER BY 1""", (list(stream_ids),)).fetchall()]


def on_batch(conn, stream_ids) -> list[dict]:
    """The MQTT worker's after-batch hook: evaluate the rules for the devices whose streams the
    committed batch touched (wall clock). Errors are logged, never raised into the worker (the
    batch is stored already; the periodic run catches up)."""
    try:
        device_ids = devices_of_streams(conn, stream_ids)
        if not device_ids:
            if not conn.autocommit:
                conn.commit()
            return []
        opened = evaluate(conn, device_ids=device_ids)
        if not conn.autocommit:
            conn.commit()
        return opened
    except Exception:  # the worker must go on ingesting
        log.exception("sensing rules: evaluation after an MQTT batch failed (streams %s)", list(stream_ids)[:20])
        try:
            if not conn.autocommit:
                conn.rollback()
        except Exception as exc:
            log.warning("sensing rules: rollback after the failed evaluation failed too: %s", exc)
        return []


def install_worker_hooks() -> None:
    """Register :func:`on_batch` with the MQTT ingestion worker (idempotent)."""
    from sensing.mqtt import worker

    if on_batch not in worker.after_batch_hooks:
        worker.after_batch_hooks.append(on_batch)


def run_periodic(settings, interval_s: float, stop_event: threading.Event, *, notifiers=None,
                 learn_every_s: float = 24 * 3600, weeks: int = 4) -> None:
    """Evaluate every rule every ``interval_s`` seconds (the time-based rules — no-data,
    inactivity, baseline — need it), relearn the baselines every ``learn_every_s``, and deliver
    the outbox through ``notifiers`` ({channel: Notifier}) when given. Runs until ``stop_event``
    is set; a lost database connection is retried at the next tick."""
    from sensing import baseline, notify
    from spatial_api import db

    if interval_s <= 0:
        raise RuleError(f"interval: {interval_s} must be positive seconds")
    last_learn = None
    while not stop_event.is_set():
        try:
            with db.connect(settings) as conn:
                wall = conn.execute("SELECT now()").fetchone()[0]
                if last_learn is None or (wall - last_learn).total_seconds() >= learn_every_s:
                    baseline.learn(conn, weeks=weeks, now=wall)
                    conn.commit()
                    last_learn = wall
                opened = evaluate(conn)
                conn.commit()
                if opened:
                    log.info("sensing rules: %d alert(s) opened", len(opened))
                if notifiers:
                    notify.dispatch(conn, notifiers)
                    conn.commit()
        except Exception:  # keep running; the next tick retries
            log.exception("sensing rules: periodic evaluation failed")
        stop_event.wait(interval_s)
