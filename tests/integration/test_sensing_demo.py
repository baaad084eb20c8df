"""Issue 16: the demo's sensing data and the live simulator.

The small demo district (the folder `geotwin demo build --size small` writes, reused when complete)
with its buildings / addresses loaded into the test schema, then ``data.sensing_demo.load``: the
pilot's households on real residential buildings of 坂田 / 布吉, the other devices, their readings
(COPY), the planted cases present in the data, the alert rules evaluated at the reference time
(every planted case alerted, no guard case), a rebuild that replaces instead of adding. Then
``geotwin sensing simulate`` against a real mosquitto on a free port: N readings published and
received by a subscriber, the planted live cases, and publish → worker → alert."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta

import pytest
from typer.testing import CliRunner

from data import sensing_demo as sd
from sensing import simulator
from sensing.mqtt.testing import Collector, broker, wait_for
from spatial_api import db
from spatial_api.ingest import ingest_vector

LAYERS = ("streets", "communities", "addresses", "buildings")


@pytest.fixture(scope="module")
def demo(database):
    from data.demo import build_files

    m = build_files(database.home / "demo" / "small", size="small", seed=2024, reuse=True)
    for lf in m.layers:
        if lf.layer in LAYERS:
            ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from, crs=lf.crs,
                          encoding=lf.encoding, title_zh=lf.title_zh, title_en=lf.title_en,
                          access_level=lf.access_level, author="demo-builder", settings=database)
    summary = sd.load(m, database, force=True)
    return {"manifest": m, "plan": sd.read_plan(m.out_dir), "summary": summary,
            "ref": datetime.fromisoformat(m.sensing["reference_time"])}


def _volumes(conn, device_id: str, start: datetime, end: datetime) -> list[float]:
    return [r[0] for r in conn.execute(
        """SELECT o.result_number FROM sensing_devices d JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
           JOIN sta_observations o ON o.stream_id = ds.id
           WHERE d.device_id = %s AND ds.properties ->> 'key' = 'volume'
             AND o.phenomenon_time_start >= %s AND o.phenomenon_time_start < %s
           ORDER BY o.phenomenon_time_start""", (device_id, start, end))]


def _case(demo, kind: str) -> str:
    s = demo["manifest"].sensing
    (device,) = s["planted"].get(kind) or s["negative"][kind]
    return device


def test_households_live_in_real_residential_buildings_of_bantian_and_buji(demo, conn):
    s = demo["manifest"].sensing
    assert s["counts"]["water-meter"] == 40 and s["households_by_street"] == {"坂田街道": 24, "布吉街道": 16}
    rows = conn.execute(
        """SELECT d.device_id, d.street, d.community, d.building_id, d.address, d.restricted, d.household,
                  b.properties ->> 'use', a.properties ->> 'street', a.properties ->> 'community',
                  a.properties ->> 'full_address', ST_Distance(d.geom, ST_Transform(a.geom, 4326))
           FROM sensing_devices d
           LEFT JOIN features b ON b.layer = 'buildings' AND b.fid = d.building_id AND b.valid_to IS NULL
           LEFT JOIN LATERAL (SELECT * FROM features a WHERE a.layer = 'addresses' AND a.valid_to IS NULL
                              AND a.properties ->> 'building_id' = d.building_id LIMIT 1) a ON true
           WHERE d.type = 'water-meter' AND d.properties ->> 'source' = 'geotwin-demo'""").fetchall()
    assert len(rows) == 40
    phones = set()
    for (dev, street, community, building, address, restricted, hh, use, a_street, a_comm, a_full, dist) in rows:
        assert use == "residential", (dev, building)               # a real building of the demo, lived in
        assert street in ("坂田街道", "布吉街道") and (street, community) == (a_street, a_comm), dev
        assert address.startswith(a_full) and address.endswith("室"), (address, a_full)
        assert dist < 1e-6, dev                                    # at the address point
        assert restricted is True and dev.startswith("WM-BT-" if street == "坂田街道" else "WM-BJ-")
        assert set(hh) == {"resident", "family", "notes"} and 80 <= hh["resident"]["age"] <= 96
        for p in [hh["resident"]["phone"]] + [f["phone"] for f in hh["family"]]:
            assert p.startswith("1380000") and len(p) == 11 and p not in phones  # the fictional range, unique
            phones.add(p)
    # the other devices: not restricted, placed in the district's communities
    others = dict(conn.execute("SELECT type, count(*) FROM sensing_devices WHERE NOT restricted "
                               "AND properties ->> 'source' = 'geotwin-demo' GROUP BY type").fetchall())
    assert others == {"manhole-cover": 24, "hydrant-pressure": 10, "traffic-counter": 8}
    assert conn.execute("SELECT count(*) FROM sensing_devices WHERE properties ->> 'source' = 'geotwin-demo' "
                        "AND (community IS NULL OR geom IS NULL OR thing_id IS NULL)").fetchone()[0] == 0


def test_readings_counts_and_time_range(demo, conn):
    ref = demo["ref"]
    assert ref == datetime.combine(demo["manifest"].reference_date, time(sd.REFERENCE_HOUR), sd.CST)
    s = demo["manifest"].sensing
    n, t0, t1 = conn.execute(
        """SELECT sum(st.observations), min(st.phenomenon_time_start), max(st.phenomenon_time_end)
           FROM sensing_devices d JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
           JOIN sta_stream_stats st ON st.stream_id = ds.id
           WHERE d.properties ->> 'source' = 'geotwin-demo'""").fetchone()
    assert n == s["observations"] == demo["summary"]["observations"] > 60_000
    assert t1 == ref and t0 == ref - timedelta(days=28)  # 28 days of half-hours, ending at the reference time
    per_meter = conn.execute(
        """SELECT min(st.observations), max(st.observations), count(*) FROM sensing_devices d
           JOIN sta_datastreams ds ON ds.thing_id = d.thing_id JOIN sta_stream_stats st ON st.stream_id = ds.id
           WHERE d.type = 'water-meter' AND ds.properties ->> 'key' = 'volume'""").fetchone()
    assert per_meter == (28 * 48, 28 * 48, 40)
    # exactly as COPYed: the stats agree with the table
    exact = conn.execute(
        """SELECT count(*) FROM sta_observations o JOIN sta_datastreams ds ON ds.id = o.stream_id
           JOIN sensing_devices d ON d.thing_id = ds.thing_id WHERE d.properties ->> 'source' = 'geotwin-demo'"""
    ).fetchone()[0]
    assert exact == n


def test_the_planted_cases_are_in_the_data(demo, conn):
    ref = demo["ref"]
    fall = _volumes(conn, _case(demo, "inactivity"), ref - timedelta(hours=16), ref)
    assert len(fall) == 32 and sum(fall[4:]) == 0 and fall[3] > 0  # used water at 05:30, nothing for 14 h
    leak = _volumes(conn, _case(demo, "leak"), ref - timedelta(hours=30), ref)
    assert len(leak) == 60 and min(leak) > 0                       # use in every slot for 30 h
    away = _case(demo, "absence")
    assert sum(_volumes(conn, away, ref - timedelta(days=3), ref)) == 0
    assert sum(_volumes(conn, away, ref - timedelta(days=4), ref - timedelta(days=3))) > 0.05
    start, end, who = conn.execute("SELECT start_at, end_at, announced_by FROM sensing_absences WHERE device_id = %s",
                                   (away,)).fetchone()
    assert start <= ref - timedelta(days=3) and end > ref and who  # announced by the family
    day = ref.date() - timedelta(days=1)
    clean = _case(demo, "heavy-cleaning")
    busy = _volumes(conn, clean, datetime.combine(day, time(7), sd.CST), datetime.combine(day, time(21), sd.CST))
    night = _volumes(conn, clean, datetime.combine(day, time(23), sd.CST), datetime.combine(ref.date(), time(5), sd.CST))
    assert min(busy) > 0 and sum(busy) > 0.4 and sum(night) == 0
    # the other devices' cases, from the latest values
    latest = {(d, k): (num if num is not None else js) for d, k, num, js in conn.execute(
        """SELECT d.device_id, ds.properties ->> 'key', st.last_result_number, st.last_result_json
           FROM sensing_devices d JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
           JOIN sta_stream_stats st ON st.stream_id = ds.id WHERE d.properties ->> 'source' = 'geotwin-demo'""")}
    assert latest[(_case(demo, "manhole-open"), "open")] is True and latest[(_case(demo, "manhole-open"), "tilt")] > 10
    assert latest[(_case(demo, "manhole-flooded"), "water-level")] > 1.0
    assert latest[(_case(demo, "hydrant-low"), "pressure")] < 0.1
    opened = [d for (d, k), v in latest.items() if k == "open" and v is True]
    assert opened == [_case(demo, "manhole-open")]
    assert sorted(d for (d, k), v in latest.items() if k == "pressure" and v < 0.1) == [_case(demo, "hydrant-low")]


def test_alerts_at_the_reference_time_are_the_planted_cases(demo, conn):
    summary = demo["summary"]
    assert summary["problems"] == []
    s = demo["manifest"].sensing
    planted = {d for ids in s["planted"].values() for d in ids}
    guards = {d for ids in s["negative"].values() for d in ids}
    rows = conn.execute(
        """SELECT a.device_id, a.rule_id, a.opened_at FROM sensing_alerts a JOIN sensing_devices d USING (device_id)
           WHERE d.properties ->> 'source' = 'geotwin-demo' AND a.state <> 'closed'""").fetchall()
    alerted = {r[0] for r in rows}
    assert alerted == planted and not alerted & guards
    opened = {(r[0], r[1]): r[2].astimezone(sd.CST) for r in rows}
    ref = demo["ref"]
    fall, leak = _case(demo, "inactivity"), _case(demo, "leak")
    # the 12-hour rule at 18:00 (12 h after the last use), the person's baseline earlier
    assert opened[(fall, "wm-inactivity")] == ref - timedelta(hours=2)
    assert opened[(fall, "wm-unusual-silence")] < opened[(fall, "wm-inactivity")]
    assert opened[(leak, "wm-leak")] == ref - timedelta(hours=6)  # 24 h after the running toilet began
    assert (_case(demo, "manhole-open"), "mc-open") in opened and (_case(demo, "hydrant-low"), "hp-low") in opened


def test_loading_again_is_a_no_op_and_a_forced_rebuild_replaces(demo, database, conn):
    def state():
        return conn.execute(
            """SELECT count(DISTINCT d.device_id), count(DISTINCT ds.id), sum(st.observations),
                      (SELECT count(*) FROM sensing_absences), count(DISTINCT d.thing_id)
               FROM sensing_devices d JOIN sta_datastreams ds ON ds.thing_id = d.thing_id
               LEFT JOIN sta_stream_stats st ON st.stream_id = ds.id
               WHERE d.properties ->> 'source' = 'geotwin-demo'""").fetchone()

    before = state()
    things_before = conn.execute("SELECT count(*) FROM sta_things").fetchone()[0]
    again = sd.load(demo["manifest"], database)
    assert again["skipped"] is True and again["observations"] == 0
    conn.rollback()
    assert state() == before
    redo = sd.load(demo["manifest"], database, force=True)
    assert redo["skipped"] is False and redo["removed"] == before[0] and redo["problems"] == []
    conn.rollback()
    assert state() == before
    assert conn.execute("SELECT count(*) FROM sta_things").fetchone()[0] == things_before  # replaced, not added
    assert conn.execute("SELECT count(*) FROM sta_locations l WHERE NOT EXISTS (SELECT 1 FROM sta_thing_locations t "
                        "WHERE t.location_id = l.id)").fetchone()[0] == 0
    # the aggregates were replaced too: a day's sum equals the readings' sum
    fall = _case(demo, "leak")
    day = demo["ref"].date() - timedelta(days=2)
    lo, hi = datetime.combine(day, time(0), sd.CST), datetime.combine(day, time(0), sd.CST) + timedelta(days=1)
    agg = conn.execute(
        """SELECT a.sum, a.n FROM sta_aggregates a JOIN sta_datastreams ds ON ds.id = a.stream_id
           JOIN sensing_devices d ON d.thing_id = ds.thing_id
           WHERE d.device_id = %s AND ds.properties ->> 'key' = 'volume' AND a.period = 'day' AND a.bucket = %s""",
        (fall, lo)).fetchone()
    vols = _volumes(conn, fall, lo, hi)
    assert agg[1] == len(vols) == 48 and agg[0] == pytest.approx(sum(vols))


# -- the simulator ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mqtt(demo, database, tmp_path_factory):
    with broker(database, tmp_path_factory.mktemp("sim_broker")) as s:
        yield s


def _streams(conn, dtype: str) -> dict[int, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        """SELECT ds.id, d.device_id, ds.properties ->> 'key' FROM sensing_devices d
           JOIN sta_datastreams ds ON ds.thing_id = d.thing_id WHERE d.type = %s AND d.retired_at IS NULL""", (dtype,))}


def _stream_id(topic: str) -> int:
    return int(topic.split("(")[1].split(")")[0])


def test_the_simulator_publishes_n_readings_that_a_subscriber_receives(mqtt, conn):
    meters = _streams(conn, "water-meter")
    sub = Collector(mqtt, ["v1.1/+/Observations"])
    try:
        stats = simulator.run(mqtt, rate=5000, count=150, types=["water-meter"], backfill_hours=4)
        assert stats.published == stats.acked == 150 and stats.by_type == {"water-meter": 150}
        wait_for(lambda: len(sub.messages) >= 150, 30, "150 readings at the subscriber")
        got = list(sub.messages)
    finally:
        sub.close()
    assert len(got) == 150
    for topic, payload, _ in got:
        _, key = meters[_stream_id(topic)]               # the water meters' own datastreams
        assert set(payload) == {"phenomenonTime", "result"}
        if key == "volume":                              # the half-hour slot as an interval
            a, b = (datetime.fromisoformat(x) for x in payload["phenomenonTime"].split("/"))
            assert b - a == timedelta(minutes=30) and a.minute in (0, 30) and b <= stats.last_time + timedelta(hours=1)
            assert 0 <= payload["result"] < 0.2
        else:
            assert key == "battery" and 0 <= payload["result"] <= 100
    # in the order a device would send them (a slot's volume when the slot ends), from the backfill's start
    sent = [datetime.fromisoformat(p["phenomenonTime"].split("/")[-1]) for _, p, _ in got]
    assert sent == sorted(sent) and datetime.now(sd.CST) - sent[0] <= timedelta(hours=4)


def test_the_rate_caps_the_readings_per_second(mqtt):
    stats = simulator.run(mqtt, rate=40, count=21, types=["water-meter"], backfill_hours=6)
    # 20 gaps of 1/40 s at least (a slower machine only takes longer)
    assert stats.published == stats.acked == 21 and stats.seconds >= 0.45


def test_planted_live_cases_inactivity_and_leak(mqtt, conn, demo):
    meters = _streams(conn, "water-meter")
    device = sorted({d for d, k in meters.values()})[5]
    for case, check in ((simulator.Plant.inactivity, lambda vols: sum(vols) == 0 and len(vols) >= 24),
                        (simulator.Plant.leak, lambda vols: min(vols) > 0 and len(vols) >= 50)):
        seen: list = []
        stats = simulator.run(mqtt, rate=20000, types=["water-meter"], backfill_hours=27, plant=case,
                              plant_device=device, on_message=lambda t, p, seen=seen: seen.append((t, p)),
                              backfill_only=True)
        assert stats.published == len(seen) >= 40 * 54 and stats.backfilled == stats.published
        assert stats.planted == {"case": case.value, "device": device}
        start = datetime.now(sd.CST) - timedelta(hours=13 if case is simulator.Plant.inactivity else 26)
        vols = [p["result"] for t, p in seen if meters[_stream_id(t)] == (device, "volume")
                and datetime.fromisoformat(p["phenomenonTime"].split("/")[0]) >= start + timedelta(minutes=30)]
        assert check(vols), (case, vols)
        # the other households go on as usual: use during the day
        others = [p["result"] for t, p in seen if meters[_stream_id(t)][1] == "volume"
                  and meters[_stream_id(t)][0] != device]
        assert sum(others) > 0.5


def test_publish_to_worker_to_alert_a_cover_opens(mqtt, conn, database):
    from sensing import rules
    from sensing.mqtt import worker as worker_mod

    cover = "MC-0005"
    assert conn.execute("SELECT count(*) FROM sensing_alerts WHERE device_id = %s", (cover,)).fetchone()[0] == 0
    conn.rollback()
    had = rules.on_batch in worker_mod.after_batch_hooks
    rules.install_worker_hooks()
    w = worker_mod.Worker(mqtt, client_id=f"test-sim-worker-{uuid.uuid4().hex[:6]}", batch_ms=20).start()
    try:
        assert w.wait_connected(30), "the worker did not connect"
        # no backfill: only the cover's planted readings are due now
        stats = simulator.run(mqtt, rate=100, types=["manhole-cover"], backfill_hours=0,
                              plant=simulator.Plant.manhole_open, plant_device=cover, count=2)
        assert stats.published == 2
        with db.connect(database, autocommit=True) as c:
            row = wait_for(lambda: c.execute("SELECT rule_id, state FROM sensing_alerts WHERE device_id = %s "
                                             "AND rule_id = 'mc-open'", (cover,)).fetchone(), 30, "the cover's alert")
    finally:
        w.stop()
        if not had:
            worker_mod.after_batch_hooks.remove(rules.on_batch)
    assert row == ("mc-open", "open")


def test_simulate_command_refuses_bad_options_clearly(mqtt, monkeypatch):
    from sensing.cli import app

    monkeypatch.setenv("GEOTWIN_MQTT_URL", mqtt.mqtt_url)
    monkeypatch.setenv("GEOTWIN_MQTT_DIR", str(mqtt.mqtt_home))
    from spatial_api.config import reset_settings

    reset_settings()
    try:
        runner = CliRunner()
        r = runner.invoke(app, ["simulate", "--devices", "water-meter,toaster", "--count", "1"])
        assert r.exit_code == 1 and "--devices toaster" in r.output and "water-meter" in r.output, r.output
        r = runner.invoke(app, ["simulate", "--plant", "manhole-open", "--devices", "water-meter", "--count", "1"])
        assert r.exit_code == 1 and "manhole-cover" in r.output
        r = runner.invoke(app, ["simulate", "--rate", "0", "--count", "1"])
        assert r.exit_code == 1 and "--rate" in r.output
        r = runner.invoke(app, ["simulate", "--devices", "hydrant-pressure", "--backfill", "1", "--count", "10",
                                "--rate", "1000"])
        assert r.exit_code == 0, r.output
        out = " ".join(r.output.split())  # rich wraps lines at the terminal's width
        assert "published 10 readings" in out and "all acknowledged" in out
    finally:
        reset_settings()
