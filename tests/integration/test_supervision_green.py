"""R9's green ratio measured from imagery: hand-built industrial parcels (100 m × 100 m, pixel-
aligned) over small synthetic RGB rasters (1 m pixels, EPSG:4547) painted green inside the parcels
on exactly so many pixels, on the real PostGIS store, read through the imagery vector layer and
through the imagery catalogue (rasters registered by geotwin's own imagery ingestion)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from land_supervision import engine, runs
from tests.integration.test_supervision_rules import (BASE, BUILDING_SCHEMA, PARCEL_SCHEMA,
                                                       write_layer)

CST = timezone(timedelta(hours=8))
X0, Y0 = 530000.0, 2520000.0  # parcels from here; the rasters start 50 m west of it (EPSG:4547)
W, H = 950, 200  # 1 m pixels
GREEN, GREY = (60, 110, 50), (150, 150, 150)  # excess-green 0.5 and 0.0
IND = {"land_use_code": "0601", "actual_completion": "2024-06-30"}

# parcel → (column of its lower-left corner in 100 m steps, attribute changes)
PARCELS = {
    "G_AT": (0, {}),          # 2,000 green pixels of 10,000: 0.200, at the limit → inside
    "G_OVER": (1, {}),        # 2,010: 0.201 → found
    "G_FIELD_LOW": (2, {"green_ratio": 0.15}),   # imagery 50% green, the field says 0.15 → field wins
    "G_FIELD_HIGH": (3, {"green_ratio": 0.25}),  # imagery 0%, the field says 0.25 → found (field)
    "G_NEW": (4, {}),         # green 50% in the 2025 epoch, re-landscaped to 0% in the 2026 one
    "G_FUTURE": (5, {}),      # grey up to 2026, green in an epoch acquired after the run's date
    "G_OPEN": (6, {"actual_completion": None}),  # not completed: R9 does not apply
    "G_OUTSIDE": (12, {}),    # outside every raster footprint: not measured, noted
}
REF = "2026-06-30"
EPOCHS = {"E2025": "2025-01-15", "E2026": "2026-01-15", "E2027": "2026-12-01"}


def parcel_geom(col: int):
    return box(X0 + col * 100 + 0.0, Y0 + 50, X0 + col * 100 + 100.0, Y0 + 150)


def green_pixels(epoch: str) -> dict[str, int]:
    out = {"G_AT": 2000, "G_OVER": 2010, "G_FIELD_LOW": 5000, "G_FIELD_HIGH": 0, "G_OPEN": 5000}
    out["G_NEW"] = 5000 if epoch == "E2025" else 0
    out["G_FUTURE"] = 10000 if epoch == "E2027" else 0
    return out


def raster(path, epoch: str) -> None:
    img = np.empty((3, H, W), np.uint8)
    for b in range(3):
        img[b] = GREY[b]
    for pid, n in green_pixels(epoch).items():
        col = PARCELS[pid][0]
        # the parcel spans y0 + 50 … y0 + 150 (rows H - 150 … H - 51 from the top) and 100 columns
        r0, c0 = H - 150, 50 + col * 100
        flat = np.zeros(100 * 100, bool)
        flat[:n] = True
        mask = flat.reshape(100, 100)
        for b in range(3):
            band = img[b, r0:r0 + 100, c0:c0 + 100]
            band[mask] = GREEN[b]
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs="EPSG:4547",
                       transform=from_origin(X0 - 50, Y0 + H, 1.0, 1.0)) as dst:
        dst.write(img)


@pytest.fixture(scope="module")
def green_world(database, tmp_path_factory):
    from spatial_api import db

    tmp = tmp_path_factory.mktemp("green")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"t_sgr{tag}_{role}" for role in ("parcels", "buildings", "imagery", "streets")}
    at = datetime(2024, 1, 1, tzinfo=CST)
    parcels = [(pid, parcel_geom(col), {**BASE, **IND, "parcel_id": pid, **attrs}) for pid, (col, attrs) in PARCELS.items()]
    # one hall per parcel: 40% coverage, no offices
    buildings = [(f"H{i}", box(g.bounds[0] + 10, g.bounds[1] + 10, g.bounds[0] + 90, g.bounds[1] + 60),
                  {"parcel_id": pid, "height_m": 20.0, "floors": 2, "use": "industrial", "gfa_m2": None})
                 for i, (pid, g, _) in enumerate(parcels)]
    paths = {}
    for eid in EPOCHS:
        paths[eid] = tmp / f"{eid}.tif"
        raster(paths[eid], eid)
    footprint = box(X0 - 50, Y0, X0 - 50 + W, Y0 + H)
    epochs = [(eid, footprint, {"epoch_id": eid, "acquired_on": day, "path": str(paths[eid])})
              for eid, day in EPOCHS.items()]
    schema = PARCEL_SCHEMA + [("green_ratio", "number")]
    with db.connect(database) as conn:
        write_layer(conn, names["parcels"], schema, parcels, at=at, key="parcel_id", new=True)
        write_layer(conn, names["buildings"], BUILDING_SCHEMA, buildings, at=at, key="building_id", new=True)
        write_layer(conn, names["imagery"], [("epoch_id", "string"), ("acquired_on", "date"), ("path", "string")],
                    epochs, at=at, key="epoch_id", new=True)
        write_layer(conn, names["streets"], [("code", "string"), ("name", "string")],
                    [("440307001", box(X0 - 1000, Y0 - 1000, X0 + 3000, Y0 + 1000),
                      {"code": "440307001", "name": "测试街道"})], at=at, key="code", new=True)
    return names, paths


def r9(conn, run_id: int) -> dict[str, dict]:
    return {f["subject_id"]: f for f in runs.findings(conn, run_id, rule="R9")}


def test_green_ratio_from_the_imagery_layer(green_world, database, conn):
    names, paths = green_world
    r = engine.run(database, as_of=REF, rules="R9", layers=names, parameters={"R9.green_collection": "none_here"})
    got = r9(conn, r.run_id)
    assert set(got) == {"G_OVER", "G_FIELD_HIGH"}, got.keys()
    m = got["G_OVER"]["measures"]
    assert m["green_ratio"] == pytest.approx(0.201) and m["green_ratio_source"] == "imagery"
    gi = m["green_imagery"]
    assert gi["item_id"] == "E2026" and gi["acquired_on"] == "2026-01-15" and gi["pixels"] == 10000
    assert gi["threshold"] == 0.10 and gi["source"] == f"layer:{names['imagery']}"
    assert got["G_OVER"]["message"] == "绿地率 0.201 > 0.2"
    m = got["G_FIELD_HIGH"]["measures"]
    assert m["green_ratio"] == pytest.approx(0.25) and m["green_ratio_source"] == "field" and m["green_imagery"] is None
    assert any("covers 1 industrial parcel" in n for n in r.notes), r.notes  # G_OUTSIDE
    assert runs.get_run(conn, r.run_id)["layers"]["imagery"]["layer"] == names["imagery"]


def test_latest_epoch_at_or_before_the_run_date(green_world, database, conn):
    names, _ = green_world
    r = engine.run(database, as_of="2025-06-30", rules="R9", layers=names, parameters={"R9.green_collection": "none_here"})
    got = r9(conn, r.run_id)
    # as of mid-2025 the 2025 epoch is the latest: G_NEW was 50% green then
    assert {"G_NEW", "G_OVER", "G_FIELD_HIGH"} == set(got)
    assert got["G_NEW"]["measures"]["green_imagery"]["item_id"] == "E2025"
    assert got["G_NEW"]["measures"]["green_ratio"] == pytest.approx(0.5)


def test_threshold_is_a_parameter_and_imagery_can_be_off(green_world, database, conn):
    names, _ = green_world
    # ExG of the green paint is 0.5: with a threshold above it nothing is green
    r = engine.run(database, as_of=REF, rules="R9", layers=names,
                   parameters={"R9.green_index_min": 0.6, "R9.green_collection": "none_here"})
    assert set(r9(conn, r.run_id)) == {"G_FIELD_HIGH"}
    off = engine.run(database, as_of=REF, rules="R9", layers=names, imagery=False)
    assert set(r9(conn, off.run_id)) == {"G_FIELD_HIGH"}
    assert any("imagery off" in n and "5 industrial parcel" in n for n in off.notes), off.notes


def test_unreadable_imagery_is_a_note_not_a_failure(green_world, database, conn, tmp_path):
    import shutil

    names, paths = green_world
    moved = tmp_path / "moved.tif"
    shutil.move(paths["E2026"], moved)
    try:
        r = engine.run(database, as_of=REF, rules="R9", layers=names, parameters={"R9.green_collection": "none_here"})
    finally:
        shutil.move(moved, paths["E2026"])
    assert set(r9(conn, r.run_id)) == {"G_FIELD_HIGH"}
    assert any("cannot read imagery" in n and "E2026.tif" in n and "4 parcel(s)" in n for n in r.notes), r.notes


def test_green_ratio_from_the_catalogue(green_world, database, conn):
    """Items of the catalogue collection win over the vector layer: here the catalogue holds only
    the 2025 epoch (G_NEW 50% green) — the layer's newer 2026 epoch is not used."""
    from spatial_api.ingest.imagery import ingest_imagery

    names, paths = green_world
    coll = f"green_{uuid.uuid4().hex[:6]}"
    ingest_imagery(paths["E2025"], collection=coll, datetime_=EPOCHS["E2025"], kind="ortho", item_id="C2025",
                   settings=database, author="pytest")
    ingest_imagery(paths["E2027"], collection=coll, datetime_=EPOCHS["E2027"], kind="ortho", item_id="C2027",
                   settings=database, author="pytest")
    r = engine.run(database, as_of=REF, rules="R9", layers=names, parameters={"R9.green_collection": coll})
    got = r9(conn, r.run_id)
    assert set(got) == {"G_NEW", "G_OVER", "G_FIELD_HIGH"}
    gi = got["G_NEW"]["measures"]["green_imagery"]
    assert gi["item_id"] == "C2025" and gi["source"] == f"catalogue:{coll}" and gi["pixels"] == 10000
    assert got["G_OVER"]["measures"]["green_imagery"]["source"] == f"catalogue:{coll}"


def test_a_green_ratio_that_is_no_share_is_named(green_world, database, conn):
    names, _ = green_world
    bad_name = f"t_sgr{uuid.uuid4().hex[:6]}_pct"
    schema = PARCEL_SCHEMA + [("green_ratio", "number")]
    write_layer(conn, bad_name, schema, [("G_PCT", parcel_geom(0), {**BASE, **IND, "parcel_id": "G_PCT", "green_ratio": 15})],
                at=datetime(2024, 1, 1, tzinfo=CST), key="parcel_id", new=True)
    with pytest.raises(engine.RuleError, match=r"field 'green_ratio': a green ratio is a share between 0 and 1 .*'G_PCT' has '15'"):
        engine.run(database, as_of=REF, rules="R9", layers={**names, "parcels": bad_name})
