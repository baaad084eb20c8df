"""Naive evaluation of the supervision rules R1–R13 (domain brief §2) straight from the demo
files with pandas + shapely: the reference the planted cases are checked against, and a
yardstick for the set-based rule engine.

Definitions used here (defaults of the domain brief; ``ref`` = the manifest's reference date):

- R1  payment_due in [ref, ref+30] and payment_received empty
- R2  not started and agreed_start (or agreed_start + extension) in [ref, ref+30], or not
      completed and agreed_completion in [ref, ref+30]
- R3  not started, no exemption, agreed_start + min(extension, 365) < ref
- R4  not started, no exemption, ref − (agreed_start + extension) ≥ 365 days
- R5  same, ≥ 730 days
- R6  started, not completed, stopped_since ≤ ref − 365, and gfa_built/gfa_due < 1/3 or
      investment_done/investment_total < 25%
- R7  not completed and agreed_completion + extension < ref (the Shenzhen variant, contract +
      4 years (+ 6 months with ≥ 3 basement levels), gives the same set on this data)
- R8  parcels with buildings: FAR (Σ gfa / parcel area) > far_max or density (Σ footprint /
      parcel area) > density_max; completed parcels also FAR < far_min
- R9  completed 0601 parcels: coverage < 30% or office/dormitory/residential footprint > 7%, or
      green ratio > 20% measured on the latest imagery epoch at or before ``ref``: share of the
      pixel centres inside the parcel whose excess-green (2G − R − B) / (R + G + B) > 0.10
- R10 a building taller than height_max_m, or a footprint reaching into the setback zone
      (more than 1 m² outside the parcel shrunk by setback_m)
- R11 a footprint more than 20 m² outside its parcel
- R12 no approval_ids and > 1 m² overlap with basic farmland, farmland, forest or red line
- R13 approval polygons with > 100 m² not covered by any parcel
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import shapely


def _read(out_dir: Path, manifest: dict, layer: str, which: int = -1):
    entries = [e for e in manifest["layers"] if e["layer"] == layer]
    e = entries[which]
    df = pyogrio.read_dataframe(out_dir / e["path"])
    return df


def _dates(df: pd.DataFrame, cols) -> pd.DataFrame:
    for c in cols:
        df[c] = pd.to_datetime(df[c]).dt.date.astype(object).where(df[c].notna(), None)
    return df


def naive_findings(out_dir: str | Path) -> dict[str, list[str]]:
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    ref = date.fromisoformat(manifest["reference_date"])
    P = _read(out_dir, manifest, "parcels")
    B = _read(out_dir, manifest, "buildings")
    A = _read(out_dir, manifest, "approvals")
    date_cols = ["contract_date", "agreed_start", "agreed_completion", "actual_start", "actual_completion",
                 "payment_due", "payment_received", "stopped_since"]
    P = _dates(P, date_cols)
    pid = P["parcel_id"].to_numpy()
    pg = P.geometry.to_numpy()
    parea = shapely.area(pg)
    ext = P["extension_days"].fillna(0).astype(int).to_numpy()
    out: dict[str, list[str]] = {}

    def in_window(v):
        return v is not None and ref <= v <= ref + timedelta(days=30)

    not_started = P["actual_start"].isna().to_numpy()
    not_done = P["actual_completion"].isna().to_numpy()
    exempt = P["exemption"].fillna("").astype(str).str.len().to_numpy() > 0
    out["R1"] = [p for p, due, rec in zip(pid, P["payment_due"], P["payment_received"]) if in_window(due) and rec is None]
    r2 = []
    for i, p in enumerate(pid):
        s, c = P.at[i, "agreed_start"], P.at[i, "agreed_completion"]
        if not_started[i] and (in_window(s) or in_window(s + timedelta(days=int(ext[i])))):
            r2.append(p)
        elif not_done[i] and in_window(c):
            r2.append(p)
    out["R2"] = r2
    idle_days = np.array([(ref - (s + timedelta(days=int(e)))).days for s, e in zip(P["agreed_start"], ext)])
    late_days = np.array([(ref - (s + timedelta(days=int(min(e, 365))))).days for s, e in zip(P["agreed_start"], ext)])
    out["R3"] = list(pid[not_started & ~exempt & (late_days > 0)])
    out["R4"] = list(pid[not_started & ~exempt & (idle_days >= 365)])
    out["R5"] = list(pid[not_started & ~exempt & (idle_days >= 730)])
    stopped = np.array([s is not None and (ref - s).days >= 365 for s in P["stopped_since"]])
    with np.errstate(divide="ignore", invalid="ignore"):
        gr = P["gfa_built_m2"].to_numpy() / P["gfa_due_m2"].to_numpy()
        ir = P["investment_done_cny"].to_numpy() / P["investment_total_cny"].to_numpy()
    out["R6"] = list(pid[~not_started & not_done & stopped & ((gr < 1 / 3) | (ir < 0.25))])
    due = np.array([c + timedelta(days=int(e)) for c, e in zip(P["agreed_completion"], ext)])
    out["R7"] = list(pid[not_done & (due < ref)])

    # buildings joined by parcel_id
    B = B[B["parcel_id"].notna()].copy()
    pos = {p: i for i, p in enumerate(pid)}
    bi = B["parcel_id"].map(pos).to_numpy()
    bg = B.geometry.to_numpy()
    foot = shapely.area(bg)
    n = len(pid)
    s_foot = np.bincount(bi, weights=foot, minlength=n)
    s_gfa = np.bincount(bi, weights=B["gfa_m2"].to_numpy(), minlength=n)
    cnt = np.bincount(bi, minlength=n)
    far = s_gfa / parea
    dens = s_foot / parea
    done = ~not_done
    r8 = (cnt > 0) & ((far > P["far_max"].to_numpy() + 1e-9) | (dens > P["density_max"].to_numpy() + 1e-9))
    r8 |= (cnt > 0) & done & (far < P["far_min"].to_numpy() - 1e-9)
    out["R8"] = list(pid[r8])
    office = B["use"].isin(["office", "dormitory", "residential"]).to_numpy()
    s_off = np.bincount(bi[office], weights=foot[office], minlength=n)
    ind = (P["land_use_code"].to_numpy() == "0601") & done
    green = np.zeros(n)
    green[ind] = green_ratios(out_dir, manifest, pg[ind])
    out["R9"] = list(pid[ind & ((dens < 0.30) | (s_off / parea > 0.07) | (green > 0.20))])
    too_tall = B["height_m"].to_numpy() > P["height_max_m"].to_numpy()[bi]
    inner = shapely.buffer(pg, -P["setback_m"].to_numpy(), join_style="mitre")
    outside_setback = shapely.area(shapely.difference(bg, inner[bi])) > 1.0
    r10 = np.zeros(n, bool)
    r10[bi[too_tall | outside_setback]] = True
    out["R10"] = list(pid[r10])
    outside = shapely.area(shapely.difference(bg, pg[bi])) > 20.0
    r11 = np.zeros(n, bool)
    r11[bi[outside]] = True
    out["R11"] = list(pid[r11])

    prot = []
    for name in ("basic_farmland", "farmland", "forest", "eco_redline"):
        prot.append(_read(out_dir, manifest, name).geometry.to_numpy())
    prot = np.concatenate(prot)
    tree = shapely.STRtree(prot)
    no_appr = P["approval_ids"].fillna("").astype(str).str.len().to_numpy() == 0
    r12 = []
    for i in np.flatnonzero(no_appr):
        hits = tree.query(pg[i], predicate="intersects")
        if hits.size and shapely.area(shapely.intersection(prot[hits], pg[i])).sum() > 1.0:
            r12.append(pid[i])
    out["R12"] = r12
    supplied = shapely.union_all(pg)
    left = shapely.area(shapely.difference(A.geometry.to_numpy(), supplied))
    out["R13"] = list(A["approval_id"].to_numpy()[left > 100.0])
    return {k: sorted(map(str, v)) for k, v in out.items()}


GREEN_INDEX_MIN = 0.10


def green_ratios(out_dir: Path, manifest: dict, geoms: np.ndarray) -> np.ndarray:
    """Vegetation share of each polygon (EPSG:4547) on the latest imagery epoch at or before the
    reference date: pixel centres inside the polygon with excess-green > GREEN_INDEX_MIN."""
    import rasterio
    from rasterio.features import geometry_mask
    from rasterio.windows import from_bounds

    ref = manifest["reference_date"]
    epochs = sorted((e for e in manifest["imagery"] if e["acquired_on"] <= ref), key=lambda e: e["acquired_on"])
    out = np.zeros(len(geoms))
    if not epochs or len(geoms) == 0:
        return out
    with rasterio.open(Path(out_dir) / epochs[-1]["path"]) as src:
        for k, g in enumerate(geoms):
            w = from_bounds(*g.bounds, src.transform).round_offsets().round_lengths()
            rgb = src.read([1, 2, 3], window=w, boundless=True).astype(np.float32)
            inside = ~geometry_mask([g], out_shape=rgb.shape[1:], transform=src.window_transform(w))
            r, gg, b = rgb
            exg = (2 * gg - r - b) / np.maximum(r + gg + b, 1.0)
            out[k] = (exg[inside] > GREEN_INDEX_MIN).mean() if inside.any() else 0.0
    return out


def shenzhen_late_completion(out_dir: str | Path) -> list[str]:
    """R7 by the Shenzhen housing rule: not completed 4 years after the contract (+ 6 months
    with three or more basement levels)."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    ref = date.fromisoformat(manifest["reference_date"])
    P = _dates(_read(out_dir, manifest, "parcels"), ["contract_date", "actual_completion"])
    out = []
    for _, r in P.iterrows():
        extra = 183 if (r["basement_levels"] or 0) >= 3 else 0
        if r["actual_completion"] is None and r["contract_date"] + timedelta(days=1461 + extra) < ref:
            out.append(r["parcel_id"])
    return sorted(out)


