"""Notifications: an outbox table, a dispatcher with retries, notifiers (a webhook; an SMS gateway
plugs in the same way).

Opening an alert writes one ``sensing_outbox`` row per recipient in the alert's transaction
(:func:`enqueue`): the rule's ``notify`` list picks them —

- ``person``: the resident (``sensing_devices.household.resident.phone``), channel ``sms``;
- ``family``: every ``household.family[].phone``, channel ``sms``;
- ``community``: the device's community (recipient ``community:<name>``), channel ``webhook``
  (the community's duty system).

:func:`dispatch` delivers pending rows through ``{channel: Notifier}``: each row is locked
(``FOR UPDATE SKIP LOCKED``, so dispatchers in several processes never send a message twice at
once), sent, and marked ``sent_at`` — or its error kept in ``last_error`` with the next attempt
after an exponential backoff (30 s, 1 min, 2 min … at most an hour; ``max_attempts`` then it
waits for an operator). When every message of an alert still ``open`` has been sent, the alert
steps to ``notified`` (author ``notifier``). Delivery is at least once: a crash between the send
and the commit repeats that one message.

A :class:`Notifier` is anything with ``send(message: dict) -> None`` that raises on failure.
:class:`WebhookNotifier` POSTs the message as JSON (UTF-8) and fails on a non-2xx answer or a
network error. Configuration from the environment (:func:`notifiers_from_env`):
``GEOTWIN_SENSING_WEBHOOK_URL`` (channel ``webhook``) and ``GEOTWIN_SENSING_SMS_URL`` (channel
``sms``: the SMS gateway's HTTP endpoint).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sensing import alerts

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 3600.0


class Notifier(Protocol):
    def send(self, message: dict) -> None:  # raise on failure
        ...


class DeliveryError(RuntimeError):
    pass


class WebhookNotifier:
    """POST each message as JSON to ``url``; a non-2xx answer or a network error raises."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {url!r}: give an http:// or https:// URL")
        self.url, self.timeout, self.headers = url, timeout, dict(headers or {})

    def send(self, message: dict) -> None:
        import httpx

        body = json.dumps(message, ensure_ascii=False, default=str).encode()
        try:
            r = httpx.post(self.url, content=body, timeout=self.timeout,
                           headers={"Content-Type": "application/json; charset=utf-8", **self.headers})
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {self.url}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= r.status_code < 300:
            raise DeliveryError(f"POST {self.url}: HTTP {r.status_code} {r.text[:200]}")

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.url!r})"


def notifiers_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Notifier]:
    env = os.environ if environ is None else environ
    out: dict[str, Notifier] = {}
    if env.get("GEOTWIN_SENSING_WEBHOOK_URL"):
        out["webhook"] = WebhookNotifier(env["GEOTWIN_SENSING_WEBHOOK_URL"])
    if env.get("GEOTWIN_SENSING_SMS_URL"):
        out["sms"] = WebhookNotifier(env["GEOTWIN_SENSING_SMS_URL"])
    return out


def enqueue(conn, alert_ids) -> int:
    """Write the outbox messages of new alerts (the caller's transaction; done by
    :func:`sensing.alerts.opened`). Returns the count."""
    return alerts.enqueue(conn, alert_ids)


def dispatch(conn, notifiers: Mapping[str, Notifier], *, limit: int = 1000, max_attempts: int = 8,
             now: datetime | None = None, alert_ids: list[int] | None = None) -> dict:
    """Deliver up to ``limit`` due messages of the channels in ``notifiers`` (of ``alert_ids``
    only, when given); one transaction per message. ``now`` (default: the database clock) decides what is due and when a failed message
    is tried again. Returns {"sent", "failed", "notified": [alert ids moved to notified]}."""
    channels = sorted(notifiers)
    sent = failed = 0
    notified: list[int] = []
    seen: set[int] = set()
    for _ in range(limit):
        with conn.transaction():
            t = now or conn.execute("SELECT now()").fetchone()[0]
            row = conn.execute(
                """SELECT id, alert_id, channel, recipient, recipient_kind, payload, attempts FROM sensing_outbox
                   WHERE sent_at IS NULL AND next_attempt_at <= %s AND channel = ANY(%s) AND attempts < %s
                     AND NOT (id = ANY(%s::bigint[]))
                     AND (%s::bigint[] IS NULL OR alert_id = ANY(%s::bigint[]))
                   ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                (t, channels, max_attempts, list(seen), alert_ids, alert_ids)).fetchone()
            if row is None:
                break
            oid, alert_id, channel, recipient, kind, payload, attempts = row
            seen.add(oid)
            message = {**payload, "channel": channel, "recipient": payload.get("recipient") or
                       {"kind": kind, "address": recipient}, "outbox_id": oid}
            try:
                notifiers[channel].send(message)
            except Exception as exc:  # any failure of a notifier is kept and retried
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** attempts))
                conn.execute("UPDATE sensing_outbox SET attempts = attempts + 1, last_error = %s, "
                             "next_attempt_at = %s WHERE id = %s",
                             (f"{type(exc).__name__}: {exc}"[:1000], t + timedelta(seconds=delay), oid))
                failed += 1
                log.warning("sensing notify: outbox %s (%s → %s) failed: %s", oid, channel, recipient, exc)
                continue
            conn.execute("UPDATE sensing_outbox SET attempts = attempts + 1, sent_at = %s, last_error = NULL "
                         "WHERE id = %s", (t, oid))
            sent += 1
            done = conn.execute(
                """SELECT a.state = 'open' AND NOT EXISTS (SELECT 1 FROM sensing_outbox o
                                                          WHERE o.alert_id = a.alert_id AND o.sent_at IS NULL)
                   FROM sensing_alerts a WHERE a.alert_id = %s FOR UPDATE""", (alert_id,)).fetchone()
            if done and done[0]:
                conn.execute("UPDATE sensing_alerts SET state = 'notified', updated_at = %s WHERE alert_id = %s",
                             (t, alert_id))
                alerts.add_steps(conn, [alert_id], "notified", author="notifier", at=t,
                                 note=_summary(conn, alert_id))
                alerts.notify_changed(conn, [alert_id])
                notified.append(alert_id)
    return {"sent": sent, "failed": failed, "notified": notified}


def _summary(conn, alert_id: int) -> str:
    rows = conn.execute("SELECT recipient_kind, count(*) FROM sensing_outbox WHERE alert_id = %s "
                        "GROUP BY 1 ORDER BY 1", (alert_id,)).fetchall()
    names = {"person": "本人", "family": "家属", "community": "社区"}
    return "已通知 " + "、".join(f"{names.get(k, k)} {n}" for k, n in rows)


def pending(conn) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, alert_id, channel, recipient_kind, recipient, attempts, next_attempt_at, "
                           "last_error FROM sensing_outbox WHERE sent_at IS NULL ORDER BY id").fetchall()
