"""Sensing benchmark — ingestion section: sustained MQTT QoS 1 ingestion (issue 16).

A schema of its own (``geotwin_bench_mqtt``) with ``--streams`` Datastreams, a mosquitto of its own
(free port, files in a temporary folder: ``sensing.mqtt.testing.broker``), the ingestion worker as
its own process (``python -m spatial_api mqtt worker``, what ``geotwin mqtt worker`` runs) and
``--publishers`` publisher processes (paho-mqtt with the batched client of sensing/mqtt/fastclient.py, MQTT 5, QoS 1, each its own Datastreams, each as
fast as the broker acknowledges) for ``--duration`` seconds. Reported:

- **mqtt**: observations published, stored, lost (published − stored distinct) and duplicated
  (stored − distinct); the sustained rate = stored / (first publish → last one stored); the store
  lag (every 50 ms while publishing: now − the newest stored phenomenonTime); with
  ``--notify`` (default) a subscriber on ``v1.1/Observations`` measures publish → stored-and-
  announced latency (p50 / p99 of notification arrival − the observation's phenomenonTime, which
  the publisher sets to the wall clock when it publishes) — an upper bound of publish → stored;
- **worker alone**: a backlog published for ``--drain-seconds`` while the worker is away (its
  persistent session keeps it), then the time the worker process takes to store it — its capacity
  without the publishers competing for the cores;
- **floor**: the same number of rows written by one process with binary COPY straight into
  ``sta_observations`` (chunks of 50,000 rows, one transaction each, the same triggers);
- **naive**: one INSERT (and one transaction) per observation, for ``--naive-seconds``;
- **alert**: publish → alert. ``--alert-devices`` manhole covers registered through the device
  registry (``sensing.devices.add``, 岗头社区, Longgang); a worker with its alert-rule hooks
  (``--rules``) ingests ``--alert-load`` observations a second (on the bench's Datastreams and the
  covers' tilt / water-level / battery streams, values far below every threshold) for
  ``--duration`` seconds while each cover in turn gets one 井盖开启 = true (rule ``mc-open``,
  migration 0016). Per cover: publish → the ``NOTIFY sensing_alerts`` of its alert arrives
  (``LISTEN``; the alert row is committed by then) and publish → the alert's ``opened_at``;
  p50 / p95 / p99 / max, alerts missed (no announced alert ``--alert-timeout`` s after the last
  publish) and other alerts opened (false alarms from the load). Goal: p99 < 1 s.

``--sections`` picks what runs (default: all). Results go to stdout (Markdown tables);
docs/benchmarks.md is the lead's.

    .venv/bin/python bench/sensing.py [--sections mqtt,worker,floor,naive,alert] [--duration 60]
        [--publishers 2] [--streams 200] [--no-notify] [--batch-size 5000] [--batch-ms 100]
        [--alert-devices 60] [--alert-load 2000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, clean_env, drop_schema

SCHEMA = "geotwin_bench_mqtt"


def _settings():
    os.environ["GEOTWIN_DB_SCHEMA"] = SCHEMA
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    return get_settings()


def setup(settings, streams: int) -> list[int]:
    from spatial_api import db

    drop_schema(settings, SCHEMA)
    db.migrate(settings)
    with db.connect(settings) as conn:
        thing = conn.execute("INSERT INTO sta_things (name) VALUES ('bench') RETURNING id").fetchone()[0]
        sensor = conn.execute("INSERT INTO sta_sensors (name, encoding_type, metadata) "
                              "VALUES ('s', 'text/plain', 'm') RETURNING id").fetchone()[0]
        op = conn.execute("INSERT INTO sta_observed_properties (name, definition) VALUES ('v', 'urn:v') "
                          "RETURNING id").fetchone()[0]
        ids = [r[0] for r in conn.execute(
            """INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id,
                                            observed_property_id)
               SELECT 'ds ' || i, 'OM_Measurement', '{"name": "m3"}', %s, %s, %s FROM generate_series(1, %s) i
               RETURNING id""", (thing, sensor, op, streams)).fetchall()]
        now = datetime.now(timezone.utc)
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (now, now))
    return ids


def observations(conn, ids: list[int]) -> tuple[int, int]:
    return conn.execute("SELECT count(*), count(DISTINCT (stream_id, phenomenon_time_start)) FROM sta_observations "
                        "WHERE stream_id = ANY(%s)", (ids,)).fetchone()


# -- publishers (separate processes) ---------------------------------------------------------------


def publisher(settings, streams: list[int], duration: float, start_at: float, out, rate: float = 0,
              scale: float = 10) -> None:
    try:
        _publish(settings, streams, duration, start_at, out, rate, scale)
    except BaseException as exc:
        out.put({"error": repr(exc), "published": 0, "acked": 0})
        raise


def _publish(settings, streams: list[int], duration: float, start_at: float, out, rate: float = 0,
             scale: float = 10) -> None:
    """One MQTT 5 client driven from this thread: paho's connection handling with the batched
    read and write paths of :class:`sensing.mqtt.fastclient.BatchClient` (what the worker uses) —
    PUBLISH packets (QoS 1, each with its own packet id, kept until its PUBACK) written 32 at a
    time, PUBACKs read many per ``recv``. paho's own ``publish()`` costs ~30 µs of Python per
    message and per PUBACK; with two publishers on the bench's two cores that alone held the run
    near 20,000/s (a Python load client hides the server's figure — ../shared/docs/bench-notes.md).
    Results cycle through 0 … 999 / ``scale``."""
    from sensing.mqtt.broker import client, connect

    c = client(settings, f"bench-pub-{uuid.uuid4().hex[:6]}", inflight=0, batched=True)
    connect(c)
    while not c.is_connected():
        c.loop(0.1)
    topics = [f"v1.1/Datastreams({s})/Observations".encode() for s in streams]
    while time.time() < start_at:
        c.loop(0.01)
    n, t_end, last = 0, start_at + duration, 0.0

    def pump(timeout: float) -> None:
        sock = c.socket()
        if sock is None:
            raise RuntimeError("the broker closed the publisher's connection")
        r, w, _ = select.select([sock], [sock] if c.want_write() else [], [], timeout)
        if w:
            c.loop_write()
        if r:
            c.loop_read()
        c.loop_misc()

    while True:
        now = time.time()
        if now >= t_end:
            break
        batch = []
        for _ in range(32):
            if now <= last:  # one observation per microsecond per stream at most: phenomenonTime stays unique
                now = last + 1e-6
            last = now
            ts = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            batch.append((topics[n % len(topics)], f'{{"result": {n % 1000 / scale}, "phenomenonTime": "{ts}"}}'.encode()))
            n += 1
        c.publish_many(batch, 1)
        pump(0)
        while rate and (ahead := n / rate - (time.time() - start_at)) > 0:  # paced: `rate` a second
            pump(ahead)
        while c.raw_inflight > 5000:  # at most this far ahead of the broker's PUBACKs (its limit: 10,000)
            pump(0.01)
    deadline = time.time() + 300
    while c.raw_inflight and time.time() < deadline:
        pump(0.05)
    out.put({"published": n, "acked": c.raw_acked, "refused": c.raw_refused})
    c.disconnect()


def _probe(settings, ready, stop, out, seen) -> None:
    """The probe's process: a subscriber of v1.1/Observations at QoS 1 (batched client, PUBACKs
    written once per read) keeping arrival − phenomenonTime of every notification."""
    import orjson
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from sensing.mqtt.broker import client, connect

    c = client(settings, f"bench-probe-{uuid.uuid4().hex[:6]}", manual_ack=True, batched=True)
    latencies: list[float] = []
    mids: list[int] = []
    subscribed = []

    def on_packet(mid, qos, dup, topic, props, payload):
        now = time.time()
        t = orjson.loads(payload)["phenomenonTime"]
        latencies.append(now - datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp())
        if qos:
            mids.append(mid)

    c.on_publish_packet = on_packet
    c.on_subscribe = lambda *a: subscribed.append(1)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("v1.1/Observations", SubscribeOptions(qos=1))])
    connect(c)
    while not subscribed:
        c.loop(0.1)
    ready.set()
    while not stop.is_set():
        sock = c.socket()
        r, w, _ = select.select([sock], [sock] if c.want_write() else [], [], 0.05)
        if w:
            c.loop_write()
        if r:
            c.loop_read()
        if mids:
            c.ack_many(mids)
            mids.clear()
        c.loop_misc()  # PINGREQ: at QoS 0 the probe sends nothing else, and the broker would drop it
        seen.value = len(latencies)
    c.disconnect()
    out.put(latencies)


class LatencyProbe:
    """A subscriber on v1.1/Observations in a process of its own: notification arrival −
    phenomenonTime (the publisher's clock)."""

    def __init__(self, settings):
        self.latencies: list[float] = []
        self._ready, self._stop, self._out = mp.Event(), mp.Event(), mp.Queue()
        self.seen = mp.Value("q", 0, lock=False)
        self._proc = mp.Process(target=_probe, args=(settings, self._ready, self._stop, self._out, self.seen))
        self._proc.start()
        if not self._ready.wait(30):
            raise SystemExit("the latency probe did not subscribe within 30 s")

    def close(self, expect: int = 0, quiet: float = 5):
        """Stop once ``expect`` notifications arrived or none came for ``quiet`` seconds."""
        last, changed = -1, time.time()
        while self._proc.is_alive() and self.seen.value < expect and time.time() - changed < quiet:
            if self.seen.value != last:
                last, changed = self.seen.value, time.time()
            time.sleep(0.05)
        if self._proc.is_alive():
            self._stop.set()
            self.latencies = self._out.get(timeout=120)
            self._proc.join(30)


def freshness(settings, ids: list[int], t0: float, t1: float) -> list[float]:
    """While publishers run: every 50 ms, now − the newest phenomenonTime stored (the publishers
    set it to their clock at publish): how far the store lags behind the devices."""
    from spatial_api import db

    lags = []
    with db.connect(settings, autocommit=True) as conn:
        while time.time() < t0:
            time.sleep(0.01)
        while time.time() < t1:
            newest = conn.execute("SELECT max(last_time) FROM sta_stream_stats WHERE stream_id = ANY(%s)",
                                  (ids,)).fetchone()[0]
            if newest is not None and newest.timestamp() >= t0:
                lags.append(time.time() - newest.timestamp())
            time.sleep(0.05)
    return lags


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (Linux /proc; 0 for one that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def role_pids(settings, worker: subprocess.Popen, conn) -> dict[str, list[int]]:
    """The processes whose CPU the run reports: the worker (its process tree), the broker, and the
    worker's database sessions (their PostgreSQL backends, same machine)."""
    from sensing.mqtt.broker import LocalBroker

    kids = {worker.pid}
    for _ in range(3):  # the supervisor's children (workers > 1, the announcer)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in kids:
                kids.add(pid)
    backends = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
                                           ("geotwin-mqtt-worker%",))]
    broker = LocalBroker(settings).pid()
    return {"worker": sorted(kids), "broker": [broker] if broker else [], "database": backends}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if p < 100 else max(values)


