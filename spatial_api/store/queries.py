"""Reading the store: current state, state as of a valid time (optionally as known at a
transaction time), changesets, one feature's history, and the difference between two times."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api.store.registry import partition_name


def temporal_filter(at: datetime | None, known_at: datetime | None, alias: str = "f") -> tuple[sql.Composable, list]:
    """SQL condition selecting the versions valid at ``at`` (None: now / current) as the store
    knew them at ``known_at`` (None: now). A version closed after ``known_at`` was still open
    then; a version superseded by a correction (0011) after ``known_at`` was still believed then."""
    a = sql.Identifier(alias)
    if at is None and known_at is None:
        return sql.SQL("{}.valid_to IS NULL").format(a), []  # superseded versions are never open
    params: list = []
    parts: list[sql.Composable] = []
    if known_at is not None:
        parts.append(sql.SQL("{}.tx_from <= %s").format(a))
        params.append(known_at)
        parts.append(sql.SQL("({a}.superseded_at IS NULL OR {a}.superseded_at > %s)").format(a=a))
        params.append(known_at)
    else:
        parts.append(sql.SQL("{}.superseded_at IS NULL").format(a))
    if at is None:
        # current as known at known_at: open then
        parts.append(sql.SQL("({a}.tx_to IS NULL OR {a}.tx_to > %s)").format(a=a))
        params.append(known_at)
    else:
        parts.append(sql.SQL("{}.valid_from <= %s").format(a))
        params.append(at)
        if known_at is None:
            parts.append(sql.SQL("({a}.valid_to IS NULL OR {a}.valid_to > %s)").format(a=a))
            params.append(at)
        else:
            parts.append(
                sql.SQL("({a}.valid_to IS NULL OR {a}.valid_to > %s OR {a}.tx_to > %s)").format(a=a)
            )
            params.extend([at, known_at])
    return sql.SQL(" AND ").join(parts), params


def features(
    conn: psycopg.Connection,
    layer: str,
    *,
    at: datetime | None = None,
    known_at: datetime | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int | None = None,
    offset: int = 0,
    geometry: str = "wkt",
) -> list[dict]:
    """Feature versions of ``layer`` as of a valid time (None: current). Each row: fid, vid,
    valid_from, valid_to, changeset_id, properties, geometry (WKT / GeoJSON text in EPSG:4490)."""
    cond, params = temporal_filter(at, known_at)
    geom_sql = {"wkt": "ST_AsText(f.geom)", "geojson": "ST_AsGeoJSON(f.geom, 9)"}[geometry]
    where = [sql.SQL("f.layer = {}").format(sql.Literal(layer)), cond]
    if bbox is not None:
        where.append(sql.SQL("f.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4490)"))
        params.extend(bbox)
    query = sql.SQL(
        "SELECT f.fid, f.vid, f.valid_from, f.valid_to, f.changeset_id, f.properties, "
        + geom_sql + " AS geometry FROM {} f WHERE {} ORDER BY f.fid"
    ).format(sql.Identifier(partition_name(layer)), sql.SQL(" AND ").join(where))
    if limit is not None:
        query += sql.SQL(" LIMIT %s OFFSET %s")
        params.extend([limit, offset])
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def count(conn: psycopg.Connection, layer: str, *, at: datetime | None = None,
          known_at: datetime | None = None) -> int:
    cond, params = temporal_filter(at, known_at)
    query = sql.SQL("SELECT count(*) FROM {} f WHERE f.layer = {} AND {}").format(
        sql.Identifier(partition_name(layer)), sql.Literal(layer), cond)
    return conn.execute(query, params).fetchone()[0]


def feature_history(conn: psycopg.Connection, layer: str, fid: str) -> list[dict]:
    """Every version of one feature, oldest first, with the changeset that made and closed it (and,
    for a version a later correction replaced, when and by which changeset it was superseded)."""
    query = sql.SQL(
        """
        SELECT f.vid, f.valid_from, f.valid_to, f.tx_from, f.tx_to, f.changeset_id, f.closed_by,
               f.superseded_at, f.superseded_by, f.properties, ST_AsText(f.geom) AS geometry
        FROM {} f WHERE f.layer = {} AND f.fid = %s ORDER BY f.valid_from, f.vid
        """
    ).format(sql.Identifier(partition_name(layer)), sql.Literal(layer))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, (fid,)).fetchall()


def changesets(conn: psycopg.Connection, layer: str | None = None) -> list[dict]:
    query = "SELECT * FROM changesets"
    params: list = []
    if layer:
        query += " WHERE layer = %s"
        params.append(layer)
    query += " ORDER BY id"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


@dataclass
class Diff:
    since: datetime
    until: datetime
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "removed": len(self.removed)}


def diff(conn: psycopg.Connection, layer: str, since: datetime, until: datetime,
         *, known_at: datetime | None = None) -> Diff:
    """Features added, changed (another version) and removed between two valid times."""
    c1, p1 = temporal_filter(since, known_at, "a")
    c2, p2 = temporal_filter(until, known_at, "b")
    part = sql.Identifier(partition_name(layer))
    query = sql.SQL(
        """
        WITH a AS (SELECT a.fid, a.vid, a.content_hash FROM {part} a WHERE {c1}),
             b AS (SELECT b.fid, b.vid, b.content_hash FROM {part} b WHERE {c2})
        SELECT coalesce(a.fid, b.fid) AS fid,
               CASE WHEN a.fid IS NULL THEN 'added'
                    WHEN b.fid IS NULL THEN 'removed'
                    ELSE 'changed' END AS status
        FROM a FULL JOIN b ON a.fid = b.fid
        WHERE a.fid IS NULL OR b.fid IS NULL
           OR (a.vid <> b.vid AND a.content_hash <> b.content_hash)
        ORDER BY 1
        """
    ).format(part=part, c1=c1, c2=c2)
    result = Diff(since=since, until=until)
    for fid, status in conn.execute(query, p1 + p2):
        getattr(result, status).append(fid)
    return result
