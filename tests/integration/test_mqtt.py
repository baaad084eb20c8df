"""MQTT against a real mosquitto (one per module, on a free port, files in tmp): the broker's users
and ACL, create-by-publish stored exactly once, notifications to STA subscribers, the worker's
persistent session, dead letters, `geotwin mqtt up|status|down`."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from sensing.mqtt import control, credentials
from sensing.mqtt.broker import SERVICE_USER, LocalBroker
from sensing.mqtt.testing import Collector, broker, device_client, publish_all, wait_for
from sensing.mqtt.worker import Message, Worker, after_batch_hooks
from spatial_api import db


def make_stream(conn, *, location: bool = True, multi: int = 0) -> dict:
    """A Thing (with a Location unless told) and one Datastream (or a MultiDatastream of ``multi``
    ObservedProperties), by SQL."""
    tag = uuid.uuid4().hex[:8]
    thing = conn.execute("INSERT INTO sta_things (name) VALUES (%s) RETURNING id", (f"thing {tag}",)).fetchone()[0]
    loc = None
    if location:
        loc = conn.execute(
            """INSERT INTO sta_locations (name, encoding_type, location, geom)
               VALUES (%s, 'application/geo+json', %s::jsonb, ST_SetSRID(ST_MakePoint(114.1, 22.6), 4326))
               RETURNING id""",
            (f"loc {tag}", json.dumps({"type": "Point", "coordinates": [114.1, 22.6 + int(tag[:4], 16) * 1e-6]}))
        ).fetchone()[0]
        conn.execute("INSERT INTO sta_thing_locations VALUES (%s, %s)", (thing, loc))
    sensor = conn.execute("INSERT INTO sta_sensors (name, encoding_type, metadata) VALUES ('meter', 'text/plain', 'm') "
                          "RETURNING id").fetchone()[0]
    ops = [conn.execute("INSERT INTO sta_observed_properties (name, definition) VALUES (%s, 'urn:x') RETURNING id",
                        (f"op {tag} {i}",)).fetchone()[0] for i in range(max(1, multi))]
    if multi:
        ds = conn.execute(
            """INSERT INTO sta_multi_datastreams (name, multi_observation_data_types, unit_of_measurements,
                                                   thing_id, sensor_id)
               VALUES ('md', %s, '[]'::jsonb, %s, %s) RETURNING id""",
            (["OM_Measurement"] * multi, thing, sensor)).fetchone()[0]
        for rank, op in enumerate(ops):
            conn.execute("INSERT INTO sta_multi_datastream_properties VALUES (%s, %s, %s)", (ds, op, rank))
    else:
        ds = conn.execute(
            """INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id,
                                             observed_property_id)
               VALUES ('volume', 'OM_Measurement', '{"name": "cubic metre", "symbol": "m3"}', %s, %s, %s)
               RETURNING id""", (thing, sensor, ops[0])).fetchone()[0]
    conn.commit()
    return {"thing": thing, "location": loc, "stream": ds,
            "topic": f"v1.1/{'MultiDatastreams' if multi else 'Datastreams'}({ds})/Observations"}


def count(conn, stream: int) -> int:
    n = conn.execute("SELECT count(*) FROM sta_observations WHERE stream_id = %s", (stream,)).fetchone()[0]
    conn.commit()
    return n


@pytest.fixture(scope="module")
def mqtt(database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("mqtt")) as s:
        yield s


@pytest.fixture(scope="module")
def worker(mqtt):
    w = Worker(mqtt, client_id=f"test-worker-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
    assert w.wait_connected(30), "the worker did not connect"
    yield w
    w.stop()


def device(mqtt, conn, streams: list[int], name: str | None = None):
    """A device user allowed to write its streams' topics, and a connected client."""
    name = name or f"dev-{uuid.uuid4().hex[:8]}"
    pw = credentials.issue(conn, name, role="device", write_topics=[f"v1.1/Datastreams({s})/Observations"
                                                                     for s in streams], settings=mqtt)
    conn.commit()
    return name, pw


def test_password_file_is_mosquittos_format(tmp_path):
    """Our $7$ hash is the one mosquitto_passwd writes (PBKDF2-SHA512, 101 iterations, 12-byte salt)."""
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "alice", "s3cret"], check=True)
    theirs = f.read_text().strip().split(":", 1)[1]
    assert credentials.verify_password("s3cret", theirs)
    assert not credentials.verify_password("wrong", theirs)
    _, _, iterations, salt, _ = theirs.split("$")
    import base64

    ours = credentials.hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == theirs


