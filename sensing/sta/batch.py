"""``POST /sta/v1.1/$batch``: the JSON batch format (OData 4.01 JSON batch, as FROST-Server's
JsonBatchRequest extension adapts it to SensorThings; 18-088 §11 for the semantics).

Request: ``{"requests": [{"id", "method", "url", "headers"?, "body"?, "atomicityGroup"?,
"dependsOn"?}]}``; response (200): ``{"responses": [{"id", "status", "headers", "body"?,
"location"?}]}`` in the order of the requests.

- Each request is executed by the application itself (an in-process ASGI call through the whole
  middleware stack), with the batch's credentials (``Authorization`` / ``X-API-Key``): its access
  checks, audit entry and errors are exactly those of the same request sent alone. GETs work too.
- ``url``: relative to the service root (``Things(1)``), an absolute path (``/sta/v1.1/Things``)
  or URL, or ``$<id>/…`` — the entity created by the earlier request ``<id>``. In a body,
  ``{"@iot.id": "$<id>"}`` links the entity that request created.
- An **atomicity group** (consecutive requests with the same ``atomicityGroup``) runs in ONE
  database transaction: committed when every request in it succeeded; when one fails, the group
  is rolled back — nothing of it stays — and the group's responses are the failed request's own
  error and 424 (Failed Dependency) for the others. Change events of a group are emitted after its
  commit. A group holds changes only (a GET in one is refused, as OData's change sets do).
- Requests outside a group commit one by one (as if sent alone). ``dependsOn`` names requests or
  groups that must have succeeded: otherwise 424 without running it.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from sensing.sta import write
from sensing.sta.events import emit
from spatial_api import db
from spatial_api.api.responses import base_url

MAX_REQUESTS = 1000
METHODS = {"GET", "POST", "PATCH", "PUT", "DELETE"}
_FORWARDED = ("authorization", "x-api-key", "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")


class _Unresolved(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _validate(body) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise write.bad("body", "a JSON batch is {\"requests\": [{\"id\", \"method\", \"url\", \"body\"?, "
                                "\"atomicityGroup\"?, \"dependsOn\"?}, …]}")
    reqs = body["requests"]
    if len(reqs) > MAX_REQUESTS:
        raise write.bad("requests", f"{len(reqs)} requests; at most {MAX_REQUESTS} in one batch")
    seen: set[str] = set()
    groups_done: set[str] = set()
    previous_group = None
    for k, r in enumerate(reqs):
        member = f"requests[{k}]"
        if not isinstance(r, dict):
            raise write.bad(member, "must be an object {id, method, url, …}")
        unknown = sorted(set(r) - {"id", "method", "url", "headers", "body", "atomicityGroup", "dependsOn"})
        if unknown:
            raise write.bad(", ".join(f"{member}.{u}" for u in unknown), "not a member of a batch request; "
                            "they are id, method, url, headers, body, atomicityGroup, dependsOn")
        rid = r.get("id")
        if not isinstance(rid, str) or not rid:
            raise write.bad(f"{member}.id", "missing: every request needs an id (a string), unique in the batch")
        if rid in seen:
            raise write.bad(f"{member}.id", f"{rid!r} is used twice")
        seen.add(rid)
        if not isinstance(r.get("method"), str) or r["method"].upper() not in METHODS:
            raise write.bad(f"{member}.method", f"{r.get('method')!r}: one of {', '.join(sorted(METHODS))}")
        if not isinstance(r.get("url"), str) or not r["url"].strip():
            raise write.bad(f"{member}.url", "missing (e.g. \"Things(1)\" or \"$thing1/Datastreams\")")
        if r.get("headers") is not None and not isinstance(r["headers"], dict):
            raise write.bad(f"{member}.headers", "must be an object of header names and values")
        group = r.get("atomicityGroup")
        if group is not None and not isinstance(group, str):
            raise write.bad(f"{member}.atomicityGroup", "must be a string")
        if group is not None and r["method"].upper() == "GET":
            raise write.bad(f"{member}.method", "a GET cannot be part of an atomicity group (a change set holds "
                            "changes only, as in OData); put it outside the group")
        if group != previous_group and previous_group is not None:
            groups_done.add(previous_group)
        if group is not None and group in groups_done:
            raise write.bad(f"{member}.atomicityGroup", f"the requests of group {group!r} must be adjacent")
        if group in seen and group is not None and group != previous_group:
            raise write.bad(f"{member}.atomicityGroup", f"{group!r} is also a request id")
        previous_group = group
        deps = r.get("dependsOn")
        if deps is not None and not (isinstance(deps, list) and all(isinstance(d, str) for d in deps)):
            raise write.bad(f"{member}.dependsOn", "must be an array of request ids or atomicity groups")
        earlier = (seen - {rid}) | groups_done
        unknown_deps = [d for d in deps or [] if d not in earlier]
        if unknown_deps:
            raise write.bad(f"{member}.dependsOn", f"{', '.join(unknown_deps)}: not an earlier request or "
                            "atomicity group of this batch")
        if urlsplit(r["url"].strip()).path.rstrip("/").endswith("$batch"):
            raise write.bad(f"{member}.url", "a batch cannot contain a batch")
    return reqs


def _substitute(value, created: dict[str, int], member: str):
    """``{"@iot.id": "$x"}`` → the id request x created."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "@iot.id" and isinstance(v, str) and v.startswith("$"):
                name = v[1:]
                if name not in created:
                    raise _Unresolved(400, f"{member}.@iot.id: {v} names no entity created earlier in this batch")
                out[k] = created[name][1]
            else:
                out[k] = _substitute(v, created, f"{member}.{k}")
        return out
    if isinstance(value, list):
        return [_substitute(v, created, f"{member}[{i}]") for i, v in enumerate(value)]
    return value


