"""Who may see and change what.

- **Callers** are identified by an API key (``Authorization: Bearer gtk_…``, ``X-API-Key: gtk_…``,
  or ``?api_key=gtk_…`` for tile URLs in clients that cannot set headers), by an OIDC bearer token
  from the bureau's identity provider (checked against the operator's JWKS), or are anonymous
  (role ``GEOTWIN_ANONYMOUS_ROLE``, default ``public``). Keys are stored as SHA-256 digests only
  (``keys.py``; ``geotwin keys create|list|revoke``).
- **Roles** (``roles.py``): public, external-platform, planner, land-officer, gis-staff, admin.
  Each sees some access levels (public / internal / restricted); a layer, imagery collection or
  tileset the caller may not see does not exist for them (404, absent from every listing).
  Actions that change something need a role (``require``): 401 without credentials, 403 with a
  role that lacks it.
- **Rate limits** per key (and optionally per anonymous client address), counted across every
  server process and replica in the database (``limits.py``); unknown keys are throttled per
  client address: 429 with Retry-After.
- **No credential is stored or logged**: query strings are redacted (``redact.py``) before they
  reach the audit log or the server's request log.
- **Caching follows the access level**: a response that depends on the caller (anything not
  public was involved, or a permission was checked) is ``Cache-Control: private`` with
  ``Vary: Authorization, X-API-Key`` (the middleware does it); tiles of public layers stay public.
- **Audit** (``audit.py``): every write request and every read of a restricted layer — who, role,
  what, when, from where, status — in ``audit_log``, queryable by admins at ``/admin/audit``.

The middleware (``middleware.py``) resolves the caller once per request and puts it in a context
variable, so any code on the request's path (handlers, thread-pool functions) asks
:func:`current` instead of threading a parameter through every call.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from spatial_api.security.roles import LEVELS, MAY, ROLES, SEES, can_see, highest, may


@dataclass(frozen=True)
class Principal:
    name: str  # key name, OIDC subject / username, or "anonymous"
    role: str
    via: str  # key | oidc | anonymous | cli
    key_id: str | None = None
    rate_per_min: int = 0  # 0: unlimited
    community: str | None = None  # a community worker's community (sensing: the households it sees)

    def sees(self, level: str) -> bool:
        if level != "public":  # everyone sees public things; anything else depends on who asks
            depends_on_caller()
        return can_see(self.role, level)

    def may(self, action: str) -> bool:
        depends_on_caller()
        return may(self.role, action)

    @property
    def authenticated(self) -> bool:
        return self.via in ("key", "oidc", "cli")


ANONYMOUS = Principal("anonymous", "public", "anonymous")


@dataclass
class RequestContext:
    principal: Principal
    client: str | None = None
    restricted: set[str] = field(default_factory=set)  # restricted things read by this request
    #: The answer depends on who asks (something not public was looked at, a permission was
    #: checked): the middleware makes it ``Cache-Control: private`` and ``Vary`` on the credentials.
    varies: bool = False
    #: A room said its answer may be stored by shared caches when nothing above made it vary
    #: (e.g. a tile of a public imagery collection): without a Cache-Control of its own, the
    #: middleware then sends ``public, max-age=0, must-revalidate`` instead of ``private``.
    shareable: bool = False


_CTX: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("geotwin_request", default=None)


def current() -> Principal:
    """The caller of the request being served (anonymous/public outside a request)."""
    ctx = _CTX.get()
    return ctx.principal if ctx else ANONYMOUS


def context() -> RequestContext | None:
    return _CTX.get()


def set_context(ctx: RequestContext):
    return _CTX.set(ctx)


def reset_context(token) -> None:
    _CTX.reset(token)


def depends_on_caller() -> None:
    """Mark the current response as depending on the caller (see :class:`RequestContext`).
    ``Principal.sees`` of a non-public level and ``Principal.may`` do this themselves; code that
    reads the caller otherwise (e.g. ``current().role``) calls it."""
    ctx = _CTX.get()
    if ctx is not None:
        ctx.varies = True


def note_level(level: str) -> None:
    """The response holds (or was decided by) something of this access level: anything but
    ``public`` makes it private to the caller."""
    if level != "public":
        depends_on_caller()


def shareable() -> None:
    """Mark the current response as fit for shared caches unless it depends on the caller."""
    ctx = _CTX.get()
    if ctx is not None:
        ctx.shareable = True


def note_restricted(what: str) -> None:
    """Record that this request read something restricted (the middleware audits it)."""
    ctx = _CTX.get()
    if ctx is not None:
        ctx.restricted.add(what)


class Forbidden(Exception):
    """The caller may not do this: ``status`` 401 (no credentials) or 403 (role lacks it)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def require(action: str) -> Principal:
    """The current caller, if they may take ``action``; else raise :class:`Forbidden`."""
    p = current()
    if p.may(action):
        return p
    roles = ", ".join(sorted(MAY[action]))
    if not p.authenticated:
        raise Forbidden(401, f"{action} needs credentials: send an API key (Authorization: Bearer gtk_…) "
                             f"of a role among {roles}")
    raise Forbidden(403, f"role {p.role!r} ({p.name}) may not {action}; roles allowed: {roles}")


__all__ = ["ANONYMOUS", "Forbidden", "LEVELS", "MAY", "Principal", "ROLES", "RequestContext", "SEES",
           "can_see", "context", "current", "depends_on_caller", "highest", "may", "note_level", "note_restricted",
           "require", "reset_context", "set_context"]