def worker_env(settings) -> dict:
    env = dict(clean_env(), GEOTWIN_DB_SCHEMA=SCHEMA, GEOTWIN_MQTT_DIR=str(settings.mqtt_home),
               GEOTWIN_MQTT_URL=settings.mqtt_url)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    if settings.home != ROOT / ".geotwin":
        env["GEOTWIN_HOME"] = str(settings.home)
    return env


def worker_process(env: dict, client_id: str, args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spatial_api", "mqtt", "worker", "--client-id", client_id,
           "--batch-size", str(args.batch_size), "--batch-ms", str(args.batch_ms),
           "--notify" if args.notify else "--no-notify", "--notify-qos", str(args.notify_qos),
           "--workers", str(args.workers),
           "--notifier", args.notifier,
           "--rules"]  # the alert rules' after-batch hooks (the default of `geotwin mqtt worker`, said aloud)
    with open(log, "ab") as out_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=out_file, stderr=subprocess.STDOUT, start_new_session=True)


def worker_ids(client_id: str, args) -> list[str]:
    """The client ids `geotwin mqtt worker --workers M` gives its worker processes."""
    return [client_id] if args.workers == 1 else [f"{client_id}-s{i}" for i in range(1, args.workers + 1)]


def stored_total(conn, ids) -> int:
    return int(conn.execute("SELECT coalesce(sum(observations), 0) FROM sta_stream_stats "
                            "WHERE stream_id = ANY(%s)", (ids,)).fetchone()[0])


