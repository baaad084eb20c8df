"""The ingestion worker (``geotwin mqtt worker``): Observations created by publishing to
``v1.1/Datastreams(<id>)/Observations`` (or ``MultiDatastreams(<id>)``), stored in batches, each
exactly once.

**Exactly once.** The worker holds an MQTT 5 *persistent* session (fixed client id, clean_start
False, a session that never expires) with a QoS 1 subscription to ``v1.1/+/Observations`` (MQTT
wildcards fill a whole level, so the level ``Datastreams(5)`` is matched by ``+`` and parsed here).
Not a shared subscription by default (one worker needs none, and
a plain subscription may set "No Local"). ``shared`` (``$share/geotwin/v1.1/+/Observations``;
``geotwin mqtt worker --workers M`` runs M processes so) spreads the stream over several workers,
each with its own persistent session: mosquitto hands each message to one member, and a member that
is offline (a killed worker) keeps its share queued in its session until it is back — the
supervisor starts it again. mosquitto 2.0.11 does not restore *shared* subscriptions from its
persistence file after a restart (measured: the queued messages come back, the subscription does
not, and what devices publish before a worker subscribes again matches no one and is dropped);
a shared worker therefore subscribes on every connect and records its client id
(``LocalBroker.add_shared_session``), and ``LocalBroker.start`` gives those sessions their
subscription back before letting any device user log in (see ``sensing/mqtt/broker.py``). Messages are acknowledged by hand (``manual_ack``, PUBACKs of a batch in one write) and only after
the batch that holds them is committed: until then the broker keeps them and delivers them again
after any crash or reconnect. A batch (up to ``batch_size`` messages or ``batch_ms``) is one
transaction: ``sta_ensure_partitions`` for its months, a binary COPY into a temporary staging
table, then ``INSERT INTO sta_observations … SELECT … FROM staging ON CONFLICT DO NOTHING`` —
``dedup`` is a uuid made from a SHA-256 of the stream id, phenomenonTime, result, resultTime and
parameters, so a message delivered twice (or published twice by a device that did not get its
PUBACK) is stored once: the unique index ``(stream_id, phenomenon_time_start, dedup)`` refuses the
second copy. A message without phenomenonTime is stored at the time it was received; its hash
leaves the time out, and when the broker delivers it again (the DUP flag) the worker looks for the
first copy (same stream and hash, last two days) and takes its time, so it is refused too — devices
that send their own phenomenonTime (the pilot's meters do) need no lookup and have no window. Acks
are sent only for messages of the *current* connection (a message received before a reconnect is
redelivered by the broker under the same packet id; acking the old copy could acknowledge a
different message that reuses the id). The database going away (restart, ``pg_terminate_backend``)
makes the worker keep its unacknowledged batch, reconnect with back-off and commit it then.

**Bad messages** do not block the stream and are not lost silently: a message whose JSON is bad,
whose topic names no Datastream / MultiDatastream, whose stream does not exist or whose values
cannot be stored is appended, with the reason, to ``<mqtt home>/dead-letters.jsonl`` (one JSON
object a line: ``time``, ``topic``, ``reason``, ``payload``) and then acknowledged.

**Payload** (as the STA HTTP create): ``{"result": …, "phenomenonTime"?, "resultTime"?,
"validTime"?, "resultQuality"?, "parameters"?, "FeatureOfInterest"?}``. ``phenomenonTime``
defaults to the time the worker received the message; times without an offset are district time
(``GEOTWIN_TIMEZONE``). ``FeatureOfInterest`` is ``{"@iot.id": n}`` or a new one inline; when absent
it is the one generated from the Thing's Location (as FROST-Server does: found by equal
``feature`` or created once). A Thing without a Location gives observations without a
FeatureOfInterest (FROST refuses them; we keep the data).

**Notifications and the loop.** STA's MQTT extension (18-088 §14.2) has subscribers of
``v1.1/Datastreams(<id>)/Observations`` and ``v1.1/Observations`` receive each created Observation
(the entity's JSON, ``@iot.id`` and links included). After a commit the worker publishes the
*inserted* rows (a redelivered duplicate is not announced twice) to those topics and to
``v1.1/FeaturesOfInterest(<id>)/Observations``. Those topics are the ones devices publish to, so
the worker would receive its own notifications. FROST-Server, with its embedded Moquette broker,
intercepts publishes inside the broker and ignores those of its own client id; a plain mosquitto
has no such hook. The worker subscribes with MQTT 5's "No Local" option, so the notifications it publishes on its own
connection never come back to it (No Local is forbidden on shared subscriptions: a ``--shared``
worker receives them and drops them). Notifications from other processes (the API's notifier,
:mod:`sensing.mqtt.notify`, for Observations created over HTTP) carry the MQTT 5 user property
``geotwin: notification`` and the worker acknowledges and skips them; a payload with ``@iot.id``
(an entity, not a create request — e.g. from an MQTT 3.1.1 client that cannot set properties) is
skipped too. What subscribers see: on a Datastream's Observations topic, both what devices publish
(the create requests: the broker delivers them to everyone subscribed, as with FROST) and
geotwin's notifications (entities with ``@iot.id``); a subscriber that wants only stored
observations keeps the messages having ``@iot.id``. ``--no-notify`` turns the worker's
notifications off for pure ingestion. With ``announce`` the worker publishes nothing: it ends each
batch's transaction with ``pg_notify('sta_observations_stored', …)`` naming the inserted ids, and
the announcer process (:mod:`sensing.mqtt.announce`, ``geotwin mqtt notifier``) publishes them —
how several shared workers (which cannot use No Local) keep STA's notifications off their path.

**The MQTT client** is paho's, with the batched read and write paths of
:class:`sensing.mqtt.fastclient.BatchClient`: one ``recv`` brings thousands of PUBLISH packets,
parsed there and handed over with their properties still encoded (a notification is recognised by
the bytes of its user property); a batch's PUBACKs and its notifications each go out as one write;
payloads are read with orjson (json for what orjson refuses: integers beyond 64 bits, NaN, and for
its error message). paho's own per-packet path (three or more ``recv`` calls, an ``MQTTMessage``
and a decoded ``Properties`` per message, a ``send`` per PUBACK) held one worker at ~14,700
observations/s; with the batched paths it drains 26,000–29,500/s and sustains 30,000/s beside its publishers and broker (docs/benchmarks.md).

**Hooks.** After each committed batch, ``after_batch_hooks`` are called with ``(conn, stream_ids)``
(the streams that got new rows), each in its own transaction on the worker's connection (committed
if it returns, rolled back and logged if it raises) — the alert rules register there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import select
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg

from sensing.mqtt.broker import TOPIC_ROOT, subscription
from sensing.mqtt.broker import client as make_client
from sensing.mqtt.fastclient import user_property
from sensing.mqtt.select import ANNOUNCE_FILTER, SelectTopics
from sensing.sta.serialize import ROOT as _STA_ROOT
from spatial_api.api.time import TimeError, parse_instant
from spatial_api.config import Settings, get_settings

log = logging.getLogger("geotwin.sensing.mqtt")

#: Called after each committed batch: ``hook(conn, stream_ids)``.
after_batch_hooks: list[Callable] = []

#: The MQTT 5 user property marking geotwin's own notifications.
NOTIFY_PROPERTY = ("geotwin", "notification")


def notify_properties():
    """PUBLISH properties carrying :data:`NOTIFY_PROPERTY`, packed once (paho packs properties
    again on every publish: 17 µs, three times per stored observation)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [NOTIFY_PROPERTY]
    packed = props.pack()
    once = type("PackedProperties", (Properties,), {"pack": lambda self: packed})(PacketTypes.PUBLISH)
    once.UserProperty = [NOTIFY_PROPERTY]
    return once


