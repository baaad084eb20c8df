"""The rule library R1–R13 on hand-built parcels just inside and just outside each threshold,
on the real PostGIS store (layers written with store.write_changeset, as of 2026-06-30);
then reproducibility of a run as of an earlier date after later edits, and the new / persisting /
resolved diff between runs."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box

from land_supervision import catalogue, engine, runs
from land_supervision.catalogue import RuleError
from spatial_api import store

CST = timezone(timedelta(hours=8))
REF = date(2026, 6, 30)
TO_4490 = Transformer.from_crs(4547, 4490, always_xy=True)
X0, Y0 = 520000.0, 2510000.0
SIDE = 100.0


def d(days: int) -> str:
    return (REF + timedelta(days=days)).isoformat()


PARCEL_SCHEMA = [
    ("parcel_id", "string"), ("land_use_code", "string"), ("price_cny", "number"), ("contract_date", "date"),
    ("agreed_start", "date"), ("agreed_completion", "date"), ("actual_start", "date"),
    ("actual_completion", "date"), ("extension_days", "integer"), ("exemption", "string"),
    ("payment_due", "date"), ("payment_received", "date"), ("far_min", "number"), ("far_max", "number"),
    ("density_max", "number"), ("height_max_m", "number"), ("setback_m", "number"), ("gfa_due_m2", "number"),
    ("gfa_built_m2", "number"), ("investment_total_cny", "number"), ("investment_done_cny", "number"),
    ("stopped_since", "date"), ("basement_levels", "integer"), ("approval_ids", "string"),
]
BUILDING_SCHEMA = [("building_id", "string"), ("parcel_id", "string"), ("height_m", "number"),
                   ("floors", "integer"), ("use", "string"), ("gfa_m2", "number")]

BASE = {  # a parcel that breaks no rule: paid, started on time, not stalled, within its conditions
    "land_use_code": "0701", "price_cny": 100_000_000.0, "contract_date": "2020-01-01",
    "agreed_start": "2020-06-01", "agreed_completion": "2030-01-01", "actual_start": "2020-05-01",
    "actual_completion": None, "extension_days": 0, "exemption": None, "payment_due": "2020-02-01",
    "payment_received": "2020-01-20", "far_min": 0.0, "far_max": 3.0, "density_max": 0.5, "height_max_m": 100.0,
    "setback_m": 0.0, "gfa_due_m2": 10000.0, "gfa_built_m2": 5000.0, "investment_total_cny": 1e8,
    "investment_done_cny": 6e7, "stopped_since": None, "basement_levels": 1, "approval_ids": None,
}
NOT_STARTED = {"actual_start": None}

# parcel id → (attribute changes, expected to be found by these rules, must NOT be found by these)
PARCELS: dict[str, tuple[dict, set, set]] = {
    "BASE": ({}, set(), set(catalogue.RULE_IDS)),
    # R1 payment due within 30 days and unpaid
    "R1_IN": ({"payment_due": d(30), "payment_received": None}, {"R1"}, set()),
    "R1_OUT": ({"payment_due": d(31), "payment_received": None}, set(), {"R1"}),
    "R1_PAID": ({"payment_due": d(10), "payment_received": d(-1)}, set(), {"R1"}),
    "R1_PAID_LATER": ({"payment_due": d(10), "payment_received": d(5)}, {"R1"}, set()),  # unpaid as of REF
    # R2 start / completion deadline within 30 days
    "R2_START": ({**NOT_STARTED, "agreed_start": d(30)}, {"R2"}, {"R3"}),
    "R2_START_OUT": ({**NOT_STARTED, "agreed_start": d(31)}, set(), {"R2", "R3"}),
    "R2_DONE": ({"agreed_completion": d(5), "actual_completion": d(-3)}, set(), {"R2", "R7"}),
    "R2_COMPLETION": ({"agreed_completion": d(0)}, {"R2"}, {"R7"}),
    # R3 late start: agreed start + extension (capped at 365 days) passed
    "R3_IN": ({**NOT_STARTED, "agreed_start": d(-1)}, {"R3"}, {"R4", "R2"}),
    "R3_EXT": ({**NOT_STARTED, "agreed_start": d(-100), "extension_days": 100}, {"R2"}, {"R3"}),
    "R3_EXT_CAP": ({**NOT_STARTED, "agreed_start": d(-400), "extension_days": 500}, {"R3"}, {"R4"}),
    # R4 / R5 idle one / two years (365 / 730 days), Art. 8 exemption
    "R4_365": ({**NOT_STARTED, "agreed_start": d(-365)}, {"R3", "R4"}, {"R5"}),
    "R4_364": ({**NOT_STARTED, "agreed_start": d(-364)}, {"R3"}, {"R4"}),
    "R4_EXEMPT": ({**NOT_STARTED, "agreed_start": d(-800), "exemption": "政府未按期交付土地（第八条）"},
                  set(), {"R3", "R4", "R5"}),
    "R5_730": ({**NOT_STARTED, "agreed_start": d(-730)}, {"R3", "R4", "R5"}, set()),
    "R5_729": ({**NOT_STARTED, "agreed_start": d(-729)}, {"R3", "R4"}, {"R5"}),
    # R6 stalled: stopped ≥ 365 days and built < 1/3 or invested < 25%
    "R6_IN": ({"stopped_since": d(-365), "gfa_built_m2": 3000.0}, {"R6"}, set()),
    "R6_364": ({"stopped_since": d(-364), "gfa_built_m2": 3000.0}, set(), {"R6"}),
    "R6_ENOUGH": ({"stopped_since": d(-500), "gfa_built_m2": 3400.0, "investment_done_cny": 2.5e7}, set(), {"R6"}),
    "R6_INVEST": ({"stopped_since": d(-400), "investment_done_cny": 2.499e7}, {"R6"}, set()),
    # R7 late completion
    "R7_IN": ({"agreed_completion": d(-1)}, {"R7"}, set()),
    "R7_EXT": ({"agreed_completion": d(-10), "extension_days": 30}, {"R2"}, {"R7"}),
    # R8 FAR / density (one 50 × 40 m building, 10 floors, no gfa_m2 → FAR 2.0, density 0.2)
    "R8_AT": ({"far_max": 2.0, "density_max": 0.2}, set(), {"R8"}),
    "R8_OVER": ({"far_max": 1.99}, {"R8"}, set()),
    "R8_DENSE": ({"density_max": 0.19}, {"R8"}, set()),
    "R8_MIN": ({"far_min": 2.01, "actual_completion": d(-10)}, {"R8"}, set()),
    "R8_MIN_OPEN": ({"far_min": 2.01}, set(), {"R8"}),
    # R9 industrial: coverage ≥ 30%, office / living ≤ 7% (completed)
    "R9_AT": ({"land_use_code": "0601", "actual_completion": d(-10)}, set(), {"R9"}),
    "R9_LOW": ({"land_use_code": "0601", "actual_completion": d(-10)}, {"R9"}, set()),
    "R9_OFFICE": ({"land_use_code": "0601", "actual_completion": d(-10)}, set(), {"R9"}),
    "R9_OFFICE_OVER": ({"land_use_code": "0601", "actual_completion": d(-10)}, {"R9"}, set()),
    # R10 height and setback (10 m)
    "R10_TALL": ({}, {"R10"}, set()),
    "R10_HEIGHT_AT": ({}, set(), {"R10"}),
    "R10_SETBACK": ({"setback_m": 10.0}, {"R10"}, {"R11"}),
    "R10_SETBACK_OK": ({"setback_m": 10.0}, set(), {"R10"}),
    # R11 out of bounds (tolerance 1.0 m and 1 m²)
    "R11_04": ({}, set(), {"R11"}),
    "R11_2": ({}, {"R11"}, set()),
    "R11_SMALL": ({}, set(), {"R11"}),
    # R12 protected land
    "R12_BF": ({}, {"R12"}, set()),
    "R12_APPROVED": ({"approval_ids": "A-OK"}, set(), {"R12"}),
    "R12_TINY": ({}, set(), {"R12"}),
    "R12_UNKNOWN": ({"approval_ids": "A-NOPE"}, {"R12"}, set()),
    "R12_URBAN": ({}, set(), {"R12"}),
    "R12_FOREST": ({}, {"R12"}, set()),
    "R12_RED": ({}, {"R12"}, set()),
}
NAMES = list(PARCELS)


def origin(pid: str) -> tuple[float, float]:
    i = NAMES.index(pid)
    return X0 + (i % 10) * 300.0, Y0 + (i // 10) * 300.0


def parcel_box(pid: str):
    x, y = origin(pid)
    return box(x, y, x + SIDE, y + SIDE)


def rect(pid: str, x0: float, y0: float, x1: float, y1: float):
    """A rectangle relative to the parcel's lower-left corner (metres, EPSG:4547)."""
    x, y = origin(pid)
    return box(x + x0, y + y0, x + x1, y + y1)


