"""Normalising and parsing Chinese place-name / address queries.

Address hierarchy (domain.md §5): province – city – district – street (街道) – community (社区) –
road (路/道/街/巷) – door number (门牌, ``123号``) – building (``3栋``). A query such as
``深圳市龙岗区坂田街道五和大道123号3栋`` is split into those parts; ``match.evaluate`` says how
much of them a candidate matched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

#: Administrative prefixes every address of the district shares: stripped from queries and
#: from the indexed text, so they neither help nor hurt a match.
PREFIX_RE = re.compile(r"^(?:中国)?(?:广东省?)?(?:深圳市?)?(?:龙岗区)?")
BLANKS_RE = re.compile(r"[\s,，、·\-_/]+")
STREET_RE = re.compile(r"^(.{1,6}?街道)")
COMMUNITY_RE = re.compile(r"^(.{1,8}?社区)")
#: road + door number: 五和大道123号, 龙岗大道8288, 上兴西路37号
ROAD_DOOR_RE = re.compile(r"^(.{1,12}?(?:大道|大街|公路|快速路|快速|高速|路|道|街|巷|里|弄))?(\d+)(?:号|$)")
ROAD_RE = re.compile(r"^(.{1,12}?(?:大道|大街|公路|快速路|快速|高速|路|道|街|巷))$")
BUILDING_RE = re.compile(r"(\d+|[A-Za-z])(?:栋|座|幢|号楼)")
DOOR_DIGITS_RE = re.compile(r"(\d+)号")


def normalize(text: str | None) -> str:
    """NFKC (full-width digits and letters), lower case, no blanks, no 深圳市/龙岗区 prefix.

    Mirrors the SQL expression used by ``refresh`` (``NORMALIZE_SQL``)."""
    if not text:
        return ""
    s = unicodedata.normalize("NFKC", text).lower()
    s = BLANKS_RE.sub("", s)
    return PREFIX_RE.sub("", s)


@dataclass
class ParsedQuery:
    raw: str
    text: str                      # normalised whole query
    street: str | None = None      # 坂田街道
    community: str | None = None   # 五和社区
    road: str | None = None        # 五和大道
    door_no: int | None = None     # 123
    building: str | None = None    # 3 (栋)
    rest: str = ""                 # what is left once the parts above are taken out
    parts: list[str] = field(default_factory=list)

    @property
    def structured(self) -> bool:
        return bool(self.road or self.door_no is not None or self.building
                    or (self.street and self.rest) or self.community)

    def as_dict(self) -> dict:
        return {"text": self.text, "street": self.street, "community": self.community,
                "road": self.road, "door_no": self.door_no, "building": self.building,
                "rest": self.rest or None}


def parse_query(raw: str) -> ParsedQuery:
    """Split a normalised query into street / community / road + door / building parts.

    Parts are taken left to right in the hierarchy order; anything not recognised is kept in
    ``rest`` (e.g. a place name: 坂田街道华为基地 -> street 坂田街道, rest 华为基地)."""
    text = normalize(raw)
    p = ParsedQuery(raw=raw, text=text)
    s = text
    m = STREET_RE.match(s)
    if m and len(s) > 0:
        p.street, s = m.group(1), s[m.end():]
    m = COMMUNITY_RE.match(s)
    if m:
        p.community, s = m.group(1), s[m.end():]
    m = ROAD_DOOR_RE.match(s)
    if m:
        p.road = m.group(1)
        p.door_no = int(m.group(2))
        s = s[m.end():]
        mb = re.match(r"^(\d+|[a-z])(?:栋|座|幢|号楼)?", s)
        if mb and mb.group(0):
            p.building, s = mb.group(1).upper(), s[mb.end():]
    else:
        mb = BUILDING_RE.search(s)
        if mb:
            p.building = mb.group(1).upper()
            s = s[:mb.start()] + s[mb.end():]
        m = ROAD_RE.match(s)
        if m:
            p.road, s = m.group(1), ""
    p.rest = s
    return p


def building_no(building: str | None) -> str | None:
    if not building:
        return None
    m = re.match(r"^(\d+|[A-Za-z])", unicodedata.normalize("NFKC", building))
    return m.group(1).upper() if m else None


def _bigrams(s: str) -> set[str]:
    if len(s) < 2:
        return {s} if s else set()
    return {s[i:i + 2] for i in range(len(s) - 1)}


def text_score(q: str, target: str) -> float:
    """0..1: exact 1.0, prefix ~0.9, substring ~0.8, else the share of the query's character
    bigrams found in the target (works for 1–2 character queries, where trigrams do not)."""
    if not q or not target:
        return 0.0
    if target == q:
        return 1.0
    extra = min(1.0, (len(target) - len(q)) / 24.0) if len(target) > len(q) else 0.0
    if target.startswith(q):
        return 0.92 - 0.1 * extra
    if q in target:
        return 0.8 - 0.1 * extra
    qb = _bigrams(q)
    if not qb:
        return 0.0
    tb = _bigrams(target)
    containment = len(qb & tb) / len(qb)
    chars = len(set(q) & set(target)) / len(set(q))
    return 0.7 * (0.75 * containment + 0.25 * chars) - 0.05 * extra
