"""How much of a query one result matched: the match level, the matched / unmatched parts, the score.

A query is parsed (``parse.parse_query``) into the parts of the address hierarchy it names —
**street** (…街道), **community** (…社区), **road** (…路/街/道/巷/大道/大街/公路/快速/高速),
**door** (the door number, ``123号``), **building** (``3栋`` / 座 / 幢 / 号楼) — and **name**, the
text that is none of those (a place name such as 华为基地, or a bare word such as 龙岗). Each
result says which of those parts it matched (``matched``) and which it did not (``unmatched``),
both as written in the (normalised) query, and its ``match_level``, the finest part it matched:

=============  ==========================================================================
match_level    the result matched …
=============  ==========================================================================
``street``     the street: the result is the street (街道) named in the query (its polygon's
               point on surface), or found by its name
``community``  the community (社区) named in the query, or found by its name
``road``       the road named in the query (a place name of kind road; an address on that
               road only in autocomplete, while the door number is still being typed)
``place``      a place name (landmark, school, park, compound …) found by its name
``door``       the road *and* the door number: an address at that door (if a building was
               asked for and the door has no such building, it is in ``unmatched``)
``building``   the road, the door number and the building
=============  ==========================================================================

Rules that keep an answer honest:

- **A door number only on the road asked for.** ``/geocode/search`` gives an address only when
  the query named its road *and* its door number (``五和大道123号`` never gives 五和街123号, and
  ``坂田街道123号`` — no road — gives no address at all). Autocomplete may also offer addresses
  the typed text is the beginning of, or on the typed road while its door number is typed.
- **A result is given at its own level or not at all.** A community, a place or a road that only
  shares the query's street is not an answer to a question about a road: when the road asked for
  is unknown, the answer is the street (or community) that matched, with ``unmatched`` naming the
  road and door number, and ``suggestions`` (``search.suggest``) offering the known roads whose
  names are close (string similarity; those within the matched street / community first).
- **Streets and communities forgive typos**, roads do not: a street or community name that is
  not known is read as the one known name clearly closest to it (``板田街道`` → 坂田街道, listed
  under ``approximate``); a road that is not known is never replaced by a similar one (that is
  the confident wrong address), only suggested.
- **The score is the share of the query matched**: the weights of the parts matched (street
  0.2, community 0.2, road 0.3, door 0.3, building 0.1, name 0.3; a typo'd street or a fuzzy
  name counts with its similarity) over the weights of the parts asked. A full match scores
  ~1.0; 坂田街道五和大道123号 answered by 坂田街道 scores about 0.25
  (0.2 / (0.2 + 0.3 + 0.3)).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from spatial_api.geocode.parse import ParsedQuery, building_no, normalize, text_score

#: the levels, coarse to fine ("place" sits beside "road": a named thing within a community)
LEVELS = ("street", "community", "road", "place", "door", "building")
_RANK = {level: i for i, level in enumerate(LEVELS)}
#: how much each part of a query weighs in the score
WEIGHTS = {"street": 0.2, "community": 0.2, "road": 0.3, "door": 0.3, "building": 0.1, "name": 0.3}
#: a name part (the query's rest) matches a named thing from this text similarity on
NAME_MATCH = 0.5
#: an unknown street / community name is read as a known one from this similarity on …
AREA_MATCH = 0.7
#: … when the runner-up is at least this much less similar (otherwise it is ambiguous)
AREA_MARGIN = 0.1
#: road suffixes (with an optional ordinal or direction: 清丰三路, 上兴西路) — stripped for stems
ROAD_SUFFIX_RE = re.compile(r"[一二三四五六七八九十东西南北中]?(?:大道|大街|公路|快速路|快速|高速|路|道|街|巷)$")


def similarity(a: str, b: str) -> float:
    """0..1, the Ratcliff–Obershelp ratio of two short names (difflib): 板田街道 / 坂田街道 0.75."""
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def road_stem(road: str) -> str:
    stem = ROAD_SUFFIX_RE.sub("", road)
    return stem if stem else road


def road_similarity(asked: str, road: str) -> float:
    """Names of two roads: half the whole names, half their stems (五和大道 / 五和街 0.79: the
    same stem, another kind of road)."""
    return 0.5 * similarity(asked, road) + 0.5 * similarity(road_stem(asked), road_stem(road))


def closest(name: str, known: list[str]) -> tuple[str | None, float]:
    """The known name ``name`` most likely means: itself, or clearly the closest one."""
    if name in known:
        return name, 1.0
    ranked = sorted(((similarity(name, k), k) for k in set(known)), reverse=True)
    if not ranked or ranked[0][0] < AREA_MATCH:
        return None, 0.0
    if len(ranked) > 1 and ranked[0][0] - ranked[1][0] < AREA_MARGIN:
        return None, 0.0
    return ranked[0][1], ranked[0][0]


@dataclass
class Context:
    """What the search learned from the index beyond the candidate rows."""
    street: str | None = None          # the known street the query's street means
    street_sim: float = 1.0
    community: str | None = None       # the known community the query's community means
    community_sim: float = 1.0
    road_known: bool = False           # the asked road is a road of the index
    known_roads: set[str] | None = None  # every road name of the index, when it was needed
    #: streets / communities the asked road runs through (from its addresses)
    road_streets: set[str] = field(default_factory=set)
    road_communities: set[str] = field(default_factory=set)


@dataclass
class Match:
    level: str
    score: float
    matched: dict[str, str]
    unmatched: dict[str, str]
    approximate: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"match_level": self.level, "matched": self.matched, "unmatched": self.unmatched,
                "approximate": self.approximate}


def asked_parts(p: ParsedQuery) -> dict[str, str]:
    """The parts the query names, as written (normalised): {part: text}."""
    parts: dict[str, str] = {}
    if p.street:
        parts["street"] = p.street
    if p.community:
        parts["community"] = p.community
    if p.road:
        parts["road"] = p.road
    if p.door_no is not None:
        parts["door"] = f"{p.door_no}号"
    if p.building:
        parts["building"] = f"{p.building}栋"
    if p.rest:
        parts["name"] = p.rest
    return parts


def own_level(row: dict) -> str:
    """The level a row stands for by itself."""
    layer = row["layer"]
    if layer == "streets":
        return "street"
    if layer == "communities":
        return "community"
    if layer == "addresses":
        return "building" if row.get("building") else "door"
    return "road" if row.get("kind") == "road" else "place"


def _norm(value: str | None) -> str:
    return normalize(value) if value else ""


def _address_components(row: dict) -> list[tuple[str, str]]:
    """An address's parts in writing order, normalised: street, community, road, door, building."""
    road = _norm(row.get("road"))
    door = _norm(row.get("door_number"))
    if road and door.startswith(road):
        door = door[len(road):]
    return [(level, text) for level, text in (
        ("street", _norm(row.get("street"))), ("community", _norm(row.get("community"))),
        ("road", road), ("door", door), ("building", _norm(row.get("building")))) if text]


