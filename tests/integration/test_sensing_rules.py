"""Issue 16: the alert rules on synthetic devices — every rule kind, the pilot's cases (no use for
14 h, a leak) and its guards (an announced absence, a heavy-cleaning day, a regular quiet night),
baselines learned in SQL equal to the reference statistics, history replay, rules as data.

Devices, Datastreams and observations are made by SQL in the shape of migrations 0014/0015 (the
registry's own functions also issue MQTT credentials, which these tests do not need). Every
test uses its own device ids and evaluates only them, at a fixed reference time."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sensing import alerts, baseline, rules

CST = timezone(timedelta(hours=8))
#: A Monday evening (district time): the tests' "now".
REF = datetime(2026, 11, 30, 21, 0, tzinfo=CST)
SLOT = timedelta(minutes=30)

PROPS = {"water-meter": ("用水量", "电池电量"), "manhole-cover": ("倾角", "井盖开启", "井内水位", "电池电量"),
         "hydrant-pressure": ("水压",), "traffic-counter": ("车流量",)}


def _shared(conn, table: str, name: str, insert: str, params: tuple) -> int:
    row = conn.execute(f"SELECT id FROM {table} WHERE name = %s ORDER BY id LIMIT 1", (name,)).fetchone()
    return row[0] if row else conn.execute(insert, params).fetchone()[0]


def make_device(conn, type_: str = "water-meter", *, community: str = "坂田社区", restricted: bool | None = None,
                household: dict | None = None, expected_interval: str = "30 minutes", offline_after: int = 3,
                prefix: str = "t") -> tuple[str, dict[str, int]]:
    """A device with its Thing and one Datastream per observed property: (device_id, {property: stream id})."""
    device_id = f"{prefix}-{type_[:2]}-{uuid.uuid4().hex[:8]}"
    restricted = (type_ == "water-meter") if restricted is None else restricted
    if household is None and type_ == "water-meter":
        household = {"resident": {"name": "张桂英", "age": 86, "phone": "138-0000-0001"},
                     "family": [{"name": "张伟", "relation": "儿子", "phone": "138-0000-0002"},
                                {"name": "李娜", "relation": "女儿", "phone": "138-0000-0003"}]}
    thing = conn.execute("INSERT INTO sta_things (name, properties) VALUES (%s, %s::jsonb) RETURNING id",
                         (device_id, json.dumps({"deviceId": device_id, "type": type_, "community": community,
                                                 "restricted": restricted}))).fetchone()[0]
    sensor = _shared(conn, "sta_sensors", f"test sensor {type_}",
                     "INSERT INTO sta_sensors (name, encoding_type, metadata) VALUES (%s, 'text/plain', '') RETURNING id",
                     (f"test sensor {type_}",))
    streams = {}
    for prop in PROPS[type_]:
        op = _shared(conn, "sta_observed_properties", prop,
                     "INSERT INTO sta_observed_properties (name, definition) VALUES (%s, %s) RETURNING id",
                     (prop, f"urn:test:{prop}"))
        otype = "OM_TruthObservation" if prop == "井盖开启" else "OM_Measurement"
        streams[prop] = conn.execute(
            "INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
            "observed_property_id) VALUES (%s, %s, '{}'::jsonb, %s, %s, %s) RETURNING id",
            (prop, f"http://www.opengis.net/def/observationType/OGC-OM/2.0/{otype}", thing, sensor, op)).fetchone()[0]
    conn.execute(
        "INSERT INTO sensing_devices (device_id, thing_id, type, name, community, street, address, geom, restricted, "
        "household, expected_interval, offline_after) VALUES (%s, %s, %s, %s, %s, '坂田街道', %s, "
        "ST_SetSRID(ST_MakePoint(114.06, 22.63), 4326), %s, %s::jsonb, %s::interval, %s)",
        (device_id, thing, type_, device_id, community, f"{community}测试路 1 号", restricted,
         json.dumps(household, ensure_ascii=False) if household else None, expected_interval, offline_after))
    return device_id, streams


def insert_series(conn, stream_id: int, points) -> None:
    """Observations (time, value) of one stream: numbers in result_number, booleans in result_json."""
    points = list(points)
    if not points:
        return
    times = [t for t, _ in points]
    conn.execute("SELECT sta_ensure_partitions(%s, %s)", (min(times), max(times)))
    nums = [None if isinstance(v, bool) else float(v) for _, v in points]
    js = [json.dumps(v) if isinstance(v, bool) else None for _, v in points]
    conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number, result_json) "
                 "SELECT %s, t, n, j::jsonb FROM unnest(%s::timestamptz[], %s::float8[], %s::text[]) AS x(t, n, j)",
                 (stream_id, times, nums, js))


def habit_volume(t: datetime, rng: random.Random, *, wake: float = 6.5, sleep: float = 22.0) -> float:
    """A regular elderly person's use in the half-hour starting at t (m³): nothing at night, a
    morning routine, meals, an evening wash."""
    lt = t.astimezone(CST)
    h = lt.hour + lt.minute / 60
    if h < wake or h >= sleep:
        return 0.0
    if wake <= h < wake + 1.5:  # morning routine: always
        return round(0.010 + rng.random() * 0.01, 4)
    if 11.5 <= h < 12.5 or 17.5 <= h < 19.0:  # meals: nearly always
        return round(0.006 + rng.random() * 0.008, 4) if rng.random() < 0.9 else 0.0
    if 20.5 <= h < 21.5:  # evening wash
        return round(0.02 + rng.random() * 0.01, 4) if rng.random() < 0.85 else 0.0
    return round(0.002 + rng.random() * 0.004, 4) if rng.random() < 0.3 else 0.0


def household_series(start: datetime, end: datetime, seed: int, override=None, **habit) -> list[tuple[datetime, float]]:
    """Half-hourly readings in [start, end) stamped at the slot's start; ``override(t, v)`` may change a value."""
    rng = random.Random(seed)
    out = []
    t = baseline.slot_start(start)
    while t < end:
        v = habit_volume(t, rng, **habit)
        if override is not None:
            v = override(t, v)
        out.append((t, v))
        t += SLOT
    return out


