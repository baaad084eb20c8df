"""Imagery evidence for parcels whose start is in question (not started, start deadline passed or
within the warning window): the two imagery epochs around the agreed start date are compared
inside the parcel and the changed fraction is recorded on the parcel's R2–R5 findings
(``measures.imagery``); a parcel reported "not started" whose imagery changed by at least
``V1.changed_fraction_min`` gets a V1 finding asking for verification.

Epochs come from the imagery catalogue (``spatial_api.store.imagery``, collection
``V1.collection``, default ``ortho``) when it holds items, else from the ``imagery`` vector layer
(catalogue rows with ``path`` and ``acquired_on``, as of the run's date). Per parcel, only the
epochs whose footprint meets it count: the "before" epoch is the latest of them acquired on or
before the agreed start (else the earliest), the "after" epoch the latest acquired on or before the
run's date. Both are read over the parcel's bounds (boundless: pixels beyond a raster's edge are
masked), so a parcel half under the imagery is measured on its covered half.

A parcel's finding stays a finding whatever its imagery: no epoch covering it (a parcel outside
the flown area), a single one, no pixel inside it, epochs that cannot be compared or a file that
cannot be read each give ``measures.imagery`` a ``note`` saying so (``construction_seen`` null),
and the run goes on — one parcel's imagery never stops a run.

Index (RGB imagery, no near-infrared): a pixel is vegetated when the excess-green index
(2G − R − B) / (R + G + B) exceeds ``veg_index_min``; a pixel changed when it went from vegetated
to bare / built-up or back, or its brightness changed by more than ``brightness_delta`` (bare soil
→ roofs / site sheds). On the demo district, parcels built between two epochs change by 0.45–0.91,
stable parcels by 0.03–0.27 (default threshold 0.35).

Only the candidate parcels' windows are read (a handful per run), so this is a Python loop over
those parcels by design; the rules themselves stay set-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import psycopg
import shapely
from psycopg.types.json import Jsonb

from land_supervision.greenness import parcel_window
from land_supervision.mercator import to_3857
from spatial_api import objectstore, store
from spatial_api.store import imagery as imagery_catalogue

NO_COVER = "无影像覆盖该宗地（no imagery covers this parcel）"
NO_PIXELS = "影像在该宗地内无有效像元（no imagery covers this parcel: no valid pixel inside it）"
ONE_EPOCH = "仅一期影像覆盖该宗地（{id}，{day}），无法比较（only one imagery epoch covers this parcel: no change measured）"
NOT_COMPARABLE = "两期影像无法比较（the imagery epochs cannot be compared: {reason}）"
UNREADABLE = "影像读取失败（the imagery could not be read: {reason}）"


class EvidenceError(ValueError):
    """Two epochs that cannot be compared over a parcel (the message says why)."""


@dataclass(frozen=True)
class Epoch:
    id: str
    acquired: date
    path: Path  # or an objectstore.ObjectPath (s3://)
    footprint: object | None = None  # shapely geometry, EPSG:4490; None: unknown (assumed to cover)

    def covers(self, parcel) -> bool:
        return self.footprint is None or bool(self.footprint.intersects(parcel))


def _epochs(eng, run_as_of: date) -> list[Epoch]:
    """Every epoch known at the run's date, oldest first."""
    params = eng.params["V1"]
    conn = eng.conn
    out: list[Epoch] = []
    has_catalogue = conn.execute("SELECT to_regclass('imagery_items') IS NOT NULL").fetchone()[0]
    if has_catalogue:
        for it in imagery_catalogue.list_items(conn, params["collection"], at=eng.at.replace(hour=23, minute=59)):
            out.append(Epoch(it.item_id, it.datetime.date(), objectstore.location(str(it.cog_path)),  # s3:// too
                             shapely.from_wkt(it.footprint_wkt)))
    if not out:
        layer = eng.layers.get("imagery", "imagery")
        if layer in eng.registry:
            eng.used["imagery"] = layer
            undated = []
            for f in store.features(conn, layer, at=eng.at, known_at=eng.known_at, geometry="wkt"):
                p = f["properties"]
                if p.get("path") and p.get("acquired_on"):
                    try:
                        day = date.fromisoformat(str(p["acquired_on"])[:10])
                    except ValueError:
                        undated.append(f["fid"])
                        continue
                    out.append(Epoch(str(p.get("epoch_id") or f["fid"]), day, Path(p["path"]),
                                     shapely.from_wkt(f["geometry"]) if f["geometry"] else None))
            if undated:
                eng.notes.append(f"V1: imagery layer {layer!r} rows whose acquired_on is no date (YYYY-MM-DD) were "
                                 f"left out: {', '.join(map(repr, undated[:10]))}")
        if out:
            eng.notes.append(f"V1: imagery epochs read from the {layer!r} vector layer (no items in catalogue "
                             f"collection {params['collection']!r})")
    else:
        eng.used["imagery"] = f"catalogue:{params['collection']}"
    return sorted((e for e in out if e.acquired <= run_as_of), key=lambda e: (e.acquired, e.id))


