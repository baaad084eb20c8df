"""Cluster benchmark (issue 18): the topology of ``geotwin cluster up`` — a PostgreSQL primary and a
streaming replica, 4 API replicas (``geotwin serve``, 1 worker each) behind nginx — on free ports
of this machine, with the medium demo's buildings (34,519 footprints) ingested into its primary.

1. **Throughput with 1, 2 and 4 API replicas behind nginx** (nginx's upstream rewritten and
   reloaded; the unused replicas stay up, idle): cached tiles (each replica's in-process cache
   warmed directly), uncached tiles (the replicas restarted with ``GEOTWIN_TILE_CACHE_MB=0``: every
   request renders in PostGIS, on the primary) and items pages (``limit=50&bbox=…``, read on the
   replica database). ``wrk -t2 -c16`` over the path lists of bench/load.py, in a fixed shuffled
   order, after a warm-up. Figures: requests/s, p50 / p99, and **CPU per request**: user + system
   CPU of the API replicas' process groups during the run ÷ requests — the figure that does not
   depend on this machine's 2 cores (1 s ÷ it = what one free core serves) — with the database
   servers' (primary + replica) and nginx's CPU per request beside it, and the mean body size.
2. **Replica lag under a sustained ingest**: sensing observations inserted in batches of 1,000
   per commit (through the observation store's statement triggers, as the workers write) for
   ``--ingest-seconds``, paced at 1,667 observations/s (100,000 devices at one reading a minute)
   and flat out; ``pg_stat_replication`` sampled every 0.1 s: bytes behind and ``replay_lag``;
   WAL bytes per observation.
3. **The cost of synchronous replication** (``synchronous = true``: ``ANY 1``): single-row commits
   and a small ingest (the demo's parcels, ``geotwin ingest`` path) with ``synchronous_commit = on``
   vs ``local`` (the same cluster, the same session / role; alternating).

    .venv/bin/python bench/cluster.py [--duration 8] [--warmup 2] [--ingest-seconds 12]
        [--out /tmp/cluster_bench.md]

Needs wrk and nginx (Debian). Everything it starts is stopped by pid (``geotwin cluster down``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LUA, ROOT, fetch, parse_wrk
from load import item_paths, tile_paths

from topology import testing

DEMO = ROOT / ".geotwin" / "demo" / "medium"
LAYER = "buildings"
SCHEMA = "geotwin"
REPLICA_COUNTS = (1, 2, 4)
CONNECTIONS = 16


def group_cpu(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group."""
    if not pgid:
        return 0.0
    total, tck = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tck
    return total


def tree_cpu(root: int | None) -> float:
    """CPU seconds of a process and every live descendant, plus what its exited children used
    (``cutime`` / ``cstime``): a postmaster's backends run under ``postgres``, outside any process
    group of ours, and some of them come and go."""
    if not root:
        return 0.0
    tck, stats, children = os.sysconf("SC_CLK_TCK"), {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    if root not in stats:
        return 0.0
    total = sum(int(x) for x in stats[root][13:15]) / tck  # the root's waited-for children
    todo = [root]
    while todo:
        pid = todo.pop()
        total += (int(stats[pid][11]) + int(stats[pid][12])) / tck
        todo += children.get(pid, [])
    return total


def write_config(d: Path) -> Path:
    (d / "cluster.toml").write_text(testing.config_text(SCHEMA, replicas=1, apis=max(REPLICA_COUNTS),
                                                        synchronous=True, broker=False))
    return d / "cluster.toml"


# -- throughput ------------------------------------------------------------------------------------


class Meter:
    """CPU of the API replicas, the database servers and nginx over one wrk run."""

    def __init__(self, ctl):
        self.ctl = ctl

    def groups(self) -> dict[str, list[int]]:
        from topology.control import _postmaster_pid

        c = self.ctl
        return {"api": [c._pid(a.name, b"serve") for a in c.topo.apis],
                "db": [_postmaster_pid(s) for s in [c.primary, *c.replicas]],
                "nginx": [c._nginx_pid()]}

    def sample(self) -> dict[str, float]:
        return {k: sum((tree_cpu if k == "db" else group_cpu)(p) for p in pids) for k, pids in self.groups().items()}


def run_wrk(base: str, paths: list[str], script: Path, duration: int) -> dict:
    order = list(paths)
    random.Random(0).shuffle(order)
    script.write_text(LUA % ", ".join(f'"{p}"' for p in order))
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "60s", "--latency",
                          "-s", str(script), base], capture_output=True, text=True, timeout=duration + 120, check=False).stdout
    return parse_wrk(out)


