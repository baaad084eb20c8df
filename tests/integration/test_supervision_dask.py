"""The dask engine (``geotwin supervise run --engine dask``) against the SQL engine on the small
demo district (the fixture of test_supervision_demo, reused): the same findings — rule, subject and
every stored value, measures compared value by value, geometries byte for byte — with street parts
and with grid cells that cut parcels, protected polygons and approval batches; a stored dask run
is compared with the previous run like any run; a part that fails fails the run and stores
nothing. A real LocalCluster of two worker processes (processes=True), a real PostGIS."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from land_supervision import dask_engine, engine
from land_supervision.catalogue import RuleError
from tests.integration.test_supervision_demo import demo  # noqa: F401  (the demo district fixture)

GRID = 400  # metres: cells of the small demo cut parcels, protected polygons and approval batches


@pytest.fixture(scope="module")
def dask_client():
    """Two single-threaded worker processes. allowed-failures 0: a killed worker fails its task at
    once (production keeps dask's default of 3 retries)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def sql_run(demo, database):  # noqa: F811
    return engine.run(database, as_of=demo["reference_date"], author="pytest", imagery=True)


def _stored(conn, run_id: int) -> dict:
    rows = conn.execute(
        "SELECT rule, subject_id, parcel_id, severity, message, measures, sources, area_m2, street_code, street_name, "
        "land_use_code, ST_AsEWKB(geom), ST_AsEWKB(geom_3857) FROM sup_findings WHERE run_id = %s", (run_id,)).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def _same_findings(conn, a: int, b: int) -> dict:
    fa, fb = _stored(conn, a), _stored(conn, b)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        ma, mb = fa[key][3], fb[key][3]
        assert sorted(ma) == sorted(mb), key
        for name in ma:  # measure by measure (imagery evidence, areas in m² / ha / 亩, ids …)
            assert ma[name] == mb[name], (key, name)
        assert fa[key] == fb[key], key
    return fa


def test_street_parts_give_the_sql_engines_findings(demo, database, conn, sql_run, dask_client):  # noqa: F811
    run = dask_engine.run(database, as_of=demo["reference_date"], author="pytest", imagery=True,
                          partition="street", client=dask_client)
    info = run.counts["engine"]
    assert info["name"] == "dask" and info["workers"] == 2 and info["parts"] >= 3
    found = _same_findings(conn, sql_run.run_id, run.run_id)
    assert len({rule for rule, _ in found}) >= 10  # the demo's findings span the rule library
    assert run.counts["by_rule"] == sql_run.counts["by_rule"]
    assert run.counts["inputs"] == sql_run.counts["inputs"]
    # stored like any run: compared with the SQL engine's run of the same date and layers
    assert run.previous_run_id == sql_run.run_id
    assert (run.counts["new"], run.counts["resolved"], run.counts["persisting"]) == (0, 0, run.counts["total"])
    stored = conn.execute("SELECT layers, counts -> 'engine' ->> 'partition' FROM sup_runs WHERE id = %s",
                          (run.run_id,)).fetchone()
    ref = conn.execute("SELECT layers FROM sup_runs WHERE id = %s", (sql_run.run_id,)).fetchone()[0]
    assert stored == (ref, "street")


def test_grid_cells_cutting_parcels_and_protected_land(demo, database, conn, sql_run, dask_client):  # noqa: F811
    # the cells really cut the data: parcels, R12's protected polygons and R13's batches span cells
    def spans(layer: str, fids: list[str] | None = None) -> int:
        return conn.execute(
            "SELECT count(*) FROM features f, LATERAL (SELECT ST_Transform(f.geom, 4547) AS g) t "
            "WHERE f.layer = %s AND f.valid_to IS NULL AND (%s::text[] IS NULL OR f.fid = ANY(%s)) "
            "AND (floor(ST_XMin(t.g) / %s) <> floor(ST_XMax(t.g) / %s) OR floor(ST_YMin(t.g) / %s) <> floor(ST_YMax(t.g) / %s))",
            (layer, fids, fids, GRID, GRID, GRID, GRID)).fetchone()[0]

    assert spans("parcels") >= 5
    protected = sorted({s["fid"] for f in _stored(conn, sql_run.run_id).values() if f[4].get("protected")
                        for ss in f[4]["protected"].values() for s in ss})
    assert protected and spans("basic_farmland") + spans("eco_redline") + spans("land_use", protected) >= 1
    eng = engine.Engine(conn, as_of=sql_run.as_of, rules=engine.catalogue.rule_ids(None),
                        params=engine.catalogue.parameters(None, engine.catalogue.rule_ids(None) + ["V1"]),
                        layers={**engine.catalogue.DEFAULT_LAYERS, "imagery": "imagery"}, known_at=None,
                        tz=database.timezone)
    eng.check_inputs()
    parts = dask_engine.partitions(conn, eng, "grid", GRID)
    conn.rollback()
    assert len(parts) >= 6 and sum(len(p.scope.context) for p in parts) >= 1  # R13 context across cell edges
    every = [pid for p in parts for pid in p.scope.parcels]
    assert len(every) == len(set(every))  # a parcel in exactly one cell

    run = dask_engine.run(database, as_of=demo["reference_date"], author="pytest", imagery=True,
                          partition=f"grid:{GRID}", client=dask_client)
    assert run.counts["engine"]["parts"] == len(parts)
    _same_findings(conn, sql_run.run_id, run.run_id)
    assert run.counts["inputs"] == sql_run.counts["inputs"]


def test_a_failing_part_fails_the_run_and_stores_nothing(demo, database, conn, sql_run, dask_client):  # noqa: F811
    def stored() -> tuple:
        return conn.execute("SELECT (SELECT count(*) FROM sup_runs), (SELECT count(*) FROM sup_findings), "
                            "(SELECT count(*) FROM sup_resolved)").fetchone()

    before = stored()
    conn.rollback()
    pids = dask_client.run(os.getpid)  # worker address → process id
    outcome: dict = {}

    def go():
        try:
            outcome["run"] = dask_engine.run(database, as_of=demo["reference_date"], author="pytest", imagery=True,
                                             partition=f"grid:{GRID}", client=dask_client)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        busy = [w for w, tasks in dask_client.processing().items() if any("supervise-" in str(k) for k in tasks)]
        if busy:
            killed = busy[0]
            os.kill(pids[killed], signal.SIGKILL)  # the worker dies in the middle of a part
        else:
            time.sleep(0.02)
    t.join(120)
    assert killed and not t.is_alive()
    err = outcome.get("error")
    assert isinstance(err, dask_engine.DaskRunError), outcome
    assert "failed" in str(err) and "nothing was stored" in str(err) and "KilledWorker" in str(err)
    assert stored() == before
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker


def test_cli_dry_run_on_a_scheduler_and_bad_options(demo, database, sql_run, dask_client):  # noqa: F811
    from spatial_api.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["supervise", "run", "--as-of", demo["reference_date"], "--engine", "dask",
                              "--scheduler", dask_client.scheduler.address, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["by_rule"] == sql_run.counts["by_rule"] and summary["engine"]["workers"] == 2
    res = runner.invoke(app, ["supervise", "run", "--as-of", demo["reference_date"], "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["by_rule"] == sql_run.counts["by_rule"]  # the SQL engine's dry run
    # a stored run on a local cluster of its own (one worker process), street parts
    res = runner.invoke(app, ["supervise", "run", "--as-of", demo["reference_date"], "--engine", "dask",
                              "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    stored = json.loads(res.stdout)
    assert stored["counts"]["by_rule"] == sql_run.counts["by_rule"] and stored["counts"]["engine"]["workers"] == 1
    res = runner.invoke(app, ["supervise", "run", "--as-of", demo["reference_date"], "--engine", "dask",
                              "--partition", "grid:0", "--dry-run"])
    assert res.exit_code == 1 and "--partition 'grid:0'" in res.output
    res = runner.invoke(app, ["supervise", "run", "--as-of", demo["reference_date"], "--engine", "spark"])
    assert res.exit_code == 1 and "--engine 'spark'" in res.output
    with pytest.raises(RuleError, match="grid:METRES"):
        dask_engine.parse_partition("grid:-5")
