"""Queries of ``geocode_index``: search, autocomplete and reverse geocoding.

Candidates come from a few index-backed paths in one round trip (UNION ALL of limited
sub-queries), then are scored in Python (``parse.score``):

- *named* things (streets, communities, place names: a few thousand rows) containing the query
  or one of its parsed parts (``strpos``), walked in importance order on a partial index — this
  is what answers 1–2 character queries, where trigrams cannot (a 1–2 character string has no
  interior trigram);
- addresses by prefix of the normalised full address and of road + door number + building
  (``text_pattern_ops`` btrees, walked in order: fast for any prefix length);
- addresses by the parsed road (or a road named alike) and door number, and by door number
  within the parsed street / community (btree);
- (3+ characters) addresses by substring through the trigram GIN index.

``search`` adds, only when those give fewer than ``limit`` good candidates, trigram word
similarity (fuzzy: typos, missing or extra parts). ``autocomplete`` never does: one round trip.

Every value the user typed reaches PostgreSQL as a bound parameter; LIKE patterns are escaped;
the SQL text is built from constants only.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import dict_row

from spatial_api.geocode.parse import ParsedQuery, parse_query, score

COLUMNS = ("layer, fid, kind, name, search, short, street, community, road, door_number, door_no, "
           "building, code, rank_base, ST_X(geom) AS lon, ST_Y(geom) AS lat")
FUZZY_THRESHOLD = 0.5
FUZZY_POOL = 400
#: sorts after every continuation of a prefix (byte order, as text_pattern_ops compares)
PREFIX_END = "\U0010ffff"
ROAD_SUFFIX_RE = re.compile(r"(大道|大街|公路|路|道|街|巷)$")


def like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fuzzy_candidates(conn: psycopg.Connection, p: ParsedQuery, n: int) -> list[dict]:
    """Trigram word similarity (typos, missing or extra parts); 3+ characters only."""
    q = p.text
    if len(q) < 3:
        return []
    # at most FUZZY_POOL matches are ordered: a common fragment (坪地街道…) matches thousands
    sql = (f"(SELECT {COLUMNS} FROM geocode_index WHERE layer <> 'addresses' "
           "AND %s <% search ORDER BY %s <<-> search LIMIT %s) UNION ALL "
           f"(SELECT {COLUMNS} FROM (SELECT * FROM geocode_index WHERE layer = 'addresses' "
           "AND %s <% search LIMIT %s) m ORDER BY %s <<-> search LIMIT %s)")
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql.replace("<%", "<%%"), [q, q, n, q, FUZZY_POOL, q, n * 3]).fetchall()


def _candidates(conn: psycopg.Connection, p: ParsedQuery, n: int) -> list[dict]:
    """One round trip: the index-backed paths of the module docstring, each limited."""
    parts: list[str] = []
    params: list = []
    q = p.text
    terms = [t for t in dict.fromkeys([q, p.rest, p.road, p.community, p.street]) if t]

    # named things: substring of any recognised term, most important and shortest first
    # (strpos, not LIKE: the planner walks the small partial index in rank order and stops at
    # the limit instead of bitmap-scanning the trigram index of every row for a 1-char term)
    contains = " OR ".join(["strpos(search, %s) > 0"] * len(terms))
    parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE layer <> 'addresses' "
                 f"AND ({contains}) ORDER BY rank_base, length(search) LIMIT %s)")
    params += [*terms, max(3 * n, 60)]

    # addresses by prefix (full address without 深圳市龙岗区; road + door + building), walking
    # the text_pattern_ops btree in order (an explicit byte range: a LIKE 'x%' lets the planner
    # pick the trigram index and sort thousands of rows for a 1-character prefix)
    upper = q + PREFIX_END
    parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE search ~>=~ %s AND search ~<~ %s "
                 "ORDER BY search USING ~<~ LIMIT %s)")
    params += [q, upper, n * 2]
    parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE short ~>=~ %s AND short ~<~ %s "
                 "ORDER BY short USING ~<~ LIMIT %s)")
    params += [q, upper, n * 2]

    # addresses by the parsed parts
    if p.road and p.door_no is not None:
        parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE layer = 'addresses' "
                     "AND road = %s AND door_no = %s LIMIT 200)")
        params += [p.road, p.door_no]
    if p.road:
        # the road, or one named alike (五和大道 asked, 五和路 / 五和街 exist), nearest doors first
        stem = ROAD_SUFFIX_RE.sub("", p.road)
        stem = stem if len(stem) >= 2 else p.road
        parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE layer = 'addresses' "
                     "AND road LIKE %s ORDER BY road = %s DESC, abs(door_no - %s) LIMIT %s)")
        params += [like_escape(stem) + "%", p.road, p.door_no or 0, n * 2]
    if p.door_no is not None and (p.street or p.community or not p.road):
        # the door number in the street / community asked for
        parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE layer = 'addresses' "
                     "AND door_no = %s AND (%s::text IS NULL OR street = %s) "
                     "AND (%s::text IS NULL OR community = %s) LIMIT 200)")
        params += [p.door_no, p.street, p.street, p.community, p.community]

    # 3+ characters: substring anywhere (trigram GIN)
    if len(q) >= 3:
        parts.append(f"(SELECT {COLUMNS} FROM geocode_index WHERE layer = 'addresses' "
                     "AND search LIKE %s LIMIT %s)")
        params += [f"%{like_escape(q)}%", n * 3]
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(" UNION ALL ".join(parts), params).fetchall()


def _unique(rows: list[dict], hidden: frozenset[str] = frozenset()) -> list[dict]:
    """Distinct candidates, without those of layers the caller may not see (each candidate path
    has its own limit, so the visible paths still fill the page)."""
    seen: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["layer"] not in hidden:
            seen.setdefault((r["layer"], r["fid"]), r)
    return list(seen.values())


def rank(p: ParsedQuery, rows: list[dict], limit: int) -> list[dict]:
    for r in rows:
        r["score"] = score(p, r)
    rows.sort(key=lambda r: (-r["score"], r["rank_base"], len(r["search"]), r["search"]))
    return rows[:limit]


#: search falls back to the fuzzy paths when fewer than ``limit`` candidates score this much
GOOD_SCORE = 0.6


def search(conn: psycopg.Connection, q: str, limit: int,
           hidden: frozenset[str] = frozenset()) -> tuple[ParsedQuery, list[dict]]:
    p = parse_query(q)
    if not p.text:
        return p, []
    rows = rank(p, _unique(_candidates(conn, p, limit), hidden), limit)
    if sum(r["score"] >= GOOD_SCORE for r in rows) < limit:
        rows = rank(p, _unique(rows + _fuzzy_candidates(conn, p, limit), hidden), limit)
    return p, rows


def autocomplete(conn: psycopg.Connection, q: str, limit: int,
                 hidden: frozenset[str] = frozenset()) -> tuple[ParsedQuery, list[dict]]:
    """Prefix, substring and parsed-part paths only (no fuzzy): one round trip."""
    p = parse_query(q)
    if not p.text:
        return p, []
    return p, rank(p, _unique(_candidates(conn, p, limit), hidden), limit)


def reverse(conn: psycopg.Connection, lon: float, lat: float, hidden: frozenset[str] = frozenset()) -> dict:
    """Nearest address (distance on the CGCS2000 ellipsoid, metres) and the street and
    community polygons containing the point. The nearest-in-degrees candidates (GiST KNN) are
    re-ranked by ellipsoidal distance: 1° of longitude is ~8 % shorter than 1° of latitude here,
    so the nearest in degrees is not always the nearest on the ground."""
    with conn.cursor(row_factory=dict_row) as cur:
        address = cur.execute(
            f"""
            WITH pt AS (SELECT ST_SetSRID(ST_MakePoint(%s, %s), 4490) AS g)
            SELECT c.*, ST_Distance(c.g::geography, pt.g::geography, true) AS distance_m
            FROM pt, LATERAL (
                SELECT {COLUMNS}, geom AS g FROM geocode_index
                WHERE layer = 'addresses' ORDER BY geom <-> pt.g LIMIT 32) c
            ORDER BY distance_m, c.fid LIMIT 1
            """,
            (lon, lat),
        ).fetchone()
        areas = cur.execute(
            f"""
            SELECT {COLUMNS} FROM geocode_index
            WHERE area IS NOT NULL AND layer IN ('streets', 'communities')
              AND ST_Covers(area, ST_SetSRID(ST_MakePoint(%s, %s), 4490))
            ORDER BY rank_base, fid
            """,
            (lon, lat),
        ).fetchall()
    if address:
        address.pop("g", None)
        if "addresses" in hidden:
            address = None
    street = next((a for a in areas if a["layer"] == "streets" and "streets" not in hidden), None)
    community = next((a for a in areas if a["layer"] == "communities" and "communities" not in hidden), None)
    return {"address": address, "street": street, "community": community}
