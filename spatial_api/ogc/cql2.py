"""OGC CQL2 (text and JSON) → parameterised PostGIS SQL for one layer.

    ast = parse("floors > 3 AND S_INTERSECTS(geometry, BBOX(114.24, 22.71, 114.26, 22.73))")
    cond, params = to_sql(ast, layer)            # psycopg sql.Composable + its parameter list
    conn.execute(sql.SQL("SELECT ... FROM {} f WHERE {}").format(table, cond), params)

Both encodings are parsed here into one small AST (dataclasses below) by a hand-written parser:
pygeofilter 0.4's CQL2-text grammar still uses the draft syntax for temporal predicates
(``a T_BEFORE b`` instead of ``T_BEFORE(a, b)``), cannot read ``''`` inside a string, open
intervals (``'..'``) or one-letter property names, so it is not used.

Safety: user text never becomes SQL text. Literals are ``%s`` parameters; property names are
checked against the layer schema before they appear (as ``sql.Literal`` JSON keys); function,
operator and type names come from fixed tables in this module.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from psycopg import sql

from spatial_api.api import time as timepolicy
from spatial_api.store.types import SQL_CASTS

__all__ = [
    "FilterError", "parse", "to_sql", "CONFORMANCE", "FILTER_LANGS", "queryable_names",
    "Prop", "Lit", "Geom", "Interval", "Func", "Arith", "Compare", "Like", "In", "Between",
    "IsNull", "And", "Or", "Not", "Spatial", "Temporal",
]

_CQL2 = "http://www.opengis.net/spec/cql2/1.0/conf/"
#: CQL2 conformance classes this module implements (the endpoint adds Part 3's own classes:
#: ogcapi-features-3/1.0/conf/{filter,features-filter,queryables,...}).
CONFORMANCE: list[str] = [
    _CQL2 + c
    for c in (
        "cql2-text",
        "cql2-json",
        "basic-cql2",
        "advanced-comparison-operators",
        "case-insensitive-comparison",
        "basic-spatial-functions",
        "basic-spatial-functions-plus",
        "spatial-functions",
        "temporal-functions",
        "property-property",
        "arithmetic",
    )
]

#: accepted ``filter-lang`` values → canonical name (the draft names are aliases)
FILTER_LANGS = {"cql2-text": "cql2-text", "cql-text": "cql2-text",
                "cql2-json": "cql2-json", "cql-json": "cql2-json"}

GEOMETRY_NAMES = ("geometry", "geom")
ID_NAME = "id"


class FilterError(ValueError):
    """A filter that cannot be used; the message is meant for the client developer."""

    def __init__(self, message: str, position: int | str | None = None):
        super().__init__(message)
        self.position = position


# --------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class Prop:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any  # str | int | float | bool | date | datetime


@dataclass(frozen=True)
class Geom:
    wkt: str  # validated WKT, coordinates in the filter CRS (CRS84 by default)


@dataclass(frozen=True)
class Interval:
    start: Any  # date | datetime | None (open, '..')
    end: Any


@dataclass(frozen=True)
class Func:
    name: str  # lower case: casei, accenti
    args: tuple


@dataclass(frozen=True)
class Arith:
    op: str  # + - * / % div ^
    lhs: Any
    rhs: Any


@dataclass(frozen=True)
class Compare:
    op: str  # = <> < <= > >=
    lhs: Any
    rhs: Any


@dataclass(frozen=True)
class Like:
    lhs: Any
    pattern: Any
    not_: bool = False


@dataclass(frozen=True)
class In:
    lhs: Any
    items: tuple
    not_: bool = False


@dataclass(frozen=True)
class Between:
    lhs: Any
    low: Any
    high: Any
    not_: bool = False


@dataclass(frozen=True)
class IsNull:
    lhs: Any
    not_: bool = False


@dataclass(frozen=True)
class And:
    args: tuple


@dataclass(frozen=True)
class Or:
    args: tuple


@dataclass(frozen=True)
class Not:
    arg: Any


@dataclass(frozen=True)
class Spatial:
    op: str  # s_intersects ...
    lhs: Any
    rhs: Any


@dataclass(frozen=True)
class Temporal:
    op: str  # t_before ...
    lhs: Any
    rhs: Any


SPATIAL_OPS = {
    "s_intersects": "ST_Intersects", "s_within": "ST_Within", "s_contains": "ST_Contains",
    "s_disjoint": "ST_Disjoint", "s_equals": "ST_Equals", "s_touches": "ST_Touches",
    "s_crosses": "ST_Crosses", "s_overlaps": "ST_Overlaps",
}
TEMPORAL_OPS = (
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby",
    "t_finishes", "t_intersects", "t_meets", "t_metby", "t_overlappedby", "t_overlaps",
    "t_startedby", "t_starts",
)
COMPARE_OPS = ("=", "<>", "<", "<=", ">", ">=")
ARITH_OPS = ("+", "-", "*", "/", "%", "div", "^")
SCALAR_FUNCS = ("casei", "accenti")
GEOMETRY_KEYWORDS = ("POINT", "LINESTRING", "POLYGON", "MULTIPOINT", "MULTILINESTRING",
                     "MULTIPOLYGON", "GEOMETRYCOLLECTION")
_SUPPORTED_FUNCS = ", ".join(
    [o.upper() for o in SPATIAL_OPS] + [o.upper() for o in TEMPORAL_OPS]
    + ["CASEI", "LIKE", "IN", "BETWEEN"]
)

# --------------------------------------------------------------------------------------------
# literals


def _parse_date(s: str, where: str) -> date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            raise ValueError
        return date.fromisoformat(s)
    except ValueError:
        raise FilterError(f"{where}: {s!r} is not a date; write DATE('YYYY-MM-DD'), e.g. DATE('2024-05-01')") from None


def _parse_timestamp(s: str, where: str) -> datetime:
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2}(?:\.\d+)?)([Zz]|[+-]\d{2}:\d{2})?", s)
    try:
        if not m:
            raise ValueError
        tz = m.group(3)
        text = f"{m.group(1)}T{m.group(2)}" + ("+00:00" if tz in ("Z", "z") else tz or "")
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:  # the house's time policy: without an offset, district time
            value = value.replace(tzinfo=timepolicy.zone())
    except ValueError:
        raise FilterError(
            f"{where}: {s!r} is not a timestamp; write TIMESTAMP('YYYY-MM-DDThh:mm:ssZ'), "
            "e.g. TIMESTAMP('2024-05-01T09:30:00Z') (district time, GEOTWIN_TIMEZONE, unless an offset is given)"
        ) from None
    return value.astimezone(timezone.utc)


def _parse_instant(s: str, where: str):
    """An interval bound: a date, a timestamp or '..' (open)."""
    if s in ("..", ""):
        return None
    if len(s) == 10:
        return _parse_date(s, where)
    return _parse_timestamp(s, where)


def _wkt_geometry(text: str, where: str) -> Geom:
    import shapely

    try:
        g = shapely.from_wkt(text)
    except Exception as exc:  # shapely.errors.GEOSException and friends
        raise FilterError(f"{where}: invalid WKT geometry {text[:60]!r}: {exc}") from None
    return _geom(g, where)


def _geojson_geometry(obj: dict, where: str) -> Geom:
    import shapely

    try:
        g = shapely.from_geojson(json.dumps(obj))
    except Exception as exc:
        raise FilterError(f"{where}: invalid GeoJSON geometry: {exc}") from None
    return _geom(g, where)


def _geom(g, where: str) -> Geom:
    import shapely

    if g is None or g.is_empty:
        raise FilterError(f"{where}: the geometry is empty")
    coords = shapely.get_coordinates(g)
    if not all(math.isfinite(v) for v in coords.ravel()):
        raise FilterError(f"{where}: the geometry has non-finite coordinates")
    if len(coords) and float(abs(coords).max()) > 1e8:  # beyond any supported CRS's coordinates
        raise FilterError(f"{where}: coordinates beyond ±100,000,000 are out of range of every CRS; "
                          "lon/lat (CRS84) are within ±180 / ±90")
    if not g.is_valid:  # PostGIS would fail on it mid-query (GEOS TopologyException)
        raise FilterError(f"{where}: the geometry is invalid ({shapely.is_valid_reason(g)}); "
                          "check the ring's order and that it does not cross itself")
    return Geom(shapely.to_wkt(g, rounding_precision=-1, output_dimension=2))


def _bbox(values: list, where: str) -> Geom:
    if len(values) not in (4, 6) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise FilterError(f"{where}: BBOX takes 4 numbers (minx, miny, maxx, maxy) or 6 (with z)")
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    x1, y1, x2, y2 = (float(v) for v in values)
    if x1 > x2 or y1 > y2:
        raise FilterError(f"{where}: BBOX({x1}, {y1}, {x2}, {y2}): the minimum must not exceed the maximum "
                          "(boxes crossing the antimeridian are not supported)")
    import shapely

    return _geom(shapely.box(x1, y1, x2, y2), where)


# --------------------------------------------------------------------------------------------
# CQL2 text

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|''|\\.)*')
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<op><>|!=|<=|>=|=|<|>|\(|\)|,|\+|-|\*|/|%|\^|\[|\])
  | (?P<ident>[^\W\d][\w:.]*)
    """,
    re.VERBOSE,
)