def water_meter(conn, *, days: int = 28, end: datetime = REF, seed: int = 1, override=None, community="坂田社区",
                learn: bool = True, habit: dict | None = None, **kw) -> str:
    device_id, streams = make_device(conn, "water-meter", community=community, **kw)
    insert_series(conn, streams["用水量"], household_series(end - timedelta(days=days), end, seed, override,
                                                          **(habit or {})))
    if learn:
        # the baseline of the weeks before the last day (the cases happen in the last day)
        baseline.learn(conn, [device_id], weeks=4, now=end - timedelta(days=1))
    return device_id


def opened_rules(found: list[dict], device_id: str) -> set[str]:
    return {a["rule_id"] for a in found if a["device_id"] == device_id}


# --------------------------------------------------------------------------------------- the pilot

def test_no_use_for_14_hours_alerts_and_the_baseline_comes_first(conn):
    fall = REF - timedelta(hours=14)  # the resident fell at 07:00, after the first minutes of the morning
    dev = water_meter(conn, seed=11, override=lambda t, v: 0.0 if t >= fall else v)
    found = rules.evaluate(conn, now=REF, device_ids=[dev])
    assert opened_rules(found, dev) == {"wm-inactivity", "wm-unusual-silence"}
    inact = next(a for a in found if a["rule_id"] == "wm-inactivity")
    assert inact["state"] == "open" and inact["severity"] == "critical" and inact["title"] == "长时间未用水"
    assert inact["evidence"]["total"] < 0.01 and inact["community"] == "坂田社区"
    # idempotent: evaluating again opens nothing new
    assert rules.evaluate(conn, now=REF + timedelta(minutes=5), device_ids=[dev]) == []
    assert conn.execute("SELECT count(*) FROM sensing_alerts WHERE device_id = %s", (dev,)).fetchone()[0] == 2


def test_the_baseline_alerts_hours_before_the_12_hour_rule(conn):
    fall = REF - timedelta(hours=14)
    dev = water_meter(conn, seed=12, override=lambda t, v: 0.0 if t >= fall else v)
    found = rules.evaluate_history(conn, fall, REF, timedelta(minutes=30), device_ids=[dev])
    first = {a["rule_id"]: a["opened_at"] for a in found}
    assert set(first) == {"wm-inactivity", "wm-unusual-silence"}
    assert first["wm-unusual-silence"] - fall <= timedelta(hours=6), first  # a missed morning routine
    assert first["wm-unusual-silence"] - fall >= timedelta(hours=3)         # min_hours
    assert timedelta(hours=12) <= first["wm-inactivity"] - fall <= timedelta(hours=12, minutes=30)
    # the alert at the moment it was found: opened_at is the replayed time, and so is its open step
    a = alerts.get(conn, next(x["alert_id"] for x in found if x["rule_id"] == "wm-unusual-silence"))
    assert a["steps"][0]["step"] == "open" and a["steps"][0]["author"] == "rule:wm-unusual-silence"
    assert datetime.fromisoformat(a["steps"][0]["at"]) == first["wm-unusual-silence"]


