"""Ingestion that scales out (issue 18) against a real mosquitto: workers sharing the stream
(``$share/geotwin/…``), each observation stored once; the announcer (``geotwin mqtt notifier``)
publishing exactly the committed rows from NOTIFY, catching up after a gap; the shared sessions
given their subscription back by ``start`` after a broker restart (mosquitto 2.0.11 does not)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from sensing.mqtt.announce import Announcer
from sensing.mqtt.broker import LocalBroker, forget_session
from sensing.mqtt.testing import Collector, broker, device_client, publish_all, wait_for
from sensing.mqtt.worker import ANNOUNCE_PAYLOAD_MAX, Worker, announce_payloads, id_runs
from tests.integration.test_mqtt import count, device, make_stream


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt-scaleout")) as s:
        yield s


def _workers(mqtt, n: int, **options) -> list[Worker]:
    tag = uuid.uuid4().hex[:6]
    ws = [Worker(mqtt, client_id=f"share-{tag}-{i}", batch_ms=20, shared=True, **options).start() for i in range(n)]
    for w in ws:
        assert w.wait_connected(30), f"{w.client_id} did not subscribe"
    return ws


def _retire(mqtt, ws: list[Worker]) -> None:
    for w in ws:
        w.stop()
    for w in ws:
        forget_session(mqtt, w.client_id)


def test_id_runs_and_payload_chunks():
    assert id_runs([9, 3, 4, 5, 4, 11, 10]) == [(3, 5), (9, 11)]
    assert id_runs([]) == []
    t = datetime(2026, 12, 7, tzinfo=timezone.utc)
    ids = list(range(1, 20001, 2))  # 10,000 runs of one id: more than one payload
    payloads = announce_payloads("s", ids, t, t)
    assert len(payloads) > 1 and all(len(p) < ANNOUNCE_PAYLOAD_MAX + 100 for p in payloads)
    back = [i for p in payloads for lo, hi in json.loads(p)["r"] for i in range(lo, hi + 1)]
    assert back == ids


def test_two_shared_workers_split_the_stream_stored_once(mqtt, conn):
    s = make_stream(conn)
    ws = _workers(mqtt, 2, notify=False)
    try:
        assert set(LocalBroker(mqtt).shared_sessions()) >= {w.client_id for w in ws}  # recorded for a restart
        pub = device_client(mqtt)
        n = 600
        publish_all(pub, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T01:{i // 60:02d}:{i % 60:02d}Z"})
                          for i in range(n)])
        wait_for(lambda: count(conn, s["stream"]) >= n, 60, f"{n} stored")
        # the same messages again (a device that did not get its PUBACKs): refused by the unique index
        publish_all(pub, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T01:{i // 60:02d}:{i % 60:02d}Z"})
                          for i in range(n)])
        wait_for(lambda: sum(w.stats.duplicates for w in ws) >= n, 60, "the copies refused")
        assert count(conn, s["stream"]) == n
        shares = [w.stats.stored for w in ws]
        assert sum(shares) == n and min(shares) > 0, f"the stream was not shared: {shares}"
        pub.disconnect()
        pub.loop_stop()
    finally:
        _retire(mqtt, ws)
    assert not {w.client_id for w in ws} & set(LocalBroker(mqtt).shared_sessions())  # forgotten


def test_announcer_publishes_each_committed_row_once(mqtt, conn):
    s = make_stream(conn)
    announcer = Announcer(mqtt).start()
    assert announcer.wait_listening(30)
    ws = _workers(mqtt, 2, notify=True, announce=True)
    sub = Collector(mqtt, [s["topic"], "v1.1/Observations"])
    try:
        pub = device_client(mqtt)
        items = [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T02:00:{i:02d}Z"}) for i in range(40)]
        publish_all(pub, items)
        publish_all(pub, items[:10])  # duplicates: stored once, announced once
        wait_for(lambda: count(conn, s["stream"]) == 40, 30, "40 stored")
        ids = {r[0] for r in conn.execute("SELECT id FROM sta_observations WHERE stream_id = %s", (s["stream"],))}
        conn.commit()

        def announced():
            return [p for p in sub.on(s["topic"]) if isinstance(p, dict) and "@iot.id" in p]

        wait_for(lambda: len(announced()) >= 40, 30, "40 notifications on the Datastream's topic")
        got = announced()
        assert sorted(p["@iot.id"] for p in got) == sorted(ids)  # each stored row, once
        assert {p["result"] for p in got} == set(range(40))
        assert got[0]["@iot.selfLink"].endswith(f"/Observations({got[0]['@iot.id']})")
        wait_for(lambda: sum(1 for p in sub.on("v1.1/Observations") if isinstance(p, dict)
                             and p.get("@iot.id") in ids) >= 40, 30, "the entity-set topic too")
        # the workers took none of the announcer's notifications for a create request
        assert sum(w.stats.dead for w in ws) == 0
        assert count(conn, s["stream"]) == 40
        pub.disconnect()
        pub.loop_stop()
    finally:
        sub.close()
        announcer.stop()
        _retire(mqtt, ws)


def test_announcer_catches_up_after_a_gap(mqtt, conn):
    s = make_stream(conn)
    first = Announcer(mqtt).start()
    assert first.wait_listening(30)
    ws = _workers(mqtt, 1, notify=True, announce=True)
    pub = device_client(mqtt)
    sub = Collector(mqtt, [s["topic"]])
    try:
        publish_all(pub, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T03:00:{i:02d}Z"}) for i in range(5)])
        wait_for(lambda: first.published >= 5, 30, "the first five announced")
        first.stop()  # the announcer is away: NOTIFY reaches no one
        publish_all(pub, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T03:00:{i:02d}Z"})
                          for i in range(5, 12)])
        wait_for(lambda: count(conn, s["stream"]) == 12, 30, "12 stored")
        second = Announcer(mqtt).start()  # the same state file: the highest id announced
        try:
            assert second.wait_listening(30)
            wait_for(lambda: len({p["@iot.id"] for p in sub.on(s["topic"]) if isinstance(p, dict)
                                  and "@iot.id" in p}) >= 12, 30, "all 12 announced")
            assert second.caught_up >= 7
            results = sorted(p["result"] for p in sub.on(s["topic"]) if isinstance(p, dict) and "@iot.id" in p)
            assert results == list(range(12))  # none twice
        finally:
            second.stop()
    finally:
        sub.close()
        pub.disconnect()
        pub.loop_stop()
        _retire(mqtt, ws)


def test_restarted_broker_gives_shared_sessions_their_subscription_back(mqtt, conn):
    """The workers are away; the broker restarts; a device publishes at once. mosquitto 2.0.11
    alone would drop it (no subscriber: the shared subscription is not restored); `start`
    resubscribes the recorded sessions before letting devices in, so the workers find it queued."""
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    ws = _workers(mqtt, 2, notify=False)
    ids = [w.client_id for w in ws]
    for w in ws:
        w.stop()
    b = LocalBroker(mqtt)
    try:
        assert b.down()
        assert b.start()
        dev = device_client(mqtt, name, pw)
        publish_all(dev, [(s["topic"], {"result": i, "phenomenonTime": f"2026-12-07T04:00:{i:02d}Z"})
                          for i in range(30)])
        dev.disconnect()
        dev.loop_stop()
        ws = [Worker(mqtt, client_id=cid, batch_ms=20, shared=True, notify=False).start() for cid in ids]
        wait_for(lambda: count(conn, s["stream"]) >= 30, 60, "the 30 published while no worker ran")
        assert count(conn, s["stream"]) == 30
    finally:
        _retire(mqtt, ws)


def test_the_shared_session_record_keeps_every_worker(mqtt):
    """Workers record themselves at once (a supervisor's threads, processes): none may be lost —
    an unlocked read-modify-write kept one of two workers here on a loaded machine."""
    import threading

    broker, tag = LocalBroker(mqtt), uuid.uuid4().hex[:6]
    ids = [f"race-{tag}-{i}" for i in range(24)]
    go = threading.Barrier(len(ids))

    def run(action, cid):
        go.wait()
        action(cid)

    for action in (broker.add_shared_session, broker.remove_shared_session):
        threads = [threading.Thread(target=run, args=(action, cid)) for cid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recorded = set(broker.shared_sessions()) & set(ids)
        assert recorded == (set(ids) if action == broker.add_shared_session else set())
