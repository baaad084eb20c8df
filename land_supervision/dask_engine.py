"""The rule engine on a dask.distributed cluster (``geotwin supervise run --engine dask``): the
district's parcels split into parts (by street, or by a square grid in EPSG:4547), each part one
task that evaluates the very rules of the SQL engine (``engine.evaluate_findings``: same snapshots,
same statements, restricted to the part's parcels) on a database connection of its own and returns
its findings; the client stores them as one run, in one transaction, compared with the previous
comparable run like any run — the findings are exactly the SQL engine's.

Partitioning (one query on the client, in the snapshot every task reads):

- a parcel belongs to ONE part: the street holding its point on surface (the lookup the findings'
  street uses; ``""`` when none does), or the grid cell holding the centre of its bounding box
  (``--partition grid:2000``: 2 km cells). Cells and streets cut parcels and protected polygons
  freely: a parcel is never cut, it is evaluated whole by its part;
- an approval batch (R13's subject) belongs to one part the same way; the parcels meeting it across
  the part's edge (bounding boxes within ``CONTEXT_MARGIN_DEG``, a superset) are read by the part as
  context — snapshotted, not evaluated — so that "approved minus supplied" sees every parcel;
- the protected layers (R12) are not partitioned at all: each part reads them from the store
  through their GiST index around its own candidate parcels, so a parcel at a part's edge sees the
  protected land across it (a join per part, not a broadcast of the layers);
- the approvals a part's parcels name are in its approvals snapshot (R12 checks attached ids).

Consistency: the client opens a REPEATABLE READ transaction and exports its snapshot
(``pg_export_snapshot()``); every task imports it (``SET TRANSACTION SNAPSHOT``), so all parts and
the stored run read the store as of one instant, whatever is written meanwhile (as ``pg_dump -j``
does). The tasks must therefore reach the same PostgreSQL server as the client (the primary or the
same standby), and finish while the client's transaction is open.

Failure: a task that raises (a value the rules cannot read, a lost connection) fails the run —
the client cancels the other tasks and stores nothing (its transaction has written nothing yet).
A worker that dies is retried by the scheduler on another worker
(``distributed.scheduler.allowed-failures``, default 3): a part is a pure function of the exported
snapshot, so a retry returns the same findings; past the allowed failures the run fails (KilledWorker).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from land_supervision import engine
from land_supervision.catalogue import RuleError
from spatial_api import db, store
from spatial_api.config import Settings, get_settings

#: bounding boxes of a batch and a parcel this close (degrees, ~1 m) make the parcel R13 context
CONTEXT_MARGIN_DEG = 1e-5
PARTITION_RE = re.compile(r"^(street|grid:(\d+(\.\d+)?))$")


class DaskRunError(RuleError):
    """A part of a dask run failed (the run stored nothing); the message names the part."""


@dataclass(frozen=True)
class Part:
    key: str  # street fid ("" none), or grid cell "col:row"
    scope: engine.Scope

    @property
    def label(self) -> str:
        return self.key or "(no street)"


def parse_partition(text: str) -> tuple[str, float | None]:
    """``street`` or ``grid:METRES`` → (kind, cell size)."""
    m = PARTITION_RE.match((text or "").strip())
    if not m or (m.group(2) and float(m.group(2)) <= 0):
        raise RuleError(f"--partition {text!r}: write street or grid:METRES (a cell size > 0 in metres, "
                        "EPSG:4547), e.g. grid:2000")
    return ("grid", float(m.group(2))) if m.group(2) else ("street", None)


def _key(kind: str, cell: float | None, eng: engine.Engine, geom: str) -> sql.Composable:
    """SQL: the part key of a geometry ``geom`` (EPSG:4490)."""
    if kind == "grid":
        c = sql.SQL("ST_Transform(ST_Centroid(ST_Envelope({g})), 4547)").format(g=sql.SQL(geom))
        return sql.SQL("coalesce(floor(ST_X({c}) / {n})::bigint || ':' || floor(ST_Y({c}) / {n})::bigint, '')").format(
            c=c, n=sql.Literal(cell))
    # the point the findings' street is looked up by (a bounding-box centre for an invalid outline,
    # where ST_PointOnSurface could raise)
    pt = sql.SQL("CASE WHEN ST_IsValid({g}) THEN ST_PointOnSurface({g}) ELSE ST_Centroid(ST_Envelope({g})) END").format(
        g=sql.SQL(geom))
    return sql.SQL("coalesce((SELECT s.fid FROM {part} s WHERE s.layer = {layer} AND {cond} AND ST_Intersects(s.geom, {pt}) "
                   "ORDER BY s.fid LIMIT 1), '')").format(
        part=sql.Identifier(store.partition_name(eng.streets)), layer=sql.Literal(eng.streets),
        cond=eng.temporal("s"), pt=pt)


def partitions(conn: psycopg.Connection, eng: engine.Engine, kind: str, cell: float | None) -> list[Part]:
    """The run's parts (largest first), from one query over the layers as of the run's date."""
    if kind == "street" and not eng.streets:
        raise RuleError(f"--partition street needs the streets layer {eng.layers.get('streets', 'streets')!r}, "
                        "which is not loaded; partition by a grid instead (--partition grid:2000)")
    pp = sql.Identifier(store.partition_name(eng.parcels))
    pl = sql.Literal(eng.parcels)
    parts = [sql.SQL("SELECT 'p', p.key, p.fid FROM p")]
    ctes = [sql.SQL("p AS MATERIALIZED (SELECT f.fid, {key} AS key FROM {pp} f WHERE f.layer = {pl} AND {cond})").format(
        key=_key(kind, cell, eng, "f.geom"), pp=pp, pl=pl, cond=eng.temporal("f"))]
    if "R13" in eng.rules and eng.approvals:
        ctes.append(sql.SQL(
            "a AS MATERIALIZED (SELECT f.fid, f.geom, {key} AS key FROM {ap} f WHERE f.layer = {al} AND {cond})").format(
            key=_key(kind, cell, eng, "f.geom"), ap=sql.Identifier(store.partition_name(eng.approvals)),
            al=sql.Literal(eng.approvals), cond=eng.temporal("f")))
        parts.append(sql.SQL("SELECT 'a', a.key, a.fid FROM a"))
        # parcels meeting a batch across its part's edge: through the parcels' GiST index
        parts.append(sql.SQL(
            "SELECT DISTINCT 'c', a.key, f.fid FROM a JOIN {pp} f ON f.layer = {pl} AND f.geom && ST_Expand(a.geom, {m}) "
            "AND {cond} JOIN p ON p.fid = f.fid WHERE p.key <> a.key").format(
            pp=pp, pl=pl, m=sql.Literal(CONTEXT_MARGIN_DEG), cond=eng.temporal("f")))
    q = sql.SQL("WITH {} {}").format(sql.SQL(", ").join(ctes), sql.SQL(" UNION ALL ").join(parts))
    by_key: dict[str, dict[str, list[str]]] = {}
    for what, key, fid in conn.execute(q).fetchall():
        by_key.setdefault(key, {"p": [], "a": [], "c": []})[what].append(fid)
    out = [Part(k, engine.Scope(parcels=tuple(sorted(v["p"])), approvals=tuple(sorted(v["a"])),
                                context=tuple(sorted(v["c"]))))
           for k, v in by_key.items()]
    return sorted(out, key=lambda p: (-len(p.scope.parcels) - len(p.scope.approvals), p.key))


def _cluster(scheduler: str | None, workers: int):
    """A distributed Client: to ``scheduler`` (tcp://host:port), else to a LocalCluster of
    ``workers`` single-threaded worker processes (closed with the client)."""
    # deferred: distributed takes ~1 s to import and only dask runs need it
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except OSError as exc:
            raise RuleError(f"--scheduler {scheduler!r}: cannot reach the dask scheduler ({exc}); start one "
                            "(dask scheduler) or leave --scheduler out for a local cluster") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client._geotwin_own_cluster = cluster  # closed by run()
    return client


def run(
    settings: Settings | None = None,
    *,
    as_of,
    rules: str | list[str] | None = None,
    parameters: dict | None = None,
    layers: dict[str, str] | None = None,
    known_at: datetime | None = None,
    author: str | None = None,
    imagery: bool | None = None,
    partition: str = "street",
    scheduler: str | None = None,
    workers: int = 2,
    client=None,
    dry_run: bool = False,
):
    """``engine.run`` on a dask cluster: the same arguments, the same stored run (a RunResult),
    plus ``partition`` (street | grid:METRES), ``scheduler`` (an address; default a LocalCluster of
    ``workers`` processes) or an existing distributed ``client``. ``dry_run``: evaluate, store
    nothing, return the summary and the findings rows. Raises RuleError / DaskRunError, nothing stored."""
    settings = settings or get_settings()
    kind, cell = parse_partition(partition)
    as_of, rule_list, params, layer_map = engine.prepare(as_of, rules, parameters, layers)
    t0 = time.perf_counter()
    conn = db.connect(settings)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    own_client = client is None
    try:
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        conn.execute("SET LOCAL jit = off")
        eng = engine.Engine(conn, as_of=as_of, rules=rule_list, params=params, layers=layer_map, known_at=known_at,
                            tz=settings.timezone, use_imagery=imagery is not False)
        eng.check_inputs()  # a missing layer or field fails here, before any task
        t = time.perf_counter()
        parts = partitions(conn, eng, kind, cell)
        part_s = round(time.perf_counter() - t, 3)
        if own_client:
            client = _cluster(scheduler, workers)
        t = time.perf_counter()
        results = _evaluate_parts(client, parts, settings, snapshot=snapshot, as_of=as_of, rule_list=rule_list,
                                  params=params, layer_map=layer_map, known_at=known_at, imagery=imagery)
        tasks_s = round(time.perf_counter() - t, 3)
        rows = [r for res in results for r in res["rows"]]
        by_rule: dict[str, int] = {}
        secs: dict[str, float] = {}
        inputs: dict[str, int] = {}
        for res in results:
            for k, v in res["by_rule"].items():
                by_rule[k] = by_rule.get(k, 0) + v
            for k, v in res["seconds_by_rule"].items():
                secs[k] = round(secs.get(k, 0) + v, 3)
            for k, v in res["inputs"].items():  # streets: every part reads them all
                inputs[k] = max(inputs.get(k, 0), v) if k == "streets" else inputs.get(k, 0) + v
            eng.notes.extend(n for n in res["notes"] if n not in eng.notes)
            eng.used.update(res["used"])
        info = {"engine": {"name": "dask", "partition": partition, "parts": len(parts),
                           "workers": len(client.scheduler_info()["workers"]),
                           "seconds_partitioning": part_s, "seconds_tasks": tasks_s,
                           "seconds_by_part": {p.label: r["seconds"] for p, r in zip(parts, results)}}}
        snap_s = round(sum(r["seconds_snapshot"] for r in results), 3)
        if dry_run:
            conn.rollback()
            return {"as_of": as_of.isoformat(), "rules": rule_list, "total": len(rows), "by_rule": by_rule,
                    "seconds_by_rule": secs, "seconds_snapshot": snap_s, "inputs": inputs, "notes": eng.notes,
                    "seconds": round(time.perf_counter() - t0, 3), **info, "rows": rows}
        run_id = engine.start_run(conn, as_of=as_of, known_at=known_at, rule_list=rule_list, params=params,
                                  layer_map=layer_map, author=author)
        cols = sql.SQL(", ").join(map(sql.Identifier, ("run_id",) + engine.FINDING_FIELDS))
        with conn.cursor().copy(sql.SQL("COPY sup_findings ({}) FROM STDIN").format(cols)) as cp:
            for r in rows:
                cp.write_row((run_id, *r))
        result = engine.finish_run(conn, eng, run_id=run_id, as_of=as_of, rule_list=rule_list, layer_map=layer_map,
                                   by_rule=by_rule, secs=secs, snap_s=snap_s, inputs=inputs, t0=t0, extra=info)
        conn.commit()
        return result
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
        if own_client and client is not None:
            cluster = getattr(client, "_geotwin_own_cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


def _evaluate_parts(client, parts: list[Part], settings: Settings, **kwargs) -> list[dict]:
    """One task per part; the results in the parts' order. The first failing task fails the run:
    the others are cancelled and the error names the part."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = [client.submit(engine.evaluate_findings, settings, scope=p.scope, pure=False,
                             key=f"supervise-{token}-{i}", priority=len(parts) - i, **kwargs)
               for i, p in enumerate(parts)]
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                exc = fut.exception()
                p = parts[index[fut.key]]
                what = (f"part {p.label} ({len(p.scope.parcels)} parcels, {len(p.scope.approvals)} approval batches) "
                        "failed")
                if isinstance(exc, RuleError):
                    raise DaskRunError(f"{what}: {exc}") from exc
                raise DaskRunError(f"{what} ({type(exc).__name__}: {exc}); nothing was stored — check the workers "
                                   "(dask worker logs) and the database, then run again") from exc
        return client.gather(futures)
    finally:
        client.cancel([f for f in futures if not f.done()])
