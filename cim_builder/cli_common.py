"""What every ``geotwin cim`` command module shares (``cli.py`` and the issue-17 modules
``underground_cli``, ``clash_cli``, ``indoor_cli``): the two consoles and the way a command fails
or warns. It imports nothing of geotwin at load time, so any of them can import it first."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and leave with exit code 1."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def not_migrated(exc: Exception) -> NoReturn:
    """A missing cim_* table: the schema predates migration 0005."""
    from spatial_api.config import get_settings

    fail(f"schema {get_settings().db_schema!r} has no CIM tables ({str(exc).splitlines()[0]}): "
         "run `geotwin db up` to migrate it")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")
