"""Desktop-GIS subscriptions read by real clients: GDAL's WMTS driver and OWSLib on the WMTS
capabilities and KVP GetTile."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def sparse(database, tmp_path_factory):
    """An imagery collection of two 1 km images 6 km apart: its extent (and so its WMTS layer) has
    an empty middle, where every tile is outside the data."""
    from spatial_api.ingest.imagery import ingest_imagery
    from tests.integration.test_imagery import X0, Y0, _texture, write_plain

    tmp = tmp_path_factory.mktemp("sparse-imagery")
    cid = f"t_sparse_{uuid.uuid4().hex[:6]}"
    for i, (dx, date) in enumerate(((0.0, "2024-05-01"), (6000.0, "2024-05-02"))):
        ingest_imagery(write_plain(tmp / f"part{i}.tif", _texture(500, 500, 11 + i), x0=X0 + dx, y0=Y0),
                       collection=cid, datetime_=date, kind="ortho", settings=database)
    with live_server(create_app(database)) as url:
        yield {"url": url, "cid": cid, "tmp": tmp}


def test_gdal_reads_tiles_outside_the_data_through_wmts_without_errors(sparse):
    """Issue 12 item 8, seen from GDAL's WMTS driver made as strict as QGIS: with ZeroBlockHttpCodes
    set to a code the server never sends, a 204 without an image (what QGIS logs as "Returned image
    is flawed") fails the read; transparent PNG tiles read as pixels with alpha 0."""
    import numpy as np
    import rasterio
    from pyproj import Transformer

    from tests.integration.test_imagery import X0, Y0

    xml = sparse["tmp"] / "strict.xml"
    xml.write_text(
        "<GDAL_WMTS>"
        f"<GetCapabilitiesUrl>{sparse['url']}/wmts/1.0.0/WMTSCapabilities.xml</GetCapabilitiesUrl>"
        f"<Layer>{sparse['cid']}</Layer><TileMatrixSet>WebMercatorQuad</TileMatrixSet><TileMatrix>15</TileMatrix>"
        f"<Format>image/png</Format><BandsCount>4</BandsCount><Cache><Path>{sparse['tmp'] / 'cache'}</Path></Cache>"
        "<ZeroBlockHttpCodes>418</ZeroBlockHttpCodes><ZeroBlockOnServerException>false</ZeroBlockOnServerException>"
        "</GDAL_WMTS>", encoding="utf-8")
    to_merc = Transformer.from_crs(4547, 3857, always_xy=True)
    # the empty middle, 2.2 to 4.8 km east of the west image (which ends 1 km east of X0)
    (x0, x1), (y0, y1) = to_merc.transform([X0 + 2200, X0 + 4800], [Y0 - 800, Y0 - 200])
    out = sparse["tmp"] / "middle.tif"
    run = subprocess.run(["gdal_translate", "-projwin", str(x0), str(y1), str(x1), str(y0), str(xml), str(out)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GDAL_HTTP_TIMEOUT": "60", "CPL_DEBUG": "OFF"})
    assert run.returncode == 0 and "ERROR" not in run.stderr, run.stderr[-2000:]
    with rasterio.open(out) as ds:
        assert ds.count == 4 and ds.width > 100
        assert ds.read(4).max() == 0  # nothing there: transparent, not an error and not black
    # a window over the west image still reads its pixels (the test is not blind)
    (x0, x1), (y0, y1) = to_merc.transform([X0 + 200, X0 + 800], [Y0 - 800, Y0 - 200])
    run = subprocess.run(["gdal_translate", "-projwin", str(x0), str(y1), str(x1), str(y0), str(xml), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    with rasterio.open(out) as ds:
        assert ds.read(4).min() == 255 and np.std(ds.read(1)) > 10
