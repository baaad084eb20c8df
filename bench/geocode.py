"""Autocomplete / search latency on a demo district (not part of the test suite).

    geotwin demo build --size medium --out /tmp/medium --no-load
    .venv/bin/python bench/geocode.py /tmp/medium [--schema geocode_bench] [--http]

Loads the naming layers (streets, communities, place_names, addresses) of the demo build into
a scratch schema (recreated; never ``geotwin``), builds the geocode index, then replays every
keystroke of 150 sampled names and addresses (1, 2, 3 … characters) against
``/geocode/autocomplete`` and ``/geocode/search``: in process (FastAPI TestClient) and, with
``--http``, over HTTP against uvicorn on a free port. Prints median / p95 / p99 / max.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

NAMING_LAYERS = ("streets", "communities", "place_names", "addresses")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_dir", type=Path, help="a demo build (manifest.json)")
    ap.add_argument("--schema", default="geocode_bench")
    ap.add_argument("--http", action="store_true", help="also measure over HTTP (uvicorn)")
    ap.add_argument("--no-load", action="store_true", help="reuse the schema as loaded before")
    args = ap.parse_args(argv)
    if args.schema in ("geotwin", "public"):
        raise SystemExit("choose a scratch schema: it is dropped and recreated")
    os.environ["GEOTWIN_DB_SCHEMA"] = args.schema

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from data.demo import Manifest
    from spatial_api import db
    from spatial_api.config import get_settings, reset_settings
    from spatial_api.geocode import refresh, router
    from spatial_api.ingest import ingest_vector

    reset_settings()
    settings = get_settings()
    if not args.no_load:
        with db.connect(settings, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{db.schema_name(settings)}" CASCADE')
        db.migrate(settings)
        manifest = Manifest.read(args.demo_dir)
        for lf in manifest.layers:
            if lf.layer in NAMING_LAYERS:
                ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from,
                              crs=lf.crs, encoding=lf.encoding, author="bench", settings=settings)
        with db.connect(settings) as conn:
            t = time.perf_counter()
            counts = refresh(conn)
            print(f"index built: {counts} in {time.perf_counter() - t:.2f} s")

    app = FastAPI()
    app.include_router(router(settings))
    client = TestClient(app)
    with db.connect(settings) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM geocode_index WHERE layer <> 'addresses'")]
        shorts = [r[0] for r in conn.execute(
            "SELECT coalesce(short, name) FROM geocode_index WHERE layer = 'addresses'")]
        full = [r[0] for r in conn.execute("SELECT name FROM geocode_index WHERE layer = 'addresses'")]
    rng = random.Random(7)
    queries = [text[:i] for src in (rng.sample(names, 60), rng.sample(shorts, 60), rng.sample(full, 30))
               for text in src for i in range(1, len(text) + 1)]
    print(f"{len(queries)} keystroke queries ({len(names)} named things, {len(full)} addresses)")

    def measure(get, label: str) -> None:
        for q in queries[:50]:
            get(q)  # warm-up
        times = []
        for q in queries:
            t = time.perf_counter()
            r = get(q)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code in (200, 400), r.text
        times.sort()

        def pct(x: float) -> float:
            return times[min(len(times) - 1, int(len(times) * x))]

        print(f"{label}: median {pct(0.5):.1f} ms, p95 {pct(0.95):.1f} ms, p99 {pct(0.99):.1f} ms, "
              f"max {times[-1]:.1f} ms")

    measure(lambda q: client.get("/geocode/autocomplete", params={"q": q}), "autocomplete (in process)")
    measure(lambda q: client.get("/geocode/search", params={"q": q}), "search (in process)")
    if args.http:
        import httpx

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        code = ("from fastapi import FastAPI\nfrom spatial_api.geocode import router\n"
                "from spatial_api.config import get_settings\n"
                "app = FastAPI()\napp.include_router(router(get_settings()))\n")
        proc = subprocess.Popen(
            [sys.executable, "-c", "import uvicorn, types, sys\n"
             f"m = types.ModuleType('geocode_bench_app'); exec({code!r}, m.__dict__)\n"
             f"uvicorn.run(m.app, host='127.0.0.1', port={port}, log_level='warning')"],
            env={**os.environ, "GEOTWIN_DB_SCHEMA": args.schema},
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                for _ in range(200):
                    try:
                        http.get("/geocode/autocomplete", params={"q": "龙"})
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                measure(lambda q: http.get("/geocode/autocomplete", params={"q": q}),
                        "autocomplete (uvicorn, HTTP)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
