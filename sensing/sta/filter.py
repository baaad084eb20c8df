"""SensorThings ``$filter`` and ``$orderby`` (OGC 18-088 §9.3.3.5, the OData 4 subset) → SQL.

    cond, params = compile_filter("Datastream/Thing/properties/community eq '坂田'", OBSERVATIONS, "o")
    conn.execute(f"SELECT o.id FROM sta_observations o WHERE {cond}", params)

    for expr, params, direction in compile_orderby("phenomenonTime desc, id", OBSERVATIONS, "o"): ...

The text is parsed by a LALR grammar (lark, below) and compiled to one SQL boolean expression over
the caller's table alias with psycopg ``%s`` placeholders. User text never becomes SQL text:
literals (strings, numbers, times, WKT, JSON member names) are parameters; property and
navigation names are looked up in :mod:`sensing.sta.model` and only the model's SQL is written.
The generated SQL contains no ``{``, ``}`` or ``%`` other than the ``%s`` placeholders, so it may
be pasted into ``psycopg.sql.SQL`` templates or f-strings alike.

Semantics (where OData / STA are silent, as FROST-Server does):

- Precedence, loosest first: ``or``, ``and``, ``not``, ``eq ne``, ``gt ge lt le``, ``add sub``,
  ``mul div mod``, unary ``-``, then ``( )`` / calls / paths. ``not a eq b`` is ``not (a eq b)``.
  Operators and keywords are case-insensitive (OData writes them lower case).
- ``x eq null`` / ``x ne null`` are ``IS NULL`` / ``IS NOT NULL`` (for JSON: missing or JSON null).
- Navigation paths (``Datastream/Thing/name``, ``Locations/location``): the smallest condition
  that contains the path (a comparison or a boolean function) becomes
  ``EXISTS (SELECT 1 FROM <targets> WHERE <links> AND <condition>)`` — for to-many links: some
  related entity satisfies it (FROST). Paths sharing a prefix inside one condition share the row.
- JSON members (``properties/owner``, ``unitOfMeasurement/name``, ``parameters/a/0``) take the
  type of what they are compared with: a number literal → numeric (non-numbers are null), a string
  → text, a boolean → boolean, a date-time → timestamptz; two JSON values compare as jsonb.
- ``result``: compared with a number → ``result_number``; with a string → the result as text; with
  a boolean → a JSON boolean result; with another JSON value → jsonb.
- Time intervals (an Observation's ``phenomenonTime``/``validTime``, a Datastream's
  ``phenomenonTime``/``resultTime``, literals ``t1/t2``) against instants or intervals, with
  [s1, e1] and [s2, e2] (an instant t is [t, t]): ``eq`` s1 = s2 and e1 = e2; ``ne`` s1 <> s2 and
  e1 <> e2; ``gt`` s1 >= e2 and s1 > s2; ``ge`` s1 >= s2 and e1 >= e2; ``lt`` e1 <= s2 and
  s1 < s2; ``le`` s1 <= s2 and e1 <= e2 (FROST's rules). An Observation without an end time is
  the instant [start, start]. Date functions of an interval use its start.
- Date-times without an offset are district time (``GEOTWIN_TIMEZONE``, Asia/Shanghai), like every
  other time in geotwin. ``year()`` … ``second()``, ``date()``, ``time()`` and
  ``totaloffsetminutes()`` are taken in UTC, the zone every STA time is served in (as FROST does),
  so that ``hour(phenomenonTime) eq 6`` matches what a client reads (``…T06:…Z``). ``duration'P1DT2H'`` literals add to and
  subtract from times (``phenomenonTime gt now() sub duration'P1D'``).
- Geometry: ``geography'…'`` / ``geometry'…'`` WKT literals in SRID 4326 (an ``SRID=4326;`` prefix
  is accepted). ``geo.distance`` / ``geo.length`` are metres when a ``geography'…'`` literal takes
  part (OData's Edm.Geography), degrees (the planar SRID 4326 value, as FROST) otherwise.
- ``div`` and ``mod`` by zero give null (no row matches) instead of an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from sensing.sta import model
from sensing.sta.model import ENTITIES, Entity

__all__ = [
    "GEOMETRY_COLUMNS",
    "FilterError",
    "compile_expr",
    "compile_filter",
    "compile_orderby",
    "compile_orderby_expr",
]


class FilterError(ValueError):
    """A ``$filter`` / ``$orderby`` that cannot be used; the message names the position (1-based
    character of the text) or token and what is wrong — meant for the client developer. It does
    not repeat the parameter's name: ``parameter`` holds it (``$filter`` or ``$orderby``), e.g.
    ``invalid_parameter(e.parameter, str(e))``."""

    def __init__(self, message: str, position: int | None = None, parameter: str = "$filter"):
        super().__init__(message)
        self.position, self.parameter = position, parameter


#: Geometry-typed properties → the PostGIS column (the model's own column holds the GeoJSON).
GEOMETRY_COLUMNS: dict[tuple[str, str], str] = {
    ("Locations", "location"): "{a}.geom",
    ("FeaturesOfInterest", "feature"): "{a}.geom",
    ("Datastreams", "observedArea"): "{a}.observed_area",
    ("MultiDatastreams", "observedArea"): "{a}.observed_area",
}

MAX_LENGTH = 8000  # characters of filter text
MAX_DEPTH = 100    # nesting of the compiled tree (a hostile "((((((…" stays cheap)

# --------------------------------------------------------------------------------------------
# Grammar

_GRAMMAR = r"""
filter: expr
orderby: order_item ("," order_item)*
order_item: expr [DIRECTION]

?expr: or_expr
?or_expr: and_expr | or_expr OR and_expr -> logical
?and_expr: not_expr | and_expr AND not_expr -> logical
?not_expr: eq_expr | NOT not_expr -> not_
?eq_expr: rel_expr | eq_expr EQOP rel_expr -> compare
?rel_expr: add_expr | rel_expr RELOP add_expr -> compare
?add_expr: mul_expr | add_expr ADDOP mul_expr -> arith
?mul_expr: neg_expr | mul_expr MULOP neg_expr -> arith
?neg_expr: primary | MINUS neg_expr -> neg
?primary: literal | path | call | LPAR expr RPAR -> group