def drain_run(settings, ids, args, folder: Path) -> dict:
    """The worker alone: a backlog published while it is away (its session keeps it), then the time
    the worker takes to store it all — its capacity without publishers competing for the cores."""
    from sensing.mqtt.broker import ensure_worker_session, forget_session
    from sensing.mqtt.testing import wait_for
    from spatial_api import db

    for cid in worker_ids("bench-drain", args):
        ensure_worker_session(settings, cid, shared=args.workers > 1)
    out = mp.Queue()
    start_at = time.time() + 1
    shares = [ids[i::args.publishers] for i in range(args.publishers)]
    procs = [mp.Process(target=publisher, args=(settings, share, args.drain_seconds, start_at, out))
             for share in shares]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.drain_seconds + 400) for _ in procs]
    for p in procs:
        p.join(30)
    backlog = sum(r["published"] for r in results)
    log = folder / "drain.log"
    with db.connect(settings, autocommit=True) as conn:
        before = stored_total(conn, ids)
        worker = worker_process(worker_env(settings), "bench-drain", args, log)
        try:
            # timed from the first committed batch to the last (the process start-up is not the worker's pace)
            first = wait_for(lambda: stored_total(conn, ids) - before, 120, "the first batch", 0.005)
            t0 = time.time()
            wait_for(lambda: stored_total(conn, ids) - before >= backlog, 600, f"the backlog of {backlog}", 0.02)
            seconds = time.time() - t0
        finally:
            worker.terminate()
            worker.wait(30)
        stored = stored_total(conn, ids) - before
    for cid in worker_ids("bench-drain", args):
        forget_session(settings, cid)
    return {"backlog": backlog, "stored": stored, "seconds": seconds, "rate": (stored - first) / seconds}