_KEYWORDS = {"AND", "OR", "NOT", "LIKE", "IN", "BETWEEN", "IS", "NULL", "TRUE", "FALSE", "DIV"}


@dataclass
class _Tok:
    kind: str  # string qident number op ident end
    value: Any
    pos: int  # 0-based offset
    text: str


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            ch = text[pos]
            if ch == "'":
                raise _syntax(text, pos, "unterminated string: a string starts here and never ends "
                                         "(write a quote inside a string as '')")
            if ch == '"':
                raise _syntax(text, pos, 'unterminated quoted property name')
            raise _syntax(text, pos, f"unexpected character {ch!r}")
        kind = m.lastgroup
        raw = m.group()
        if kind == "string":
            value = re.sub(r"''|\\(.)", lambda mm: "'" if mm.group() == "''" else mm.group(1), raw[1:-1])
        elif kind == "qident":
            value = raw[1:-1].replace('""', '"')
        elif kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "op":
            value = "<>" if raw == "!=" else raw
        else:
            value = raw
        if kind != "ws":
            toks.append(_Tok(kind, value, pos, raw))
        pos = m.end()
    toks.append(_Tok("end", None, len(text), ""))
    return toks


def _syntax(text: str, pos: int, message: str) -> FilterError:
    snippet = text.replace("\n", " ")
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    caret = ""
    if len(snippet) <= 200:
        caret = f"\n  {snippet}\n  {' ' * pos}^"
    where = f"position {pos + 1}" + (f" (line {line}, column {col})" if line > 1 else "")
    return FilterError(f"CQL2 text syntax error at {where}: {message}{caret}", pos + 1)


