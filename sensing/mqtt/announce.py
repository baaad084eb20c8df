"""The announcer (``geotwin mqtt notifier``): STA's MQTT notifications of the Observations the
ingestion workers store, published by a process of its own instead of inside the workers.

Why a process of its own: a worker that announces what it stores publishes three packets per
observation (``v1.1/Datastreams(<id>)/Observations``, ``v1.1/Observations``,
``v1.1/FeaturesOfInterest(<id>)/Observations``) with paho's per-packet Python work on the same
core that reads and acknowledges the devices' packets — it cut the worker's rate by two thirds
(docs/benchmarks.md). Workers started with ``announce`` instead end each batch's transaction with
``pg_notify('sta_observations_stored', …)`` naming the ids they inserted (runs of consecutive ids
and the batch's phenomenonTime range, for partition pruning; :func:`sensing.mqtt.worker.announce_payloads`).
NOTIFY is transactional: it is delivered at commit and never for a batch rolled back, so the
announcer publishes exactly the committed rows, each once (a duplicate refused by the unique index
is not in the ids). This process LISTENs, reads those rows (one query per notification, by the
index on ``id``) and publishes each as the entity JSON the HTTP API serves
(:func:`sensing.mqtt.worker.entity_json`), with the user property ``geotwin: notification`` that the
workers skip.

QoS: 0 by default (``--qos 1`` for subscribers that must not miss one over a network blip; it
costs a PUBACK per packet here and in the broker). A persistent subscriber at QoS 1 still gets
QoS 0 notifications only while connected (MQTT delivers at the lower of the two) — the data is in
the database, a subscriber that was away reads what it missed over HTTP (``$filter=id gt …``).

What a gap in the announcer loses: NOTIFY is not queued for a listener that is not connected. On
start, and after a lost database connection, the announcer catches up: it remembers the highest
id it announced (``<mqtt home>/announcer-<schema>.json``, written every second) and, after LISTEN,
publishes the rows with a greater id (by the index on ``id``; at most ``CATCH_UP_ROWS``); ids it
announced recently are remembered so that a row named by both the catch-up and a notification is
published once. Not covered: a row committed during the gap with an id *below* the highest
announced (workers' ids interleave: a batch that committed after a later-numbered one) — a window
of one batch per worker; subscribers that must see every row read them over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path

import psycopg

from sensing.mqtt.broker import client as make_client
from sensing.mqtt.broker import connect as mqtt_connect
from sensing.mqtt.select import ANNOUNCE_FILTER, SelectTopics
from sensing.mqtt.worker import (
    ANNOUNCE_CHANNEL,
    STAGING_COLUMNS,
    entity_json,
    notification_payload,
    notification_topics,
    notify_properties,
)
from spatial_api.config import Settings, get_settings

log = logging.getLogger("geotwin.sensing.mqtt")

#: At most this many rows stored while the announcer was not listening are announced on its return.
CATCH_UP_ROWS = 200_000
#: Ids announced recently, remembered to skip what the catch-up and the notifications both name.
RECENT = 500_000

_COLS = ", ".join(f"o.{c}" for c in STAGING_COLUMNS[1:])
SELECT = (f"SELECT o.id, {_COLS} FROM sta_observations o "
          "JOIN unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) ON o.id BETWEEN r.lo AND r.hi "
          "WHERE o.phenomenon_time_start BETWEEN %s AND %s ORDER BY o.id")


class Announcer:
    """LISTEN for committed batches, publish their Observations. :meth:`run` blocks until
    :meth:`stop`; :meth:`start` runs it in a thread (tests)."""

    def __init__(self, settings: Settings | None = None, *, qos: int = 0, client_id: str | None = None):
        self.settings = settings or get_settings()
        self.qos = qos
        self.client_id = client_id or f"geotwin-announcer-{os.getpid()}"
        self.published = 0       # observations announced
        self.batches = 0
        self.caught_up = 0       # of which found by the catch-up
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._recent: set[int] = set()
        self._order: deque[int] = deque()
        self._high = 0
        self._saved_high = 0
        self._saved_at = 0.0
        self._multi: set[int] = set()
        self._multi_at = 0.0
        self.client = None
        self.schema: str | None = None
        #: the $select filters subscribers use (sensing.mqtt.select)
        self.selects = SelectTopics()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Announcer:
        self._thread = threading.Thread(target=self.run, name="mqtt-announcer", daemon=True)
        self._thread.start()
        return self

    def wait_listening(self, timeout: float = 30) -> bool:
        return self._listening.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def state_file(self) -> Path:
        return Path(self.settings.mqtt_home) / f"announcer-{self.settings.db_schema}.json"

    def _load_high(self) -> int:
        try:
            return int(json.loads(self.state_file.read_text())["high"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_high(self, force: bool = False) -> None:
        if self._high == self._saved_high or (not force and time.monotonic() - self._saved_at < 1):
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"high": self._high}) + "\n")
        os.replace(tmp, self.state_file)
        self._saved_high, self._saved_at = self._high, time.monotonic()

    def run(self) -> None:
        self.client = make_client(self.settings, self.client_id, inflight=0)
        # the broker plugin's $select announcements (retained), subscribed on every connect
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(ANNOUNCE_FILTER, 0)
        self.client.on_message = lambda c, u, msg: self.selects.add(msg.topic, msg.payload)
        mqtt_connect(self.client, blocking=False)  # paho reconnects by itself; QoS 0 is dropped meanwhile
        self.client.loop_start()
        self._high = self._saved_high = self._load_high()
        delay = 0.5
        try:
            while not self._stop.is_set():
                try:
                    self._listen()
                    delay = 0.5
                except psycopg.OperationalError as exc:
                    self._listening.clear()
                    log.warning("mqtt announcer: database unavailable (%s); retrying in %.1f s",
                                str(exc).strip()[:200], delay)
                    self._stop.wait(delay)
                    delay = min(5.0, delay * 2)
        finally:
            self._save_high(force=True)
            self.client.disconnect()
            self.client.loop_stop()

    # -- database side -------------------------------------------------------------------------
    def _listen(self) -> None:
        from spatial_api import db

        with db.connect(self.settings, autocommit=True) as conn:
            conn.execute("SET timezone = 'UTC'")
            self.schema = conn.execute("SELECT current_schema()").fetchone()[0]
            conn.execute(f"LISTEN {ANNOUNCE_CHANNEL}")
            self._catch_up(conn)  # after LISTEN: what commits from now on is notified, what came before is read
            self._listening.set()
            while not self._stop.is_set():
                # collected first: the connection is locked while notifies() runs (no query inside)
                got = [n.payload for n in conn.notifies(timeout=0.5, stop_after=1)]
                while got:
                    for payload in got:
                        self._on_notify(conn, payload)
                    got = [n.payload for n in conn.notifies(timeout=0)]  # what queued meanwhile
                self._save_high()

    def _catch_up(self, conn) -> None:
        if self._high == 0:  # first run: nothing announced yet, start from now
            row = conn.execute("SELECT max(id) FROM sta_observations").fetchone()
            self._high = row[0] or 0
            self._save_high(force=True)
            return
        rows = conn.execute(
            f"SELECT o.id, {_COLS} FROM sta_observations o WHERE o.id > %s ORDER BY o.id LIMIT %s",
            (self._high, CATCH_UP_ROWS)).fetchall()
        if rows:
            log.info("mqtt announcer: %d observation(s) stored while it was not listening", len(rows))
            self.caught_up += self._publish(conn, rows)

    def _on_notify(self, conn, payload: str) -> None:
        try:
            msg = json.loads(payload)
            if msg.get("s") != self.schema:
                return  # another schema's worker on the same database
            lo, hi = zip(*msg["r"], strict=True)
            t0, t1 = (datetime.fromisoformat(t) for t in msg["t"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mqtt announcer: a notification it cannot read (%s): %.200s", exc, payload)
            return
        rows = conn.execute(SELECT, (list(lo), list(hi), t0, t1)).fetchall()
        self.batches += 1
        self._publish(conn, rows)

    def _multi_streams(self, conn, ids: set[int]) -> set[int]:
        if time.monotonic() - self._multi_at > 60:
            self._multi = {i for (i,) in conn.execute("SELECT id FROM sta_multi_datastreams")}
            self._multi_at = time.monotonic()
        return self._multi & ids

    def _publish(self, conn, rows: list[tuple]) -> int:
        rows = [r for r in rows if r[0] not in self._recent]
        if not rows:
            return 0
        multi = self._multi_streams(conn, {r[1] for r in rows})
        props, publish, qos, base = notify_properties(), self.client.publish, self.qos, self.settings.public_url
        for row in rows:
            kind = "MultiDatastreams" if row[1] in multi else "Datastreams"
            payload = notification_payload(base, row)
            topics = notification_topics(kind, row)
            for topic in topics:
                publish(topic, payload, qos, properties=props)
            if self.selects:
                entity = entity_json(base, row)
                for topic in topics:
                    for vt, v in self.selects.variants(topic, entity):
                        publish(vt, json.dumps(v, ensure_ascii=False, default=str), qos, properties=props)
            self._remember(row[0])
        self.published += len(rows)
        return len(rows)

    def _remember(self, oid: int) -> None:
        self._recent.add(oid)
        self._order.append(oid)
        if len(self._order) > RECENT:
            self._recent.discard(self._order.popleft())
        self._high = max(self._high, oid)


def run_announcer(settings: Settings | None = None, **options) -> Announcer:
    """Start an announcer in a background thread of this process (tests); ``stop()`` it."""
    return Announcer(settings, **options).start()


__all__ = ["Announcer", "run_announcer"]
