"""Place-name and address search on the real PostGIS: the small demo district's naming layers
(streets, communities, place_names, addresses) loaded once into the test schema, queried
through the geocode router in a FastAPI app of the test's own (not app.py).

These fixed layer names are owned by this module in the test schema (other tests use t_…)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from shapely.geometry import Point

from spatial_api import db, store
from spatial_api.geocode import refresh, router

NAMING_LAYERS = ("streets", "communities", "place_names", "addresses")


@pytest.fixture(scope="module")
def district(database, tmp_path_factory, auth):
    from data.demo import build_files
    from spatial_api.ingest import ingest_vector
    from spatial_api.security import routes as security_routes

    app = FastAPI()
    security_routes.install(app, database)  # the caller's role decides which layers are searched
    app.include_router(router(database))
    client = TestClient(app, headers=auth("land-officer"))  # addresses are 'internal' in the demo
    public = TestClient(app)
    # before any naming layer exists: the endpoints answer, with nothing found
    empty = {
        "search": client.get("/geocode/search", params={"q": "坂田街道"}),
        "autocomplete": client.get("/geocode/autocomplete", params={"q": "坂"}),
        "reverse": client.get("/geocode/reverse", params={"lon": 114.25, "lat": 22.72}),
    }
    manifest = build_files(database.home / "demo" / "small", size="small", seed=2024, reuse=True)  # shared, read only
    for lf in manifest.layers:
        if lf.layer in NAMING_LAYERS:
            ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from,
                          crs=lf.crs, encoding=lf.encoding, title_zh=lf.title_zh, title_en=lf.title_en,
                          access_level=lf.access_level, author="pytest", settings=database)
    return {"client": client, "public": public, "empty": empty, "settings": database}


@pytest.fixture(scope="module")
def client(district):
    return district["client"]


def rows(settings, query, params=()):
    with db.connect(settings) as conn:
        with conn.cursor(row_factory=__import__("psycopg").rows.dict_row) as cur:
            return cur.execute(query, params).fetchall()


def props(response):
    assert response.status_code == 200, response.text
    return [f["properties"] for f in response.json()["features"]]


def test_missing_layers_give_empty_answers_not_errors(district):
    e = district["empty"]
    assert e["search"].status_code == 200 and e["search"].json()["features"] == []
    assert e["autocomplete"].status_code == 200 and e["autocomplete"].json()["features"] == []
    r = e["reverse"]
    assert r.status_code == 200
    assert r.json()["address"] is None and r.json()["street"] is None


def test_full_address_finds_the_door_number_first(client, district):
    # an address whose road + door number is unique enough to check
    a = rows(district["settings"], """
        SELECT fid, properties FROM features_addresses WHERE valid_to IS NULL
        ORDER BY fid LIMIT 1 OFFSET 100""")[0]
    p = a["properties"]
    q = f"{p['street']}{p['door_number']}"  # 坂田街道五和大道123号 form (no community)
    found = props(client.get("/geocode/search", params={"q": q}))
    assert found[0]["layer"] == "addresses"
    assert found[0]["door_number"] == p["door_number"] and found[0]["street"] == p["street"]
    assert found[0]["score"] >= found[-1]["score"]
    # addresses are an internal layer: the public finds the street, never the door number
    seen = props(district["public"].get("/geocode/search", params={"q": q}))
    assert seen and all(f["layer"] != "addresses" for f in seen)
    lon, lat = client.get("/geocode/search", params={"q": q}).json()["features"][0]["geometry"]["coordinates"]
    assert client.get("/geocode/reverse", params={"lon": lon, "lat": lat}).json()["address"]
    rev = district["public"].get("/geocode/reverse", params={"lon": lon, "lat": lat})
    assert rev.status_code == 200 and rev.json()["address"] is None and rev.json()["street"]
    # with the city / district prefix, community and building: exactly that feature, first
    r = client.get("/geocode/search", params={"q": "深圳市龙岗区" + p["street"] + p["community"]
                                              + p["door_number"] + p["building"]})
    best = props(r)[0]
    assert best["fid"] == a["fid"] and best["full_address"] == p["full_address"]
    feature = r.json()["features"][0]
    assert feature["geometry"]["type"] == "Point"
    lon, lat = feature["geometry"]["coordinates"]
    assert 113.7 < lon < 114.7 and 22.4 < lat < 22.9
    assert r.json()["query"]["parsed"]["door_no"] is not None
    # the full address as written in the data
    assert props(client.get("/geocode/search", params={"q": p["full_address"]}))[0]["fid"] == a["fid"]
    # road + door number without 号 and in full-width digits
    digits = "".join(ch for ch in p["door_number"] if ch.isdigit())
    fullwidth = digits.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    found = props(client.get("/geocode/search", params={"q": p["road"] + fullwidth}))
    assert found[0]["door_number"] == p["door_number"]


def test_partial_place_name(client, district):
    places = rows(district["settings"], """
        SELECT fid, properties->>'name' AS name FROM features_place_names
        WHERE valid_to IS NULL AND length(properties->>'name') >= 4
          AND properties->>'kind' IN ('residential', 'industrial_park') ORDER BY fid LIMIT 5""")
    assert places
    for place in places:
        part = place["name"][1:4]  # a middle part of the name
        found = props(client.get("/geocode/search", params={"q": part, "limit": 10}))
        assert place["fid"] in [f["fid"] for f in found if f["layer"] == "place_names"], (part, found[:3])
        whole = props(client.get("/geocode/search", params={"q": place["name"]}))
        assert whole[0]["fid"] == place["fid"] and whole[0]["score"] == 1.0


def test_one_and_two_character_queries(client):
    one = props(client.get("/geocode/search", params={"q": "龙"}))
    assert len(one) == 10
    assert all("龙" in f["name"] for f in one)
    assert one[0]["layer"] in ("streets", "communities", "place_names")
    two = props(client.get("/geocode/search", params={"q": "坂田"}))
    assert two[0]["layer"] == "streets" and two[0]["name"] == "坂田街道"
    assert all("坂田" in f["name"] for f in two)
    ac = props(client.get("/geocode/autocomplete", params={"q": "布"}))
    assert ac and all("布" in f["name"] for f in ac)


def test_street_and_community_names(client, district):
    code = rows(district["settings"], """SELECT properties->>'code' AS code FROM features_streets
                                         WHERE valid_to IS NULL AND properties->>'name' = '龙城街道'""")[0]["code"]
    street = props(client.get("/geocode/search", params={"q": "龙城街道"}))[0]
    assert (street["layer"], street["name"], street["code"]) == ("streets", "龙城街道", code)
    community = rows(district["settings"], """
        SELECT fid, properties FROM features_communities WHERE valid_to IS NULL ORDER BY fid LIMIT 1""")[0]
    name = community["properties"]["name"]
    best = props(client.get("/geocode/search", params={"q": name}))[0]
    assert (best["layer"], best["fid"], best["name"]) == ("communities", community["fid"], name)
    assert best["street"]  # the street it belongs to
    # community name without 社区, within its street
    short = name.removesuffix("社区")
    found = props(client.get("/geocode/search", params={"q": short}))
    assert community["fid"] in [f["fid"] for f in found[:3] if f["layer"] == "communities"]


def test_reverse_gives_the_nearest_address_and_the_containing_areas(client, district):
    s = district["settings"]
    a = rows(s, """SELECT fid, ST_X(geom) AS lon, ST_Y(geom) AS lat FROM features_addresses
                   WHERE valid_to IS NULL ORDER BY fid LIMIT 1 OFFSET 777""")[0]
    lon, lat = a["lon"] + 0.00003, a["lat"] - 0.00002  # a few metres away
    r = client.get("/geocode/reverse", params={"lon": lon, "lat": lat})
    assert r.status_code == 200, r.text
    body = r.json()
    # ground truth straight from the store, on the ellipsoid
    nearest = rows(s, """
        SELECT fid, ST_Distance(geom::geography, ST_SetSRID(ST_MakePoint(%s, %s), 4490)::geography) AS d
        FROM features_addresses WHERE valid_to IS NULL ORDER BY 2, fid LIMIT 1""", (lon, lat))[0]
    assert body["address"]["properties"]["fid"] == nearest["fid"]
    assert body["address"]["properties"]["distance_m"] == pytest.approx(nearest["d"], abs=0.05)
    assert 0 < body["address"]["properties"]["distance_m"] < 10
    for layer in ("streets", "communities"):
        containing = rows(s, f"""
            SELECT fid, properties->>'name' AS name FROM features_{layer}
            WHERE valid_to IS NULL AND ST_Covers(geom, ST_SetSRID(ST_MakePoint(%s, %s), 4490))""",
                          (lon, lat))
        assert len(containing) == 1
        key = "street" if layer == "streets" else "community"
        assert body[key]["fid"] == containing[0]["fid"] and body[key]["name"] == containing[0]["name"]


def test_autocomplete_returns_prefix_matches(client, district):
    p = rows(district["settings"], """
        SELECT properties FROM features_addresses WHERE valid_to IS NULL ORDER BY fid LIMIT 1 OFFSET 42""")[0]["properties"]
    typed = p["door_number"][:-2]  # 上兴西路37号 -> 上兴西路3
    found = props(client.get("/geocode/autocomplete", params={"q": typed}))
    assert len(found) == 8
    addresses = [f for f in found if f["layer"] == "addresses"]
    assert addresses and all(f["door_number"].startswith(typed) for f in addresses)
    found = props(client.get("/geocode/autocomplete", params={"q": "坂田街", "limit": 5}))
    assert len(found) == 5 and found[0]["name"] == "坂田街道"
    assert all(f["name"].startswith("坂田街") or (f.get("full_address") or "").startswith("深圳市龙岗区坂田街")
               for f in found)
    r = client.get("/geocode/autocomplete", params={"q": "龙岗大"})
    assert props(r)[0]["name"].startswith("龙岗大")


@pytest.mark.parametrize("path, params, word", [
    ("/geocode/search", {}, "q"),
    ("/geocode/search", {"q": ""}, "q"),
    ("/geocode/search", {"q": "   "}, "q"),
    ("/geocode/search", {"q": "深圳市龙岗区"}, "q"),
    ("/geocode/search", {"q": "x" * 101}, "q"),
    ("/geocode/search", {"q": "龙", "limit": "0"}, "limit"),
    ("/geocode/search", {"q": "龙", "limit": "abc"}, "limit"),
    ("/geocode/autocomplete", {"q": "龙", "limit": "1000"}, "limit"),
    ("/geocode/autocomplete", {"q": ""}, "q"),
    ("/geocode/reverse", {"lon": "200", "lat": "22.7"}, "lon"),
    ("/geocode/reverse", {"lon": "114.2", "lat": "-95"}, "lat"),
    ("/geocode/reverse", {"lon": "114.2"}, "lat"),
    ("/geocode/reverse", {"lon": "abc", "lat": "22.7"}, "lon"),
    ("/geocode/reverse", {"lon": "nan", "lat": "22.7"}, "lon"),
])
def test_bad_parameters_are_400_json(client, path, params, word):
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "InvalidParameterValue" and word in body["description"]


def test_injection_and_like_wildcards_are_plain_text(client):
    # unescaped, '%' / '%%' would be LIKE wildcards matching every row
    for q in ("%", "%%", "'; DROP TABLE geocode_index; --", "\\%"):
        r = client.get("/geocode/search", params={"q": q})
        assert r.status_code == 200 and r.json()["features"] == [], (q, r.text)
    assert props(client.get("/geocode/search", params={"q": "坂田"}))


def test_index_follows_new_changesets(client, district):
    """A new place name written through the store is found on the next request (incremental
    refresh of the derived index); closing it removes it again."""
    s = district["settings"]
    fresh = client.get("/geocode/search", params={"q": "测试新地名广场"})
    assert props(fresh) == [] or props(fresh)[0]["name"] != "测试新地名广场"
    when = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=8)))
    with db.connect(s) as conn:
        layer = store.get_layer(conn, "place_names")
        template = rows(s, "SELECT properties FROM features_place_names WHERE valid_to IS NULL LIMIT 1")[0]["properties"]
        new = {**template, "pn_id": "PN_TEST_1", "name": "测试新地名广场", "kind": "landmark"}
        fr = store.FeatureRows(rows=np.array([1]), fids=np.array(["PN_TEST_1"], dtype=object),
                               geometry=np.array([Point(114.25, 22.72)], dtype=object),
                               properties=pd.DataFrame([new])[[p["name"] for p in layer.properties]])
        store.write_changeset(conn, layer, fr, mode="upsert", valid_from=when, author="pytest", source="test")
        conn.commit()
    best = props(client.get("/geocode/search", params={"q": "测试新地名广场"}))[0]
    assert (best["fid"], best["score"]) == ("PN_TEST_1", 1.0)
    with db.connect(s) as conn:
        assert refresh(conn) == {}  # nothing newer any more
        counts = {r[0]: r[1] for r in conn.execute("SELECT layer, count(*) FROM geocode_index GROUP BY 1")}
        current = conn.execute("SELECT count(*) FROM features_place_names WHERE valid_to IS NULL").fetchone()[0]
        assert counts["place_names"] == current


# -- match levels: how much of the query a result matched (issue 12) --------------------------------

LEVELS = ("street", "community", "road", "place", "door", "building")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.fixture(scope="module")
def sample(district):
    """One address of the small demo whose road is also a named road (a place name of kind road)
    and whose door number is on few roads of its street, plus the names the table needs."""
    s = district["settings"]
    addresses = rows(s, """
        SELECT a.fid, a.properties AS p, (substring(a.properties->>'door_number' from '(\\d+)号'))::int AS door
        FROM features_addresses a WHERE a.valid_to IS NULL
          AND EXISTS (SELECT 1 FROM features_place_names n WHERE n.valid_to IS NULL
                      AND n.properties->>'kind' = 'road' AND n.properties->>'name' = a.properties->>'road')
        ORDER BY a.fid""")
    roads = {r["road"] for r in rows(s, """
        SELECT properties->>'road' AS road FROM features_addresses WHERE valid_to IS NULL
        UNION SELECT properties->>'name' FROM features_place_names
        WHERE valid_to IS NULL AND properties->>'kind' = 'road'""")}
    doors: dict[tuple[str, int], set[str]] = {}
    for a in addresses:
        doors.setdefault((a["p"]["street"], a["door"]), set()).add(a["p"]["road"])
    a = next(a for a in addresses if len(doors[(a["p"]["street"], a["door"])]) <= 3)
    place = rows(s, """SELECT properties->>'name' AS name FROM features_place_names
                       WHERE valid_to IS NULL AND properties->>'kind' = 'residential' ORDER BY fid LIMIT 1""")[0]
    return {**a["p"], "fid": a["fid"], "door": a["door"], "roads": roads, "place": place["name"]}


def _typo(road: str) -> str:
    """One extra character typed inside the road's name: 黄阁路 -> 黄阁的路."""
    return road[:2] + "的" + road[2:]


