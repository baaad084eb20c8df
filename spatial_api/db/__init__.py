"""Database access: the URL in use, connections with geotwin's schema first on the search path,
and schema migrations (Alembic)."""

from __future__ import annotations

import contextvars
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import psycopg

from spatial_api.config import Settings, get_settings
from spatial_api.db.cluster import ClusterError, LocalCluster

SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def database_url(settings: Settings | None = None) -> str:
    """The connection URL in use: DATABASE_URL if set, else the project-local cluster."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url

    cluster = LocalCluster(settings)
    if not cluster.password_file.exists():
        raise ClusterError("The local database is not set up: run `geotwin db up` (or `make demo`).")
    return cluster.url()


def schema_name(settings: Settings | None = None) -> str:
    schema = (settings or get_settings()).db_schema
    if not SCHEMA_RE.match(schema):
        raise ValueError(f"GEOTWIN_DB_SCHEMA={schema!r} is not a plain lower-case SQL name")
    return schema


def connect(settings: Settings | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """A new connection whose search_path is geotwin's schema, then public (PostGIS)."""
    settings = settings or get_settings()
    schema = schema_name(settings)
    return psycopg.connect(
        database_url(settings),
        autocommit=autocommit,
        options=f"-c search_path={schema},public -c timezone=UTC",
        application_name="geotwin",
        connect_timeout=CONNECT_TIMEOUT,
    )


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()
#: Seconds: a connection attempt, a wait for a pooled connection, an API statement. A request
#: during a database outage fails fast with 503 instead of hanging; a hostile query is cut off.
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 5.0
API_STATEMENT_TIMEOUT = "30s"


def _primary_pool(settings: Settings | None = None):
    """The primary's connection pool (one per database URL and schema, opened lazily)."""
    from psycopg_pool import ConnectionPool

    settings = settings or get_settings()
    key = (database_url(settings), schema_name(settings))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ConnectionPool(
                key[0], min_size=1, max_size=16, open=True, name="geotwin", timeout=POOL_TIMEOUT,
                # a connection broken by a database restart is noticed and replaced, not handed out
                check=ConnectionPool.check_connection, reconnect_timeout=3600,
                kwargs={"options": f"-c search_path={key[1]},public -c timezone=UTC "
                                   f"-c statement_timeout={API_STATEMENT_TIMEOUT}",
                        "application_name": "geotwin-api", "connect_timeout": CONNECT_TIMEOUT},
            )
        return _POOLS[key]


def connect_like(conn: psycopg.Connection, *, autocommit: bool = False) -> psycopg.Connection:
    """Another connection to the same database, as the same user, with the same search_path."""
    params = conn.info.get_parameters()
    params["password"] = conn.info.password or ""
    for managed in ("application_name", "options"):
        params.pop(managed, None)
    search_path = conn.execute("SHOW search_path").fetchone()[0].replace(" ", "")
    return psycopg.connect(**params, autocommit=autocommit, application_name="geotwin",
                           options=f"-c search_path={search_path} -c timezone=UTC")


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[psycopg.Connection]:
    """A connection in one transaction: committed on success, rolled back on any error."""
    with connect(settings) as conn:  # psycopg commits on normal exit, rolls back on exception
        yield conn


def sqlalchemy_url(settings: Settings | None = None) -> str:
    url = database_url(settings)
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def migrate(settings: Settings | None = None, revision: str = "head") -> str:
    """Bring the schema to ``revision`` (default: the latest). Returns the revision reached."""
    from spatial_api.db.migrations import run_upgrade  # deferred: alembic loads only for a migration

    return run_upgrade(settings or get_settings(), revision)


def current_revision(settings: Settings | None = None) -> str | None:
    settings = settings or get_settings()
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{schema_name(settings)}.alembic_version",)
        ).fetchone()
        if not row or not row[0]:
            return None
        rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return rev[0] if rev else None


