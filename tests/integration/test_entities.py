"""Geographic entities on a real PostGIS: a building's footprint, LOD1 prism (a real cim build),
BIM model (the duplex sample placed over it), addresses and a sensing device, all reachable from
its entity code in one request, as of two dates; split and merge with history and lineage;
geometric matching (matched / new / ambiguous), key matching through a ref layer, idempotent
re-assignment, errors naming the parameter, and access control on a restricted layer."""

from __future__ import annotations

import json
import uuid

import geopandas as gpd
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Transformer

from spatial_api import db, entities
from spatial_api.entities import EntityError
from spatial_api.ingest import IngestError, ingest_vector
from tests.integration.test_cim_build import plane, write_dem
from tests.unit.test_cim_ifc import SAMPLES

X0, Y0 = 525500.0, 2513500.0
TO_LONLAT = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _gpkg(path, rows, crs="EPSG:4547"):
    gpd.GeoDataFrame(rows, crs=crs).to_file(path, driver="GPKG")
    return path


def _box(dx, dy, w=20.0, h=12.0):
    return shapely.box(X0 + dx, Y0 + dy, X0 + dx + w, Y0 + dy + h)


@pytest.fixture(scope="module")
def app(database):
    from spatial_api.app import create_app

    return create_app(database)


@pytest.fixture(scope="module")
def district(database, tmp_path_factory, auth):
    """Six buildings (valid 2024-01-01; B2 taller from 2025-01-01), with entities assigned by the
    load itself; addresses (an internal layer) as representations of their buildings through the
    ref layer; a water meter on B2 installed 2024-03-01; a tileset built as of 2024-06-01; the
    duplex registered over B2."""
    from cim_builder.build import build
    from cim_builder.ifc import register
    from sensing import devices

    s, tmp, tag = database, tmp_path_factory.mktemp("entities"), _tag()
    blayer, alayer = f"t_bld_{tag}", f"t_addr_{tag}"

    def buildings(v):
        rows = []
        for i in range(6):
            g = _box(60 * i, 0) if i != 2 else _box(120, 0, 14, 12)
            rows.append({"building_id": f"B{i}", "name": f"{i}号楼", "height_m": 30.0 if (v == 2 and i == 2) else 9.0 + i,
                         "floors": 3, "geometry": g})
        return rows

    r1 = ingest_vector(_gpkg(tmp / "b1.gpkg", buildings(1)), layer=blayer, key="building_id", valid_from="2024-01-01",
                       settings=s, entity_type="building")
    assert r1.entities["counts"]["new"] == 6
    addrs = [{"addr_id": f"A{i}{k}", "building_id": f"B{i}", "full_address": f"龙岗区测试路{i}号{k}栋",
              "geometry": shapely.Point(X0 + 60 * i + 2 + k, Y0 + 2)} for i in range(6) for k in range(2)]
    addrs.append({"addr_id": "A-orphan", "building_id": "B99", "full_address": "无此楼", "geometry": shapely.Point(X0, Y0 - 50)})
    r2 = ingest_vector(_gpkg(tmp / "a.gpkg", addrs), layer=alayer, key="addr_id", valid_from="2024-02-01", settings=s,
                       access_level="internal", entity_type="building", entity_key="building_id", entity_ref=blayer)
    ingest_vector(_gpkg(tmp / "b2.gpkg", buildings(2)), layer=blayer, valid_from="2025-01-01", settings=s)
    with db.transaction(s) as conn:
        devices.add(conn, {"device_id": f"WM-{tag}", "type": "water-meter", "building_id": "B2",
                           "installed_on": "2024-03-01"}, issue_credential=False, buildings_layer=blayer,
                    addresses_layer=alayer)
    dem = write_dem(tmp / "dem.tif")
    build(s, tileset_id=f"ent-{tag}", layer=blayer, dem=dem, out=tmp / "tiles", as_of="2024-06-01", max_per_tile=4)
    c = shapely.centroid(_box(120, 0, 14, 12))
    lon, lat = TO_LONLAT.transform(c.x, c.y)
    register(s, SAMPLES / "duplex.ifc", model_id=f"duplex-{tag}", at=(lon, lat, float(plane(c.x, c.y))),
             store_dir=tmp / "models", layer=blayer)
    with db.connect(s) as conn:
        codes = {fid: entities.entity_for_feature(conn, blayer, fid) for fid in ("B0", "B1", "B2", "B3", "B4", "B5")}
    return {"blayer": blayer, "alayer": alayer, "codes": codes, "tag": tag, "addr_report": r2.entities, "tmp": tmp}


