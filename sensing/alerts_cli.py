"""(being built)"""

import typer

rules_app = typer.Typer(help="Alert rules: list, set.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: list.", no_args_is_help=True)
