"""``geotwin entities assign | show | split | merge | retire | link | list``."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Geographic entities: stable codes and their representations.", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _default(value):
    return value.isoformat() if isinstance(value, (date, datetime)) else str(value)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _ref(text: str, option: str) -> tuple[str, str]:
    layer, sep, fid = text.partition("/")
    if not sep or not layer or not fid:
        _fail(f"{option} {text!r}: write LAYER/FID, e.g. buildings/B0000012")
    return layer, fid


_FLAGS = {"layer": "LAYER", "entity_type": "--type", "type": "--type", "key": "--key", "ref_layer": "--ref-layer",
          "match": "--match", "valid_from": "--valid-from", "tolerance_m": "--tolerance", "into": "--into",
          "codes": "CODES", "code": "CODE", "kind": "--kind", "source": "--source"}


def _run(fn):
    from spatial_api.entities import EntityError

    try:
        return fn()
    except EntityError as exc:
        flag = _FLAGS.get(exc.parameter)
        _fail(f"{flag} {exc.detail}" if flag else str(exc))


@app.command("assign")
def assign_cmd(
    layer: str = typer.Argument(..., help="The layer whose features get entity codes."),
    entity_type: str = typer.Option(..., "--type", "-t", help="building | parcel | road | manhole | pipe_segment | device | "
                                    "underground_structure | water_body (or 建筑物, JZ …)."),
    key: Optional[str] = typer.Option(None, "--key", help="Column holding entity codes (or, with --ref-layer, keys of that layer's features)."),
    ref_layer: Optional[str] = typer.Option(None, "--ref-layer", help="Take the entity of the feature of this layer whose key the --key column holds."),
    match: Optional[str] = typer.Option(None, "--match", help="new (default) | key (implied by --key) | geometry."),
    tolerance: float = typer.Option(2.0, "--tolerance", help="Geometric matching of points and lines: metres."),
    valid_from: Optional[str] = typer.Option(None, "--valid-from", help="Links valid from (YYYY-MM-DD). Default: each feature's first version."),
    author: Optional[str] = typer.Option(None, "--author"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would happen; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Give a layer's features their geographic entities: new codes, by key, or by geometric matching."""
    from spatial_api.entities import assign

    how = match or ("key" if key else "new")
    report = _run(lambda: assign(layer, entity_type=entity_type, key=key, ref_layer=ref_layer, match=how,
                                 valid_from=valid_from, author=author, dry_run=dry_run, tolerance_m=tolerance))
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, default=_default))
        return
    counts = report.counts()
    table = Table(title=f"{layer} → {report.type} entities ({how}{', dry run' if dry_run else ''})"
                  + (f", changeset {report.changeset_id}" if report.changeset_id and not dry_run else ""))
    for col in counts:
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:,}" for v in counts.values()))
    console.print(table)
    for a in report.ambiguous[:50]:
        cands = ", ".join(f"{c['code']} ({c['score']})" for c in a["candidates"])
        console.print(f"[yellow]ambiguous[/] {a['fid']}: {a['reason']}; candidates {cands}")
    for u in report.unresolved[:50]:
        console.print(f"[yellow]unresolved[/] {u['fid']} (key {u['key']!r}): {u['reason']}")
    more = max(0, len(report.ambiguous) - 50) + max(0, len(report.unresolved) - 50)
    if more:
        console.print(f"… and {more} more (use --json for all)")