def _target(url: str, created: dict[str, tuple[str, int]]) -> tuple[str, str]:
    url = url.strip()
    if url.startswith("$"):
        cut = min([i for i in (url.find("/"), url.find("?")) if i > 0] or [len(url)])
        name = url[1:cut]
        if name not in created:
            raise _Unresolved(400, f"url: ${name} names no entity created earlier in this batch")
        url = created[name][0] + url[cut:]
    parts = urlsplit(url)
    path = parts.path
    if not path.startswith("/"):
        path = f"{write.PREFIX}/{path}"
    elif path.startswith("/v1.1/"):
        path = "/sta" + path
    return path, parts.query


async def _call(outer: Request, method: str, path: str, query: str, headers: dict, body) -> tuple[int, dict, object]:
    """The request through the application itself; (status, headers, body as JSON or text). ``body``:
    a JSON value, or bytes sent as they are (the multipart batch's)."""
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    sent = [False]
    hdrs = [(k, v) for k, v in outer.headers.raw if k.decode("latin-1").lower() in _FORWARDED]
    if outer.query_params.get("api_key") and "x-api-key" not in outer.headers:
        hdrs.append((b"x-api-key", outer.query_params["api_key"].encode("latin-1")))
    names = {k.decode("latin-1").lower() for k, _ in hdrs}
    for k, v in headers.items():
        if str(k).lower() not in names and str(k).lower() != "content-length":
            hdrs.append((str(k).lower().encode("latin-1"), str(v).encode("latin-1")))
    if body is not None and not any(k == b"content-type" for k, _ in hdrs):
        hdrs.append((b"content-type", b"application/json"))
    hdrs.append((b"content-length", str(len(data)).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": outer.url.scheme, "server": outer.scope.get("server"),
        "client": outer.scope.get("client"), "root_path": outer.scope.get("root_path", ""),
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "headers": hdrs,
        "state": {},
    }

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": data, "more_body": False}
        return {"type": "http.disconnect"}

    status = [500]
    resp_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            for k, v in message.get("headers", []):
                resp_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await outer.app(scope, receive, send)
    except Exception as exc:  # noqa: BLE001 — the app answered 500 already (ServerErrorMiddleware re-raises)
        return 500, {}, {"code": 500, "type": "error", "message": f"{type(exc).__name__}: {str(exc)[:300]}"}
    raw = b"".join(chunks)
    payload: object = None
    if raw:
        if "json" in resp_headers.get("content-type", ""):
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
        else:
            payload = raw.decode("utf-8", "replace")
    return status[0], resp_headers, payload


def _response(rid: str, status: int, headers: dict, body) -> dict:
    out: dict = {"id": rid, "status": status}
    kept = {k: v for k, v in headers.items() if k in ("location", "content-type", "retry-after")}
    if kept:
        out["headers"] = {"Location" if k == "location" else k.title(): v for k, v in kept.items()}
    if "location" in headers:
        out["location"] = headers["location"]
    if body is not None:
        out["body"] = body
    return out


def _failed_dependency(rid: str, message: str) -> dict:
    return {"id": rid, "status": 424, "body": {"code": 424, "type": "error", "message": message}}


async def execute(request: Request, settings) -> JSONResponse:
    reqs = _validate(await write.read_body(request))
    created: dict[str, tuple[str, int]] = {}   # request id → (path of the entity, its id)
    failed: set[str] = set()                   # request ids and groups that did not succeed
    responses: list[dict] = []

    async def one(r: dict) -> dict:
        rid = r["id"]
        bad_deps = [d for d in (r.get("dependsOn") or []) if d in failed]
        if bad_deps:
            return _failed_dependency(rid, f"not run: it depends on {', '.join(bad_deps)}, which failed")
        try:
            path, query = _target(r["url"], created)
            body = _substitute(r.get("body"), created, "body")
        except _Unresolved as exc:
            return {"id": rid, "status": exc.status, "body": {"code": exc.status, "type": "error", "message": str(exc)}}
        status, headers, payload = await _call(request, r["method"].upper(), path, query, r.get("headers") or {}, body)
        if status == 201 and isinstance(payload, dict) and isinstance(payload.get("@iot.id"), int):
            link = payload.get("@iot.selfLink") or headers.get("location", "")
            entity_path = link[link.find(write.PREFIX):] if write.PREFIX in link else path
            created[rid] = (entity_path, payload["@iot.id"])
        return _response(rid, status, headers, payload)

    k = 0
    while k < len(reqs):
        group = reqs[k].get("atomicityGroup")
        if group is None:
            resp = await one(reqs[k])
            if resp["status"] >= 400:
                failed.add(reqs[k]["id"])
            responses.append(resp)
            k += 1
            continue
        end = k
        while end < len(reqs) and reqs[end].get("atomicityGroup") == group:
            end += 1
        responses.extend(await _run_group(request, settings, group, reqs[k:end], one, created, failed))
        k = end
    return JSONResponse({"responses": responses})


async def _run_group(request: Request, settings, group: str, reqs: list[dict], one, created, failed) -> list[dict]:
    pool = db.pool(settings)
    conn = await run_in_threadpool(pool.getconn)
    tx = write.Tx(conn, base_url(request))
    token = write.GROUP.set(tx)
    out: list[dict] = []
    failure: dict | None = None
    before = set(created)
    try:
        for r in reqs:
            resp = await one(r)
            out.append(resp)
            if resp["status"] >= 400:
                failure = resp
                break
        changes = []
        if failure is None:
            try:
                changes = await run_in_threadpool(tx.changes)
                await run_in_threadpool(conn.commit)
            except Exception as exc:  # noqa: BLE001 — the commit itself failed: nothing of the group stays
                failure = {"id": reqs[-1]["id"], "status": 500, "body": {
                    "code": 500, "type": "error", "message": f"atomicity group {group!r} could not be committed: {exc}"}}
                out = [failure]
        if failure is not None:
            await run_in_threadpool(conn.rollback)
    finally:
        write.GROUP.reset(token)
        await run_in_threadpool(pool.putconn, conn)
    if failure is None:
        for change in changes:
            emit(change)
        return out
    # rolled back: what the group created does not exist, and every request of it failed
    for name in set(created) - before:
        del created[name]
    failed.add(group)
    failed.update(r["id"] for r in reqs)
    msg = (f"rolled back: request {failure['id']!r} of atomicity group {group!r} failed "
           f"(status {failure['status']}), so nothing of the group was kept")
    return [failure if r["id"] == failure["id"] else _failed_dependency(r["id"], msg) for r in reqs]


__all__ = ["execute"]