def _read(src, geom):
    """(RGB as float32, pixel centres inside ``geom`` that hold data) over ``geom``'s bounds in
    ``src``'s grid, or None when those bounds miss the raster."""
    from rasterio.features import geometry_mask  # deferred: see changed_fraction

    w = parcel_window(src, geom.bounds, clip=False)
    if w is None:
        return None
    # boundless (slower) only for a parcel over the raster's edge
    edge = w != parcel_window(src, geom.bounds)
    data = src.read([1, 2, 3], window=w, boundless=edge, fill_value=0).astype(np.float32)
    inside = ~geometry_mask([geom], out_shape=data.shape[1:], transform=src.window_transform(w))
    inside &= src.dataset_mask(window=w, boundless=edge) > 0  # beyond the edge, nodata, alpha: no ground
    return data, inside


def changed_fraction(path_a: Path, path_b: Path, wkb_by_epsg, *, veg_index_min: float,
                     brightness_delta: float) -> dict | None:
    """Changed fraction of the pixels inside a parcel between two RGB rasters; None when no pixel
    of both lies inside the parcel (a parcel outside the imagery). ``wkb_by_epsg(epsg)`` gives the
    parcel in the raster's CRS. Raises EvidenceError when the two cannot be compared."""
    # deferred: rasterio loads GDAL (~0.1–0.4 s), which only runs that read imagery need
    import rasterio

    # s3:// epochs (object storage) are read through GDAL's /vsis3/ with the store's settings
    with objectstore.rasterio_env(), rasterio.open(str(path_a)) as raster_a, rasterio.open(str(path_b)) as raster_b:
        epsg = raster_a.crs.to_epsg() if raster_a.crs else None
        if epsg is None or raster_b.crs is None or raster_b.crs.to_epsg() != epsg:
            raise EvidenceError(f"{objectstore.location(str(path_a)).name} and {objectstore.location(str(path_b)).name} "
                                "are not in one EPSG CRS")
        if raster_a.count < 3 or raster_b.count < 3:
            raise EvidenceError("an epoch is not an RGB raster (fewer than 3 bands)")
        geom = shapely.from_wkb(wkb_by_epsg(epsg))
        read_a, read_b = _read(raster_a, geom), _read(raster_b, geom)
    if read_a is None or read_b is None:
        return None
    (a, inside_a), (b, inside_b) = read_a, read_b
    if a.shape != b.shape:  # different pixel sizes: the pixels cannot be paired
        raise EvidenceError(f"different pixel grids ({a.shape[2]}×{a.shape[1]} and {b.shape[2]}×{b.shape[1]} "
                            "pixels over the parcel)")
    inside = inside_a & inside_b
    n = int(inside.sum())
    if n == 0:
        return None

    def veg(rgb):
        total = rgb.sum(axis=0) + 1.0
        return (2 * rgb[1] - rgb[0] - rgb[2]) / total > veg_index_min, total / 3.0

    veg_a, light_a = veg(a)
    veg_b, light_b = veg(b)
    changed = (veg_a != veg_b) | (np.abs(light_b - light_a) > brightness_delta)
    return {"changed_fraction": round(float(changed[inside].mean()), 4), "pixels": n,
            "vegetated_before": round(float(veg_a[inside].mean()), 4),
            "vegetated_after": round(float(veg_b[inside].mean()), 4)}


