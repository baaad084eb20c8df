"""``geotwin db backup FILE`` / ``geotwin db restore FILE``: the whole store — layers and every
feature version, changesets, the imagery catalogue, twin tilesets, supervision runs, cases, keys,
the audit log — as one ``pg_dump`` custom-format archive of geotwin's schema.

Restore is all or nothing: the current schema is renamed aside, the archive restored in one
transaction (``pg_restore --single-transaction``); on success the old schema is dropped, on any
failure it is renamed back, so a bad archive leaves the store exactly as it was. Files on disk that
rows point at (COGs, built tilesets, inspection photos) are not in the archive: back up
``.geotwin/`` (or the folders configured for them) beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, unquote

from spatial_api import db
from spatial_api.config import Settings
from spatial_api.db.cluster import ClusterError, find_pg_bin


class BackupError(RuntimeError):
    pass


def _tool(name: str) -> str:
    """pg_dump / pg_restore of the server's major version when the local cluster's binaries exist."""
    try:
        bindir, _ = find_pg_bin()
        if (bindir / name).exists():
            return str(bindir / name)
    except ClusterError:  # no local PostgreSQL (an external DATABASE_URL): the client tools on PATH
        pass
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools (apt-get install postgresql-client)")
    return found


def _conn_args(url: str) -> tuple[list[str], dict]:
    """libpq arguments and environment for a postgresql:// URL (the password goes in PGPASSWORD)."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-d", parts.path.lstrip("/") or "postgres"]
    if parts.username:
        args += ["-U", unquote(parts.username)]
    return args, env


def backup(settings: Settings, path: Path) -> dict:
    url, schema = db.database_url(settings), db.schema_name(settings)
    args, env = _conn_args(url)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    started = time.perf_counter()
    out = subprocess.run([_tool("pg_dump"), *args, "-Fc", "-n", schema, "-f", str(tmp)], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {out.stderr.strip()}")
    os.replace(tmp, path)  # never a half-written archive under the final name
    return {"file": str(path), "schema": schema, "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 2)}


def restore(settings: Settings, path: Path) -> dict:
    from psycopg import sql

    path = Path(path)
    if not path.is_file():
        raise BackupError(f"{path}: no such file (give an archive written by `geotwin db backup`)")
    url, schema = db.database_url(settings), db.schema_name(settings)
    args, env = _conn_args(url)
    listing = subprocess.run([_tool("pg_restore"), "-l", str(path)], capture_output=True, text=True, env=env)
    if listing.returncode != 0:
        raise BackupError(f"{path} is not a geotwin backup (pg_restore cannot read it: {listing.stderr.strip()})")
    if f"SCHEMA - {schema} " not in listing.stdout and f" SCHEMA - {schema}\n" not in listing.stdout + "\n":
        raise BackupError(f"{path} holds no schema {schema!r}: it was written from another schema "
                          "(set GEOTWIN_DB_SCHEMA to the one it was taken from)")
    aside = f"{schema}_before_restore"
    started = time.perf_counter()
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(aside)))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema), sql.Identifier(aside)))
    out = subprocess.run([_tool("pg_restore"), *args, "--single-transaction", "--no-owner", str(path)],
                         capture_output=True, text=True, env=env)
    with db.connect(settings, autocommit=True) as conn:
        if out.returncode != 0:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            if exists:
                conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(aside),
                                                                          sql.Identifier(schema)))
            raise BackupError(f"restore failed, the store is as it was: {out.stderr.strip()[:2000]}")
        if exists:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(aside)))
    db.migrate(settings)  # an archive from an older geotwin is brought to this version's schema
    return {"file": str(path), "schema": schema, "seconds": round(time.perf_counter() - started, 2)}