def test_load_assigns_by_ref_layer_and_names_what_it_could_not(district):
    rep = district["addr_report"]
    assert rep["counts"]["matched"] == 12 and rep["counts"]["new"] == 0
    assert rep["unresolved"] == [{"fid": "A-orphan", "key": "B99",
                                  "reason": f"no feature 'B99' with an entity in layer {district['blayer']!r}"}]
    codes = district["codes"]
    assert len(set(codes.values())) == 6 and all(entities.CODE_RE.match(c) and c[6:8] == "JZ" for c in codes.values())


def test_one_request_reaches_every_representation_as_of_two_dates(app, district, auth):
    code, tag = district["codes"]["B2"], district["tag"]
    client = TestClient(app, headers=auth("gis-staff"))
    now = client.get(f"/entities/{code}").json()
    kinds = {}
    for rep in now["representations"]:
        kinds.setdefault(rep["kind"], []).append(rep)
    fp = next(r for r in kinds["feature"] if r["layer"] == district["blayer"])
    assert fp["fid"] == "B2" and fp["primary"] and fp["version"]["properties"]["height_m"] == 30.0
    assert [v["validFrom"][:10] for v in fp["versions"]] == ["2023-12-31", "2024-12-31"]  # UTC of local midnight
    addrs = sorted(r["fid"] for r in kinds["feature"] if r["layer"] == district["alayer"])
    assert addrs == ["A20", "A21"]
    prism = kinds["lod1_prism"][0]
    assert prism["tileset"] == f"ent-{tag}" and prism["featureKey"] == {"building_id": "B2"}
    assert prism["height_m"] == pytest.approx(11.0)  # the tileset is as of 2024-06-01: version 1
    assert client.get(prism["content"]).status_code == 200
    bim = kinds["bim_model"][0]
    assert bim["model"] == f"duplex-{tag}" and bim["via"] == "footprint" and bim["elements"] > 100
    thing = kinds["sta_thing"][0]
    assert thing["device_id"] == f"WM-{tag}" and thing["selfLink"] == f"/sta/v1.1/Things({thing['@iot.id']})"
    assert client.get(thing["selfLink"]).json()["name"] == f"WM-{tag}"

    then = client.get(f"/entities/{code}", params={"datetime": "2024-06-01"}).json()
    got = {r["kind"] for r in then["representations"]}
    assert got == {"feature", "lod1_prism", "sta_thing"}  # the BIM model was registered later
    fp_then = next(r for r in then["representations"] if r["kind"] == "feature" and r["fid"] == "B2")
    assert fp_then["version"]["properties"]["height_m"] == 11.0
    before = client.get(f"/entities/{code}", params={"datetime": "2023-06-01"}).json()
    assert before["alive"] is False and before["representations"] == []
    page = client.get(f"/entities/{code}", params={"f": "html"})
    assert page.status_code == 200 and "地理实体" in page.text and "LOD1 白模" in page.text and "<script" not in page.text


def test_by_feature_redirects_and_listing_pages(app, district):
    client = TestClient(app, follow_redirects=False)
    r = client.get(f"/entities/by-feature/{district['blayer']}/B3", params={"datetime": "2024-06-01"})
    assert r.status_code == 307 and r.headers["location"].endswith(f"/entities/{district['codes']['B3']}?datetime=2024-06-01")
    assert client.get(f"/entities/by-feature/{district['blayer']}/nope").status_code == 404
    west, south = TO_LONLAT.transform(X0 - 1, Y0 - 1)
    east, north = TO_LONLAT.transform(X0 + 185, Y0 + 13)
    one = client.get("/entities", params={"bbox": f"{west},{south},{east},{north}", "type": "JZ", "limit": 2}).json()
    assert one["numberReturned"] == 2
    nxt = next(ln["href"] for ln in one["links"] if ln["rel"] == "next")
    two = client.get(nxt.replace("http://testserver", "")).json()
    got = [f["id"] for f in one["features"] + two["features"]]
    assert sorted(got) == sorted(district["codes"][b] for b in ("B0", "B1", "B2", "B3")) and len(set(got)) == 4
    assert all(f["geometry"]["type"] == "Polygon" for f in one["features"])