def test_a_leak_alerts(conn):
    leak_from = REF - timedelta(hours=26)
    dev = water_meter(conn, seed=13, override=lambda t, v: v + 0.004 if t >= leak_from else v)
    found = rules.evaluate(conn, now=REF, device_ids=[dev])
    assert opened_rules(found, dev) == {"wm-leak"}
    leak = found[0]
    assert leak["evidence"]["slots"] == 48 and leak["evidence"]["min_slot"] >= 0.004
    assert leak["evidence"]["quiet_slots_with_use"] >= 14  # the night slots the baseline knows as quiet
    assert leak["window_end"] - leak["window_start"] == timedelta(hours=24)


def test_a_leak_younger_than_24_hours_is_not_yet_one(conn):
    leak_from = REF - timedelta(hours=20)
    dev = water_meter(conn, seed=14, override=lambda t, v: v + 0.004 if t >= leak_from else v)
    assert opened_rules(rules.evaluate(conn, now=REF, device_ids=[dev]), dev) == set()


def test_an_announced_absence_suppresses_inactivity_and_baseline(conn):
    away = REF - timedelta(days=3)
    dev = water_meter(conn, seed=15, override=lambda t, v: 0.0 if t >= away else v)
    conn.execute("INSERT INTO sensing_absences (device_id, start_at, end_at, reason, announced_by) "
                 "VALUES (%s, %s, %s, '去女儿家住几天', '李娜（女儿）')", (dev, away - timedelta(hours=2), REF + timedelta(days=1)))
    assert rules.evaluate(conn, now=REF, device_ids=[dev]) == []
    assert rules.evaluate_history(conn, away, REF, timedelta(hours=1), device_ids=[dev]) == []
    # the same silence without the announcement alerts
    other = water_meter(conn, seed=15, override=lambda t, v: 0.0 if t >= away else v)
    assert opened_rules(rules.evaluate(conn, now=REF, device_ids=[other]), other) == {"wm-inactivity",
                                                                                      "wm-unusual-silence"}


def test_after_an_absence_the_silence_counts_from_its_end(conn):
    away = REF - timedelta(days=3)
    back = REF - timedelta(hours=13)  # the absence ended, still no use: 13 h of silence since
    dev = water_meter(conn, seed=16, override=lambda t, v: 0.0 if t >= away else v)
    conn.execute("INSERT INTO sensing_absences (device_id, start_at, end_at, announced_by) VALUES (%s, %s, %s, '家属')",
                 (dev, away, back))
    assert "wm-inactivity" in opened_rules(rules.evaluate(conn, now=REF, device_ids=[dev]), dev)


def test_a_heavy_cleaning_day_is_no_leak(conn):
    day = REF.replace(hour=0, minute=0) - timedelta(days=1)

    def cleaning(t, v):  # yesterday 06:00–23:00 and today 06:00–21:00: water in every slot; the nights quiet
        lt = t.astimezone(CST)
        return v + 0.03 if t >= day and 6 <= lt.hour < 23 else (0.0 if lt.hour < 6 else v)
    dev = water_meter(conn, seed=17, override=cleaning)
    found = rules.evaluate_history(conn, REF - timedelta(hours=12), REF, timedelta(hours=1), device_ids=[dev])
    assert opened_rules(found, dev) == set()


def test_a_regular_quiet_night_raises_nothing(conn):
    dev = water_meter(conn, seed=18, end=REF + timedelta(hours=9, minutes=30))  # until 06:30 the next morning
    # through the night, every half hour: the usual silence since 22:00 is no alert
    found = rules.evaluate_history(conn, REF + timedelta(hours=1), REF + timedelta(hours=9, minutes=30),
                                   timedelta(minutes=30), device_ids=[dev])
    assert found == []


def test_a_night_owl_is_judged_by_their_own_habit(conn):
    """Someone who sleeps until 11:00 raises nothing at 10:00; the same silence alerts someone
    who is always up at 06:00."""
    morning = REF + timedelta(hours=13)  # Tuesday 10:00
    late = water_meter(conn, seed=19, end=morning, learn=False, habit={"wake": 11.0, "sleep": 24.0})
    baseline.learn(conn, [late], weeks=4, now=morning - timedelta(days=1))
    early = water_meter(conn, seed=20, end=morning, learn=False, habit={"wake": 6.0, "sleep": 21.0},
                        override=lambda t, v: 0.0 if t >= morning - timedelta(hours=14) else v)
    baseline.learn(conn, [early], weeks=4, now=morning - timedelta(days=1))
    found = rules.evaluate(conn, now=morning, device_ids=[late, early], rule_ids=["wm-unusual-silence"])
    assert opened_rules(found, late) == set()
    assert opened_rules(found, early) == {"wm-unusual-silence"}


