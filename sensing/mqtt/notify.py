"""STA's MQTT extension, receive side (OGC 18-088 §14.2.1), for what the HTTP API writes.

:func:`install` (called by ``sensing/room.py``) sets ``app.state.mqtt_endpoints`` (for the landing
page's ``serverSettings``) and subscribes a :class:`Notifier` to :mod:`sensing.sta.events`. The
notifier publishes, from a thread of its own (a writer never waits for the broker), each created or
updated entity's JSON (as the writer serves it) to the topics a subscriber may use:

- created: ``v1.1/<Set>`` and the navigation topics of the collections it joined —
  ``v1.1/Datastreams(<id>)/Observations``, ``v1.1/FeaturesOfInterest(<id>)/Observations``,
  ``v1.1/Things(<id>)/Datastreams``, ``v1.1/Locations(<id>)/Things``… (every navigation property of
  the entity whose inverse is a to-many collection; the related ids are read from the database
  with the model's navigation conditions, ``sensing.sta.model``);
- updated: ``v1.1/<Set>``, ``v1.1/<Set>(<id>)`` (the whole entity) and ``v1.1/<Set>(<id>)/<property>``
  for each changed property (payload ``{"<property>": value}``, as FROST-Server does);
- deleted: nothing (the standard defines no delete notification).

(Which topics: 18-088 §14.2.1 — entity set, entity, property and navigation-collection topics.)

Observations created over MQTT are announced by the ingestion worker itself (``sensing.mqtt.worker``),
with the same user property ``geotwin: notification`` that keeps the worker from taking a
notification for a create request.

``$select`` in topics (``v1.1/Things?$select=name``): the same entity with the selected
properties, published to that topic too, for every select list a subscriber asked for — the
broker's plugin announces them (:mod:`sensing.mqtt.select`). ``$expand``/``$filter`` in topics are
not part of STA 1.1's MQTT extension.

Notifications are published at QoS 1 (a persistent subscriber gets them after an absence). When
the broker cannot be reached, the app works on: the notifier logs, paho retries the connection
in the background and sends up to ``MAX_HELD`` notifications held meanwhile once it is back;
beyond that they are dropped (counted in ``dropped``) — the data itself is in the database,
subscribers catch up over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import threading

from sensing.mqtt.broker import TOPIC_ROOT, endpoint
from sensing.mqtt.broker import client as make_client
from sensing.mqtt.broker import connect as mqtt_connect
from sensing.mqtt.select import ANNOUNCE_FILTER, SelectTopics
from sensing.mqtt.worker import notify_properties
from spatial_api.config import Settings

log = logging.getLogger("geotwin.sensing.mqtt")

_NOTIFIERS: dict[tuple, Notifier] = {}
#: Notifications held for the broker while it is away (then dropped, counted and logged).
MAX_HELD = 10_000
_LOCK = threading.Lock()


def related_topics(conn, set_name: str, ident) -> list[str]:
    """The navigation topics a new entity of ``set_name`` appears on (its to-many parents)."""
    from sensing.sta import model

    ent = model.ENTITIES[set_name]
    topics = []
    for nav in ent.navs:
        target = model.ENTITIES[nav.target]
        inverse = next((m for m in target.navs if m.target == set_name and m.many), None)
        if inverse is None:
            continue
        cond = nav.cond.format(c="c", p="p")
        ids = conn.execute(f"SELECT c.id FROM {target.table} c JOIN {ent.table} p ON ({cond}) WHERE p.id = %s "
                           "ORDER BY c.id LIMIT 1000", (ident,)).fetchall()
        topics += [f"{TOPIC_ROOT}/{target.set_name}({i})/{inverse.name}" for (i,) in ids]
    return topics


class Notifier:
    """Publishes entity changes to the broker of ``settings`` (started at the first change)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.published = 0
        self.dropped = 0
        self.client = None
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._conn = None
        self._unsubscribe = None
        self._while_down = 0
        #: the $select filters subscribers use (announced by the broker's plugin, sensing.mqtt.select)
        self.selects = SelectTopics()

    # -- events -----------------------------------------------------------------------------
    def __call__(self, change) -> None:
        if change.op == "delete" or change.entity is None:
            return
        self.queue.put(change)
        if self._thread is None:
            self.start()

    def start(self) -> Notifier:
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mqtt-notifier", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 10) -> None:
        self._stop.set()
        self.queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._unsubscribe:
            self._unsubscribe()

    @property
    def held(self) -> int:
        """Notifications held for the broker since the connection was lost."""
        return self._while_down

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout: float = 20) -> bool:
        return self._connected.wait(timeout)

    # -- the thread -------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("mqtt notifier: the broker refused the connection: %s", reason_code)
            return
        self._while_down = 0
        client.subscribe(ANNOUNCE_FILTER, 0)  # the broker plugin's $select announcements (retained)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()

    def _run(self) -> None:
        try:
            ep = endpoint(self.settings)
            self.client = make_client(self.settings, f"geotwin-notify-{os.getpid()}-{secrets.token_hex(3)}", ep=ep)
            self.client.on_connect = self._on_connect
            self.client.on_disconnect = self._on_disconnect
            self.client.on_message = lambda c, u, msg: self.selects.add(msg.topic, msg.payload)
            mqtt_connect(self.client, blocking=False)
            self.client.loop_start()
        except Exception:
            log.exception("mqtt notifier: cannot set up the MQTT client; notifications are off")
            return
        try:
            while not self._stop.is_set():
                change = self.queue.get()
                if change is None:
                    break
                try:
                    self._publish(change)
                except Exception:
                    log.exception("mqtt notifier: %s %s(%s) not published", change.op, change.set_name, change.id)
                    self._drop_conn()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self._drop_conn()

    def _db(self):
        if self._conn is None or self._conn.closed:
            from spatial_api import db

            self._conn = db.connect(self.settings, autocommit=True)
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            import psycopg

            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def messages(self, change) -> list[tuple[str, dict]]:
        """(topic, payload) pairs announcing ``change``."""
        entity = change.entity
        base = f"{TOPIC_ROOT}/{change.set_name}"
        out = [(base, entity)]
        if change.op == "create":
            out += [(t, entity) for t in related_topics(self._db(), change.set_name, change.id)]
        elif change.op == "update":
            out.append((f"{base}({change.id})", entity))
            names = change.changed if change.changed is not None else [k for k in entity if "@" not in k]
            out += [(f"{base}({change.id})/{name}", {name: entity[name]}) for name in names if name in entity]
        if self.selects:  # the same entity, only the selected properties, to T?$select=…
            out += [v for topic, payload in out if payload is entity for v in self.selects.variants(topic, entity)]
        return out

    def _publish(self, change) -> None:
        msgs = self.messages(change)
        if not self._connected.is_set():
            # paho keeps QoS 1 messages for the next connection; keep a bounded number
            if self._while_down + len(msgs) > MAX_HELD:
                self.dropped += len(msgs)
                if self.dropped == len(msgs) or self.dropped % 1000 < len(msgs):
                    log.warning("mqtt notifier: no broker connection (%s); %d notification(s) dropped so far",
                                self.settings.mqtt_url, self.dropped)
                return
            self._while_down += len(msgs)
        props = notify_properties()
        for topic, payload in msgs:
            self.client.publish(topic, json.dumps(payload, ensure_ascii=False, default=str), 1, properties=props)
            self.published += 1


def install(app, settings: Settings) -> Notifier:
    """Announce the MQTT endpoint on ``app.state.mqtt_endpoints`` and publish the STA changes this
    process makes. One notifier per broker, schema and folder in a process, however many apps."""
    from sensing.sta import events

    ep = endpoint(settings)
    app.state.mqtt_endpoints = [ep.url]
    key = (settings.mqtt_url, str(settings.mqtt_home), settings.db_schema, settings.database_url)
    with _LOCK:
        notifier = _NOTIFIERS.get(key)
        if notifier is None or notifier._stop.is_set():
            notifier = Notifier(settings)
            notifier._unsubscribe = events.subscribe(notifier)
            _NOTIFIERS[key] = notifier
    app.state.mqtt_notifier = notifier
    return notifier


__all__ = ["Notifier", "install", "related_topics"]