class _TextParser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    # helpers --------------------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def is_kw(self, *words: str, tok: _Tok | None = None) -> bool:
        t = tok or self.tok
        return t.kind == "ident" and t.value.upper() in words

    def is_op(self, *ops: str, tok: _Tok | None = None) -> bool:
        t = tok or self.tok
        return t.kind == "op" and t.value in ops

    def advance(self) -> _Tok:
        t = self.tok
        self.i += 1
        return t

    def error(self, message: str, tok: _Tok | None = None) -> FilterError:
        t = tok or self.tok
        found = "the end of the expression" if t.kind == "end" else repr(t.text)
        return _syntax(self.text, t.pos, message.replace("{found}", found))

    def expect_op(self, op: str, what: str = "") -> _Tok:
        if not self.is_op(op):
            raise self.error(f"expected {op!r}{what}, found {{found}}")
        return self.advance()

    # grammar --------------------------------------------------------------------------------
    def parse(self):
        if self.tok.kind == "end":
            raise self.error("the filter is empty")
        node = self.or_()
        if self.tok.kind != "end":
            raise self.error("expected AND, OR or the end of the expression, found {found}")
        return node

    def or_(self):
        args = [self.and_()]
        while self.is_kw("OR"):
            self.advance()
            args.append(self.and_())
        return args[0] if len(args) == 1 else Or(tuple(args))

    def and_(self):
        args = [self.not_()]
        while self.is_kw("AND"):
            self.advance()
            args.append(self.not_())
        return args[0] if len(args) == 1 else And(tuple(args))

    def not_(self):
        if self.is_kw("NOT"):
            self.advance()
            return Not(self.not_())
        return self.predicate()

    def predicate(self):
        lhs = self.arith()
        t = self.tok
        if t.kind == "op" and t.value in COMPARE_OPS:
            self.advance()
            return Compare(t.value, lhs, self.arith())
        negate = False
        if self.is_kw("NOT") and self.is_kw("LIKE", "IN", "BETWEEN", tok=self.peek()):
            self.advance()
            negate = True
        if self.is_kw("LIKE"):
            self.advance()
            return Like(lhs, self.arith(), negate)
        if self.is_kw("BETWEEN"):
            self.advance()
            low = self.arith()
            if not self.is_kw("AND"):
                raise self.error("expected AND (BETWEEN low AND high), found {found}")
            self.advance()
            return Between(lhs, low, self.arith(), negate)
        if self.is_kw("IN"):
            self.advance()
            self.expect_op("(", " after IN")
            items = [self.arith()]
            while self.is_op(","):
                self.advance()
                items.append(self.arith())
            self.expect_op(")", " closing the IN list")
            return In(lhs, tuple(items), negate)
        if self.is_kw("IS"):
            self.advance()
            neg = False
            if self.is_kw("NOT"):
                self.advance()
                neg = True
            if not self.is_kw("NULL"):
                raise self.error("expected NULL (IS [NOT] NULL), found {found}")
            self.advance()
            return IsNull(lhs, neg)
        # a bare operand: a boolean property or literal, a function's argument, or an arithmetic
        # term inside parentheses; to_sql() rejects values used as conditions
        return lhs

    def arith(self):
        node = self.term()
        while self.is_op("+", "-"):
            op = self.advance().value
            node = Arith(op, node, self.term())
        return node

    def term(self):
        node = self.power()
        while self.is_op("*", "/", "%") or self.is_kw("DIV"):
            t = self.advance()
            node = Arith("div" if t.kind == "ident" else t.value, node, self.power())
        return node

    def power(self):
        node = self.unary()
        if self.is_op("^"):
            self.advance()
            node = Arith("^", node, self.power())
        return node

    def unary(self):
        if self.is_op("-", "+"):
            sign = self.advance().value
            operand = self.unary()
            if sign == "+":
                return operand
            if isinstance(operand, Lit) and isinstance(operand.value, (int, float)) and not isinstance(operand.value, bool):
                return Lit(-operand.value)
            return Arith("*", Lit(-1), operand)
        return self.primary()

    def primary(self):
        t = self.tok
        if t.kind == "number":
            self.advance()
            return Lit(t.value)
        if t.kind == "string":
            self.advance()
            return Lit(t.value)
        if t.kind == "qident":
            self.advance()
            return Prop(t.value)
        if self.is_op("("):
            self.advance()
            node = self.or_()
            self.expect_op(")", " closing the parenthesis")
            return node
        if t.kind == "ident":
            word = t.value.upper()
            if word in ("TRUE", "FALSE"):
                self.advance()
                return Lit(word == "TRUE")
            if word in GEOMETRY_KEYWORDS:
                return self.wkt()
            if word in _KEYWORDS:
                raise self.error(f"expected a property, a literal or a function, found the keyword {word}")
            if self.is_op("(", tok=self.peek()):
                return self.call()
            self.advance()
            return Prop(t.value)
        if t.kind == "end":
            raise self.error("the expression ends early: expected a property, a literal or a function")
        raise self.error("expected a property, a literal or a function, found {found}")

    def wkt(self):
        start = self.tok
        self.advance()
        # optional Z / M / ZM / EMPTY, then balanced parentheses
        while self.tok.kind == "ident" and self.tok.value.upper() in ("Z", "M", "ZM", "EMPTY"):
            if self.tok.value.upper() == "EMPTY":
                raise self.error("empty geometries cannot be used in a spatial predicate")
            self.advance()
        if not self.is_op("("):
            raise self.error(f"expected '(' after {start.value.upper()}, found {{found}}")
        depth = 0
        while True:
            t = self.tok
            if t.kind == "end":
                raise self.error(f"unbalanced parentheses in the {start.value.upper()} geometry", start)
            if self.is_op("("):
                depth += 1
            elif self.is_op(")"):
                depth -= 1
            elif not (t.kind == "number" or self.is_op(",", "-", "+") or
                      self.is_kw(*GEOMETRY_KEYWORDS, "Z", "M", "ZM", "EMPTY")):
                raise self.error(f"unexpected {{found}} inside the {start.value.upper()} geometry")
            self.advance()
            if depth == 0:
                break
        end = self.toks[self.i - 1]
        raw = self.text[start.pos:end.pos + len(end.text)]
        try:
            return _wkt_geometry(raw, f"at position {start.pos + 1}")
        except FilterError as exc:
            raise FilterError(str(exc), start.pos + 1) from None

    def call(self):
        name_tok = self.advance()
        name = name_tok.value.lower()
        open_tok = self.expect_op("(")
        args: list = []
        if name in ("date", "timestamp"):
            s = self.string_arg(name)
            self.expect_op(")", f" closing {name.upper()}(")
            where = f"position {name_tok.pos + 1}"
            return Lit(_parse_date(s, where) if name == "date" else _parse_timestamp(s, where))
        if name == "interval":
            bounds = []
            for k in range(2):
                if k:
                    self.expect_op(",", " between the two bounds of INTERVAL")
                if self.tok.kind == "ident" and self.tok.value.upper() in ("DATE", "TIMESTAMP") and self.is_op("(", tok=self.peek()):
                    lit = self.call()
                    bounds.append(lit.value)
                else:
                    s = self.string_arg("interval")
                    bounds.append(_parse_instant(s, f"INTERVAL at position {name_tok.pos + 1}"))
            self.expect_op(")", " closing INTERVAL(")
            return _interval(bounds[0], bounds[1], f"INTERVAL at position {name_tok.pos + 1}")
        if name == "bbox":
            nums = []
            while True:
                lit = self.unary()
                if not (isinstance(lit, Lit) and isinstance(lit.value, (int, float)) and not isinstance(lit.value, bool)):
                    raise self.error("BBOX takes numbers: BBOX(minx, miny, maxx, maxy)", open_tok)
                nums.append(lit.value)
                if self.is_op(","):
                    self.advance()
                    continue
                break
            self.expect_op(")", " closing BBOX(")
            try:
                return _bbox(nums, f"BBOX at position {name_tok.pos + 1}")
            except FilterError as exc:
                raise FilterError(str(exc), name_tok.pos + 1) from None
        if not self.is_op(")"):
            args.append(self.call_arg(name))
            while self.is_op(","):
                self.advance()
                args.append(self.call_arg(name))
        self.expect_op(")", f" closing {name_tok.value}(")
        try:
            return _make_call(name, args, f"{name_tok.value}() at position {name_tok.pos + 1}")
        except FilterError as exc:
            raise FilterError(str(exc), name_tok.pos + 1) from None

    def call_arg(self, fname: str):
        # in(a, (1, 2)) and like(a, b) also have function forms; a parenthesised list is an IN list
        if fname == "in" and self.is_op("("):
            self.advance()
            items = [self.arith()]
            while self.is_op(","):
                self.advance()
                items.append(self.arith())
            self.expect_op(")")
            return tuple(items)
        return self.or_()

    def string_arg(self, fname: str) -> str:
        if self.tok.kind != "string":
            raise self.error(f"{fname.upper()}(...) takes a quoted string, found {{found}}")
        return self.advance().value


