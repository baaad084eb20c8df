"""OGC API – Features endpoints: landing page, conformance, collections, items, a feature, its
versions, queryables, and the changes of a collection between two times.

Items pages are chained by keyset cursors: a ``next`` link carries the last row's sort key (the
feature id, or the ``sortby`` keys with the id as tiebreak), so that a deep page costs what the
first one costs (an index range scan from the key instead of counting ``offset`` rows off) and
paging through a collection that is being edited returns every feature that exists throughout
exactly once. ``offset`` stays accepted."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import re
import time
from datetime import date, datetime, timezone
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api import db, store
from spatial_api.api.collections import Collections
from spatial_api.api.errors import ApiError, invalid_parameter
from spatial_api.api.params import CRS_AXES, crs_param, instant_param, interval_param
from spatial_api.api.responses import GEOJSON, base_url, html_page, link, respond, wants_html
from spatial_api.config import Settings
from spatial_api.ogc import cql2
from spatial_api.store.types import SQL_CASTS

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
]
ITEMS_PATH = "/collections/{collection_id}/items"
DEFAULT_LIMIT, MAX_LIMIT = 10, 10_000
#: The ``limit`` parameter as the OGC API – Features building block defines it, in the OpenAPI
#: document's ``components/parameters/limit`` (referenced from every items path). QGIS reads
#: exactly this object's ``schema.default`` and ``schema.maximum`` and pages by
#: min(max(1000, default), maximum), i.e. 1,000 features a request; GDAL ≥ 3.8 asks 1,000
#: (its own default, clamped to the maximum when it finds the parameter).
LIMIT_PARAMETER = {
    "name": "limit", "in": "query", "required": False, "style": "form", "explode": False,
    "description": f"The number of features in a page: at most {MAX_LIMIT:,}, {DEFAULT_LIMIT} when not given. "
                   "Pages are chained by the `next` / `prev` links (keyset cursors).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
#: GDAL's OAPIF driver before 3.8 (Debian 12 ships 3.6.2) asks ``limit=10`` — a constant compiled
#: into it (its PAGE_SIZE open option's default) — whatever the API definition says, and then
#: follows the ``next`` links. Such requests (no User-Agent, its Accept header, limit 10) get the 10
#: features they ask for, and a ``next`` link asking for the maximum: its users are batch tools
#: (ogr2ogr, ogrinfo, scripts) reading whole layers, which would otherwise make one request per 10
#: features. GDAL ≥ 3.8 sends a User-Agent and asks 1,000 itself.
LEGACY_GDAL_PAGE = MAX_LIMIT
LEGACY_GDAL_ACCEPT = "application/geo+json, application/json"
MAX_CURSOR_CHARS = 16_000
#: Above this many matching rows (planner's estimate) numberMatched is the estimate, and so it is
#: when counting takes longer than this many milliseconds.
EXACT_COUNT_MAX = 100_000
COUNT_BUDGET_MS = 30
SAMPLE_PERCENT = 2  # of a partition's pages, for an estimate of numberMatched
DECIMALS = {4490: 9, 4326: 9, 4547: 3, 3857: 3}
RESERVED_PARAMETERS = {"f", "limit", "offset", "cursor", "bbox", "bbox-crs", "crs", "datetime", "properties",
                       "sortby", "filter", "filter-lang", "filter-crs"}
#: The parameters that choose and order the features of an items request: a cursor belongs to them
#: (with the collection and the queryables given as parameters) and is refused with any others.
#: ``limit``, ``crs``, ``properties`` and ``f`` only shape a page and may change from page to page.
SELECTING_PARAMETERS = ("bbox", "bbox-crs", "datetime", "filter", "filter-lang", "filter-crs", "sortby")


def _temporal(dt) -> tuple[sql.Composable, list]:
    if dt is None:
        return sql.SQL("f.valid_to IS NULL"), []
    start, end, interval = dt
    if not interval:
        return store.temporal_filter(start, None)
    parts, params = [sql.SQL("f.superseded_at IS NULL")], []
    if end is not None:
        parts.append(sql.SQL("f.valid_from <= %s"))
        params.append(end)
    if start is not None:
        parts.append(sql.SQL("(f.valid_to IS NULL OR f.valid_to > %s)"))
        params.append(start)
    return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")), params


def _bbox(value: str | None, bbox_crs: str | None) -> tuple[sql.Composable, list] | None:
    if value is None:
        return None
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError:
        raise invalid_parameter("bbox", f"{value!r} is not four (or six) comma-separated numbers") from None
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    if len(nums) != 4:
        raise invalid_parameter("bbox", f"{value!r}: give minx,miny,maxx,maxy (four numbers)")
    _, srid, flipped = crs_param(bbox_crs, "bbox-crs")
    a, b, c, d = nums
    if flipped:  # given in the CRS's axis order: (lat, lon) / (northing, easting)
        a, b, c, d = b, a, d, c
    if a > c or (srid in (4490, 4326) and b > d):
        raise invalid_parameter("bbox", f"{value!r}: lower corner is above or right of the upper corner")
    if srid in (4490, 4326) and not (-180 <= a <= 180 and -180 <= c <= 180 and -90 <= b <= 90 and -90 <= d <= 90):
        raise invalid_parameter("bbox", f"{value!r} is out of range for longitude / latitude")
    env = sql.SQL("ST_MakeEnvelope(%s, %s, %s, %s, %s)")
    if srid != 4490:
        env = sql.SQL("ST_Transform({}, 4490)").format(env)
    return sql.SQL("f.geom && {env} AND ST_Intersects(f.geom, {env})").format(env=env), [a, b, c, d, srid] * 2


def _geometry_sql(srid: int, flipped: bool) -> sql.Composable:
    g = sql.SQL("f.geom") if srid == 4490 else sql.SQL("ST_Transform(f.geom, {})").format(sql.Literal(srid))
    if flipped:
        g = sql.SQL("ST_FlipCoordinates({})").format(g)
    return sql.SQL("ST_AsGeoJSON({}, {}, 0)").format(g, sql.Literal(DECIMALS.get(srid, 9)))


# -- the router -----------------------------------------------------------------------------------


class FeaturesAPI:
    """OGC API – Features: one method per endpoint (landing, conformance, collections, items, a feature, its versions, changes)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cols = Collections(self.settings)
        self.pool = db.pool(self.settings, read=True)  # only reads: the replica when one is configured

    def connect(self):
        return self.pool.connection()

    def landing(self, request: Request, f: str | None = None):
        base = base_url(request)
        with self.connect() as conn:
            layers = self.cols.visible(conn)
        doc = {
            "title": "geotwin — 龙岗区时空信息平台",
            "description": "Spatio-temporal layers of Longgang district: OGC API – Features with time travel",
            "links": [
                link(f"{base}/", "self", "application/json", "this document"),
                link(f"{base}/?f=html", "alternate", "text/html", "this document as HTML"),
                link(f"{base}/api", "service-desc", "application/vnd.oai.openapi+json;version=3.0", "the API definition"),
                link(f"{base}/docs", "service-doc", "text/html", "the API documentation"),
                link(f"{base}/conformance", "conformance", "application/json", "conformance classes"),
                link(f"{base}/collections", "data", "application/json", "the collections"),
                link(f"{base}/tileMatrixSets", "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes",
                      "application/json", "tile matrix sets (vector tiles)"),
            ],
            # kept for scripts written against the first landing page
            "layers": [
                {"name": r["name"], "title_zh": r["title_zh"], "title_en": r["title_en"],
                 "geometry": r["geometry_family"], "features": r["current_features"],
                 "latest_valid_from": r["latest_valid_from"].isoformat() if r["latest_valid_from"] else None}
                for r in layers
            ],
        }
        return respond(request, f, doc, "geotwin")

    def conformance(self, request: Request, f: str | None = None):
        return respond(request, f, {"conformsTo": CONFORMANCE + list(request.app.state.extra_conformance)},
                        "Conformance")

    def api_definition(self, request: Request):
        install_openapi(request.app)
        return JSONResponse(request.app.openapi(), media_type="application/vnd.oai.openapi+json;version=3.0")

    def collections(self, request: Request, f: str | None = None):
        base = base_url(request)
        with self.connect() as conn:
            docs = [self.cols.document(conn, layer, base) for layer in self.cols.visible(conn)]
        doc = {"links": [link(f"{base}/collections", "self", "application/json", "this document"),
                         link(f"{base}/collections?f=html", "alternate", "text/html", "as HTML")],
               "collections": docs, "crs": list(CRS_AXES)}
        return respond(request, f, doc, "Collections")

    def collection(self, request: Request, collection_id: str, f: str | None = None):
        with self.connect() as conn:
            self.cols.get(conn, collection_id)
            row = next(r for r in self.cols.visible(conn) if r["name"] == collection_id)
            doc = self.cols.document(conn, row, base_url(request))
        return respond(request, f, doc, doc["title"])

    def queryables(self, request: Request, collection_id: str, f: str | None = None):
        with self.connect() as conn:
            layer = self.cols.get(conn, collection_id)
        types = {"string": {"type": "string"}, "integer": {"type": "integer"}, "number": {"type": "number"},
                 "boolean": {"type": "boolean"}, "date": {"type": "string", "format": "date"},
                 "datetime": {"type": "string", "format": "date-time"}}
        geom = {"Point": "point", "LineString": "linestring", "Polygon": "polygon"}[layer.geometry_family]
        props = {"geometry": {"$ref": f"https://geojson.org/schema/{geom.capitalize()}.json",
                              "x-ogc-role": "primary-geometry"}}
        props |= {p["name"]: {"title": p["name"], **types[p["type"]]} for p in layer.properties}
        doc = {"$schema": "https://json-schema.org/draft/2019-09/schema",
               "$id": f"{base_url(request)}/collections/{collection_id}/queryables",
               "type": "object", "title": layer.title_zh or collection_id, "properties": props,
               "additionalProperties": False}
        return respond(request, f, doc, f"{collection_id}: queryables", "application/schema+json")

    def items(self,
        request: Request,
        collection_id: str,
        f: str | None = None,
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}"),
        offset: int = Query(0, ge=0, description="features to skip (the next / prev links use cursors instead)"),
        cursor: str | None = Query(None, max_length=MAX_CURSOR_CHARS,
                                   description="where a page starts: opaque, taken from a next / prev link"),
        bbox: str | None = None,
        bbox_crs: str | None = Query(None, alias="bbox-crs"),
        crs: str | None = None,
        datetime_: str | None = Query(None, alias="datetime"),
        properties: str | None = None,
        sortby: str | None = None,
        filter_: str | None = Query(None, alias="filter", description="a CQL2 expression"),
        filter_lang: str = Query("cql2-text", alias="filter-lang",
                                 description="cql2-text or cql2-json (draft names cql-text / cql-json accepted)"),
        filter_crs: str | None = Query(None, alias="filter-crs", description="CRS of geometry literals"),
    ):
        started = time.perf_counter()
        out_crs, srid, flipped = crs_param(crs, "crs")
        dt = interval_param(datetime_)
        _check_unused(bbox_crs, filter_lang, filter_crs)
        position = None
        if cursor is not None:
            if "offset" in request.query_params:
                raise invalid_parameter("cursor", "give either cursor or offset, not both")
            position = _decode_cursor(cursor)
        with self.connect() as conn:
            layer = self.cols.get(conn, collection_id)
            where, params = _temporal(dt)
            conds, cparams = [_in_layer(collection_id), where], list(params)
            spatial = _bbox(bbox, bbox_crs)
            if spatial:
                conds.append(spatial[0])
                cparams += spatial[1]
            if filter_ is not None:
                cond = _cql2(filter_, filter_lang, filter_crs, layer)
                conds.append(cond[0])
                cparams += cond[1]
            queryables = []
            for name, value in request.query_params.items():  # queryables as query parameters
                if name in layer.schema and name not in RESERVED_PARAMETERS:
                    _check_queryable_value(name, value, layer.schema[name])
                    conds.append(sql.SQL("(f.properties ->> {})::{} = %s::{}").format(
                        sql.Literal(name), sql.SQL(SQL_CASTS[layer.schema[name]]), sql.SQL(SQL_CASTS[layer.schema[name]])))
                    cparams.append(value)
                    queryables.append(name)
            where_sql = sql.SQL(" AND ").join(conds)
            select_props = _properties(layer, properties)
            keys = _sort_keys(layer, sortby)
            query_id = _query_digest(collection_id, request, queryables)
            if position is not None and (position["q"] != query_id or len(position["k"]) != len(keys)):
                raise invalid_parameter("cursor", "it continues another query: a cursor only goes with the "
                                        f"collection and the {', '.join(SELECTING_PARAMETERS)} and queryable "
                                        "parameters of the request whose links carried it")
            part = sql.Identifier(store.partition_name(collection_id))
            distinct = dt is not None and dt[2]  # an interval: the latest version of each feature in it
            if distinct:
                base_q = sql.SQL("SELECT DISTINCT ON (f.fid) f.* FROM {part} f WHERE {w} "
                                 "ORDER BY f.fid, f.valid_from DESC").format(part=part, w=where_sql)
                source = sql.SQL("({}) f").format(base_q)
                filt = sql.SQL("TRUE")
            else:
                source = sql.SQL("{} f").format(part)
                filt = where_sql
            columns = sql.SQL("f.fid, f.vid, f.valid_from, f.valid_to, ({props})::text AS properties, "
                              "{geom} AS geometry").format(props=select_props, geom=_geometry_sql(srid, flipped))
            backward = position is not None and position["d"] == "p"
            query, qparams = page_sql(columns, source, filt, cparams, keys, limit=limit,
                                      offset=0 if position is not None else offset,
                                      key=position["k"] if position is not None else None, backward=backward)
            with conn.cursor(row_factory=dict_row) as cur:
                with _cursor_values_checked(position is not None):
                    rows = cur.execute(query, qparams).fetchall()
                more = len(rows) > limit  # one row past the page says whether there is another page
                rows = rows[:limit]
                if backward:
                    rows.reverse()
                    start = max(0, position["n"] - len(rows)) if more else 0
                else:
                    start = position["n"] if position is not None else offset
                matched, estimated = _number_matched(cur, source, filt, cparams, start=start, returned=len(rows),
                                                     more=more and not backward, start_exact=position is None,
                                                     table=None if distinct else part)
        base = base_url(request)
        url = f"{base}/collections/{collection_id}/items"
        q = {k: v for k, v in request.query_params.items() if k not in ("offset", "cursor", "f")}
        here = {"cursor": cursor} if cursor is not None else {"offset": offset}
        links = [link(f"{url}?{urlencode({**q, **here})}", "self", GEOJSON, "this page"),
                 link(f"{url}?{urlencode({**q, **here, 'f': 'html'})}", "alternate", "text/html", "as HTML"),
                 link(f"{base}/collections/{collection_id}", "collection", "application/json", "the collection")]
        if rows and (backward or more):
            after = _encode_cursor("n", _row_key(rows[-1], keys), start + len(rows), query_id)
            nq = {**q, "limit": LEGACY_GDAL_PAGE} if _legacy_gdal(request, limit) else q
            links.append(link(f"{url}?{urlencode({**nq, 'cursor': after})}", "next", GEOJSON, "next page"))
        elif backward:  # nothing is left before the cursor: the next page is the first one
            links.append(link(f"{url}?{urlencode(q)}", "next", GEOJSON, "next page"))
        if rows and (more if backward else start > 0):
            before = _encode_cursor("p", _row_key(rows[0], keys), start, query_id)
            links.append(link(f"{url}?{urlencode({**q, 'cursor': before})}", "prev", GEOJSON, "previous page"))
        doc = {"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(rows),
               "timeStamp": datetime.now(timezone.utc).isoformat(), "links": links}
        if estimated:
            doc["geotwin:numberMatchedIsEstimate"] = True
        headers = {"Content-Crs": f"<{out_crs}>",
                   "Server-Timing": f"db;dur={(time.perf_counter() - started) * 1000:.1f}"}
        if wants_html(request, f):
            doc["features"] = [json.loads(_feature_json(r, url)) for r in rows]
            return html_page(f"{collection_id}: features", doc)
        # The features are assembled as text: the database's GeoJSON and jsonb text go out as they
        # are, instead of being parsed into Python objects and serialised again.
        head = json.dumps(doc, ensure_ascii=False)[:-1]
        body = head + ', "features": [' + ",".join(_feature_json(r, url) for r in rows) + "]}"
        return Response(body, media_type=GEOJSON, headers=headers)

    def item(self, request: Request, collection_id: str, feature_id: str, f: str | None = None,
             crs: str | None = None, datetime_: str | None = Query(None, alias="datetime")):
        out_crs, srid, flipped = crs_param(crs, "crs")
        dt = interval_param(datetime_)
        if dt is not None and dt[2]:
            raise invalid_parameter("datetime", "give an instant for a single feature; its versions are at .../versions")
        with self.connect() as conn:
            self.cols.get(conn, collection_id)
            where, params = _temporal(dt)
            query = sql.SQL(
                "SELECT f.fid, f.vid, f.valid_from, f.valid_to, f.properties, {geom} AS geometry "
                "FROM {part} f WHERE {in_layer} AND f.fid = %s AND {w}"
            ).format(geom=_geometry_sql(srid, flipped), part=sql.Identifier(store.partition_name(collection_id)),
                     in_layer=_in_layer(collection_id), w=where)
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(query, [feature_id, *params]).fetchone()
        if row is None:
            when = f" at {datetime_}" if datetime_ else ""
            raise ApiError(404, "NotFound", f"feature {feature_id!r} does not exist in {collection_id!r}{when}")
        url = f"{base_url(request)}/collections/{collection_id}/items"
        doc = _feature(row, url)
        doc["links"] = [link(f"{url}/{feature_id}", "self", GEOJSON, "this feature"),
                        link(f"{url}/{feature_id}?f=html", "alternate", "text/html", "as HTML"),
                        link(f"{url}/{feature_id}/versions", "version-history", GEOJSON, "all versions"),
                        link(f"{base_url(request)}/collections/{collection_id}", "collection", "application/json",
                              "the collection")]
        return respond(request, f, doc, f"{collection_id} / {feature_id}", GEOJSON,
                        {"Content-Crs": f"<{out_crs}>", "ETag": f'"{row["vid"]}"'})

    def versions(self, request: Request, collection_id: str, feature_id: str, f: str | None = None,
                 crs: str | None = None):
        out_crs, srid, flipped = crs_param(crs, "crs")
        with self.connect() as conn:
            self.cols.get(conn, collection_id)
            query = sql.SQL(
                "SELECT f.fid, f.vid, f.valid_from, f.valid_to, f.tx_from, f.tx_to, f.changeset_id, f.closed_by, "
                "f.superseded_at, f.superseded_by, f.properties, {geom} AS geometry FROM {part} f "
                "WHERE {in_layer} AND f.fid = %s ORDER BY f.valid_from, f.tx_from, f.vid"
            ).format(geom=_geometry_sql(srid, flipped), part=sql.Identifier(store.partition_name(collection_id)),
                     in_layer=_in_layer(collection_id))
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(query, [feature_id]).fetchall()
        if not rows:
            raise ApiError(404, "NotFound", f"feature {feature_id!r} does not exist in {collection_id!r}")
        url = f"{base_url(request)}/collections/{collection_id}/items"
        feats = []
        for r in rows:
            feat = _feature(r, url)
            # both time axes: valid time in "time"; transaction time here — when the store learnt the
            # version, when it learnt its end, and (a correction in valid time) when it stopped
            # believing it and which changeset replaced it
            feat["geotwin:version"] = {
                "vid": r["vid"], "changeset": r["changeset_id"], "closedBy": r["closed_by"],
                "recorded": r["tx_from"].isoformat(),
                "endRecorded": r["tx_to"].isoformat() if r["tx_to"] else None,
                "believed": r["superseded_at"] is None,
                "supersededAt": r["superseded_at"].isoformat() if r["superseded_at"] else None,
                "supersededBy": r["superseded_by"]}
            feats.append(feat)
        doc = {"type": "FeatureCollection", "features": feats, "numberMatched": len(feats),
               "numberReturned": len(feats),
               "links": [link(f"{url}/{feature_id}/versions", "self", GEOJSON, "these versions"),
                         link(f"{url}/{feature_id}", "latest-version", GEOJSON, "the current version")]}
        return respond(request, f, doc, f"{collection_id} / {feature_id}: versions", GEOJSON,
                        {"Content-Crs": f"<{out_crs}>"})

    def changes(self, request: Request, collection_id: str, from_: str = Query(..., alias="from"),
                to: str = Query(...), f: str | None = None, crs: str | None = None):
        out_crs, srid, flipped = crs_param(crs, "crs")
        t1, t2 = instant_param(from_, "from", "start"), instant_param(to, "to")
        if t1 is None or t2 is None:
            raise invalid_parameter("from/to", "give two instants")
        with self.connect() as conn:
            self.cols.get(conn, collection_id)
            d = store.diff(conn, collection_id, t1, t2)
            part = sql.Identifier(store.partition_name(collection_id))
            feats = []
            for status, fids, at in (("added", d.added, t2), ("changed", d.changed, t2), ("removed", d.removed, t1)):
                if not fids:
                    continue
                cond, params = store.temporal_filter(at, None)
                query = sql.SQL(
                    "SELECT f.fid, f.vid, f.valid_from, f.valid_to, f.properties, {geom} AS geometry "
                    "FROM {part} f WHERE {in_layer} AND f.fid = ANY(%s) AND {cond} ORDER BY f.fid"
                ).format(geom=_geometry_sql(srid, flipped), part=part, cond=cond, in_layer=_in_layer(collection_id))
                with conn.cursor(row_factory=dict_row) as cur:
                    for r in cur.execute(query, [fids, *params]):
                        feat = _feature(r, f"{base_url(request)}/collections/{collection_id}/items")
                        feat["geotwin:change"] = status
                        feats.append(feat)
        doc = {"type": "FeatureCollection", "features": feats, "numberMatched": len(feats),
               "numberReturned": len(feats), "geotwin:counts": d.counts(),
               "geotwin:from": t1.isoformat(), "geotwin:to": t2.isoformat(), "links": []}
        return respond(request, f, doc, f"{collection_id}: changes", GEOJSON, {"Content-Crs": f"<{out_crs}>"})

    def router(self) -> APIRouter:
        """The endpoints above, each under its path."""
        api = APIRouter()
        api.add_api_route("/", self.landing, methods=["GET"], tags=["OGC API"], summary="Landing page")
        api.add_api_route("/conformance", self.conformance, methods=["GET"], tags=["OGC API"],
                          summary="Conformance classes")
        api.add_api_route("/api", self.api_definition, methods=["GET"], tags=["OGC API"],
                          summary="The API definition (OpenAPI 3)", include_in_schema=False)
        api.add_api_route("/collections", self.collections, methods=["GET"], tags=["OGC API"],
                          summary="The collections")
        api.add_api_route("/collections/{collection_id}", self.collection, methods=["GET"], tags=["OGC API"],
                          summary="A collection")
        api.add_api_route("/collections/{collection_id}/queryables", self.queryables, methods=["GET"],
                          tags=["OGC API"], summary="Queryable properties")
        api.add_api_route(ITEMS_PATH, self.items, methods=["GET"], tags=["OGC API"],
                          summary="Features")
        api.add_api_route("/collections/{collection_id}/items/{feature_id}", self.item, methods=["GET"],
                          tags=["OGC API"], summary="A feature")
        api.add_api_route("/collections/{collection_id}/items/{feature_id}/versions", self.versions, methods=["GET"],
                          tags=["time travel"], summary="Every version of a feature, oldest first")
        api.add_api_route("/collections/{collection_id}/changes", self.changes, methods=["GET"],
                          tags=["time travel"],
                          summary="Features added, changed and removed between two valid times")
        return api