def mqtt_run(settings, ids, args, folder: Path) -> dict:
    from sensing.mqtt.testing import wait_for
    from spatial_api import db

    env = worker_env(settings)
    log = folder / "worker.log"
    worker = worker_process(env, "bench-worker", args, log)
    probe = None
    try:
        wait_for(lambda: log.exists() and all(f"{cid} subscribed" in log.read_text()
                                              for cid in worker_ids("bench-worker", args)), 90, "the workers")
        if args.notify:
            probe = LatencyProbe(settings)
        out = mp.Queue()
        start_at = time.time() + 2
        shares = [ids[i::args.publishers] for i in range(args.publishers)]
        procs = [mp.Process(target=publisher, args=(settings, share, args.duration, start_at, out,
                                                    args.rate / args.publishers))
                 for share in shares]
        for p in procs:
            p.start()
        with db.connect(settings, autocommit=True) as conn:
            roles = role_pids(settings, worker, conn)
        cpu0 = {pid: cpu_seconds([pid]) for v in roles.values() for pid in v}
        lags = freshness(settings, ids, start_at, start_at + args.duration)
        with db.connect(settings, autocommit=True) as conn:
            results = [out.get(timeout=args.duration + 400) for _ in procs]
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                raise SystemExit(f"a publisher failed: {errors}")
            for p in procs:
                p.join(30)
            published = sum(r["published"] for r in results)
            acked = sum(r["acked"] for r in results)
            # stored, polled until it stops growing at `published` (or stalls for 30 s)
            last, last_change = -1, time.time()
            while True:
                n = conn.execute("SELECT coalesce(sum(observations), 0) FROM sta_stream_stats "
                                 "WHERE stream_id = ANY(%s)", (ids,)).fetchone()[0]
                if n != last:
                    last, last_change = n, time.time()
                if n >= published or time.time() - last_change > 30:
                    break
                time.sleep(0.05)
            done_at = last_change
            roles = role_pids(settings, worker, conn)  # the worker's database sessions open at its first batch
            cpu = {k: sum(cpu_seconds([pid]) - cpu0.get(pid, 0.0) for pid in v) for k, v in roles.items()}
            stored, distinct = observations(conn, ids)
        if probe:
            probe.close(expect=stored)
        return {"published": published, "acked": acked, "stored": stored, "distinct": distinct,
                "lost": published - distinct, "duplicated": stored - distinct,
                "seconds": done_at - start_at, "rate": stored / (done_at - start_at),
                "lag_p50_ms": pct(lags, 50) * 1000, "lag_p99_ms": pct(lags, 99) * 1000, "lag_samples": len(lags),
                "p50_ms": pct(probe.latencies, 50) * 1000 if probe else None,
                "p99_ms": pct(probe.latencies, 99) * 1000 if probe else None,
                "notifications": len(probe.latencies) if probe else None,
                "cpu_us": {k: v / max(1, stored) * 1e6 for k, v in cpu.items()}}
    finally:
        if probe:
            probe.close()
        worker.terminate()
        worker.wait(30)


