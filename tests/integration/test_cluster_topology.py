"""The whole topology as real processes (issue 18): ``geotwin cluster up`` from a cluster.toml on free
ports — a PostgreSQL primary and a streaming replica, two API replicas behind nginx, the MQTT broker
and a sensing worker — then read-your-writes through nginx, reads served by the replica database,
tile-cache invalidation across API replicas, an API replica killed under a stream of GETs, the
replica database stopped, and ``cluster down`` leaving no process. ~1–2 minutes."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from spatial_api import store
from spatial_api.config import Settings
from spatial_api.ingest import ingest_vector
from spatial_api.security import keys
from topology.control import load_controller
from tests.fixtures import files

SCHEMA = os.environ.get("GEOTWIN_DB_SCHEMA", "geotwin_test")
LON, LAT = 114.2603, 22.7303  # inside the fixture's parcels' area, off its parcels' corners


def _free_ports(n: int) -> list[int]:
    """Free ports below the ephemeral range (32768–60999 here): a port freed by a killed process
    must not be taken meanwhile as the source port of some outgoing connection."""
    ports = []
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError("no free ports in 20000–32000")


def _geotwin(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GEOTWIN_READ_DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _tile_xy(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def _processes(ctl) -> list[int]:
    """Every pid the cluster's pid files and postmaster.pid files name that is still alive."""
    pids = []
    for f in [*ctl.run_dir.glob("*.pid"), ctl.nginx_dir / "nginx.pid", ctl.topo.state_dir / "mqtt" / "mosquitto.pid",
              *(s.data_dir / "postmaster.pid" for s in [ctl.primary, *ctl.replicas])]:
        try:
            pid = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            pids.append(pid)
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    pg1, pg2, api1, api2, ngx, mq = _free_ports(6)
    config = d / "cluster.toml"
    config.write_text(f"""
[cluster]
state_dir = "state"
schema = "{SCHEMA}"
[postgres.primary]
port = {pg1}
[[postgres.replicas]]
name = "replica1"
port = {pg2}
[[api.replicas]]
port = {api1}
[[api.replicas]]
port = {api2}
[nginx]
port = {ngx}
max_fails = 1
fail_timeout = "10s"
[mqtt]
port = {mq}
[[sensing.workers]]
client_id = "test-worker-1"
""")
    ctl = load_controller(config, echo=lambda *_: None)
    try:
        started = time.monotonic()
        up = _geotwin("cluster", "up", "--config", str(config))
        seconds = time.monotonic() - started
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\ncluster up from nothing: {seconds:.1f} s")
        assert seconds < 120
        ctl.up_seconds = seconds
        ctl.config = config
        yield ctl
    finally:
        ctl.down(purge=False)
        for pid in _processes(ctl):  # whatever a failed `down` left: killed by pid, never by name
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        ctl.down(purge=True)


@pytest.fixture(scope="module")
def data(cluster, tmp_path_factory):
    """An editable layer in the cluster's primary and a GIS-staff key."""
    s = Settings(database_url=cluster.primary.url(), db_schema=SCHEMA)
    layer = "cluster_parcels"
    ingest_vector(files.gpkg(tmp_path_factory.mktemp("gpkg")), layer=layer, key="code", valid_from="2020-01-01",
                  settings=s)
    with psycopg.connect(cluster.primary.url(), options=f"-c search_path={SCHEMA},public") as conn:
        store.update_layer(conn, layer, editable=True)
        key = keys.create(conn, "cluster-staff", "gis-staff", created_by="pytest")
        conn.commit()
    return {"layer": layer, "headers": {"Authorization": f"Bearer {key}"}}


def _nginx(cluster) -> str:
    return cluster.topo.public_url()


def _api(cluster, i: int) -> str:
    return f"http://{cluster.topo.apis[i].address}"


def feature(code: str, lon: float = LON, lat: float = LAT, d: float = 0.0002) -> dict:
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"code": code, "dlbm": "0701", "floors": 2}}


