"""Desktop-GIS subscriptions read by real clients: GDAL's WMTS driver and OWSLib on the WMTS
capabilities and KVP GetTile."""

from __future__ import annotations

import re
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
    import httpx
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
