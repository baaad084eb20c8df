"""(being built)"""

import typer

app = typer.Typer(help="The MQTT broker (Debian's mosquitto) and the ingestion worker.", no_args_is_help=True)


@app.command()
def status() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
