"""The twin is told of corrections in valid time (issue 14): a tileset built as of a date lists
the changesets recorded since that change its date, and the incremental rebuild rewrites only the
tiles of the corrected buildings."""

from __future__ import annotations

import uuid

import httpx
import pytest

from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures.server import live_server
from tests.integration.test_cim_build import buildings, decode_tileset, write_dem


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cimcorr")
    layer = f"t_cimc_{uuid.uuid4().hex[:8]}"
    for version, valid in ((1, "2024-01-01"), (2, "2025-01-01")):
        path = tmp / f"b{version}.gpkg"
        buildings(version).to_file(path, driver="GPKG")
        ingest_vector(path, layer=layer, key="building_id", valid_from=valid, settings=database)
    return {"settings": database, "layer": layer, "dem": write_dem(tmp / "dem.tif"), "tmp": tmp}


def test_a_correction_is_listed_and_rebuilt_incrementally(env):
    from cim_builder.build import build

    tid = f"corr-{uuid.uuid4().hex[:6]}"
    out = env["tmp"] / tid
    first = build(env["settings"], tileset_id=tid, layer=env["layer"], dem=env["dem"], as_of="2024-06-30",
                  out=out, max_per_tile=8)
    where = {b: t["uri"] for t in decode_tileset(out) for b in t["table"].get("building_id", [])}
    with live_server(create_app(env["settings"])) as url:
        def listed():
            doc = httpx.get(f"{url}/twin/tilesets", timeout=30).json()
            return next(t for t in doc["tilesets"] if t["id"] == tid)["inputs_changed_since"]

        assert listed() == []
        # a survey correction: B012 was 5 m taller from March 2024 (recorded now, before the 2025 load)
        frame = buildings(1)
        frame = frame[frame["building_id"] == "B012"].copy()
        frame["height_m"] = frame["height_m"] + 5.0
        path = env["tmp"] / "fix.gpkg"
        frame.to_file(path, driver="GPKG")
        fix = ingest_vector(path, layer=env["layer"], mode="upsert", valid_from="2024-03-01", settings=env["settings"])
        assert fix.correction and fix.changed == 1
        # a change after the tileset's date does not concern it
        assert listed() == [fix.changeset_id]
    again = build(env["settings"], tileset_id=tid, layer=env["layer"], dem=env["dem"], as_of="2024-06-30",
                  max_per_tile=8)
    assert not again.full_rebuild and again.tiles_written == 1
    assert list(again.written) == [where["B012"].split("/", 1)[1].rsplit("-", 1)[0]]  # tiles/4/6/6-<hash>.glb
    table = next(t["table"] for t in decode_tileset(out) if "B012" in t["table"].get("building_id", []))
    old = next(t["table"] for t in decode_tileset(out) if "B011" in t["table"].get("building_id", []))
    assert table["height_m"][table["building_id"].index("B012")] == pytest.approx(
        buildings(1).set_index("building_id").loc["B012", "height_m"] + 5.0)
    assert old["height_m"][old["building_id"].index("B011")] == pytest.approx(
        buildings(1).set_index("building_id").loc["B011", "height_m"])
    assert first.tiles == again.tiles
