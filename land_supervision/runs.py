"""Reading runs and findings back: a run, the runs, a run's findings (with filters), its diff
against the previous run, statistics by rule / street / land-use class, and exports
(GeoJSON, CSV, XLSX)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from land_supervision.catalogue import RULES, VERIFY_RULE
from land_supervision.landuse import land_use_class_name
from land_supervision.spreadsheet import CSV_QUOTING, csv_cell, xlsx_cell
from spatial_api.api import time as timepolicy

FINDING_COLUMNS = ("f.id, f.run_id, f.rule, f.subject_id, f.parcel_id, f.severity, f.status, f.message, f.measures, "
                   "f.sources, f.area_m2, f.street_code, f.street_name, f.land_use_code")
FORMATS = ("geojson", "csv", "xlsx")


class NotFound(LookupError):
    pass


def json_default(v):
    """JSON for the values of runs and findings that json cannot write (dates, decimals, …)."""
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return str(v)


def rule_title(rid: str) -> str:
    r = RULES.get(rid) or VERIFY_RULE.get(rid) or {}
    return r.get("title_zh", rid)


def get_run(conn: psycopg.Connection, run_id: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM sup_runs WHERE id = %s", (run_id,)).fetchone()
    if not row:
        raise NotFound(f"run {run_id} does not exist; list the runs with GET /supervision/runs")
    row["inputs_changed_since"] = inputs_changed(conn, row)
    return row


def list_runs(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, as_of, known_at, rules, author, started_at, finished_at, seconds, previous_run_id, counts, "
            "layers FROM sup_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    for row in rows:
        row["inputs_changed_since"] = inputs_changed(conn, row)
    return rows


def inputs_changed(conn: psycopg.Connection, run: dict) -> list[dict]:
    """Changesets recorded after the run (or after its ``known_at``) that change the state of one
    of its layers as of its date — a late record or a correction in valid time (issue 14): the
    run's findings may no longer be what the store now says. Rerunning with ``--known-at`` the
    run's ``started_at`` reproduces its answer; without it, the corrected one."""
    layers = sorted({v["layer"] for v in (run.get("layers") or {}).values() if isinstance(v, dict) and v.get("layer")})
    if not layers:
        return []
    tz = timepolicy.zone()
    snapshot = timepolicy.day_bound(run["as_of"], "start", tz.key)  # the engine's instant for the run's date
    since = run.get("known_at") or run["started_at"]
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id AS changeset_id, layer, valid_from, recorded_at, mode FROM changesets "
            "WHERE layer = ANY(%s) AND recorded_at > %s AND valid_from <= %s ORDER BY id",
            (layers, since, snapshot)).fetchall()


def findings(conn: psycopg.Connection, run_id: int, *, rule: str | None = None, status: str | None = None,
             severity: str | None = None, subject_id: str | None = None, geometry: bool = False,
             limit: int | None = None, offset: int = 0) -> list[dict]:
    get_run(conn, run_id)
    where, params = ["f.run_id = %s"], [run_id]
    for col, val in (("rule", rule.upper() if rule else None), ("status", status), ("severity", severity),
                     ("subject_id", subject_id)):
        if val:
            where.append(f"f.{col} = %s")
            params.append(val)
    q = f"SELECT {FINDING_COLUMNS}" + (", ST_AsGeoJSON(f.geom, 8) AS geometry" if geometry else "")
    q += f" FROM sup_findings f WHERE {' AND '.join(where)} ORDER BY f.rule, f.subject_id"
    if limit is not None:
        q += " LIMIT %s OFFSET %s"
        params += [limit, offset]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q, params).fetchall()
    for r in rows:
        r["rule_title"] = rule_title(r["rule"])
    return rows


def resolved(conn: psycopg.Connection, run_id: int) -> list[dict]:
    get_run(conn, run_id)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {FINDING_COLUMNS} FROM sup_resolved r JOIN sup_findings f ON f.id = r.finding_id "
            "WHERE r.run_id = %s ORDER BY f.rule, f.subject_id", (run_id,)).fetchall()


