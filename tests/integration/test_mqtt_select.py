"""``$select`` in SensorThings MQTT topics (OGC 18-088 §14.2.1) against the real mosquitto with
geotwin's plugin: a subscriber of ``…/Observations?$select=…`` receives only the selected
properties of what devices publish (the worker's notifications) and of what the HTTP API writes
(the API's notifier); the select lists survive a broker restart (retained announcements)."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI

from sensing.mqtt import notify
from sensing.mqtt.broker import LocalBroker
from sensing.mqtt.select import PREFIX, SelectTopics, parse_filter, select_json
from sensing.mqtt.testing import Collector, broker, device_client, publish_all, wait_for
from sensing.mqtt.worker import Worker
from sensing.sta import events
from sensing.sta.events import Change
from tests.integration.test_mqtt import device, make_stream


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt-select")) as s:
        yield s


def _stored(conn, stream: int) -> int | None:
    """The id of the stream's observation (each poll its own transaction: an open one would hold the
    lock that the worker's first partition of the month waits for)."""
    row = conn.execute("SELECT id FROM sta_observations WHERE stream_id = %s", (stream,)).fetchone()
    conn.commit()
    return row[0] if row else None


def _worker(mqtt) -> Worker:
    w = Worker(mqtt, client_id=f"select-worker-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
    assert w.wait_connected(30), "the worker did not connect"
    return w


def test_the_plugin_is_loaded_and_announces_select_filters(mqtt):
    b = LocalBroker(mqtt)
    assert f"plugin {b.dir}/geotwin_select.so" in b.conf_file.read_text()
    watcher = Collector(mqtt, [PREFIX + "#"])  # the service user may read the announcements
    sub = Collector(mqtt, ["v1.1/+/Observations?$select=result", "v1.1/Things?$select=name,id"])
    got = wait_for(lambda: {t for t, _, _ in watcher.messages} >= {
        PREFIX + "v1.1/%2B/Observations?$select=result", PREFIX + "v1.1/Things?$select=name,id"},
        what="the plugin's announcements")
    assert got
    sub.close()
    watcher.close()


def test_observations_published_by_devices_reach_select_topics(mqtt, conn):
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    topic = s["topic"]
    filters = [f"{topic}?$select=result,phenomenonTime", "v1.1/Observations?$select=id,result",
               "v1.1/+/Observations?$select=Datastream"]
    sub = Collector(mqtt, [*filters, topic])
    w = _worker(mqtt)
    try:
        wait_for(lambda: all(f in w.selects._filters for f in filters), what="the worker knowing the select lists")
        c = device_client(mqtt, name, pw)
        publish_all(c, [(topic, {"result": 12.5, "phenomenonTime": "2026-12-07T09:00:00+08:00"})])
        oid = wait_for(lambda: _stored(conn, s["stream"]), what="the stored observation")
        assert wait_for(lambda: sub.on(filters[0]), what="the Datastream's select topic") == [
            {"phenomenonTime": "2026-12-07T01:00:00Z", "result": 12.5}]
        assert wait_for(lambda: [m for m in sub.on(filters[1]) if m.get("@iot.id") == oid],
                        what="the entity set's select topic") == [{"@iot.id": oid, "result": 12.5}]
        # '+' in the filter: the Datastream's and the FeatureOfInterest's topics both match it
        nav = wait_for(lambda: sub.on(f"{topic}?$select=Datastream"), what="the wildcard select topic")
        assert nav == [{"Datastream@iot.navigationLink": nav[0]["Datastream@iot.navigationLink"]}]
        assert nav[0]["Datastream@iot.navigationLink"].endswith(f"/Observations({oid})/Datastream")
        # the full notification still goes to the plain topic, once
        assert len([m for m in sub.on(topic) if "@iot.id" in m]) == 1
        c.loop_stop()
    finally:
        w.stop()
        sub.close()


def test_http_writes_reach_select_topics_and_survive_a_broker_restart(mqtt, conn):
    sub = Collector(mqtt, ["v1.1/Things?$select=name"], client_id=f"sel-{uuid.uuid4().hex[:6]}", persistent=True)
    sub.close()
    b = LocalBroker(mqtt)
    b.down()
    from sensing.mqtt import control

    control.up(mqtt)  # the announcement is retained in the broker's persistence file
    app = FastAPI()
    n = notify.install(app, mqtt)
    n.start()
    try:
        assert n.wait_connected(20)
        wait_for(lambda: "v1.1/Things?$select=name" in n.selects._filters,
                 what="the API's notifier knowing the select list after the restart")
        sub = Collector(mqtt, ["v1.1/Things?$select=name"])
        events.emit(Change("create", "Things", 987654, {"@iot.id": 987654, "name": "水表 12-3",
                                                        "description": "d", "properties": {"a": 1}}))
        assert wait_for(lambda: sub.on("v1.1/Things?$select=name"), what="the select topic") == [{"name": "水表 12-3"}]
        sub.close()
    finally:
        n.close()


def test_select_lists_parsed_and_applied_as_over_http():
    assert parse_filter("v1.1/Observations?$select=id, result") == ("v1.1/Observations", "?$select=id, result",
                                                                    ["id", "result"])
    assert parse_filter("v1.1/Observations") is None and parse_filter("v1.1/Observations?$top=1") is None
    entity = {"@iot.id": 1, "@iot.selfLink": "x", "result": 2, "phenomenonTime": "t",
              "Datastream@iot.navigationLink": "d"}
    assert select_json(entity, ["result", "id", "nope"]) == {"@iot.id": 1, "result": 2}
    assert select_json(entity, ["Datastream", "@iot.selfLink"]) == {"@iot.selfLink": "x",
                                                                    "Datastream@iot.navigationLink": "d"}
    s = SelectTopics()
    assert s.add(PREFIX + "v1.1/%2B/Observations?$select=result") and not s.add(PREFIX + "v1.1/%2B/Observations?$select=result")
    assert s.variants("v1.1/Datastreams(3)/Observations", entity) == [
        ("v1.1/Datastreams(3)/Observations?$select=result", {"result": 2})]
    assert s.variants("v1.1/Observations", entity) == []
    assert s.add(PREFIX + "v1.1/%2B/Observations?$select=result", b"")  # an empty retained message forgets it
    assert not s
