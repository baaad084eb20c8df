"""Rule family "planning": buildings against their parcel's planning conditions (R8–R11).

Reads the parcel snapshot ``_sup_p`` and the building snapshot ``_sup_b`` (buildings whose
``parcel_id`` names a parcel of the snapshot; ``gfa`` = gfa_m2, or floors × footprint where it is
empty; ``foot`` = footprint area; geometry ``g`` in EPSG:4547). Areas in m² of EPSG:4547.

- R8: FAR = Σ gfa ÷ parcel area, density = Σ footprint ÷ parcel area, compared rounded to
  ``decimals`` (a value exactly at the limit is inside): FAR > far_max, density > density_max,
  and, once the project is completed, FAR < far_min.
- R9: completed industrial parcels: coverage (建筑系数) < coverage_min, office / living footprint
  share > office_share_max, green ratio > green_ratio_max — the parcel's ``green_ratio_field`` where
  it is filled, else the value measured from imagery (``greenness.py``, temp table ``_sup_green``).
- R10: a building taller than height_max_m (+ tolerance); a footprint with more than
  area_tolerance_m2 outside the parcel shrunk inward by setback_m (mitred).
- R11: a building part lying more than distance_tolerance_m outside its parcel and larger than
  area_tolerance_m2; evidence = the whole part of the footprint outside the parcel.
"""

from __future__ import annotations

from psycopg import sql

COMMON = ("p.parcel_id AS subject_id, p.parcel_id, %(severity)s::text AS severity, p.area_m2")


def r8(P: dict) -> tuple[sql.Composable, dict]:
    q = f"""
    WITH b AS (
        SELECT parcel_id, sum(gfa) AS gfa, sum(foot) AS foot, count(*) AS n, jsonb_agg(vid ORDER BY vid) AS vids
        FROM _sup_b GROUP BY parcel_id
    ), d AS (
        SELECT p.*, b.gfa, b.foot, b.n, b.vids,
               round((b.gfa / p.area_m2)::numeric, %(decimals)s::int) AS far,
               round((b.foot / p.area_m2)::numeric, %(decimals)s::int) AS density,
               (p.actual_completion <= %(as_of)s) AS completed
        FROM _sup_p p JOIN b USING (parcel_id)
    ), c AS (
        SELECT d.*, array_remove(ARRAY[
                   CASE WHEN d.far > d.far_max THEN format('容积率 %%s > 上限 %%s', d.far, d.far_max) END,
                   CASE WHEN d.completed AND d.far < d.far_min THEN format('容积率 %%s < 下限 %%s（已竣工）', d.far, d.far_min) END,
                   CASE WHEN d.density > d.density_max THEN format('建筑密度 %%s > 上限 %%s', d.density, d.density_max) END
               ], NULL) AS problems
        FROM d
    )
    SELECT {COMMON.replace('p.', 'c.')}, array_to_string(c.problems, '；') AS message,
           jsonb_build_object('far', c.far, 'far_max', c.far_max, 'far_min', c.far_min,
                              'density', c.density, 'density_max', c.density_max,
                              'gfa_m2', round(c.gfa::numeric, 2), 'footprint_m2', round(c.foot::numeric, 2),
                              'parcel_area', sup_area_units(c.area_m2), 'buildings', c.n,
                              'completed', coalesce(c.completed, false)) AS measures,
           jsonb_build_object('parcels', c.vid, 'buildings', c.vids) AS sources,
           c.g AS evidence
    FROM c WHERE cardinality(c.problems) > 0
    """
    return sql.SQL(q), P


