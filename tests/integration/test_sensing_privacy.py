"""Privacy of the pilot's households (issue 16): a community worker sees only its own community's
households — in lists, device pages, series, tiles, buildings and status counts — a worker of
another community sees none of them, other roles see no household at all, anonymous callers see
nothing; every read of a household's data is audited; community-worker keys and tokens carry
their community."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import datetime, timedelta, timezone

import geopandas as gpd
import jwt
import mapbox_vector_tile
import pytest
import shapely
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from sensing import devices
from spatial_api import db
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from spatial_api.security import keys

SITE = (114.1000, 22.6000)


def _tile(lon, lat, z):
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, x, y


@pytest.fixture(scope="module")
def world(database, tmp_path_factory):
    tag = uuid.uuid4().hex[:6]
    a, b = f"甲社区{tag}", f"乙社区{tag}"
    tmp = tmp_path_factory.mktemp("privacy")
    layer = f"t_pbld_{tag}"
    boxes = [shapely.box(SITE[0] + i * 0.001, SITE[1], SITE[0] + i * 0.001 + 0.0003, SITE[1] + 0.0003) for i in range(2)]
    gpd.GeoDataFrame({"building_id": [f"PA{tag}", f"PB{tag}"]}, geometry=boxes, crs="EPSG:4490").to_file(
        tmp / "b.geojson", driver="GeoJSON")
    ingest_vector(tmp / "b.geojson", layer=layer, key="building_id", valid_from="2024-01-01", settings=database)
    hh = {"resident": {"name": "陈淑珍", "age": 88, "phone": "138-0000-0201"}, "notes": "独居老人"}
    now = datetime.now(timezone.utc)
    with db.connect(database) as conn:
        made = {}
        for did, spec in {
            f"WM-{tag}-A1": {"type": "water-meter", "building_id": f"PA{tag}", "community": a, "household": hh},
            f"WM-{tag}-A2": {"type": "water-meter", "building_id": f"PA{tag}", "community": a, "household": hh},
            f"WM-{tag}-B1": {"type": "water-meter", "building_id": f"PB{tag}", "community": b, "household": hh},
            f"MC-{tag}-A3": {"type": "manhole-cover", "lon": SITE[0] + 0.0005, "lat": SITE[1] + 0.0001, "community": a},
        }.items():
            made[did] = devices.add(conn, {"device_id": did, **spec}, issue_credential=False, buildings_layer=layer)
        vol = made[f"WM-{tag}-A1"].datastreams["volume"]
        pts = [(now - timedelta(minutes=30 * i), 0.01 * (i % 4)) for i in range(1, 13)]
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (pts[-1][0], pts[0][0]))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                            "VALUES (%s, %s, %s)", [(vol, t, v) for t, v in pts])
        conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) VALUES (%s, %s, 0.5)",
                     (made[f"WM-{tag}-B1"].datastreams["volume"], now - timedelta(minutes=5)))
        k = {"A": keys.create(conn, f"worker-a-{tag}", "community-worker", created_by="pytest", community=a),
             "B": keys.create(conn, f"worker-b-{tag}", "community-worker", created_by="pytest", community=b)}
        conn.commit()
    app = create_app(database)
    clients = {name: TestClient(app, headers={"Authorization": f"Bearer {key}"}) for name, key in k.items()}
    return {"tag": tag, "a": a, "b": b, "made": made, "app": app, "clients": clients, "layer": layer,
            "A1": f"WM-{tag}-A1", "A2": f"WM-{tag}-A2", "B1": f"WM-{tag}-B1", "A3": f"MC-{tag}-A3",
            "volume": vol, "names": {n: f"worker-{n.lower()}-{tag}" for n in k}}


def client(world, auth, role):
    if role in world["clients"]:
        return world["clients"][role]
    if role == "anonymous":
        return TestClient(world["app"])
    return TestClient(world["app"], headers=auth(role))


def ids(resp):
    assert resp.status_code == 200, resp.text
    return {f["id"] for f in resp.json()["features"]}


@pytest.mark.parametrize("who,sees", [
    ("A", {"A1", "A2", "A3"}), ("B", {"B1", "A3"}), ("admin", {"A1", "A2", "B1", "A3"}),
    ("gis-staff", {"A3"}), ("planner", {"A3"}), ("anonymous", set()), ("public", set())])
def test_each_caller_sees_exactly_its_devices(world, auth, who, sees):
    c = client(world, auth, who)
    expected = {world[s] for s in sees}
    listed = c.get("/sensing/devices", params={"bbox": f"{SITE[0] - 0.01},{SITE[1] - 0.01},{SITE[0] + 0.01},{SITE[1] + 0.01}"})
    assert ids(listed) & {world[s] for s in ("A1", "A2", "B1", "A3")} == expected
    if who != "anonymous":
        assert "private" in listed.headers["cache-control"]
    for community in (world["a"], world["b"]):  # asking for another community's rows gives none of them
        got = ids(c.get("/sensing/devices", params={"community": community}))
        assert got == {d for d in expected if devices_community(world, d) == community}
    for key in ("A1", "A2", "B1", "A3"):
        r = c.get(f"/sensing/devices/{world[key]}")
        s = c.get(f"/sensing/devices/{world[key]}/series")
        if world[key] in expected:
            assert r.status_code == 200 and s.status_code == 200, (r.text, s.text)
            props = r.json()["properties"]
            assert ("household" in props) == key.startswith(("A1", "A2", "B1"))
        else:
            assert r.status_code == 404 and s.status_code == 404, (r.text, s.text)
            assert world[key] in r.json()["description"]
    z, x, y = _tile(SITE[0] + 0.0005, SITE[1] + 0.0001, 15)
    t = c.get(f"/sensing/tiles/{z}/{x}/{y}.mvt")
    in_tile = set()
    if t.status_code == 200:
        in_tile = {f["properties"]["device_id"] for f in mapbox_vector_tile.decode(t.content)["devices"]["features"]}
    else:
        assert t.status_code == 204
    assert in_tile & {world[s] for s in ("A1", "A2", "B1", "A3")} == expected
    b = c.get("/sensing/buildings")
    assert b.status_code == 200
    mine = {r["building_id"]: r for r in b.json() if world["tag"] in r["building_id"]}
    households = {k for k in sees if k != "A3"}
    assert set(mine) == ({f"PA{world['tag']}"} if households & {"A1", "A2"} else set()) | (
        {f"PB{world['tag']}"} if "B1" in households else set())
    if mine.get(f"PA{world['tag']}"):
        assert mine[f"PA{world['tag']}"]["devices"] == 2 and mine[f"PA{world['tag']}"]["types"] == ["water-meter"]


def devices_community(world, device_id):
    return world["a"] if device_id in (world["A1"], world["A2"], world["A3"]) else world["b"]


def test_a_household_page_and_series_for_its_community_worker(world):
    a = world["clients"]["A"]
    page = a.get(f"/sensing/devices/{world['A1']}").json()
    p = page["properties"]
    assert p["household"]["resident"]["name"] == "陈淑珍" and p["type_label"] == "智能水表"
    assert p["community"] == world["a"] and p["status"] == "online" and p["expected_interval"] == 1800
    latest = {x["observed_property"]: x for x in page["latest"]}
    assert latest["用水量"]["unit"] == "m³" and latest["用水量"]["datastream_id"] == world["volume"]
    assert latest["电池电量"]["value"] is None  # nothing reported yet
    raw = a.get(f"/sensing/devices/{world['A1']}/series", params={"datastream": world["volume"]}).json()
    assert raw["unit"] == "m³" and raw["period"] == "raw" and len(raw["points"]) == 12
    assert [pt["t"] for pt in raw["points"]] == sorted(pt["t"] for pt in raw["points"])
    hourly = a.get(f"/sensing/devices/{world['A1']}/series", params={"period": "hour"}).json()
    assert sum(pt["n"] for pt in hourly["points"]) == 12
    assert math.isclose(sum(pt["sum"] for pt in hourly["points"]), sum(pt["value"] for pt in raw["points"]))
    bad = a.get(f"/sensing/devices/{world['A1']}/series", params={"datastream": 999999999})
    assert bad.status_code == 400 and "datastream" in bad.json()["description"]
    assert a.get(f"/sensing/devices/{world['A1']}/series", params={"period": "week"}).status_code == 400
    assert a.get(f"/sensing/devices/{world['A1']}/series", params={"start": "yesterday"}).status_code == 400
    for params, name in (({"status": "sleeping"}, "status"), ({"type": "gas-meter"}, "type"),
                         ({"bbox": "114,22,113"}, "bbox"), ({"limit": 0}, "limit")):
        r = a.get("/sensing/devices", params=params)
        assert r.status_code == 400 and name in r.json()["description"], r.text


def test_every_read_of_a_household_is_audited(world, database):
    a = world["clients"]["A"]
    marker = uuid.uuid4().hex[:8]
    assert a.get("/sensing/devices", params={"community": world["a"], "m": marker}).status_code == 200
    assert a.get(f"/sensing/devices/{world['A2']}", params={"m": marker}).status_code == 200
    assert a.get(f"/sensing/devices/{world['A3']}", params={"m": marker}).status_code == 200  # not a household
    deadline = time.monotonic() + 10  # restricted reads are written in batches every 0.5 s
    rows = []
    while time.monotonic() < deadline:
        with db.connect(database) as conn:
            rows = conn.execute("SELECT principal, target, detail FROM audit_log WHERE action = 'read-restricted' "
                                "AND detail::text LIKE %s ORDER BY id", (f"%{marker}%",)).fetchall()
        if len(rows) >= 2:
            break
        time.sleep(0.2)
    assert [(r[0], r[1]) for r in rows] == [(world["names"]["A"], "/sensing/devices"),
                                           (world["names"]["A"], f"/sensing/devices/{world['A2']}")]
    assert rows[0][2]["restricted"] == [f"sensing/devices/{world['A1']}", f"sensing/devices/{world['A2']}"]
    assert rows[1][2]["restricted"] == [f"sensing/devices/{world['A2']}"]


def test_writes_and_absences_need_their_roles(world, auth, database):
    tag = world["tag"]
    body = {"device_id": f"HP-{tag}-W1", "type": "hydrant-pressure", "lon": SITE[0], "lat": SITE[1], "community": world["a"]}
    assert TestClient(world["app"]).post("/sensing/devices", json=body).status_code == 401
    assert world["clients"]["A"].post("/sensing/devices", json=body).status_code == 403
    staff = client(world, auth, "gis-staff")
    r = staff.post("/sensing/devices", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["mqtt"]["password"] and r.json()["properties"]["type_label"] == "消火栓压力"
    bad = staff.post("/sensing/devices", json={**body, "device_id": f"HP-{tag}-W2", "lon": 500})
    assert bad.status_code == 400 and "lon/lat" in bad.json()["description"]
    assert staff.patch(f"/sensing/devices/{body['device_id']}", json={"name": "消火栓 1"}).json()[
        "properties"]["name"] == "消火栓 1"
    # gis-staff manages devices but never sees a household: a household device does not exist for them
    assert staff.patch(f"/sensing/devices/{world['A1']}", json={"name": "x"}).status_code == 404
    assert staff.delete(f"/sensing/devices/{body['device_id']}").status_code == 200
    # retired: out of the listings; its page (and readings) stay, saying when it was retired
    assert body["device_id"] not in ids(staff.get("/sensing/devices", params={"community": world["a"]}))
    assert staff.get(f"/sensing/devices/{body['device_id']}").json()["properties"]["retired_at"]
    assert staff.delete(f"/sensing/devices/{body['device_id']}").status_code == 400

    absence = {"start": "2026-12-01T08:00", "end": "2026-12-04T08:00", "reason": "去女儿家住三天", "announced_by": "女儿"}
    assert world["clients"]["B"].post(f"/sensing/devices/{world['A1']}/absences", json=absence).status_code == 404
    assert staff.post(f"/sensing/devices/{world['A1']}/absences", json=absence).status_code == 403
    assert world["clients"]["A"].post(f"/sensing/devices/{world['A1']}/absences",
                                      json={**absence, "end": "2026-11-30"}).status_code == 400
    r = world["clients"]["A"].post(f"/sensing/devices/{world['A1']}/absences", json=absence)
    assert r.status_code == 201, r.text
    with db.connect(database) as conn:
        row = conn.execute("SELECT start_at, end_at, reason, announced_by FROM sensing_absences WHERE device_id = %s",
                           (world["A1"],)).fetchone()
    assert row[0] == datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc) and row[2:] == ("去女儿家住三天", "女儿")


def test_status_counts_follow_the_caller(world, auth):
    def wm(c):
        r = c.get("/sensing/status")
        assert r.status_code == 200
        return next((t for t in r.json()["types"] if t["type"] == "water-meter"), {"total": 0})

    # other tests' meters may be in the schema: compare with what a role without households sees
    others = wm(client(world, auth, "planner"))["total"]
    assert wm(world["clients"]["A"])["total"] == others + 2 and wm(world["clients"]["B"])["total"] == others + 1
    assert wm(client(world, auth, "admin"))["total"] >= others + 3
    assert wm(client(world, auth, "anonymous"))["total"] == 0


def test_community_worker_keys_and_tokens_carry_their_community(database, tmp_path):
    from typer.testing import CliRunner

    from spatial_api.security.cli import keys_app

    def cli(*args):
        return CliRunner().invoke(keys_app, list(args))

    refused = cli("create", "worker-x", "--role", "community-worker")
    assert refused.exit_code == 1 and "--community" in refused.output
    made = cli("create", "worker-y", "--role", "community-worker", "--community", "坂田社区", "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["community"] == "坂田社区"
    listed = {k["key_id"]: k for k in json.loads(cli("list", "--json").stdout)}
    assert listed[info["key_id"]]["community"] == "坂田社区"
    app = create_app(database)
    me = TestClient(app, headers={"X-API-Key": info["key"]}).get("/whoami").json()
    assert (me["role"], me["community"]) == ("community-worker", "坂田社区") and "sensing:households" in me["may"]
    with db.connect(database) as conn, pytest.raises(Exception, match="api_keys_community_check"):
        conn.execute("INSERT INTO api_keys (key_id, secret_sha256, name, role, created_by) "
                     "VALUES ('0123456789', 'x', 'n', 'community-worker', 'pytest')")

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]}))
    oidc = create_app(database.replace(oidc_jwks=str(jwks)))

    def token(**claims):
        return jwt.encode({"sub": "u-9", "exp": int(time.time()) + 600, "geotwin_roles": "community-worker", **claims},
                          private, algorithm="RS256", headers={"kid": "idp-1"})

    me = TestClient(oidc, headers={"Authorization": f"Bearer {token(geotwin_community='布吉社区')}"}).get("/whoami")
    assert me.status_code == 200 and me.json()["community"] == "布吉社区"
    r = TestClient(oidc, headers={"Authorization": f"Bearer {token()}"}).get("/whoami")
    assert r.status_code == 401 and "geotwin_community" in r.json()["description"]
