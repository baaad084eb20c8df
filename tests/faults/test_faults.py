"""Faults survived with nothing lost, on a PostgreSQL cluster of the suite's own (so that stopping it
disturbs nothing else): the server across a database restart, an ingest killed with SIGKILL
halfway, two ingests racing on one layer, and a backup / restore round trip of the whole store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.config import Settings
from spatial_api.db.cluster import LocalCluster
from tests.fixtures.server import free_port, live_server

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("DATABASE_URL"):
        pytest.fail("the fault suite runs its own PostgreSQL cluster; unset DATABASE_URL for it "
                    "(it needs the local PostgreSQL + PostGIS binaries)")
    home = tmp_path_factory.mktemp("faults-home")
    settings = Settings(home=home, db_port=free_port(), db_schema="geotwin_fault")
    c = LocalCluster(settings)
    c.up()
    db.migrate(settings)
    yield settings, c
    c.stop()
    shutil.rmtree(c.server_root, ignore_errors=True)


def env_for(settings: Settings) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GEOTWIN_")},
            "GEOTWIN_HOME": str(settings.home), "GEOTWIN_DB_SCHEMA": settings.db_schema}


def parcels(path: Path, n: int, version: int) -> Path:
    """n small parcels keyed by code; ``version`` changes every attribute (so a replace rewrites all)."""
    i = np.arange(n)
    x0, y0 = 114.20 + (i % 400) * 0.0002, 22.60 + (i // 400) * 0.0002
    geoms = shapely.box(x0, y0, x0 + 0.00015, y0 + 0.00015)
    frame = pd.DataFrame({"code": [f"P{k:06d}" for k in i], "owner": [f"单位{version}-{k % 97}" for k in i],
                          "version": np.full(n, version, dtype="int64")})
    pyogrio.write_dataframe(__import__("geopandas").GeoDataFrame(frame, geometry=geoms, crs="EPSG:4490"), path)
    return path


def ingest_cmd(settings, path, layer, valid_from):
    return [sys.executable, "-m", "spatial_api", "ingest", "vector", str(path), "--layer", layer, "--key", "code",
            "--valid-from", valid_from]


def state(settings, layer) -> tuple[int, str, int]:
    """(current features, digest of their (fid, content hash), changesets) of a layer."""
    with db.connect(settings) as conn:
        n, digest = conn.execute(
            f"SELECT count(*), md5(string_agg(fid || content_hash::text, ',' ORDER BY fid)) "
            f"FROM {store.partition_name(layer)} WHERE valid_to IS NULL").fetchone()
        cs = conn.execute("SELECT count(*) FROM changesets WHERE layer = %s", (layer,)).fetchone()[0]
    return n, digest, cs


def kill_during_copy(settings, cmd, env) -> bool:
    """Start ``cmd``; SIGKILL it while one of its sessions runs a COPY. True if it was caught mid-write."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caught = False
    with db.connect(settings, autocommit=True) as watch:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            busy = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query ILIKE 'COPY%%' AND pid <> pg_backend_pid()").fetchone()[0]
            if busy:
                proc.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.005)
    proc.wait(30)
    return caught


