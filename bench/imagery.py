"""Imagery-tile benchmark: geotwin's catalogue-backed TiTiler routes vs ``titiler.application``.

Same COG, same tiles, same format, same run. The medium demo district's latest imagery epoch (an
RGB JPEG-YCbCr COG in EPSG:4547) is registered by ``geotwin ingest imagery`` into collection
``ortho`` of schema ``geotwin_imgbench`` (the COG is copied as is into the bench's managed folder);
``titiler.application`` is given that very file with ``?url=``. The workload is a fixed list of 200
WebMercatorQuad tiles lying wholly inside the image — z14 ×12, z15 ×40, z16 ×64, z17 ×84, drawn
with a fixed seed — as JPEG from both:

  - geotwin, collection (mosaic over the catalogue, latest): ``/imagery/collections/ortho/tiles/WebMercatorQuad/{z}/{x}/{y}.jpg``
  - geotwin, item: ``/imagery/collections/ortho/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.jpg``
  - titiler.application: ``/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.jpg?url=<the COG>``

each one uvicorn worker, measured with ``wrk`` (a Lua script cycling through the 200 paths in a
fixed shuffled order) at 1 and 8 connections, servers alternating, ≥ 2 runs, medians. Every tile is
first fetched once from each server and the decoded pixels compared.

Section "grid" (issue 15, tiles from the grid): ``geotwin ingest imagery`` also writes a
web-optimised copy of the COG per served grid; geotwin reads a WebMercatorQuad tile at the copy's
zooms from the copy (no warping) and titiler.application reads the master COG (warped). The
workload is a fixed list of z13–16 tiles wholly inside the image (z13 ×4 where there are that
many, z14 ×12, z15 ×40, z16 ×64), as JPEG (geotwin's default for orthophotos) and as PNG:

  - geotwin (copy): ``/imagery/collections/ortho/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}``, its
    imagery tile cache off (``GEOTWIN_TILE_CACHE_MB=0``: every request reads and encodes);
  - titiler.application (master, warped): ``/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}?url=<COG>``;
  - titiler.application (copy): the same route on the copy (the read geotwin does, without
    geotwin: how much geotwin's catalogue query and middleware add);
  - geotwin (cache on): the geotwin route with the imagery tile cache on, after one pass (hits).

Per route: one tile's time per zoom (median of sequential requests), tiles/s with ``wrk`` at 1 and
8 connections, server CPU per tile; content: PSNR of geotwin's decoded tiles against
titiler.application's warped read per zoom (and after 4 × 4 averaging: the same picture, whatever
the nearest-neighbour sampling picks), identical tiles against titiler.application on the copy.

    .venv/bin/python bench/imagery.py [--runs 2] [--duration 15] [--sections catalogue,grid]

The tables go between the bench:imagery and bench:imagery-grid markers of docs/benchmarks.md.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402  (bench/_common.py: servers, wrk, docs/benchmarks.md)

ROOT = bc.ROOT
SCHEMA = "geotwin_imgbench"
START, END = "<!-- bench:imagery:start -->", "<!-- bench:imagery:end -->"
GRID_START, GRID_END = "<!-- bench:imagery-grid:start -->", "<!-- bench:imagery-grid:end -->"
PER_ZOOM = {14: 12, 15: 40, 16: 64, 17: 84}
FORMAT = "jpg"
SINGLE_N = 20
#: Section "grid": tiles per zoom (z13: as many as lie wholly inside the image, up to 4).
GRID_PER_ZOOM = {13: 4, 14: 12, 15: 40, 16: 64}
GRID_FORMATS = ("jpg", "png")
GRID_SINGLE_N = 8  # sequential requests per zoom and route for "one tile" (TiTiler's warped read: ~0.5 s each)


def tile_list(bounds_lonlat: tuple[float, float, float, float], per_zoom: dict[int, int] | None = None,
              at_most: tuple[int, ...] = ()) -> list[tuple[int, int, int]]:
    """``per_zoom`` tiles per zoom (default PER_ZOOM), each wholly inside the image, drawn with a
    fixed seed; at the zooms in ``at_most``, as many as there are up to that number (none: the zoom is
    left out)."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    w, s, e, n = bounds_lonlat
    rng = random.Random(2024)
    out = []
    for z, k in (per_zoom or PER_ZOOM).items():
        inside = []
        for t in tms.tiles(w, s, e, n, [z]):
            b = tms.bounds(t)
            if b.left >= w and b.right <= e and b.bottom >= s and b.top <= n:
                inside.append((t.z, t.x, t.y))
        if z in at_most:
            k = min(k, len(inside))
            if k == 0:
                print(f"no z{z} tile lies wholly inside the image: z{z} left out", flush=True)
                continue
        if len(inside) < k:
            raise SystemExit(f"only {len(inside)} z{z} tiles lie wholly inside the image (need {max(k, 1)})")
        out += sorted(rng.sample(inside, k))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads: GDAL decodes in the request's thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode(body: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(body)))