def parcel_evidence(epochs: list[Epoch], parcel, start: date, measure) -> dict:
    """The imagery evidence of one parcel (EPSG:4490 ``parcel``, agreed start ``start``) from the
    epochs that cover it; ``measure(before, after)`` is changed_fraction over the parcel."""
    covering = [e for e in epochs if e.covers(parcel)]
    if not covering:
        return {"note": NO_COVER, "construction_seen": None, "epochs_checked": len(epochs)}
    by_start = [e for e in covering if e.acquired <= start]
    before = by_start[-1] if by_start else covering[0]
    after = covering[-1]
    if after.acquired <= before.acquired:
        return {"note": ONE_EPOCH.format(id=before.id, day=before.acquired.isoformat()), "construction_seen": None,
                "epoch": before.id, "acquired": before.acquired.isoformat()}
    ids = {"epoch_before": before.id, "acquired_before": before.acquired.isoformat(), "epoch_after": after.id,
           "acquired_after": after.acquired.isoformat()}
    try:
        res = measure(before, after)
    except EvidenceError as exc:
        return {"note": NOT_COMPARABLE.format(reason=exc), "construction_seen": None, **ids}
    if res is None:
        return {"note": NO_PIXELS, "construction_seen": None, "pixels": 0, **ids}
    return {**res, **ids}


def imagery_evidence(eng, run_id: int) -> int:
    """Record imagery evidence for the run's parcels whose start is in question; returns the
    number of V1 findings. A parcel whose imagery is missing or unreadable gets a note as its
    evidence (and, when a file or the database fails on it, a note of the run); the others go on."""
    import rasterio  # deferred: see changed_fraction

    params = eng.params["V1"]
    epochs = _epochs(eng, eng.as_of)
    if len(epochs) < 2:  # the run says so; each parcel's findings say what covers it (nothing or one epoch)
        eng.notes.append("V1: fewer than two imagery epochs at the run's date: no imagery evidence")
    conn = eng.conn
    cands = conn.execute(
        "SELECT parcel_id, agreed_start, ST_AsBinary(g4490) FROM _sup_p p "
        "WHERE (p.actual_start IS NULL OR p.actual_start > %(as_of)s) AND p.agreed_start IS NOT NULL "
        "AND p.agreed_start + least(coalesce(p.extension_days, 0), %(ext)s::int) <= %(as_of)s + %(warn)s::int "
        "ORDER BY parcel_id",
        {"as_of": eng.as_of, "ext": params["max_extension_days"], "warn": params["warn_days"]}).fetchall()

    def record(parcel_id: str, ev: dict) -> None:
        conn.execute("UPDATE sup_findings SET measures = measures || jsonb_build_object('imagery', %s::jsonb) "
                     "WHERE run_id = %s AND parcel_id = %s AND rule IN ('R2', 'R3', 'R4', 'R5')",
                     (Jsonb(ev), run_id, parcel_id))

    n_v1 = 0
    for parcel_id, start, g4490 in cands:

        def wkb(epsg, pid=parcel_id):
            return conn.execute("SELECT ST_AsBinary(ST_Transform(g4490, %s)) FROM _sup_p WHERE parcel_id = %s",
                                (epsg, pid)).fetchone()[0]

        def measure(before: Epoch, after: Epoch, wkb=wkb):
            return changed_fraction(before.path, after.path, wkb, veg_index_min=params["veg_index_min"],
                                    brightness_delta=params["brightness_delta"])

        try:
            with conn.transaction():  # a savepoint: a database error on this parcel leaves the run usable
                ev = parcel_evidence(epochs, shapely.from_wkb(bytes(g4490)), start, measure)
                if "changed_fraction" in ev:
                    ev.update(threshold=params["changed_fraction_min"],
                              construction_seen=ev["changed_fraction"] >= params["changed_fraction_min"])
                record(parcel_id, ev)
                if ev.get("construction_seen"):
                    _insert_v1(conn, run_id, parcel_id, ev)
                    n_v1 += 1
        except (OSError, rasterio.errors.RasterioError, shapely.errors.GEOSException, ValueError,
                psycopg.DataError, psycopg.errors.InternalError_) as exc:
            # a COG moved or unreadable, a geometry or value the reading cannot take: say so, go on
            reason = (exc.diag.message_primary if isinstance(exc, psycopg.Error) else None) or str(exc)
            eng.notes.append(f"V1: cannot read imagery for {parcel_id} ({reason})")
            record(parcel_id, {"note": UNREADABLE.format(reason=reason), "construction_seen": None})
    return n_v1


def _insert_v1(conn, run_id: int, parcel_id: str, ev: dict) -> None:
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
        (run_id, ev["acquired_before"], ev["acquired_after"], ev["changed_fraction"], Jsonb({"imagery": ev}),
         ev["epoch_before"], ev["epoch_after"], parcel_id))
