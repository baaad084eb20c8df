"""Failure drills under load (issue 18): the topology of ``geotwin cluster up`` on free ports of this
machine — a PostgreSQL primary and two streaming replicas (``synchronous = true``: ``ANY 1``), two
API replicas (``geotwin serve``) behind nginx, the MQTT broker and two sensing workers sharing the
stream (``$share/geotwin/…``) — with the medium demo's parcels (700 polygons) as an editable layer
and Datastreams for the observations. Each drill injects one fault while load runs, repairs it
the way an operator would (``geotwin cluster up``, idempotent: it starts only what is missing) and
counts what the clients saw:

1. **API replica SIGKILLed** (its process group) while ``wrk -t2 -c16`` GETs items pages and vector
   tiles through nginx: requests, non-2xx/3xx (wrk's count and a per-status count from the Lua
   script), socket errors; repaired with ``cluster up``; healthy = ``cluster status`` all healthy and
   nginx serving from the restarted replica again (``Geotwin-Upstream``).
2. **Replica database stopped** (``pg_ctl stop -m fast``) while wrk GETs OGC Features items (read on
   the replica): the same counts, and which database served the reads (``Geotwin-Read-Database``,
   counted by the Lua script); repaired with ``cluster up``; healthy = streaming again and the
   API replica reading from it again.
3. **Broker restarted** (SIGTERM: mosquitto writes its persistence file; then ``cluster up``) while
   a device (an ``mqtt_credentials`` device user, MQTT 5, clean session, paho's own reconnect and
   re-send of unacknowledged QoS 1 messages) publishes observations at QoS 1 at ``--rate`` a second.
4. **A sensing worker SIGKILLed** (one of the two), the same publish load; ``cluster up`` starts it
   again (its persistent session kept its share of the stream meanwhile).
   For 3 and 4: sent, acknowledged (PUBACK; with "no matching subscribers" counted apart), stored,
   lost (acknowledged, never stored) and duplicated (stored more than once); healthy = every
   observation acknowledged before the repair is stored and one published after it is stored too.
5. **Primary lost and promoted** (optional, ``--no-promote`` to skip; last, it changes the
   cluster): four writers create features through nginx, the primary's whole process tree is
   SIGKILLed, ``geotwin cluster promote``; acknowledged changesets vs those found on the new primary.

Each fault comes ``--duration`` / 3 seconds into the load and its repair at 2/3; the load goes on
until all is healthy again and ``--duration`` / 3 seconds more. The table goes between the
``bench:cluster-drills`` markers of docs/benchmarks.md (``--no-write``: printed only).

    .venv/bin/python bench/cluster_drills.py [--duration 30] [--rate 500] [--no-promote] [--no-write]
        [--drills api,replica,broker,worker,promote] [--keep]

Needs wrk, nginx and mosquitto (Debian). Everything it starts is stopped by pid
(``cluster down``, then whatever pid file still names a live process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, fetch, parse_wrk, write_block

from sensing.mqtt.testing import wait_for
from topology import testing

# bench/ last on the path again (bench/cluster.py puts it first): its sensing.py must not hide the
# sensing package, which topology imports
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]

DEMO = ROOT / ".geotwin" / "demo" / "medium"
SCHEMA = "geotwin"  # the cluster's own databases (not the local PostGIS of `geotwin db up`)
LAYER = "drill_parcels"
CONNECTIONS = 16
STREAMS = 50  # Datastreams per MQTT drill (each drill its own)
DRILLS = ("api", "replica", "broker", "worker", "promote")
START, END = "<!-- bench:cluster-drills:start -->", "<!-- bench:cluster-drills:end -->"

#: wrk's script: paths in a fixed order (each thread at its own offset), every response's status and
#: Geotwin-Read-Database counted per thread and summed in done() as one JSON line.
LUA = """
paths = {%s}
local counter = 0
local threads = {}
function setup(thread)
  thread:set("offset", (counter * 151) %% #paths)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  i = offset or 0
  statuses = {}
  reads = {}
  upstreams = {}
  retried = 0
end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  local db = headers["geotwin-read-database"] or headers["Geotwin-Read-Database"]
  if db then reads[db] = (reads[db] or 0) + 1 end
  local up = headers["Geotwin-Upstream"] or headers["geotwin-upstream"]
  if up then
    if string.find(up, ",", 1, true) then retried = retried + 1 end
    local last = string.match(up, "([^, ]+)$")
    if last then upstreams[last] = (upstreams[last] or 0) + 1 end
  end
end
local function obj(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  return "{" .. table.concat(parts, ", ") .. "}"
end
function done(summary, latency, requests)
  local st, rd, us, re = {}, {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    for k, v in pairs(t:get("reads")) do rd[k] = (rd[k] or 0) + v end
    for k, v in pairs(t:get("upstreams")) do us[k] = (us[k] or 0) + v end
    re = re + t:get("retried")
  end
  local e = summary.errors
  io.write(string.format('DRILL_JSON {"statuses": %%s, "reads": %%s, "upstreams": %%s, "retried": %%d, '
    .. '"errors": {"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}}\\n', obj(st), obj(rd),
    obj(us), re, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_config(d: Path) -> Path:
    (d / "cluster.toml").write_text(testing.config_text(SCHEMA, replicas=2, apis=2, synchronous=True,
                                                        workers=("drill-worker-1", "drill-worker-2")))
    return d / "cluster.toml"


def cluster_up(config: Path) -> float:
    t0 = time.monotonic()
    r = testing.geotwin("cluster", "up", "--config", str(config), timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"`geotwin cluster up` failed:\n{r.stdout}\n{r.stderr}")
    return time.monotonic() - t0


def unhealthy(ctl) -> list[str]:
    """Names of the roles `cluster status` finds unhealthy (empty: all healthy)."""
    return [r.name for r in ctl.status() if not r.healthy]


def load_data(ctl) -> dict:
    import psycopg

    from sensing.mqtt import credentials
    from spatial_api import store
    from spatial_api.config import Settings
    from spatial_api.ingest import ingest_vector
    from spatial_api.security import keys

    s = Settings(database_url=ctl.primary.url(), db_schema=SCHEMA)
    ingest_vector(DEMO / "parcels.gpkg", layer=LAYER, key="parcel_id", valid_from="2024-01-01",
                  access_level="public", settings=s)
    with psycopg.connect(ctl.primary.url(), options=f"-c search_path={SCHEMA},public") as conn:
        store.update_layer(conn, LAYER, editable=True)
        key = keys.create(conn, "drill-staff", "gis-staff", created_by="bench/cluster_drills.py")
        sensor = conn.execute("INSERT INTO sta_sensors (name, encoding_type, metadata) "
                              "VALUES ('drill meter', 'text/plain', 'x') RETURNING id").fetchone()[0]
        prop = conn.execute("INSERT INTO sta_observed_properties (name, definition) "
                            "VALUES ('drill flow', 'urn:drill:flow') RETURNING id").fetchone()[0]
        thing = conn.execute("INSERT INTO sta_things (name) VALUES ('drill thing') RETURNING id").fetchone()[0]
        streams = [r[0] for r in conn.execute(
            "INSERT INTO sta_datastreams (name, observation_type, unit_of_measurement, thing_id, sensor_id, "
            "observed_property_id) SELECT 'drill ds ' || g, "
            "'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement', "
            "'{\"name\": \"cubic metre\", \"symbol\": \"m3\", \"definition\": \"urn:m3\"}', %s, %s, %s "
            "FROM generate_series(1, %s) g RETURNING id", (thing, sensor, prop, STREAMS * 3)).fetchall()]
        now = datetime.now(timezone.utc)
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (now, now))
        password = credentials.issue(conn, "drill-device", write_topics=["v1.1/+/Observations"],
                                     settings=ctl.settings())
        conn.commit()
    ctl._wait_streaming(ctl.replicas[0])
    return {"headers": {"Authorization": f"Bearer {key}"}, "streams": sorted(streams), "device": password}


def http_paths(base: str) -> tuple[list[str], list[str]]:
    import morecantile

    status, body, _ = fetch(base + f"/tiles/{LAYER}/tilejson.json")
    if status != 200:
        raise SystemExit(f"tilejson of {LAYER}: HTTP {status}: {body[:300]!r}")
    tj = json.loads(body)
    w, s, e, n = tj["bounds"]
    cx, cy = (w + e) / 2, (s + n) / 2
    tms = morecantile.tms.get("WebMercatorQuad")
    tiles = []
    for z in range(max(tj["minzoom"], 12), min(tj["maxzoom"], 16) + 1):
        c = tms.tile(cx, cy, z)
        tiles += [f"/tiles/{LAYER}/{z}/{x}/{y}.mvt" for y in range(c.y - 2, c.y + 2) for x in range(c.x - 2, c.x + 2)]
    dx, dy = (e - w) / 8, (n - s) / 8
    items = [f"/collections/{LAYER}/items?limit=20&bbox={w + i * dx:.6f},{s + j * dy:.6f},"
             f"{w + (i + 1) * dx:.6f},{s + (j + 1) * dy:.6f}" for j in range(8) for i in range(8)]
    for p in tiles + items:
        status, body, _ = fetch(base + p)
        if status not in (200, 204):
            raise SystemExit(f"{p}: HTTP {status} before any drill: {body[:300]!r}")
    return tiles, items, (w, s, e, n)


# -- HTTP drills -----------------------------------------------------------------------------------


class Wrk:
    """wrk over a list of paths in the background until :meth:`result` stops it (SIGINT: wrk
    prints its summary and runs the script's ``done``), parsed."""

    def __init__(self, base: str, paths: list[str], script: Path):
        script.write_text(LUA % ", ".join(f'"{p}"' for p in paths))
        self.proc = subprocess.Popen(
            ["wrk", "-t2", f"-c{CONNECTIONS}", "-d3600s", "--timeout", "30s", "--latency", "-s", str(script),
             base], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.started = time.monotonic()

    def result(self) -> dict:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=120)
        self.seconds = time.monotonic() - self.started
        r = parse_wrk(out)
        m = re.search(r"^DRILL_JSON (.*)$", out, re.MULTILINE)
        if not m:
            raise SystemExit(f"wrk's script printed no summary:\n{out[-2000:]}")
        extra = json.loads(m.group(1))
        r.update(extra)
        r["errors_total"] = sum(extra["errors"].values()) - extra["errors"].get("status", 0)
        r["bad_status"] = sum(v for k, v in extra["statuses"].items() if not 200 <= int(k) < 400)
        return r

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def header(headers: dict, name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def served_by(base: str, path: str, n: int = 20) -> set[str]:
    got = set()
    for _ in range(n):
        _, _, headers = fetch(base + path, timeout=30)
        got.add(header(headers, "Geotwin-Upstream").split(",")[-1].strip())
    return got


def drill_api_kill(ctl, config: Path, paths: list[str], work: Path, duration: int) -> dict:
    base, victim = ctl.topo.public_url(), ctl.topo.apis[1]
    pid = ctl._pid(victim.name, b"serve")
    assert pid, f"{victim.name} does not run"
    load0 = os.getloadavg()[0]
    w = Wrk(base, paths, work / "api.lua")
    try:
        time.sleep(duration / 3)
        os.killpg(pid, signal.SIGKILL)
        t_fault = time.monotonic()
        log(f"api: {victim.name} (pid {pid}) SIGKILLed at {t_fault - w.started:.1f} s")
        time.sleep(max(0.0, w.started + 2 * duration / 3 - time.monotonic()))
        t_repair = time.monotonic()
        up_s = cluster_up(config)
        log(f"api: `cluster up` in {up_s:.1f} s")
        probe = paths[0]
        wait_for(lambda: not unhealthy(ctl) and victim.address in served_by(base, probe), 60,
                   f"{victim.name} back in nginx's rotation")
        t_ok = time.monotonic()
        time.sleep(duration / 3)  # and the load goes on a while with all replicas
        r = w.result()
    finally:
        w.stop()
    log(f"api: {r['requests']:,} requests, non-2xx {r['non2xx']}, bad statuses {r['bad_status']}, "
        f"socket errors {r['socket_errors']}, statuses {r['statuses']}, upstreams {r['upstreams']}, "
        f"retried {r['retried']}")
    return {"drill": f"API replica `{victim.name}` SIGKILLed (wrk: items + tiles through nginx)",
            "kind": "http", "duration": w.seconds, "load": load0, **r, "apis": {a.name: a.address for a in ctl.topo.apis},
            "outage": t_repair - t_fault, "recovery": t_ok - t_repair,
            "note": f"`cluster up` {up_s:.1f} s; back in nginx's rotation"}


def drill_replica_stop(ctl, config: Path, paths: list[str], work: Path, duration: int) -> dict:
    import psycopg

    base, replica, api = ctl.topo.public_url(), ctl.replicas[0], ctl.topo.apis[0]
    load0 = os.getloadavg()[0]
    w = Wrk(base, paths, work / "replica.lua")
    try:
        time.sleep(duration / 3)
        t_fault = time.monotonic()
        replica.stop()
        log(f"replica: {replica.endpoint.name} stopped (pg_ctl stop -m fast) at {t_fault - w.started:.1f} s, "
            f"in {time.monotonic() - t_fault:.1f} s")
        time.sleep(max(0.0, w.started + 2 * duration / 3 - time.monotonic()))
        t_repair = time.monotonic()
        up_s = cluster_up(config)
        log(f"replica: `cluster up` in {up_s:.1f} s")

        def streaming() -> bool:
            with psycopg.connect(ctl.primary.url(), autocommit=True) as conn:
                ok = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s "
                                  "AND state = 'streaming'", (replica.endpoint.name,)).fetchone()[0]
            _, _, h = fetch(f"http://{api.address}{paths[0]}", timeout=30)
            return ok and header(h, "Geotwin-Read-Database") == "replica"

        wait_for(lambda: streaming() and not unhealthy(ctl), 120, f"{replica.endpoint.name} streaming and read")
        t_ok = time.monotonic()
        time.sleep(duration / 3)
        r = w.result()
    finally:
        w.stop()
    log(f"replica: {r['requests']:,} requests, non-2xx {r['non2xx']}, bad statuses {r['bad_status']}, "
        f"socket errors {r['socket_errors']}, statuses {r['statuses']}, reads {r['reads']}, "
        f"upstreams {r['upstreams']}, retried {r['retried']}")
    return {"drill": f"replica database `{replica.endpoint.name}` stopped, `pg_ctl stop -m fast` "
                     "(wrk: items through nginx)",
            "kind": "http", "duration": w.seconds, "load": load0, **r, "apis": {a.name: a.address for a in ctl.topo.apis},
            "outage": t_repair - t_fault, "recovery": t_ok - t_repair,
            "note": (f"`cluster up` {up_s:.1f} s; reads on replica / primary: {r['reads'].get('replica', 0):,} / "
                     f"{r['reads'].get('primary', 0):,}; streaming and read again")}


# -- MQTT drills -----------------------------------------------------------------------------------


class Device:
    """A device user publishing observations at QoS 1 at a fixed rate (paho's network thread:
    reconnects by itself, re-sends unacknowledged QoS 1 messages with DUP). Message ``seq`` is
    ``{"result": seq, "phenomenonTime": <wall clock at publish>}`` on stream ``seq % n``."""

    def __init__(self, ctl, password: str, streams: list[int], rate: float):
        import paho.mqtt.client as mqtt

        from sensing.mqtt.testing import device_endpoint

        self.streams, self.rate = streams, rate
        s = ctl.settings()
        ep = device_endpoint(s, "drill-device", password)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"drill-device-{os.getpid()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(ep.username, ep.password)
        self.c.max_inflight_messages_set(0)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(min_delay=1, max_delay=2)
        self.lock = threading.Lock()
        self.mids: dict[int, int] = {}   # mid → seq of messages not yet acknowledged
        self.early: dict[int, object] = {}  # mid → PUBACK reason code that came before publish() returned
        self.acked: dict[int, float] = {}  # seq → time of its PUBACK
        self.no_subscribers: set[int] = set()
        self.refused: dict[int, str] = {}
        self.sent_at: dict[int, float] = {}
        self.connects = 0
        self.c.on_publish = self._on_publish
        self.c.on_connect = self._on_connect
        self.stop = threading.Event()
        self.sent = 0
        self.c.connect(ep.host, ep.port, keepalive=10)
        self.c.loop_start()
        wait_for(self.c.is_connected, 20, "the device's connection")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.connects += 1

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            seq = self.mids.pop(mid, None)
            if seq is None:
                self.early[mid] = reason_code
            else:
                self._record(seq, reason_code)

    def _record(self, seq: int, reason_code) -> None:
        if reason_code.value == 16:  # "No matching subscribers": accepted, delivered to no one
            self.no_subscribers.add(seq)
        elif reason_code.is_failure:
            self.refused[seq] = str(reason_code)
            return
        self.acked[seq] = time.monotonic()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        n, last = 0, 0.0
        while not self.stop.is_set():
            ahead = n / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                self.stop.wait(ahead)
                continue
            now = max(time.time(), last + 1e-6)
            last = now
            ts = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            sent = time.monotonic()
            # not under self.lock: paho calls on_publish holding its own lock (the other order deadlocks)
            info = self.c.publish(f"v1.1/Datastreams({self.streams[n % len(self.streams)]})/Observations",
                                  f'{{"result": {n}, "phenomenonTime": "{ts}"}}', qos=1)
            with self.lock:
                self.sent_at[n] = sent
                early = self.early.pop(info.mid, None)
                if early is None:
                    self.mids[info.mid] = n
                else:  # its PUBACK came before publish() returned
                    self._record(n, early)
            n += 1
            self.sent = n

    def finish(self, timeout: float = 120) -> None:
        self.stop.set()
        self.thread.join(30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.mids:
                    break
            time.sleep(0.05)
        self.c.disconnect()
        self.c.loop_stop()


def stored(ctl, streams: list[int]) -> dict[int, int]:
    """seq → how many times it is stored."""
    import psycopg

    with psycopg.connect(ctl.primary.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
        return {int(seq): n for seq, n in conn.execute(
            "SELECT result_number, count(*) FROM sta_observations WHERE stream_id = ANY(%s) GROUP BY 1",
            (streams,))}


def mqtt_drill(ctl, config: Path, data: dict, streams: list[int], duration: int, rate: float, name: str,
               fault, what: str) -> dict:
    load0 = os.getloadavg()[0]
    dev = Device(ctl, data["device"], streams, rate)
    dev.start()
    try:
        time.sleep(duration / 3)
        t_fault = time.monotonic()
        fault_note = fault()
        log(f"{name}: {fault_note} at {t_fault - dev.t0:.1f} s")
        time.sleep(max(0.0, dev.t0 + 2 * duration / 3 - time.monotonic()))
        t_repair = time.monotonic()
        with dev.lock:
            acked_before = set(dev.acked)
        up_s = cluster_up(config)
        log(f"{name}: `cluster up` in {up_s:.1f} s")

        def recovered() -> bool:
            got = stored(ctl, streams)
            with dev.lock:
                after = [s for s, t in dev.sent_at.items() if t >= t_repair]
            return acked_before <= set(got) and any(s in got for s in after) and not unhealthy(ctl)

        wait_for(recovered, 120, f"{name}: the stream stored again", interval=0.2)
        t_ok = time.monotonic()
        time.sleep(duration / 3)  # and the stream goes on a while with everything back
    finally:
        dev.finish()
    seconds = time.monotonic() - dev.t0
    acked = set(dev.acked)
    # stored: polled until every acknowledged one is there, or nothing new comes for 20 s
    last, last_change = None, time.monotonic()
    while True:
        got = stored(ctl, streams)
        if acked <= set(got) or time.monotonic() - last_change > 20:
            break
        if got != last:
            last, last_change = got, time.monotonic()
        time.sleep(0.2)
    lost = sorted(acked - got.keys())
    dup = sum(n - 1 for n in got.values() if n > 1)
    r = {"drill": what, "kind": "mqtt", "duration": seconds, "load": load0, "sent": dev.sent, "acked": len(acked),
         "no_subscribers": len(dev.no_subscribers), "refused": len(dev.refused),
         "unacked": dev.sent - len(acked) - len(dev.refused), "stored": len(got), "lost": len(lost),
         "lost_sample": lost[:10], "duplicated": dup, "connects": dev.connects,
         "outage": t_repair - t_fault, "recovery": t_ok - t_repair, "up_s": up_s, "fault_note": fault_note}
    log(f"{name}: sent {r['sent']:,}, acked {r['acked']:,} (no subscribers {r['no_subscribers']}), stored "
        f"{r['stored']:,}, lost {r['lost']} {lost[:10]}, duplicated {dup}, device connects {dev.connects}")
    return r


def drill_broker(ctl, config, data, streams, duration, rate) -> dict:
    from sensing.mqtt.broker import LocalBroker

    def fault() -> str:
        b = LocalBroker(ctl.settings())
        log(f"broker: stopping mosquitto (pid {b.pid()})")
        b.down()
        return "mosquitto stopped (SIGTERM)"

    r = mqtt_drill(ctl, config, data, streams, duration, rate, "broker", fault,
                   "MQTT broker restarted: stopped (SIGTERM), then `cluster up` (device publishing QoS 1)")
    r["note"] = f"{r['fault_note']}; `cluster up` {r['up_s']:.1f} s; device connected {r['connects']}×"
    return r


def drill_worker(ctl, config, data, streams, duration, rate) -> dict:
    victim = ctl.topo.workers[1]

    def fault() -> str:
        pid = ctl._pid(victim.name, b"mqtt")
        assert pid, f"{victim.name} does not run"
        log(f"worker: killing {victim.name} (pid {pid})")
        os.killpg(pid, signal.SIGKILL)
        return f"{victim.name} SIGKILLed"

    r = mqtt_drill(ctl, config, data, streams, duration, rate, "worker", fault,
                   f"sensing worker `{victim.name}` SIGKILLed (1 of 2 sharing the stream), then `cluster up`")
    r["note"] = f"{r['fault_note']}; `cluster up` {r['up_s']:.1f} s"
    return r


# -- primary lost, promote ---------------------------------------------------------------------------


def drill_promote(ctl, config: Path, data: dict) -> tuple[dict, object]:
    import httpx
    import psycopg

    from spatial_api import store
    from topology.control import load_controller

    base = ctl.topo.public_url()
    acked: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()
    w, s, e, n = data["bounds"]  # the parcels' extent

    def feature(code: str, i: int, k: int) -> dict:
        x, y, d = w + (e - w) * (i % 200) / 200, s + (n - s) * (k + 0.5) / 4, 0.0002
        ring = [[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"parcel_id": code}}

    def writer(k: int) -> None:
        with httpx.Client(base_url=base, headers=data["headers"], timeout=10) as client:
            i = 0
            while not stop.is_set():
                code = f"DRILL-{k}-{i}"
                try:
                    r = client.post(f"/collections/{LAYER}/items", json=feature(code, i, k))
                    if r.status_code == 201:
                        acked[code] = int(r.headers["etag"].strip('"'))
                    else:
                        failures.append(str(r.status_code))
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                i += 1

    load0 = os.getloadavg()[0]
    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 60 or failures[:1], 120, "60 acknowledged writes")
    if failures and len(acked) < 60:
        raise SystemExit(f"writes fail before the primary is lost: {failures[:5]}")
    postmaster = int((ctl.primary.data_dir / "postmaster.pid").read_text().split()[0])
    before = len(acked)
    killed = testing.kill_tree(postmaster)
    t_fault = time.monotonic()
    log(f"promote: primary killed ({len(killed)} processes) after {before} acknowledged writes")
    wait_for(lambda: len(failures) >= 4, 30, "writes failing on the lost primary")
    stop.set()
    for t in threads:
        t.join(30)
    t_repair = time.monotonic()
    r = testing.geotwin("cluster", "promote", "--config", str(config), timeout=600)
    promote_s = time.monotonic() - t_repair
    if r.returncode != 0:
        raise SystemExit(f"`geotwin cluster promote` failed:\n{r.stdout}\n{r.stderr}")
    new = load_controller(config, echo=lambda *_: None)
    with psycopg.connect(new.primary.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
        rows = dict(conn.execute(f"SELECT fid, vid FROM {store.partition_name(LAYER)} "
                                 "WHERE fid LIKE 'DRILL-%%' AND valid_to IS NULL").fetchall())
    missing = sorted(set(acked) - set(rows))
    wrong = sorted(c for c, v in acked.items() if c in rows and rows[c] != v)
    wait_for(lambda: not unhealthy(new) and fetch(base + "/healthz")[0] == 200, 120,
               "the promoted cluster healthy")
    t_ok = time.monotonic()
    log(f"promote: {len(acked)} acknowledged, {len(rows)} found on {new.primary.endpoint.name}, missing "
        f"{len(missing)}, wrong version {len(wrong)}; promote {promote_s:.1f} s; {len(failures)} writes failed")
    return ({"drill": f"primary SIGKILLed (whole process tree) under 4 writers through nginx, then "
                      f"`cluster promote` → {new.primary.endpoint.name}",
             "kind": "promote", "duration": t_repair - t_fault + (t_ok - t_repair), "load": load0,
             "acked": len(acked), "found": len(rows), "lost": len(missing), "wrong": len(wrong),
             "failed_writes": len(failures), "outage": t_repair - t_fault, "recovery": t_ok - t_repair,
             "note": (f"`cluster promote` {promote_s:.1f} s (API replicas and workers restarted on the new "
                      f"primary); {len(rows) - len(acked) + len(missing)} committed but not acknowledged "
                      "(in flight at the kill)")}, new)


# -- report ----------------------------------------------------------------------------------------


def row(r: dict) -> str:
    if r["kind"] == "http":
        errs = r["errors"]
        sock = ", ".join(f"{k} {v}" for k, v in errs.items() if v and k != "status") or "0"
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
        spread = " / ".join(f"{r['upstreams'].get(a, 0):,}" for a in r["apis"].values())
        names = " / ".join(r["apis"])
        return (f"| {r['drill']} | {r['duration']:.0f} | {r['requests']:,} requests ({statuses}) | "
                f"non-2xx/3xx {r['non2xx']}, socket errors {sock} | — | — | {r['outage']:.1f} | "
                f"{r['recovery']:.1f} | {r['note']}; answered by {names}: {spread}; {r['retried']:,} retried by "
                f"nginx on the other replica | {r['load']:.1f} |")
    if r["kind"] == "mqtt":
        return (f"| {r['drill']} | {r['duration']:.0f} | {r['sent']:,} sent, {r['acked']:,} acknowledged, "
                f"{r['stored']:,} stored | {r['unacked']} not acknowledged, {r['refused']} refused, "
                f"{r['no_subscribers']} “no matching subscribers” | {r['lost']} | {r['duplicated']} | "
                f"{r['outage']:.1f} | {r['recovery']:.1f} | {r['note']} | {r['load']:.1f} |")
    return (f"| {r['drill']} | {r['duration']:.0f} | {r['acked']:,} changesets acknowledged, {r['found']:,} "
            f"found on the new primary | {r['failed_writes']} writes failed while the primary was gone | "
            f"{r['lost']} (wrong version: {r['wrong']}) | — | {r['outage']:.1f} | {r['recovery']:.1f} | "
            f"{r['note']} | {r['load']:.1f} |")


def report(rows: list[dict], args, up_s: float, load_start, load_end, total_s: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                            text=True).stdout.strip()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(row(r) for r in rows)
    return f"""{START}
`bench/cluster_drills.py`, {when}, commit {commit or '?'}, {os.cpu_count()} cores shared with other work
(1-min load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; whole run
{total_s:.0f} s). The topology of `geotwin cluster up` on free ports: a PostgreSQL primary and two
streaming replicas (`synchronous = true`: `ANY 1`), two API replicas (1 uvicorn worker each) behind
nginx (`max_fails 1`, `fail_timeout 10s`, `proxy_next_upstream error timeout http_502 http_503`),
mosquitto and two sensing workers on the shared subscription; `cluster up` from nothing {up_s:.1f} s.
Data: the medium demo's parcels (700 polygons) as an editable layer, {STREAMS} Datastreams per MQTT
drill. HTTP load: `wrk -t2 -c{CONNECTIONS}`, statuses, the API replica that answered and the database that
served the reads counted by its Lua script (`Geotwin-Upstream`, `Geotwin-Read-Database`). MQTT load:
one device user, QoS 1, {args.rate:.0f} observations/s (paho re-sends what was not acknowledged when it
reconnects). Each fault {args.duration / 3:.0f} s into the load, the repair (`geotwin cluster up`, as an
operator would) {args.duration / 3:.0f} s later; the load goes on until all is healthy and
{args.duration / 3:.0f} s more (column "load s"). "Healthy" = `cluster status` all healthy
and the role doing its work again (back in nginx's rotation / streaming and read / the stream
stored again with every observation acknowledged before the repair). Lost = acknowledged to the
client and not stored; duplicated = stored more than once.

| drill | load s | requests / messages | failures | lost | duplicated | fault → repair s | repair → healthy s | notes | load avg |
|---|---:|---|---|---:|---:|---:|---:|---|---:|
{table}
{END}"""


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=30, help="seconds of load per drill (fault at 1/3, repair at 2/3)")
    ap.add_argument("--rate", type=float, default=500, help="observations a second the device publishes")
    ap.add_argument("--drills", default=",".join(DRILLS), help=f"which, in this order (default: {','.join(DRILLS)})")
    ap.add_argument("--no-promote", action="store_true", help="skip the primary-lost drill")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up (its config is printed)")
    args = ap.parse_args()
    if args.duration < 12:
        raise SystemExit("--duration: at least 12 seconds")
    drills = [d.strip() for d in args.drills.split(",") if d.strip()]
    if args.no_promote:
        drills = [d for d in drills if d != "promote"]
    unknown = set(drills) - set(DRILLS)
    if unknown or not drills:
        raise SystemExit(f"--drills {args.drills!r}: choose among {', '.join(DRILLS)}")
    if "promote" in drills[:-1]:
        raise SystemExit("--drills: promote changes the cluster's primary; put it last")
    if args.rate <= 0:
        raise SystemExit("--rate: a positive number of observations a second")
    for tool in ("wrk", "/usr/sbin/nginx", "/usr/sbin/mosquitto"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install -y {Path(tool).name}")
    from topology.control import load_controller

    work = Path(tempfile.mkdtemp(prefix="geotwin-cluster-drills-"))
    config = write_config(work)
    controllers = [load_controller(config, echo=lambda m: print("  " + m, flush=True))]
    ctl = controllers[0]
    load_start, t0 = os.getloadavg(), time.perf_counter()
    os.environ.pop("GEOTWIN_TILE_CACHE_MB", None)
    rows: list[dict] = []
    try:
        up_s = cluster_up(config)
        log(f"cluster up from nothing in {up_s:.1f} s ({config})")
        data = load_data(ctl)
        tiles, items, data["bounds"] = http_paths(ctl.topo.public_url())
        log(f"data loaded: {len(tiles)} tile paths, {len(items)} items paths, {len(data['streams'])} Datastreams")
        streams = data["streams"]
        for d in drills:
            if d == "api":
                rows.append(drill_api_kill(ctl, config, items + tiles, work, args.duration))
            elif d == "replica":
                rows.append(drill_replica_stop(ctl, config, items, work, args.duration))
            elif d == "broker":
                rows.append(drill_broker(ctl, config, data, streams[:STREAMS], args.duration, args.rate))
            elif d == "worker":
                rows.append(drill_worker(ctl, config, data, streams[STREAMS:2 * STREAMS], args.duration, args.rate))
            elif d == "promote":
                r, new = drill_promote(ctl, config, data)
                controllers.insert(0, new)
                rows.append(r)
    finally:
        if args.keep:
            print(f"cluster kept: .venv/bin/geotwin cluster down --purge --config {config}")
        else:
            try:
                testing.teardown(config, *controllers)  # down, kill by pid what is left, purge
            finally:
                shutil.rmtree(work, ignore_errors=True)
    md = report(rows, args, up_s, load_start, os.getloadavg(), time.perf_counter() - t0)
    print(md)
    if not args.no_write:
        write_block(START, END, md, heading="Failure drills (issue 18)",
                    intro="Faults injected into the running cluster under load, counted from the clients' side.")


if __name__ == "__main__":
    main()