#: :data:`NOTIFY_PROPERTY` as encoded in a PUBLISH packet's properties (what the worker looks for)
NOTIFY_BYTES = user_property(*NOTIFY_PROPERTY)

TOPIC_RE = re.compile(r"^" + re.escape(TOPIC_ROOT) + r"/(Datastreams|MultiDatastreams)\((\d{1,18})\)/Observations$")
ALLOWED_KEYS = {"result", "phenomenonTime", "resultTime", "validTime", "resultQuality", "parameters",
                "FeatureOfInterest", "Datastream", "MultiDatastream"}
APPLICATION_NAME = "geotwin-mqtt-worker"
#: A batch is stored once the broker has sent nothing for this long (seconds).
IDLE_S = 0.002
#: Notifications sent and not yet acknowledged by the broker, at most (below its max_inflight_messages).
NOTIFY_INFLIGHT = 5000
#: Notification packets written at once.
NOTIFY_CHUNK = 1500
#: How far back a redelivered message without phenomenonTime is looked for.
REDELIVERY_WINDOW = "2 days"

STAGING = """CREATE TEMP TABLE IF NOT EXISTS mqtt_staging (
    seq integer, stream_id bigint, phenomenon_time_start timestamptz, phenomenon_time_end timestamptz,
    result_time timestamptz, result_number double precision, result_json jsonb, result_quality jsonb,
    valid_time_start timestamptz, valid_time_end timestamptz, parameters jsonb,
    feature_of_interest_id bigint, dedup uuid) ON COMMIT DELETE ROWS"""
STAGING_COLUMNS = ("seq", "stream_id", "phenomenon_time_start", "phenomenon_time_end", "result_time",
                   "result_number", "result_json", "result_quality", "valid_time_start", "valid_time_end",
                   "parameters", "feature_of_interest_id", "dedup")
STAGING_TYPES = ("int4", "int8", "timestamptz", "timestamptz", "timestamptz", "float8", "jsonb", "jsonb",
                 "timestamptz", "timestamptz", "jsonb", "int8", "uuid")
_COLS = ", ".join(STAGING_COLUMNS[1:])
INSERT = (f"INSERT INTO sta_observations ({_COLS}) SELECT {_COLS} FROM mqtt_staging ORDER BY seq "
          f"ON CONFLICT DO NOTHING RETURNING id, {_COLS}")
#: without notifications only the streams touched are needed (for the hooks)
INSERT_QUIET = (f"INSERT INTO sta_observations ({_COLS}) SELECT {_COLS} FROM mqtt_staging ORDER BY seq "
                f"ON CONFLICT DO NOTHING RETURNING id, stream_id")


