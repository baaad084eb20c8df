"""The only code that writes features. Every write is one changeset in one transaction.

Modes:
- ``append``: every incoming feature is new; a key that is already current is an error.
- ``upsert``: new keys are added, changed features get a new version, the rest stay as they are.
- ``replace``: the incoming set becomes the layer's state: additionally, current features whose
  key is absent are closed.

A changed feature's current version is closed at ``valid_from`` (its ``valid_to`` is set, and
``tx_to`` / ``closed_by`` record when and by which changeset) and a new version is opened. An
unchanged feature (same geometry and properties, compared by ``content_hash``) keeps its version.
"""

from __future__ import annotations

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from hashlib import md5

import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from spatial_api.store.registry import notify, Layer, partition_name
from spatial_api.store.types import MODES, StoreError
from spatial_api.db import connect, connect_like

COPY_CHUNK = 10000
#: Default tolerance of change detection, in degrees of CGCS2000: 1e-9° ≈ 0.1 mm on the ground.
DEFAULT_TOLERANCE_DEG = 1e-9


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def properties_to_json(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row (values already in the layer's types; NaN → null)."""
    if not len(frame):
        return []
    if not len(frame.columns):
        return ["{}"] * len(frame)
    text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15,
                         date_format="iso")
    return text.rstrip("\n").split("\n")


@dataclass
class FeatureRows:
    """Features ready to store: parallel arrays, one entry per feature. Serialisation to COPY
    text happens chunk by chunk while the server ingests the previous chunk."""

    rows: np.ndarray  # 1-based source row numbers (for messages)
    fids: np.ndarray | None  # key values as str; None → generated ids (append only)
    geometry: np.ndarray  # shapely geometries in EPSG:4490
    properties: pd.DataFrame  # one row per feature, values in the layer's types

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> "FeatureRows":
        return FeatureRows(rows=self.rows[index], fids=None if self.fids is None else self.fids[index],
                           geometry=self.geometry[index], properties=self.properties.iloc[index])

    def digests(self, start: int, stop: int) -> list[str]:
        """Content hashes (md5 of WKB + properties JSON) of rows start:stop — the same values
        :meth:`text_columns` writes, without building the rest."""
        props = properties_to_json(self.properties.iloc[start:stop])
        wkb = shapely.to_wkb(self.geometry[start:stop], output_dimension=2, byte_order=1)
        return _digests(wkb, props)

    def copy_rows(self, start: int, stop: int, prefix: bytes) -> bytes:
        """Rows start:stop as tuples of PostgreSQL's binary COPY format: ``prefix`` (the field
        count and the constant leading fields), then fid, properties (jsonb), geom (EWKB 4490),
        geom_3857 (EWKB 3857) and content_hash (uuid). The derived columns are computed here,
        on the client, while the server is busy parsing the previous chunk."""
        props = properties_to_json(self.properties.iloc[start:stop])
        encoded = "\n".join(props).encode("utf-8").split(b"\n") if props else []
        geoms = self.geometry[start:stop]
        wkb = shapely.to_wkb(geoms, output_dimension=2, byte_order=1)
        merc = shapely.to_wkb(shapely.transform(geoms, _to_3857), output_dimension=2, byte_order=1)
        fids = [str(f).encode("utf-8") for f in self.fids[start:stop]]
        pack = _INT32.pack
        h4490, h3857 = _EWKB_HEAD[4490], _EWKB_HEAD[3857]
        return b"".join([
            b"".join((prefix, pack(len(f)), f, pack(len(p) + 1), b"\x01", p,
                      pack(len(g) + 4), h4490[g[1]], memoryview(g)[5:],
                      pack(len(m) + 4), h3857[m[1]], memoryview(m)[5:],
                      _UUID_LEN, md5(g + p).digest()))
            for f, p, g, m in zip(fids, encoded, wkb, merc)
        ])


def _digests(wkb: np.ndarray, props: list[str]) -> list[str]:
    """md5 of each feature's WKB followed by its properties' JSON (UTF-8), as hex. The JSON is
    encoded in one piece and split (JSON text holds no raw newline), not row by row."""
    encoded = "\n".join(props).encode("utf-8").split(b"\n") if props else []
    return [md5(g + p).hexdigest() for g, p in zip(wkb, encoded)]


_INT32 = struct.Struct(">i")
_UUID_LEN = _INT32.pack(16)
# Little-endian WKB → EWKB with an SRID: the type word's high byte gets the SRID flag (0x20) and
# the SRID follows it. GEOS would need every geometry cloned with an SRID to write this itself.
# Little-endian 2D WKB types are 1..7 in the first type byte; per SRID, the 9-byte EWKB head
# (byte order, type with the SRID flag, SRID) for each, looked up by that byte.
_EWKB_HEAD = {srid: [b"\x01" + struct.pack("<II", t | 0x20000000, srid) for t in range(8)]
              for srid in (4490, 3857)}
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _copy_prefix(layer: str, valid_from: datetime, recorded_at: datetime, cs_id: int) -> bytes:
    """Field count and the four constant leading fields of every tuple, binary-encoded."""
    name = layer.encode("utf-8")

    def micros(t: datetime) -> int:
        return (t - _EPOCH_2000) // timedelta(microseconds=1)

    return (struct.pack(">h", 9) + _INT32.pack(len(name)) + name
            + struct.pack(">iq", 8, micros(valid_from)) + struct.pack(">iq", 8, micros(recorded_at))
            + struct.pack(">iq", 8, cs_id))


# EPSG:3857 (Popular Visualisation Pseudo-Mercator) is a closed formula on the sphere of the
# WGS84 semi-major axis; numpy evaluates it ~50x faster than a PROJ round trip per point.
# (tests/unit/test_writer.py checks it against pyproj.) Clamped at the Web Mercator limit.
_R = 6378137.0
_MAX_LAT = 85.0511287798066


def _to_3857(coords: np.ndarray) -> np.ndarray:
    lon = np.radians(coords[:, 0])
    lat = np.radians(np.clip(coords[:, 1], -_MAX_LAT, _MAX_LAT))
    return np.column_stack([_R * lon, _R * np.log(np.tan(np.pi / 4 + lat / 2))])


@dataclass
class WriteResult:
    changeset_id: int
    recorded_at: datetime
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    closed: int = 0
    current_total: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few fids per status
    correction: bool = False  # valid from before the layer's latest change (a correction in valid time)
    within_tolerance: int = 0  # differed from the stored version only below the tolerance (kept as they were)


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (JSON text has no raw control characters)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _copy_rows(cur: psycopg.Cursor, part: str, features: FeatureRows, prefix: bytes,
               progress: Progress | None) -> None:
    """Binary COPY of full feature versions into a layer's partition, chunk by chunk; a writer
    thread sends each chunk, so the server parses one while the next is built."""
    total = len(features)
    statement = sql.SQL(
        "COPY {} (layer, valid_from, tx_from, changeset_id, fid, properties, geom, geom_3857, "
        "content_hash) FROM STDIN (FORMAT binary)").format(sql.Identifier(part))
    with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
        copy.write(_COPY_HEADER)
        for start in range(0, total, COPY_CHUNK):
            stop = min(start + COPY_CHUNK, total)
            copy.write(features.copy_rows(start, stop, prefix))
            if progress:
                progress("store", stop, total)
        copy.write(_COPY_TRAILER)


class VersionConflict(Exception):
    """A write expected another current version of a feature (optimistic locking: If-Match)."""

    def __init__(self, fid: str, expected: int | None, current: int | None):
        self.fid, self.expected, self.current = fid, expected, current
        state = "does not exist" if current is None else f"is at version {current}"
        super().__init__(f"feature {fid!r} {state}, not {expected if expected is not None else 'absent'}: "
                         "it was changed meanwhile. Fetch it again, reapply your edit, and send the new ETag.")


def _check_versions(conn: psycopg.Connection, layer: str, expect: dict[str, int | None]) -> None:
    current = dict(conn.execute(
        sql.SQL("SELECT fid, vid FROM {} WHERE valid_to IS NULL AND fid = ANY(%s)").format(
            sql.Identifier(partition_name(layer))), (list(expect),)).fetchall())
    for fid, expected in expect.items():
        if current.get(fid) != expected:
            raise VersionConflict(fid, expected, current.get(fid))


def close_features(conn: psycopg.Connection, layer: Layer, fids: list[str], *, valid_from: datetime,
                   author: str, source: str | None, expect_versions: dict[str, int | None] | None = None,
                   message: str | None = None) -> WriteResult:
    """A changeset that ends features at ``valid_from`` (which may lie in the past: the version
    valid then ends there, later recorded versions stay). Nothing is deleted."""
    _lock_layer(conn, layer.name)
    if expect_versions:
        _check_versions(conn, layer.name, expect_versions)
    past = _is_past(conn, layer.name, valid_from)
    cs_id, recorded_at = conn.execute(
        """
        INSERT INTO changesets (layer, author, valid_from, mode, source, message)
        VALUES (%s, %s, %s, 'delete', %s, %s) RETURNING id, recorded_at
        """, (layer.name, author, valid_from, source, message)).fetchone()
    part = sql.Identifier(partition_name(layer.name))
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE closing (vid bigint PRIMARY KEY) ON COMMIT DROP")
        cur.execute(sql.SQL("INSERT INTO closing SELECT f.vid FROM {} f WHERE f.fid = ANY(%s) AND {}").format(
            part, _covering(past)), (list(fids), *_covering_params(past, valid_from)))
        closed = _close_versions(cur, part, layer.name, valid_from, cs_id)
        cur.execute("DROP TABLE closing")
    result = WriteResult(changeset_id=cs_id, recorded_at=recorded_at, closed=closed, correction=past)
    finish_changeset(conn, cs_id, {"closed": result.closed, **({"correction": True} if past else {})})
    return result


def _is_past(conn: psycopg.Connection, layer: str, valid_from: datetime) -> bool:
    """Is a change valid from ``valid_from`` earlier than the layer's latest recorded change?"""
    latest = latest_valid_from(conn, layer)
    return latest is not None and valid_from < latest


def _covering(past: bool, alias: str = "f") -> sql.Composable:
    """The believed version of a feature that a change valid from D replaces: the current one
    (the usual case), or — for a correction in the past — the one valid at D."""
    if not past:
        return sql.SQL("{a}.valid_to IS NULL").format(a=sql.Identifier(alias))
    return sql.SQL("{a}.valid_from <= %s AND ({a}.valid_to IS NULL OR {a}.valid_to > %s) "
                   "AND {a}.superseded_at IS NULL").format(a=sql.Identifier(alias))


def _covering_params(past: bool, valid_from: datetime) -> tuple:
    return (valid_from, valid_from) if past else ()


def _close_versions(cur: psycopg.Cursor, part: sql.Identifier, layer: str, valid_from: datetime,
                    cs_id: int) -> int:
    """End the versions listed in the temp table ``closing`` at ``valid_from``.

    An open version is closed (``valid_to``, ``tx_to`` = now: the one update the store makes).
    A closed version [a, b) that a correction cuts at D is superseded — kept, marked as no longer
    believed since now — and replaced by a copy [a, D) recorded now; [D, b) is then the
    correction's (or, for a removal, nothing)."""
    cur.execute(sql.SQL(
        """
        INSERT INTO {part} (layer, fid, valid_from, valid_to, tx_from, tx_to, changeset_id, closed_by,
                            properties, geom, geom_3857, content_hash)
        SELECT f.layer, f.fid, f.valid_from, %s, now(), now(), f.changeset_id, %s,
               f.properties, f.geom, f.geom_3857, f.content_hash
        FROM {part} f JOIN closing c USING (vid)
        WHERE f.valid_to IS NOT NULL AND f.valid_from < %s
        """).format(part=part), (valid_from, cs_id, valid_from))
    cur.execute(sql.SQL(
        "UPDATE {} f SET superseded_at = now(), superseded_by = %s FROM closing c "
        "WHERE f.vid = c.vid AND f.valid_to IS NOT NULL").format(part), (cs_id,))
    superseded = cur.rowcount
    cur.execute(sql.SQL(
        "UPDATE {} f SET valid_to = %s, tx_to = now(), closed_by = %s FROM closing c "
        "WHERE f.vid = c.vid AND f.valid_to IS NULL").format(part), (valid_from, cs_id))
    return superseded + cur.rowcount


def _lock_layer(conn: psycopg.Connection, layer: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin.layer.{layer}",))


def latest_valid_from(conn: psycopg.Connection, layer: str) -> datetime | None:
    row = conn.execute("SELECT max(valid_from) FROM changesets WHERE layer = %s", (layer,)).fetchone()
    return row[0] if row else None


def matches_state(conn: psycopg.Connection, layer: Layer, features: FeatureRows, at: datetime,
                  mode: str) -> bool:
    """Does the layer already hold these features as of valid time ``at``? (Re-running an old
    load of a survey year is then a no-op rather than a back-dated change.) Replace: the state at
    ``at`` is exactly these features; append / upsert: it contains them."""
    if features.fids is None:
        return False
    stored = dict(conn.execute(
        sql.SQL("SELECT fid, content_hash::text FROM {} WHERE valid_from <= %s "
                "AND (valid_to IS NULL OR valid_to > %s) AND superseded_at IS NULL").format(
            sql.Identifier(partition_name(layer.name))),
        (at, at),
    ).fetchall())
    if mode == "replace" and len(stored) != len(features):
        return False
    for start in range(0, len(features), COPY_CHUNK):
        stop = min(start + COPY_CHUNK, len(features))
        digests = features.digests(start, stop)
        for fid, digest in zip(features.fids[start:stop], digests):
            if stored.get(str(fid), "").replace("-", "") != digest:
                return False
    return True


def write_changeset(
    conn: psycopg.Connection,
    layer: Layer,
    features: FeatureRows,
    *,
    mode: str,
    valid_from: datetime,
    author: str,
    source: str | None,
    source_hash: str | None = None,
    new_layer: bool = False,
    keep_keys: set[str] | None = None,
    message: str | None = None,
    progress: Progress | None = None,
    expect_versions: dict[str, int | None] | None = None,
    tolerance: float = DEFAULT_TOLERANCE_DEG,
    strip_strings: bool = False,
) -> WriteResult:
    """Write one changeset into ``layer`` inside the caller's transaction.

    ``tolerance`` (degrees of the stored CGCS2000 coordinates): a feature whose hash differs from
    its stored version but whose geometry matches it vertex by vertex within this distance, and
    whose properties are equal by value (1 = 1.0; with ``strip_strings``, text compared without
    trailing spaces), is unchanged: round-off is not a change.

    ``keep_keys``: in replace mode, current features with these keys are not closed even though
    absent (their incoming row was rejected, so the file says nothing reliable about them).
    """
    if mode not in MODES:
        raise StoreError.about("mode", mode, f"choose one of {', '.join(MODES)}")
    if features.fids is None and mode != "append":
        raise StoreError(
            f"mode {mode} matches incoming features to stored ones by key: name the key field "
            "(a field whose value identifies a feature, e.g. BSM or parcel_id).", subject="key", value=None)
    _lock_layer(conn, layer.name)  # held until the caller's transaction ends
    if expect_versions and not new_layer:
        _check_versions(conn, layer.name, expect_versions)
    # A change valid from before the layer's latest change is a correction in valid time: it is
    # recorded now and re-derives the affected versions (see _write_incremental).
    past = not new_layer and _is_past(conn, layer.name, valid_from)
    cs_id, recorded_at = conn.execute("SELECT nextval('changesets_id_seq'), now()").fetchone()
    result = WriteResult(changeset_id=cs_id, recorded_at=recorded_at, correction=past)
    fids = features.fids
    if fids is None:
        fids = np.array([f"{cs_id}-{r}" for r in features.rows], dtype=object)
        features = FeatureRows(rows=features.rows, fids=fids, geometry=features.geometry,
                               properties=features.properties)
    if new_layer:
        # First load: the partition is filled and indexed on the side (parallel index builds),
        # then attached in this transaction. Until then no query of `features` can see it.
        _stage_partition(conn, layer, features, valid_from, cs_id, recorded_at, progress)
    conn.execute(
        """
        INSERT INTO changesets (id, layer, author, valid_from, mode, source, source_hash, message)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (cs_id, layer.name, author, valid_from, mode, source, source_hash, message),
    )
    part = sql.Identifier(partition_name(layer.name))
    with conn.cursor() as cur:
        if new_layer:
            cur.execute(sql.SQL("ALTER TABLE features ATTACH PARTITION {} FOR VALUES IN ({})").format(
                part, sql.Literal(layer.name)))
            result.added = len(features)
            result.samples["added"] = [str(x) for x in fids[:5]]
        else:
            _write_incremental(cur, layer, features, mode, valid_from, cs_id, recorded_at,
                               keep_keys or set(), result, progress, past=past, tolerance=tolerance,
                               strip_strings=strip_strings)
        result.current_total = result.added if new_layer else cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE valid_to IS NULL").format(part)
        ).fetchone()[0]
    return result


# Rough relative cost of building each index (measured on 228k polygons): used to split the
# builds over two sessions evenly. GiST builds dominate.
_INDEX_COST = {"gist": 4, "btree": 2}


def _partition_index_ddl(conn: psycopg.Connection, part: str) -> tuple[list[list[sql.Composable]], list[sql.Composable]]:
    """DDL giving a detached partition the indexes of ``features``, so that ATTACH adopts them
    instead of building them: (two balanced groups of CREATE INDEX to run in parallel, the
    statements to run after both — the primary key made from its unique index)."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = 'features'::regclass ORDER BY i.relname"
    ).fetchall()
    jobs: list[tuple[int, sql.Composable]] = []
    after: list[sql.Composable] = []
    for name, definition, primary in rows:
        suffix = name[len("features_"):] if name.startswith("features_") else name
        index = f"{part}_{suffix}"
        tail = re.sub(r"^.*? ON ONLY \S+ ", "", definition)
        unique = "UNIQUE " if definition.startswith("CREATE UNIQUE") else ""
        jobs.append((_INDEX_COST.get(tail.split()[1], 2), sql.SQL("CREATE " + unique + "INDEX {} ON {} ").format(
            sql.Identifier(index), sql.Identifier(part)) + sql.SQL(tail)))
        if primary:
            after.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                sql.Identifier(part), sql.Identifier(index), sql.Identifier(index)))
    groups: list[list[sql.Composable]] = [[], []]
    load = [0, 0]
    for cost, ddl in sorted(jobs, key=lambda j: -j[0]):
        k = 0 if load[0] <= load[1] else 1
        groups[k].append(ddl)
        load[k] += cost
    return groups, after