def router(settings: Settings) -> APIRouter:
    return FeaturesAPI(settings).router()


def install_openapi(app) -> None:
    """Make the application's OpenAPI document (/openapi.json, and /api, the service-desc clients
    follow) declare ``limit`` as the OGC building block does: ``components/parameters/limit``,
    referenced from every items path — where QGIS looks for the page size (LIMIT_PARAMETER).
    Idempotent; done when the room is installed (spatial_api.ogc.routes) and by /api itself."""
    if getattr(app.state, "geotwin_limit_parameter", False):
        return
    generate = app.openapi

    def openapi() -> dict:
        return _with_limit_parameter(generate())

    app.openapi = openapi
    app.state.geotwin_limit_parameter = True


def _with_limit_parameter(doc: dict) -> dict:
    doc.setdefault("components", {}).setdefault("parameters", {})["limit"] = json.loads(json.dumps(LIMIT_PARAMETER))
    get = doc.get("paths", {}).get(ITEMS_PATH, {}).get("get")
    if get:
        get["parameters"] = [{"$ref": "#/components/parameters/limit"}
                             if p.get("name") == "limit" and p.get("in") == "query" else p
                             for p in get.get("parameters", [])]
    return doc


def _in_layer(name: str) -> sql.Composable:
    """The partition key as a condition: every index of a partition leads with it."""
    return sql.SQL("f.layer = {}").format(sql.Literal(name))


