"""The rule engine: one run = snapshots of the layers as of the run's date (the store's temporal
filter on each layer's partition), every selected rule as one set-based INSERT … SELECT into
``sup_findings``, then the comparison with the previous run — all in one transaction, so a failed
run leaves nothing behind.

Snapshots (temporary tables, dropped at commit), each built by ONE statement from the layer's
partition: temporal filter, ST_Transform once per row, typed casts, and the check of every date /
number field the rules read in the same scan (a ``bad`` flag per row; the feature-and-field error
message is composed from the raw rows only when a value is bad or a cast fails):

- ``_sup_p``  parcels: typed contract fields, ``g`` (EPSG:4547), ``g4490``, ``area_m2``;
- ``_sup_b``  buildings attached to a snapshot parcel (``parcel_id``): height, floors, use,
              ``foot`` (footprint m²), ``gfa`` (gfa_m2, else floors × footprint), ``g``;
- ``_sup_a``  approval batches: ``approved_on``, ``g``;
- ``_sup_s``  streets, EPSG:4490 only (a handful of polygons, looked up for the findings' points);
- ``_sup_green`` (R9 only) green ratios measured from imagery (``greenness.py``).

Indexes: parcel_id (unique) and GiST on ``_sup_p``, parcel_id on ``_sup_b``, approval_id and GiST
on ``_sup_a``; ANALYZE of the join keys only. (Temporary tables are never scanned by parallel
workers; on 2 shared cores that would not pay anyway.)

A run may be restricted to a ``Scope`` (a part of the district: its parcels, its approval batches
and the context parcels R13 reads across the part's edge): the same snapshots and statements over
the scope's rows only. ``run`` stores a run (the SQL engine); ``evaluate_findings`` returns the
findings of a scope instead (a task of ``dask_engine``, or a dry run); both go through ``evaluate``.

Nothing here loops over parcels in Python.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime

import psycopg
from psycopg import sql

from land_supervision import catalogue, evidence, greenness, planning, protection, schedule
from land_supervision.catalogue import RULES, RuleError
from land_supervision.mercator import to_3857
from spatial_api import db, store
from spatial_api.api import time as timepolicy
from spatial_api.config import Settings, author_default, get_settings

PARCEL_DATES = ["contract_date", "agreed_start", "agreed_completion", "actual_start", "actual_completion",
                "payment_due", "payment_received", "stopped_since"]
PARCEL_NUMBERS = ["price_cny", "far_min", "far_max", "density_max", "height_max_m", "setback_m", "gfa_due_m2",
                  "gfa_built_m2", "investment_total_cny", "investment_done_cny", "extension_days", "basement_levels"]
PARCEL_TEXT = ["land_use_code", "exemption", "approval_ids"]
BUILDING_NUMBERS = ["height_m", "floors", "gfa_m2"]
DATE_RE = r"^\d{4}-\d{2}-\d{2}([T ].*)?$"
NUMBER_RE = r"^\s*-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\s*$"
# the same, for values joined with U+0001 (one regex call per row and kind; see Engine._bad)
_DATE = r"\d{4}-\d{2}-\d{2}([T ][^\x01]*)?"
_NUMBER = r"\s*-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\s*"
DATES_RE = f"^{_DATE}(\x01{_DATE})*$"
NUMBERS_RE = f"^{_NUMBER}(\x01{_NUMBER})*$"

#: errors one subject's data can cause in a rule's statement (SQLSTATE class 22, e.g. "date out of
#: range"; XX000, which PostGIS raises for GEOS errors such as a self-intersecting outline)
SUBJECT_ERRORS = (psycopg.DataError, psycopg.errors.InternalError_)
#: beyond this many failing subjects a rule's failure is not one subject's data (a run fails instead)
MAX_FAILED_SUBJECTS = 20

PARCEL_RULES = {"R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R13"}
BUILDING_RULES = {"R8", "R9", "R10", "R11"}


@dataclass
class RunResult:
    run_id: int
    as_of: date
    rules: list[str]
    counts: dict
    seconds: float
    previous_run_id: int | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), "rules": self.rules,
                "counts": self.counts, "seconds": self.seconds, "previous_run_id": self.previous_run_id,
                "notes": self.notes}


@dataclass(frozen=True)
class Scope:
    """A part of a run (a partition of the dask engine): the subjects it evaluates — ``parcels``
    (R1–R12, V1) and approval batches ``approvals`` (R13) — and the ``context`` parcels it reads
    without evaluating them (those R13 needs: parcels meeting its batches across the part's edge).
    The approvals snapshot holds its batches plus those its parcels name (R12's check of attached
    approval ids); the protected layers are read from the store around its parcels, as always."""

    parcels: tuple[str, ...]
    approvals: tuple[str, ...] = ()
    context: tuple[str, ...] = ()


#: the columns of a finding as a partition returns them (text, exactly as PostgreSQL prints them:
#: float8 shortest-exact, jsonb, hex EWKB for the geometries) and the client stores them (COPY)
FINDING_FIELDS = ("rule", "subject_id", "parcel_id", "severity", "message", "measures", "sources", "area_m2",
                  "street_code", "street_name", "land_use_code", "geom", "geom_3857")


@dataclass
class Evaluation:
    """What ``evaluate`` leaves: the engine (snapshots, notes, layers used), the run id the
    findings were written under, the findings per rule (with V1 when the imagery evidence ran),
    the seconds per rule and of the snapshots, the snapshots' row counts."""

    engine: Engine
    run_id: int
    by_rule: dict[str, int]
    seconds_by_rule: dict[str, float]
    seconds_snapshot: float
    inputs: dict[str, int]


def parse_date(value, what: str = "--as-of") -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise RuleError(f"{what} {value!r}: not a date; write it as YYYY-MM-DD, e.g. 2026-06-30") from None


def _temporal(at: datetime, known_at: datetime | None):
    """The store's temporal filter as SQL with its values inlined as literals (quoted by psycopg),
    so it can sit in queries that use named parameters."""

    def render(alias: str) -> sql.Composable:
        cond, params = store.temporal_filter(at, known_at, alias)
        # temporal_filter's placeholders are positional %s; substitute literals one by one
        pieces = _split_placeholders(cond)
        out: list[sql.Composable] = []
        it = iter(params)
        for i, piece in enumerate(pieces):
            out.append(piece)
            if i < len(pieces) - 1:
                out.append(sql.Literal(next(it)))
        return sql.Composed(out)

    return render


def _split_placeholders(cond: sql.Composable) -> list[sql.Composable]:
    """Split a composed condition on its ``%s`` placeholders (inside sql.SQL parts only)."""
    parts: list[list[sql.Composable]] = [[]]

    def walk(node):
        if isinstance(node, sql.Composed):
            for sub in node:
                walk(sub)
        elif isinstance(node, sql.SQL):
            chunks = node.as_string(None).split("%s")
            for j, ch in enumerate(chunks):
                if j:
                    parts.append([])
                parts[-1].append(sql.SQL(ch))
        else:
            parts[-1].append(node)

    walk(cond)
    return [sql.Composed(p) for p in parts]


class Engine:
    def __init__(self, conn: psycopg.Connection, *, as_of: date, rules: list[str], params: dict,
                 layers: dict[str, str], known_at: datetime | None, tz: str, use_imagery: bool = True,
                 scope: Scope | None = None):
        self.conn = conn
        self.scope = scope  # None: the whole district
        self.as_of = as_of
        self.rules = rules
        self.params = params
        self.layers = layers
        self.known_at = known_at
        self.at = timepolicy.day_bound(as_of, "start", tz)  # the state at the start of the run's date
        self.temporal = _temporal(self.at, known_at)
        self.notes: list[str] = []
        self.registry = {row["name"]: row for row in store.list_layers(conn)}
        self.used: dict[str, str] = {}
        self.use_imagery = use_imagery  # imagery read at all (R9 green ratio, V1 evidence)

    # ---------------------------------------------------------------- layers and fields
    def _layer(self, role: str, *, required_by: list[str] | None) -> str | None:
        name = self.layers.get(role, role)
        if name in self.registry:
            self.used[role] = name
            return name
        if required_by:
            raise RuleError(
                f"rules {', '.join(required_by)} read layer {name!r} ({role}), which is not loaded; "
                f"load it (geotwin ingest vector FILE --layer {name}), map the role to another layer "
                f"(layers={{\"{role}\": \"…\"}}) or leave those rules out with --rules")
        return None

    def _fields(self, layer: str) -> set[str]:
        return {p["name"] for p in self.registry[layer]["properties"]}

    def check_inputs(self) -> None:
        sel = set(self.rules)
        needs_p = sorted(sel & PARCEL_RULES, key=catalogue.RULE_IDS.index)
        needs_b = sorted(sel & BUILDING_RULES, key=catalogue.RULE_IDS.index)
        self.parcels = self._layer("parcels", required_by=needs_p)
        self.buildings = self._layer("buildings", required_by=needs_b) if needs_b else None
        self.approvals = self._layer("approvals", required_by=["R13"] if "R13" in sel else None)
        self.streets = self._layer("streets", required_by=None)
        if "R12" in sel and not self.approvals and self.params["R12"]["approval_must_exist"]:
            self.notes.append(f"R12: no approvals layer {self.layers.get('approvals', 'approvals')!r}: "
                              "attached approval ids are taken as they are")
        for rid in self.rules:
            for role, fields in RULES[rid].get("needs", {}).items():
                layer = {"parcels": self.parcels, "buildings": self.buildings, "approvals": self.approvals}[role]
                missing = [f for f in fields if f not in self._fields(layer)]
                if missing:
                    raise RuleError(
                        f"rule {rid} needs field(s) {', '.join(missing)} in layer {layer!r}; its fields are "
                        f"{', '.join(sorted(self._fields(layer)))}. Re-load the layer with them "
                        f"(--evolve-schema) or leave {rid} out with --rules")
        if "R12" in sel:
            self.r12_sources = []
            for s in self.params["R12"]["sources"]:
                layer = self._layer(s["role"], required_by=["R12"])
                if s.get("code_prefixes") and s.get("code_field", "dlbm") not in self._fields(layer):
                    raise RuleError(f"R12 source {s['kind']!r}: layer {layer!r} has no field "
                                    f"{s.get('code_field', 'dlbm')!r} to select codes {s['code_prefixes']}")
                self.r12_sources.append({**s, "layer": layer})

    # ---------------------------------------------------------------- snapshots
    def _raw(self, name: str, layer: str, select: str = "") -> None:
        self.conn.execute(sql.SQL(
            "CREATE TEMP TABLE {name} ON COMMIT DROP AS "
            "SELECT f.fid, f.vid, f.properties AS props, f.geom AS g4490{select} FROM {part} f "
            "WHERE f.layer = {layer} AND {cond}").format(
                name=sql.Identifier(name), select=sql.SQL(select),
                part=sql.Identifier(store.partition_name(layer)), layer=sql.Literal(layer),
                cond=self.temporal("f")))

    def _validate(self, raw: str, layer: str, dates: list[str], numbers: list[str]) -> None:
        """One scan over the snapshot: every date / number field the rules read must parse."""
        fields = self._fields(layer)
        dates = [f for f in dates if f in fields]
        numbers = [f for f in numbers if f in fields]
        if not dates and not numbers:
            return
        bad = self.conn.execute(sql.SQL(
            "SELECT r.fid, e.key, e.value #>> '{{}}', CASE WHEN e.key = ANY(%(dates)s) THEN 'a date (YYYY-MM-DD)' "
            "ELSE 'a number' END FROM {raw} r, jsonb_each(r.props) e "
            "WHERE jsonb_typeof(e.value) <> 'null' AND ("
            "  (e.key = ANY(%(dates)s) AND NOT (e.value #>> '{{}}') ~ %(date_re)s)"
            "  OR (e.key = ANY(%(numbers)s) AND jsonb_typeof(e.value) <> 'number' AND NOT (e.value #>> '{{}}') ~ %(num_re)s)"
            ") ORDER BY r.fid, e.key LIMIT 5").format(raw=sql.Identifier(raw)),
            {"dates": dates, "numbers": numbers, "date_re": DATE_RE, "num_re": NUMBER_RE}).fetchall()
        if bad:
            lines = "; ".join(f"feature {fid!r} field {fld!r} = {val!r} (expected {exp})" for fid, fld, val, exp in bad)
            raise RuleError(f"layer {layer!r} as of {self.as_of}: values the rules cannot read: {lines}. "
                            "Correct them and re-load the layer.")

    def _typed(self, fields: list[str], kind: str, alias: str = "r") -> str:
        props = alias if "." in alias else f"{alias}.props"  # an alias, or the jsonb expression itself
        out = []
        for f in fields:
            lit = "'" + f.replace("'", "''") + "'"
            if kind == "date":
                out.append(f"left({props} ->> {lit}, 10)::date AS {f}")
            elif f in ("extension_days", "basement_levels", "floors"):
                out.append(f"round(({props} ->> {lit})::numeric)::int AS {f}")
            elif kind == "number":
                out.append(f"({props} ->> {lit})::float8 AS {f}")
            else:
                out.append(f"{props} ->> {lit} AS {f}")
        return ", ".join(out)

    def _bad(self, layer: str, dates: list[str], numbers: list[str], props: str = "f.properties") -> str:
        """SQL: does this row hold a value of a date / number field the rules cannot read (the
        test ``_validate`` makes, for one row, without expanding the properties)?"""
        # ``->>`` gives NULL for a missing key or a JSON null (skipped by concat_ws: not bad), and
        # the text of a JSON number always matches NUMBER_RE. All the date (number) fields of a row
        # are joined with U+0001 and matched by ONE regex (DATES_RE / NUMBERS_RE): a regex call per
        # field cost more than the rest of the snapshot. (An empty string fails the casts instead.)
        fields = self._fields(layer)
        terms = []
        for group, regex in ((dates, "dates_re"), (numbers, "numbers_re")):
            vals = [f"{props} ->> '" + f.replace("'", "''") + "'" for f in group if f in fields]
            if vals:
                terms.append(f"nullif(concat_ws(chr(1), {', '.join(vals)}), '') !~ %({regex})s")
        return "coalesce(" + " OR ".join(terms) + ", false)" if terms else "false"

    def _typed_snapshot(self, name: str, layer: str, select: str, source: str, dates: list[str],
                        numbers: list[str], extra: str = "") -> None:
        """One statement from the layer's partition to the typed snapshot ``name`` (with a ``bad``
        flag per row); a value the rules cannot read raises RuleError naming the feature and field
        (``_validate`` over the raw rows, only then)."""
        c = self.conn
        q = sql.SQL("CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {select}, {bad} AS bad FROM {source} "
                    "WHERE f.layer = {layer} AND {cond}{extra}").format(
            name=sql.Identifier(name), select=sql.SQL(select), bad=sql.SQL(self._bad(layer, dates, numbers)),
            source=sql.SQL(source).format(part=sql.Identifier(store.partition_name(layer))),
            layer=sql.Literal(layer), cond=self.temporal("f"), extra=sql.SQL(extra))
        failed = None
        try:
            with c.transaction():
                c.execute(q, {"dates_re": DATES_RE, "numbers_re": NUMBERS_RE})
        except psycopg.DataError as exc:  # SQLSTATE class 22: a cast failed
            failed = exc.diag.message_primary
        if failed is None and not c.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE bad)").format(
                sql.Identifier(name))).fetchone()[0]:
            return
        self._raw(f"{name}_raw", layer)
        if name == "_sup_b":  # only the buildings the rules read: those on a snapshot parcel
            c.execute("DELETE FROM _sup_b_raw r WHERE NOT EXISTS "
                      "(SELECT 1 FROM _sup_p p WHERE p.parcel_id = r.props ->> 'parcel_id')")
        self._validate(f"{name}_raw", layer, dates, numbers)
        raise RuleError(f"layer {layer!r}: a value the rules cannot read ({failed}); correct it and re-load the layer.")

    def snapshot(self) -> dict[str, int]:
        """The typed snapshots, each one statement from its partition (validated in the same scan)."""
        counts: dict[str, int] = {}
        c = self.conn
        if self.streets:
            # a handful of polygons, only looked up for the findings' points: kept in EPSG:4490
            self._raw("_sup_s", self.streets)
            counts["streets"] = c.execute("SELECT count(*) FROM _sup_s").fetchone()[0]
        else:
            c.execute("CREATE TEMP TABLE _sup_s (fid text, vid bigint, props jsonb, g4490 geometry) ON COMMIT DROP")
        if self.scope is not None:
            self._scope_tables()
        if self.parcels:
            self._typed_snapshot(
                "_sup_p", self.parcels,
                f"f.fid AS parcel_id, f.vid, f.properties AS props, f.geom AS g4490, t.g, ST_Area(t.g) AS area_m2, "
                f"{self._typed(PARCEL_DATES, 'date', 'f.properties')}, "
                f"{self._typed(PARCEL_NUMBERS, 'number', 'f.properties')}, "
                f"{self._typed(PARCEL_TEXT, 'text', 'f.properties')}",
                "{part} f CROSS JOIN LATERAL (SELECT ST_Transform(f.geom, 4547) AS g OFFSET 0) t",
                PARCEL_DATES, PARCEL_NUMBERS + ([self.params["R9"]["green_ratio_field"]] if "R9" in self.rules else []),
                " AND f.fid IN (SELECT parcel_id FROM _sup_scope_p)" if self.scope is not None else "")
            gone = [r[0] for r in c.execute(
                "DELETE FROM _sup_p WHERE area_m2 > 0 IS NOT TRUE RETURNING parcel_id").fetchall()]
            if gone:
                gone.sort()
                self.notes.append(
                    f"parcels: {len(gone)} parcel(s) of layer {self.parcels!r} have no area (an empty or degenerate "
                    f"outline) and were not evaluated: {', '.join(map(repr, gone[:10]))}{' …' if len(gone) > 10 else ''}"
                    ". Correct their outlines and re-load the layer")
            c.execute("CREATE UNIQUE INDEX ON _sup_p (parcel_id); CREATE INDEX ON _sup_p USING gist (g)")
            counts["parcels"] = c.execute("SELECT count(*) FROM _sup_p").fetchone()[0]
        if self.buildings:
            have = self._fields(self.buildings)
            height = "(f.properties ->> 'height_m')::float8" if "height_m" in have else "NULL::float8"
            floors = "round((f.properties ->> 'floors')::numeric)::int" if "floors" in have else "NULL::int"
            gfa = "(f.properties ->> 'gfa_m2')::float8" if "gfa_m2" in have else "NULL::float8"
            self._typed_snapshot(
                "_sup_b", self.buildings,
                f"f.fid AS building_id, f.vid, p.parcel_id, t.g, ST_Area(t.g) AS foot, {height} AS height_m, "
                f"{floors} AS floors, f.properties ->> 'use' AS use, coalesce({gfa}, {floors} * ST_Area(t.g)) AS gfa",
                "{part} f JOIN _sup_p p ON p.parcel_id = f.properties ->> 'parcel_id' "
                "CROSS JOIN LATERAL (SELECT ST_Transform(f.geom, 4547) AS g OFFSET 0) t",
                [], BUILDING_NUMBERS)
            c.execute("CREATE INDEX ON _sup_b (parcel_id)")
            counts["buildings"] = c.execute("SELECT count(*) FROM _sup_b").fetchone()[0]
        if self.approvals:
            self._typed_snapshot(
                "_sup_a", self.approvals,
                "f.fid, f.vid, f.properties AS props, f.geom AS g4490, ST_Transform(f.geom, 4547) AS g, "
                "f.fid AS approval_id, left(f.properties ->> 'approved_on', 10)::date AS approved_on, "
                "f.properties ->> 'name' AS name, f.properties ->> 'batch_type' AS batch_type",
                "{part} f", ["approved_on"], [],
                # a part: its batches and those its parcels name (R12 looks attached ids up)
                " AND (f.fid IN (SELECT approval_id FROM _sup_scope_a) OR f.fid IN (SELECT i FROM _sup_p p, "
                f"regexp_split_to_table(btrim(coalesce(p.approval_ids, '')), {protection.SPLIT_IDS}) i))"
                if self.scope is not None else "")
            c.execute("CREATE INDEX ON _sup_a (approval_id); CREATE INDEX ON _sup_a USING gist (g)")
            counts["approvals"] = c.execute("SELECT count(*) FROM _sup_a").fetchone()[0]
        # row counts and the join keys are what the plans need (full ANALYZE of the geometries cost 0.3 s)
        for t, col in (("_sup_p", "parcel_id"), ("_sup_b", "parcel_id"), ("_sup_a", "approval_id")):
            if t[5:] == "p" and self.parcels or t[5:] == "b" and self.buildings or t[5:] == "a" and self.approvals:
                c.execute(sql.SQL("ANALYZE {} ({})").format(sql.Identifier(t), sql.Identifier(col)))
        if self.scope is not None:  # the part's own subjects (context rows are read, not evaluated)
            own = "parcel_id IN (SELECT parcel_id FROM _sup_scope_p WHERE own)"
            mine_a = "approval_id IN (SELECT approval_id FROM _sup_scope_a)"
            for role, q in (("parcels", f"SELECT count(*) FROM _sup_p WHERE {own}"),
                            ("buildings", f"SELECT count(*) FROM _sup_b WHERE {own}"),
                            ("approvals", f"SELECT count(*) FROM _sup_a WHERE {mine_a}")):
                if role in counts:
                    counts[role] = c.execute(q).fetchone()[0]
        return counts

    def _scope_tables(self) -> None:
        """``_sup_scope_p`` (parcel_id, own: evaluated, else context) and ``_sup_scope_a``
        (approval_id): the part's subjects, COPied in."""
        c = self.conn
        c.execute("CREATE TEMP TABLE _sup_scope_p (parcel_id text PRIMARY KEY, own bool NOT NULL) ON COMMIT DROP; "
                  "CREATE TEMP TABLE _sup_scope_a (approval_id text PRIMARY KEY) ON COMMIT DROP")
        own = set(self.scope.parcels)
        with c.cursor().copy("COPY _sup_scope_p FROM STDIN") as cp:
            for pid in self.scope.parcels:
                cp.write_row((pid, True))
            for pid in dict.fromkeys(self.scope.context):
                if pid not in own:
                    cp.write_row((pid, False))
        with c.cursor().copy("COPY _sup_scope_a FROM STDIN") as cp:
            for aid in dict.fromkeys(self.scope.approvals):
                cp.write_row((aid,))
        c.execute("ANALYZE _sup_scope_p; ANALYZE _sup_scope_a")

    # ---------------------------------------------------------------- rules
    def rule_query(self, rid: str) -> tuple[sql.Composable, dict]:
        rule_params = {**self.params[rid], "as_of": self.as_of, "severity": RULES[rid]["severity"]}
        if rid in schedule.RULES:
            return schedule.RULES[rid](rule_params)
        if rid == "R9":
            ratio_field = self.params["R9"]["green_ratio_field"]
            has_green = bool(ratio_field) and ratio_field in self._fields(self.parcels)
            greenness.measure(self, has_field=has_green)
            return planning.r9(rule_params, green_field=has_green)
        if rid in planning.RULES:
            return planning.RULES[rid](rule_params)
        if rid == "R12":
            return protection.r12(rule_params, sources=self.r12_sources, temporal=self.temporal,
                                  have_approvals=bool(self.approvals))
        if rid == "R13":
            return protection.r13(rule_params)
        raise RuleError(f"rule {rid}: no evaluation")  # pragma: no cover - catalogue and families agree

    def insert_findings(self, run_id: int, rid: str) -> int:
        """The rule's findings, one INSERT … SELECT. A statement that one subject's data makes fail
        (a date out of range, a GEOS error on a self-intersecting outline, …) does not end the run:
        the rule is evaluated again on halves of its subjects until the failing ones are singled
        out, each recorded as a note of the run; every other subject's findings are kept."""
        q, params = self.rule_query(rid)
        insert = sql.SQL(
            """
            INSERT INTO sup_findings (run_id, rule, subject_id, parcel_id, severity, message, measures, sources,
                                      area_m2, street_code, street_name, land_use_code, geom, geom_3857)
            SELECT %(run_id)s, %(rule)s, r.subject_id, r.parcel_id, r.severity, r.message, r.measures, r.sources,
                   r.area_m2, s.fid, s.props ->> 'name',
                   p.land_use_code, e.g4490, {g3857}
            FROM ({q}) r
            CROSS JOIN LATERAL (SELECT ST_Transform(r.evidence, 4490) AS g4490) e
            LEFT JOIN _sup_p p ON p.parcel_id = r.parcel_id
            -- the street holding the parcel (or, for an approval batch, its unsupplied part)
            LEFT JOIN LATERAL (SELECT s.fid, s.props FROM _sup_s s, ST_PointOnSurface(coalesce(p.g4490,
                                   CASE WHEN NOT ST_IsEmpty(r.evidence) THEN ST_Transform(r.evidence, 4490) END)) AS pt
                               WHERE ST_Intersects(s.g4490, pt) ORDER BY s.fid LIMIT 1) s ON true
            """
        ).format(q=q, g3857=sql.SQL(to_3857("e.g4490")))
        args = {**params, "run_id": run_id, "rule": rid}
        try:
            with self.conn.transaction():  # a savepoint: a failure here leaves the run's transaction usable
                return self.conn.execute(insert, args).rowcount
        except SUBJECT_ERRORS as exc:
            first = exc
        return self._isolate(rid, insert, args, first)

    def _isolate(self, rid: str, insert: sql.Composable, args: dict, first: Exception) -> int:
        """Evaluate ``insert`` on parts of the rule's subjects (parcels, for R13 approval batches):
        the subject snapshot is swapped for a part of it inside a savepoint; a part that fails is
        halved until single subjects remain, which become notes. Returns the findings inserted."""
        table, key, what = ("_sup_a", "approval_id", "approval") if rid == "R13" else ("_sup_p", "parcel_id", "parcel")
        c = self.conn
        keys = [r[0] for r in c.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
            sql.Identifier(key), sql.Identifier(table))).fetchall()]
        t, t_all = sql.Identifier(table), sql.Identifier(f"{table}_all")
        swap_in = [sql.SQL("ALTER TABLE {} RENAME TO {}").format(t, t_all),
                   sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} WHERE {} = ANY(%(keys)s)").format(
                       t, t_all, sql.Identifier(key))]
        swap_out = [sql.SQL("DROP TABLE {}").format(t), sql.SQL("ALTER TABLE {} RENAME TO {}").format(t_all, t)]
        if not keys:  # it fails without any subject: no subject's data is the cause
            raise first
        inserted, failed = 0, []
        todo = [keys[len(keys) // 2:], keys[:len(keys) // 2]] if len(keys) > 1 else [keys]
        while todo:
            part = todo.pop()
            try:
                with c.transaction():
                    for q in swap_in:
                        c.execute(q, {"keys": part})
                    inserted += c.execute(insert, args).rowcount
                    for q in swap_out:
                        c.execute(q)
            except SUBJECT_ERRORS as exc:
                if len(part) > 1:
                    todo += [part[len(part) // 2:], part[:len(part) // 2]]
                    continue
                reason = (exc.diag.message_primary or str(exc)).strip()
                failed.append((part[0], reason))
                if len(failed) > MAX_FAILED_SUBJECTS:
                    listed = "; ".join(f"{what} {k!r}: {r}" for k, r in failed[:5])
                    raise RuleError(
                        f"rule {rid} fails on more than {MAX_FAILED_SUBJECTS} {what}s ({listed}; …): this is no "
                        f"single {what}'s data; check the rule's parameters and the layers, or leave {rid} out "
                        "with --rules") from None
        fix = ("this batch's data, or that of the parcels over it," if what == "approval" else "this parcel's data")
        for k, reason in failed:
            self.notes.append(f"{rid}: {what} {k!r} could not be evaluated ({reason}); the rule's other {what}s "
                              f"were. Correct {fix} and re-load the layer")
        return inserted

    def layer_versions(self, counts: dict[str, int]) -> dict:
        out = {}
        for role, layer in self.used.items():
            q = "SELECT max(id), max(valid_from) FROM changesets WHERE layer = %s AND valid_from <= %s"
            params: list = [layer, self.at]
            if self.known_at is not None:
                q += " AND recorded_at <= %s"
                params.append(self.known_at)
            changeset_id, valid_from = self.conn.execute(q, params).fetchone()
            out[role] = {"layer": layer, "changeset_id": changeset_id,
                         "valid_from": valid_from.isoformat() if valid_from else None, "features": counts.get(role)}
        return out


def previous_run(conn: psycopg.Connection, run_id: int, as_of: date, rules: list[str], layers: dict) -> int | None:
    """The run this one is compared with: the latest finished run at or before its date over the
    same layers that evaluated (at least) the same rules."""
    row = conn.execute(
        "SELECT id FROM sup_runs WHERE id <> %s AND finished_at IS NOT NULL AND as_of <= %s AND rules @> %s "
        "AND parameters -> 'layers' = %s::jsonb ORDER BY as_of DESC, id DESC LIMIT 1",
        (run_id, as_of, rules, json.dumps(layers))).fetchone()
    return row[0] if row else None


def compare(conn: psycopg.Connection, run_id: int, prev: int | None, rules: list[str]) -> dict[str, int]:
    """Mark this run's findings new / persisting against ``prev`` and record the resolved ones
    (findings of ``prev`` for rules this run evaluated that it no longer finds)."""
    if prev is None:
        return {"new": conn.execute("SELECT count(*) FROM sup_findings WHERE run_id = %s", (run_id,)).fetchone()[0],
                "persisting": 0, "resolved": 0}
    conn.execute(
        "UPDATE sup_findings f SET status = 'persisting' WHERE f.run_id = %s AND EXISTS "
        "(SELECT 1 FROM sup_findings o WHERE o.run_id = %s AND o.rule = f.rule AND o.subject_id = f.subject_id)",
        (run_id, prev))
    conn.execute(
        "INSERT INTO sup_resolved (run_id, finding_id) SELECT %s, o.id FROM sup_findings o "
        "WHERE o.run_id = %s AND o.rule = ANY(%s) AND NOT EXISTS "
        "(SELECT 1 FROM sup_findings f WHERE f.run_id = %s AND f.rule = o.rule AND f.subject_id = o.subject_id)",
        (run_id, prev, rules, run_id))
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'new'), count(*) FILTER (WHERE status = 'persisting') "
        "FROM sup_findings WHERE run_id = %s", (run_id,)).fetchone()
    resolved = conn.execute("SELECT count(*) FROM sup_resolved WHERE run_id = %s", (run_id,)).fetchone()[0]
    return {"new": row[0], "persisting": row[1], "resolved": resolved}


def prepare(as_of, rules, parameters: dict | None, layers: dict[str, str] | None) -> tuple[date, list[str], dict, dict]:
    """The run's date, rule ids, effective parameters and layer map, checked (RuleError)."""
    as_of = parse_date(as_of)
    rule_list = catalogue.rule_ids(rules)
    params = catalogue.parameters(parameters, rule_list + ["V1"])
    layer_map = {**catalogue.DEFAULT_LAYERS, "imagery": "imagery", **(layers or {})}
    for role, name in layer_map.items():
        try:
            store.check_layer_name(name)
        except Exception:
            raise RuleError(f"layers[{role!r}] = {name!r} is not a layer name") from None
    return as_of, rule_list, params, layer_map


def evaluate(conn: psycopg.Connection, settings: Settings, *, as_of: date, rule_list: list[str], params: dict,
             layer_map: dict, known_at: datetime | None, imagery: bool | None, new_run,
             scope: Scope | None = None) -> Evaluation:
    """The work of a run inside the caller's transaction: inputs checked, snapshots (of ``scope``
    only, when given), then every rule's findings and the imagery evidence written to
    ``sup_findings`` under the run id ``new_run()`` returns (called once the snapshots stand).
    ``sup_findings`` is whatever the search path finds: the stored table for the SQL engine, a
    temporary table of that name for a part that returns its findings (``evaluate_findings``)."""
    eng = Engine(conn, as_of=as_of, rules=rule_list, params=params, layers=layer_map,
                 known_at=known_at, tz=settings.timezone, use_imagery=imagery is not False, scope=scope)
    eng.check_inputs()
    t = time.perf_counter()
    counts = eng.snapshot()
    snap_s = round(time.perf_counter() - t, 3)
    run_id = new_run()
    by_rule, secs = {}, {}
    for rid in rule_list:
        t = time.perf_counter()
        by_rule[rid] = eng.insert_findings(run_id, rid)
        secs[rid] = round(time.perf_counter() - t, 3)
    use_imagery = imagery if imagery is not None else (layer_map["imagery"] in eng.registry)
    if use_imagery and set(rule_list) & {"R2", "R3", "R4", "R5"}:
        t = time.perf_counter()
        by_rule["V1"] = evidence.imagery_evidence(eng, run_id)
        secs["V1"] = round(time.perf_counter() - t, 3)
    return Evaluation(eng, run_id, by_rule, secs, snap_s, counts)


def start_run(conn: psycopg.Connection, *, as_of: date, known_at: datetime | None, rule_list: list[str],
              params: dict, layer_map: dict, author: str | None) -> int:
    """The run's row (finished by ``finish_run`` in the same transaction)."""
    return conn.execute(
        "INSERT INTO sup_runs (as_of, known_at, rules, parameters, layers, author) "
        "VALUES (%s, %s, %s, %s, '{}'::jsonb, %s) RETURNING id",
        (as_of, known_at, rule_list, json.dumps({"rules": params, "layers": layer_map}, ensure_ascii=False),
         author or author_default())).fetchone()[0]


def finish_run(conn: psycopg.Connection, eng: Engine, *, run_id: int, as_of: date, rule_list: list[str],
               layer_map: dict, by_rule: dict, secs: dict, snap_s: float, inputs: dict, t0: float,
               extra: dict | None = None) -> RunResult:
    """Compare the stored findings of ``run_id`` with the previous comparable run and close the
    run's row (counts, layer versions, notes). The caller commits."""
    prev = previous_run(conn, run_id, as_of, rule_list, layer_map)
    diff = compare(conn, run_id, prev, rule_list + (["V1"] if "V1" in by_rule else []))
    seconds = round(time.perf_counter() - t0, 3)
    all_counts = {"total": sum(by_rule.values()), "by_rule": by_rule, **diff, "seconds_by_rule": secs,
                  "seconds_snapshot": snap_s, "inputs": inputs, **(extra or {})}
    conn.execute(
        "UPDATE sup_runs SET finished_at = clock_timestamp(), seconds = %s, previous_run_id = %s, counts = %s, "
        "layers = %s, notes = %s WHERE id = %s",
        (seconds, prev, json.dumps(all_counts), json.dumps(eng.layer_versions(inputs)),
         json.dumps(eng.notes, ensure_ascii=False), run_id))
    return RunResult(run_id=run_id, as_of=as_of, rules=rule_list, counts=all_counts, seconds=seconds,
                     previous_run_id=prev, notes=eng.notes)


def run(
    settings: Settings | None = None,
    *,
    as_of,
    rules: str | list[str] | None = None,
    parameters: dict | None = None,
    layers: dict[str, str] | None = None,
    known_at: datetime | None = None,
    author: str | None = None,
    imagery: bool | None = None,
    conn: psycopg.Connection | None = None,
) -> RunResult:
    """Evaluate ``rules`` (default: all) as of ``as_of`` and store the run and its findings.

    ``parameters`` override the catalogue's defaults; ``layers`` maps roles (parcels, buildings,
    approvals, streets, land_use, basic_farmland, eco_redline, imagery) to layer names;
    ``known_at`` evaluates the layers as the store knew them then; ``imagery`` adds the imagery
    evidence of the parcels whose start is in question (default: when an imagery layer exists);
    ``imagery=False`` also keeps R9 from measuring green ratios from imagery (by default R9 measures
    them from the catalogue, else the imagery layer, where a parcel has no green-ratio value).
    Raises RuleError (nothing stored) on a bad rule, parameter, layer or value."""
    settings = settings or get_settings()
    as_of, rule_list, params, layer_map = prepare(as_of, rules, parameters, layers)
    own = conn is None
    conn = conn or db.connect(settings)
    t0 = time.perf_counter()
    try:
        # small, costly-per-row statements: JIT compilation alone took ~1 s of a 1.1 s rule (measured)
        conn.execute("SET LOCAL jit = off")
        ev = evaluate(conn, settings, as_of=as_of, rule_list=rule_list, params=params, layer_map=layer_map,
                      known_at=known_at, imagery=imagery,
                      new_run=lambda: start_run(conn, as_of=as_of, known_at=known_at, rule_list=rule_list,
                                                params=params, layer_map=layer_map, author=author))
        result = finish_run(conn, ev.engine, run_id=ev.run_id, as_of=as_of, rule_list=rule_list, layer_map=layer_map,
                            by_rule=ev.by_rule, secs=ev.seconds_by_rule, snap_s=ev.seconds_snapshot,
                            inputs=ev.inputs, t0=t0)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if own:
            conn.close()
    return result


def evaluate_findings(settings: Settings, *, as_of: date, rule_list: list[str], params: dict, layer_map: dict,
                      known_at: datetime | None = None, imagery: bool | None = None, scope: Scope | None = None,
                      snapshot: str | None = None) -> dict:
    """Evaluate a run (of ``scope`` only, when given) on a connection of its own and RETURN its
    findings instead of storing them: the rules and the imagery evidence write into a temporary
    ``sup_findings`` (pg_temp comes first on the search path for tables, so the very statements of
    the SQL engine and of ``evidence`` land there), the part's own subjects' rows are read back as
    text (FINDING_FIELDS) and the transaction is rolled back — nothing is written. ``snapshot``:
    a snapshot exported by the caller (``pg_export_snapshot()``), so that every part reads the
    store as of the same instant. A dask task of ``dask_engine``; also the dry run of either engine.

    Returns {"rows", "by_rule", "seconds_by_rule", "seconds_snapshot", "inputs", "notes", "used", "seconds"}."""
    t0 = time.perf_counter()
    conn = db.connect(settings)
    try:
        if snapshot:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        conn.execute("SET LOCAL jit = off")
        conn.execute(sql.SQL("CREATE TEMP TABLE sup_findings (LIKE {}.sup_findings INCLUDING DEFAULTS) ON COMMIT DROP; "
                             "ALTER TABLE pg_temp.sup_findings ALTER id DROP DEFAULT, ALTER id DROP NOT NULL").format(
            sql.Identifier(db.schema_name(settings))))
        ev = evaluate(conn, settings, as_of=as_of, rule_list=rule_list, params=params, layer_map=layer_map,
                      known_at=known_at, imagery=imagery, new_run=lambda: 0, scope=scope)
        mine = ("" if scope is None else
                " WHERE CASE WHEN f.rule = 'R13' THEN f.subject_id IN (SELECT approval_id FROM _sup_scope_a) "
                "ELSE f.subject_id IN (SELECT parcel_id FROM _sup_scope_p WHERE own) END")
        rows = conn.execute(
            "SELECT " + ", ".join(f"f.{c}::text" for c in FINDING_FIELDS) +
            f" FROM pg_temp.sup_findings f{mine} ORDER BY f.rule, f.subject_id").fetchall()
        by_rule = {rid: 0 for rid in ev.by_rule}
        for r in rows:
            by_rule[r[0]] += 1
        return {"rows": rows, "by_rule": by_rule, "seconds_by_rule": ev.seconds_by_rule,
                "seconds_snapshot": ev.seconds_snapshot, "inputs": ev.inputs, "notes": ev.engine.notes,
                "used": ev.engine.used, "seconds": round(time.perf_counter() - t0, 3)}
    finally:
        conn.rollback()
        conn.close()