def _stage_partition(conn: psycopg.Connection, layer: Layer, features: FeatureRows,
                     valid_from: datetime, cs_id: int, recorded_at: datetime,
                     progress: Progress | None) -> None:
    """Create, fill (COPY) and index a layer's partition in separate committed transactions.

    Safe because the caller holds the layer's lock and the table is neither attached nor its
    layer registered until the caller's transaction commits; a failed load leaves an orphan that
    :func:`drop_orphan_partition` (called by ingest on failure, and by the next load) removes."""
    part = partition_name(layer.name)
    drop_orphan_partition(layer.name, conn=conn)
    with connect_like(conn) as stage:
        with stage.cursor() as cur:
            cur.execute(sql.SQL(
                "CREATE TABLE {} (LIKE features INCLUDING DEFAULTS INCLUDING CONSTRAINTS, CHECK (layer = {}))"
            ).format(sql.Identifier(part), sql.Literal(layer.name)))
            _copy_rows(cur, part, features, _copy_prefix(layer.name, valid_from, recorded_at, cs_id),
                       progress)
            groups, after = _partition_index_ddl(stage, part)
        stage.commit()
        if progress:
            progress("index", 0, 1)

        def build(statements: list[sql.Composable], use_stage: bool) -> None:
            c = stage if use_stage else connect_like(conn)
            try:
                for ddl in statements:
                    c.execute(ddl)
                c.commit()
            except psycopg.errors.UniqueViolation as exc:  # callers check keys; this is the backstop
                raise StoreError(f"layer {layer.name!r}: duplicate keys ({exc.diag.message_detail})") from exc
            finally:
                if not use_stage:
                    c.close()

        # Index builds in two sessions at once (a GiST build is single-threaded in PostgreSQL).
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(build, groups[0], True), pool.submit(build, groups[1], False)]:
                f.result()
        build(after, True)


