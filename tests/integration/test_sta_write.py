"""SensorThings API 1.1 create / update / delete (OGC 18-088 §10; FROST-Server where the standard is
silent), checked in the database: each entity set, deep insert, links by id, navigation-path
POST, generated FeaturesOfInterest and HistoricalLocations, PATCH / PUT / JSON Patch, DELETE with
its cascade, $ref links, the 400s naming the member, 401 / 403, change events, the audit log."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.sta import MEASUREMENT, ROOT, UOM, changes, client, conn, staff  # noqa: F401  (fixtures)

POINT = {"type": "Point", "coordinates": [114.06, 22.62]}


def tag() -> str:
    return uuid.uuid4().hex[:8]


def sensor(name="meter"):
    return {"name": name, "description": "a water meter", "encodingType": "application/pdf",
            "metadata": "https://example.org/meter.pdf"}


def prop(name="volume"):
    return {"name": name, "definition": "http://example.org/volume", "description": "water used"}


def datastream(name="usage", **links):
    return {"name": name, "description": "half-hourly use", "observationType": MEASUREMENT,
            "unitOfMeasurement": UOM, **links}


def location(name="home", geometry=POINT, encoding="application/geo+json"):
    return {"name": name, "description": "the flat", "encodingType": encoding, "location": geometry}


def thing_with_everything(name: str) -> dict:
    return {"name": name, "description": "a household", "properties": {"community": "坂田"},
            "Locations": [location(f"{name} home")],
            "Datastreams": [datastream(f"{name} usage", Sensor=sensor(), ObservedProperty=prop())]}


def created(resp) -> int:
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert resp.headers["location"] == doc["@iot.selfLink"]
    assert doc["@iot.selfLink"].endswith(f"{ROOT}/{doc['@iot.selfLink'].split('/')[-1]}")
    return doc["@iot.id"]


def one(conn, query, *params):
    return conn.execute(query, params).fetchone()


# ------------------------------------------------------------------------------------- create

def test_deep_insert_of_a_thing_creates_everything_in_one_go(client, staff, conn, changes):
    name = f"house-{tag()}"
    resp = client.post(f"{ROOT}/Things", json=thing_with_everything(name), headers=staff)
    thing = created(resp)
    doc = resp.json()
    assert doc["name"] == name and doc["properties"] == {"community": "坂田"}
    assert doc["Datastreams@iot.navigationLink"].endswith(f"/Things({thing})/Datastreams")

    loc, geom_type, srid = one(conn, "SELECT l.id, ST_GeometryType(l.geom), ST_SRID(l.geom) FROM sta_locations l "
                               "JOIN sta_thing_locations tl ON tl.location_id = l.id WHERE tl.thing_id = %s", thing)
    assert (geom_type, srid) == ("ST_Point", 4326)
    ds, sensor_name, op_name, uom = one(
        conn, "SELECT d.id, s.name, o.name, d.unit_of_measurement FROM sta_datastreams d "
              "JOIN sta_sensors s ON s.id = d.sensor_id JOIN sta_observed_properties o ON o.id = d.observed_property_id "
              "WHERE d.thing_id = %s", thing)
    assert (sensor_name, op_name, uom) == ("meter", "volume", UOM)
    # a Thing created with a Location gets its first HistoricalLocation, linked to that Location
    hl = conn.execute("SELECT h.id, array_agg(x.location_id) FROM sta_historical_locations h "
                      "JOIN sta_location_history x ON x.historical_location_id = h.id WHERE h.thing_id = %s "
                      "GROUP BY h.id", (thing,)).fetchall()
    assert [row[1] for row in hl] == [[loc]]
    made = {(c.op, c.set_name) for c in changes}
    assert made >= {("create", s) for s in ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties",
                                            "HistoricalLocations")}
    event = next(c for c in changes if c.set_name == "Datastreams")
    assert event.id == ds and event.entity["@iot.selfLink"].endswith(f"{ROOT}/Datastreams({ds})")


@pytest.mark.parametrize("set_name,body", [
    ("Sensors", sensor()),
    ("ObservedProperties", prop()),
    ("Locations", location()),
    ("FeaturesOfInterest", {"name": "tap", "description": "kitchen tap", "encodingType": "application/geo+json",
                            "feature": {"type": "Feature", "properties": {}, "geometry": POINT}}),
])
def test_create_each_independent_entity_set(client, staff, conn, set_name, body):
    new = created(client.post(f"{ROOT}/{set_name}", json=body, headers=staff))
    table = {"Sensors": "sta_sensors", "ObservedProperties": "sta_observed_properties", "Locations": "sta_locations",
             "FeaturesOfInterest": "sta_features_of_interest"}[set_name]
    assert one(conn, f"SELECT name FROM {table} WHERE id = %s", new)[0] == body["name"]
    if set_name == "FeaturesOfInterest":  # a Feature's geometry fills geom
        assert one(conn, "SELECT ST_AsText(geom) FROM sta_features_of_interest WHERE id = %s", new)[0] == \
            "POINT(114.06 22.62)"


def test_links_by_id_and_navigation_path_posts(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json={"name": f"t-{tag()}", "description": "d"}, headers=staff))
    s = created(client.post(f"{ROOT}/Sensors", json=sensor(), headers=staff))
    op = created(client.post(f"{ROOT}/ObservedProperties", json=prop(), headers=staff))
    # a Datastream POSTed under a Thing belongs to it; Sensor and ObservedProperty linked by id
    ds = created(client.post(f"{ROOT}/Things({thing})/Datastreams",
                             json=datastream(Sensor={"@iot.id": s}, ObservedProperty={"@iot.id": op}), headers=staff))
    assert one(conn, "SELECT thing_id, sensor_id, observed_property_id FROM sta_datastreams WHERE id = %s", ds) == \
        (thing, s, op)
    # a second Datastream linking the Thing in its body
    ds2 = created(client.post(f"{ROOT}/Datastreams", json=datastream(
        "second", Thing={"@iot.id": thing}, Sensor={"@iot.id": s}, ObservedProperty={"@iot.id": op}), headers=staff))
    assert one(conn, "SELECT thing_id FROM sta_datastreams WHERE id = %s", ds2)[0] == thing
    # an Observation POSTed under a Datastream, with its own FeatureOfInterest
    foi = {"name": "meter site", "description": "x", "encodingType": "application/geo+json", "feature": POINT}
    obs = created(client.post(f"{ROOT}/Datastreams({ds})/Observations",
                              json={"phenomenonTime": "2026-11-01T08:00:00Z", "result": 0.25,
                                    "FeatureOfInterest": foi}, headers=staff))
    assert one(conn, "SELECT stream_id, result_number, result_json FROM sta_observations WHERE id = %s", obs) == \
        (ds, 0.25, None)
    # a navigation path through an unrelated entity is a 404
    other = created(client.post(f"{ROOT}/Things", json={"name": "other", "description": "d"}, headers=staff))
    resp = client.post(f"{ROOT}/Things({other})/Datastreams({ds})/Observations", json={"result": 1}, headers=staff)
    assert resp.status_code == 404


def test_observations_generated_foi_defaults_and_result_types(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"obs-{tag()}"), headers=staff))
    ds = one(conn, "SELECT id FROM sta_datastreams WHERE thing_id = %s", thing)[0]
    results = [12, 3.5, "open", True, {"tilt": 4}, [1, 2], None]
    ids = [created(client.post(f"{ROOT}/Datastreams({ds})/Observations", json={"result": r}, headers=staff))
           for r in results]
    rows = conn.execute("SELECT id, result_number, result_json, feature_of_interest_id, phenomenon_time_start, "
                        "phenomenon_time_end, result_time FROM sta_observations WHERE id = ANY(%s) ORDER BY id",
                        (ids,)).fetchall()
    assert [(r[1], r[2]) for r in rows] == [(12.0, None), (3.5, None), (None, "open"), (None, True),
                                            (None, {"tilt": 4}), (None, [1, 2]), (None, None)]
    # one FeatureOfInterest made from the Thing's Location, reused for every Observation of it
    fois = {r[3] for r in rows}
    assert len(fois) == 1
    loc_doc = one(conn, "SELECT l.location FROM sta_locations l JOIN sta_thing_locations t ON t.location_id = l.id "
                        "WHERE t.thing_id = %s", thing)[0]
    assert one(conn, "SELECT feature, ST_AsText(geom) FROM sta_features_of_interest WHERE id = %s", fois.pop()) == \
        (loc_doc, "POINT(114.06 22.62)")
    # phenomenonTime defaults to now (an instant), resultTime to null
    now = one(conn, "SELECT now()")[0]
    assert all(abs((r[4] - now).total_seconds()) < 300 and r[5] is None and r[6] is None for r in rows)
    # an interval and a result time, as given; a naive time is district time (+08:00)
    obs = created(client.post(f"{ROOT}/Observations", json={
        "Datastream": {"@iot.id": ds}, "result": 1, "phenomenonTime": "2026-10-01T00:00:00Z/2026-10-01T00:30:00Z",
        "resultTime": "2026-10-01T08:31:00"}, headers=staff))
    got = one(conn, "SELECT phenomenon_time_start::text, phenomenon_time_end::text, result_time::text "
                    "FROM sta_observations WHERE id = %s", obs)
    assert got == ("2026-10-01 00:00:00+00", "2026-10-01 00:30:00+00", "2026-10-01 00:31:00+00")


def test_location_posted_under_a_thing_becomes_its_current_location(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"move-{tag()}"), headers=staff))
    old = one(conn, "SELECT location_id FROM sta_thing_locations WHERE thing_id = %s", thing)[0]
    new = created(client.post(f"{ROOT}/Things({thing})/Locations", json=location("new flat"), headers=staff))
    assert [r[0] for r in conn.execute("SELECT location_id FROM sta_thing_locations WHERE thing_id = %s",
                                       (thing,))] == [new]
    history = conn.execute("SELECT array_agg(x.location_id ORDER BY x.location_id) FROM sta_historical_locations h "
                           "JOIN sta_location_history x ON x.historical_location_id = h.id WHERE h.thing_id = %s "
                           "GROUP BY h.id ORDER BY h.id", (thing,)).fetchall()
    assert [r[0] for r in history] == [[old], [new]]


def test_multidatastream_and_its_observations(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"mds-{tag()}"), headers=staff))
    body = {"name": "hydrant", "description": "pressure and flow", "Thing": {"@iot.id": thing}, "Sensor": sensor(),
            "multiObservationDataTypes": [MEASUREMENT, MEASUREMENT],
            "unitOfMeasurements": [UOM, {"name": "bar", "symbol": "bar", "definition": "x"}],
            "ObservedProperties": [prop("flow"), prop("pressure")]}
    mds = created(client.post(f"{ROOT}/MultiDatastreams", json=body, headers=staff))
    ranks = conn.execute("SELECT o.name FROM sta_multi_datastream_properties m JOIN sta_observed_properties o "
                         "ON o.id = m.observed_property_id WHERE m.multi_datastream_id = %s ORDER BY rank",
                         (mds,)).fetchall()
    assert [r[0] for r in ranks] == ["flow", "pressure"]
    obs = created(client.post(f"{ROOT}/MultiDatastreams({mds})/Observations", json={"result": [1.5, 3.2]},
                              headers=staff))
    assert one(conn, "SELECT stream_id, result_json FROM sta_observations WHERE id = %s", obs) == (mds, [1.5, 3.2])
    wrong = client.post(f"{ROOT}/MultiDatastreams({mds})/Observations", json={"result": 1.5}, headers=staff)
    assert wrong.status_code == 400 and "result" in wrong.json()["message"]
    # as many units and types as ObservedProperties
    body["ObservedProperties"] = [prop("flow")]
    resp = client.post(f"{ROOT}/MultiDatastreams", json=body, headers=staff)
    assert resp.status_code == 400 and "ObservedProperties (1)" in resp.json()["message"]


# ------------------------------------------------------------------------------------- errors

def count(conn, table):
    return one(conn, f"SELECT count(*) FROM {table}")[0]


def test_missing_and_unknown_members_are_named_and_nothing_is_written(client, staff, conn):
    before = {t: count(conn, t) for t in ("sta_things", "sta_locations", "sta_sensors", "sta_datastreams")}
    resp = client.post(f"{ROOT}/Things", json={"description": "no name"}, headers=staff)
    assert resp.status_code == 400 and "needs name" in resp.json()["message"]
    resp = client.post(f"{ROOT}/Things", json={"name": "x", "colour": "red"}, headers=staff)
    assert resp.status_code == 400 and resp.json()["message"].startswith("colour: not a member of a Thing")
    # deep: the Thing and its Location would be fine, the Datastream lacks its ObservedProperty
    body = thing_with_everything("broken")
    del body["Datastreams"][0]["ObservedProperty"]
    resp = client.post(f"{ROOT}/Things", json=body, headers=staff)
    assert resp.status_code == 400
    assert resp.json()["message"].startswith("Datastreams[0]: a Datastream needs ObservedProperty")
    body = thing_with_everything("broken")
    body["Datastreams"][0]["Sensor"]["metadata"] = 5
    resp = client.post(f"{ROOT}/Things", json=body, headers=staff)
    assert resp.status_code == 400 and resp.json()["message"].startswith("Datastreams[0].Sensor.metadata:")
    body = thing_with_everything("broken")
    body["Datastreams"][0]["Sensor"] = {"@iot.id": 987654321}
    resp = client.post(f"{ROOT}/Things", json=body, headers=staff)
    assert resp.status_code == 400 and "Datastreams[0].Sensor.@iot.id: no Sensor" in resp.json()["message"]
    body = thing_with_everything("broken")
    body["Locations"][0]["location"] = {"type": "Pointy", "coordinates": [1, 2]}
    resp = client.post(f"{ROOT}/Things", json=body, headers=staff)
    assert resp.status_code == 400 and resp.json()["message"].startswith("Locations[0].location:")
    resp = client.post(f"{ROOT}/Observations", json={"result": 1, "phenomenonTime": "yesterday",
                                                     "Datastream": {"@iot.id": 1}}, headers=staff)
    assert resp.status_code == 400 and "phenomenonTime" in resp.json()["message"]
    resp = client.post(f"{ROOT}/Things", content=b"{not json", headers={**staff, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["message"].startswith("body: not JSON")
    assert {t: count(conn, t) for t in before} == before  # all or nothing


def test_observation_needs_a_foi_source(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json={"name": "nowhere", "description": "d"}, headers=staff))
    ds = created(client.post(f"{ROOT}/Things({thing})/Datastreams",
                             json=datastream(Sensor=sensor(), ObservedProperty=prop()), headers=staff))
    resp = client.post(f"{ROOT}/Datastreams({ds})/Observations", json={"result": 1}, headers=staff)
    assert resp.status_code == 400 and resp.json()["message"].startswith("FeatureOfInterest: missing")
    resp = client.post(f"{ROOT}/Observations", json={"result": 1}, headers=staff)
    assert resp.status_code == 400 and "Datastream (or MultiDatastream)" in resp.json()["message"]


@pytest.mark.parametrize("role,status", [(None, 401), ("planner", 403), ("community-worker", 403)])
def test_writes_need_sensing_write(client, auth, conn, role, status):
    headers = auth(role) if role else {}
    before = count(conn, "sta_things")
    for method, path in [("POST", "Things"), ("PATCH", "Things(1)"), ("PUT", "Things(1)"), ("DELETE", "Things(1)"),
                         ("POST", "CreateObservations")]:
        resp = client.request(method, f"{ROOT}/{path}", json={"name": "x"}, headers=headers)
        assert resp.status_code == status, (method, path, resp.text)
        assert "sensing:write" in resp.json()["message"]
    assert count(conn, "sta_things") == before


def test_writes_are_audited(client, staff, conn):
    name = f"audited-{tag()}"
    created(client.post(f"{ROOT}/Things", json={"name": name, "description": "d"}, headers=staff))
    client.post(f"{ROOT}/Things", json={"name": name, "description": "d"})
    rows = conn.execute("SELECT principal, status FROM audit_log WHERE target = %s AND method = 'POST' "
                        "ORDER BY id DESC LIMIT 2", (f"{ROOT}/Things",)).fetchall()
    assert rows == [("anonymous", 401), ("test-gis-staff", 201)]


# ------------------------------------------------------------------------------------- update

def test_patch_merges_and_put_replaces(client, staff, conn, changes):
    thing = created(client.post(f"{ROOT}/Things", json={"name": "p", "description": "before",
                                                        "properties": {"a": 1}}, headers=staff))
    resp = client.patch(f"{ROOT}/Things({thing})", json={"description": "after"}, headers=staff)
    assert resp.status_code == 200 and resp.json()["description"] == "after"
    assert one(conn, "SELECT name, description, properties FROM sta_things WHERE id = %s", thing) == \
        ("p", "after", {"a": 1})
    assert [(c.op, c.id, c.changed) for c in changes if c.set_name == "Things"][-1] == ("update", thing,
                                                                                        ("description",))
    # PUT: what is not given goes back to its default
    resp = client.put(f"{ROOT}/Things({thing})", json={"name": "q"}, headers=staff)
    assert resp.status_code == 200, resp.text
    assert one(conn, "SELECT name, description, properties FROM sta_things WHERE id = %s", thing) == ("q", "", None)
    resp = client.put(f"{ROOT}/Things({thing})", json={"description": "no name"}, headers=staff)
    assert resp.status_code == 400 and "name" in resp.json()["message"]
    # JSON Patch
    resp = client.patch(f"{ROOT}/Things({thing})", content=b'[{"op": "add", "path": "/properties", "value": '
                        b'{"floor": 3}}, {"op": "replace", "path": "/name", "value": "r"}]',
                        headers={**staff, "Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200, resp.text
    assert one(conn, "SELECT name, properties FROM sta_things WHERE id = %s", thing) == ("r", {"floor": 3})
    assert client.patch(f"{ROOT}/Things(987654321)", json={"name": "x"}, headers=staff).status_code == 404
    resp = client.patch(f"{ROOT}/Things({thing})", json={"nme": "typo"}, headers=staff)
    assert resp.status_code == 400 and resp.json()["message"].startswith("nme:")


def test_patch_locations_records_history_and_observation_patch(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"pl-{tag()}"), headers=staff))
    loc = created(client.post(f"{ROOT}/Locations", json=location("elsewhere"), headers=staff))
    resp = client.patch(f"{ROOT}/Things({thing})", json={"Locations": [{"@iot.id": loc}]}, headers=staff)
    assert resp.status_code == 200, resp.text
    assert [r[0] for r in conn.execute("SELECT location_id FROM sta_thing_locations WHERE thing_id = %s",
                                       (thing,))] == [loc]
    assert one(conn, "SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s", thing)[0] == 2
    # a Location's geometry follows its document
    resp = client.patch(f"{ROOT}/Locations({loc})", json={"location": {"type": "Point", "coordinates": [114.1, 22.7]}},
                        headers=staff)
    assert resp.status_code == 200
    assert one(conn, "SELECT ST_AsText(geom) FROM sta_locations WHERE id = %s", loc)[0] == "POINT(114.1 22.7)"
    # an Observation moved to another month (partition) keeps its id; stats follow
    ds = one(conn, "SELECT id FROM sta_datastreams WHERE thing_id = %s", thing)[0]
    obs = created(client.post(f"{ROOT}/Datastreams({ds})/Observations",
                              json={"result": 5, "phenomenonTime": "2026-11-03T00:00:00Z"}, headers=staff))
    resp = client.patch(f"{ROOT}/Observations({obs})", json={"phenomenonTime": "2025-02-03T00:00:00Z", "result": 7},
                        headers=staff)
    assert resp.status_code == 200, resp.text
    assert one(conn, "SELECT result_number, phenomenon_time_start::text, tableoid::regclass::text "
                     "FROM sta_observations WHERE id = %s", obs) == (7.0, "2025-02-03 00:00:00+00",
                                                                      "sta_observations_y2025m02")
    assert one(conn, "SELECT observations, phenomenon_time_start::text FROM sta_stream_stats WHERE stream_id = %s",
               ds) == (1, "2025-02-03 00:00:00+00")


# ------------------------------------------------------------------------------------- delete and $ref

def test_delete_cascades(client, staff, conn, changes):
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"del-{tag()}"), headers=staff))
    ds = one(conn, "SELECT id FROM sta_datastreams WHERE thing_id = %s", thing)[0]
    sensor_id = one(conn, "SELECT sensor_id FROM sta_datastreams WHERE id = %s", ds)[0]
    for k in range(3):
        created(client.post(f"{ROOT}/Datastreams({ds})/Observations",
                            json={"result": k, "phenomenonTime": f"2026-11-0{k + 1}T00:00:00Z"}, headers=staff))
    assert one(conn, "SELECT count(*) FROM sta_observations WHERE stream_id = %s", ds)[0] == 3
    resp = client.delete(f"{ROOT}/Things({thing})", headers=staff)
    assert resp.status_code == 200
    assert one(conn, "SELECT (SELECT count(*) FROM sta_datastreams WHERE thing_id = %s), "
                     "(SELECT count(*) FROM sta_observations WHERE stream_id = %s), "
                     "(SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s), "
                     "(SELECT count(*) FROM sta_stream_stats WHERE stream_id = %s), "
                     "(SELECT count(*) FROM sta_sensors WHERE id = %s)", thing, ds, thing, ds, sensor_id) == (0, 0, 0, 0, 1)
    assert ("delete", "Things", thing) in [(c.op, c.set_name, c.id) for c in changes]
    assert client.delete(f"{ROOT}/Things({thing})", headers=staff).status_code == 404
    # a Sensor takes its Datastreams; a FeatureOfInterest its Observations
    thing = created(client.post(f"{ROOT}/Things", json=thing_with_everything(f"del2-{tag()}"), headers=staff))
    ds, sensor_id = one(conn, "SELECT id, sensor_id FROM sta_datastreams WHERE thing_id = %s", thing)
    obs = created(client.post(f"{ROOT}/Datastreams({ds})/Observations", json={"result": 1}, headers=staff))
    foi = one(conn, "SELECT feature_of_interest_id FROM sta_observations WHERE id = %s", obs)[0]
    assert client.delete(f"{ROOT}/FeaturesOfInterest({foi})", headers=staff).status_code == 200
    assert one(conn, "SELECT count(*) FROM sta_observations WHERE id = %s", obs)[0] == 0
    assert client.delete(f"{ROOT}/Sensors({sensor_id})", headers=staff).status_code == 200
    assert one(conn, "SELECT count(*) FROM sta_datastreams WHERE id = %s", ds)[0] == 0
    # a Location takes the HistoricalLocations that knew only it
    loc = one(conn, "SELECT location_id FROM sta_thing_locations WHERE thing_id = %s", thing)[0]
    assert client.delete(f"{ROOT}/Locations({loc})", headers=staff).status_code == 200
    assert one(conn, "SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s", thing)[0] == 0
    assert one(conn, "SELECT count(*) FROM sta_things WHERE id = %s", thing)[0] == 1


def test_ref_links(client, staff, conn):
    thing = created(client.post(f"{ROOT}/Things", json={"name": f"ref-{tag()}", "description": "d"}, headers=staff))
    loc = created(client.post(f"{ROOT}/Locations", json=location(), headers=staff))
    resp = client.post(f"{ROOT}/Things({thing})/Locations/$ref", json={"@iot.id": loc}, headers=staff)
    assert resp.status_code == 204, resp.text
    assert one(conn, "SELECT count(*) FROM sta_thing_locations WHERE thing_id = %s AND location_id = %s",
               thing, loc)[0] == 1
    assert one(conn, "SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s", thing)[0] == 1
    resp = client.post(f"{ROOT}/Things({thing})/Locations/$ref", json={"@iot.id": 987654321}, headers=staff)
    assert resp.status_code == 400 and "no Location" in resp.json()["message"]
    resp = client.delete(f"{ROOT}/Things({thing})/Locations({loc})/$ref", headers=staff)
    assert resp.status_code == 204
    assert one(conn, "SELECT count(*) FROM sta_thing_locations WHERE thing_id = %s", thing)[0] == 0
    assert one(conn, "SELECT count(*) FROM sta_locations WHERE id = %s", loc)[0] == 1  # the Location stays
    assert client.delete(f"{ROOT}/Things({thing})/Locations({loc})/$ref", headers=staff).status_code == 404


def test_historical_locations_and_a_thing_posted_under_a_location(client, staff, conn):
    loc = created(client.post(f"{ROOT}/Locations", json=location("shop"), headers=staff))
    resp = client.post(f"{ROOT}/Locations({loc})/Things", json={"name": f"kiosk-{tag()}", "description": "d"},
                       headers=staff)
    thing = created(resp)
    assert one(conn, "SELECT count(*) FROM sta_thing_locations WHERE thing_id = %s AND location_id = %s",
               thing, loc)[0] == 1
    assert one(conn, "SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s", thing)[0] == 1
    hl = created(client.post(f"{ROOT}/HistoricalLocations", headers=staff, json={
        "time": "2026-01-01T08:00:00+08:00", "Thing": {"@iot.id": thing}, "Locations": [{"@iot.id": loc}]}))
    assert one(conn, "SELECT h.thing_id, h.time::text, x.location_id FROM sta_historical_locations h "
                     "JOIN sta_location_history x ON x.historical_location_id = h.id WHERE h.id = %s", hl) == \
        (thing, "2026-01-01 00:00:00+00", loc)
    # round trip: the read side serves what the create answered
    got = client.get(f"{ROOT}/Things({thing})")
    assert got.status_code == 200 and got.json() == resp.json()
