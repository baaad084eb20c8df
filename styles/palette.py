"""Colours, generated from data: land use by class code, and the palettes derived from it.

``landuse-classes.json`` (a copy of ``../shared/domain/landuse-classes.json``; a unit test keeps
the two equal) gives an RGB colour per *planning* class name (用地用海分类 / 市级国土空间总体规划
制图规范 附录B) — not per GB/T 21010 code. Survey data (三调 DLTB, the demo's ``land_use``) carries
GB/T 21010-2017 codes (``dlbm``: 0101, 0301, 0702, 1001, 05H1 …), so a code is coloured through
the planning class it becomes under the 2023 classification: :data:`CODE_CLASS` (exact code,
level-2 and the 三调 working codes) and :data:`LEVEL1_CLASS` (fallback by the first two
characters). Notable choices, each following how 用地用海分类 re-files the survey class:

- 0303 红树林地, 0304 森林沼泽, 0306 灌丛沼泽, 0402 沼泽草地, 1105/1106 滩涂, 1108 沼泽地 and the
  survey's 00 湿地 → 湿地 (wetland is its own first-level class in 2023);
- 1006 农村道路 and 1202 设施农用地 → 农业设施建设用地; 1109 水工建筑用地 → 公用设施用地;
- 08H2 科教文卫用地 (a survey merge of culture, education, science, health) → 教育用地, the
  largest of its parts; 08H1 机关团体新闻出版用地 → 机关团体用地.

The JSON's colours were transcribed, not checked against the standard's PDF (see its "about").
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CLASSES_JSON = Path(__file__).with_name("landuse-classes.json")

#: GB/T 21010-2017 code (level 2, and the 三调 working codes) → planning class name (a key of
#: ``planning_colours_rgb``).
CODE_CLASS: dict[str, str] = {
    # 01 耕地
    "0101": "耕地", "0102": "耕地", "0103": "耕地",
    # 02 园地
    "0201": "园地", "0202": "园地", "0203": "园地", "0204": "园地",
    # 03 林地 (swamp forest and mangroves are wetland in 2023)
    "0301": "林地", "0302": "林地", "0303": "湿地", "0304": "湿地", "0305": "林地", "0306": "湿地",
    "0307": "林地",
    # 04 草地
    "0401": "草地", "0402": "湿地", "0403": "草地", "0404": "草地",
    # 05 商服用地
    "0501": "商业服务业用地", "0502": "商业服务业用地", "0503": "商业服务业用地", "0504": "商业服务业用地",
    "0505": "商业服务业用地", "0506": "商业服务业用地", "0507": "商业服务业用地", "05H1": "商业服务业用地",
    # 06 工矿仓储用地
    "0601": "工业用地", "0602": "采矿用地", "0603": "盐田用地", "0604": "仓储用地",
    # 07 住宅用地
    "0701": "城镇住宅用地", "0702": "农村宅基地",
    # 08 公共管理与公共服务用地 (and the survey's merged codes)
    "0801": "机关团体用地", "0802": "机关团体用地", "0803": "教育用地", "0804": "科研用地",
    "0805": "医疗卫生用地", "0806": "社会福利用地", "0807": "文化用地", "0808": "体育用地",
    "0809": "公用设施用地", "0810": "公园绿地", "0810A": "广场用地", "08H1": "机关团体用地",
    "08H2": "教育用地",
    # 09 特殊用地
    "09": "特殊用地",
    # 10 交通运输用地
    "1001": "交通运输用地", "1002": "交通运输用地", "1003": "公路用地", "1004": "城镇道路用地",
    "1005": "交通运输用地", "1006": "农业设施建设用地", "1007": "交通运输用地", "1008": "交通运输用地",
    "1009": "管道运输用地",
    # 11 水域及水利设施用地
    "1101": "陆地水域", "1102": "陆地水域", "1103": "陆地水域", "1104": "陆地水域", "1105": "湿地",
    "1106": "湿地", "1107": "陆地水域", "1108": "湿地", "1109": "公用设施用地", "1110": "陆地水域",
    # 12 其他土地
    "1201": "其他土地", "1202": "农业设施建设用地", "1203": "其他土地", "1204": "其他土地",
    "1205": "其他土地", "1206": "其他土地", "1207": "其他土地",
    # 三调 working class
    "00": "湿地",
}

#: First two characters of a code → planning class: the fallback for codes not listed above.
LEVEL1_CLASS: dict[str, str] = {
    "00": "湿地", "01": "耕地", "02": "园地", "03": "林地", "04": "草地", "05": "商业服务业用地",
    "06": "工业用地", "07": "城镇住宅用地", "08": "机关团体用地", "09": "特殊用地", "10": "交通运输用地",
    "11": "陆地水域", "12": "其他土地",
}

#: A code that is neither listed nor has a known first level (a typo, another classification).
UNKNOWN = "#c8c8c8"


@lru_cache(maxsize=1)
def classes() -> dict:
    return json.loads(CLASSES_JSON.read_text(encoding="utf-8"))


def hex_colour(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def rgb_of(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def mix(colour: str, other: str, t: float) -> str:
    """``colour`` moved the fraction ``t`` towards ``other``."""
    a, b = rgb_of(colour), rgb_of(other)
    return hex_colour(round(x + (y - x) * t) for x, y in zip(a, b))


def darken(colour: str, t: float = 0.35) -> str:
    return mix(colour, "#000000", t)


def class_colour(name: str) -> str:
    """The colour of a planning class (a key of the JSON's ``planning_colours_rgb``)."""
    table = classes()["planning_colours_rgb"]
    if name not in table:
        raise KeyError(f"planning class {name!r} has no colour in {CLASSES_JSON.name}")
    return hex_colour(table[name])


def code_class(code: str | None) -> str | None:
    """The planning class a GB/T 21010 code is coloured as (exact code, else its first level)."""
    if not code:
        return None
    return CODE_CLASS.get(code) or LEVEL1_CLASS.get(code[:2])


def code_colour(code: str | None) -> str:
    name = code_class(code)
    return class_colour(name) if name else UNKNOWN


def landuse_colour_expression(prop: str = "dlbm") -> list:
    """A MapLibre expression colouring a feature by its GB/T 21010 code in ``prop``: a ``match``
    on the exact code (codes of one colour grouped), falling back to a ``match`` on the first two
    characters, then :data:`UNKNOWN`."""
    code = ["to-string", ["get", prop]]  # a missing property → "" (slice of null would fail)
    by_colour: dict[str, list[str]] = {}
    for c in sorted(CODE_CLASS):
        by_colour.setdefault(class_colour(CODE_CLASS[c]), []).append(c)
    level1: dict[str, list[str]] = {}
    for c in sorted(LEVEL1_CLASS):
        level1.setdefault(class_colour(LEVEL1_CLASS[c]), []).append(c)
    fallback: list = ["match", ["slice", code, 0, 2]]
    for colour, codes in level1.items():
        fallback += [codes if len(codes) > 1 else codes[0], colour]
    fallback.append(UNKNOWN)
    expr: list = ["match", code]
    for colour, codes in by_colour.items():
        expr += [codes if len(codes) > 1 else codes[0], colour]
    expr.append(fallback)
    return expr


# -- thematic palettes, derived from the land-use colours ----------------------------------------

#: Neutral building grey the use colours are blended into (buildings are drawn muted).
BUILDING_BASE = "#d9d0c9"
#: Building ``use`` → the planning class whose colour (blended 55% towards the grey) it takes.
BUILDING_USE_CLASS = {
    "residential": "城镇住宅用地", "dormitory": "城镇住宅用地", "commercial": "商业服务业用地",
    "office": "商业服务业用地", "industrial": "工业用地", "warehouse": "仓储用地", "public": "机关团体用地",
    "school": "教育用地", "hospital": "医疗卫生用地",
}


def building_colours() -> dict[str, str]:
    return {use: mix(class_colour(cls), BUILDING_BASE, 0.55) for use, cls in BUILDING_USE_CLASS.items()}


#: Road classes (CJJ 37 urban roads + expressway + rural roads), most important first:
#: (fill colour, casing colour, width at z10, width at z18 in px, minzoom).
ROAD_CLASSES: dict[str, tuple[str, str, float, float, int]] = {
    "高速公路": ("#f7a35c", "#c8681f", 2.0, 26.0, 8),
    "主干路": ("#ffd966", "#c9a227", 1.5, 22.0, 9),
    "次干路": ("#fff2b3", "#c8b46e", 1.0, 16.0, 11),
    "支路": ("#ffffff", "#bfb8ad", 0.5, 10.0, 13),
    "乡村道路": ("#f6efe2", "#c2b59b", 0.4, 7.0, 13),
}

#: Approval batch types → line colour.
APPROVAL_TYPES = {"农用地转用": "#e67e22", "城镇建设用地": "#8e44ad"}

RED_LINE = "#e60000"  # 生态保护红线
BASIC_FARMLAND = "#f2c200"  # 永久基本农田: yellow
PARCEL_LINE = "#b2182b"
STREET_LINE = "#6a3d9a"
COMMUNITY_LINE = "#9e86b8"
WATER_TEXT = "#1f5f99"
BACKGROUND = "#f4f1ea"

#: Underground utilities by type code: the customary colours of pipe maps (GB/T 50348 / CJJ 61
#: usage; the underground room's catalogue holds the same values and a unit test keeps them equal).
PIPE_COLOURS = {"JS": "#1f5fd6", "PS": "#8b5a2b", "YS": "#a0522d", "WS": "#6b3e1f", "RQ": "#d63ad6",
                "RL": "#f28c28", "DL": "#e02020", "TX": "#2ca02c", "GY": "#202020"}
PIPE_UNKNOWN = "#808080"
BASEMENT_FILL = "#7b6f9e"  # underground structures: a muted violet, apart from every land-use colour


def pipe_colour_expression(prop: str = "type_code") -> list:
    """MapLibre expression colouring a pipe layer's features by their type code."""
    expr: list = ["match", ["get", prop]]
    for code, colour in PIPE_COLOURS.items():
        expr += [code, colour]
    expr.append(PIPE_UNKNOWN)
    return expr