def test_bad_input_names_the_parameter(app, district):
    client = TestClient(app)
    for url, params, word in (("/entities/NOTACODE", {}, "code"), ("/entities", {"type": "castle"}, "type"),
                              ("/entities", {"bbox": "1,2,3"}, "bbox"), ("/entities", {"limit": "0"}, "limit"),
                              (f"/entities/{district['codes']['B0']}", {"datetime": "yesterday"}, "datetime")):
        r = client.get(url, params=params)
        assert r.status_code == 400 and r.json()["description"].startswith(word), (url, r.json())
    assert client.get("/entities/440307JZ9999999999").status_code == 404
    with pytest.raises(EntityError, match="^layer: no layer named 'no_such_layer'"):
        entities.assign("no_such_layer", entity_type="building")
    with pytest.raises(EntityError, match="^entity_type: unknown entity type 'castle'"):
        entities.assign(district["blayer"], entity_type="castle")
    with pytest.raises(EntityError, match="^code: no entity"):
        entities.retire("440307JZ9999999999", valid_from="2025-01-01")
    with pytest.raises(IngestError, match="^--entity-type unknown entity type"):
        ingest_vector(district["tmp"] / "b1.gpkg", layer=district["blayer"], entity_type="castle")


def test_restricted_representations_are_hidden_from_anonymous_callers(app, district, auth):
    code = district["codes"]["B1"]
    anon = TestClient(app).get(f"/entities/{code}").json()
    staff = TestClient(app, headers=auth("gis-staff")).get(f"/entities/{code}").json()
    layers = lambda doc: sorted({r["layer"] for r in doc["representations"] if r["kind"] == "feature"})  # noqa: E731
    assert layers(anon) == [district["blayer"]]
    assert layers(staff) == sorted([district["blayer"], district["alayer"]])
    assert all(h["source"] != district["alayer"] for h in anon["history"])
    r = TestClient(app, follow_redirects=False).get(f"/entities/by-feature/{district['alayer']}/A10")
    assert r.status_code == 404



def test_the_entity_page_asks_again_with_the_browsers_key(app, district, auth):
    """A page /map or /twin opens in a new tab comes without the key (a link carries no header): the
    anonymous page carries the script that asks again with the key kept in localStorage; the page
    served with a key does not (and shows the internal layer's representation)."""
    code = district["codes"]["B1"]
    anon = TestClient(app).get(f"/entities/{code}?f=html")
    staff = TestClient(app, headers=auth("gis-staff")).get(f"/entities/{code}?f=html")
    assert anon.status_code == staff.status_code == 200
    assert "localStorage.getItem('geotwin.apiKey')" in anon.text and district["alayer"] not in anon.text
    assert "localStorage" not in staff.text and f"{district['alayer']} /" in staff.text

def test_reassign_is_idempotent(database, district):
    again = entities.assign(district["blayer"], entity_type="building")
    assert again.counts() == {"matched": 0, "new": 0, "ambiguous": 0, "unresolved": 0, "relinked": 0, "already": 6}
    assert again.changeset_id is None
    by_key = entities.assign(district["alayer"], entity_type="building", key="building_id", ref_layer=district["blayer"],
                             match="key")
    assert by_key.counts()["already"] == 12 and by_key.changeset_id is None


