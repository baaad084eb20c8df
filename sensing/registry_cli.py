"""(being built)"""

import typer

devices_app = typer.Typer(help="Devices: list, add, import.", no_args_is_help=True)
