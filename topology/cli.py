"""``geotwin cluster up | down | status | promote | rejoin | env``: every process of a ``cluster.toml`` on this machine.

Imports of the project's modules sit inside the command bodies (``geotwin --help`` starts fast)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

cluster_app = typer.Typer(help="The whole topology from cluster.toml: PostgreSQL primary and streaming replicas, "
                               "API replicas behind nginx, the MQTT broker, sensing workers and the object store.",
                          no_args_is_help=True)

CONFIG = typer.Option(Path("cluster.toml"), "--config", "-c",
                      help="The topology (see cluster.example.toml); paths in it are relative to its folder.")


def _checked(action):
    """``action()`` with the cluster's errors as messages: exit 2 for a wrong configuration or request
    (TopologyError), 1 for a failure on the way (ClusterError, BrokerError)."""
    from sensing.mqtt.broker import BrokerError
    from spatial_api.db.cluster import ClusterError
    from topology.config import TopologyError

    try:
        return action()
    except TopologyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (ClusterError, BrokerError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _controller(config: Path):
    from topology.control import load_controller

    return _checked(lambda: load_controller(config, echo=typer.echo))


@cluster_app.command("up")
def up(config: Path = CONFIG) -> None:
    """Start every role of this machine (idempotent: what runs is left running)."""
    ctl = _controller(config)
    try:
        seconds = _checked(ctl.up)
    except typer.Exit:
        typer.echo("(what started keeps running: fix the cause and run `geotwin cluster up` again, "
                   "or `geotwin cluster down`)", err=True)
        raise
    typer.echo(f"cluster up in {seconds:.1f} s — {ctl.topo.public_url()}")


@cluster_app.command("down")
def down(config: Path = CONFIG,
         purge: bool = typer.Option(False, "--purge", help="Also delete the cluster's data (databases, logs).")) -> None:
    """Stop every role of this machine (the databases keep their data unless --purge)."""
    stopped = _controller(config).down(purge=purge)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cluster_app.command("status")
def status(config: Path = CONFIG, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each role: host:port, pid, healthy, and the replicas' lag (exit 1 when a local role is unhealthy)."""
    from dataclasses import asdict

    rows = _controller(config).status()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("role", "name", "host:port", "pid", "healthy", "detail")
        for r in rows:
            table.add_row(r.role, r.name, r.address, str(r.pid or "—"),
                          "[green]yes[/]" if r.healthy else ("[red]no[/]" if r.local else "[dim]elsewhere[/]"),
                          r.detail)
        Console().print(table)
    if any(r.local and not r.healthy for r in rows):
        raise typer.Exit(1)


@cluster_app.command("promote")
def promote(config: Path = CONFIG,
            replica: str = typer.Option(None, "--replica", "-r",
                                        help="The replica to promote (default: the one that has received the most WAL)."),
            force: bool = typer.Option(False, "--force",
                                       help="Promote --replica even if another replica has received more WAL "
                                            "(its extra commits are lost).")) -> None:
    """After the primary is lost: a replica becomes the primary, the others follow it, and this machine's
    API replicas and workers restart on it (nginx keeps its upstreams). Refused while the primary answers."""
    ctl = _controller(config)
    done = _checked(lambda: ctl.promote(replica, force=force))
    typer.echo(f"promoted {done['promoted']} in {done['seconds']:.1f} s (timeline {done['timeline']}, "
               f"{done['lsn']}); {ctl.topo.public_url()} writes to {ctl.topo.primary.address}")


@cluster_app.command("env")
def env(config: Path = CONFIG) -> None:
    """The environment of the cluster's processes, as `export` lines: `eval "$(geotwin cluster env)"` and
    then `geotwin ingest …`, `geotwin cim build …` or `geotwin supervise run …` work on the cluster
    (writes on its primary; with an object store, `--store s3` puts imagery and tilesets in its bucket)."""
    import shlex

    ctl = _controller(config)
    environment = _checked(ctl.env)
    names = ["DATABASE_URL", "GEOTWIN_DB_SCHEMA", "GEOTWIN_HOME", "GEOTWIN_MQTT_URL",
             "GEOTWIN_MQTT_DIR", "GEOTWIN_PUBLIC_URL", *sorted(k for k in environment if k.startswith("GEOTWIN_S3_"))]
    for name in names:
        if name in environment:  # not the API's read replica: CLI commands read what they write
            typer.echo(f"export {name}={shlex.quote(environment[name])}")


@cluster_app.command("rejoin")
def rejoin(config: Path = CONFIG,
           name: str = typer.Option(None, "--name", "-n", help="The retired primary (default: the only one).")) -> None:
    """After `promote`: the lost primary back as a streaming replica of the new one. Its data is replaced
    by a copy of the new primary (what it committed after the promoted replica's last received WAL was
    never acknowledged with synchronous replication, and is dropped)."""
    ctl = _controller(config)
    done = _checked(lambda: ctl.rejoin(name))
    typer.echo(f"{done['rejoined']} is a replica of {done['primary']} again ({done['seconds']:.1f} s)")