# (id, query built from the sample, expected match level of the best result or None for no result,
#  the road a suggestion must offer or None)
LEVEL_TABLE = [
    ("full address", lambda a: "深圳市龙岗区" + a["street"] + a["community"] + a["door_number"] + a["building"],
     "building", None),
    ("building", lambda a: a["door_number"] + a["building"], "building", None),
    ("door on a known road", lambda a: a["door_number"], "door", None),
    ("door in full-width digits", lambda a: a["road"] + str(a["door"]).translate(FULLWIDTH) + "号", "door", None),
    ("street + door on a known road", lambda a: a["street"] + a["door_number"], "door", None),
    ("community's short name before the road", lambda a: a["community"].removesuffix("社区") + a["door_number"],
     "door", None),
    ("unknown road with door (the issue)", lambda a: "坂田街道五和大道123号", "street", "五和街"),
    ("unknown road without door", lambda a: "坂田街道五和大道", "street", "五和街"),
    ("unknown road alone", lambda a: "五和大道", None, "五和街"),
    ("door without a road", lambda a: a["street"] + f"{a['door']}号", "street", "__road__"),
    ("known road, unknown door", lambda a: a["street"] + a["road"] + "99999号", "road", "__road__"),
    ("road only", lambda a: a["road"], "road", None),
    ("community only", lambda a: a["community"], "community", None),
    ("street and community", lambda a: a["street"] + a["community"], "community", None),
    ("street only", lambda a: a["street"], "street", None),
    ("typo in the street", lambda a: "板田街道", "street", None),
    ("typo in the road, with door", lambda a: a["street"] + _typo(a["road"]) + f"{a['door']}号", "street", "__road__"),
    ("place name", lambda a: a["place"], "place", None),
    ("nonsense (latin)", lambda a: "qwertyuiop", None, None),
    ("nonsense (chinese)", lambda a: "火星基地", None, None),
]


