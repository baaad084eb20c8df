"""Database access: the URL in use, connections with geotwin's schema first on the search path,
and schema migrations (Alembic)."""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
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


def pool(settings: Settings | None = None):
    """A connection pool for the HTTP server (one per database URL and schema, opened lazily)."""
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