def use_replicas(ctl, n: int) -> None:
    """nginx's upstream: the first ``n`` API replicas (rewritten, reloaded)."""
    import dataclasses

    full = ctl.topo
    ctl.topo = dataclasses.replace(full, apis=full.apis[:n])
    try:
        ctl._nginx()
    finally:
        ctl.topo = full


def body_bytes(base: str, paths: list[str]) -> tuple[float, dict]:
    sizes, statuses = [], {}
    for p in paths:
        status, body, _ = fetch(base + p)
        statuses[status] = statuses.get(status, 0) + 1
        sizes.append(len(body))
    return statistics.fmean(sizes), statuses


def measure(ctl, name: str, paths: list[str], args, script: Path) -> list[dict]:
    meter, base, rows = Meter(ctl), ctl.topo.public_url(), []
    for n in REPLICA_COUNTS:
        use_replicas(ctl, n)
        if args.warmup:
            run_wrk(base, paths, script, args.warmup)
        load0, cpu0 = os.getloadavg()[0], meter.sample()
        r = run_wrk(base, paths, script, args.duration)
        cpu1 = meter.sample()
        per = {k: (cpu1[k] - cpu0[k]) / max(r["requests"], 1) * 1e6 for k in cpu0}
        r.update(workload=name, replicas=n, load=load0, api_us=per["api"], db_us=per["db"], nginx_us=per["nginx"])
        rows.append(r)
        print(f"{name}, {n} API replica(s): {r['rps']:,.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
              f"CPU/request API {per['api']:.0f} µs, DB {per['db']:.0f} µs, nginx {per['nginx']:.0f} µs, "
              f"non-2xx {r['non2xx']}, errors {r['socket_errors']}, load {load0:.1f}", flush=True)
    use_replicas(ctl, len(ctl.topo.apis))
    return rows


def warm_each(ctl, paths: list[str], rounds: int = 2) -> None:
    for a in ctl.topo.apis:
        for _ in range(rounds):
            for p in paths:
                fetch(f"http://{a.address}{p}")


# -- replica lag -----------------------------------------------------------------------------------


def observations_setup(url: str) -> list[int]:
    import psycopg

    with psycopg.connect(url, options=f"-c search_path={SCHEMA},public") as conn:
        conn.execute("INSERT INTO sta_sensors (name, encoding_type, metadata) VALUES ('meter', 'text/plain', 'x')")
        conn.execute("INSERT INTO sta_observed_properties (name, definition) VALUES ('flow', 'urn:flow')")
        conn.execute("INSERT INTO sta_things (name) SELECT 'bench thing ' || g FROM generate_series(1, 100) g")
        conn.execute(
            "INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
            "observed_property_id) SELECT 'bench ds ' || t.id, "
            "'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement', "
            "'{\"name\": \"cubic metre\", \"symbol\": \"m³\", \"definition\": \"urn:m3\"}', t.id, "
            "(SELECT max(id) FROM sta_sensors), (SELECT max(id) FROM sta_observed_properties) "
            "FROM sta_things t WHERE t.name LIKE 'bench thing %'")
        conn.execute("SELECT sta_ensure_partitions(now() - interval '1 day', now() + interval '1 day')")
        return [r[0] for r in conn.execute("SELECT id FROM sta_datastreams WHERE name LIKE 'bench ds %'")]


