"""SensorThings reads of the DataArray extension (18-088 §14, read side), MultiDatastreams, the
aggregates extension (``$aggregate=hour|day``) and the query plans of the hot paths: one day of
one Datastream and the latest Observation of every Datastream of a Thing use the
``(stream_id, phenomenon_time_start, dedup)`` index (plans read with EXPLAIN, not timed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from sensing.sta import paths, read
from spatial_api import db
from spatial_api.app import create_app
from tests.integration.test_sta_read import ROOT, build_district


@pytest.fixture(scope="module")
def district(database):
    return build_district(database)


@pytest.fixture(scope="module")
def client(database, district):
    return TestClient(create_app(database))


def get(client, url, status=200):
    r = client.get(ROOT + url)
    assert r.status_code == status, (url, r.text)
    return r.json()


# ---------------------------------------------------------------------------------------------
# DataArray
# ---------------------------------------------------------------------------------------------

def test_data_array_of_one_datastream(client, district):
    d = district
    body = get(client, f"/Datastreams({d['ds_level']})/Observations?$resultFormat=dataArray"
                       "&$select=id,phenomenonTime,result&$top=3&$count=true")
    assert body["@iot.count"] == 51 and "$resultFormat=dataArray" in body["@iot.nextLink"]
    [group] = body["value"]
    assert group["Datastream@iot.navigationLink"] == f"{ROOT}/Datastreams({d['ds_level']})"
    assert group["components"] == ["id", "phenomenonTime", "result"]
    assert group["dataArray@iot.count"] == 3
    assert group["dataArray"] == [[d["obs_level"][i], f"2026-11-01T0{i // 2}:{30 * (i % 2):02d}:00Z", i]
                                  for i in range(3)]


def test_data_array_groups_by_stream_and_takes_result_format_without_dollar(client, district):
    d = district
    body = get(client, f"/FeaturesOfInterest({d['foi']})/Observations?resultFormat=dataArray&$orderby=id")
    assert len(body["value"]) == 3
    by_link = {g[next(k for k in g if k.endswith("navigationLink"))]: g for g in body["value"]}
    assert set(by_link) == {f"{ROOT}/Datastreams({d['ds_level']})", f"{ROOT}/Datastreams({d['ds_open']})",
                            f"{ROOT}/MultiDatastreams({d['mds']})"}
    level = by_link[f"{ROOT}/Datastreams({d['ds_level']})"]
    assert level["components"] == ["id", "phenomenonTime", "resultTime", "result", "resultQuality", "validTime",
                                   "parameters"]
    assert level["dataArray@iot.count"] == 51
    multi = by_link[f"{ROOT}/MultiDatastreams({d['mds']})"]
    assert [row[3] for row in multi["dataArray"]] == [[0, "ok"], [1, "ok"], [2, "ok"]]


def test_data_array_refused_off_observations(client, district):
    err = get(client, "/Things?$resultFormat=dataArray", 400)
    assert "Observations" in err["message"]
    err = get(client, f"/Datastreams({district['ds_level']})/Observations?$resultFormat=csv", 400)
    assert "dataArray" in err["message"]


# ---------------------------------------------------------------------------------------------
# MultiDatastreams
# ---------------------------------------------------------------------------------------------

def test_multi_datastream_entity_and_navigation(client, district):
    d = district
    m = get(client, f"/MultiDatastreams({d['mds']})")
    assert m["multiObservationDataTypes"] == ["OM_Measurement", "OM_Observation"]
    assert [u["name"] for u in m["unitOfMeasurements"]] == ["metre", "flag"]
    assert m["observationType"].endswith("OM_ComplexObservation")
    assert m["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-11-01T02:00:00Z"
    assert {"Thing@iot.navigationLink", "Sensor@iot.navigationLink", "ObservedProperties@iot.navigationLink",
            "Observations@iot.navigationLink"} <= set(m)
    obs = get(client, f"/MultiDatastreams({d['mds']})/Observations?$count=true&$orderby=phenomenonTime desc")
    assert obs["@iot.count"] == 3 and [o["result"] for o in obs["value"]] == [[2, "ok"], [1, "ok"], [0, "ok"]]
    assert [x["@iot.id"] for x in get(client, f"/Things({d['thing']})/MultiDatastreams")["value"]] == [d["mds"]]
    assert [x["@iot.id"] for x in get(client, f"/ObservedProperties({d['op_open']})/MultiDatastreams")["value"]] \
        == [d["mds"]]
    t = get(client, f"/Things({d['thing']})?$expand=MultiDatastreams($expand=ObservedProperties($select=name))")
    assert sorted(op["name"] for op in t["MultiDatastreams"][0]["ObservedProperties"]) == \
        sorted([f"level-{d['sfx']}", f"open-{d['sfx']}"])
    o = get(client, f"/Observations({d['obs_mds'][1]})?$expand=MultiDatastream($select=id)")
    assert o["MultiDatastream"] == {"@iot.id": d["mds"]}


# ---------------------------------------------------------------------------------------------
# aggregates
# ---------------------------------------------------------------------------------------------

def test_hourly_aggregates(client, district):
    d = district
    body = get(client, f"/Datastreams({d['ds_level']})/Observations?$aggregate=hour&$count=true")
    assert body["@iot.count"] == 24 + 3
    first = body["value"][0]
    assert first["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-11-01T01:00:00Z"
    assert first["result"] == 0.5
    assert first["parameters"] == {"n": 2, "min": 0, "max": 1, "sum": 1, "mean": 0.5}
    assert first["Datastream@iot.navigationLink"] == f"{ROOT}/Datastreams({d['ds_level']})"
    assert "@iot.id" not in first
    h5 = body["value"][5]
    assert h5["phenomenonTime"].startswith("2026-11-01T05:00:00Z") and h5["result"] == 10.5
    assert body["value"][-1]["result"] == 102


def test_aggregate_pages_rendered_by_the_database_equal_the_serializers(client, district):
    """Plain aggregate pages are rendered in SQL (speed); with $select they go through the Python
    serializer: the same objects either way, page by page."""
    d = district
    base = f"/Datastreams({d['ds_level']})/Observations?$aggregate=hour&$top=7&$orderby=phenomenonTime desc"
    for skip in (0, 7, 21):
        fast = get(client, f"{base}&$skip={skip}")
        slow = get(client, f"{base}&$skip={skip}&$select=phenomenonTime,resultTime,result,parameters")
        assert fast["value"], skip
        assert fast["value"] == slow["value"]
        assert {o["Datastream@iot.navigationLink"] for o in fast["value"]} == {f"{ROOT}/Datastreams({d['ds_level']})"}
        assert ("@iot.nextLink" in fast) == ("@iot.nextLink" in slow)


def test_daily_aggregates_in_the_districts_time_zone_with_filter_and_order(client, district):
    d = district
    body = get(client, f"/Datastreams({d['ds_level']})/Observations?$aggregate=day")
    assert [o["phenomenonTime"] for o in body["value"]] == [
        "2026-10-31T16:00:00Z/2026-11-01T16:00:00Z", "2026-11-01T16:00:00Z/2026-11-02T16:00:00Z",
        "2026-12-01T16:00:00Z/2026-12-02T16:00:00Z"]
    assert body["value"][0]["parameters"]["n"] == 32 and body["value"][0]["result"] == 15.5
    assert body["value"][1]["parameters"] == {"n": 16, "min": 32, "max": 47, "sum": 632, "mean": 39.5}
    body = get(client, f"/Datastreams({d['ds_level']})/Observations?$aggregate=hour"
                       "&$filter=phenomenonTime ge 2026-12-01T00:00:00Z&$orderby=phenomenonTime desc")
    assert [o["result"] for o in body["value"]] == [102, 101, 100]
    arr = get(client, f"/Datastreams({d['ds_level']})/Observations?$aggregate=day&$resultFormat=dataArray"
                      "&$select=phenomenonTime,result")
    assert arr["value"][0]["dataArray"][2] == ["2026-12-01T16:00:00Z/2026-12-02T16:00:00Z", 101]


def test_aggregates_follow_new_observations(client, district, database):
    d = district
    with db.connect(database) as conn:
        conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                     "VALUES (%s, %s, 9)", (d["ds_level"], datetime(2026, 12, 2, 0, 10, tzinfo=timezone.utc)))
        conn.commit()
    body = get(client, f"/Datastreams({d['ds_level']})/Observations?$aggregate=hour"
                       "&$filter=phenomenonTime ge 2026-12-02T00:00:00Z&$top=1")
    assert body["value"][0]["parameters"] == {"n": 2, "min": 9, "max": 100, "sum": 109, "mean": 54.5}


def test_aggregate_errors(client, district):
    err = get(client, f"/Things({district['thing']})/Datastreams?$aggregate=hour", 400)
    assert "Datastreams(<id>)/Observations" in err["message"]
    err = get(client, f"/Datastreams({district['ds_level']})/Observations?$aggregate=week", 400)
    assert "hour or day" in err["message"]
    err = get(client, f"/Datastreams({district['ds_level']})/Observations?$aggregate=hour&$expand=Datastream", 400)
    assert "$expand" in err["message"]


# ---------------------------------------------------------------------------------------------
# query plans on a bigger stream set
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def many(database, district):
    """A Thing with 20 Datastreams of 30 days of half-hourly readings each (28,800 rows, analysed)."""
    d = district
    with db.connect(database) as conn:
        thing = conn.execute("INSERT INTO sta_things (name) VALUES (%s) RETURNING id",
                             (f"many-{d['sfx']}",)).fetchone()[0]
        streams = [conn.execute(
            "INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
            "observed_property_id) VALUES (%s, 'x', %s::jsonb, %s, %s, %s) RETURNING id",
            (f"many-{i}", json.dumps({"name": "m"}), thing, d["sensor"], d["op_level"])).fetchone()[0]
            for i in range(20)]
        conn.execute("SELECT sta_ensure_partitions('2026-11-01', '2026-11-30')")
        conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                     "SELECT s, t, extract(epoch FROM t) / 1800 FROM unnest(%s::bigint[]) s, "
                     "generate_series('2026-11-01T00:00Z'::timestamptz, '2026-11-30T23:30Z', '30 minutes') t",
                     (streams,))
        conn.execute("ANALYZE sta_observations_y2026m11")
        conn.commit()
    return thing, streams


def _plan(database, path, options):
    plans: list = []
    with db.connect(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        ctx = read.Context(cur, "http://x", explain=plans)
        status, body = read.run(ctx, paths.parse(path), options)
    assert status == 200
    return [json.dumps(p["QUERY PLAN"]) for p in plans], body


def _index_scans(plan: str) -> set[str]:
    out = set()

    def walk(node):
        if isinstance(node, dict):
            if "Index Scan" in node.get("Node Type", "") or node.get("Node Type") == "Index Only Scan":
                out.add(f"{node.get('Relation Name')}:{node.get('Index Name')}:{node.get('Scan Direction', '')}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(plan))
    return out


def _seq_scans(plan: str) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("Node Type") == "Seq Scan":
                out.append(node.get("Relation Name"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(plan))
    return out


def test_one_day_of_one_datastream_uses_the_stream_time_index(database, many):
    _, streams = many
    plans, body = _plan(database, f"Datastreams({streams[7]})/Observations",
                        {"$filter": "phenomenonTime ge 2026-11-10T00:00:00+08:00 and "
                                    "phenomenonTime lt 2026-11-11T00:00:00+08:00",
                         "$orderby": "phenomenonTime", "$top": "1000"})
    assert len(body["value"]) == 48
    scans = _index_scans(plans[0])
    # (PostgreSQL names a partition's copy of the index ..._stream_id_phenomenon_time_start_d_idx)
    assert scans and all(s.startswith("sta_observations_y2026m11:") and "_stream_id_phenomenon_time_start_" in s
                         for s in scans), plans[0]
    assert not _seq_scans(plans[0]), plans[0]


def test_latest_observation_of_every_datastream_of_a_thing_probes_the_index_backwards(database, many):
    thing, _ = many
    plans, body = _plan(database, f"Things({thing})",
                        {"$expand": "Datastreams($select=id;$expand=Observations($orderby=phenomenonTime desc;$top=1;"
                                    "$select=phenomenonTime,result))"})
    assert len(body["Datastreams"]) == 20
    assert all(ds["Observations"][0]["phenomenonTime"] == "2026-11-30T23:30:00Z" for ds in body["Datastreams"])
    latest = plans[-1]
    scans = _index_scans(latest)
    obs_scans = {s for s in scans if s.startswith("sta_observations_")}
    assert obs_scans and all("_stream_id_phenomenon_time_start_" in s and s.endswith("Backward")
                             for s in obs_scans), latest
    assert not any(rel.startswith("sta_observations") for rel in _seq_scans(latest)), latest
