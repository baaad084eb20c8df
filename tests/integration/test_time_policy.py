"""One time policy (issue 12, item 7): a date-time without an offset means district time
(GEOTWIN_TIMEZONE, default Asia/Shanghai) at every entry point — features, versions, changes,
vector tiles, TileJSON, styles, imagery tiles and items, CQL2 TIMESTAMP literals and the CLI.

The data changes at 2024-06-30T08:00+08:00 (= 00:00Z). The naive instant 06:00 is before the change
in Shanghai (22:00Z the day before) and after it in UTC (06:00Z): every endpoint must answer for
06:00 exactly what it answers for 06:00+08:00, and not what it answers for 06:00Z.
"""

from __future__ import annotations

import uuid
from urllib.parse import unquote
from datetime import datetime, timedelta, timezone

import httpx
import mapbox_vector_tile
import morecantile
import pytest

from spatial_api import store
from spatial_api.api import time as timepolicy
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from spatial_api.ingest.imagery import ingest_imagery
from tests.fixtures import files
from tests.fixtures.server import live_server
from tests.integration.test_imagery import SIZE, X0, Y0, _texture, write_plain

CHANGE = "2024-06-30T08:00:00+08:00"
NAIVE = "2024-06-30T06:00:00"
SHANGHAI, UTC = NAIVE + "+08:00", NAIVE + "Z"
CST = timezone(timedelta(hours=8))
WM = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def world(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timepolicy")
    sfx = uuid.uuid4().hex[:6]
    layer, ortho = f"t_tz_{sfx}", f"ortho_tz_{sfx}"
    v = files.keyed_versions(tmp)
    ingest_vector(v.v1, layer=layer, key="code", valid_from="2024-01-01", settings=database)
    ingest_vector(v.v2, layer=layer, valid_from=CHANGE, settings=database)
    image = write_plain(tmp / "ortho.tif", _texture(SIZE // 4, SIZE // 4, 7))
    ingest_imagery(image, collection=ortho, datetime_=CHANGE, kind="ortho", cog_dir=tmp / "cogs", settings=database)
    return {"layer": layer, "ortho": ortho, "versions": v}


@pytest.fixture(scope="module")
def server(database, world):
    with live_server(create_app(database)) as url:
        yield url


def get(url: str, **params) -> httpx.Response:
    return httpx.get(url, params=params, timeout=60)


def three(fetch):
    """What an endpoint answers for the naive instant, the same instant in Shanghai, and in UTC."""
    return fetch(NAIVE), fetch(SHANGHAI), fetch(UTC)


def assert_district_time(fetch):
    naive, shanghai, utc = three(fetch)
    assert shanghai != utc, "the test data must tell the two readings apart"
    assert naive == shanghai


def test_parser_rules():
    z = timepolicy.zone("Asia/Shanghai")
    assert timepolicy.parse_instant(NAIVE, tz="Asia/Shanghai") == datetime(2024, 6, 30, 6, tzinfo=z)
    assert timepolicy.parse_instant(UTC, tz="Asia/Shanghai") == datetime(2024, 6, 30, 6, tzinfo=timezone.utc)
    assert timepolicy.parse_instant("2024-06-30", day="start", tz="Asia/Shanghai") == datetime(2024, 6, 30, tzinfo=z)
    assert timepolicy.parse_instant("2024-06-30", tz="Asia/Shanghai") == datetime(2024, 7, 1, tzinfo=z) - timedelta(microseconds=1)
    start, end, interval = timepolicy.parse_interval("2024-01-01/2024-06-30", tz="Asia/Shanghai")
    assert interval and start == datetime(2024, 1, 1, tzinfo=z) and end.date() == datetime(2024, 6, 30).date()
    assert timepolicy.parse_instant("..") is None
    assert timepolicy.to_instant(datetime(2024, 6, 30, 6), "--as-of", tz="Europe/Berlin").utcoffset() == timedelta(hours=2)
    for bad in ("yesterday", "20240630", "2024-02-30", "2024-06-30T25:00", "2024-W26-1"):
        with pytest.raises(timepolicy.TimeError, match="datetime"):
            timepolicy.parse_instant(bad)


def test_features_items_and_item(server, world):
    url = f"{server}/collections/{world['layer']}"
    assert_district_time(lambda t: sorted(f["properties"]["code"] for f in get(url + "/items", datetime=t, limit=100)
                                          .json()["features"]))
    changed = world["versions"].changed_keys[0]
    assert_district_time(lambda t: get(f"{url}/items/{changed}", datetime=t).json()["properties"])
    assert_district_time(lambda t: get(url + "/items", datetime=f"{t}/..", limit=100).json()["numberReturned"] > 0
                         and sorted(f["properties"]["code"] for f in get(url + "/items", datetime=f"../{t}", limit=100)
                                    .json()["features"]))


def test_changes_between_two_naive_instants(server, world):
    url = f"{server}/collections/{world['layer']}/changes"

    def changes(t):
        doc = get(url, **{"from": "2024-03-01T00:00:00" + t[len(NAIVE):], "to": t}).json()
        return sorted((f["properties"].get("change") or f.get("change") or "", f["id"]) for f in doc["features"])
    assert_district_time(changes)


def test_cql2_timestamp_literal(server, world, conn):
    # the layer's stored valid_from is a property-free way to see the literal's instant: compare a
    # TIMESTAMP literal through T_BEFORE/T_AFTER of the interval literal with itself
    url = f"{server}/collections/{world['layer']}/items"

    def matched(t):
        r = get(url, filter=f"T_AFTER(TIMESTAMP('{t}'), TIMESTAMP('2024-06-29T23:00:00Z'))", limit=1)
        assert r.status_code == 200, r.text
        return r.json()["numberReturned"]
    assert_district_time(matched)


def _tile_over(server, layer, z=12):
    ext = get(f"{server}/collections/{layer}").json()["extent"]["spatial"]["bbox"][0]
    return WM.tile((ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2, z)


def test_vector_tiles_and_tilejson(server, world):
    t = _tile_over(server, world["layer"])
    url = f"{server}/collections/{world['layer']}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"

    def codes(when):
        r = get(url, datetime=when)
        if r.status_code == 204:
            return []
        assert r.status_code == 200, r.text
        layers = mapbox_vector_tile.decode(r.content)
        return sorted(f["properties"].get("code") for lyr in layers.values() for f in lyr["features"])
    assert_district_time(codes)
    tj = get(f"{server}/tiles/{world['layer']}/tilejson.json", datetime=NAIVE)
    assert tj.status_code == 200, tj.text
    assert f"datetime={NAIVE}" in unquote(tj.json()["tiles"][0])  # the tile URLs keep the instant as asked


def test_imagery_tiles_and_items(server, world):
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(4547, 4326, always_xy=True).transform(X0 + SIZE / 4, Y0 - SIZE / 4)
    t = WM.tile(lon, lat, 15)
    url = f"{server}/imagery/collections/{world['ortho']}"

    def tile(when):
        r = get(f"{url}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png", datetime=when)
        return r.status_code, r.content if r.status_code == 200 else b""
    assert_district_time(tile)
    assert_district_time(lambda when: [i["id"] for i in get(f"{url}/items", datetime=when).json()["items"]])


def test_styles_accept_the_naive_instant(server, world):
    r = get(f"{server}/styles/district", datetime=NAIVE)
    assert r.status_code == 200, r.text
    assert get(f"{server}/styles/district", datetime="2024-06-31T06:00:00").status_code == 400


def test_cli_valid_from_is_district_time(database, world, tmp_path, conn):
    import os
    import subprocess
    import sys

    layer = f"t_tzcli_{uuid.uuid4().hex[:6]}"
    src = files.keyed_versions(tmp_path).v1
    # a subprocess: the ingest command leaves with os._exit once its work is committed
    r = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "vector", str(src), "--layer", layer,
                        "--key", "code", "--valid-from", NAIVE], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema})
    assert r.returncode == 0, r.stdout + r.stderr
    got = conn.execute(f"SELECT min(valid_from) FROM {store.partition_name(layer)}").fetchone()[0]
    assert got == datetime(2024, 6, 30, 6, tzinfo=CST)
