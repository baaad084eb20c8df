"""Sensing storage benchmark: SensorThings reads on 10 million observations (issue 16).

A schema of its own (``geotwin_sensbench``) gets 100 Things × 20 Datastreams = 2,000 datastreams
and 10 million observations spread over one year (5,000 per datastream, one every ~105 minutes,
numeric results), written by INSERT … SELECT in chunks of datastreams through the same statement
triggers as every writer (stats and hour/day aggregates maintained as they arrive). Then one
``geotwin serve`` worker answers, one request at a time, each of:

  1. ``$count`` of one datastream's observations   (goal p95 < 20 ms)
  2. the latest observation of every datastream of a Thing   (goal < 20 ms)
  3. one day of one datastream   (goal < 30 ms)
  4. a year of hourly aggregates of one datastream   (goal < 50 ms)

— each ``--requests`` times over random datastreams / Things / days; p50 and p95 of the wall
time seen by the client (HTTP on 127.0.0.1, response read in full). Also: the load rate and the
database size per million observations (partitions + their indexes; stats and aggregates
separately).

    .venv/bin/python bench/sensing_store.py [--observations 10000000] [--requests 200] [--keep]
        [--no-write]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, drop_schema, fetch, geotwin_server, write_block  # noqa: E402

SCHEMA = "geotwin_sensbench"
START, END = "<!-- bench:sensing-store:start -->", "<!-- bench:sensing-store:end -->"
THINGS, PER_THING = 100, 20
YEAR0 = "2026-01-01T00:00:00+08:00"


def _settings():
    import os

    os.environ["GEOTWIN_DB_SCHEMA"] = SCHEMA
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    return get_settings()


def load(settings, observations: int) -> dict:
    from spatial_api import db

    drop_schema(settings, SCHEMA)
    db.migrate(settings)
    per_stream = observations // (THINGS * PER_THING)
    step_s = 365 * 86400 / per_stream
    with db.connect(settings) as conn:
        conn.execute("INSERT INTO sta_sensors (name, encoding_type, metadata) VALUES ('meter', 'text/plain', 'x')")
        conn.execute("INSERT INTO sta_observed_properties (name, definition) VALUES ('flow', 'urn:flow')")
        conn.execute("INSERT INTO sta_things (name) SELECT 'thing ' || g FROM generate_series(1, %s) g", (THINGS,))
        conn.execute(
            "INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
            "observed_property_id) SELECT 'ds ' || t.id || '/' || k, "
            "'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement', "
            "'{\"name\": \"cubic metre\", \"symbol\": \"m³\", \"definition\": \"urn:m3\"}', t.id, 1, 1 "
            "FROM sta_things t, generate_series(1, %s) k", (PER_THING,))
        conn.execute("SELECT sta_ensure_partitions(%s::timestamptz, %s::timestamptz + interval '366 days')",
                     (YEAR0, YEAR0))
        streams = [r[0] for r in conn.execute("SELECT id FROM sta_datastreams ORDER BY id")]
        conn.commit()
        t0 = time.perf_counter()
        chunk = 50
        for i in range(0, len(streams), chunk):
            ids = streams[i:i + chunk]
            conn.execute(
                "INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                "SELECT s, %s::timestamptz + (g * %s + (s %% 97)) * interval '1 second', "
                "round((random() * 0.05)::numeric, 4) FROM unnest(%s::bigint[]) s, generate_series(0, %s) g",
                (YEAR0, step_s, ids, per_stream - 1))
            conn.commit()
            print(f"\r  loaded {min(i + chunk, len(streams))}/{len(streams)} datastreams", end="", flush=True)
        seconds = time.perf_counter() - t0
        print()
        conn.execute("ANALYZE sta_observations")
        conn.commit()
    return {**inspect(settings), "seconds": seconds}


def inspect(settings) -> dict:
    """What the bench schema holds (after a load, or a kept one: --reuse)."""
    from spatial_api import db

    with db.connect(settings) as conn:
        n = int(conn.execute("SELECT coalesce(sum(observations), 0) FROM sta_stream_stats").fetchone()[0])
        streams = [r[0] for r in conn.execute("SELECT id FROM sta_datastreams ORDER BY id")]
        sizes = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sta_observations'::regclass").fetchone()[0]
        stats_size = conn.execute("SELECT pg_total_relation_size('sta_stream_stats') + "
                                  "pg_total_relation_size('sta_aggregates')").fetchone()[0]
        things = [r[0] for r in conn.execute("SELECT id FROM sta_things ORDER BY id")]
    return {"observations": n, "bytes": int(sizes), "stats_bytes": int(stats_size), "streams": streams,
            "things": things, "per_stream": n // max(1, len(streams))}


def requests_for(info: dict, rng: random.Random, kind: str) -> str:
    base = "/sta/v1.1"
    if kind == "count":
        s = rng.choice(info["streams"])
        return f"{base}/Datastreams({s})/Observations?$count=true&$top=1"
    if kind == "latest":
        t = rng.choice(info["things"])
        return (f"{base}/Things({t})/Datastreams?$select=id,name"
                "&$expand=Observations($top=1;$orderby=phenomenonTime%20desc;$select=phenomenonTime,result)")
    if kind == "day":
        s = rng.choice(info["streams"])
        d = rng.randrange(0, 360)
        day0 = date(2026, 1, 2) + timedelta(days=d)
        day1 = day0 + timedelta(days=1)
        return (f"{base}/Datastreams({s})/Observations?$top=1000&$orderby=phenomenonTime%20asc"
                f"&$filter=phenomenonTime%20ge%20{day0}T00:00:00%2B08:00%20and%20phenomenonTime%20lt%20"
                f"{day1}T00:00:00%2B08:00")
    if kind == "hourly-year":
        s = rng.choice(info["streams"])
        return f"{base}/Datastreams({s})/Observations?$aggregate=hour&$top=10000"
    raise ValueError(kind)


def measure(server_base: str, info: dict, n: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    out = {}
    for kind in ("count", "latest", "day", "hourly-year"):
        times, sizes = [], []
        for i in range(n + 5):
            path = requests_for(info, rng, kind)
            t0 = time.perf_counter()
            status, body, _ = fetch(server_base + path)
            dt = time.perf_counter() - t0
            if status != 200:
                raise SystemExit(f"{kind}: {path} → {status}: {body[:400]!r}")
            if i == 0:
                doc = json.loads(body)
                if kind == "count" and doc.get("@iot.count") != info["per_stream"]:
                    raise SystemExit(f"count: expected {info['per_stream']}, got {doc.get('@iot.count')}")
                if kind == "latest" and len(doc["value"]) != PER_THING:
                    raise SystemExit(f"latest: expected {PER_THING} datastreams, got {len(doc['value'])}")
            if i >= 5:  # the first five warm the caches
                times.append(dt * 1000)
                sizes.append(len(body))
        times.sort()
        out[kind] = {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))],
                     "bytes": statistics.median(sizes)}
        print(f"  {kind:12s} p50 {out[kind]['p50']:7.1f} ms  p95 {out[kind]['p95']:7.1f} ms")
    return out


GOALS = {"count": 20, "latest": 20, "day": 30, "hourly-year": 50}
TITLES = {"count": "`$count` of one datastream", "latest": "latest observation of every datastream of a Thing",
          "day": "one day of one datastream", "hourly-year": "a year of hourly aggregates of one datastream"}


def table(info: dict, res: dict, n: int) -> str:
    mb = info["bytes"] / 1e6 / (info["observations"] / 1e6)
    lines = [START, "",
             f"{info['observations']:,} observations, {len(info['streams']):,} datastreams, one year; "
             f"{n} requests of each kind, one at a time, one `geotwin serve` worker.", "",
             "| request | p50 ms | p95 ms | goal p95 | met |", "|---|---:|---:|---:|---|"]
    for k in ("count", "latest", "day", "hourly-year"):
        r = res[k]
        lines.append(f"| {TITLES[k]} | {r['p50']:.1f} | {r['p95']:.1f} | < {GOALS[k]} ms | "
                     f"{'yes' if r['p95'] < GOALS[k] else 'no'} |")
    load = (f"Loaded by INSERT … SELECT through the maintaining triggers at {info['rate']:,.0f} observations/s; "
            if info.get("rate") else "")
    lines += ["", f"{load}{mb:.0f} MB per million observations (partitions and their indexes); "
                  f"stats and aggregates {info['stats_bytes'] / 1e6:.0f} MB in all.", "", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--observations", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the bench schema afterwards")
    ap.add_argument("--reuse", action="store_true", help="measure a schema kept by an earlier run (--keep) "
                                                        "instead of loading it again")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    settings = _settings()
    if args.reuse:
        info = inspect(settings)
        if not info["observations"]:
            raise SystemExit(f"--reuse: schema {SCHEMA} holds no observations; run without --reuse")
        info["seconds"] = None
    else:
        print(f"loading {args.observations:,} observations into schema {SCHEMA} …")
        info = load(settings, args.observations)
    info["rate"] = info["observations"] / info["seconds"] if info["seconds"] else None
    print(f"  {info['observations']:,} observations, {info['bytes'] / 1e6:,.0f} MB"
          + (f", loaded at {info['rate']:,.0f}/s" if info["rate"] else ""))
    log_dir = ROOT / ".geotwin" / "bench" / "sensing"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = geotwin_server("geotwin", settings, SCHEMA, log_dir, ready_path="/sta/v1.1")
    server.start()
    try:
        res = measure(server.base, info, args.requests)
    finally:
        server.stop()
        if not args.keep:
            drop_schema(settings, SCHEMA)
    block = table(info, res, args.requests)
    print(block)
    if not args.no_write:
        write_block(START, END, block, heading="Sensing: SensorThings reads on 10 million observations",
                    intro="`bench/sensing_store.py` (issue 16).")


if __name__ == "__main__":
    main()