def lag_under_ingest(ctl, streams: list[int], seconds: float, rate: float | None) -> dict:
    """Insert observations for ``seconds`` (``rate`` per second, or flat out) in batches of 1,000
    per commit (asynchronous commits: the default deployment), sampling the replica's lag."""
    import psycopg

    stop, written, batch = threading.Event(), [0], 1000
    url = ctl.primary.url()

    def ingest():
        with psycopg.connect(url, options=f"-c search_path={SCHEMA},public -c synchronous_commit=local") as conn:
            t0 = time.perf_counter()
            while not stop.is_set():
                conn.execute(
                    "INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                    "SELECT (%s::bigint[])[1 + (g %% %s)], now() - (g * interval '1 millisecond'), random() "
                    "FROM generate_series(1, %s) g", (streams, len(streams), batch))
                conn.commit()
                written[0] += batch
                if rate:
                    ahead = written[0] / rate - (time.perf_counter() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

    with psycopg.connect(url, autocommit=True) as mon:
        lsn0 = mon.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        t = threading.Thread(target=ingest)
        started = time.perf_counter()
        t.start()
        behind, lag = [], []
        while time.perf_counter() - started < seconds:
            row = mon.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                              "extract(epoch FROM replay_lag) FROM pg_stat_replication").fetchone()
            if row:
                behind.append(row[0] or 0)
                lag.append(float(row[1] or 0.0) * 1000)
            time.sleep(0.1)
        stop.set()
        t.join()
        elapsed = time.perf_counter() - started
        wal = mon.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (lsn0,)).fetchone()[0]

    def q(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else 0)

    return {"rate": rate, "observations": written[0], "obs_s": written[0] / elapsed,
            "wal_per_obs": wal / max(written[0], 1), "wal_mb_s": wal / elapsed / 1e6,
            "behind_p50": q(behind, 50), "behind_p99": q(behind, 99), "behind_max": max(behind, default=0),
            "lag_p50": q(lag, 50), "lag_p99": q(lag, 99), "lag_max": max(lag, default=0), "samples": len(lag)}


# -- synchronous replication's cost ----------------------------------------------------------------


