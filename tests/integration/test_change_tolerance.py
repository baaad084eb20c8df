"""Change detection that ignores round-off (issue 14, part 2): the same plots re-exported as
GeoJSON with 7 decimals (ogr2ogr, ~1 cm) load as 0 changed; a real move is still a change; text
padded with trailing spaces is no change with --strip-strings; values compare by value."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import geopandas as gpd
import numpy as np
import pytest
import shapely

from spatial_api import store
from spatial_api.ingest import change_tolerance, ingest_vector, written_decimals
from spatial_api.store.writer import _same_value

X0, Y0 = 521000.0, 2512000.0


def plots(n=50, seed=3):
    """n irregular plots in EPSG:4547 with full-precision coordinates."""
    rng = np.random.default_rng(seed)
    rows, geoms = [], []
    for i in range(n):
        cx, cy = X0 + (i % 10) * 83.7, Y0 + (i // 10) * 91.3
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radius = rng.uniform(18, 35, 7)
        geoms.append(shapely.Polygon(np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])))
        rows.append({"code": f"Z{i:03d}", "name": f"地块{i}", "area": float(round(geoms[-1].area, 3))})
    return gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4547")


def export_7_decimals(src, dst):
    subprocess.run(["ogr2ogr", "-f", "GeoJSON", "-t_srs", "EPSG:4326", "-lco", "COORDINATE_PRECISION=7",
                    str(dst), str(src)], check=True, capture_output=True, timeout=120)
    return dst


@pytest.fixture
def loaded(database, tmp_path):
    layer = f"t_tol_{uuid.uuid4().hex[:6]}"
    src = tmp_path / "plots.gpkg"
    plots().to_file(src, driver="GPKG")
    ingest_vector(src, layer=layer, key="code", valid_from="2025-01-01", settings=database)
    return layer, src


def test_a_7_decimal_re_export_loads_as_0_changed(database, loaded, tmp_path, conn):
    layer, src = loaded
    geojson = export_7_decimals(src, tmp_path / "plots7.geojson")
    assert written_decimals(geojson) == 7
    s = ingest_vector(geojson, layer=layer, mode="replace", valid_from="2026-01-01", settings=database)
    assert (s.added, s.changed, s.closed) == (0, 0, 0) and s.within_tolerance == 50 and s.skipped
    assert s.tolerance_deg == pytest.approx(1e-7)
    assert len(store.changesets(conn, layer)) == 1  # nothing recorded: 50 new versions of nothing avoided


def test_a_real_move_is_still_a_change(database, loaded, tmp_path):
    layer, src = loaded
    moved = plots()
    moved.loc[7, "geometry"] = shapely.affinity.translate(moved.loc[7, "geometry"], xoff=1.0)  # 1 m
    moved_src = tmp_path / "moved.gpkg"
    moved.to_file(moved_src, driver="GPKG")
    s = ingest_vector(export_7_decimals(moved_src, tmp_path / "moved7.geojson"), layer=layer, mode="replace",
                      valid_from="2026-01-01", settings=database)
    assert (s.changed, s.within_tolerance) == (1, 49) and s.samples["changed"] == ["Z007"]


def test_a_tolerance_given_in_metres_for_a_projected_file(database, loaded, tmp_path):
    layer, src = loaded
    nudged = plots()
    nudged["geometry"] = nudged.geometry.translate(xoff=0.004)  # 4 mm everywhere
    path = tmp_path / "nudged.gpkg"
    nudged.to_file(path, driver="GPKG")
    assert change_tolerance(path, "EPSG:4547", 0.01)[0] == pytest.approx(0.01 / 111_320.0)
    s = ingest_vector(path, layer=layer, mode="replace", valid_from="2026-01-01", tolerance=0.01, settings=database)
    assert (s.changed, s.within_tolerance) == (0, 50)
    s = ingest_vector(path, layer=layer, mode="replace", valid_from="2026-01-01", settings=database)
    assert s.changed == 50  # the default (0.1 mm) sees 4 mm


def test_trailing_spaces_with_strip_strings_from_the_command_line(database, loaded, tmp_path):
    layer, src = loaded
    padded = plots()
    padded["name"] = padded["name"] + "  "
    path = tmp_path / "padded.gpkg"
    padded.to_file(path, driver="GPKG")
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    cmd = [sys.executable, "-m", "spatial_api", "ingest", "vector", str(path), "--layer", layer,
           "--valid-from", "2026-01-01", "--json"]
    r = subprocess.run(cmd + ["--strip-strings"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["changed"] == 0 and out["within_tolerance"] == 50
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["changed"] == 50


def test_values_compare_by_value_and_kind():
    assert _same_value({"a": 1, "b": [1.0, "x"]}, {"a": 1.0, "b": [1, "x"]}, False)
    assert not _same_value({"a": True}, {"a": 1}, False)
    assert not _same_value({"s": "x "}, {"s": "x"}, False) and _same_value({"s": "x "}, {"s": "x"}, True)
    assert not _same_value({"a": None}, {"a": 0}, False)
    assert not _same_value({"a": 1}, {"a": 1, "b": None}, False)
