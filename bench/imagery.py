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

    .venv/bin/python bench/imagery.py [--runs 2] [--duration 15]

The table goes between the bench:imagery markers of docs/benchmarks.md.
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
PER_ZOOM = {14: 12, 15: 40, 16: 64, 17: 84}
FORMAT = "jpg"
SINGLE_N = 20


def tile_list(bounds_lonlat: tuple[float, float, float, float]) -> list[tuple[int, int, int]]:
    """PER_ZOOM tiles per zoom, each wholly inside the image, drawn with a fixed seed."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    w, s, e, n = bounds_lonlat
    rng = random.Random(2024)
    out = []
    for z, k in PER_ZOOM.items():
        inside = []
        for t in tms.tiles(w, s, e, n, [z]):
            b = tms.bounds(t)
            if b.left >= w and b.right <= e and b.bottom >= s and b.top <= n:
                inside.append((t.z, t.x, t.y))
        if len(inside) < k:
            raise SystemExit(f"only {len(inside)} z{z} tiles lie wholly inside the image (need {k})")
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


def main() -> None:
    ap = bc.arguments(__doc__, runs=2, duration=15, warmup=3)
    ap.set_defaults(size="medium")  # the demo district whose latest epoch is served
    args = bc.parse(ap)

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
        with rasterio.open(cog) as src:
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
            cog_facts = {"size": f"{src.width} × {src.height}", "bands": src.count, "dtype": src.dtypes[0],
                         "compression": src.compression.name if src.compression else "none",
                         "block": src.block_shapes[0], "overviews": src.overviews(1), "res": src.res[0]}
        tiles = tile_list(bounds)
        print(f"{Path(cog).name}: {cog_facts}; {len(tiles)} tiles", flush=True)

        servers["geotwin"] = bc.geotwin_server("geotwin", settings, SCHEMA, work, ready_path="/imagery/collections/ortho")
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
        mid = tiles[sum(k for z, k in PER_ZOOM.items() if z < 16) + PER_ZOOM[16] // 2]
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
        f"virtualenv and GDAL for both. One uvicorn worker each, no access log, no cache. Whole script "
        f"{elapsed / 60:.1f} min.",
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