# -- reads on a replica, writes on the primary, with read-your-writes ------------------------------
#
# With GEOTWIN_READ_DATABASE_URL set (a hot standby streaming from the primary), handlers that only
# read take their connections from ``pool(settings, read=True)``; everything else stays on the
# primary. A caller's writes are followed by reads of that caller on the primary until the replica
# has replayed them: after a request that may have written (any method but GET / HEAD / OPTIONS)
# :class:`ReadYourWrites` answers with the primary's WAL position (``pg_current_wal_lsn()`` after
# the handler committed) in the ``Geotwin-Write-LSN`` header and a cookie of the same name; a client
# that returns either (browsers return the cookie by themselves) is served from the replica only
# once ``pg_last_wal_replay_lsn()`` there has reached it — else from the primary, after waiting at
# most GEOTWIN_READ_LSN_WAIT_MS (default 0) for the replica. A replica that cannot be reached is left
# alone for REPLICA_RETRY seconds: reads fall back to the primary. Without the variable nothing of
# this is installed and ``pool(settings, read=True)`` is the primary's pool.

READ_URL_ENV = "GEOTWIN_READ_DATABASE_URL"
READ_WAIT_ENV = "GEOTWIN_READ_LSN_WAIT_MS"
LSN_HEADER = "Geotwin-Write-LSN"
LSN_COOKIE = "geotwin_write_lsn"
#: The response header saying which database(s) served the request's reads (primary / replica).
READ_DB_HEADER = "Geotwin-Read-Database"
#: Seconds: a checkout from the replica's pool before falling back to the primary; how long a
#: replica found unreachable is left alone; how long the client keeps the write position.
READ_CHECKOUT_TIMEOUT = 1.0
REPLICA_RETRY = 5.0
LSN_COOKIE_MAX_AGE = 300
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def read_database_url(settings: Settings | None = None) -> str | None:
    """The hot standby's URL for reads (GEOTWIN_READ_DATABASE_URL), or None: every read on the primary."""
    settings = settings or get_settings()
    return getattr(settings, "read_database_url", None) or os.environ.get(READ_URL_ENV) or None


