"""``geotwin cim build | add-ifc | models | remove-model | check | list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from psycopg.errors import UndefinedTable
from rich.table import Table

from cim_builder.build import build
from cim_builder.cli_common import console, err, fail, not_migrated, warn
from cim_builder.geo import CimError, parse_at
from cim_builder.ifc import convert, register
from cim_builder.tileset import check_tileset
from spatial_api import db
from spatial_api.config import get_settings

cim_app = typer.Typer(help="The CIM twin: buildings + BIM models → 3D Tiles 1.1.", no_args_is_help=True)


def _settings():
    return get_settings()


@cim_app.command("build")
def build_cmd(
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Build the district as it was on this date (YYYY-MM-DD). Default: now."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder. Default: <home>/tilesets/<id> (or the tileset's previous folder)."),
    dem: Optional[Path] = typer.Option(None, "--dem", help="DEM GeoTIFF (orthometric metres). Default: the latest of the imagery catalogue's 'dem' collection."),
    tileset_id: str = typer.Option("twin", "--id", help="Tileset id (served at /twin/tilesets/<id>/tileset.json)."),
    geoid_separation: Optional[float] = typer.Option(None, "--geoid-separation", help="Geoid separation N in metres (ellipsoidal = orthometric + N). Default -2.6 (EGM96 at Longgang)."),
    full: bool = typer.Option(False, "--full", help="Rebuild every tile (new grid), not only the changed ones."),
    max_per_tile: int = typer.Option(1500, "--max-per-tile", help="Most buildings in a leaf tile (sets the quadtree depth at a full build)."),
    floor_height: float = typer.Option(3.0, "--floor-height", help="Metres per floor when height_m is missing."),
    layer: str = typer.Option("buildings", "--layer", help="Footprint layer."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    store: Optional[str] = typer.Option(None, "--store", help="s3 | s3://BUCKET/prefix: write the tileset to an S3 bucket (see `geotwin s3`); later builds keep it there."),
) -> None:
    """Build (or incrementally rebuild) the twin's 3D Tiles tileset."""
    try:
        with console.status("building the twin…") as status:
            report = build(_settings(), tileset_id=tileset_id, as_of=as_of, out=out, dem=dem,
                           geoid_separation=geoid_separation, full=full, max_per_tile=max_per_tile,
                           floor_height_m=floor_height, layer=layer, store=store,
                           progress=lambda phase: status.update(f"building the twin… {phase} done"))
    except CimError as exc:
        fail(str(exc))
    except UndefinedTable as exc:
        not_migrated(exc)
    for w in report.warnings:
        warn(w)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, default=str))
        return
    rate = report.buildings / report.seconds if report.seconds else 0
    console.print(f"[green]●[/] tileset {report.tileset_id!r}: {report.buildings:,} buildings, {report.models} BIM "
                  f"model(s), {report.tiles:,} tiles ({report.bytes_total / 1e6:.1f} MB) in {report.out_dir}")
    kind = f"full build ({report.reason})" if report.full_rebuild else "incremental"
    console.print(f"  {kind}: {report.tiles_written:,} tiles written, {report.tiles_unchanged:,} unchanged, "
                  f"{report.tiles_removed:,} removed; {report.seconds:.1f} s ({rate:,.0f} buildings/s)")
    if report.replaced_by_bim:
        console.print(f"  replaced by BIM: {', '.join(report.replaced_by_bim[:10])}")


def _parse_at(at: str | None) -> tuple | None:
    try:
        return parse_at(at)
    except CimError as exc:
        fail(str(exc))