class BadMessage(ValueError):
    """A message that cannot be stored; ``str()`` is the reason written to the dead-letter file."""


@dataclass(slots=True)
class Message:
    gen: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float
    dup: bool = False       # the broker sends it again (it was delivered before, maybe stored)


@dataclass(slots=True)
class Row:
    msg: Message
    stream_id: int
    kind: str               # "Datastreams" | "MultiDatastreams"
    t0: datetime
    t1: datetime | None
    result_time: datetime | None
    result_number: float | None
    result_json: object     # a JSON value (Python), None: SQL NULL
    result_quality: object
    v0: datetime | None
    v1: datetime | None
    parameters: dict | None
    foi: object             # None (derive), int (an id) or dict (create inline)
    dedup: uuid.UUID
    timeless: bool = False  # no phenomenonTime given: the receive time, not part of the hash


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    skipped_notifications: int = 0
    batches: int = 0
    db_retries: int = 0
    reconnects: int = 0
    last_commit: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# -- parsing ---------------------------------------------------------------------------------------


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _time(value, name: str, tz: str) -> datetime:
    if not isinstance(value, str):
        raise BadMessage(f"{name}: {value!r} is not an ISO 8601 date-time string")
    # the common case first: an RFC 3339 date-time with Z or an offset
    if 20 <= len(value) <= 40 and value[4] == "-" and value[7] == "-" and value[10] in "Tt":
        try:
            t = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
        except ValueError:
            t = None
        if t is not None and t.tzinfo is not None:
            return t
    try:
        t = parse_instant(value, name, day="start", tz=tz)
    except TimeError as exc:
        raise BadMessage(str(exc)) from None
    if t is None:
        raise BadMessage(f"{name}: an open time ('..') is not a time")
    return t


def _interval(value, name: str, tz: str) -> tuple[datetime, datetime | None]:
    if isinstance(value, str) and "/" in value:
        a, b = value.split("/", 1)
        t0, t1 = _time(a, name, tz), _time(b, name, tz)
        if t1 < t0:
            raise BadMessage(f"{name}: interval {value!r} ends before it starts")
        return t0, t1
    return _time(value, name, tz), None


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(t: datetime | None) -> str:
    """An instant for the content hash (the same for every spelling of it)."""
    return "" if t is None else repr(t.timestamp())