def _feature_json(row: dict, items_url: str) -> str:
    """A GeoJSON feature as text from a row whose properties and geometry are JSON text."""
    fid = json.dumps(row["fid"], ensure_ascii=False)
    until = json.dumps(row["valid_to"].isoformat() if row["valid_to"] else "..")
    link = json.dumps(f"{items_url}/{row['fid']}", ensure_ascii=False)
    return (f'{{"type": "Feature", "id": {fid}, "geometry": {row["geometry"] or "null"}, '
            f'"properties": {row["properties"] or "{}"}, '
            f'"time": {{"interval": ["{row["valid_from"].isoformat()}", {until}]}}, '
            f'"links": [{{"href": {link}, "rel": "self", "type": "{GEOJSON}"}}]}}')


def _feature(row: dict, items_url: str) -> dict:
    return {
        "type": "Feature",
        "id": row["fid"],
        "geometry": json.loads(row["geometry"]) if row.get("geometry") else None,
        "properties": row["properties"] or {},
        "time": {"interval": [row["valid_from"].isoformat(),
                              row["valid_to"].isoformat() if row["valid_to"] else ".."]},
        "links": [link(f"{items_url}/{row['fid']}", "self", GEOJSON)],
    }


def _properties(layer: store.Layer, value: str | None) -> sql.Composable:
    if value is None:
        return sql.SQL("f.properties")
    names = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [n for n in names if n not in layer.schema]
    if unknown:
        raise invalid_parameter("properties", f"unknown propert{'y' if len(unknown) == 1 else 'ies'} "
                  f"{', '.join(map(repr, unknown))}; the layer has: {', '.join(layer.schema)}")
    if not names:
        return sql.SQL("'{}'::jsonb")
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, f.properties -> {}").format(sql.Literal(n), sql.Literal(n)) for n in names))