@app.command("show")
def show_cmd(code: str, as_of: Optional[str] = typer.Option(None, "--as-of", help="As of this date (YYYY-MM-DD)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """An entity with its representations as of a date, its life and lineage."""
    from spatial_api import db
    from spatial_api.api import time as timepolicy
    from spatial_api.config import get_settings
    from spatial_api.entities import EntityError, describe

    settings = get_settings()
    try:
        at = timepolicy.to_instant(as_of, "--as-of", day="end", tz=settings.timezone) if as_of else None
    except timepolicy.TimeError as exc:
        _fail(f"--as-of {as_of!r}: {exc.message}")
    with db.connect(settings) as conn:
        try:
            doc = describe(conn, code, at, visible=lambda layer: True)
        except EntityError as exc:
            _fail(str(exc))
    if as_json:
        print(json.dumps(doc, ensure_ascii=False, default=_default, indent=1))
        return
    life = doc["life"]
    console.print(f"[bold]{doc['code']}[/] {doc['typeTitle']['zh']} ({doc['type']})" + (f" {doc['name']}" if doc["name"] else "")
                  + f"  {life['validFrom'][:10]} – {(life['validTo'] or '')[:10] or 'now'}"
                  + ("" if doc["alive"] else "  [red](not alive at that date)[/]"))
    for side in ("parents", "children"):
        for r in doc["lineage"][side]:
            console.print(f"  {'from' if side == 'parents' else 'into'} {r['code']} ({r['relation']}, {r['validFrom'][:10]})")
    table = Table(title="representations" + (f" as of {as_of}" if as_of else ""))
    for col in ("kind", "where", "valid from", "detail"):
        table.add_column(col)
    for rep in doc["representations"]:
        if rep["kind"] == "feature":
            v = rep.get("version")
            where, detail = f"{rep['layer']}/{rep['fid']}", (f"v{v['vid']}, {len(rep['versions'])} versions" if v else "no version then")
        else:
            where = str(rep.get("tileset") or rep.get("model") or rep.get("thing") or rep.get("key") or "")
            detail = ", ".join(f"{k}={v}" for k, v in rep.items() if k in ("content", "device_id", "status", "name", "elements"))
        table.add_row(rep["kind"] + (" (primary)" if rep.get("primary") else ""), where, str(rep.get("validFrom") or "")[:10], detail)
    console.print(table)


@app.command("split")
def split_cmd(code: str, into: list[str] = typer.Option(..., "--into", help="LAYER/FID of each new part (repeat)."),
              valid_from: str = typer.Option(..., "--valid-from", help="Date of the split (YYYY-MM-DD)."),
              author: Optional[str] = typer.Option(None, "--author"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Retire an entity and create one per part, with lineage."""
    from spatial_api.entities import split

    out = _run(lambda: split(code, into=[_ref(t, "--into") for t in into], valid_from=valid_from, author=author))
    if as_json:
        print(json.dumps(out, ensure_ascii=False, default=_default))
        return
    console.print(f"{out['parent']} split into {', '.join(out['children'])} (changeset {out['changeset_id']})")


@app.command("merge")
def merge_cmd(codes: list[str] = typer.Argument(..., help="The entities merged (two or more)."),
              into: str = typer.Option(..., "--into", help="LAYER/FID of the merged feature."),
              valid_from: str = typer.Option(..., "--valid-from", help="Date of the merge (YYYY-MM-DD)."),
              author: Optional[str] = typer.Option(None, "--author"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Retire several entities and create the one they became, with lineage."""
    from spatial_api.entities import merge

    out = _run(lambda: merge(codes, into=_ref(into, "--into"), valid_from=valid_from, author=author))
    if as_json:
        print(json.dumps(out, ensure_ascii=False, default=_default))
        return
    console.print(f"{', '.join(out['parents'])} merged into {out['child']} (changeset {out['changeset_id']})")


@app.command("retire")
def retire_cmd(code: str, valid_from: str = typer.Option(..., "--valid-from", help="Date it ceased to exist."),
               author: Optional[str] = typer.Option(None, "--author")) -> None:
    """Retire an entity (its code is kept, never reused)."""
    from spatial_api.entities import retire

    out = _run(lambda: retire(code, valid_from=valid_from, author=author))
    console.print(f"{out['code']} retired from {valid_from} (changeset {out['changeset_id']})")


@app.command("link")
def link_cmd(code: str, kind: str = typer.Option(..., "--kind", help="feature | bim_model | bim_element | sta_thing"),
             source: str = typer.Option(..., "--source", help="layer, model id, or 'sta'"),
             key: str = typer.Option(..., "--key", help="fid, model id, GlobalId or Thing id"),
             valid_from: Optional[str] = typer.Option(None, "--valid-from"),
             author: Optional[str] = typer.Option(None, "--author")) -> None:
    """Link one representation to an entity by hand (e.g. a BIM model to its building)."""
    from spatial_api.entities import link

    out = _run(lambda: link(code, kind=kind, source=source, key=key, valid_from=valid_from, author=author))
    console.print(f"{out['code']}: {kind} {source}/{key} " + ("already linked" if out["already"] else f"linked (changeset {out['changeset_id']})"))


@app.command("list")
def list_cmd(entity_type: Optional[str] = typer.Option(None, "--type", "-t"),
             as_of: Optional[str] = typer.Option(None, "--as-of"), limit: int = typer.Option(50, "--limit"),
             offset: int = typer.Option(0, "--offset"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Entities valid at a date (default now), by code."""
    from spatial_api import db
    from spatial_api.api import time as timepolicy
    from spatial_api.config import get_settings
    from spatial_api.entities import check_type, listing

    settings = get_settings()
    kind = _run(lambda: check_type(entity_type)) if entity_type else None
    try:
        at = timepolicy.to_instant(as_of, "--as-of", day="end", tz=settings.timezone) if as_of else None
    except timepolicy.TimeError as exc:
        _fail(f"--as-of {as_of!r}: {exc.message}")
    with db.connect(settings) as conn:
        layers = [r[0] for r in conn.execute("SELECT name FROM layers")]
        rows, more = listing(conn, at=at, visible_layers=layers, entity_type=kind, limit=limit, offset=offset)
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k != "geometry"} for r in rows], ensure_ascii=False, default=_default))
        return
    table = Table(title="entities" + (f" as of {as_of}" if as_of else ""))
    for col in ("code", "type", "name", "primary", "valid from", "valid to"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["code"], r["type"], r["name"] or "", f"{r['layer'] or ''}/{r['fid'] or ''}",
                      r["valid_from"].date().isoformat(), r["valid_to"].date().isoformat() if r["valid_to"] else "")
    console.print(table)
    if more:
        console.print(f"more: --offset {offset + limit}")