# ------------------------------------------------------------------------------- the other kinds

def test_thresholds_manhole_cover_and_hydrant(conn):
    cover, cs = make_device(conn, "manhole-cover", expected_interval="1 hour")
    calm, ks = make_device(conn, "manhole-cover", expected_interval="1 hour")
    hydrant, hs = make_device(conn, "hydrant-pressure", expected_interval="1 hour")
    hours = [REF - timedelta(hours=h) for h in range(6, -1, -1)]
    insert_series(conn, cs["井盖开启"], [(t, t == hours[-1]) for t in hours])   # opened in the last reading
    insert_series(conn, cs["倾角"], [(t, 2.0 if t < hours[-1] else 14.5) for t in hours])
    insert_series(conn, cs["井内水位"], [(t, 0.3) for t in hours])
    insert_series(conn, ks["井盖开启"], [(t, False) for t in hours])
    insert_series(conn, ks["倾角"], [(t, 9.9) for t in hours])
    insert_series(conn, ks["井内水位"], [(t, 0.9) for t in hours])
    insert_series(conn, hs["水压"], [(t, 0.35 if t < hours[-2] else 0.06) for t in hours])
    found = rules.evaluate(conn, now=REF, device_ids=[cover, calm, hydrant])
    assert opened_rules(found, cover) == {"mc-open", "mc-tilt"}
    assert opened_rules(found, calm) == set()
    assert opened_rules(found, hydrant) == {"hp-low"}
    low = next(a for a in found if a["rule_id"] == "hp-low")
    assert low["evidence"]["value"] == 0.06 and low["severity"] == "critical" and "水压" in low["message"]
    # readings older than max_age do not count (that is the no-data rule's business)
    assert rules.evaluate(conn, now=REF + timedelta(hours=3), device_ids=[calm]) == []


def test_rate_of_change_water_rising(conn):
    dev, s = make_device(conn, "manhole-cover", expected_interval="10 minutes", offline_after=6)
    t0 = REF - timedelta(hours=2)
    insert_series(conn, s["井内水位"], [(t0 + timedelta(minutes=10 * i), 0.2 + (0.08 * (i - 6) if i > 6 else 0))
                                     for i in range(13)])  # flat, then +0.48 m in the last hour
    insert_series(conn, s["井盖开启"], [(REF, False)])
    assert opened_rules(rules.evaluate(conn, now=REF, device_ids=[dev]), dev) == set()  # 0.48 ≤ 0.5
    insert_series(conn, s["井内水位"], [(REF + timedelta(minutes=10), 0.95)])
    found = rules.evaluate(conn, now=REF + timedelta(minutes=10), device_ids=[dev])
    assert opened_rules(found, dev) == {"mc-water-rise"}
    assert found[0]["evidence"]["delta"] > 0.5


def test_no_data_opens_and_closes_itself_when_data_returns(conn):
    dev, s = make_device(conn, "traffic-counter", expected_interval="5 minutes", offline_after=3)
    never, _ = make_device(conn, "traffic-counter", expected_interval="5 minutes")
    insert_series(conn, s["车流量"], [(REF - timedelta(minutes=5 * i), 40 + i) for i in range(10, 0, -1)])
    assert rules.evaluate(conn, now=REF, device_ids=[dev, never]) == []  # last reading 5 min ago
    # the last reading was at REF - 5 min; offline after 3 × 5 min
    assert rules.evaluate(conn, now=REF + timedelta(minutes=9), device_ids=[dev, never]) == []
    found = rules.evaluate(conn, now=REF + timedelta(minutes=30), device_ids=[dev, never])
    assert opened_rules(found, dev) == {"no-data"} and opened_rules(found, never) == set()  # never reported: unknown
    alert_id = found[0]["alert_id"]
    insert_series(conn, s["车流量"], [(REF + timedelta(minutes=31), 12)])
    assert rules.evaluate(conn, now=REF + timedelta(minutes=32), device_ids=[dev]) == []
    a = alerts.get(conn, alert_id)
    assert a["state"] == "closed" and a["steps"][-1]["author"] == "system" and "data returned" in a["steps"][-1]["note"]


# ------------------------------------------------------------------------------ baselines, rules

