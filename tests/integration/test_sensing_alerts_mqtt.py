"""Issue 16: publish → alert. A reading published over MQTT to a real mosquitto is stored by the
ingestion worker, whose after-batch hook (``sensing.rules.install_worker_hooks``) evaluates the
rules for that device: the alert is open moments later, without any periodic run."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from sensing import rules
from sensing.mqtt import worker as worker_mod
from sensing.mqtt.testing import broker, device_client, publish_all, wait_for
from spatial_api import db
from tests.integration.test_sensing_rules import make_device


@pytest.fixture(scope="module")
def live(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt_alerts")) as s:
        rules.install_worker_hooks()
        rules.install_worker_hooks()  # idempotent
        assert worker_mod.after_batch_hooks.count(rules.on_batch) == 1
        w = worker_mod.Worker(s, client_id=f"test-alerts-worker-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
        try:
            assert w.wait_connected(30), "the worker did not connect"
            yield s
        finally:
            w.stop()
            worker_mod.after_batch_hooks.remove(rules.on_batch)


def test_a_low_hydrant_pressure_published_over_mqtt_opens_an_alert(live, database):
    with db.connect(database) as conn:
        dev, streams = make_device(conn, "hydrant-pressure", community="布吉社区", expected_interval="1 hour")
        conn.commit()
    topic = f"v1.1/Datastreams({streams['水压']})/Observations"
    client = device_client(live)
    try:
        now = datetime.now(timezone.utc)
        publish_all(client, [(topic, {"phenomenonTime": now.isoformat(), "result": 0.32})])
        with db.connect(database, autocommit=True) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM sta_observations WHERE stream_id = %s",
                                          (streams["水压"],)).fetchone()[0] == 1, 30, "the first reading stored")
            assert conn.execute("SELECT count(*) FROM sensing_alerts WHERE device_id = %s", (dev,)).fetchone()[0] == 0
            publish_all(client, [(topic, {"phenomenonTime": datetime.now(timezone.utc).isoformat(), "result": 0.05})])
            row = wait_for(lambda: conn.execute("SELECT rule_id, state, evidence FROM sensing_alerts WHERE device_id = %s",
                                                (dev,)).fetchone(), 30, "the alert of the low reading")
    finally:
        client.disconnect()
        client.loop_stop()
    assert row[0] == "hp-low" and row[1] == "open" and row[2]["value"] == 0.05