call: NAME LPAR [expr (COMMA expr)*] RPAR
path: NAME (SLASH segment)*
segment: NAME | INT

literal: STRING | INT | DECIMAL | TRUE | FALSE | NULL | DATETIME | DATE | TIMEOFDAY
       | INTERVAL | DURATION | GEOLIT

OR.2: /or\b/i
AND.2: /and\b/i
NOT.2: /not\b/i
EQOP.2: /(eq|ne)\b/i
RELOP.2: /(gt|ge|lt|le)\b/i
ADDOP.2: /(add|sub)\b/i
MULOP.2: /(mul|div|mod)\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
NULL.2: /null\b/i
DIRECTION.2: /(asc|desc)\b/i

STRING: /'(?:[^']|'')*'/
GEOLIT.3: /(?i:geography|geometry)'(?:[^']|'')*'/
DURATION.3: /(?i:duration)'[^']*'/
_DT: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+\- ]\d{2}:?\d{2})?/
INTERVAL.5: _DT "/" _DT
DATETIME.4: _DT
DATE.3: /\d{4}-\d{2}-\d{2}/
TIMEOFDAY.3: /\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?/
DECIMAL.2: /\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+/
INT.1: /\d+/
NAME: /[^\W\d][\w.\-]*/
LPAR: "("
RPAR: ")"
COMMA: ","
SLASH: "/"
MINUS: "-"

