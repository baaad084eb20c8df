"""Supervision benchmark: the whole rule library R1–R13 (set-based PostGIS, land_supervision.engine)
against a straightforward geopandas implementation of the same rules (merge / sjoin / overlay) on
the same data, in the same run.

The demo district (default: large — ≥ 5,000 parcels, ≥ 200,000 land-use polygons, ≥ 50,000
buildings) is loaded by geotwin's own ingestion into schema ``geotwin_supbench`` (re-loading an
unchanged district is a no-op). Both sides start from the layer store as of the reference date:

- geotwin: ``engine.run`` with every rule (imagery off — the peer reads no rasters: no V1 evidence,
  no R9 green ratio measured from imagery), which
  snapshots the layers, evaluates, stores findings and compares with the previous run; wall time
  of the call, median of ``--runs``;
- geopandas: ``read_postgis`` of the same as-of states (the store's temporal filter), transformed
  to EPSG:4547, then the rules with pandas / shapely 2 vectorised operations, ``sjoin`` and
  ``overlay``; read and compute timed separately, median of ``--runs``.

Both results (rule, subject) are compared; they must agree. Results go between the
bench:supervision markers of docs/benchmarks.md.

    .venv/bin/python bench/supervision.py [--size large] [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date, datetime, time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCHEMA = "geotwin_supbench"
START, END = "<!-- bench:supervision:start -->", "<!-- bench:supervision:end -->"
LAYERS = ("streets", "land_use", "basic_farmland", "eco_redline", "approvals", "parcels", "buildings")


def load(size: str) -> tuple[dict, Path]:
    from data.demo import build_files
    from spatial_api import db
    from spatial_api.config import get_settings
    from spatial_api.ingest import ingest_vector

    out = ROOT / ".geotwin" / "demo" / size
    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8")) if (out / "manifest.json").exists() else None
    # the bench reads the vector layers only: builder versions 1 and 2 write the same ones (2 changed
    # the imagery), so an earlier complete build is used as it is rather than rebuilt
    if not (doc and doc.get("builder_version", 0) >= 1 and doc.get("expected_findings")
            and all((out / e["path"]).exists() for e in doc["layers"] if e["layer"] in LAYERS)):
        build_files(out, size=size, reuse=True)
        doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    settings = get_settings()
    db.migrate(settings)
    for e in doc["layers"]:
        if e["layer"] in LAYERS:
            ingest_vector(out / e["path"], layer=e["layer"], key=e["key"], valid_from=e["valid_from"],
                          mode=e["mode"], settings=settings, author="bench")
    return doc, out


# ------------------------------------------------------------------------------ geopandas peer

def read_state(conn, layer: str, at: datetime, where: str = "TRUE"):
    """The layer as of ``at`` (the store's temporal filter), properties expanded, EPSG:4547."""
    import geopandas as gpd
    import pandas as pd
    from psycopg import sql

    from spatial_api import store

    cond, params = store.temporal_filter(at, None, "f")
    q = sql.SQL("SELECT f.fid, f.vid, f.properties::text AS props, ST_AsBinary(f.geom) AS wkb FROM {} f "
                "WHERE f.layer = {} AND {} AND " + where).format(
        sql.Identifier(store.partition_name(layer)), sql.Literal(layer), cond)
    rows = conn.execute(q, params).fetchall()
    props = pd.DataFrame([json.loads(r[2]) for r in rows])
    geom = gpd.GeoSeries.from_wkb([bytes(r[3]) for r in rows], crs=4490).to_crs(4547)
    df = gpd.GeoDataFrame(props, geometry=geom.values, crs=4547)
    df["fid"] = [r[0] for r in rows]
    return df


def peer_read(conn, at: datetime) -> dict:
    return {
        "parcels": read_state(conn, "parcels", at),
        "buildings": read_state(conn, "buildings", at, "coalesce(f.properties ->> 'parcel_id', '') <> ''"),
        "approvals": read_state(conn, "approvals", at),
        "basic_farmland": read_state(conn, "basic_farmland", at),
        "eco_redline": read_state(conn, "eco_redline", at),
        "land_use": read_state(conn, "land_use", at,
                               "((f.properties ->> 'dlbm') LIKE '010%%' OR (f.properties ->> 'dlbm') LIKE '03%%')"),
    }


def peer_rules(D: dict, ref: date, P: dict) -> dict[str, set[str]]:
    """The same rules, written the way a GIS analyst would with geopandas."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    p = D["parcels"].copy()
    for c in ("contract_date", "agreed_start", "agreed_completion", "actual_start", "actual_completion",
              "payment_due", "payment_received", "stopped_since"):
        p[c] = pd.to_datetime(p[c])
    R = pd.Timestamp(ref)
    out: dict[str, set[str]] = {}
    ext = p["extension_days"].fillna(0).clip(upper=P["R3"]["max_extension_days"])
    started = p["actual_start"].notna() & (p["actual_start"] <= R)
    done = p["actual_completion"].notna() & (p["actual_completion"] <= R)
    exempt = p["exemption"].fillna("").str.strip() != ""
    win = lambda s: (s >= R) & (s <= R + pd.Timedelta(days=30))  # noqa: E731
    paid = p["payment_received"].notna() & (p["payment_received"] <= R)
    out["R1"] = set(p.loc[win(p["payment_due"]) & ~paid, "fid"])
    start_dl = p["agreed_start"] + pd.to_timedelta(ext, unit="D")
    comp_dl = p["agreed_completion"] + pd.to_timedelta(p["extension_days"].fillna(0), unit="D")
    out["R2"] = set(p.loc[(~started & win(start_dl)) | (~done & win(comp_dl)), "fid"])
    idle = (R - start_dl).dt.days
    base = ~started & ~exempt & p["agreed_start"].notna()
    out["R3"] = set(p.loc[base & (idle >= 1), "fid"])
    out["R4"] = set(p.loc[base & (idle >= P["R4"]["idle_days"]), "fid"])
    out["R5"] = set(p.loc[base & (idle >= P["R5"]["idle_days"]), "fid"])
    stopped = (R - p["stopped_since"]).dt.days
    with np.errstate(divide="ignore", invalid="ignore"):
        br = p["gfa_built_m2"] / p["gfa_due_m2"].replace(0, np.nan)
        ir = p["investment_done_cny"] / p["investment_total_cny"].replace(0, np.nan)
    out["R6"] = set(p.loc[started & ~done & (stopped >= 365) & ((br < 1 / 3) | (ir < 0.25)), "fid"])
    out["R7"] = set(p.loc[~done & (comp_dl < R), "fid"])

    p["area"] = p.geometry.area
    b = D["buildings"].merge(p[["fid", "area", "far_max", "far_min", "density_max", "height_max_m", "setback_m",
                                "land_use_code", "geometry"]].rename(columns={"fid": "parcel_id", "geometry": "pg"}),
                             on="parcel_id")
    b["foot"] = b.geometry.area
    b["gfa"] = b["gfa_m2"].fillna(b["floors"] * b["foot"])
    g = b.groupby("parcel_id").agg(gfa=("gfa", "sum"), foot=("foot", "sum"))
    pp = p.set_index("fid").join(g, how="inner")
    far, dens = (pp["gfa"] / pp["area"]).round(3), (pp["foot"] / pp["area"]).round(3)
    pdone = done.set_axis(p["fid"]).reindex(pp.index)
    out["R8"] = set(pp.index[(far > pp["far_max"]) | (dens > pp["density_max"]) | (pdone & (far < pp["far_min"]))])
    office = b[b["use"].isin(P["R9"]["office_uses"])].groupby("parcel_id")["foot"].sum()
    ind = p[(p["land_use_code"].isin(P["R9"]["industrial_codes"])) & done].set_index("fid")
    cov = (g["foot"].reindex(ind.index).fillna(0) / ind["area"]).round(3)
    off = (office.reindex(ind.index).fillna(0) / ind["area"]).round(3)
    out["R9"] = set(ind.index[(cov < 0.30) | (off > 0.07)])
    pg = gpd.GeoSeries(b["pg"].values, crs=4547)
    bg = gpd.GeoSeries(b.geometry.values, crs=4547)
    inner = pg.buffer(-b["setback_m"].fillna(0).values, join_style="mitre")
    sb = b["setback_m"].fillna(0).values > 0
    setback_area = np.where(sb, bg.difference(inner).area, 0.0)
    out["R10"] = set(b.loc[(b["height_m"] > b["height_max_m"]) | (setback_area > 1.0), "parcel_id"])
    beyond = bg.difference(pg.buffer(P["R11"]["distance_tolerance_m"])).area
    out["R11"] = set(b.loc[beyond.values > P["R11"]["area_tolerance_m2"], "parcel_id"])

    appr_ids = set(D["approvals"]["fid"])
    ids = p["approval_ids"].fillna("").str.strip()
    unknown = ids.str.split(r"\s*[,;，；、/]\s*|\s+", regex=True).apply(
        lambda xs: any(x and x not in appr_ids for x in xs))
    cand = p.loc[(ids == "") | unknown, ["fid", "geometry"]]
    lu = D["land_use"]
    prot = pd.concat([D["basic_farmland"][["geometry"]], D["eco_redline"][["geometry"]],
                      lu[lu["dlbm"].str.match(r"^(0101|0102|0103|03)")][["geometry"]]], ignore_index=True)
    prot = gpd.GeoDataFrame(prot, geometry="geometry", crs=4547)
    ov = gpd.overlay(cand, prot, how="intersection", keep_geom_type=True)
    area = ov.dissolve(by="fid").geometry.area
    out["R12"] = set(area.index[area > P["R12"]["min_overlap_m2"]])

    a = D["approvals"].copy()
    a["approved_on"] = pd.to_datetime(a["approved_on"])
    a = a[a["approved_on"].isna() | (a["approved_on"] <= R)]
    supplied = p[p["contract_date"].isna() | (p["contract_date"] <= R)][["geometry"]]
    left = gpd.overlay(a[["fid", "geometry"]], supplied, how="difference", keep_geom_type=True)
    la = left.set_index("fid").geometry.area
    out["R13"] = set(la.index[la > P["R13"]["min_area_m2"]])
    return out


# ------------------------------------------------------------------------------ main

def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) a database backend has used so far (/proc, same machine)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="large", choices=["small", "medium", "large"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--schema", default=SCHEMA, help=f"Database schema [default: {SCHEMA}]")
    args = ap.parse_args()
    os.environ["GEOTWIN_DB_SCHEMA"] = args.schema
    from land_supervision import catalogue, engine, runs
    from spatial_api import db
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    t0 = time.perf_counter()
    doc, out = load(args.size)
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    settings = get_settings()
    ref = date.fromisoformat(doc["reference_date"])
    at = datetime.combine(ref, dtime(0), ZoneInfo(settings.timezone))
    P = catalogue.parameters()

    ours, per_rule, inputs, snaps = [], [], {}, []
    reads, computes, theirs = [], [], None
    ours_cpu, reads_cpu, computes_cpu = [], [], []
    run_id = None
    with db.connect(settings) as conn:
        counts = {k: conn.execute(
            f"SELECT count(*) FROM features_{k} f WHERE f.layer = %s AND f.valid_from <= %s AND "
            "(f.valid_to IS NULL OR f.valid_to > %s)", (k, at, at)).fetchone()[0] for k in ("parcels", "buildings", "land_use")}
        # warm-up (not counted): both sides read the same partitions, so both get a warm cache
        engine.run(settings, as_of=ref, imagery=False, author="bench-warmup")
        peer_rules(peer_read(conn, at), ref, P)
        peer_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for i in range(args.runs):  # alternate the two implementations
            t, c0 = time.perf_counter(), time.process_time()
            own = db.connect(settings)  # a fresh connection per run, as the CLI opens one
            pid = own.execute("SELECT pg_backend_pid()").fetchone()[0]
            r = engine.run(settings, as_of=ref, imagery=False, author="bench", conn=own)
            b_cpu = backend_cpu(pid)
            own.close()
            ours.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c0 + b_cpu)
            per_rule.append(r.counts["seconds_by_rule"])
            snaps.append(r.counts["seconds_snapshot"])
            inputs, run_id = r.counts["inputs"], r.run_id
            t, c0, pb0 = time.perf_counter(), time.process_time(), backend_cpu(peer_pid)
            D = peer_read(conn, at)
            t1, c1 = time.perf_counter(), time.process_time()
            theirs = peer_rules(D, ref, P)
            t2, c2 = time.perf_counter(), time.process_time()
            reads.append(t1 - t)
            computes.append(t2 - t1)
            reads_cpu.append(c1 - c0 + backend_cpu(peer_pid) - pb0)
            computes_cpu.append(c2 - c1)
            print(f"run {i + 1}: geotwin {ours[-1]:.2f} s (CPU {ours_cpu[-1]:.2f}); geopandas read {reads[-1]:.2f} s "
                  f"(CPU {reads_cpu[-1]:.2f}) + rules {computes[-1]:.2f} s (CPU {computes_cpu[-1]:.2f})", flush=True)
        got: dict[str, set[str]] = {rid: set() for rid in catalogue.RULE_IDS}
        for f in runs.findings(conn, run_id):
            got[f["rule"]].add(f["subject_id"])
    agree = {rid: got[rid] == theirs.get(rid, set()) for rid in catalogue.RULE_IDS}
    for rid, ok in agree.items():
        if not ok:
            print(f"DISAGREE {rid}: geotwin only {sorted(got[rid] - theirs[rid])[:5]}, "
                  f"geopandas only {sorted(theirs[rid] - got[rid])[:5]}")
    load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    med = statistics.median
    ours_m, read_m, comp_m = med(ours), med(reads), med(computes)
    rule_m = {rid: med(r[rid] for r in per_rule) for rid in per_rule[0]}
    n_find = sum(len(v) for v in got.values())
    lines = [
        START,
        f"Measured {datetime.now().strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores, shared), "
        f"PostgreSQL/PostGIS local cluster; `{args.size}` demo district as of {ref}: {counts['parcels']:,} parcels, "
        f"{counts['buildings']:,} buildings ({inputs.get('buildings', 0):,} on parcels), {counts['land_use']:,} land-use "
        f"polygons; {n_find} findings. One warm-up run each, then {args.runs} alternating runs; medians. "
        f"Load average (1/5/15 min) before {' / '.join(load_before)}, after {' / '.join(load_after)} — other "
        "work shared the 2 cores, so absolute times carry that noise; the two sides alternate to share it.",
        "",
        "| implementation | wall time (s) | CPU time (s) | notes |",
        "|---|---:|---:|---|",
        f"| geotwin `engine.run` (all 13 rules, stored, diffed) | {ours_m:.2f} | {med(ours_cpu):.2f} | "
        f"snapshots {med(snaps):.2f} s + set-based SQL + storing findings + diff; fresh connection per run |",
        f"| geopandas: read the same as-of states | {read_m:.2f} | {med(reads_cpu):.2f} | `temporal_filter` query, "
        "WKB → GeoDataFrame, to EPSG:4547 |",
        f"| geopandas: rules (merge / sjoin / overlay) | {comp_m:.2f} | {med(computes_cpu):.2f} | shapely 2 "
        "vectorised; R12/R13 with `overlay` |",
        f"| geopandas total | {read_m + comp_m:.2f} | {med(reads_cpu) + med(computes_cpu):.2f} | |",
        "",
        "CPU time = the Python process plus its database backend (from /proc): less sensitive than wall time "
        "to the other work on the machine.",
        "",
        "geotwin per rule (s): " + ", ".join(f"{k} {v:.2f}" for k, v in rule_m.items()) + ".",
        "",
        "Imagery off on both sides (`imagery=False`; the peer reads no rasters): no V1 evidence, and R9's "
        "green ratio, which geotwin measures from imagery where a parcel has no value, is not checked here.",
        "",
        "Results agree rule by rule: " + ("yes, every rule" if all(agree.values()) else
                                         "NO — " + ", ".join(k for k, v in agree.items() if not v)) + ".",
        f"Goals: whole library under 30 s — {'met' if ours_m < 30 else 'NOT met'} ({ours_m:.1f} s); faster than "
        f"geopandas read + rules — {'met' if ours_m < read_m + comp_m else 'NOT met'} "
        f"({(read_m + comp_m) / ours_m:.1f}× wall, {(med(reads_cpu) + med(computes_cpu)) / med(ours_cpu):.1f}× CPU); "
        f"faster than the geopandas rules alone, data already in memory — "
        f"{'met' if ours_m < comp_m else 'NOT met'} ({comp_m / ours_m:.1f}× wall, "
        f"{med(computes_cpu) / med(ours_cpu):.1f}× CPU).",
        END,
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        text = path.read_text()
        if START in text:
            text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
        else:
            text = (text.rstrip() + "\n\n## Land supervision\n\n`.venv/bin/python bench/supervision.py` runs the whole "
                    "rule library R1–R13 against a geopandas implementation of the same rules on the same data.\n\n"
                    + block + "\n")
        path.write_text(text)


if __name__ == "__main__":
    main()