def buildings() -> list[tuple[str, object, dict]]:
    out = []

    def b(pid, geom, *, height=30.0, floors=1, use="industrial", gfa=None, n=[0]):
        n[0] += 1
        out.append((f"B{n[0]:03d}", geom, {"parcel_id": pid, "height_m": height, "floors": floors, "use": use,
                                           "gfa_m2": gfa}))

    for pid in ("R8_AT", "R8_OVER", "R8_DENSE", "R8_MIN", "R8_MIN_OPEN"):
        b(pid, rect(pid, 20, 20, 70, 60), floors=10, use="residential")  # 2000 m² × 10 floors
    b("R9_AT", rect("R9_AT", 10, 10, 70, 60))  # 3000 m²: coverage 0.300
    b("R9_LOW", rect("R9_LOW", 10, 10, 69, 60))  # 2950 m²: 0.295
    b("R9_OFFICE", rect("R9_OFFICE", 10, 10, 70, 60))
    b("R9_OFFICE", rect("R9_OFFICE", 75, 10, 95, 35), use="office")  # 500 m²: 0.05
    b("R9_OFFICE_OVER", rect("R9_OFFICE_OVER", 10, 10, 70, 60))
    b("R9_OFFICE_OVER", rect("R9_OFFICE_OVER", 75, 10, 95, 47.5), use="dormitory")  # 750 m²: 0.075
    b("R10_TALL", rect("R10_TALL", 30, 30, 50, 50), height=100.5)
    b("R10_HEIGHT_AT", rect("R10_HEIGHT_AT", 30, 30, 50, 50), height=100.0)
    b("R10_SETBACK", rect("R10_SETBACK", 9, 40, 29, 60))  # 1 m into the 10 m setback: 20 m²
    b("R10_SETBACK_OK", rect("R10_SETBACK_OK", 10.5, 40, 30.5, 60))
    b("R11_04", rect("R11_04", 80.4, 40, 100.4, 60))  # 0.4 m outside
    b("R11_2", rect("R11_2", 82, 40, 102, 60))  # 2 m outside: 1 m × 20 m beyond the tolerance
    b("R11_SMALL", rect("R11_SMALL", 91.5, 40, 101.5, 41.5))  # 1.5 m out, 1.5 m wide: 0.75 m² beyond
    for pid in NAMES:  # everyone else: a modest building well inside
        if pid.startswith(("R8", "R9", "R10", "R11")):
            continue
        b(pid, rect(pid, 40, 40, 60, 60), floors=3, use="residential")
    return out


