"""The ASGI middleware: identify the caller, apply the rate limit, audit writes and restricted reads,
and make the caching headers fit who may see the answer.

Pure ASGI (no BaseHTTPMiddleware): an anonymous request costs a dict lookup, a key a cached
digest lookup; the database is asked about a key once per ``KEY_TTL`` seconds, and about rate
limits about once per second per busy caller (``limits.py``).

Caching: a response that depends on the caller (``RequestContext.varies``: something not public
was looked at, a permission was checked) — and any response that does not declare itself
``public`` — leaves with ``Cache-Control: private`` and ``Vary: Authorization, X-API-Key``, so a
shared proxy never stores it and a browser does not reuse an anonymous answer once a key is
sent. A ``public`` response that depended on nobody (tiles of public layers, glyphs, sprites)
is left as it is.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

import anyio
import psycopg

from spatial_api import db, security
from spatial_api.security import Principal, RequestContext, keys, redact
from spatial_api.security.audit import AuditWriter, Entry
from spatial_api.security.keys import KEY_RE
from spatial_api.security.limits import FAILED_KEYS_PER_MIN, limiter

log = logging.getLogger(__name__)

KEY_TTL = 5.0  # seconds a key's lookup is trusted (a revoked key stops working within this)
#: An unknown or revoked key stays so (keys carry 160 random bits and are never revived), so a
#: client that keeps sending one costs one lookup per process per this many seconds.
UNKNOWN_KEY_TTL = 600.0
KEY_CACHE_SIZE = 10_000  # keys remembered per process (least recently used forgotten first)
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: No request body may be larger (inspection photos included); endpoints may set lower limits.
MAX_REQUEST_BYTES = 64 << 20
#: The request headers that carry credentials: what a caller-dependent response varies on.
CREDENTIAL_HEADERS = (b"Authorization", b"X-API-Key")


class BodyTooLarge(Exception):
    pass


class AuthError(Exception):
    pass


class Resolver:
    def __init__(self, settings):
        self.settings = settings
        self.anonymous = Principal("anonymous", settings.anonymous_role, "anonymous",
                                   rate_per_min=settings.anonymous_rate_per_min)
        self._keys: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        self._keys_lock = threading.Lock()
        self._oidc = None
        if settings.oidc_jwks:
            # deferred: PyJWT and cryptography (~60 ms to import) load only when an identity provider is set
            from spatial_api.security.oidc import OIDCVerifier

            self._oidc = OIDCVerifier(settings.oidc_jwks, issuer=settings.oidc_issuer,
                                      audience=settings.oidc_audience, role_claim=settings.oidc_role_claim,
                                      community_claim=settings.oidc_community_claim)

    @staticmethod
    def credential(headers: dict[str, str], query: str) -> str | None:
        auth = headers.get("authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("Authorization: use 'Bearer <API key or token>'")
            return value.strip()
        if headers.get("x-api-key"):
            return headers["x-api-key"].strip()
        lowered = query.lower()
        if "api_key=" in lowered or "api%5fkey=" in lowered:
            from urllib.parse import parse_qsl

            for name, value in parse_qsl(query):
                if name.lower() == "api_key" and value:
                    return value
        return None

    def cached(self, cred: str) -> tuple[bool, Principal | None]:
        with self._keys_lock:
            hit = self._keys.get(cred)
            if hit and hit[1] > time.monotonic():
                self._keys.move_to_end(cred)
                return True, hit[0]
        return False, None

    def resolve_key(self, cred: str) -> Principal | None:
        """Blocking: asks the database (once per KEY_TTL per key); None for an unknown or revoked key."""
        with db.pool(self.settings).connection() as conn:
            rec = keys.lookup(conn, cred)
        p = Principal(rec.name, rec.role, "key", rec.key_id, rec.rate_per_min, rec.community) if rec else None
        with self._keys_lock:
            self._keys[cred] = (p, time.monotonic() + (KEY_TTL if p else UNKNOWN_KEY_TTL))
            self._keys.move_to_end(cred)
            while len(self._keys) > KEY_CACHE_SIZE:
                self._keys.popitem(last=False)
        return p

    def forget(self) -> None:
        with self._keys_lock:
            self._keys.clear()

    def resolve_token(self, cred: str) -> Principal:
        if self._oidc is None:
            raise AuthError("not a geotwin API key (gtk_…), and no identity provider is configured "
                            "for bearer tokens (GEOTWIN_OIDC_JWKS)")
        from spatial_api.security.oidc import TokenError  # deferred with OIDCVerifier (above): PyJWT

        try:
            name, role, community = self._oidc.identify(cred)
        except TokenError as exc:
            raise AuthError(str(exc)) from None
        return Principal(name, role, "oidc", community=community)


def _json(status: int, code: str, description: str, headers: list | None = None):
    body = json.dumps({"code": code, "description": description}, ensure_ascii=False).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), (b"vary", b", ".join(CREDENTIAL_HEADERS))]
    return status, hdrs + (headers or []), body


def _retry_after(wait: float) -> list:
    return [(b"retry-after", str(max(1, math.ceil(wait))).encode())]


SHAREABLE_DEFAULT = b"public, max-age=0, must-revalidate"


def cache_headers(headers: list, varies: bool, shareable: bool = False) -> list:
    """The response headers, made private to the caller unless the response is ``public`` and
    depended on nobody: ``Cache-Control`` gets ``private`` (instead of ``public``; ``s-maxage``
    and ``proxy-revalidate``, which only speak to shared caches, are dropped) and ``Vary`` the
    credential headers."""
    cc = vary = None
    for i, (name, _) in enumerate(headers):
        name = name.lower()
        if name == b"cache-control" and cc is None:
            cc = i
        elif name == b"vary" and vary is None:
            vary = i
    if shareable and not varies and cc is None:  # a room vouched for it (security.shareable)
        return [*headers, (b"cache-control", SHAREABLE_DEFAULT)]
    directives = [d.strip() for d in headers[cc][1].split(b",") if d.strip()] if cc is not None else []
    names = {d.split(b"=", 1)[0].strip().lower() for d in directives}
    if b"public" in names and not varies:
        return headers
    out = list(headers)
    if b"public" in names or not names & {b"private", b"no-store"}:
        kept = [d for d in directives
                if d.split(b"=", 1)[0].strip().lower() not in (b"public", b"s-maxage", b"proxy-revalidate")]
        value = b", ".join([b"private", *kept])
        if cc is None:
            out.append((b"cache-control", value))
        else:
            out[cc] = (b"cache-control", value)
    if vary is None:
        out.append((b"vary", b", ".join(CREDENTIAL_HEADERS)))
    else:
        present = {t.strip().lower() for t in out[vary][1].split(b",")}
        missing = [h for h in CREDENTIAL_HEADERS if h.lower() not in present]
        if missing and b"*" not in present:
            out[vary] = (b"vary", b", ".join([out[vary][1], *missing]))
    return out


class SecurityMiddleware:
    def __init__(self, app, settings):
        self.app = app
        self.settings = settings
        self.resolver = Resolver(settings)
        self.limiter = limiter(settings)  # shared by every app of this process on this schema
        self.audit = AuditWriter(settings)
        self._unlimited_logged = 0.0

    def _lookup(self, cred: str, failures: str) -> Principal | None:
        """Blocking: the key's principal; an unknown key counts against its client address."""
        principal = self.resolver.resolve_key(cred)
        if principal is None:
            self._acquire(failures, FAILED_KEYS_PER_MIN)
        return principal

    def _acquire(self, who: str, rate: int) -> float:
        """Blocking: :meth:`SharedLimiter.acquire`. When the shared counts cannot be reached the
        request is served (anything that needs the database fails anyway; cached tiles need no
        protection from it) and the log says so, once a minute."""
        try:
            return self.limiter.acquire(who, rate)
        except psycopg.Error as exc:  # PoolTimeout too
            now = time.monotonic()
            if now >= self._unlimited_logged:
                self._unlimited_logged = now + 60
                log.warning("rate limits are not applied: the shared counters cannot be reached (%s)", exc)
            return 0.0

    async def _reply(self, send, status: int, headers: list, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        client_addr = client[0] if client else None
        try:
            cred = self.resolver.credential(headers, query)
            if cred is None:
                principal = self.resolver.anonymous
            elif cred.startswith("gtk_"):
                found, principal = self.resolver.cached(cred)
                if not found:
                    if not KEY_RE.match(cred):  # malformed: refused without asking anyone
                        raise AuthError("malformed API key (expected gtk_<key id>_<secret>, as "
                                        "`geotwin keys create` printed it)")
                    failures = f"fail:{client_addr}"
                    wait = self.limiter.blocked(failures)
                    if wait:  # too many unknown keys from this address: no more lookups for now
                        return await self._reply(send, *_json(
                            429, "TooManyRequests", f"too many unknown or revoked API keys from {client_addr} "
                            f"(more than {FAILED_KEYS_PER_MIN} a minute): no key from this address is looked up "
                            f"for {math.ceil(wait)} s. Check the key your client sends.", _retry_after(wait)))
                    principal = await anyio.to_thread.run_sync(self._lookup, cred, failures)
                if principal is None:
                    raise AuthError("unknown or revoked API key")
            else:
                principal = await anyio.to_thread.run_sync(self.resolver.resolve_token, cred)
        except AuthError as exc:
            return await self._reply(send, *_json(401, "Unauthorized", f"{exc}. Send a valid key "
                                                  "(Authorization: Bearer gtk_…) or none for public access.",
                                                  [(b"www-authenticate", b'Bearer realm="geotwin"')]))
        if principal.rate_per_min > 0:
            who = (f"key:{principal.key_id}" if principal.key_id else
                   f"anon:{client_addr}" if principal.via == "anonymous" else f"{principal.via}:{principal.name}")
            wait = self.limiter.check(who, principal.rate_per_min)
            if wait is None:  # nothing left claimed in this process: claim more from the shared count
                wait = await anyio.to_thread.run_sync(self._acquire, who, principal.rate_per_min)
            if wait:
                return await self._reply(send, *_json(
                    429, "TooManyRequests", f"rate limit of {principal.rate_per_min} requests per minute reached "
                    f"for {principal.name}; retry in {wait:.1f} s", _retry_after(wait)))
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
            return await self._reply(send, *_json(413, "PayloadTooLarge", f"the request body ({int(declared) >> 20} MB) "
                                                  f"is over the server's limit of {MAX_REQUEST_BYTES >> 20} MB"))
        received = [0]
        inner_receive = receive

        async def receive():  # a chunked body is counted as it arrives, never held whole
            message = await inner_receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > MAX_REQUEST_BYTES:
                    raise BodyTooLarge()
            return message

        ctx = RequestContext(principal, client_addr)
        token = security.set_context(ctx)
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        writing = method in WRITE_METHODS
        status_seen: list[int] = []

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                message["headers"] = cache_headers(message.get("headers") or [], ctx.varies, ctx.shareable)
                if writing:  # committed before the caller sees the response
                    entry = Entry(datetime.now(timezone.utc), principal.name, principal.role, principal.via,
                                  "write", path, method, message["status"], client_addr,
                                  {"query": redact.query(query)} if query else {})
                    await anyio.to_thread.run_sync(self.audit.write_now, entry)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BodyTooLarge:
            if not status_seen:
                await self._reply(send, *_json(413, "PayloadTooLarge", "the request body is over the server's "
                                               f"limit of {MAX_REQUEST_BYTES >> 20} MB"))
        finally:
            security.reset_context(token)
            if ctx.restricted and not writing:
                self.audit.enqueue(Entry(datetime.now(timezone.utc), principal.name, principal.role, principal.via,
                                         "read-restricted", path, method, status_seen[0] if status_seen else None,
                                         client_addr, {"restricted": sorted(ctx.restricted),
                                                       **({"query": redact.query(query)} if query else {})}))