def test_an_ingest_killed_halfway_leaves_the_layer_as_it_was(cluster, tmp_path):
    settings, _ = cluster
    env = env_for(settings)
    layer = "killed"
    # A first load killed halfway: no layer, and the next load works.
    v1 = parcels(tmp_path / "v1.gpkg", 60_000, 1)
    assert kill_during_copy(settings, ingest_cmd(settings, v1, layer, "2024-01-01"), env)
    with db.connect(settings) as conn:
        assert store.get_layer(conn, layer) is None
    out = subprocess.run(ingest_cmd(settings, v1, layer, "2024-01-01"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before = state(settings, layer)
    assert before[0] == 60_000
    # A replace killed halfway: every feature exactly as before, no changeset recorded.
    v2 = parcels(tmp_path / "v2.gpkg", 60_000, 2)
    assert kill_during_copy(settings, ingest_cmd(settings, v2, layer, "2025-01-01"), env)
    assert state(settings, layer) == before
    out = subprocess.run(ingest_cmd(settings, v2, layer, "2025-01-01"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    after = state(settings, layer)
    assert after[0] == 60_000 and after[1] != before[1] and after[2] == before[2] + 1


def test_two_ingests_of_one_layer_are_serialised_never_interleaved(cluster, tmp_path):
    settings, _ = cluster
    env = env_for(settings)
    layer = "raced"
    out = subprocess.run(ingest_cmd(settings, parcels(tmp_path / "r1.gpkg", 20_000, 1), layer, "2024-01-01"),
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    base = state(settings, layer)
    a, b = parcels(tmp_path / "a.gpkg", 20_000, 2), parcels(tmp_path / "b.gpkg", 20_000, 3)
    procs = [subprocess.Popen(ingest_cmd(settings, f, layer, "2025-01-01"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for f in (a, b)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    assert ok, results
    for code, _, err in results:
        assert code == 0 or "error" in err.lower(), err  # refused with a message, never a traceback
    n, _, cs = state(settings, layer)
    assert n == 20_000 and cs == base[2] + len(ok)
    with db.connect(settings) as conn:
        versions = conn.execute(f"SELECT DISTINCT (properties->>'version')::int FROM {store.partition_name(layer)} "
                                "WHERE valid_to IS NULL").fetchall()
        # each committed changeset is whole: it closed exactly the versions the one before left
        closed = conn.execute("SELECT id, (counts->>'changed')::int FROM changesets WHERE layer = %s ORDER BY id",
                              (layer,)).fetchall()
    assert len(versions) == 1, versions  # one file's state entirely, not a mix of both
    assert all(changed in (None, 20_000) for _, changed in closed[1:]), closed


def test_the_server_rides_out_a_database_restart(cluster, tmp_path):
    settings, c = cluster
    env = env_for(settings)
    out = subprocess.run(ingest_cmd(settings, parcels(tmp_path / "s.gpkg", 500, 1), "served", "2024-01-01"),
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with live_server(create_app(settings)) as base:
        url = f"{base}/collections/served/items?limit=5"
        assert httpx.get(url, timeout=30).status_code == 200
        c.stop()
        try:
            started = time.monotonic()
            r = httpx.get(url, timeout=30)
            took = time.monotonic() - started
            assert r.status_code == 503 and r.headers.get("retry-after"), r.text
            assert took < 12, f"a request during the outage took {took:.1f} s"
            assert "database" in r.json()["description"]
        finally:
            c.start()
        deadline = time.monotonic() + 30
        codes = []
        while time.monotonic() < deadline:
            codes.append(httpx.get(url, timeout=30).status_code)
            if codes[-1] == 200:
                break
            time.sleep(0.2)
        assert codes[-1] == 200, codes
        # and it keeps serving: several requests in a row, in parallel
        results = []
        threads = [threading.Thread(target=lambda: results.append(httpx.get(url, timeout=30).status_code))
                   for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert results == [200] * 8


def test_backup_and_restore_round_trip_the_whole_store(cluster, tmp_path):
    settings, _ = cluster
    env = env_for(settings)
    layer = "kept"
    for k, vf in ((1, "2023-01-01"), (2, "2024-01-01")):
        out = subprocess.run(ingest_cmd(settings, parcels(tmp_path / f"k{k}.gpkg", 3_000, k), layer, vf),
                             env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    key = subprocess.run([sys.executable, "-m", "spatial_api", "keys", "create", "backup-test", "--role", "planner"],
                         env=env, capture_output=True, text=True)
    assert key.returncode == 0, key.stderr

    def snapshot():
        with db.connect(settings) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname <> 'alembic_version' ORDER BY 1",
                (settings.db_schema,))]
            return {t: conn.execute(f'SELECT count(*), md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '
                                    f'FROM "{t}" x').fetchone() for t in tables}

    before = snapshot()
    assert before["features_kept"][0] == 6_000 and before["api_keys"][0] >= 1
    archive = tmp_path / "store.dump"
    out = subprocess.run([sys.executable, "-m", "spatial_api", "db", "backup", str(archive)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # Things happen after the backup …
    out = subprocess.run(ingest_cmd(settings, parcels(tmp_path / "k3.gpkg", 1_000, 3), layer, "2025-01-01"),
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    moved_on = snapshot()
    assert moved_on != before
    # … a bad archive changes nothing …
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"PGDMP not really")
    bad = subprocess.run([sys.executable, "-m", "spatial_api", "db", "restore", str(junk), "--yes"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not a geotwin backup" in bad.stderr
    assert snapshot() == moved_on
    # … and the restore brings back exactly the backed-up store, history and all.
    out = subprocess.run([sys.executable, "-m", "spatial_api", "db", "restore", str(archive), "--yes"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert snapshot() == before
