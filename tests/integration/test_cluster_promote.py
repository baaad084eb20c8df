"""``geotwin cluster promote`` as real processes (issue 18): a cluster with synchronous replication
(``ANY 1`` of two streaming replicas), two API replicas behind nginx, the broker and a worker.
Changesets are written through nginx while the primary's whole process tree is SIGKILLed; after
``cluster promote`` every acknowledged changeset is on the new primary, the other replica follows
it, the API replicas and the worker run on it, and the API serves reads and writes again through
the same nginx. The cost of synchronous commits is measured on the way. ~2 minutes.

Helpers and the ``data`` fixture come from test_cluster_topology (its ``data`` uses this module's
``cluster``)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from spatial_api import store
from tests.integration.test_cluster_topology import (
    LAT,
    LON,
    SCHEMA,
    _free_ports,
    _geotwin,
    _processes,
    data,  # noqa: F401  (the editable layer fixture)
    feature,
)
from topology.control import load_controller


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster_promote")
    pg1, pg2, pg3, api1, api2, ngx, mq = _free_ports(7)
    config = d / "cluster.toml"
    config.write_text(f"""
[cluster]
state_dir = "state"
schema = "{SCHEMA}"
[postgres]
synchronous = true
[postgres.primary]
port = {pg1}
[[postgres.replicas]]
name = "replica1"
port = {pg2}
[[postgres.replicas]]
name = "replica2"
port = {pg3}
[[api.replicas]]
port = {api1}
[[api.replicas]]
port = {api2}
[nginx]
port = {ngx}
[mqtt]
port = {mq}
[[sensing.workers]]
client_id = "promote-worker-1"
""")
    ctl = load_controller(config, echo=lambda *_: None)
    try:
        up = _geotwin("cluster", "up", "--config", str(config))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "synchronous replication on" in up.stdout
        ctl.config = config
        yield ctl
    finally:
        controllers = [ctl]  # as first made, and after a promotion (the new primary, the retired one)
        try:
            controllers.insert(0, load_controller(config, echo=lambda *_: None))
        except Exception as exc:  # noqa: BLE001 — a broken failover.json must not keep processes alive
            print(f"failover state unreadable at teardown: {exc}")
        for c in controllers:
            c.down(purge=False)
            for pid in _processes(c):  # whatever a failed `down` left: killed by pid, never by name
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        controllers[0].down(purge=True)  # the latest view names every database folder, retired ones too


def _environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a postmaster and every process under it (the machine lost, not a shutdown)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return tree


def test_synchronous_replication_and_its_cost(cluster):
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        states = dict(conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall())
        assert names == 'ANY 1 ("replica1", "replica2")' and states == {"replica1": "quorum", "replica2": "quorum"}
        conn.execute("CREATE TABLE IF NOT EXISTS public.commit_cost_probe (i int)")
        times: dict[str, list[float]] = {"on": [], "local": []}
        for block in range(10):  # alternating blocks of 20 single-row commits
            for mode in (("on", "local") if block % 2 == 0 else ("local", "on")):
                conn.execute(f"SET synchronous_commit = {mode}")
                for i in range(20):
                    t0 = time.perf_counter()
                    conn.execute("INSERT INTO public.commit_cost_probe VALUES (%s)", (i,))
                    times[mode].append((time.perf_counter() - t0) * 1000)
        # with `on`, a commit returns only once a standby has flushed it: past the insert's position
        conn.execute("SET synchronous_commit = on")
        with conn.transaction():
            conn.execute("INSERT INTO public.commit_cost_probe VALUES (-1)")
            inserted = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        assert conn.execute("SELECT max(flush_lsn) >= %s::pg_lsn FROM pg_stat_replication",
                            (str(inserted),)).fetchone()[0]
        conn.execute("DROP TABLE public.commit_cost_probe")
    on, local = statistics.median(times["on"]), statistics.median(times["local"])
    print(f"\nsingle-row commit, median of 100: synchronous {on:.2f} ms, local {local:.2f} ms "
          f"(p90 {statistics.quantiles(times['on'], n=10)[-1]:.2f} / "
          f"{statistics.quantiles(times['local'], n=10)[-1]:.2f} ms)")


def test_promote_refused_while_the_primary_answers(cluster):
    r = _geotwin("cluster", "promote", "--config", str(cluster.config))
    assert r.returncode == 1 and "still answers" in r.stderr and "two primaries" in r.stderr, r.stdout + r.stderr
    r = _geotwin("cluster", "promote", "--config", str(cluster.config), "--replica", "nope")
    assert r.returncode in (1, 2) and ("still answers" in r.stderr or "no replica named" in r.stderr)
    assert not cluster.failover_file.exists()


def test_primary_lost_promote_loses_no_acknowledged_changeset(cluster, data):  # noqa: F811
    base, layer = cluster.topo.public_url(), data["layer"]
    acked: dict[str, int] = {}  # fid → vid of every 201 the writer got
    failures: list[str] = []
    stop = threading.Event()

    def writer(k: int):
        with httpx.Client(base_url=base, headers=data["headers"], timeout=10) as client:
            i = 0
            while not stop.is_set():
                code = f"PROMOTE-{k}-{i}"
                try:
                    r = client.post(f"/collections/{layer}/items", json=feature(code, LON + 0.0005 * (i % 200),
                                                                                LAT + 0.0005 * k))
                    if r.status_code == 201:
                        acked[code] = int(r.headers["etag"].strip('"'))
                    else:
                        failures.append(f"{r.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]  # several commits in flight
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60:
        assert time.monotonic() < deadline and all(t.is_alive() for t in threads), \
            f"writes too slow: {len(acked)} acknowledged"
        time.sleep(0.05)
    postmaster = int((cluster.primary.data_dir / "postmaster.pid").read_text().split()[0])
    killed = _kill_tree(postmaster)
    time.sleep(1.5)  # writes in flight fail; the writer keeps trying on the dead primary
    stop.set()
    for t in threads:
        t.join(30)
    assert failures, "no write failed after the primary was killed: it was not lost"
    print(f"\nprimary killed ({len(killed)} processes) after {len(acked)} acknowledged writes by 4 writers; "
          f"{len(failures)} writes failed meanwhile")

    before = {a.name: cluster._pid(a.name, b"serve") for a in cluster.topo.apis}
    worker_before = cluster._pid("promote-worker-1", b"mqtt")
    t0 = time.monotonic()
    r = _geotwin("cluster", "promote", "--config", str(cluster.config))
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout.strip())
    print(f"promote (CLI, with the API replicas' restart): {seconds:.1f} s")

    ctl = load_controller(cluster.config, echo=lambda *_: None)
    new = ctl.primary.endpoint.name
    assert new in ("replica1", "replica2") and ctl.topo.primary.port != cluster.topo.primary.port
    assert [r.endpoint.name for r in ctl.replicas] == [{"replica1": "replica2", "replica2": "replica1"}[new]]
    state = json.loads(ctl.failover_file.read_text())
    assert state["primary"] == new and state["retired"][0]["name"] == "primary" and state["history"][0]["timeline"] == 2

    # every acknowledged changeset, with the very version the writer was told, on the new primary
    with psycopg.connect(ctl.primary.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        rows = dict(conn.execute(f"SELECT fid, vid FROM {store.partition_name(layer)} "
                                 "WHERE fid LIKE 'PROMOTE-%' AND valid_to IS NULL").fetchall())
        n_changesets = conn.execute("SELECT count(*) FROM changesets WHERE layer = %s AND source = 'api:create' "
                                    "AND counts->>'added' = '1'", (layer,)).fetchone()[0]
    missing = sorted(set(acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged changesets lost: {missing[:10]}"
    assert all(rows[c] == v for c, v in acked.items())
    assert n_changesets >= len(acked)
    print(f"{len(acked)} acknowledged changesets: all on {new}; {len(rows) - len(acked)} more committed "
          "but not acknowledged (in flight at the kill)")

    # the remaining replica follows the new primary (and is its synchronous standby again)
    other = ctl.replicas[0]
    with psycopg.connect(ctl.primary.url(), autocommit=True) as conn:
        repl = conn.execute("SELECT application_name, state, sync_state FROM pg_stat_replication").fetchall()
        assert repl == [(other.endpoint.name, "streaming", "quorum")], repl
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] == f'ANY 1 ("{other.endpoint.name}")'

    # API replicas and the worker restarted with the new primary's DATABASE_URL; nginx serves again
    for a in ctl.topo.apis:
        pid = ctl._pid(a.name, b"serve")
        assert pid and pid != before[a.name]
        env = _environ(pid)
        assert f":{ctl.topo.primary.port}/" in env["DATABASE_URL"]
        assert f":{other.endpoint.port}/" in env["GEOTWIN_READ_DATABASE_URL"]
    worker = ctl._pid("promote-worker-1", b"mqtt")
    assert worker and worker != worker_before and f":{ctl.topo.primary.port}/" in _environ(worker)["DATABASE_URL"]
    with httpx.Client(base_url=base, headers=data["headers"], timeout=20) as client:
        h = client.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok", h.text
        some = next(iter(acked))
        assert client.get(f"/collections/{layer}/items/{some}").status_code == 200
        w = client.post(f"/collections/{layer}/items", json=feature("AFTER-PROMOTE", LON, LAT + 0.03))
        assert w.status_code == 201, w.text
        got = client.get(f"/collections/{layer}/items/AFTER-PROMOTE")
        assert got.status_code == 200 and got.json()["properties"]["code"] == "AFTER-PROMOTE"
    deadline = time.monotonic() + 20  # and the write reaches the follower
    while True:
        with psycopg.connect(other.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
            if conn.execute(f"SELECT count(*) FROM {store.partition_name(layer)} WHERE fid = 'AFTER-PROMOTE'"
                            ).fetchone()[0]:
                break
        assert time.monotonic() < deadline, "the write after the promotion did not reach the other replica"
        time.sleep(0.2)

    rows = {row["name"]: row for row in json.loads(_geotwin("cluster", "status", "--config", str(cluster.config),
                                                            "--json").stdout)}
    assert rows[new]["role"] == "postgres primary" and rows[new]["healthy"]
    assert rows["primary"]["role"] == "postgres retired" and rows["primary"]["healthy"]
    assert "retired" in rows["primary"]["detail"]


def test_up_after_promote_keeps_the_new_primary_and_down_stops_all(cluster):
    ctl = load_controller(cluster.config, echo=lambda *_: None)
    up = _geotwin("cluster", "up", "--config", str(cluster.config))
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"postgres primary running on 127.0.0.1:{ctl.topo.primary.port}" in up.stdout
    assert not ctl.retired[0].is_running()  # the lost primary is never started again
    down = _geotwin("cluster", "down", "--config", str(cluster.config))
    assert down.returncode == 0, down.stderr
    assert _processes(ctl) == []