def floor_run(settings, ids, rows: int) -> dict:
    """Binary COPY of ``rows`` rows like the published ones, one process."""
    from spatial_api import db

    base = time.time() - 86400  # yesterday-ish (same month in all but the first day's first hours)
    with db.connect(settings) as conn:
        t0 = datetime.fromtimestamp(base, timezone.utc)
        t1 = datetime.fromtimestamp(base + rows * 1e-6 * 10, timezone.utc)
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (t0, t1))
        conn.commit()
        start = time.perf_counter()
        done = 0
        while done < rows:
            chunk = min(50_000, rows - done)
            with conn.cursor() as cur, cur.copy(
                    "COPY sta_observations (stream_id, phenomenon_time_start, result_number, dedup) "
                    "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "timestamptz", "float8", "uuid"])
                for i in range(done, done + chunk):
                    copy.write_row((ids[i % len(ids)], datetime.fromtimestamp(base + i * 1e-5, timezone.utc),
                                    i % 1000 / 10, uuid.uuid4()))
            conn.commit()
            done += chunk
        seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds}


def naive_run(settings, ids, seconds: float) -> dict:
    from spatial_api import db

    base = time.time() - 2 * 86400
    with db.connect(settings, autocommit=True) as conn:
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (datetime.fromtimestamp(base, timezone.utc),
                                                               datetime.fromtimestamp(base + 3600, timezone.utc)))
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_number) "
                         "VALUES (%s, %s, %s)",
                         (ids[n % len(ids)], datetime.fromtimestamp(base + n * 1e-3, timezone.utc), n % 1000 / 10))
            n += 1
        elapsed = time.perf_counter() - start
    return {"rows": n, "seconds": elapsed, "rate": n / elapsed}


# -- alert: publish → alert committed ---------------------------------------------------------------

#: The threshold rule the alert section breaks (migration 0016): 井盖开启 (the manhole-cover type's
#: ``open`` Datastream, OM_TruthObservation) = true.
ALERT_RULE = "mc-open"
ALERT_STREAM = "open"
#: Streams of the bench's manhole covers that carry background load (values far below mc-tilt's 10°,
#: mc-water-level's 1.0 m and mc-water-rise's 0.5 m an hour: they must raise nothing).
QUIET_STREAMS = ("tilt", "water-level", "battery")


