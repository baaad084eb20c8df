"""The rule library as data: every rule's id, titles, legal basis, family, severity and parameters
with the domain brief's defaults (``../shared/docs/domain.md`` §2). Nothing in the SQL of the rule
families is a bare threshold: each one is a parameter here and can be overridden per run
(``geotwin supervise run --param R4.fee_rate=0.2``, ``POST /supervision/runs {"parameters": …}``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

ORDER_53 = "《闲置土地处置办法》（国土资源部令第53号，2012-07-01施行）"
CONTRACT = "国有建设用地使用权出让合同示范文本（GF-2008-2601）"
SZ_START = "深圳市建设用地开工竣工管理办法"
MONITOR = "土地市场动态监测与监管系统：到期前30日预警"

#: Layers the rules read, by role; a run may map a role to another layer name.
DEFAULT_LAYERS = {
    "parcels": "parcels",
    "buildings": "buildings",
    "approvals": "approvals",
    "streets": "streets",
    "land_use": "land_use",
    "basic_farmland": "basic_farmland",
    "eco_redline": "eco_redline",
}

SEVERITIES = ("low", "medium", "high", "critical")

RULES: dict[str, dict[str, Any]] = {
    "R1": {
        "title_zh": "土地出让价款缴纳提醒", "title_en": "Payment reminder",
        "family": "schedule", "severity": "low",
        "basis": f"{CONTRACT}（价款缴纳）；{MONITOR}",
        "needs": {"parcels": ["payment_due", "payment_received"]},
        "parameters": {"warn_days": 30},
    },
    "R2": {
        "title_zh": "开工/竣工到期预警", "title_en": "Start / completion deadline warning",
        "family": "schedule", "severity": "low",
        "basis": f"{CONTRACT}；{MONITOR}",
        "needs": {"parcels": ["agreed_start", "agreed_completion", "actual_start", "actual_completion",
                              "extension_days"]},
        "parameters": {"warn_days": 30, "max_extension_days": 365},
    },
    "R3": {
        "title_zh": "逾期开工（按日计违约金）", "title_en": "Late start (daily penalty)",
        "family": "schedule", "severity": "medium",
        "basis": f"{CONTRACT}（延期开工违约金，按日计）；{ORDER_53} 第八条（政府原因免责）",
        "needs": {"parcels": ["agreed_start", "actual_start", "extension_days", "exemption", "price_cny"]},
        # the contract leaves the per-mille rate blank; 1‰ of the price per day is the usual entry
        "parameters": {"max_extension_days": 365, "penalty_per_mille_per_day": 1.0},
    },
    "R4": {
        "title_zh": "闲置满一年（征收土地闲置费）", "title_en": "Idle one year (idle-land fee)",
        "family": "schedule", "severity": "high",
        "basis": f"{ORDER_53} 第二条、第十四条（一）：按出让价款20%征缴土地闲置费；第八条免责",
        "needs": {"parcels": ["agreed_start", "actual_start", "extension_days", "exemption", "price_cny"]},
        "parameters": {"idle_days": 365, "fee_rate": 0.20, "max_extension_days": 365},
    },
    "R5": {
        "title_zh": "闲置满两年（无偿收回）", "title_en": "Idle two years (recovery)",
        "family": "schedule", "severity": "critical",
        "basis": f"{ORDER_53} 第十四条（二）：无偿收回国有建设用地使用权；第八条免责",
        "needs": {"parcels": ["agreed_start", "actual_start", "extension_days", "exemption", "price_cny"]},
        "parameters": {"idle_days": 730, "max_extension_days": 365},
    },
    "R6": {
        "title_zh": "已动工但开发不足且停工满一年", "title_en": "Stalled development",
        "family": "schedule", "severity": "high",
        "basis": f"{ORDER_53} 第二条（已动工开发但开发建设用地面积占应动工开发建设用地总面积不足三分之一"
                 "或者已投资额占总投资额不足百分之二十五，中止开发建设满一年）",
        "needs": {"parcels": ["actual_start", "actual_completion", "stopped_since", "gfa_built_m2", "gfa_due_m2",
                              "investment_done_cny", "investment_total_cny"]},
        "parameters": {"stopped_days": 365, "built_ratio_min": 1 / 3, "invest_ratio_min": 0.25},
    },
    "R7": {
        "title_zh": "逾期竣工", "title_en": "Late completion",
        "family": "schedule", "severity": "medium",
        "basis": f"{CONTRACT}（竣工期限）；{SZ_START}（住宅：合同签订后1年内开工、4年内竣工，地下室3层及以上开工期限延长6个月）",
        "needs": {"parcels": ["agreed_completion", "actual_completion", "extension_days"]},
        # basis "agreed": the contract's completion date + approved extension;
        # "shenzhen_housing": contract date + 4 years (+ 6 months with ≥ 3 basement levels)
        "parameters": {"basis": "agreed", "housing_years": 4, "deep_basement_levels": 3,
                       "deep_basement_extra_days": 183},
    },
    "R8": {
        "title_zh": "容积率、建筑密度超出规划条件", "title_en": "Plot ratio / building density out of range",
        "family": "planning", "severity": "medium",
        "basis": "出让合同所附规划设计条件（容积率 = 总建筑面积 ÷ 用地面积；建筑密度 = 基底面积 ÷ 用地面积）",
        "needs": {"parcels": ["far_min", "far_max", "density_max", "actual_completion"],
                  "buildings": ["parcel_id", "gfa_m2", "floors"]},
        # ratios are compared rounded to this many decimals ("exactly at the limit" is inside)
        "parameters": {"decimals": 3},
    },
    "R9": {
        "title_zh": "工业用地控制指标", "title_en": "Industrial land control indicators",
        "family": "planning", "severity": "medium",
        "basis": "《工业项目建设用地控制指标》（建筑系数≥30%，行政办公及生活服务设施用地≤7%，绿地率≤20%）",
        "needs": {"parcels": ["land_use_code", "actual_completion"], "buildings": ["parcel_id", "use"]},
        # green ratio: the parcel's green_ratio_field where filled, else measured from the latest imagery
        # epoch covering the parcel (catalogue collection green_collection, else the imagery layer): share
        # of its pixels with excess-green (2G − R − B) / (R + G + B) > green_index_min (calibrated on the
        # demo imagery, see greenness.py)
        "parameters": {"industrial_codes": ["0601"], "coverage_min": 0.30, "office_share_max": 0.07,
                       "office_uses": ["office", "dormitory", "residential"], "green_ratio_max": 0.20,
                       "green_ratio_field": "green_ratio", "green_index_min": 0.10, "green_collection": "ortho",
                       "decimals": 3},
    },
    "R10": {
        "title_zh": "建筑限高与退线", "title_en": "Height limit and setback",
        "family": "planning", "severity": "medium",
        "basis": "规划设计条件（建筑限高、建筑退线）",
        "needs": {"parcels": ["height_max_m", "setback_m"], "buildings": ["parcel_id", "height_m"]},
        "parameters": {"area_tolerance_m2": 1.0, "height_tolerance_m": 0.0},
    },
    "R11": {
        "title_zh": "建筑越界（少批多占）", "title_en": "Building out of bounds",
        "family": "planning", "severity": "high",
        "basis": "《土地管理法》（未经批准占用土地）；出让合同宗地界址",
        # a part of a footprint more than distance_tolerance_m outside its parcel, larger than area_tolerance_m2
        "needs": {"buildings": ["parcel_id"]},
        "parameters": {"distance_tolerance_m": 1.0, "area_tolerance_m2": 1.0},
    },
    "R12": {
        "title_zh": "占用永久基本农田、耕地、林地或生态保护红线", "title_en": "Occupation of protected land",
        "family": "protection", "severity": "high",
        "basis": "《土地管理法》第三十五条（永久基本农田）；《森林法》第三十七条（林地）；生态保护红线管理规定",
        "needs": {"parcels": ["approval_ids"]},
        "parameters": {
            "min_overlap_m2": 1.0,
            "sources": [
                {"kind": "basic_farmland", "role": "basic_farmland", "severity": "critical"},
                {"kind": "farmland", "role": "land_use", "code_field": "dlbm",
                 "code_prefixes": ["0101", "0102", "0103"], "severity": "high"},
                {"kind": "forest", "role": "land_use", "code_field": "dlbm", "code_prefixes": ["03"],
                 "severity": "high"},
                {"kind": "eco_redline", "role": "eco_redline", "severity": "critical"},
            ],
            # an attached approval id must name an approval batch valid at the run's date
            "approval_must_exist": True,
        },
    },
    "R13": {
        "title_zh": "批而未供", "title_en": "Approved but not supplied",
        "family": "protection", "severity": "medium",
        "basis": "建设用地“批而未供”清理（批准范围扣除已供应宗地）",
        "needs": {"approvals": ["approved_on"]},
        "parameters": {"min_area_m2": 100.0, "high_after_days": 730},
    },
}

#: Extra finding raised from imagery evidence (not one of R1–R13 of the brief).
VERIFY_RULE = {
    "V1": {
        "title_zh": "影像显示已动工，需核实开工情况", "title_en": "Imagery shows construction: verify the start",
        "family": "imagery", "severity": "medium",
        "basis": "遥感影像变化检测（两期影像裸土/建设用地指数变化）",
        # changed share of the parcel's pixels; excess-green vegetation threshold; brightness step;
        # the catalogue collection to read; which parcels are "in question" (as R2 / R3)
        "parameters": {"changed_fraction_min": 0.35, "veg_index_min": 0.05, "brightness_delta": 40.0,
                       "collection": "ortho", "warn_days": 30, "max_extension_days": 365},
    }
}

RULE_IDS = tuple(RULES)


class RuleError(ValueError):
    """A rule id or parameter a run cannot use (the message names it and says what to do)."""


def rule_ids(spec: str | list[str] | None) -> list[str]:
    """``"R4,R12"`` / ``["r4", "R12"]`` / None (all) → ordered, checked rule ids."""
    if spec is None or spec == "" or spec == []:
        return list(RULE_IDS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for raw in items:
        rid = str(raw).strip().upper()
        if not rid:
            continue
        if rid not in RULES:
            raise RuleError(f"--rules: unknown rule {raw!r}; choose among {', '.join(RULE_IDS)}")
        if rid not in out:
            out.append(rid)
    if not out:
        raise RuleError("--rules: no rule given; e.g. --rules R4,R12")
    return sorted(out, key=RULE_IDS.index)


def _check_value(rid: str, name: str, default: Any, value: Any) -> Any:
    where = f"parameter {rid}.{name}"
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise RuleError(f"{where}={value!r}: expected true or false")
        return value
    if isinstance(default, (int, float)):
        try:
            v = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            v = None
        if v is None or v != v or v < 0:
            raise RuleError(f"{where}={value!r}: expected a number ≥ 0 (default {default})")
        return int(v) if isinstance(default, int) and float(v).is_integer() else v
    if isinstance(default, list):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = [s.strip() for s in value.split(",") if s.strip()]
        if not isinstance(value, list):
            raise RuleError(f"{where}={value!r}: expected a list like {json.dumps(default, ensure_ascii=False)}")
        return value
    if isinstance(default, str):
        if name == "basis" and value not in ("agreed", "shenzhen_housing"):
            raise RuleError(f"{where}={value!r}: choose 'agreed' or 'shenzhen_housing'")
        return str(value)
    return value


def parameters(overrides: dict | None = None, rules: list[str] | None = None) -> dict[str, dict]:
    """Effective parameters: defaults with ``overrides`` (``{"R4": {"fee_rate": 0.2}}`` or
    ``{"R4.fee_rate": 0.2}``) applied and checked."""
    catalogue = {**RULES, **VERIFY_RULE}
    out = {rid: copy.deepcopy(catalogue[rid]["parameters"]) for rid in (rules or list(catalogue))}
    for key, value in (overrides or {}).items():
        if "." in key:
            rid, name = key.split(".", 1)
            items = {name: value}
        else:
            rid, items = key, value
            if not isinstance(items, dict):
                raise RuleError(f"parameters[{key!r}] must map parameter names to values")
        rid = rid.strip().upper()
        if rid not in catalogue:
            raise RuleError(f"parameter {key!r}: unknown rule {rid!r}; choose among {', '.join(catalogue)}")
        if rid not in out:
            continue  # a parameter of a rule this run does not evaluate
        for name, v in items.items():
            if name not in catalogue[rid]["parameters"]:
                raise RuleError(f"parameter {rid}.{name}: unknown; {rid} takes "
                                f"{', '.join(catalogue[rid]['parameters'])}")
            out[rid][name] = _check_value(rid, name, catalogue[rid]["parameters"][name], v)
    for rid, p in out.items():
        if "sources" in p:
            for s in p["sources"]:
                if not isinstance(s, dict) or "kind" not in s or "role" not in s:
                    raise RuleError(f"parameter {rid}.sources: each source needs 'kind' and 'role' "
                                    "(e.g. {\"kind\": \"forest\", \"role\": \"land_use\", \"code_prefixes\": [\"03\"]})")
                if s.get("severity", "high") not in SEVERITIES:
                    raise RuleError(f"parameter {rid}.sources[{s['kind']}].severity: choose among {SEVERITIES}")
    return out


def describe() -> list[dict]:
    """The library for humans and the API: id, titles, legal basis, family, default parameters."""
    catalogue = {**RULES, **VERIFY_RULE}
    return [{"id": rid, **{k: v for k, v in r.items()}} for rid, r in catalogue.items()]