def protected() -> dict[str, list[tuple[str, object, dict]]]:
    return {
        "basic_farmland": [("JB1", rect("R12_BF", 90, 0, 110, 10), {"jbnt_id": "JB1"}),
                           ("JB2", rect("R12_APPROVED", 90, 0, 110, 10), {"jbnt_id": "JB2"}),
                           ("JB3", rect("R12_TINY", 99.5, 0, 120, 1), {"jbnt_id": "JB3"})],  # 0.5 m²
        "land_use": [("L1", rect("R12_UNKNOWN", 90, 0, 110, 10), {"bsm": "L1", "dlbm": "0102"}),
                     ("L2", rect("R12_URBAN", 90, 0, 110, 10), {"bsm": "L2", "dlbm": "0701"}),
                     ("L3", rect("R12_FOREST", 90, 0, 110, 10), {"bsm": "L3", "dlbm": "0301"})],
        "eco_redline": [("E1", rect("R12_RED", -10, -10, 5, 5), {"redline_id": "E1"})],
        "approvals": [
            ("A-OK", rect("R12_APPROVED", 40, 70, 45, 75), {"approval_id": "A-OK", "approved_on": "2019-01-01"}),
            ("A-LEFT-150", rect("BASE", 120, 0, 135, 10), {"approval_id": "A-LEFT-150", "approved_on": "2019-05-01"}),
            ("A-LEFT-50", rect("BASE", 150, 0, 160, 5), {"approval_id": "A-LEFT-50", "approved_on": "2019-05-01"}),
            ("A-HALF", rect("R1_IN", 80, 0, 120, 40), {"approval_id": "A-HALF", "approved_on": "2025-01-01"}),
            ("A-FUTURE", rect("BASE", 120, 50, 160, 90), {"approval_id": "A-FUTURE", "approved_on": d(10)}),
        ],
        "streets": [("440307001", box(X0 - 1000, Y0 - 1000, X0 + 4000, Y0 + 2500),
                     {"code": "440307001", "name": "测试街道"})],
    }


