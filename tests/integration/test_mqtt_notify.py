"""STA MQTT receive side for the HTTP writes (sensing.mqtt.notify) against a real mosquitto:
entity-set, entity, property and navigation topics; the worker does not take the notifications for
create requests; an app without a broker keeps working."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI

from sensing.mqtt import notify
from sensing.mqtt.testing import Collector, broker, free_port, wait_for
from sensing.mqtt.worker import Worker
from sensing.sta import events
from sensing.sta.events import Change
from tests.integration.test_mqtt import count, make_stream


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt-notify")) as s:
        yield s


@pytest.fixture
def notifier(mqtt):
    app = FastAPI()
    n = notify.install(app, mqtt)
    assert app.state.mqtt_endpoints == [mqtt.mqtt_url]
    assert notify.install(FastAPI(), mqtt) is n  # one per broker and schema in a process
    n.start()
    assert n.wait_connected(20)
    yield n
    n.close()


def test_create_publishes_entity_set_and_navigation_topics(mqtt, notifier, conn):
    s = make_stream(conn)
    sensor = conn.execute("SELECT sensor_id FROM sta_datastreams WHERE id = %s", (s["stream"],)).fetchone()[0]
    conn.commit()
    topics = ["v1.1/Datastreams", f"v1.1/Things({s['thing']})/Datastreams", f"v1.1/Sensors({sensor})/Datastreams",
              f"v1.1/Locations({s['location']})/Things"]
    sub = Collector(mqtt, topics)
    doc = {"@iot.id": s["stream"], "name": "volume"}
    events.emit(Change("create", "Datastreams", s["stream"], doc))
    events.emit(Change("create", "Things", s["thing"], {"@iot.id": s["thing"], "name": "t"}))
    for t in topics:
        got = wait_for(lambda t=t: sub.on(t), what=f"a notification on {t}")
        assert got[0]["@iot.id"] in (s["stream"], s["thing"])
    sub.close()


def test_update_publishes_entity_and_changed_properties(mqtt, notifier, conn):
    s = make_stream(conn)
    base = f"v1.1/Things({s['thing']})"
    sub = Collector(mqtt, ["v1.1/Things", base, f"{base}/name", f"{base}/description"])
    doc = {"@iot.id": s["thing"], "name": "renamed", "description": "same"}
    events.emit(Change("update", "Things", s["thing"], doc, ("name",)))
    events.emit(Change("delete", "Things", s["thing"], None))  # nothing for deletes
    assert wait_for(lambda: sub.on(f"{base}/name"), what="the property topic") == [{"name": "renamed"}]
    assert wait_for(lambda: sub.on(base), what="the entity topic")[0]["name"] == "renamed"
    assert wait_for(lambda: sub.on("v1.1/Things"), what="the entity-set topic")
    assert sub.on(f"{base}/description") == []  # not changed
    sub.close()


def test_http_created_observation_reaches_subscribers_not_the_worker(mqtt, notifier, conn):
    s = make_stream(conn)
    w = Worker(mqtt, client_id="notify-test-worker", batch_ms=20).start()
    try:
        assert w.wait_connected(30)
        sub = Collector(mqtt, [s["topic"]])
        conn.execute("SELECT sta_ensure_partitions('2026-12-07', '2026-12-07')")
        oid = conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                           "VALUES (%s, '2026-12-07T03:00:00Z', 4.5) RETURNING id", (s["stream"],)).fetchone()[0]
        conn.commit()
        skipped = w.stats.skipped_notifications
        events.emit(Change("create", "Observations", oid, {"@iot.id": oid, "result": 4.5,
                                                           "phenomenonTime": "2026-12-07T03:00:00Z"}))
        assert wait_for(lambda: sub.on(s["topic"]), what="the notification")[0]["@iot.id"] == oid
        wait_for(lambda: w.stats.skipped_notifications > skipped, what="the worker to skip the notification")
        assert w.stats.dead == 0 and count(conn, s["stream"]) == 1
        sub.close()
    finally:
        w.stop()


def test_app_without_broker_keeps_working(database, tmp_path):
    """Nothing listens on the broker's port: the notifier logs and retries; writers are not disturbed."""
    settings = database.replace(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", mqtt_dir=tmp_path)
    app = FastAPI()
    n = notify.install(app, settings)
    try:
        t0 = time.monotonic()
        for i in range(200):
            events.emit(Change("update", "Things", i + 1, {"@iot.id": i + 1, "name": "x"}, ("name",)))
        assert time.monotonic() - t0 < 2  # emit only queues
        wait_for(lambda: n.queue.empty() and n.held > 0, what="the notifier to hold the notifications")
        assert not n.wait_connected(0.1)
        assert n.running
    finally:
        n.close()
