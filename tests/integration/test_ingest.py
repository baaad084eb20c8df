"""`geotwin ingest vector` end to end on the real PostGIS: every format, encodings, CRSs,
repair, failures that leave the layer whole, replace by key, as-of and diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from spatial_api import store
from spatial_api.ingest import IngestError, ingest_vector
from tests.fixtures import files

CST = timezone(timedelta(hours=8))
TO_4547 = Transformer.from_crs(4490, 4547, always_xy=True)


def stored(conn, layer: str, **kw) -> dict[str, dict]:
    return {f["fid"]: f for f in store.features(conn, layer, **kw)}


def state(conn, layer: str):
    """Everything a failed ingest must leave untouched."""
    return (store.get_layer(conn, layer), store.changesets(conn, layer),
            sorted((f["fid"], f["vid"], f["valid_to"]) for f in store.features(conn, layer)),
            store.count(conn, layer, at=datetime(2000, 1, 1, tzinfo=CST)))


FORMATS = {
    "geojson": (files.geojson, "code"),
    "gpkg": (files.gpkg, "code"),
    "shapefile": (files.shapefile, "code"),
    "zipped_shapefile": (files.zipped_shapefile, "code"),
    "csv_wkt": (files.csv_wkt, "code"),
    "csv_lonlat": (files.csv_lonlat, "编号"),
    "filegdb": (files.filegdb, "code"),
    "kml": (files.kml, "code"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_lands_in_cgcs2000(fmt, tmp_path, conn, layer_name, database):
    make, key = FORMATS[fmt]
    path = make(tmp_path)
    kw = {"source_layer": "parcels"} if fmt == "filegdb" else {}
    s = ingest_vector(path, layer=layer_name, key=key, valid_from="2024-01-01", settings=database, **kw)
    # csv_lonlat's row 5 has no coordinates: rejected and listed, the rest loaded
    assert s.new_layer and s.added > 0 and s.rejected == (1 if fmt == "csv_lonlat" else 0)
    if fmt == "csv_lonlat":
        assert s.rejected_rows == [{"row": 5, "reason": s.rejected_rows[0]["reason"], "key": "005"}]
    rows = stored(conn, layer_name)
    assert len(rows) == s.added == s.current_total
    geoms = shapely.from_wkt([r["geometry"] for r in rows.values()])
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    # Longgang, in degrees: the file's CRS (metres in some) was honoured
    assert 113.9 < minx <= maxx < 114.6 and 22.5 < miny <= maxy < 22.9
    layer = store.get_layer(conn, layer_name)
    assert layer.key_field == key and key in layer.schema


def test_gbk_shapefile_without_cpg_keeps_chinese_text(tmp_path, conn, layer_name, database):
    path = files.gbk_shapefile_without_cpg(tmp_path)
    assert not path.with_suffix(".cpg").exists()
    s = ingest_vector(path, layer=layer_name, key="编号", settings=database)
    assert s.encoding and s.encoding.lower().replace("-", "") in ("gbk", "gb18030", "cp936")
    rows = stored(conn, layer_name).values()
    assert {r["properties"]["名称"] for r in rows} == set(files.POINT_NAMES)
    assert all(r["properties"]["街道"] in files.STREETS for r in rows)


@pytest.mark.parametrize("maker,kw", [(files.epsg4547_points, {}),
                                      (files.gcj02_points, {"from_gcj02": True})])
def test_projected_and_gcj02_points_within_half_a_metre(maker, kw, tmp_path, conn, layer_name, database):
    path, expected = maker(tmp_path)
    ingest_vector(path, layer=layer_name, key="name", settings=database, **kw)
    rows = stored(conn, layer_name)
    for name, (lon, lat) in zip(files.POINT_NAMES, expected):
        p = shapely.from_wkt(rows[name]["geometry"])
        ex, ey = TO_4547.transform(lon, lat)
        gx, gy = TO_4547.transform(p.x, p.y)
        assert np.hypot(gx - ex, gy - ey) < 0.5, (name, gx - ex, gy - ey)


def test_gcj02_without_the_flag_is_off_by_hundreds_of_metres(tmp_path, conn, layer_name, database):
    # The check above is not vacuous: the raw GCJ-02 coordinates are ~600 m away.
    path, expected = files.gcj02_points(tmp_path)
    ingest_vector(path, layer=layer_name, key="name", settings=database)
    p = shapely.from_wkt(stored(conn, layer_name)[files.POINT_NAMES[0]]["geometry"])
    ex, ey = TO_4547.transform(*expected[0])
    gx, gy = TO_4547.transform(p.x, p.y)
    assert 300 < np.hypot(gx - ex, gy - ey) < 1000


def test_invalid_polygon_is_repaired_and_counted(tmp_path, conn, layer_name, database):
    s = ingest_vector(files.invalid_polygon(tmp_path), layer=layer_name, key="code", settings=database)
    assert s.repaired == 1 and s.repaired_rows == [files.BOWTIE_ROW] and s.added == 3
    part = store.partition_name(layer_name)
    assert conn.execute(f"SELECT bool_and(ST_IsValid(geom)) FROM {part}").fetchone()[0] is True
    area = conn.execute(f"SELECT ST_Area(geom) FROM {part} WHERE fid = 'B-2'").fetchone()[0]
    assert area > 0  # the bow-tie kept both triangles


def test_empty_geometries_rejected_and_listed_and_not_closed(tmp_path, conn, layer_name, database):
    path = files.empty_geometry(tmp_path)
    s = ingest_vector(path, layer=layer_name, key="code", settings=database, valid_from="2024-01-01")
    assert s.added == 3 and [r["row"] for r in s.rejected_rows] == list(files.EMPTY_ROWS)
    assert all("empty" in r["reason"] for r in s.rejected_rows)
    assert set(stored(conn, layer_name)) == {"E-1", "E-3", "E-5"}


def _load_v1(tmp_path, layer, database):
    v = files.keyed_versions(tmp_path)
    ingest_vector(v.v1, layer=layer, key=v.key, valid_from="2020-12-31", settings=database)
    return v


def test_replace_by_key_gives_exact_counts_then_as_of_and_diff(tmp_path, conn, layer_name, database):
    v = _load_v1(tmp_path, layer_name, database)
    s = ingest_vector(v.v2, layer=layer_name, valid_from="2023-12-31", settings=database)
    assert (s.added, s.changed, s.closed, s.unchanged) == (v.added, v.changed, v.closed, v.unchanged)
    assert s.current_total == 10 - v.closed + v.added

    t1, t2 = datetime(2021, 6, 1, tzinfo=CST), datetime(2024, 6, 1, tzinfo=CST)
    assert set(stored(conn, layer_name, at=t1)) == {f"P{i:03d}" for i in range(1, 11)}
    now = stored(conn, layer_name)
    assert set(now) == {f"P{i:03d}" for i in range(1, 14)} - set(v.closed_keys)
    assert stored(conn, layer_name, at=t2) == now
    d = store.diff(conn, layer_name, t1, t2)
    assert tuple(d.added) == v.added_keys and tuple(d.changed) == v.changed_keys
    assert tuple(d.removed) == v.closed_keys

    # unchanged features kept their version; changed ones have two
    assert len(store.feature_history(conn, layer_name, "P001")) == 1
    assert len(store.feature_history(conn, layer_name, "P007")) == 2

    # re-running the same loads is a no-op, not a new changeset — also the older one, and also
    # when the file was written anew (same content, different bytes)
    again = ingest_vector(v.v2, layer=layer_name, valid_from="2023-12-31", settings=database)
    assert again.skipped and len(store.changesets(conn, layer_name)) == 2
    import geopandas as gpd

    rewritten = tmp_path / "v1_again.geojson"
    gpd.read_file(v.v1).to_file(rewritten, driver="GeoJSON")
    old = ingest_vector(rewritten, layer=layer_name, valid_from="2020-12-31", settings=database)
    assert old.skipped and len(store.changesets(conn, layer_name)) == 2
    # a different back-dated state is a correction in valid time (issue 14): recorded now, the
    # versions valid from 2020-12-31 re-derived, the 2023 change kept as recorded
    corr = ingest_vector(v.v2, layer=layer_name, valid_from="2020-12-31", settings=database)
    assert corr.correction and not corr.skipped and len(store.changesets(conn, layer_name)) == 3
    assert store.count(conn, layer_name) == len(gpd.read_file(v.v2))


def test_replace_of_an_identical_state_changes_nothing(tmp_path, conn, layer_name, database):
    v = _load_v1(tmp_path, layer_name, database)
    s = ingest_vector(v.v1, layer=layer_name, valid_from="2022-01-01", settings=database)
    assert (s.added, s.changed, s.closed, s.unchanged) == (0, 0, 0, 10)
    assert s.skipped and s.changeset_id is None and len(store.changesets(conn, layer_name)) == 1


@pytest.mark.parametrize("kind", ["gpkg", "geojson"])
def test_corrupt_file_fails_clearly_and_leaves_layer_whole(kind, tmp_path, conn, layer_name, database):
    _load_v1(tmp_path, layer_name, database)
    before = state(conn, layer_name)
    bad = files.corrupt_file(tmp_path / "bad", kind)
    with pytest.raises(IngestError) as exc:
        ingest_vector(bad, layer=layer_name, key="code", valid_from="2024-01-01", settings=database)
    assert bad.name in str(exc.value)
    assert state(conn, layer_name) == before


def test_bad_row_fails_naming_the_row_and_leaves_layer_whole(tmp_path, conn, layer_name, database):
    good = files.csv_wkt(tmp_path / "good")
    ingest_vector(good, layer=layer_name, key="code", valid_from="2020-01-01", settings=database)
    before = state(conn, layer_name)
    bad = files.bad_row_csv(tmp_path)
    with pytest.raises(IngestError) as exc:
        ingest_vector(bad, layer=layer_name, key="code", valid_from="2024-01-01", settings=database)
    msg = str(exc.value)
    assert bad.name in msg and f"row {files.BAD_CSV_ROW}" in msg
    assert state(conn, layer_name) == before


def test_bad_value_for_the_layer_schema_names_row_and_field(tmp_path, conn, layer_name, database):
    v = _load_v1(tmp_path, layer_name, database)
    import geopandas as gpd

    frame = gpd.read_file(v.v2)
    frame["floors"] = frame["floors"].astype(object)
    frame.loc[4, "floors"] = "三层"  # not an integer
    bad = tmp_path / "bad_floors.gpkg"
    frame.to_file(bad, layer="parcels", driver="GPKG")
    before = state(conn, layer_name)
    with pytest.raises(IngestError, match=r"row 5: field 'floors' must be an integer"):
        ingest_vector(bad, layer=layer_name, valid_from="2024-01-01", settings=database)
    assert state(conn, layer_name) == before


def test_failure_of_a_new_layer_leaves_no_layer(tmp_path, conn, layer_name, database):
    with pytest.raises(IngestError):
        ingest_vector(files.bad_row_csv(tmp_path), layer=layer_name, key="code", settings=database)
    assert store.get_layer(conn, layer_name) is None
    # duplicate keys in a new layer: refused inside the transaction, nothing registered
    with pytest.raises(IngestError, match="appears in rows"):
        ingest_vector(files.gpkg(tmp_path), layer=layer_name, key="dlbm", settings=database)
    assert store.get_layer(conn, layer_name) is None


def _cli(*args: str, database) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEOTWIN_DB_SCHEMA=database.db_schema)
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_json_summary_and_failure_exit_status(tmp_path, conn, layer_name, database):
    v = files.keyed_versions(tmp_path)
    ok = _cli("ingest", "vector", str(v.v1), "--layer", layer_name, "--key", "code",
              "--valid-from", "2020-12-31", "--title-zh", "测试地块", "--json", database=database)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["ok"] and summary["added"] == 10 and summary["changeset_id"]
    assert store.get_layer(conn, layer_name).title_zh == "测试地块"

    bad = files.bad_row_csv(tmp_path)
    fail = _cli("ingest", "vector", str(bad), "--layer", layer_name, "--key", "code", database=database)
    assert fail.returncode != 0
    message = " ".join(fail.stderr.split())
    assert bad.name in message and f"row {files.BAD_CSV_ROW}" in message
    assert "Nothing was written" in message

    hist = _cli("layers", "history", layer_name, "--json", database=database)
    assert hist.returncode == 0 and len(json.loads(hist.stdout)) == 1
    listed = _cli("layers", "list", "--json", database=database)
    assert layer_name in {r["name"] for r in json.loads(listed.stdout)}
    diff = _cli("layers", "diff", layer_name, "--from", "2020-01-01", "--to", "2021-01-01", "--json",
                database=database)
    assert json.loads(diff.stdout)["counts"] == {"added": 10, "changed": 0, "removed": 0}


def test_a_local_grid_given_as_proj_string_or_wkt(tmp_path, conn, database):
    """Shenzhen's own grid is not in EPSG: GIS staff pass its definition. A made-up local
    transverse Mercator with shifted origin stands in for it."""
    import pandas as pd
    from pyproj import CRS

    proj_string = ("+proj=tmerc +lat_0=22.5 +lon_0=114.1 +k=1 +x_0=50000 +y_0=30000 "
                   "+ellps=GRS80 +units=m +no_defs")
    local = CRS.from_proj4(proj_string)
    expected = files.POINTS_LONLAT
    x, y = Transformer.from_crs(4490, local, always_xy=True).transform(expected[:, 0], expected[:, 1])
    path = tmp_path / "local_grid.csv"
    pd.DataFrame({"name": files.POINT_NAMES, "x": x, "y": y}).to_csv(path, index=False)
    for form, layer in ((proj_string, "t_local_proj"), (local.to_wkt(), "t_local_wkt")):
        ingest_vector(path, layer=layer, key="name", crs=form, settings=database)
        rows = stored(conn, layer)
        for name, (lon, lat) in zip(files.POINT_NAMES, expected):
            p = shapely.from_wkt(rows[name]["geometry"])
            ex, ey = TO_4547.transform(lon, lat)
            gx, gy = TO_4547.transform(p.x, p.y)
            assert np.hypot(gx - ex, gy - ey) < 0.5, (form[:20], name)


def test_two_first_loads_of_one_new_layer_at_once(tmp_path, conn, layer_name, database):
    """One wins; the other is told to run again; the winner's data is whole."""
    from concurrent.futures import ThreadPoolExecutor

    a, b = files.gpkg(tmp_path / "a"), files.gpkg(tmp_path / "b")

    def load(path):
        try:
            return ingest_vector(path, layer=layer_name, key="code", valid_from="2024-01-01", settings=database)
        except IngestError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(load, [a, b]))
    errors = [r for r in results if isinstance(r, IngestError)]
    wins = [r for r in results if not isinstance(r, IngestError)]
    # both may also succeed one after the other (the second then finds nothing to change)
    assert len(wins) >= 1 and all("created by another load meanwhile" in str(e) for e in errors)
    assert store.count(conn, layer_name) == 20 and len(store.changesets(conn, layer_name)) == 1
