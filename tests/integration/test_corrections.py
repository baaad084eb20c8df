"""Corrections in valid time (issue 14) seen from outside: late records and corrections in the
past through ingestion and the API, read back through features, versions, changes and vector
tiles (cached tiles dropped), with what was believed before still answerable."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import geopandas as gpd
import httpx
import mapbox_vector_tile
import morecantile
import pytest
import shapely

from spatial_api import store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures.server import live_server

CST = timezone(timedelta(hours=8))
WM = morecantile.tms.get("WebMercatorQuad")


def _parcels(path, rows):
    frame = gpd.GeoDataFrame({"code": [r[0] for r in rows], "dlbm": [r[1] for r in rows]},
                             geometry=[shapely.box(x, y, x + 0.002, y + 0.002) for _, _, x, y in rows],
                             crs="EPSG:4490")
    frame.to_file(path, driver="GPKG")
    return path


@pytest.fixture(scope="module")
def world(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corrections")
    layer = f"t_corr_{uuid.uuid4().hex[:6]}"
    base = [("A1", "0101", 114.250, 22.700), ("A2", "0101", 114.254, 22.700), ("A3", "0301", 114.258, 22.700)]
    ingest_vector(_parcels(tmp / "v2023.gpkg", base), layer=layer, key="code", valid_from="2023-01-01",
                  settings=database)
    changed = [("A1", "0101", 114.250, 22.700), ("A2", "0701", 114.254, 22.700), ("A3", "0301", 114.258, 22.700)]
    ingest_vector(_parcels(tmp / "v2026.gpkg", changed), layer=layer, valid_from="2026-06-30", settings=database)
    from spatial_api import db

    with db.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE layers SET editable = true WHERE name = %s", (layer,))
    return {"layer": layer, "tmp": tmp}


@pytest.fixture(scope="module")
def server(database, world):
    with live_server(create_app(database)) as url:
        yield url


def get(url, **params):
    r = httpx.get(url, params=params, timeout=60)
    assert r.status_code in (200, 204, 404), r.text
    return r


def codes(server, layer, when):
    return {f["id"]: f["properties"]["dlbm"] for f in get(f"{server}/collections/{layer}/items", datetime=when,
                                                          limit=100).json()["features"]}


def tile_codes(server, layer, when):
    t = WM.tile(114.254, 22.701, 14)
    r = get(f"{server}/collections/{layer}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}", datetime=when)
    if r.status_code == 204:
        return {}
    return {f["properties"]["code"]: f["properties"]["dlbm"]
            for lyr in mapbox_vector_tile.decode(r.content).values() for f in lyr["features"]}


def test_a_late_parcel_shows_from_its_valid_date(server, world, database, conn):
    layer = world["layer"]
    assert "L9" not in tile_codes(server, layer, "2021-06-30")  # cached now
    before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    conn.commit()
    late = _parcels(world["tmp"] / "late.gpkg", [("L9", "0601", 114.252, 22.703)])
    s = ingest_vector(late, layer=layer, mode="upsert", valid_from="2020-01-01", settings=database)
    assert s.correction and s.added == 1
    assert codes(server, layer, "2021-06-30").get("L9") == "0601"
    assert tile_codes(server, layer, "2021-06-30").get("L9") == "0601"  # the cached tile was dropped
    assert "L9" in codes(server, layer, "2026-12-01")  # and it is current
    then = {f["fid"] for f in store.features(conn, layer, at=datetime(2021, 6, 30, tzinfo=CST), known_at=before)}
    assert "L9" not in then and {f["fid"] for f in store.features(conn, layer, at=datetime(2021, 6, 30, tzinfo=CST))} \
        == then | {"L9"}


def test_a_correction_from_2024_of_a_2023_polygon_splits_its_history(server, world, database, conn):
    layer = world["layer"]
    assert tile_codes(server, layer, "2024-09-01")["A3"] == "0301"  # cached
    before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    conn.commit()
    fixed = _parcels(world["tmp"] / "fix.gpkg", [("A3", "1001", 114.258, 22.700)])
    s = ingest_vector(fixed, layer=layer, mode="upsert", valid_from="2024-01-01", settings=database)
    assert s.correction and s.changed == 1
    assert codes(server, layer, "2023-06-30")["A3"] == "0301"
    assert codes(server, layer, "2024-09-01")["A3"] == "1001"
    assert codes(server, layer, "2026-12-01")["A3"] == "1001"  # no later change: the correction holds
    assert tile_codes(server, layer, "2023-06-30")["A3"] == "0301"
    assert tile_codes(server, layer, "2024-09-01")["A3"] == "1001"
    versions = get(f"{server}/collections/{layer}/items/A3/versions").json()["features"]
    believed = [(v["time"]["interval"], v["properties"]["dlbm"]) for v in versions if v["geotwin:version"]["believed"]]
    assert [d for _, d in believed] == ["0301", "1001"]
    assert datetime.fromisoformat(believed[0][0][1]) == datetime(2024, 1, 1, tzinfo=CST)
    assert believed[1][0] == [believed[0][0][1], ".."]
    # both axes: the 2023 version was recorded at its load; its end (2024) was learnt now
    first = versions[0]["geotwin:version"]
    assert datetime.fromisoformat(first["recorded"]) < before < datetime.fromisoformat(first["endRecorded"])
    ch = get(f"{server}/collections/{layer}/changes", **{"from": "2023-06-30", "to": "2024-09-01"}).json()
    assert [f["id"] for f in ch["features"]] == ["A3"]
    # what was believed before the correction
    old = {f["fid"]: f["properties"]["dlbm"] for f in store.features(conn, layer, at=datetime(2024, 9, 1, tzinfo=CST),
                                                                        known_at=before)}
    assert old["A3"] == "0301"


def test_api_edits_and_removals_valid_from_the_past(server, world, auth):
    layer, url = world["layer"], f"{server}/collections/{world['layer']}/items"
    # A2 changed 0101 → 0701 in 2026; an officer records that it was 1001 from 2025
    tag = httpx.get(f"{url}/A2", timeout=30).headers["ETag"]
    r = httpx.patch(f"{url}/A2", params={"valid_from": "2025-03-01"}, json={"properties": {"dlbm": "1001"}},
                    headers={**auth("gis-staff"), "If-Match": tag, "Content-Type": "application/merge-patch+json"},
                    timeout=30)
    assert r.status_code == 200, r.text
    assert codes(server, layer, "2024-12-31")["A2"] == "0101"
    assert codes(server, layer, "2025-06-30")["A2"] == "1001"
    assert codes(server, layer, "2026-12-01")["A2"] == "0701"  # the 2026 change stays as recorded
    versions = get(f"{url}/A2/versions").json()["features"]
    gone = [v for v in versions if not v["geotwin:version"]["believed"]]  # [2023, 2026) no longer believed
    assert len(gone) == 1 and gone[0]["properties"]["dlbm"] == "0101" and gone[0]["geotwin:version"]["supersededAt"]
    assert [v["properties"]["dlbm"] for v in versions if v["geotwin:version"]["believed"]] == ["0101", "1001", "0701"]
    # A1 was removed from 2025 (recorded now)
    tag = httpx.get(f"{url}/A1", timeout=30).headers["ETag"]
    r = httpx.delete(f"{url}/A1", params={"valid_from": "2025-01-01"}, headers={**auth("gis-staff"), "If-Match": tag},
                     timeout=30)
    assert r.status_code == 204, r.text
    assert "A1" in codes(server, layer, "2024-12-31") and "A1" not in codes(server, layer, "2025-06-30")
    assert "A1" not in codes(server, layer, "2026-12-01")