def test_sql_baseline_equals_the_reference_statistics(conn):
    end = REF - timedelta(days=1)
    dev, s = make_device(conn, "water-meter")
    series = household_series(end - timedelta(days=27), end, seed=21)
    insert_series(conn, s["用水量"], series)
    got = baseline.learn(conn, [dev], weeks=4, now=end)
    assert got["devices"] == 1 and got["slots"] == 336
    stored = baseline.load(conn, dev)
    expected = baseline.slot_stats([p for p in series if end - timedelta(weeks=4) <= p[0] < end])
    assert stored.keys() == expected.keys()
    for slot, st in expected.items():
        db = stored[slot]
        assert (db.weeks, db.uses) == (st.weeks, st.uses), slot
        assert db.mean == pytest.approx(st.mean) and db.q90 == pytest.approx(st.q90) and db.max == pytest.approx(st.max)


def test_a_week_of_history_is_not_enough_for_a_baseline(conn):
    dev, s = make_device(conn, "water-meter")
    insert_series(conn, s["用水量"], household_series(REF - timedelta(days=7), REF, seed=22))
    assert baseline.learn(conn, [dev], weeks=4, now=REF)["devices"] == 0
    assert baseline.load(conn, dev) == {}


def test_rules_are_data(conn):
    r = rules.set_rule(conn, "wm-inactivity-test", kind="inactivity", device_type="water-meter",
                       observed_property="用水量", params={"hours": 6}, notify=["community"], author="pytest",
                       title="测试：6 小时未用水")
    assert r.params == {"hours": 6.0, "min_total": 0.01, "baseline_guard": True} and r.updated_by == "pytest"
    r = rules.set_rule(conn, "wm-inactivity-test", params={"min_total": 0.02}, enabled=False, author="pytest")
    assert r.params["hours"] == 6.0 and r.params["min_total"] == 0.02 and not r.enabled
    with pytest.raises(rules.RuleError, match=r"params\.hours"):
        rules.set_rule(conn, "wm-inactivity-test", params={"hours": -1}, author="pytest")
    with pytest.raises(rules.RuleError, match=r"params\.window: not a parameter"):
        rules.set_rule(conn, "wm-inactivity-test", params={"window": 3}, author="pytest")
    with pytest.raises(rules.RuleError, match="severity"):
        rules.set_rule(conn, "wm-inactivity-test", severity="huge", author="pytest")
    with pytest.raises(rules.RuleError, match="kind"):
        rules.set_rule(conn, "brand-new", author="pytest")
    assert rules.get_rule(conn, "wm-inactivity-test").params["min_total"] == 0.02  # refused changes wrote nothing
    # a disabled rule is not run by default; named, it is
    dev = water_meter(conn, seed=23, override=lambda t, v: 0.0 if t >= REF - timedelta(hours=7) else v)
    assert "wm-inactivity-test" not in opened_rules(rules.evaluate(conn, now=REF, device_ids=[dev]), dev)
    assert opened_rules(rules.evaluate(conn, now=REF, device_ids=[dev], rule_ids=["wm-inactivity-test"]),
                        dev) == {"wm-inactivity-test"}


def test_the_defaults_of_the_pilot_are_seeded(conn):
    got = {r.rule_id: r for r in rules.load_rules(conn)}
    assert {"wm-inactivity", "wm-leak", "wm-unusual-silence", "mc-open", "mc-tilt", "mc-water-level",
            "hp-low", "no-data"} <= set(got)
    assert got["wm-inactivity"].params == {"hours": 12, "min_total": 0.01, "baseline_guard": True}
    assert sorted(got["wm-inactivity"].notify) == ["community", "family"]
    assert got["wm-leak"].params["hours"] == 24 and got["hp-low"].params["value"] == 0.1
    for r in got.values():
        rules.check_params(r.kind, r.params)  # every seeded rule is valid


def test_the_periodic_run_raises_time_based_alerts_on_the_wall_clock(database):
    import threading
    import time

    from spatial_api import db

    with db.connect(database) as conn:
        silent, s = make_device(conn, "traffic-counter", expected_interval="5 minutes")
        fresh, f = make_device(conn, "traffic-counter", expected_interval="5 minutes")
        wall = conn.execute("SELECT now()").fetchone()[0]
        insert_series(conn, s["车流量"], [(wall - timedelta(hours=1), 30)])
        insert_series(conn, f["车流量"], [(wall - timedelta(minutes=2), 30)])
        conn.commit()
    stop = threading.Event()
    runner = threading.Thread(target=rules.run_periodic, args=(database, 0.2, stop), daemon=True)
    runner.start()
    try:
        with db.connect(database, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = conn.execute("SELECT device_id, rule_id FROM sensing_alerts WHERE device_id = ANY(%s)",
                                    ([silent, fresh],)).fetchall()
                if rows:
                    break
                time.sleep(0.05)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert rows == [(silent, "no-data")]
    with pytest.raises(rules.RuleError, match="interval"):
        rules.run_periodic(database, 0, stop)
