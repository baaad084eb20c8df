"""``geotwin ingest vector`` and ``geotwin layers list | history | diff | show``.

Imports inside the commands are deliberate: a command loads only what it runs (pandas, pyogrio,
rasterio, the database driver …), so that ``geotwin --help`` and each command start fast."""

from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from spatial_api.api import time as timepolicy
from spatial_api.ingest.types import IngestError
from spatial_api.store.types import StoreError
from spatial_api.config import get_settings

console = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are copied into tickets: no hard wraps

ingest_app = typer.Typer(help="Load files into layers (every load is a changeset).", no_args_is_help=True)
layers_app = typer.Typer(help="The layer registry and each layer's history.", no_args_is_help=True)

PHASES = {"read": "reading, reprojecting, validating", "store": "storing", "compare": "comparing with the stored state",
          "index": "indexing"}


def _json_default(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _local(value: datetime) -> datetime:
    """A stored instant in the district's time zone (dates are meant there)."""
    return timepolicy.local(value, get_settings().timezone)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@ingest_app.command("vector")
def ingest_vector_cmd(
    path: Path = typer.Argument(..., help="GeoJSON, GeoPackage, Shapefile (.shp or .zip), CSV (WKT or lon/lat), FileGDB (.gdb), KML."),
    layer: str = typer.Option(..., "--layer", "-l", help="Target layer name (created if new)."),
    key: Optional[str] = typer.Option(None, "--key", "-k", help="Field identifying a feature across versions (e.g. BSM). GeoJSON: --key id takes the features' own \"id\" member where they carry one."),
    mode: str = typer.Option("replace", "--mode", "-m", help="replace: the file is the new state; append: new features only; upsert: add and update, close nothing."),
    valid_from: Optional[str] = typer.Option(None, "--valid-from", help="Date the file's state became true (YYYY-MM-DD). Default: now."),
    crs: Optional[str] = typer.Option(None, "--crs", help="The file's CRS if missing or wrong: EPSG:4547, a PROJ string or WKT (local grids)."),
    from_gcj02: bool = typer.Option(False, "--from-gcj02", help="Coordinates are GCJ-02 (Chinese web maps): convert to CGCS2000."),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="Text encoding of a shapefile without .cpg (e.g. GBK). Default: detected."),
    source_layer: Optional[str] = typer.Option(None, "--source-layer", help="Layer inside a multi-layer file (GeoPackage, FileGDB)."),
    title_zh: Optional[str] = typer.Option(None, "--title-zh", help="Chinese title."),
    title_en: Optional[str] = typer.Option(None, "--title-en", help="English title."),
    access: Optional[str] = typer.Option(None, "--access", help="public | internal | restricted (new layers: public)."),
    author: Optional[str] = typer.Option(None, "--author", help="Who loads this (default: the login name)."),
    message: Optional[str] = typer.Option(None, "--message", help="A note kept with the changeset."),
    evolve_schema: bool = typer.Option(False, "--evolve-schema", help="Add the file's new fields to the layer schema."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Geometry differences up to this are round-off, not change (file units: degrees, or metres if projected). Default: 1e-9°, or the precision a GeoJSON was written with."),
    strip_strings: bool = typer.Option(False, "--strip-strings", help="Compare text without trailing spaces (a re-export that pads fields is no change)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any rejected row instead of leaving it out."),
    entity_type: Optional[str] = typer.Option(None, "--entity-type", help="Give the features geographic entities of this type (building, parcel, road, …) in the same transaction."),
    entity_key: Optional[str] = typer.Option(None, "--entity-key", help="Column holding entity codes (or, with --entity-ref, keys of that layer's features)."),
    entity_ref: Optional[str] = typer.Option(None, "--entity-ref", help="Take the entity of this layer's feature whose key --entity-key holds (addresses → buildings)."),
    entity_match: Optional[str] = typer.Option(None, "--entity-match", help="new (default) | key | geometry: match existing entities by geometry."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts)."),
) -> None:
    """Load a vector file into a layer as one all-or-nothing changeset."""
    from spatial_api.ingest import ingest_vector

    show_progress = not as_json and console.is_terminal
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                        console=err, transient=True, disable=not show_progress)
    tasks: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(PHASES.get(phase, phase), total=total)
        progress.update(tasks[phase], completed=done, total=total)

    try:
        with progress:
            summary = ingest_vector(
                path, layer=layer, key=key, mode=mode, valid_from=valid_from, crs=crs,
                from_gcj02=from_gcj02, encoding=encoding, source_layer=source_layer,
                title_zh=title_zh, title_en=title_en, access_level=access, author=author,
                message=message, evolve_schema=evolve_schema, strict=strict, progress=report,
                tolerance=tolerance, strip_strings=strip_strings, entity_type=entity_type,
                entity_key=entity_key, entity_ref=entity_ref, entity_match=entity_match,
            )
    except IngestError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
            raise typer.Exit(1)
        _fail(f"{exc}\nNothing was written: layer {layer!r} is as it was.")
    if as_json:
        print(json.dumps({"ok": True, **summary.to_dict()}, ensure_ascii=False, default=_json_default))
        _exit_now()
    if summary.entities:
        c, amb = summary.entities["counts"], summary.entities["ambiguous"]
        console.print(f"entities ({summary.entities['type']}, {summary.entities['match']}): " + ", ".join(
            f"{k} {v:,}" for k, v in c.items() if v) + (" — nothing to assign" if not any(c.values()) else ""))
        for a in amb[:20]:
            console.print(f"[yellow]ambiguous[/] {a['fid']}: {a['reason']} ("
                          + ", ".join(f"{x['code']} {x['score']}" for x in a["candidates"]) + ")")
    if summary.skipped:
        console.print(f"[yellow]●[/] layer {layer!r} already holds what {path} says as of "
                      f"{summary.valid_from[:10]} ({summary.unchanged:,} features): nothing written"
                      + (" to the layer." if summary.entities else "."))
        return
    table = Table(title=f"{layer} ← {path.name}  (changeset {summary.changeset_id}, valid from {summary.valid_from[:10]})")
    for col in ("added", "changed", "unchanged", "closed", "repaired", "rejected", "current", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:,}" for v in (summary.added, summary.changed, summary.unchanged, summary.closed,
                                        summary.repaired, summary.rejected, summary.current_total)),
                  f"{summary.seconds:.1f}")
    console.print(table)
    console.print(f"source CRS: {summary.source_crs}" + (f", encoding: {summary.encoding}" if summary.encoding else ""))
    if summary.within_tolerance:
        console.print(f"{summary.within_tolerance:,} feature(s) differed only below the tolerance "
                      f"({summary.tolerance_deg:g}°, {summary.tolerance_note}): counted unchanged, no new version")
    if summary.correction:
        console.print(f"[yellow]●[/] valid from {summary.valid_from[:10]}, before the layer's latest change: a "
                      "correction in valid time, recorded now; later recorded changes stay as they were")
    for r in summary.rejected_rows[:20]:
        console.print(f"[yellow]rejected[/] row {r['row']}: {r['reason']}" + (f" (key {r['key']})" if r.get("key") else ""))
    if len(summary.rejected_rows) > 20:
        console.print(f"… and {len(summary.rejected_rows) - 20} more rejected rows (use --json for all)")
    _exit_now()


