"""``POST /sta/v1.1/$batch`` with ``Content-Type: multipart/mixed; boundary=…``: the batch format of
OGC 18-088 §11.2 (Batch Requests), which is OData 4.0 Part 1 §11.7 — FROST-Server's
``BatchProcessor`` where the standard is silent. The JSON format (``batch.py``) is served on the
same route; the route dispatches on the request's Content-Type.

Request: a multipart/mixed body whose parts are either

- ``Content-Type: application/http`` (``Content-Transfer-Encoding: binary``): one HTTP request —
  ``<METHOD> <URL> [HTTP/1.1]``, its headers, an empty line, its body. The URL is relative to the
  service root (``Things(1)``), an absolute path (``/v1.1/Things``, ``/sta/v1.1/Things``) or URL; or
- ``Content-Type: multipart/mixed; boundary=…``: a **change set**, whose parts are application/http
  requests that change something (no GET, no nested change set). A change set runs in ONE
  database transaction (``batch._run_group``, the JSON atomicity groups' mechanism): all of it is
  kept, or — when one request fails — nothing of it. A request's ``Content-ID`` names the entity it
  created for the later requests of the SAME change set: ``$<Content-ID>`` at the start of a URL
  (``POST $1/Datastreams``) or as a linked entity's id in a JSON body (``{"@iot.id": "$1"}``).

Response (200): multipart/mixed in the order of the request's parts; a request's response is an
application/http part (``HTTP/1.1 201 Created``, ``Location``, the entity as JSON) carrying the
request's ``Content-ID``; a change set's is one multipart/mixed part of its requests' responses,
or — when it failed and was rolled back — the failed request's own error response alone (OData
§11.7.4; FROST-Server does the same).

Every request runs through the application itself with the batch's credentials only (credential
headers inside a part are ignored): its access checks, audit entry and errors are those of the same
request sent alone. A body the batch cannot take apart (no boundary, a part that is not
application/http, a request line that is not one, a ``$`` reference to no earlier Content-ID of
the change set, …) is refused as a whole with 400 naming the part (``part 2.1`` = the first request
of the second part) — nothing of it runs. An inner ``Content-Length`` is not needed (the boundary
ends a body) and not checked: the standard's examples write ``###`` there.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from http import HTTPStatus
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sensing.sta import batch, write

MULTIPART = "multipart/mixed"
_REQUEST_LINE = re.compile(rb"^(GET|POST|PATCH|PUT|DELETE) (\S+)(?: HTTP/\d\.\d)?$")
#: Headers of a part's request that are not passed on: the batch's own credentials count, the
#: boundary delimits the body, the outer request names the host.
_DROPPED = {"authorization", "x-api-key", "cookie", "content-length", "host", "transfer-encoding"}
_JSON = "application/json; charset=utf-8"
_ASCII = bytes(range(0x21, 0x7F))


def is_multipart(request: Request) -> bool:
    """Does the request send a multipart batch (the route's dispatch)?"""
    return request.headers.get("content-type", "").split(";")[0].strip().lower().startswith("multipart/")


# ------------------------------------------------------------------------------------- parsing

@dataclass
class Part:
    """One HTTP request of the batch."""

    label: str                  # "part 2" (top level) or "part 2.1" (first request of change set 2)
    content_id: str | None
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ChangeSet:
    label: str
    requests: list[Part] = field(default_factory=list)


def _mime(content_type: str, raw: bytes) -> Message:
    """The body as a MIME message (Python's ``email`` package does the multipart work; its compat32
    policy: ten times faster than the header-object one, 50 ms for 500 parts)."""
    return BytesParser(policy=policy.compat32).parsebytes(b"Content-Type: " + content_type.encode("latin-1")
                                                      + b"\r\n\r\n" + raw)


def _check_multipart(msg: Message, where: str, header: str) -> None:
    """400 unless ``msg`` is a well-formed multipart/mixed (boundary, delimiters found)."""
    boundary = msg.get_boundary()
    if not boundary:
        raise write.bad(where, f"{header} has no boundary: send \"multipart/mixed; boundary=batch_<something "
                               "unique>\" and start every part with --<boundary>")
    names = {type(d).__name__ for d in msg.defects}
    if "StartBoundaryNotFoundDefect" in names or not msg.is_multipart():
        if not str(msg.get_payload() or "").strip():   # the closing "--<boundary>--" and nothing before it
            raise write.bad(where, "holds no part: give at least one request (--<boundary>, the part's headers, "
                                   "an empty line, the request) or leave it out")
        raise write.bad(where, f"no line \"--{boundary}\" found: every part starts with --<boundary> on a line "
                               f"of its own (the boundary of {header})")
    if "CloseBoundaryNotFoundDefect" in names:
        raise write.bad(where, f"the closing line \"--{boundary}--\" is missing: end the multipart body with it")
    if names - {"MultipartInvariantViolationDefect"}:
        raise write.bad(where, f"not a well-formed multipart body ({', '.join(sorted(names))})")


def _request(part: Message, label: str, in_changeset: bool) -> Part:
    ctype = part.get_content_type()
    if ctype != "application/http":
        given = part.get("Content-Type")
        raise write.bad(label, (f"Content-Type is {given!r}" if given else "no Content-Type header") + ": a "
                        + ("change set's part" if in_changeset else "part") + " is one HTTP request with "
                        "\"Content-Type: application/http\" and \"Content-Transfer-Encoding: binary\""
                        + ("" if in_changeset else ", or a change set (\"Content-Type: multipart/mixed; boundary=…\")"))
    payload = part.get_payload(decode=True) or b""
    stream = io.BytesIO(payload)
    line = stream.readline()
    while line and not line.strip():       # empty lines before the request line (FROST-Server skips them)
        line = stream.readline()
    line = line.rstrip(b"\r\n")
    match = _REQUEST_LINE.match(line)
    if match is None:
        shown = line[:120].decode("utf-8", "replace")
        raise write.bad(label, f"the request line {shown!r} is not \"<METHOD> <URL> HTTP/1.1\" with METHOD one of "
                        "GET, POST, PATCH, PUT, DELETE (e.g. \"POST /v1.1/Things HTTP/1.1\"); the part's own "
                        "headers (Content-Type: application/http, Content-ID) come before an empty line, then the request")
    try:
        headers = http.client.parse_headers(stream)
    except http.client.HTTPException as exc:
        raise write.bad(label, f"the request's headers cannot be read ({type(exc).__name__}: {exc})") from None
    # a raw UTF-8 character in the URL (a hand-written batch: "$filter=name eq '坂田'") is percent-encoded
    # as a client would have done; everything ASCII stays as given
    method, url = match.group(1).decode(), quote(match.group(2), safe=_ASCII)
    content_id = part.get("Content-ID")
    content_id = str(content_id).strip() if content_id is not None else None
    if in_changeset and method == "GET":
        raise write.bad(label, "a GET cannot be part of a change set (a change set holds changes only, OData "
                               "§11.7.3); put it outside the change set, as a part of the batch itself")
    if urlsplit(url).path.rstrip("/").endswith("$batch"):
        raise write.bad(label, "a batch cannot contain a batch")
    kept = {k: v for k, v in headers.items() if k.lower() not in _DROPPED}
    return Part(label, content_id or None, method, url, kept, stream.read())


def parse(content_type: str, raw: bytes) -> list[Part | ChangeSet]:
    """The batch's parts, checked: every request readable, every ``$`` reference resolvable."""
    given = content_type.split(";")[0].strip().lower()
    if given != MULTIPART:
        raise write.bad("Content-Type", f"{given}: a batch is multipart/mixed (OData 4.0, 18-088 §11.2) or "
                                        "application/json (the JSON batch)")
    if not raw.strip():
        raise write.bad("body", "empty: send the batch's parts, each starting with --<boundary>, the last "
                                "followed by --<boundary>--")
    msg = _mime(content_type, raw)
    _check_multipart(msg, "body", "the request's Content-Type")
    items: list[Part | ChangeSet] = []
    for k, sub in enumerate(msg.get_payload(), 1):
        label = f"part {k}"
        if sub.get_content_type() == MULTIPART:
            _check_multipart(sub, label, "the change set's Content-Type")
            cs = ChangeSet(label)
            for j, inner in enumerate(sub.get_payload(), 1):
                if inner.get_content_type() == MULTIPART:
                    raise write.bad(f"{label}.{j}", "change sets cannot be nested: put its requests into the "
                                                    "enclosing change set")
                cs.requests.append(_request(inner, f"{label}.{j}", True))
            if not cs.requests:
                raise write.bad(label, "an empty change set: give it at least one request or leave it out")
            items.append(cs)
        else:
            items.append(_request(sub, label, False))
    _check_references(items)
    return items


_REF_URL = re.compile(r"^\$([^/?]+)")


def _body_refs(body: bytes) -> list[str]:
    """The ``"@iot.id": "$x"`` references of a JSON body (none when it is not JSON)."""
    try:
        doc = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        return []
    found: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "@iot.id" and isinstance(v, str) and v.startswith("$"):
                    found.append(v[1:])
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(doc)
    return found


def _check_references(items: list[Part | ChangeSet]) -> None:
    count = sum(len(i.requests) if isinstance(i, ChangeSet) else 1 for i in items)
    if count > batch.MAX_REQUESTS:
        raise write.bad("body", f"{count} requests; at most {batch.MAX_REQUESTS} in one batch")
    seen: dict[str, str] = {}
    for item in items:
        for part in item.requests if isinstance(item, ChangeSet) else [item]:
            if part.content_id is not None:
                if part.content_id in seen:
                    raise write.bad(part.label, f"Content-ID {part.content_id!r} is used by {seen[part.content_id]} "
                                                "too: a Content-ID is unique in the batch")
                seen[part.content_id] = part.label
    for item in items:
        if isinstance(item, Part):
            refs = ([m.group(1)] if (m := _REF_URL.match(item.url)) else []) + _body_refs(item.body)
            if refs:
                raise write.bad(item.label, f"${refs[0]}: a $<Content-ID> reference works only inside a change set, "
                                            "to an entity created earlier in the same change set; put both requests "
                                            "into one change set")
            continue
        earlier: list[str] = []
        for part in item.requests:
            m = _REF_URL.match(part.url)
            for name, where in ([(m.group(1), "URL")] if m else []) + [(n, "body") for n in _body_refs(part.body)]:
                if name not in earlier:
                    known = ", ".join(f"${n}" for n in earlier) or "none"
                    raise write.bad(part.label, f"${name} in the {where} names no request earlier in this change set "
                                    f"(Content-IDs before it: {known}); give the creating request \"Content-ID: "
                                    f"{name}\" and put it before this one in the same change set")
            if part.content_id is not None:
                earlier.append(part.content_id)


# ------------------------------------------------------------------------------------- running

async def _run(outer: Request, part: Part, created: dict[str, tuple[str, int]]) -> dict:
    """One request through the application; a response dict as ``batch._run_group`` expects it."""
    try:
        path, query = batch._target(part.url, created)
        body: bytes | None = part.body
        if _body_refs(part.body):
            body = json.dumps(batch._substitute(json.loads(part.body), created, "body"), ensure_ascii=False).encode()
    except batch._Unresolved as exc:
        return {"id": part.label, "status": exc.status, "body": {"code": exc.status, "type": "error", "message": str(exc)}}
    if not body and part.method in ("GET", "DELETE"):
        body = None
    status, headers, payload = await batch._call(outer, part.method, path, query, part.headers, body)
    if status == 201 and isinstance(payload, dict) and isinstance(payload.get("@iot.id"), int) and part.content_id:
        link = payload.get("@iot.selfLink") or headers.get("location", "")
        entity_path = link[link.find(write.PREFIX):] if write.PREFIX in link else path
        created[part.content_id] = (entity_path, payload["@iot.id"])
    return {"id": part.label, "status": status, "headers": headers, "body": payload}


def _http_part(resp: dict, content_id: str | None) -> tuple[list[str], bytes]:
    """An application/http part holding one response."""
    status = resp["status"]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    headers = resp.get("headers") or {}
    payload = resp.get("body")
    if payload is None:
        data = b""
    elif isinstance(payload, str):          # a text answer (batch._call parses JSON ones)
        data = payload.encode()
    else:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {status} {phrase}".rstrip()]
    if "location" in headers:
        lines.append(f"Location: {headers['location']}")
    if "retry-after" in headers:
        lines.append(f"Retry-After: {headers['retry-after']}")
    if data:
        lines.append(f"Content-Type: {headers.get('content-type', _JSON)}")
    lines.append(f"Content-Length: {len(data)}")
    part_headers = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        part_headers.append(f"Content-ID: {content_id}")
    return part_headers, ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _multipart(parts: list[tuple[list[str], bytes]]) -> tuple[str, bytes]:
    """(boundary, body) of a multipart/mixed of ``parts``, CRLF line ends (RFC 2046)."""
    while True:
        boundary = f"batchresponse_{uuid.uuid4()}"
        if not any(boundary.encode() in body for _, body in parts):
            break
    out = bytearray()
    for headers, body in parts:
        out += f"--{boundary}\r\n".encode() + "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--".encode()
    return boundary, bytes(out)


def _rollback_filler(resp: dict) -> bool:
    """A 424 that ``batch._run_group`` gives the other requests of a failed group."""
    body = resp.get("body")
    return resp["status"] == 424 and isinstance(body, dict) and str(body.get("message", "")).startswith("rolled back")


async def execute(request: Request, settings) -> Response:
    items = await run_in_threadpool(parse, request.headers.get("content-type", ""), await request.body())
    out: list[tuple[list[str], bytes]] = []
    for item in items:
        if isinstance(item, Part):
            out.append(_http_part(await _run(request, item, {}), item.content_id))
            continue
        created: dict[str, tuple[str, int]] = {}   # Content-IDs resolve within their change set only
        failed: set[str] = set()
        by_label = {p.label: p for p in item.requests}

        async def one(r: dict, created=created, by_label=by_label) -> dict:
            return await _run(request, by_label[r["id"]], created)

        responses = await batch._run_group(request, settings, item.label, [{"id": p.label} for p in item.requests],
                                           one, created, failed)
        if item.label in failed:
            failure = next((r for r in responses if not _rollback_filler(r)), responses[-1])
            failure = dict(failure)
            body = failure.get("body")
            if isinstance(body, dict) and isinstance(body.get("message"), str) and failure["status"] != 500:
                failure["body"] = {**body, "message": f"{failure['id']} failed, so {item.label} (a change set) was "
                                                      f"rolled back and nothing of it kept: {body['message']}"}
            out.append(_http_part(failure, by_label[failure["id"]].content_id))
        else:
            boundary, body = _multipart([_http_part(r, by_label[r["id"]].content_id) for r in responses])
            out.append(([f"Content-Type: {MULTIPART}; boundary={boundary}"], body))
    boundary, body = _multipart(out)
    return Response(body + b"\r\n", status_code=200, media_type=f"{MULTIPART}; boundary={boundary}")


__all__ = ["execute", "is_multipart", "parse"]