def alert_devices(settings, n: int) -> list:
    """``n`` manhole covers registered through the device registry (Things, Locations, Datastreams,
    ``sensing_devices`` rows), in 岗头社区 (坂田街道, Longgang), not restricted, no MQTT credential
    (the bench publishes as the service user)."""
    from sensing import devices
    from sensing.rules import get_rule
    from spatial_api import db

    with db.connect(settings) as conn:
        rule = get_rule(conn, ALERT_RULE)
        if not rule.enabled or rule.kind != "threshold" or rule.device_type != "manhole-cover":
            raise SystemExit(f"rule {ALERT_RULE!r} is not the enabled manhole-cover threshold rule of migration 0016 "
                             f"({rule.as_dict()}); the alert section needs it")
        added = [devices.add(conn, {"device_id": f"BENCH-MC-{i:04d}", "type": "manhole-cover",
                                    "name": f"基准测试井盖 {i:04d}", "community": "岗头社区", "street": "坂田街道",
                                    "lon": 114.055 + (i % 20) * 0.001, "lat": 22.640 + (i // 20) * 0.001,
                                    "restricted": False}, issue_credential=False)
                 for i in range(n)]
        conn.commit()
    return added


class AlertListener:
    """``LISTEN sensing_alerts`` on a connection of its own, in a thread: the arrival time (this
    process's clock) of the first notification of each alert of the bench schema — the alert row's
    transaction has committed by then (NOTIFY is delivered at commit)."""

    def __init__(self, settings):
        import threading

        from spatial_api import db

        self.arrivals: dict[int, float] = {}
        self.foreign = 0  # notifications of other schemas (other tests / helpers on the same database)
        self._stop = threading.Event()
        self._conn = db.connect(settings, autocommit=True)
        self._conn.execute("LISTEN sensing_alerts")
        self._thread = threading.Thread(target=self._run, name="bench-alert-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for n in self._conn.notifies(timeout=0.2):
                now = time.time()
                payload = json.loads(n.payload)
                if payload.get("schema") == SCHEMA:
                    self.arrivals.setdefault(int(payload["alert_id"]), now)
                else:
                    self.foreign += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def alert_run(settings, ids: list[int], devs: list, args, folder: Path) -> dict:
    """The worker (with its rule hooks) ingests ``--alert-load`` observations a second on the bench's
    Datastreams and the covers' quiet streams for ``--duration`` seconds; meanwhile each cover in turn
    (spread evenly over the run) gets one 井盖开启 = true. Per cover: publish → the alert's NOTIFY
    arrives, and publish → its ``opened_at`` (the evaluation's clock)."""
    from sensing.mqtt.testing import device_client, wait_for
    from spatial_api import db

    log = folder / "alert-worker.log"
    listener = AlertListener(settings)  # listening before anything can be opened
    worker = worker_process(worker_env(settings), "bench-alert-worker", args, log)
    pub = None
    procs: list = []
    try:
        wait_for(lambda: log.exists() and all(f"{cid} subscribed" in log.read_text()
                                              for cid in worker_ids("bench-alert-worker", args)), 90, "the workers")
        pub = device_client(settings, client_id=f"bench-alert-pub-{uuid.uuid4().hex[:6]}")
        load_streams = ids + [d.datastreams[k] for d in devs for k in QUIET_STREAMS]
        with db.connect(settings, autocommit=True) as conn:
            stored_before = stored_total(conn, load_streams)  # the other sections wrote to the bench's streams
        out = mp.Queue()
        start_at = time.time() + 2
        if args.alert_load > 0:
            shares = [load_streams[i::args.publishers] for i in range(args.publishers)]
            procs = [mp.Process(target=publisher, args=(settings, share, args.duration, start_at, out,
                                                        args.alert_load / args.publishers, 10_000))
                     for share in shares]
            for p in procs:
                p.start()
        gap = max(0.02, (args.duration - 3) / len(devs))  # after 1 s of load, ending 2 s before it stops
        sent: dict[str, float] = {}
        mids = []
        for i, d in enumerate(devs):
            t = start_at + 1 + i * gap
            while (wait := t - time.time()) > 0:
                time.sleep(wait)
            now = time.time()
            ts = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            mids.append(pub.publish(f"v1.1/Datastreams({d.datastreams[ALERT_STREAM]})/Observations",
                                    json.dumps({"result": True, "phenomenonTime": ts}), 1).mid)
            sent[d.device_id] = now
        last_sent = time.time()
        wait_for(lambda: all(m in pub.pubacks for m in mids), 60, f"PUBACKs of the {len(mids)} alert observations")
        # every cover's alert announced, or --alert-timeout after the last publish (then: missed)
        deadline = last_sent + args.alert_timeout
        while len(listener.arrivals) < len(devs) and time.time() < deadline:
            time.sleep(0.02)
        load = [out.get(timeout=args.duration + 400) for _ in procs]
        errors = [r["error"] for r in load if "error" in r]
        if errors:
            raise SystemExit(f"a publisher failed: {errors}")
        for p in procs:
            p.join(30)
        published = sum(r["published"] for r in load)
        with db.connect(settings, autocommit=True) as conn:
            # the load stored whole (polled until it reaches what was published, or stalls for 30 s)
            last, last_change = -1, time.time()
            while (load_stored := stored_total(conn, load_streams) - stored_before) < published:
                if load_stored != last:
                    last, last_change = load_stored, time.time()
                elif time.time() - last_change > 30:
                    break
                time.sleep(0.05)
            rows = conn.execute("SELECT alert_id, device_id, rule_id, opened_at FROM sensing_alerts "
                                "ORDER BY alert_id").fetchall()
    finally:
        if pub is not None:
            pub.disconnect()
            pub.loop_stop()
        for p in procs:
            if p.is_alive():
                p.terminate()
        worker.terminate()
        worker.wait(30)
        listener.close()

    alerted = {dev: (aid, opened_at) for aid, dev, rule, opened_at in rows if rule == ALERT_RULE and dev in sent}
    others = [(dev, rule) for aid, dev, rule, opened_at in rows if not (rule == ALERT_RULE and dev in sent)]
    notified = [listener.arrivals[alerted[dev][0]] - t for dev, t in sent.items()
                if dev in alerted and alerted[dev][0] in listener.arrivals]
    to_open = [alerted[dev][1].timestamp() - t for dev, t in sent.items() if dev in alerted]

    def stats(values):
        return {k: pct(values, p) * 1000 for k, p in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99),
                                                       ("max_ms", 100))}

    return {"devices": len(devs), "published": len(sent), "alerts": len(alerted), "notified": len(notified),
            "missed": len(sent) - len(notified), "no_alert_row": len(sent) - len(alerted),
            "other_alerts": len(others), "other_alert_examples": others[:5],
            "notify": stats(notified), "opened": stats(to_open), "gap_s": gap,
            "load_published": published, "load_stored": load_stored,
            "load_rate": published / args.duration if procs else 0.0,
            "foreign_notifications": listener.foreign}


