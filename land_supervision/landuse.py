"""Land-use class names (GB/T 21010-2017 first level) for the statistics of a run (``runs.py``)
and its printable report (``report.py``): the shared domain table when at hand, else the
built-in first level."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

LANDUSE_JSON = Path(__file__).resolve().parents[2] / "shared" / "domain" / "landuse-classes.json"
#: GB/T 21010-2017 first level (domain brief §3), used when the shared table is not at hand
LEVEL1 = {"01": "耕地", "02": "园地", "03": "林地", "04": "草地", "05": "商服用地", "06": "工矿仓储用地",
          "07": "住宅用地", "08": "公共管理与公共服务用地", "09": "特殊用地", "10": "交通运输用地",
          "11": "水域及水利设施用地", "12": "其他土地"}


@lru_cache
def level1_names() -> dict[str, str]:
    """First-level code → name: the shared table over the built-in one (read once)."""
    try:
        return {**LEVEL1, **json.loads(LANDUSE_JSON.read_text(encoding="utf-8"))["gbt21010_2017"]["level1"]}
    except (OSError, KeyError, ValueError):
        return LEVEL1


def land_use_class_name(code: str | None) -> str | None:
    """The first-level class name of a land-use code (its first two digits); None without a code."""
    return level1_names().get(code[:2]) if code else None


__all__ = ["LEVEL1", "LANDUSE_JSON", "land_use_class_name", "level1_names"]