@cim_app.command("add-ifc")
def add_ifc_cmd(
    path: Path = typer.Argument(..., help="IFC file (IFC2X3, IFC4, IFC4X3)."),
    at: Optional[str] = typer.Option(None, "--at", help="Place the model's origin at LON,LAT[,H] (CGCS2000 degrees, orthometric metres)."),
    rotation: Optional[float] = typer.Option(None, "--rotation", help="Model +X axis, degrees counter-clockwise from east."),
    crs: Optional[str] = typer.Option(None, "--crs", help="CRS of the file's IfcMapConversion when it names none (or a wrong one)."),
    model_id: Optional[str] = typer.Option(None, "--id", help="Model id. Default: from the file name."),
    name: Optional[str] = typer.Option(None, "--name", help="Display name."),
    layer: str = typer.Option("buildings", "--layer", help="Footprint layer the model is checked against."),
    build_now: bool = typer.Option(False, "--build", help="Rebuild the twin right away (incrementally)."),
    tileset_id: str = typer.Option("twin", "--tileset", help="With --build: the tileset to rebuild."),
    dem: Optional[Path] = typer.Option(None, "--dem", help="With --build: the DEM (default: the imagery catalogue's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Register a BIM model; the next `geotwin cim build` (or --build) merges it into the twin."""
    try:
        with console.status(f"reading {path.name}…"):
            info = register(_settings(), path, model_id=model_id, at=_parse_at(at), rotation=rotation, crs=crs,
                            name=name, layer=layer)
    except CimError as exc:
        fail(str(exc))
    except UndefinedTable as exc:
        not_migrated(exc)
    for w in info["warnings"]:
        warn(w)
    report = None
    if build_now:
        try:
            report = build(_settings(), tileset_id=tileset_id, dem=dem, layer=layer)
        except CimError as exc:
            fail(f"model {info['id']!r} is registered, but the rebuild failed: {exc}")
    if as_json:
        print(json.dumps({**info, "build": report.as_dict() if report else None}, ensure_ascii=False, default=str))
        return
    console.print(f"[green]●[/] model {info['id']!r} ({info['schema']}, {info['elements']} elements) placed by "
                  f"{info['georef']} at {info['centre'][0]}, {info['centre'][1]}")
    console.print(f"  {info['indoor']['message']}")
    if info["overlapping_buildings"]:
        console.print(f"  overlaps building(s) {', '.join(info['overlapping_buildings'][:10])}: "
                      "their LOD1 prism is replaced at the next build")
    if report is None:
        console.print("  run `geotwin cim build` (or add-ifc --build) to put it in the twin")
    else:
        console.print(f"[green]●[/] tileset {report.tileset_id!r} rebuilt: {report.tiles_written} tile(s) written, "
                      f"{report.tiles_unchanged} unchanged; replaced by BIM: "
                      f"{', '.join(report.replaced_by_bim) or 'none'}")


@cim_app.command("convert-ifc")
def convert_ifc_cmd(
    path: Path = typer.Argument(..., help="IFC file (IFC2X3, IFC4, IFC4X3)."),
    out: Path = typer.Option(..., "--out", help="Output folder (tileset.json + one glb)."),
    at: Optional[str] = typer.Option(None, "--at", help="Place the model's origin at LON,LAT[,H]."),
    rotation: Optional[float] = typer.Option(None, "--rotation", help="Model +X axis, degrees counter-clockwise from east."),
    crs: Optional[str] = typer.Option(None, "--crs", help="CRS of the file's IfcMapConversion when it names none."),
    geoid_separation: Optional[float] = typer.Option(None, "--geoid-separation", help="Geoid separation N in metres (default -2.6)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One IFC file → a stand-alone 3D Tiles 1.1 tileset with per-element metadata (no database)."""
    try:
        info = convert(path, out, at=_parse_at(at), rotation=rotation, crs=crs, geoid_separation=geoid_separation)
    except CimError as exc:
        fail(str(exc))
    for w in info["warnings"]:
        warn(w)
    if as_json:
        print(json.dumps(info, ensure_ascii=False, default=str))
        return
    console.print(f"[green]●[/] {info['elements']} elements ({info['schema']}, placed by {info['georef']}) → "
                  f"{info['out']}/tileset.json ({info['bytes'] / 1e6:.1f} MB)")


@cim_app.command("models")
def models_cmd() -> None:
    """Registered BIM models."""
    with db.connect(_settings()) as conn:
        rows = conn.execute("SELECT id, ifc_schema, element_count, georef->>'method', active, registered_at, "
                            "source_path FROM cim_models ORDER BY id").fetchall()
    t = Table("id", "schema", "elements", "placed by", "active", "registered", "file")
    for r in rows:
        t.add_row(*(str(v) for v in r))
    console.print(t)


@cim_app.command("remove-model")
def remove_model_cmd(model_id: str = typer.Argument(...)) -> None:
    """Take a model out of the twin (at the next build); its record stays, inactive."""
    from cim_builder import indoor

    with db.connect(_settings()) as conn:
        n = conn.execute("UPDATE cim_models SET active = false WHERE id = %s", (model_id,)).rowcount
        rooms = indoor.close_model(conn, model_id) if n else 0  # its rooms leave indoor_spaces (history kept)
    if not n:
        fail(f"no model {model_id!r} (see `geotwin cim models`)")
    console.print(f"model {model_id!r} deactivated{f', {rooms} room(s) closed' if rooms else ''}; "
                  "run `geotwin cim build`")


@cim_app.command("list")
def list_cmd() -> None:
    """Built tilesets."""
    with db.connect(_settings()) as conn:
        rows = conn.execute("SELECT id, built_at, as_of, stats->>'buildings', stats->>'tiles', out_dir "
                            "FROM cim_tilesets ORDER BY id").fetchall()
    t = Table("id", "built", "as of", "buildings", "tiles", "folder")
    for r in rows:
        t.add_row(*(str(v) for v in r))
    console.print(t)


@cim_app.command("check")
def check_cmd(folder: Path = typer.Argument(..., help="Folder holding tileset.json.")) -> None:
    """Structural check of a tileset (regions nest, errors shrink, content resolves, metadata)."""
    problems = check_tileset(folder)
    for p in problems[:50]:
        err.print(f"[red]✗[/] {p}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]●[/] tileset is structurally sound")


# Commands of issue 17, each in its own module: build-underground, clash, indoor.
from cim_builder import clash_cli, indoor_cli, underground_cli  # noqa: E402

for _module in (underground_cli, clash_cli, indoor_cli):
    _module.register(cim_app)
