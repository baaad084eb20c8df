"""``geotwin sensing``: devices, rules, alerts, the live simulator.

Imports of the project's modules sit inside the command bodies on purpose (``geotwin --help``
starts fast)."""

from __future__ import annotations

import typer

from sensing.alerts_cli import alerts_app, rules_app
from sensing.registry_cli import devices_app
from sensing.simulator import simulate

app = typer.Typer(help="IoT sensing: devices, alert rules, alerts, the live simulator.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(rules_app, name="rules")
app.add_typer(alerts_app, name="alerts")
app.command("simulate")(simulate)