def _interval(start, end, where: str) -> Interval:
    if start is not None and end is not None:
        a = start if isinstance(start, datetime) else timepolicy.day_bound(start, "start")
        b = end if isinstance(end, datetime) else timepolicy.day_bound(end, "start")
        if a > b:
            raise FilterError(f"{where}: the interval starts after it ends")
    return Interval(start, end)


def _is_boolean_node(node) -> bool:
    return isinstance(node, (Compare, Like, In, Between, IsNull, And, Or, Not, Spatial, Temporal)) or (
        isinstance(node, Lit) and isinstance(node.value, bool)) or isinstance(node, Prop)


def _make_call(name: str, args: list, where: str):
    def arity(n: int):
        if len(args) != n:
            raise FilterError(f"{where}: takes {n} argument{'s' if n > 1 else ''}, got {len(args)}")

    if name in SPATIAL_OPS:
        arity(2)
        return Spatial(name, args[0], args[1])
    if name in TEMPORAL_OPS:
        arity(2)
        return Temporal(name, args[0], args[1])
    if name in SCALAR_FUNCS:
        arity(1)
        return Func(name, (args[0],))
    if name == "like":
        arity(2)
        return Like(args[0], args[1])
    if name == "between":
        arity(3)
        return Between(args[0], args[1], args[2])
    if name == "in":
        arity(2)
        if not isinstance(args[1], tuple):
            raise FilterError(f"{where}: the second argument of IN is a list, e.g. IN(name, ('a', 'b'))")
        return In(args[0], args[1])
    if name in ("s_relate", "relate", "a_equals", "a_contains", "a_containedby", "a_overlaps"):
        raise FilterError(f"{where}: {name.upper()} is not supported by this server")
    raise FilterError(f"{where}: unknown function {name!r}; supported: {_SUPPORTED_FUNCS}")


# --------------------------------------------------------------------------------------------
# CQL2 JSON

_JSON_OPS_BOOL = {"and", "or", "not"}