def diff(conn: psycopg.Connection, run_id: int) -> dict:
    """Against the previous run: keys (rule, subject) that are new, persisting and resolved."""
    run = get_run(conn, run_id)
    rows = findings(conn, run_id)
    out = {"run_id": run_id, "previous_run_id": run["previous_run_id"], "new": [], "persisting": [], "resolved": []}
    for r in rows:
        out[r["status"]].append({"rule": r["rule"], "subject_id": r["subject_id"], "finding_id": r["id"]})
    out["resolved"] = [{"rule": r["rule"], "subject_id": r["subject_id"], "finding_id": r["id"]}
                       for r in resolved(conn, run_id)]
    return out


def statistics(conn: psycopg.Connection, run_id: int) -> dict:
    """Counts and areas (m², 公顷, 亩) by rule, by street and by land-use class (parcel's code,
    first level of GB/T 21010)."""
    get_run(conn, run_id)

    def group(expr: str) -> list[dict]:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                f"SELECT {expr} AS key, count(*) AS findings, count(DISTINCT subject_id) AS subjects, "
                "coalesce(sum(area_m2), 0) AS area_m2, count(*) FILTER (WHERE status = 'new') AS new "
                f"FROM sup_findings WHERE run_id = %s GROUP BY 1 ORDER BY 1 NULLS LAST", (run_id,)).fetchall()
        for r in rows:
            a = float(r["area_m2"])
            r["area_m2"], r["area_ha"], r["area_mu"] = round(a, 2), round(a / 1e4, 4), round(a * 15 / 1e4, 3)
        return rows

    by_rule = group("rule")
    for r in by_rule:
        r["title"] = rule_title(r["key"])
    by_rule.sort(key=lambda r: (len(r["key"]), r["key"]))
    by_street = group("coalesce(street_name, street_code)")
    by_class = group("left(land_use_code, 2)")
    for r in by_class:
        r["title"] = land_use_class_name(r["key"])
    return {"run_id": run_id, "by_rule": by_rule, "by_street": by_street, "by_land_use_class": by_class}


# ------------------------------------------------------------------------------ exports

def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list):
        out[prefix] = ",".join(str(v) for v in value) if all(not isinstance(v, (dict, list)) for v in value) \
            else json.dumps(value, ensure_ascii=False, default=json_default)
    else:
        out[prefix] = value


def flat_row(r: dict) -> dict:
    row = {"finding_id": r["id"], "run_id": r["run_id"], "rule": r["rule"], "rule_title": rule_title(r["rule"]),
           "subject_id": r["subject_id"], "parcel_id": r["parcel_id"], "severity": r["severity"],
           "status": r["status"], "street": r["street_name"], "land_use_code": r["land_use_code"],
           "area_m2": None if r["area_m2"] is None else round(r["area_m2"], 2), "message": r["message"]}
    _flat("", r["measures"], row)
    return row


def to_geojson(conn: psycopg.Connection, run_id: int, **filters) -> dict:
    run = get_run(conn, run_id)
    feats = []
    for r in findings(conn, run_id, geometry=True, **filters):
        props = {"rule": r["rule"], "rule_title": r["rule_title"], "parcel_id": r["parcel_id"],
                 "subject_id": r["subject_id"], "severity": r["severity"], "status": r["status"],
                 "message": r["message"], "street": r["street_name"], "land_use_code": r["land_use_code"],
                 "area_m2": r["area_m2"], **r["measures"], "sources": r["sources"]}
        feats.append({"type": "Feature", "id": r["id"],
                      "geometry": json.loads(r["geometry"]) if r["geometry"] else None, "properties": props})
    return {"type": "FeatureCollection", "name": f"supervision_run_{run_id}",
            "run": {"id": run_id, "as_of": run["as_of"], "rules": run["rules"]},
            "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4490"}},
            "features": feats}


