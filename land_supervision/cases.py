"""Cases: an officer turns findings into a case (assignee, due date), adds inspection records
(text, date, location, photos as files) and closes it with a disposition (fee charged, land
recovered, rectified, exempted with a reason). Every step is an event with its author and time
(``sup_case_events``, append-only); the case row holds the current state. Each call is one
transaction: a step that fails leaves the case as it was."""

from __future__ import annotations

import hashlib
import mimetypes
from datetime import date

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from land_supervision.runs import NotFound

DISPOSITIONS = {"fee_charged": "征缴闲置费/违约金", "land_recovered": "收回土地", "rectified": "已整改",
                "exempted": "免于处置"}
MAX_FILE_BYTES = 20 * 1024 * 1024


class CaseError(ValueError):
    """A case step that cannot be done; the message says why and what to do."""


def _date(value, what: str) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CaseError(f"{what} {value!r}: not a date; write it as YYYY-MM-DD") from None


def _case_row(conn: psycopg.Connection, case_id: int, *, lock: bool = False) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM sup_cases WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                          (case_id,)).fetchone()
    if not row:
        raise NotFound(f"case {case_id} does not exist; list the cases with GET /supervision/cases")
    return row


def _event(conn: psycopg.Connection, case_id: int, kind: str, author: str, details: dict,
           inspected_on: date | None = None, lon: float | None = None, lat: float | None = None) -> int:
    return conn.execute(
        "INSERT INTO sup_case_events (case_id, kind, author, details, inspected_on, location) VALUES "
        "(%s, %s, %s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL ELSE ST_SetSRID(ST_MakePoint(%s, %s), 4490) END) "
        "RETURNING id", (case_id, kind, author, Jsonb(details), inspected_on, lon, lon, lat)).fetchone()[0]


def open_case(conn: psycopg.Connection, finding_ids: list[int], *, author: str, title: str | None = None,
              assignee: str | None = None, due_date=None) -> int:
    """A case from one or more findings (of one parcel or approval batch)."""
    if not finding_ids:
        raise CaseError("finding_ids: give at least one finding id (GET /supervision/runs/{id}/findings)")
    ids = sorted({int(i) for i in finding_ids})
    due = _date(due_date, "due_date")
    with conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT id, rule, subject_id, parcel_id, message FROM sup_findings WHERE id = ANY(%s)",
                               (ids,)).fetchall()
        missing = sorted(set(ids) - {r["id"] for r in rows})
        if missing:
            raise CaseError(f"finding_ids: no finding {', '.join(map(str, missing))}")
        subjects = {r["subject_id"] for r in rows}
        if len(subjects) > 1:
            raise CaseError(f"finding_ids: a case is about one parcel or approval batch; these findings concern "
                            f"{', '.join(sorted(subjects))} — open one case each")
        taken = conn.execute(
            "SELECT cf.finding_id, c.id FROM sup_case_findings cf JOIN sup_cases c ON c.id = cf.case_id "
            "WHERE cf.finding_id = ANY(%s) AND c.status = 'open'", (ids,)).fetchall()
        if taken:
            raise CaseError("finding_ids: " + "; ".join(f"finding {f} is already in open case {c}" for f, c in taken))
        subject = subjects.pop()
        title = title or f"{subject}：" + "；".join(f"{r['rule']} {r['message']}" for r in rows)[:300]
        case_id = conn.execute(
            "INSERT INTO sup_cases (title, parcel_id, assignee, due_date, created_by) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id", (title, rows[0]["parcel_id"] or subject, assignee, due, author)).fetchone()[0]
        conn.execute("INSERT INTO sup_case_findings (case_id, finding_id) SELECT %s, unnest(%s::bigint[])",
                     (case_id, ids))
        _event(conn, case_id, "opened", author, {"finding_ids": ids, "title": title, "assignee": assignee,
                                                 "due_date": due.isoformat() if due else None})
    return case_id


def assign(conn: psycopg.Connection, case_id: int, *, author: str, assignee: str | None = None, due_date=None) -> None:
    due = _date(due_date, "due_date")
    if not assignee and due is None:
        raise CaseError("give an assignee and / or a due_date")
    with conn.transaction():
        case = _case_row(conn, case_id, lock=True)
        if case["status"] != "open":
            raise CaseError(f"case {case_id} is closed; reopen it first")
        conn.execute("UPDATE sup_cases SET assignee = coalesce(%s, assignee), due_date = coalesce(%s, due_date) "
                     "WHERE id = %s", (assignee, due, case_id))
        _event(conn, case_id, "assigned", author, {"assignee": assignee or case["assignee"],
                                                   "due_date": (due or case["due_date"]).isoformat()
                                                   if (due or case["due_date"]) else None})


