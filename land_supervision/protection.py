"""Rule family "protection": protected land occupied (R12) and land approved but not supplied (R13).

R12 looks at parcels with no approval id attached (or, with ``approval_must_exist``, whose
attached ids name no approval batch valid at the run's date) and measures their overlap with each
protected source (permanent basic farmland, farmland = land-use codes 0101–0103, forest land =
03xx, ecological red line; the list is the ``sources`` parameter). The protected layers are read
straight from their partitions with the store's temporal filter, through their GiST index, only
around the candidate parcels. A finding when the union of the overlaps exceeds
``min_overlap_m2``; per-kind areas in m² / 公顷 / 亩, evidence = the overlap.

R13: approval polygons valid at the run's date, minus the union of the parcels supplied by then
(parcels of the snapshot with a contract date on or before it); a finding when more than
``min_area_m2`` is left, with the batch's age. Evaluated per polygon part of the batch: a part one
supplied parcel covers (ST_Covers through the GiST index; first: is it the same polygon as a
parcel, bbox equality ``~=`` through the index and ST_Normalize equality) leaves nothing without
any overlay.
"""

from __future__ import annotations

from psycopg import sql

from spatial_api import store

SPLIT_IDS = r"'\s*[,;，；、/]\s*|\s+'"


def r12(P: dict, *, sources: list[dict], temporal, have_approvals: bool) -> tuple[sql.Composable, dict]:
    """``sources``: the ``sources`` parameter with each role resolved to a layer name;
    ``temporal(alias)``: the store's temporal filter for the run, as SQL."""
    params = dict(P)
    parts = []
    # sources reading the same layer by code (farmland 01xx and forest 03xx from land_use): one
    # index probe per candidate for the group, each row tagged with the kinds whose prefixes it has
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for i, s in enumerate(sources):
        key = (s["layer"], s.get("code_field", "dlbm")) if s.get("code_prefixes") else (s["layer"], None, i)
        groups.setdefault(key, []).append((i, s))
    for key, members in groups.items():
        layer = key[0]
        cond = [sql.SQL("f.layer = {}").format(sql.Literal(layer)), sql.SQL("f.geom && c.g4490"),
                temporal("f"), sql.SQL("ST_Intersects(f.geom, c.g4490)")]
        kinds = []
        if len(key) == 2:  # by code
            code = sql.SQL("(f.properties ->> {})").format(sql.Literal(key[1]))
            every = []
            for i, s in members:
                params[f"prefixes_{i}"] = [str(p) + "%" for p in s["code_prefixes"]]
                every += params[f"prefixes_{i}"]
                kinds.append(sql.SQL("({}::text, {}::text, %({})s::text[])").format(
                    sql.Literal(s["kind"]), sql.Literal(s.get("severity", "high")), sql.SQL(f"prefixes_{i}")))
            params[f"prefixes_all_{members[0][0]}"] = every
            cond.append(sql.SQL("{} LIKE ANY(%({})s::text[])").format(code, sql.SQL(f"prefixes_all_{members[0][0]}")))
            tag = sql.SQL("JOIN (VALUES {}) k(kind, sev, pre) ON {} LIKE ANY(k.pre)").format(
                sql.SQL(", ").join(kinds), code)
        else:
            s = members[0][1]
            tag = sql.SQL("CROSS JOIN (VALUES ({}::text, {}::text)) k(kind, sev)").format(
                sql.Literal(s["kind"]), sql.Literal(s.get("severity", "high")))
        # candidates outside, the partition's GiST index probed per candidate (OFFSET 0 keeps the
        # planner from turning the red-line join around into a loop over its few huge polygons,
        # each detoasted again for every candidate's bbox test: 20% more CPU, measured)
        parts.append(sql.SQL(
            "SELECT c.parcel_id, k.kind, k.sev, f.fid, f.vid, "
            "ST_CollectionExtract(ST_Intersection(c.g, ST_Transform(f.geom, 4547)), 3) AS g "
            "FROM cand c CROSS JOIN LATERAL (SELECT f.fid, f.vid, f.geom, f.properties FROM {part} f "
            "WHERE {cond} OFFSET 0) f {tag}"
        ).format(part=sql.Identifier(store.partition_name(layer)), cond=sql.SQL(" AND ").join(cond), tag=tag))
    unknown = ("(SELECT array_agg(i) FROM unnest(p.ids) i WHERE i <> '' AND NOT EXISTS "
               "(SELECT 1 FROM _sup_a a WHERE a.approval_id = i AND (a.approved_on IS NULL OR a.approved_on <= %(as_of)s)))"
               if have_approvals else "NULL::text[]")
    q = sql.SQL("""
    WITH ids AS (
        SELECT p.*, regexp_split_to_array(btrim(coalesce(p.approval_ids, '')), {split}) AS ids FROM _sup_p p
    ), withunk AS (
        SELECT p.*, {unknown} AS unknown_ids FROM ids p
    ), cand AS (
        SELECT * FROM withunk p
        WHERE coalesce(btrim(p.approval_ids), '') = ''
           OR (%(approval_must_exist)s AND p.unknown_ids IS NOT NULL)
    ), ov AS ({union}), per_kind AS (
        SELECT parcel_id, kind, min(sev) AS sev, ST_Union(g) AS g,
               jsonb_agg(jsonb_build_object('fid', fid, 'vid', vid) ORDER BY vid) AS src
        FROM ov WHERE NOT ST_IsEmpty(g) GROUP BY parcel_id, kind
    ), per_parcel AS (
        SELECT parcel_id,
               jsonb_object_agg(kind, sup_area_units(ST_Area(g))) AS by_kind,
               jsonb_object_agg(kind, src) AS src,
               bool_or(sev = 'critical' AND ST_Area(g) > %(min_overlap_m2)s::float8) AS critical,
               ST_Union(g) AS g
        FROM per_kind GROUP BY parcel_id
    )
    SELECT c.parcel_id AS subject_id, c.parcel_id,
           CASE WHEN pp.critical THEN 'critical' ELSE 'high' END AS severity,
           ST_Area(pp.g) AS area_m2,
           format('占用受保护土地 %%s 平方米（%%s 亩）：%%s；%%s', round(ST_Area(pp.g)::numeric, 1),
                  round((ST_Area(pp.g) * 15 / 10000)::numeric, 3),
                  (SELECT string_agg(k, '、' ORDER BY k) FROM jsonb_object_keys(pp.by_kind) k),
                  CASE WHEN c.unknown_ids IS NOT NULL AND coalesce(btrim(c.approval_ids), '') <> ''
                       THEN format('所附批文 %%s 不存在', array_to_string(c.unknown_ids, ','))
                       ELSE '无用地批准文号' END) AS message,
           jsonb_build_object('overlap', sup_area_units(ST_Area(pp.g)), 'by_kind', pp.by_kind,
                              'approval_ids', c.approval_ids,
                              'unknown_approval_ids', to_jsonb(c.unknown_ids)) AS measures,
           jsonb_build_object('parcels', c.vid, 'protected', pp.src) AS sources,
           pp.g AS evidence
    FROM per_parcel pp JOIN cand c USING (parcel_id)
    WHERE ST_Area(pp.g) > %(min_overlap_m2)s::float8
    """).format(split=sql.SQL(SPLIT_IDS), unknown=sql.SQL(unknown),
                union=sql.SQL(" UNION ALL ").join(parts))
    return q, params