def test_broker_files_and_idempotent_up(mqtt):
    b = LocalBroker(mqtt)
    st = b.status()
    assert st.running and st.pid and st.port == int(mqtt.mqtt_url.rsplit(":", 1)[1])
    conf = b.conf_file.read_text()
    for line in ("allow_anonymous false", "persistence true", "max_queued_messages 0", "max_inflight_messages",
                 "persistent_client_expiration", f"listener {st.port} 127.0.0.1", "log_dest file"):
        assert line in conf, line
    assert oct(b.service_password_file.stat().st_mode & 0o777) == "0o600"
    assert control.up(mqtt)[1] is False  # already running: reloaded, not restarted
    assert b.status().pid == st.pid
    assert f"user {SERVICE_USER}\n" in b.acl_file.read_text()


def test_bad_credentials_and_anonymous_refused(mqtt):
    c = device_client(mqtt, "nobody", "wrong")
    assert c.connect_result.is_failure
    c.loop_stop()
    ep_less = device_client(mqtt, "geotwin-service", "not-the-password")
    assert ep_less.connect_result.is_failure
    ep_less.loop_stop()


def test_create_by_publish_stored_once(mqtt, worker, conn):
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    c = device_client(mqtt, name, pw)
    obs = {"result": 1.25, "phenomenonTime": "2026-12-07T08:00:00+08:00"}
    before = worker.stats.received
    # the same observation three times (a device repeating after a lost PUBACK), in two spellings of the time
    publish_all(c, [(s["topic"], obs), (s["topic"], obs),
                    (s["topic"], {"result": 1.25, "phenomenonTime": "2026-12-07T00:00:00Z"}),
                    (s["topic"], {"result": 2, "phenomenonTime": "2026-12-07T08:30:00"})])  # naive = district time
    wait_for(lambda: worker.stats.received >= before + 4, what="the worker to take 4 messages")
    wait_for(lambda: count(conn, s["stream"]) == 2, what="2 stored observations")
    rows = conn.execute("SELECT phenomenon_time_start, result_number, feature_of_interest_id FROM sta_observations "
                        "WHERE stream_id = %s ORDER BY 1", (s["stream"],)).fetchall()
    assert [r[1] for r in rows] == [1.25, 2.0]
    assert rows[1][0].isoformat() == "2026-12-07T00:30:00+00:00"
    # the FeatureOfInterest generated from the Thing's Location, the same for both
    assert rows[0][2] is not None and rows[0][2] == rows[1][2]
    feature = conn.execute("SELECT f.feature = l.location FROM sta_features_of_interest f, sta_locations l "
                           "WHERE f.id = %s AND l.id = %s", (rows[0][2], s["location"])).fetchone()[0]
    assert feature
    # the maintained stats agree
    assert conn.execute("SELECT observations, last_result_number FROM sta_stream_stats WHERE stream_id = %s",
                        (s["stream"],)).fetchone() == (2, 2.0)
    c.loop_stop()


def test_subscriber_receives_created_entity(mqtt, worker, conn):
    s = make_stream(conn)
    name, pw = device(mqtt, conn, [s["stream"]])
    sub = Collector(mqtt, [s["topic"], "v1.1/Observations"])
    c = device_client(mqtt, name, pw)
    received = worker.stats.received
    publish_all(c, [(s["topic"], {"result": {"open": True}, "phenomenonTime": "2026-12-07T09:00:00+08:00",
                                  "parameters": {"battery": 87}})])

    def entities(topic):
        return [p for p in sub.on(topic) if isinstance(p, dict) and "@iot.id" in p]

    got = wait_for(lambda: entities(s["topic"]), what="the created Observation on the Datastream's topic")[0]
    oid = conn.execute("SELECT id FROM sta_observations WHERE stream_id = %s", (s["stream"],)).fetchone()[0]
    conn.commit()
    assert got["@iot.id"] == oid
    assert got["result"] == {"open": True} and got["parameters"] == {"battery": 87}
    assert got["phenomenonTime"] == "2026-12-07T01:00:00Z"
    assert got["@iot.selfLink"].endswith(f"/sta/v1.1/Observations({oid})")
    assert got["Datastream@iot.navigationLink"].endswith(f"/Observations({oid})/Datastream")
    assert wait_for(lambda: [e for e in entities("v1.1/Observations") if e["@iot.id"] == oid])
    # the notification carries the user property that keeps other workers from taking it for a
    # create; this worker does not even receive it ("No Local")
    props = next(p for t, m, p in sub.messages if t == s["topic"] and isinstance(m, dict) and "@iot.id" in m)
    assert ("geotwin", "notification") in props.UserProperty
    assert worker.stats.received == received + 1 and worker.stats.dead == 0
    assert count(conn, s["stream"]) == 1
    sub.close()
    c.loop_stop()


