"""``geotwin cim clash``: a BIM model (registered id or IFC file) or a planned basement (footprint +
depth) against the pipe network and the other underground structures (:mod:`cim_builder.clash`).
A clash is a finding, not an error: the command exits 0 whenever the check ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from psycopg.errors import UndefinedTable
from rich.table import Table

from cim_builder.cli_common import console, fail, not_migrated, warn


def clash_cmd(
    subject: Optional[str] = typer.Argument(None, metavar="[MODEL_OR_FILE]", help="A registered model id (see `geotwin cim models`) or an IFC file. Leave out with --footprint."),
    at: Optional[str] = typer.Option(None, "--at", help="IFC file: place its origin at LON,LAT[,H] (as add-ifc)."),
    rotation: Optional[float] = typer.Option(None, "--rotation", help="IFC file: +X axis, degrees counter-clockwise from east."),
    crs: Optional[str] = typer.Option(None, "--crs", help="IFC file: CRS of its IfcMapConversion when it names none."),
    footprint: Optional[Path] = typer.Option(None, "--footprint", help="A planned basement's footprint: GeoJSON (Polygon / Feature, EPSG:4490)."),
    depth: Optional[float] = typer.Option(None, "--depth", help="With --footprint: depth below the ground (m)."),
    ground_z: Optional[float] = typer.Option(None, "--ground-z", help="With --footprint: ground height (orthometric m). Default: the DEM."),
    dem: Optional[Path] = typer.Option(None, "--dem", help="DEM GeoTIFF (default: the imagery catalogue's 'dem' collection)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="The pipes and structures as they were on this date (YYYY-MM-DD). Default: now."),
    distance: float = typer.Option(5.0, "--distance", help="Report every pipe within this clearance (m)."),
    clearance: Optional[List[str]] = typer.Option(None, "--clearance", help="Required clearance TYPE=M instead of GB 50289-2016's (repeatable), e.g. 给水=1.5 or RQ=2."),
    pipes_layer: str = typer.Option("pipe_segments", "--pipes-layer", help="Pipe segment layer (contract: pipe_segments)."),
    basements_layer: str = typer.Option("basements", "--basements-layer", help="Basement layer (footprint + depth)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report: report.html, report.xlsx or report.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Which pipes a BIM model or a planned basement cuts, and the clearance to each (3D, exact)."""
    from cim_builder import clash, clash_report
    from cim_builder.geo import CimError, parse_at
    from spatial_api.config import get_settings

    if out is not None and out.suffix.lower() not in (".html", ".xlsx", ".json"):
        fail(f"--out {out}: the report is written as .html, .xlsx or .json")
    kw: dict = {}
    if footprint is not None:
        if subject is not None:
            fail("give either MODEL_OR_FILE or --footprint, not both")
        if depth is None:
            fail("--footprint needs --depth (the basement's depth below the ground, m)")
        if not footprint.is_file():
            fail(f"--footprint {footprint}: no such file")
        try:
            kw["footprint"] = json.loads(footprint.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            fail(f"--footprint {footprint}: not GeoJSON ({exc})")
        kw.update(depth_m=depth, ground_z=ground_z)
    elif subject is None:
        fail("give a registered model id, an IFC file, or --footprint F.geojson --depth D")
    elif Path(subject).is_file() or subject.lower().endswith(".ifc"):
        try:
            placed_at = parse_at(at)
        except CimError as exc:
            fail(str(exc))
        kw.update(ifc_path=Path(subject), at=placed_at, rotation=rotation, crs=crs)
    else:
        if at is not None:
            fail(f"--at places an IFC file; {subject!r} is not a file (a registered model keeps its own placement)")
        kw["model"] = subject
    try:
        with console.status("checking clashes…"):
            report = clash.check(get_settings(), dem=dem, as_of=as_of, distance=distance, clearances=clearance,
                                 pipes_layer=pipes_layer, basements_layer=basements_layer, **kw)
    except CimError as exc:
        fail(str(exc))
    except UndefinedTable as exc:
        not_migrated(exc)
    for w in report["warnings"]:
        warn(w)
    if out is not None:
        suffix = out.suffix.lower()
        data = (clash_report.xlsx(report) if suffix == ".xlsx" else
                (clash_report.html(report) if suffix == ".html" else json.dumps(report, ensure_ascii=False)))
        tmp = out.with_name(out.name + ".tmp")
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        tmp.replace(out)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return
    s = report["summary"]
    t = Table("pipe", "type", "size", "clearance m", "required m", "", "nearest", title="pipes within "
              f"{report['search_distance_m']:g} m")
    for p in report["pipes"]:
        mark = "[red]cuts[/]" if p["cuts"] else ("[yellow]too close[/]" if p["too_close"] else "[green]clear[/]")
        t.add_row(p["id"], f"{p['type']} {p['type_code']}", p["size"], f"{p['clearance_m']:.3f}",
                  "" if p["required_m"] is None else f"{p['required_m']:g}", mark,
                  clash_report._nearest_text(p.get("nearest")))
    if report["pipes"]:
        console.print(t)
    if report["structures"]:
        st = Table("structure", "clearance m", "", "nearest", title="underground structures")
        for r in clash_report.structure_rows(report):
            st.add_row(f"{r[0]} {r[1]}", f"{r[4]:.3f}", r[5], r[6])
        console.print(st)
    colour = "red" if s["cuts"] else ("yellow" if s["too_close"] else "green")
    console.print(f"[{colour}]●[/] {s['pipes']} pipe(s) within {report['search_distance_m']:g} m: {s['cuts']} cut, "
                  f"{s['too_close']} too close; {s['structures']} structure(s) near, {s['structures_overlapping']} "
                  f"overlapping; {s['pipes_examined']} pipe segment(s) examined in {s['seconds']['total']:.2f} s")
    if out is not None:
        console.print(f"  report written to {out}")


def register(cim_app) -> None:
    cim_app.command("clash")(clash_cmd)