@ingest_app.command("imagery")
def ingest_imagery_cmd(
    path: Path = typer.Argument(..., help="A georeferenced GeoTIFF (a COG is copied; anything else is written as one)."),
    collection: str = typer.Option(..., "--collection", "-c", help="Imagery collection (created if new), e.g. ortho, dem."),
    datetime_: str = typer.Option(..., "--datetime", help="Acquisition date (YYYY-MM-DD) or ISO date-time."),
    kind: Optional[str] = typer.Option(None, "--kind", help="ortho | satellite | aerial | dem | dsm | other (new collections: ortho)."),
    title: Optional[str] = typer.Option(None, "--title", help="Collection title (Chinese → title_zh, else title_en)."),
    title_zh: Optional[str] = typer.Option(None, "--title-zh", help="Chinese title of the collection."),
    title_en: Optional[str] = typer.Option(None, "--title-en", help="English title of the collection."),
    item_id: Optional[str] = typer.Option(None, "--item-id", help="Item id (default: the date, e.g. 2023-11-15)."),
    cog_dir: Optional[Path] = typer.Option(None, "--cog-dir", help="Where the COG goes (default: .geotwin/imagery/<collection>/)."),
    access: Optional[str] = typer.Option(None, "--access", help="public | internal | restricted (new collections: public)."),
    author: Optional[str] = typer.Option(None, "--author", help="Who loads this (default: the login name)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts)."),
    store: Optional[str] = typer.Option(None, "--store", help="local | s3 | s3://BUCKET/prefix: where the COG and its copies go (default: GEOTWIN_IMAGERY_STORE, else local)."),
) -> None:
    """Register a GeoTIFF as a dated item of an imagery collection (all or nothing)."""
    from spatial_api.ingest.imagery import cli_command

    code = cli_command(path, collection, datetime_, kind, title, title_zh, title_en, item_id, cog_dir, access,
                       author, as_json, store=store)
    if code:
        raise typer.Exit(code)


