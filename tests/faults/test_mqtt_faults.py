"""MQTT ingestion survives faults with exact counts (K published → K stored, no duplicate): the broker
restarted while devices publish, the worker process SIGKILLed mid-stream and started again, the
worker's database sessions terminated mid-stream (``pg_terminate_backend``), and a full PostgreSQL
stop and start mid-stream (on the fault suite's own cluster, so that no other test is disturbed).
Each scenario waits on counts, never on fixed sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sensing.mqtt.broker import LocalBroker, forget_session
from sensing.mqtt.testing import broker, device_client, wait_for
from sensing.mqtt.worker import Worker
from tests.integration.test_mqtt import make_stream

pytestmark = pytest.mark.timeout(300)

K = 1500


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt-faults")) as s:
        yield s


class Publisher(threading.Thread):
    """A device publishing K observations at QoS 1 with a persistent session (what it sent but was
    not acknowledged is sent again after a reconnect), about ``rate`` a second."""

    def __init__(self, settings, topic: str, k: int = K, rate: float = 1500, timed: bool = True):
        super().__init__(daemon=True)
        self.topic, self.k, self.rate, self.timed = topic, k, rate, timed
        self.client = device_client(settings, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
        self.sent = 0

    def run(self):
        t0 = time.monotonic()
        for i in range(self.k):
            when = '"phenomenonTime": "2026-12-07T00:00:00Z", ' if self.timed else ""  # else: receive time
            self.client.publish(self.topic, f'{{"result": {i}, {when}"parameters": {{"seq": {i}}}}}', 1)
            self.sent = i + 1
            ahead = (i + 1) / self.rate - (time.monotonic() - t0)
            if ahead > 0:  # pacing, so that the fault lands mid-stream
                time.sleep(ahead)

    def finish(self, timeout=120):
        self.join(timeout)
        wait_for(lambda: len(self.client.pubacks) >= self.k, timeout, f"PUBACKs of all {self.k} messages")
        self.client.disconnect()
        self.client.loop_stop()


def stored(settings, stream: int) -> tuple[int, int]:
    from spatial_api import db

    with db.connect(settings) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT parameters->>'seq') FROM sta_observations "
                            "WHERE stream_id = %s", (stream,)).fetchone()


def missing(settings, stream: int) -> list[int]:
    from spatial_api import db

    with db.connect(settings) as conn:
        return [r[0] for r in conn.execute(
            "SELECT i FROM generate_series(0, %s - 1) i WHERE NOT EXISTS (SELECT 1 FROM sta_observations "
            "WHERE stream_id = %s AND (parameters->>'seq')::int = i)", (K, stream))]


def exactly_k(settings, stream: int, timeout: float = 60) -> None:
    try:
        wait_for(lambda: stored(settings, stream)[0] >= K, timeout, f"{K} stored observations")
    except AssertionError:
        gone = missing(settings, stream)
        raise AssertionError(f"{len(gone)} of {K} not stored: {gone[:20]}…") from None
    n, distinct = stored(settings, stream)
    assert (n, distinct) == (K, K), f"stored {n}, distinct {distinct}, published {K}"
    from spatial_api import db

    with db.connect(settings) as conn:  # the maintained count agrees
        assert conn.execute("SELECT observations FROM sta_stream_stats WHERE stream_id = %s",
                            (stream,)).fetchone()[0] == K


def test_broker_restart_while_publishing(mqtt, conn):
    s = make_stream(conn)
    w = Worker(mqtt, client_id=f"fault-a-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
    try:
        assert w.wait_connected(30)
        pub = Publisher(mqtt, s["topic"])
        pub.start()
        wait_for(lambda: stored(mqtt, s["stream"])[0] >= K // 4, 60, "a quarter stored before the restart")
        b = LocalBroker(mqtt)
        pid = b.pid()
        assert b.down()   # SIGTERM: mosquitto writes its persistence file
        assert b.start()  # a new process, same data (and the same configuration)
        assert b.pid() != pid
        pub.finish()
        exactly_k(mqtt, s["stream"])
        assert w.stats.reconnects >= 1
    finally:
        w.stop()
        forget_session(mqtt, w.client_id)


def _worker_process(settings, client_id: str, log: Path) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GEOTWIN_")},
           "GEOTWIN_HOME": str(settings.home), "GEOTWIN_DB_SCHEMA": settings.db_schema,
           "GEOTWIN_MQTT_DIR": str(settings.mqtt_home), "GEOTWIN_MQTT_URL": settings.mqtt_url}
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "spatial_api", "mqtt", "worker", "--client-id", client_id,
                                 "--batch-ms", "20", "--batch-size", "200"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_worker_sigkill_mid_stream(mqtt, conn, tmp_path):
    s = make_stream(conn)
    cid = f"fault-b-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    proc = _worker_process(mqtt, cid, log)
    try:
        wait_for(lambda: log.exists() and f"{cid} subscribed" in log.read_text(), 60, "the worker's subscription")
        pub = Publisher(mqtt, s["topic"], timed=False)  # redelivered copies must find their first time
        pub.start()
        wait_for(lambda: stored(mqtt, s["stream"])[0] >= K // 4, 60, "a quarter stored before the kill")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        killed_at = stored(mqtt, s["stream"])[0]
        assert killed_at < K, "the stream ended before the kill: nothing was tested"
        proc = _worker_process(mqtt, cid, log)  # same client id: its session, with what it had not acked
        pub.finish()
        exactly_k(mqtt, s["stream"])
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        forget_session(mqtt, cid)


def test_database_sessions_terminated_mid_stream(mqtt, conn):
    s = make_stream(conn)
    w = Worker(mqtt, client_id=f"fault-c-{uuid.uuid4().hex[:6]}", batch_ms=20, batch_size=200).start()
    try:
        assert w.wait_connected(30)
        pub = Publisher(mqtt, s["topic"])
        pub.start()
        from spatial_api import db

        with db.connect(mqtt, autocommit=True) as admin:
            for fraction in (4, 2):
                wait_for(lambda f=fraction: stored(mqtt, s["stream"])[0] >= K // f, 60, f"1/{fraction} stored")
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE application_name = %s", (w.application_name,)).fetchone()[0]
                assert killed == 1
        pub.finish()
        exactly_k(mqtt, s["stream"])
        assert w.stats.db_retries >= 1
    finally:
        w.stop()
        forget_session(mqtt, w.client_id)


# -- a full PostgreSQL restart, on a cluster of this suite's own -----------------------------------

from tests.faults.test_faults import cluster  # noqa: F401  (the fault suite's own PostgreSQL)


def test_postgresql_restart_mid_stream(cluster, tmp_path):  # noqa: F811
    """The database stopped while devices publish, started again: the worker keeps what it has not
    committed unacknowledged, reconnects and stores every message once."""
    from spatial_api import db

    settings, c = cluster
    with broker(settings, tmp_path / "mqtt") as s:
        with db.connect(s) as conn:
            st = make_stream(conn)
            conn.commit()
        w = Worker(s, client_id=f"fault-d-{uuid.uuid4().hex[:6]}", batch_ms=20, batch_size=200).start()
        try:
            assert w.wait_connected(30)
            pub = Publisher(s, st["topic"], rate=300)  # 5 s of stream: the stop lands mid-stream on a loaded machine
            pub.start()
            wait_for(lambda: stored(s, st["stream"])[0] >= K // 4, 60, "a quarter stored before the restart")
            sent_at_stop = pub.sent  # (a stop on a loaded machine takes seconds: counted as it begins)
            assert c.stop()
            try:
                # devices go on publishing into the broker while the database is away
                assert sent_at_stop < K, "the stream ended before the restart: nothing was tested"
                wait_for(lambda: pub.sent >= min(K, sent_at_stop + K // 4), 60, "publishing during the outage")
            finally:
                c.start()
            pub.finish()
            exactly_k(s, st["stream"], timeout=120)
            assert w.stats.db_retries >= 1
        finally:
            w.stop()
            forget_session(s, w.client_id)


# -- several workers on the shared subscription ------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_two_shared_workers_one_sigkilled_mid_stream(mqtt, conn, tmp_path):
    """`geotwin mqtt worker --workers 2`: one worker process SIGKILLed mid-stream; the supervisor
    starts it again on the same session (which kept its share, unacknowledged), the other goes on:
    every published observation stored once."""
    s = make_stream(conn)
    base = f"fault-e-{uuid.uuid4().hex[:6]}"
    ids = [f"{base}-s1", f"{base}-s2"]
    log = tmp_path / "workers.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GEOTWIN_")},
           "GEOTWIN_HOME": str(mqtt.home), "GEOTWIN_DB_SCHEMA": mqtt.db_schema,
           "GEOTWIN_MQTT_DIR": str(mqtt.mqtt_home), "GEOTWIN_MQTT_URL": mqtt.mqtt_url}
    with open(log, "ab") as out:
        sup = subprocess.Popen([sys.executable, "-m", "spatial_api", "mqtt", "worker", "--client-id", base,
                                "--workers", "2", "--no-notify", "--batch-ms", "20", "--batch-size", "200"],
                               env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: all(f"{cid} subscribed" in log.read_text() for cid in ids), 90, "both workers' subscriptions")
        pub = Publisher(mqtt, s["topic"], rate=500, timed=False)  # 3 s of stream; copies must find their first time
        pub.start()
        wait_for(lambda: stored(mqtt, s["stream"])[0] >= K // 4, 60, "a quarter stored before the kill")
        victim = next(p for p in _children(sup.pid) if ids[1] in _cmdline(p))
        os.kill(victim, signal.SIGKILL)
        killed_at = stored(mqtt, s["stream"])[0]
        assert killed_at < K, "the stream ended before the kill: nothing was tested"
        wait_for(lambda: any(ids[1] in _cmdline(p) for p in _children(sup.pid) if p != victim), 60,
                 "the supervisor starting the killed worker again")
        pub.finish()
        exactly_k(mqtt, s["stream"], timeout=120)
        assert log.read_text().count(f"{ids[1]} subscribed") >= 2
    finally:
        sup.terminate()
        sup.wait(60)
        for cid in ids:
            forget_session(mqtt, cid)


def test_broker_restart_with_two_shared_workers(mqtt, conn):
    """Two workers share the stream of a device (its own user, a persistent session) while the broker
    restarts: the gate in `start` keeps devices out until the shared subscriptions are back, the
    device sends again what was not acknowledged — K published, K stored."""
    from tests.integration.test_mqtt import device

    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    tag = uuid.uuid4().hex[:6]
    ws = [Worker(mqtt, client_id=f"fault-f-{tag}-{i}", batch_ms=20, batch_size=200, shared=True).start()
          for i in range(2)]
    try:
        for w in ws:
            assert w.wait_connected(30)
        pub = Publisher(mqtt, s["topic"], rate=500)
        pub.client.disconnect()
        pub.client.loop_stop()
        pub.client = device_client(mqtt, name, pw, client_id=f"dev-{tag}", persistent=True)
        pub.start()
        wait_for(lambda: stored(mqtt, s["stream"])[0] >= K // 4, 60, "a quarter stored before the restart")
        b = LocalBroker(mqtt)
        assert b.down()
        assert pub.sent < K, "the stream ended before the restart: nothing was tested"
        assert b.start()
        pub.finish()
        exactly_k(mqtt, s["stream"], timeout=120)
        assert all(w.stats.reconnects >= 1 for w in ws)
        assert all(w.stats.stored > 0 for w in ws)
    finally:
        for w in ws:
            w.stop()
            forget_session(mqtt, w.client_id)
