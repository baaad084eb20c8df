"""Vector tiles from the store, read by GDAL's MVT driver; grids, time travel, edits, errors."""

from __future__ import annotations

import subprocess
import uuid

import morecantile
import pytest
from fastapi.testclient import TestClient

from spatial_api import store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures import files
from tiling.vector import TMS

WM = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def tiles(database, tmp_path_factory, auth):
    tmp = tmp_path_factory.mktemp("tiles")
    suffix = uuid.uuid4().hex[:6]
    plain, versioned = f"t_tile_p_{suffix}", f"t_tile_v_{suffix}"
    ingest_vector(files.gpkg(tmp / "p"), layer=plain, key="code", valid_from="2020-01-01", settings=database)
    v = files.keyed_versions(tmp / "v")
    ingest_vector(v.v1, layer=versioned, key="code", valid_from="2020-12-31", settings=database)
    ingest_vector(v.v2, layer=versioned, valid_from="2023-12-31", settings=database)
    return {"plain": plain, "versioned": versioned, "v": v, "client": TestClient(create_app(database)),
            "editor": auth("gis-staff")}


def sql_count_in_tile(conn, layer, t, where="f.valid_to IS NULL"):
    b = WM.xy_bounds(t)
    margin = (b.right - b.left) * 64 / 4096
    return conn.execute(
        f"SELECT count(*) FROM {store.partition_name(layer)} f WHERE {where} AND ST_Intersects(f.geom_3857, "
        "ST_Expand(ST_MakeEnvelope(%s, %s, %s, %s, 3857), %s))", (b.left, b.bottom, b.right, b.top, margin)).fetchone()[0]


def gdal_features(tmp_path, body: bytes, t) -> list[str]:
    path = tmp_path / f"{t.z}_{t.x}_{t.y}.mvt"
    path.write_bytes(body)
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-q", "-oo", f"X={t.x}", "-oo", f"Y={t.y}", "-oo", f"Z={t.z}",
                          str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("=", 1)[1].strip() for line in out.stdout.splitlines() if line.strip().startswith("code (String)")]


