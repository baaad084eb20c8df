"""OGC API – Features Part 4: create, replace, update (JSON merge patch) and delete features of
editable layers. Each write is a changeset of the store with its author; nothing is deleted (a
deleted feature's version is closed). Optimistic locking: every feature carries an ``ETag``
(its version id); replace, update and delete need ``If-Match`` with the current one — a stale
one gets 412 and changes nothing, a missing one 428. The caller is checked first: 404 for a
layer they cannot see (or that does not exist), 401 / 403 when they may not edit, 405 for a layer
that is not editable — only then are If-Match and the body examined.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import shapely
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pyproj import Transformer
from shapely.geometry import shape

from spatial_api import db, events, security, store
from spatial_api.config import Settings
from spatial_api.ingest import prepare_properties
from spatial_api.ingest.types import IngestError, PreparedBatch
from spatial_api.store.types import StoreError
from spatial_api.api.collections import Collections
from spatial_api.api.errors import ApiError, invalid_parameter
from spatial_api.api.params import crs_param, instant_param
from spatial_api.api.responses import GEOJSON

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/create-replace-delete",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/update",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/features",
]
FAMILY = {"Point": "Point", "MultiPoint": "Point", "LineString": "LineString",
          "MultiLineString": "LineString", "Polygon": "Polygon", "MultiPolygon": "Polygon"}


def _author(request: Request) -> str:
    """The authenticated caller (key name or OIDC user): who the changeset records."""
    return security.current().name  # the key's or the token's owner (the audit log has the key id)


#: The largest request body a write accepts (one feature: a parcel of 100 000 vertices is ~5 MB).
#: Larger bodies get 413 before they are read into memory (Content-Length) or as soon as the
#: stream passes the limit (chunked).
MAX_BODY_BYTES = 16 << 20
#: The longest text a property value may hold through the API.
MAX_TEXT_CHARS = 100_000
#: How deeply a body's JSON may nest (a MultiPolygon's coordinates are 4 deep).
MAX_BODY_DEPTH = 32


def _too_large(what: str) -> ApiError:
    return ApiError(413, "PayloadTooLarge", f"body: {what}; a write takes one feature of at most "
                    f"{MAX_BODY_BYTES >> 20} MB. Simplify the geometry, or load large data with "
                    "`geotwin ingest vector`.")


def _json_depth(text: bytes) -> int:
    """How deeply the JSON text nests, counted without parsing (brackets outside strings)."""
    import re

    stripped = np.frombuffer(re.sub(rb'"[^"\\]*(?:\\.[^"\\]*)*"', b"", text), dtype=np.uint8)  # strings are text
    step = (((stripped == 0x5B) | (stripped == 0x7B)).astype(np.int32)  # [ {
            - ((stripped == 0x5D) | (stripped == 0x7D)).astype(np.int32))  # ] }
    return int(np.cumsum(step).max()) if len(step) else 0


async def _body(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise invalid_parameter("Content-Length", f"{declared[:40]!r} is not a number of bytes")
        if int(declared) > MAX_BODY_BYTES:
            raise _too_large(f"{int(declared):,} bytes declared")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(f"more than {MAX_BODY_BYTES:,} bytes sent")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if _json_depth(raw) > MAX_BODY_DEPTH:
        raise invalid_parameter("body", f"the JSON nests more than {MAX_BODY_DEPTH} levels deep; send one GeoJSON Feature")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid_parameter("body", f"not JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise invalid_parameter("body", "expected a GeoJSON Feature object")
    if doc.get("properties") is not None and not isinstance(doc["properties"], dict):
        raise invalid_parameter("properties", "expected a JSON object of property names and values")
    return doc


def _if_match(request: Request) -> str:
    value = request.headers.get("if-match")
    if not value:
        raise ApiError(428, "PreconditionRequired",
                       "If-Match is required: send the ETag you got with the feature (GET .../items/{id}) "
                       "so that a concurrent edit is not silently overwritten.")
    return value.strip()


def _expected(value: str, fid: str, current: int | None) -> dict[str, int | None]:
    if value == "*":
        if current is None:
            raise ApiError(412, "PreconditionFailed", f"feature {fid!r} does not exist")
        return {fid: current}
    tag = value.removeprefix("W/").strip('"')
    try:
        return {fid: int(tag)}
    except ValueError:
        raise invalid_parameter("If-Match", f"{value!r} is not an ETag of this server") from None


def _input_transformer(request: Request):
    uri, srid, flipped = crs_param(request.headers.get("content-crs", "").strip("<>") or None, "Content-Crs")
    tr = None if srid == 4490 else Transformer.from_crs(srid, 4490, always_xy=True)

    def fn(coords: np.ndarray) -> np.ndarray:
        xy = coords[:, ::-1] if flipped else coords
        if tr is None:
            return np.array(xy, dtype=float)
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return fn


def _rows(layer: store.Layer, feature: dict, fid: str | None, request: Request,
          stored_geometry: bool = False) -> store.FeatureRows:
    """Store-ready rows for one incoming feature, checked like an ingested file would be. Its
    geometry is in the request's Content-Crs, or already in storage CRS (``stored_geometry``)."""
    if feature.get("type") != "Feature":
        raise invalid_parameter("body", "expected a GeoJSON Feature (type: Feature)")
    try:
        geom = shape(feature["geometry"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, shapely.errors.ShapelyError) as exc:
        raise invalid_parameter("geometry", f"not a GeoJSON geometry ({str(exc)[:200]})") from None
    if geom.is_empty:
        raise invalid_parameter("geometry", "empty")
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise invalid_parameter("geometry", "coordinates must be finite numbers (NaN / Infinity given)")
    if FAMILY.get(geom.geom_type) != layer.geometry_family:
        raise invalid_parameter("geometry", f"{geom.geom_type} given, layer {layer.name!r} holds {layer.geometry_family}s")
    geom = shapely.force_2d(geom)
    if not stored_geometry:
        geom = shapely.transform(geom, _input_transformer(request))
    xy = shapely.get_coordinates(geom)
    if not (np.isfinite(xy).all() and (np.abs(xy[:, 0]) <= 180).all() and (np.abs(xy[:, 1]) <= 90).all()):
        raise invalid_parameter("geometry", "coordinates out of range: longitude must be within ±180 and latitude within ±90 "
                  "(CGCS2000) — is the Content-Crs header right?")
    if not geom.is_valid:
        raise invalid_parameter("geometry", f"invalid: {shapely.is_valid_reason(geom)}")
    props = dict(feature.get("properties") or {})
    unknown = [k for k in props if k not in layer.schema]
    if unknown:
        raise invalid_parameter("properties", f"{', '.join(repr(k[:40]) for k in unknown[:10])}{' …' if len(unknown) > 10 else ''} "
                  f"not in the layer schema ({', '.join(layer.schema)})")
    long = [k for k, v in props.items() if isinstance(v, str) and len(v) > MAX_TEXT_CHARS]
    if long:
        raise invalid_parameter("properties", f"{long[0]!r} is {len(props[long[0]]):,} characters long; a property value "
                  f"holds at most {MAX_TEXT_CHARS:,}")
    if layer.key_field:
        key = props.get(layer.key_field)
        if fid is None:
            if key in (None, ""):
                raise invalid_parameter("properties", f"the key {layer.key_field!r} is required")
            fid = str(key)
        elif key is not None and str(key) != fid:
            raise invalid_parameter("properties", f"{layer.key_field}={key!r} does not match the feature id {fid!r}")
        props[layer.key_field] = props.get(layer.key_field, fid)
    batch = PreparedBatch(source="request body", source_layer=None, source_crs="", geometry_family=layer.geometry_family,
                          schema=layer.schema, properties=pd.DataFrame([props], columns=list(layer.schema)),
                          geometry=np.array([geom], dtype=object), rows=np.array([1]))
    try:
        frame = prepare_properties(batch, layer.schema)
    except IngestError as exc:
        raise invalid_parameter("properties", str(exc).replace("request body: row 1: ", "")) from None
    return store.FeatureRows(rows=np.array([1]), fids=None if fid is None else np.array([fid], dtype=object),
                             geometry=batch.geometry, properties=frame)


_GEOMETRY_SCHEMA = {"type": "object", "required": ["type", "coordinates"], "properties": {
    "type": {"type": "string", "enum": sorted(FAMILY)}, "coordinates": {"type": "array"}}}
#: The request body of create / replace (a GeoJSON Feature) and update (a JSON merge patch of one),
#: in the OpenAPI document: clients (and the schemathesis fuzz run) see what to send.
_EXAMPLE = {"type": "Feature", "properties": {"code": "DEMO-1"}, "geometry": {"type": "Polygon", "coordinates": [
    [[114.26, 22.73], [114.2603, 22.73], [114.2603, 22.7303], [114.26, 22.7303], [114.26, 22.73]]]}}
_VALID_FROM = {"name": "valid_from", "in": "query", "required": False, "schema": {"type": "string"},
               "description": "when the edit is true in the world (RFC 3339 date or date-time; naive = district "
                              "time). Default: now. A date before the layer's latest change is a correction in "
                              "valid time: recorded now, it applies until the feature's next recorded change."}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "the feature's ETag (required: 428 without it, 412 when stale)"}
