"""Rule family "schedule": payments, start, idle land, stalled and late projects (R1–R7).

Each function returns one set-based SELECT over the run's parcel snapshot ``_sup_p`` (typed
columns, geometry ``g`` in EPSG:4547, see ``engine.snapshot``) with the engine's standard
columns: subject_id, parcel_id, severity, message, measures, sources, area_m2, evidence.
``%(as_of)s`` is the run's date; every threshold is a bound parameter from the catalogue.

Definitions (domain brief §2 and issue 6): dates are whole days; "one year" is 365 days; a start
or completion reported after the run's date does not count as of that date; the approved
extension counts up to ``max_extension_days`` (one year); an Art. 8 exemption (``exemption`` not
empty) suspends the idle clock, so R3–R5 skip the parcel.
"""

from __future__ import annotations

from psycopg import sql

#: (SQL, params) for a rule given its parameters
NOT_STARTED = "(p.actual_start IS NULL OR p.actual_start > %(as_of)s)"
NOT_COMPLETED = "(p.actual_completion IS NULL OR p.actual_completion > %(as_of)s)"
NOT_EXEMPT = "coalesce(btrim(p.exemption), '') = ''"
START_DEADLINE = "(p.agreed_start + least(coalesce(p.extension_days, 0), %(max_extension_days)s)::int)"
COMMON = ("p.parcel_id AS subject_id, p.parcel_id, %(severity)s::text AS severity, "
          "jsonb_build_object('parcels', p.vid) AS sources, p.area_m2, p.g AS evidence")


def r1(P: dict) -> tuple[sql.Composable, dict]:
    q = f"""
    SELECT {COMMON},
           format('出让价款于 %%s 到期（%%s 天后），尚未缴纳', p.payment_due, p.payment_due - %(as_of)s) AS message,
           jsonb_build_object('payment_due', p.payment_due, 'days_to_due', p.payment_due - %(as_of)s,
                              'price_cny', p.price_cny) AS measures
    FROM _sup_p p
    WHERE p.payment_due BETWEEN %(as_of)s AND %(as_of)s + %(warn_days)s::int
      AND (p.payment_received IS NULL OR p.payment_received > %(as_of)s)
    """
    return sql.SQL(q), P


def r2(P: dict) -> tuple[sql.Composable, dict]:
    q = f"""
    WITH d AS (
        SELECT p.*, {START_DEADLINE} AS start_deadline,
               p.agreed_completion + coalesce(p.extension_days, 0) AS completion_deadline
        FROM _sup_p p
    ), w AS (
        SELECT d.*,
               CASE WHEN {NOT_STARTED.replace('p.', 'd.')}
                         AND d.start_deadline BETWEEN %(as_of)s AND %(as_of)s + %(warn_days)s::int THEN 'start'
                    WHEN {NOT_COMPLETED.replace('p.', 'd.')}
                         AND d.completion_deadline BETWEEN %(as_of)s AND %(as_of)s + %(warn_days)s::int THEN 'completion'
               END AS what
        FROM d
    )
    SELECT {COMMON.replace('p.', 'w.')},
           CASE w.what WHEN 'start' THEN format('约定开工期限 %%s（%%s 天后），尚未开工', w.start_deadline, w.start_deadline - %(as_of)s)
                ELSE format('约定竣工期限 %%s（%%s 天后），尚未竣工', w.completion_deadline, w.completion_deadline - %(as_of)s) END AS message,
           jsonb_build_object('deadline_kind', w.what,
                              'deadline', CASE w.what WHEN 'start' THEN w.start_deadline ELSE w.completion_deadline END,
                              'days_left', CASE w.what WHEN 'start' THEN w.start_deadline ELSE w.completion_deadline END - %(as_of)s,
                              'agreed_start', w.agreed_start, 'agreed_completion', w.agreed_completion,
                              'extension_days', coalesce(w.extension_days, 0)) AS measures
    FROM w WHERE w.what IS NOT NULL
    """
    return sql.SQL(q), P


def _idle(P: dict, *, min_days_param: str, extra: str, message: str) -> tuple[sql.Composable, dict]:
    q = f"""
    WITH d AS (
        SELECT p.*, {START_DEADLINE} AS start_deadline, %(as_of)s - {START_DEADLINE} AS days
        FROM _sup_p p
        WHERE {NOT_STARTED} AND {NOT_EXEMPT} AND p.agreed_start IS NOT NULL
    )
    SELECT {COMMON.replace('p.', 'd.')}, {message} AS message,
           jsonb_build_object('start_deadline', d.start_deadline, 'agreed_start', d.agreed_start,
                              'extension_days', coalesce(d.extension_days, 0),
                              'days', d.days, 'years', round(d.days / 365.0, 2),
                              'price_cny', d.price_cny, 'area', sup_area_units(d.area_m2){extra}) AS measures
    FROM d WHERE d.days >= {min_days_param}
    """
    return sql.SQL(q), P


