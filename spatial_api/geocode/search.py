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

Every candidate is then judged by ``match.evaluate`` (its match level, the parts of the query it
matched and did not, its score; candidates that are no answer — an address on a road the query
did not ask for — are dropped). ``search`` first reads what the query's street, community and
road are in the index (``_context``: typo'd area names, the streets a road runs through) and,
when the road or door number asked for is not known, offers ``suggest``-ions.

Every value the user typed reaches PostgreSQL as a bound parameter; LIKE patterns are escaped;
the SQL text is built from constants only.
"""

from __future__ import annotations

import dataclasses
import re

import psycopg
from psycopg.rows import dict_row

from spatial_api.geocode.match import Context, closest, evaluate, road_similarity
from spatial_api.geocode.parse import ParsedQuery, parse_query

COLUMNS = ("layer, fid, kind, name, search, short, street, community, road, door_number, door_no, "
           "building, code, rank_base, ST_X(geom) AS lon, ST_Y(geom) AS lat")
FUZZY_THRESHOLD = 0.5
FUZZY_POOL = 400
#: sorts after every continuation of a prefix (byte order, as text_pattern_ops compares)
PREFIX_END = "\U0010ffff"
ROAD_SUFFIX_RE = re.compile(r"(大道|大街|公路|快速路|快速|高速|路|道|街|巷)$")
#: suggestions: at most this many, of roads named at least this much alike
MAX_SUGGESTIONS = 5
ROAD_SUGGEST = 0.6


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


def _candidates(conn: psycopg.Connection, p: ParsedQuery, n: int, ctx: Context | None = None) -> list[dict]:
    """One round trip: the index-backed paths of the module docstring, each limited."""
    parts: list[str] = []
    params: list = []
    q = p.text
    ctx = ctx or Context()
    terms = [t for t in dict.fromkeys([q, p.rest, p.road, p.community, p.street, ctx.community, ctx.street])
             if t]

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


def rank(p: ParsedQuery, rows: list[dict], limit: int, ctx: Context | None = None,
         typing: bool = False) -> list[dict]:
    """The rows that answer the query, each with its ``match`` and ``score``, best first."""
    ctx = ctx or Context()
    out = []
    for r in rows:
        m = evaluate(p, r, ctx, typing=typing)
        if m is not None:
            r["match"], r["score"] = m, m.score
            out.append(r)
    out.sort(key=lambda r: (-r["score"], r["rank_base"], len(r["search"]), r["search"]))
    return out[:limit]


#: search falls back to the fuzzy paths when fewer than ``limit`` candidates score this much
GOOD_SCORE = 0.6


def search(conn: psycopg.Connection, q: str, limit: int,
           hidden: frozenset[str] = frozenset()) -> tuple[ParsedQuery, list[dict], list[dict]]:
    """(parsed query, results, suggestions)."""
    p = parse_query(q)
    if not p.text:
        return p, [], []
    ctx = _context(conn, p, hidden)
    if p.road and not ctx.road_known:
        # 雪象新林大街16号: the parser took a community's short name for part of the road
        better = _known_road_inside(conn, p, ctx, hidden)
        if better is not None:
            p, ctx = better, _context(conn, better, hidden)
    rows = rank(p, _unique(_candidates(conn, p, limit, ctx), hidden), limit, ctx)
    if sum(r["score"] >= GOOD_SCORE for r in rows) < limit:
        rows = rank(p, _unique(rows + _fuzzy_candidates(conn, p, limit), hidden), limit, ctx)
    return p, rows, suggest(conn, p, ctx, rows, hidden)


def autocomplete(conn: psycopg.Connection, q: str, limit: int,
                 hidden: frozenset[str] = frozenset()) -> tuple[ParsedQuery, list[dict]]:
    """Prefix, substring and parsed-part paths only (no fuzzy, no typo'd area names, no
    suggestions): one round trip."""
    p = parse_query(q)
    if not p.text:
        return p, []
    return p, rank(p, _unique(_candidates(conn, p, limit), hidden), limit, typing=True)


def _context(conn: psycopg.Connection, p: ParsedQuery, hidden: frozenset[str]) -> Context:
    """The known street / community the query's ones mean (a typo'd name read as the clearly
    closest known one), whether its road is known and which streets / communities it runs through."""
    ctx = Context()
    with conn.cursor() as cur:
        if p.street or p.community:
            areas = cur.execute(
                "SELECT layer, name, street FROM geocode_index "
                "WHERE layer IN ('streets', 'communities') AND NOT layer = ANY(%s)",
                (list(hidden),)).fetchall()
            streets = [name for layer, name, _ in areas if layer == "streets"]
            streets += [street for layer, _, street in areas if layer == "communities" and street]
            if p.street:
                ctx.street, ctx.street_sim = closest(p.street, streets)
            if p.community:
                names = [name for layer, name, _ in areas if layer == "communities"]
                if p.community in names:
                    ctx.community, ctx.community_sim = p.community, 1.0
                else:
                    within = [name for layer, name, street in areas
                              if layer == "communities" and ctx.street in (None, street)]
                    ctx.community, ctx.community_sim = closest(p.community, within)
        if p.road:
            if "addresses" not in hidden:
                for street, community in cur.execute(
                        "SELECT DISTINCT street, community FROM geocode_index "
                        "WHERE layer = 'addresses' AND road = %s", (p.road,)):
                    ctx.road_known = True
                    ctx.road_streets.add(street)
                    ctx.road_communities.add(community)
            if "place_names" not in hidden:
                for street, community in cur.execute(
                        "SELECT street, community FROM geocode_index "
                        "WHERE layer = 'place_names' AND kind = 'road' AND road = %s", (p.road,)):
                    ctx.road_known = True
                    ctx.road_streets.add(street)
                    ctx.road_communities.add(community)
    ctx.road_streets.discard(None)
    ctx.road_communities.discard(None)
    return ctx


def _known_roads(conn: psycopg.Connection, ctx: Context, hidden: frozenset[str]) -> set[str]:
    """Every road name of the index (addresses' roads, place names of kind road), once per search."""
    if ctx.known_roads is None:
        names: set[str] = set()
        with conn.cursor() as cur:
            if "addresses" not in hidden:
                names |= {road for (road,) in cur.execute(DISTINCT_ROADS_SQL)}
            if "place_names" not in hidden:
                names |= {road for (road,) in cur.execute(
                    "SELECT DISTINCT road FROM geocode_index "
                    "WHERE layer = 'place_names' AND kind = 'road' AND road IS NOT NULL")}
        ctx.known_roads = {n for n in names if n}
    return ctx.known_roads


def _known_road_inside(conn: psycopg.Connection, p: ParsedQuery, ctx: Context,
                       hidden: frozenset[str]) -> ParsedQuery | None:
    """The query read again when its unknown road *ends with* a known one (雪象新林大街 = 雪象 +
    新林大街): the known road, and what precedes it as a community (雪象社区) or street (…街道)
    when one is so named, else as a name. None when no known road ends the parsed one."""
    inside = [n for n in _known_roads(conn, ctx, hidden) if len(n) < len(p.road) and p.road.endswith(n)]
    if not inside:
        return None
    road = max(inside, key=len)
    lead = p.road[:-len(road)]
    better = dataclasses.replace(p, road=road)
    with conn.cursor() as cur:
        areas = {(layer, name) for layer, name in cur.execute(
            "SELECT layer, name FROM geocode_index WHERE layer IN ('streets', 'communities') "
            "AND NOT layer = ANY(%s)", (list(hidden),))}
    if not p.community and ("communities", lead + "社区") in areas:
        better.community = lead + "社区"
    elif not p.street and ("streets", lead + "街道") in areas:
        better.street = lead + "街道"
    else:
        better.rest = lead + p.rest
    return better


def _within(ctx: Context, p: ParsedQuery, streets, communities) -> str | None:
    community, street = ctx.community or p.community, ctx.street or p.street
    if community and community in communities:
        return "community"
    if street and street in streets:
        return "street"
    return None


def _retry(ctx: Context, p: ParsedQuery, core: str, within: str | None) -> str:
    """The query again with ``core`` (road [+ door]) in place of the parts that did not match;
    the street / community only when the offer lies within them."""
    area = ""
    if within:
        area = (ctx.street or p.street or "") + ((ctx.community or p.community or "") if within == "community" else "")
    return area + core + (f"{p.building}栋" if p.building else "")


def suggest(conn: psycopg.Connection, p: ParsedQuery, ctx: Context, rows: list[dict],
            hidden: frozenset[str] = frozenset()) -> list[dict]:
    """Offers when the query's road or door number was not found (never results: a suggestion
    is a query to try, ``q``):

    - an unknown road: known roads named alike (``road_similarity`` >= 0.6), those within the
      matched community / street first (五和街 for 五和大道);
    - a door number without a road: the roads of the matched street / community that have it;
    - a known road without that door number: the nearest door numbers on it.
    """
    addresses = "addresses" not in hidden
    door = f"{p.door_no}号" if p.door_no is not None else ""
    out: list[dict] = []
    with conn.cursor(row_factory=dict_row) as cur:
        if p.road and not ctx.road_known:
            alike = sorted(((road_similarity(p.road, n), n) for n in _known_roads(conn, ctx, hidden)),
                           reverse=True)
            alike = [(sim, n) for sim, n in alike if sim >= ROAD_SUGGEST][:4 * MAX_SUGGESTIONS]
            if not alike:
                return []
            where = {n: (set(), set()) for _, n in alike}
            layers = [x for x in ("addresses", "place_names") if x not in hidden]
            for r in cur.execute(
                    "SELECT DISTINCT road, street, community FROM geocode_index "
                    "WHERE layer = ANY(%s) AND road = ANY(%s)", (layers, list(where))):
                where[r["road"]][0].add(r["street"])
                where[r["road"]][1].add(r["community"])
            for sim, name in alike:
                streets, communities = (sorted(x for x in s if x) for s in where[name])
                within = _within(ctx, p, streets, communities)
                near = {"community": 0.15, "street": 0.1}.get(within or "", 0.0)
                out.append({"kind": "road", "name": name, "road": name, "similarity": round(sim, 3),
                            "within": within, "streets": streets, "communities": communities,
                            "q": _retry(ctx, p, name + door, within), "_rank": sim + near})
            out.sort(key=lambda s: (-s["_rank"], s["name"]))
        elif p.road and door and addresses and not any(r["match"].level in ("door", "building") for r in rows):
            street, community = ctx.street or p.street, ctx.community or p.community
            sql = ("SELECT door_number, min(door_no) AS door_no, array_agg(DISTINCT street) AS streets, "
                   "array_agg(DISTINCT community) AS communities FROM geocode_index "
                   "WHERE layer = 'addresses' AND road = %s AND door_no IS NOT NULL "
                   "AND (%s::text IS NULL OR street = %s) AND (%s::text IS NULL OR community = %s) "
                   "GROUP BY door_number ORDER BY abs(min(door_no) - %s), min(door_no) LIMIT %s")
            found = cur.execute(sql, (p.road, street, street, community, community, p.door_no,
                                      MAX_SUGGESTIONS)).fetchall()
            if not found and (street or community):
                found = cur.execute(sql, (p.road, None, None, None, None, p.door_no, MAX_SUGGESTIONS)).fetchall()
            for r in found:
                within = _within(ctx, p, r["streets"], r["communities"])
                out.append({"kind": "door", "name": r["door_number"], "road": p.road,
                            "door_number": r["door_number"], "within": within,
                            "streets": sorted(x for x in r["streets"] if x),
                            "communities": sorted(x for x in r["communities"] if x),
                            "q": _retry(ctx, p, r["door_number"], within)})
        elif not p.road and door and addresses:
            street, community = ctx.street, ctx.community
            for r in cur.execute(
                    "SELECT road, min(door_number) AS door_number, array_agg(DISTINCT street) AS streets, "
                    "array_agg(DISTINCT community) AS communities FROM geocode_index "
                    "WHERE layer = 'addresses' AND door_no = %s AND road IS NOT NULL "
                    "AND (%s::text IS NULL OR street = %s) AND (%s::text IS NULL OR community = %s) "
                    "GROUP BY road ORDER BY count(*) DESC, road LIMIT %s",
                    (p.door_no, street, street, community, community, MAX_SUGGESTIONS)):
                within = _within(ctx, p, r["streets"], r["communities"])
                out.append({"kind": "door", "name": r["door_number"], "road": r["road"],
                            "door_number": r["door_number"], "within": within,
                            "streets": sorted(x for x in r["streets"] if x),
                            "communities": sorted(x for x in r["communities"] if x),
                            "q": _retry(ctx, p, r["door_number"], within)})
    for s in out:
        s.pop("_rank", None)
    return out[:MAX_SUGGESTIONS]


#: the distinct road names of the addresses, walking the (road, door_no) btree (a loose index
#: scan: one probe per road instead of reading every address)
DISTINCT_ROADS_SQL = """
    WITH RECURSIVE r(road) AS (
        (SELECT road FROM geocode_index WHERE layer = 'addresses' AND road IS NOT NULL
         ORDER BY road USING ~<~ LIMIT 1)
        UNION ALL
        SELECT (SELECT g.road FROM geocode_index g WHERE g.layer = 'addresses' AND g.road ~>~ r.road
                ORDER BY g.road USING ~<~ LIMIT 1)
        FROM r WHERE r.road IS NOT NULL)
    SELECT road FROM r WHERE road IS NOT NULL
"""


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
