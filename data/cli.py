"""``geotwin demo …``: build the synthetic demo district and load it through the ingestion.

The commands load only what they run (the builder, the checks, the database) so that
`geotwin --help` starts fast: their imports are inside them on purpose.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The demo district: build its files (GeoPackage / Shapefile / COG) and load them "
                       "through the same ingestion GIS staff use.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.callback()
def _group() -> None:
    """The demo district: build its files and load them through the ingestion."""


class Size(str, Enum):
    small = "small"
    medium = "medium"
    large = "large"


def _summary_value(s, name, default=""):
    if isinstance(s, dict):
        return s.get(name, default)
    return getattr(s, name, default)


@app.command("build")
def build(
    size: Size = typer.Option(Size.small, "--size", help="small (tests, seconds), medium (make demo), "
                                                         "large (benchmarks)."),
    out: Path = typer.Option(None, "--out", help="Output folder [default: .geotwin/demo/<size>]."),
    seed: int = typer.Option(2024, "--seed", help="Random seed: the same seed gives the same district."),
    no_load: bool = typer.Option(False, "--no-load", help="Only write the files; do not ingest them."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even when OUT already holds this build."),
) -> None:
    """Build the demo district's files, then load them (unless --no-load)."""
    from data.demo import build_files, existing, load

    out_dir = (out or Path.cwd() / ".geotwin" / "demo" / size.value).resolve()
    started = time.perf_counter()
    reused = not rebuild and existing(out_dir, size.value, seed) is not None
    if reused:
        console.print(f"[green]●[/] {out_dir} already holds the {size.value} district (seed {seed}); "
                      "reusing it (--rebuild to build again)")
    t_step = [started, None]

    with console.status(f"building the {size.value} demo district in {out_dir} …") as status:
        def on_step(name: str) -> None:
            now = time.perf_counter()
            if t_step[1] is not None:
                console.print(f"  [green]✓[/] {t_step[1]} [dim]({now - t_step[0]:.1f} s)[/]")
            t_step[0], t_step[1] = now, name
            status.update(f"[bold]{name}[/] …")

        try:
            manifest = build_files(out_dir, size=size.value, seed=seed, on_step=on_step, reuse=not rebuild)
        except AssertionError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
    if not reused:
        console.print(f"[green]●[/] files written to {manifest.out_dir} in {time.perf_counter() - started:.1f} s "
                      f"(manifest: {manifest.out_dir / 'manifest.json'})")

    files = Table(title=f"demo district ({size.value}, seed {seed})")
    files.add_column("layer")
    files.add_column("file")
    files.add_column("features", justify="right")
    files.add_column("valid from")
    files.add_column("access")
    for lf in manifest.layers:
        files.add_row(lf.layer, lf.path.name, f"{lf.count:,}", str(lf.valid_from or ""), lf.access_level)
    for r in manifest.imagery:
        files.add_row("imagery (COG)", r.path.name, f"{r.width}×{r.height}", str(r.acquired_on), f"{r.gsd_m} m")
    files.add_row("DEM (COG)", manifest.dem.path.name, f"{manifest.dem.width}×{manifest.dem.height}", "",
                  f"{manifest.dem.gsd_m} m")
    console.print(files)
    if manifest.underground:
        ug = manifest.underground
        console.print(f"underground ({ug['segments']:,} segments, survey area {ug['survey_area']}): "
                      + ", ".join(f"{t['type']} {t['segments_count']:,} 段 / {t['points_count']:,} 点"
                                  for t in ug["types"]))
    planted = ", ".join(f"{k}×{len(v)}" for k, v in manifest.planted_cases.items())
    console.print(f"planted supervision cases (reference date {manifest.reference_date}): {planted}")
    if manifest.sensing:
        sc = manifest.sensing
        console.print(f"sensing: {', '.join(f'{k}×{v}' for k, v in sc['counts'].items())}; planted: "
                      + ", ".join(f"{k} {' '.join(v)}" for k, v in sc["planted"].items())
                      + "; guards: " + ", ".join(f"{k} {' '.join(v)}" for k, v in sc["negative"].items()))

    if no_load:
        return
    from spatial_api.ingest import IngestError

    t0 = time.perf_counter()
    try:
        summaries = load(manifest, progress=True)
    except IngestError as exc:
        err.print(f"[bold red]error:[/] loading the demo district failed: {exc}")
        raise typer.Exit(1)
    except Exception as exc:  # the database is not there: say how to get it
        import psycopg

        if isinstance(exc, psycopg.OperationalError) or isinstance(getattr(exc, "orig", None), psycopg.OperationalError):
            err.print(f"[bold red]error:[/] cannot reach the database: {exc}. Start it with `geotwin db up`, "
                      f"or build the files only with --no-load.")
            raise typer.Exit(1)
        raise
    table = Table(title=f"loaded in {time.perf_counter() - t0:.1f} s")
    for col in ("file", "added", "changed", "unchanged", "closed", "repaired", "rejected", "s"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for lf, s in zip(manifest.layers, summaries):
        row = [lf.path.name]
        if _summary_value(s, "skipped", False):
            row += ["", "", str(_summary_value(s, "unchanged")), "", "", "", "already loaded"]
        else:
            row += [str(_summary_value(s, k)) for k in ("added", "changed", "unchanged", "closed", "repaired",
                                                      "rejected", "seconds")]
        table.add_row(*row)
    console.print(table)
    for s in summaries[len(manifest.layers):]:
        if hasattr(s, "type_code"):  # a pipe survey (underground.ingest.PipeLoadReport)
            state = "already loaded" if s.skipped else f"{s.segments:,} segments, {s.points:,} points"
            console.print(f"[green]●[/] pipes {s.type} {s.type_code}: {state} ({s.seconds:.1f} s)")
        elif hasattr(s, "already") and hasattr(s, "counts"):  # entity codes (spatial_api.entities.AssignReport)
            c = s.counts()
            console.print(f"[green]●[/] entity codes {s.layer} → {s.type}: {c['new']:,} new, {c['matched']:,} matched, "
                          f"{c['already']:,} already" + (f", {c['ambiguous']} ambiguous" if c["ambiguous"] else ""))
    sensing = next((s for s in summaries if isinstance(s, dict) and "reference_time" in s), None)
    if sensing is not None:
        if sensing["skipped"]:
            console.print(f"[green]●[/] sensing: {sensing['devices']} devices already loaded (same plan)")
        else:
            console.print(f"[green]●[/] sensing: {sensing['devices']} devices, {sensing['observations']:,} observations "
                          f"in {sensing['seconds']:.1f} s; alerts at {sensing['reference_time']}: "
                          + (", ".join(f"{d} {'/'.join(r)}" for d, r in sensing.get("alerts", {}).items()) or "none"))
        for p in sensing.get("problems", []):
            err.print(f"[red]✗[/] sensing: {p}")
        if sensing.get("problems"):
            raise typer.Exit(1)


@app.command("check")
def check(
    out: Path = typer.Argument(None, help="A built demo folder [default: .geotwin/demo/small]."),
) -> None:
    """Evaluate the supervision rules naively on a built demo's files and compare with the
    planted cases (a yardstick for the rule engine)."""
    from data.checks import naive_findings
    from data.demo import Manifest, verify_planted

    out_dir = out or Path.cwd() / ".geotwin" / "demo" / "small"
    if not (out_dir / "manifest.json").exists():
        err.print(f"[bold red]error:[/] {out_dir}: no manifest.json. Build it first: geotwin demo build --out {out_dir}")
        raise typer.Exit(1)
    m = Manifest.read(out_dir)
    found = naive_findings(out_dir)
    t = Table(title=f"naive rule findings at {m.reference_date}")
    t.add_column("rule")
    t.add_column("found", justify="right")
    t.add_column("planted")
    t.add_column("must not be found")
    for rule in sorted(found, key=lambda r: int(r[1:])):
        t.add_row(rule, str(len(found[rule])), ", ".join(m.planted_cases.get(rule, [])),
                  ", ".join(m.negative_cases.get(rule, [])))
    console.print(t)
    problems = verify_planted(m, found)
    if m.underground:  # the utility network through the pipe ingestion's checks
        from data.checks import network_problems

        counts, pipe_problems = network_problems(Manifest.read(out_dir))
        console.print("underground: " + ", ".join(f"{k} {v['segments']:,} 段 / {v['manholes']:,} 井"
                                                   for k, v in counts.items()))
        problems += [f"underground: {p}" for p in pipe_problems]
    if m.sensing:  # the sensing demo's readings, the pilot's rules evaluated naively
        from data import sensing_demo

        doc = sensing_demo.read_plan(out_dir)
        seen = sensing_demo.naive_findings(doc, m.seed)
        console.print("sensing at " + m.sensing["reference_time"] + ": "
                      + ", ".join(f"{k} {' '.join(seen[k]) or '—'}" for k in sensing_demo.PLANTED_KINDS))
        problems += [f"sensing: {p}" for p in sensing_demo.verify(doc, seen)]
    for p in problems:
        err.print(f"[red]✗[/] {p}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]●[/] every planted case is found, no negative case is, nothing else is")


DEMO_ROLES = ("land-officer", "planner", "gis-staff", "admin")


@app.command("keys")
def keys(as_json: bool = typer.Option(False, "--json")) -> None:
    """Demo API keys, one per staff role (created once, kept in .geotwin/demo-keys.json, mode 600),
    so the demo's internal and restricted layers can be seen: paste one into the map's key box."""
    import json
    import os

    from spatial_api import db
    from spatial_api.config import get_settings
    from spatial_api.security import keys as api_keys

    settings = get_settings()
    path = settings.home / f"demo-keys-{settings.db_schema}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    with db.transaction(settings) as conn:
        live = {k.key_id for k in api_keys.listing(conn)}
        for role in DEMO_ROLES:
            key = stored.get(role)
            if not key or key.split("_")[1] not in live:
                stored[role] = api_keys.create(conn, f"demo-{role}", role, created_by="demo")
        # a community worker of the community with the most pilot households (sees only those)
        top = conn.execute("SELECT community FROM sensing_devices WHERE restricted AND retired_at IS NULL "
                           "GROUP BY community ORDER BY count(*) DESC, community LIMIT 1").fetchone()
        if top:
            role = f"community-worker ({top[0]})"
            key = stored.get(role)
            if not key or key.split("_")[1] not in live:
                stored[role] = api_keys.create(conn, f"demo-community-worker-{top[0]}", "community-worker",
                                               created_by="demo", community=top[0])
    path.write_text(json.dumps(stored, indent=1))
    os.chmod(path, 0o600)
    if as_json:
        print(json.dumps(stored))
        return
    table = Table("role", "API key (demo only)", title=f"demo keys (kept in {path})")
    for role in [r for r in stored if r in DEMO_ROLES or r.startswith("community-worker")]:
        table.add_row(role, stored[role])
    console.print(table)
