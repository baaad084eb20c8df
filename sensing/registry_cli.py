"""``geotwin sensing devices list|add|import|retire|types``: the device registry from the command line.

The operator at the command line has the database's rights: the commands see every device (the
household data itself is never printed by ``list``). Writes are recorded in the audit log. An
added device's MQTT password is printed once.

Imports of the project's modules sit inside the command bodies on purpose (``geotwin --help``
starts fast)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

devices_app = typer.Typer(help="Devices: list, add, import, retire (types: `geotwin sensing devices types`).",
                          no_args_is_help=True)
console = Console(soft_wrap=True)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {message}", highlight=False, markup=False)
    raise typer.Exit(1)


def _operator():
    from spatial_api.config import author_default
    from spatial_api.security import Principal

    return Principal(author_default(), "admin", "cli")


def _audit(conn, action: str, target: str, detail: dict) -> None:
    from spatial_api.config import author_default
    from spatial_api.security.audit import Entry, record

    record(conn, Entry(datetime.now(timezone.utc), author_default(), "admin", "cli", action, target, detail=detail))


def _print_added(added: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([a.as_dict() for a in added], ensure_ascii=False))
        return
    table = Table("device", "thing", "datastreams", "mqtt user", "mqtt password (shown only now)")
    for a in added:
        table.add_row(a.device_id, str(a.thing_id), ", ".join(f"{k}={v}" for k, v in a.datastreams.items()),
                      a.mqtt_username or "", a.mqtt_password or "")
    console.print(table)


@devices_app.command("types")
def types_(as_json: bool = typer.Option(False, "--json")) -> None:
    """The device types and the Datastreams a device of each type gets."""
    from sensing.devices import catalogue

    cat = catalogue()
    if as_json:
        print(json.dumps(cat, ensure_ascii=False))
        return
    table = Table("type", "label", "interval", "offline after", "datastreams")
    for t in cat:
        table.add_row(t["type"], t["label"], f"{t['expected_interval_s'] // 60} min", f"{t['offline_after']} ×",
                      ", ".join(f"{s['name']} ({s['unit']['symbol'] or '真/假'})" for s in t["datastreams"]))
    console.print(table)


@devices_app.command("list")
def list_(type_: str = typer.Option(None, "--type", help="water-meter | manhole-cover | hydrant-pressure | "
                                                           "traffic-counter"),
          status: str = typer.Option(None, "--status", help="online | offline | unknown"),
          community: str = typer.Option(None, "--community"),
          street: str = typer.Option(None, "--street"),
          limit: int = typer.Option(1000, "--limit", min=1),
          all_: bool = typer.Option(False, "--all", help="Include retired devices."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """The devices with their status (last seen, battery, online/offline/unknown)."""
    from sensing import devices
    from spatial_api import db

    try:
        with db.connect() as conn:
            rows, total = devices.listing(conn, _operator(), type=type_, status=status, community=community,
                                          street=street, limit=limit, include_retired=all_)
    except devices.DeviceError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"devices": [devices.feature(r)["properties"] | {"lon": r["lon"], "lat": r["lat"]}
                                      for r in rows], "total": total}, ensure_ascii=False))
        return
    table = Table("device", "type", "name", "community", "building", "status", "last seen", "battery", "alerts")
    for r in rows:
        table.add_row(r["device_id"], devices.TYPES[r["type"]].label if r["type"] in devices.TYPES else r["type"],
                      r["name"] or "", r["community"] or "", r["building_id"] or "",
                      r["status"] + (" (retired)" if r["retired_at"] else ""),
                      f"{r['last_seen']:%Y-%m-%d %H:%M}" if r["last_seen"] else "",
                      f"{r['battery']:.0f} %" if r["battery"] is not None else "", str(r["open_alerts"]))
    console.print(table)
    if total > len(rows):
        console.print(f"{len(rows)} of {total} shown (--limit)")


@devices_app.command("add")
def add(device_id: str = typer.Argument(..., help="The device's id, e.g. WM-BT-0001 (also its MQTT user name)."),
        type_: str = typer.Option(..., "--type", help="water-meter | manhole-cover | hydrant-pressure | traffic-counter"),
        name: str = typer.Option(None, "--name"),
        community: str = typer.Option(None, "--community", help="e.g. 坂田社区 (required for restricted devices)"),
        street: str = typer.Option(None, "--street"),
        building: str = typer.Option(None, "--building", help="building_id: the point defaults to the building's"),
        address: str = typer.Option(None, "--address"),
        lon: float = typer.Option(None, "--lon"), lat: float = typer.Option(None, "--lat"),
        installed_on: str = typer.Option(None, "--installed-on", help="YYYY-MM-DD"),
        restricted: bool = typer.Option(None, "--restricted/--not-restricted",
                                        help="A household (personal data); default: restricted when --household"),
        household: str = typer.Option(None, "--household", help="JSON, or @file.json: {resident, family, notes}"),
        interval: str = typer.Option(None, "--interval", help="Expected reporting interval, e.g. 30 (minutes), 1h"),
        offline_after: int = typer.Option(None, "--offline-after", help="Offline after this many missed intervals"),
        no_credential: bool = typer.Option(False, "--no-credential", help="Do not issue an MQTT credential."),
        as_json: bool = typer.Option(False, "--json")) -> None:
    """Register a device: its STA Thing, Location, Datastreams and MQTT credential (password shown once)."""
    from sensing import devices
    from spatial_api import db

    if household and household.startswith("@"):
        try:
            household = Path(household[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"--household {household}: {exc.strerror}")
    spec = {"device_id": device_id, "type": type_, "name": name, "community": community, "street": street,
            "building_id": building, "address": address, "lon": lon, "lat": lat, "installed_on": installed_on,
            "restricted": restricted, "household": household, "expected_interval": interval,
            "offline_after": offline_after}
    spec = {k: v for k, v in spec.items() if v is not None}
    try:
        with db.transaction() as conn:
            added = devices.add(conn, spec, issue_credential=not no_credential)
            _audit(conn, "sensing-device-add", f"sensing/devices/{device_id}", {"type": type_})
    except devices.DeviceError as exc:
        _fail(f"device {device_id}: {exc}")
    _print_added([added], as_json)


@devices_app.command("import")
def import_(path: Path = typer.Argument(..., help="A CSV (UTF-8, header row: device_id, type, name, community, "
                                                  "street, building_id, address, lon, lat, installed_on, restricted, "
                                                  "household (JSON), expected_interval, offline_after) or a GeoJSON "
                                                  "FeatureCollection of Points with those properties."),
            no_credential: bool = typer.Option(False, "--no-credential", help="Do not issue MQTT credentials."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Register every device of a file, or none: every bad row is named."""
    from sensing import devices
    from spatial_api import db

    if not path.is_file():
        _fail(f"{path}: no such file")
    try:
        with db.transaction() as conn:
            added = devices.import_file(conn, path, issue_credential=not no_credential)
            _audit(conn, "sensing-device-import", f"sensing/devices?file={path.name}",
                   {"devices": [a.device_id for a in added]})
    except devices.DeviceError as exc:
        _fail(f"{path.name}: {exc}")
    if not as_json:
        console.print(f"imported {len(added)} device(s) from {path.name}")
    _print_added(added, as_json)


@devices_app.command("retire")
def retire(device_id: str = typer.Argument(...)) -> None:
    """Retire a device: it leaves listings and status; its readings stay; its MQTT credential is revoked."""
    from sensing import devices
    from spatial_api import db

    try:
        with db.transaction() as conn:
            devices.retire(conn, device_id)
            _audit(conn, "sensing-device-retire", f"sensing/devices/{device_id}", {})
    except (devices.DeviceError, devices.NotFound) as exc:
        _fail(str(exc).strip("'\""))
    console.print(f"retired {device_id}")