def commit_cost(ctl, n: int = 200) -> dict:
    from topology.testing import commit_times

    times = commit_times(ctl.primary.url(), blocks=n // 20, table="public.bench_commit_probe")
    return {m: (statistics.median(v), statistics.quantiles(v, n=100)[98]) for m, v in times.items()}


def ingest_cost(ctl, runs: int = 5) -> dict:
    """The demo's parcels ingested (into a new layer) with the role's synchronous_commit on / local."""
    import psycopg

    from spatial_api.config import Settings
    from spatial_api.ingest import ingest_vector

    s = Settings(database_url=ctl.primary.url(), db_schema=SCHEMA)
    out: dict[str, list[float]] = {"on": [], "local": []}
    n = 0
    with psycopg.connect(ctl.primary.url(), autocommit=True) as conn:
        role = conn.execute("SELECT current_user").fetchone()[0]

        def commits() -> int:
            time.sleep(1.2)  # the ingest's sessions have flushed their statistics
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                ).fetchone()[0]

        c0 = commits()
        ingest_vector(DEMO / "parcels.gpkg", layer="bench_parcels_warm", key="parcel_id", settings=s,
                      valid_from="2024-01-01")  # imports, caches: not measured
        per_ingest = commits() - c0 - 1  # the monitor's own statement commits once
        try:
            for k in range(runs):
                for mode in (("on", "local") if k % 2 == 0 else ("local", "on")):
                    conn.execute(f'ALTER ROLE "{role}" SET synchronous_commit = {mode}')
                    t0 = time.perf_counter()
                    # a new layer each time: a whole write, never "already holds this state"
                    res = ingest_vector(DEMO / "parcels.gpkg", layer=f"bench_parcels_{k}_{mode}", key="parcel_id",
                                        settings=s, valid_from="2024-01-01")
                    out[mode].append(time.perf_counter() - t0)
                    n = res.current_total
        finally:
            conn.execute(f'ALTER ROLE "{role}" RESET synchronous_commit')
    return {"features": n, "commits": per_ingest, **{m: statistics.median(v) for m, v in out.items()}}


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded wrk before each run")
    ap.add_argument("--ingest-seconds", type=float, default=12)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown there too")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up (its folder is printed)")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} not found: apt-get install -y {tool}")
    from spatial_api.config import Settings
    from spatial_api.ingest import ingest_vector
    from topology.control import load_controller

    work = Path(tempfile.mkdtemp(prefix="geotwin-cluster-bench-"))
    config = write_config(work)
    ctl = load_controller(config, echo=lambda m: print("  " + m, flush=True))
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    os.environ.pop("GEOTWIN_TILE_CACHE_MB", None)
    try:
        up_s = ctl.up()
        print(f"cluster up in {up_s:.1f} s", flush=True)
        s = Settings(database_url=ctl.primary.url(), db_schema=SCHEMA)
        t1 = time.perf_counter()
        res = ingest_vector(DEMO / "buildings.gpkg", layer=LAYER, key="building_id", valid_from="2025-01-01",
                            access_level="public", settings=s)
        print(f"buildings ingested in {time.perf_counter() - t1:.1f} s: {res}", flush=True)
        ctl._wait_streaming(ctl.replicas[0])
        base = ctl.topo.public_url()
        status, body, _ = fetch(base + f"/tiles/{LAYER}/tilejson.json")
        assert status == 200, body[:300]
        tj = json.loads(body)
        tiles = tile_paths(tj["minzoom"], min(tj["maxzoom"], 16))
        status, body, _ = fetch(base + f"/collections/{LAYER}")
        items = item_paths(json.loads(body)["extent"]["spatial"]["bbox"][0])
        sizes = {}
        for label, paths in (("tiles", tiles), ("items", items)):
            sizes[label], statuses = body_bytes(base, paths)
            bad = {k: v for k, v in statuses.items() if k not in (200, 204)}
            if bad:
                raise SystemExit(f"{label}: some paths fail: {bad}")
        script = work / "paths.lua"
        rows = []
        warm_each(ctl, tiles)
        rows += measure(ctl, "tiles, cached", tiles, args, script)
        rows += measure(ctl, "items (bbox, limit 50)", items, args, script)
        os.environ["GEOTWIN_TILE_CACHE_MB"] = "0"
        ctl.restart_clients()
        rows += measure(ctl, "tiles, uncached", tiles, args, script)
        os.environ.pop("GEOTWIN_TILE_CACHE_MB", None)

        streams = observations_setup(ctl.primary.url())
        lag = [lag_under_ingest(ctl, streams, args.ingest_seconds, 1667.0),
               lag_under_ingest(ctl, streams, args.ingest_seconds, None)]
        for r in lag:
            how = f"paced {r['rate']:.0f}/s" if r["rate"] else "flat out"
            print(f"ingest {how}: {r['obs_s']:,.0f} obs/s, "
                  f"WAL {r['wal_per_obs']:.0f} B/obs ({r['wal_mb_s']:.1f} MB/s), behind p50 {r['behind_p50']:,.0f} B "
                  f"p99 {r['behind_p99']:,.0f} B, replay lag p50 {r['lag_p50']:.1f} ms p99 {r['lag_p99']:.1f} ms "
                  f"max {r['lag_max']:.1f} ms", flush=True)
        commits = commit_cost(ctl)
        print(f"single-row commit: sync {commits['on'][0]:.2f} ms (p99 {commits['on'][1]:.2f}), "
              f"local {commits['local'][0]:.2f} ms (p99 {commits['local'][1]:.2f})", flush=True)
        ingest = ingest_cost(ctl)
        print(f"small ingest (parcels): sync {ingest['on']:.2f} s, local {ingest['local']:.2f} s, "
              f"{ingest['commits']} commits per ingest", flush=True)
    finally:
        if args.keep:
            print(f"cluster kept: geotwin cluster down --purge --config {config}")
        else:
            try:
                testing.teardown(config, ctl)  # down, kill by pid what is left, purge
            finally:
                shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    md = report(rows, lag, commits, ingest, sizes, up_s, args, load_start, load_end, time.perf_counter() - t0)
    print(md)
    if args.out:
        args.out.write_text(md)