def r9(P: dict, *, green_field: bool) -> tuple[sql.Composable, dict]:
    """``_sup_green`` (parcel_id, green_ratio, pixels, item_id, acquired_on, source) holds the
    measured green ratios (possibly none)."""
    field = "(p.props ->> %(green_ratio_field)s)::float8" if green_field else "NULL::float8"
    q = f"""
    WITH b AS (
        SELECT parcel_id, sum(foot) AS foot,
               coalesce(sum(foot) FILTER (WHERE use = ANY(%(office_uses)s::text[])), 0) AS office_foot,
               jsonb_agg(vid ORDER BY vid) AS vids
        FROM _sup_b GROUP BY parcel_id
    ), d AS (
        SELECT p.*, coalesce(b.foot, 0) AS foot, coalesce(b.office_foot, 0) AS office_foot, b.vids,
               round((coalesce(b.foot, 0) / p.area_m2)::numeric, %(decimals)s::int) AS coverage,
               round((coalesce(b.office_foot, 0) / p.area_m2)::numeric, %(decimals)s::int) AS office_share,
               round(coalesce({field}, gr.green_ratio)::numeric, %(decimals)s::int) AS green_ratio,
               CASE WHEN {field} IS NOT NULL THEN 'field'
                    WHEN gr.green_ratio IS NOT NULL THEN 'imagery' END AS green_source,
               CASE WHEN {field} IS NULL AND gr.green_ratio IS NOT NULL THEN jsonb_build_object(
                   'item_id', gr.item_id, 'acquired_on', gr.acquired_on, 'source', gr.source,
                   'pixels', gr.pixels, 'green_ratio', round(gr.green_ratio::numeric, 4),
                   'index', 'ExG = (2G - R - B) / (R + G + B)', 'threshold', %(green_index_min)s::float8) END AS green_imagery
        FROM _sup_p p LEFT JOIN b USING (parcel_id) LEFT JOIN _sup_green gr USING (parcel_id)
        WHERE p.land_use_code = ANY(%(industrial_codes)s::text[]) AND p.actual_completion <= %(as_of)s
    ), c AS (
        SELECT d.*, array_remove(ARRAY[
                   CASE WHEN d.coverage < %(coverage_min)s::numeric THEN format('建筑系数 %%s < %%s', d.coverage, %(coverage_min)s::numeric) END,
                   CASE WHEN d.office_share > %(office_share_max)s::numeric THEN format('行政办公及生活服务设施占比 %%s > %%s', d.office_share, %(office_share_max)s::numeric) END,
                   CASE WHEN d.green_ratio > %(green_ratio_max)s::numeric THEN format('绿地率 %%s > %%s', d.green_ratio, %(green_ratio_max)s::numeric) END
               ], NULL) AS problems
        FROM d
    )
    SELECT {COMMON.replace('p.', 'c.')}, array_to_string(c.problems, '；') AS message,
           jsonb_build_object('coverage', c.coverage, 'coverage_min', %(coverage_min)s::float8,
                              'office_share', c.office_share, 'office_share_max', %(office_share_max)s::float8,
                              'green_ratio', c.green_ratio, 'green_ratio_max', %(green_ratio_max)s::float8,
                              'green_ratio_source', c.green_source, 'green_imagery', c.green_imagery,
                              'footprint_m2', round(c.foot::numeric, 2), 'office_footprint_m2', round(c.office_foot::numeric, 2),
                              'parcel_area', sup_area_units(c.area_m2)) AS measures,
           jsonb_build_object('parcels', c.vid, 'buildings', coalesce(c.vids, '[]'::jsonb)) AS sources,
           c.g AS evidence
    FROM c WHERE cardinality(c.problems) > 0
    """
    return sql.SQL(q), P