def _check_queryable_value(name: str, value: str, type_: str) -> None:
    """A queryable given as a query parameter: its value must parse as the property's type."""
    example = {"integer": "12", "number": "12.5", "boolean": "true", "date": "2023-12-31",
               "datetime": "2023-12-31T08:00:00Z"}.get(type_)
    try:
        if "\x00" in value:
            raise ValueError
        if type_ == "integer" and not -(2**63) <= int(value) < 2**63:
            raise ValueError
        if type_ == "number" and not math.isfinite(float(value)):
            raise ValueError
        if type_ == "boolean" and value.lower() not in ("true", "false", "t", "f", "1", "0", "yes", "no", "y", "n", "on", "off"):
            raise ValueError
        if type_ == "date":
            date.fromisoformat(value)
        if type_ == "datetime":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter(name, f"{value[:80]!r} is not {'an' if type_ == 'integer' else 'a'} {type_}"
                  + (f" (e.g. {name}={example})" if example else " (a NUL byte cannot be queried)")) from None




def _sort_keys(layer: store.Layer, value: str | None) -> list[tuple[sql.Composable, bool, str, bool]]:
    """The order of an items request as keys (expression, descending, SQL type of its value, whether
    it can be NULL): the ``sortby`` terms, then the feature id, which makes the order total (a keyset
    needs that)."""
    keys: list[tuple[sql.Composable, bool, str, bool]] = []
    for term in (value or "").split(","):
        term = term.strip()
        if not term:
            continue
        desc = term.startswith("-")
        name = term.lstrip("+-")
        if name == "id":
            keys.append((sql.SQL("f.fid"), desc, "text", False))
        elif name in layer.schema:
            cast = SQL_CASTS[layer.schema[name]]
            keys.append((sql.SQL("(f.properties ->> {})::{}").format(sql.Literal(name), sql.SQL(cast)), desc, cast,
                         True))
        else:
            raise invalid_parameter("sortby", f"unknown property {name!r}; sort by id or one of: {', '.join(layer.schema)}")
    return keys + [(sql.SQL("f.fid"), False, "text", False)]


