"""OGC API – Features endpoints: landing page, conformance, collections, items, a feature, its
versions, queryables, and the changes of a collection between two times."""

from __future__ import annotations

import json
import math
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
DEFAULT_LIMIT, MAX_LIMIT = 10, 10_000
#: Above this many matching rows (planner's estimate) numberMatched is the estimate, and so it is
#: when counting takes longer than this many milliseconds.
EXACT_COUNT_MAX = 100_000
COUNT_BUDGET_MS = 30
SAMPLE_PERCENT = 2  # of a partition's pages, for an estimate of numberMatched
DECIMALS = {4490: 9, 4326: 9, 4547: 3, 3857: 3}
RESERVED_PARAMETERS = {"f", "limit", "offset", "bbox", "bbox-crs", "crs", "datetime", "properties", "sortby",
                       "filter", "filter-lang", "filter-crs"}


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
        self.pool = db.pool(self.settings)

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
        offset: int = Query(0, ge=0),
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
            for name, value in request.query_params.items():  # queryables as query parameters
                if name in layer.schema and name not in RESERVED_PARAMETERS:
                    _check_queryable_value(name, value, layer.schema[name])
                    conds.append(sql.SQL("(f.properties ->> {})::{} = %s::{}").format(
                        sql.Literal(name), sql.SQL(SQL_CASTS[layer.schema[name]]), sql.SQL(SQL_CASTS[layer.schema[name]])))
                    cparams.append(value)
            where_sql = sql.SQL(" AND ").join(conds)
            select_props = _properties(layer, properties)
            order = _sortby(layer, sortby)
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
            query = sql.SQL(
                "SELECT f.fid, f.vid, f.valid_from, f.valid_to, ({props})::text AS properties, {geom} AS geometry "
                "FROM {source} WHERE {filt} ORDER BY {order} LIMIT %s OFFSET %s"
            ).format(props=select_props, geom=_geometry_sql(srid, flipped), source=source, filt=filt,
                     order=order)
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(query, cparams + [limit, offset]).fetchall()
                matched, estimated = _number_matched(cur, source, filt, cparams, offset=offset,
                                                     returned=len(rows), limit=limit,
                                                     table=None if distinct else part)
        base = base_url(request)
        url = f"{base}/collections/{collection_id}/items"
        q = {k: v for k, v in request.query_params.items() if k not in ("offset", "f")}
        links = [link(f"{url}?{urlencode({**q, 'offset': offset})}", "self", GEOJSON, "this page"),
                 link(f"{url}?{urlencode({**q, 'offset': offset, 'f': 'html'})}", "alternate", "text/html", "as HTML"),
                 link(f"{base}/collections/{collection_id}", "collection", "application/json", "the collection")]
        if offset + len(rows) < matched or (estimated and len(rows) == limit):
            links.append(link(f"{url}?{urlencode({**q, 'offset': offset + limit})}", "next", GEOJSON, "next page"))
        if offset > 0:
            links.append(link(f"{url}?{urlencode({**q, 'offset': max(0, offset - limit)})}", "prev", GEOJSON,
                               "previous page"))
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
        api.add_api_route("/collections/{collection_id}/items", self.items, methods=["GET"], tags=["OGC API"],
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




def _sortby(layer: store.Layer, value: str | None) -> sql.Composable:
    if not value:
        return sql.SQL("f.fid")
    keys = []
    for term in value.split(","):
        term = term.strip()
        desc = term.startswith("-")
        name = term.lstrip("+-")
        if name == "id":
            expr = sql.SQL("f.fid")
        elif name in layer.schema:
            expr = sql.SQL("(f.properties ->> {})::{}").format(sql.Literal(name), sql.SQL(SQL_CASTS[layer.schema[name]]))
        else:
            raise invalid_parameter("sortby", f"unknown property {name!r}; sort by id or one of: {', '.join(layer.schema)}")
        keys.append(expr + sql.SQL(" DESC NULLS LAST" if desc else " ASC NULLS LAST"))
    return sql.SQL(", ").join(keys + [sql.SQL("f.fid")])


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


def _number_matched(cur, source: sql.Composable, filt: sql.Composable, params: list, *, offset: int,
                    returned: int, limit: int, table: sql.Composable | None = None) -> tuple[int, bool]:
    """numberMatched: exact when it is known or cheap, else an estimate (said so).

    A short page is the last one, so the count is offset + what it holds. Otherwise the rows are
    counted under a time budget (COUNT_BUDGET_MS) unless the planner expects more than
    EXACT_COUNT_MAX. Failing that, the estimate comes from counting a sample of the table's pages
    (``table``: the partition, when the query reads it directly) scaled up, or, when the sample
    finds nothing, from the planner (whose guess for a jsonb expression can be far off)."""
    if returned < limit and (returned or not offset):
        return offset + returned, False
    count_q = sql.SQL("SELECT 1 FROM {} WHERE {}").format(source, filt)
    plan = cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + count_q, params).fetchone()
    plan = plan["QUERY PLAN"] if isinstance(plan, dict) else plan[0]
    floor = offset + returned + (1 if returned == limit else 0)
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
