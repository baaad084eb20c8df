"""The rule library as data: ids, defaults from the domain brief, parameter overrides and their
errors (no database)."""

from __future__ import annotations

from datetime import date

import pytest

from land_supervision import catalogue, engine
from land_supervision.catalogue import RULES, RuleError


def test_every_rule_has_basis_titles_and_parameters():
    assert list(RULES) == [f"R{i}" for i in range(1, 14)]
    for rid, r in RULES.items():
        assert r["basis"] and r["title_zh"] and r["title_en"], rid
        assert r["severity"] in catalogue.SEVERITIES
        assert isinstance(r["parameters"], dict) and r["parameters"], rid


def test_defaults_are_the_domain_briefs():
    p = catalogue.parameters()
    assert p["R1"]["warn_days"] == 30 and p["R2"]["warn_days"] == 30
    assert p["R4"]["idle_days"] == 365 and p["R4"]["fee_rate"] == 0.20
    assert p["R5"]["idle_days"] == 730
    assert p["R6"]["built_ratio_min"] == pytest.approx(1 / 3) and p["R6"]["invest_ratio_min"] == 0.25
    assert p["R6"]["stopped_days"] == 365
    assert p["R7"]["housing_years"] == 4 and p["R7"]["deep_basement_levels"] == 3
    assert p["R9"]["coverage_min"] == 0.30 and p["R9"]["office_share_max"] == 0.07
    assert p["R9"]["green_ratio_max"] == 0.20
    # measured from imagery where a parcel has no green_ratio value: excess-green above 0.10
    assert p["R9"]["green_index_min"] == 0.10 and p["R9"]["green_collection"] == "ortho"
    assert catalogue.parameters({"R9.green_index_min": "0.2"}, ["R9"])["R9"]["green_index_min"] == 0.2
    with pytest.raises(RuleError, match=r"R9.green_index_min='lush': expected a number"):
        catalogue.parameters({"R9.green_index_min": "lush"}, ["R9"])
    assert p["R11"]["distance_tolerance_m"] == 1.0 and p["R11"]["area_tolerance_m2"] == 1.0
    kinds = {s["kind"]: s for s in p["R12"]["sources"]}
    assert set(kinds) == {"basic_farmland", "farmland", "forest", "eco_redline"}
    assert kinds["farmland"]["code_prefixes"] == ["0101", "0102", "0103"] and kinds["forest"]["code_prefixes"] == ["03"]


def test_overrides_both_spellings_and_types():
    p = catalogue.parameters({"R4.fee_rate": "0.3", "R11": {"distance_tolerance_m": 2}, "R7.basis": "shenzhen_housing",
                              "R12.approval_must_exist": "false", "R9.industrial_codes": "0601,0602"},
                             ["R4", "R7", "R9", "R11", "R12"])
    assert p["R4"]["fee_rate"] == 0.3 and p["R11"]["distance_tolerance_m"] == 2
    assert p["R7"]["basis"] == "shenzhen_housing" and p["R12"]["approval_must_exist"] is False
    assert p["R9"]["industrial_codes"] == ["0601", "0602"]
    # a parameter of a rule the run leaves out is accepted and ignored
    assert "R4" not in catalogue.parameters({"R4.fee_rate": 0.1}, ["R1"])


@pytest.mark.parametrize("overrides, message", [
    ({"R4.fee_rte": 0.2}, "R4.fee_rte: unknown; R4 takes idle_days, fee_rate, max_extension_days"),
    ({"R4.fee_rate": "twenty"}, "R4.fee_rate='twenty': expected a number"),
    ({"R4.fee_rate": -1}, "expected a number ≥ 0"),
    ({"R44.x": 1}, "unknown rule 'R44'"),
    ({"R7.basis": "national"}, "choose 'agreed' or 'shenzhen_housing'"),
    ({"R12.approval_must_exist": "maybe"}, "expected true or false"),
    ({"R4": 0.2}, "must map parameter names to values"),
])
def test_bad_parameters_are_named(overrides, message):
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        catalogue.parameters(overrides)


def test_rule_ids():
    assert catalogue.rule_ids(None) == list(RULES)
    assert catalogue.rule_ids("r12, R4,R4") == ["R4", "R12"]
    with pytest.raises(RuleError, match="unknown rule 'R0'"):
        catalogue.rule_ids("R0")
    with pytest.raises(RuleError, match="no rule given"):
        catalogue.rule_ids(" , ")


def test_dates():
    assert engine.parse_date("2026-06-30") == date(2026, 6, 30)
    with pytest.raises(RuleError, match="--as-of '30/06/2026': not a date; write it as YYYY-MM-DD"):
        engine.parse_date("30/06/2026")


def test_joined_value_regexes_agree_with_the_per_value_ones():
    """The snapshot checks all date (number) fields of a row with one regex over the values joined
    by U+0001: it must flag a row exactly when some value fails the per-value regex."""
    import itertools
    import re

    dates = ["2020-01-05", "2020-01-05T08:00:00+08:00", "2020-01-05 12:00", "next spring", "2020/01/05",
             "20200105", "2020-1-05", "2020-01-05x"]
    numbers = ["1", "-2.5", "1e5", " 3 ", "1.", "NaN", "Infinity", "1,5", "abc", "0.00000015"]
    for values, one, joined in ((dates, engine.DATE_RE, engine.DATES_RE), (numbers, engine.NUMBER_RE, engine.NUMBERS_RE)):
        for n in (1, 2, 3):
            for combo in itertools.product(values, repeat=n):
                every = all(re.search(one, v) for v in combo)
                assert bool(re.search(joined, "\x01".join(combo))) == every, combo
