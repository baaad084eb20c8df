"""CIM builder benchmark: the LOD1 twin of the large demo district, and the duplex IFC against
``py3dtiles convert`` (PyPI) on the same file in the same run.

1. LOD1: the large district's ``buildings.gpkg`` (≈153 k footprints; built with ``geotwin demo
   build --size large --no-load`` when missing) is loaded by geotwin's own ingest into schema
   ``geotwin_cimbench``; then ``geotwin cim build --full`` (a fresh process each run: end to end,
   read from PostGIS → DEM → meshes and block models (the far view) → glb → tileset.json →
   registry) is timed, and so are an unchanged rebuild and a rebuild after a one-building
   changeset (incremental: its tile and the block tiles above it). Every glb of the last build
   goes through the Khronos validator.
2. BIM: ``geotwin cim convert-ifc duplex.ifc --at …`` (georeferenced, per-element metadata) vs
   ``py3dtiles convert duplex.ifc`` (peers' virtualenv ``.geotwin/bench/peers-venv``, ``py3dtiles[ifc]``),
   both as fresh processes, alternating, median of ``--runs``; output size and what metadata
   each carries.

    .venv/bin/python bench/cim.py [--runs 3] [--size large] [--no-write] [--keep]

The table goes between the bench:cim markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SCHEMA = "geotwin_cimbench"
START, END = "<!-- bench:cim:start -->", "<!-- bench:cim:end -->"
DUPLEX = ROOT.parent / "shared" / "samples" / "duplex.ifc"
AT = "114.2514,22.7215,35"


CPU: list[float] = []  # CPU seconds (user + sys) of each run's process tree, in call order


def run(cmd: list[str], env: dict | None = None, timeout: int = 1800) -> tuple[float, subprocess.CompletedProcess]:
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, p


def dir_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def b3dm_metadata(folder: Path) -> dict:
    """What py3dtiles' b3dm carry per feature (batch table keys) and per tile (extras)."""
    keys: set[str] = set()
    batch = 0
    for f in glob.glob(str(folder / "**" / "*.b3dm"), recursive=True):
        b = Path(f).read_bytes()
        _, _, _, ftj, ftb, btj, btb = struct.unpack_from("<4sIIIIII", b, 0)
        if ftj:
            ft = json.loads(b[28:28 + ftj].decode("utf-8").strip() or "{}")
            batch += int(ft.get("BATCH_LENGTH", 0))
        if btj:
            off = 28 + ftj + ftb
            keys |= set(json.loads(b[off:off + btj].decode("utf-8").strip() or "{}"))
    doc = json.loads((folder / "tileset.json").read_text())
    extras: set[str] = set()

    def walk(t):
        for k, v in ((t.get("extras") or {}).get("properties") or {}).items():
            extras.add(k if not isinstance(v, dict) else f"{k}.{{{','.join(sorted(v))}}}")
        for c in t.get("children", []):
            walk(c)

    walk(doc["root"])
    return {"batch_keys": sorted(keys), "batch_length": batch, "tile_extras": sorted(extras),
            "georeferenced": any(abs(v) > 1e5 for v in (doc["root"].get("transform") or [0])) }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ifc-runs", type=int, default=5, help="runs of each IFC converter (alternating)")
    ap.add_argument("--size", default="large")
    ap.add_argument("--peer-venv", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the bench schema and outputs")
    args = ap.parse_args()
    if args.runs < 2:
        raise SystemExit("--runs: at least 2")

    from spatial_api import db
    from spatial_api.config import get_settings
    from spatial_api.ingest import ingest_vector

    base = get_settings()
    settings = base.replace(db_schema=SCHEMA)
    data = Path(base.home) / "bench" / args.size
    if not (data / "buildings.gpkg").exists() or not (data / "dem.tif").exists():
        print(f"building the {args.size} demo district's files in {data} …", flush=True)
        run([str(ROOT / ".venv/bin/geotwin"), "demo", "build", "--size", args.size, "--out", str(data), "--no-load"])
    db.migrate(settings)
    t = time.perf_counter()
    s = ingest_vector(data / "buildings.gpkg", layer="buildings", key="building_id", valid_from="2025-06-30",
                      settings=settings)
    print(f"buildings layer in {SCHEMA}: {s.counts if hasattr(s, 'counts') else s} ({time.perf_counter() - t:.1f} s)",
          flush=True)

    env = dict(os.environ, GEOTWIN_DB_SCHEMA=SCHEMA)
    work = Path(tempfile.mkdtemp(prefix="cimbench-"))
    geotwin = str(ROOT / ".venv/bin/geotwin")
    out = work / "lod1"
    load = os.getloadavg()[0]

    # -- LOD1 ----------------------------------------------------------------------------------
    builds = []
    for i in range(args.runs):
        shutil.rmtree(out, ignore_errors=True)  # every run writes every file
        dt, p = run([geotwin, "cim", "build", "--id", "bench", "--out", str(out), "--dem", str(data / "dem.tif"),
                     "--full", "--json"], env)
        rep = json.loads(p.stdout)
        rep["wall"] = dt
        rep["cpu"] = CPU[-1]
        builds.append(rep)
        print(f"LOD1 full build {i + 1}: {rep['buildings']:,} buildings, {dt:.1f} s wall, {rep['cpu']:.1f} s CPU "
              f"({rep['buildings'] / dt:,.0f}/s), {rep['tiles']} tiles ({rep.get('block_tiles', 0)} blocks), "
              f"{rep['bytes_total'] / 1e6:.0f} MB; "
              f"phases {rep['timings']}", flush=True)
    noop = []
    for i in range(args.runs):
        dt, p = run([geotwin, "cim", "build", "--id", "bench", "--dem", str(data / "dem.tif"), "--json"], env)
        rep = json.loads(p.stdout)
        noop.append((dt, rep["tiles_written"]))
    # one building changes: a new version through the ingestion (upsert), then rebuild
    import geopandas as gpd

    one = gpd.read_file(data / "buildings.gpkg", rows=1)
    one["height_m"] = float(one["height_m"].iloc[0]) + 1.0 + (time.time() % 997) / 100  # a new value every run
    one_path = work / "one.gpkg"
    one.to_file(one_path, driver="GPKG")
    ingest_vector(one_path, layer="buildings", key="building_id", mode="upsert",
                  valid_from=datetime.now(timezone.utc).isoformat(), settings=settings)
    dt_inc, p = run([geotwin, "cim", "build", "--id", "bench", "--dem", str(data / "dem.tif"), "--json"], env)
    inc = json.loads(p.stdout)
    print(f"no-op rebuilds: {noop}; after one changed building: {dt_inc:.1f} s, {inc['tiles_written']} tiles "
          f"written {inc['written']}", flush=True)
    glbs = sorted(str(p) for p in out.rglob("*.glb"))
    t = time.perf_counter()
    v = subprocess.run(["node", str(ROOT / "cim_builder" / "validate_gltf.mjs"), "-"], input="\n".join(glbs),
                       capture_output=True, text=True, timeout=3600)
    vt = time.perf_counter() - t
    vrep = json.loads(v.stdout)
    sizes = sorted(Path(p).stat().st_size for p in glbs)
    print(f"validator: {len(glbs)} glb, {vrep['errors']} errors, {vt:.0f} s", flush=True)
    from cim_builder.tileset import check_tileset

    problems = check_tileset(out, check_positions=False)
    print(f"structural check: {len(problems)} problems {problems[:3]}", flush=True)

    # -- duplex: geotwin vs py3dtiles ----------------------------------------------------------------
    peer = (args.peer_venv or Path(base.home) / "bench" / "peers-venv") / "bin"
    if not (peer / "py3dtiles").exists():
        print("installing py3dtiles[ifc] into the peers' virtualenv …", flush=True)
        subprocess.run([str(peer / "python"), "-m", "pip", "install", "-q", "py3dtiles[ifc]"], check=True)
    p3d_version = subprocess.run([str(peer / "python"), "-c", "import importlib.metadata as m; "
                                  "print(m.version('py3dtiles'), m.version('ifcopenshell'))"],
                                 capture_output=True, text=True).stdout.split()
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    for i in range(args.ifc_runs):
        shutil.rmtree(work / "duplex", ignore_errors=True)
        dt, p = run([geotwin, "cim", "convert-ifc", str(DUPLEX), "--out", str(work / "duplex"), "--at", AT, "--json"])
        ours.append(dt)
        ours_cpu.append(CPU[-1])
        info = json.loads(p.stdout)
        dt, _ = run([str(peer / "py3dtiles"), "convert", str(DUPLEX), "--out", str(work / "p3d"), "--overwrite",
                     "--jobs", str(os.cpu_count() or 2)])
        theirs.append(dt)
        theirs_cpu.append(CPU[-1])
        print(f"duplex run {i + 1}: geotwin {ours[-1]:.2f} s ({ours_cpu[-1]:.2f} CPU), py3dtiles {theirs[-1]:.2f} s "
              f"({theirs_cpu[-1]:.2f} CPU)", flush=True)
    ob, of = dir_bytes(work / "duplex")
    tb, tf = dir_bytes(work / "p3d")
    p3meta = b3dm_metadata(work / "p3d")
    dv = json.loads(subprocess.run(["node", str(ROOT / "cim_builder" / "validate_gltf.mjs"),
                                    *glob.glob(str(work / "duplex" / "*.glb"))], capture_output=True, text=True).stdout)

    med = statistics.median
    walls = [b["wall"] for b in builds]
    cpus = [b["cpu"] for b in builds]
    full_wall = med(walls)
    n = builds[0]["buildings"]
    phases = builds[-1]["timings"]
    lines = [
        START,
        f"Run {datetime.now().strftime('%Y-%m-%d')} on this 2-core machine (shared: 1-min load average "
        f"{load:.1f} at the start), {args.runs} runs each, medians; `.venv/bin/python bench/cim.py`.",
        "",
        f"**LOD1 twin of the {args.size} district** ({n:,} buildings from PostGIS on the demo DEM; "
        "`geotwin cim build --full`, a fresh process, end to end):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| full build, wall clock (runs: {', '.join(f'{w:.1f}' for w in walls)} s) | {full_wall:.1f} s → "
        f"**{n / full_wall:,.0f} buildings/s** |",
        f"| CPU time of the build process (user + sys; runs: {', '.join(f'{c:.1f}' for c in cpus)} s) | "
        f"{med(cpus):.1f} s → {n / med(cpus):,.0f} buildings per CPU-second (PostgreSQL's share not counted) |",
        "| phases of the last run (s) | " + ", ".join(f"{k} {v}" for k, v in phases.items()) + " |",
        f"| output | {builds[-1]['tiles']:,} glb tiles ({builds[-1].get('block_tiles', 0):,} of them block models "
        f"for the far view), {builds[-1]['bytes_total'] / 1e6:.0f} MB "
        f"({builds[-1]['bytes_total'] / n:,.0f} B/building); largest tile {sizes[-1] / 1e6:.1f} MB, median "
        f"{sizes[len(sizes) // 2] / 1e3:.0f} kB; quadtree depth {builds[-1]['max_level']} |",
        f"| rebuild, nothing changed | {med(d for d, _ in noop):.1f} s, {noop[0][1]} tiles written |",
        f"| rebuild after a one-building changeset | {dt_inc:.1f} s, {inc['tiles_written']} tile(s) written "
        f"({', '.join(inc['written'])}) |",
        f"| Khronos glTF validator, every glb | {vrep['errors']} errors in {len(glbs)} files ({vt:.0f} s) |",
        f"| structural check of tileset.json | {len(problems)} problems |",
        "",
        f"**The duplex IFC** (IFC2X3, {info['elements']} elements) to 3D Tiles — fresh processes, alternating:",
        "",
        "| tool | seconds (median) | runs | CPU s (median) | output | per-element metadata | georeferenced |",
        "|---|---|---|---|---|---|---|",
        f"| geotwin `cim convert-ifc --at` | **{med(ours):.2f}** | {', '.join(f'{x:.2f}' for x in ours)} | "
        f"{med(ours_cpu):.2f} | "
        f"{of} files, {ob / 1e6:.2f} MB (glb, {dv['errors']} validator errors) | EXT_structural_metadata: GlobalId, "
        "IFC class, name, storey, storey elevation, material, below ground, space | yes (ECEF via the tile transform) |",
        f"| py3dtiles {p3d_version[0] if p3d_version else '?'} `convert` | {med(theirs):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in theirs)} | {med(theirs_cpu):.2f} | {tf} files, {tb / 1e6:.2f} MB (b3dm) | "
        f"{'batch table: ' + ', '.join(p3meta['batch_keys']) if p3meta['batch_keys'] else 'none per element'}; "
        f"per tile: {', '.join(p3meta['tile_extras']) or 'none'} | "
        f"{'yes' if p3meta['georeferenced'] else 'no (local coordinates)'} |",
        "",
        f"Ratio: geotwin takes {med(ours) / med(theirs):.2f}× py3dtiles' time on the duplex. Both mesh with "
        f"IfcOpenShell ({p3d_version[1] if len(p3d_version) > 1 else '?'}, kernel hybrid-cgal-simple-opencascade).",
        END,
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        from _common import write_block

        write_block(START, END, block, heading="CIM twin (3D Tiles)",
                    intro="`bench/cim.py`: the LOD1 build of the large district and the duplex IFC against "
                          "py3dtiles (see the script's docstring).")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        from _common import drop_schema

        drop_schema(settings, SCHEMA)


if __name__ == "__main__":
    main()
