"""The derived lookup table ``geocode_index`` and its refresh from the store.

The store is the only writer of features; this module only *reads* the current versions
(valid_to IS NULL) of the source layers and keeps a search-friendly copy of them:

    layer, fid, kind, name (display), search (normalised text), short (road + door + building),
    street, community, road, door_number, door_no, building, code, parent_code, rank_base,
    geom (Point, EPSG:4490), area (the polygon of streets / communities)

``geocode_state`` records, per source layer, the latest changeset the copy reflects. ``refresh``
compares it with ``max(changesets.id)`` of that layer and, when the store is newer, re-copies
only the features touched by the newer changesets (opened or closed by them); a layer never
indexed (or one that disappeared) is copied (or removed) in full. Concurrent refreshes are
serialised by a transaction-level advisory lock, so two workers never index twice.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from spatial_api.store.registry import partition_name

SOURCE_LAYERS = ("streets", "communities", "place_names", "addresses")
#: rank_base of place kinds (lower is more important); addresses are 5
PLACE_RANK = {
    "river": 2, "reservoir": 2, "mountain": 2, "station": 2, "landmark": 2, "park": 2,
    "road": 3, "school": 3, "hospital": 3, "residential": 3, "industrial_park": 3,
    "village": 3, "community_centre": 4, "poi": 4,
}
_LOCK_KEY = 0x6765_6F63  # "geoc"

#: SQL twin of ``parse.normalize`` ($1: a text expression)
NORMALIZE_SQL = (
    "regexp_replace(regexp_replace(lower(normalize(coalesce({0}, ''), NFKC)), "
    "'[\\s,，、·\\-_/]+', '', 'g'), '^(中国)?(广东省?)?(深圳市?)?(龙岗区)?', '')"
)


def _norm(expr: str) -> str:
    return NORMALIZE_SQL.format(expr)


def _point(expr: str = "f.geom") -> str:
    return (f"CASE WHEN GeometryType({expr}) = 'POINT' THEN {expr} "
            f"ELSE ST_PointOnSurface({expr}) END")


def _select(layer: str) -> str:
    """SELECT list (same order as INSERT_COLUMNS) of one source layer's partition ``f``."""
    p = "f.properties"
    if layer == "addresses":
        full = (f"coalesce(nullif({p}->>'full_address', ''), concat_ws('', {p}->>'street', "
                f"{p}->>'community', {p}->>'road', {p}->>'door_number', {p}->>'building'))")
        door = f"nullif({p}->>'door_number', '')"
        short = (f"CASE WHEN {door} IS NULL THEN NULL "
                 f"WHEN {door} LIKE coalesce({p}->>'road', '') || '%%' THEN {door} || coalesce({p}->>'building', '') "
                 f"ELSE coalesce({p}->>'road', '') || {door} || coalesce({p}->>'building', '') END")
        return (
            f"'address', {full}, {_norm(full)}, {_norm(short)}, {p}->>'street', {p}->>'community', "
            f"{p}->>'road', {door}, (substring({door} from '(\\d+)号'))::int, {p}->>'building', "
            f"NULL, NULL, 5, {_point()}, NULL"
        )
    if layer == "place_names":
        name = f"coalesce(nullif({p}->>'name', ''), f.fid)"
        kind = f"coalesce(nullif({p}->>'kind', ''), 'place')"
        ranks = " ".join(f"WHEN '{k}' THEN {v}" for k, v in PLACE_RANK.items())
        return (
            f"{kind}, {name}, {_norm(name)}, NULL, {p}->>'street', {p}->>'community', "
            f"CASE WHEN {p}->>'kind' = 'road' THEN {p}->>'name' END, NULL, NULL, NULL, "
            f"NULL, NULL, CASE {p}->>'kind' {ranks} ELSE 4 END, {_point()}, NULL"
        )
    if layer == "streets":
        name = f"coalesce(nullif({p}->>'name', ''), f.fid)"
        return (
            f"'street', {name}, {_norm(name)}, NULL, {name}, NULL, NULL, NULL, NULL, NULL, "
            f"coalesce({p}->>'code', f.fid), NULL, 0, {_point()}, "
            f"CASE WHEN GeometryType(f.geom) IN ('POLYGON', 'MULTIPOLYGON') THEN f.geom END"
        )
    if layer == "communities":
        name = f"coalesce(nullif({p}->>'name', ''), f.fid)"
        return (
            f"'community', {name}, {_norm(name)}, NULL, {p}->>'street', {name}, NULL, NULL, NULL, "
            f"NULL, coalesce({p}->>'code', f.fid), {p}->>'street_code', 1, {_point()}, "
            f"CASE WHEN GeometryType(f.geom) IN ('POLYGON', 'MULTIPOLYGON') THEN f.geom END"
        )
    raise ValueError(layer)