def report(rows, lag, commits, ingest, sizes, up_s, args, load_start, load_end, total_s) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                            text=True).stdout.strip()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    size_of = {"tiles, cached": sizes["tiles"], "tiles, uncached": sizes["tiles"],
               "items (bbox, limit 50)": sizes["items"]}
    table = "\n".join(
        f"| {r['workload']} | {r['replicas']} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
        f"{r['api_us']:,.0f} | {r['db_us']:,.0f} | {r['nginx_us']:,.0f} | {size_of[r['workload']] / 1000:.1f} | "
        f"{r['non2xx']} / {r['socket_errors'] or 0} | {r['load']:.1f} |" for r in rows)
    lag_rows = "\n".join(
        f"| {'paced, ' + format(r['rate'], ',.0f') + ' obs/s' if r['rate'] else 'flat out'} | {r['obs_s']:,.0f} | "
        f"{r['wal_per_obs']:.0f} | {r['wal_mb_s']:.2f} | {r['behind_p50']:,.0f} / {r['behind_p99']:,.0f} / "
        f"{r['behind_max']:,.0f} | {r['lag_p50']:.1f} / {r['lag_p99']:.1f} / {r['lag_max']:.1f} | {r['samples']} |"
        for r in lag)
    return f"""## Cluster (issue 18): API replicas behind nginx, replica lag, synchronous commits

`bench/cluster.py`, {when}, commit {commit or '?'}, {os.cpu_count()} cores shared with other work
(1-min load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; whole run
{total_s:.0f} s). The topology of `geotwin cluster up` on free ports: a PostgreSQL primary and one
streaming replica (`synchronous = true`), 4 API replicas (`geotwin serve`, 1 uvicorn worker each)
behind nginx (`keepalive 64`, 1 worker process); `cluster up` from nothing {up_s:.1f} s. Data: the
medium demo's `{LAYER}` (34,519 footprints) ingested into the primary. `wrk -t2 -c{CONNECTIONS}
-d{args.duration}s` after {args.warmup} s of warm-up, through nginx, over bench/load.py's path lists
(tiles z12–16 around 114.25 E 22.72 N; items `limit=50` over a 10 × 10 bbox grid), nginx's upstream
set to the first N replicas. CPU per request = user + system CPU during the run ÷ requests
answered: the API replicas' process groups (all 4; the unused ones idle), the database servers'
process trees (primary + replica: postmaster, backends, WAL sender / receiver, and exited children)
and nginx's. Uncached tiles render in PostGIS on the primary; items
read on the replica. With 2 cores, more replicas cannot add throughput — the CPU columns are what
carries to a larger machine (1 s ÷ µs per request = requests/s per free core).

| workload | API replicas | req/s | p50 ms | p99 ms | API CPU µs/req | DB CPU µs/req | nginx CPU µs/req | mean body kB | non-2xx / socket errors | load avg |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
{table}

Replica lag under a sustained ingest: sensing observations, 1,000 per commit (asynchronous commits,
the default), {args.ingest_seconds:.0f} s each; `pg_stat_replication` sampled every 0.1 s on the primary.

| ingest | observations/s | WAL B / observation | WAL MB/s | bytes behind p50 / p99 / max | replay lag ms p50 / p99 / max | samples |
|---|---:|---:|---:|---|---|---:|
{lag_rows}

Synchronous replication's cost (`ANY 1 ("replica1")`, replica on the same machine — across a
network add one round trip per commit): single-row autocommit INSERT, 100 each, alternating
blocks of 20 — `synchronous_commit = on` {commits['on'][0]:.2f} ms median (p99 {commits['on'][1]:.2f}),
`local` {commits['local'][0]:.2f} ms (p99 {commits['local'][1]:.2f}); a small ingest (the demo's
`parcels.gpkg`, {ingest['features']:,} features, `ingest_vector` into a new layer, after one unmeasured
ingest; 5 runs each, alternating, the role's `synchronous_commit`; ≈ {ingest['commits']} commits per ingest in
`pg_stat_database`) {ingest['on']:.2f} s vs {ingest['local']:.2f} s median. A commit waits once for the
standby's flush, whatever the transaction's size.
"""


if __name__ == "__main__":
    main()
