"""Desktop-GIS subscriptions read by real clients: GDAL's WMTS driver and OWSLib on the WMTS
capabilities and KVP GetTile."""

from __future__ import annotations

import re

import httpx
import subprocess
import uuid

import pytest

from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures import files
from tests.fixtures.server import live_server


@pytest.fixture(scope="module")
def served(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wmts")
    name = f"t_wmts_{uuid.uuid4().hex[:6]}"
    ingest_vector(files.gpkg(tmp / "p"), layer=name, key="code", title_zh="测试地块", valid_from="2024-01-01",
                  settings=database)
    hidden = f"t_wmts_h_{uuid.uuid4().hex[:6]}"
    ingest_vector(files.geojson(tmp / "h"), layer=hidden, key="code", access_level="restricted", settings=database)
    with live_server(create_app(database)) as url:
        yield {"url": url, "layer": name, "hidden": hidden}


def test_gdal_wmts_lists_the_layers(served):
    url = f"WMTS:{served['url']}/wmts/1.0.0/WMTSCapabilities.xml"
    out = subprocess.run(["gdalinfo", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = re.findall(r"SUBDATASET_\d+_NAME=(.*)", out.stdout)
    assert any(f"layer={served['layer']}" in n for n in names), out.stdout[:2000]
    assert not any(served["hidden"] in n for n in names)
    assert any("tilematrixset=CGCS2000Quad" in n for n in names)


def test_owslib_reads_capabilities_rest_and_kvp(served):
    from owslib.wmts import WebMapTileService

    for cap in (f"{served['url']}/wmts/1.0.0/WMTSCapabilities.xml",
                f"{served['url']}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"):
        wmts = WebMapTileService(cap)
        layer = wmts.contents[served["layer"]]
        assert layer.title == "测试地块" and "application/vnd.mapbox-vector-tile" in layer.formats
        assert set(wmts.tilematrixsets) == {"WebMercatorQuad", "CGCS2000Quad"}
        assert wmts.tilematrixsets["CGCS2000Quad"].tilematrix["0"].topleftcorner == (90.0, -180.0)
        lims = layer.tilematrixsetlinks["WebMercatorQuad"].tilematrixlimits
        assert "16" in lims
    # KVP GetTile for a vector layer gives the tile.
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(114.2495, 22.7195, 16)
    r = httpx.get(f"{served['url']}/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetTile", "LAYER": served["layer"],
                                                  "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": t.z,
                                                  "TILEROW": t.y, "TILECOL": t.x,
                                                  "FORMAT": "application/vnd.mapbox-vector-tile"},
                  follow_redirects=True, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    bad = httpx.get(f"{served['url']}/wmts", params={"REQUEST": "GetTile", "LAYER": served["hidden"],
                                                    "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": 1,
                                                    "TILEROW": 0, "TILECOL": 0}, timeout=30)
    assert bad.status_code == 400 and "ExceptionReport" in bad.text


@pytest.fixture(scope="module")
def imaged(database, tmp_path_factory):
    """A small imagery collection (one dated COG, 2 km of Longgang in EPSG:4547) in the catalogue."""
    from spatial_api.ingest.imagery import ingest_imagery
    from tests.integration.test_imagery import _texture, write_plain

    tmp = tmp_path_factory.mktemp("ogcapi-imagery")
    cid = f"t_ortho_{uuid.uuid4().hex[:6]}"
    ingest_imagery(write_plain(tmp / "ortho.tif", _texture(1000, 1000, 7)), collection=cid, datetime_="2024-05-01",
                   kind="ortho", title_zh="测试正射影像", settings=database)
    with live_server(create_app(database)) as url:
        yield {"url": url, "cid": cid}


def test_gdal_ogcapi_driver_opens_a_tiled_imagery_collection(imaged):
    """GDAL's OGCAPI driver follows the collection's tilesets-map link, the tileset's tiling-scheme
    and item links, and opens the collection as a georeferenced raster on the chosen grid.
    (Debian 12's GDAL 3.6 then mis-numbers the tile columns it requests when tileMatrixSetLimits
    do not start at column 0, and has no vector-tiles branch at all: desktop GIS reads geotwin's
    tiles through WMTS, tested above, or XYZ.)"""
    import json

    url = f"OGCAPI:{imaged['url']}/imagery/collections/{imaged['cid']}"
    opts = ["-oo", "API=TILES", "-oo", "TILEMATRIXSET=CGCS2000Quad", "-oo", "TILEMATRIX=15"]
    info = subprocess.run(["gdalinfo", "-json", *opts, url], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert len(doc["bands"]) == 4 and doc["size"][0] > 0  # PNG tiles: RGBA
    assert "4490" in json.dumps(doc["coordinateSystem"]) or "CGCS" in doc["coordinateSystem"]["wkt"]
    west, north = doc["geoTransform"][0], doc["geoTransform"][3]
    assert 114.2 < west < 114.3 and 22.6 < north < 22.8  # on the collection, in lon/lat
    sets = httpx.get(f"{imaged['url']}/imagery/collections/{imaged['cid']}/map/tiles/CGCS2000Quad").json()
    assert {ln["type"] for ln in sets["links"] if ln["rel"] == "item"} == {"image/png", "image/jpeg"}
    template = next(ln["href"] for ln in sets["links"] if ln["rel"] == "item" and ln["type"] == "image/png")
    lim = next(x for x in sets["tileMatrixSetLimits"] if x["tileMatrix"] == "15")
    tile = httpx.get(template.replace("{tileMatrix}", "15").replace("{tileRow}", str(lim["minTileRow"] + 1))
                     .replace("{tileCol}", str(lim["minTileCol"] + 1)))
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"  # the template leads to pixels