def test_status_and_healthz_through_nginx(cluster):
    r = httpx.get(f"{_nginx(cluster)}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["read_replica"]["ok"] and checks["read_replica"]["reads"] == "replica"
    rows = {row.name: row for row in cluster.status()}
    assert all(row.healthy for row in rows.values()), rows
    assert set(rows) == {"primary", "replica1", "mosquitto", "test-worker-1", "api1", "api2", "nginx"}
    assert "streaming" in rows["replica1"].detail


def test_reads_on_the_replica_and_read_your_writes(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    with httpx.Client(base_url=base, headers=data["headers"], timeout=10) as client:
        r = client.get(f"/collections/{layer}/items", params={"limit": 5})
        assert r.status_code == 200 and r.headers["geotwin-read-database"] == "replica"
        # the replica database really serves it: the API's read connections are there, not on the primary
        with psycopg.connect(cluster.replicas[0].url(), autocommit=True) as conn:
            on_replica = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name = 'geotwin-api-read'").fetchone()[0]
        with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
            on_primary = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name = 'geotwin-api-read'").fetchone()[0]
        assert on_replica >= 1 and on_primary == 0

        for i in range(20):  # each write is read back at once, through nginx, on either API replica
            code = f"RYW-{i}"
            w = client.post(f"/collections/{layer}/items", json=feature(code, LON + 0.001 * i))
            assert w.status_code == 201, w.text
            lsn = w.headers["geotwin-write-lsn"]
            assert "/" in lsn and client.cookies.get("geotwin_write_lsn") == lsn
            got = client.get(f"/collections/{layer}/items/{code}")
            assert got.status_code == 200 and got.json()["properties"]["code"] == code

    # the routing itself: a write position the replica has not replayed sends the read to the primary
    ahead = httpx.get(f"{base}/collections/{layer}/items", headers={"Geotwin-Write-LSN": "FFFFFF/0"}, timeout=10)
    assert ahead.status_code == 200 and ahead.headers["geotwin-read-database"] == "primary"
    caught_up = httpx.get(f"{base}/collections/{layer}/items", headers={"Geotwin-Write-LSN": lsn}, timeout=10)
    assert caught_up.headers["geotwin-read-database"] in ("replica", "primary")


def test_tile_cache_invalidation_across_api_replicas(cluster, data):
    layer = data["layer"]
    lon, lat = LON + 0.05, LAT + 0.05  # an empty spot: the feature written there changes the tile
    x, y = _tile_xy(lon + 0.0001, lat + 0.0001, 16)
    path = f"/tiles/{layer}/16/{x}/{y}.mvt"
    before = {}
    for i in (0, 1):
        first = httpx.get(_api(cluster, i) + path, timeout=20)
        again = httpx.get(_api(cluster, i) + path, timeout=20)
        assert first.status_code in (200, 204) and again.headers.get("etag") == first.headers.get("etag")
        stats = httpx.get(_api(cluster, i) + "/tiles/cache", timeout=10).json()
        assert stats["entries"] >= 1 and stats["hits"] >= 1 and stats["listening"]
        before[i] = (first.headers.get("etag"), first.content)
    # the write goes to API replica 1 only; replica 2 hears of it through LISTEN on the primary
    w = httpx.post(_api(cluster, 0) + f"/collections/{layer}/items", json=feature("TILE-1", lon, lat),
                   headers=data["headers"], timeout=20)
    assert w.status_code == 201, w.text
    for i in (1, 0):
        deadline = time.monotonic() + 10
        while True:
            now = httpx.get(_api(cluster, i) + path, timeout=20)
            if now.content != before[i][1]:
                break
            assert time.monotonic() < deadline, f"API replica {i + 1} still serves the old tile"
            time.sleep(0.1)
        assert now.status_code == 200 and len(now.content) > len(before[i][1])


def test_an_api_replica_killed_under_gets(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    victim = cluster._pid(cluster.topo.apis[1].name, b"serve")
    assert victim
    failed, served_by = 0, set()
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(300):
            if i == 50:
                os.killpg(victim, signal.SIGKILL)
            r = client.get(f"/collections/{layer}/items", params={"limit": 2})
            failed += r.status_code != 200
            served_by.add(r.headers.get("geotwin-upstream", "").split(",")[-1].strip())
    assert failed == 0, f"{failed} of 300 GETs failed"
    assert cluster.topo.apis[0].address in served_by
    # `cluster up` again is idempotent: it restarts only the missing replica
    up = _geotwin("cluster", "up", "--config", str(cluster.config))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "api2 serving" in up.stdout and "api1" not in up.stdout and "primary created" not in up.stdout


def test_replica_database_stopped_reads_fall_back_to_the_primary(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    assert cluster.replicas[0].stop()
    try:
        for _ in range(10):
            r = httpx.get(f"{base}/collections/{layer}/items", params={"limit": 3}, timeout=20)
            assert r.status_code == 200 and r.headers["geotwin-read-database"] == "primary"
        h = httpx.get(f"{base}/healthz", timeout=20)
        assert h.status_code == 200 and h.json()["status"] == "degraded"
        assert not h.json()["checks"]["read_replica"]["ok"]
    finally:
        cluster.replicas[0].start()
    deadline = time.monotonic() + 30  # back on the replica once it streams again (after REPLICA_RETRY)
    while httpx.get(f"{base}/collections/{layer}/items", timeout=20).headers["geotwin-read-database"] != "replica":
        assert time.monotonic() < deadline, "reads did not return to the replica"
        time.sleep(0.5)


def test_cluster_down_leaves_no_process(cluster):
    assert _processes(cluster)
    down = _geotwin("cluster", "down", "--config", str(cluster.config))
    assert down.returncode == 0, down.stderr
    assert _processes(cluster) == []
    for e in [cluster.topo.primary, *cluster.topo.replicas, *cluster.topo.apis, cluster.topo.nginx, cluster.topo.broker]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", e.port)) != 0, f"{e.name} still listens on {e.port}"
