"""Chinese names for the demo district: streets (real, from the 2023 statistical codes), and
plausible invented communities, roads, places and buildings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

STREETS_CSV = Path(__file__).with_name("longgang-streets.csv")

# Rough relative position of each street in the district, in [-1, 1] (x east, y north); the
# layout follows the real one: Pinghu north-west, Bantian / Buji / Nanwan west, Henggang and
# Yuanshan centre-south, Longcheng / Longgang / Baolong east, Pingdi far east.
STREET_LAYOUT = {
    "440307003": (-0.72, 0.70),   # 平湖
    "440307013": (-0.82, 0.08),   # 坂田
    "440307014": (-0.80, -0.58),  # 布吉
    "440307012": (-0.45, -0.30),  # 南湾
    "440307018": (-0.38, 0.38),   # 吉华
    "440307017": (-0.05, 0.05),   # 横岗
    "440307020": (0.02, -0.62),   # 园山
    "440307015": (0.32, 0.42),    # 龙城
    "440307016": (0.58, -0.05),   # 龙岗
    "440307019": (0.50, -0.62),   # 宝龙
    "440307006": (0.84, 0.55),    # 坪地
}
# Urban weight of each street's centre (drives how built-up the land around it is).
STREET_URBAN = {
    "440307003": 0.75, "440307013": 0.85, "440307014": 0.95, "440307012": 0.75,
    "440307018": 0.7, "440307017": 0.8, "440307020": 0.45, "440307015": 1.0,
    "440307016": 0.8, "440307019": 0.55, "440307006": 0.35,
}
# Industrial bias around a street's centre (Baolong, Pinghu, Pingdi, Bantian host big parks).
STREET_INDUSTRY = {
    "440307003": 0.6, "440307013": 0.55, "440307014": 0.2, "440307012": 0.35,
    "440307018": 0.4, "440307017": 0.45, "440307020": 0.3, "440307015": 0.25,
    "440307016": 0.4, "440307019": 0.8, "440307006": 0.6,
}

# Community names per street: a few real-sounding ones first, the rest invented from stems.
COMMUNITY_SEEDS = {
    "440307003": ["平湖", "山厦", "辅城坳", "新南", "良安田", "禾花", "白泥坑", "鹅公岭", "凤凰", "上木古", "新木", "力昌"],
    "440307013": ["坂田", "岗头", "马安堂", "五和", "杨美", "南坑", "象角塘", "大发埔", "雪象", "四季花城", "第五园", "新雪"],
    "440307014": ["布吉", "德兴", "金排", "罗岗", "大芬", "茂业", "龙珠", "龙岭", "长龙", "文景", "水径", "上水径"],
    "440307012": ["南岭", "沙湾", "樟树布", "丹竹头", "下李朗", "上李朗", "宝岭", "康乐", "新塘", "南龙", "吉厦", "丹平"],
    "440307018": ["水径", "甘坑", "三联", "丽湖", "光华", "上水", "中海怡翠", "布吉新区", "吉华", "翠湖", "长坑", "水晶"],
    "440307017": ["横岗", "六约", "四联", "大康", "保安", "华侨新村", "西坑", "荷坳", "安良", "松柏", "茂盛", "龙塘"],
    "440307020": ["园山", "大康", "保安", "荷坳", "西坑", "安良", "银荷", "简龙", "塘坑", "新塘", "大运", "金色"],
    "440307015": ["龙西", "回龙埔", "嶂背", "尚景", "愉园", "黄阁坑", "紫薇", "龙腾", "五联", "爱联", "盛平", "中心城"],
    "440307016": ["南联", "龙岗", "新生", "平南", "同心", "南约", "龙东", "龙新", "龙福", "五联", "瓦窑", "盛平"],
    "440307019": ["宝龙", "同乐", "龙东", "南约", "宝荷", "新布", "田寮", "高坑", "清林", "宝岭", "碧新", "龙湖"],
    "440307006": ["坪地", "坪西", "坪东", "年丰", "中心", "高桥", "六联", "富坪", "四方埔", "香元", "岭背", "坪康"],
}

# Two-character stems for roads, places and compounds (Longgang's Hakka / Cantonese flavour).
_FIRST = list("龙岗坪横吉宝园布南平坂新大华清丹荷盛爱五同碧如黄紫愉回嶂锦翠桂荔松石塘福沙樟水鹅凤禾安保六四三红上下中东西")
_SECOND = list("岗坑围岭坳塘埔排沥田布湖源山林苑园城联约兴发富康乐和盛平安德祥福荣华景新泰丰宁心辉溪")
ARTERIALS_EW = ["龙岗大道", "深惠路", "龙翔大道", "龙平路", "爱南路", "宝荷路", "富坪路", "碧新路",
                "吉华路", "布澜路", "丹平快速", "横坪公路"]
ARTERIALS_NS = ["黄阁路", "如意路", "清林路", "宝龙大道", "龙城大道", "丹荷大道", "盐龙大道", "坪西路",
                "布龙路", "沙荷路", "水官路", "中环大道", "吉政路", "坂雪岗大道"]
EXPRESSWAYS = ["水官高速", "机荷高速", "外环高速", "盐排高速"]
RIVER_NAME = "龙岗河"
STREAM_NAMES = ["爱联河", "回龙河", "南约河", "黄沙河", "丁山河", "龙西河", "同乐河", "田坑水", "大康河", "梧桐河"]
RESERVOIR_NAMES = ["清林径水库", "铜锣径水库", "三坑水库", "炳坑水库"]
MOUNTAIN_NAMES = ["梧桐山", "园山", "马峦山", "三角山", "大顶岭", "排牙山", "鸡公山", "黄竹坑岭", "石芽岭", "塘朗山",
                  "牛尾岭", "打鼓岭", "求水岭", "尖峰岭"]
LANDMARKS = ["龙岗区政府", "大运中心", "龙城广场", "龙岗中心医院", "龙岗区人民医院", "深圳大运中心体育场",
             "龙岗文化中心", "龙岗图书馆", "龙岗客家民俗博物馆", "鹤湖新居", "大芬油画村", "甘坑客家小镇",
             "龙岗区行政服务大厅", "香港中文大学（深圳）", "深圳信息职业技术学院", "龙岗档案馆"]
COMPOUND_SUFFIX = ["花园", "苑", "名苑", "雅居", "华庭", "新村", "家园", "公馆", "尚城", "御府"]
COMMERCIAL_SUFFIX = ["广场", "购物中心", "商业中心", "天虹商场", "万达广场", "星河COCO City", "大厦", "商务中心"]
INDUSTRIAL_SUFFIX = ["工业园", "科技园", "工业区", "智造园", "产业园"]
SCHOOL_SUFFIX = ["小学", "中学", "实验学校", "外国语学校", "高级中学", "幼儿园"]
PARK_SUFFIX = ["公园", "社区公园", "湿地公园", "体育公园"]
HOSPITAL_SUFFIX = ["社区健康服务中心", "医院", "人民医院"]
STATION_SUFFIX = "站"


def streets() -> list[tuple[str, str]]:
    """(code, name) of the 11 streets of the demo district, in CSV order."""
    with open(STREETS_CSV, newline="", encoding="utf-8") as fh:
        return [(r["code"], r["name"]) for r in csv.DictReader(fh) if r["in_demo_district"] == "yes"]


class NamePool:
    """Unique two-character stems, drawn deterministically."""

    def __init__(self, rng: np.random.Generator) -> None:
        pairs = [a + b for a in _FIRST for b in _SECOND if a != b]
        order = rng.permutation(len(pairs))
        self._stems = [pairs[i] for i in order]
        self._i = 0

    def stem(self) -> str:
        s = self._stems[self._i % len(self._stems)]
        self._i += 1
        return s


def road_names(n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``n`` distinct local-road names (stem + 路/街/一路…)."""
    suffixes = ["路", "路", "街", "一路", "二路", "三路", "东路", "西路", "南路", "北路", "大街", "巷"]
    pool = NamePool(rng)
    out: list[str] = []
    seen = set(taken)
    while len(out) < n:
        stem = pool.stem()
        suf = suffixes[int(rng.integers(len(suffixes)))]
        name = stem + suf
        if name in seen:
            name = stem + suffixes[(suffixes.index(suf) + 3) % len(suffixes)]
            if name in seen:
                continue
        seen.add(name)
        out.append(name)
    return out
