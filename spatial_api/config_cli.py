"""``geotwin config set|get|unset|list``: operator settings kept in the store (spatial_api.settings_store).

    geotwin config set home 114.25,22.72,13            # centre (lon, lat in degrees) and zoom
    geotwin config set home 114.05,22.55,114.40,22.82  # a box the first view shows whole
    geotwin config set home layer:streets              # the extent of a layer
    geotwin config get home                            # the stored value, or the default in use
    geotwin config unset home                          # back to the default (the buildings layer)
    geotwin config list

A running server reads a setting where it uses it: no restart. Each change is written to the audit log.
Imports inside the commands are deliberate: a command loads only what it runs, so that
``geotwin --help`` starts fast.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer
from rich.console import Console
from rich.table import Table

from spatial_api import settings_store as store

config_app = typer.Typer(
    help="Operator settings kept in the store (no restart needed). Settings: "
         + "; ".join(f"{k} — {v.summary}: {v.forms}" for k, v in store.KNOWN.items()),
    no_args_is_help=True)
console = Console(soft_wrap=True)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(1)


def _audit(conn, action: str, name: str, detail: dict) -> None:
    from spatial_api.config import author_default
    from spatial_api.security.audit import Entry, record

    record(conn, Entry(datetime.now(timezone.utc), author_default(), "admin", "cli", action, f"settings/{name}",
                       detail=detail))


def _default_text(conn, name: str) -> str:
    if name == "home":
        view = store.default_home(conn)
        if view is None:
            return "no layer holds features yet: the map opens on its own default view"
        return (f"{view['source']}: centre {view['center'][0]:g},{view['center'][1]:g}, zoom {view['zoom']:g}, "
                f"box {','.join(f'{v:g}' for v in view['bbox'])}")
    return "(no default)"


@config_app.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may start with "-"
def set_(name: str = typer.Argument(..., help="Setting name: " + ", ".join(store.KNOWN)),
         value: str = typer.Argument(..., help="The value, e.g. for home: " + store.HOME_FORMS)) -> None:
    """Set NAME to VALUE (checked first: a bad value changes nothing)."""
    from spatial_api import db
    from spatial_api.config import author_default

    try:
        with db.transaction() as conn:
            parsed = store.parse(conn, name, value)
            before = store.get(conn, name)
            saved = store.set(conn, name, parsed, by=author_default())
            _audit(conn, "config-set", name, {"value": parsed, "before": before})
    except store.SettingError as exc:
        _fail(str(exc))
    console.print(f"{name} = {store.describe(name, saved.value)}  (set by {saved.updated_by})")


@config_app.command("get")
def get(name: str = typer.Argument(..., help="Setting name: " + ", ".join(store.KNOWN)),
        as_json: bool = typer.Option(False, "--json", help="Print JSON: value (null when unset) and the default in use.")) -> None:
    """Print NAME's value, or that it is unset and what is used instead."""
    from spatial_api import db

    try:
        store.lookup(name)
    except store.SettingError as exc:
        _fail(str(exc))
    with db.connect() as conn:
        found = store.entry(conn, name)
        effective = store.home_view(conn) if name == "home" else None
        default = None if found else _default_text(conn, name)
    if as_json:
        print(json.dumps({"name": name, "value": found.value if found else None,
                          "updated_at": found.updated_at.isoformat() if found else None,
                          "updated_by": found.updated_by if found else None, "effective": effective},
                         ensure_ascii=False))
        return
    if found:
        console.print(f"{name} = {store.describe(name, found.value)}  (set {found.updated_at:%Y-%m-%d %H:%M} "
                      f"by {found.updated_by})")
    else:
        console.print(f"{name} is not set; in use: {default}")


@config_app.command("unset")
def unset(name: str = typer.Argument(..., help="Setting name: " + ", ".join(store.KNOWN))) -> None:
    """Remove NAME: its default applies again."""
    from spatial_api import db

    try:
        with db.transaction() as conn:
            before = store.get(conn, name)
            removed = store.unset(conn, name)
            if removed:
                _audit(conn, "config-unset", name, {"before": before})
            default = _default_text(conn, name)
    except store.SettingError as exc:
        _fail(str(exc))
    console.print(f"{name} {'unset' if removed else 'was not set'}; in use: {default}")


@config_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every setting geotwin knows: its value (or that it is unset), who set it, when."""
    from spatial_api import db

    with db.connect() as conn:
        stored = {e.name: e for e in store.list_all(conn)}
    if as_json:
        print(json.dumps([{"name": n, "value": stored[n].value if n in stored else None,
                           "updated_at": stored[n].updated_at.isoformat() if n in stored else None,
                           "updated_by": stored[n].updated_by if n in stored else None}
                          for n in sorted({*store.KNOWN, *stored})], ensure_ascii=False))
        return
    table = Table("name", "set", "by", "what")
    table.add_column("value", overflow="fold", min_width=24)
    table.columns.insert(1, table.columns.pop())
    for n in sorted({*store.KNOWN, *stored}):
        e = stored.get(n)
        table.add_row(n, store.describe(n, e.value) if e else "(unset: default)",
                      f"{e.updated_at:%Y-%m-%d %H:%M}" if e else "", e.updated_by if e else "",
                      store.KNOWN[n].summary if n in store.KNOWN else "")
    console.print(table)


__all__ = ["config_app"]