def _order_by(keys, backward: bool) -> sql.Composable:
    """ORDER BY of the keys, NULLS LAST; reversed (for a page before a cursor), NULLS FIRST."""
    terms = []
    for expr, desc, _, _ in keys:
        if backward:
            terms.append(expr + sql.SQL(" ASC NULLS FIRST" if desc else " DESC NULLS FIRST"))
        else:
            terms.append(expr + sql.SQL(" DESC NULLS LAST" if desc else " ASC NULLS LAST"))
    return sql.SQL(", ").join(terms)


def _keyset(keys, values: list, backward: bool) -> tuple[sql.Composable, list]:
    """The rows strictly after (``backward``: before) the row whose keys have ``values`` in the order
    of :func:`_order_by`: key 1 beyond its value, or equal on it and key 2 beyond, … A NULL sorts
    last. With the feature id alone this is ``f.fid > %s``: a range scan of the (layer, fid) index."""
    ors, params = [], []
    equal: list[sql.Composable] = []
    equal_params: list = []
    for (expr, desc, cast, nullable), v in zip(keys, values):
        typed = sql.SQL("%s::{}").format(sql.SQL(cast))
        if v is None:
            # after a NULL come only NULLs (equal); before it, every value
            beyond, beyond_params = (sql.SQL("{} IS NOT NULL").format(expr), []) if backward else (None, [])
            same, same_params = sql.SQL("{} IS NULL").format(expr), []
        else:
            greater = desc == backward  # ascending and after, or descending and before
            op = sql.SQL(">" if greater else "<")
            if backward or not nullable:
                beyond = sql.SQL("{} {} {}").format(expr, op, typed)
            else:  # NULLs sort after every value
                beyond = sql.SQL("({e} {op} {v} OR {e} IS NULL)").format(e=expr, op=op, v=typed)
            beyond_params = [v]
            same, same_params = sql.SQL("{} = {}").format(expr, typed), [v]
        if beyond is not None:
            ors.append(sql.SQL("(") + sql.SQL(" AND ").join(equal + [beyond]) + sql.SQL(")"))
            params += equal_params + beyond_params
        equal.append(same)
        equal_params += same_params
    if not ors:
        return sql.SQL("FALSE"), []
    return sql.SQL("({})").format(sql.SQL(" OR ").join(ors)), params