def _json_node(obj, path: str):
    if isinstance(obj, bool) or isinstance(obj, (int, float)):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise FilterError(f"CQL2 JSON at {path}: numbers must be finite", path)
        return Lit(obj)
    if isinstance(obj, str):
        return Lit(obj)
    if obj is None:
        raise FilterError(f"CQL2 JSON at {path}: null is not a value in CQL2; use {{\"op\": \"isNull\", ...}}", path)
    if isinstance(obj, list):
        return tuple(_json_node(v, f"{path}[{k}]") for k, v in enumerate(obj))
    if not isinstance(obj, dict):
        raise FilterError(f"CQL2 JSON at {path}: unexpected value {obj!r}", path)
    if "op" in obj:
        return _json_op(obj, path)
    if "property" in obj:
        name = obj["property"]
        if not isinstance(name, str) or not name:
            raise FilterError(f"CQL2 JSON at {path}: \"property\" is a property name (a string)", path)
        return Prop(name)
    if "date" in obj:
        if not isinstance(obj["date"], str):
            raise FilterError(f"CQL2 JSON at {path}: \"date\" is a string 'YYYY-MM-DD'", path)
        return Lit(_parse_date(obj["date"], f"CQL2 JSON at {path}"))
    if "timestamp" in obj:
        if not isinstance(obj["timestamp"], str):
            raise FilterError(f"CQL2 JSON at {path}: \"timestamp\" is an RFC 3339 string", path)
        return Lit(_parse_timestamp(obj["timestamp"], f"CQL2 JSON at {path}"))
    if "interval" in obj:
        iv = obj["interval"]
        if not (isinstance(iv, list) and len(iv) == 2):
            raise FilterError(f"CQL2 JSON at {path}: \"interval\" is a list of two bounds", path)
        bounds = []
        for k, b in enumerate(iv):
            where = f"CQL2 JSON at {path}.interval[{k}]"
            if isinstance(b, str):
                bounds.append(_parse_instant(b, where))
            elif isinstance(b, dict) and ("date" in b or "timestamp" in b):
                bounds.append(_json_node(b, f"{path}.interval[{k}]").value)
            else:
                raise FilterError(f"{where}: an interval bound is a date or timestamp string or '..'", path)
        return _interval(bounds[0], bounds[1], f"CQL2 JSON at {path}")
    if "bbox" in obj:
        b = obj["bbox"]
        if not isinstance(b, list):
            raise FilterError(f"CQL2 JSON at {path}: \"bbox\" is a list of 4 or 6 numbers", path)
        return _bbox(b, f"CQL2 JSON at {path}")
    if "type" in obj and ("coordinates" in obj or "geometries" in obj):
        return _geojson_geometry(obj, f"CQL2 JSON at {path}")
    raise FilterError(
        f"CQL2 JSON at {path}: expected an operation {{\"op\": ..., \"args\": [...]}}, a "
        "{\"property\": ...}, a literal, {\"date\"|\"timestamp\"|\"interval\"|\"bbox\": ...} or a GeoJSON "
        f"geometry; got keys {sorted(obj)}", path)


def _json_op(obj: dict, path: str):
    op = obj["op"]
    if not isinstance(op, str):
        raise FilterError(f"CQL2 JSON at {path}.op: the operator is a string", path)
    args = obj.get("args", [])
    if not isinstance(args, list):
        raise FilterError(f"CQL2 JSON at {path}.args: \"args\" is a list", path)
    where = f"CQL2 JSON at {path} (op {op!r})"
    lop = op.lower()
    if lop in ("and", "or"):
        if len(args) < 2:
            raise FilterError(f"{where}: takes at least 2 arguments", path)
        nodes = tuple(_json_node(a, f"{path}.args[{k}]") for k, a in enumerate(args))
        return And(nodes) if lop == "and" else Or(nodes)
    nodes = [_json_node(a, f"{path}.args[{k}]") for k, a in enumerate(args)]

    def arity(n: int):
        if len(nodes) != n:
            raise FilterError(f"{where}: takes {n} argument{'s' if n > 1 else ''}, got {len(nodes)}", path)

    if lop == "not":
        arity(1)
        return Not(nodes[0])
    if op in COMPARE_OPS:
        arity(2)
        return Compare(op, nodes[0], nodes[1])
    if lop in ARITH_OPS:
        arity(2)
        return Arith(lop, nodes[0], nodes[1])
    if lop == "isnull":
        arity(1)
        return IsNull(nodes[0])
    if lop == "in":
        arity(2)
        if not isinstance(nodes[1], tuple):
            raise FilterError(f"{where}: the second argument is a list of values", path)
        return In(nodes[0], nodes[1])
    try:
        return _make_call(lop, nodes, where)
    except FilterError as exc:
        raise FilterError(str(exc), path) from None


# --------------------------------------------------------------------------------------------
# public: parse


def parse(text_or_json: str | dict, lang: str = "cql2-text"):
    """Parse a CQL2 filter. ``lang``: cql2-text | cql2-json (or the drafts' cql-text | cql-json).

    CQL2 JSON may be given as a dict or as its JSON text. Raises :class:`FilterError`."""
    try:
        node = _parse(text_or_json, lang)
    except RecursionError:  # e.g. thousands of nested brackets or JSON arrays
        raise FilterError(f"the filter is nested too deeply (at most {MAX_DEPTH} levels)") from None
    if _depth(node) > MAX_DEPTH:  # to_sql and PostgreSQL recurse over the tree too
        raise FilterError(f"the filter is nested too deeply (at most {MAX_DEPTH} levels of brackets, NOT, "
                          "functions or arithmetic)")
    return node


#: How deep a filter's tree may be (brackets, NOT, functions, arithmetic): hostile input is refused
#: before anything recurses over it.
MAX_DEPTH = 100


