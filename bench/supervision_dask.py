"""SQL engine vs dask engine (issue 18), dry runs — nothing stored, so it may run on the demo schema:

    GEOTWIN_DB_SCHEMA=geotwin .venv/bin/python bench/supervision_dask.py 2026-06-30 street grid:2000 grid:1000

prints JSON: the SQL engine's seconds (two runs), the LocalCluster's start, and per partition the
wall seconds, parts, per-part seconds and whether the findings equal the SQL engine's."""
import json, os, sys, time
from land_supervision import engine, dask_engine
from spatial_api.config import get_settings

if __name__ == "__main__":
    s = get_settings()
    as_of, parts = sys.argv[1], sys.argv[2:]
    a, rl, params, lm = engine.prepare(as_of, None, None, None)
    out = {"schema": s.db_schema, "load_before": os.getloadavg()}
    sql_t = []
    for _ in range(2):
        t = time.perf_counter()
        ref = engine.evaluate_findings(s, as_of=a, rule_list=rl, params=params, layer_map=lm)
        sql_t.append(round(time.perf_counter() - t, 2))
    out["sql"] = {"seconds": sql_t, "findings": len(ref["rows"]), "snapshot_s": ref["seconds_snapshot"],
                  "rules_s": round(sum(ref["seconds_by_rule"].values()), 2), "inputs": ref["inputs"]}
    from distributed import Client, LocalCluster
    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as c:
        out["cluster_start_s"] = round(time.perf_counter() - t, 2)
        for p in parts:
            t = time.perf_counter()
            d = dask_engine.run(s, as_of=as_of, partition=p, client=c, dry_run=True)
            wall = round(time.perf_counter() - t, 2)
            byp = d["engine"]["seconds_by_part"]
            out[p] = {"seconds": wall, "parts": d["engine"]["parts"], "same": sorted(d["rows"]) == sorted(ref["rows"]),
                      "partitioning_s": d["engine"]["seconds_partitioning"], "tasks_s": d["engine"]["seconds_tasks"],
                      "sum_part_s": round(sum(byp.values()), 2), "min_part_s": min(byp.values()), "max_part_s": max(byp.values())}
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))