def _as_written(p: ParsedQuery, row: dict, *, prefix: bool) -> Match | None:
    """The query is the address as written (from its street or from its road), whole parts only
    (``prefix=False``: 丹平快速123号 for …丹平快速123号1栋), or, typing, the beginning of it
    (``prefix=True``). The level is the part the query ends in."""
    parts = _address_components(row)
    q = p.text
    for start in ("street", "road"):
        tail = parts[next((i for i, (lv, _) in enumerate(parts) if lv == start), len(parts)):]
        written = "".join(t for _, t in tail)
        if not written or not written.startswith(q):
            continue
        end = 0
        for level, text in tail:
            end += len(text)
            if end < len(q):
                continue
            if end == len(q) and level in ("door", "building"):
                return Match(level, 1.0, {"prefix" if prefix else "address": q}, {})
            if prefix:
                return Match(level, text_score(q, written), {"prefix": q}, {})
            break
    return None


def evaluate(p: ParsedQuery, row: dict, ctx: Context, *, typing: bool = False) -> Match | None:
    """The match of one candidate row, or None when the row is no answer to the query (see the
    module docstring). ``typing``: autocomplete (the query may be the beginning of an answer)."""
    asked = asked_parts(p)
    layer = row["layer"]
    mine = own_level(row)
    sims: dict[str, float] = {}
    approx: dict[str, str] = {}

    # a road runs through several streets / communities: those of its addresses count
    road_row = layer == "place_names" and _is_asked_road(p, row)
    if "street" in asked:
        want = ctx.street or p.street
        streets = {row.get("street")} | (ctx.road_streets if road_row else set())
        if want in streets:
            sims["street"] = ctx.street_sim if ctx.street else 1.0
            if want != p.street:
                approx["street"] = want
    if "community" in asked:
        want = ctx.community or p.community
        communities = {row.get("community")} | (ctx.road_communities if road_row else set())
        if want in communities:
            sims["community"] = ctx.community_sim if ctx.community else 1.0
            if want != p.community:
                approx["community"] = want
    road_ok = _is_asked_road(p, row)
    if road_ok:
        sims["road"] = 1.0
    door_ok = road_ok and p.door_no is not None and row.get("door_no") == p.door_no
    if door_ok:
        sims["door"] = 1.0
    if door_ok and p.building and building_no(row.get("building")) == p.building:
        sims["building"] = 1.0
    if "name" in asked and layer != "addresses":
        t = text_score(p.rest, row["search"])
        if t >= NAME_MATCH:
            sims["name"] = t
            if p.rest not in row["search"]:
                approx["name"] = row["name"]

    structured: Match | None = None
    if sims:
        levels = [mine if part == "name" else part for part in sims]
        level = max(levels, key=_RANK.__getitem__)
        score = sum(WEIGHTS[k] * v for k, v in sims.items()) / sum(WEIGHTS[k] for k in asked)
        structured = Match(level, score, {k: asked[k] for k in asked if k in sims},
                           {k: asked[k] for k in asked if k not in sims}, approx)
        if layer == "addresses":
            # a door number only on the road and door asked for (or, typing, on the road typed)
            if not (road_ok and (door_ok or (typing and p.door_no is None))):
                structured = None
        elif level != mine:
            # a community / place / road that only shares the street (or the community) asked
            # for is not what was asked: the street (community) itself answers at that level
            structured = None

    # the whole query as a name, or as an address written out (typing: its beginning)
    whole: Match | None = None
    if layer == "addresses":
        whole = _as_written(p, row, prefix=typing)
    elif p.text in row["search"]:
        whole = Match(mine, text_score(p.text, row["search"]), {"name": p.text}, {})

    best = max((m for m in (structured, whole) if m is not None), key=lambda m: m.score, default=None)
    if best is None:
        return None
    # importance breaks ties: streets, communities, landmarks before single addresses
    best.score = round(max(0.0, min(1.0, best.score + 0.004 * (5 - int(row.get("rank_base", 5))))), 4)
    return best


def _is_asked_road(p: ParsedQuery, row: dict) -> bool:
    if not p.road:
        return False
    if row["layer"] == "addresses" or (row["layer"] == "place_names" and row.get("kind") == "road"):
        return _norm(row.get("road") or row.get("name")) == p.road
    return False

