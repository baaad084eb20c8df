"""``geotwin supervise``: run the rule library, read runs back, export them, and work cases.

Imports of the project's modules sit inside the command bodies (and the helpers they call) on
purpose: a command loads only what it runs, so that ``geotwin --help`` starts fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True, soft_wrap=True)

supervise_app = typer.Typer(help="Land post-approval supervision: rules R1–R13, runs, findings, cases, reports.",
                            no_args_is_help=True)
case_app = typer.Typer(help="Cases: open from findings, assign, inspect, close with a disposition.",
                       no_args_is_help=True)
supervise_app.add_typer(case_app, name="case")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _dump(data) -> None:
    from land_supervision.runs import json_default

    print(json.dumps(data, ensure_ascii=False, indent=2, default=json_default))


def _conn():
    from spatial_api import db

    return db.connect()


def _guard(fn):
    """Domain errors → a red message and exit status 1."""
    from land_supervision.cases import CaseError
    from land_supervision.catalogue import RuleError
    from land_supervision.runs import NotFound

    try:
        return fn()
    except (RuleError, CaseError, NotFound) as exc:
        _fail(str(exc))


def _write(out: Path, fmt: str, run_id: int) -> None:
    from land_supervision import runs

    fmt = (fmt or out.suffix.lstrip(".") or "geojson").lower()
    if fmt == "json":
        fmt = "geojson"
    if fmt not in runs.FORMATS:
        _fail(f"--format {fmt!r}: choose one of {', '.join(runs.FORMATS)}")
    with _conn() as conn:
        data = _guard(lambda: runs.export(conn, run_id, fmt))
    tmp = out.with_name(out.name + ".part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(out)  # a failed write leaves the previous file whole
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _fail(f"--out {out}: cannot write ({exc.strerror}); choose a writable path")
    console.print(f"[green]●[/] {out} ({fmt}, {len(data):,} bytes)")


@supervise_app.command("run")
def run_cmd(
    as_of: str = typer.Option(..., "--as-of", help="The run's date (YYYY-MM-DD): layers as valid then."),
    rules: str = typer.Option(None, "--rules", help="Comma-separated rule ids, e.g. R4,R12 [default: all]."),
    param: list[str] = typer.Option(None, "--param", help="Override a parameter: RULE.NAME=VALUE (repeatable), "
                                                          "e.g. --param R11.distance_tolerance_m=0.5"),
    layer: list[str] = typer.Option(None, "--layer", help="Map a role to a layer: ROLE=LAYER (repeatable), "
                                                          "e.g. --layer parcels=parcels_2026"),
    known_at: str = typer.Option(None, "--known-at", help="As the store knew the layers then (ISO date-time)."),
    imagery: bool = typer.Option(None, "--imagery/--no-imagery", help="Read imagery: V1 start evidence (default: when loaded) and R9 green ratios "
                                 "(default: on); --no-imagery reads none."),
    out: Path = typer.Option(None, "--out", help="Also write the findings to this file."),
    fmt: str = typer.Option(None, "--format", help="geojson | csv | xlsx [default: from --out's suffix]."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    engine_name: str = typer.Option("sql", "--engine", help="sql: one transaction in PostgreSQL; dask: the parcels "
                                    "split into parts evaluated on a dask.distributed cluster (same findings)."),
    scheduler: str = typer.Option(None, "--scheduler", help="dask: the scheduler's address, e.g. tcp://10.0.0.5:8786 "
                                  "[default: a local cluster of --workers processes]."),
    partition: str = typer.Option("street", "--partition", help="dask: street | grid:METRES (square cells in "
                                  "EPSG:4547, e.g. grid:2000)."),
    workers: int = typer.Option(2, "--workers", min=1, help="dask: worker processes of the local cluster."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Evaluate and print the counts; store nothing."),
) -> None:
    """Evaluate the rules as of a date, store the run, compare it with the previous one."""
    from datetime import datetime

    from land_supervision import engine
    from spatial_api.config import get_settings

    overrides = {}
    for p in param or []:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            _fail(f"--param {p!r}: write RULE.NAME=VALUE, e.g. R4.fee_rate=0.2")
        k, v = p.split("=", 1)
        overrides[k.strip()] = v.strip()
    layers = {}
    for item in layer or []:
        if "=" not in item:
            _fail(f"--layer {item!r}: write ROLE=LAYER, e.g. parcels=parcels_2026")
        k, v = item.split("=", 1)
        layers[k.strip()] = v.strip()
    known = None
    if known_at:  # the house's time policy: naive = district time, a date = the end of that day
        from spatial_api.api import time as timepolicy

        try:
            known = timepolicy.parse_instant(known_at, "--known-at", day="end", tz=get_settings().timezone)
        except timepolicy.TimeError as exc:
            _fail(f"{exc} (e.g. 2026-07-01T12:00+08:00)")
    if engine_name not in ("sql", "dask"):
        _fail(f"--engine {engine_name!r}: choose sql or dask")
    if engine_name == "sql" and (scheduler or partition != "street"):
        _fail("--scheduler and --partition are options of --engine dask")
    if dry_run and (out or fmt):
        _fail("--dry-run stores no run: leave --out / --format out")
    if dry_run:
        summary = _guard(lambda: _dry_run(engine_name, as_of=as_of, rules=rules, parameters=overrides, layers=layers,
                                          known_at=known, imagery=imagery, partition=partition, scheduler=scheduler,
                                          workers=workers))
        if as_json:
            return _dump(summary)
        console.print(f"dry run ({engine_name}) as of {summary['as_of']}: {summary['total']} findings in "
                      f"{summary['seconds']} s, nothing stored")
        console.print(", ".join(f"{k} {v}" for k, v in summary["by_rule"].items()))
        for n in summary["notes"]:
            console.print(f"[yellow]note:[/] {n}")
        return None
    if engine_name == "dask":
        from land_supervision import dask_engine

        result = _guard(lambda: dask_engine.run(as_of=as_of, rules=rules, parameters=overrides, layers=layers,
                                                known_at=known, imagery=imagery, partition=partition,
                                                scheduler=scheduler, workers=workers))
    else:
        result = _guard(lambda: engine.run(as_of=as_of, rules=rules, parameters=overrides, layers=layers,
                                           known_at=known, imagery=imagery))
    if as_json:
        _dump(result.as_dict())
    else:
        c = result.counts
        table = Table(title=f"supervision run {result.run_id} as of {result.as_of} ({result.seconds} s)")
        for col in ("rule", "findings", "seconds"):
            table.add_column(col, justify="right" if col != "rule" else "left")
        for rid, n in c["by_rule"].items():
            table.add_row(rid, str(n), str(c["seconds_by_rule"].get(rid, "")))
        console.print(table)
        prev = f"against run {result.previous_run_id}" if result.previous_run_id else "first run"
        console.print(f"{c['total']} findings — new {c['new']}, persisting {c['persisting']}, "
                      f"resolved {c['resolved']} ({prev})")
        for n in result.notes:
            console.print(f"[yellow]note:[/] {n}")
    if out:
        _write(out, fmt, result.run_id)


def _dry_run(engine_name: str, *, as_of, rules, parameters, layers, known_at, imagery, partition, scheduler,
             workers) -> dict:
    """Either engine's findings, evaluated and not stored (the summary, without the rows)."""
    import time

    from land_supervision import engine
    from spatial_api.config import get_settings

    if engine_name == "dask":
        from land_supervision import dask_engine

        summary = dask_engine.run(as_of=as_of, rules=rules, parameters=parameters, layers=layers, known_at=known_at,
                                  imagery=imagery, partition=partition, scheduler=scheduler, workers=workers,
                                  dry_run=True)
    else:
        t0 = time.perf_counter()
        day, rule_list, params, layer_map = engine.prepare(as_of, rules, parameters, layers)
        res = engine.evaluate_findings(get_settings(), as_of=day, rule_list=rule_list, params=params,
                                       layer_map=layer_map, known_at=known_at, imagery=imagery)
        summary = {"as_of": day.isoformat(), "rules": rule_list, "total": len(res["rows"]), **res,
                   "seconds": round(time.perf_counter() - t0, 3)}
    summary.pop("rows", None)
    summary.pop("used", None)
    return summary


