"""``geotwin ingest pipes``: a CJJ 61 pipe survey (points + segments of one type) → the store's
layers ``pipe_points`` and ``pipe_segments``, checked on the way in, all or nothing.

- Read and derive (:mod:`underground.survey`), check (:mod:`underground.checks`) against this
  load and the other types' stored segments; structural errors refuse the load, implausible
  depths, uphill drains and crossings refuse it unless accepted (``accept``), and are then written
  into both changesets' messages and the report. A refusal lists every problem by id
  (:class:`PipeSurveyRefused`: the first 50 in its message, all in ``.report``).
- Write: both layers in ONE transaction, one changeset each, mode ``replace`` with the other
  types' current features kept (``keep_keys``): a load of type T replaces T's features only — a
  segment absent from the new survey is closed (its history stays), the other types are
  untouched. A layer that a load leaves unchanged records no changeset (a savepoint is rolled
  back). A failure anywhere rolls both layers back; a first load's side-built partitions are
  dropped (as ``ingest_vector`` does).
- Access level ``internal``: the utility network is critical infrastructure — where a gas main
  or a power cable runs and how deep is not for anonymous callers of a public API (pipe data
  are handled as sensitive survey results in China), but the planners, land officers and
  external platforms who check excavation and clashes against it all see ``internal`` data;
  ``restricted`` would hide it from exactly the planners who need it. ``geotwin layers set``
  changes it where a bureau decides otherwise.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyproj
import shapely

from spatial_api import db, events, store
from spatial_api.config import Settings, author_default, get_settings
from spatial_api.ingest import parse_valid_time, source_digest
from spatial_api.ingest.types import IngestError, in_cli_words
from underground.catalogue import PipeType, UnknownType, pipe_type
from underground.checks import ACCEPTABLE, Axes, Problem, check_all, radius_m, summarise
from underground.survey import METRIC_CRS, STORAGE_CRS, Survey, read_survey

POINTS_LAYER = "pipe_points"
SEGMENTS_LAYER = "pipe_segments"
ACCESS_LEVEL = "internal"
#: Problems named in a refusal's message; the report file holds them all.
MESSAGE_PROBLEMS = 50

POINT_SCHEMA = [
    ("id", "string"), ("point_id", "string"), ("type", "string"), ("type_code", "string"),
    ("ground_z", "number"), ("depth", "number"), ("depth_ref", "string"), ("feature", "string"),
    ("appurtenance", "string"), ("well_depth", "number"), ("is_manhole", "boolean"), ("bottom_z", "number"),
]
SEGMENT_SCHEMA = [
    ("id", "string"), ("segment_id", "string"), ("type", "string"), ("type_code", "string"),
    ("start_id", "string"), ("end_id", "string"), ("diameter_mm", "number"), ("width_mm", "number"),
    ("height_mm", "number"), ("material", "string"), ("buried", "string"), ("owner", "string"),
    ("built", "string"), ("pressure", "string"), ("depth_ref", "string"), ("start_depth", "number"),
    ("end_depth", "number"), ("start_ground_z", "number"), ("end_ground_z", "number"),
    ("start_axis_z", "number"), ("end_axis_z", "number"), ("length_m", "number"),
]
TITLES = {"Point": ("管线点", "Pipe points"), "LineString": ("管线段", "Pipe segments")}


@dataclass
class LayerChange:
    layer: str
    changeset_id: int | None = None
    new_layer: bool = False
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    closed: int = 0
    current_total: int = 0


@dataclass
class PipeLoadReport:
    type: str
    type_code: str
    depth_ref: str
    points_file: str
    segments_file: str
    valid_from: str
    crs: str | None = None
    encodings: list[str | None] = field(default_factory=list)
    points: int = 0
    segments: int = 0
    problems: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # problems by code
    accepted: list[str] = field(default_factory=list)     # kinds accepted
    refused: bool = False
    dry_run: bool = False
    skipped: bool = False  # both layers already held this survey: nothing recorded
    changes: dict[str, dict] = field(default_factory=dict)  # layer → LayerChange
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changeset_ids(self) -> dict[str, int]:
        return {k: v["changeset_id"] for k, v in self.changes.items() if v.get("changeset_id")}

    def to_dict(self) -> dict:
        return {**asdict(self), "changeset_ids": self.changeset_ids}


class PipeSurveyRefused(IngestError):
    """The survey has problems that refuse the load; ``report.problems`` lists every one."""

    def __init__(self, message: str, report: PipeLoadReport):
        super().__init__(message)
        self.report = report


def parse_accept(accept: Iterable[str] | str | None) -> frozenset[str]:
    """``uphill,crossing`` or an iterable of kinds → a set; unknown kinds are an error."""
    if accept is None:
        return frozenset()
    items = accept.split(",") if isinstance(accept, str) else [a for x in accept for a in str(x).split(",")]
    kinds = frozenset(a.strip().lower() for a in items if a.strip())
    unknown = kinds - set(ACCEPTABLE)
    if unknown:
        raise IngestError(f"--accept {','.join(sorted(unknown))}: choose among {', '.join(ACCEPTABLE)} "
                          "(structural errors — missing points, duplicates, missing depths or sizes — are never accepted)")
    return kinds


def refusal_message(report: PipeLoadReport, refusing: list[Problem]) -> str:
    head = (f"pipe survey {report.points_file} + {report.segments_file} ({report.type} {report.type_code}) refused: "
            f"{len(refusing)} problem(s) — " + ", ".join(f"{c} {n}" for c, n in summarise(refusing).items()))
    lines = [f"  [{p.code}] {'point' if p.layer == 'points' else 'segment'} {p.id}"
             + (f" (row {p.row})" if p.row else "") + f": {p.message}" for p in refusing[:MESSAGE_PROBLEMS]]
    if len(refusing) > MESSAGE_PROBLEMS:
        lines.append(f"  … and {len(refusing) - MESSAGE_PROBLEMS} more: write them all with --report FILE.json|.csv")
    kinds = sorted({p.kind for p in refusing} - {"error"})
    tail = []
    if any(p.kind == "error" for p in refusing):
        tail.append("Fix the errors in the survey files and load again.")
    if kinds:
        tail.append(f"If the survey is right, load with --accept {','.join(kinds)} (recorded with the changeset).")
    return "\n".join([head, *lines, " ".join(tail)])


def write_report(path: str | Path, report: PipeLoadReport) -> Path:
    """The report as JSON (everything) or CSV (one problem per line, UTF-8 with BOM for Excel)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with p.open("w", encoding="utf-8-sig", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["code", "kind", "layer", "id", "row", "message"])
            w.writeheader()
            for prob in report.problems:
                w.writerow({k: prob.get(k) for k in w.fieldnames})
    else:
        p.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return p


