"""The tile cache: hits without the database, ETag / 304, exact invalidation by a changeset (in this
process and from another process through NOTIFY), the disk cache across restarts, the listener
surviving a lost connection; per-layer zoom range and per-zoom feature caps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import geopandas as gpd
import mapbox_vector_tile
import morecantile
import pytest
import shapely
from fastapi.testclient import TestClient

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tiling.cache import TileCache

WM = morecantile.tms.get("WebMercatorQuad")
# Three parcels ~2 km apart in Longgang, each ~60 m across: at z16 each has its own tile.
SITES = [(114.2400, 22.7100), (114.2600, 22.7200), (114.2800, 22.7300)]


def parcels_file(path, sizes=(60, 60, 60), names=("甲", "乙", "丙")):
    geoms = [shapely.box(x, y, x + s / 1e5, y + s / 1e5) for (x, y), s in zip(SITES, sizes)]
    frame = gpd.GeoDataFrame({"code": ["A", "B", "C"], "name": list(names), "rank": [3, 1, 2]},
                             geometry=geoms, crs="EPSG:4490")
    frame.to_file(path, driver="GeoJSON")
    return path


def props(body: bytes, layer: str) -> dict:
    if not body:
        return {}
    decoded = mapbox_vector_tile.decode(body)
    return {f["properties"]["code"]: f["properties"] for f in decoded.get(layer, {}).get("features", [])}


@pytest.fixture()
def site(database, tmp_path, auth):
    name = f"t_cache_{uuid.uuid4().hex[:8]}"
    ingest_vector(parcels_file(tmp_path / "v1.geojson"), layer=name, key="code", valid_from="2024-01-01",
                  settings=database)
    with db.connect(database) as conn:
        store.update_layer(conn, name, editable=True)
        conn.commit()
    # GIS staff edit; the cache behaves the same for every caller who may see the layer.
    yield {"name": name, "client": TestClient(create_app(database), headers=auth("gis-staff")), "tmp": tmp_path,
           "settings": database}


def tile_url(name, lon, lat, z):
    t = WM.tile(lon, lat, z)
    return f"/collections/{name}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"


def stats(client):
    return client.get("/tiles/cache").json()


def test_hits_etag_and_304(site):
    c, name = site["client"], site["name"]
    url = tile_url(name, *SITES[0], 16)
    first = c.get(url)
    assert first.status_code == 200 and "A" in props(first.content, name)
    before = stats(c)
    second = c.get(url)
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert stats(c)["hits"] == before["hits"] + 1
    assert "must-revalidate" in second.headers["cache-control"]
    assert c.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert c.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200


def test_an_edit_drops_exactly_the_tiles_it_touches(site):
    c, name = site["client"], site["name"]
    a16, b16, a10 = tile_url(name, *SITES[0], 16), tile_url(name, *SITES[1], 16), tile_url(name, *SITES[0], 10)
    other = f"t_cache_o_{uuid.uuid4().hex[:8]}"  # a second layer: the multi-layer tile holds both
    ingest_vector(parcels_file(site["tmp"] / "other.geojson", names=("丁", "戊", "己")), layer=other, key="code",
                  valid_from="2024-01-01", settings=site["settings"])
    multi = WM.tile(*SITES[0], 16)
    multi_url = f"/tiles/{name},{other}/{multi.z}/{multi.x}/{multi.y}.mvt"
    for u in (a16, b16, a10, multi_url):
        assert c.get(u).status_code == 200
    assert c.get(a16).headers["etag"]
    hits = stats(c)["hits"]
    item = c.get(f"/collections/{name}/items/A")
    r = c.patch(f"/collections/{name}/items/A", json={"properties": {"name": "甲改"}},
                headers={"If-Match": item.headers["etag"]})
    assert r.status_code == 200
    # The next request of every tile touching A shows the edit; B's tile is still a cache hit.
    assert props(c.get(a16).content, name)["A"]["name"] == "甲改"
    assert props(c.get(a10).content, name)["A"]["name"] == "甲改"
    assert props(c.get(multi_url).content, name)["A"]["name"] == "甲改"
    after = stats(c)
    assert props(c.get(b16).content, name)["B"]["name"] == "乙"
    assert stats(c)["hits"] == after["hits"] + 1 and after["hits"] == hits  # a16, a10, multi were misses
    # Moving a feature: tiles of its old and its new place are both refreshed.
    b_old = tile_url(name, *SITES[1], 16)
    c.get(b_old)
    item = c.get(f"/collections/{name}/items/B")
    x, y = SITES[2]
    moved = shapely.geometry.mapping(shapely.box(x + 0.0002, y, x + 0.0008, y + 0.0006))
    r = c.patch(f"/collections/{name}/items/B", json={"geometry": moved}, headers={"If-Match": item.headers["etag"]})
    assert r.status_code == 200
    assert "B" not in props(c.get(b_old).content, name)
    assert "B" in props(c.get(tile_url(name, *SITES[2], 16)).content, name)


def test_a_changeset_from_another_process_reaches_the_cache(site, database):
    c, name, tmp = site["client"], site["name"], site["tmp"]
    url_c = tile_url(name, *SITES[2], 16)
    url_a = tile_url(name, *SITES[0], 16)
    assert props(c.get(url_c).content, name)["C"]["name"] == "丙"
    c.get(url_a)
    before = stats(c)
    v2 = parcels_file(tmp / "v2.geojson", names=("甲", "乙", "丙二"))
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    out = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "vector", str(v2), "--layer", name,
                          "--valid-from", "2025-01-01"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    # The other process's changeset arrives by NOTIFY (delivered at its commit): wait until it has
    # been applied — within 5 s — then C's tile is fresh and A's is still cached.
    deadline = time.time() + 5
    while stats(c)["dropped"] == before["dropped"] and time.time() < deadline:
        time.sleep(0.01)
    hits = stats(c)["hits"]
    assert props(c.get(url_c).content, name)["C"]["name"] == "丙二"
    assert props(c.get(url_a).content, name)["A"]["name"] == "甲"
    assert stats(c)["hits"] == hits + 1  # A's tile survived the other process's changeset


def test_listener_survives_a_lost_connection(site, database):
    """PostgreSQL drops the listener's connection: tiles keep being right (the cache is bypassed
    until the listener is back and has caught up), and later changesets still reach the cache."""
    c, name, tmp = site["client"], site["name"], site["tmp"]
    url = tile_url(name, *SITES[1], 16)
    assert props(c.get(url).content, name)["B"]["name"] == "乙"
    with db.connect(database, autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'geotwin-tile-listener'").fetchone()[0]
    assert killed >= 1
    v2 = parcels_file(tmp / "v2.geojson", names=("甲", "乙二", "丙"))
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    out = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "vector", str(v2), "--layer", name,
                          "--valid-from", "2025-01-01"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert props(c.get(url).content, name)["B"]["name"] == "乙二"
    deadline = time.time() + 10
    while c.get("/tiles/cache").json().get("listening") is not True and time.time() < deadline:
        time.sleep(0.1)
    assert c.get("/tiles/cache").json()["listening"] is True
    assert props(c.get(url).content, name)["B"]["name"] == "乙二"


def test_disk_cache_catches_up_after_a_restart(database, tmp_path):
    from tiling.cache import Invalidator, TileKey

    name = f"t_disk_{uuid.uuid4().hex[:8]}"
    ingest_vector(parcels_file(tmp_path / "v1.geojson"), layer=name, key="code", valid_from="2024-01-01",
                  settings=database)
    disk = tmp_path / "tiles"
    settings = database.replace(tile_cache_dir=disk)
    c = TestClient(create_app(settings))
    urls = [tile_url(name, *s, 16) for s in SITES]
    bodies = [c.get(u).content for u in urls]
    assert len(list(disk.rglob("*.mvt"))) == 3
    # The server is stopped; another process changes C; a new server starts on the same folder.
    c.app.state.tile_invalidator.stop()
    v2 = parcels_file(tmp_path / "v2.geojson", names=("甲", "乙", "丙新"))
    ingest_vector(v2, layer=name, valid_from="2025-01-01", settings=database)
    fresh = TileCache(1 << 20, disk)
    assert len(fresh.keys_of(name)) == 3
    inv = Invalidator(fresh, settings)
    inv.start()
    try:
        assert len(fresh.keys_of(name)) == 2  # exactly C's tile went
        left = {k.x for k in fresh.keys_of(name)}
        assert WM.tile(*SITES[2], 16).x not in left
        key = TileKey((name,), "WebMercatorQuad", 16, WM.tile(*SITES[0], 16).x, WM.tile(*SITES[0], 16).y, "")
        assert fresh.get(key).body == bodies[0]
    finally:
        inv.stop()


def test_zoom_range_and_feature_caps(database, tmp_path):
    name = f"t_zoom_{uuid.uuid4().hex[:8]}"
    ingest_vector(parcels_file(tmp_path / "v1.geojson", sizes=(60, 200, 120)), layer=name, key="code",
                  valid_from="2024-01-01", settings=database)
    c = TestClient(create_app(database))
    z9 = tile_url(name, *SITES[0], 9)  # one tile holds all three
    assert set(props(c.get(z9).content, name)) == {"A", "B", "C"}
    with db.connect(database) as conn:
        store.update_layer(conn, name, tile_options={"minzoom": 8, "maxzoom": 14, "max_features": {"9": 2}})
        conn.commit()
    deadline = time.time() + 5  # registry changes reach the cache through NOTIFY
    while set(props(c.get(z9).content, name)) != {"B", "C"} and time.time() < deadline:
        time.sleep(0.05)
    assert set(props(c.get(z9).content, name)) == {"B", "C"}  # the two largest
    assert c.get(tile_url(name, *SITES[0], 16)).status_code == 404
    assert c.get(tile_url(name, *SITES[0], 7)).status_code == 404
    assert set(props(c.get(tile_url(name, *SITES[0], 8)).content, name)) == {"B", "C"}  # capped at ≤ 9 too
    assert "A" in props(c.get(tile_url(name, *SITES[0], 10)).content, name)  # no cap above 9
    tj = c.get(f"/tiles/{name}/tilejson.json").json()
    assert (tj["minzoom"], tj["maxzoom"]) == (8, 14)
    limits = c.get(f"/collections/{name}/tiles/WebMercatorQuad").json()["tileMatrixSetLimits"]
    assert [lim["tileMatrix"] for lim in limits] == [str(z) for z in range(8, 15)]
    with db.connect(database) as conn:
        store.update_layer(conn, name, tile_options={"max_features": {"12": 1}, "priority": "rank"})
        conn.commit()
    deadline = time.time() + 5
    while set(props(c.get(z9).content, name)) != {"A"} and time.time() < deadline:
        time.sleep(0.05)
    assert set(props(c.get(z9).content, name)) == {"A"}  # highest rank first
    with db.connect(database) as conn:
        with pytest.raises(Exception, match="maxzoom"):
            store.update_layer(conn, name, tile_options={"minzoom": 15, "maxzoom": 3})
