"""SensorThings API 1.1 reads (OGC 18-088): the landing document, the data model as served
(conformance class datamodel), resource paths (resource-path-to-entities) and every query option
(request-data), against a real PostGIS with rows inserted by SQL.

The district of these tests: a public manhole Thing with two Datastreams and a MultiDatastream,
two restricted households in two communities (what is hidden from whom is tested in
test_sta_read_access.py). Observations are half-hourly over one UTC day (2026-11-01) plus a few
in another month, so that the monthly partitions are crossed.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from spatial_api import db
from spatial_api.app import create_app
from spatial_api.security import keys

DAY0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
ROOT = "http://testserver/sta/v1.1"
COMMUNITY_A, COMMUNITY_B = "坂田社区", "布吉社区"


def _one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def _location(conn, name, lon, lat):
    loc = {"type": "Point", "coordinates": [lon, lat]}
    return _one(conn, "INSERT INTO sta_locations (name, description, encoding_type, location, geom) "
                      "VALUES (%s, 'where it is', 'application/geo+json', %s::jsonb, "
                      "ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)) RETURNING id",
                (name, json.dumps(loc), json.dumps(loc))), loc


def _observations(conn, stream, rows):
    """rows: (phenomenon_time_start, phenomenon_time_end, result, foi)."""
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    t1 = max(r[0] for r in rows)
    conn.execute("SELECT sta_ensure_partitions(%s, %s)", (t0, t1))
    ids = []
    with conn.cursor() as cur:
        for start, end, result, foi in rows:
            number = result if isinstance(result, (int, float)) and not isinstance(result, bool) else None
            js = None if number is not None else json.dumps(result)
            ids.append(cur.execute(
                "INSERT INTO sta_observations (stream_id, phenomenon_time_start, phenomenon_time_end, result_time, "
                "result_number, result_json, feature_of_interest_id, parameters) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s::jsonb) RETURNING id",
                (stream, start, end, start, number, js, foi, json.dumps({"seq": len(ids)}))).fetchone()[0])
    return ids


def build_district(settings) -> dict:
    """Insert the test district; returns its ids (dict)."""
    sfx = uuid.uuid4().hex[:8]
    ids: dict = {"sfx": sfx}
    with db.connect(settings) as conn:
        ids["thing"] = _one(conn, "INSERT INTO sta_things (name, description, properties) VALUES (%s, 'a manhole', "
                                  "%s::jsonb) RETURNING id",
                            (f"manhole-{sfx}", json.dumps({"kind": "manhole", "sfx": sfx})))
        ids["house_a"] = _one(conn, "INSERT INTO sta_things (name, description, properties) VALUES (%s, 'a home', "
                                    "%s::jsonb) RETURNING id",
                              (f"home-a-{sfx}", json.dumps({"restricted": True, "community": COMMUNITY_A, "sfx": sfx})))
        ids["house_b"] = _one(conn, "INSERT INTO sta_things (name, description, properties) VALUES (%s, 'a home', "
                                    "%s::jsonb) RETURNING id",
                              (f"home-b-{sfx}", json.dumps({"restricted": True, "community": COMMUNITY_B, "sfx": sfx})))
        ids["loc"], ids["loc_json"] = _location(conn, f"street-{sfx}", 114.06, 22.62)
        ids["loc_a"], _ = _location(conn, f"home-a-{sfx}", 114.07, 22.63)
        ids["loc_b"], _ = _location(conn, f"home-b-{sfx}", 114.12, 22.61)
        for thing, loc in ((ids["thing"], ids["loc"]), (ids["house_a"], ids["loc_a"]), (ids["house_b"], ids["loc_b"])):
            conn.execute("INSERT INTO sta_thing_locations VALUES (%s, %s)", (thing, loc))
        ids["hist"] = _one(conn, "INSERT INTO sta_historical_locations (thing_id, time) VALUES (%s, %s) RETURNING id",
                           (ids["thing"], DAY0))
        conn.execute("INSERT INTO sta_location_history VALUES (%s, %s)", (ids["hist"], ids["loc"]))
        ids["sensor"] = _one(conn, "INSERT INTO sta_sensors (name, encoding_type, metadata) VALUES (%s, "
                                   "'application/pdf', 'https://example.org/meter.pdf') RETURNING id", (f"meter-{sfx}",))
        ids["op_level"] = _one(conn, "INSERT INTO sta_observed_properties (name, definition) VALUES (%s, %s) RETURNING id",
                               (f"level-{sfx}", "http://example.org/level"))
        ids["op_open"] = _one(conn, "INSERT INTO sta_observed_properties (name, definition) VALUES (%s, %s) RETURNING id",
                              (f"open-{sfx}", "http://example.org/open"))
        uom = json.dumps({"name": "metre", "symbol": "m", "definition": "http://example.org/m"})
        ds = ("INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
              "observed_property_id, properties) VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s::jsonb) RETURNING id")
        measure = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
        ids["ds_level"] = _one(conn, ds, (f"level-{sfx}", measure, uom, ids["thing"], ids["sensor"], ids["op_level"],
                                          json.dumps({"rank": 1})))
        ids["ds_open"] = _one(conn, ds, (f"open-{sfx}", measure, uom, ids["thing"], ids["sensor"], ids["op_open"],
                                         json.dumps({"rank": 2})))
        ids["ds_house_a"] = _one(conn, ds, (f"meter-a-{sfx}", measure, uom, ids["house_a"], ids["sensor"],
                                            ids["op_level"], None))
        ids["ds_house_b"] = _one(conn, ds, (f"meter-b-{sfx}", measure, uom, ids["house_b"], ids["sensor"],
                                            ids["op_level"], None))
        ids["mds"] = _one(conn, "INSERT INTO sta_multi_datastreams (name, multi_observation_data_types, "
                                "unit_of_measurements, thing_id, sensor_id) VALUES (%s, %s, %s::jsonb, %s, %s) RETURNING id",
                          (f"both-{sfx}", ["OM_Measurement", "OM_Observation"],
                           json.dumps([json.loads(uom), {"name": "flag", "symbol": "", "definition": "x"}]),
                           ids["thing"], ids["sensor"]))
        conn.execute("INSERT INTO sta_multi_datastream_properties VALUES (%s, %s, 0), (%s, %s, 1)",
                     (ids["mds"], ids["op_level"], ids["mds"], ids["op_open"]))
        ids["foi"] = _one(conn, "INSERT INTO sta_features_of_interest (name, encoding_type, feature, geom) VALUES "
                                "(%s, 'application/geo+json', %s::jsonb, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)) "
                                "RETURNING id", (f"street-{sfx}", json.dumps(ids["loc_json"]), json.dumps(ids["loc_json"])))
        # level: every half hour of 2026-11-01 (result = index), and three in December
        level = [(DAY0 + timedelta(minutes=30 * i), None, float(i), ids["foi"]) for i in range(48)]
        level += [(datetime(2026, 12, 2, h, tzinfo=timezone.utc), None, 100.0 + h, ids["foi"]) for h in range(3)]
        ids["obs_level"] = _observations(conn, ids["ds_level"], level)
        # open: an interval observation and text / boolean results
        ids["obs_open"] = _observations(conn, ids["ds_open"], [
            (DAY0, DAY0 + timedelta(hours=1), "closed", ids["foi"]),
            (DAY0 + timedelta(hours=2), None, True, ids["foi"])])
        ids["obs_house_a"] = _observations(conn, ids["ds_house_a"], [(DAY0 + timedelta(hours=h), None, 0.5, None)
                                                                    for h in range(4)])
        ids["obs_house_b"] = _observations(conn, ids["ds_house_b"], [(DAY0 + timedelta(hours=h), None, 0.7, None)
                                                                    for h in range(2)])
        ids["obs_mds"] = _observations(conn, ids["mds"], [(DAY0 + timedelta(hours=h), None, [float(h), "ok"], ids["foi"])
                                                          for h in range(3)])
        ids["key_admin"] = keys.create(conn, f"sta-admin-{sfx}", "admin", created_by="pytest")
        ids["key_staff"] = keys.create(conn, f"sta-staff-{sfx}", "gis-staff", created_by="pytest")
        ids["key_worker_a"] = keys.create(conn, f"sta-cw-a-{sfx}", "community-worker", created_by="pytest",
                                          community=COMMUNITY_A)
        conn.commit()
    return ids


@pytest.fixture(scope="module")
def district(database):
    return build_district(database)


@pytest.fixture(scope="module")
def client(database, district):
    return TestClient(create_app(database))


def get(client, url, status=200, **kw):
    r = client.get(url if url.startswith("http") else ROOT + url, **kw)
    assert r.status_code == status, (url, r.status_code, r.text)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r


# ---------------------------------------------------------------------------------------------
# landing page
# ---------------------------------------------------------------------------------------------

def test_landing_lists_every_entity_set_and_the_conformance_classes(client):
    doc = get(client, "")
    names = [v["name"] for v in doc["value"]]
    assert names == ["Things", "Locations", "HistoricalLocations", "Datastreams", "MultiDatastreams", "Sensors",
                     "ObservedProperties", "Observations", "FeaturesOfInterest"]
    assert all(v["url"] == f"{ROOT}/{v['name']}" for v in doc["value"])
    conf = doc["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data" in conf
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array" in conf
    mqtt = doc["serverSettings"]["http://www.opengis.net/spec/iot_sensing/1.1/req/mqtt-extension"]
    from sensing.mqtt.broker import endpoint  # the broker the app announces: its own (settings.mqtt_url)
    from spatial_api.config import get_settings

    assert mqtt == {"endpoints": [endpoint(get_settings()).url]}
    assert mqtt["endpoints"][0].startswith("mqtt://")
    assert doc["serverSettings"]["geotwin"]["maxTop"] == 10000


def test_landing_mqtt_endpoints_and_forwarded_host(database):
    app = create_app(database)
    app.state.mqtt_endpoints = ["mqtt://127.0.0.1:18830"]
    doc = TestClient(app).get("/sta/v1.1", headers={"host": "twin.example.org"}).json()
    assert doc["serverSettings"]["http://www.opengis.net/spec/iot_sensing/1.1/req/mqtt-extension"]["endpoints"] \
        == ["mqtt://127.0.0.1:18830"]
    assert doc["value"][0]["url"] == "http://twin.example.org/sta/v1.1/Things"


# ---------------------------------------------------------------------------------------------
# data model (as served)
# ---------------------------------------------------------------------------------------------

def test_thing_json_has_id_selflink_properties_and_navigation_links(client, district):
    t = get(client, f"/Things({district['thing']})")
    tid = district["thing"]
    assert t["@iot.id"] == tid
    assert t["@iot.selfLink"] == f"{ROOT}/Things({tid})"
    assert t["name"] == f"manhole-{district['sfx']}" and t["description"] == "a manhole"
    assert t["properties"] == {"kind": "manhole", "sfx": district["sfx"]}
    for nav in ("Locations", "HistoricalLocations", "Datastreams", "MultiDatastreams"):
        assert t[f"{nav}@iot.navigationLink"] == f"{ROOT}/Things({tid})/{nav}"


def test_location_and_feature_are_served_as_given(client, district):
    loc = get(client, f"/Locations({district['loc']})")
    assert loc["location"] == district["loc_json"] and loc["encodingType"] == "application/geo+json"
    assert {k for k in loc if k.endswith("navigationLink")} == {"Things@iot.navigationLink",
                                                                   "HistoricalLocations@iot.navigationLink"}
    foi = get(client, f"/FeaturesOfInterest({district['foi']})")
    assert foi["feature"] == district["loc_json"]
    assert foi["Observations@iot.navigationLink"].endswith(f"/FeaturesOfInterest({district['foi']})/Observations")


def test_datastream_times_come_from_its_observations(client, district):
    ds = get(client, f"/Datastreams({district['ds_level']})")
    assert ds["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-12-02T02:00:00Z"
    assert ds["resultTime"] == "2026-11-01T00:00:00Z/2026-12-02T02:00:00Z"
    assert ds["unitOfMeasurement"]["symbol"] == "m"
    assert ds["observationType"].endswith("OM_Measurement")
    assert {"Thing@iot.navigationLink", "Sensor@iot.navigationLink", "ObservedProperty@iot.navigationLink",
            "Observations@iot.navigationLink"} <= set(ds)


def test_observation_json_instants_intervals_and_result_types(client, district):
    first = get(client, f"/Observations({district['obs_level'][3]})")
    assert first["phenomenonTime"] == "2026-11-01T01:30:00Z"
    assert first["result"] == 3 and first["resultTime"] == "2026-11-01T01:30:00Z"
    assert first["parameters"] == {"seq": 3}
    assert first["Datastream@iot.navigationLink"].endswith(f"Observations({district['obs_level'][3]})/Datastream")
    interval, boolean = (get(client, f"/Observations({i})") for i in district["obs_open"])
    assert interval["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-11-01T01:00:00Z"
    assert interval["result"] == "closed"
    assert boolean["result"] is True


def test_other_entities_serve_their_mandatory_properties(client, district):
    s = get(client, f"/Sensors({district['sensor']})")
    assert s["encodingType"] == "application/pdf" and s["metadata"] == "https://example.org/meter.pdf"
    op = get(client, f"/ObservedProperties({district['op_level']})")
    assert op["definition"] == "http://example.org/level"
    h = get(client, f"/HistoricalLocations({district['hist']})")
    assert h["time"] == "2026-11-01T00:00:00Z"
    assert h["Thing@iot.navigationLink"].endswith(f"HistoricalLocations({district['hist']})/Thing")


# ---------------------------------------------------------------------------------------------
# resource paths
# ---------------------------------------------------------------------------------------------

def test_navigation_paths(client, district):
    d = district
    dss = get(client, f"/Things({d['thing']})/Datastreams")
    assert sorted(x["@iot.id"] for x in dss["value"]) == sorted([d["ds_level"], d["ds_open"]])
    assert get(client, f"/Datastreams({d['ds_level']})/Thing")["@iot.id"] == d["thing"]
    assert get(client, f"/Datastreams({d['ds_level']})/Sensor")["@iot.id"] == d["sensor"]
    obs = get(client, f"/Things({d['thing']})/Datastreams({d['ds_open']})/Observations")
    assert [o["@iot.id"] for o in obs["value"]] == d["obs_open"]
    assert get(client, f"/Observations({d['obs_level'][0]})/Datastream/Thing/Locations")["value"][0]["@iot.id"] == d["loc"]
    assert get(client, f"/Locations({d['loc']})/Things")["value"][0]["@iot.id"] == d["thing"]
    assert get(client, f"/Locations({d['loc']})/HistoricalLocations")["value"][0]["@iot.id"] == d["hist"]
    assert get(client, f"/HistoricalLocations({d['hist']})/Locations")["value"][0]["@iot.id"] == d["loc"]
    ops = get(client, f"/MultiDatastreams({d['mds']})/ObservedProperties")
    assert sorted(o["@iot.id"] for o in ops["value"]) == sorted([d["op_level"], d["op_open"]])
    assert get(client, f"/FeaturesOfInterest({d['foi']})/Observations?$count=true")["@iot.count"] == 48 + 3 + 2 + 3


def test_property_value_and_ref_paths(client, district):
    d = district
    assert get(client, f"/Things({d['thing']})/name") == {"name": f"manhole-{d['sfx']}"}
    raw = get(client, f"/Things({d['thing']})/name/$value")
    assert raw.text == f"manhole-{d['sfx']}" and raw.headers["content-type"].startswith("text/plain")
    assert get(client, f"/Things({d['thing']})/properties") == {"properties": {"kind": "manhole", "sfx": d["sfx"]}}
    assert get(client, f"/Observations({d['obs_level'][5]})/result/$value").text == "5"
    refs = get(client, f"/Things({d['thing']})/Locations/$ref")
    assert refs["value"] == [{"@iot.selfLink": f"{ROOT}/Locations({d['loc']})"}]
    assert get(client, f"/Datastreams({d['ds_level']})/Thing/$ref") == {"@iot.selfLink": f"{ROOT}/Things({d['thing']})"}
    # a null property: 204, nothing
    assert client.get(f"{ROOT}/Observations({d['obs_level'][0]})/validTime").status_code == 204


@pytest.mark.parametrize("path,status,words", [
    ("/Things('1')", 400, "integers"),
    ("/Things(abc)", 400, "not an entity id"),
    ("/Thingz", 404, "no entity set"),
    ("/Things(1)/Datastreamz", 400, "no property or navigation property"),
    ("/Things/Datastreams", 400, "is a collection"),
    ("/Things(1)/name/x", 400, "$value"),
    ("/Datastreams(1)/Thing(2)", 400, "takes no id"),
])
def test_malformed_paths_are_400_with_the_segment_named(client, path, status, words):
    body = get(client, path, status)
    assert body["code"] == status and body["type"] == "error" and words in body["message"]


def test_missing_entities_are_404(client, district):
    body = get(client, "/Things(999999999)", 404)
    assert body == {"code": 404, "type": "error", "message": body["message"]} and "Things(999999999)" in body["message"]
    get(client, f"/Things({district['thing']})/Datastreams({district['ds_house_a']})", 404)  # not its Datastream
    get(client, "/Observations(999999999)/Datastream", 404)
    # the Observation of a MultiDatastream has no Datastream
    get(client, f"/Observations({district['obs_mds'][0]})/Datastream", 404)
    assert get(client, f"/Observations({district['obs_mds'][0]})/MultiDatastream")["@iot.id"] == district["mds"]


# ---------------------------------------------------------------------------------------------
# request data: query options
# ---------------------------------------------------------------------------------------------

def test_top_skip_count_and_next_link(client, district):
    url = f"/Datastreams({district['ds_level']})/Observations?$top=20&$count=true&$select=id,result"
    page = get(client, url)
    assert page["@iot.count"] == 51 and len(page["value"]) == 20
    seen = [o["result"] for o in page["value"]]
    pages = 1
    while "@iot.nextLink" in page:
        nxt = urlparse(page["@iot.nextLink"])
        q = parse_qs(nxt.query)
        assert q["$top"] == ["20"] and q["$count"] == ["true"] and q["$select"] == ["id,result"]
        page = get(client, page["@iot.nextLink"])
        seen += [o["result"] for o in page["value"]]
        pages += 1
    assert pages == 3 and len(seen) == 51
    assert seen == [float(i) for i in range(48)] + [100.0, 101.0, 102.0]  # default: id asc
    assert "@iot.nextLink" not in get(client, f"/Datastreams({district['ds_level']})/Observations?$top=51")
    assert len(get(client, f"/Datastreams({district['ds_level']})/Observations")["value"]) == 51  # default 100
    assert get(client, f"/Datastreams({district['ds_level']})/Observations?$skip=50")["value"][0]["result"] == 102


def test_next_link_keeps_options_but_not_the_api_key(client, district):
    key = district["key_staff"]
    page = get(client, f"/Things({district['thing']})/Datastreams?$top=1&api_key={key}")
    assert "api_key" not in page["@iot.nextLink"] and key not in page["@iot.nextLink"]
    assert parse_qs(urlparse(page["@iot.nextLink"]).query)["$skip"] == ["1"]


def test_top_is_capped_and_bad_values_refused(client, district):
    body = get(client, f"/Datastreams({district['ds_level']})/Observations?$top=20000&$select=id")
    assert len(body["value"]) == 51
    for bad in ("$top=-1", "$top=x", "$skip=1.5", "$count=yes", "$foo=1", "$orderby=", "$select=nope"):
        err = get(client, f"/Things?{bad}", 400)
        assert bad.split("=")[0] in err["message"], err


def test_orderby_several_terms(client, district):
    obs = get(client, f"/Datastreams({district['ds_level']})/Observations?$orderby=phenomenonTime desc&$top=4")
    assert [o["result"] for o in obs["value"]] == [102, 101, 100, 47]
    obs = get(client, f"/Datastreams({district['ds_level']})/Observations?$orderby=result asc&$top=2")
    assert [o["result"] for o in obs["value"]] == [0, 1]
    dss = get(client, f"/Things({district['thing']})/Datastreams?$orderby=name desc,id")
    assert [d["name"] for d in dss["value"]] == [f"open-{district['sfx']}", f"level-{district['sfx']}"]


def test_select_properties_id_and_navigation(client, district):
    t = get(client, f"/Things({district['thing']})?$select=name,id")
    assert t == {"@iot.id": district["thing"], "name": f"manhole-{district['sfx']}"}
    t = get(client, f"/Things({district['thing']})?$select=@iot.id,Datastreams")
    assert t == {"@iot.id": district["thing"],
                 "Datastreams@iot.navigationLink": f"{ROOT}/Things({district['thing']})/Datastreams"}
    o = get(client, f"/Observations({district['obs_open'][0]})?$select=phenomenonTime")
    assert o == {"phenomenonTime": "2026-11-01T00:00:00Z/2026-11-01T01:00:00Z"}


def test_expand_nested_with_options(client, district):
    d = district
    url = (f"/Things({d['thing']})?$expand=Datastreams($orderby=name;$select=name,id;"
           "$expand=Observations($orderby=phenomenonTime desc;$top=1;$select=result)),Locations")
    t = get(client, url)
    assert [x["name"] for x in t["Datastreams"]] == [f"level-{d['sfx']}", f"open-{d['sfx']}"]
    assert t["Datastreams"][0]["Observations"] == [{"result": 102}]  # the latest
    assert t["Datastreams"][1]["Observations"] == [{"result": True}]
    assert "Datastreams@iot.navigationLink" not in t and t["Locations"][0]["location"] == d["loc_json"]
    assert "Datastreams@iot.nextLink" not in t  # no $top cut it
    # to-one expand, slash form, and merged slash items
    o = get(client, f"/Observations({d['obs_level'][0]})?$expand=Datastream/Thing,Datastream/Sensor,FeatureOfInterest")
    assert o["Datastream"]["Thing"]["@iot.id"] == d["thing"] and o["Datastream"]["Sensor"]["@iot.id"] == d["sensor"]
    assert o["FeatureOfInterest"]["@iot.id"] == d["foi"]
    assert "MultiDatastream" not in o and "MultiDatastream@iot.navigationLink" in o


def test_expand_top_count_and_next_link(client, district):
    d = district
    ds = get(client, f"/Datastreams({d['ds_level']})?$expand=Observations($top=5;$skip=1;$count=true;$select=result)")
    assert [o["result"] for o in ds["Observations"]] == [1, 2, 3, 4, 5]
    assert ds["Observations@iot.count"] == 51
    nxt = ds["Observations@iot.nextLink"]
    assert nxt.startswith(f"{ROOT}/Datastreams({d['ds_level']})/Observations?")
    assert [o["result"] for o in get(client, nxt)["value"]] == [6, 7, 8, 9, 10]
    # expanded collections on a collection: each parent gets its own page
    things = get(client, f"/Things?$filter=properties/sfx eq '{d['sfx']}'&$expand=Datastreams($top=1;$orderby=id)"
                         "&$select=id", headers={"Authorization": f"Bearer {d['key_admin']}"})
    assert {t["@iot.id"]: [x["@iot.id"] for x in t["Datastreams"]] for t in things["value"]} == {
        d["thing"]: [d["ds_level"]], d["house_a"]: [d["ds_house_a"]], d["house_b"]: [d["ds_house_b"]]}


def test_expand_errors_name_the_item(client, district):
    err = get(client, f"/Things({district['thing']})?$expand=Datastreamz", 400)
    assert "Datastreamz" in err["message"]
    err = get(client, f"/Things({district['thing']})?$expand=Datastreams($bogus=1)", 400)
    assert "$bogus" in err["message"] and "Datastreams" in err["message"]


def test_filter_on_collections_and_in_expand(client, district):
    d = district
    day = (f"/Datastreams({d['ds_level']})/Observations?$filter=phenomenonTime ge 2026-11-01T06:00:00Z and "
           "phenomenonTime lt 2026-11-01T08:00:00Z&$count=true")
    body = get(client, day)
    assert body["@iot.count"] == 4 and [o["result"] for o in body["value"]] == [12, 13, 14, 15]
    t = get(client, f"/Things({d['thing']})?$expand=Datastreams($filter=name eq 'open-{d['sfx']}')")
    assert [x["@iot.id"] for x in t["Datastreams"]] == [d["ds_open"]]
    err = get(client, "/Things?$filter=nosuch eq 1", 400)
    assert err["message"].startswith("$filter")


def test_count_of_observations_is_read_from_the_stream_stats(client, district, database):
    with db.connect(database) as conn:
        n = _one(conn, "SELECT observations FROM sta_stream_stats WHERE stream_id = %s", (district["ds_level"],))
        # make the maintained counter differ from the rows for a moment: the count must follow the counter
        conn.execute("UPDATE sta_stream_stats SET observations = observations + 1000 WHERE stream_id = %s",
                     (district["ds_level"],))
        conn.commit()
        try:
            body = get(client, f"/Datastreams({district['ds_level']})/Observations?$count=true&$top=0")
            assert body["@iot.count"] == n + 1000 and body["value"] == []
            # with a $filter the rows are counted
            body = get(client, f"/Datastreams({district['ds_level']})/Observations?$count=true&$top=0"
                               "&$filter=result ge 0")
            assert body["@iot.count"] == n
        finally:
            conn.execute("UPDATE sta_stream_stats SET observations = observations - 1000 WHERE stream_id = %s",
                         (district["ds_level"],))
            conn.commit()


def test_orderby_expressions_and_paths(client, district):
    d = district
    obs = get(client, f"/FeaturesOfInterest({d['foi']})/Observations?$orderby=Datastream/name desc,id&$top=3"
                      "&$select=id&$filter=Datastream/id ne null")
    # open-… sorts after level-…: the two Observations of the 'open' Datastream come first
    assert [o["@iot.id"] for o in obs["value"]] == d["obs_open"] + [d["obs_level"][0]]
    obs = get(client, f"/Datastreams({d['ds_level']})/Observations?$orderby=result mod 10 desc, result&$top=3"
                      "&$select=result")
    assert [o["result"] for o in obs["value"]] == [9, 19, 29]
    err = get(client, "/Things?$orderby=nosuch desc", 400)
    assert err["message"].startswith("$orderby")


def test_top_zero_gives_the_count_without_rows_or_next_link(client, district):
    body = get(client, f"/Datastreams({district['ds_level']})/Observations?$top=0&$count=true")
    assert body == {"@iot.count": 51, "value": []}


def test_round_trip_with_the_write_routes(client, district):
    """What the write side creates (deep insert, then an Observation by navigation path) reads back."""
    staff = {"Authorization": f"Bearer {district['key_staff']}"}
    thing = {"name": f"rt-{district['sfx']}", "description": "round trip",
             "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                            "location": {"type": "Point", "coordinates": [114.1, 22.6]}}],
             "Datastreams": [{"name": "flow", "description": "d", "unitOfMeasurement":
                              {"name": "cubic metre", "symbol": "m3", "definition": "x"},
                              "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                              "Sensor": {"name": "s", "description": "s", "encodingType": "application/pdf",
                                         "metadata": "x"},
                              "ObservedProperty": {"name": "flow", "definition": "x", "description": "o"}}]}
    r = client.post(f"{ROOT}/Things", json=thing, headers=staff)
    assert r.status_code == 201, r.text
    t = get(client, r.headers["location"] + "?$expand=Datastreams($expand=Sensor),Locations")
    assert t["Locations"][0]["location"] == {"type": "Point", "coordinates": [114.1, 22.6]}
    ds = t["Datastreams"][0]
    assert ds["Sensor"]["name"] == "s" and ds["unitOfMeasurement"]["symbol"] == "m3"
    r = client.post(f"{ROOT}/Datastreams({ds['@iot.id']})/Observations", headers=staff,
                    json={"phenomenonTime": "2026-11-05T10:00:00+08:00", "result": 3.5})
    assert r.status_code == 201, r.text
    body = get(client, f"{ROOT}/Datastreams({ds['@iot.id']})/Observations?$count=true&$expand=FeatureOfInterest")
    assert body["@iot.count"] == 1
    [o] = body["value"]
    assert o["phenomenonTime"] == "2026-11-05T02:00:00Z" and o["result"] == 3.5
    assert o["FeatureOfInterest"]["feature"] == {"type": "Point", "coordinates": [114.1, 22.6]}
