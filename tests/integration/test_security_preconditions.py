"""Issue 12, item 3: who the caller is comes before what the request lacks. A write without
If-Match (or with a broken body) is answered 401 for an anonymous caller, 403 for a role that may
not edit, 404 for a layer the caller cannot see or that does not exist — and 428 / 400 only for a
caller who may write there."""

from __future__ import annotations

import uuid

import geopandas as gpd
import pytest
import shapely
import shapely.geometry
from fastapi.testclient import TestClient

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector

SITE = (114.2500, 22.7200)
SQUARE = shapely.box(SITE[0], SITE[1], SITE[0] + 0.0006, SITE[1] + 0.0006)
FEATURE = {"type": "Feature", "properties": {"code": "K0", "name": "改"}, "geometry": shapely.geometry.mapping(SQUARE)}


@pytest.fixture(scope="module")
def layers(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec_pre")
    sfx = uuid.uuid4().hex[:6]
    out = {}
    for level in ("public", "restricted"):
        name = f"t_pre_{level[:3]}_{sfx}"
        path = tmp / f"{level}.geojson"
        gpd.GeoDataFrame({"code": ["K0"], "name": ["一"]}, geometry=[SQUARE],
                         crs="EPSG:4490").to_file(path, driver="GeoJSON")
        ingest_vector(path, layer=name, key="code", access_level=level, valid_from="2024-01-01", settings=database)
        out[level] = name
    with db.connect(database) as conn:
        for name in out.values():
            store.update_layer(conn, name, editable=True)
        conn.commit()
    out["missing"] = f"t_pre_none_{sfx}"  # never created
    return out


@pytest.fixture(scope="module")
def app(database, layers):
    return create_app(database)


def send(client: TestClient, method: str, url: str, body=FEATURE, headers=None):
    if method == "DELETE":
        return client.request("DELETE", url, headers=headers)
    if method == "PATCH":
        body = {"properties": body["properties"]} if isinstance(body, dict) else body
    if isinstance(body, (bytes, str)):
        return client.request(method, url, content=body, headers={"Content-Type": "application/json", **(headers or {})})
    return client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_without_if_match_the_caller_is_checked_first(app, auth, layers, method):
    def item(level):
        return f"/collections/{layers[level]}/items/K0"

    anonymous = TestClient(app)
    r = send(anonymous, method, item("public"))
    assert r.status_code == 401, (method, r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer") and "credentials" in r.json()["description"]
    # a layer the caller cannot see, and one that does not exist, look the same: 404
    for level in ("restricted", "missing"):
        r = send(anonymous, method, item(level))
        assert r.status_code == 404 and r.json()["code"] == "NotFound", (method, level, r.status_code, r.text)
    planner = TestClient(app, headers=auth("planner"))
    assert send(planner, method, item("public")).status_code == 403
    assert send(planner, method, item("restricted")).status_code == 404  # invisible to planners
    assert send(planner, method, item("missing")).status_code == 404
    staff = TestClient(app, headers=auth("gis-staff"))
    r = send(staff, method, item("public"))
    assert r.status_code == 428 and "If-Match" in r.json()["description"], (method, r.text)
    assert send(staff, method, item("missing")).status_code == 404  # nothing to precondition
    # an officer sees the restricted layer but may not edit it
    assert send(TestClient(app, headers=auth("land-officer")), method, item("restricted")).status_code == 403


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_broken_body_from_a_caller_who_may_not_write_is_not_examined(app, auth, layers, method):
    url = f"/collections/{layers['public']}/items" + ("" if method == "POST" else "/K0")
    tag = {"If-Match": TestClient(app).get(f"/collections/{layers['public']}/items/K0").headers["etag"]}
    assert send(TestClient(app), method, url, body="{not json", headers=tag).status_code == 401
    assert send(TestClient(app, headers=auth("planner")), method, url, body="{not json", headers=tag).status_code == 403
    assert send(TestClient(app), method, url.replace(layers["public"], layers["restricted"]), body="{not json",
                headers=tag).status_code == 404
    r = send(TestClient(app, headers=auth("gis-staff")), method, url, body="{not json", headers=tag)
    assert r.status_code == 400 and "body" in r.json()["description"], r.text
