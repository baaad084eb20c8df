"""OGC API – Features against a real server (uvicorn on a free port), read by real clients:
GDAL's OAPIF driver (ogrinfo) and OWSLib, plus the time-travel resources."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from datetime import timedelta, timezone

import httpx
import pytest
import shapely
from pyproj import Transformer

from spatial_api import store
from spatial_api.app import create_app
from tests.fixtures.server import live_server
from spatial_api.ingest import ingest_vector
from tests.fixtures import files

CST = timezone(timedelta(hours=8))



@pytest.fixture(scope="module")
def layers(database, tmp_path_factory):
    """Two layers: parcels in two versions (2020, 2023) and 20 parcels for spatial tests."""
    tmp = tmp_path_factory.mktemp("ogc")
    suffix = uuid.uuid4().hex[:6]
    versioned, plain = f"t_ogc_v_{suffix}", f"t_ogc_p_{suffix}"
    v = files.keyed_versions(tmp)
    ingest_vector(v.v1, layer=versioned, key="code", valid_from="2020-12-31", title_zh="地块", settings=database)
    ingest_vector(v.v2, layer=versioned, valid_from="2023-12-31", settings=database)
    ingest_vector(files.gpkg(tmp / "p"), layer=plain, key="code", settings=database)
    ingest_vector(files.geojson(tmp / "r"), layer=f"t_ogc_r_{suffix}", key="code", access_level="restricted",
                  settings=database)
    return {"versioned": versioned, "plain": plain, "hidden": f"t_ogc_r_{suffix}", "versions": v}


@pytest.fixture(scope="module")
def server(database, layers):
    with live_server(create_app(database)) as url:
        yield url


def get(url: str, **params) -> httpx.Response:
    return httpx.get(url, params=params, timeout=30)


def sql_count(conn, layer: str, where: str = "TRUE", params=()) -> int:
    return conn.execute(f"SELECT count(*) FROM {store.partition_name(layer)} f WHERE f.valid_to IS NULL AND {where}",
                        params).fetchone()[0]


def test_landing_conformance_collections(server, layers):
    landing = get(server + "/").json()
    rels = {ln["rel"] for ln in landing["links"]}
    assert {"self", "service-desc", "conformance", "data"} <= rels
    assert all(ln.get("type") for ln in landing["links"])
    conf = get(server + "/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in conf
    cols = {c["id"]: c for c in get(server + "/collections").json()["collections"]}
    assert layers["versioned"] in cols and layers["plain"] in cols
    assert layers["hidden"] not in cols  # restricted: as if it did not exist
    assert get(f"{server}/collections/{layers['hidden']}").status_code == 404
    c = cols[layers["versioned"]]
    assert c["title"] == "地块" and c["storageCrs"].endswith("/4490")
    assert "http://www.opengis.net/def/crs/EPSG/0/4547" in c["crs"]
    assert c["extent"]["temporal"]["interval"][0][0].startswith("2020-12-30T16:00")  # 2020-12-31 +08:00
    minx, miny, maxx, maxy = c["extent"]["spatial"]["bbox"][0]
    assert 114.2 < minx < maxx < 114.3 and 22.6 < miny < maxy < 22.8
    api = get(server + "/api")
    assert api.status_code == 200 and "/collections/{collection_id}/items" in api.json()["paths"]
    assert "<table>" in get(server + "/collections", f="html").text


def test_items_paging_and_number_matched(server, layers, conn):
    url = f"{server}/collections/{layers['plain']}/items"
    first = get(url, limit=7).json()
    assert first["numberMatched"] == 20 == sql_count(conn, layers["plain"]) and first["numberReturned"] == 7
    seen = [f["id"] for f in first["features"]]
    nxt = next(ln for ln in first["links"] if ln["rel"] == "next")
    while nxt:
        assert "cursor=" in nxt["href"] and "offset=" not in nxt["href"]  # keyset, not offset
        page = httpx.get(nxt["href"], timeout=30).json()
        seen += [f["id"] for f in page["features"]]
        assert page["numberMatched"] == 20 and "geotwin:numberMatchedIsEstimate" not in page
        nxt = next((ln for ln in page["links"] if ln["rel"] == "next"), None)
        assert any(ln["rel"] == "prev" for ln in page["links"])
    assert len(seen) == len(set(seen)) == 20
    assert seen == sorted(seen)  # by feature id when no sortby is given
    r = get(url, limit=3, properties="code,floors", sortby="-floors")
    feats = r.json()["features"]
    assert r.headers["content-type"].startswith("application/geo+json")
    assert all(set(f["properties"]) == {"code", "floors"} for f in feats)
    assert [f["properties"]["floors"] for f in feats] == sorted((f["properties"]["floors"] for f in feats), reverse=True)


def test_bbox_in_several_crs_agrees_with_sql(server, layers, conn):
    url = f"{server}/collections/{layers['plain']}/items"
    lon0, lat0, lon1, lat1 = 114.2480, 22.7185, 114.2510, 22.7210
    expected = sql_count(conn, layers["plain"], "ST_Intersects(f.geom, ST_MakeEnvelope(%s,%s,%s,%s,4490))",
                         (lon0, lat0, lon1, lat1))
    assert 0 < expected < 20
    crs84 = get(url, bbox=f"{lon0},{lat0},{lon1},{lat1}", limit=100).json()
    latlon = get(url, bbox=f"{lat0},{lon0},{lat1},{lon1}", limit=100,
                 **{"bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4490"}).json()
    assert crs84["numberMatched"] == latlon["numberMatched"] == expected
    assert {f["id"] for f in crs84["features"]} == {f["id"] for f in latlon["features"]}
    t = Transformer.from_crs(4490, 3857, always_xy=True)
    x0, y0 = t.transform(lon0, lat0)
    x1, y1 = t.transform(lon1, lat1)
    merc = get(url, bbox=f"{x0},{y0},{x1},{y1}", limit=100, **{"bbox-crs": "EPSG:3857"}).json()
    assert merc["numberMatched"] == expected


def test_output_crs_axis_order_and_content_crs(server, layers, conn):
    url = f"{server}/collections/{layers['plain']}/items"
    stored = shapely.from_wkt(store.features(conn, layers["plain"])[0]["geometry"])
    lon, lat = shapely.get_coordinates(stored)[0]
    r = get(f"{url}/{store.features(conn, layers['plain'])[0]['fid']}", crs="http://www.opengis.net/def/crs/EPSG/0/4547")
    assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/4547>"
    n, e = r.json()["geometry"]["coordinates"][0][0]
    ee, en = Transformer.from_crs(4490, 4547, always_xy=True).transform(lon, lat)
    assert (n, e) == (pytest.approx(en, abs=0.01), pytest.approx(ee, abs=0.01))  # northing first
    r = get(f"{url}/{store.features(conn, layers['plain'])[0]['fid']}", crs="EPSG:4490")
    assert r.json()["geometry"]["coordinates"][0][0] == [pytest.approx(lat, abs=1e-8), pytest.approx(lon, abs=1e-8)]
    assert get(url, crs="EPSG:2000").status_code == 400


def test_time_travel_items_versions_changes(server, layers):
    v = layers["versions"]
    url = f"{server}/collections/{layers['versioned']}"
    old = get(url + "/items", datetime="2021-06-01T00:00:00Z", limit=100).json()
    now = get(url + "/items", limit=100).json()
    assert {f["id"] for f in old["features"]} == {f"P{i:03d}" for i in range(1, 11)}
    assert {f["id"] for f in now["features"]} == {f"P{i:03d}" for i in range(1, 14)} - set(v.closed_keys)
    # a changed feature: two versions, and the instant picks the right one
    changed = v.changed_keys[0]
    versions = get(f"{url}/items/{changed}/versions").json()["features"]
    assert len(versions) == 2 and versions[0]["time"]["interval"][1] == versions[1]["time"]["interval"][0]
    then = get(f"{url}/items/{changed}", datetime="2021-06-01").json()
    assert then["properties"] == versions[0]["properties"]
    assert get(f"{url}/items/{v.closed_keys[0]}").status_code == 404
    assert get(f"{url}/items/{v.closed_keys[0]}", datetime="2021-06-01").status_code == 200
    # an interval: each feature once (its latest version in the interval)
    span = get(url + "/items", datetime="2020-01-01T00:00:00Z/..", limit=100).json()
    assert span["numberMatched"] == 13 and len({f["id"] for f in span["features"]}) == 13
    ch = get(url + "/changes", **{"from": "2021-01-01T00:00:00Z", "to": "2024-06-01T00:00:00Z"}).json()
    assert ch["geotwin:counts"] == {"added": v.added, "changed": v.changed, "removed": v.closed}
    kinds = {f["id"]: f["geotwin:change"] for f in ch["features"]}
    assert {k for k, s in kinds.items() if s == "removed"} == set(v.closed_keys)


def test_errors_are_exception_json(server, layers):
    url = f"{server}/collections/{layers['plain']}/items"
    for params, fragment in (({"bbox": "a,b,c,d"}, "bbox"), ({"bbox": "114,23,113,22"}, "bbox"),
                             ({"bbox": "200,0,201,1"}, "out of range"), ({"limit": 100000}, "limit"),
                             ({"crs": "EPSG:9999"}, "unsupported CRS"), ({"datetime": "yesterday"}, "datetime"),
                             ({"properties": "nope"}, "unknown property"), ({"sortby": "nope"}, "sortby"),
                             ({"cursor": "nope"}, "cursor")):
        r = get(url, **params)
        assert r.status_code == 400, params
        body = r.json()
        assert body["code"] == "InvalidParameterValue" and fragment in body["description"], (params, body)
    r = get(f"{server}/collections/nope/items")
    assert r.status_code == 404 and r.json()["code"] == "NotFound"


def test_owslib_reads_collections_queryables_and_items(server, layers):
    from owslib.ogcapi.features import Features

    w = Features(server)
    ids = [c["id"] for c in w.collections()["collections"]]
    assert layers["plain"] in ids
    q = w.collection_queryables(layers["plain"])
    assert {"code", "dlbm", "floors"} <= set(q["properties"])
    items = w.collection_items(layers["plain"], bbox=[114.2480, 22.7185, 114.2510, 22.7210], limit=100)
    assert 0 < items["numberReturned"] == items["numberMatched"] < 20


def test_gdal_oapif_driver_counts_match_sql(server, layers, conn):
    layer = layers["plain"]
    out = subprocess.run(["ogrinfo", "-ro", "-so", f"OAPIF:{server}", layer], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(re.search(r"Feature Count: (\d+)", out.stdout).group(1)) == sql_count(conn, layer)
    spat = ["-spat", "114.2480", "22.7185", "114.2510", "22.7210"]
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-q", f"OAPIF:{server}", layer, *spat], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = len(re.findall(r"^OGRFeature", out.stdout, flags=re.M))
    assert got == sql_count(conn, layer, "ST_Intersects(f.geom, ST_MakeEnvelope(114.2480,22.7185,114.2510,22.7210,4490))")



def test_cql2_filters_text_json_and_queryable_parameters(server, layers, conn):
    url = f"{server}/collections/{layers['plain']}/items"
    expected = sql_count(conn, layers["plain"], "(f.properties->>'dlbm') = '0701' AND (f.properties->>'floors')::int >= 3")
    text = get(url, filter="dlbm = '0701' AND floors >= 3", limit=100).json()
    as_json = get(url, limit=100, **{"filter-lang": "cql2-json", "filter": (
        '{"op":"and","args":[{"op":"=","args":[{"property":"dlbm"},"0701"]},'
        '{"op":">=","args":[{"property":"floors"},3]}]}')}).json()
    assert text["numberMatched"] == as_json["numberMatched"] == expected > 0
    spatial = get(url, filter="S_INTERSECTS(geometry, BBOX(114.2480, 22.7185, 114.2510, 22.7210))", limit=100).json()
    assert spatial["numberMatched"] == sql_count(
        conn, layers["plain"], "ST_Intersects(f.geom, ST_MakeEnvelope(114.2480,22.7185,114.2510,22.7210,4490))")
    assert get(url, dlbm="0701", limit=100).json()["numberMatched"] == sql_count(
        conn, layers["plain"], "(f.properties->>'dlbm') = '0701'")
    assert "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter" in get(server + "/conformance").json()["conformsTo"]


def test_cql2_errors_and_injection_attempts_execute_nothing(server, layers, conn):
    url = f"{server}/collections/{layers['plain']}/items"
    before = conn.execute("SELECT count(*) FROM layers").fetchone()[0]
    bad_syntax = get(url, filter="dlbm = ")
    assert bad_syntax.status_code == 400 and "position" in bad_syntax.json()["description"]
    for attempt in ("dlbm = '0701''; DROP TABLE layers; --'", "\"dlbm; DROP TABLE layers\" = 1",
                    "dlbm = '0701' OR 1=1; DELETE FROM changesets", "nope = 1"):
        r = get(url, filter=attempt, limit=100)
        assert r.status_code == 400 or r.json()["numberMatched"] == 0, attempt
    assert get(url, **{"filter-lang": "sql", "filter": "1=1"}).status_code == 400
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM layers").fetchone()[0] == before
    assert sql_count(conn, layers["plain"]) == 20


def test_clients_send_cql2_owslib_and_gdal_where(server, layers, conn):
    from owslib.ogcapi.features import Features

    expected = sql_count(conn, layers["plain"], "(f.properties->>'dlbm') = '0701'")
    items = Features(server).collection_items(layers["plain"], filter="dlbm = '0701'", limit=100)
    assert items["numberMatched"] == expected
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-q", f"OAPIF:{server}", layers["plain"], "-where", "dlbm = '0701'"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"^OGRFeature", out.stdout, flags=re.M)) == expected


def test_number_matched_is_an_estimate_when_counting_is_slow(server, layers, monkeypatch):
    from spatial_api.ogc import features as ogc_features

    url = f"{server}/collections/{layers['plain']}/items"
    assert get(url, limit=5).json()["numberMatched"] == 20  # counted
    last = get(url, limit=5, offset=18).json()  # a short last page needs no count
    assert last["numberMatched"] == 20 and last["numberReturned"] == 2
    monkeypatch.setattr(ogc_features, "EXACT_COUNT_MAX", 1)  # the planner expects more: estimate
    page = get(url, limit=5).json()
    assert page["geotwin:numberMatchedIsEstimate"] is True and page["numberMatched"] >= 5
    assert any(ln["rel"] == "next" for ln in page["links"])


@pytest.fixture(scope="module")
def demo_land_use(database, tmp_path_factory):
    """The small demo district's two land-use surveys (2020, 2023), loaded as GIS staff would."""
    from data.demo import build_files

    out = database.home / "demo" / "small"  # the session's small district, shared, read only
    manifest = build_files(out, size="small", seed=2024, reuse=True)
    doc = json.loads((out / "manifest.json").read_text())
    name = f"t_demo_lu_{uuid.uuid4().hex[:6]}"
    for entry in (e for e in doc["layers"] if e["layer"] == "land_use"):
        ingest_vector(out / entry["path"], layer=name, key=entry["key"], valid_from=entry["valid_from"],
                      settings=database)
    assert manifest
    return name, doc["land_use_changes"]


