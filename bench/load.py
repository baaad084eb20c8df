"""Load benchmark (issue 8): `geotwin serve --workers 2` under wrk for a sustained period, on a
vector tile endpoint (cached and uncached) and on an items endpoint; zero errors expected.

Data: the medium demo district already loaded in schema ``geotwin`` (read only; nothing is
written). Public layers only, anonymous requests (as a public web map would send them).

Workloads, each ``--duration`` seconds (default 60) with ``wrk -t2 -c16`` and a Lua script that
cycles through a fixed list of paths (bench/_common.py's ``wrk_paths``, fixed shuffled order):

1. ``tiles uncached``: ``/tiles/buildings/{z}/{x}/{y}.mvt`` over a fixed block of tiles around
   (114.25 E, 22.72 N) at every zoom the layer serves from its minimum up to 16, with
   ``GEOTWIN_TILE_CACHE_MB=0`` so that every request renders from PostGIS;
2. ``tiles cached``: the same list with the default in-process tile cache, warmed by passes over
   the list until both workers answer every tile from their cache;
3. ``items``: ``/collections/buildings/items?limit=50&bbox=…`` over a 10 × 10 grid of bbox cells
   covering the layer's extent (GeoJSON, numberMatched included).

The server is the real CLI, `geotwin serve --workers 2` (uvicorn, two worker processes, its own
info log / access log as in production), in its own process group, stopped by its own pid.
Before each measured run, ``--warmup`` seconds of unrecorded wrk. Figures: requests/s, p50 and
p99 latency (wrk --latency), requests, non-2xx responses and socket errors — the run fails unless
the last two are zero. The 1-minute load average before and after each run is recorded, since
the machine is shared.

    .venv/bin/python bench/load.py [--duration 60] [--warmup 5] [--connections 16] [--no-write]

Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Server, fetch, free_port, geotwin_env, wrk_paths, write_block  # noqa: E402

SCHEMA = "geotwin"
START, END = "<!-- bench:load:start -->", "<!-- bench:load:end -->"
CENTRE = (114.25, 22.72)
LAYER = "buildings"
#: zoom -> (columns, rows) of the block of tiles centred on CENTRE's tile.
BLOCKS = {12: (4, 4), 13: (6, 6), 14: (8, 8), 15: (8, 8), 16: (8, 6)}
OUT = ROOT / ".geotwin" / "bench" / "load"


def tile_paths(minzoom: int, maxzoom: int) -> list[str]:
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    out = []
    for z, (w, h) in BLOCKS.items():
        if not minzoom <= z <= maxzoom:
            continue
        c = tms.tile(*CENTRE, z)
        x0, y0 = c.x - w // 2, c.y - h // 2
        out += [f"/tiles/{LAYER}/{z}/{x}/{y}.mvt" for y in range(y0, y0 + h) for x in range(x0, x0 + w)]
    return out


def item_paths(bbox: list[float], n: int = 10) -> list[str]:
    w, s, e, nn = bbox
    dx, dy = (e - w) / n, (nn - s) / n
    return [f"/collections/{LAYER}/items?limit=50&bbox={w + i * dx:.6f},{s + j * dy:.6f},"
            f"{w + (i + 1) * dx:.6f},{s + (j + 1) * dy:.6f}" for j in range(n) for i in range(n)]


def serve(settings, log_dir: Path, **env: str) -> Server:
    """`geotwin serve --workers 2` on a free port over the demo schema."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "geotwin"), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2"]
    srv = Server("geotwin serve" + ("" if not env else " " + " ".join(f"{k}={v}" for k, v in env.items())),
                 cmd, geotwin_env(settings, SCHEMA, **env), port, f"/collections/{LAYER}", log_dir)
    srv.start()
    return srv


def check_all(base: str, paths: list[str]) -> dict[int, int]:
    """Every path once: status counts (a bench over 404s would be meaningless)."""
    counts: dict[int, int] = {}
    for p in paths:
        status, _, _ = fetch(base + p)
        counts[status] = counts.get(status, 0) + 1
    return counts


