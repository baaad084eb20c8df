"""SensorThings API 1.1 reads: query options → SQL → entity JSON (OGC 18-088 §9, FROST-Server's
behaviour where the standard is silent).

Query options (§9.3): ``$top`` (default 100, at most 10000 — larger values are cut to 10000, as
FROST does; both are advertised in the landing document), ``$skip``, ``$count=true``
(``@iot.count``), ``$orderby`` (several terms, ``asc``/``desc``; ``id asc`` is always added last,
which is also the default order — FROST's ``alwaysOrderbyId``), ``$select`` (properties,
navigation properties, ``id`` / ``@iot.id``), ``$expand`` (nested, each with its own ``$filter``,
``$orderby``, ``$top``, ``$skip``, ``$count``, ``$select``, ``$expand``, separated by ``;``; the
slash form ``Datastreams/Observations``), ``$filter`` (``sensing.sta.filter``) and
``@iot.nextLink`` (every option kept, ``$skip`` advanced; an expanded collection cut by its
``$top`` gets ``<Nav>@iot.nextLink``). ``$resultFormat=dataArray`` (or ``resultFormat=dataArray``)
on Observations answers in the DataArray format of §14: one object per Datastream /
MultiDatastream with ``components`` and ``dataArray``.

Speed at scale: a path's parents are fetched first (one primary-key lookup each), so
``Datastreams(1)/Observations`` is a plain ``stream_id = 1`` query on the partitions' unique
``(stream_id, phenomenon_time_start, dedup)`` index — a day of a Datastream filtered on
``phenomenonTime`` is an index range scan. ``$count`` of ``Datastreams(x)/Observations`` (and of
``/Observations``) without ``$filter`` is read from ``sta_stream_stats`` (no scan). Expanded
collections are one LATERAL query per level for all parents, so ``Things(1)?$expand=Datastreams(
$expand=Observations($orderby=phenomenonTime desc;$top=1))`` reads the latest observation of each
Datastream with one backward index probe each.

**Aggregates** (geotwin's documented extension; FROST-Server users asked for it since 2017):
``GET /sta/v1.1/Datastreams(1)/Observations?$aggregate=hour`` (or ``day``: days in
Asia/Shanghai) serves the hourly / daily aggregates maintained as data arrives
(``sta_aggregates``) as Observation-shaped objects without an id: ``phenomenonTime`` is the bucket
(``start/end``), ``result`` the mean, ``parameters`` ``{"n", "min", "max", "sum", "mean"}``, plus
``Datastream@iot.navigationLink``. ``$filter`` (e.g. on ``phenomenonTime``), ``$orderby``,
``$top``, ``$skip``, ``$count``, ``$select`` and ``$resultFormat=dataArray`` apply as to
Observations; ``$expand`` does not. Only numeric results are aggregated.

**Access** (:func:`visible_things_sql`): everything is readable by anyone except Things whose
``properties`` hold ``"restricted": true`` (the pilot's households) and what hangs under them —
their Datastreams, MultiDatastreams, HistoricalLocations, Observations, Locations linked to no
other Thing, and FeaturesOfInterest at such a Location. Those exist only for roles that may
``sensing:households``; a ``community-worker`` sees only the restricted Things whose
``properties.community`` is its own. Every restricted Thing served (itself or something under
it) is noted for the audit log (``security.note_restricted``). Sensors and ObservedProperties
describe kinds of things and are public.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from sensing.sta import model, serialize
from sensing.sta.model import Entity, Nav
from sensing.sta.paths import ResourcePath
from spatial_api import security
from spatial_api.security import roles

DEFAULT_TOP = 100
MAX_TOP = 10000
AGGREGATE_PERIODS = {"hour": "1 hour", "day": "1 day"}


class StaError(Exception):
    """An error answer: HTTP status and a message naming the parameter / resource and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def bad(message: str) -> StaError:
    return StaError(400, message)


# --------------------------------------------------------------------------------------------
# Query options
# --------------------------------------------------------------------------------------------

TOP_OPTIONS = ("$top", "$skip", "$count", "$filter", "$orderby", "$select", "$expand", "$resultFormat",
               "$aggregate")
EXPAND_OPTIONS = ("$top", "$skip", "$count", "$filter", "$orderby", "$select", "$expand")


@dataclass
class Query:
    top: int = DEFAULT_TOP
    skip: int = 0
    count: bool = False
    filter: str | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (expression, descending)
    select: list[str] | None = None
    expand: list[Expand] = field(default_factory=list)
    result_format: str | None = None
    aggregate: str | None = None
    raw: dict[str, str] = field(default_factory=dict)  # the options as given (for nextLinks)


