"""The whole topology as real processes (issue 18), one cluster for the module: ``geotwin cluster up``
from a cluster.toml on free ports — a PostgreSQL primary and two streaming replicas (synchronous
``ANY 1``), two API replicas behind nginx, the object store (SeaweedFS S3), the MQTT broker and a
sensing worker. In order:

- status, /healthz through nginx, up in under 2 minutes;
- read-your-writes through nginx, reads served by the replica database;
- tile-cache invalidation across API replicas;
- the small demo district loaded into the cluster with its imagery in the bucket: imagery tiles from
  S3 on both API replicas; ``supervise run --engine dask`` (two worker processes reading the
  bucket's COGs) gives exactly the SQL engine's findings;
- an API replica SIGKILLed under GETs (no failed request), the replica database stopped (reads fall
  back to the primary), the cost of synchronous commits;
- the primary's process tree SIGKILLed under writes, ``cluster promote``: no acknowledged changeset
  lost, the other replica follows, API replicas and worker restarted on the new primary;
  ``cluster rejoin``: the lost primary back as a streaming replica of the new one;
- ``up`` after the promotion keeps the new primary; ``down`` leaves no process and no open port.

Tests depend on their order (one cluster's life); ~3–4 minutes."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image

from sensing.mqtt.testing import wait_for
from spatial_api import store
from spatial_api.config import Settings
from spatial_api.ingest import ingest_vector
from spatial_api.security import keys
from tests.fixtures import files
from tests.integration.test_supervision_demo import NEEDED  # the layers the rules read
from topology import testing
from topology.control import load_controller

SCHEMA = os.environ.get("GEOTWIN_DB_SCHEMA", "geotwin_test")
LON, LAT = 114.2603, 22.7303  # inside the fixture's parcels' area, off its parcels' corners
WORKER = "test-worker-1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    config = testing.config_text(SCHEMA, replicas=2, apis=2, workers=(WORKER,), synchronous=True, s3_bucket="twin",
                                 nginx={"tiles_by_uri": True})
    with testing.running(config, tmp_path_factory.mktemp("cluster")) as ctl:
        print(f"\ncluster up from nothing: {ctl.up_seconds:.1f} s")
        yield ctl


def _settings(ctl) -> Settings:
    return Settings(database_url=ctl.primary.url(), db_schema=SCHEMA, home=ctl.topo.state_dir / "home")


@pytest.fixture(scope="module")
def data(cluster, tmp_path_factory):
    """An editable layer in the cluster's primary and a GIS-staff key."""
    layer = "cluster_parcels"
    ingest_vector(files.gpkg(tmp_path_factory.mktemp("gpkg")), layer=layer, key="code", valid_from="2020-01-01",
                  settings=_settings(cluster))
    with psycopg.connect(cluster.primary.url(), options=f"-c search_path={SCHEMA},public") as conn:
        store.update_layer(conn, layer, editable=True)
        key = keys.create(conn, "cluster-staff", "gis-staff", created_by="pytest")
        conn.commit()
    return {"layer": layer, "headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def s3_env(cluster, monkeypatch):
    """This process talks to the cluster's object store (as `eval "$(geotwin cluster env)"` would)."""
    for name, value in cluster.s3_env().items():
        monkeypatch.setenv(name, value)


def _nginx(cluster) -> str:
    return cluster.topo.public_url()


def _api(cluster, i: int) -> str:
    return f"http://{cluster.topo.apis[i].address}"


def _tile_xy(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def feature(code: str, lon: float = LON, lat: float = LAT, d: float = 0.0002) -> dict:
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"code": code, "dlbm": "0701", "floors": 2}}


# -- up, status, reads and writes ------------------------------------------------------------------