def _check_result_invariants(body: dict) -> None:
    """What every answer promises: each result says its level and which parts of the query it
    matched; an address (a door number) only on the road and door number asked for; a partial
    match never scores like a full one; best first."""
    parsed = body["query"]["parsed"]
    asked = {k for k in ("street", "community", "road", "building") if parsed.get(k)}
    if parsed.get("door_no") is not None:
        asked.add("door")
    if parsed.get("rest"):
        asked.add("name")
    scores = []
    for f in body["features"]:
        p = f["properties"]
        assert p["match_level"] in LEVELS, p
        assert isinstance(p["matched"], dict) and isinstance(p["unmatched"], dict), p
        assert p["matched"], ("a result that matched nothing", p)
        if not set(p["matched"]) & {"name", "prefix", "address"}:
            assert set(p["matched"]) | set(p["unmatched"]) == asked, (p, parsed)
        if p["unmatched"]:
            assert p["score"] < 0.95, ("a partial match scored like a full one", p)
        if p["layer"] == "addresses" and body["query"]["kind"] == "search":
            # never a door number on a road the query did not ask for
            assert parsed["road"] and p["road"] == parsed["road"], (p, parsed)
            if parsed["door_no"] is not None:
                assert p["door_number"] == f"{parsed['road']}{parsed['door_no']}号", (p, parsed)
        scores.append(p["score"])
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("case", LEVEL_TABLE, ids=[c[0] for c in LEVEL_TABLE])
def test_match_level_table(client, sample, case):
    _, build, level, suggested = case
    q = build(sample)
    r = client.get("/geocode/search", params={"q": q})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_result_invariants(body)
    found = [f["properties"] for f in body["features"]]
    if level is None:
        assert found == [], (q, found[:3])
    else:
        assert found, q
        assert found[0]["match_level"] == level, (q, found[0])
    suggestions = body["suggestions"]
    if suggested is None:
        assert suggestions == [] or level is not None, (q, suggestions)
    else:
        want = sample["road"] if suggested == "__road__" else suggested
        assert want in [s["road"] for s in suggestions], (q, suggestions)
        for s in suggestions:  # each suggestion is a query that finds what it offers
            assert s["q"] and s["road"] in s["q"]