def rgb(body: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype("float64")


def psnr(mse: float) -> float:
    import math

    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def grid_section(args, servers: dict, paths_of, tiles: list[tuple[int, int, int]], work: Path, facts: dict,
                 notes: list[str]) -> list[str]:
    """Section "grid" (issue 15): geotwin reading the web-optimised copy against
    titiler.application's warped read of the master COG. ``paths_of(route, fmt)``: the paths of
    ``tiles`` on that route. Returns the markdown lines of its table."""
    import numpy as np

    med = statistics.median
    routes = {"geotwin (copy)": "geotwin", "titiler.application (master, warped)": "titiler.application",
              "titiler.application (copy)": "titiler.application", "geotwin (cache on)": "geotwin cached"}
    zooms = sorted({z for z, _, _ in tiles})
    single: dict[tuple[str, str, int], float] = {}
    quality: dict[tuple[str, int], dict] = {}
    same_as_copy: dict[str, int] = {}
    results: dict[tuple[str, str, int], list[dict]] = {}
    for fmt in GRID_FORMATS:
        # content first: every tile from each route
        bodies = {}
        for route, srv in routes.items():
            bodies[route] = []
            for t, p in zip(tiles, paths_of(route, fmt)):
                status, body, _ = bc.fetch(servers[srv].base + p)
                if status != 200:
                    notes.append(f"grid {fmt} {route} {t}: HTTP {status}")
                bodies[route].append(body if status == 200 else None)
        ours, warped = bodies["geotwin (copy)"], bodies["titiler.application (master, warped)"]
        same_as_copy[fmt] = sum(1 for a, b in zip(ours, bodies["titiler.application (copy)"])
                                if a and b and np.array_equal(decode(a), decode(b)))
        for z in zooms:
            sq = sq4 = n = n4 = same = total = 0
            for t, a, b in zip(tiles, ours, warped):
                if t[0] != z or not (a and b):
                    continue
                x, y = rgb(a), rgb(b)
                sq += ((x - y) ** 2).sum()
                n += x.size
                same += int((x == y).all(axis=-1).sum())
                total += x.shape[0] * x.shape[1]
                bx = x.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
                by = y.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
                sq4 += ((bx - by) ** 2).sum()
                n4 += bx.size
            quality[(fmt, z)] = {"psnr": psnr(sq / n) if n else None, "psnr4": psnr(sq4 / n4) if n4 else None,
                                 "same": same / total if total else None}
        # one tile at a time, per zoom (the middle tile of the zoom's list), routes alternating
        for z in zooms:
            i = [k for k, t in enumerate(tiles) if t[0] == z]
            i = i[len(i) // 2]
            times: dict[str, list[float]] = {}
            for rep in range(GRID_SINGLE_N + 2):
                for route, srv in routes.items():
                    t0 = time.perf_counter()
                    bc.fetch(servers[srv].base + paths_of(route, fmt)[i])
                    if rep >= 2:  # two unrecorded: the cached route's first pass, file caches
                        times.setdefault(route, []).append((time.perf_counter() - t0) * 1000)
            for route, ts in times.items():
                single[(route, fmt, z)] = med(ts)
        print(f"grid {fmt}: one tile, ms:", {f"{r} z{z}": round(single[(r, fmt, z)], 1) for r in routes for z in zooms},
              flush=True)
        # throughput
        for route, srv in routes.items():
            if args.warmup:
                bc.wrk_paths(servers[srv].base, paths_of(route, fmt), work / "grid.lua", threads=2, connections=8,
                             duration=args.warmup)
        for run in range(args.runs):
            for conns in (1, 8):
                order = list(routes) if (run + conns) % 2 else list(reversed(routes))
                for route in order:
                    srv = servers[routes[route]]
                    cpu0 = cpu_seconds(srv.proc.pid)
                    r = bc.wrk_paths(srv.base, paths_of(route, fmt), work / "grid.lua", threads=min(2, conns),
                                     connections=conns, duration=args.duration)
                    r["cpu_ms"] = (cpu_seconds(srv.proc.pid) - cpu0) * 1000 / max(r["requests"], 1)
                    results.setdefault((route, fmt, conns), []).append(r)
                    flag = f"  !! non-2xx {r['non2xx']} socket errors {r['socket_errors']}" if (
                        r["non2xx"] or r["socket_errors"]) else ""
                    print(f"grid {fmt} run {run + 1} c{conns} {route:38} {r['rps']:7.1f} tiles/s  p50 {r['p50']} ms  "
                          f"{r['requests']} requests  {r['cpu_ms']:.1f} ms CPU/tile{flag}", flush=True)

    def rps(route, fmt, conns):
        rs = results.get((route, fmt, conns))
        return med(r["rps"] for r in rs) if rs and not any(r["non2xx"] for r in rs) else None

    def cpu(route, fmt):
        return med(r["cpu_ms"] for c in (1, 8) for r in results.get((route, fmt, c), []))

    ref = "titiler.application (master, warped)"
    per_zoom = {z: sum(1 for t in tiles if t[0] == z) for z in zooms}
    lines = [
        GRID_START,
        f"### Imagery tiles from the grid: z{zooms[0]}–{zooms[-1]} WebMercatorQuad tiles, geotwin reading the "
        "web-optimised copy vs titiler.application's warped read of the COG (issue 15)",
        "",
        f"The same run and servers as the table above (one uvicorn worker each; geotwin with its imagery tile cache "
        f"off except on the \"cache on\" row). The item's web-optimised copy on WebMercatorQuad, written by "
        f"`geotwin ingest imagery` in {facts['copy_seconds']:.1f} s (both grids' copies: "
        f"{facts['grid_seconds']:.1f} s, the whole ingest {facts['ingest_seconds']:.1f} s): {facts['copy']}. "
        f"Tiles: " + ", ".join(f"z{z} ×{k}" for z, k in per_zoom.items()) + " wholly inside the image (fixed seed). "
        f"\"One tile\": the median of {GRID_SINGLE_N} sequential requests of one tile per zoom, routes taking turns. "
        f"Throughput: `wrk` -d{args.duration}s over the tile list after a {args.warmup} s warm-up, "
        f"{args.runs} runs per cell, medians.",
        "",
    ]
    for fmt in GRID_FORMATS:
        lines += [
            f"**{fmt.upper()}**",
            "",
            "| route | " + " | ".join(f"one z{z} tile, ms" for z in zooms)
            + " | tiles/s, 1 client | tiles/s, 8 clients | server CPU per tile, ms |",
            "|---|" + "---:|" * (len(zooms) + 3),
        ]
        for route in routes:
            r1, r8 = rps(route, fmt, 1), rps(route, fmt, 8)
            lines.append(f"| {route} | " + " | ".join(f"{single[(route, fmt, z)]:.1f}" for z in zooms)
                         + f" | {r1 and f'{r1:.1f}' or 'failed'} | {r8 and f'{r8:.1f}' or 'failed'} "
                         f"| {cpu(route, fmt):.1f} |")
        ratios = {z: single[(ref, fmt, z)] / single[("geotwin (copy)", fmt, z)] for z in zooms}
        r1 = rps("geotwin (copy)", fmt, 1), rps(ref, fmt, 1)
        r8 = rps("geotwin (copy)", fmt, 8), rps(ref, fmt, 8)
        tput = [a / b for a, b in (r1, r8) if a and b]
        met = min(ratios.values()) >= 10 and tput and min(tput) >= 10
        lines += [
            "",
            f"geotwin (copy) against titiler.application's warped read, {fmt.upper()}: one tile "
            + ", ".join(f"z{z} {v:.0f}×" for z, v in ratios.items()) + " faster; throughput "
            + " / ".join(f"{v:.0f}×" for v in tput) + " (1 / 8 clients). Goal (≥ 10× faster): "
            + ("met." if met else "NOT met."),
            "",
            "Pixels, geotwin (copy) against titiler.application (master, warped), decoded: "
            + "; ".join(f"z{z} PSNR {quality[(fmt, z)]['psnr']:.1f} dB ({quality[(fmt, z)]['psnr4']:.1f} dB after "
                        f"4 × 4 averaging, {100 * quality[(fmt, z)]['same']:.1f} % identical pixels)" for z in zooms)
            + f". Against titiler.application reading the copy: {same_as_copy[fmt]}/{len(tiles)} tiles identical.",
            "",
        ]
    lines += [
        "Reading the pixel figures: at the copy's finest zoom (z16) the copy holds the COG sampled at the grid's "
        "pixel centres with the nearest-neighbour kernel, as the warped read samples it: the pixels agree but "
        "where GDAL's approximate transformer picks the neighbouring source pixel. At coarser zooms the copy's "
        "overviews are made from its finest level while the warped read samples the COG's own overviews through "
        "a VRT on another pixel grid: both are nearest-neighbour samples of slightly different points, which on "
        "this high-frequency synthetic image differ pixel by pixel (the 4 × 4 averages show the same picture); on "
        "smooth imagery they agree within 2 grey levels (tests/integration/test_imagery_grids.py).",
        GRID_END,
    ]
    return lines


def main() -> None:
    ap = bc.arguments(__doc__, runs=2, duration=15, warmup=3)
    ap.set_defaults(size="medium")  # the demo district whose latest epoch is served
    ap.add_argument("--max-per-zoom", type=int, default=0,
                    help="at most this many tiles per zoom in the grid table (a quick smoke run; 0: all)")
    ap.add_argument("--sections", default="catalogue,grid",
                    help="which tables: catalogue (issue 4: the catalogue-backed routes), grid (issue 15: "
                         "tiles from the web-optimised copy); comma-separated")
    args = bc.parse(ap)
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if not sections or sections - {"catalogue", "grid"}:
        raise SystemExit("--sections: catalogue, grid or both")

    import importlib.metadata as md

    import numpy as np
    import rasterio
    from rasterio.warp import transform_bounds

    from spatial_api import db
    from spatial_api.config import Settings
    from spatial_api.ingest.imagery import ingest_imagery

    started = time.perf_counter()
    load_start = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    settings = Settings(db_schema=SCHEMA)
    demo = settings.home / "demo" / args.size
    if not (demo / "manifest.json").exists():
        from data.demo import build_files

        print(f"building the {args.size} demo district into {demo} …", flush=True)
        build_files(demo, size=args.size)
    from data.demo import Manifest

    manifest = Manifest.read(demo)
    epoch = manifest.imagery[-1]
    work = settings.home / "bench" / "imagery"
    work.mkdir(parents=True, exist_ok=True)
    versions = {p: md.version(p) for p in ("titiler.core", "titiler.application", "rio-tiler", "rasterio",
                                          "fastapi", "uvicorn")}
    servers: dict[str, bc.Server] = {}
    results: dict[tuple[str, int], list[dict]] = {}
    single: dict[str, float] = {}
    interleaved: dict[str, list[float]] = {}
    notes: list[str] = []
    grid_lines: list[str] = []
    grid_notes: list[str] = []
    med = statistics.median
    try:
        bc.drop_schema(settings, SCHEMA)
        db.migrate(settings)
        cog_dir = work / "cogs"
        if cog_dir.exists():
            shutil.rmtree(cog_dir)
        s = ingest_imagery(epoch.path, collection="ortho", datetime_=epoch.acquired_on, kind="ortho",
                           item_id=epoch.epoch_id, cog_dir=cog_dir, settings=settings)
        cog = s.cog_path
        wm_copy = s.grids["WebMercatorQuad"]
        with rasterio.open(cog) as src:
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
            cog_facts = {"size": f"{src.width} × {src.height}", "bands": src.count, "dtype": src.dtypes[0],
                         "compression": src.compression.name if src.compression else "none",
                         "block": src.block_shapes[0], "overviews": src.overviews(1), "res": src.res[0]}
        with rasterio.open(wm_copy["cog_path"]) as src:
            grid_facts = {
                "ingest_seconds": s.seconds, "grid_seconds": s.grid_seconds,
                # the WebMercatorQuad copy alone: timed again, apart from the ingest
                "copy_seconds": 0.0,
                "copy": f"{src.width} × {src.height} px, z{wm_copy['minzoom']}–{wm_copy['maxzoom']}, blocks "
                        f"{src.block_shapes[0]}, overviews {src.overviews(1)}, levels aligned with the tiles "
                        f"z{wm_copy['maxzoom'] - int(src.tags().get('TILING_SCHEME_ALIGNED_LEVELS', 0))}–"
                        f"{wm_copy['maxzoom']}, {src.compression.name}, {wm_copy['file_size'] / 1e6:.1f} MB "
                        f"(the COG: {Path(cog).stat().st_size / 1e6:.1f} MB)"}
        from spatial_api.ingest.imagery import write_grid_copy

        t0 = time.perf_counter()
        write_grid_copy(Path(cog), work / "copy_timing.tif", "WebMercatorQuad")
        grid_facts["copy_seconds"] = time.perf_counter() - t0
        (work / "copy_timing.tif").unlink()
        print(f"ingest {s.seconds:.1f} s, of which the grid copies {s.grid_seconds:.1f} s; {grid_facts}", flush=True)
        tiles = tile_list(bounds) if "catalogue" in sections else []
        per_zoom = {z: min(k, args.max_per_zoom) if args.max_per_zoom else k for z, k in GRID_PER_ZOOM.items()}
        grid_tiles = tile_list(bounds, per_zoom, at_most=(13,)) if "grid" in sections else []
        print(f"{Path(cog).name}: {cog_facts}; {len(tiles)} tiles, {len(grid_tiles)} grid tiles", flush=True)

        # the imagery tile cache off: every request reads and encodes (the "cache on" server is for the grid table)
        servers["geotwin"] = bc.geotwin_server("geotwin", settings, SCHEMA, work, ready_path="/imagery/collections/ortho",
                                               GEOTWIN_TILE_CACHE_MB="0")
        if "grid" in sections:
            servers["geotwin cached"] = bc.geotwin_server("geotwin cached", settings, SCHEMA, work,
                                                          ready_path="/imagery/collections/ortho")
        port = bc.free_port()
        titiler_env = {k: v for k, v in bc.clean_env().items() if not k.startswith("TITILER_")}
        servers["titiler.application"] = bc.Server(
            "titiler.application", [sys.executable, "-m", "uvicorn", "titiler.application.main:app", "--port", str(port),
                                    "--workers", "1", *bc.UVICORN_FLAGS], titiler_env, port, "/healthz", work)

        paths = {
            "geotwin": [f"/imagery/collections/ortho/tiles/WebMercatorQuad/{z}/{x}/{y}.{FORMAT}" for z, x, y in tiles],
            "geotwin item": [f"/imagery/collections/ortho/items/{epoch.epoch_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.{FORMAT}"
                             for z, x, y in tiles],
            "titiler.application": [f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.{FORMAT}?url={quote(cog, safe='')}"
                                    for z, x, y in tiles],
        }
        target = {"geotwin": "geotwin", "geotwin item": "geotwin", "titiler.application": "titiler.application"}
        for srv in servers.values():
            srv.start()

        def grid_paths(route: str, fmt: str) -> list[str]:
            if route.startswith("geotwin"):
                return [f"/imagery/collections/ortho/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}" for z, x, y in grid_tiles]
            url = quote(cog if "master" in route else wm_copy["cog_path"], safe="")
            return [f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}?url={url}" for z, x, y in grid_tiles]

        if "grid" in sections:
            grid_lines = grid_section(args, servers, grid_paths, grid_tiles, work, grid_facts, grid_notes)
        if "catalogue" in sections:  # section "catalogue" (issue 4)
            # content: every tile from every route, decoded and compared with titiler.application's
            bodies: dict[str, list[bytes | None]] = {}
            for name, ps in paths.items():
                bodies[name] = []
                for t, p in zip(tiles, ps):
                    status, body, _ = bc.fetch(servers[target[name]].base + p)
                    if status != 200:
                        notes.append(f"{name} {t}: HTTP {status}")
                    bodies[name].append(body if status == 200 else None)
            ref = bodies["titiler.application"]
            same_pixels = {name: sum(1 for a, b in zip(bodies[name], ref) if a and b and np.array_equal(decode(a), decode(b)))
                           for name in paths}
            same_bytes = {name: sum(1 for a, b in zip(bodies[name], ref) if a and b and a == b) for name in paths}
            sizes = {name: sum(len(b) for b in bodies[name] if b) for name in paths}
            print(f"identical pixels vs titiler.application: {same_pixels}; identical bytes: {same_bytes}", flush=True)
            mid = tiles[sum(k for z, k in PER_ZOOM.items() if z < 16) + PER_ZOOM[16] // 2] if tiles else None
            for name, ps in paths.items():
                p = ps[tiles.index(mid)]
                ts = []
                for _ in range(SINGLE_N + 5):
                    t0 = time.perf_counter()
                    bc.fetch(servers[target[name]].base + p)
                    ts.append((time.perf_counter() - t0) * 1000)
                single[name] = med(ts[5:])
            print("single z16 tile ms:", {k: round(v, 1) for k, v in single.items()}, flush=True)
            # every tile once per route, the routes interleaved tile by tile (order rotating): load from
            # other work on the machine then falls on every route alike
            names = list(paths)
            for i, t in enumerate(tiles):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    t0 = time.perf_counter()
                    status, _, _ = bc.fetch(servers[target[name]].base + paths[name][i])
                    interleaved.setdefault(name, []).append(time.perf_counter() - t0)
                    if status != 200:
                        notes.append(f"interleaved pass: {name} {t}: HTTP {status}")
            print("interleaved pass, s:", {k: round(sum(v), 1) for k, v in interleaved.items()}, flush=True)
            for name in paths:
                if args.warmup:
                    bc.wrk_paths(servers[target[name]].base, paths[name], work / f"{name.replace(' ', '_')}.lua",
                                 threads=2, connections=8, duration=args.warmup)
            for run in range(args.runs):
                for conns in (1, 8):
                    order = list(paths) if (run + conns) % 2 else list(reversed(paths))
                    for name in order:
                        cpu0 = cpu_seconds(servers[target[name]].proc.pid)
                        r = bc.wrk_paths(servers[target[name]].base, paths[name], work / f"{name.replace(' ', '_')}.lua",
                                         threads=min(2, conns), connections=conns, duration=args.duration)
                        r["cpu_ms"] = (cpu_seconds(servers[target[name]].proc.pid) - cpu0) * 1000 / max(r["requests"], 1)
                        results.setdefault((name, conns), []).append(r)
                        flag = f"  !! non-2xx {r['non2xx']} socket errors {r['socket_errors']}" if (
                            r["non2xx"] or r["socket_errors"]) else ""
                        print(f"run {run + 1} c{conns} {name:20} {r['rps']:6.1f} tiles/s  p50 {r['p50']} ms  "
                              f"{r['requests']} requests  {r['cpu_ms']:.1f} ms CPU/tile{flag}", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        if not args.keep:
            bc.drop_schema(settings, SCHEMA)
            shutil.rmtree(work / "cogs", ignore_errors=True)

    elapsed = time.perf_counter() - started
    if grid_lines:
        if grid_notes:
            grid_lines[-1:-1] = ["", "Notes: " + "; ".join(grid_notes[:10])]
        grid_table = "\n".join(grid_lines)
        print(grid_table)
        if not args.no_write:
            bc.write_block(GRID_START, GRID_END, grid_table, heading="Imagery tiles from the grid",
                           intro="`.venv/bin/python bench/imagery.py --sections grid` (also part of the default run): "
                                 "geotwin reading an item's web-optimised copy against titiler.application's warped "
                                 "read of the item's COG, z13–16, JPEG and PNG, measured with `wrk`.")
            print(f"written to {ROOT / 'docs' / 'benchmarks.md'}")
    if "catalogue" not in sections:
        return

    def rps(name, conns):
        rs = results.get((name, conns))
        return med(r["rps"] for r in rs) if rs and not any(r["non2xx"] for r in rs) else None

    def runs_txt(name, conns):
        return " / ".join(f"{r['rps']:.1f}" for r in results[(name, conns)])

    def cpu(name):
        return med(r["cpu_ms"] for conns in (1, 8) for r in results.get((name, conns), []))

    ref1, ref8 = rps("titiler.application", 1), rps("titiler.application", 8)
    ref_cpu = cpu("titiler.application")
    rows = []
    for name in ("geotwin", "geotwin item", "titiler.application"):
        r1, r8 = rps(name, 1), rps(name, 8)
        if not (r1 and r8):
            rows.append(f"| {name} | failed | failed | — | — | — | — | — |")
            continue
        rows.append(f"| {name} (`{paths[name][0].split('?')[0].rsplit('/', 4)[0]}/…`) | {r1:.1f} ({runs_txt(name, 1)}) "
                    f"| {r8:.1f} ({runs_txt(name, 8)}) | {ref1 / r1:.2f}× / {ref8 / r8:.2f}× "
                    f"| {len(tiles) / sum(interleaved[name]):.1f} ({sum(interleaved[name]) / sum(interleaved['titiler.application']):.2f}×) "
                    f"| {cpu(name):.1f} ({cpu(name) / ref_cpu:.2f}×) | {single[name]:.1f} | {same_pixels[name]}/{len(tiles)} |")
    g1, g8 = rps("geotwin", 1), rps("geotwin", 8)
    verdict = ("met" if g1 and g8 and ref1 / g1 <= 1.1 and ref8 / g8 <= 1.1 else "NOT met")
    lines = [
        START,
        f"### Imagery tiles: {len(tiles)} WebMercatorQuad JPEG tiles from one COG (geotwin vs titiler.application)",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; titiler.core {versions['titiler.core']}, "
        f"titiler.application {versions['titiler.application']}, rio-tiler {versions['rio-tiler']}, rasterio "
        f"{versions['rasterio']}, FastAPI {versions['fastapi']}, uvicorn {versions['uvicorn']} — the same "
        f"virtualenv and GDAL for both. One uvicorn worker each, no access log, no cache (geotwin's imagery "
        f"tile cache off). Whole script {elapsed / 60:.1f} min. Since issue 15 geotwin reads a tile at the zooms "
        f"of the item's web-optimised copy (z{wm_copy['minzoom']}–{wm_copy['maxzoom']}) from the copy, without "
        f"warping (the table \"Imagery tiles from the grid\"): its pixels are then the copy's, not those of "
        f"titiler.application's warped read of the COG, hence the last column.",
        "",
        f"Data: the {args.size} demo district's latest epoch `{Path(epoch.path).name}` ({cog_facts['size']} px, "
        f"{cog_facts['bands']} × {cog_facts['dtype']}, {cog_facts['compression']}, {cog_facts['res']:g} m, blocks "
        f"{cog_facts['block']}, overviews {cog_facts['overviews']}), registered by `geotwin ingest imagery` "
        f"(already a COG: copied as is); titiler.application reads the very same file through `?url=`. Tiles: "
        f"z14 ×{PER_ZOOM[14]}, z15 ×{PER_ZOOM[15]}, z16 ×{PER_ZOOM[16]}, z17 ×{PER_ZOOM[17]}, each wholly inside "
        f"the image (fixed seed), `.{FORMAT}` from every route. `wrk -t1 -c1` and `wrk -t2 -c8`, "
        f"-d{args.duration}s, a Lua `request()` cycling through the {len(tiles)} paths in a fixed shuffled "
        f"order, after a {args.warmup} s warm-up at 8 clients; {args.runs} runs per cell, servers alternating; "
        f"medians (runs in brackets). geotwin's collection route asks PostGIS for the collection and the "
        f"items covering the tile at every request (one prepared query), then mosaics them newest first "
        f"(here one item covers every tile); the item route looks the item up (one query) and reads it with "
        f"TiTiler's `Reader`, as titiler.application's `/cog` route does. \"Interleaved pass\": every one of "
        f"the {len(tiles)} tiles fetched once from each route by one sequential client, the routes taking turns "
        f"tile by tile (rotating order), so that load from other work falls on all routes alike. "
        f"\"Server CPU per tile\" is the "
        f"server process's user + system CPU time (/proc) over each wrk run divided by its requests, median "
        f"over all runs: unlike tiles/s it hardly moves when other work shares the 2 cores (PostgreSQL's "
        f"CPU for geotwin's catalogue query is not in it). Load average at the start: {load_start}.",
        "",
        "| route | tiles/s, 1 client | tiles/s, 8 clients | titiler.application's rate ÷ this (1 / 8) | interleaved pass: tiles/s (time vs titiler.application) | server CPU per tile, ms (vs titiler.application) | one z16 tile, ms | tiles with titiler.application's pixels |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Bytes over the {len(tiles)} tiles: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
        + "; byte-identical tiles vs titiler.application: " + ", ".join(f"{k} {v}" for k, v in same_bytes.items())
        + ".",
        "",
        f"Against issue 4's goal (imagery tiles within 1.1× of titiler.application, collection route): {verdict} "
        f"by throughput (titiler.application's tiles/s ÷ geotwin's: 1 client {ref1 / g1:.2f}×, 8 clients "
        f"{ref8 / g8:.2f}×); interleaved sequential pass {sum(interleaved['geotwin']) / sum(interleaved['titiler.application']):.2f}× "
        f"titiler.application's time; server CPU per tile {cpu('geotwin') / ref_cpu:.2f}× titiler.application's." if g1 and g8 else
        "Against issue 4's goal: the geotwin run failed.",
    ]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes[:10])]
    lines.append(END)
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        bc.write_block(START, END, table, heading="Imagery tiles",
                       intro="`.venv/bin/python bench/imagery.py` runs `bench/imagery.py`: geotwin's catalogue-backed "
                             "imagery tiles (TiTiler) against `titiler.application` on the same COG, same 200 tiles, "
                             "same format, measured with `wrk`.")
        print(f"written to {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
