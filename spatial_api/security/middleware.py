"""The ASGI middleware: identify the caller, apply the rate limit, audit writes and restricted reads.

Pure ASGI (no BaseHTTPMiddleware): an anonymous request costs a dict lookup, a key a cached
digest lookup; the database is asked about a key once per ``KEY_TTL`` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import anyio

from spatial_api import security
from spatial_api.security import Principal, RequestContext
from spatial_api.security.audit import AuditWriter, Entry

KEY_TTL = 5.0  # seconds a key's lookup is trusted (a revoked key stops working within this)
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: No request body may be larger (inspection photos included); endpoints may set lower limits.
MAX_REQUEST_BYTES = 64 << 20


class BodyTooLarge(Exception):
    pass


class AuthError(Exception):
    pass


class RateLimiter:
    """Token buckets: ``rate`` requests per minute, bursts up to a minute's worth."""

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str, rate_per_min: int) -> float:
        """0 if allowed, else the seconds to wait."""
        if rate_per_min <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (float(rate_per_min), now))
            tokens = min(float(rate_per_min), tokens + (now - last) * rate_per_min / 60.0)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) * 60.0 / rate_per_min


class Resolver:
    def __init__(self, settings):
        self.settings = settings
        self.anonymous = Principal("anonymous", settings.anonymous_role, "anonymous",
                                   rate_per_min=settings.anonymous_rate_per_min)
        self._keys: dict[str, tuple[Principal | None, float]] = {}
        self._oidc = None
        if settings.oidc_jwks:
            from spatial_api.security.oidc import OIDCVerifier

            self._oidc = OIDCVerifier(settings.oidc_jwks, issuer=settings.oidc_issuer,
                                      audience=settings.oidc_audience, role_claim=settings.oidc_role_claim)

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
        if "api_key=" in query:
            from urllib.parse import parse_qs

            values = parse_qs(query).get("api_key")
            if values:
                return values[0]
        return None

    def cached(self, cred: str) -> tuple[bool, Principal | None]:
        hit = self._keys.get(cred)
        if hit and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def resolve_key(self, cred: str) -> Principal:
        """Blocking: asks the database (once per KEY_TTL per key)."""
        from spatial_api import db
        from spatial_api.security import keys

        with db.pool(self.settings).connection() as conn:
            rec = keys.lookup(conn, cred)
        p = Principal(rec.name, rec.role, "key", rec.key_id, rec.rate_per_min) if rec else None
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[cred] = (p, time.monotonic() + KEY_TTL)
        if p is None:
            raise AuthError("unknown or revoked API key")
        return p

    def forget(self) -> None:
        self._keys.clear()

    def resolve_token(self, cred: str) -> Principal:
        from spatial_api.security.oidc import TokenError

        if self._oidc is None:
            raise AuthError("not a geotwin API key (gtk_…), and no identity provider is configured "
                            "for bearer tokens (GEOTWIN_OIDC_JWKS)")
        try:
            name, role = self._oidc.verify(cred)
        except TokenError as exc:
            raise AuthError(str(exc)) from None
        return Principal(name, role, "oidc")


def _json(status: int, code: str, description: str, headers: list | None = None):
    body = json.dumps({"code": code, "description": description}, ensure_ascii=False).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, hdrs + (headers or []), body


class SecurityMiddleware:
    def __init__(self, app, settings):
        self.app = app
        self.settings = settings
        self.resolver = Resolver(settings)
        self.limiter = RateLimiter()
        self.audit = AuditWriter(settings)

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
                    principal = await anyio.to_thread.run_sync(self.resolver.resolve_key, cred)
                elif principal is None:
                    raise AuthError("unknown or revoked API key")
            else:
                principal = await anyio.to_thread.run_sync(self.resolver.resolve_token, cred)
        except AuthError as exc:
            return await self._reply(send, *_json(401, "Unauthorized", f"{exc}. Send a valid key "
                                                  "(Authorization: Bearer gtk_…) or none for public access.",
                                                  [(b"www-authenticate", b'Bearer realm="geotwin"')]))
        bucket = principal.key_id or principal.name if principal.via != "anonymous" else f"ip:{client_addr}"
        wait = self.limiter.allow(bucket, principal.rate_per_min)
        if wait:
            return await self._reply(send, *_json(
                429, "TooManyRequests", f"rate limit of {principal.rate_per_min} requests per minute reached "
                f"for {principal.name}; retry in {wait:.1f} s", [(b"retry-after", str(max(1, round(wait))).encode())]))
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
                if writing:  # committed before the caller sees the response
                    entry = Entry(datetime.now(timezone.utc), principal.name, principal.role, principal.via,
                                  "write", path, method, message["status"], client_addr,
                                  {"query": query} if query else {})
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
                                                       **({"query": query} if query else {})}))
