"""PLACEHOLDER (lead, issue 17): ``geotwin entities …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Geographic entities: stable codes and their representations.", no_args_is_help=True)