%ignore /\s+/
"""

_TERMINAL_NAMES = {
    "OR": "or", "AND": "and", "NOT": "not", "EQOP": "eq / ne", "RELOP": "gt / ge / lt / le",
    "ADDOP": "add / sub", "MULOP": "mul / div / mod", "TRUE": "true", "FALSE": "false", "NULL": "null",
    "DIRECTION": "asc / desc", "STRING": "a string ('…')", "GEOLIT": "geography'…'",
    "DURATION": "duration'…'", "INTERVAL": "a time interval", "DATETIME": "a date-time",
    "DATE": "a date", "TIMEOFDAY": "a time of day", "DECIMAL": "a number", "INT": "a number",
    "NAME": "a property or function name", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "SLASH": "'/'", "MINUS": "'-'", "$END": "the end",
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual", start=["filter", "orderby"],
                propagate_positions=True, maybe_placeholders=True)


def _parse(text: str, start: str, what: str) -> Tree:
    if not isinstance(text, str) or not text.strip():
        raise FilterError("the expression is empty; give one, e.g. name eq 'meter 1'", 1, what)
    if len(text) > MAX_LENGTH:
        raise FilterError(f"the expression is {len(text)} characters long; at most {MAX_LENGTH} are accepted",
                          1, what)
    if "\x00" in text:
        raise FilterError(f"a NUL character at position {text.index(chr(0)) + 1}", text.index("\x00") + 1, what)
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, what) from None


_VALUE_TERMINALS = {"STRING", "INT", "DECIMAL", "TRUE", "FALSE", "NULL", "DATETIME", "DATE", "TIMEOFDAY",
                    "INTERVAL", "DURATION", "GEOLIT"}


def _expected(names, what: str = "") -> str:
    names = {n for n in names if not n.startswith("__")}
    if what != "$orderby":
        names.discard("DIRECTION")
    shown = []
    if len(names & _VALUE_TERMINALS) > 3:
        names -= _VALUE_TERMINALS
        shown.append("a value (a number, 'text', true, false, null, a date-time, geography'…', duration'…')")
    shown += sorted({_TERMINAL_NAMES.get(n, n) for n in names})
    return ", ".join(shown)


def _syntax_error(e: UnexpectedInput, text: str, what: str) -> FilterError:
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream + 1
        ch = text[e.pos_in_stream]
        hint = ""
        if ch in "\"":
            hint = "; strings are written in single quotes: 'text' (a quote inside is doubled: 'it''s')"
        elif ch in "=<>!":
            hint = "; comparisons are written eq, ne, gt, ge, lt, le"
        elif ch in "+*%&|":
            hint = "; operators are written add, sub, mul, div, mod, and, or"
        elif ch == "'":
            hint = "; a string is not closed (a quote inside a string is doubled: 'it''s')"
        return FilterError(f"unexpected character {ch!r} at position {pos}{hint}", pos, what)
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        tok = e.token
        pos = (tok.start_pos or 0) + 1
        return FilterError(
            f"unexpected {str(tok)!r} at position {pos}; expected {_expected(e.expected, what)}", pos, what)
    pos = len(text) + 1
    expected = e.expected if isinstance(e, (UnexpectedToken, UnexpectedEOF)) else ()
    return FilterError(f"the expression ends too early (position {pos}); expected "
                       f"{_expected(expected, what) or 'more'}", pos, what)


# --------------------------------------------------------------------------------------------
# Typed SQL fragments

NUM, TEXT, BOOL, TIME, DATE, TOD, DUR, IVAL, GEOM, JSON, RESULT, NULLT = (
    "number", "text", "boolean", "date-time", "date", "time of day", "duration", "time interval",
    "geometry", "JSON value", "result", "null")

_NOLIT = object()


@dataclass(frozen=True)
class Join:
    alias: str
    table: str
    cond: str
    many: bool


@dataclass
class Node:
    t: str
    sql: str = ""
    params: list = field(default_factory=list)
    pos: int = 0
    end: Node | None = None          # IVAL: the end (never null: an instant ends at its start)
    jbase: tuple[str, list] | None = None  # JSON: the jsonb expression (sql, params) …
    jpath: tuple[str, ...] = ()        # … and the member path below it
    obs: str | None = None             # RESULT: the observations alias
    joins: tuple[Join, ...] = ()
    geography: bool = False
    literal: Any = _NOLIT
    label: str = ""                    # for messages: the path or literal as written


def _merge(*nodes: Node) -> tuple[Join, ...]:
    seen: dict[str, Join] = {}
    for n in nodes:
        if n is None:
            continue
        for j in n.joins:
            seen.setdefault(j.alias, j)
    return tuple(seen.values())


def _desc(n: Node) -> str:
    return f"{n.label} ({n.t})" if n.label else n.t


_JSON_TIME_RE = ("'^[0-9][0-9][0-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                 "([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]+)?)?([Zz]|[+-][0-9][0-9](:?[0-9][0-9])?)?)?$'")


def _jsonb(n: Node) -> tuple[str, list]:
    """The jsonb expression of a JSON / RESULT node."""
    if n.t == RESULT:
        return model.RESULT_SQL.format(a=n.obs), []
    base, bp = n.jbase
    if not n.jpath:
        return base, list(bp)
    return f"({base} #> %s::text[])", [*bp, list(n.jpath)]


# --------------------------------------------------------------------------------------------
# Literals

_DUR_RE = re.compile(r"-?P(?=\d|T\d)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
                     r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?", re.IGNORECASE)


def _parse_datetime(text: str, pos: int) -> datetime:
    from spatial_api.api import time as timepolicy

    s = text.strip()
    m = re.fullmatch(r"(.*T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})", s)
    if m:  # '+' decoded to a space by the URL layer: 2026-01-01T00:00:00 08:00
        s = f"{m.group(1)}+{m.group(2)}"
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(s)
    except ValueError:
        raise FilterError(f"{text!r} at position {pos} is not a valid date-time "
                          f"(e.g. 2026-01-01T08:00:00+08:00 or 2026-01-01T00:00:00Z)", pos) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timepolicy.zone())
    return value


def _literal(tok: Token) -> Node:
    pos = tok.start_pos + 1
    s, ty = str(tok), tok.type
    if ty == "STRING":
        v = s[1:-1].replace("''", "'")
        return Node(TEXT, "%s::text", [v], pos, literal=v, label=s)
    if ty == "INT":
        v = int(s)
        if v > 2**63 - 1:
            return Node(NUM, "%s::numeric", [Decimal(s)], pos, literal=v, label=s)
        return Node(NUM, "%s::bigint", [v], pos, literal=v, label=s)
    if ty == "DECIMAL":
        return Node(NUM, "%s::numeric", [Decimal(s)], pos, literal=Decimal(s), label=s)
    if ty in ("TRUE", "FALSE"):
        v = ty == "TRUE"
        return Node(BOOL, "TRUE" if v else "FALSE", [], pos, literal=v, label=s)
    if ty == "NULL":
        return Node(NULLT, "NULL", [], pos, literal=None, label=s)
    if ty == "DATETIME":
        v = _parse_datetime(s, pos)
        return Node(TIME, "%s::timestamptz", [v], pos, literal=v, label=s)
    if ty == "INTERVAL":
        a, b = s.split("/")
        t0, t1 = _parse_datetime(a, pos), _parse_datetime(b, pos)
        if t1 < t0:
            raise FilterError(f"the interval {s!r} at position {pos} ends before it starts", pos)
        return Node(IVAL, "%s::timestamptz", [t0], pos, literal=(t0, t1), label=s,
                    end=Node(TIME, "%s::timestamptz", [t1], pos))
    if ty == "DATE":
        try:
            v = date.fromisoformat(s)
        except ValueError:
            raise FilterError(f"{s!r} at position {pos} is not a calendar date", pos) from None
        return Node(DATE, "%s::date", [v], pos, literal=v, label=s)
    if ty == "TIMEOFDAY":
        try:
            v = time.fromisoformat(s)
        except ValueError:
            raise FilterError(f"{s!r} at position {pos} is not a time of day (00:00:00 to 23:59:59)", pos) from None
        return Node(TOD, "%s::time", [v], pos, literal=v, label=s)
    if ty == "DURATION":
        body = s[s.index("'") + 1:-1].strip()
        if not _DUR_RE.fullmatch(body):
            raise FilterError(f"{s} at position {pos} is not an ISO 8601 duration (e.g. duration'P1DT2H30M')", pos)
        return Node(DUR, "%s::interval", [body], pos, literal=body, label=s)
    if ty == "GEOLIT":
        return _geo_literal(s, pos)
    raise FilterError(f"unexpected literal {s!r} at position {pos}", pos)  # pragma: no cover


def _geo_literal(s: str, pos: int) -> Node:
    import shapely
    import shapely.validation
    from shapely import wkt as shapely_wkt
    from shapely.errors import ShapelyError

    kind, body = s.split("'", 1)
    body = body[:-1].replace("''", "'").strip()
    m = re.match(r"(?i)SRID\s*=\s*(\d+)\s*;\s*", body)
    if m:
        if m.group(1) != "4326":
            raise FilterError(f"{kind}'…' at position {pos} has SRID {m.group(1)}; only SRID 4326 "
                              f"(longitude latitude) is supported", pos)
        body = body[m.end():]
    try:
        g = shapely_wkt.loads(body)
    except (ShapelyError, ValueError) as e:
        raise FilterError(f"{kind}'…' at position {pos} is not valid WKT ({str(e).splitlines()[0][:120]}); "
                          f"e.g. {kind.lower()}'POINT(114.1 22.7)'", pos) from None
    if g.is_empty:
        raise FilterError(f"{kind}'…' at position {pos} is an empty geometry", pos)
    if not g.is_valid:
        raise FilterError(f"{kind}'…' at position {pos} is not a valid geometry "
                          f"({shapely.validation.explain_validity(g)})", pos)
    x0, y0, x1, y1 = g.bounds
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise FilterError(f"{kind}'…' at position {pos} is outside longitude -180..180 / latitude -90..90; "
                          f"coordinates are longitude latitude in SRID 4326", pos)
    return Node(GEOM, "ST_GeomFromText(%s::text, 4326)", [shapely.to_wkt(g, rounding_precision=-1)], pos,
                geography=kind.lower() == "geography", label=f"{kind}'…'")


# --------------------------------------------------------------------------------------------
# Functions: name → (argument count(s), handler name)

_STRING_FUNCS = {"substringof": 2, "contains": 2, "endswith": 2, "startswith": 2, "length": 1,
                 "indexof": 2, "substring": (2, 3), "tolower": 1, "toupper": 1, "trim": 1, "concat": 2}
_DATE_PARTS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute",
               "second": "second"}
_DATE_FUNCS = {**{k: 1 for k in _DATE_PARTS}, "fractionalseconds": 1, "date": 1, "time": 1,
               "totaloffsetminutes": 1, "now": 0, "mindatetime": 0, "maxdatetime": 0}
_MATH_FUNCS = {"round": 1, "floor": 1, "ceiling": 1}
_ST_FUNCS = {"st_equals": "ST_Equals", "st_disjoint": "ST_Disjoint", "st_touches": "ST_Touches",
             "st_within": "ST_Within", "st_overlaps": "ST_Overlaps", "st_crosses": "ST_Crosses",
             "st_intersects": "ST_Intersects", "st_contains": "ST_Contains"}
_GEO_FUNCS = {"geo.distance": 2, "geo.length": 1, "geo.intersects": 2, **{k: 2 for k in _ST_FUNCS},
              "st_relate": 3}
FUNCTIONS = {**_STRING_FUNCS, **_DATE_FUNCS, **_MATH_FUNCS, **_GEO_FUNCS}

_CMP = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_FLIP = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}

_ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


class _Compiler:
    def __init__(self, entity: Entity, alias: str, what: str):
        if not isinstance(entity, Entity):
            raise TypeError("entity must be a sensing.sta.model.Entity")
        if not _ALIAS_RE.fullmatch(alias or ""):
            raise ValueError(f"alias {alias!r} is not a plain SQL identifier")
        self.entity, self.alias, self.what = entity, alias, what
        self.aliases: dict[tuple[str, ...], str] = {}
        from spatial_api.api import time as timepolicy

        self.tz = "UTC"  # the zone times are served in (serialize.py), as FROST
        self.local_tz = timepolicy.zone().key  # naive literals
        self.depth = 0

    def err(self, msg: str, pos: int) -> FilterError:
        return FilterError(msg, pos, self.what)

    # ---- tree walking

    def node(self, t) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.err(f"the expression nests more than {MAX_DEPTH} levels deep", _pos(t))
        try:
            return self._node(t)
        finally:
            self.depth -= 1

    def _node(self, t) -> Node:
        if isinstance(t, Token):  # pragma: no cover - every token sits in a rule
            raise self.err(f"unexpected {str(t)!r}", t.start_pos + 1)
        d = t.data
        if d == "literal":
            try:
                return _literal(t.children[0])
            except FilterError as e:
                raise self.err(str(e), e.position) from None
        if d == "group":
            return self.node(t.children[1])
        if d == "path":
            return self.path(t)
        if d == "call":
            return self.call(t)
        if d == "neg":
            return self.neg(t.children[0], self.node(t.children[1]))
        if d == "not_":
            x = self.as_bool(self.node(t.children[1]))
            return Node(BOOL, f"NOT ({x.sql})", x.params, x.pos)
        if d == "logical":
            # a long chain (id eq 1 or id eq 2 or …) is a left-deep tree: walk it without recursion
            kind = t.children[1].type
            operands = [t.children[2]]
            x = t.children[0]
            while isinstance(x, Tree) and x.data == "logical" and x.children[1].type == kind:
                operands.append(x.children[2])
                x = x.children[0]
            operands.append(x)
            parts = [self.as_bool(self.node(o)) for o in reversed(operands)]
            word = " AND " if kind == "AND" else " OR "
            return Node(BOOL, word.join(f"({p.sql})" for p in parts), [v for p in parts for v in p.params],
                        parts[0].pos)
        if d == "compare":
            left, op, right = t.children
            return self.compare(str(op).lower(), self.node(left), self.node(right), op.start_pos + 1)
        if d == "arith":
            left, op, right = t.children
            return self.arith(str(op).lower(), self.node(left), self.node(right), op.start_pos + 1)
        raise self.err(f"unsupported expression {d!r}", _pos(t))  # pragma: no cover

    # ---- paths

    def path(self, t: Tree) -> Node:
        names = [t.children[0]] + [s.children[0] for s in t.children[1:] if isinstance(s, Tree)]
        pos = names[0].start_pos + 1
        label = "/".join(str(n) for n in names)
        ent, alias, joins, prefix = self.entity, self.alias, [], ()
        i = 0
        while i < len(names):
            name = str(names[i])
            spos = names[i].start_pos + 1
            nav = ent.nav(name)
            if nav is not None:
                target = ENTITIES[nav.target]
                rest = [str(n) for n in names[i + 1:]]
                if rest == ["id"] and nav.fk and sum(1 for n in ent.navs if n.fk == nav.fk) == 1:
                    return Node(NUM, f"{alias}.{nav.fk}", [], pos, joins=tuple(joins), label=label)
                prefix += (name,)
                a = self.aliases.get(prefix)
                if a is None:
                    a = self.aliases[prefix] = f"{self.alias}_f{len(self.aliases) + 1}"
                joins.append(Join(a, f"{target.table} {a}", nav.cond.format(c=a, p=alias), nav.many))
                ent, alias = target, a
                i += 1
                continue
            prop = ent.prop(name)
            if prop is None:
                known = ", ".join([p.name for p in ent.props] + [n.name for n in ent.navs])
                where = f"{ent.set_name}" if i == 0 else f"{ent.set_name} (reached by {'/'.join(map(str, names[:i]))})"
                if name.lower() in FUNCTIONS:
                    raise self.err(f"{name!r} at position {spos} is a function; call it with "
                                   f"parentheses, e.g. {name.lower()}(…)", spos)
                raise self.err(f"unknown property {name!r} at position {spos}: {where} has {known}", spos)
            rest = [str(n) for n in names[i + 1:]]
            return self.leaf(ent, alias, prop, rest, tuple(joins), pos, spos, label)
        last = str(names[-1])
        raise self.err(f"{label!r} at position {pos} names the entity {last}, not a value; "
                       f"name one of its properties, e.g. {label}/id", pos)

    def leaf(self, ent: Entity, alias: str, prop, rest, joins, pos, spos, label) -> Node:
        sql = prop.sql.format(a=alias)
        kind = prop.kind
        if rest and kind not in (model.JSON, model.ANY, model.TEXT_ARRAY):
            raise self.err(f"{prop.name!r} at position {spos} is a {kind} property, it has no "
                           f"member {rest[0]!r}", spos)
        n = Node("", "", [], pos, joins=joins, label=label)
        if kind in (model.ID, model.NUMBER):
            return replace(n, t=NUM, sql=sql)
        if kind == model.TEXT:
            return replace(n, t=TEXT, sql=sql)
        if kind == model.TIME:
            return replace(n, t=TIME, sql=sql)
        if kind == model.INTERVAL:
            start, end = sql.split("|")
            return replace(n, t=IVAL, sql=start,
                           end=Node(TIME, f"coalesce({end}, {start})", [], pos))
        if kind == model.JSON:
            return replace(n, t=JSON, jbase=(sql, []), jpath=tuple(rest))
        if kind == model.ANY:
            if rest:
                return replace(n, t=JSON, jbase=(f"{alias}.result_json", []), jpath=tuple(rest))
            return replace(n, t=RESULT, obs=alias)
        if kind == model.GEOMETRY:
            col = GEOMETRY_COLUMNS.get((ent.set_name, prop.name))
            if col is None:  # pragma: no cover - every geometry property is mapped
                raise self.err(f"{prop.name!r} at position {spos} cannot be filtered on", spos)
            return replace(n, t=GEOM, sql=col.format(a=alias))
        if kind == model.TEXT_ARRAY:
            if len(rest) == 1 and rest[0].isdigit():
                return replace(n, t=TEXT, sql=f"({sql})[{int(rest[0]) + 1}]")
            raise self.err(f"{prop.name!r} at position {spos} is a list; name one element by its "
                           f"index, e.g. {prop.name}/0", spos)
        raise self.err(f"{prop.name!r} at position {spos} cannot be used here", spos)  # pragma: no cover

    # ---- typing

    def to(self, n: Node, t: str, why: str = "") -> Node:
        """``n`` as type ``t`` (JSON and results are converted; other types must match)."""
        if n.t == t:
            return n
        why = f" {why}" if why else ""
        if n.t == NULLT:
            casts = {NUM: "numeric", TEXT: "text", BOOL: "boolean", TIME: "timestamptz", DATE: "date",
                     TOD: "time", DUR: "interval", GEOM: "geometry"}
            if t in casts:
                return replace(n, t=t, sql=f"NULL::{casts[t]}")
        if n.t == IVAL and t == TIME:
            return replace(n, t=TIME, end=None)
        if n.t == TEXT and n.literal is not _NOLIT and t == TIME:
            try:
                v = _parse_datetime(n.literal, n.pos)
            except FilterError as e:
                raise self.err(str(e), e.position) from None
            return replace(n, t=TIME, sql="%s::timestamptz", params=[v], literal=v)
        if n.t == RESULT:
            a = n.obs
            if t == NUM:
                return replace(n, t=NUM, sql=f"{a}.result_number", params=[])
            if t == TEXT:
                return replace(n, t=TEXT, sql=f"coalesce({a}.result_json #>> ARRAY[]::text[], "
                                             f"{a}.result_number::text)", params=[])
            if t == BOOL:
                return replace(n, t=BOOL, sql=f"CASE WHEN jsonb_typeof({a}.result_json) = 'boolean' "
                                             f"THEN ({a}.result_json)::boolean END", params=[])
            if t == TIME:
                return self.to(replace(n, t=JSON, jbase=(f"{a}.result_json", []), jpath=()), TIME)
        if n.t == JSON:
            j, jp = _jsonb(n)
            txt = f"({j} #>> ARRAY[]::text[])"
            if t == TEXT:
                base, bp = n.jbase
                if n.jpath:
                    return replace(n, t=TEXT, sql=f"({base} #>> %s::text[])", params=[*bp, list(n.jpath)])
                return replace(n, t=TEXT, sql=txt, params=jp)
            if t == NUM:
                return replace(n, t=NUM, sql=f"CASE WHEN jsonb_typeof({j}) = 'number' THEN {txt}::double precision END",
                               params=[*jp, *jp])
            if t == BOOL:
                return replace(n, t=BOOL, sql=f"CASE WHEN jsonb_typeof({j}) = 'boolean' THEN ({j})::boolean END",
                               params=[*jp, *jp])
            if t == TIME:
                return replace(n, t=TIME, sql=f"CASE WHEN {txt} ~ {_JSON_TIME_RE} THEN {txt}::timestamptz END",
                               params=[*jp, *jp])
        raise self.err(f"{_desc(n)} at position {n.pos} cannot be used as a {t}{why}", n.pos)

    def as_bool(self, n: Node) -> Node:
        """A condition: booleans (JSON ones converted), with their navigation wrapped in EXISTS."""
        if n.t in (JSON, RESULT):
            n = self.to(n, BOOL)
        if n.t != BOOL:
            raise self.err(f"{_desc(n)} at position {n.pos} is not a condition; compare it, "
                           f"e.g. {n.label or 'name'} eq …", n.pos)
        return self.exists(n)

    def exists(self, n: Node) -> Node:
        if not n.joins:
            return n
        froms = ", ".join(j.table for j in n.joins)
        conds = " AND ".join(j.cond for j in n.joins)
        return Node(BOOL, f"EXISTS (SELECT 1 FROM {froms} WHERE {conds} AND ({n.sql}))", n.params, n.pos)

    def boolean(self, sql: str, params: list, pos: int, *operands: Node) -> Node:
        return self.exists(Node(BOOL, sql, params, pos, joins=_merge(*operands)))

    def value(self, n: Node) -> Node:
        """A scalar for $orderby / a value: to-one navigation as a scalar subquery."""
        if n.t == IVAL:
            n = replace(n, t=TIME, end=None)
        if n.t in (JSON, RESULT):
            j, jp = _jsonb(n)
            n = replace(n, sql=j, params=jp)
        if n.t == GEOM:
            raise self.err(f"{_desc(n)} at position {n.pos} is a geometry; order by a number, "
                           f"e.g. geo.distance({n.label}, geography'POINT(114.1 22.7)')", n.pos)
        if not n.joins:
            return n
        many = [j for j in n.joins if j.many]
        if many:
            raise self.err(f"{n.label or 'the expression'} at position {n.pos} goes through a to-many "
                           f"link ({many[0].table.split()[0]}); it has no single value to order by", n.pos)
        froms = ", ".join(j.table for j in n.joins)
        conds = " AND ".join(j.cond for j in n.joins)
        return replace(n, sql=f"(SELECT {n.sql} FROM {froms} WHERE {conds} LIMIT 1)", joins=())

    # ---- operators

    def compare(self, op: str, a: Node, b: Node, pos: int) -> Node:
        sym = _CMP[op]
        if a.t == NULLT or b.t == NULLT:
            x = b if a.t == NULLT else a
            if op not in ("eq", "ne"):
                raise self.err(f"null at position {pos} can only be compared with eq or ne", pos)
            if x.t == NULLT:
                return Node(BOOL, "TRUE" if op == "eq" else "FALSE", [], pos)
            if x.t in (JSON, RESULT):
                j, jp = _jsonb(x)
                return self.boolean(f"coalesce(jsonb_typeof({j}), 'null') {'=' if op == 'eq' else '<>'} 'null'",
                                    jp, pos, x)
            return self.boolean(f"({x.sql}) IS {'' if op == 'eq' else 'NOT '}NULL", list(x.params), pos, x)
        jsonish = (JSON, RESULT)
        if a.t in jsonish and b.t in jsonish:
            (ja, pa), (jb, pb) = _jsonb(a), _jsonb(b)
            return self.boolean(f"{ja} {sym} {jb}", [*pa, *pb], pos, a, b)
        if a.t in jsonish:
            a = self.to(a, TIME if b.t == IVAL else b.t, f"(compared with {_desc(b)})")
        elif b.t in jsonish:
            b = self.to(b, TIME if a.t == IVAL else a.t, f"(compared with {_desc(a)})")
        if a.t in (IVAL, TIME) or b.t in (IVAL, TIME):
            if a.t == TEXT:
                a = self.to(a, TIME, f"(compared with {_desc(b)})")
            if b.t == TEXT:
                b = self.to(b, TIME, f"(compared with {_desc(a)})")
            for x, y in ((a, b), (b, a)):
                if x.t not in (IVAL, TIME):
                    hint = ""
                    if x.t == DATE:
                        hint = f"; write a date-time ({x.label}T00:00:00+08:00) or compare date({y.label or '…'}) with the date"
                    raise self.err(f"cannot compare {_desc(y)} with {_desc(x)} at position {pos}{hint}", pos)
            if a.t == TIME and b.t == TIME:
                return self.boolean(f"({a.sql}) {sym} ({b.sql})", [*a.params, *b.params], pos, a, b)
            return self.interval_compare(op, a, b, pos)
        if a.t == GEOM or b.t == GEOM:
            if a.t != b.t:
                raise self.err(f"cannot compare {_desc(a)} with {_desc(b)} at position {pos}", pos)
            if op not in ("eq", "ne"):
                raise self.err(f"geometries at position {pos} can only be compared with eq or ne "
                               f"(or use st_within, st_contains, geo.intersects …)", pos)
            neg = "" if op == "eq" else "NOT "
            return self.boolean(f"{neg}ST_Equals({a.sql}, {b.sql})", [*a.params, *b.params], pos, a, b)
        if a.t != b.t:
            raise self.err(f"cannot compare {_desc(a)} with {_desc(b)} at position {pos}", pos)
        return self.boolean(f"({a.sql}) {sym} ({b.sql})", [*a.params, *b.params], pos, a, b)

    def interval_compare(self, op: str, a: Node, b: Node, pos: int) -> Node:
        def bounds(n: Node):
            if n.t == IVAL:
                return (n.sql, list(n.params)), (n.end.sql, list(n.end.params))
            return (n.sql, list(n.params)), (n.sql, list(n.params))

        (s1, ps1), (e1, pe1) = bounds(a)
        (s2, ps2), (e2, pe2) = bounds(b)
        parts: list[tuple[str, list]] = []

        def c(x, px, sym, y, py):
            parts.append((f"({x}) {sym} ({y})", [*px, *py]))

        if op == "eq":
            c(s1, ps1, "=", s2, ps2); c(e1, pe1, "=", e2, pe2)
        elif op == "ne":
            c(s1, ps1, "<>", s2, ps2); c(e1, pe1, "<>", e2, pe2)
        elif op == "gt":
            c(s1, ps1, ">", s2, ps2); c(s1, ps1, ">=", e2, pe2)
        elif op == "ge":
            c(s1, ps1, ">=", s2, ps2); c(e1, pe1, ">=", e2, pe2)
        elif op == "lt":
            c(s1, ps1, "<", s2, ps2); c(e1, pe1, "<=", s2, ps2)
        else:  # le
            c(s1, ps1, "<=", s2, ps2); c(e1, pe1, "<=", e2, pe2)
        sql = " AND ".join(p for p, _ in parts)
        params = [x for _, ps in parts for x in ps]
        return self.boolean(sql, params, pos, a, b)

    def arith(self, op: str, a: Node, b: Node, pos: int) -> Node:
        jsonish = (JSON, RESULT)
        if a.t in jsonish:
            a = self.to(a, TIME if b.t == DUR and op in ("add", "sub") else NUM, f"(in {op})")
        if b.t in jsonish:
            b = self.to(b, NUM, f"(in {op})")
        if a.t == NULLT or b.t == NULLT:
            raise self.err(f"null cannot take part in {op} at position {pos}", pos)
        joins = _merge(a, b)
        p = [*a.params, *b.params]
        if a.t == NUM and b.t == NUM:
            if op == "add":
                sql = f"({a.sql}) + ({b.sql})"
            elif op == "sub":
                sql = f"({a.sql}) - ({b.sql})"
            elif op == "mul":
                sql = f"({a.sql}) * ({b.sql})"
            elif op == "div":
                sql = f"({a.sql}) / NULLIF({b.sql}, 0)"
            else:
                sql = f"mod(({a.sql})::numeric, NULLIF(({b.sql})::numeric, 0))"
            return Node(NUM, sql, p, a.pos, joins=joins)
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}.get(op)
        if a.t in (TIME, IVAL) and b.t == DUR and op in ("add", "sub"):
            n = Node(a.t, f"({a.sql}) {sym} ({b.sql})", p, a.pos, joins=joins)
            if a.t == IVAL:
                n.end = Node(TIME, f"({a.end.sql}) {sym} ({b.sql})", [*a.end.params, *b.params], a.pos)
            return n
        if a.t == DUR and b.t in (TIME, IVAL) and op == "add":
            return self.arith("add", b, a, pos)
        if a.t in (TIME, IVAL) and b.t in (TIME, IVAL) and op == "sub":
            return Node(DUR, f"({a.sql}) - ({b.sql})", p, a.pos, joins=joins)
        if a.t == DUR and b.t == DUR and op in ("add", "sub"):
            return Node(DUR, f"({a.sql}) {sym} ({b.sql})", p, a.pos, joins=joins)
        if a.t == DUR and b.t == NUM and op in ("mul", "div"):
            div = f"NULLIF({b.sql}, 0)" if op == "div" else f"({b.sql})"
            return Node(DUR, f"({a.sql}) {sym} {div}", p, a.pos, joins=joins)
        if a.t == NUM and b.t == DUR and op == "mul":
            return Node(DUR, f"({b.sql}) * ({a.sql})", [*b.params, *a.params], a.pos, joins=joins)
        raise self.err(f"cannot {op} {_desc(a)} and {_desc(b)} at position {pos}", pos)

    def neg(self, tok: Token, x: Node) -> Node:
        pos = tok.start_pos + 1
        if x.t in (JSON, RESULT):
            x = self.to(x, NUM, "(after '-')")
        if x.t == NUM and x.literal is not _NOLIT:
            v = -x.literal
            return replace(x, params=[-p for p in x.params], literal=v, pos=pos, label=f"-{x.label}")
        if x.t in (NUM, DUR):
            return replace(x, sql=f"-({x.sql})", pos=pos)
        raise self.err(f"'-' at position {pos} cannot negate {_desc(x)}", pos)

    # ---- functions

    def call(self, t: Tree) -> Node:
        name_tok = t.children[0]
        name = str(name_tok).lower()
        pos = name_tok.start_pos + 1
        args = [self.node(c) for c in t.children[2:-1] if isinstance(c, Tree)]
        if name not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.err(f"unknown function {str(name_tok)!r} at position {pos}; known: {known}", pos)
        arity = FUNCTIONS[name]
        arities = arity if isinstance(arity, tuple) else (arity,)
        if len(args) not in arities:
            want = " or ".join(str(x) for x in arities)
            raise self.err(f"{name}() at position {pos} takes {want} argument{'s' if arities != (1,) else ''}, "
                           f"got {len(args)}", pos)
        if name in _STRING_FUNCS:
            n = self.string_func(name, args, pos)
        elif name in _DATE_FUNCS:
            n = self.date_func(name, args, pos)
        elif name in _MATH_FUNCS:
            x = self.to(args[0], NUM, f"(argument of {name}())")
            n = Node(NUM, f"{name}(({x.sql})::numeric)", list(x.params), pos, joins=x.joins)
        else:
            n = self.geo_func(name, args, pos)
        n.label = f"{name}({', '.join(a.label or '…' for a in args)})"
        return n

    def string_func(self, name: str, args: list[Node], pos: int) -> Node:
        def text(i):
            return self.to(args[i], TEXT, f"(argument {i + 1} of {name}())")

        if name == "substring":
            s = text(0)
            st = self.to(args[1], NUM, "(argument 2 of substring())")
            if len(args) == 2:
                return Node(TEXT, f"substr({s.sql}, (({st.sql})::bigint + 1)::int)",
                            [*s.params, *st.params], pos, joins=_merge(s, st))
            ln = self.to(args[2], NUM, "(argument 3 of substring())")
            return Node(TEXT, f"substr({s.sql}, (({st.sql})::bigint + 1)::int, greatest(({ln.sql})::int, 0))",
                        [*s.params, *st.params, *ln.params], pos, joins=_merge(s, st, ln))
        xs = [text(i) for i in range(len(args))]
        p = [v for x in xs for v in x.params]
        if name == "substringof":  # substringof(needle, haystack)
            return self.boolean(f"strpos({xs[1].sql}, {xs[0].sql}) > 0", [*xs[1].params, *xs[0].params], pos, *xs)
        if name == "contains":  # contains(haystack, needle)
            return self.boolean(f"strpos({xs[0].sql}, {xs[1].sql}) > 0", p, pos, *xs)
        if name == "startswith":
            return self.boolean(f"starts_with({xs[0].sql}, {xs[1].sql})", p, pos, *xs)
        if name == "endswith":
            return self.boolean(f"right({xs[0].sql}, char_length({xs[1].sql})) = {xs[1].sql}",
                                [*xs[0].params, *xs[1].params, *xs[1].params], pos, *xs)
        joins = _merge(*xs)
        if name == "length":
            return Node(NUM, f"char_length({xs[0].sql})", p, pos, joins=joins)
        if name == "indexof":
            return Node(NUM, f"(strpos({xs[0].sql}, {xs[1].sql}) - 1)", p, pos, joins=joins)
        if name in ("tolower", "toupper"):
            return Node(TEXT, f"{'lower' if name == 'tolower' else 'upper'}({xs[0].sql})", p, pos, joins=joins)
        if name == "trim":
            return Node(TEXT, f"btrim({xs[0].sql}, %s::text)", [*p, " \t\r\n"], pos, joins=joins)
        # concat
        return Node(TEXT, f"(({xs[0].sql}) || ({xs[1].sql}))", p, pos, joins=joins)

    def date_func(self, name: str, args: list[Node], pos: int) -> Node:
        if name == "now":
            return Node(TIME, "now()", [], pos, label="now()")
        if name == "mindatetime":
            return Node(TIME, "'-infinity'::timestamptz", [], pos, label="mindatetime()")
        if name == "maxdatetime":
            return Node(TIME, "'infinity'::timestamptz", [], pos, label="maxdatetime()")
        x = args[0]
        if x.t == DATE and name in ("year", "month", "day"):
            return Node(NUM, f"extract({name} FROM {x.sql})::int", list(x.params), pos, joins=x.joins)
        if x.t == TOD and name in ("hour", "minute", "second", "fractionalseconds"):
            if name == "fractionalseconds":
                return Node(NUM, f"(extract(second FROM {x.sql}) - floor(extract(second FROM {x.sql})))",
                            [*x.params, *x.params], pos, joins=x.joins)
            return Node(NUM, f"floor(extract({name} FROM {x.sql}))::int", list(x.params), pos, joins=x.joins)
        if x.t in (JSON, RESULT, IVAL) or (x.t == TEXT and x.literal is not _NOLIT):
            x = self.to(x, TIME, f"(argument of {name}())")
        if x.t != TIME:
            raise self.err(f"{name}() at position {pos} needs a date-time, got {_desc(x)}", pos)
        local = f"(({x.sql}) AT TIME ZONE %s::text)"
        lp = [*x.params, self.tz]
        if name in _DATE_PARTS:
            return Node(NUM, f"floor(extract({name} FROM {local}))::int", lp, pos, joins=x.joins)
        if name == "fractionalseconds":
            return Node(NUM, f"(extract(second FROM {local}) - floor(extract(second FROM {local})))",
                        [*lp, *lp], pos, joins=x.joins)
        if name == "date":
            return Node(DATE, f"({local})::date", lp, pos, joins=x.joins)
        if name == "time":
            return Node(TOD, f"({local})::time", lp, pos, joins=x.joins)
        # totaloffsetminutes: the offset of the zone the value is served in (UTC: 0)
        return Node(NUM, f"(extract(epoch FROM {local} - (({x.sql}) AT TIME ZONE 'UTC')) / 60)::int",
                    [*lp, *x.params], pos, joins=x.joins)

    def geo_func(self, name: str, args: list[Node], pos: int) -> Node:
        gs = []
        for i, a in enumerate(args[:2]):
            if a.t != GEOM:
                raise self.err(f"argument {i + 1} of {name}() at position {a.pos} must be a geometry "
                               f"(a location/feature property or geography'POINT(114.1 22.7)'), got {_desc(a)}",
                               a.pos)
            gs.append(a)
        p = [v for g in gs for v in g.params]
        geography = any(g.geography for g in gs)
        if name == "geo.distance":
            sql = (f"ST_Distance(({gs[0].sql})::geography, ({gs[1].sql})::geography)" if geography
                   else f"ST_Distance({gs[0].sql}, {gs[1].sql})")
            return Node(NUM, sql, p, pos, joins=_merge(*gs))
        if name == "geo.length":
            sql = f"ST_Length(({gs[0].sql})::geography)" if geography else f"ST_Length({gs[0].sql})"
            return Node(NUM, sql, p, pos, joins=_merge(*gs))
        if name == "geo.intersects":
            return self.boolean(f"ST_Intersects({gs[0].sql}, {gs[1].sql})", p, pos, *gs)
        if name == "st_relate":
            pat = args[2]
            if pat.t != TEXT or pat.literal is _NOLIT or not re.fullmatch(r"[012TF*]{9}", pat.literal, re.IGNORECASE):
                raise self.err(f"argument 3 of st_relate() at position {pat.pos} must be a DE-9IM pattern "
                               f"string of 9 characters from 0 1 2 T F *, e.g. 'T*T***T**'", pat.pos)
            return self.boolean(f"ST_Relate({gs[0].sql}, {gs[1].sql}, %s::text)", [*p, pat.literal.upper()],
                                pos, *gs)
        return self.boolean(f"{_ST_FUNCS[name]}({gs[0].sql}, {gs[1].sql})", p, pos, *gs)


def _pos(t) -> int:
    if isinstance(t, Token):
        return (t.start_pos or 0) + 1
    meta = getattr(t, "meta", None)
    return (getattr(meta, "start_pos", 0) or 0) + 1 if meta is not None and not meta.empty else 1


# --------------------------------------------------------------------------------------------
# Entry points


def _guarded(fn):
    """Entry points: a RecursionError (a pathological text past the depth checks) is a FilterError."""
    import functools

    @functools.wraps(fn)
    def wrapper(text, *args, **kwargs):
        try:
            return fn(text, *args, **kwargs)
        except RecursionError:
            raise FilterError("the expression nests too deeply", 1,
                              "$orderby" if fn.__name__ == "compile_orderby" else "$filter") from None

    return wrapper


@_guarded
def compile_filter(text: str, entity: Entity, alias: str) -> tuple[str, list]:
    """``$filter`` text → (SQL boolean expression over ``alias``, psycopg parameters)."""
    tree = _parse(text, "filter", "$filter")
    c = _Compiler(entity, alias, "$filter")
    n = c.as_bool(c.node(tree.children[0]))
    return n.sql, list(n.params)


@_guarded
def compile_expr(text: str, entity: Entity, alias: str, what: str = "expression") -> tuple[str, list, str]:
    """One expression → (SQL scalar over ``alias``, parameters, its type name: number, text, boolean,
    date-time, date, time of day, duration, JSON value). Intervals give their start; JSON and
    results give jsonb; navigation is to-one only (scalar subqueries)."""
    tree = _parse(text, "filter", what)
    c = _Compiler(entity, alias, what)
    n = c.node(tree.children[0])
    if n.t == BOOL:
        n = c.exists(n)
    t = JSON if n.t in (JSON, RESULT) else n.t
    v = c.value(n)
    return v.sql, list(v.params), t


def compile_orderby_expr(text: str, entity: Entity, alias: str) -> tuple[str, list]:
    """One ``$orderby`` term's expression (no asc/desc) → (SQL, parameters)."""
    sql, params, _ = compile_expr(text, entity, alias, "$orderby")
    return sql, params


@_guarded
def compile_orderby(text: str, entity: Entity, alias: str) -> list[tuple[str, list, str]]:
    """A whole ``$orderby`` (``phenomenonTime desc, Datastream/name``) → [(SQL, params, 'ASC'|'DESC')].
    Commas inside function calls are handled by the grammar, not by splitting."""
    tree = _parse(text, "orderby", "$orderby")
    c = _Compiler(entity, alias, "$orderby")
    out = []
    for item in tree.children:
        expr, direction = item.children
        n = c.node(expr)
        if n.t == BOOL:
            n = c.exists(n)
        v = c.value(n)
        out.append((v.sql, list(v.params), str(direction).upper() if direction is not None else "ASC"))
    return out