def test_time_travel_on_the_demo_districts_two_surveys(server, demo_land_use, conn):
    name, changes = demo_land_use
    url = f"{server}/collections/{name}"
    col = get(url).json()
    assert col["extent"]["temporal"]["interval"][0][0].startswith("2020-12-30T16:00")  # 2020-12-31 +08:00
    y2021 = get(url + "/items", datetime="2021-06-30T00:00:00Z", limit=1).json()
    y2024 = get(url + "/items", datetime="2024-06-30T00:00:00Z", limit=1).json()
    before = get(url + "/items", datetime="2019-06-30T00:00:00Z", limit=1).json()
    assert (y2021["numberMatched"], y2024["numberMatched"]) == (changes["features_2020"], changes["features_2023"])
    assert "geotwin:numberMatchedIsEstimate" not in y2021 and "geotwin:numberMatchedIsEstimate" not in y2024
    assert before["numberMatched"] == 0 and before["features"] == []
    diff = get(url + "/changes", **{"from": "2021-06-30T00:00:00Z", "to": "2024-06-30T00:00:00Z"}).json()
    assert diff["geotwin:counts"] == {"added": changes["added"], "changed": changes["changed"],
                                      "removed": changes["removed"]}
    # a parcel whose class changed: two versions, each found at its own date
    fid = next(f["id"] for f in diff["features"] if f["geotwin:change"] == "changed")
    versions = get(f"{url}/items/{fid}/versions").json()["features"]
    assert len(versions) == 2 and versions[0]["properties"] != versions[1]["properties"]
    assert get(f"{url}/items/{fid}", datetime="2021-06-30").json()["properties"] == versions[0]["properties"]
    assert get(f"{url}/items/{fid}", datetime="2024-06-30").json()["properties"] == versions[1]["properties"]
    # CQL2 on the past: farmland (01xx) in 2021 vs 2024, equal to SQL over the stored versions
    for when in ("2021-06-30T00:00:00Z", "2024-06-30T00:00:00Z"):
        got = get(url + "/items", datetime=when, filter="dlbm LIKE '01%'", limit=10000).json()
        sql_n = conn.execute(
            f"SELECT count(*) FROM {store.partition_name(name)} WHERE properties->>'dlbm' LIKE '01%%' "
            "AND valid_from <= %s AND (valid_to IS NULL OR valid_to > %s)", (when, when)).fetchone()[0]
        assert got["numberReturned"] == sql_n > 0
