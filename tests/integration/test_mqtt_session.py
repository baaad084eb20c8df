"""QoS 1 persistent sessions against a real mosquitto of this module's own (no other worker in the
shared group): what is published while the worker is away is stored when it comes back; a
persistent subscriber gets the notifications it missed."""

from __future__ import annotations

import uuid

import pytest

from sensing.mqtt.broker import forget_session
from sensing.mqtt.testing import Collector, broker, device_client, publish_all, wait_for
from sensing.mqtt.worker import Worker
from tests.integration.test_mqtt import count, device, make_stream


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt-session")) as s:
        yield s


def test_worker_session_keeps_messages_published_while_it_is_away(mqtt, conn):
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    cid = f"persist-{uuid.uuid4().hex[:6]}"
    w = Worker(mqtt, client_id=cid, batch_ms=20).start()
    assert w.wait_connected(30)
    w.stop()
    c = device_client(mqtt, name, pw)
    publish_all(c, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T10:{i:02d}:00Z"}) for i in range(50)])
    assert count(conn, s["stream"]) == 0  # no worker is connected: all 50 wait in the broker
    w2 = Worker(mqtt, client_id=cid, batch_ms=20).start()
    try:
        wait_for(lambda: count(conn, s["stream"]) == 50, what="50 observations after the worker came back")
        assert conn.execute("SELECT count(DISTINCT result_number) FROM sta_observations WHERE stream_id = %s",
                            (s["stream"],)).fetchone()[0] == 50
        assert w2.stats.stored == 50 and w2.stats.duplicates == 0
    finally:
        w2.stop()
        c.loop_stop()
        forget_session(mqtt, cid)


def test_persistent_subscriber_gets_missed_notifications(mqtt, conn):
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    sub_id = f"sub-{uuid.uuid4().hex[:6]}"
    sub = Collector(mqtt, [s["topic"]], client_id=sub_id, persistent=True)
    sub.close()  # away; its session (and subscription) stays
    w = Worker(mqtt, client_id=f"w-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
    try:
        assert w.wait_connected(30)
        c = device_client(mqtt, name, pw)
        publish_all(c, [(s["topic"], {"result": 7.5, "phenomenonTime": "2026-12-07T12:00:00Z"})])
        wait_for(lambda: count(conn, s["stream"]) == 1 and w.stats.batches >= 1, what="the observation stored")
        oid = conn.execute("SELECT id FROM sta_observations WHERE stream_id = %s", (s["stream"],)).fetchone()[0]
        conn.commit()
        back = Collector(mqtt, [s["topic"]], client_id=sub_id, persistent=True)
        got = wait_for(lambda: [m for m in back.on(s["topic"]) if isinstance(m, dict) and m.get("@iot.id") == oid],
                       what="the notification queued while the subscriber was away")
        assert got[0]["result"] == 7.5
        back.close()
        c.loop_stop()
    finally:
        w.stop()
        forget_session(mqtt, w.client_id)
        forget_session(mqtt, sub_id)


def test_unexpected_failure_gets_the_batch_delivered_again(mqtt, conn):
    """A batch that fails in an unforeseen way is not acknowledged: the worker reconnects and the
    broker delivers it again (stored once)."""
    s = make_stream(conn)

    class Flaky(Worker):
        failures = 0

        def process_batch(self, batch):
            if not Flaky.failures:
                Flaky.failures += 1
                raise RuntimeError("a bug")
            super().process_batch(batch)

    cid = f"flaky-{uuid.uuid4().hex[:6]}"
    w = Flaky(mqtt, client_id=cid, batch_ms=20).start()
    try:
        assert w.wait_connected(30)
        c = device_client(mqtt)
        publish_all(c, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T14:{i:02d}:00Z"}) for i in range(5)])
        wait_for(lambda: count(conn, s["stream"]) == 5, what="the 5 observations after the failure")
        assert Flaky.failures == 1 and w.stats.reconnects >= 1
        c.loop_stop()
    finally:
        w.stop()
        forget_session(mqtt, cid)
