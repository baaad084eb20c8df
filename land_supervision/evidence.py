"""Imagery evidence for parcels whose start is in question (not started, start deadline passed or
within the warning window): the two imagery epochs around the agreed start date are compared
inside the parcel and the changed fraction is recorded on the parcel's R2–R5 findings
(``measures.imagery``); a parcel reported "not started" whose imagery changed by at least
``V1.changed_fraction_min`` gets a V1 finding asking for verification.

Epochs come from the imagery catalogue (``spatial_api.store.imagery``, collection
``V1.collection``, default ``ortho``) when it holds items, else from the ``imagery`` vector layer
(catalogue rows with ``path`` and ``acquired_on``, as of the run's date). The "before" epoch is
the latest acquired on or before the agreed start (else the earliest), the "after" epoch the latest
acquired on or before the run's date.

Index (RGB imagery, no near-infrared): a pixel is vegetated when the excess-green index
(2G − R − B) / (R + G + B) exceeds ``veg_index_min``; a pixel changed when it went from vegetated
to bare / built-up or back, or its brightness changed by more than ``brightness_delta`` (bare soil
→ roofs / site sheds). On the demo district, parcels built between two epochs change by 0.45–0.91,
stable parcels by 0.03–0.27 (default threshold 0.35).

Only the candidate parcels' windows are read (a handful per run), so this is a Python loop over
those parcels by design; the rules themselves stay set-based.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

from land_supervision.engine import to_3857



def _epochs(eng, run_as_of: date) -> list[tuple[str, date, Path]]:
    """(id, acquired date, COG path) of every epoch known at the run's date, oldest first."""
    from spatial_api import store
    from spatial_api.store import imagery as catalogue

    P = eng.params["V1"]
    conn = eng.conn
    out: list[tuple[str, date, Path]] = []
    has_catalogue = conn.execute("SELECT to_regclass('imagery_items') IS NOT NULL").fetchone()[0]
    if has_catalogue:
        for it in catalogue.list_items(conn, P["collection"], at=eng.at.replace(hour=23, minute=59)):
            out.append((it.item_id, it.datetime.date(), Path(it.cog_path)))
    if not out:
        layer = eng.layers.get("imagery", "imagery")
        if layer in eng.registry:
            eng.used["imagery"] = layer
            for f in store.features(conn, layer, at=eng.at, known_at=eng.known_at, geometry="wkt"):
                p = f["properties"]
                if p.get("path") and p.get("acquired_on"):
                    out.append((str(p.get("epoch_id") or f["fid"]), date.fromisoformat(str(p["acquired_on"])[:10]),
                                Path(p["path"])))
        if out:
            eng.notes.append(f"V1: imagery epochs read from the {layer!r} vector layer (no items in catalogue "
                             f"collection {P['collection']!r})")
    else:
        eng.used["imagery"] = f"catalogue:{P['collection']}"
    return sorted((e for e in out if e[1] <= run_as_of), key=lambda e: e[1])


def changed_fraction(path_a: Path, path_b: Path, wkb_by_epsg, *, veg_index_min: float,
                     brightness_delta: float) -> dict | None:
    """Changed fraction of the pixels inside a parcel between two RGB rasters (None when the
    parcel is outside them). ``wkb_by_epsg(epsg)`` gives the parcel in the raster's CRS."""
    import rasterio
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.windows import from_bounds

    with rasterio.open(path_a) as A, rasterio.open(path_b) as B:
        epsg = A.crs.to_epsg()
        geom = shapely.from_wkb(wkb_by_epsg(epsg))
        if B.crs.to_epsg() != epsg or A.count < 3 or B.count < 3:
            return None
        out = []
        for src in (A, B):
            w = from_bounds(*geom.bounds, src.transform).round_offsets().round_lengths()
            w = w.intersection(rasterio.windows.Window(0, 0, src.width, src.height)) if w.width and w.height else w
            if w.width < 1 or w.height < 1:
                return None
            data = src.read([1, 2, 3], window=w).astype(np.float32)
            mask = ~geometry_mask([geom], out_shape=data.shape[1:], transform=src.window_transform(w))
            out.append((data, mask))
    (a, ma), (b, mb) = out
    if a.shape != b.shape:  # different grids: compare the parcel-wide class shares only
        return None
    inside = ma & mb
    n = int(inside.sum())
    if n == 0:
        return None

    def veg(x):
        s = x.sum(axis=0) + 1.0
        return (2 * x[1] - x[0] - x[2]) / s > veg_index_min, s / 3.0

    va, la = veg(a)
    vb, lb = veg(b)
    changed = (va != vb) | (np.abs(lb - la) > brightness_delta)
    return {"changed_fraction": round(float(changed[inside].mean()), 4), "pixels": n,
            "vegetated_before": round(float(va[inside].mean()), 4),
            "vegetated_after": round(float(vb[inside].mean()), 4)}