# -- stored segments of other types -------------------------------------------------------------

def stored_axes(conn: psycopg.Connection, layer: str, exclude_code: str) -> Axes | None:
    """Current segments of every other type in ``layer``, as axes in metres (EPSG:4547)."""
    if store.get_layer(conn, layer) is None:
        return None
    rows = conn.execute(
        psycopg.sql.SQL(
            "SELECT fid, properties->>'type', (properties->>'start_axis_z')::float8, (properties->>'end_axis_z')::float8, "
            "(properties->>'width_mm')::float8, (properties->>'height_mm')::float8, properties->>'start_id', "
            "properties->>'end_id', ST_AsBinary(geom) FROM {} WHERE layer = %s AND valid_to IS NULL "
            "AND properties->>'type_code' IS DISTINCT FROM %s").format(psycopg.sql.Identifier(store.partition_name(layer))),
        (layer, exclude_code)).fetchall()
    if not rows:
        return None
    geoms = shapely.from_wkb([bytes(r[8]) for r in rows])
    to_metric = pyproj.Transformer.from_crs(STORAGE_CRS, METRIC_CRS, always_xy=True)
    first = shapely.get_point(geoms, 0)
    last = shapely.get_point(geoms, -1)
    x0, y0 = to_metric.transform(shapely.get_x(first), shapely.get_y(first))
    x1, y1 = to_metric.transform(shapely.get_x(last), shapely.get_y(last))
    num = np.array([[np.nan if v is None else v for v in r[2:6]] for r in rows], dtype=float)
    fids = np.array([r[0] for r in rows], dtype=object)
    return Axes(ids=fids, p=np.column_stack([x0, y0, num[:, 0]]), q=np.column_stack([x1, y1, num[:, 1]]),
                r=radius_m(num[:, 2], num[:, 3]),
                start=np.array([f"{f}:{r[6]}" for f, r in zip(fids, rows)], dtype=object),
                end=np.array([f"{f}:{r[7]}" for f, r in zip(fids, rows)], dtype=object),
                label=np.array([f"{r[1]} {r[0]}" for r in rows], dtype=object))


# -- the stored rows ----------------------------------------------------------------------------

