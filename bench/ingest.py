"""Ingest benchmark: geotwin's versioned, validated ingest vs `ogr2ogr -f PostgreSQL`.

Both load the large demo district's land-use GeoPackage (EPSG:4547) into the same database,
reprojected to EPSG:4490, in the same run, alternating which goes first. Both are timed as the
command a GIS officer types (process start to exit). geotwin also re-ingests the second survey
year in replace mode (only the changes are written).

    .venv/bin/python bench/ingest.py [--runs 2] [--size large] [--file X.gpkg --key bsm]

Writes its table into docs/benchmarks.md (between the bench:ingest markers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, unquote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = "geotwin_bench"
START, END = "<!-- bench:ingest:start -->", "<!-- bench:ingest:end -->"


def find_land_use(manifest_path: Path) -> list[dict]:
    """Land-use entries of a demo manifest, oldest first (whatever the manifest's nesting)."""
    found: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("layer") == "land_use" and node.get("path"):
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(manifest_path.read_text()))
    found.sort(key=lambda e: str(e.get("valid_from")))
    for e in found:
        p = Path(e["path"])
        e["path"] = str(p if p.is_absolute() else manifest_path.parent / p)
    return found


def pg_conninfo(url: str) -> str:
    u = urlparse(url)
    parts = {"host": u.hostname or "127.0.0.1", "port": str(u.port or 5432),
             "dbname": (u.path or "/").lstrip("/"), "user": unquote(u.username or ""),
             "password": unquote(u.password or "")}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:4])} …\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--size", default="large")
    ap.add_argument("--file", help="a GeoPackage to use instead of the demo land-use layer")
    ap.add_argument("--file2", help="its next version (replace-mode re-ingest)")
    ap.add_argument("--key", default="bsm")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    from spatial_api import db
    from spatial_api.config import Settings

    settings = Settings(db_schema=SCHEMA)
    if args.file:
        files = [{"path": args.file, "valid_from": "2020-12-31"}]
        if args.file2:
            files.append({"path": args.file2, "valid_from": "2023-12-31"})
    else:
        out = settings.home / "bench" / args.size
        manifest = out / "manifest.json"
        if not manifest.exists():
            from data.demo import build_files

            print(f"building the {args.size} demo district into {out} …", flush=True)
            t = time.perf_counter()
            build_files(out, size=args.size)
            print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
        files = find_land_use(manifest)
    src = files[0]["path"]

    import pyogrio

    info = pyogrio.read_info(src)
    n_features = info["features"]
    url = db.database_url(settings)
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    db.migrate(settings)

    env = dict(os.environ, GEOTWIN_DB_SCHEMA=SCHEMA, PGCLIENTENCODING="UTF8")
    geotwin = str(Path(sys.executable).parent / "geotwin")
    ogr2ogr = shutil.which("ogr2ogr")
    if not ogr2ogr:
        raise SystemExit("ogr2ogr not found: `make setup` installs gdal-bin")
    gdal_version = subprocess.run([ogr2ogr, "--version"], capture_output=True, text=True).stdout.strip()

    ogr_times, gt_times, gt_inner, re_times = [], [], [], []
    for run in range(args.runs):
        order = ["ogr", "geotwin"] if run % 2 == 0 else ["geotwin", "ogr"]
        for who in order:
            if who == "ogr":
                sec, _ = timed([ogr2ogr, "-f", "PostgreSQL", f"PG:{pg_conninfo(url)}", src,
                                "-nln", f"{SCHEMA}.ogr_land_use", "-t_srs", "EPSG:4490", "-overwrite",
                                "-lco", "GEOMETRY_NAME=geom", "--config", "PG_USE_COPY", "YES"], env)
                ogr_times.append(sec)
            else:
                layer = f"land_use_r{run}"
                sec, out = timed([geotwin, "ingest", "vector", src, "--layer", layer, "--key", args.key,
                                  "--valid-from", str(files[0]["valid_from"])[:10], "--json"], env)
                summary = json.loads(out)
                assert summary["added"] == n_features - summary["rejected"], summary
                gt_times.append(sec)
                gt_inner.append(summary["seconds"])
                if len(files) > 1:
                    sec2, out2 = timed([geotwin, "ingest", "vector", files[1]["path"], "--layer", layer,
                                        "--valid-from", str(files[1]["valid_from"])[:10], "--json"], env)
                    s2 = json.loads(out2)
                    re_times.append((sec2, s2))
            print(f"run {run + 1} {who}: {sec:.2f} s", flush=True)

    with db.connect(settings) as conn:
        ogr_count = conn.execute(f"SELECT count(*) FROM {SCHEMA}.ogr_land_use").fetchone()[0]
        pg = conn.execute("SHOW server_version").fetchone()[0]
        postgis = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
    med = statistics.median
    ratio = med(gt_times) / med(ogr_times)
    lines = [
        START,
        f"### Ingest: {n_features:,} land-use polygons (GeoPackage, EPSG:4547 → EPSG:4490)",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {pg}, PostGIS {postgis}, "
        f"{gdal_version}; {args.runs} runs each, alternating order, median wall time of the command "
        f"(process start to exit). Source: `{Path(src).name}` ({Path(src).stat().st_size / 1e6:.0f} MB). "
        f"Rows loaded: ogr2ogr {ogr_count:,}, geotwin {n_features:,}.",
        "",
        "| what | median s | runs s | vs ogr2ogr |",
        "|---|---:|---:|---:|",
        f"| `ogr2ogr -f PostgreSQL -t_srs EPSG:4490 --config PG_USE_COPY YES` (plain table + GiST) | "
        f"{med(ogr_times):.2f} | {', '.join(f'{t:.2f}' for t in ogr_times)} | 1.00× |",
        f"| `geotwin ingest vector` new layer: validate/repair, key check, versioned store, "
        f"Web Mercator copy, content hash, 5 indexes | {med(gt_times):.2f} | "
        f"{', '.join(f'{t:.2f}' for t in gt_times)} | {ratio:.2f}× |",
        f"| — of which inside `ingest_vector` (no interpreter start-up) | {med(gt_inner):.2f} | "
        f"{', '.join(f'{t:.2f}' for t in gt_inner)} | {med(gt_inner) / med(ogr_times):.2f}× |",
    ]
    if re_times:
        s2 = re_times[-1][1]
        lines.append(
            f"| `geotwin ingest vector --mode replace` of the next survey year "
            f"({s2['added']:,} added, {s2['changed']:,} changed, {s2['closed']:,} closed, "
            f"{s2['unchanged']:,} unchanged) | {med([t for t, _ in re_times]):.2f} | "
            f"{', '.join(f'{t:.2f}' for t, _ in re_times)} | — |")
    lines += ["", f"Goal: geotwin within 1.5× of ogr2ogr — {'met' if ratio <= 1.5 else 'NOT met'} "
              f"({ratio:.2f}×).", END]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
        if START in text:
            text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n## Ingest\n\n`make bench` / `bench/ingest.py`.\n\n" + block + "\n"
        doc.write_text(text)
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')


if __name__ == "__main__":
    main()