SECTIONS = ("mqtt", "worker", "floor", "naive", "alert")


def sections(text: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in SECTIONS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'}: choose among {','.join(SECTIONS)} "
                                          "(comma-separated)")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", type=sections, default=list(SECTIONS),
                    help=f"what to run, comma-separated, among {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of publishing (mqtt and alert sections)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--streams", type=int, default=200, help="Datastreams (spread over the publishers)")
    ap.add_argument("--notify", action=argparse.BooleanOptionalAction, default=True,
                    help="the worker announces stored Observations (and latency is measured)")
    ap.add_argument("--notify-qos", type=int, choices=(0, 1), default=1,
                    help="QoS of the worker's inline notifications (geotwin mqtt worker --notify-qos)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the stream (geotwin mqtt worker --workers M)")
    ap.add_argument("--notifier", choices=("auto", "process", "inline"), default="auto",
                    help="who publishes the notifications: the announcer process, each worker, or auto "
                         "(process with --workers > 1)")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--batch-ms", type=int, default=100)
    ap.add_argument("--naive-seconds", type=float, default=5)
    ap.add_argument("--floor-rows", type=int, default=0,
                    help="rows of the floor section (default: as many as the mqtt section stored, at least 50,000)")
    ap.add_argument("--rate", type=float, default=0,
                    help="observations a second, all publishers together (0: as fast as they can) — below the "
                         "worker's capacity, the latencies are those of a store that keeps up")
    ap.add_argument("--drain-seconds", type=float, default=10,
                    help="seconds of publishing a backlog for the worker-alone figure (0: skip)")
    ap.add_argument("--alert-devices", type=int, default=60,
                    help="manhole covers registered for the alert section (one alert each)")
    ap.add_argument("--alert-load", type=float, default=2000,
                    help="background observations a second during the alert section (0: none)")
    ap.add_argument("--alert-timeout", type=float, default=30,
                    help="seconds after the last alert observation before a cover without its alert counts as missed")
    ap.add_argument("--keep", action="store_true", help="keep the bench schema afterwards")
    args = ap.parse_args()
    if args.alert_devices < 1:
        ap.error("--alert-devices: at least 1")
    if "alert" in args.sections and args.duration < 4:
        ap.error("--duration: at least 4 s with the alert section (1 s of load before the first alert, 2 s after "
                 "the last)")
    run = set(args.sections)

    from sensing.mqtt.testing import broker

    settings = _settings()
    ids = setup(settings, args.streams)
    mq = drain = alert = floor = naive = None
    if run & {"mqtt", "worker", "alert"}:
        with tempfile.TemporaryDirectory(prefix="geotwin-bench-mqtt-") as tmp, broker(settings, Path(tmp)) as s:
            if "mqtt" in run:
                mq = mqtt_run(s, ids, args, Path(tmp))
            if "worker" in run and args.drain_seconds > 0:
                drain = drain_run(s, ids, args, Path(tmp))
            if "alert" in run:
                alert = alert_run(s, ids, alert_devices(settings, args.alert_devices), args, Path(tmp))
    if "floor" in run:
        floor = floor_run(settings, ids, args.floor_rows or max(50_000, mq["stored"] if mq else 0))
    if "naive" in run:
        naive = naive_run(settings, ids, args.naive_seconds)
    if not args.keep:
        drop_schema(settings, SCHEMA)

    cores = os.cpu_count()
    if mq or drain or floor or naive:
        print(f"\nMQTT ingestion, {args.duration:.0f} s, {args.publishers} publisher processes "
              f"({f'{args.rate:,.0f} obs/s' if args.rate else 'as fast as they can'}), {args.streams} "
              f"datastreams, QoS 1, {args.workers} worker process(es), batch {args.batch_size} / {args.batch_ms} ms, "
              f"notifications {'on (' + args.notifier + ')' if args.notify else 'off'}, alert rules on, "
              f"{cores} cores (shared machine; load average {os.getloadavg()[0]:.1f} at the end)\n")
        print("| way | observations | seconds | obs/s | lost | duplicated | store lag p50 / p99 | "
              "publish → notified p50 / p99 |")
        print("|---|---:|---:|---:|---:|---:|---|---|")
    if mq:
        lat = (f"{mq['p50_ms']:,.0f} / {mq['p99_ms']:,.0f} ms ({mq['notifications']:,} seen)"
               if mq["p50_ms"] is not None else "— (notifications off)")
        lag = f"{mq['lag_p50_ms']:,.0f} / {mq['lag_p99_ms']:,.0f} ms ({mq['lag_samples']} samples)"
        print(f"| MQTT QoS 1 → worker (COPY batches) | {mq['stored']:,} | {mq['seconds']:.1f} | {mq['rate']:,.0f} | "
              f"{mq['lost']:,} | {mq['duplicated']:,} | {lag} | {lat} |")
    if drain:
        print(f"| worker alone: drain a backlog queued while it was away | {drain['stored']:,} | "
              f"{drain['seconds']:.1f} | {drain['rate']:,.0f} | {drain['backlog'] - drain['stored']:,} | — | — | — |")
    if floor:
        print(f"| floor: binary COPY, one process | {floor['rows']:,} | {floor['seconds']:.1f} | "
              f"{floor['rate']:,.0f} | — | — | — | — |")
    if naive:
        print(f"| naive: one INSERT per observation | {naive['rows']:,} | {naive['seconds']:.1f} | "
              f"{naive['rate']:,.0f} | — | — | — | — |")
    if mq:
        print("\nstore lag: sampled every 50 ms while publishing, now − the newest stored phenomenonTime (set by the "
              "publisher to its clock when it publishes). publish → notified: a subscriber of v1.1/Observations, "
              "arrival − phenomenonTime, per observation.")
        print(f"\npublished {mq['published']:,}, acknowledged by the broker {mq['acked']:,}")
        print("CPU per stored observation (µs, from the first publish to the last commit): "
              + ", ".join(f"{k} {v:.1f}" for k, v in mq["cpu_us"].items()))
    if alert:
        a = alert
        print(f"\nPublish → alert, {a['devices']} manhole covers (rule {ALERT_RULE}: 井盖开启 = true, one observation "
              f"each, every {a['gap_s']:.2f} s) under a background load of {a['load_rate']:,.0f} obs/s "
              f"({a['load_published']:,} published, {a['load_stored']:,} stored) on {args.streams} datastreams and "
              f"the covers' {', '.join(QUIET_STREAMS)} streams; worker batch {args.batch_size} / {args.batch_ms} ms, "
              f"{cores} cores (shared machine)\n")
        print("| publish → | alerts | missed | p50 | p95 | p99 | max | goal p99 < 1 s |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        def ms(v: float) -> str:
            return "—" if math.isnan(v) else f"{v:,.0f} ms"  # NaN: no alert at all

        for label, st, n in (("alert committed (NOTIFY sensing_alerts arrives)", a["notify"], a["notified"]),
                             ("alert's opened_at (the evaluation's clock)", a["opened"], a["alerts"])):
            ok = "met" if n == a["published"] and st["p99_ms"] < 1000 else "NOT met"
            print(f"| {label} | {n} / {a['published']} | {a['published'] - n} | {ms(st['p50_ms'])} | "
                  f"{ms(st['p95_ms'])} | {ms(st['p99_ms'])} | {ms(st['max_ms'])} | {ok} |")
        print(f"\nother alerts opened (false alarms from the background load): {a['other_alerts']}"
              + (f" e.g. {a['other_alert_examples']}" if a["other_alerts"] else ""))
    print(json.dumps({"mqtt": mq, "drain": drain, "floor": floor, "naive": naive, "alert": alert}, default=str))


if __name__ == "__main__":
    main()