def parse(msg: Message, tz: str) -> tuple[Row | None, bool]:
    """The row a message stores, or (None, True) for a notification echo to skip. Raises BadMessage."""
    m = TOPIC_RE.match(msg.topic)
    if not m:
        raise BadMessage(f"topic {msg.topic!r}: create Observations by publishing to "
                         f"{TOPIC_ROOT}/Datastreams(<id>)/Observations or "
                         f"{TOPIC_ROOT}/MultiDatastreams(<id>)/Observations")
    kind, stream_id = m.group(1), int(m.group(2))
    try:
        body = orjson.loads(msg.payload)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses and json takes (integers beyond 64 bits, NaN), or json's message
            body = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadMessage(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadMessage("payload: an Observation is a JSON object, e.g. {\"result\": 1.2, "
                         "\"phenomenonTime\": \"2026-12-07T10:00:00+08:00\"}")
    if "@iot.id" in body:
        return None, True
    unknown = body.keys() - ALLOWED_KEYS
    if unknown:
        raise BadMessage(f"payload: unknown propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(sorted(unknown))} "
                         f"(an Observation has {', '.join(sorted(ALLOWED_KEYS - {'Datastream', 'MultiDatastream'}))})")
    if "result" not in body:
        raise BadMessage("payload: 'result' is required")
    result = body["result"]
    if "phenomenonTime" in body and body["phenomenonTime"] is not None:
        t0, t1 = _interval(body["phenomenonTime"], "phenomenonTime", tz)
    else:
        t0, t1 = datetime.fromtimestamp(msg.received, timezone.utc), None
    timeless = "phenomenonTime" not in body or body["phenomenonTime"] is None
    rt = body.get("resultTime")
    result_time = _time(rt, "resultTime", tz) if rt is not None else None
    vt = body.get("validTime")
    v0, v1 = _interval(vt, "validTime", tz) if vt is not None else (None, None)
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        number, rjson = None, result
    else:
        number, rjson = float(result), None
        if not math.isfinite(number):
            raise BadMessage(f"result: {result!r} is not a finite number")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadMessage("parameters: a JSON object of name → value")
    quality = body.get("resultQuality")
    foi = body.get("FeatureOfInterest")
    if foi is not None:
        if not isinstance(foi, dict):
            raise BadMessage("FeatureOfInterest: {\"@iot.id\": <id>} or a new FeatureOfInterest object")
        if "@iot.id" in foi:
            if not isinstance(foi["@iot.id"], int) or isinstance(foi["@iot.id"], bool):
                raise BadMessage(f"FeatureOfInterest: @iot.id {foi['@iot.id']!r} is not an id")
            foi = foi["@iot.id"]
        else:
            missing = [k for k in ("name", "encodingType", "feature") if k not in foi]
            if missing:
                raise BadMessage(f"FeatureOfInterest: a new one needs {', '.join(missing)}")
    # the content hash: what makes two messages the same observation
    key = "\x1f".join((str(stream_id), "" if timeless else _instant(t0), _instant(t1),
                       repr(number) if number is not None else _canon(result), _instant(result_time),
                       "" if params is None else _canon(params)))
    dedup = uuid.UUID(bytes=hashlib.sha256(key.encode()).digest()[:16])
    return Row(msg, stream_id, kind, t0, t1, result_time, number, rjson, quality, v0, v1, params, foi, dedup,
               timeless), False


def entity_json(base: str, row: tuple) -> dict:
    """The Observation as the HTTP API serves it (``sensing.sta.serialize``); ``row`` is what
    the INSERT returns: (id, *STAGING_COLUMNS[1:]). ``base``: the server's public URL."""
    from sensing.sta import model, serialize

    (oid, _stream, t0, t1, rt, number, rjson, quality, v0, v1, params, _foi, _dedup) = row
    return serialize.entity_json(model.OBSERVATIONS, {
        "@id": oid, "phenomenonTime|s": t0, "phenomenonTime|e": t1, "resultTime": rt,
        "result": number if number is not None else rjson, "resultQuality": quality,
        "validTime|s": v0, "validTime|e": v1, "parameters": params}, base)


def notification_topics(kind: str, row: tuple) -> list[str]:
    """The topics a stored Observation is announced on (``row`` as the INSERT returns it; ``kind``:
    Datastreams or MultiDatastreams): its stream's, the entity set's and its FeatureOfInterest's."""
    topics = [f"{TOPIC_ROOT}/{kind}({row[1]})/Observations", f"{TOPIC_ROOT}/Observations"]
    if row[11] is not None:
        topics.append(f"{TOPIC_ROOT}/FeaturesOfInterest({row[11]})/Observations")
    return topics


def _utc_text(t: datetime) -> str | None:
    """``serialize.format_time`` for a year ≥ 1000, without strftime."""
    t = t.astimezone(timezone.utc)
    us = t.microsecond
    if not us:
        return t.isoformat(timespec="seconds")[:-6] + "Z"
    text = t.isoformat(timespec="microseconds")[:-6]
    return (text[:-3] if us % 1000 == 0 else text) + "Z"


def notification_payload(base: str, row: tuple) -> bytes:
    """The notification of a stored Observation: :func:`entity_json` as JSON bytes (UTF-8). The
    common row (a number, an instant, nothing else) is written directly; the same JSON object."""
    (oid, _stream, t0, t1, rt, number, _rjson, quality, v0, _v1, params, _foi, _dedup) = row
    if (number is not None and t1 is None and rt is None and quality is None and v0 is None and params is None
            and t0.year >= 1000):
        link = f"{base}{_STA_ROOT}/Observations({oid})"
        return orjson.dumps({
            "@iot.id": oid, "@iot.selfLink": link, "phenomenonTime": _utc_text(t0), "resultTime": None,
            "result": number, "Datastream@iot.navigationLink": link + "/Datastream",
            "MultiDatastream@iot.navigationLink": link + "/MultiDatastream",
            "FeatureOfInterest@iot.navigationLink": link + "/FeatureOfInterest"})
    return json.dumps(entity_json(base, row), ensure_ascii=False, default=str).encode()


# -- hand-over to the announcer --------------------------------------------------------------------

#: The channel on which a worker started with ``announce`` tells :mod:`sensing.mqtt.announce` which
#: rows it committed (NOTIFY is transactional: sent at commit, never for a rolled-back batch).
ANNOUNCE_CHANNEL = "sta_observations_stored"
#: PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more; stay well below.
ANNOUNCE_PAYLOAD_MAX = 7000


def id_runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted, merged runs of consecutive ids: [3, 4, 5, 9] → [(3, 5), (9, 9)] (a batch's ids come
    from one sequence and are mostly consecutive; another worker's batch may interleave)."""
    import numpy as np

    if not ids:
        return []
    a = np.unique(np.asarray(ids, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(a) != 1)
    starts = np.concatenate(([a[0]], a[breaks + 1]))
    ends = np.concatenate((a[breaks], [a[-1]]))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def announce_payloads(schema: str, ids: list[int], t0: datetime, t1: datetime) -> list[str]:
    """The NOTIFY payloads naming the committed rows ``ids`` (phenomenonTime within [t0, t1], for
    partition pruning): ``{"s": schema, "t": [t0, t1], "r": [[lo, hi], …]}``, split below 8 kB."""
    runs = id_runs(ids)
    head = {"s": schema, "t": [t0.astimezone(timezone.utc).isoformat(), t1.astimezone(timezone.utc).isoformat()]}
    base = len(json.dumps({**head, "r": []}))
    out, chunk, size = [], [], base
    for lo, hi in runs:
        piece = len(f"[{lo},{hi}],")
        if chunk and size + piece > ANNOUNCE_PAYLOAD_MAX:
            out.append(json.dumps({**head, "r": chunk}, separators=(",", ":")))
            chunk, size = [], base
        chunk.append([lo, hi])
        size += piece
    if chunk:
        out.append(json.dumps({**head, "r": chunk}, separators=(",", ":")))
    return out


# -- the worker ------------------------------------------------------------------------------------


class Worker:
    """Run with :meth:`run` (blocking, until ``stop()``), or :meth:`start` a thread (tests)."""

    def __init__(self, settings: Settings | None = None, *, client_id: str = "geotwin-worker-1",
                 batch_size: int = 2000, batch_ms: int = 50, notify: bool = True, notify_qos: int = 1,
                 receive_maximum: int | None = None, dead_letters: Path | None = None, shared: bool = False,
                 announce: bool = False):
        self.settings = settings or get_settings()
        self.client_id = client_id
        self.shared = shared
        #: hand the stored ids to the announcer process (``NOTIFY`` at commit) instead of publishing here
        self.announce = announce
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.notify = notify
        self.notify_qos = notify_qos
        self.receive_maximum = receive_maximum or min(65535, max(1000, batch_size * 4))
        self.dead_letters = dead_letters or Path(self.settings.mqtt_home) / "dead-letters.jsonl"
        self.stats = Stats()
        self._pending: list[Message] = []
        self._packets = 0  # messages read: the pump reads until none comes
        self._gen = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None
        self._foi_cache: dict[int, int | None] = {}
        self._foi_cache_time = 0.0
        self.client = None
        #: the $select filters subscribers use (announced by the broker's plugin)
        self.selects = SelectTopics()
        #: the database sessions' application_name (pg_stat_activity): the worker and its client id
        self.application_name = f"{APPLICATION_NAME} {client_id}"[:63]

    # -- MQTT side ----------------------------------------------------------------------------
    # One thread does everything: paho is driven by hand (select, loop_read, loop_write,
    # loop_misc) instead of its background thread, which would cost a GIL hand-over and a wake-up
    # write per message and per acknowledgement.
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("mqtt worker: connection refused: %s", reason_code)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # and the broker plugin's $select announcements (retained: all of them now, new ones as they come)
        client.subscribe([subscription(self.shared), (ANNOUNCE_FILTER, SubscribeOptions(qos=0))])
        client.resend_unacknowledged()  # notifications the broker had not acknowledged (DUP)
        log.info("mqtt worker %s connected (session present: %s)", self.client_id, flags.session_present)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            log.error("mqtt worker: subscription to %s refused: %s", subscription(self.shared)[0], reason_codes)
            return
        if self.shared:  # so that a broker restart gives the session its shared subscription back
            from sensing.mqtt.broker import LocalBroker

            with contextlib.suppress(OSError):
                LocalBroker(self.settings).add_shared_session(self.client_id)
        self._connected.set()
        log.info("mqtt worker %s subscribed to %s", self.client_id, subscription(self.shared)[0])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._gen += 1
        self._connected.clear()
        with self.stats.lock:
            self.stats.reconnects += 1
        if not self._stop.is_set():
            log.warning("mqtt worker: disconnected (%s); reconnecting", reason_code)

    def _on_publish_packet(self, mid: int, qos: int, dup: bool, topic: bytes, props: bytes, payload: bytes):
        """Each PUBLISH the broker delivers (:class:`sensing.mqtt.fastclient.BatchClient`)."""
        self._packets += 1
        if topic.startswith(b"$geotwin/"):  # a $select subscription (sensing.mqtt.select)
            self.selects.add(topic.decode(errors="replace"), payload)
            return
        if props and NOTIFY_BYTES in props:  # geotwin's own notification (a shared worker gets them)
            with self.stats.lock:
                self.stats.skipped_notifications += 1
            if qos:
                self.client.ack_many((mid,))
            return
        try:
            name = topic.decode()
        except UnicodeDecodeError:
            name = topic.decode(errors="replace")
        self._pending.append(Message(self._gen, mid, qos, name, payload, time.time(), dup))

    def _pump(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the broker, then read what it sent (and send what waits).
        Returns the number of packets read."""
        c = self.client
        sock = c.socket()
        start = self._packets + c.raw_acked
        if sock is None:
            self._reconnect()
            return 0
        try:
            readable, writable, _ = select.select([sock], [sock] if c.want_write() else [], [], timeout)
        except (OSError, ValueError):  # the socket closed under us
            readable, writable = [], []
        if writable:
            c.loop_write()
        if readable:
            for _ in range(256):  # each read takes up to 256 KiB (thousands of packets)
                before = self._packets + c.raw_acked
                if c.loop_read() != 0 or self._packets + c.raw_acked == before or c.socket() is None:
                    break
        c.loop_misc()
        if c.socket() is None:
            self._reconnect()
        return self._packets + c.raw_acked - start

    def _reconnect(self) -> None:
        delay = getattr(self, "_backoff", 0.5)
        try:
            self.client.reconnect()
            self._backoff = 0.5
        except (OSError, ValueError) as exc:
            log.warning("mqtt worker: broker unreachable (%s); retrying in %.1f s", exc, delay)
            self._backoff = min(10.0, delay * 2)
            self._stop.wait(delay)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Worker:
        self._thread = threading.Thread(target=self.run, name=f"mqtt-worker-{self.client_id}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 30) -> bool:
        """Connected and subscribed."""
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        from sensing.mqtt.broker import connect_properties

        self.client = make_client(self.settings, self.client_id, persistent=True,
                                  receive_maximum=self.receive_maximum, manual_ack=True, inflight=0,
                                  batched=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish_packet = self._on_publish_packet
        self.client.on_subscribe = self._on_subscribe
        opts = self.client.geotwin_connect
        while not self._stop.is_set():
            try:
                self.client.connect(opts["host"], opts["port"], keepalive=30, clean_start=False,
                                    properties=connect_properties(persistent=True,
                                                                  receive_maximum=self.receive_maximum))
                break
            except (OSError, ValueError) as exc:
                log.warning("mqtt worker: broker unreachable (%s); retrying", exc)
                self._stop.wait(1)
        try:
            self._loop()
        finally:
            self.client.disconnect()
            self._drop_conn()

    def _loop(self) -> None:
        """A batch is stored when it is full, when its first message has waited ``batch_ms``, or
        as soon as the broker has nothing more for a moment (IDLE_S) — so a quiet stream is stored
        at once and a busy one in large batches (what arrives during a commit makes the next one)."""
        wait = self.batch_ms / 1000
        while not self._stop.is_set():
            pending = self._pending
            timeout = 0.2 if not pending else max(0.0, min(IDLE_S, pending[0].received + wait - time.time()))
            got = self._pump(timeout)
            pending = self._pending
            if not pending or (len(pending) < self.batch_size and got
                               and time.time() < pending[0].received + wait):
                continue
            gen = self._gen
            take, self._pending = pending[:self.batch_size], pending[self.batch_size:]
            batch = [m for m in take if m.gen == gen]  # older ones will be redelivered
            if not batch:
                continue
            try:
                self.process_batch(batch)
            except Exception:  # not acknowledged: have the broker deliver it all again, after a pause
                log.exception("mqtt worker: a batch of %d failed; reconnecting so that the broker delivers it again",
                              len(batch))
                self._drop_conn()
                self._pending = []
                self._stop.wait(1)
                self.client.disconnect()

    # -- database side ------------------------------------------------------------------------
    def _db(self):
        if self._conn is None or self._conn.closed:
            from spatial_api import db

            self._conn = psycopg.connect(
                db.database_url(self.settings), autocommit=False, application_name=self.application_name,
                options=f"-c search_path={db.schema_name(self.settings)},public -c timezone=UTC",
                connect_timeout=db.CONNECT_TIMEOUT)
            self._conn.execute(STAGING)
            self._schema = self._conn.execute("SELECT current_schema()").fetchone()[0]
            self._conn.commit()
        return self._conn

    def process_batch(self, batch: list[Message]) -> None:
        """Store a batch (one transaction), dead-letter the bad messages, acknowledge, notify, run
        the hooks. Called by the worker's loop; callable directly with messages of QoS 0."""

        tz = self.settings.timezone
        rows: list[Row] = []
        dead: list[tuple[Message, str]] = []
        with self.stats.lock:
            self.stats.received += len(batch)
        for msg in batch:
            try:
                row, skip = parse(msg, tz)
            except BadMessage as exc:
                dead.append((msg, str(exc)))
                continue
            if skip:
                with self.stats.lock:
                    self.stats.skipped_notifications += 1
                continue
            rows.append(row)
        delay = 0.2
        while True:
            try:
                inserted, more_dead = self._store(rows)
                break
            except psycopg.OperationalError as exc:  # the database went away: keep the batch, retry
                log.warning("mqtt worker: database unavailable (%s); retrying in %.1f s", str(exc).strip()[:200], delay)
                self._drop_conn()
                with self.stats.lock:
                    self.stats.db_retries += 1
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self._stop.is_set():
                    self._pump(min(0.2, deadline - time.monotonic()))  # keep the MQTT session alive
                if self._stop.is_set():
                    return
                delay = min(5.0, delay * 2)
            except psycopg.Error as exc:  # something in the data: store one by one, dead-letter the culprits
                log.warning("mqtt worker: batch failed (%s); storing its messages one by one", exc)
                self._rollback()
                inserted, more_dead = self._store_each(rows)
                break
        dead.extend(more_dead)
        if dead:
            self._dead_letter(dead)
        # acknowledge (in arrival order) only what this connection received
        if batch[0].gen == self._gen and self.client is not None:
            self.client.ack_many([msg.mid for msg in batch if msg.qos])
        with self.stats.lock:
            self.stats.stored += len(inserted)
            self.stats.duplicates += len(rows) - len(inserted) - len(more_dead)
            self.stats.dead += len(dead)
            self.stats.batches += 1
            self.stats.last_commit = time.time()
        if inserted:
            kinds = {r.stream_id: r.kind for r in rows}
            if self.notify and not self.announce:
                self._publish(inserted, kinds)
            self._run_hooks(sorted({r[1] for r in inserted}))

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._foi_cache.clear()

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except psycopg.Error:
            self._drop_conn()
        self._foi_cache.clear()

    def _store(self, rows: list[Row]) -> tuple[list[tuple], list[tuple[Message, str]]]:
        """One transaction for the batch: (inserted rows, dead-lettered messages)."""
        conn = self._db()
        dead: list[tuple[Message, str]] = []
        if not rows:
            return [], dead
        try:
            streams = self._streams(conn, {r.stream_id for r in rows})
            ok: list[Row] = []
            for r in rows:
                found = streams.get(r.stream_id)
                if found is None or found[0] != r.kind:
                    dead.append((r.msg, f"{r.kind}({r.stream_id}) does not exist"))
                    continue
                if r.kind == "MultiDatastreams":
                    result = r.result_json
                    if not isinstance(result, list) or len(result) != found[2]:
                        dead.append((r.msg, (f"result: MultiDatastreams({r.stream_id}) takes an array of "
                                             f"{found[2]} values (one per ObservedProperty)")))
                        continue
                ok.append(r)
            self._first_times(conn, ok)
            fois = self._features(conn, ok, streams, dead)
            ok = [r for r in ok if (r.msg.mid, r.msg.gen) in fois]
            if not ok:
                conn.commit()
                return [], dead
            months = sorted({(r.t0.astimezone(timezone.utc).year, r.t0.astimezone(timezone.utc).month) for r in ok})
            with conn.cursor() as cur:
                for y, mth in months:
                    t = datetime(y, mth, 1, tzinfo=timezone.utc)
                    cur.execute("SELECT sta_ensure_partitions(%s, %s)", (t, t))
                with cur.copy(f"COPY mqtt_staging ({', '.join(STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(STAGING_TYPES)
                    for i, r in enumerate(ok):
                        copy.write_row((i, r.stream_id, r.t0, r.t1, r.result_time, r.result_number, r.result_json,
                                        r.result_quality, r.v0, r.v1, r.parameters, fois[(r.msg.mid, r.msg.gen)],
                                        r.dedup))
                inline = self.notify and not self.announce
                cur.execute(INSERT if inline else INSERT_QUIET)
                inserted = cur.fetchall()
                if self.announce and inserted:
                    for payload in announce_payloads(self._schema, [r[0] for r in inserted],
                                                     min(r.t0 for r in ok), max(r.t0 for r in ok)):
                        cur.execute("SELECT pg_notify(%s, %s)", (ANNOUNCE_CHANNEL, payload))
            conn.commit()
            return inserted, dead
        except BaseException:
            self._rollback()
            raise

    def _store_each(self, rows: list[Row]) -> tuple[list[tuple], list[tuple[Message, str]]]:
        inserted, dead = [], []
        for r in rows:
            try:
                got, d = self._store([r])
                inserted.extend(got)
                dead.extend(d)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                dead.append((r.msg, f"cannot be stored: {str(exc).strip().splitlines()[0]}"))
        return inserted, dead

    @staticmethod
    def _first_times(conn, rows: list[Row]) -> None:
        """A message without phenomenonTime took its receive time; delivered again (DUP), it takes
        the time it was stored with the first time, if it was (looked up over the last
        ``REDELIVERY_WINDOW``) — so the copy meets the unique index and is not stored twice."""
        again = [r for r in rows if r.timeless and r.msg.dup]
        if not again:
            return
        found = {(sid, dd): t for sid, dd, t in conn.execute(
            """SELECT s.stream_id, s.dedup, o.t FROM unnest(%s::bigint[], %s::uuid[]) AS s(stream_id, dedup)
               JOIN LATERAL (SELECT phenomenon_time_start AS t FROM sta_observations o
                             WHERE o.stream_id = s.stream_id AND o.dedup = s.dedup
                               AND o.phenomenon_time_start >= now() - %s::interval
                             ORDER BY o.phenomenon_time_start DESC LIMIT 1) o ON true""",
            ([r.stream_id for r in again], [r.dedup for r in again], REDELIVERY_WINDOW))}
        for r in again:
            t = found.get((r.stream_id, r.dedup))
            if t is not None:
                r.t0 = t

    @staticmethod
    def _streams(conn, ids: set[int]) -> dict[int, tuple[str, int, int | None]]:
        """stream id → (kind, thing id, number of ObservedProperties of a MultiDatastream)."""
        found = {}
        for sid, kind, thing, n in conn.execute(
                """SELECT id, 'Datastreams', thing_id, NULL::int FROM sta_datastreams WHERE id = ANY(%(ids)s)
                   UNION ALL
                   SELECT m.id, 'MultiDatastreams', m.thing_id,
                          (SELECT count(*)::int FROM sta_multi_datastream_properties p
                           WHERE p.multi_datastream_id = m.id)
                   FROM sta_multi_datastreams m WHERE m.id = ANY(%(ids)s)""", {"ids": list(ids)}):
            found[sid] = (kind, thing, n)
        return found

    def _features(self, conn, rows: list[Row], streams: dict, dead: list) -> dict[tuple[int, int], int | None]:
        """(mid, gen) → the FeatureOfInterest id of each row (rows whose FoI is wrong go to ``dead``)."""
        if time.monotonic() - self._foi_cache_time > 60:  # a Thing's Location may change
            self._foi_cache.clear()
            self._foi_cache_time = time.monotonic()
        out: dict[tuple[int, int], int | None] = {}
        given = {r.foi for r in rows if isinstance(r.foi, int)}
        existing = set()
        if given:
            existing = {i for (i,) in conn.execute("SELECT id FROM sta_features_of_interest WHERE id = ANY(%s)",
                                                   (list(given),))}
        for r in rows:
            key = (r.msg.mid, r.msg.gen)
            if isinstance(r.foi, int):
                if r.foi not in existing:
                    dead.append((r.msg, f"FeatureOfInterest: FeaturesOfInterest({r.foi}) does not exist"))
                    continue
                out[key] = r.foi
            elif isinstance(r.foi, dict):
                out[key] = self._new_feature(conn, r.foi)
            else:
                thing = streams[r.stream_id][1]
                if thing not in self._foi_cache:
                    self._foi_cache[thing] = self._thing_feature(conn, thing)
                out[key] = self._foi_cache[thing]
        return out

    @staticmethod
    def _new_feature(conn, foi: dict) -> int:
        feature = foi["feature"]
        return conn.execute(
            """INSERT INTO sta_features_of_interest (name, description, encoding_type, feature, geom, properties)
               VALUES (%s, %s, %s, %s::jsonb,
                       CASE WHEN jsonb_typeof(%s::jsonb -> 'type') = 'string'
                            THEN ST_SetSRID(ST_GeomFromGeoJSON(
                                     coalesce(%s::jsonb -> 'geometry', %s::jsonb)::text), 4326) END,
                       %s::jsonb) RETURNING id""",
            (str(foi["name"]), str(foi.get("description", "")), str(foi["encodingType"]), _canon(feature),
             _canon(feature), _canon(feature), _canon(feature),
             _canon(foi["properties"]) if foi.get("properties") is not None else None)).fetchone()[0]

    @staticmethod
    def _thing_feature(conn, thing_id: int) -> int | None:
        """The FeatureOfInterest generated from the Thing's (first) Location: found by equal feature,
        else created (as FROST-Server does when an Observation names none)."""
        loc = conn.execute(
            """SELECT l.id, l.location
               FROM sta_thing_locations tl JOIN sta_locations l ON l.id = tl.location_id
               WHERE tl.thing_id = %s ORDER BY l.id LIMIT 1""", (thing_id,)).fetchone()
        if loc is None:
            return None
        lid, location = loc
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('sta_generated_foi'), %s::int)", (lid % 2**31,))
        row = conn.execute("SELECT id FROM sta_features_of_interest WHERE feature = %s::jsonb ORDER BY id LIMIT 1",
                           (_canon(location),)).fetchone()
        if row:
            return row[0]
        return conn.execute(
            """INSERT INTO sta_features_of_interest (name, description, encoding_type, feature, geom)
               SELECT name, description, encoding_type, location, geom FROM sta_locations WHERE id = %s
               RETURNING id""", (lid,)).fetchone()[0]

    def _dead_letter(self, dead: list[tuple[Message, str]]) -> None:
        self.dead_letters.parent.mkdir(parents=True, exist_ok=True)
        now = _iso(datetime.now(timezone.utc))
        with open(self.dead_letters, "a", encoding="utf-8") as f:
            for msg, reason in dead:
                payload = msg.payload[:65536].decode("utf-8", errors="replace")
                f.write(json.dumps({"time": now, "topic": msg.topic, "reason": reason, "payload": payload},
                                   ensure_ascii=False) + "\n")
            f.flush()
        for msg, reason in dead:
            log.warning("mqtt worker: dead letter on %s: %s", msg.topic, reason)

    def _publish(self, inserted: list[tuple], kinds: dict[int, str]) -> None:
        """The notifications of the stored rows, written in chunks (each one buffer); with QoS 1 at
        most NOTIFY_INFLIGHT wait for their PUBACK (below the broker's max_inflight_messages)."""
        qos, base, c = self.notify_qos, self.settings.public_url, self.client
        chunk = NOTIFY_CHUNK // 3
        for i in range(0, len(inserted), chunk):
            while qos and c.raw_inflight > NOTIFY_INFLIGHT - NOTIFY_CHUNK and c.socket() is not None:
                self._pump(0.05)
            if c.socket() is None:
                return  # (the rows are stored; notifications are sent while connected)
            messages = []
            selects = self.selects
            for row in inserted[i:i + chunk]:
                payload = notification_payload(base, row)
                topics = notification_topics(kinds.get(row[1], "Datastreams"), row)
                messages += [(t.encode(), payload) for t in topics]
                if selects:
                    entity = entity_json(base, row)
                    for t in topics:
                        messages += [(vt.encode(), orjson.dumps(v, default=str))
                                     for vt, v in selects.variants(t, entity)]
            c.publish_many(messages, qos, NOTIFY_BYTES)

    def _run_hooks(self, stream_ids: list[int]) -> None:
        for hook in after_batch_hooks:
            try:
                conn = self._db()
                hook(conn, stream_ids)
                conn.commit()
            except Exception:
                log.exception("mqtt worker: after-batch hook %r failed", hook)
                self._rollback()


def run_worker(settings: Settings | None = None, **options) -> Worker:
    """Start a worker in a background thread of this process (tests, embedding); ``stop()`` it."""
    return Worker(settings, **options).start()


__all__ = [
    "ANNOUNCE_CHANNEL",
    "NOTIFY_PROPERTY",
    "BadMessage",
    "Worker",
    "after_batch_hooks",
    "announce_payloads",
    "entity_json",
    "id_runs",
    "notify_properties",
    "parse",
    "run_worker",
]
