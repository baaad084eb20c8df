"""``geotwin cim indoor extract | storeys | rooms``: the rooms (IfcSpace) and storeys of the
registered BIM models (cim_builder.indoor)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from psycopg.errors import UndefinedTable
from rich.table import Table

from cim_builder import ifc, indoor
from cim_builder.cli_common import console, fail, not_migrated, warn
from cim_builder.geo import CimError
from spatial_api import db
from spatial_api.config import get_settings

indoor_app = typer.Typer(help="Rooms (IfcSpace) and storeys of the BIM models: the indoor map.", no_args_is_help=True)


def _storeys(conn, model_id: str) -> list[dict]:
    try:
        storeys = indoor.model_storeys(conn, model_id)
    except CimError as exc:
        fail(str(exc))
    if storeys is None:
        fail(f"no active model {model_id!r} (see `geotwin cim models`)")
    return storeys


def _num(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


@indoor_app.command("extract")
def extract_cmd(
    model_id: str = typer.Argument(..., help="A registered model id (see `geotwin cim models`)."),
    layer: str = typer.Option("buildings", "--layer", help="Footprint layer: the building a model stands on."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Extract a model's rooms and storeys again (add-ifc does it on registering)."""
    try:
        with console.status(f"reading the rooms of {model_id}…"):
            out = ifc.reextract(get_settings(), model_id, buildings_layer=layer)
    except CimError as exc:
        fail(str(exc))
    except UndefinedTable as exc:
        not_migrated(exc)
    for w in out["warnings"]:
        warn(w)
    if as_json:
        print(json.dumps(out, ensure_ascii=False, default=str))
        return
    if not out["rooms"]:
        console.print(f"model {model_id!r}: {out['message']}"
                      + (f"; {out['closed']} earlier room(s) closed" if out["closed"] else ""))
        return
    what = (f"changeset {out['changeset_id']}: {out['added']} added, {out['changed']} changed, "
            f"{out['closed']} closed" if out["changeset_id"] else "unchanged")
    console.print(f"[green]●[/] model {model_id!r}: {out['rooms']} room(s) on {out['storeys']} storey(s) in "
                  f"{indoor.LAYER} ({what}); building {out['building_id'] or '—'}")


@indoor_app.command("storeys")
def storeys_cmd(
    model_id: str = typer.Argument(..., help="A registered model id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A model's storeys, lowest first: elevation, elements, rooms; basements with their bottom."""
    with db.connect(get_settings()) as conn:
        storeys = _storeys(conn, model_id)
    if as_json:
        print(json.dumps(storeys, ensure_ascii=False))
        return
    t = Table("index", "storey", "elevation (m)", "below ground", "elements", "rooms", "bottom (m)", "footprint (m²)",
              title=f"model {model_id}: {len(storeys)} storey(s), heights orthometric")
    for s in storeys:
        t.add_row(str(s["index"]), s["name"], _num(s["elevation"]), "yes" if s["below_ground"] else "",
                  str(s["elements"]), str(s["rooms"]), _num(s["bottom_z"]), _num(s["footprint_area_m2"], 1))
    console.print(t)


@indoor_app.command("rooms")
def rooms_cmd(
    model_id: str = typer.Argument(..., help="A registered model id."),
    storey: Optional[str] = typer.Option(None, "--storey", help="One storey: its name or index (0 = lowest)."),
    as_json: bool = typer.Option(False, "--json", help="Print a GeoJSON FeatureCollection."),
) -> None:
    """A model's rooms (all, or one storey's)."""
    with db.connect(get_settings()) as conn:
        storeys = _storeys(conn, model_id)
        chosen = None
        if storey is not None:
            chosen = indoor.find_storey(storeys, storey)
            if chosen is None:
                fail(f"--storey {storey!r}: model {model_id!r} has no such storey; its storeys: "
                     + ", ".join(f"{s['index']} {s['name']}" for s in storeys))
        feats = indoor.rooms(conn, model_id, storey=chosen)
    if as_json:
        print(json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False))
        return
    if not feats:
        console.print(f"model {model_id!r} has no rooms" + (f" on storey {chosen['name']!r}" if chosen else ""))
        return
    t = Table("storey", "name", "long name", "use", "area (m²)", "height (m)", "below ground", "space id",
              title=f"model {model_id}: {len(feats)} room(s)")
    for f in feats:
        p = f["properties"]
        t.add_row(p.get("storey") or "", p.get("name") or "", p.get("long_name") or "", p.get("use") or "",
                  _num(p.get("area_m2")), _num(p.get("height_m")), "yes" if p.get("below_ground") else "", f["id"])
    console.print(t)


def register(cim_app) -> None:
    cim_app.add_typer(indoor_app, name="indoor")
