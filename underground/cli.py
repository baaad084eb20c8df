"""``geotwin ingest pipes`` (a command function the house adds to ``geotwin ingest``) and the
``geotwin underground`` group: ``types`` (the pipe types, codes, depth reference, colours) and
``check`` (a dry run of a survey: every problem, nothing written).

Imports of pandas, pyogrio and the database happen inside the commands, so ``geotwin --help``
stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are copied into tickets: no hard wraps

app = typer.Typer(help="Underground utilities (CJJ 61 pipe surveys) and structures.", no_args_is_help=True)

TYPE_HELP = "Pipe type: 给水 JS, 排水 PS, 雨水 YS, 污水 WS, 燃气 RQ, 热力 RL, 电力 DL, 通信 TX, 工业 GY."
POINTS_HELP = "Pipe points: GeoPackage / Shapefile points, or CSV with X / Y columns (物探点号, 地面高程, 埋深, 特征, 附属物, 井深)."
SEGMENTS_HELP = "Pipe segments: lines or a plain table (起点点号, 终点点号, 管径 or 断面尺寸, 材质, 起点埋深, 终点埋深 …)."


def _problems_table(problems: list[dict], limit: int = 200) -> Table:
    table = Table(title=f"{len(problems)} problem(s)" + (f", first {limit}" if len(problems) > limit else ""))
    for col in ("kind", "code", "id", "row", "message"):
        table.add_column(col, overflow="fold")
    colour = {"error": "red", "depth": "yellow", "uphill": "yellow", "crossing": "yellow"}
    for p in problems[:limit]:
        table.add_row(f"[{colour.get(p['kind'], 'white')}]{p['kind']}[/]", p["code"],
                      escape(("点 " if p["layer"] == "points" else "段 ") + str(p["id"])), str(p["row"] or ""),
                      escape(p["message"]))
    return table


def _run(points: Path, segments: Path, *, type: str, crs: str | None, valid_from: str | None,
         author: str | None, accept: str | None, report: Path | None, as_json: bool, dry_run: bool) -> None:
    from spatial_api.ingest.types import IngestError
    from underground.ingest import PipeSurveyRefused, ingest_pipes, write_report

    try:
        result = ingest_pipes(points, segments, type=type, crs=crs, valid_from=valid_from, author=author,
                              accept=accept, dry_run=dry_run)
    except PipeSurveyRefused as exc:
        if report:
            write_report(report, exc.report)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), **exc.report.to_dict()}, ensure_ascii=False, default=str))
            raise typer.Exit(1)
        console.print(_problems_table(exc.report.problems))
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        if report:
            err.print(f"every problem: {report}")
        err.print("Nothing was written: the pipe layers are as they were.")
        raise typer.Exit(1)
    except IngestError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
            raise typer.Exit(1)
        err.print(f"[bold red]error:[/] {escape(str(exc))}\nNothing was written: the pipe layers are as they were.")
        raise typer.Exit(1)
    if report:
        write_report(report, result)
    if as_json:
        print(json.dumps({"ok": True, **result.to_dict()}, ensure_ascii=False, default=str))
        return
    if result.problems:
        console.print(_problems_table(result.problems))
        console.print(f"[yellow]●[/] accepted ({', '.join(result.accepted) or '—'}): "
                      + ("would be recorded with the changesets" if dry_run else "recorded with the changesets"))
    for note in result.notes:
        console.print(f"[yellow]●[/] {escape(note)}")
    head = f"{result.type} {result.type_code}: {result.points:,} points, {result.segments:,} segments"
    if dry_run:
        console.print(f"[green]✓[/] {head}: no problem that refuses the load (nothing written: a check)")
        return
    if result.skipped:
        console.print(f"[yellow]●[/] {head}: the layers already hold this survey — nothing written")
        return
    table = Table(title=f"{head}  (valid from {result.valid_from[:10]}, CRS {result.crs})")
    for col in ("layer", "changeset", "added", "changed", "unchanged", "closed", "current"):
        table.add_column(col, justify="right" if col not in ("layer",) else "left")
    for name, c in result.changes.items():
        table.add_row(name, str(c["changeset_id"] or "—"), *(f"{c[k]:,}" for k in ("added", "changed", "unchanged",
                                                                                    "closed", "current_total")))
    console.print(table)


def ingest_pipes(
    points: Path = typer.Argument(..., help=POINTS_HELP),
    segments: Path = typer.Argument(..., help=SEGMENTS_HELP),
    type: str = typer.Option(..., "--type", "-t", help=TYPE_HELP),
    crs: str | None = typer.Option(None, "--crs", help="CRS of the files' coordinates (CSV X / Y; files without one). Default: EPSG:4547."),
    valid_from: str | None = typer.Option(None, "--valid-from", help="Date the survey's state became true (YYYY-MM-DD). Default: today."),
    author: str | None = typer.Option(None, "--author", help="Who loads this (default: the login name)."),
    accept: str | None = typer.Option(None, "--accept", help="Load despite these problems (recorded with the changeset): depth, uphill, crossing — comma-separated."),
    report: Path | None = typer.Option(None, "--report", help="Write every problem to this file (.json: the whole report; .csv: one problem a line)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for scripts)."),
) -> None:
    """Load a CJJ 61 pipe survey of one type into pipe_points and pipe_segments, checked, all or nothing."""
    _run(points, segments, type=type, crs=crs, valid_from=valid_from, author=author, accept=accept, report=report,
         as_json=as_json, dry_run=False)


@app.command("check")
def check(
    points: Path = typer.Argument(..., help=POINTS_HELP),
    segments: Path = typer.Argument(..., help=SEGMENTS_HELP),
    type: str = typer.Option(..., "--type", "-t", help=TYPE_HELP),
    crs: str | None = typer.Option(None, "--crs", help="CRS of the files' coordinates. Default: EPSG:4547."),
    accept: str | None = typer.Option(None, "--accept", help="Problems that would be accepted: depth, uphill, crossing."),
    report: Path | None = typer.Option(None, "--report", help="Write every problem to this file (.json or .csv)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a pipe survey as `geotwin ingest pipes` would (against the stored other types), writing nothing."""
    _run(points, segments, type=type, crs=crs, valid_from=None, author=None, accept=accept, report=report,
         as_json=as_json, dry_run=True)


@app.command("types")
def types(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The pipe types: name, code, what the depth is measured to, map colour, plausible maximum depth."""
    from underground.catalogue import TYPES

    if as_json:
        print(json.dumps([t.to_dict() for t in TYPES], ensure_ascii=False))
        return
    table = Table(title="管线类型 / pipe types (CJJ 61)")
    for col in ("名称", "code", "English", "depth to", "colour", "max depth m"):
        table.add_column(col)
    for t in TYPES:
        table.add_row(t.name, t.code, t.name_en, "管内底 invert" if t.gravity else "管顶 top",
                      f"[{t.colour}]■[/] {t.colour}", f"{t.max_depth_m:g}")
    console.print(table)


__all__ = ["app", "ingest_pipes"]