def r10(P: dict) -> tuple[sql.Composable, dict]:
    q = f"""
    WITH inner_zone AS MATERIALIZED (  -- one buffer per parcel, not one per building and use
        SELECT p.parcel_id, ST_Buffer(p.g, -p.setback_m, 'join=mitre') AS gi
        FROM _sup_p p WHERE p.setback_m > 0 AND EXISTS (SELECT 1 FROM _sup_b b WHERE b.parcel_id = p.parcel_id)
    ), hits AS (
        SELECT b.parcel_id, b.building_id, b.vid, b.g AS bg, b.height_m, p.height_max_m,
               b.height_m > p.height_max_m + %(height_tolerance_m)s::float8 AS too_tall,
               s.part AS setback_part, coalesce(ST_Area(s.part), 0) AS setback_area
        FROM _sup_b b JOIN _sup_p p USING (parcel_id)
        LEFT JOIN inner_zone i USING (parcel_id)
        -- one ST_CoveredBy per building, evaluated once (as a join filter it cost twice the CPU)
        CROSS JOIN LATERAL (
            SELECT CASE WHEN i.gi IS NOT NULL AND NOT ST_CoveredBy(b.g, i.gi) THEN ST_Difference(b.g, i.gi) END AS part
            OFFSET 0
        ) s
    ), bad AS (
        SELECT h.*, h.setback_area > %(area_tolerance_m2)s::float8 AS in_setback
        FROM hits h
        WHERE h.too_tall OR h.setback_area > %(area_tolerance_m2)s::float8
    ), agg AS (
        SELECT bad.parcel_id,
               max(bad.height_m) FILTER (WHERE too_tall) AS max_height_m,
               jsonb_agg(bad.building_id ORDER BY bad.building_id) FILTER (WHERE too_tall) AS too_tall_ids,
               jsonb_agg(bad.building_id ORDER BY bad.building_id) FILTER (WHERE in_setback) AS setback_ids,
               coalesce(sum(bad.setback_area) FILTER (WHERE in_setback), 0) AS setback_area,
               jsonb_agg(bad.vid ORDER BY bad.vid) AS vids,
               ST_Collect(CASE WHEN in_setback THEN setback_part END) AS g_setback,
               ST_Collect(CASE WHEN too_tall AND NOT in_setback THEN bad.bg END) AS g_tall
        FROM bad GROUP BY bad.parcel_id
    )
    SELECT {COMMON}, concat_ws('；',
               CASE WHEN a.too_tall_ids IS NOT NULL THEN format('建筑高度 %%s 米 > 限高 %%s 米', a.max_height_m, p.height_max_m) END,
               CASE WHEN a.setback_ids IS NOT NULL THEN format('%%s 栋建筑进入退线范围（%%s 平方米）', jsonb_array_length(a.setback_ids), round(a.setback_area::numeric, 1)) END
           ) AS message,
           jsonb_build_object('max_height_m', a.max_height_m, 'height_max_m', p.height_max_m,
                              'too_tall', coalesce(a.too_tall_ids, '[]'::jsonb),
                              'setback_m', p.setback_m, 'in_setback', coalesce(a.setback_ids, '[]'::jsonb),
                              'setback_area', sup_area_units(a.setback_area)) AS measures,
           jsonb_build_object('parcels', p.vid, 'buildings', a.vids) AS sources,
           CASE WHEN a.g_setback IS NULL THEN a.g_tall WHEN a.g_tall IS NULL THEN a.g_setback
                ELSE ST_Collect(a.g_setback, a.g_tall) END AS evidence
    FROM agg a JOIN _sup_p p USING (parcel_id)
    """
    return sql.SQL(q), P


def r11(P: dict) -> tuple[sql.Composable, dict]:
    q = """
    WITH outside AS (
        SELECT b.parcel_id, b.building_id, b.vid, b.g, p.g AS pg
        FROM _sup_b b JOIN _sup_p p USING (parcel_id)
        WHERE NOT ST_CoveredBy(b.g, p.g)
    ), beyond AS (
        SELECT o.*, ST_Area(ST_Difference(o.g, ST_Buffer(o.pg, %(distance_tolerance_m)s::float8))) AS beyond_area
        FROM outside o
    ), bad AS (
        SELECT bb.*, ST_Difference(bb.g, bb.pg) AS part,
               (SELECT max(ST_Distance(dp.geom, bb.pg)) FROM ST_DumpPoints(bb.g) dp) AS max_distance
        FROM beyond bb WHERE bb.beyond_area > %(area_tolerance_m2)s::float8
    ), agg AS (
        SELECT parcel_id, jsonb_agg(building_id ORDER BY building_id) AS ids, jsonb_agg(vid ORDER BY vid) AS vids,
               sum(ST_Area(part)) AS outside_area, sum(beyond_area) AS beyond_area, max(max_distance) AS max_distance,
               ST_Collect(part) AS part
        FROM bad GROUP BY parcel_id
    )
    SELECT p.parcel_id AS subject_id, p.parcel_id, %(severity)s::text AS severity, a.outside_area AS area_m2,
           format('%%s 栋建筑越出宗地界线，越界面积 %%s 平方米（最远 %%s 米）', jsonb_array_length(a.ids),
                  round(a.outside_area::numeric, 1), round(a.max_distance::numeric, 2)) AS message,
           jsonb_build_object('buildings', a.ids, 'outside_area', sup_area_units(a.outside_area),
                              'beyond_tolerance_m2', round(a.beyond_area::numeric, 2),
                              'max_distance_m', round(a.max_distance::numeric, 2),
                              'distance_tolerance_m', %(distance_tolerance_m)s::float8) AS measures,
           jsonb_build_object('parcels', p.vid, 'buildings', a.vids) AS sources,
           a.part AS evidence
    FROM agg a JOIN _sup_p p USING (parcel_id)
    """
    return sql.SQL(q), P


RULES = {"R8": r8, "R10": r10, "R11": r11}  # R9 needs to know whether the green field exists