def to_4490(g):
    return shapely.transform(g, lambda xy: np.column_stack(TO_4490.transform(xy[:, 0], xy[:, 1])))


def write_layer(conn, name: str, schema: list[tuple[str, str]], feats: list[tuple[str, object, dict]], *,
                at: datetime, key: str, new: bool) -> None:
    if new:
        store.create_layer(conn, store.Layer(name=name, geometry_family="Polygon", key_field=key,
                                             properties=[{"name": n, "type": t} for n, t in schema]),
                           with_partition=False)
    layer = store.get_layer(conn, name)
    props = pd.DataFrame([{n: {**p, key: fid}.get(n) for n, _ in schema} for fid, _, p in feats], dtype=object)
    rows = store.FeatureRows(rows=np.arange(1, len(feats) + 1), fids=np.array([f[0] for f in feats], dtype=object),
                             geometry=np.array([to_4490(f[1]) for f in feats], dtype=object), properties=props)
    store.write_changeset(conn, layer, rows, mode="replace", valid_from=at, author="pytest", source="test",
                          new_layer=new)
    conn.commit()


def parcel_features(changes: dict[str, dict] | None = None):
    out = []
    for pid, (attrs, _, _) in PARCELS.items():
        props = {**BASE, **attrs, **(changes or {}).get(pid, {})}
        out.append((pid, parcel_box(pid), props))
    return out


@pytest.fixture(scope="module")
def world(database):
    """Layers under unique names, mapped onto the rules' roles."""
    from spatial_api import db

    tag = uuid.uuid4().hex[:6]
    names = {role: f"t_sup{tag}_{role}" for role in
             ("parcels", "buildings", "basic_farmland", "land_use", "eco_redline", "approvals", "streets")}
    at = datetime(2026, 6, 30, tzinfo=CST)
    prot = protected()
    with db.connect(database) as conn:
        write_layer(conn, names["parcels"], PARCEL_SCHEMA, parcel_features(), at=at, key="parcel_id", new=True)
        write_layer(conn, names["buildings"], BUILDING_SCHEMA, buildings(), at=at, key="building_id", new=True)
        write_layer(conn, names["basic_farmland"], [("jbnt_id", "string")], prot["basic_farmland"], at=at,
                    key="jbnt_id", new=True)
        write_layer(conn, names["land_use"], [("bsm", "string"), ("dlbm", "string")], prot["land_use"], at=at,
                    key="bsm", new=True)
        write_layer(conn, names["eco_redline"], [("redline_id", "string")], prot["eco_redline"], at=at,
                    key="redline_id", new=True)
        write_layer(conn, names["approvals"], [("approval_id", "string"), ("approved_on", "date")],
                    prot["approvals"], at=at, key="approval_id", new=True)
        write_layer(conn, names["streets"], [("code", "string"), ("name", "string")], prot["streets"], at=at,
                    key="code", new=True)
    return names