def _exit_now() -> None:
    """Leave without tearing down the interpreter: the work is committed and the output written,
    and freeing a large load's geometries one by one costs ~0.2 s per 200,000 features."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@layers_app.command("list")
def layers_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every layer: titles, geometry, key, access, current feature count, latest change."""
    from spatial_api import db, store

    with db.connect() as conn:
        rows = store.list_layers(conn)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, default=_json_default, indent=2))
        return
    table = Table(title="layers")
    for col in ("name", "title", "geometry", "key", "access", "features", "changesets", "valid from (latest)"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], " / ".join(t for t in (r["title_zh"], r["title_en"]) if t),
                      r["geometry_family"], r["key_field"] or "", r["access_level"],
                      f"{r['current_features']:,}", str(r["changesets"]),
                      _local(r["latest_valid_from"]).date().isoformat() if r["latest_valid_from"] else "")
    console.print(table)


def _layer_or_fail(conn, name: str):
    from spatial_api import store

    layer = store.get_layer(conn, name)
    if layer is None:
        names = ", ".join(r["name"] for r in store.list_layers(conn)) or "none yet"
        _fail(f"no layer named {name!r}. Layers: {names}.")
    return layer


@layers_app.command("set")
def layers_set(
    name: str,
    title_zh: Optional[str] = typer.Option(None, "--title-zh"),
    title_en: Optional[str] = typer.Option(None, "--title-en"),
    access: Optional[str] = typer.Option(None, "--access", help="public | internal | restricted"),
    editable: Optional[bool] = typer.Option(None, "--editable/--read-only",
                                            help="Whether the API may create, replace, update and delete features."),
    minzoom: Optional[int] = typer.Option(None, "--minzoom", help="Vector tiles: no tiles below this zoom."),
    maxzoom: Optional[int] = typer.Option(None, "--maxzoom", help="Vector tiles: no tiles above this zoom "
                                          "(clients overzoom the last level)."),
    max_features: Optional[list[str]] = typer.Option(
        None, "--max-features", help="Vector tiles: ZOOM:N caps tiles at zoom ≤ ZOOM (down to the previous "
        "entry) at N features, keeping the largest (or --priority) first; repeatable, e.g. 10:500 --max-features 13:5000."),
    priority: Optional[str] = typer.Option(None, "--priority", help="Vector tiles: property whose largest "
                                           "values are kept first when --max-features cuts."),
    clear_tile_options: bool = typer.Option(False, "--clear-tile-options", help="Forget all tile options."),
) -> None:
    """Change a layer's registry entry (titles, access level, editability, tile options). Features are untouched."""
    from spatial_api import db, store

    changes = {k: v for k, v in {"title_zh": title_zh, "title_en": title_en, "access_level": access,
                                 "editable": editable}.items() if v is not None}
    tile_changes: dict = {k: v for k, v in {"minzoom": minzoom, "maxzoom": maxzoom, "priority": priority}.items()
                          if v is not None}
    if max_features:
        limits = {}
        for spec in max_features:
            z, _, n = spec.partition(":")
            if not (z.strip().isdigit() and n.strip().isdigit()):
                _fail(f"--max-features {spec!r}: write ZOOM:N, e.g. --max-features 12:2000")
            limits[z.strip()] = int(n)
        tile_changes["max_features"] = limits
    if not changes and not tile_changes and not clear_tile_options:
        _fail("nothing to change: give --title-zh, --title-en, --access, --editable/--read-only or a tile option "
              "(--minzoom, --maxzoom, --max-features, --priority, --clear-tile-options)")
    try:
        with db.transaction() as conn:
            layer = _layer_or_fail(conn, name)
            if tile_changes or clear_tile_options:
                opts = {} if clear_tile_options else dict(layer.tile_options or {})
                opts.update(tile_changes)
                if opts.get("priority") and opts["priority"] not in layer.schema:
                    _fail(f"--priority {opts['priority']!r} is not a property of {name!r} "
                          f"({', '.join(layer.schema)})")
                changes["tile_options"] = opts
            store.update_layer(conn, name, **changes)
    except StoreError as exc:
        _fail(str(IngestError.from_store(exc)))
    console.print(f"{name}: " + ", ".join(f"{k} = {v}" for k, v in changes.items()))


