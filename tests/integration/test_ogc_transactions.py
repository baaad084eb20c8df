"""OGC API Features Part 4 on the real database: create / replace / update / delete, each a
changeset with its author, and optimistic locking with ETag / If-Match."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pyproj import Transformer

from spatial_api import store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures import files


@pytest.fixture
def editable(tmp_path, database, conn, layer_name):
    ingest_vector(files.gpkg(tmp_path), layer=layer_name, key="code", valid_from="2020-01-01", settings=database)
    store.update_layer(conn, layer_name, editable=True)
    conn.commit()
    return layer_name


@pytest.fixture
def client(database, auth):
    """GIS staff may edit (the security tests check the other roles)."""
    return TestClient(create_app(database), headers=auth("gis-staff"))


def square(lon, lat, d=0.0003):
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]]}


def feature(code, dlbm="0701", floors=3, geometry=None):
    return {"type": "Feature", "geometry": geometry or square(114.26, 22.73),
            "properties": {"code": code, "dlbm": dlbm, "floors": floors}}


def test_create_replace_update_delete_each_a_changeset(client, editable, conn):
    url = f"/collections/{editable}/items"
    r = client.post(url, json=feature("NEW-1"))
    assert r.status_code == 201 and r.headers["location"].endswith(f"{url}/NEW-1")
    tag = r.headers["etag"]
    got = client.get(f"{url}/NEW-1")
    assert got.headers["etag"] == tag and got.json()["properties"]["dlbm"] == "0701"

    r = client.put(f"{url}/NEW-1", json=feature("NEW-1", dlbm="0601"), headers={"If-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
    tag2 = r.headers["etag"]
    r = client.patch(f"{url}/NEW-1", json={"properties": {"floors": 9}}, headers={"If-Match": tag2})
    assert r.status_code == 200
    props = client.get(f"{url}/NEW-1").json()["properties"]
    assert (props["dlbm"], props["floors"]) == ("0601", 9)

    r = client.delete(f"{url}/NEW-1", headers={"If-Match": r.headers["etag"]})
    assert r.status_code == 204 and client.get(f"{url}/NEW-1").status_code == 404
    versions = client.get(f"{url}/NEW-1/versions").json()["features"]
    assert [v["properties"]["dlbm"] for v in versions] == ["0701", "0601", "0601"]  # nothing lost
    modes = [(c["mode"], c["author"]) for c in store.changesets(conn, editable)][1:]
    assert modes[0] == ("upsert", "test-gis-staff")  # the name of the caller's key
    assert modes[-1][0] == "delete" and len(modes) == 4


def test_two_officers_editing_the_same_parcel(client, editable):
    url = f"/collections/{editable}/items/LG-0001"
    tag = client.get(url).headers["etag"]
    a = client.put(url, json=feature("LG-0001", dlbm="0501", geometry=client.get(url).json()["geometry"]),
                   headers={"If-Match": tag})
    assert a.status_code == 200
    b = client.patch(url, json={"properties": {"dlbm": "1001"}}, headers={"If-Match": tag})
    assert b.status_code == 412 and b.json()["code"] == "PreconditionFailed"
    assert client.get(url).json()["properties"]["dlbm"] == "0501"  # A's edit stands; B is told
    assert client.delete(url, headers={"If-Match": tag}).status_code == 412
    assert client.put(url, json=feature("LG-0001")).status_code == 428  # no If-Match


def test_refusals(client, editable, database, conn, tmp_path):
    url = f"/collections/{editable}/items"
    assert client.post(url, json=feature("LG-0001")).status_code == 409  # exists already
    r = client.post(url, json=feature("X-1", floors="three"))
    assert r.status_code == 400 and "floors" in r.json()["description"]
    r = client.post(url, json={**feature("X-2"), "geometry": {"type": "Point", "coordinates": [114.2, 22.7]}})
    assert r.status_code == 400 and "Polygon" in r.json()["description"]
    r = client.post(url, json={**feature("X-3"), "properties": {"code": "X-3", "nope": 1}})
    assert r.status_code == 400 and "nope" in r.json()["description"]
    bowtie = {"type": "Polygon", "coordinates": [[[114.26, 22.73], [114.27, 22.74], [114.27, 22.73], [114.26, 22.74], [114.26, 22.73]]]}
    assert client.post(url, json=feature("X-4", geometry=bowtie)).status_code == 400
    other = "t_ro_" + editable[2:]
    ingest_vector(files.geojson(tmp_path / "ro"), layer=other, key="code", settings=database)
    r = client.post(f"/collections/{other}/items", json=feature("Y"))
    assert r.status_code == 405 and "editable" in r.json()["description"]
    assert store.count(conn, editable) == 20


def test_content_crs_of_the_request_body(client, editable, conn):
    lon, lat = 114.2600, 22.7300
    to4547 = Transformer.from_crs(4490, 4547, always_xy=True)
    pts = [(lon, lat), (lon + 0.0005, lat), (lon + 0.0005, lat + 0.0005), (lon, lat + 0.0005), (lon, lat)]
    ring = [list(reversed(to4547.transform(x, y))) for x, y in pts]  # EPSG:4547 is northing, easting
    r = client.post(f"/collections/{editable}/items",
                    json=feature("CRS-1", geometry={"type": "Polygon", "coordinates": [ring]}),
                    headers={"Content-Crs": "<http://www.opengis.net/def/crs/EPSG/0/4547>"})
    assert r.status_code == 201
    x, y = conn.execute(f"SELECT ST_XMin(geom), ST_YMin(geom) FROM {store.partition_name(editable)} "
                        "WHERE fid = 'CRS-1'").fetchone()
    assert (x, y) == (pytest.approx(lon, abs=1e-7), pytest.approx(lat, abs=1e-7))