def found(conn, run_id: int) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {r: set() for r in catalogue.RULE_IDS}
    for r in runs.findings(conn, run_id):
        out.setdefault(r["rule"], set()).add(r["subject_id"])
    return out


@pytest.fixture(scope="module")
def first_run(world, database):
    return engine.run(database, as_of=REF, layers=world, imagery=False, author="pytest")


def test_every_rule_just_inside_and_just_outside(first_run, conn):
    got = found(conn, first_run.run_id)
    problems = []
    for pid, (_, must, must_not) in PARCELS.items():
        for rid in must:
            if pid not in got[rid]:
                problems.append(f"{rid} missed {pid}")
        for rid in must_not:
            if pid in got[rid]:
                problems.append(f"{rid} wrongly found {pid}")
    assert not problems, problems
    assert got["R13"] == {"A-LEFT-150", "A-HALF"}
    assert first_run.counts["new"] == first_run.counts["total"] and first_run.previous_run_id is None


def test_measured_values(first_run, conn):
    by = {(r["rule"], r["subject_id"]): r for r in runs.findings(conn, first_run.run_id, geometry=True)}
    m = by[("R3", "R3_IN")]["measures"]
    assert m["days_late"] == 1 and m["penalty_cny"] == pytest.approx(1e8 * 0.001 * 1)
    assert by[("R3", "R3_EXT_CAP")]["measures"]["days_late"] == 35  # extension capped at 365 days
    m = by[("R4", "R4_365")]["measures"]
    assert m["idle_days"] == 365 and m["idle_fee_cny"] == pytest.approx(2e7)
    assert by[("R5", "R5_730")]["severity"] == "critical"
    m = by[("R8", "R8_OVER")]["measures"]
    assert m["far"] == pytest.approx(2.0) and m["far_max"] == 1.99 and m["gfa_m2"] == pytest.approx(20000, rel=1e-6)
    m = by[("R9", "R9_OFFICE_OVER")]["measures"]
    assert m["office_share"] == pytest.approx(0.075) and m["coverage"] == pytest.approx(0.375)
    m = by[("R10", "R10_SETBACK")]["measures"]
    assert m["setback_area"]["m2"] == pytest.approx(20.0, abs=0.01)
    m = by[("R11", "R11_2")]["measures"]
    assert m["outside_area"]["m2"] == pytest.approx(40.0, abs=0.01)  # 2 m × 20 m outside the parcel
    assert m["beyond_tolerance_m2"] == pytest.approx(20.0, abs=0.2) and m["max_distance_m"] == pytest.approx(2.0, abs=0.01)
    ev = shapely.from_geojson(by[("R11", "R11_2")]["geometry"])
    assert shapely.area(shapely.transform(ev, lambda xy: xy)) > 0  # the out-of-bounds part is the evidence
    m = by[("R12", "R12_BF")]
    assert m["severity"] == "critical" and m["measures"]["overlap"]["m2"] == pytest.approx(100.0, abs=0.01)
    assert m["measures"]["overlap"]["mu"] == pytest.approx(0.15, abs=0.001)  # 100 m² = 0.15 亩
    assert m["measures"]["overlap"]["ha"] == pytest.approx(0.01, abs=1e-4)
    assert by[("R12", "R12_UNKNOWN")]["measures"]["unknown_approval_ids"] == ["A-NOPE"]
    assert set(by[("R12", "R12_FOREST")]["measures"]["by_kind"]) == {"forest"}
    m = by[("R13", "A-HALF")]["measures"]
    assert m["unsupplied_area"]["m2"] == pytest.approx(800.0, abs=0.05) and m["supplied_share"] == pytest.approx(0.5, abs=1e-3)
    assert by[("R13", "A-LEFT-150")]["severity"] == "high"  # approved over two years before
    assert all(r["street_name"] == "测试街道" for r in by.values())
    run = runs.get_run(conn, first_run.run_id)
    assert run["layers"]["parcels"]["features"] == len(PARCELS) and run["layers"]["parcels"]["changeset_id"]
    # the Web Mercator copy (a PROJ string pair, not EPSG:3857's operation search) is EPSG:3857's geometry
    worst, srid = conn.execute(
        "SELECT max(ST_HausdorffDistance(geom_3857, ST_Transform(geom, 3857))), min(ST_SRID(geom_3857)) "
        "FROM sup_findings WHERE run_id = %s", (first_run.run_id,)).fetchone()
    assert srid == 3857 and worst < 1e-6