def test_unknown_road_answers_at_the_street_with_near_road_names(client, sample, district):
    """坂田街道五和大道123号: the demo has no 五和大道 (it has 五和街). The answer is the street,
    saying the road and door number were not matched, with a low score, never an address on
    another road; 五和街 is offered as a suggestion, and the suggestion's query finds it."""
    s = district["settings"]
    assert "五和大道" not in sample["roads"] and "五和街" in sample["roads"]
    body = client.get("/geocode/search", params={"q": "坂田街道五和大道123号"}).json()
    best = body["features"][0]["properties"]
    assert (best["layer"], best["name"], best["match_level"]) == ("streets", "坂田街道", "street")
    assert best["matched"] == {"street": "坂田街道"}
    assert best["unmatched"] == {"road": "五和大道", "door": "123号"}
    assert best["score"] <= 0.5
    assert all(f["properties"]["layer"] != "addresses" for f in body["features"])
    centre = rows(s, """SELECT ST_X(ST_PointOnSurface(geom)) AS lon, ST_Y(ST_PointOnSurface(geom)) AS lat
                        FROM features_streets WHERE valid_to IS NULL AND properties->>'name' = '坂田街道'""")[0]
    assert body["features"][0]["geometry"]["coordinates"] == pytest.approx([centre["lon"], centre["lat"]], abs=1e-7)
    wuhe = next(x for x in body["suggestions"] if x["road"] == "五和街")
    assert wuhe["kind"] == "road" and 0 < wuhe["similarity"] < 1 and wuhe["streets"]
    retry = client.get("/geocode/search", params={"q": wuhe["q"]}).json()
    assert retry["features"] and all(f["properties"]["road"] == "五和街"
                                     for f in retry["features"] if f["properties"]["layer"] == "addresses")
    # a full match of a real address scores well above it
    full = client.get("/geocode/search", params={"q": sample["street"] + sample["door_number"]}).json()
    assert full["features"][0]["properties"]["score"] >= 0.95 > best["score"] + 0.4


