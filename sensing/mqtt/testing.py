"""Helpers for tests and benchmarks that need a real broker: a mosquitto of their own on a free port
with its files in a temporary folder (:func:`broker`), MQTT clients that publish and collect
(:class:`Collector`, :func:`device_client`) and :func:`wait_for` (a state polled with a deadline —
never a fixed sleep)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sensing.mqtt.broker import Endpoint, endpoint
from sensing.mqtt.broker import client as make_client
from sensing.mqtt.broker import connect as mqtt_connect
from spatial_api.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "the expected state",
             interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


@contextmanager
def broker(settings: Settings, folder: Path) -> Iterator[Settings]:
    """A mosquitto of its own (free port, files in ``folder``) serving ``settings``' schema; yields
    the settings that point at it. Stopped at the end."""
    from sensing.mqtt import control

    s = settings.replace(mqtt_dir=Path(folder), mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    b, _ = control.up(s)
    try:
        yield s
    finally:
        b.down()


def device_endpoint(settings: Settings, username: str, password: str) -> Endpoint:
    ep = endpoint(settings)
    return Endpoint(ep.host, ep.port, username, password, ep.tls)


def device_client(settings: Settings, username: str | None = None, password: str | None = None, *,
                  client_id: str = "", persistent: bool = False, connect: bool = True, timeout: float = 20,
                  inflight: int = 1000):
    """A connected paho client (MQTT 5, loop running) as ``username`` (default: the service user)."""
    ep = device_endpoint(settings, username, password) if username else endpoint(settings)
    c = make_client(settings, client_id, persistent=persistent, ep=ep, inflight=inflight)
    connected = threading.Event()
    c.connect_result = None

    def on_connect(client, userdata, flags, reason_code, properties):
        c.connect_result = reason_code
        connected.set()

    c.on_connect = on_connect
    c.pubacks = {}  # mid → reason code of its PUBACK

    def on_publish(client, userdata, mid, reason_code, properties):
        c.pubacks[mid] = reason_code

    c.on_publish = on_publish
    if connect:
        mqtt_connect(c)
        c.loop_start()
        if not connected.wait(timeout):
            c.loop_stop()
            raise AssertionError(f"no CONNACK from the broker within {timeout} s")
    return c


class Collector:
    """Subscribes (QoS 1) and keeps what arrives: ``messages`` = [(topic, payload dict|bytes, properties)]."""

    def __init__(self, settings: Settings, topics: list[str], *, client_id: str = "", persistent: bool = False,
                 username: str | None = None, password: str | None = None):
        from paho.mqtt.subscribeoptions import SubscribeOptions

        self.messages: list[tuple[str, object, object]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.granted: list = []
        self.topics = topics
        ep = device_endpoint(settings, username, password) if username else endpoint(settings)
        self.client = make_client(settings, client_id, persistent=persistent, ep=ep)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        mqtt_connect(self.client)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 20, f"SUBACK for {topics}")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.granted = list(reason_codes)
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self.lock:
            self.messages.append((msg.topic, payload, getattr(msg, "properties", None)))

    def on(self, topic: str) -> list:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(c, items: list[tuple[str, object]], qos: int = 1, timeout: float = 30) -> list:
    """Publish (topic, payload) pairs with a client of :func:`device_client` and wait until the
    broker acknowledged each (QoS 1 — across reconnects: paho sends again what was not
    acknowledged); returns the PUBACK reason codes in order."""
    mids = [c.publish(topic, payload if isinstance(payload, (bytes, str)) else json.dumps(payload), qos).mid
            for topic, payload in items]
    if qos == 0:
        return []
    wait_for(lambda: all(m in c.pubacks for m in mids), timeout, f"PUBACKs of {len(mids)} messages")
    return [c.pubacks[m] for m in mids]


__all__ = ["Collector", "broker", "device_client", "device_endpoint", "free_port", "publish_all", "wait_for"]