@supervise_app.command("runs")
def runs_cmd(limit: int = typer.Option(20, help="How many (latest first)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """The stored runs."""
    from land_supervision import runs

    with _conn() as conn:
        rows = runs.list_runs(conn, limit)
    if as_json:
        return _dump(rows)
    table = Table()
    for col in ("run", "as of", "rules", "findings", "new", "persisting", "resolved", "author", "s"):
        table.add_column(col)
    for r in rows:
        c = r["counts"]
        table.add_row(str(r["id"]), str(r["as_of"]), ",".join(r["rules"]), str(c.get("total")), str(c.get("new")),
                      str(c.get("persisting")), str(c.get("resolved")), r["author"], str(r["seconds"]))
    console.print(table)


@supervise_app.command("findings")
def findings_cmd(run_id: int = typer.Argument(..., help="Run id."),
                 rule: str = typer.Option(None, help="Only this rule."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """A run's findings."""
    from land_supervision import runs

    with _conn() as conn:
        rows = _guard(lambda: runs.findings(conn, run_id, rule=rule))
    if as_json:
        return _dump(rows)
    table = Table(title=f"run {run_id}")
    for col in ("id", "rule", "subject", "severity", "status", "street", "message"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["rule"], r["subject_id"], r["severity"], r["status"], r["street_name"] or "",
                      r["message"])
    console.print(table)


@supervise_app.command("export")
def export_cmd(run_id: int = typer.Argument(..., help="Run id."),
               out: Path = typer.Option(..., "--out", help="Output file."),
               fmt: str = typer.Option(None, "--format", help="geojson | csv | xlsx [default: from the suffix].")) -> None:
    """Write a run's findings as GeoJSON, CSV or XLSX."""
    _write(out, fmt, run_id)


@supervise_app.command("report")
def report_cmd(run_id: int = typer.Argument(..., help="Run id."),
               out: Path = typer.Option(..., "--out", help="HTML file.")) -> None:
    """A printable HTML report of a run (statistics, maps, findings)."""
    from land_supervision import report

    with _conn() as conn:
        html = _guard(lambda: report.html_report(conn, run_id))
    out.write_text(html, encoding="utf-8")
    console.print(f"[green]●[/] {out}")


@supervise_app.command("rules")
def rules_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """The rule library: ids, titles, legal basis, default parameters."""
    from land_supervision import catalogue

    rows = catalogue.describe()
    if as_json:
        return _dump(rows)
    table = Table()
    for col in ("id", "rule", "basis", "parameters"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["title_zh"], r["basis"], json.dumps(r["parameters"], ensure_ascii=False))
    console.print(table)


def _author() -> str:
    from spatial_api.config import author_default

    return author_default()


@case_app.command("open")
def case_open(finding: list[int] = typer.Option(..., "--finding", help="Finding id (repeatable)."),
              title: str = typer.Option(None), assignee: str = typer.Option(None),
              due: str = typer.Option(None, "--due", help="Due date YYYY-MM-DD.")) -> None:
    """Open a case from findings."""
    from land_supervision import cases

    with _conn() as conn:
        cid = _guard(lambda: cases.open_case(conn, finding, author=_author(), title=title, assignee=assignee,
                                             due_date=due))
    console.print(f"[green]●[/] case {cid} opened")


@case_app.command("assign")
def case_assign(case_id: int, assignee: str = typer.Option(None), due: str = typer.Option(None, "--due")) -> None:
    from land_supervision import cases

    with _conn() as conn:
        _guard(lambda: cases.assign(conn, case_id, author=_author(), assignee=assignee, due_date=due))
    console.print(f"[green]●[/] case {case_id} assigned")


@case_app.command("inspect")
def case_inspect(case_id: int, text: str = typer.Option(..., help="What the inspection found."),
                 on: str = typer.Option(None, "--on", help="Inspection date YYYY-MM-DD [default: today]."),
                 lon: float = typer.Option(None), lat: float = typer.Option(None),
                 photo: list[Path] = typer.Option(None, "--photo", help="A photo file (repeatable).")) -> None:
    """Add an inspection record (text, date, location, photos)."""
    from land_supervision import cases

    files = []
    for p in photo or []:
        if not p.is_file():
            _fail(f"--photo {p}: no such file")
        files.append((p.name, None, p.read_bytes()))
    with _conn() as conn:
        eid = _guard(lambda: cases.inspect(conn, case_id, author=_author(), text=text, inspected_on=on, lon=lon,
                                           lat=lat, files=files))
    console.print(f"[green]●[/] inspection {eid} recorded on case {case_id}")


@case_app.command("close")
def case_close(case_id: int, disposition: str = typer.Option(..., help="fee_charged | land_recovered | rectified | exempted"),
               reason: str = typer.Option(None), fee: float = typer.Option(None, "--fee", help="Fee charged (CNY).")) -> None:
    """Close a case with its disposition."""
    from land_supervision import cases

    with _conn() as conn:
        _guard(lambda: cases.close(conn, case_id, author=_author(), disposition=disposition, reason=reason,
                                   fee_cny=fee))
    console.print(f"[green]●[/] case {case_id} closed ({disposition})")


@case_app.command("show")
def case_show(case_id: int) -> None:
    """A case with its findings and every step (author, time)."""
    from land_supervision import cases

    with _conn() as conn:
        _dump(_guard(lambda: cases.get_case(conn, case_id)))


@case_app.command("list")
def case_list(status: str = typer.Option(None, help="open | closed")) -> None:
    from land_supervision import cases

    with _conn() as conn:
        _dump(cases.list_cases(conn, status))