def imagery_evidence(eng, run_id: int) -> int:
    """Record imagery evidence for the run's parcels whose start is in question; returns the
    number of V1 findings."""
    from psycopg.types.json import Jsonb

    P = eng.params["V1"]
    epochs = _epochs(eng, eng.as_of)
    if len(epochs) < 2:
        eng.notes.append("V1: fewer than two imagery epochs at the run's date: no imagery evidence")
        return 0
    conn = eng.conn
    cands = conn.execute(
        "SELECT parcel_id, agreed_start, vid FROM _sup_p p "
        "WHERE (p.actual_start IS NULL OR p.actual_start > %(as_of)s) AND p.agreed_start IS NOT NULL "
        "AND p.agreed_start + least(coalesce(p.extension_days, 0), %(ext)s::int) <= %(as_of)s + %(warn)s::int "
        "ORDER BY parcel_id",
        {"as_of": eng.as_of, "ext": P["max_extension_days"], "warn": P["warn_days"]}).fetchall()
    n_v1 = 0
    for parcel_id, start, vid in cands:
        before = [e for e in epochs if e[1] <= start]
        a = before[-1] if before else epochs[0]
        b = epochs[-1]
        if b[1] <= a[1]:
            continue

        def wkb(epsg, pid=parcel_id):
            return conn.execute("SELECT ST_AsBinary(ST_Transform(g4490, %s)) FROM _sup_p WHERE parcel_id = %s",
                                (epsg, pid)).fetchone()[0]

        try:
            res = changed_fraction(a[2], b[2], wkb, veg_index_min=P["veg_index_min"],
                                   brightness_delta=P["brightness_delta"])
        except OSError as exc:  # a COG moved or unreadable: say so, do not fail the run
            eng.notes.append(f"V1: cannot read imagery for {parcel_id} ({exc})")
            continue
        if res is None:
            continue
        ev = {**res, "epoch_before": a[0], "acquired_before": a[1].isoformat(), "epoch_after": b[0],
              "acquired_after": b[1].isoformat(), "threshold": P["changed_fraction_min"],
              "construction_seen": res["changed_fraction"] >= P["changed_fraction_min"]}
        conn.execute("UPDATE sup_findings SET measures = measures || jsonb_build_object('imagery', %s::jsonb) "
                     "WHERE run_id = %s AND parcel_id = %s AND rule IN ('R2', 'R3', 'R4', 'R5')",
                     (Jsonb(ev), run_id, parcel_id))
        if ev["construction_seen"]:
            conn.execute(
                """
                INSERT INTO sup_findings (run_id, rule, subject_id, parcel_id, severity, message, measures, sources,
                                          area_m2, street_code, street_name, land_use_code, geom, geom_3857)
                SELECT %s, 'V1', p.parcel_id, p.parcel_id, 'medium',
                       format('报告未开工，但 %%s 至 %%s 两期影像显示宗地内 %%s%%%% 发生变化（疑似已动工），请核实',
                              %s::text, %s::text, round((%s * 100)::numeric, 1)),
                       %s, jsonb_build_object('parcels', p.vid, 'imagery', jsonb_build_array(%s::text, %s::text)),
                       p.area_m2, s.fid, s.props ->> 'name', p.land_use_code, p.g4490, """ + to_3857("p.g4490") + """
                FROM _sup_p p LEFT JOIN LATERAL (SELECT s.fid, s.props FROM _sup_s s
                    WHERE ST_Intersects(s.g4490, ST_PointOnSurface(p.g4490)) ORDER BY s.fid LIMIT 1) s ON true
                WHERE p.parcel_id = %s
                """,
                (run_id, a[1].isoformat(), b[1].isoformat(), res["changed_fraction"], Jsonb({"imagery": ev}),
                 a[0], b[0], parcel_id))
            n_v1 += 1
    return n_v1