def inspect(conn: psycopg.Connection, case_id: int, *, author: str, text: str, inspected_on=None,
            lon: float | None = None, lat: float | None = None,
            files: list[tuple[str, str | None, bytes]] | None = None) -> int:
    """An inspection record: text, date (default today), location (lon / lat, CGCS2000), photos."""
    if not text or not text.strip():
        raise CaseError("text: describe what the inspection found")
    day = _date(inspected_on, "inspected_on") or date.today()
    if (lon is None) != (lat is None):
        raise CaseError("location: give both lon and lat (CGCS2000 degrees) or neither")
    if lon is not None and not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise CaseError(f"location ({lon}, {lat}): lon must be in [-180, 180] and lat in [-90, 90]")
    files = files or []
    for name, _ctype, data in files:
        if not name:
            raise CaseError("files: every file needs a name")
        if len(data) > MAX_FILE_BYTES:
            raise CaseError(f"file {name!r}: {len(data)} bytes, more than the {MAX_FILE_BYTES} allowed")
        if not data:
            raise CaseError(f"file {name!r} is empty")
    with conn.transaction():
        case = _case_row(conn, case_id, lock=True)
        if case["status"] != "open":
            raise CaseError(f"case {case_id} is closed; reopen it before adding inspections")
        event_id = _event(conn, case_id, "inspection", author,
                          {"text": text.strip(), "files": [f[0] for f in files]}, day, lon, lat)
        for name, ctype, data in files:
            conn.execute(
                "INSERT INTO sup_case_files (event_id, file_name, content_type, size_bytes, sha256, data) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (event_id, name, ctype or mimetypes.guess_type(name)[0] or "application/octet-stream", len(data),
                 hashlib.sha256(data).hexdigest(), data))
    return event_id


def note(conn: psycopg.Connection, case_id: int, *, author: str, text: str) -> int:
    if not text or not text.strip():
        raise CaseError("text: the note is empty")
    with conn.transaction():
        _case_row(conn, case_id, lock=True)
        return _event(conn, case_id, "note", author, {"text": text.strip()})


def close(conn: psycopg.Connection, case_id: int, *, author: str, disposition: str, reason: str | None = None,
          fee_cny: float | None = None) -> None:
    if disposition not in DISPOSITIONS:
        raise CaseError(f"disposition {disposition!r}: choose one of {', '.join(DISPOSITIONS)}")
    if disposition == "exempted" and not (reason and reason.strip()):
        raise CaseError("disposition exempted needs a reason (e.g. 政府原因导致未按期动工，依第八条免责)")
    if disposition == "fee_charged":
        if fee_cny is None or float(fee_cny) <= 0:
            raise CaseError("disposition fee_charged needs fee_cny, the amount charged (> 0)")
    elif fee_cny is not None:
        raise CaseError(f"fee_cny is only for disposition fee_charged, not {disposition}")
    with conn.transaction():
        case = _case_row(conn, case_id, lock=True)
        if case["status"] != "open":
            raise CaseError(f"case {case_id} is already closed ({case['disposition']}); reopen it to change that")
        conn.execute(
            "UPDATE sup_cases SET status = 'closed', disposition = %s, disposition_reason = %s, fee_cny = %s, "
            "closed_by = %s, closed_at = clock_timestamp() WHERE id = %s",
            (disposition, reason, fee_cny, author, case_id))
        _event(conn, case_id, "closed", author, {"disposition": disposition, "reason": reason, "fee_cny": fee_cny})


def reopen(conn: psycopg.Connection, case_id: int, *, author: str, reason: str) -> None:
    if not reason or not reason.strip():
        raise CaseError("reason: say why the case is reopened")
    with conn.transaction():
        case = _case_row(conn, case_id, lock=True)
        if case["status"] != "closed":
            raise CaseError(f"case {case_id} is open")
        conn.execute("UPDATE sup_cases SET status = 'open', disposition = NULL, disposition_reason = NULL, "
                     "fee_cny = NULL, closed_by = NULL, closed_at = NULL WHERE id = %s", (case_id,))
        _event(conn, case_id, "reopened", author, {"reason": reason.strip(), "previous": case["disposition"]})


def get_case(conn: psycopg.Connection, case_id: int) -> dict:
    case = _case_row(conn, case_id)
    with conn.cursor(row_factory=dict_row) as cur:
        case["findings"] = cur.execute(
            "SELECT f.id, f.run_id, f.rule, f.subject_id, f.severity, f.message, f.measures FROM sup_case_findings cf "
            "JOIN sup_findings f ON f.id = cf.finding_id WHERE cf.case_id = %s ORDER BY f.id", (case_id,)).fetchall()
        events = cur.execute(
            "SELECT e.id, e.kind, e.author, e.at, e.details, e.inspected_on, ST_X(e.location) AS lon, "
            "ST_Y(e.location) AS lat FROM sup_case_events e WHERE e.case_id = %s ORDER BY e.id", (case_id,)).fetchall()
        files = cur.execute(
            "SELECT f.id, f.event_id, f.file_name, f.content_type, f.size_bytes, f.sha256 FROM sup_case_files f "
            "JOIN sup_case_events e ON e.id = f.event_id WHERE e.case_id = %s ORDER BY f.id", (case_id,)).fetchall()
    for e in events:
        e["files"] = [f for f in files if f["event_id"] == e["id"]]
    case["events"] = events
    if case["fee_cny"] is not None:
        case["fee_cny"] = float(case["fee_cny"])
    return case


def list_cases(conn: psycopg.Connection, status: str | None = None, limit: int = 200) -> list[dict]:
    q = "SELECT id, title, parcel_id, assignee, due_date, status, disposition, created_by, created_at, closed_at FROM sup_cases"
    params: list = []
    if status:
        q += " WHERE status = %s"
        params.append(status)
    q += " ORDER BY id DESC LIMIT %s"
    params.append(limit)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q, params).fetchall()


def get_file(conn: psycopg.Connection, file_id: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM sup_case_files WHERE id = %s", (file_id,)).fetchone()
    if not row:
        raise NotFound(f"file {file_id} does not exist")
    return row
