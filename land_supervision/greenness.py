"""R9's green ratio (绿地率) measured from imagery, for the industrial parcels that carry no
measured value (the parcel's ``R9.green_ratio_field``, default ``green_ratio``, wins where it is
filled).

The database does the selection, set-based: the completed industrial parcels of the snapshot
``_sup_p`` without a green-ratio value, each with the latest imagery epoch acquired on or before the
run's date whose footprint covers the parcel — first from the imagery catalogue
(``spatial_api.store.imagery``: table ``imagery_items`` of collection ``R9.green_collection``, default
``ortho``), then, for parcels no catalogue item covers, from the ``imagery`` vector layer as of the
run's date (rows with ``path`` and ``acquired_on``; the way ``evidence.py`` falls back). Python then
reads the pixels: one open per COG, one window per parcel (``rasterio.windows.from_bounds``), the
parcel rasterised over its window (pixel centres inside), and writes the measured values back in
one COPY into ``_sup_green``, which R9's SQL joins.

Index: the imagery is RGB (no near-infrared, so no NDVI); a pixel is green when its excess-green
index ExG = (2G − R − B) / (R + G + B) is above ``R9.green_index_min`` (default 0.10); green ratio =
green pixels ÷ pixel centres inside the parcel. Calibration on the demo imagery (latest epoch
before 2026-06-30, JPEG-compressed RGB COGs; builder version 2): built surfaces — roofs, concrete
yards, asphalt, shadows, site soil — have ExG −0.08 … +0.05 (mode 0.00 … 0.03), lawn and tree
crowns 0.17 … 0.35; a pixel half vegetation, half concrete ≈ 0.10, so 0.10 counts the pixels at
least about half vegetated. Medium district, 35 completed 0601 parcels, by threshold (the planted
landscaped parcel / the largest of the 34 others): 0.05 → 0.452 / 0.211 (a false finding: mixed
pixels at the edges of lawn strips count), 0.075 → 0.415 / 0.123, 0.10 → 0.390 / 0.091, 0.15 → 0.347 /
0.063, 0.20 → 0.286 / 0.043, 0.25 → 0.222 / 0.029; small district 0.10 → 0.463 / 0.044. Any
threshold in 0.075 … 0.20 gives the same findings; 0.10 keeps the most vegetation.
Builder version 5 (street trees kept off granted land, each industrial parcel's lawn at most 6 % of
its pixels, so that coarse 6 m imagery reads like 3 m), at 0.10: small 0.449 / 0.011, medium 0.412 /
0.049, large 0.426 / 0.123 (the large district's small parcels edged by woodland, JPEG smear).
The measured value, its pixels, the imagery item (id, acquisition date, catalogue or layer) and the
threshold go into the finding's ``measures``.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import shapely
from psycopg import sql

from land_supervision.catalogue import RuleError
from spatial_api import objectstore, store


def candidates_sql(has_field: bool) -> str:
    field = "AND p.props ->> %(green_ratio_field)s IS NULL " if has_field else ""
    return ("FROM _sup_p p WHERE p.land_use_code = ANY(%(industrial_codes)s::text[]) "
            f"AND p.actual_completion <= %(as_of)s {field}")


def measure(eng, *, has_field: bool) -> int:
    """Fill ``_sup_green`` (parcel_id, green_ratio, pixels, item_id, acquired_on, source, path) for
    the R9 candidates without a green-ratio value; returns how many got a measured value."""
    conn = eng.conn
    params = {**eng.params["R9"], "as_of": eng.as_of}
    if has_field:
        bad = conn.execute(
            "SELECT parcel_id, props ->> %(f)s FROM _sup_p WHERE land_use_code = ANY(%(codes)s::text[]) "
            "AND NOT (props ->> %(f)s)::float8 BETWEEN 0 AND 1 ORDER BY parcel_id LIMIT 5",
            {"f": params["green_ratio_field"], "codes": params["industrial_codes"]}).fetchall()
        if bad:
            raise RuleError(
                f"layer {eng.parcels!r} field {params['green_ratio_field']!r}: a green ratio is a share between "
                f"0 and 1 (0.15 for 15%); " + "; ".join(f"feature {pid!r} has {v!r}" for pid, v in bad) +
                ". Correct the values and re-load the layer.")
    conn.execute(
        "CREATE TEMP TABLE _sup_green (parcel_id text PRIMARY KEY, green_ratio float8, pixels int, item_id text, "
        "acquired_on date, source text, path text) ON COMMIT DROP")
    if not eng.use_imagery:
        n = conn.execute(sql.SQL("SELECT count(*) " + candidates_sql(has_field)), params).fetchone()[0]
        if n:
            eng.notes.append(f"R9: imagery off for this run: the green ratio of {n} industrial parcel(s) without "
                             f"a {params['green_ratio_field']!r} value was not measured")
        return 0
    end = eng.at + timedelta(days=1)  # acquired on or before the run's date (district time)
    cand = sql.SQL(candidates_sql(has_field))
    not_yet = sql.SQL("AND NOT EXISTS (SELECT 1 FROM _sup_green g WHERE g.parcel_id = p.parcel_id) ")
    if conn.execute("SELECT to_regclass('imagery_items') IS NOT NULL").fetchone()[0]:
        n = conn.execute(sql.SQL(
            "INSERT INTO _sup_green (parcel_id, item_id, acquired_on, source, path) "
            "SELECT p.parcel_id, i.item_id, (i.datetime AT TIME ZONE %(tz)s)::date, 'catalogue:' || i.collection, "
            "i.cog_path {cand} ").format(cand=cand).as_string(conn).replace("FROM _sup_p p ", (
                "FROM _sup_p p CROSS JOIN LATERAL ("
                "SELECT i.item_id, i.datetime, i.collection, i.cog_path FROM imagery_items i "
                "WHERE i.collection = %(green_collection)s AND i.datetime < %(end)s "
                "AND i.footprint && p.g4490 AND ST_Covers(i.footprint, p.g4490) "
                "ORDER BY i.datetime DESC LIMIT 1) i "), 1),
            {**params, "end": end, "tz": str(eng.at.tzinfo)}).rowcount
        if n:
            eng.used["green_imagery"] = f"catalogue:{params['green_collection']}"
    layer = eng.layers.get("imagery", "imagery")
    if layer in eng.registry:
        # rows whose acquired_on looks like a date but is none (2025-02-30) would fail the cast below
        # for every parcel they meet: found here (a handful of rows), left out with a note
        rows = conn.execute(sql.SQL(
            "SELECT f.fid, f.properties ->> 'acquired_on' FROM {part} f WHERE f.layer = {layer} AND {cond} "
            "AND f.properties ->> 'path' IS NOT NULL "
            "AND f.properties ->> 'acquired_on' ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}'").format(
                part=sql.Identifier(store.partition_name(layer)), layer=sql.Literal(layer),
                cond=eng.temporal("f"))).fetchall()
        undated = sorted(fid for fid, day in rows if not _is_date(day[:10]))
        if undated:
            eng.notes.append(f"R9: imagery layer {layer!r} rows whose acquired_on is no date (YYYY-MM-DD) were left "
                             f"out: {', '.join(map(repr, undated[:10]))}")
        epochs = sql.SQL(
            "SELECT coalesce(f.properties ->> 'epoch_id', f.fid) AS item_id, "
            "left(f.properties ->> 'acquired_on', 10)::date AS acquired_on, f.properties ->> 'path' AS path "
            "FROM {part} f WHERE f.layer = {layer} AND {cond} AND f.properties ->> 'path' IS NOT NULL "
            # CASE: the cast only where the checks passed (PostgreSQL may order AND-ed conditions)
            "AND CASE WHEN f.properties ->> 'acquired_on' ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}' "
            "AND f.fid <> ALL(%(undated)s) THEN left(f.properties ->> 'acquired_on', 10)::date END <= %(as_of)s "
            "AND f.geom && p.g4490 AND ST_Covers(f.geom, p.g4490) "
            "ORDER BY 2 DESC, f.fid LIMIT 1").format(
                part=sql.Identifier(store.partition_name(layer)), layer=sql.Literal(layer), cond=eng.temporal("f"))
        q = sql.SQL(
            "INSERT INTO _sup_green (parcel_id, item_id, acquired_on, source, path) "
            "SELECT p.parcel_id, e.item_id, e.acquired_on, {src}, e.path {cand} {not_yet}").format(
                src=sql.Literal(f"layer:{layer}"), cand=cand, not_yet=not_yet).as_string(conn)
        q = q.replace("FROM _sup_p p ", "FROM _sup_p p CROSS JOIN LATERAL (" + epochs.as_string(conn) + ") e ", 1)
        if conn.execute(q, {**params, "undated": undated}).rowcount:
            eng.used["imagery"] = layer
    uncovered = conn.execute(sql.SQL("SELECT count(*) {cand} {not_yet}").format(cand=cand, not_yet=not_yet),
                             params).fetchone()[0]
    if uncovered:
        eng.notes.append(f"R9: no imagery epoch at or before {eng.as_of} covers {uncovered} industrial parcel(s) "
                         "without a green-ratio value: their green ratio was not checked")
    return _read_pixels(eng, params)


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def parcel_window(src, bounds, *, clip: bool = True):
    """The pixel window of ``src`` over ``bounds`` (in the raster's CRS), whole pixels; None when
    it misses the raster (a parcel outside the imagery: rasterio's intersection raises then).
    ``clip``: cut to the raster (else the whole window, for a boundless read)."""
    # deferred: rasterio loads GDAL (~0.1–0.4 s), which only runs that read imagery need
    import rasterio
    from rasterio.windows import Window, from_bounds

    try:
        w = from_bounds(*bounds, src.transform).round_offsets().round_lengths()
        inter = w.intersection(Window(0, 0, src.width, src.height))
    except rasterio.errors.WindowError:
        return None
    if inter.width < 1 or inter.height < 1:
        return None
    return inter if clip else w


def green_fraction(src, geom, threshold: float) -> tuple[float | None, int]:
    """(green fraction, pixels) of the pixel centres of ``src`` inside ``geom`` (in the raster's
    CRS); (None, 0) when no pixel centre lies inside."""
    from rasterio.enums import MaskFlags  # deferred: see parcel_window
    from rasterio.features import geometry_mask

    w = parcel_window(src, geom.bounds)
    if w is None:
        return None, 0
    data = src.read([1, 2, 3], window=w).astype(np.float32)
    inside = ~geometry_mask([geom], out_shape=data.shape[1:], transform=src.window_transform(w))
    if src.nodata is not None or any(MaskFlags.all_valid not in f for f in src.mask_flag_enums[:3]):
        inside &= src.dataset_mask(window=w) > 0  # nodata, alpha or internal mask: not ground
    n = int(inside.sum())
    if n == 0:
        return None, 0
    r, g, b = data
    exg = (2 * g - r - b) / np.maximum(r + g + b, 1.0)
    return float((exg[inside] > threshold).sum()) / n, n


def _read_pixels(eng, params: dict) -> int:
    import rasterio  # deferred: see parcel_window

    conn = eng.conn
    paths = [r[0] for r in conn.execute("SELECT DISTINCT path FROM _sup_green ORDER BY path").fetchall()]
    values: list[tuple[str, float, int]] = []
    too_small = 0
    # s3:// epochs (object storage): the store's settings for GDAL's /vsis3/ around every read
    with objectstore.rasterio_env():
        for path in paths:
            try:
                src = rasterio.open(path)
            except (OSError, rasterio.errors.RasterioIOError) as exc:
                n = conn.execute("SELECT count(*) FROM _sup_green WHERE path = %s", (path,)).fetchone()[0]
                eng.notes.append(f"R9: cannot read imagery {path} ({exc}); the green ratio of {n} parcel(s) was not "
                                 "measured — restore the file or re-register the epoch")
                continue
            with src:
                if src.count < 3 or src.crs is None or src.crs.to_epsg() is None:
                    eng.notes.append(f"R9: imagery {path} is not an RGB raster with an EPSG CRS; green ratio not measured")
                    continue
                rows = conn.execute(
                    "SELECT g.parcel_id, ST_AsBinary(ST_Transform(p.g4490, %s)) FROM _sup_green g "
                    "JOIN _sup_p p USING (parcel_id) WHERE g.path = %s ORDER BY g.parcel_id",
                    (src.crs.to_epsg(), path)).fetchall()
                geoms = shapely.from_wkb([bytes(r[1]) for r in rows])
                for (pid, _), geom in zip(rows, geoms):
                    try:
                        ratio, n = green_fraction(src, geom, params["green_index_min"])
                    except (OSError, rasterio.errors.RasterioError, shapely.errors.GEOSException, ValueError) as exc:
                        # a damaged block, a geometry the mask cannot take: this parcel only
                        eng.notes.append(f"R9: cannot read imagery {path} for parcel {pid!r} ({exc}); its green ratio "
                                         "was not measured")
                        continue
                    if ratio is None:
                        too_small += 1
                        continue
                    values.append((pid, ratio, n))
    if too_small:
        eng.notes.append(f"R9: {too_small} industrial parcel(s) hold no pixel centre of their imagery (smaller than "
                         "a pixel or over nodata): green ratio not measured")
    if values:
        conn.execute("CREATE TEMP TABLE _sup_green_v (parcel_id text, green_ratio float8, pixels int) ON COMMIT DROP")
        with conn.cursor().copy("COPY _sup_green_v FROM STDIN") as cp:
            for row in values:
                cp.write_row(row)
        conn.execute("UPDATE _sup_green g SET green_ratio = v.green_ratio, pixels = v.pixels "
                     "FROM _sup_green_v v WHERE v.parcel_id = g.parcel_id")
    return len(values)