def page_sql(columns: sql.Composable, source: sql.Composable, filt: sql.Composable, params: list,
             keys, *, limit: int, offset: int = 0, key: list | None = None, backward: bool = False
             ) -> tuple[sql.Composable, list]:
    """The statement of one items page: ``columns`` of the rows of ``source`` meeting ``filt``, in the
    order of ``keys``, after (``backward``: before, in reverse order) the row whose keys are ``key``
    — or from ``offset`` — and one row more than ``limit``, which tells whether another page
    follows. With more than the feature id to sort by, the row's keys come along as ``sort_key``."""
    cond, cond_params = (filt, list(params))
    if key is not None:
        ks, ks_params = _keyset(keys, key, backward)
        cond, cond_params = sql.SQL("{} AND {}").format(filt, ks), cond_params + ks_params
    if len(keys) > 1:
        columns = columns + sql.SQL(", ARRAY[{}]::text[] AS sort_key").format(
            sql.SQL(", ").join(sql.SQL("({})::text").format(expr) for expr, *_ in keys))
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %s").format(
        columns, source, cond, _order_by(keys, backward))
    cond_params.append(limit + 1)
    if offset:
        query += sql.SQL(" OFFSET %s")
        cond_params.append(offset)
    return query, cond_params


def _row_key(row: dict, keys) -> list:
    return row["sort_key"] if len(keys) > 1 else [row["fid"]]


