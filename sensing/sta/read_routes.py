"""GET routes of the SensorThings API 1.1 at ``/sta/v1.1``: the landing document and every resource
path (``sensing.sta.paths``) with its query options (``sensing.sta.read``, whose docstring
documents the options, the ``$aggregate`` extension and who sees what).

Errors are FROST-Server's JSON: ``{"code": 400, "type": "error", "message": "…"}``.
"""

from __future__ import annotations

import json

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from psycopg.rows import dict_row

from sensing.sta import model, paths, read, serialize
from spatial_api import db
from spatial_api.api.responses import base_url

CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/create-update-delete",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/batch-request/batch-request",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt/observations-creation",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/receive-updates-via-mqtt/receive-updates",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/multi-datastream",
]
MQTT_CLASS = "http://www.opengis.net/spec/iot_sensing/1.1/req/mqtt-extension"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "type": "error", "message": message}, status_code=status)


def root_url(request: Request) -> str:
    return base_url(request) + serialize.ROOT


def landing(request: Request) -> dict:
    root = root_url(request)
    endpoints = list(getattr(request.app.state, "mqtt_endpoints", None) or [])
    return {
        "value": [{"name": name, "url": f"{root}/{name}"} for name in model.ENTITIES],
        "serverSettings": {
            "conformance": CONFORMANCE,
            MQTT_CLASS: {"endpoints": endpoints},
            # geotwin's paging limits and its aggregation extension (see sensing.sta.read)
            "geotwin": {"defaultTop": read.DEFAULT_TOP, "maxTop": read.MAX_TOP,
                        "aggregate": {"parameter": "$aggregate", "values": sorted(read.AGGREGATE_PERIODS),
                                      "path": "Datastreams(<id>)/Observations"}},
        },
    }


def _options(request: Request) -> dict[str, str]:
    """The STA query options of the request (``$…``; ``resultFormat`` without ``$`` too).
    Other parameters (``api_key`` …) are not options."""
    out: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k == "resultFormat":
            k = "$resultFormat"
        if not k.startswith("$"):
            continue
        if k in out:
            raise read.bad(f"query option {k} is given twice")
        out[k] = v
    return out


def router(settings) -> APIRouter:
    r = APIRouter(tags=["SensorThings API"])

    @r.get("/sta/v1.1", summary="SensorThings API 1.1: the entity sets and server settings")
    @r.get("/sta/v1.1/", include_in_schema=False)
    def sta_landing(request: Request):
        return JSONResponse(landing(request))

    @r.get("/sta/v1.1/{resource:path}", summary="SensorThings API 1.1: read entities, properties, references")
    def sta_get(resource: str, request: Request):
        try:
            path = paths.parse(resource)
            options = _options(request)
            top = options.get("$top")
            page = min(read._int("$top", top, 0), read.MAX_TOP) if top is not None else read.DEFAULT_TOP
            items = [(k, v) for k, v in request.query_params.multi_items()]
            ctx = read.Context(None, base_url(request),
                               read.next_link_for(root_url(request) + "/" + resource.strip("/"), items, page))
            with db.pool(settings, read=True).connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                ctx.conn = cur
                status, body = read.run(ctx, path, options)
        except paths.PathError as exc:
            return error(exc.status, exc.message)
        except read.StaError as exc:
            return error(exc.status, exc.message)
        except psycopg.DataError as exc:
            # a value PostgreSQL cannot take (a date out of range, a bad geometry literal …)
            message = (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc)
            return error(400, f"a value in the request does not fit: {message[:300]}")
        if status == 204:
            return Response(status_code=204)
        if path.value:
            if isinstance(body, (dict, list)):
                return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
            return Response(str(body) if not isinstance(body, bool) else str(body).lower(), media_type="text/plain")
        if isinstance(body, dict) and isinstance(body.get("value"), read.RawJSONArray):
            return Response(read.dumps(body), status_code=status, media_type="application/json")
        return JSONResponse(body, status_code=status)

    return r