@pytest.mark.parametrize("zoom", [15, 17])
def test_gdal_reads_the_expected_features(tiles, conn, tmp_path, zoom):
    t = WM.tile(114.2495, 22.7195, zoom)
    r = tiles["client"].get(f"/collections/{tiles['plain']}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    codes = gdal_features(tmp_path, r.content, t)
    assert len(codes) == sql_count_in_tile(conn, tiles["plain"], t) > 0
    xyz = tiles["client"].get(f"/tiles/{tiles['plain']}/{t.z}/{t.x}/{t.y}.mvt")
    assert xyz.content == r.content  # the XYZ template is the same tile


def test_tiles_as_of_a_date_and_after_an_edit(tiles, conn, tmp_path):
    import mapbox_vector_tile

    t = WM.tile(114.2495, 22.7195, 14)
    url = f"/collections/{tiles['versioned']}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"

    def codes(**params):
        body = tiles["client"].get(url, params=params).content
        layer = mapbox_vector_tile.decode(body)[tiles["versioned"]]
        return {f["properties"]["code"]: f["properties"] for f in layer["features"]}

    then, now = codes(datetime="2021-06-01"), codes()
    v = tiles["v"]
    assert set(then) == {f"P{i:03d}" for i in range(1, 11)}
    assert set(now) == {f"P{i:03d}" for i in range(1, 14)} - set(v.closed_keys)
    assert isinstance(now["P001"]["floors"], int)  # typed attributes
    store.update_layer(conn, tiles["versioned"], editable=True)
    conn.commit()
    item = tiles["client"].get(f"/collections/{tiles['versioned']}/items/P001")
    r = tiles["client"].patch(f"/collections/{tiles['versioned']}/items/P001", json={"properties": {"dlbm": "0999"}},
                              headers={"If-Match": item.headers["etag"], **tiles["editor"]})
    assert r.status_code == 200
    assert codes()["P001"]["dlbm"] == "0999"  # the next tile shows the edit


def test_cgcs2000_grid_and_multi_layer_tiles(tiles):
    c = tiles["client"]
    doc = c.get("/tileMatrixSets/CGCS2000Quad").json()
    assert doc["crs"].endswith("/4490") and doc["tileMatrices"][0]["matrixWidth"] == 2
    g = list(TMS.get("CGCS2000Quad").tiles(114.2494, 22.7194, 114.2496, 22.7196, [16]))[0]
    r = c.get(f"/collections/{tiles['plain']}/tiles/CGCS2000Quad/{g.z}/{g.y}/{g.x}")
    assert r.status_code == 200 and r.content
    t = WM.tile(114.2495, 22.7195, 14)
    import mapbox_vector_tile

    both = mapbox_vector_tile.decode(c.get(f"/tiles/{tiles['plain']},{tiles['versioned']}/{t.z}/{t.x}/{t.y}.mvt").content)
    assert set(both) == {tiles["plain"], tiles["versioned"]}
    landing = c.get("/").json()["links"]
    assert any(ln["rel"] == "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes" and ln["type"] for ln in landing)
    links = c.get(f"/collections/{tiles['plain']}/tiles/WebMercatorQuad").json()["links"]
    assert all(ln.get("type") for ln in links)
    assert any(ln["rel"] == "item" and ln["type"] == "application/vnd.mapbox-vector-tile" for ln in links)


def test_tile_errors(tiles):
    c = tiles["client"]
    base = f"/collections/{tiles['plain']}/tiles"
    assert c.get(f"{base}/WebMercatorQuad/3/99/99").status_code == 404
    assert c.get(f"{base}/NoSuchGrid/3/1/1").status_code == 404
    assert c.get(f"{base}/WebMercatorQuad/15/0/0").status_code == 204  # inside the matrix, empty
    assert c.get(f"{base}/WebMercatorQuad/15/0/0", params={"datetime": "soon"}).status_code == 400
    assert c.get("/collections/nope/tiles/WebMercatorQuad/1/0/0").status_code == 404


def test_tilejson_describes_the_xyz_tiles(tiles):
    doc = tiles["client"].get(f"/tiles/{tiles['plain']}/tilejson.json", params={"datetime": "2024-01-01"}).json()
    assert doc["tilejson"] == "3.0.0" and doc["tiles"][0].endswith(".mvt?datetime=2024-01-01")
    tz = tiles["client"].get(f"/tiles/{tiles['plain']}/tilejson.json", params={"datetime": "2024-01-01T08:00:00+08:00"})
    url = tz.json()["tiles"][0].replace("{z}/{x}/{y}", "15/26785/14258")
    assert "%2B08%3A00" in url and tiles["client"].get(url).status_code in (200, 204)  # the '+' survives
    minx, miny, maxx, maxy = doc["bounds"]
    assert 114.2 < minx < maxx < 114.3 and 22.6 < miny < maxy < 22.8
    fields = doc["vector_layers"][0]["fields"]
    assert fields["floors"] == "Number" and fields["code"] == "String"
    assert tiles["client"].get("/tiles/nope/tilejson.json").status_code == 404


def test_a_registry_change_made_elsewhere_reaches_the_next_tile(tiles, database):
    """Tiles render from the layer's definition as last read, and their statement checks that it is
    still the registry's (the row's xmin): a change by another process, unheard here (a raw UPDATE:
    no NOTIFY; no tile cache), shows at once."""
    import dataclasses

    from spatial_api import db

    name = tiles["plain"]
    c = TestClient(create_app(dataclasses.replace(database, tile_cache_mb=0)))  # no tile cache in the way
    t = WM.tile(114.2495, 22.7195, 15)
    url = f"/tiles/{name}/{t.z}/{t.x}/{t.y}.mvt"
    assert c.get(url).status_code == 200 and c.get(url).status_code == 200  # the definition is now kept

    def elsewhere(**changes):  # the registry row changed without this process hearing of it
        with db.connect(database) as other:
            other.execute("UPDATE layers SET tile_options = %s::jsonb, properties = coalesce(%s::jsonb, properties) "
                          "WHERE name = %s", (changes.get("tile_options", "{}"), changes.get("properties"), name))
            other.commit()

    elsewhere(tile_options='{"maxzoom": 14}')
    assert c.get(url).status_code == 404  # beyond the layer's new maxzoom
    elsewhere(tile_options="{}")
    assert c.get(url).status_code == 200
    assert c.get(url, params={"properties": "extra"}).status_code == 400
    with db.connect(database) as conn:
        props = store.get_layer(conn, name).properties
    elsewhere(properties=__import__("json").dumps(props + [{"name": "extra", "type": "string"}]))
    assert c.get(url, params={"properties": "extra"}).status_code in (200, 204)
    elsewhere(properties=__import__("json").dumps(props))


def test_low_zoom_tiles_of_small_layers(tiles):
    """Zooms 9–13 come from the zoom generalisations once made (tiling/generalise.py): the same
    features here, where every parcel is many pixels across, before and after."""
    import mapbox_vector_tile

    from tiling import generalise

    c, name = tiles["client"], tiles["versioned"]
    t = WM.tile(114.2495, 22.7195, 13)
    url = f"/tiles/{name}/{t.z}/{t.x}/{t.y}.mvt"

    def codes(**params):
        body = c.get(url, params=params).content
        return sorted(f["properties"]["code"] for f in mapbox_vector_tile.decode(body)[name]["features"])

    exact, exact_then = codes(), codes(datetime="2021-06-01")  # the first ones queue the generalisation
    assert generalise.wait_idle(60)
    assert codes() == exact and codes(datetime="2021-06-01") == exact_then and exact != exact_then