def r13(P: dict) -> tuple[sql.Composable, dict]:
    # Per polygon part of each batch (ST_Dump: parts are disjoint, so the difference distributes
    # over them): a part that one supplied parcel covers leaves nothing (on the demo 4,170 of 4,240
    # parts — a batch is the union of its parcels), which an indexed ST_Covers settles without any
    # overlay; only the other parts are differenced with the union of the parcels they meet.
    # (Measured on the large district: 0.5 s instead of 2.2 s for union + difference per batch.)
    q = """
    WITH a AS (
        SELECT a.* FROM _sup_a a WHERE a.approved_on IS NULL OR a.approved_on <= %(as_of)s
    ), parts AS (
        SELECT a.approval_id, d.geom AS g FROM a, ST_Dump(a.g) d
    ), open_parts AS (
        SELECT pt.* FROM parts pt
        -- the same polygon as a supplied parcel (same bbox through the index, then equal once
        -- normalised: a quarter of ST_Covers' cost), else covered by one
        WHERE NOT EXISTS (SELECT 1 FROM _sup_p p WHERE p.g ~= pt.g AND ST_Normalize(p.g) = ST_Normalize(pt.g)
                            AND (p.contract_date IS NULL OR p.contract_date <= %(as_of)s))
          AND NOT EXISTS (SELECT 1 FROM _sup_p p WHERE p.g && pt.g AND ST_Covers(p.g, pt.g)
                            AND (p.contract_date IS NULL OR p.contract_date <= %(as_of)s))
    ), left_parts AS (
        SELECT o.approval_id,
               CASE WHEN s.u IS NULL THEN o.g ELSE ST_CollectionExtract(ST_Difference(o.g, s.u), 3) END AS g
        FROM open_parts o
        LEFT JOIN LATERAL (
            SELECT ST_Union(p.g) AS u FROM _sup_p p
            WHERE p.g && o.g AND ST_Intersects(p.g, o.g) AND (p.contract_date IS NULL OR p.contract_date <= %(as_of)s)
        ) s ON true
    ), per AS (
        SELECT approval_id, ST_CollectionExtract(ST_Collect(g), 3) AS left_g
        FROM left_parts WHERE NOT ST_IsEmpty(g) GROUP BY approval_id
    ), d AS (
        SELECT a.*, per.left_g, %(as_of)s - a.approved_on AS age_days,
               (SELECT jsonb_agg(p.parcel_id ORDER BY p.parcel_id) FROM _sup_p p
                WHERE p.g && a.g AND ST_Intersects(p.g, a.g)
                  AND (p.contract_date IS NULL OR p.contract_date <= %(as_of)s)) AS vids
        FROM a JOIN per USING (approval_id)
        WHERE ST_Area(per.left_g) > %(min_area_m2)s::float8
    )
    SELECT d.approval_id AS subject_id, NULL::text AS parcel_id,
           CASE WHEN d.age_days >= %(high_after_days)s::int THEN 'high' ELSE %(severity)s::text END AS severity,
           ST_Area(d.left_g) AS area_m2,
           format('批准 %%s 公顷，未供应 %%s 公顷（%%s 亩），批准已 %%s 天', round((ST_Area(d.g) / 10000)::numeric, 4),
                  round((ST_Area(d.left_g) / 10000)::numeric, 4), round((ST_Area(d.left_g) * 15 / 10000)::numeric, 2),
                  d.age_days) AS message,
           jsonb_build_object('approved_on', d.approved_on, 'age_days', d.age_days,
                              'age_years', round(d.age_days / 365.0, 2),
                              'approved_area', sup_area_units(ST_Area(d.g)),
                              'unsupplied_area', sup_area_units(ST_Area(d.left_g)),
                              'supplied_share', round((1 - ST_Area(d.left_g) / nullif(ST_Area(d.g), 0))::numeric, 4),
                              'supplying_parcels', coalesce(d.vids, '[]'::jsonb),
                              'batch_type', d.batch_type, 'name', d.name) AS measures,
           jsonb_build_object('approvals', d.vid) AS sources,
           d.left_g AS evidence
    FROM d
    """
    return sql.SQL(q), P