def _depth(node) -> int:
    """The depth of an AST, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(n, (tuple, list)):
            stack.extend((c, d) for c in n)
        elif hasattr(n, "__dataclass_fields__"):
            stack.extend((getattr(n, f), d + 1) for f in n.__dataclass_fields__)
    return deepest


def _parse(text_or_json: str | dict, lang: str):
    canonical = FILTER_LANGS.get((lang or "cql2-text").strip().lower())
    if canonical is None:
        raise FilterError(f"filter-lang {lang!r} is not supported; use one of: cql2-text, cql2-json")
    if canonical == "cql2-json":
        obj = text_or_json
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise FilterError(
                    f"CQL2 JSON is not valid JSON at position {exc.pos + 1} (line {exc.lineno}, "
                    f"column {exc.colno}): {exc.msg}", exc.pos + 1) from None
        node = _json_node(obj, "$")
    else:
        if not isinstance(text_or_json, str):
            raise FilterError("a cql2-text filter is a string; for a JSON object use filter-lang=cql2-json")
        if len(text_or_json) > 100_000:
            raise FilterError("the filter is too long (over 100,000 characters)")
        node = _TextParser(text_or_json).parse()
    if not _is_boolean_node(node):
        raise FilterError("the filter must be a condition (a comparison, a predicate or a combination "
                          "of them with AND / OR / NOT), not a value")
    return node


# --------------------------------------------------------------------------------------------
# public: to_sql


_CASTS = SQL_CASTS  # the store's type → SQL cast table
_NUMERIC = ("integer", "number")
_TEMPORAL = ("date", "datetime")


def queryable_names(layer) -> list[str]:
    """The property names a filter may use on ``layer``."""
    names = [p["name"] for p in layer.properties]
    extra = [n for n in (ID_NAME, *GEOMETRY_NAMES) if n not in names]
    return names + extra


def _lit_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    return "string"


def parse_srid(filter_crs: str | None) -> tuple[int | None, bool]:
    """(srid, flip): None for CRS84 (lon/lat, stored as-is); flip when the CRS's first axis is
    northing / latitude (EPSG:4490 and 4326 are lat, lon; EPSG:4547 is northing, easting)."""
    if filter_crs is None:
        return None, False
    s = filter_crs.strip().strip("<>")
    if re.fullmatch(r"(?i)(https?://www\.opengis\.net/def/crs/OGC/(1\.3|0)/CRS84|urn:ogc:def:crs:OGC:(1\.3)?:CRS84|CRS84|OGC:CRS84)", s):
        return None, False
    m = (re.fullmatch(r"(?i)https?://www\.opengis\.net/def/crs/EPSG/0/(\d{1,6})", s)
         or re.fullmatch(r"(?i)EPSG:(\d{1,6})", s)
         or re.fullmatch(r"(?i)urn:ogc:def:crs:EPSG:[\d.]*:(\d{1,6})", s))
    if not m:
        raise FilterError(
            f"filter-crs {filter_crs!r} is not supported; use a CRS URI such as "
            "http://www.opengis.net/def/crs/OGC/1.3/CRS84 (default) or "
            "http://www.opengis.net/def/crs/EPSG/0/4490")
    srid = int(m.group(1))
    try:
        from pyproj import CRS

        crs = CRS.from_epsg(srid)
        first = crs.axis_info[0].direction.lower() if crs.axis_info else "east"
    except Exception:
        raise FilterError(f"filter-crs {filter_crs!r}: EPSG:{srid} is not a known CRS") from None
    return srid, first in ("north", "south")


@dataclass
class _Ctx:
    layer: Any
    alias: sql.Identifier
    srid: int | None
    flip: bool
    params: list = field(default_factory=list)


def to_sql(ast, layer, *, alias: str = "f", filter_crs: str | None = None) -> tuple[sql.Composable, list]:
    """The SQL condition for ``ast`` on ``layer``'s partition aliased ``alias``, and its parameters
    (``%s`` placeholders, in order). Raises :class:`FilterError` for unknown properties, type
    mismatches and unsupported constructs."""
    srid, flip = parse_srid(filter_crs)
    ctx = _Ctx(layer=layer, alias=sql.Identifier(alias), srid=srid, flip=flip)
    cond = _cond(ast, ctx)
    return cond, ctx.params


def _param(ctx: _Ctx, value, cast: str | None = None) -> sql.Composable:
    ctx.params.append(value)
    return sql.SQL("%s::" + cast) if cast else sql.SQL("%s")


def _cond(node, ctx: _Ctx) -> sql.Composable:
    if isinstance(node, And):
        return sql.SQL("(") + sql.SQL(" AND ").join(_cond(a, ctx) for a in node.args) + sql.SQL(")")
    if isinstance(node, Or):
        return sql.SQL("(") + sql.SQL(" OR ").join(_cond(a, ctx) for a in node.args) + sql.SQL(")")
    if isinstance(node, Not):
        return sql.SQL("(NOT {})").format(_cond(node.arg, ctx))
    if isinstance(node, Compare):
        return _compare(node, ctx)
    if isinstance(node, Like):
        lhs, lt = _expr(node.lhs, ctx)
        pat, pt = _expr(node.pattern, ctx)
        for t, what in ((lt, "left side"), (pt, "pattern")):
            if t != "string":
                raise FilterError(f"LIKE: the {what} must be a string, got a {t} ({_describe(node.lhs if what == 'left side' else node.pattern)})")
        op = "NOT LIKE" if node.not_ else "LIKE"
        return sql.SQL("({} " + op + " {})").format(lhs, pat)
    if isinstance(node, In):
        lhs, lt = _expr(node.lhs, ctx)
        items = []
        for item in node.items:
            e, t = _expr(item, ctx, hint=lt)
            _check_comparable(lt, t, node.lhs, item, "IN")
            items.append(e)
        op = "NOT IN" if node.not_ else "IN"
        return sql.SQL("({} " + op + " ({}))").format(lhs, sql.SQL(", ").join(items))
    if isinstance(node, Between):
        lhs, lt = _expr(node.lhs, ctx)
        lo, lot = _expr(node.low, ctx, hint=lt)
        hi, hit = _expr(node.high, ctx, hint=lt)
        _check_comparable(lt, lot, node.lhs, node.low, "BETWEEN")
        _check_comparable(lt, hit, node.lhs, node.high, "BETWEEN")
        op = "NOT BETWEEN" if node.not_ else "BETWEEN"
        return sql.SQL("({} " + op + " {} AND {})").format(lhs, lo, hi)
    if isinstance(node, IsNull):
        if not isinstance(node.lhs, (Prop, Func, Arith)):
            raise FilterError("IS NULL applies to a property, e.g. name IS NULL")
        lhs, _ = _expr(node.lhs, ctx)
        return sql.SQL("({} IS " + ("NOT " if node.not_ else "") + "NULL)").format(lhs)
    if isinstance(node, Spatial):
        a = _geom_expr(node.lhs, ctx)
        b = _geom_expr(node.rhs, ctx)
        return sql.SQL(SPATIAL_OPS[node.op] + "({}, {})").format(a, b)
    if isinstance(node, Temporal):
        return _temporal(node, ctx)
    if isinstance(node, Lit) and isinstance(node.value, bool):
        return sql.SQL("TRUE" if node.value else "FALSE")
    if isinstance(node, Prop):
        e, t = _expr(node, ctx)
        if t != "boolean":
            raise FilterError(f"property {node.name!r} is a {t}, not a boolean: compare it with a value "
                              f"(e.g. {node.name} = ...)")
        return sql.SQL("({} IS TRUE)").format(e)
    raise FilterError(f"{_describe(node)} is a value, not a condition: compare it with something")


def _describe(node) -> str:
    if isinstance(node, Prop):
        return f"property {node.name!r}"
    if isinstance(node, Lit):
        return f"literal {node.value!r}"
    if isinstance(node, Geom):
        return "a geometry"
    if isinstance(node, Interval):
        return "an interval"
    return type(node).__name__


def _check_comparable(lt: str, rt: str, lnode, rnode, what: str):
    if lt == rt or (lt in _NUMERIC and rt in _NUMERIC) or (lt in _TEMPORAL and rt in _TEMPORAL):
        return
    if "null" in (lt, rt):
        return
    raise FilterError(
        f"{what}: cannot compare {_describe(lnode)} ({lt}) with {_describe(rnode)} ({rt})"
        + (f"; write dates as DATE('YYYY-MM-DD') and timestamps as TIMESTAMP('...Z')" if lt in _TEMPORAL or rt in _TEMPORAL else ""))


def _compare(node: Compare, ctx: _Ctx) -> sql.Composable:
    # a string literal stands for a date / timestamp when the other side is one (lenient:
    # updated > '2024-05-01' works as well as updated > DATE('2024-05-01'))
    scratch = _Ctx(ctx.layer, ctx.alias, ctx.srid, ctx.flip)
    _, rt0 = _expr(node.rhs, scratch)
    lhs, lt = _expr(node.lhs, ctx, hint=rt0)
    rhs, rt = _expr(node.rhs, ctx, hint=lt)
    if lt == "geometry" or rt == "geometry":
        raise FilterError("compare geometries with S_EQUALS(a, b), not with =")
    if lt == "interval" or rt == "interval":
        raise FilterError("compare intervals with the temporal functions (T_EQUALS, T_DURING, ...)")
    _check_comparable(lt, rt, node.lhs, node.rhs, f"'{node.op}'")
    return sql.SQL("({} " + node.op + " {})").format(lhs, rhs)


def _coerce_string(value: str, t: str):
    where = f"the string {value!r} compared with a {t}"
    if t == "date" or len(value) == 10:
        return _parse_date(value, where)
    return _parse_timestamp(value, where)


def _prop(node: Prop, ctx: _Ctx) -> tuple[sql.Composable, str]:
    schema = ctx.layer.schema
    name = node.name
    if name in schema:
        t = schema[name]
        cast = _CASTS.get(t)
        if cast is None:
            raise FilterError(f"property {name!r} has type {t!r}, which cannot be filtered on")
        e = sql.SQL("(({}.properties ->> {})::" + cast + ")").format(ctx.alias, sql.Literal(name))
        return e, t
    if name == ID_NAME:
        return sql.SQL("{}.fid").format(ctx.alias), "string"
    if name in GEOMETRY_NAMES:
        return sql.SQL("{}.geom").format(ctx.alias), "geometry"
    raise FilterError(
        f"unknown property {name!r} in the filter; the queryables of layer {ctx.layer.name!r} are: "
        + ", ".join(queryable_names(ctx.layer)))


def _expr(node, ctx: _Ctx, hint: str | None = None) -> tuple[sql.Composable, str]:
    """A scalar expression: (SQL, type)."""
    if isinstance(node, Prop):
        return _prop(node, ctx)
    if isinstance(node, Lit):
        v = node.value
        t = _lit_type(v)
        if t == "string" and hint in _TEMPORAL:
            v = _coerce_string(v, hint)
            t = _lit_type(v)
        if t == "integer" and abs(v) >= 2**63:
            return _param(ctx, v, "numeric"), "number"
        cast = {"string": "text", "integer": "bigint", "number": "double precision", "boolean": "boolean",
                "date": "date", "datetime": "timestamptz"}[t]
        return _param(ctx, v, cast), t
    if isinstance(node, Func):
        arg, t = _expr(node.args[0], ctx)
        if t != "string":
            raise FilterError(f"{node.name.upper()}() takes a string, got a {t} ({_describe(node.args[0])})")
        if node.name == "casei":
            return sql.SQL("lower({})").format(arg), "string"
        raise FilterError("ACCENTI() (accent-insensitive comparison) is not supported by this server")
    if isinstance(node, Arith):
        a, at = _expr(node.lhs, ctx)
        b, bt = _expr(node.rhs, ctx)
        for t, n in ((at, node.lhs), (bt, node.rhs)):
            if t not in _NUMERIC:
                raise FilterError(f"arithmetic '{node.op}' needs numbers, got a {t} ({_describe(n)})")
        if node.op == "/" and isinstance(node.rhs, Lit) and node.rhs.value == 0:
            raise FilterError("division by zero in the filter")
        rt = "integer" if at == bt == "integer" and node.op in ("+", "-", "*", "%", "div") else "number"
        if node.op == "/":
            return sql.SQL("({}::double precision / NULLIF({}, 0))").format(a, b), "number"
        if node.op == "div":
            return sql.SQL("div({}::numeric, NULLIF({}, 0)::numeric)::bigint").format(a, b), "integer"
        if node.op == "%":
            if rt == "integer":
                return sql.SQL("mod({}, NULLIF({}, 0))").format(a, b), "integer"
            return sql.SQL("mod({}::numeric, NULLIF({}, 0)::numeric)::double precision").format(a, b), "number"
        if node.op == "^":
            return sql.SQL("power({}::double precision, {}::double precision)").format(a, b), "number"
        return sql.SQL("({} " + node.op + " {})").format(a, b), rt
    if isinstance(node, Geom):
        return _geom_expr(node, ctx), "geometry"
    if isinstance(node, Interval):
        return sql.SQL("NULL"), "interval"
    if isinstance(node, tuple):
        raise FilterError("a list of values is only allowed after IN")
    raise FilterError(f"a condition ({type(node).__name__}) cannot be used as a value here")


def _geom_expr(node, ctx: _Ctx) -> sql.Composable:
    if isinstance(node, Geom):
        ctx.params.append(node.wkt)
        if ctx.srid is None:
            # CRS84 literals: lon/lat on WGS 84, taken as CGCS2000 (EPSG:4490) as stored; the two
            # differ by centimetres, and PROJ's transformation between them is a null one.
            return sql.SQL("ST_GeomFromText(%s, 4490)")
        g = sql.SQL("ST_GeomFromText(%s)")
        if ctx.flip:
            g = sql.SQL("ST_FlipCoordinates({})").format(g)
        g = sql.SQL("ST_SetSRID({}, {})").format(g, sql.Literal(ctx.srid))
        if ctx.srid != 4490:
            g = sql.SQL("ST_Transform({}, 4490)").format(g)
        return g
    if isinstance(node, Prop):
        e, t = _prop(node, ctx)
        if t != "geometry":
            raise FilterError(f"spatial functions take geometries; property {node.name!r} is a {t} "
                              f"(the geometry property is called 'geometry')")
        return e
    raise FilterError(f"spatial functions take geometries (the 'geometry' property, WKT, GeoJSON or "
                      f"BBOX literals), got {_describe(node)}")


_NEG_INF = sql.SQL("'-infinity'::timestamptz")
_POS_INF = sql.SQL("'infinity'::timestamptz")


def _temporal_bound(node, side: str, ctx: _Ctx) -> sql.Composable:
    """The start (side 's') or end ('e') of a temporal operand: an instant is its own start and end."""
    if isinstance(node, Interval):
        v = node.start if side == "s" else node.end
        if v is None:
            return _NEG_INF if side == "s" else _POS_INF
        return _param(ctx, v, _CASTS[_lit_type(v)])
    e, t = _expr(node, ctx)
    if t not in _TEMPORAL:
        raise FilterError(f"temporal functions take dates, timestamps or intervals; {_describe(node)} is a {t}"
                          + ("" if not isinstance(node, Lit) or t != "string" else
                             "; write DATE('YYYY-MM-DD'), TIMESTAMP('YYYY-MM-DDThh:mm:ssZ') or INTERVAL(a, b)"))
    return e


# Allen's relations in CQL2's definitions, on (start, end) pairs
_TEMPORAL_SQL = {
    "t_after": "({as_} > {be})",
    "t_before": "({ae} < {bs})",
    "t_disjoint": "({ae} < {bs} OR {as_} > {be})",
    "t_equals": "({as_} = {bs} AND {ae} = {be})",
    "t_intersects": "({as_} <= {be} AND {ae} >= {bs})",
    "t_during": "({as_} > {bs} AND {ae} < {be})",
    "t_contains": "({as_} < {bs} AND {ae} > {be})",
    "t_meets": "({ae} = {bs})",
    "t_metby": "({as_} = {be})",
    "t_overlaps": "({as_} < {bs} AND {ae} > {bs} AND {ae} < {be})",
    "t_overlappedby": "({as_} > {bs} AND {as_} < {be} AND {ae} > {be})",
    "t_starts": "({as_} = {bs} AND {ae} < {be})",
    "t_startedby": "({as_} = {bs} AND {ae} > {be})",
    "t_finishes": "({as_} > {bs} AND {ae} = {be})",
    "t_finishedby": "({as_} < {bs} AND {ae} = {be})",
}


def _temporal(node: Temporal, ctx: _Ctx) -> sql.Composable:
    # parameters appear once per use in the template, so build each placeholder where it is used
    template = _TEMPORAL_SQL[node.op]
    pieces = re.split(r"(\{as_\}|\{ae\}|\{bs\}|\{be\})", template)
    out: list[sql.Composable] = []
    for piece in pieces:
        if piece in ("{as_}", "{ae}", "{bs}", "{be}"):
            operand = node.lhs if piece[1] == "a" else node.rhs
            out.append(_temporal_bound(operand, piece[2], ctx))
        elif piece:
            out.append(sql.SQL(piece))
    return sql.Composed(out)