def test_split_and_merge_keep_history_and_lineage(database, tmp_path, app):
    s, tag = database, _tag()
    layer = f"t_sm_{tag}"
    dx = 2000.0  # a block of its own
    v1 = [{"bid": "P", "geometry": _box(dx, 0, 40, 20)}, {"bid": "Q", "geometry": _box(dx + 100, 0, 20, 20)},
          {"bid": "R", "geometry": _box(dx + 120, 0, 20, 20)}]
    ingest_vector(_gpkg(tmp_path / "v1.gpkg", v1), layer=layer, key="bid", valid_from="2024-01-01", settings=s,
                  entity_type="building")
    v2 = [{"bid": "P1", "geometry": _box(dx, 0, 20, 20)}, {"bid": "P2", "geometry": _box(dx + 20, 0, 20, 20)},
          {"bid": "QR", "geometry": _box(dx + 100, 0, 40, 20)}]
    ingest_vector(_gpkg(tmp_path / "v2.gpkg", v2), layer=layer, valid_from="2025-03-01", settings=s)
    with db.connect(s) as conn:
        p, q, r = (entities.entity_for_feature(conn, layer, f, at=entities_at("2024-06-01")) for f in ("P", "Q", "R"))
    out = entities.split(p, into=[(layer, "P1"), (layer, "P2")], valid_from="2025-03-01", author="pytest")
    m = entities.merge([q, r], into=(layer, "QR"), valid_from="2025-03-01", author="pytest")
    client = TestClient(app, follow_redirects=True)
    before = client.get(f"/entities/by-feature/{layer}/P", params={"datetime": "2024-06-01"}).json()
    assert before["code"] == p and before["alive"] and before["lineage"]["children"][0]["relation"] == "split"
    assert sorted(c["code"] for c in before["lineage"]["children"]) == sorted(out["children"])
    after = client.get(f"/entities/by-feature/{layer}/P1", params={"datetime": "2025-06-01"}).json()
    assert after["code"] in out["children"] and after["lineage"]["parents"][0]["code"] == p
    assert client.get(f"/entities/{p}", params={"datetime": "2025-06-01"}).json()["alive"] is False
    merged = client.get(f"/entities/{m['child']}").json()
    assert sorted(x["code"] for x in merged["lineage"]["parents"]) == sorted([q, r])
    assert all(x["relation"] == "merge" for x in merged["lineage"]["parents"])
    listed = {f["id"] for f in client.get("/entities", params={"datetime": "2025-06-01", "limit": 1000}).json()["features"]}
    assert {*out["children"], m["child"]} <= listed and not ({p, q, r} & listed)
    listed_before = {f["id"] for f in client.get("/entities", params={"datetime": "2024-06-01", "limit": 1000}).json()["features"]}
    assert {p, q, r} <= listed_before and not ({*out["children"], m["child"]} & listed_before)
    with pytest.raises(EntityError, match="^code: entity .* was retired"):
        entities.retire(p, valid_from="2026-01-01")
    with pytest.raises(EntityError, match="^into: .* already represents entity"):
        entities.split(out["children"][0], into=[(layer, "P2"), (layer, "QR")], valid_from="2026-01-01")


def entities_at(text: str):
    from spatial_api.api import time as timepolicy

    return timepolicy.to_instant(text, "datetime", day="end")