def r3(P: dict) -> tuple[sql.Composable, dict]:
    """Late start: the start deadline (agreed start + extension ≤ 1 year) has passed, no start;
    penalty = price × rate‰ × days late."""
    return _idle(
        P, min_days_param="1",
        extra=", 'days_late', d.days, 'penalty_per_mille_per_day', %(penalty_per_mille_per_day)s::float8, "
              "'penalty_cny', round((d.price_cny * %(penalty_per_mille_per_day)s::float8 / 1000.0 * d.days)::numeric, 2)",
        message="format('逾期开工 %%s 天（开工期限 %%s），违约金约 %%s 元', d.days, d.start_deadline, "
                "round((d.price_cny * %(penalty_per_mille_per_day)s::float8 / 1000.0 * d.days)::numeric, 2))")


def r4(P: dict) -> tuple[sql.Composable, dict]:
    return _idle(
        P, min_days_param="%(idle_days)s::int",
        extra=", 'idle_days', d.days, 'fee_rate', %(fee_rate)s::float8, "
              "'idle_fee_cny', round((d.price_cny * %(fee_rate)s::float8)::numeric, 2)",
        message="format('闲置 %%s 天（满一年），应按出让价款 %%s%%%% 征缴土地闲置费 %%s 元', d.days, "
                "round((%(fee_rate)s::float8 * 100)::numeric, 1), round((d.price_cny * %(fee_rate)s::float8)::numeric, 2))")


def r5(P: dict) -> tuple[sql.Composable, dict]:
    return _idle(
        P, min_days_param="%(idle_days)s::int",
        extra=", 'idle_days', d.days, 'action', 'recovery'",
        message="format('闲置 %%s 天（满两年），可无偿收回土地使用权（%%s 公顷）', d.days, round((d.area_m2 / 10000)::numeric, 4))")


def r6(P: dict) -> tuple[sql.Composable, dict]:
    q = f"""
    WITH d AS (
        SELECT p.*, %(as_of)s - p.stopped_since AS stopped_days,
               p.gfa_built_m2 / nullif(p.gfa_due_m2, 0) AS built_ratio,
               p.investment_done_cny / nullif(p.investment_total_cny, 0) AS invest_ratio
        FROM _sup_p p
        WHERE p.actual_start <= %(as_of)s AND {NOT_COMPLETED}
          AND p.stopped_since <= %(as_of)s
    )
    SELECT {COMMON.replace('p.', 'd.')},
           format('已动工但停工 %%s 天；已开发 %%s%%%%，已投资 %%s%%%%', d.stopped_days,
                  round((d.built_ratio * 100)::numeric, 1), round((d.invest_ratio * 100)::numeric, 1)) AS message,
           jsonb_build_object('stopped_since', d.stopped_since, 'stopped_days', d.stopped_days,
                              'built_ratio', round(d.built_ratio::numeric, 4), 'built_ratio_min', %(built_ratio_min)s::float8,
                              'invest_ratio', round(d.invest_ratio::numeric, 4), 'invest_ratio_min', %(invest_ratio_min)s::float8,
                              'gfa_built_m2', d.gfa_built_m2, 'gfa_due_m2', d.gfa_due_m2,
                              'investment_done_cny', d.investment_done_cny,
                              'investment_total_cny', d.investment_total_cny) AS measures
    FROM d
    WHERE d.stopped_days >= %(stopped_days)s::int
      AND (d.built_ratio < %(built_ratio_min)s::float8 OR d.invest_ratio < %(invest_ratio_min)s::float8)
    """
    return sql.SQL(q), P


def r7(P: dict) -> tuple[sql.Composable, dict]:
    if P["basis"] == "shenzhen_housing":
        deadline = ("(p.contract_date + make_interval(years => %(housing_years)s::int))::date"
                    " + CASE WHEN coalesce(p.basement_levels, 0) >= %(deep_basement_levels)s::int"
                    " THEN %(deep_basement_extra_days)s::int ELSE 0 END")
    else:
        deadline = "p.agreed_completion + coalesce(p.extension_days, 0)"
    q = f"""
    WITH d AS (SELECT p.*, {deadline} AS deadline FROM _sup_p p WHERE {NOT_COMPLETED})
    SELECT {COMMON.replace('p.', 'd.')},
           format('竣工期限 %%s 已过 %%s 天，尚未竣工', d.deadline, %(as_of)s - d.deadline) AS message,
           jsonb_build_object('deadline', d.deadline, 'days_late', %(as_of)s - d.deadline, 'basis', %(basis)s::text,
                              'started', d.actual_start <= %(as_of)s, 'agreed_completion', d.agreed_completion,
                              'extension_days', coalesce(d.extension_days, 0)) AS measures
    FROM d WHERE d.deadline < %(as_of)s
    """
    return sql.SQL(q), P


RULES = {"R1": r1, "R2": r2, "R3": r3, "R4": r4, "R5": r5, "R6": r6, "R7": r7}