#: the same as in migration 0002
TRGM_INDEX_SQL = ("CREATE INDEX IF NOT EXISTS geocode_index_search_trgm ON geocode_index "
                  "USING gin (search public.gin_trgm_ops)")

INSERT_COLUMNS = ("layer, fid, changeset_id, kind, name, search, short, street, community, road, "
                  "door_number, door_no, building, code, parent_code, rank_base, geom, area")


def state(conn: psycopg.Connection) -> dict[str, tuple[int, int | None, bool]]:
    """{layer: (latest changeset in the store, changeset the index reflects, partition exists)}"""
    rows = conn.execute(
        """
        SELECT l.layer,
               coalesce((SELECT max(c.id) FROM changesets c WHERE c.layer = l.layer), 0),
               s.changeset_id,
               to_regclass(quote_ident('features_' || l.layer)) IS NOT NULL
        FROM unnest(%s::text[]) AS l(layer) LEFT JOIN geocode_state s ON s.layer = l.layer
        """,
        (list(SOURCE_LAYERS),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def is_stale(conn: psycopg.Connection) -> bool:
    return any(latest != (indexed or 0) for latest, indexed, _ in state(conn).values())


def refresh(conn: psycopg.Connection, *, full: bool = False) -> dict[str, int]:
    """Bring ``geocode_index`` up to date with the store; returns {layer: rows re-indexed}.

    Runs in one transaction (its own if ``conn`` is in autocommit mode) under an advisory lock;
    a no-op when nothing changed. ``full=True`` rebuilds every source layer."""
    counts: dict[str, int] = {}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        layers = state(conn)
        # a layer copied in full (first build, --full): building the trigram GIN index afresh
        # is several times faster than inserting tens of thousands of rows into it
        bulk = any(exists and latest and (full or indexed is None or indexed > latest)
                   for latest, indexed, exists in layers.values())
        if bulk:
            conn.execute("DROP INDEX IF EXISTS geocode_index_search_trgm")
        for layer, (latest, indexed, exists) in layers.items():
            if not full and indexed is not None and latest == indexed:
                continue
            if not exists or latest == 0:
                conn.execute("DELETE FROM geocode_index WHERE layer = %s", (layer,))
                conn.execute("DELETE FROM geocode_state WHERE layer = %s", (layer,))
                counts[layer] = 0
                continue
            part = sql.Identifier(partition_name(layer))
            select = sql.SQL("SELECT %s, f.fid, f.changeset_id, " + _select(layer))
            if full or indexed is None or indexed > latest:
                conn.execute("DELETE FROM geocode_index WHERE layer = %s", (layer,))
                query = sql.SQL("INSERT INTO geocode_index (" + INSERT_COLUMNS + ") {} "
                                "FROM {} f WHERE f.valid_to IS NULL").format(select, part)
                cur = conn.execute(query, (layer,))
            else:
                # only the features opened or closed by a changeset newer than the index
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE geocode_touched ON COMMIT DROP AS "
                            "SELECT DISTINCT f.fid FROM {} f "
                            "WHERE f.changeset_id > %s OR f.closed_by > %s").format(part),
                    (indexed, indexed),
                )
                conn.execute("DELETE FROM geocode_index g USING geocode_touched t "
                             "WHERE g.layer = %s AND g.fid = t.fid", (layer,))
                query = sql.SQL("INSERT INTO geocode_index (" + INSERT_COLUMNS + ") {} "
                                "FROM {} f JOIN geocode_touched t ON t.fid = f.fid "
                                "WHERE f.valid_to IS NULL").format(select, part)
                cur = conn.execute(query, (layer,))
                conn.execute("DROP TABLE geocode_touched")
            counts[layer] = cur.rowcount
            conn.execute(
                """
                INSERT INTO geocode_state (layer, changeset_id) VALUES (%s, %s)
                ON CONFLICT (layer) DO UPDATE SET changeset_id = EXCLUDED.changeset_id,
                                                  refreshed_at = now()
                """,
                (layer, latest),
            )
        if bulk:
            conn.execute(TRGM_INDEX_SQL)
        if counts:
            # communities without a street name in their properties: take it from the street code
            conn.execute(
                """
                UPDATE geocode_index c SET street = s.name
                FROM geocode_index s
                WHERE c.layer = 'communities' AND s.layer = 'streets'
                  AND c.parent_code = s.code AND c.street IS DISTINCT FROM s.name
                """
            )
    if counts:
        # merge the GIN pending list now (searches scan it linearly until autovacuum does:
        # ~10x slower substring / fuzzy search after a big change), and refresh the statistics
        if not bulk:
            conn.execute("SELECT gin_clean_pending_list('geocode_index_search_trgm'::regclass)")
        conn.execute("ANALYZE geocode_index")
    return counts