def _point_rows(s: Survey) -> store.FeatureRows:
    p, t = s.points, s.ptype
    fids = (t.code + "-" + p["point_id"].astype(str)).to_numpy(dtype=object)
    props = pd.DataFrame({
        "id": fids, "point_id": p["point_id"].to_numpy(dtype=object), "type": t.name, "type_code": t.code,
        "ground_z": p["ground_z"], "depth": p["depth"], "depth_ref": t.depth_ref,
        "feature": p["feature"], "appurtenance": p["appurtenance"], "well_depth": p["well_depth"],
        "is_manhole": p["is_manhole"].astype(bool), "bottom_z": p["bottom_z"].round(4),
    })
    return store.FeatureRows(rows=p["row"].to_numpy(dtype=np.int64), fids=fids, geometry=s.point_geoms, properties=props)


def _segment_rows(s: Survey) -> store.FeatureRows:
    g, t = s.segments, s.ptype
    fids = (t.code + "-" + g["segment_id"].astype(str)).to_numpy(dtype=object)
    props = pd.DataFrame({
        "id": fids, "segment_id": g["segment_id"].to_numpy(dtype=object), "type": t.name, "type_code": t.code,
        "start_id": g["start_id"], "end_id": g["end_id"], "diameter_mm": g["diameter_mm"],
        "width_mm": g["width_mm"], "height_mm": g["height_mm"], "material": g["material"], "buried": g["buried"],
        "owner": g["owner"], "built": g["built"], "pressure": g["pressure"], "depth_ref": t.depth_ref,
        "start_depth": g["start_depth"], "end_depth": g["end_depth"], "start_ground_z": g["start_ground_z"],
        "end_ground_z": g["end_ground_z"], "start_axis_z": g["start_axis_z"].round(4),
        "end_axis_z": g["end_axis_z"].round(4), "length_m": g["length_m"].round(4),
    })
    return store.FeatureRows(rows=g["row"].to_numpy(dtype=np.int64), fids=fids, geometry=s.segment_geoms,
                             properties=props)


class _Unchanged(Exception):
    """Rolls back a layer's savepoint when its changeset would change nothing."""


def _write_layer(conn: psycopg.Connection, name: str, family: str, schema: list[tuple[str, str]],
                 rows: store.FeatureRows, ptype: PipeType, *, vf: datetime, author: str, source: str,
                 digest: str, message: str) -> LayerChange:
    """One changeset of ``name``: type ``ptype``'s features replaced, the other types' kept."""
    change = LayerChange(layer=name)
    existing = store.get_layer(conn, name)
    if existing is not None:
        if existing.geometry_family != family or existing.key_field != "id":
            raise IngestError(
                f"layer {name!r} exists but holds {existing.geometry_family}s keyed by {existing.key_field!r}, "
                f"not {family}s keyed by 'id': it is not a pipe layer. Rename or remove it before loading pipes.")
        missing = [{"name": n, "type": ty} for n, ty in schema if n not in existing.schema]
        if missing:
            store.update_layer(conn, name, properties=existing.properties + missing)
    else:
        zh, en = TITLES[family]
        try:
            store.create_layer(conn, store.Layer(
                name=name, geometry_family=family, properties=[{"name": n, "type": ty} for n, ty in schema],
                key_field="id", title_zh=zh, title_en=en, access_level=ACCESS_LEVEL,
                description="CJJ 61 pipe survey (geotwin ingest pipes)"), with_partition=False)
        except psycopg.errors.UniqueViolation:
            raise IngestError(f"layer {name!r} was created by another load meanwhile: run the command again.") from None
    prefix = ptype.code + "-"
    keep: set[str] = set()
    if existing is not None:
        keep = {r[0] for r in conn.execute(
            psycopg.sql.SQL("SELECT DISTINCT fid FROM {} WHERE layer = %s AND left(fid, %s) <> %s").format(
                psycopg.sql.Identifier(store.partition_name(name))), (name, len(prefix), prefix))}
    layer = store.get_layer(conn, name)
    try:
        with conn.transaction():  # a savepoint: rolled back when nothing changes
            result = store.write_changeset(conn, layer, rows, mode="replace", valid_from=vf, author=author,
                                           source=source, source_hash=digest, new_layer=existing is None,
                                           keep_keys=keep, message=message)
            if existing is not None and not (result.added or result.changed or result.closed):
                change.unchanged, change.current_total = result.unchanged, result.current_total
                raise _Unchanged
            store.finish_changeset(conn, result.changeset_id, {
                "added": result.added, "changed": result.changed, "unchanged": result.unchanged,
                "closed": result.closed, "current": result.current_total, "type": ptype.name})
    except _Unchanged:
        return change
    change.changeset_id, change.new_layer = result.changeset_id, existing is None
    change.added, change.changed, change.unchanged = result.added, result.changed, result.unchanged
    change.closed, change.current_total = result.closed, result.current_total
    return change