def warm_cache(base: str, paths: list[str], rounds: int = 6) -> int:
    """``rounds`` passes over the tiles, so that each of the two workers (each with its own
    in-process cache; the kernel spreads connections between them) has rendered every tile."""
    for k in range(rounds):
        for p in paths:
            fetch(base + p)
    return rounds * len(paths)


def loadavg() -> float:
    return os.getloadavg()[0]


def run(name: str, base: str, paths: list[str], args, script: Path) -> dict:
    if args.warmup:
        wrk_paths(base, paths, script, threads=2, connections=args.connections, duration=args.warmup)
    before = loadavg()
    res = wrk_paths(base, paths, script, threads=2, connections=args.connections, duration=args.duration)
    res.update(name=name, load_before=before, load_after=loadavg(), paths=len(paths))
    print(f"{name}: {res['rps']:.0f} req/s, p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, "
          f"{res['requests']} requests, non-2xx {res['non2xx']}, socket errors {res['socket_errors']}, "
          f"load {before:.1f} → {res['load_after']:.1f}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=5, help="seconds of unrecorded wrk before each run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    from spatial_api.config import get_settings

    settings = get_settings().replace(db_schema=SCHEMA)
    OUT.mkdir(parents=True, exist_ok=True)
    script = OUT / "paths.lua"
    results = []

    uncached = serve(settings, OUT, GEOTWIN_TILE_CACHE_MB="0")
    try:
        status, body, _ = fetch(uncached.base + f"/tiles/{LAYER}/tilejson.json")
        assert status == 200, body[:300]
        import json

        tj = json.loads(body)
        tiles = tile_paths(tj["minzoom"], min(tj["maxzoom"], 16))
        status, body, _ = fetch(uncached.base + f"/collections/{LAYER}")
        bbox = json.loads(body)["extent"]["spatial"]["bbox"][0]
        items = item_paths(bbox)
        for label, paths in (("tiles", tiles), ("items", items)):
            counts = check_all(uncached.base, paths)
            bad = {s: n for s, n in counts.items() if s not in (200, 204)}
            if bad:
                raise SystemExit(f"{label}: some paths fail before the run: {bad}")
            print(f"{label}: {len(paths)} paths, statuses {counts}", flush=True)
        results.append(run("tiles, uncached", uncached.base, tiles, args, script))
        results.append(run("items (bbox, limit 50)", uncached.base, items, args, script))
    finally:
        uncached.stop()

    cached = serve(settings, OUT)
    try:
        warm_cache(cached.base, tiles)
        results.append(run("tiles, cached", cached.base, tiles, args, script))
    finally:
        cached.stop()

    failed = [r["name"] for r in results if r["non2xx"] or r["socket_errors"]]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {r['name']} | {r['paths']} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['requests']:,} | "
        f"{r['non2xx']} | {r['socket_errors'] or 0} | {r['load_before']:.1f} → {r['load_after']:.1f} |"
        for r in results)
    block = (f"{START}\n"
             f"`geotwin serve --workers 2`, schema `{SCHEMA}` (medium demo), layer `{LAYER}`; "
             f"`wrk -t2 -c{args.connections} -d{args.duration}s` after {args.warmup} s of warm-up; "
             f"{when}, commit {commit or '?'}, {os.cpu_count()} cores shared with other work "
             "(1-min load average before → after each run shown).\n\n"
             "| workload | paths | req/s | p50 ms | p99 ms | requests | non-2xx | socket errors | load avg |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
             f"{rows}\n\n"
             f"{'**Errors** in: ' + ', '.join(failed) if failed else 'Zero non-2xx responses and zero socket errors.'}\n"
             f"{END}")
    print(block)
    if not args.no_write:
        write_block(START, END, block, heading="Load (issue 8)",
                    intro="`bench/load.py`: sustained load on a vector-tile endpoint (uncached and cached) and an "
                          "items endpoint with the production server command; zero errors expected.")
    if failed:
        raise SystemExit(f"errors under load: {', '.join(failed)}")


if __name__ == "__main__":
    random.seed(0)
    main()