def test_partial_matches_score_below_full_ones(client, sample):
    both = props(client.get("/geocode/search", params={"q": sample["street"] + sample["community"]}))
    community = next(f for f in both if f["layer"] == "communities")
    street = next(f for f in both if f["layer"] == "streets")
    assert community["match_level"] == "community" and community["unmatched"] == {}
    assert street["match_level"] == "street" and street["unmatched"] == {"community": sample["community"]}
    assert community["score"] > street["score"]
    # a building asked for that the door does not have: the door, saying the building was not found
    r = props(client.get("/geocode/search", params={"q": sample["door_number"] + "999栋"}))
    assert r[0]["match_level"] == "door" and r[0]["unmatched"] == {"building": "999栋"}
    assert r[0]["score"] < 0.95
    # a typo in the street: the street, flagged approximate, scored below an exact match
    typo = props(client.get("/geocode/search", params={"q": "板田街道"}))[0]
    exact = props(client.get("/geocode/search", params={"q": "坂田街道"}))[0]
    assert typo["name"] == exact["name"] == "坂田街道"
    assert typo["approximate"] == {"street": "坂田街道"} and exact["approximate"] == {}
    assert typo["score"] < exact["score"]


def test_autocomplete_never_puts_a_door_on_a_road_not_typed(client, sample):
    for q in ("坂田街道五和大道", "五和大道1", sample["street"] + f"{sample['door']}号"):
        body = client.get("/geocode/autocomplete", params={"q": q}).json()
        for f in body["features"]:
            p = f["properties"]
            assert p["match_level"] in LEVELS
            if p["layer"] == "addresses":
                assert p["full_address"].removeprefix("深圳市龙岗区").startswith(q) or p["road"] == body["query"]["parsed"]["road"], (q, p)
    # typing an address still offers its completions, with the level reached so far
    typed = sample["door_number"][:-2]
    found = props(client.get("/geocode/autocomplete", params={"q": typed}))
    assert found and all(f["match_level"] in LEVELS for f in found)