def test_acl_device_writes_only_its_own_stream(mqtt, worker, conn):
    mine, other = make_stream(conn), make_stream(conn)
    name, pw = device(mqtt, conn, [mine["stream"]])
    c = device_client(mqtt, name, pw)
    acks = publish_all(c, [(other["topic"], {"result": 666, "phenomenonTime": "2026-12-07T10:00:00Z"}),
                           ("v1.1/Observations", {"result": 667}),
                           (mine["topic"], {"result": 1, "phenomenonTime": "2026-12-07T10:00:00Z"})])
    # MQTT 5: the broker says so (and mosquitto 2.0.11 then drops the connection; paho reconnects)
    assert [str(a) for a in acks[:2]] == ["Not authorized", "Not authorized"]
    wait_for(lambda: count(conn, mine["stream"]) == 1, what="the device's own observation")
    # messages of one client are delivered in order: the forbidden ones would have come first
    assert count(conn, other["stream"]) == 0
    # and a device cannot read: mosquitto grants the subscription but delivers nothing it may not read
    sub = Collector(mqtt, [mine["topic"]], username=name, password=pw)
    svc = Collector(mqtt, [mine["topic"]])
    publish_all(c, [(mine["topic"], {"result": 2, "phenomenonTime": "2026-12-07T10:01:00Z"})])
    wait_for(lambda: [m for m in svc.on(mine["topic"]) if isinstance(m, dict) and m.get("result") == 2
                      and "@iot.id" in m], what="the notification of the second observation")
    assert sub.on(mine["topic"]) == []
    sub.close()
    svc.close()
    # revoked: it cannot connect any more
    assert credentials.revoke(conn, name, settings=mqtt)
    conn.commit()
    again = device_client(mqtt, name, pw)
    assert again.connect_result.is_failure
    again.loop_stop()
    c.loop_stop()


def test_credentials_refuse_bad_names_and_topics(conn, mqtt):
    with pytest.raises(credentials.CredentialError, match="username"):
        credentials.issue(conn, "bad name", settings=mqtt)
    with pytest.raises(credentials.CredentialError, match="whole level"):
        credentials.issue(conn, "dev-x", write_topics=["v1.1/Datastreams(+)/Observations"], settings=mqtt)
    with pytest.raises(credentials.CredentialError, match="role"):
        credentials.issue(conn, "dev-x", role="admin", settings=mqtt)
    conn.rollback()


def test_bad_payloads_dead_lettered(mqtt, worker, conn):
    s = make_stream(conn)
    multi = make_stream(conn, multi=2)
    svc = device_client(mqtt)  # the service user may publish anywhere under v1.1
    missing = 10**12 + 7
    publish_all(svc, [
        (s["topic"], b"{not json"),
        (s["topic"], {"phenomenonTime": "2026-12-07T10:00:00Z"}),
        (s["topic"], {"result": 1, "phenomenonTime": "yesterday"}),
        (s["topic"], {"result": 1, "colour": "red"}),
        (f"v1.1/Datastreams({missing})/Observations", {"result": 1}),
        ("v1.1/Things(1)/Observations", {"result": 1}),
        (multi["topic"], {"result": [1], "phenomenonTime": "2026-12-07T10:00:00Z"}),
        (multi["topic"], {"result": [1, 2], "phenomenonTime": "2026-12-07T10:00:00Z"}),
        (s["topic"], {"result": 3, "phenomenonTime": "2026-12-07T10:00:00Z"}),
    ])
    wait_for(lambda: count(conn, s["stream"]) == 1 and count(conn, multi["stream"]) == 1,
             what="the good messages after the bad ones")

    def letters():
        if not worker.dead_letters.exists():
            return []
        return [json.loads(line) for line in worker.dead_letters.read_text().splitlines()]

    got = wait_for(lambda: [d for d in letters() if str(s["stream"]) in d["topic"] or str(missing) in d["topic"]
                            or "Things(1)" in d["topic"] or str(multi["stream"]) in d["topic"]]
                   if len(letters()) >= 7 else None, what="7 dead letters")
    reasons = " | ".join(d["reason"] for d in got)
    for expected in ("not JSON", "'result' is required", "phenomenonTime", "colour",
                     f"Datastreams({missing}) does not exist", "create Observations by publishing to",
                     "array of 2 values"):
        assert expected in reasons, (expected, reasons)
    assert any(d["payload"] == "{not json" for d in got)
    stored = conn.execute("SELECT result_json FROM sta_observations WHERE stream_id = %s",
                          (multi["stream"],)).fetchone()
    assert stored[0] == [1, 2]