def drop_orphan_partition(layer: str, *, conn: psycopg.Connection | None = None, settings=None) -> bool:
    """Drop ``features_<layer>`` if it is a leftover of a failed first load: not attached and its
    layer not registered. Runs in its own short transaction; never touches a live partition."""
    part = partition_name(layer)
    with (connect_like(conn) if conn is not None else connect(settings)) as c:
        row = c.execute(
            "SELECT c.relispartition FROM pg_class c WHERE c.oid = to_regclass(%s)", (part,)
        ).fetchone()
        if row is None or row[0]:
            return False
        # Wait (a little) for a transaction still using it, then look again with a fresh snapshot.
        c.execute("SET LOCAL lock_timeout = '10s'")
        c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(part)))
        attached = c.execute("SELECT relispartition FROM pg_class WHERE oid = to_regclass(%s)", (part,)).fetchone()
        registered = c.execute("SELECT 1 FROM layers WHERE name = %s", (layer,)).fetchone()
        if attached is None or attached[0] or registered:
            return False
        c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part)))
        c.commit()
        return True


def _write_incremental(cur: psycopg.Cursor, layer: Layer, features: FeatureRows, mode: str,
                       valid_from: datetime, cs_id: int, recorded_at: datetime, keep_keys: set[str],
                       result: WriteResult, progress: Progress | None, *, past: bool = False,
                       tolerance: float = 0.0, strip_strings: bool = False) -> None:
    """Compare first, write second: only keys and content hashes of every incoming feature go to
    the server; full rows follow for the added and changed ones alone. A yearly survey
    re-ingested costs its changes, not its size.

    ``past``: a correction valid from D before the layer's latest change. Incoming features are
    compared with the versions believed valid at D (not the current ones); a replaced version
    ends at D (see _close_versions), and a new version lasts until the feature's next recorded
    change after D, which stays as recorded."""
    part = sql.Identifier(partition_name(layer.name))
    cur.execute("CREATE TEMP TABLE incoming_keys (row_no int, fid text, content_hash uuid) ON COMMIT DROP")
    total = len(features)
    with cur.copy("COPY incoming_keys (row_no, fid, content_hash) FROM STDIN",
                  writer=QueuedLibpqWriter(cur)) as copy:
        for start in range(0, total, COPY_CHUNK):
            stop = min(start + COPY_CHUNK, total)
            lines = zip(map(str, features.rows[start:stop]),
                        (_copy_text(str(f)) for f in features.fids[start:stop]),
                        features.digests(start, stop))
            copy.write(("\n".join(map("\t".join, lines)) + "\n").encode("utf-8"))
            if progress:
                progress("compare", stop, total)
    cur.execute("CREATE INDEX ON incoming_keys (fid)")
    cur.execute("ANALYZE incoming_keys")
    cur.execute(
        sql.SQL(
            """
            CREATE TEMP TABLE classified ON COMMIT DROP AS
            SELECT i.row_no, i.fid, f.vid,
                   CASE WHEN f.vid IS NULL THEN 'added'
                        WHEN f.content_hash = i.content_hash THEN 'unchanged'
                        ELSE 'changed' END AS status
            FROM incoming_keys i
            LEFT JOIN {} f ON f.fid = i.fid AND {}
            """
        ).format(part, _covering(past)), _covering_params(past, valid_from)
    )
    if mode == "append":
        clash = cur.execute(
            "SELECT row_no, fid FROM classified WHERE status <> 'added' ORDER BY row_no LIMIT 1"
        ).fetchone()
        if clash:
            raise StoreError(
                f"row {clash[0]}: a feature with key {clash[1]!r} already exists in layer "
                f"{layer.name!r}. Append adds new features only; use mode upsert to update "
                "existing ones or mode replace to load a complete new state."
            )
    result.within_tolerance = _settle_round_off(cur, part, features, tolerance, strip_strings)
    counts = dict(cur.execute("SELECT status, count(*) FROM classified GROUP BY status").fetchall())
    result.added = counts.get("added", 0)
    result.changed = counts.get("changed", 0)
    result.unchanged = counts.get("unchanged", 0)
    for status in ("added", "changed"):
        result.samples[status] = [r[0] for r in cur.execute(
            "SELECT fid FROM classified WHERE status = %s ORDER BY row_no LIMIT 5", (status,))]

    # Versions to close: changed features, and (replace) current features absent from the file.
    cur.execute("CREATE TEMP TABLE closing (vid bigint PRIMARY KEY) ON COMMIT DROP")
    cur.execute("INSERT INTO closing SELECT vid FROM classified WHERE status = 'changed'")
    if mode == "replace":
        cur.execute(
            sql.SQL(
                """
                INSERT INTO closing
                SELECT f.vid FROM {} f
                WHERE {}
                  AND NOT EXISTS (SELECT 1 FROM incoming_keys i WHERE i.fid = f.fid)
                  AND NOT (f.fid = ANY(%s))
                """
            ).format(part, _covering(past)),
            (*_covering_params(past, valid_from), sorted(keep_keys)),
        )
        result.closed = cur.rowcount
        result.samples["closed"] = [r[0] for r in cur.execute(
            sql.SQL("SELECT f.fid FROM {} f JOIN closing c USING (vid) "
                    "WHERE NOT EXISTS (SELECT 1 FROM incoming_keys i WHERE i.fid = f.fid) "
                    "ORDER BY f.fid LIMIT 5").format(part))]
    _close_versions(cur, part, layer.name, valid_from, cs_id)
    # The new versions: full rows for added and changed features only, straight into the layer
    # (a correction's go through a staging table: each ends where the feature's next change starts).
    new_rows = np.array([r[0] for r in cur.execute(
        "SELECT row_no FROM classified WHERE status IN ('added', 'changed') ORDER BY row_no")], dtype=np.int64)
    if len(new_rows):
        position = {int(r): i for i, r in enumerate(features.rows)}
        subset = features.subset(np.array([position[int(r)] for r in new_rows], dtype=np.int64))
        prefix = _copy_prefix(layer.name, valid_from, recorded_at, cs_id)
        if not past:
            _copy_rows(cur, partition_name(layer.name), subset, prefix, progress)
        else:
            cur.execute("CREATE TEMP TABLE staged_versions (LIKE features INCLUDING DEFAULTS) ON COMMIT DROP")
            _copy_rows(cur, "staged_versions", subset, prefix, progress)
            cur.execute(sql.SQL(
                """
                INSERT INTO {part} (layer, vid, fid, valid_from, valid_to, tx_from, tx_to, changeset_id,
                                    properties, geom, geom_3857, content_hash)
                SELECT s.layer, s.vid, s.fid, s.valid_from, nx.next_from,
                       s.tx_from, CASE WHEN nx.next_from IS NULL THEN NULL ELSE s.tx_from END,
                       s.changeset_id, s.properties, s.geom, s.geom_3857, s.content_hash
                FROM staged_versions s
                LEFT JOIN LATERAL (SELECT min(g.valid_from) AS next_from FROM {part} g
                                   WHERE g.fid = s.fid AND g.valid_from > s.valid_from
                                     AND g.superseded_at IS NULL) nx ON true
                """).format(part=part))
            cur.execute("DROP TABLE staged_versions")

    for name in ("classified", "closing", "incoming_keys"):
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def _same_value(a, b, strip_strings: bool) -> bool:
    """Equal by value and kind: numbers by value (1 = 1.0, never True = 1), text exactly or,
    with ``strip_strings``, without trailing spaces; lists and objects element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a.rstrip() == b.rstrip() if strip_strings else a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k], strip_strings) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y, strip_strings) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def _settle_round_off(cur: psycopg.Cursor, part: sql.Identifier, features: FeatureRows, tolerance: float,
                      strip_strings: bool) -> int:
    """Turn 'changed' rows of ``classified`` that differ from their stored version only below the
    tolerance (coordinates, number formatting, optionally trailing spaces) into 'unchanged'.
    Returns how many. Only rows whose hash differs are looked at, so an unchanged re-load costs
    nothing more."""
    rows = cur.execute(sql.SQL(
        "SELECT c.row_no, f.properties::text, ST_AsBinary(f.geom) FROM classified c JOIN {} f ON f.vid = c.vid "
        "WHERE c.status = 'changed' ORDER BY c.row_no").format(part)).fetchall()
    if not rows:
        return 0
    position = {int(r): i for i, r in enumerate(features.rows)}
    index = np.array([position[int(r[0])] for r in rows], dtype=np.int64)
    incoming = properties_to_json(features.properties.iloc[index])
    stored = shapely.from_wkb([bytes(r[2]) for r in rows])
    geometry_same = shapely.equals_exact(features.geometry[index], stored, tolerance=tolerance)
    within = [int(r[0]) for r, same, props in zip(rows, geometry_same, incoming)
              if same and _same_value(json.loads(props), json.loads(r[1]), strip_strings)]
    if within:
        cur.execute("UPDATE classified SET status = 'unchanged' WHERE row_no = ANY(%s)", (within,))
    return len(within)


def finish_changeset(conn: psycopg.Connection, changeset_id: int, counts: dict) -> None:
    """Record a changeset's counts, with the layer's number of current features after it
    (``current``: read by the registry listing instead of counting a large layer each time)."""
    if "current" not in counts:
        layer = conn.execute("SELECT layer FROM changesets WHERE id = %s", (changeset_id,)).fetchone()[0]
        counts = {**counts, "current": conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE layer = %s AND valid_to IS NULL").format(
                sql.Identifier(partition_name(layer))), (layer,)).fetchone()[0]}
    layer = conn.execute(
        "UPDATE changesets SET counts = %s::jsonb WHERE id = %s RETURNING layer",
        (json.dumps(counts, ensure_ascii=False), changeset_id),
    ).fetchone()[0]
    notify(conn, layer, changeset_id)  # caches in every process hear of it when this commits
