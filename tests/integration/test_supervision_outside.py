"""Supervision over parcels outside every coverage (issue 12, item 6).

The rule library R1–R13's hand-built parcels (``test_supervision_rules``) are moved about 40 km
east of the district, to 114.60 E, 22.64 N, while the imagery (two RGB epochs in the imagery
catalogue, a third covering another patch only), the protected layers (basic farmland, land use,
ecological red line), the approval batches and the streets stay over the district. Every rule runs
over them with imagery evidence on: the run finishes, the findings that apply are produced, and a
parcel whose start is in question but that no imagery covers gets "no imagery covers this parcel"
as its imagery evidence. Parcels inside the imagery still get measured evidence.

The same through `geotwin supervise run` (exit 0, no traceback); with no imagery at all; with an
imagery-layer row dated 30 February (left out with a note). Then parcels whose data make a rule's
SQL fail (a self-intersecting outline, an extension of 2,147,483,647 days) and one without area
become notes naming them; the run finishes with every other finding.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely import affinity
from shapely.geometry import Polygon, box

from land_supervision import catalogue, engine, runs
from tests.integration import test_supervision_rules as T

CST = timezone(timedelta(hours=8))
REF = T.REF
FAR_LON, FAR_LAT = 114.60, 22.64
FX, FY = Transformer.from_crs(4490, 4547, always_xy=True).transform(FAR_LON, FAR_LAT)
DX, DY = round(FX - T.X0), round(FY - T.Y0)  # the rules test's layout moved to 114.60 E, 22.64 N

# parcels inside the imagery, south-west of the rules test's protected layers (EPSG:4547)
IX, IY = T.X0 - 800.0, T.Y0 - 800.0
GREEN, GREY, ROOF = (60, 110, 50), (150, 150, 150), (230, 230, 235)
INSIDE = {  # id → (column of its lower-left corner in 150 m steps, epochs in which it is green)
    "IN_BUILT": (0, {"E1"}),       # vegetated in E1, roofs in E2: construction seen → V1
    "IN_STABLE": (1, {"E1", "E2"}),  # vegetated in both: nothing built
    "IN_EDGE": (2, {"E1", "E2"}),    # half of it beyond the rasters' east edge
}
EPOCHS = {"E1": "2024-01-15", "E2": "2026-01-15", "E3": "2026-03-01"}
IDLE = {"actual_start": None, "agreed_start": "2024-06-01"}  # idle for two years as of REF


def inside_box(pid: str):
    col = INSIDE[pid][0]
    return box(IX + col * 150, IY, IX + col * 150 + 100, IY + 100)


def raster(path, epoch: str) -> None:
    """E1 / E2: 1 m RGB over IN_BUILT, IN_STABLE and the west half of IN_EDGE; E3: another patch."""
    if epoch == "E3":  # a small later flight elsewhere (north of the district's test parcels)
        x0, y0, w, h = IX, IY + 2000, 200, 200
        img = np.full((3, h, w), 120, np.uint8)
    else:
        x0, y0, w, h = IX - 20, IY - 20, 370, 140  # ends at IX + 350: IN_EDGE (300…400) half covered
        img = np.empty((3, h, w), np.uint8)
        for b in range(3):
            img[b] = GREY[b]
        for col, green_in in INSIDE.values():
            c0, r0 = 20 + col * 150, 20
            paint = GREEN if epoch in green_in else ROOF
            for b in range(3):
                img[b, r0:r0 + 100, c0:min(c0 + 100, w)] = paint[b]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:4547",
                       transform=from_origin(x0, y0 + h, 1.0, 1.0)) as dst:
        dst.write(img)


def far(g):
    return affinity.translate(g, DX, DY)


@pytest.fixture(scope="module")
def outside_world(database, tmp_path_factory):
    from spatial_api import db
    from spatial_api.ingest.imagery import ingest_imagery

    tmp = tmp_path_factory.mktemp("outside")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"t_sout{tag}_{role}" for role in
             ("parcels", "buildings", "basic_farmland", "land_use", "eco_redline", "approvals", "streets")}
    at = datetime(2026, 6, 30, tzinfo=CST)
    parcels = [(pid, far(g), props) for pid, g, props in T.parcel_features()]
    parcels += [(pid, inside_box(pid), {**T.BASE, **IDLE}) for pid in INSIDE]
    parcels.append(("IN_ONE", box(IX + 50, IY + 2050, IX + 150, IY + 2150), {**T.BASE, **IDLE}))  # under E3 only
    # a completed industrial parcel under E1 / E2 (grey: no green), between IN_BUILT and IN_STABLE
    parcels.append(("IN_IND", box(IX + 105, IY + 10, IX + 145, IY + 90),
                    {**T.BASE, "land_use_code": "0601", "actual_completion": "2025-06-30"}))
    buildings = [(bid, far(g), props) for bid, g, props in T.buildings()]
    names["imagery"] = f"t_sout{tag}_no_imagery_layer"  # the catalogue only (not another test's layer)
    prot = T.protected()  # over the district: nothing of it near the moved parcels
    coll = f"out_{tag}"
    for eid, day in EPOCHS.items():
        path = tmp / f"{eid}.tif"
        raster(path, eid)
        ingest_imagery(path, collection=coll, datetime_=day, kind="ortho", item_id=eid, settings=database,
                       author="pytest")
        if eid != "E3":  # the issue's set-up: one flight pattern over the district, two epochs
            ingest_imagery(path, collection=f"{coll}_two", datetime_=day, kind="ortho", item_id=eid,
                           settings=database, author="pytest")
    with db.connect(database) as conn:
        T.write_layer(conn, names["parcels"], T.PARCEL_SCHEMA, parcels, at=at, key="parcel_id", new=True)
        T.write_layer(conn, names["buildings"], T.BUILDING_SCHEMA, buildings, at=at, key="building_id", new=True)
        T.write_layer(conn, names["basic_farmland"], [("jbnt_id", "string")], prot["basic_farmland"], at=at,
                      key="jbnt_id", new=True)
        T.write_layer(conn, names["land_use"], [("bsm", "string"), ("dlbm", "string")], prot["land_use"], at=at,
                      key="bsm", new=True)
        T.write_layer(conn, names["eco_redline"], [("redline_id", "string")], prot["eco_redline"], at=at,
                      key="redline_id", new=True)
        T.write_layer(conn, names["approvals"], [("approval_id", "string"), ("approved_on", "date")],
                      prot["approvals"], at=at, key="approval_id", new=True)
        T.write_layer(conn, names["streets"], [("code", "string"), ("name", "string")], prot["streets"], at=at,
                      key="code", new=True)
    return names, coll, prot, {eid: tmp / f"{eid}.tif" for eid in EPOCHS}


def test_the_moved_parcels_are_where_the_issue_says(outside_world, conn):
    names, _, _, _ = outside_world
    lon, lat = conn.execute(
        "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(ST_Collect(geom)) AS c FROM features "
        "WHERE layer = %s AND fid = ANY(%s)) x", (names["parcels"], list(T.PARCELS))).fetchone()
    assert abs(lon - FAR_LON) < 0.02 and abs(lat - FAR_LAT) < 0.02


def _in_question(attrs: dict) -> bool:
    """The parcels whose start is in question (evidence.py's candidates): not started, start
    deadline (agreed start + extension up to 365 days) within 30 days of the run's date or passed."""
    p = {**T.BASE, **attrs}
    if p["actual_start"] is not None or p["agreed_start"] is None:
        return False
    deadline = date.fromisoformat(p["agreed_start"]) + timedelta(days=min(p["extension_days"] or 0, 365))
    return deadline <= REF + timedelta(days=30)


def test_every_rule_over_parcels_outside_every_coverage(outside_world, database, conn):
    names, coll, prot, _ = outside_world
    r = engine.run(database, as_of=REF, layers=names, imagery=True, author="pytest",
                   parameters={"V1.collection": coll, "R9.green_collection": coll})
    assert r.rules == list(catalogue.RULE_IDS)
    rows = runs.findings(conn, r.run_id)
    got: dict[str, set[str]] = {rid: set() for rid in catalogue.RULE_IDS}
    for f in rows:
        got.setdefault(f["rule"], set()).add(f["subject_id"])

    # every rule that applies away from the protected layers finds what it finds in the district
    problems = []
    for pid, (_, must, must_not) in T.PARCELS.items():
        for rid in must - {"R12"}:
            if pid not in got[rid]:
                problems.append(f"{rid} missed {pid}")
        for rid in must_not:
            if pid in got[rid]:
                problems.append(f"{rid} wrongly found {pid}")
    assert not problems, problems
    assert got["R12"] == set()  # no protected layer there: nothing occupied
    # no parcel supplies the district's approval batches any more: each valid one over 100 m² is left
    assert got["R13"] == {fid for fid, g, p in prot["approvals"]
                          if g.area > 100 and date.fromisoformat(p["approved_on"]) <= REF}
    assert all(f["street_name"] is None for f in rows if f["parcel_id"] in T.PARCELS)  # no street there

    # imagery evidence: the moved parcels in question have none, and say so; the finding stays
    by = {(f["rule"], f["subject_id"]): f for f in rows}
    in_question = {pid for pid, (attrs, _, _) in T.PARCELS.items() if _in_question(attrs)}
    assert {"R3_IN", "R4_365", "R5_730"} <= in_question
    checked = 0
    for (rule, pid), f in by.items():
        if rule in ("R2", "R3", "R4", "R5") and pid in in_question:
            ev = f["measures"]["imagery"]
            assert "no imagery covers this parcel" in ev["note"] and ev["construction_seen"] is None, (rule, pid, ev)
            checked += 1
    assert checked >= 8
    assert "V1" not in got or not (got["V1"] & set(T.PARCELS))

    # the parcels under the imagery are measured as before, each on the epochs that cover it
    built = by[("R4", "IN_BUILT")]["measures"]["imagery"]
    assert built["construction_seen"] is True and built["changed_fraction"] > 0.9
    assert (built["epoch_before"], built["epoch_after"]) == ("E1", "E2")  # E3 (later) covers another patch
    assert got["V1"] == {"IN_BUILT"}
    stable = by[("R4", "IN_STABLE")]["measures"]["imagery"]
    assert stable["construction_seen"] is False and stable["changed_fraction"] < 0.1
    one = by[("R4", "IN_ONE")]["measures"]["imagery"]
    assert "only one imagery epoch covers this parcel" in one["note"] and one["epoch"] == "E3", one
    assert one["construction_seen"] is None
    edge = by[("R4", "IN_EDGE")]["measures"]["imagery"]
    assert edge["construction_seen"] is False and 4000 <= edge["pixels"] <= 6000  # the covered half only

    # R9: the moved industrial parcels are not under the imagery: green ratio not measured, said so
    assert any(n.startswith("R9: no imagery epoch") and "covers 4 industrial parcel(s)" in n for n in r.notes), r.notes
    assert by[("R9", "IN_IND")]["measures"]["green_imagery"]["item_id"] == "E2"  # under the imagery: measured
    stored = runs.get_run(conn, r.run_id)
    assert stored["finished_at"] is not None and stored["counts"]["total"] == len(rows)
    _reported_and_exported(conn, r.run_id, len(rows))


def _reported_and_exported(conn, run_id: int, n: int) -> None:
    """The run's report and exports are made whatever its findings lack (street, imagery, …)."""
    import csv
    import io
    import json

    from openpyxl import load_workbook

    from land_supervision import report

    html = report.html_report(conn, run_id)
    assert html.count('<div class="finding">') == n
    assert len(json.loads(runs.export(conn, run_id, "geojson"))["features"]) == n
    assert len(list(csv.DictReader(io.StringIO(runs.export(conn, run_id, "csv").decode()[1:])))) == n
    assert load_workbook(io.BytesIO(runs.export(conn, run_id, "xlsx")))["发现"].max_row == n + 1


def test_a_parcel_outside_the_imagery_alone(outside_world, database, conn):
    """The issue's reproduction: two epochs over the district, idle parcels 40 km east (at
    114.60 E, 22.64 N), a run of the idle-land rules with imagery on."""
    names, coll, _, _ = outside_world
    r = engine.run(database, as_of=REF, rules="R3,R4,R5", layers=names, imagery=True,
                   parameters={"V1.collection": f"{coll}_two"})
    got = {(f["rule"], f["subject_id"]): f for f in runs.findings(conn, r.run_id)}
    for rule in ("R3", "R4", "R5"):  # the findings stand, with the missing imagery as their evidence
        ev = got[(rule, "R5_730")]["measures"]["imagery"]
        assert ev["note"] == "无影像覆盖该宗地（no imagery covers this parcel）" and ev["construction_seen"] is None
    assert got[("R4", "IN_STABLE")]["measures"]["imagery"]["construction_seen"] is False
    assert ("V1", "IN_BUILT") in got


def test_cli_run_over_a_parcel_outside_the_imagery(outside_world, database, tmp_path):
    """`geotwin supervise run --as-of …` as the issue ran it: exit 0, no traceback, the note in the export."""
    import csv
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    names, coll, _, _ = outside_world
    exe = Path(sys.executable).with_name("geotwin")
    out = tmp_path / "run.csv"
    args = [str(exe), "supervise", "run", "--as-of", REF.isoformat(), "--rules", "R3,R4,R5", "--imagery",
            "--param", f"V1.collection={coll}_two", "--out", str(out), "--json"]
    for role in ("parcels", "streets", "imagery"):
        args += ["--layer", f"{role}={names[role]}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    summary = json.loads(p.stdout[: p.stdout.rindex("}") + 1])
    assert summary["counts"]["by_rule"]["V1"] == 1
    rows = list(csv.DictReader(out.read_text(encoding="utf-8-sig").splitlines()))
    far = [r for r in rows if r["subject_id"] == "R5_730"]
    assert len(far) == 3 and all("no imagery covers this parcel" in r["imagery.note"] for r in far)


def test_no_imagery_at_all_is_said_on_each_finding(outside_world, database, conn):
    """Imagery asked for, none there: every finding in question says that no imagery covers it."""
    names, _, _, _ = outside_world
    r = engine.run(database, as_of=REF, rules="R4", layers=names, imagery=True,
                   parameters={"V1.collection": "no_such_collection"})
    assert any("fewer than two imagery epochs" in n for n in r.notes), r.notes
    found = runs.findings(conn, r.run_id, rule="R4")
    assert {"IN_BUILT", "R5_730"} <= {f["subject_id"] for f in found}
    assert all(f["measures"]["imagery"]["note"] == "无影像覆盖该宗地（no imagery covers this parcel）" for f in found)


def test_an_imagery_row_with_an_impossible_date_is_left_out(outside_world, database, conn):
    """The imagery vector layer (epochs as rows: path, acquired_on as text) with a 30 February:
    that row is left out with a note, by V1's evidence and by R9's green ratio alike; the others
    are used."""
    from spatial_api import db

    names, _, _, paths = outside_world
    footprint = box(IX - 20, IY - 20, IX + 350, IY + 120)
    rows = [(eid, footprint, {"epoch_id": eid, "acquired_on": EPOCHS[eid], "path": str(paths[eid])})
            for eid in ("E1", "E2")]
    rows.append(("EBAD", footprint, {"epoch_id": "EBAD", "acquired_on": "2025-02-30",
                                     "path": str(paths["E2"])}))
    layers = {**names, "imagery": names["imagery"].replace("no_imagery_layer", "imagery_rows")}
    with db.connect(database) as c:
        T.write_layer(c, layers["imagery"], [("epoch_id", "string"), ("acquired_on", "string"), ("path", "string")],
                      rows, at=datetime(2024, 1, 1, tzinfo=CST), key="epoch_id", new=True)
    r = engine.run(database, as_of=REF, rules="R4,R9", layers=layers, imagery=True,
                   parameters={"V1.collection": "no_such_collection", "R9.green_collection": "no_such_collection"})
    by = {(f["rule"], f["subject_id"]): f for f in runs.findings(conn, r.run_id)}
    built = by[("R4", "IN_BUILT")]["measures"]["imagery"]
    assert (built["epoch_before"], built["epoch_after"]) == ("E1", "E2") and built["construction_seen"] is True
    assert ("V1", "IN_BUILT") in by
    for rule in ("V1", "R9"):
        assert any(n.startswith(f"{rule}: imagery layer") and "'EBAD'" in n and "acquired_on" in n for n in r.notes), \
            r.notes
    assert {"R9_LOW", "R9_OFFICE_OVER"} <= {sid for rule, sid in by if rule == "R9"}
    green = by[("R9", "IN_IND")]["measures"]
    assert green["green_ratio"] == 0 and green["green_imagery"]["item_id"] == "E2", green


# --------------------------------------------------------------------- data a rule's SQL cannot take

# a self-intersecting outline (two unequal lobes: a non-zero area, so it stays in the snapshot)
BOWTIE = Polygon([(0, 0), (100, 100), (100, 0), (0, 150), (0, 0)])
FLAT = Polygon()  # an empty outline: no area at all


@pytest.fixture(scope="module")
def poison_world(database):
    from spatial_api import db

    tag = uuid.uuid4().hex[:6]
    names = {role: f"t_spsn{tag}_{role}" for role in
             ("parcels", "buildings", "basic_farmland", "land_use", "eco_redline", "approvals", "streets")}
    at = datetime(2026, 6, 30, tzinfo=CST)
    prot = T.protected()
    ox, oy = T.X0 + 3300.0, T.Y0  # east of the rules test's parcels, inside its streets
    parcels = T.parcel_features()
    parcels.append(("P_BOWTIE", affinity.translate(BOWTIE, ox, oy), {**T.BASE, "approval_ids": None}))
    parcels.append(("P_FLAT", affinity.translate(FLAT, ox + 600, oy), {**T.BASE, "payment_due": "2026-07-10",
                                                                      "payment_received": None}))
    parcels.append(("P_DAYS", box(ox + 300, oy, ox + 400, oy + 100),
                    {**T.BASE, "extension_days": 2147483647, "actual_completion": None}))
    buildings = T.buildings() + [
        ("PB1", box(ox + 40, oy + 5, ox + 110, oy + 30), {"parcel_id": "P_BOWTIE", "height_m": 200.0, "floors": 3,
                                                         "use": "industrial", "gfa_m2": None}),
        ("PB2", box(ox + 340, oy + 40, ox + 360, oy + 60), {"parcel_id": "P_DAYS", "height_m": 10.0, "floors": 3,
                                                           "use": "residential", "gfa_m2": None})]
    # basic farmland and an approval batch over the bowtie too: R12 and R13 meet it
    farmland = prot["basic_farmland"] + [("JB_P", box(ox - 10, oy - 10, ox + 30, oy + 30), {"jbnt_id": "JB_P"})]
    approvals = prot["approvals"] + [("A-P", box(ox - 20, oy - 20, ox + 120, oy + 170),
                                      {"approval_id": "A-P", "approved_on": "2019-01-01"})]
    with db.connect(database) as conn:
        T.write_layer(conn, names["parcels"], T.PARCEL_SCHEMA, parcels, at=at, key="parcel_id", new=True)
        T.write_layer(conn, names["buildings"], T.BUILDING_SCHEMA, buildings, at=at, key="building_id", new=True)
        T.write_layer(conn, names["basic_farmland"], [("jbnt_id", "string")], farmland, at=at, key="jbnt_id", new=True)
        T.write_layer(conn, names["land_use"], [("bsm", "string"), ("dlbm", "string")], prot["land_use"], at=at,
                      key="bsm", new=True)
        T.write_layer(conn, names["eco_redline"], [("redline_id", "string")], prot["eco_redline"], at=at,
                      key="redline_id", new=True)
        T.write_layer(conn, names["approvals"], [("approval_id", "string"), ("approved_on", "date")], approvals,
                      at=at, key="approval_id", new=True)
        T.write_layer(conn, names["streets"], [("code", "string"), ("name", "string")], prot["streets"], at=at,
                      key="code", new=True)
        invalid = conn.execute("SELECT NOT ST_IsValid(geom) FROM features WHERE layer = %s AND fid = 'P_BOWTIE'",
                               (names["parcels"],)).fetchone()[0]
    assert invalid and not shapely.is_valid(BOWTIE)
    return names


def test_a_parcel_a_rule_cannot_evaluate_is_a_note(poison_world, database, conn):
    r = engine.run(database, as_of=REF, layers=poison_world, imagery=False, author="pytest")
    got: dict[str, set[str]] = {}
    for f in runs.findings(conn, r.run_id):
        got.setdefault(f["rule"], set()).add(f["subject_id"])
    # every other parcel is evaluated as in the rules test
    problems = []
    for pid, (_, must, must_not) in T.PARCELS.items():
        problems += [f"{rid} missed {pid}" for rid in must if pid not in got.get(rid, set())]
        problems += [f"{rid} wrongly found {pid}" for rid in must_not if pid in got.get(rid, set())]
    assert not problems, problems
    assert {"A-LEFT-150", "A-HALF"} <= got["R13"]
    # the poisoned ones are named, per rule, with the database's reason
    notes = "\n".join(r.notes)
    for rid in ("R11", "R12"):
        assert f"{rid}: parcel 'P_BOWTIE' could not be evaluated" in notes, notes
    assert "P_BOWTIE" in got["R10"]  # its 200 m building: R10's height check needs no overlay
    assert "R13: approval 'A-P' could not be evaluated" in notes and "Self-intersection" in notes, notes
    for rid in ("R2", "R7"):
        assert f"{rid}: parcel 'P_DAYS' could not be evaluated (date out of range)" in notes, notes
    # rules that could read them did: R3's start deadline caps the extension at 365 days
    assert not [n for n in r.notes if n.startswith(("R3:", "R4:", "R5:")) and "P_DAYS" in n]
    # a parcel without area is named too (it was left out without a word)
    assert any(n.startswith("parcels: 1 parcel(s)") and "'P_FLAT'" in n for n in r.notes), r.notes
    stored = runs.get_run(conn, r.run_id)
    assert stored["finished_at"] is not None and stored["notes"] == r.notes
    _reported_and_exported(conn, r.run_id, r.counts["total"])
