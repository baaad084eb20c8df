"""Underground tileset benchmark (issue 17: ≥ 50,000 pipe segments/s on 2 cores, validator-clean).

A synthetic network — a street grid of N pipe segments (≈ 40 m, nine types at their customary
depths, 5 % of them W×H culverts, one manhole per five pipe points) and N/100 basements — is
written through the store (``store.write_changeset``, the contract's layers ``pipe_points``,
``pipe_segments``, ``basements``) into a throwaway schema ``geotwin_bench_underground``, then
``build_underground`` is timed (in this process, after one warm-up build on a small network so
that imports and PROJ set-up are not counted; the build itself reads on two connections and
meshes in two forked worker processes, all of that inside the timing): read from PostGIS → prepare → layout → meshes
and glb → tileset.json + registry. Every glb of the last build goes through the Khronos
validator and the tileset through ``check_tileset``.

    .venv/bin/python bench/underground.py [--segments 50000 10000] [--runs 3] [--keep] [--reuse]
        [--md FILE] [--hashes FILE] [--profile FILE]

The schema is dropped at the end unless --keep; --reuse keeps a network of the same size that a
previous --keep run left (no reload). --hashes writes the SHA-256 of every glb of each size's last
build (to compare the output of two versions byte for byte); --profile runs one more build of
the first size under cProfile and writes its statistics (cumulative, top 60) to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = "geotwin_bench_underground"
os.environ["GEOTWIN_DB_SCHEMA"] = SCHEMA

import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

TYPES = [("给水", "JS", "top", 1.2, 300.0), ("雨水", "YS", "invert", 2.5, 800.0), ("污水", "WS", "invert", 3.0, 500.0),
         ("燃气", "RQ", "top", 1.0, 200.0), ("电力", "DL", "top", 0.8, 150.0), ("通信", "TX", "top", 0.7, 100.0),
         ("热力", "RL", "top", 1.5, 400.0), ("排水", "PS", "invert", 2.2, 600.0), ("工业", "GY", "top", 1.3, 250.0)]
X0, Y0 = 520000.0, 2510000.0
STEP = 40.0


def make(n: int, seed: int = 17):
    """N segments on a street grid: each street line carries one type; points every 40 m."""
    from spatial_api import store

    rng = np.random.default_rng(seed)
    to4490 = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
    per_line = 100  # segments per street line (4 km)
    lines = -(-n // per_line)
    li = np.repeat(np.arange(lines), per_line)[:n]
    k = np.tile(np.arange(per_line), lines)[:n]
    t = li % len(TYPES)
    street = li // len(TYPES)  # nine types share a street, 2 m apart
    horizontal = street % 2 == 0
    offset = (street // 2) * 120.0 + (li % len(TYPES)) * 2.0
    x0 = np.where(horizontal, X0 + k * STEP, X0 + offset)
    y0 = np.where(horizontal, Y0 + offset, Y0 + k * STEP)
    x1 = np.where(horizontal, x0 + STEP, x0)
    y1 = np.where(horizontal, y0, y0 + STEP)
    ground0 = 20 + 0.002 * (x0 - X0) + rng.normal(0, 0.05, n)
    ground1 = 20 + 0.002 * (x1 - X0) + rng.normal(0, 0.05, n)
    name = np.array([TYPES[i][0] for i in t], dtype=object)
    code = np.array([TYPES[i][1] for i in t], dtype=object)
    top = np.array([TYPES[i][2] == "top" for i in t])
    depth = np.array([TYPES[i][3] for i in t]) + rng.uniform(0, 0.4, n)
    dia = np.array([TYPES[i][4] for i in t])
    culvert = (rng.random(n) < 0.05) & ~top
    w = np.where(culvert, 1200.0, dia)
    h = np.where(culvert, 800.0, dia)
    dia = np.where(culvert, np.nan, dia)
    z0 = np.where(top, ground0 - depth - h / 2000, ground0 - depth + h / 2000)
    z1 = np.where(top, ground1 - depth - 0.01 * STEP - h / 2000, ground1 - depth - 0.01 * STEP + h / 2000)
    lon0, lat0 = to4490.transform(x0, y0)
    lon1, lat1 = to4490.transform(x1, y1)
    coords = np.stack([np.column_stack([lon0, lat0]), np.column_stack([lon1, lat1])], axis=1)
    sid = np.char.add(np.char.add(li.astype(str), "-"), k.astype(str)).astype(object)
    fids = (code + "-" + sid).astype(object)
    seg = store.FeatureRows(
        rows=np.arange(1, n + 1), fids=fids, geometry=shapely.linestrings(coords),
        properties=pd.DataFrame({"id": fids, "segment_id": sid, "type": name, "type_code": code,
                                 "diameter_mm": dia, "width_mm": w, "height_mm": h,
                                 "material": np.where(top, "PE", "钢筋混凝土"),
                                 "depth_ref": np.where(top, "top", "invert"),
                                 "start_axis_z": z0.round(4), "end_axis_z": z1.round(4)}))
    # manholes at every fifth point
    m = np.flatnonzero(k % 5 == 0)
    pid = (code[m] + "-" + sid[m] + "P").astype(object)
    bottom = np.minimum(z0[m] - h[m] / 2000 - 0.3, ground0[m] - 1.0)
    pts = store.FeatureRows(
        rows=np.arange(1, len(m) + 1), fids=pid, geometry=shapely.points(np.column_stack([lon0[m], lat0[m]])),
        properties=pd.DataFrame({"id": pid, "point_id": pid, "type": name[m], "type_code": code[m],
                                 "ground_z": ground0[m].round(3), "is_manhole": True, "appurtenance": "检查井",
                                 "well_depth": (ground0[m] - bottom).round(3), "bottom_z": bottom.round(3)}))
    # basements between the streets
    nb = max(n // 100, 1)
    bx = X0 + 20 + (np.arange(nb) % 33) * 120.0
    by = Y0 + 40 + (np.arange(nb) // 33) * 120.0
    boxes = shapely.box(bx, by, bx + 60, by + 45)
    boxes = shapely.transform(boxes, lambda c: np.column_stack(to4490.transform(c[:, 0], c[:, 1])))
    bid = np.array([f"BS{i:05d}" for i in range(nb)], dtype=object)
    bas = store.FeatureRows(
        rows=np.arange(1, nb + 1), fids=bid, geometry=boxes,
        properties=pd.DataFrame({"basement_id": bid, "building_id": "", "use": "地下车库", "levels": 2,
                                 "depth_m": 9.0, "ground_z": 20.0 + 0.002 * (bx - X0)}))
    return seg, pts, bas


def load(settings, n: int) -> None:
    from spatial_api import db, store

    seg, pts, bas = make(n)
    kinds = {"f": "number", "i": "integer", "b": "boolean"}
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    db.migrate(settings)
    with db.connect(settings) as conn:
        for name, family, key, rows in (("pipe_segments", "LineString", "id", seg), ("pipe_points", "Point", "id", pts),
                                        ("basements", "Polygon", "basement_id", bas)):
            props = [{"name": c, "type": kinds.get(rows.properties[c].dtype.kind, "string")}
                     for c in rows.properties.columns]
            store.create_layer(conn, store.Layer(name=name, geometry_family=family, key_field=key, properties=props),
                               with_partition=False)
            store.write_changeset(conn, store.get_layer(conn, name), rows, mode="replace",
                                  valid_from=datetime(2024, 1, 1, tzinfo=timezone.utc), author="bench",
                                  source="bench", new_layer=True)
        conn.commit()


def loaded(settings, n: int) -> bool:
    """The bench schema already holds the network of n segments (a previous --keep run)."""
    from spatial_api import db

    with db.connect(settings) as conn:
        if not conn.execute("SELECT to_regclass('layers') IS NOT NULL").fetchone()[0]:
            return False
        row = conn.execute("SELECT count(*) FILTER (WHERE layer = 'pipe_segments'), "
                           "count(*) FILTER (WHERE layer = 'basements') FROM features "
                           "WHERE valid_to IS NULL").fetchone()
    return tuple(row) == (n, max(n // 100, 1))


def glb_hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.glb"))}


def validate(folder: Path) -> tuple[int, float]:
    files = sorted(str(p) for p in folder.rglob("*.glb"))
    t = time.perf_counter()
    r = subprocess.run(["node", str(ROOT / "cim_builder" / "validate_gltf.mjs"), "-"], input="\n".join(files),
                       capture_output=True, text=True, timeout=1800, check=False)
    return json.loads(r.stdout)["errors"], time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, nargs="+", default=[50_000, 10_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the bench schema and tilesets")
    ap.add_argument("--reuse", action="store_true", help="keep a loaded network of the same size (no reload)")
    ap.add_argument("--md", type=Path, default=None, help="write the markdown section here")
    ap.add_argument("--hashes", type=Path, default=None, help="write the SHA-256 of every glb here (JSON)")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile one more build, statistics to this file")
    args = ap.parse_args()

    from cim_builder.tileset import check_tileset
    from cim_builder.underground import (
        MESH_PARALLEL_TILES,
        MESH_PROCESSES,
        PART_ROWS,
        READ_CONNECTIONS,
        build_underground,
    )
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    settings = get_settings()
    assert settings.db_schema == SCHEMA
    tmp = Path(tempfile.mkdtemp(prefix="bench-underground-"))
    results, hashes = [], {}
    load1 = os.getloadavg()[0]
    try:
        if not (args.reuse and loaded(settings, args.segments[0])):
            load(settings, 2000)
        build_underground(settings, out=tmp / "warm", full=True)  # imports, PROJ, pools: not counted
        for n in args.segments:
            t = time.perf_counter()
            if not (args.reuse and loaded(settings, n)):
                load(settings, n)
            load_s = time.perf_counter() - t
            runs = []
            for i in range(args.runs):
                out = tmp / f"n{n}"
                r = build_underground(settings, out=out, full=True)
                runs.append(r)
                print(f"{n:>7,} segments run {i + 1}: {r.seconds:.2f} s  {r.timings}  cpu {r.cpu}  "
                      f"{r.tiles} tiles {r.bytes_total / 1e6:.0f} MB  load {os.getloadavg()[0]:.2f}", flush=True)
            best = min(runs, key=lambda r: r.seconds)
            median = statistics.median(r.seconds for r in runs)
            mesh_write = statistics.median(r.timings["tiles"] + r.timings["write"] for r in runs)
            mesh_write_cpu = statistics.median(r.cpu["tiles"] + r.cpu["write"] for r in runs)
            cpu_total = statistics.median(sum(r.cpu.values()) for r in runs)
            hashes[n] = glb_hashes(tmp / f"n{n}")
            if args.profile and n == args.segments[0]:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                build_underground(settings, out=tmp / "profile", full=True)
                prof.disable()
                with args.profile.open("w") as fh:
                    pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
            errors, vs = validate(tmp / f"n{n}")
            problems = check_tileset(tmp / f"n{n}")
            results.append({"n": n, "manholes": best.manholes, "structures": best.structures, "tiles": best.tiles,
                            "mb": best.bytes_total / 1e6, "vertices": best.vertices, "median": median,
                            "best": best.seconds, "mesh_write": mesh_write, "timings": best.timings,
                            "mesh_write_cpu": mesh_write_cpu, "cpu_total": cpu_total,
                            "errors": errors, "validate_s": vs, "problems": len(problems), "load_s": load_s})
            print(f"  validator: {errors} errors ({vs:.0f} s); check_tileset: {len(problems)} problems "
                  f"{problems[:3]}", flush=True)
    finally:
        if not args.keep:
            from spatial_api import db

            with db.connect(settings, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    load2 = os.getloadavg()[0]
    lines = ["### Underground tileset (pipes, manholes, basements → 3D Tiles 1.1)", "",
             (f"`bench/underground.py` on {os.cpu_count()} cores, {datetime.now():%Y-%m-%d}; machine shared with "
             f"other jobs (load average {load1:.1f} at the start, {load2:.1f} at the end). Synthetic street-grid network "
             "written through the store; `build_underground --full` timed in-process after a warm-up build, "
             f"median of {args.runs} runs. Read = PostGIS → numpy (each column one binary array; a layer in parts of "
             f"≈{PART_ROWS:,} rows by page range, {READ_CONNECTIONS} connections on one exported snapshot); "
             f"mesh + write = cylinders / boxes / shafts / prisms → glb files (in {MESH_PROCESSES} processes, "
             f"the build's and forked workers, from {MESH_PARALLEL_TILES} tiles when the 1-minute load average "
             "is below cores − ¼) → tileset.json + registry. CPU = CPU seconds of the build process "
             "and its mesh workers (the database server's share of the read is not in it): on a loaded machine "
             "the steadier measure."), "",
             ("| segments | manholes | basements | tiles | MB | vertices | build s (median) | segments/s (whole build) "
             "| read s | mesh + write s (wall / CPU) | segments/s mesh + write (wall / CPU) | build CPU s "
             "| validator errors | check_tileset |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['manholes']:,} | {r['structures']:,} | {r['tiles']} | {r['mb']:.0f} | "
                     f"{r['vertices']:,} | {r['median']:.2f} | {r['n'] / r['median']:,.0f} | {r['timings']['read']:.2f} | "
                     f"{r['mesh_write']:.2f} / {r['mesh_write_cpu']:.2f} | {r['n'] / r['mesh_write']:,.0f} / "
                     f"{r['n'] / r['mesh_write_cpu']:,.0f} | {r['cpu_total']:.2f} | {r['errors']} | "
                     f"{'ok' if not r['problems'] else str(r['problems']) + ' problems'} |")
    lines.append("")
    md = "\n".join(lines)
    print(md)
    if args.md:
        args.md.write_text(md + "\n")
    if args.hashes:
        args.hashes.write_text(json.dumps({str(n): h for n, h in hashes.items()}, indent=1))


if __name__ == "__main__":
    main()