def _encode_cursor(direction: str, key: list, position: int, query_id: str) -> str:
    """An opaque cursor: urlsafe base64 of a checksum and the JSON of the direction ("n": the page after
    the row, "p": the page before it), the row's sort key, its position (for numberMatched) and the
    digest of the query it belongs to."""
    body = json.dumps({"d": direction, "k": key, "n": position, "q": query_id}, ensure_ascii=False,
                      separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_cursor_check(body) + body).rstrip(b"=").decode("ascii")


def _cursor_check(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=8, person=b"geotwin-cursor1").digest()


def _decode_cursor(text: str) -> dict:
    """A cursor this server issued, or a 400 naming the parameter. The checksum turns away edited
    and truncated cursors; the values it carries are bound as typed query parameters."""
    bad = invalid_parameter("cursor", "not a cursor of this server (cursors are opaque: follow the next and "
                            "prev links of a page, or start again without one)")
    if len(text) > MAX_CURSOR_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise bad from None
    check, body = raw[:8], raw[8:]
    if len(raw) <= 8 or not hmac.compare_digest(check, _cursor_check(body)):
        raise bad
    try:
        doc = json.loads(body)
    except ValueError:
        raise bad from None
    if not (isinstance(doc, dict) and doc.get("d") in ("n", "p") and isinstance(doc.get("q"), str)
            and isinstance(doc.get("n"), int) and not isinstance(doc["n"], bool) and doc["n"] >= 0
            and isinstance(doc.get("k"), list) and doc["k"]
            and all(v is None or (isinstance(v, str) and "\x00" not in v) for v in doc["k"])
            and isinstance(doc["k"][-1], str)):
        raise bad
    return doc