def to_csv(conn: psycopg.Connection, run_id: int, **filters) -> str:
    rows = [flat_row(r) for r in findings(conn, run_id, **filters)]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    if not cols:
        cols = ["finding_id", "run_id", "rule", "subject_id", "parcel_id", "severity", "status", "message"]
    buf = io.StringIO()
    # every cell through csv_cell (formula injection: see spreadsheet.py); text quoted, numbers not
    w = csv.writer(buf, quoting=CSV_QUOTING)
    w.writerow([csv_cell(c) for c in cols])
    for r in rows:
        w.writerow([csv_cell(json_default(v) if isinstance(v, (date, datetime, Decimal)) else v)
                    for v in (r.get(c) for c in cols)])
    return "\ufeff" + buf.getvalue()  # BOM: Excel opens UTF-8 Chinese text correctly


def to_xlsx(conn: psycopg.Connection, run_id: int, **filters) -> bytes:
    """Workbook: 概况 (the run), 发现 (one row per finding, measures as columns), 按规则 / 按街道 /
    按用地类型 (statistics), 已消除 (resolved since the previous run)."""
    # deferred: openpyxl takes ~0.5 s to load and only XLSX exports need it
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    run = get_run(conn, run_id)
    stats = statistics(conn, run_id)
    wb = Workbook()
    ws = wb.active
    ws.title = "概况"
    bold = Font(bold=True)
    info = [("运行编号 run", run_id), ("监管基准日 as of", run["as_of"].isoformat()),
            ("规则 rules", ", ".join(run["rules"])), ("执行人 author", run["author"]),
            ("开始 started", run["started_at"].isoformat()), ("耗时 seconds", run["seconds"]),
            ("上次运行 previous run", run["previous_run_id"]),
            ("发现 findings", run["counts"].get("total")), ("新增 new", run["counts"].get("new")),
            ("持续 persisting", run["counts"].get("persisting")), ("已消除 resolved", run["counts"].get("resolved"))]
    # every cell through xlsx_cell / _cell (formula injection: see spreadsheet.py)
    for k, v in info:
        ws.append([xlsx_cell(k), xlsx_cell(v)])
        ws.cell(ws.max_row, 1).font = bold
    for note in run["notes"] or []:
        ws.append(["说明 note", xlsx_cell(note)])

    def sheet(title: str, rows: list[dict], cols: list[str] | None = None) -> None:
        s = wb.create_sheet(title)
        cols = cols or ([k for k in rows[0]] if rows else ["(none)"])
        s.append([xlsx_cell(c) for c in cols])
        for c in range(1, len(cols) + 1):
            s.cell(1, c).font = bold
        for r in rows:
            s.append([_cell(r.get(c)) for c in cols])
        for i, c in enumerate(cols, 1):
            width = max([len(str(c))] + [len(str(r.get(c) or "")) for r in rows[:200]])
            s.column_dimensions[get_column_letter(i)].width = min(60, max(8, width + 2))
        s.freeze_panes = "A2"

    rows = [flat_row(r) for r in findings(conn, run_id, **filters)]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    sheet("发现", rows, cols or None)
    sheet("按规则", stats["by_rule"], ["key", "title", "findings", "subjects", "new", "area_m2", "area_ha", "area_mu"])
    sheet("按街道", stats["by_street"], ["key", "findings", "subjects", "new", "area_m2", "area_ha", "area_mu"])
    sheet("按用地类型", stats["by_land_use_class"], ["key", "title", "findings", "subjects", "new", "area_m2",
                                                   "area_ha", "area_mu"])
    sheet("已消除", [flat_row({**r}) for r in resolved(conn, run_id)],
          ["finding_id", "run_id", "rule", "rule_title", "subject_id", "severity", "message"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _cell(v):
    """A value of a findings / statistics row as an XLSX cell (neutralised: see spreadsheet.py)."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (dict, list)):
        return xlsx_cell(json.dumps(v, ensure_ascii=False, default=json_default))
    return xlsx_cell(v)


def export(conn: psycopg.Connection, run_id: int, fmt: str, **filters) -> bytes:
    fmt = fmt.lower()
    if fmt == "geojson":
        return json.dumps(to_geojson(conn, run_id, **filters), ensure_ascii=False, default=json_default).encode()
    if fmt == "csv":
        return to_csv(conn, run_id, **filters).encode("utf-8")
    if fmt == "xlsx":
        return to_xlsx(conn, run_id, **filters)
    raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
