"""Who sees what through the SensorThings API: Things with ``"restricted": true`` (the pilot's
households) and everything under them exist only for roles that may ``sensing:households``; a
community worker sees its own community's households only; every read of a household's data is
audited; a place shared with a public Thing stays visible."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from spatial_api import db
from spatial_api.app import create_app
from tests.integration.test_sta_read import COMMUNITY_A, COMMUNITY_B, ROOT, build_district


@pytest.fixture(scope="module")
def district(database):
    d = build_district(database)
    with db.connect(database) as conn:
        # the street location is shared with household b; a FOI sits at household a's home
        conn.execute("INSERT INTO sta_thing_locations VALUES (%s, %s)", (d["house_b"], d["loc"]))
        loc_a = conn.execute("SELECT location FROM sta_locations WHERE id = %s", (d["loc_a"],)).fetchone()[0]
        d["foi_a"] = conn.execute(
            "INSERT INTO sta_features_of_interest (name, encoding_type, feature, geom) VALUES (%s, "
            "'application/geo+json', %s::jsonb, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)) RETURNING id",
            (f"home-a-{d['sfx']}", json.dumps(loc_a), json.dumps(loc_a))).fetchone()[0]
        conn.commit()
    return d


@pytest.fixture(scope="module")
def app(database, district):
    return create_app(database)


def client_for(app, district, who):
    key = {"admin": district["key_admin"], "staff": district["key_staff"], "worker_a": district["key_worker_a"]}.get(who)
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


def status(c, path):
    return c.get(ROOT + path).status_code


def things_of(c, district):
    body = c.get(f"{ROOT}/Things?$filter=properties/sfx eq '{district['sfx']}'").json()
    return sorted(t["@iot.id"] for t in body["value"])


@pytest.mark.parametrize("who", [None, "staff"])
def test_households_do_not_exist_for_the_public_and_other_roles(app, district, who):
    c, d = client_for(app, district, who), district
    assert things_of(c, d) == [d["thing"]]
    for path in (f"/Things({d['house_a']})", f"/Datastreams({d['ds_house_a']})",
                 f"/Datastreams({d['ds_house_a']})/Observations", f"/Observations({d['obs_house_a'][0]})",
                 f"/Locations({d['loc_a']})", f"/Things({d['house_b']})/Locations", f"/FeaturesOfInterest({d['foi_a']})"):
        assert status(c, path) == 404, path
    body = c.get(f"{ROOT}/Observations?$filter=Datastream/id eq {d['ds_house_a']}&$count=true").json()
    assert body["value"] == [] and body["@iot.count"] == 0
    # the shared street location stays, and lists only the Things one may see
    assert status(c, f"/Locations({d['loc']})") == 200
    assert [t["@iot.id"] for t in c.get(f"{ROOT}/Locations({d['loc']})/Things").json()["value"]] == [d["thing"]]
    exp = c.get(f"{ROOT}/Locations({d['loc']})?$expand=Things").json()
    assert [t["@iot.id"] for t in exp["Things"]] == [d["thing"]]
    # Sensors are shared: their Datastreams list hides the households'
    ds = c.get(f"{ROOT}/Sensors({d['sensor']})/Datastreams").json()["value"]
    assert sorted(x["@iot.id"] for x in ds) == sorted([d["ds_level"], d["ds_open"]])


def test_counts_hide_households_too(app, district, database):
    anon, admin = client_for(app, district, None), client_for(app, district, "admin")
    n_anon = anon.get(f"{ROOT}/Observations?$count=true&$top=0").json()["@iot.count"]
    n_admin = admin.get(f"{ROOT}/Observations?$count=true&$top=0").json()["@iot.count"]
    with db.connect(database) as conn:
        hidden = conn.execute(
            "SELECT count(*) FROM sta_observations o JOIN sta_datastreams s ON s.id = o.stream_id "
            "JOIN sta_things t ON t.id = s.thing_id WHERE t.properties @> '{\"restricted\": true}'").fetchone()[0]
        total = conn.execute("SELECT count(*) FROM sta_observations").fetchone()[0]
    assert hidden >= 6 and n_admin == total and n_anon == total - hidden


def test_admin_sees_households_and_the_read_is_audited(app, district, database):
    c, d = client_for(app, district, "admin"), district
    assert things_of(c, d) == sorted([d["thing"], d["house_a"], d["house_b"]])
    marker = uuid.uuid4().hex[:10]
    r = c.get(f"{ROOT}/Datastreams({d['ds_house_a']})/Observations", params={"m": marker})
    assert r.status_code == 200 and len(r.json()["value"]) == 4
    assert c.get(f"{ROOT}/FeaturesOfInterest({d['foi_a']})").status_code == 200
    # public data read by the same admin is not audited as restricted
    public_marker = uuid.uuid4().hex[:10]
    assert c.get(f"{ROOT}/Things({d['thing']})", params={"m": public_marker}).status_code == 200
    deadline = time.monotonic() + 10  # restricted reads are written in batches
    found = []
    while time.monotonic() < deadline and not found:
        with db.connect(database) as conn:
            found = conn.execute("SELECT principal, role, detail FROM audit_log WHERE action = 'read-restricted' "
                                 "AND detail->>'query' LIKE %s", (f"%{marker}%",)).fetchall()
        if not found:
            time.sleep(0.1)
    assert found and found[0][1] == "admin"
    assert f"sta:Things({d['house_a']})" in found[0][2]["restricted"]
    with db.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'read-restricted' "
                            "AND detail->>'query' LIKE %s", (f"%{public_marker}%",)).fetchone()[0] == 0


def test_community_worker_sees_its_own_community_only(app, district):
    c, d = client_for(app, district, "worker_a"), district
    assert things_of(c, d) == sorted([d["thing"], d["house_a"]])
    assert status(c, f"/Datastreams({d['ds_house_a']})/Observations") == 200
    assert status(c, f"/Things({d['house_b']})") == 404
    assert status(c, f"/Observations({d['obs_house_b'][0]})") == 404
    assert status(c, f"/Observations({d['obs_house_a'][0]})") == 200
    # none of B's households (other devices of B, public ones, may exist in a shared schema)
    body = c.get(f"{ROOT}/Things?$filter=properties/community eq '{COMMUNITY_B}' and properties/restricted eq true").json()
    assert body["value"] == []
    assert c.get(f"{ROOT}/Things?$filter=properties/community eq '{COMMUNITY_A}' and properties/restricted eq true"
                 ).json()["value"], "the filter finds A's households: the empty answer for B is not vacuous"
    # expand from a public entity does not leak the other community
    ds = c.get(f"{ROOT}/Sensors({d['sensor']})?$expand=Datastreams($select=id)").json()["Datastreams"]
    assert sorted(x["@iot.id"] for x in ds) == sorted([d["ds_level"], d["ds_open"], d["ds_house_a"]])


def test_responses_vary_with_the_caller(app, district):
    r = client_for(app, district, None).get(f"{ROOT}/Things({district['thing']})")
    assert r.status_code == 200 and "private" in r.headers.get("cache-control", "")


def test_households_cannot_be_written_by_who_cannot_see_them(app, district, database):
    """gis-staff may write SensorThings entities, but a household's do not exist for it: PATCH,
    DELETE and creating under them are 404, linking to them is 400 — nothing changes; an admin
    (who sees them) may."""
    c, d = client_for(app, district, "staff"), district
    obs = {"phenomenonTime": "2026-11-20T00:00:00Z", "result": 1.5}
    with db.connect(database) as conn:
        before = conn.execute("SELECT name FROM sta_things WHERE id = %s", (d["house_a"],)).fetchone()[0]
        count = conn.execute("SELECT count(*) FROM sta_observations WHERE stream_id = %s",
                             (d["ds_house_a"],)).fetchone()[0]
    assert c.patch(f"{ROOT}/Things({d['house_a']})", json={"name": "x"}).status_code == 404
    assert c.delete(f"{ROOT}/Things({d['house_a']})").status_code == 404
    assert c.post(f"{ROOT}/Datastreams({d['ds_house_a']})/Observations", json=obs).status_code == 404
    linked = c.post(f"{ROOT}/Observations", json={**obs, "Datastream": {"@iot.id": d["ds_house_a"]}})
    assert linked.status_code == 400 and "no Datastream" in linked.json()["message"]
    arr = c.post(f"{ROOT}/CreateObservations", json=[{"Datastream": {"@iot.id": d["ds_house_a"]},
                                                      "components": ["phenomenonTime", "result"],
                                                      "dataArray": [["2026-11-20T00:00:00Z", 1]]}])
    assert arr.status_code == 400, arr.text
    with db.connect(database) as conn:
        assert conn.execute("SELECT name FROM sta_things WHERE id = %s", (d["house_a"],)).fetchone()[0] == before
        assert conn.execute("SELECT count(*) FROM sta_observations WHERE stream_id = %s",
                            (d["ds_house_a"],)).fetchone()[0] == count
    admin = client_for(app, district, "admin")
    made = admin.post(f"{ROOT}/Datastreams({d['ds_house_a']})/Observations", json=obs)
    assert made.status_code == 201, made.text
    assert admin.delete(ROOT + made.headers["location"].split("/sta/v1.1", 1)[1]).status_code == 200
