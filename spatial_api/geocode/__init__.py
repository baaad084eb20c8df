"""Place-name and address search (geocoding) for the demo district's naming layers.

    from spatial_api.geocode import router
    app.include_router(router(settings))

Endpoints (JSON; geometries are GeoJSON points, lon/lat in CGCS2000, EPSG:4490):

- ``GET /geocode/search?q=&limit=10`` — full and partial names of place names, addresses
  (``坂田街道五和大道123号``, ``深圳市龙岗区…3栋``), streets (街道) and communities (社区); ranked,
  each result with a score (0..1, the share of the query it matched), layer, feature id,
  name / full address, street, community, and how much of the query it matched:
  ``match_level`` (street / community / road / place / door / building), ``matched`` and
  ``unmatched`` (the query's parts, as written: {"street": "坂田街道", "road": "五和大道",
  "door": "123号", …}) and ``approximate`` (a typo'd street / community read as a known one).
  An address is only given for the road and door number the query names; when the road (or the
  door number) is not known, the answer is at the level that matched (the street, the community,
  the road) and ``suggestions`` (top level) offers the known roads named alike, or the door
  numbers there, each with a query ``q`` to try. The levels and rules: ``spatial_api.geocode.match``;
- ``GET /geocode/autocomplete?q=&limit=8`` — the same candidates without the fuzzy paths and
  the suggestions, plus the addresses the typed text is the beginning of; cheap enough to call
  on every keystroke;
- ``GET /geocode/reverse?lon=&lat=`` — the nearest address (distance in metres on the
  ellipsoid) plus the street and community containing the point.

Only current features (valid_to IS NULL) of the layers ``place_names``, ``addresses``,
``streets`` and ``communities`` are searched. They are read through a **derived** lookup table,
``geocode_index`` (see ``spatial_api.geocode.index``): the store remains the only writer of
features; the index is refreshed lazily, on the first request after any of those layers got a
newer changeset (max(changesets.id) per layer), touching only the features the new changesets
opened or closed. A missing layer simply contributes no results.

Errors are ``400 {"code": "InvalidParameterValue", "description": ...}`` (OGC API exception
style) for bad parameters, ``503 {"code": "ServiceUnavailable", ...}`` when the database has
not been migrated.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from typing import Any

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from spatial_api import security
from spatial_api.config import Settings, get_settings
from spatial_api.geocode import search as _search
from spatial_api.geocode.index import SOURCE_LAYERS, is_stale, refresh, state
from spatial_api.geocode.parse import ParsedQuery, normalize, parse_query
from spatial_api import db

__all__ = ["router", "refresh", "is_stale", "state", "parse_query", "normalize", "SOURCE_LAYERS",
           "connection_pool"]

CRS_URI = "http://www.opengis.net/def/crs/EPSG/0/4490"
MAX_LIMIT = 50
MAX_QUERY_CHARS = 100

_pools: dict[tuple[str, str], Any] = {}
_pools_lock = threading.Lock()


def connection_pool(settings: Settings):
    """A small psycopg pool per database and schema (connecting costs more than a query)."""
    from psycopg_pool import ConnectionPool


    url, schema = db.database_url(settings), db.schema_name(settings)
    key = (url, schema)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            def configure(conn: psycopg.Connection) -> None:
                conn.execute("SELECT set_config('pg_trgm.word_similarity_threshold', %s, false)",
                             (str(_search.FUZZY_THRESHOLD),))

            pool = ConnectionPool(
                url, min_size=1, max_size=8, open=False, configure=configure, timeout=db.POOL_TIMEOUT,
                check=ConnectionPool.check_connection, reconnect_timeout=3600,
                kwargs={"autocommit": True, "application_name": "geotwin-geocode",
                        "connect_timeout": db.CONNECT_TIMEOUT,
                        "options": f"-c search_path={schema},public -c timezone=UTC "
                                   f"-c statement_timeout={db.API_STATEMENT_TIMEOUT}"},
            )
            pool.open(wait=True, timeout=db.CONNECT_TIMEOUT * 2)
            atexit.register(pool.close)
            _pools[key] = pool
    return pool


class ParameterError(ValueError):
    pass


def _error(status: int, code: str, description: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"code": code, "description": description})


def _query_text(q: str | None) -> str:
    if q is None or not q.strip():
        raise ParameterError("q: give the text to look up, e.g. q=坂田街道五和大道123号 or q=龙岗")
    if len(q) > MAX_QUERY_CHARS:
        raise ParameterError(f"q: at most {MAX_QUERY_CHARS} characters (got {len(q)})")
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in q):
        raise ParameterError("q: contains control characters (e.g. a NUL byte); send the text only")
    if not normalize(q):
        raise ParameterError("q: nothing left to search once 深圳市/龙岗区 and blanks are removed")
    return q


def _limit(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"limit={raw!r}: a whole number from 1 to {MAX_LIMIT}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ParameterError(f"limit={value}: must be from 1 to {MAX_LIMIT}")
    return value


def _coordinate(name: str, raw: str | None, bound: float) -> float:
    if raw is None or raw == "":
        raise ParameterError(f"{name}: required (decimal degrees, CGCS2000 / EPSG:4490), "
                             "e.g. lon=114.25&lat=22.72")
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"{name}={raw!r}: not a number (decimal degrees)") from None
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise ParameterError(f"{name}={raw}: out of range [-{bound:g}, {bound:g}]")
    return value


def _feature(row: dict, extra: dict | None = None) -> dict:
    props = {
        "layer": row["layer"], "fid": row["fid"], "kind": row["kind"], "name": row["name"],
        "street": row["street"], "community": row["community"],
    }
    if row["layer"] == "addresses":
        props.update(full_address=row["name"], road=row["road"], door_number=row["door_number"],
                     building=row["building"])
    elif row.get("code"):
        props["code"] = row["code"]
    if extra:
        props = {**extra, **props}
    return {
        "type": "Feature",
        "id": f"{row['layer']}.{row['fid']}",
        "geometry": {"type": "Point", "coordinates": [round(row["lon"], 8), round(row["lat"], 8)]},
        "properties": props,
    }


def _area(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {"layer": row["layer"], "fid": row["fid"], "name": row["name"], "code": row["code"]}


def router(settings: Settings | None = None) -> APIRouter:
    settings = settings or get_settings()
    api = APIRouter(prefix="/geocode", tags=["geocode"])

    def run(fn):
        """Borrow a connection, refresh the index if the store is newer, run ``fn(conn)``;
        map bad parameters to 400 and a database without the geocode tables to 503."""
        try:
            with connection_pool(settings).connection() as conn:
                if is_stale(conn):
                    refresh(conn)
                return fn(conn)
        except ParameterError as e:
            return _error(400, "InvalidParameterValue", str(e))
        except psycopg.errors.UndefinedTable as e:
            return _error(503, "ServiceUnavailable",
                          f"the geocoding tables are missing ({e.diag.message_primary}): "
                          "run `geotwin db up` to migrate the database")

    def hidden(conn) -> frozenset[str]:
        """Layers the caller may not see: their names and addresses are not found either."""
        caller = security.current()
        return frozenset(name for name, level in conn.execute("SELECT name, access_level FROM layers")
                         if not caller.sees(level))

    def collection(kind: str, q: str, p: ParsedQuery, rows: list[dict], started: float,
                   suggestions: list[dict] | None = None) -> dict:
        doc = {
            "type": "FeatureCollection",
            "query": {"q": q, "kind": kind, "parsed": p.as_dict()},
            "numberReturned": len(rows),
            "crs": CRS_URI,
            "timeMs": round((time.perf_counter() - started) * 1000, 2),
            "features": [_feature(r, {"score": r["score"], **r["match"].as_dict()}) for r in rows],
        }
        if suggestions is not None:
            doc["suggestions"] = suggestions
        return doc

    @api.get("/search", summary="Search place names, addresses, streets and communities")
    def search_endpoint(
        q: str | None = Query(None, description="名称或地址，如 坂田街道五和大道123号、龙岗、雪象社区"),
        limit: str | None = Query(None, description=f"1–{MAX_LIMIT}, default 10"),
    ):
        started = time.perf_counter()
        try:
            text, n = _query_text(q), _limit(limit, 10)
        except ParameterError as e:
            return _error(400, "InvalidParameterValue", str(e))

        def answer(conn):
            p, rows, suggestions = _search.search(conn, text, n, hidden(conn))
            return collection("search", text, p, rows, started, suggestions)

        return run(answer)

    @api.get("/autocomplete", summary="Suggestions while typing (prefix first)")
    def autocomplete_endpoint(
        q: str | None = Query(None, description="what has been typed so far"),
        limit: str | None = Query(None, description=f"1–{MAX_LIMIT}, default 8"),
    ):
        started = time.perf_counter()
        try:
            text, n = _query_text(q), _limit(limit, 8)
        except ParameterError as e:
            return _error(400, "InvalidParameterValue", str(e))
        return run(lambda conn: collection("autocomplete", text,
                                           *_search.autocomplete(conn, text, n, hidden(conn)), started))

    @api.get("/reverse", summary="Nearest address and the street / community containing a point")
    def reverse_endpoint(
        lon: str | None = Query(None, description="longitude, CGCS2000 degrees"),
        lat: str | None = Query(None, description="latitude, CGCS2000 degrees"),
    ):
        try:
            x, y = _coordinate("lon", lon, 180), _coordinate("lat", lat, 90)
        except ParameterError as e:
            return _error(400, "InvalidParameterValue", str(e))

        def answer(conn):
            found = _search.reverse(conn, x, y, hidden(conn))
            a = found["address"]
            return {
                "query": {"lon": x, "lat": y, "crs": CRS_URI},
                "address": _feature(a, {"distance_m": round(a["distance_m"], 2)}) if a else None,
                "street": _area(found["street"]),
                "community": _area(found["community"]),
            }

        return run(answer)

    return api
