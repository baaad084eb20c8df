"""``geotwin cim build-underground``: pipes, manholes and basements → the underground 3D Tiles
tileset (:mod:`cim_builder.underground`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from psycopg.errors import UndefinedTable
from rich.table import Table

from cim_builder.cli_common import console, fail, not_migrated, warn


def build_underground_cmd(
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Build the underground as it was on this date (YYYY-MM-DD). Default: now."),
    tileset_id: str = typer.Option("underground", "--id", help="Tileset id (served at /twin/tilesets/<id>/tileset.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder. Default: <home>/tilesets/<id> (or the tileset's previous folder)."),
    dem: Optional[Path] = typer.Option(None, "--dem", help="DEM GeoTIFF for basements without ground_z. Default: the imagery catalogue's 'dem' collection."),
    geoid_separation: Optional[float] = typer.Option(None, "--geoid-separation", help="Geoid separation N in metres (ellipsoidal = orthometric + N). Default -2.6 (EGM96 at Longgang)."),
    full: bool = typer.Option(False, "--full", help="Rewrite every tile on a new grid (default: unchanged tiles keep their files)."),
    max_per_tile: int = typer.Option(4000, "--max-per-tile", help="Most objects in a leaf tile (sets the quadtree depth)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Build the underground tileset: pipes (cylinders / boxes at their surveyed depth), manholes
    (shafts) and basements (prisms below ground) in 3D Tiles 1.1 with per-object metadata."""
    from cim_builder.geo import CimError
    from cim_builder.underground import build_underground
    from spatial_api.config import get_settings

    try:
        with console.status("building the underground…") as status:
            report = build_underground(get_settings(), tileset_id=tileset_id, as_of=as_of, out=out, dem=dem,
                                       geoid_separation=geoid_separation, full=full, max_per_tile=max_per_tile,
                                       progress=lambda phase: status.update(f"building the underground… {phase} done"))
    except CimError as exc:
        fail(str(exc))
    except UndefinedTable as exc:
        not_migrated(exc)
    for w in report.warnings:
        warn(w)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, default=str))
        return
    table = Table(title=f"underground tileset {report.tileset_id!r}", show_header=True)
    for col in ("segments", "manholes", "structures", "tiles", "written", "MB", "s", "segments/s"):
        table.add_column(col, justify="right")
    rate = report.segments / report.seconds if report.seconds else 0.0
    table.add_row(f"{report.segments:,}", f"{report.manholes:,}", f"{report.structures:,}", f"{report.tiles:,}",
                  f"{report.tiles_written:,}", f"{report.bytes_total / 1e6:.1f}", f"{report.seconds:.2f}",
                  f"{rate:,.0f}")
    console.print(table)
    kind = f"full build ({report.reason})" if report.full_rebuild else "rebuild"
    laps = ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
    console.print(f"  {kind}: {report.tiles_unchanged:,} tiles unchanged, {report.tiles_removed:,} removed; "
                  f"{laps}\n  {report.out_dir}")


def register(cim_app) -> None:
    cim_app.command("build-underground")(build_underground_cmd)