def test_parameters_are_data(world, database, conn):
    r = engine.run(database, as_of=REF, rules="R11", layers=world, imagery=False,
                   parameters={"R11.distance_tolerance_m": 0.3})
    # 0.3 m: R11_04 has 0.1 m × 20 m = 2 m² beyond, R11_SMALL 1.2 m × 1.5 m = 1.8 m²
    assert {x["subject_id"] for x in runs.findings(conn, r.run_id)} == {"R11_04", "R11_2", "R11_SMALL"}
    r = engine.run(database, as_of=REF, rules=["R4"], layers=world, imagery=False,
                   parameters={"R4": {"fee_rate": 0.1}})
    assert runs.findings(conn, r.run_id, subject_id="R4_365")[0]["measures"]["idle_fee_cny"] == pytest.approx(1e7)
    # R7 by the Shenzhen housing rule: contract (2020-01-01) + 4 years, + 183 days with ≥ 3 basement levels
    r = engine.run(database, as_of=REF, rules="R7", layers=world, imagery=False,
                   parameters={"R7.basis": "shenzhen_housing"})
    late = {x["subject_id"]: x["measures"] for x in runs.findings(conn, r.run_id)}
    open_ = {pid for pid, (attrs, _, _) in PARCELS.items() if {**BASE, **attrs}["actual_completion"] is None}
    assert set(late) == open_ and late["BASE"]["deadline"] == "2024-01-01"
    with pytest.raises(RuleError, match="R4.fee_rte: unknown"):
        engine.run(database, as_of=REF, rules="R4", layers=world, parameters={"R4.fee_rte": 1})
    with pytest.raises(RuleError, match="not loaded"):
        engine.run(database, as_of=REF, rules="R8", layers={**world, "buildings": "t_no_such_layer"})


def test_bad_value_names_feature_and_field(database, conn):
    tag = uuid.uuid4().hex[:6]
    name = f"t_sup{tag}_bad"
    feats = parcel_features({"R1_IN": {"agreed_start": "next spring"}})
    write_layer(conn, name, PARCEL_SCHEMA[:4] + [("agreed_start", "string")] + PARCEL_SCHEMA[5:], feats,
                at=datetime(2026, 6, 30, tzinfo=CST), key="parcel_id", new=True)
    before = conn.execute("SELECT count(*) FROM sup_runs").fetchone()[0]
    with pytest.raises(RuleError, match=r"'R1_IN' field 'agreed_start' = 'next spring'"):
        engine.run(database, as_of=REF, rules="R3", layers={"parcels": name}, conn=conn)
    assert conn.execute("SELECT count(*) FROM sup_runs").fetchone()[0] == before  # nothing stored


def test_castable_but_unreadable_value_is_named(database, conn):
    """'Infinity' casts to float8 (no cast error), yet it is no number the rules can use: the
    validation in the snapshot's scan names it."""
    name = f"t_sup{uuid.uuid4().hex[:6]}_inf"
    feats = parcel_features({"R8_OVER": {"far_max": "Infinity"}})
    schema = [(n, "string" if n == "far_max" else t) for n, t in PARCEL_SCHEMA]
    write_layer(conn, name, schema, feats, at=datetime(2026, 6, 30, tzinfo=CST), key="parcel_id", new=True)
    with pytest.raises(RuleError, match=r"'R8_OVER' field 'far_max' = 'Infinity' \(expected a number\)"):
        engine.run(database, as_of=REF, rules="R3", layers={"parcels": name}, conn=conn)


