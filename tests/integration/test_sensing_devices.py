"""The device registry (issue 16): a device and its SensorThings entities and MQTT credential in one
transaction, the building link, updates kept in sync with the Thing, retirement, imports that are
all-or-nothing with every bad row named, status from the data, the CLI."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import geopandas as gpd
import pytest
import shapely

from sensing import devices
from sensing.mqtt import credentials
from spatial_api import db, security
from spatial_api.ingest import ingest_vector

ADMIN = security.Principal("pytest", "admin", "cli")
B_SITE = (114.0600, 22.6500)


@pytest.fixture(scope="module")
def tag():
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def places(database, tmp_path_factory, tag):
    """A buildings layer and an addresses layer of our own (names unique to this module)."""
    tmp = tmp_path_factory.mktemp("sensing_places")
    b_layer, a_layer = f"t_bld_{tag}", f"t_adr_{tag}"
    box = shapely.box(B_SITE[0], B_SITE[1], B_SITE[0] + 0.0004, B_SITE[1] + 0.0002)
    gpd.GeoDataFrame({"building_id": [f"B{tag}"], "floors": [6]}, geometry=[box], crs="EPSG:4490").to_file(
        tmp / "b.geojson", driver="GeoJSON")
    gpd.GeoDataFrame({"addr_id": [f"A{tag}"], "building_id": [f"B{tag}"], "street": ["坂田街道"],
                      "community": ["岗头社区"], "full_address": ["坂田街道岗头社区雅园路 8 号"]},
                     geometry=[shapely.Point(B_SITE[0] + 0.0002, B_SITE[1] - 0.00001)], crs="EPSG:4490").to_file(
        tmp / "a.geojson", driver="GeoJSON")
    ingest_vector(tmp / "b.geojson", layer=b_layer, key="building_id", valid_from="2024-01-01", settings=database)
    ingest_vector(tmp / "a.geojson", layer=a_layer, key="addr_id", valid_from="2024-01-01", settings=database)
    return {"buildings_layer": b_layer, "addresses_layer": a_layer, "building": f"B{tag}", "box": box}


def test_a_device_gets_its_thing_location_datastreams_and_credential(conn, places, tag):
    household = {"resident": {"name": "张秀英", "age": 86, "phone": "138-0000-0101"},
                 "family": [{"name": "王芳", "relation": "女儿", "phone": "138-0000-0102"}], "notes": "独居"}
    added = devices.add(conn, {"device_id": f"WM-{tag}-1", "type": "water-meter", "building_id": places["building"],
                               "household": household, "installed_on": "2026-03-01"},
                        buildings_layer=places["buildings_layer"], addresses_layer=places["addresses_layer"])
    conn.commit()
    # household ⇒ restricted; street, community and address from the building's address; point on the building
    row = devices._row(conn, added.device_id)
    assert row["restricted"] is True and row["household"] == household
    assert (row["street"], row["community"], row["address"]) == ("坂田街道", "岗头社区", "坂田街道岗头社区雅园路 8 号")
    assert places["box"].contains(shapely.Point(row["lon"], row["lat"]))
    assert row["expected_interval"] == timedelta(minutes=30) and row["offline_after"] == 3
    thing = conn.execute("SELECT name, properties FROM sta_things WHERE id = %s", (added.thing_id,)).fetchone()
    assert thing[1] == {"deviceId": added.device_id, "type": "water-meter", "community": "岗头社区",
                        "street": "坂田街道", "restricted": True, "buildingId": places["building"]}
    loc = conn.execute("SELECT l.location, ST_X(l.geom), ST_Y(l.geom) FROM sta_thing_locations tl "
                       "JOIN sta_locations l ON l.id = tl.location_id WHERE tl.thing_id = %s", (added.thing_id,)).fetchall()
    assert len(loc) == 1 and loc[0][0]["type"] == "Point" and (loc[0][1], loc[0][2]) == (row["lon"], row["lat"])
    assert conn.execute("SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s",
                        (added.thing_id,)).fetchone()[0] == 1
    ds = conn.execute(
        "SELECT ds.id, op.name, ds.unit_of_measurement ->> 'symbol', ds.observation_type, s.name "
        "FROM sta_datastreams ds JOIN sta_observed_properties op ON op.id = ds.observed_property_id "
        "JOIN sta_sensors s ON s.id = ds.sensor_id WHERE ds.thing_id = %s ORDER BY ds.id", (added.thing_id,)).fetchall()
    assert [(r[1], r[2], r[3].rsplit("/", 1)[1], r[4]) for r in ds] == [
        ("用水量", "m³", "OM_Measurement", "智能水表"), ("电池电量", "%", "OM_Measurement", "智能水表")]
    assert added.datastreams == {"volume": ds[0][0], "battery": ds[1][0]}
    # the MQTT credential: the device may publish to its own Datastreams only; the password is shown once
    cred = conn.execute("SELECT password_hash, role, read_topics, write_topics, revoked_at FROM mqtt_credentials "
                        "WHERE username = %s", (added.device_id,)).fetchone()
    assert cred[1:] == ("device", [], [f"v1.1/Datastreams({i})/Observations" for i in added.datastreams.values()], None)
    assert credentials.verify_password(added.mqtt_password, cred[0]) and row["mqtt_username"] == added.device_id

    # a second device shares the Sensor and the ObservedProperties (reused by name), not the Datastreams
    cover = devices.add(conn, {"device_id": f"MC-{tag}-1", "type": "manhole-cover", "lon": 114.07, "lat": 22.66,
                               "community": "岗头社区"})
    conn.commit()
    ops = conn.execute("SELECT op.name, count(DISTINCT op.id), count(*) FROM sta_datastreams ds JOIN "
                       "sta_observed_properties op ON op.id = ds.observed_property_id WHERE ds.thing_id = ANY(%s) "
                       "GROUP BY op.name ORDER BY op.name", ([added.thing_id, cover.thing_id],)).fetchall()
    assert ("电池电量", 1, 2) in ops and {o[0] for o in ops} == {"用水量", "电池电量", "倾角", "井盖开启", "井内水位"}
    kinds = dict(conn.execute("SELECT op.name, ds.observation_type FROM sta_datastreams ds JOIN sta_observed_properties "
                              "op ON op.id = ds.observed_property_id WHERE ds.thing_id = %s", (cover.thing_id,)).fetchall())
    assert kinds["井盖开启"].endswith("OM_TruthObservation")
    assert devices._row(conn, cover.device_id)["restricted"] is False

    # a duplicate id, an unknown building, a household that is not restricted: refused, nothing written
    things = conn.execute("SELECT count(*) FROM sta_things").fetchone()[0]
    for spec, words in (({"device_id": f"WM-{tag}-1", "type": "water-meter"}, "already registered"),
                        ({"device_id": f"WM-{tag}-x", "type": "water-meter", "building_id": "NOPE"}, "building_id"),
                        ({"device_id": f"WM-{tag}-y", "type": "water-meter", "restricted": False,
                          "household": household, "community": "岗头社区"}, "must be restricted"),
                        ({"device_id": f"WM-{tag}-z", "type": "water-meter", "household": household}, "community"),
                        ({"device_id": f"WM-{tag}-w", "type": "gas-meter"}, "choose one of"),
                        ({"device_id": "bad id!", "type": "water-meter"}, "device_id")):
        with pytest.raises(devices.DeviceError, match=words):
            devices.add(conn, spec, buildings_layer=places["buildings_layer"])
        conn.rollback()
    assert conn.execute("SELECT count(*) FROM sta_things").fetchone()[0] == things

    # an update keeps the Thing's properties and Location in sync
    devices.update(conn, cover.device_id, {"community": "马安堂社区", "lon": 114.08, "lat": 22.67, "name": "井盖 1"})
    conn.commit()
    props, name = conn.execute("SELECT properties, name FROM sta_things WHERE id = %s", (cover.thing_id,)).fetchone()
    assert props["community"] == "马安堂社区" and name == "井盖 1"
    assert conn.execute("SELECT ST_X(l.geom) FROM sta_thing_locations tl JOIN sta_locations l ON l.id = tl.location_id "
                        "WHERE tl.thing_id = %s", (cover.thing_id,)).fetchone()[0] == 114.08
    assert conn.execute("SELECT count(*) FROM sta_historical_locations WHERE thing_id = %s",
                        (cover.thing_id,)).fetchone()[0] == 2
    with pytest.raises(devices.DeviceError, match="must stay restricted"):
        devices.update(conn, added.device_id, {"restricted": False})
    conn.rollback()

    # retiring: out of the listings, the credential revoked, the Thing and its data kept
    devices.retire(conn, cover.device_id)
    conn.commit()
    rows, _ = devices.listing(conn, ADMIN, community="马安堂社区")
    assert cover.device_id not in {r["device_id"] for r in rows}
    assert conn.execute("SELECT revoked_at IS NOT NULL FROM mqtt_credentials WHERE username = %s",
                        (cover.device_id,)).fetchone()[0]
    assert conn.execute("SELECT properties ->> 'retired' FROM sta_things WHERE id = %s",
                        (cover.thing_id,)).fetchone()[0] == "true"
    with pytest.raises(devices.DeviceError, match="already retired"):
        devices.retire(conn, cover.device_id)
    conn.rollback()


def _count(conn, tag):
    return conn.execute("SELECT count(*) FROM sensing_devices WHERE device_id LIKE %s", (f"%-{tag}-imp%",)).fetchone()[0]


def test_import_is_all_or_nothing_and_names_every_bad_row(conn, tmp_path, tag):
    good = f"WM-{tag}-imp1,water-meter,一号表,岗头社区,坂田街道,,,114.05,22.64,2026-01-05,true," \
           '"{""resident"": {""name"": ""李桂兰"", ""age"": 91}}"'
    lines = ["device_id,type,name,community,street,building_id,address,lon,lat,installed_on,restricted,household",
             good,
             f"MC-{tag}-imp2,manhole-cover,,岗头社区,坂田街道,,,114.051,22.641,,,",
             f"XX-{tag}-imp3,gas-meter,,岗头社区,,,,114.05,22.64,,,",
             f"MC-{tag}-imp4,manhole-cover,,,,,,114.05,,,,",
             f"WM-{tag}-imp1,water-meter,,岗头社区,,,,114.05,22.64,,,",
             f"WM-{tag}-imp6,water-meter,,岗头社区,,,,114.05,22.64,2026-02-30,,",
             f"WM-{tag}-imp7,water-meter,,岗头社区,,,,114.05,22.64,,true,{{oops"]
    path = tmp_path / "devices.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    creds = conn.execute("SELECT count(*) FROM mqtt_credentials").fetchone()[0]
    with pytest.raises(devices.ImportFailed) as err:
        devices.import_file(conn, path)
    conn.rollback()
    problems = err.value.problems
    assert [p.split(":")[0] for p in problems] == [f"row 3 (XX-{tag}-imp3)", f"row 4 (MC-{tag}-imp4)",
                                                   f"row 5 (WM-{tag}-imp1)", f"row 6 (WM-{tag}-imp6)",
                                                   f"row 7 (WM-{tag}-imp7)"]
    assert "type" in problems[0] and "lon/lat" in problems[1] and "repeats row 1" in problems[2]
    assert "installed_on" in problems[3] and "household" in problems[4]
    assert "5 bad rows, nothing imported" in str(err.value)
    assert _count(conn, tag) == 0 and conn.execute("SELECT count(*) FROM mqtt_credentials").fetchone()[0] == creds

    # fixed: every row in, one credential each
    path.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    added = devices.import_file(conn, path)
    conn.commit()
    assert [a.device_id for a in added] == [f"WM-{tag}-imp1", f"MC-{tag}-imp2"] and all(a.mqtt_password for a in added)
    assert _count(conn, tag) == 2
    assert devices._row(conn, f"WM-{tag}-imp1")["household"] == {"resident": {"name": "李桂兰", "age": 91}}

    # GeoJSON: the point from the geometry; a bad feature named
    gj = tmp_path / "devices.geojson"
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [114.06, 22.65]},
              "properties": {"device_id": f"TC-{tag}-imp8", "type": "traffic-counter", "expected_interval": "5 min"}},
             {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
              "properties": {"device_id": f"TC-{tag}-imp9", "type": "traffic-counter"}}]
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")
    with pytest.raises(devices.ImportFailed) as err:
        devices.import_file(conn, gj, issue_credential=False)
    conn.rollback()
    assert err.value.problems[0].startswith(f"feature 2 (TC-{tag}-imp9): geometry")
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": feats[:1]}), encoding="utf-8")
    devices.import_file(conn, gj, issue_credential=False)
    conn.commit()
    row = devices._row(conn, f"TC-{tag}-imp8")
    assert (row["lon"], row["lat"], row["expected_interval"], row["mqtt_username"]) == (
        114.06, 22.65, timedelta(minutes=5), None)


def _observe(conn, stream_id: int, times_values):
    times = [t for t, _ in times_values]
    conn.execute("SELECT sta_ensure_partitions(%s, %s)", (min(times), max(times)))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                        "VALUES (%s, %s, %s)", [(stream_id, t, v) for t, v in times_values])


def test_status_comes_from_the_data(conn, tag):
    community = f"状态社区{tag}"
    a = devices.add(conn, {"device_id": f"WM-{tag}-st1", "type": "water-meter", "lon": 114.1, "lat": 22.7,
                           "community": community}, issue_credential=False)
    b = devices.add(conn, {"device_id": f"WM-{tag}-st2", "type": "water-meter", "lon": 114.1, "lat": 22.7,
                           "community": community, "expected_interval": 60, "offline_after": 2},
                    issue_credential=False)
    conn.commit()

    def status(device_id):
        return conn.execute("SELECT status, last_seen, battery FROM sensing_device_status WHERE device_id = %s",
                            (device_id,)).fetchone()

    assert status(a.device_id) == ("unknown", None, None)
    now = datetime.now(timezone.utc)
    # a: volume 10 min ago, battery 3 h ago (the latest battery level, not the latest reading)
    _observe(conn, a.datastreams["volume"], [(now - timedelta(hours=5), 0.01), (now - timedelta(minutes=10), 0.02)])
    _observe(conn, a.datastreams["battery"], [(now - timedelta(hours=4), 81.0), (now - timedelta(hours=3), 80.0)])
    # b: last seen 100 min ago: 60 min × 2 = 120 min → still online; then its interval shrinks → offline
    _observe(conn, b.datastreams["volume"], [(now - timedelta(minutes=100), 0.0)])
    conn.commit()
    st = status(a.device_id)
    assert st[0] == "online" and abs((st[1] - (now - timedelta(minutes=10))).total_seconds()) < 1e-3 and st[2] == 80.0
    assert status(b.device_id)[0] == "online"
    devices.update(conn, b.device_id, {"expected_interval": "30 minutes"})
    conn.commit()
    assert status(b.device_id)[0] == "offline"
    rows, total = devices.listing(conn, ADMIN, community=community, status="offline")
    assert total == 1 and rows[0]["device_id"] == b.device_id
    counts = devices.status_counts(conn, security.Principal("x", "admin", "cli"))
    wm = next(t for t in counts["types"] if t["type"] == "water-meter")
    assert wm["type_label"] == "智能水表" and wm["online"] >= 1 and wm["offline"] >= 1
    assert wm["total"] == wm["online"] + wm["offline"] + wm["unknown"]
    # the view reads the maintained stats: its plan never touches the observations
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT * FROM sensing_device_status WHERE device_id = %s", (a.device_id,)).fetchall())
    assert "sta_observations" not in plan and "sta_stream_stats" in plan


def test_the_cli_adds_lists_and_imports(database, tmp_path, tag):
    from typer.testing import CliRunner

    from sensing.cli import app

    assert db.schema_name() == database.db_schema  # the commands use the test schema

    def cli(*args):
        return CliRunner().invoke(app, ["devices", *args])

    community = f"命令社区{tag}"
    made = cli("add", f"HP-{tag}-cli1", "--type", "hydrant-pressure", "--lon", "114.2", "--lat", "22.7",
               "--community", community, "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)[0]
    assert info["device_id"] == f"HP-{tag}-cli1" and info["mqtt_password"] and list(info["datastreams"]) == ["pressure"]
    bad = cli("add", f"HP-{tag}-cli2", "--type", "hydrant", "--json")
    assert bad.exit_code == 1 and "type" in bad.output and "hydrant-pressure" in bad.output
    csv_path = tmp_path / "more.csv"
    csv_path.write_text(f"device_id,type,community,lon,lat\nTC-{tag}-cli3,traffic-counter,{community},114.2,22.7\n"
                        f"TC-{tag}-cli4,traffic-counter,{community},114.2,\n", encoding="utf-8")
    failed = cli("import", str(csv_path))
    assert failed.exit_code == 1 and f"row 2 (TC-{tag}-cli4)" in failed.output and "nothing imported" in failed.output
    csv_path.write_text(f"device_id,type,community,lon,lat\nTC-{tag}-cli3,traffic-counter,{community},114.2,22.7\n",
                        encoding="utf-8")
    assert cli("import", str(csv_path), "--no-credential").exit_code == 0
    listed = json.loads(cli("list", "--community", community, "--json").stdout)
    assert listed["total"] == 2
    assert {(d["device_id"], d["type_label"], d["status"]) for d in listed["devices"]} == {
        (f"HP-{tag}-cli1", "消火栓压力", "unknown"), (f"TC-{tag}-cli3", "交通流量", "unknown")}
    with db.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'sensing-device-%%' "
                            "AND (target LIKE %s OR detail::text LIKE %s)", (f"%{tag}%", f"%{tag}%")).fetchone()[0] == 2