@layers_app.command("history")
def layers_history(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The changesets of a layer: who, when, valid from, source, counts."""
    from spatial_api import db, store

    with db.connect() as conn:
        _layer_or_fail(conn, name)
        rows = store.changesets(conn, name)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, default=_json_default, indent=2))
        return
    table = Table(title=f"history of {name}")
    for col in ("changeset", "recorded", "valid from", "author", "mode", "added", "changed", "unchanged", "closed", "source"):
        table.add_column(col)
    for r in rows:
        c = r["counts"] or {}
        table.add_row(str(r["id"]), _local(r["recorded_at"]).strftime("%Y-%m-%d %H:%M:%S"),
                      _local(r["valid_from"]).date().isoformat(), r["author"], r["mode"],
                      *(f"{c.get(k, 0):,}" for k in ("added", "changed", "unchanged", "closed")),
                      Path(r["source"] or "").name)
    console.print(table)


@layers_app.command("diff")
def layers_diff(
    name: str,
    since: str = typer.Option(..., "--from", help="Earlier valid date (YYYY-MM-DD)."),
    until: str = typer.Option(..., "--to", help="Later valid date (YYYY-MM-DD)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Features added, changed and removed between two valid dates."""
    from spatial_api import db, store
    from spatial_api.ingest import parse_valid_time

    tz = get_settings().timezone
    try:
        t1 = parse_valid_time(since, tz, param="--from")
        t2 = parse_valid_time(until, tz, param="--to")
    except IngestError as exc:
        _fail(str(exc))
    with db.connect() as conn:
        _layer_or_fail(conn, name)
        d = store.diff(conn, name, t1, t2)
    if as_json:
        print(json.dumps({"since": t1.isoformat(), "until": t2.isoformat(), "counts": d.counts(),
                          "added": d.added, "changed": d.changed, "removed": d.removed}, ensure_ascii=False))
        return
    console.print(f"{name}: {since} → {until}: added {len(d.added):,}, changed {len(d.changed):,}, "
                  f"removed {len(d.removed):,}")
    for label, fids in (("added", d.added), ("changed", d.changed), ("removed", d.removed)):
        if fids:
            console.print(f"  {label}: {', '.join(fids[:10])}{' …' if len(fids) > 10 else ''}")
