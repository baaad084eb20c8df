"""HTTP: the writing side of ``/sta/v1.1`` (OGC 18-088 §10, §11, §14) — ``POST`` to an entity set
or a navigation path (201, the entity, ``Location`` = its self link), ``PATCH`` (JSON merge, or
``application/json-patch+json``) and ``PUT`` (200, the entity), ``DELETE`` (200), links by
``…/$ref`` (204), ``POST /sta/v1.1/$batch`` (multipart/mixed or JSON batch, by Content-Type) and
``POST /sta/v1.1/CreateObservations`` (DataArray, 201 and the array of self links).

Every write needs ``sensing:write`` (roles.MAY: gis-staff, admin): 401 without credentials, 403
for a role without it, checked before the body is read. The security middleware audits every
write request (``audit_log``), refused or not. Declared before the read router: only write
methods here, so GETs of the same paths fall through to it.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from sensing.sta import batch, batch_multipart, write
from sensing.sta.events import emit
from spatial_api import db, security
from spatial_api.api.errors import ApiError
from spatial_api.api.responses import base_url

ACTION = "sensing:write"
_JSON_PATCH = "application/json-patch+json"


def run(settings, base: str, work: Callable[[write.Tx], object]):
    """``work`` in a transaction: the ``$batch`` group's when one is running (it commits and emits),
    else a new one, committed here, its changes emitted after the commit."""
    group = write.GROUP.get()
    if group is not None:
        return work(group)
    with db.pool(settings).connection() as conn:  # commits on a normal exit, rolls back on an exception
        tx = write.Tx(conn, base)
        result = work(tx)
        changes = tx.changes()
    for change in changes:
        emit(change)
    return result


def router(settings) -> APIRouter:
    api = APIRouter(tags=["SensorThings API 1.1 — create, update, delete"])

    def service_root(request: Request) -> str:
        return base_url(request)

    @api.post("/sta/v1.1/$batch", summary="Batch: multipart/mixed (18-088 §11.2, OData 4.0) or JSON (OData 4.01)")
    async def batch_request(request: Request):
        if batch_multipart.is_multipart(request):
            return await batch_multipart.execute(request, settings)
        return await batch.execute(request, settings)

    @api.post("/sta/v1.1/CreateObservations", status_code=201,
              summary="Create Observations from DataArrays (18-088 §14.3.2)")
    async def create_observations(request: Request):
        security.require(ACTION)
        body = await write.read_body(request)
        links = await run_in_threadpool(run, settings, service_root(request),
                                        lambda tx: write.create_observations(tx, body))
        return JSONResponse(links, status_code=201)

    @api.post("/sta/v1.1/{path:path}", status_code=201, summary="Create an entity (deep insert) or add a $ref link")
    async def create(request: Request, path: str):
        security.require(ACTION)
        body = await write.read_body(request)

        def work(tx: write.Tx):
            target = write.resolve(tx, path)
            if target.ref:
                write.add_ref(tx, target, body)
                return None
            ent, new = write.create(tx, target, body)
            return write.entity_json(tx, ent, new)

        doc = await run_in_threadpool(run, settings, service_root(request), work)
        if doc is None:
            return Response(status_code=204)
        return JSONResponse(doc, status_code=201, headers={"Location": doc["@iot.selfLink"]})

    async def change(request: Request, path: str, replace: bool):
        security.require(ACTION)
        body = await write.read_body(request)
        patch = not replace and request.headers.get("content-type", "").split(";")[0].strip() == _JSON_PATCH

        def work(tx: write.Tx):
            target = write.resolve(tx, path)
            if target.ref:
                raise ApiError(405, "MethodNotAllowed", "links are added with POST …/$ref and removed with DELETE")
            if patch:
                ent, id_ = write.json_patch(tx, target, body)
            else:
                ent, id_ = write.update(tx, target, body, replace=replace)
            return write.entity_json(tx, ent, id_)

        doc = await run_in_threadpool(run, settings, service_root(request), work)
        return JSONResponse(doc, status_code=200)

    @api.patch("/sta/v1.1/{path:path}", summary="Update an entity (JSON merge; or JSON Patch)")
    async def update(request: Request, path: str):
        return await change(request, path, replace=False)

    @api.put("/sta/v1.1/{path:path}", summary="Replace an entity")
    async def replace(request: Request, path: str):
        return await change(request, path, replace=True)

    @api.delete("/sta/v1.1/{path:path}", summary="Delete an entity (with what depends on it) or a $ref link")
    async def delete(request: Request, path: str):
        security.require(ACTION)

        def work(tx: write.Tx):
            if path.rstrip("/").endswith("/$ref"):
                write.remove_ref(tx, path)
                return True
            write.delete(tx, write.resolve(tx, path))
            return False

        link = await run_in_threadpool(run, settings, service_root(request), work)
        return Response(status_code=204 if link else 200)

    return api