def test_geometric_matching_reports_matched_new_and_ambiguous(database, tmp_path):
    s, tag = database, _tag()
    old, new = f"t_gm_old_{tag}", f"t_gm_new_{tag}"
    dx = 4000.0
    ingest_vector(_gpkg(tmp_path / "old.gpkg", [
        {"bid": "A", "geometry": _box(dx, 0, 20, 20)},          # re-surveyed, slightly moved: matched
        {"bid": "B", "geometry": _box(dx + 100, 0, 20, 20)},    # two entities with nearly one footprint …
        {"bid": "C", "geometry": _box(dx + 101, 0, 20, 20)},
        {"bid": "D", "geometry": _box(dx + 200, 0, 20, 20)},    # two buildings side by side …
        {"bid": "E", "geometry": _box(dx + 220, 0, 20, 20)},
    ]), layer=old, key="bid", valid_from="2024-01-01", settings=s, entity_type="building")
    ingest_vector(_gpkg(tmp_path / "new.gpkg", [
        {"bid": "a", "geometry": _box(dx + 1, 0, 20, 20)},
        {"bid": "bc", "geometry": _box(dx + 100.5, 0, 20, 20)},  # … a new one on both (IoU 0.95 each): ambiguous
        {"bid": "de", "geometry": _box(dx + 210, 0, 20, 20)},    # … one straddling both (IoU 1/3 each): new
        {"bid": "n", "geometry": _box(dx + 300, 0, 20, 20)},     # nothing there before: new
    ]), layer=new, key="bid", valid_from="2025-01-01", settings=s)
    dry = entities.assign(new, entity_type="building", match="geometry", dry_run=True)
    rep = entities.assign(new, entity_type="building", match="geometry")
    assert dry.counts() == rep.counts() == {"matched": 1, "new": 2, "ambiguous": 1, "unresolved": 0, "relinked": 0,
                                             "already": 0}
    assert dry.changeset_id is None and rep.changeset_id is not None
    with db.connect(s) as conn:
        a_code = entities.entity_for_feature(conn, old, "A")
        assert rep.matched == [{"fid": "a", "code": a_code, "score": pytest.approx(19 / 21, abs=1e-3)}]
        assert entities.entity_for_feature(conn, new, "a") == a_code
        assert entities.entity_for_feature(conn, new, "bc") is None
        assert [n["fid"] for n in rep.new] == ["de", "n"]
        assert entities.entity_for_feature(conn, new, "n") == rep.new[1]["code"]
        b_code, c_code = (entities.entity_for_feature(conn, old, f) for f in ("B", "C"))
    amb = rep.ambiguous[0]
    assert amb["fid"] == "bc" and sorted(c["code"] for c in amb["candidates"]) == sorted([b_code, c_code])
    assert all(c["score"] == pytest.approx(19.5 / 20.5, abs=1e-3) for c in amb["candidates"])
    again = entities.assign(new, entity_type="building", match="geometry")
    assert again.counts()["already"] == 3 and again.counts()["ambiguous"] == 1 and again.changeset_id is None


def test_points_match_within_tolerance_and_a_failed_load_assigns_nothing(database, tmp_path):
    s, tag = database, _tag()
    wells, resurvey = f"t_jg_{tag}", f"t_jg2_{tag}"
    dx = 6000.0
    pts = [{"wid": f"W{i}", "geometry": shapely.Point(X0 + dx + 10 * i, Y0)} for i in range(3)]
    ingest_vector(_gpkg(tmp_path / "w.gpkg", pts), layer=wells, key="wid", valid_from="2024-01-01", settings=s,
                  entity_type="manhole")
    moved = [{"wid": "X0", "geometry": shapely.Point(X0 + dx + 0.5, Y0 + 0.5)},
             {"wid": "X9", "geometry": shapely.Point(X0 + dx + 500, Y0)}]
    rep = ingest_vector(_gpkg(tmp_path / "w2.gpkg", moved), layer=resurvey, key="wid", valid_from="2025-01-01",
                        settings=s, entity_type="JG", entity_match="geometry").entities
    assert rep["counts"]["matched"] == 1 and rep["counts"]["new"] == 1
    assert rep["new"][0]["code"][6:8] == "JG"
    # a load whose entity assignment fails leaves nothing: neither the layer nor entities
    bad = f"t_bad_{tag}"
    with pytest.raises(IngestError, match="^--entity-key layer .* has no field 'nope'"):
        ingest_vector(tmp_path / "w.gpkg", layer=bad, key="wid", settings=s, entity_type="manhole", entity_key="nope")
    with db.connect(s) as conn:
        assert conn.execute("SELECT count(*) FROM layers WHERE name = %s", (bad,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM entity_links WHERE source = %s", (bad,)).fetchone()[0] == 0


def test_cli_assign_show_and_list(database, district):
    from typer.testing import CliRunner

    from spatial_api.entities.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["assign", district["blayer"], "--type", "building", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["counts"]["already"] == 6
    r = runner.invoke(cli, ["show", district["codes"]["B4"], "--as-of", "2024-06-01", "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 0 and doc["code"] == district["codes"]["B4"] and doc["alive"]
    r = runner.invoke(cli, ["assign", "no_such_layer", "--type", "building"])
    assert r.exit_code == 1 and "LAYER no layer named 'no_such_layer'" in r.output
    r = runner.invoke(cli, ["list", "--type", "JZ", "--json", "--limit", "1000"])
    assert r.exit_code == 0 and district["codes"]["B0"] in {x["code"] for x in json.loads(r.output)}