# -- the underground (issue 17) ------------------------------------------------------------------

def network_problems(manifest) -> tuple[dict[str, dict], list[str]]:
    """The demo's utility network read back from its survey files and put through the checks of
    ``geotwin ingest pipes`` (:mod:`underground.checks`: missing points, depths, drains flowing
    uphill, pipes closer than their radii — each type against itself and against the types read
    before it), plus: every storm / sewage segment falls at ≥ 0.3 %, every manhole-cover sensor
    stands on a surveyed manhole, no type is empty. Returns (counts per type, problems)."""
    from underground.catalogue import pipe_type
    from underground.checks import Axes, check_all, load_axes
    from underground.survey import read_survey

    m = manifest  # a data.demo.Manifest (read by the caller: data.demo imports this module)
    counts: dict[str, dict] = {}
    problems: list[str] = []
    stored: Axes | None = None
    manholes: dict[str, float] = {}
    for t in m.pipe_surveys():
        ptype = pipe_type(t["type"])
        survey = read_survey(t["points"], t["segments"], ptype, crs=m.crs)
        seg = survey.segments
        found = check_all(survey.points, seg, ptype, stored=stored, read_problems=survey.problems)
        problems += [f"{t['type']} {p.id}: {p.message}" for p in found]
        if ptype.gravity:
            run = np.hypot(seg["x1"] - seg["x0"], seg["y1"] - seg["y0"]).to_numpy(dtype=float)
            fall = (seg["start_axis_z"] - seg["end_axis_z"]).to_numpy(dtype=float)
            flat = np.flatnonzero(fall < 0.003 * run - 0.01)
            problems += [f"{t['type']} {seg['segment_id'].iat[i]}: falls {fall[i]:.3f} m over {run[i]:.1f} m (< 0.3 %)"
                         for i in flat[:10]]
        pts = survey.points
        is_mh = pts["is_manhole"].to_numpy(dtype=bool)
        manholes.update(dict(zip(pts["point_id"][is_mh], pts["well_depth"][is_mh])))
        counts[t["type"]] = {"points": len(pts), "segments": len(seg), "manholes": int(is_mh.sum()),
                             "length_km": round(float(seg["length_m"].sum()) / 1000, 2)}
        if not len(seg):
            problems.append(f"{t['type']}: no segments")
        axes = load_axes(seg)
        axes.ids = np.array([f"{ptype.code}-{i}" for i in axes.ids], dtype=object)
        axes.label = np.array([f"{ptype.name} {i}" for i in seg["segment_id"]], dtype=object)
        stored = axes if stored is None else Axes(
            np.concatenate([stored.ids, axes.ids]), np.concatenate([stored.p, axes.p]),
            np.concatenate([stored.q, axes.q]), np.concatenate([stored.r, axes.r]),
            np.concatenate([stored.start, axes.start]), np.concatenate([stored.end, axes.end]),
            np.concatenate([stored.label, axes.label]))
    if m.sensing:
        plan = json.loads((m.out_dir / m.sensing["file"]).read_text(encoding="utf-8"))
        for d in plan["devices"]:
            if d["type"] == "manhole-cover" and d.get("manhole") not in manholes:
                problems.append(f"sensor {d['device_id']}: not on a surveyed manhole ({d.get('manhole')!r})")
    return counts, problems
