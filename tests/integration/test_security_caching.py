"""Issue 12, item 4: caching headers that fit the access level. Whatever depends on the caller
is ``Cache-Control: private`` and ``Vary: Authorization, X-API-Key`` (a shared proxy must not
store it, a browser must not reuse an anonymous answer once a key is sent); tiles of public layers
stay public and shareable; a 404 for a layer the caller cannot see is indistinguishable from the
404 for a layer that does not exist, headers included."""

from __future__ import annotations

import uuid

import geopandas as gpd
import morecantile
import pytest
import shapely
from fastapi.testclient import TestClient

from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector

WM = morecantile.tms.get("WebMercatorQuad")
SITE = (114.2500, 22.7200)
CREDENTIAL_HEADERS = {"authorization", "x-api-key"}


@pytest.fixture(scope="module")
def layers(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec_cache")
    sfx = uuid.uuid4().hex[:6]
    out = {}
    for level in ("public", "internal", "restricted"):
        name = f"t_cc_{level[:3]}_{sfx}"
        path = tmp / f"{level}.geojson"
        gpd.GeoDataFrame({"code": ["K0"]}, geometry=[shapely.box(SITE[0], SITE[1], SITE[0] + 0.0006, SITE[1] + 0.0006)],
                         crs="EPSG:4490").to_file(path, driver="GeoJSON")
        ingest_vector(path, layer=name, key="code", access_level=level, valid_from="2024-01-01", settings=database)
        out[level] = name
    out["missing"] = f"t_cc_none_{sfx}"
    return out


@pytest.fixture(scope="module")
def app(database, layers):
    return create_app(database)


def tile_urls(name: str) -> list[str]:
    t = WM.tile(*SITE, 15)
    return [f"/collections/{name}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}", f"/tiles/{name}/{t.z}/{t.x}/{t.y}.mvt"]


def directives(r) -> set[str]:
    return {d.strip().split("=")[0].lower() for d in r.headers.get("cache-control", "").split(",") if d.strip()}


def vary(r) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("vary", "").split(",") if v.strip()}


def assert_private(r, what):
    assert "private" in directives(r) and "public" not in directives(r), (what, r.headers.get("cache-control"))
    assert CREDENTIAL_HEADERS <= vary(r), (what, r.headers.get("vary"))


def assert_shared(r, what):
    assert "public" in directives(r) and "private" not in directives(r), (what, r.headers.get("cache-control"))
    assert not CREDENTIAL_HEADERS & vary(r), (what, r.headers.get("vary"))


@pytest.mark.parametrize("level,role", [("public", None), ("public", "admin"), ("internal", "planner"),
                                        ("internal", "admin"), ("restricted", "land-officer")])
def test_tiles_are_as_shareable_as_their_layer(app, auth, layers, level, role):
    c = TestClient(app, headers=auth(role)) if role else TestClient(app)
    for url in tile_urls(layers[level]):
        for attempt in ("rendered", "from the tile cache"):
            r = c.get(url)
            assert r.status_code == 200, (url, r.status_code)
            check = assert_shared if level == "public" else assert_private
            check(r, (url, attempt))
        again = c.get(url, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
        (assert_shared if level == "public" else assert_private)(again, (url, "304"))


def test_a_tile_of_several_layers_is_as_private_as_the_most_restricted(app, auth, layers):
    t = WM.tile(*SITE, 15)
    url = f"/tiles/{layers['public']},{layers['internal']}/{t.z}/{t.x}/{t.y}.mvt"
    planner = TestClient(app, headers=auth("planner"))
    for _ in range(2):
        r = planner.get(url)
        assert r.status_code == 200
        assert_private(r, url)


def test_what_a_caller_cannot_see_looks_like_what_does_not_exist(app, layers):
    anonymous = TestClient(app)
    for invisible, missing in [*zip(tile_urls(layers["internal"]), tile_urls(layers["missing"])),
                               (f"/collections/{layers['restricted']}", f"/collections/{layers['missing']}"),
                               (f"/collections/{layers['internal']}/items", f"/collections/{layers['missing']}/items")]:
        a, b = anonymous.get(invisible), anonymous.get(missing)
        assert a.status_code == b.status_code == 404
        # a shared cache must not hand this 404 to a caller who sends a key that sees the layer
        assert_private(a, invisible)
        same = ("cache-control", "vary")
        assert [a.headers.get(h) for h in same] == [b.headers.get(h) for h in same], (invisible, missing)


@pytest.mark.parametrize("path", ["/styles/district", "/collections", "/whoami", "/wmts/1.0.0/WMTSCapabilities.xml"])
def test_answers_that_depend_on_the_caller_vary_on_the_credentials(app, auth, layers, path):
    """/styles/district was `private, max-age=60` without Vary: a browser kept the anonymous style
    (no land-use layers in the panel) for a minute after the user pasted a key into /map."""
    for headers in ({}, auth("planner")):
        r = TestClient(app, headers=headers).get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert_private(r, path)
    # what differs: the planner's answer holds the internal layer, the anonymous one does not
    if path in ("/collections", "/wmts/1.0.0/WMTSCapabilities.xml"):
        assert layers["internal"] not in TestClient(app).get(path).text
        assert layers["internal"] in TestClient(app, headers=auth("planner")).get(path).text


def test_tilejson_of_a_non_public_layer_is_private(app, auth, layers):
    r = TestClient(app, headers=auth("planner")).get(f"/tiles/{layers['internal']}/tilejson.json")
    assert r.status_code == 200
    assert_private(r, "tilejson")