@dataclass
class Expand:
    nav: Nav
    entity: Entity
    query: Query


def split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and quoted strings."""
    out, depth, quoted, cur = [], 0, False, []
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == sep and depth == 0:
                out.append("".join(cur))
                cur = []
                continue
        cur.append(ch)
    out.append("".join(cur))
    if depth != 0 or quoted:
        raise bad(f"unbalanced {'quote' if quoted else 'parentheses'} in {text!r}")
    return out


def _int(name: str, value: str, minimum: int) -> int:
    v = value.strip()
    if not re.fullmatch(r"[0-9]{1,12}", v) or int(v) < minimum:
        raise bad(f"{name}={value!r}: expected an integer ≥ {minimum}")
    return int(v)


def parse_query(options: Mapping[str, str], entity: Entity, *, where: str = "", top_level: bool = True) -> Query:
    """The query options of one level (``options``: name → text)."""
    allowed = TOP_OPTIONS if top_level else EXPAND_OPTIONS
    q = Query(raw=dict(options))
    ctx = f" (in $expand of {where})" if where else ""
    for name, value in options.items():
        if name not in allowed:
            raise bad(f"unknown query option {name!r}{ctx}; the options here are " + ", ".join(allowed))
        if name == "$top":
            q.top = min(_int(name, value, 0), MAX_TOP)
        elif name == "$skip":
            q.skip = _int(name, value, 0)
        elif name == "$count":
            if value.strip().lower() not in ("true", "false"):
                raise bad(f"$count={value!r}{ctx}: use true or false")
            q.count = value.strip().lower() == "true"
        elif name == "$filter":
            if not value.strip():
                raise bad(f"$filter{ctx} is empty")
            q.filter = value
        elif name == "$orderby":
            q.orderby = _parse_orderby(value, ctx)
        elif name == "$select":
            q.select = _parse_select(value, entity, ctx)
        elif name == "$expand":
            q.expand = parse_expand(value, entity)
        elif name == "$resultFormat":
            if value != "dataArray":
                raise bad(f"$resultFormat={value!r}: the only result format is dataArray")
            if entity.set_name != "Observations":
                raise bad("$resultFormat=dataArray applies to Observations only")
            q.result_format = value
        elif name == "$aggregate":
            if value not in AGGREGATE_PERIODS:
                raise bad(f"$aggregate={value!r}: use hour or day")
            q.aggregate = value
    return q


def _parse_orderby(text: str, ctx: str) -> list[tuple[str, bool]]:
    out = []
    for term in split_top(text, ","):
        term = term.strip()
        if not term:
            raise bad(f"$orderby={text!r}{ctx}: an empty term")
        m = re.match(r"^(.*?)(?:\s+(asc|desc))?$", term, re.DOTALL | re.IGNORECASE)
        expr, direction = m.group(1).strip(), (m.group(2) or "asc").lower()
        out.append((expr, direction == "desc"))
    return out


def _parse_select(text: str, entity: Entity, ctx: str) -> list[str]:
    names = []
    valid = [p.name for p in entity.props] + [n.name for n in entity.navs]
    for raw in text.split(","):
        name = raw.strip()
        if name == "@iot.id":
            name = "id"
        if name not in valid and name != "@iot.selfLink":
            raise bad(f"$select{ctx}: {entity.singular} has no property {name!r}; it has " + ", ".join(valid))
        if name not in names:
            names.append(name)
    return names


def parse_expand(text: str, entity: Entity) -> list[Expand]:
    out: list[Expand] = []
    for item in split_top(text, ","):
        item = item.strip()
        if not item:
            raise bad(f"$expand={text!r}: an empty item")
        parts = split_top(item, "/")
        _add_expand(out, entity, [p.strip() for p in parts], item)
    return out


def _add_expand(into: list[Expand], entity: Entity, parts: list[str], item: str) -> None:
    head = parts[0]
    m = re.match(r"^([A-Za-z]+)(?:\((.*)\))?$", head, re.DOTALL)
    if not m:
        raise bad(f"$expand item {item!r}: {head!r} is not a navigation property")
    name, opts = m.group(1), m.group(2)
    nav = entity.nav(name)
    if nav is None:
        raise bad(f"$expand item {item!r}: {entity.singular} has no navigation property {name!r}; it has "
                  + ", ".join(n.name for n in entity.navs))
    target = model.ENTITIES[nav.target]
    options: dict[str, str] = {}
    if opts is not None and opts.strip():
        for o in split_top(opts, ";"):
            if "=" not in o:
                raise bad(f"$expand item {item!r}: {o!r} is not an option (name=value)")
            k, v = o.split("=", 1)
            options[k.strip()] = v
    existing = next((e for e in into if e.nav.name == name), None)
    if existing is None:
        existing = Expand(nav, target, parse_query(options, target, where=name, top_level=False))
        into.append(existing)
    elif options:
        nested = existing.query.expand
        existing.query = parse_query(options, target, where=name, top_level=False)
        existing.query.expand = nested + existing.query.expand
    if len(parts) > 1:
        _add_expand(existing.query.expand, target, parts[1:], item)


# --------------------------------------------------------------------------------------------
# Access
# --------------------------------------------------------------------------------------------

_RESTRICTED = "coalesce({t}.properties @> '{{\"restricted\": true}}'::jsonb, false)"


def _access() -> tuple[str, str | None]:
    """("all" | "community" | "public", community)."""
    p = security.current()
    security.depends_on_caller()
    if p.role in roles.MAY.get("sensing:households", ()):
        if p.role == "community-worker":
            return "community", getattr(p, "community", None)
        return "all", None
    return "public", None


def visible_things_sql(alias: str) -> tuple[str, list]:
    """SQL condition (with params) true for the rows of ``sta_things`` aliased ``alias`` that the
    current caller may see (see the module docstring)."""
    mode, community = _access()
    restricted = _RESTRICTED.format(t=alias)
    if mode == "all":
        return "true", []
    if mode == "community" and community:
        return f"(NOT {restricted} OR coalesce({alias}.properties->>'community' = %s, false))", [community]
    return f"(NOT {restricted})", []


#: "The row is under some Thing t satisfying {pred}" per entity set ({a}: the row's alias).
_UNDER = {
    "Things": "({pred_a})",
    "Datastreams": "EXISTS (SELECT 1 FROM sta_things t WHERE t.id = {a}.thing_id AND {pred})",
    "MultiDatastreams": "EXISTS (SELECT 1 FROM sta_things t WHERE t.id = {a}.thing_id AND {pred})",
    "HistoricalLocations": "EXISTS (SELECT 1 FROM sta_things t WHERE t.id = {a}.thing_id AND {pred})",
    "Locations": ("EXISTS (SELECT 1 FROM sta_thing_locations tl JOIN sta_things t ON t.id = tl.thing_id "
                  "WHERE tl.location_id = {a}.id AND {pred})"),
    "Observations": ("{a}.stream_id IN (SELECT d.id FROM sta_datastreams d JOIN sta_things t ON t.id = d.thing_id "
                     "WHERE {pred} UNION ALL SELECT m.id FROM sta_multi_datastreams m JOIN sta_things t "
                     "ON t.id = m.thing_id WHERE {pred})"),
    # a feature at a Thing's Location (FROST makes them from the Location): same geometry (GiST), or
    # the same GeoJSON when the feature has no geometry column value
    "FeaturesOfInterest": ("(EXISTS (SELECT 1 FROM sta_locations l JOIN sta_thing_locations tl ON tl.location_id = l.id "
                           "JOIN sta_things t ON t.id = tl.thing_id WHERE l.geom ~= {a}.geom AND {pred}) OR "
                           "({a}.geom IS NULL AND EXISTS (SELECT 1 FROM sta_locations l JOIN sta_thing_locations tl "
                           "ON tl.location_id = l.id JOIN sta_things t ON t.id = tl.thing_id "
                           "WHERE l.location = {a}.feature AND {pred})))"),
}
#: The id of a restricted Thing the row is under (for the audit), per entity set.
_RESTRICTED_THING = {
    "Things": "CASE WHEN {r_a} THEN {a}.id END",
    "Datastreams": "(SELECT t.id FROM sta_things t WHERE t.id = {a}.thing_id AND {r})",
    "MultiDatastreams": "(SELECT t.id FROM sta_things t WHERE t.id = {a}.thing_id AND {r})",
    "HistoricalLocations": "(SELECT t.id FROM sta_things t WHERE t.id = {a}.thing_id AND {r})",
    "Locations": ("(SELECT min(t.id) FROM sta_thing_locations tl JOIN sta_things t ON t.id = tl.thing_id "
                  "WHERE tl.location_id = {a}.id AND {r})"),
    "Observations": ("(SELECT min(t.id) FROM sta_things t WHERE {r} AND t.id IN ("
                     "SELECT thing_id FROM sta_datastreams WHERE id = {a}.stream_id UNION ALL "
                     "SELECT thing_id FROM sta_multi_datastreams WHERE id = {a}.stream_id))"),
    "FeaturesOfInterest": ("(SELECT min(t.id) FROM sta_locations l JOIN sta_thing_locations tl ON tl.location_id = l.id "
                           "JOIN sta_things t ON t.id = tl.thing_id WHERE CASE WHEN {a}.geom IS NULL "
                           "THEN l.location = {a}.feature ELSE l.geom ~= {a}.geom END AND {r})"),
}
#: (parent set, navigation) whose targets are visible exactly when the parent is.
IMPLIED = {
    ("Things", "Datastreams"), ("Things", "MultiDatastreams"), ("Things", "HistoricalLocations"),
    ("Datastreams", "Observations"), ("MultiDatastreams", "Observations"),
    ("Datastreams", "Thing"), ("MultiDatastreams", "Thing"), ("HistoricalLocations", "Thing"),
    ("Observations", "Datastream"), ("Observations", "MultiDatastream"),
}


def _under(set_name: str, alias: str, pred_t: tuple[str, list], pred_a: tuple[str, list]) -> tuple[str, list]:
    tmpl = _UNDER[set_name]
    params: list = []
    out = []
    for piece in re.split(r"(\{pred\}|\{pred_a\}|\{a\})", tmpl):
        if piece == "{pred}":
            out.append(pred_t[0])
            params += pred_t[1]
        elif piece == "{pred_a}":
            out.append(pred_a[0])
            params += pred_a[1]
        elif piece == "{a}":
            out.append(alias)
        else:
            out.append(piece)
    return "".join(out), params


def visible_sql(entity: Entity, alias: str) -> tuple[str, list] | None:
    """Condition restricting ``entity`` rows (alias ``alias``) to what the caller may see; None if
    everything is visible (or the set is public)."""
    name = entity.set_name
    if name not in _UNDER:
        return None
    mode, _ = _access()
    if mode == "all":
        return None
    vis_t = visible_things_sql("t")
    hidden_t = (f"NOT coalesce({vis_t[0]}, false)", vis_t[1])
    if name == "Things":
        return visible_things_sql(alias)
    hidden = _under(name, alias, hidden_t, ("", []))
    if name in ("Locations", "FeaturesOfInterest"):
        # hidden only when under hidden Things and under no visible one (a shared place stays)
        shown = _under(name, alias, vis_t, ("", []))
        return f"NOT ({hidden[0]} AND NOT {shown[0]})", hidden[1] + shown[1]
    return f"NOT {hidden[0]}", hidden[1]


def restricted_thing_sql(entity: Entity, alias: str) -> str | None:
    """SQL: the id of a restricted Thing that a row of ``entity`` is (under), else NULL; None when
    the caller cannot be served restricted data (nothing to audit) or the set is public."""
    if entity.set_name not in _RESTRICTED_THING:
        return None
    mode, _ = _access()
    if mode == "public":
        return None
    return (_RESTRICTED_THING[entity.set_name].replace("{r_a}", _RESTRICTED.format(t=alias))
            .replace("{r}", _RESTRICTED.format(t="t")).replace("{a}", alias))


def _note(rows: list[dict]) -> None:
    for r in rows:
        tid = r.get("@restricted")
        if tid is not None:
            security.note_restricted(f"sta:Things({tid})")


# --------------------------------------------------------------------------------------------
# SQL pieces
# --------------------------------------------------------------------------------------------

def _filter_module():
    try:
        from sensing.sta import filter as stafilter
    except ImportError as exc:  # pragma: no cover - only while the filter module is being written
        raise StaError(501, f"$filter is not available on this server yet ({exc})") from exc
    return stafilter


def filter_sql(text: str, entity: Entity, alias: str) -> tuple[str, list]:
    f = _filter_module()
    try:
        sql, params = f.compile_filter(text, entity, alias)
    except f.FilterError as exc:
        raise bad(f"$filter: {exc}") from exc
    return f"({sql})", list(params)


def order_sql(q: Query, entity: Entity, alias: str) -> tuple[str, list]:
    terms, params = [], []
    has_id = False
    for expr, desc in q.orderby:
        d = " DESC" if desc else ""
        name = "id" if expr == "@iot.id" else expr
        prop = entity.prop(name)
        if prop is not None:
            if prop.name == "id":
                has_id = True
            if prop.kind == model.INTERVAL:
                terms.append(prop.sql.split("|")[0].format(a=alias) + d)
            elif entity.set_name == "Observations" and prop.name == "result":
                terms += [f"{alias}.result_number{d}", f"{alias}.result_json{d}"]
            else:
                terms.append(prop.sql.format(a=alias) + d)
            continue
        f = _filter_module()
        try:
            sql, ps = f.compile_orderby_expr(expr, entity, alias)
        except f.FilterError as exc:
            raise bad(f"$orderby: {exc}") from exc
        terms.append(f"({sql}){d}")
        params += list(ps)
    if not has_id:
        terms.append(f"{alias}.id")
    return ", ".join(terms), params


def _bind_parent(cond: str, child_alias: str, parent_row: dict) -> tuple[str, list]:
    params: list = []

    def rep(m):
        params.append(parent_row[m.group(1)])
        return "%s"

    return re.sub(r"\{p\}\.(\w+)", rep, cond).replace("{c}", child_alias), params


def _aggregate_source(period: str) -> tuple[str, list]:
    """Observation-shaped rows from sta_aggregates (see the module docstring)."""
    step = AGGREGATE_PERIODS[period]
    sql = ("(SELECT NULL::bigint AS id, g.stream_id, g.bucket AS phenomenon_time_start, "
            f"g.bucket + interval '{step}' AS phenomenon_time_end, NULL::timestamptz AS result_time, "
            "g.sum / g.n AS result_number, NULL::jsonb AS result_json, NULL::jsonb AS result_quality, "
            "NULL::timestamptz AS valid_time_start, NULL::timestamptz AS valid_time_end, "
            "jsonb_build_object('n', g.n, 'min', g.min, 'max', g.max, 'sum', g.sum, 'mean', g.sum / g.n) "
            "AS parameters, NULL::bigint AS feature_of_interest_id FROM sta_aggregates g "
            "WHERE g.period = %s)")
    return sql, [period]


def _props_for(q: Query, entity: Entity) -> list[str] | None:
    if q.select is None:
        return None
    return [s for s in q.select if entity.prop(s) is not None]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

@dataclass
class Level:
    """What one query level needs to run: where its rows come from and what restricts them."""
    entity: Entity
    alias: str
    source: str                       # table name or a subquery
    source_params: list
    where: list[tuple[str, list]]
    implied: bool                     # visibility follows from an already checked parent


def _columns(level: Level, q: Query, extra: list[str] | None = None) -> tuple[list[str], bool]:
    cols = serialize.columns(level.entity, level.alias, _props_for(q, level.entity))
    flagged = False
    if not level.implied:
        flag = restricted_thing_sql(level.entity, level.alias)
        if flag is not None:
            cols.append(f'{flag} AS "@restricted"')
            flagged = True
    if q.result_format == "dataArray" or q.aggregate:
        cols.append(f'{level.alias}.stream_id AS "@stream"')
        cols.append(f'EXISTS (SELECT 1 FROM sta_multi_datastreams md WHERE md.id = {level.alias}.stream_id) AS "@multi"')
    return cols + (extra or []), flagged


def _where(level: Level, q: Query) -> tuple[str, list]:
    parts, params = [], []
    for sql, ps in level.where:
        parts.append(sql)
        params += ps
    if not level.implied:
        vis = visible_sql(level.entity, level.alias)
        if vis is not None:
            parts.append(vis[0])
            params += vis[1]
    if q.filter:
        sql, ps = filter_sql(q.filter, level.entity, level.alias)
        parts.append(sql)
        params += ps
    return (" AND ".join(parts) if parts else "true"), params


def fetch_parent(conn, step, parent: tuple[Entity, dict] | None) -> tuple[dict, bool]:
    """The raw row (all columns) of one step of a path, checked visible; StaError 404 if none."""
    entity = step.entity
    alias = "s0"
    where, params = [], []
    implied = False
    if parent is not None:
        sql, ps = _bind_parent(step.nav.cond, alias, parent[1])
        where.append(sql)
        params += ps
        implied = (parent[0].set_name, step.nav.name) in IMPLIED
    if step.id is not None:
        where.append(f"{alias}.id = %s")
        params.append(step.id)
    if not implied:
        vis = visible_sql(entity, alias)
        if vis is not None:
            where.append(vis[0])
            params += vis[1]
    flag = None if implied else restricted_thing_sql(entity, alias)
    extra = f', {flag} AS "@restricted"' if flag else ""
    row = conn.execute(f"SELECT {alias}.*{extra} FROM {entity.table} {alias} WHERE {' AND '.join(where)} LIMIT 1",
                       params).fetchone()
    if row is None:
        raise StaError(404, _missing(step, parent))
    _note([row])
    return row, implied


def _missing(step, parent) -> str:
    if parent is None:
        return f"no {step.entity.set_name}({step.id}) (it does not exist or you may not see it)"
    who = f"{parent[0].set_name}({parent[1]['id']})"
    if step.id is not None:
        return f"{who} has no {step.nav.name}({step.id})"
    return f"{who} has no {step.nav.name}"


@dataclass
class Context:
    conn: object
    base: str                                   # scheme://host[:port]
    next_link: Callable[[int], str] | None = None   # $skip → URL of the next page (top level)
    #: a list to collect the plans (EXPLAIN, JSON) of the entity queries run — for tests showing index use
    explain: list | None = None

    def query(self, sql: str, params: list) -> list[dict]:
        if self.explain is not None:
            self.explain.append(self.conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone())
        return self.conn.execute(sql, params).fetchall()


def run(ctx: Context, path: ResourcePath, options: Mapping[str, str]):
    """Answer a GET of ``path``: returns (status, body) where body is a dict, or a str for
    ``$value`` (status 204 and body None for a null property)."""
    conn = ctx.conn
    entity = path.entity
    q = parse_query(options, entity)
    if q.aggregate and not (len(path.steps) == 2 and path.steps[0].entity.set_name == "Datastreams"
                            and path.last.nav is not None and path.last.nav.name == "Observations"
                            and path.last.id is None):
        raise bad("$aggregate applies to the Observations of one Datastream: "
                  "/sta/v1.1/Datastreams(<id>)/Observations?$aggregate=hour")
    if q.aggregate and q.expand:
        raise bad("$expand cannot be combined with $aggregate (aggregates are not entities)")
    if q.result_format and not path.collection:
        raise bad("$resultFormat=dataArray applies to a collection of Observations")

    parent: tuple[Entity, dict] | None = None
    for step in path.steps[:-1]:
        row, _ = fetch_parent(conn, step, parent)
        parent = (step.entity, row)

    last = path.last
    level = Level(entity, "e0", entity.table, [], [], False)
    if q.aggregate:
        level.source, level.source_params = _aggregate_source(q.aggregate)
        if not q.orderby:
            q.orderby = [("phenomenonTime", False)]
    if parent is not None:
        sql, ps = _bind_parent(last.nav.cond, level.alias, parent[1])
        level.where.append((sql, ps))
        level.implied = (parent[0].set_name, last.nav.name) in IMPLIED
    if last.id is not None:
        level.where.append((f"{level.alias}.id = %s", [last.id]))

    if path.prop is not None or (path.ref and not path.collection) or not path.collection:
        rows = _select(ctx, level, q, limit=1, skip=0)
        if not rows:
            raise StaError(404, _missing(last, parent))
        row = rows[0]
        if path.ref:
            return 200, {"@iot.selfLink": serialize.self_link(ctx.base, entity, row["@id"])}
        if path.prop is not None:
            prop = entity.prop(path.prop)
            value = serialize.prop_value(entity, prop, row)
            if value is None:
                return 204, None
            if path.value:
                return 200, value
            return 200, {path.prop: value}
        _expand(ctx, entity, [row], q.expand)
        return 200, _json(ctx, entity, row, q)

    # a collection
    if q.aggregate and q.select is None and not q.result_format and not path.ref and level.implied:
        # aggregate pages are rendered by PostgreSQL: a year of hourly buckets is 8,760 objects
        texts = _aggregate_page(ctx, level, q, limit=q.top + 1, skip=q.skip)
        body = {}
        if q.count:
            body["@iot.count"] = _count(ctx, level, q, parent, last)
        if q.top > 0 and len(texts) > q.top and ctx.next_link is not None:
            body["@iot.nextLink"] = ctx.next_link(q.skip + q.top)
        body["value"] = RawJSONArray(texts[:q.top])
        return 200, body
    rows = _select(ctx, level, q, limit=q.top + 1, skip=q.skip)
    more = q.top > 0 and len(rows) > q.top
    rows = rows[:q.top]
    body: dict = {}
    if q.count:
        body["@iot.count"] = _count(ctx, level, q, parent, last)
    if more and ctx.next_link is not None:
        body["@iot.nextLink"] = ctx.next_link(q.skip + q.top)
    if path.ref:
        body["value"] = [{"@iot.selfLink": serialize.self_link(ctx.base, entity, r["@id"])} for r in rows]
        return 200, body
    if q.result_format == "dataArray":
        body["value"] = _data_array(ctx, entity, rows, q)
        return 200, body
    _expand(ctx, entity, rows, q.expand)
    body["value"] = [_json(ctx, entity, r, q) for r in rows]
    return 200, body


class RawJSONArray(list):
    """A JSON array whose items are JSON texts already (rendered by the database): the route
    writes them as they are (:func:`dumps`)."""


def dumps(body) -> str:
    """The response text of a body that may hold a :class:`RawJSONArray` as its ``value``."""
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, RawJSONArray):
        return json.dumps(body, ensure_ascii=False)
    head = json.dumps({k: v for k, v in body.items() if k != "value"}, ensure_ascii=False)[:-1]
    return head + (", " if len(head) > 1 else "") + '"value": [' + ",".join(value) + "]}"


_UTC_TIME = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'"


def _aggregate_page(ctx: Context, level: Level, q: Query, *, limit: int, skip: int) -> list[str]:
    """The aggregate objects of a page as JSON texts, the same members and values as
    :func:`_json` gives them (bucket bounds are whole hours / days: no fractions)."""
    a = level.alias
    where, wparams = _where(level, q)
    order, oparams = order_sql(q, level.entity, a)
    item = (f"json_build_object('phenomenonTime', to_char({a}.phenomenon_time_start AT TIME ZONE 'UTC', {_UTC_TIME})"
            f" || '/' || to_char({a}.phenomenon_time_end AT TIME ZONE 'UTC', {_UTC_TIME}), 'resultTime', NULL, "
            f"'result', {a}.result_number, 'parameters', {a}.parameters, "
            f"'Datastream@iot.navigationLink', %s::text || {a}.stream_id || ')')::text AS j")
    sql = (f"SELECT {item} FROM {level.source} {a} WHERE {where} "
           f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(skip)}")
    rows = ctx.query(sql, [f"{ctx.base}{serialize.ROOT}/Datastreams("] + level.source_params + wparams + oparams)
    return [r["j"] for r in rows]


def _select(ctx: Context, level: Level, q: Query, *, limit: int, skip: int) -> list[dict]:
    cols, _ = _columns(level, q)
    where, wparams = _where(level, q)
    order, oparams = order_sql(q, level.entity, level.alias)
    sql = (f"SELECT {', '.join(cols)} FROM {level.source} {level.alias} WHERE {where} "
           f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(skip)}")
    rows = ctx.query(sql, level.source_params + wparams + oparams)
    _note(rows)
    return rows


def _count(ctx: Context, level: Level, q: Query, parent, last) -> int:
    if not q.filter and not q.aggregate and level.entity.set_name == "Observations":
        # exact counts maintained by the triggers of migration 0014: no scan
        if parent is not None and parent[0].set_name in ("Datastreams", "MultiDatastreams"):
            row = ctx.conn.execute("SELECT observations FROM sta_stream_stats WHERE stream_id = %s",
                                   [parent[1]["id"]]).fetchone()
            return int(row["observations"]) if row else 0
        if parent is None:
            vis = visible_sql(model.OBSERVATIONS, "s")
            where, params = ("true", []) if vis is None else vis
            row = ctx.conn.execute(f"SELECT coalesce(sum(s.observations), 0) AS n FROM sta_stream_stats s "
                                   f"WHERE {where}", params).fetchone()
            return int(row["n"])
    where, params = _where(level, q)
    row = ctx.conn.execute(f"SELECT count(*) AS n FROM {level.source} {level.alias} WHERE {where}",
                           level.source_params + params).fetchone()
    return int(row["n"])


def _json(ctx: Context, entity: Entity, row: dict, q: Query) -> dict:
    out = serialize.entity_json(entity, row, ctx.base, q.select)
    if q.aggregate:
        out["Datastream@iot.navigationLink"] = f"{ctx.base}{serialize.ROOT}/Datastreams({row['@stream']})"
    for e in q.expand:
        key = e.nav.name
        value = row.get("@x:" + key)
        if e.nav.many:
            if e.query.count:
                out[f"{key}@iot.count"] = row.get("@n:" + key, 0)
            if row.get("@more:" + key):
                link = f"{serialize.self_link(ctx.base, entity, row['@id'])}/{key}"
                out[f"{key}@iot.nextLink"] = _with_options(link, e.query.raw, e.query.skip + e.query.top, e.query.top)
            out[key] = [_json(ctx, e.entity, c, e.query) for c in (value or [])]
        elif value:
            out[key] = _json(ctx, e.entity, value[0], e.query)
        else:
            continue  # a to-one link that is not set (e.g. the Datastream of a MultiDatastream's Observation)
        out.pop(f"{key}@iot.navigationLink", None)
    return out


def _expand(ctx: Context, entity: Entity, rows: list[dict], expands: list[Expand], depth: int = 1) -> None:
    ids = [r["@id"] for r in rows if r.get("@id") is not None]
    if not ids or not expands:
        return
    for e in expands:
        alias = f"e{depth}"
        cond = e.nav.cond.format(c=alias, p="p")
        level = Level(e.entity, alias, e.entity.table, [], [(cond, [])],
                      (entity.set_name, e.nav.name) in IMPLIED)
        q = e.query
        cols, _ = _columns(level, q)
        where, wparams = _where(level, q)
        order, oparams = order_sql(q, e.entity, alias)
        limit = q.top + 1 if e.nav.many else 1
        skip = q.skip if e.nav.many else 0
        sql = (f'SELECT p.id AS "@parent", x.* FROM {entity.table} p CROSS JOIN LATERAL ('
               f'SELECT y.*, row_number() OVER () AS "@ord" FROM ('
               f"SELECT {', '.join(cols)} FROM {e.entity.table} {alias} WHERE {where} "
               f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(skip)}) y) x WHERE p.id = ANY(%s)")
        children = ctx.query(sql, wparams + oparams + [ids])
        _note(children)
        by_parent: dict = {}
        for c in sorted(children, key=lambda c: (c["@parent"], c["@ord"])):
            by_parent.setdefault(c["@parent"], []).append(c)
        counts: dict = {}
        if e.nav.many and q.count:
            csql = (f'SELECT p.id AS "@parent", (SELECT count(*) FROM {e.entity.table} {alias} WHERE {where}) AS n '
                    f"FROM {entity.table} p WHERE p.id = ANY(%s)")
            counts = {r["@parent"]: int(r["n"]) for r in ctx.conn.execute(csql, wparams + [ids]).fetchall()}
        all_children = []
        for r in rows:
            kids = by_parent.get(r.get("@id"), [])
            if e.nav.many and len(kids) > q.top:
                kids = kids[:q.top]
                r["@more:" + e.nav.name] = q.top > 0
            r["@x:" + e.nav.name] = kids
            if e.nav.many and q.count:
                r["@n:" + e.nav.name] = counts.get(r.get("@id"), 0)
            all_children += kids
        _expand(ctx, e.entity, all_children, q.expand, depth + 1)


def _data_array(ctx: Context, entity: Entity, rows: list[dict], q: Query) -> list[dict]:
    """OGC 18-088 §14: one object per stream, rows in the order of the query."""
    if q.select is not None:
        components = [s for s in q.select if entity.prop(s) is not None or s == "id"]
    else:
        components = [p.name for p in entity.props]
        if q.aggregate:
            components.remove("id")
    groups: dict = {}
    for r in rows:
        key = (r["@stream"], r["@multi"])
        groups.setdefault(key, []).append(r)
    out = []
    for (stream, multi), rs in groups.items():
        kind = "MultiDatastream" if multi else "Datastream"
        plural = "MultiDatastreams" if multi else "Datastreams"
        values = []
        for r in rs:
            values.append([r["@id"] if c == "id" else serialize.prop_value(entity, entity.prop(c), r)
                           for c in components])
        out.append({f"{kind}@iot.navigationLink": f"{ctx.base}{serialize.ROOT}/{plural}({stream})",
                    "components": components, "dataArray@iot.count": len(values), "dataArray": values})
    return out


def _with_options(url: str, options: Mapping[str, str], skip: int, top: int) -> str:
    params = {k: v for k, v in options.items() if k not in ("$skip", "$top")}
    params["$top"] = str(top)
    params["$skip"] = str(skip)
    return url + "?" + urlencode(params, quote_via=quote, safe="$(),;/'=:@")


def next_link_for(url: str, query_items: list[tuple[str, str]], top: int) -> Callable[[int], str]:
    """A function giving the URL of the page starting at ``skip``: every option of the request
    kept (credentials excepted), ``$top`` and ``$skip`` set."""
    kept = [(k, v) for k, v in query_items if k not in ("$skip", "$top", "api_key")]

    def link(skip: int) -> str:
        items = [("$top", str(top)), ("$skip", str(skip))] + kept
        return url + "?" + urlencode(items, quote_via=quote, safe="$(),;/'=:@")

    return link


def entity_by_id(conn, entity: Entity, ident: int, base: str) -> dict | None:
    """The JSON of one entity by id, without access checks (for writers' 201 bodies and MQTT)."""
    sql = f"SELECT {', '.join(serialize.columns(entity, 'e0'))} FROM {entity.table} e0 WHERE e0.id = %s"
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, [ident]).fetchone()
    return serialize.entity_json(entity, row, base) if row else None
