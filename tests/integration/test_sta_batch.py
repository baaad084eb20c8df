"""SensorThings API JSON $batch (18-088 §11 semantics, OData 4.01 JSON batch format as FROST-Server
serves it): requests run by the application itself, ``$id`` references in URLs and bodies,
atomicity groups in one transaction (a failing group leaves nothing), ``dependsOn``, GETs."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.sta import MEASUREMENT, ROOT, UOM, changes, client, conn  # noqa: F401  (fixtures)

POINT = {"type": "Point", "coordinates": [114.12, 22.61]}
SENSOR = {"name": "meter", "description": "d", "encodingType": "application/pdf", "metadata": "https://example.org/m"}
PROP = {"name": "volume", "definition": "http://example.org/volume", "description": "d"}


def datastream(**links):
    return {"name": "usage", "description": "d", "observationType": MEASUREMENT, "unitOfMeasurement": UOM, **links}


def test_batch_with_references_groups_and_gets(client, auth, conn, changes):
    name = f"batch-{uuid.uuid4().hex[:8]}"
    body = {"requests": [
        {"id": "sensor1", "atomicityGroup": "g1", "method": "post", "url": "Sensors", "body": SENSOR},
        {"id": "prop1", "atomicityGroup": "g1", "method": "post", "url": "ObservedProperties", "body": PROP},
        {"id": "thing1", "atomicityGroup": "g1", "method": "post", "url": "Things",
         "body": {"name": name, "description": "d", "Locations": [
             {"name": "flat", "description": "d", "encodingType": "application/geo+json", "location": POINT}]}},
        {"id": "ds1", "atomicityGroup": "g1", "method": "post", "url": "$thing1/Datastreams",
         "body": datastream(Sensor={"@iot.id": "$sensor1"}, ObservedProperty={"@iot.id": "$prop1"})},
        {"id": "obs1", "method": "post", "url": "$ds1/Observations", "dependsOn": ["g1"],
         "body": {"result": 0.5, "phenomenonTime": "2026-11-20T01:00:00Z"}},
        {"id": "patch1", "method": "patch", "url": "$thing1",
         "body": {"description": "patched"}},
        {"id": "get1", "method": "get", "url": "$thing1"},
        {"id": "missing", "method": "get", "url": "Things(987654321)"},
    ]}
    resp = client.post(f"{ROOT}/$batch", json=body, headers=auth("gis-staff"))
    assert resp.status_code == 200, resp.text
    out = {r["id"]: r for r in resp.json()["responses"]}
    assert [r["id"] for r in resp.json()["responses"]] == [r["id"] for r in body["requests"]]
    assert {k: r["status"] for k, r in out.items()} == {
        "sensor1": 201, "prop1": 201, "thing1": 201, "ds1": 201, "obs1": 201, "patch1": 200, "get1": 200,
        "missing": 404}
    thing = out["thing1"]["body"]["@iot.id"]
    assert out["thing1"]["location"].endswith(f"{ROOT}/Things({thing})")
    ds = out["ds1"]["body"]["@iot.id"]
    assert conn.execute("SELECT thing_id, sensor_id, observed_property_id FROM sta_datastreams WHERE id = %s",
                        (ds,)).fetchone() == (thing, out["sensor1"]["body"]["@iot.id"], out["prop1"]["body"]["@iot.id"])
    assert conn.execute("SELECT stream_id, result_number FROM sta_observations WHERE id = %s",
                        (out["obs1"]["body"]["@iot.id"],)).fetchone() == (ds, 0.5)
    assert conn.execute("SELECT description FROM sta_things WHERE id = %s", (thing,)).fetchone()[0] == "patched"
    assert out["get1"]["body"]["name"] == name
    # the group's events come once, after its commit; every created entity is announced
    created = {(c.set_name, c.id) for c in changes if c.op == "create"}
    assert {("Things", thing), ("Datastreams", ds), ("Observations", out["obs1"]["body"]["@iot.id"])} <= created


def test_a_failing_atomicity_group_leaves_nothing(client, auth, conn, changes):
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    things_before = conn.execute("SELECT count(*) FROM sta_things").fetchone()[0]
    sensors_before = conn.execute("SELECT count(*) FROM sta_sensors").fetchone()[0]
    body = {"requests": [
        {"id": "s", "atomicityGroup": "g", "method": "post", "url": "Sensors", "body": SENSOR},
        {"id": "t", "atomicityGroup": "g", "method": "post", "url": "Things", "body": {"name": name}},
        {"id": "d", "atomicityGroup": "g", "method": "post", "url": "$t/Datastreams",  # no ObservedProperty
         "body": datastream(Sensor={"@iot.id": "$s"})},
        {"id": "after", "method": "patch", "url": "$t", "body": {"description": "x"}, "dependsOn": ["g"]},
        {"id": "ref", "method": "post", "url": "Things", "body": {"name": name, "Datastreams": [
            datastream(Sensor={"@iot.id": "$s"}, ObservedProperty=PROP)]}},
        {"id": "alone", "method": "post", "url": "Things", "body": {"name": name + "-alone"}},
    ]}
    resp = client.post(f"{ROOT}/$batch", json=body, headers=auth("admin"))
    assert resp.status_code == 200, resp.text
    out = {r["id"]: r for r in resp.json()["responses"]}
    assert {k: r["status"] for k, r in out.items()} == {"s": 424, "t": 424, "d": 400, "after": 424, "ref": 400,
                                                         "alone": 201}
    assert out["d"]["body"]["message"].startswith("body: a Datastream needs ObservedProperty")
    assert "rolled back" in out["t"]["body"]["message"]
    assert "$s names no entity" in out["ref"]["body"]["message"]
    assert conn.execute("SELECT count(*) FROM sta_things WHERE name = %s", (name,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM sta_things").fetchone()[0] == things_before + 1
    assert conn.execute("SELECT count(*) FROM sta_sensors").fetchone()[0] == sensors_before
    assert [(c.op, c.set_name) for c in changes] == [("create", "Things")]  # only "alone"


def test_batch_sub_requests_keep_their_access_checks(client, conn):
    name = f"anon-{uuid.uuid4().hex[:8]}"
    resp = client.post(f"{ROOT}/$batch", json={"requests": [
        {"id": "1", "method": "post", "url": "Things", "body": {"name": name}},
        {"id": "2", "method": "get", "url": f"{ROOT}/Things?$top=1"}]})
    assert resp.status_code == 200
    statuses = [r["status"] for r in resp.json()["responses"]]
    assert statuses == [401, 200]
    assert conn.execute("SELECT count(*) FROM sta_things WHERE name = %s", (name,)).fetchone()[0] == 0


@pytest.mark.parametrize("body,member", [
    ({"request": []}, "body"),
    ({"requests": [{"method": "get", "url": "Things"}]}, "requests[0].id"),
    ({"requests": [{"id": "1", "method": "fetch", "url": "Things"}]}, "requests[0].method"),
    ({"requests": [{"id": "1", "method": "get", "url": "Things"}, {"id": "1", "method": "get", "url": "Things"}]},
     "requests[1].id"),
    ({"requests": [{"id": "1", "method": "delete", "url": "Things(1)", "atomicityGroup": "a"},
                   {"id": "2", "method": "get", "url": "Things"},
                   {"id": "3", "method": "delete", "url": "Things(2)", "atomicityGroup": "a"}]},
     "requests[2].atomicityGroup"),
    ({"requests": [{"id": "1", "method": "get", "url": "Things", "atomicityGroup": "a"}]}, "requests[0].method"),
    ({"requests": [{"id": "1", "method": "get", "url": "Things", "dependsOn": ["2"]},
                   {"id": "2", "method": "get", "url": "Things"}]}, "requests[0].dependsOn"),
    ({"requests": [{"id": "1", "method": "post", "url": "$batch", "body": {"requests": []}}]}, "requests[0].url"),
])
def test_malformed_batches_are_refused_naming_the_member(client, auth, body, member):
    resp = client.post(f"{ROOT}/$batch", json=body, headers=auth("gis-staff"))
    assert resp.status_code == 400
    assert resp.json()["message"].startswith(member + ":")