def parse_lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` → an integer (None for anything else: a bad header is ignored, not an error)."""
    m = _LSN_RE.match((text or "").strip())
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16) if m else None


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass
class ReadContext:
    """One request's read routing: the caller's last write position, and which databases served it."""

    min_lsn: int | None = None
    used: set = field(default_factory=set)


_READ_CONTEXT: contextvars.ContextVar[ReadContext | None] = contextvars.ContextVar("geotwin_read", default=None)


class ReadRouter:
    """Connections for reads: the replica's when it is reachable and has replayed the caller's last
    write, else the primary's. Quacks like a pool for ``with router.connection() as conn``."""

    def __init__(self, settings: Settings, url: str):
        from psycopg_pool import ConnectionPool

        self.settings, self.url = settings, url
        schema = schema_name(settings)
        self.replica = ConnectionPool(
            url, min_size=1, max_size=16, open=True, name="geotwin-read", timeout=READ_CHECKOUT_TIMEOUT,
            check=ConnectionPool.check_connection, reconnect_timeout=3600,
            kwargs={"options": f"-c search_path={schema},public -c timezone=UTC "
                               f"-c statement_timeout={API_STATEMENT_TIMEOUT}",
                    "application_name": "geotwin-api-read", "connect_timeout": CONNECT_TIMEOUT})
        self.wait = max(0, int(os.environ.get(READ_WAIT_ENV) or 0)) / 1000
        self._replayed = 0  # the highest replay position seen on the replica (it only grows)
        self._down_until = 0.0
        self.last_error: str | None = None

    @property
    def primary(self):
        return pool(self.settings)

    def replica_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + REPLICA_RETRY
        self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def replay_lsn(self) -> int | None:
        """The replica's replay position now (None: unreachable, or not a standby)."""
        try:
            with self.replica.connection(timeout=READ_CHECKOUT_TIMEOUT) as conn:
                row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        except psycopg.Error as exc:  # PoolTimeout, OperationalError: the replica is not there
            self._mark_down(exc)
            return None
        lsn = parse_lsn(row[0]) if row and row[0] else None
        if lsn is not None and lsn > self._replayed:
            self._replayed = lsn
        return lsn

    def _use_replica(self) -> bool:
        if self.replica_down():
            return False
        ctx = _READ_CONTEXT.get()
        need = ctx.min_lsn if ctx else None
        if need is None or need <= self._replayed:
            return True
        deadline = time.monotonic() + self.wait
        while True:
            lsn = self.replay_lsn()
            if lsn is None:
                return False
            if lsn >= need:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        ctx = _READ_CONTEXT.get()
        conn = None
        if self._use_replica():
            try:
                conn = self.replica.getconn(timeout=READ_CHECKOUT_TIMEOUT)
            except psycopg.Error as exc:  # PoolTimeout is one
                self._mark_down(exc)
        if conn is None:
            if ctx is not None:
                ctx.used.add("primary")
            with self.primary.connection() as conn:
                yield conn
            return
        if ctx is not None:
            ctx.used.add("replica")
        try:
            with conn:  # a pooled connection: commits / rolls back, is not closed
                yield conn
        except psycopg.OperationalError as exc:  # the replica went away under the statement
            self._mark_down(exc)
            raise
        finally:
            self.replica.putconn(conn)


_ROUTERS: dict = {}


def pool(settings: Settings | None = None, *, read: bool = False):
    """A connection pool for the HTTP server (one per database URL and schema, opened lazily).
    ``read=True``: for handlers that only read — the replica's router when GEOTWIN_READ_DATABASE_URL
    is set (see :class:`ReadRouter`), else the same pool."""
    settings = settings or get_settings()
    if read:
        url = read_database_url(settings)
        if url:
            key = (url, schema_name(settings))
            with _POOLS_LOCK:
                if key not in _ROUTERS:
                    _ROUTERS[key] = ReadRouter(settings, url)
                return _ROUTERS[key]
    return _primary_pool(settings)


def read_router(settings: Settings | None = None) -> ReadRouter | None:
    """The replica's router when reads go to a replica, else None."""
    router = pool(settings, read=True)
    return router if isinstance(router, ReadRouter) else None


def current_wal_lsn(settings: Settings | None = None) -> str:
    """The primary's WAL write position now (after a commit: at or past that commit)."""
    with _primary_pool(settings or get_settings()).connection() as conn:
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


class ReadYourWrites:
    """ASGI middleware (installed only with a read replica): reads the caller's write position from
    the ``Geotwin-Write-LSN`` header or cookie into the request's :class:`ReadContext`; after a
    request that may have written, answers with the primary's position in both; names the
    database(s) that served the reads in ``Geotwin-Read-Database``."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    @staticmethod
    def _caller_lsn(scope) -> int | None:
        best = None
        for name, value in scope.get("headers", []):
            if name == b"geotwin-write-lsn":
                lsn = parse_lsn(value.decode("latin-1"))
            elif name == b"cookie":
                lsn = None
                for part in value.decode("latin-1").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == LSN_COOKIE:
                        lsn = parse_lsn(v)
            else:
                continue
            if lsn is not None and (best is None or lsn > best):
                best = lsn
        return best

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool

        ctx = ReadContext(min_lsn=self._caller_lsn(scope))
        token = _READ_CONTEXT.set(ctx)
        wrote = scope["method"] not in SAFE_METHODS

        async def send_with_position(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if wrote and message["status"] < 400:
                    try:
                        lsn = await run_in_threadpool(current_wal_lsn, self.settings)
                    except psycopg.Error:  # the primary is gone: the response says so by itself
                        lsn = None
                    if lsn:
                        headers.append((b"geotwin-write-lsn", lsn.encode()))
                        headers.append((b"set-cookie", f"{LSN_COOKIE}={lsn}; Max-Age={LSN_COOKIE_MAX_AGE}; "
                                                       "Path=/; HttpOnly; SameSite=Lax".encode()))
                if ctx.used:
                    headers.append((b"geotwin-read-database", ",".join(sorted(ctx.used)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_position)
        finally:
            _READ_CONTEXT.reset(token)