def test_after_batch_hooks_see_the_streams(mqtt, worker, conn):
    s = make_stream(conn)
    seen = []

    def hook(hconn, stream_ids):
        # the batch is committed: the hook sees the rows
        n = hconn.execute("SELECT count(*) FROM sta_observations WHERE stream_id = ANY(%s)",
                          (stream_ids,)).fetchone()[0]
        seen.append((list(stream_ids), n))

    after_batch_hooks.append(hook)
    try:
        svc = device_client(mqtt)
        publish_all(svc, [(s["topic"], {"result": 5, "phenomenonTime": "2026-12-07T11:00:00Z"})])
        got = wait_for(lambda: [x for x in seen if s["stream"] in x[0]], what="the hook called with the stream")
        assert got[0][1] >= 1
        svc.loop_stop()
    finally:
        after_batch_hooks.remove(hook)


def test_redelivered_message_without_time_is_stored_once(mqtt, conn):
    """No phenomenonTime: stored at its receive time; the broker's second delivery (DUP) of the same
    message finds the first copy and is refused — a later identical reading (not a DUP) is new."""
    s = make_stream(conn)
    w = Worker(mqtt, client_id="direct", notify=False)
    body = b'{"result": 9.5}'
    w.process_batch([Message(0, 1, 0, s["topic"], body, time.time() - 5)])
    w.process_batch([Message(0, 2, 0, s["topic"], body, time.time(), dup=True)])
    assert count(conn, s["stream"]) == 1
    assert w.stats.duplicates == 1
    w.process_batch([Message(0, 3, 0, s["topic"], body, time.time())])
    assert count(conn, s["stream"]) == 2


def test_cli_up_status_down(database, tmp_path, monkeypatch):
    """`geotwin mqtt up | status | down`: idempotent; status exits 1 when the broker is not running."""
    from typer.testing import CliRunner

    from sensing.mqtt.cli import DEFAULT_WORKER, app
    from sensing.mqtt.testing import free_port
    from spatial_api.config import reset_settings

    port = free_port()
    monkeypatch.setenv("GEOTWIN_MQTT_DIR", str(tmp_path / "broker"))
    monkeypatch.setenv("GEOTWIN_MQTT_URL", f"mqtt://127.0.0.1:{port}")
    reset_settings()
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["status"])
        assert r.exit_code == 1 and "not running" in r.output
        r = runner.invoke(app, ["up"])
        assert r.exit_code == 0 and "started" in r.output and f":{port}" in r.output, r.output
        pid = LocalBroker().pid()
        r = runner.invoke(app, ["up"])
        assert r.exit_code == 0 and "running (users reloaded)" in r.output
        assert LocalBroker().pid() == pid
        r = runner.invoke(app, ["status", "--json"])
        info = json.loads(r.output)
        assert r.exit_code == 0 and info["running"] and info["pid"] == pid and info["port"] == port
        # `up` made the default worker's session: what is published before the worker first runs waits for it
        svc = device_client(LocalBroker().settings)
        database_conn = db.connect(database)
        s = make_stream(database_conn)
        publish_all(svc, [(s["topic"], {"result": 1, "phenomenonTime": "2026-12-07T13:00:00Z"})])
        svc.loop_stop()
        w = Worker(LocalBroker().settings, client_id=DEFAULT_WORKER, batch_ms=20).start()
        try:
            wait_for(lambda: count(database_conn, s["stream"]) == 1, what="the early message stored")
        finally:
            w.stop()
            database_conn.close()
        r = runner.invoke(app, ["down"])
        assert r.exit_code == 0 and "stopped" in r.output
        assert runner.invoke(app, ["down"]).output.strip() == "not running"
    finally:
        LocalBroker().down()
        reset_settings()
