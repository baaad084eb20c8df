"""PLACEHOLDER (lead, issue 17): replaced by ``geotwin underground …`` and ``geotwin ingest pipes``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Underground utilities and structures.", no_args_is_help=True)


def ingest_pipes() -> None:
    """Load a CJJ 61 pipe survey (placeholder)."""
    raise typer.Exit(2)