def test_bad_building_value_names_the_building(world, database, conn):
    name = f"t_sup{uuid.uuid4().hex[:6]}_bb"
    feats = [(bid, geom, {**props, "floors": "three"} if bid == "B003" else props) for bid, geom, props in buildings()]
    schema = [(n, "string" if n == "floors" else t) for n, t in BUILDING_SCHEMA]
    write_layer(conn, name, schema, feats, at=datetime(2026, 6, 30, tzinfo=CST), key="building_id", new=True)
    with pytest.raises(RuleError, match=r"'B003' field 'floors' = 'three' \(expected a number\)"):
        engine.run(database, as_of=REF, rules="R8", layers={**world, "buildings": name}, imagery=False, conn=conn)


def test_earlier_date_reproducible_and_diff(world, database, conn, first_run):
    # later edits, valid from 2026-07-01: R4_365 starts, R1_IN pays
    later = datetime(2026, 7, 1, tzinfo=CST)
    write_layer(conn, world["parcels"], PARCEL_SCHEMA,
                parcel_features({"R4_365": {"actual_start": "2026-07-01"},
                                 "R1_IN": {"payment_received": "2026-07-01"}}),
                at=later, key="parcel_id", new=False)
    again = engine.run(database, as_of=REF, layers=world, imagery=False)

    def content(run_id):
        return {(r["rule"], r["subject_id"]): (r["severity"], r["measures"], r["message"])
                for r in runs.findings(conn, run_id)}

    assert content(again.run_id) == content(first_run.run_id)  # the past is not rewritten by later edits
    assert again.counts["new"] == 0 and again.counts["resolved"] == 0
    assert again.counts["persisting"] == first_run.counts["total"]

    nxt = engine.run(database, as_of=date(2026, 7, 1), layers=world, imagery=False)
    assert nxt.previous_run_id == again.run_id
    dif = runs.diff(conn, nxt.run_id)
    new = {(x["rule"], x["subject_id"]) for x in dif["new"]}
    resolved = {(x["rule"], x["subject_id"]) for x in dif["resolved"]}
    persisting = {(x["rule"], x["subject_id"]) for x in dif["persisting"]}
    assert ("R4", "R4_364") in new  # a day later it is one full year idle
    assert ("R5", "R5_729") in new
    assert {("R4", "R4_365"), ("R3", "R4_365"), ("R1", "R1_IN")} <= resolved
    assert ("R12", "R12_BF") in persisting and ("R4", "R5_730") in persisting
    assert nxt.counts["resolved"] == len(resolved) and nxt.counts["new"] == len(new)


def test_migration_downgrade_and_upgrade(database):
    """0006's downgrade removes exactly its tables and function; upgrading again restores them."""
    from alembic import command

    from spatial_api import db
    from spatial_api.db.migrations import alembic_config

    s = database.replace(db_schema=f"{database.db_schema}_mig")
    tables = ("sup_runs", "sup_findings", "sup_resolved", "sup_cases", "sup_case_findings", "sup_case_events",
              "sup_case_files")
    with db.connect(s, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{s.db_schema}" CASCADE')
    try:
        db.migrate(s)

        def present():
            with db.connect(s) as c:
                return {t for t in tables if c.execute("SELECT to_regclass(%s)", (f"{s.db_schema}.{t}",)).fetchone()[0]}

        assert present() == set(tables)
        command.downgrade(alembic_config(s), "0005")
        assert present() == set() and db.current_revision(s) == "0005"
        with db.connect(s) as c:
            assert c.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                             "WHERE p.proname = 'sup_area_units' AND n.nspname = %s", (s.db_schema,)).fetchone()[0] == 0
            assert c.execute("SELECT to_regclass(%s)", (f"{s.db_schema}.layers",)).fetchone()[0]  # the rest stays
        db.migrate(s)
        assert present() == set(tables)
    finally:
        with db.connect(s, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{s.db_schema}" CASCADE')
