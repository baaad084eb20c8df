"""``geotwin``: the command line. Each sub-command group lives with the package it drives.

Imports inside the commands are deliberate: a command loads only what it runs (pandas, pyogrio,
rasterio, the database driver …), so that ``geotwin --help`` and each command start fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from datetime import date, datetime

import typer
from rich.console import Console
from rich.table import Table

from spatial_api.config_cli import config_app
from spatial_api.ingest.cli import ingest_app, layers_app
from spatial_api.rooms import command_groups, ingest_commands
from spatial_api.security.cli import keys_app
from spatial_api.objectstore.cli import s3_app

console = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are copied into tickets: no hard wraps

app = typer.Typer(
    name="geotwin",
    help="geotwin: spatio-temporal GIS and CIM digital-twin server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: the project-local PostGIS cluster and schema migrations.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(layers_app, name="layers")
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(s3_app, name="s3")


def _add_rooms() -> None:
    """Command groups of the rooms (``geotwin.commands`` entry points: demo, supervise, cim …)."""
    for name, group in command_groups():
        app.add_typer(group, name=name)
    for name, command in ingest_commands():  # `geotwin ingest pipes` …
        ingest_app.command(name)(command)


_add_rooms()


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@db_app.command("up")
def db_up() -> None:
    """Create / start the local cluster (unless DATABASE_URL is set) and migrate the schema."""
    from spatial_api import db
    from spatial_api.config import get_settings
    from spatial_api.db.cluster import ClusterError, LocalCluster

    settings = get_settings()
    try:
        if settings.uses_local_cluster:
            cluster = LocalCluster(settings)
            fresh = not cluster.initialised
            with console.status("starting the local PostGIS cluster…"):
                cluster.up()
            console.print(f"[green]●[/] local PostGIS {'created and ' if fresh else ''}running on "
                          f"127.0.0.1:{cluster.port} (data in {cluster.data_dir})")
        else:
            console.print("[green]●[/] using DATABASE_URL")
        revision = db.migrate(settings)
    except ClusterError as exc:
        _fail(str(exc))
    except Exception as exc:  # a connection problem the user can fix
        import psycopg

        if isinstance(exc, psycopg.OperationalError) or isinstance(getattr(exc, "orig", None), psycopg.OperationalError):
            _fail(f"cannot reach the database: {exc}. Check DATABASE_URL / `geotwin db status`.")
        raise
    console.print(f"[green]●[/] schema {settings.db_schema!r} at revision {revision}")


@db_app.command("down")
def db_down() -> None:
    """Stop the local cluster (its data stays)."""
    from spatial_api.config import get_settings
    from spatial_api.db.cluster import LocalCluster

    settings = get_settings()
    if not settings.uses_local_cluster:
        console.print("DATABASE_URL is set: geotwin does not manage that database.")
        return
    stopped = LocalCluster(settings).stop()
    console.print("stopped" if stopped else "not running")


@db_app.command("status")
def db_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the database reachable, at which schema revision, with how many layers."""
    from spatial_api import db
    from spatial_api.config import get_settings
    from spatial_api.db.cluster import LocalCluster
    from spatial_api.db.migrations import head_revision

    settings = get_settings()
    info: dict = {"database": "external (DATABASE_URL)" if settings.database_url else "local cluster",
                  "schema": settings.db_schema, "head_revision": head_revision()}
    if settings.uses_local_cluster:
        st = LocalCluster(settings).status()
        info.update(initialised=st.initialised, running=st.running, port=st.port,
                    data_dir=str(st.data_dir), postgresql=st.pg_version)
    try:
        info["revision"] = db.current_revision(settings)
        with db.connect(settings) as conn:
            info["postgis"] = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
            info["layers"] = conn.execute(
                "SELECT count(*) FROM layers").fetchone()[0] if info["revision"] else 0
        info["reachable"] = True
    except Exception as exc:  # status reports, it does not fail
        info["reachable"] = False
        info["problem"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if as_json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        table = Table(show_header=False)
        for k, v in info.items():
            table.add_row(k, str(v))
        console.print(table)
    if not info["reachable"]:
        raise typer.Exit(1)


@db_app.command("url")
def db_url() -> None:
    """Print the connection URL in use."""
    from spatial_api import db
    from spatial_api.db.cluster import ClusterError

    try:
        print(db.database_url())
    except ClusterError as exc:
        _fail(str(exc))


@db_app.command("backup")
def db_backup(path: Path = typer.Argument(..., help="Archive to write (pg_dump custom format)."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Back up the whole store (layers with every version, changesets, catalogue, runs, cases, keys, audit)."""
    from spatial_api.config import get_settings
    from spatial_api.db.backup import BackupError, backup

    try:
        info = backup(get_settings(), path)
    except BackupError as exc:
        _fail(str(exc))
    print(json.dumps(info) if as_json else f"backed up schema {info['schema']} to {info['file']} "
          f"({info['bytes'] / 1e6:.1f} MB, {info['seconds']} s)")


@db_app.command("restore")
def db_restore(path: Path = typer.Argument(..., help="Archive written by `geotwin db backup`."),
               yes: bool = typer.Option(False, "--yes", help="Replace the current store without asking.")) -> None:
    """Replace the store with a backup (all or nothing: a failed restore leaves the store as it was)."""
    from spatial_api.config import get_settings
    from spatial_api.db.backup import BackupError, restore

    if not yes and not typer.confirm(f"replace the whole store with {path}?"):
        raise typer.Exit(1)
    try:
        info = restore(get_settings(), path)
    except BackupError as exc:
        _fail(str(exc))
    print(f"restored schema {info['schema']} from {info['file']} ({info['seconds']} s)")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    workers: int = typer.Option(1, help="Worker processes (production: one per core)."),
    reload: bool = typer.Option(False, help="Reload on code changes (development)."),
) -> None:
    """Start the HTTP server."""
    import uvicorn

    uvicorn.run("spatial_api.app:create_app", factory=True, host=host, port=port,
                workers=workers, reload=reload, log_level="info")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


def json_default(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)