def test_up_status_and_healthz_through_nginx(cluster):
    assert cluster.up_seconds < 120
    assert "object store (SeaweedFS S3) started" in cluster.up_output
    assert "synchronous replication on" in cluster.up_output
    r = httpx.get(f"{_nginx(cluster)}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["read_replica"]["ok"] and checks["read_replica"]["reads"] == "replica"
    rows = {row.name: row for row in cluster.status()}
    assert all(row.healthy for row in rows.values()), rows
    assert set(rows) == {"primary", "replica1", "replica2", "seaweedfs", "mosquitto", WORKER, "api1", "api2", "nginx"}
    assert "streaming" in rows["replica1"].detail and "bucket twin" in rows["seaweedfs"].detail
    # every API replica and worker got the object store's settings; `cluster env` prints the same
    env = cluster.s3_env()
    for name in ("api1", "api2", WORKER):
        got = testing.environ(cluster._pid(name, b"serve" if name.startswith("api") else b"mqtt"))
        assert {k: got.get(k) for k in env} == env
    printed = testing.geotwin("cluster", "env", "--config", str(cluster.config))
    assert printed.returncode == 0, printed.stderr
    assert f"export GEOTWIN_S3_ENDPOINT=http://127.0.0.1:{cluster.topo.s3_server.port}" in printed.stdout
    assert f":{cluster.topo.primary.port}/" in printed.stdout and "READ_DATABASE" not in printed.stdout


def test_reads_on_the_replica_and_read_your_writes(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    with httpx.Client(base_url=base, headers=data["headers"], timeout=10) as client:
        r = client.get(f"/collections/{layer}/items", params={"limit": 5})
        assert r.status_code == 200 and r.headers["geotwin-read-database"] == "replica"
        # the replica databases really serve it: the API's read connections are there, not on the primary
        def readers(url: str) -> int:
            with psycopg.connect(url, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE application_name = 'geotwin-api-read'").fetchone()[0]
        assert sum(readers(rep.url()) for rep in cluster.replicas) >= 1 and readers(cluster.primary.url()) == 0

        for i in range(20):  # each write is read back at once, through nginx, on either API replica
            code = f"RYW-{i}"
            w = client.post(f"/collections/{layer}/items", json=feature(code, LON + 0.001 * i))
            assert w.status_code == 201, w.text
            lsn = w.headers["geotwin-write-lsn"]
            assert "/" in lsn and client.cookies.get("geotwin_write_lsn") == lsn
            got = client.get(f"/collections/{layer}/items/{code}")
            assert got.status_code == 200 and got.json()["properties"]["code"] == code

    # SensorThings reads too: a Thing created through nginx is read back at once, by the writer
    with httpx.Client(base_url=base, headers=data["headers"], timeout=10) as client:
        t = client.post("/sta/v1.1/Things", json={"name": "cluster thing", "description": "read-your-writes"})
        assert t.status_code == 201, t.text
        got = client.get(t.headers["location"])  # a self link through nginx
        assert got.status_code == 200 and got.json()["name"] == "cluster thing"
    plain = httpx.get(f"{base}/sta/v1.1/Things", params={"$top": 1}, headers=data["headers"], timeout=10)
    assert plain.status_code == 200 and plain.headers["geotwin-read-database"] == "replica"

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
        before[i] = first.content
    # the write goes to API replica 1 only; replica 2 hears of it through LISTEN on the primary
    w = httpx.post(_api(cluster, 0) + f"/collections/{layer}/items", json=feature("TILE-1", lon, lat),
                   headers=data["headers"], timeout=20)
    assert w.status_code == 201, w.text
    for i in (1, 0):
        now = wait_for(lambda i=i: (r := httpx.get(_api(cluster, i) + path, timeout=20)).content != before[i] and r,
                       10, f"API replica {i + 1} still serves the old tile", interval=0.1)
        assert now.status_code == 200 and len(now.content) > len(before[i])


def test_nginx_sends_a_tile_to_one_replica_and_spreads_the_rest(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    by_path: dict[str, set] = {}
    with httpx.Client(base_url=base, timeout=20) as client:
        for z, (x, y) in ((z, _tile_xy(LON, LAT, z)) for z in (12, 13, 14, 15, 16)):
            for _ in range(4):
                r = client.get(f"/tiles/{layer}/{z}/{x}/{y}.mvt")
                assert r.status_code in (200, 204)
                by_path.setdefault(r.url.path, set()).add(r.headers["geotwin-upstream"])
        items = {client.get(f"/collections/{layer}/items", params={"limit": 1}).headers["geotwin-upstream"]
                 for _ in range(6)}
    assert all(len(ups) == 1 for ups in by_path.values()), by_path  # one replica per tile URI
    assert len(items) == 2  # everything else round-robin
    assert {a.address for a in cluster.topo.apis} >= {u for ups in by_path.values() for u in ups}


# -- the demo district in the cluster: imagery in the bucket, supervision on dask -------------------


@pytest.fixture(scope="module")
def demo(cluster, database):
    """The small demo district (files shared with the session's other tests) loaded into the cluster's
    primary; its imagery epochs registered in collection 'ortho' with the COGs in the bucket."""
    from data.demo import build_files
    from spatial_api.ingest.imagery import ingest_imagery

    out = database.home / "demo" / "small"
    build_files(out, size="small", seed=2024, reuse=True)
    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    s = _settings(cluster)
    for e in doc["layers"]:
        if e["layer"] in NEEDED:
            ingest_vector(out / e["path"], layer=e["layer"], key=e["key"], valid_from=e["valid_from"],
                          mode=e["mode"], settings=s, author="demo-builder")
    with pytest.MonkeyPatch.context() as mp:  # this process writes to the cluster's bucket
        for name, value in cluster.s3_env().items():
            mp.setenv(name, value)
        items = [ingest_imagery(out / img["path"], collection="ortho", datetime_=img["acquired_on"], kind="ortho",
                                item_id=img["epoch_id"], author="demo-builder", store="s3", settings=s)
                 for img in doc["imagery"]]
    return {**doc, "items": items}


def test_imagery_tiles_from_the_bucket_on_both_api_replicas(cluster, demo, s3_env):
    from spatial_api import objectstore

    latest = demo["items"][-1]
    assert all(str(i.cog_path).startswith("s3://twin/imagery/") for i in demo["items"])
    assert objectstore.head(str(latest.cog_path))["size"] == latest.file_size
    with psycopg.connect(cluster.replicas[1].url(), options=f"-c search_path={SCHEMA},public") as conn:
        paths = [p for (p,) in conn.execute("SELECT cog_path FROM imagery_items WHERE collection = 'ortho'")]
        bounds = conn.execute("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
                              "(SELECT ST_Extent(footprint) AS e FROM imagery_items WHERE collection = 'ortho') t"
                              ).fetchone()
    assert len(paths) == len(demo["items"]) and all(p.startswith("s3://") for p in paths)  # replicated too
    lon, lat = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    for z in (14, 16):
        x, y = _tile_xy(lon, lat, z)
        bodies = {}
        for name, base in (("api1", _api(cluster, 0)), ("api2", _api(cluster, 1)), ("nginx", _nginx(cluster))):
            r = httpx.get(f"{base}/imagery/collections/ortho/tiles/WebMercatorQuad/{z}/{x}/{y}.png", timeout=60)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (name, r.text[:300])
            bodies[name] = r.content
        assert len(set(bodies.values())) == 1, f"z{z}: the API replicas serve different bytes"
        pixels = np.asarray(Image.open(io.BytesIO(bodies["api1"])).convert("RGB"), dtype=float)
        assert pixels.std() > 10, f"z{z}: a flat tile — no imagery read"  # imagery, not an empty tile
    # the bucket's objects were read by range, not copied next to the API replicas
    assert not list((cluster.topo.state_dir / "home").glob("imagery/**/*.tif"))


def test_supervision_on_dask_gives_the_sql_engines_findings(cluster, demo, s3_env):
    from land_supervision import dask_engine, engine
    from tests.integration.test_supervision_dask import _same_findings

    s = _settings(cluster)
    as_of = demo["reference_date"]
    sql_run = engine.run(s, as_of=as_of, author="pytest", imagery=True)
    run = dask_engine.run(s, as_of=as_of, author="pytest", imagery=True, partition="grid:400", workers=2)
    assert run.counts["engine"]["name"] == "dask" and run.counts["engine"]["workers"] == 2
    assert run.counts["engine"]["parts"] >= 4
    with psycopg.connect(cluster.primary.url(), options=f"-c search_path={SCHEMA},public") as conn:
        found = _same_findings(conn, sql_run.run_id, run.run_id)
    assert len({rule for rule, _ in found}) >= 10 and run.counts["by_rule"] == sql_run.counts["by_rule"]
    # R9's green ratio was measured on the bucket's COGs, by the dask workers as by the SQL engine
    green = [f for (rule, _), f in found.items() if rule == "R9" and (f[3].get("green_ratio") or 0) > 0.2]
    assert len(green) == 1
    gi = green[0][3]["green_imagery"]
    assert gi["source"] == "catalogue:ortho" and gi["pixels"] > 1000


# -- failures -----------------------------------------------------------------------------------------


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
    up = testing.geotwin("cluster", "up", "--config", str(cluster.config))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "api2 serving" in up.stdout and "api1" not in up.stdout and "primary created" not in up.stdout
    assert "object store (SeaweedFS S3) running" in up.stdout


def test_replica_database_stopped_reads_fall_back_to_the_primary(cluster, data):
    base, layer = _nginx(cluster), data["layer"]
    api1 = _api(cluster, 0)  # reads on replica1
    assert cluster.replicas[0].stop()
    try:
        for _ in range(10):
            r = httpx.get(f"{api1}/collections/{layer}/items", params={"limit": 3}, timeout=20)
            assert r.status_code == 200 and r.headers["geotwin-read-database"] == "primary"
        h = httpx.get(f"{api1}/healthz", timeout=20)
        assert h.status_code == 200 and h.json()["status"] == "degraded"
        assert not h.json()["checks"]["read_replica"]["ok"]
        # writes go on: synchronous ANY 1 of two replicas is met by the other one
        w = httpx.post(f"{base}/collections/{layer}/items", json=feature("ONE-REPLICA", LON, LAT + 0.02),
                       headers=data["headers"], timeout=20)
        assert w.status_code == 201, w.text
    finally:
        cluster.replicas[0].start()
    wait_for(lambda: httpx.get(f"{api1}/collections/{layer}/items", timeout=20).headers["geotwin-read-database"]
             == "replica", 30, "reads did not return to the replica", interval=0.5)


def test_synchronous_replication_and_its_cost(cluster):
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        assert names == 'ANY 1 ("replica1", "replica2")'
        wait_for(lambda: dict(conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall())
                 == {"replica1": "quorum", "replica2": "quorum"}, 30, "both replicas streaming as quorum standbys",
                 interval=0.2)
        times = testing.commit_times(cluster.primary.url())  # alternating blocks of 20 single-row commits
        conn.execute("CREATE TABLE IF NOT EXISTS public.commit_cost_probe (i int)")
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


# -- the primary lost -----------------------------------------------------------------------------------


def test_promote_refused_while_the_primary_answers(cluster):
    r = testing.geotwin("cluster", "promote", "--config", str(cluster.config))
    assert r.returncode == 1 and "still answers" in r.stderr and "two primaries" in r.stderr, r.stdout + r.stderr
    r = testing.geotwin("cluster", "promote", "--config", str(cluster.config), "--replica", "nope")
    assert r.returncode in (1, 2) and ("still answers" in r.stderr or "no replica named" in r.stderr)
    assert not cluster.failover_file.exists()


def test_primary_lost_promote_loses_no_acknowledged_changeset(cluster, data):
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
    wait_for(lambda: len(acked) >= 60 or not all(t.is_alive() for t in threads), 60, "60 acknowledged writes",
             interval=0.05)
    assert all(t.is_alive() for t in threads)
    postmaster = int((cluster.primary.data_dir / "postmaster.pid").read_text().split()[0])
    killed = testing.kill_tree(postmaster)
    n_failed = len(failures)
    wait_for(lambda: len(failures) > n_failed + 3, 30, "writes failing on the dead primary", interval=0.05)
    stop.set()
    for t in threads:
        t.join(30)
    print(f"\nprimary killed ({len(killed)} processes) after {len(acked)} acknowledged writes by 4 writers; "
          f"{len(failures)} writes failed meanwhile")

    before = {a.name: cluster._pid(a.name, b"serve") for a in cluster.topo.apis}
    worker_before = cluster._pid(WORKER, b"mqtt")
    t0 = time.monotonic()
    r = testing.geotwin("cluster", "promote", "--config", str(cluster.config))
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
        env = testing.environ(pid)
        assert f":{ctl.topo.primary.port}/" in env["DATABASE_URL"]
        assert f":{other.endpoint.port}/" in env["GEOTWIN_READ_DATABASE_URL"]
        assert env["GEOTWIN_S3_ENDPOINT"] == f"http://{ctl.topo.s3_server.address}"
    worker = ctl._pid(WORKER, b"mqtt")
    assert worker and worker != worker_before and f":{ctl.topo.primary.port}/" in testing.environ(worker)["DATABASE_URL"]
    with httpx.Client(base_url=base, headers=data["headers"], timeout=20) as client:
        h = client.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok", h.text
        some = next(iter(acked))
        assert client.get(f"/collections/{layer}/items/{some}").status_code == 200
        w = client.post(f"/collections/{layer}/items", json=feature("AFTER-PROMOTE", LON, LAT + 0.03))
        assert w.status_code == 201, w.text
        got = client.get(f"/collections/{layer}/items/AFTER-PROMOTE")
        assert got.status_code == 200 and got.json()["properties"]["code"] == "AFTER-PROMOTE"

    def on_follower() -> bool:  # and the write reaches the follower
        with psycopg.connect(other.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
            return bool(conn.execute(f"SELECT count(*) FROM {store.partition_name(layer)} "
                                     "WHERE fid = 'AFTER-PROMOTE'").fetchone()[0])
    wait_for(on_follower, 20, "the write after the promotion reaching the other replica", interval=0.2)

    rows = {row["name"]: row for row in json.loads(testing.geotwin("cluster", "status", "--config",
                                                                   str(cluster.config), "--json").stdout)}
    assert rows[new]["role"] == "postgres primary" and rows[new]["healthy"]
    assert rows["primary"]["role"] == "postgres retired" and rows["primary"]["healthy"]
    assert "retired" in rows["primary"]["detail"] and rows["seaweedfs"]["healthy"]


def test_the_lost_primary_rejoins_as_a_replica(cluster, data):
    before = load_controller(cluster.config, echo=lambda *_: None)
    assert [r.endpoint.name for r in before.retired] == ["primary"]
    assert not before.retired[0].is_running()  # a lost primary is never started again by `up`
    r = testing.geotwin("cluster", "rejoin", "--config", str(cluster.config))
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout.strip())
    ctl = load_controller(cluster.config, echo=lambda *_: None)
    assert ctl.retired == [] and "primary" in [x.endpoint.name for x in ctl.replicas]
    back = next(x for x in ctl.replicas if x.endpoint.name == "primary")
    assert back.endpoint.port == cluster.topo.primary.port  # on its old port, with its old folder
    with psycopg.connect(back.url(), autocommit=True, options=f"-c search_path={SCHEMA},public") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        # it holds what was written on the new primary after the promotion
        assert conn.execute(f"SELECT count(*) FROM {store.partition_name(data['layer'])} "
                            "WHERE fid = 'AFTER-PROMOTE'").fetchone()[0] == 1
    with psycopg.connect(ctl.primary.url(), autocommit=True) as conn:
        names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        assert names.startswith("ANY 1 (") and '"primary"' in names
        wait_for(lambda: {n: st for n, st in conn.execute("SELECT application_name, state FROM pg_stat_replication")}
                 .get("primary") == "streaming", 30, "the rejoined primary streaming", interval=0.2)
    rows = {row.name: row for row in ctl.status()}
    assert rows["primary"].role == "postgres replica" and rows["primary"].healthy, rows["primary"]
    again = testing.geotwin("cluster", "rejoin", "--config", str(cluster.config))
    assert again.returncode == 2 and "no retired primary" in again.stderr


def test_up_after_promote_keeps_the_new_primary_and_down_stops_all(cluster):
    ctl = load_controller(cluster.config, echo=lambda *_: None)
    up = testing.geotwin("cluster", "up", "--config", str(cluster.config))
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"postgres primary running on 127.0.0.1:{ctl.topo.primary.port}" in up.stdout
    assert "postgres replica primary streaming" in up.stdout  # the rejoined one, as a replica
    assert testing.processes(ctl)
    down = testing.geotwin("cluster", "down", "--config", str(cluster.config))
    assert down.returncode == 0, down.stderr
    assert testing.processes(ctl) == []
    s3 = cluster.topo.s3_server
    for e in [cluster.topo.primary, *cluster.topo.replicas, *cluster.topo.apis, cluster.topo.nginx,
              cluster.topo.broker, s3]:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", e.port)) != 0, f"{e.name} still listens on {e.port}"
    assert Path(ctl.s3.data_dir).exists()  # down keeps the data; --purge (the fixture's teardown) deletes it