@contextlib.contextmanager
def _cursor_values_checked(with_cursor: bool):
    """A cursor value that its key's type cannot read (only a forged cursor carries one) is the
    cursor's fault: 400, not 500."""
    try:
        yield
    except psycopg.errors.DataError:
        if not with_cursor:
            raise
        raise invalid_parameter("cursor", "its sort key does not fit this query; follow the links of a page") from None


def _query_digest(collection_id: str, request: Request, queryables: list[str]) -> str:
    """What a cursor belongs to: the collection and the parameters choosing and ordering the features."""
    chosen = sorted((k, v) for k, v in request.query_params.items()  # as the links repeat them
                    if k in SELECTING_PARAMETERS or k in queryables)
    text = json.dumps([collection_id, chosen], ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _legacy_gdal(request: Request, limit: int) -> bool:
    """A request of GDAL's OAPIF driver before 3.8 with its compiled-in page size (see LEGACY_GDAL_PAGE)."""
    return (limit == DEFAULT_LIMIT and "user-agent" not in request.headers
            and request.headers.get("accept") == LEGACY_GDAL_ACCEPT)


def _check_unused(bbox_crs: str | None, filter_lang: str, filter_crs: str | None) -> None:
    """A bad bbox-crs / filter-lang / filter-crs is refused even when bbox / filter is absent, so that
    a typo is not silently ignored."""
    if bbox_crs is not None:
        crs_param(bbox_crs, "bbox-crs")
    if filter_lang not in cql2.FILTER_LANGS:
        raise invalid_parameter("filter-lang", f"{filter_lang!r}: use cql2-text or cql2-json")
    try:
        cql2.parse_srid(filter_crs)
    except cql2.FilterError as exc:
        raise invalid_parameter("filter-crs", str(exc)) from None


def _cql2(text: str, lang: str, filter_crs: str | None, layer: store.Layer) -> tuple[sql.Composable, list]:
    if lang not in cql2.FILTER_LANGS:
        raise invalid_parameter("filter-lang", f"{lang!r}: use cql2-text or cql2-json")
    try:
        return cql2.to_sql(cql2.parse(text, lang), layer, filter_crs=filter_crs)
    except cql2.FilterError as exc:
        raise invalid_parameter("filter", str(exc)) from None


def _number_matched(cur, source: sql.Composable, filt: sql.Composable, params: list, *, start: int,
                    returned: int, more: bool, start_exact: bool = True,
                    table: sql.Composable | None = None) -> tuple[int, bool]:
    """numberMatched: exact when it is known or cheap, else an estimate (said so).

    ``start``: the position of the page's first row (``start_exact``: known exactly — an offset;
    a cursor's position is as of the page that issued it). ``more``: another page follows. The
    last page reached by an offset gives the count: start + what it holds. Otherwise the rows are
    counted under a time budget (COUNT_BUDGET_MS) unless the planner expects more than
    EXACT_COUNT_MAX. Failing that, the estimate comes from counting a sample of the table's pages
    (``table``: the partition, when the query reads it directly) scaled up, or, when the sample
    finds nothing, from the planner (whose guess for a jsonb expression can be far off)."""
    offset = start
    if not more and start_exact and (returned or not offset):
        return offset + returned, False
    count_q = sql.SQL("SELECT 1 FROM {} WHERE {}").format(source, filt)
    plan = cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + count_q, params).fetchone()
    plan = plan["QUERY PLAN"] if isinstance(plan, dict) else plan[0]
    floor = offset + returned + (1 if more else 0)
    estimate = max(int(plan[0]["Plan"]["Plan Rows"]), floor)
    cur.execute("SAVEPOINT geotwin_count")
    cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{COUNT_BUDGET_MS}ms")))
    try:
        if estimate <= EXACT_COUNT_MAX:
            row = cur.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE {}").format(source, filt), params).fetchone()
            cur.execute("RELEASE SAVEPOINT geotwin_count")
            cur.execute("SET LOCAL statement_timeout = 0")
            return int(row["n"] if isinstance(row, dict) else row[0]), False
        raise psycopg.errors.QueryCanceled("planner expects too many rows to count")
    except psycopg.errors.QueryCanceled:
        cur.execute("ROLLBACK TO SAVEPOINT geotwin_count")
    if table is not None:
        cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{COUNT_BUDGET_MS}ms")))
        try:
            row = cur.execute(sql.SQL("SELECT count(*) AS n FROM {} f TABLESAMPLE SYSTEM ({}) REPEATABLE (1) "
                                      "WHERE {}").format(table, sql.Literal(SAMPLE_PERCENT), filt), params).fetchone()
            sampled = int(row["n"] if isinstance(row, dict) else row[0])
            cur.execute("RELEASE SAVEPOINT geotwin_count")
            if sampled:
                estimate = max(round(sampled * 100 / SAMPLE_PERCENT), floor)
        except psycopg.errors.QueryCanceled:
            cur.execute("ROLLBACK TO SAVEPOINT geotwin_count")
    cur.execute("SET LOCAL statement_timeout = 0")
    return estimate, True