def _message(report: PipeLoadReport, accepted: list[Problem]) -> str:
    text = f"管线探测 {report.type} {report.type_code}: {report.points} points, {report.segments} segments"
    if accepted:
        text += f"; accepted ({', '.join(report.accepted)}): " + "; ".join(
            f"[{p.code}] {p.id}: {p.message}" for p in accepted[:20])
        if len(accepted) > 20:
            text += f"; … {len(accepted) - 20} more"
    return text


@in_cli_words
def ingest_pipes(points: str | Path, segments: str | Path, *, type: str, crs: str | None = None,
                 valid_from: date | datetime | str | None = None, author: str | None = None,
                 accept: Iterable[str] | str | None = frozenset(), settings: Settings | None = None,
                 conn: psycopg.Connection | None = None, dry_run: bool = False,
                 points_layer: str = POINTS_LAYER, segments_layer: str = SEGMENTS_LAYER) -> PipeLoadReport:
    """Check and load one type's survey (see the module doc). ``conn``: run in the caller's
    transaction (the caller commits, and announces the changesets with ``events.committed``);
    ``dry_run``: check only. Raises :class:`PipeSurveyRefused` (an IngestError) on problems."""
    started = time.perf_counter()
    settings = settings or get_settings()
    try:
        ptype = pipe_type(type)
    except UnknownType as exc:
        raise IngestError(str(exc)) from None
    kinds = parse_accept(accept)
    store.check_layer_name(points_layer)
    store.check_layer_name(segments_layer)
    from spatial_api.api import time as timepolicy

    vf = parse_valid_time(valid_from if valid_from is not None else
                          datetime.now(timepolicy.zone(settings.timezone)).date().isoformat(), settings.timezone)
    survey = read_survey(points, segments, ptype, crs=crs)
    report = PipeLoadReport(type=ptype.name, type_code=ptype.code, depth_ref=ptype.depth_ref, points_file=str(points),
                            segments_file=str(segments), valid_from=vf.isoformat(), crs=survey.crs,
                            encodings=list(survey.encodings), points=len(survey.points),
                            segments=len(survey.segments), accepted=sorted(kinds), dry_run=dry_run,
                            notes=survey.notes)
    if not len(survey.points):
        raise IngestError(f"{points}: holds no pipe points.")
    if not len(survey.segments):
        raise IngestError(f"{segments}: holds no pipe segments.")

    def stored(c):
        return stored_axes(c, segments_layer, ptype.code)

    if conn is not None:
        others = stored(conn)
    else:
        with db.connect(settings) as c:
            others = stored(c)
    problems = check_all(survey.points, survey.segments, ptype, stored=others, read_problems=survey.problems)
    report.problems = [p.to_dict() for p in problems]
    report.counts = summarise(problems)
    refusing = [p for p in problems if p.kind == "error" or p.kind not in kinds]
    accepted = [p for p in problems if p.kind != "error" and p.kind in kinds]
    if refusing:
        report.refused = True
        report.seconds = round(time.perf_counter() - started, 3)
        raise PipeSurveyRefused(refusal_message(report, refusing), report)
    if dry_run:
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    message = _message(report, accepted)
    author = author or author_default()
    pdigest, sdigest = source_digest(Path(points)), source_digest(Path(segments))

    def write(c: psycopg.Connection) -> None:
        c.execute("SELECT 1")  # in a transaction: the layers' savepoints nest inside it
        for name, family, schema, rows, src, digest in (
                (points_layer, "Point", POINT_SCHEMA, _point_rows(survey), str(points), pdigest),
                (segments_layer, "LineString", SEGMENT_SCHEMA, _segment_rows(survey), str(segments), sdigest)):
            change = _write_layer(c, name, family, schema, rows, ptype, vf=vf, author=author, source=src,
                                  digest=digest, message=message)
            report.changes[name] = asdict(change)

    if conn is not None:
        write(conn)
    else:
        try:
            with db.transaction(settings) as c:
                write(c)
        except BaseException:
            for name in (points_layer, segments_layer):  # a failed first load's side-built partitions
                try:
                    store.drop_orphan_partition(name, settings=settings)
                except Exception:  # the original error matters more; the next load cleans up too
                    pass
            raise
        for name, change in report.changes.items():
            if change["changeset_id"]:
                events.committed(settings.db_schema, name, change["changeset_id"])
    report.skipped = not report.changeset_ids
    report.seconds = round(time.perf_counter() - started, 3)
    return report


__all__ = [
    "ACCESS_LEVEL",
    "POINTS_LAYER",
    "POINT_SCHEMA",
    "SEGMENTS_LAYER",
    "SEGMENT_SCHEMA",
    "PipeLoadReport",
    "PipeSurveyRefused",
    "ingest_pipes",
    "parse_accept",
    "refusal_message",
    "stored_axes",
    "write_report",
]