_FEATURE_BODY = {"requestBody": {"required": True, "content": {media: {"schema": {
    "type": "object", "required": ["type", "geometry", "properties"], "properties": {
        "type": {"type": "string", "enum": ["Feature"]}, "geometry": _GEOMETRY_SCHEMA,
        "properties": {"type": "object"}}}, "example": _EXAMPLE} for media in (GEOJSON, "application/json")}},
    "responses": {"413": {"description": f"the body is larger than {MAX_BODY_BYTES >> 20} MB"}}}
_PATCH_BODY = {"requestBody": {"required": True, "content": {media: {"schema": {
    "type": "object", "properties": {"type": {"type": "string", "enum": ["Feature"]}, "geometry": _GEOMETRY_SCHEMA,
                                     "properties": {"type": "object"}}}, "example": {"properties": {"dlbm": "0701"}}}
    for media in ("application/merge-patch+json", "application/json")}}, "parameters": [_IF_MATCH, _VALID_FROM]}


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["OGC API — transactions"])
    cols = Collections(settings)

    def editable_layer(conn, collection_id: str) -> store.Layer:
        cols.get(conn, collection_id)  # 404 for a layer the caller may not see
        security.require("features:write")  # 401 / 403
        layer = store.get_layer(conn, collection_id)
        if not layer.editable:
            raise ApiError(405, "MethodNotAllowed", f"collection {collection_id!r} is not editable through the API "
                           "(GIS staff: `geotwin layers set NAME --editable`)")
        return layer

    def may_write(collection_id: str) -> None:
        """404 / 401 / 403 / 405 before anything of the request itself (If-Match, body) is examined:
        a caller who may not write there learns nothing about what the write would have needed."""
        with db.pool(settings).connection() as conn:
            editable_layer(conn, collection_id)

    def current_vid(conn, layer: str, fid: str) -> int | None:
        from psycopg import sql

        row = conn.execute(sql.SQL("SELECT vid FROM {} WHERE fid = %s AND valid_to IS NULL").format(
            sql.Identifier(store.partition_name(layer))), (fid,)).fetchone()
        return row[0] if row else None

    def valid_from(request: Request) -> datetime:
        value = request.query_params.get("valid_from")
        return (instant_param(value, "valid_from", "start") if value else None) or datetime.now(timezone.utc)

    def write(conn, layer, rows, request, expect, source) -> tuple[str, int, int]:
        try:
            res = store.write_changeset(conn, layer, rows, mode="upsert", valid_from=valid_from(request),
                                        author=_author(request), source=source, expect_versions=expect)
        except store.VersionConflict as exc:
            raise ApiError(409 if source == "api:create" else 412,
                           "Conflict" if source == "api:create" else "PreconditionFailed", str(exc)) from None
        except (IngestError, StoreError) as exc:
            raise invalid_parameter("body", str(exc)) from None
        store.finish_changeset(conn, res.changeset_id, {"added": res.added, "changed": res.changed,
                                                        "unchanged": res.unchanged})
        fid = str(rows.fids[0]) if rows.fids is not None else f"{res.changeset_id}-1"
        return fid, current_vid(conn, layer.name, fid), res.changeset_id

    def committed(layer: str, changeset_id: int) -> None:
        # This process's caches drop what the edit touched before the response leaves.
        events.committed(settings.db_schema, layer, changeset_id)

    def done(request: Request, collection_id: str, fid: str, vid: int, status: int) -> Response:
        url = f"{str(request.base_url).rstrip('/')}/collections/{collection_id}/items/{fid}"
        return Response(status_code=status, headers={"Location": url, "ETag": f'"{vid}"'})

    @api.post("/collections/{collection_id}/items", status_code=201, summary="Create a feature",
              openapi_extra={**_FEATURE_BODY, "parameters": [_VALID_FROM]})
    async def create(request: Request, collection_id: str):
        await run_in_threadpool(may_write, collection_id)
        feature = await _body(request)
        with db.connect(settings) as conn:
            layer = editable_layer(conn, collection_id)
            rows = _rows(layer, feature, None, request)
            expect = {str(rows.fids[0]): None} if rows.fids is not None else None
            fid, vid, cs = write(conn, layer, rows, request, expect, "api:create")
            conn.commit()
        committed(layer.name, cs)
        return done(request, collection_id, fid, vid, 201)

    @api.put("/collections/{collection_id}/items/{feature_id}", summary="Replace a feature",
             openapi_extra={**_FEATURE_BODY, "parameters": [_IF_MATCH, _VALID_FROM]})
    async def replace(request: Request, collection_id: str, feature_id: str):
        await run_in_threadpool(may_write, collection_id)
        feature = await _body(request)
        tag = _if_match(request)
        with db.connect(settings) as conn:
            layer = editable_layer(conn, collection_id)
            expect = _expected(tag, feature_id, current_vid(conn, collection_id, feature_id))
            rows = _rows(layer, feature, feature_id, request)
            fid, vid, cs = write(conn, layer, rows, request, expect, "api:replace")
            conn.commit()
        committed(layer.name, cs)
        return done(request, collection_id, fid, vid, 200)

    @api.patch("/collections/{collection_id}/items/{feature_id}", summary="Update a feature (JSON merge patch)",
               openapi_extra=_PATCH_BODY)
    async def update(request: Request, collection_id: str, feature_id: str):
        await run_in_threadpool(may_write, collection_id)
        patch = await _body(request)
        unknown = sorted(set(patch) - {"type", "id", "geometry", "properties", "bbox", "links"})
        if unknown or patch.get("type", "Feature") != "Feature":
            raise invalid_parameter("body", "a merge patch of a GeoJSON Feature takes only type (Feature), geometry and "
                      f"properties{'; not ' + ', '.join(map(repr, unknown[:5])) if unknown else ''}")
        tag = _if_match(request)
        with db.connect(settings) as conn:
            layer = editable_layer(conn, collection_id)
            expect = _expected(tag, feature_id, current_vid(conn, collection_id, feature_id))
            from psycopg import sql

            current = conn.execute(sql.SQL(
                "SELECT properties, ST_AsGeoJSON(geom, 15, 0) FROM {} WHERE fid = %s AND valid_to IS NULL"
            ).format(sql.Identifier(store.partition_name(collection_id))), (feature_id,)).fetchone()
            if current is None:
                raise ApiError(404, "NotFound", f"feature {feature_id!r} does not exist in {collection_id!r}")
            props = dict(current[0])
            for k, v in (patch.get("properties") or {}).items():
                if v is None:
                    props.pop(k, None)
                else:
                    props[k] = v
            merged = {"type": "Feature", "properties": props,
                      "geometry": patch.get("geometry") or json.loads(current[1])}
            rows = _rows(layer, merged, feature_id, request, stored_geometry=not patch.get("geometry"))
            fid, vid, cs = write(conn, layer, rows, request, expect, "api:update")
            conn.commit()
        committed(layer.name, cs)
        return done(request, collection_id, fid, vid, 200)

    @api.delete("/collections/{collection_id}/items/{feature_id}", status_code=204, summary="Delete a feature",
                openapi_extra={"parameters": [_IF_MATCH, _VALID_FROM]})
    def delete(request: Request, collection_id: str, feature_id: str):
        with db.connect(settings) as conn:
            layer = editable_layer(conn, collection_id)  # who may write comes before If-Match
            tag = _if_match(request)
            expect = _expected(tag, feature_id, current_vid(conn, collection_id, feature_id))
            try:
                res = store.close_features(conn, layer, [feature_id], valid_from=valid_from(request),
                                           author=_author(request), source="api:delete", expect_versions=expect)
            except store.VersionConflict as exc:
                raise ApiError(412, "PreconditionFailed", str(exc)) from None
            except StoreError as exc:
                raise invalid_parameter("valid_from", str(exc)) from None
            conn.commit()
        committed(layer.name, res.changeset_id)
        return Response(status_code=204)

    return api


__all__ = ["CONFORMANCE", "GEOJSON", "router"]
