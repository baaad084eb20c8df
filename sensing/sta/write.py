"""SensorThings API 1.1 writes (OGC 18-088 §10 create / update / delete, §14 DataArray create):
everything one request changes happens in ONE transaction (a :class:`Tx`), so a refused write
leaves the previous state whole.

- **Create** (``POST`` to an entity set or a navigation path): properties are checked against the
  data model (``model.py``): a missing mandatory property or link is a 400 naming every one of
  them, an unknown member is a 400 naming it. Deep insert: a nested object is created in the same
  transaction; a nested ``{"@iot.id": n}`` links an existing entity (a 400 names the member when
  there is none). An Observation without FeatureOfInterest gets one made from its Thing's
  Location — the same FeatureOfInterest for the same location, as FROST-Server does — and its
  ``phenomenonTime`` defaults to now, its ``resultTime`` to null. A number result is stored in
  ``result_number``, anything else (text, boolean, object, array, null) in ``result_json``. A
  Thing given Locations (created, updated, or a Location POSTed under a Thing) gets a
  HistoricalLocation at the time of the change; linking a Location under an existing Thing
  replaces that Thing's current Location (FROST-Server).
- **Update**: PATCH merges the given members; PUT replaces (optional properties not given go
  back to their defaults); links may be changed by ``{"@iot.id": n}``. JSON Patch
  (``application/json-patch+json``) is applied to the entity as served, then written like a PUT.
- **Delete** cascades as 18-088 §10.4 says: a Thing takes its Datastreams (and their
  Observations) and HistoricalLocations (foreign keys and the triggers of migration 0014), a
  Sensor or ObservedProperty its (Multi)Datastreams, a FeatureOfInterest its Observations, a
  Location the HistoricalLocations left without any Location.
- ``$ref``: ``POST …/Things(1)/Locations/$ref {"@iot.id": 2}`` adds a link, ``DELETE
  …/Things(1)/Locations(2)/$ref`` removes one.

After the commit, :func:`Tx.changes` (serialised inside the transaction) go to
``sensing.sta.events.emit`` — one :class:`Change` per entity created, updated or deleted (the entity
asked to be deleted; what the cascade took is not announced one by one).

Every function here takes a :class:`Tx` (a connection in a transaction) and never commits: the
HTTP routes (``write_routes``) commit one request; ``$batch`` (``batch.py``) commits an atomicity
group of several requests at once.
"""

from __future__ import annotations

import json
import math
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sensing.sta import model, read, serialize
from sensing.sta.events import Change
from sensing.sta.model import ENTITIES, Entity, Nav, Prop
from spatial_api.api import time as timepolicy
from spatial_api.api.errors import ApiError

PREFIX = "/sta/v1.1"
GEOJSON_ENCODINGS = ("application/geo+json", "application/vnd.geo+json")
#: The geometry expression of a Location's / FeatureOfInterest's GeoJSON document (a Feature's
#: geometry, or the geometry itself), NULL for other encodings.
_GEOM_SQL = ("CASE WHEN encoding_type IN ('application/geo+json', 'application/vnd.geo+json') THEN "
             "ST_SetSRID(ST_GeomFromGeoJSON(CASE WHEN {doc}->>'type' = 'Feature' THEN {doc}->'geometry' "
             "ELSE {doc} END), 4326) END")
_GEOM_DOC = {"Locations": "location", "FeaturesOfInterest": "feature"}


def bad(member: str, message: str) -> ApiError:
    """400, the offending member first (``Datastreams[0].Sensor.name: …``)."""
    return ApiError(400, "InvalidParameterValue", f"{member}: {message}" if member else message)


async def read_body(request):
    """The JSON body of a request (a Starlette ``Request``); 400 when empty or not JSON."""
    raw = await request.body()
    if not raw.strip():
        raise bad("body", "empty: send the entity as JSON (Content-Type: application/json)")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("body", f"not JSON ({exc})") from None


# ------------------------------------------------------------------------------------- the transaction

@dataclass
class Tx:
    """A write transaction: its connection, the service root for self links, what it changed."""

    conn: psycopg.Connection
    base: str                   # the server's base URL, e.g. http://host (self links add /sta/v1.1/…)
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    created: list[tuple[Entity, int]] = field(default_factory=list)
    updated: list[tuple[Entity, int, tuple[str, ...] | None]] = field(default_factory=list)
    deleted: list[tuple[Entity, int]] = field(default_factory=list)
    _foi_of_stream: dict[int, int] = field(default_factory=dict)

    def execute(self, query, params=None, *, member: str = ""):
        """Run a statement; a value PostgreSQL refuses is the caller's mistake: 400 naming ``member``."""
        try:
            return self.conn.execute(query, params)
        except (psycopg.errors.DataError, psycopg.errors.InternalError_, psycopg.errors.InvalidParameterValue) as exc:
            message = (exc.diag.message_primary if exc.diag else None) or str(exc)
            raise bad(member or "body", f"a value does not fit: {message[:300]}") from None

    def changes(self) -> list[Change]:
        """The events of this transaction, serialised now (call it before the commit)."""
        gone = {(e.set_name, i) for e, i in self.deleted}
        wanted: dict[str, set[int]] = {}
        for ent, i, *_ in [*self.created, *self.updated]:
            if (ent.set_name, i) not in gone:
                wanted.setdefault(ent.set_name, set()).add(i)
        docs = {name: entities_json(self, ENTITIES[name], sorted(ids)) for name, ids in wanted.items()}
        out: list[Change] = []
        seen: set[tuple[str, int]] = set()
        for ent, i in self.created:
            doc = docs.get(ent.set_name, {}).get(i)
            if doc is not None and (ent.set_name, i) not in seen:
                seen.add((ent.set_name, i))
                out.append(Change("create", ent.set_name, i, doc, None))
        for ent, i, _ in self.updated:
            doc = docs.get(ent.set_name, {}).get(i)
            if doc is not None and (ent.set_name, i) not in seen:
                seen.add((ent.set_name, i))
                mine = [c for e, j, c in self.updated if e is ent and j == i]
                names = None if any(c is None for c in mine) else tuple(sorted({n for c in mine for n in c}))
                out.append(Change("update", ent.set_name, i, doc, names))
        for ent, i in self.deleted:
            out.append(Change("delete", ent.set_name, i, None, None))
        return out


#: The transaction of the ``$batch`` atomicity group being run (``batch.py`` sets it): the write
#: routes then work in it and neither commit nor emit — the group does, once, at its end.
GROUP: ContextVar[Tx | None] = ContextVar("sta_batch_group", default=None)


# ------------------------------------------------------------------------------------- serialising

def self_link(base: str, ent: Entity, id_: int) -> str:
    return serialize.self_link(base, ent, id_)


def entity_json(tx: Tx, ent: Entity, id_: int) -> dict | None:
    """The entity as served (``serialize.entity_json``: self and navigation links included);
    None when it does not exist."""
    return entities_json(tx, ent, [id_]).get(id_)


def entities_json(tx: Tx, ent: Entity, ids: list[int]) -> dict[int, dict]:
    if not ids:
        return {}
    q = "SELECT {} FROM {} e WHERE e.id = ANY(%s)".format(", ".join(serialize.columns(ent, "e")), ent.table)
    with tx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q, (list(ids),)).fetchall()
    return {row["@id"]: serialize.entity_json(ent, row, tx.base) for row in rows}


# ------------------------------------------------------------------------------------- paths

_SEGMENT = re.compile(r"^([A-Za-z]+)(?:\((\d+)\))?$")


@dataclass(frozen=True)
class Target:
    """What a write URL names: an entity (``id`` set) or a collection (``id`` None, under
    ``parent`` = (entity, id, navigation) when reached by navigation), and whether it ends in $ref."""

    entity: Entity
    id: int | None
    parent: tuple[Entity, int, Nav] | None = None
    ref: bool = False


def _cond(nav: Nav) -> sql.Composable:
    return sql.SQL(nav.cond.format(c="c", p="p"))


def _visible(ent: Entity, alias: str) -> tuple[sql.Composable, list]:
    """`` AND <the caller may see it>`` for rows of ``ent`` aliased ``alias`` (the read side's one
    condition): a household's entities do not exist for a caller who may not see them — writing
    to them is a 404 like reading them, and their ids cannot be linked."""
    vis = read.visible_sql(ent, alias)
    if vis is None:
        return sql.SQL(""), []
    return sql.SQL(" AND " + vis[0]), list(vis[1])


def _exists(tx: Tx, ent: Entity, id_: int) -> bool:
    cond, params = _visible(ent, "a")
    return tx.conn.execute(sql.SQL("SELECT 1 FROM {} a WHERE a.id = %s").format(sql.Identifier(ent.table)) + cond,
                           [id_, *params]).fetchone() is not None


def _related(tx: Tx, parent: Entity, pid: int, nav: Nav, cid: int | None) -> int | None:
    """The child of ``parent(pid)`` through ``nav`` (with id ``cid`` when given), or None."""
    child = ENTITIES[nav.target]
    cond, vparams = _visible(child, "c")
    q = sql.SQL("SELECT c.id FROM {} c, {} p WHERE p.id = %s AND ({})").format(
        sql.Identifier(child.table), sql.Identifier(parent.table), _cond(nav)) + cond
    params: list = [pid, *vparams]
    if cid is not None:
        q += sql.SQL(" AND c.id = %s")
        params.append(cid)
    row = tx.conn.execute(q + sql.SQL(" LIMIT 1"), params).fetchone()
    return row[0] if row else None


def resolve(tx: Tx, path: str) -> Target:
    """``Things(1)/Datastreams`` → Target(Datastreams, None, parent=(Things, 1, nav)); 404 for an
    entity that does not exist (or is not related to the one before it)."""
    segments = [s for s in path.strip("/").split("/") if s]
    ref = bool(segments) and segments[-1] == "$ref"
    if ref:
        segments.pop()
    if not segments:
        raise ApiError(404, "NotFound", "no entity set named in the path; the sets are " + ", ".join(ENTITIES))
    m = _SEGMENT.match(segments[0])
    if not m or m.group(1) not in ENTITIES:
        raise ApiError(404, "NotFound", f"no entity set {segments[0]!r}; the sets are " + ", ".join(ENTITIES))
    ent, id_ = ENTITIES[m.group(1)], (int(m.group(2)) if m.group(2) else None)
    if id_ is not None and not _exists(tx, ent, id_):
        raise ApiError(404, "NotFound", f"no {ent.singular} with @iot.id {id_}")
    parent: tuple[Entity, int, Nav] | None = None
    for k, seg in enumerate(segments[1:], start=1):
        m = _SEGMENT.match(seg)
        if id_ is None:
            raise ApiError(404, "NotFound", f"{'/'.join(segments[:k])} is a collection: name one entity "
                                            f"(e.g. {segments[k - 1]}(1)) before {seg!r}")
        nav = ent.nav(m.group(1)) if m else None
        if nav is None:
            raise ApiError(404, "NotFound", f"{_a(ent)} has no navigation property {seg!r}; it has "
                           + ", ".join(n.name for n in ent.navs))
        child = ENTITIES[nav.target]
        cid = int(m.group(2)) if m.group(2) else None
        if nav.many and cid is None:
            parent = (ent, id_, nav)
            ent, id_ = child, None
            continue
        if not nav.many and cid is not None:
            raise ApiError(404, "NotFound", f"{nav.name} of {_a(ent)} is one entity: no id after it")
        found = _related(tx, ent, id_, nav, cid)
        if found is None:
            raise ApiError(404, "NotFound", f"{'/'.join(segments[:k + 1])}: no such {child.singular}")
        parent = None
        ent, id_ = child, found
    return Target(ent, id_, parent, ref)


# ------------------------------------------------------------------------------------- values

def _columns(p: Prop) -> list[str]:
    if p.column:
        return [p.column]
    return [part.replace("{a}.", "") for part in p.sql.split("|")]


def _time(value, member: str) -> datetime:
    if not isinstance(value, str) or value.strip() in ("", ".."):
        raise bad(member, f"{value!r} is not an ISO 8601 time (e.g. 2026-12-07T08:00:00Z)")
    try:
        t = timepolicy.parse_instant(value, member, day="start")
    except timepolicy.TimeError as exc:
        raise bad(member, exc.message) from None
    assert t is not None
    return t


def _interval(value, member: str) -> tuple[datetime, datetime | None]:
    """An instant (end None) or ``start/end``."""
    if isinstance(value, str) and "/" in value:
        a, b = value.split("/", 1)
        t0, t1 = _time(a, member), _time(b, member)
        if t1 < t0:
            raise bad(member, f"interval {value!r} ends before it starts")
        return t0, t1
    return _time(value, member), None


def _value(p: Prop, value, member: str) -> list:
    """The column values of property ``p`` given ``value`` (the JSON member)."""
    kind = p.kind
    if kind == model.TEXT:
        if value is None and not p.required:
            return [sql.DEFAULT]
        if not isinstance(value, str):
            raise bad(member, f"must be a string, not {type(value).__name__ if value is not None else 'null'}")
        return [value]
    if kind == model.TEXT_ARRAY:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(member, "must be an array of strings")
        return [value]
    if kind in (model.JSON, model.GEOMETRY):
        if value is None:
            if p.required:
                raise bad(member, "must not be null")
            return [None]
        if p.name in ("properties", "unitOfMeasurement", "parameters") and not isinstance(value, dict):
            raise bad(member, "must be a JSON object")
        if p.name == "unitOfMeasurements" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise bad(member, "must be an array of JSON objects ({name, symbol, definition})")
        return [Jsonb(value)]
    if kind == model.TIME:
        return [None if value is None else _time(value, member)]
    if kind == model.INTERVAL:
        if value is None:
            return [None, None]
        return list(_interval(value, member))
    raise bad(member, "cannot be written")


def _result_values(value) -> tuple[float | None, Jsonb | None]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), None
    return None, (None if value is None else Jsonb(value))


def _ref_id(obj, member: str) -> int | None:
    """The id of a link object ``{"@iot.id": n}``; None when ``obj`` is an entity to create."""
    if not isinstance(obj, dict):
        raise bad(member, "must be a JSON object (an entity, or {\"@iot.id\": n} to link an existing one)")
    if "@iot.id" not in obj:
        return None
    v = obj["@iot.id"]
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.isdigit())):
        raise bad(f"{member}.@iot.id", f"{v!r} is not an id (a positive integer)")
    return int(v)


def _split(ent: Entity, obj: dict, member: str) -> tuple[dict, dict]:
    """Properties and navigation members of ``obj``; 400 for anything else (annotations like
    ``@iot.selfLink`` are ignored; so are the server-computed properties)."""
    props: dict = {}
    navs: dict = {}
    unknown: list[str] = []
    for key, value in obj.items():
        if key.startswith("@iot.") or "@iot." in key:
            continue
        p = ent.prop(key)
        if p is not None:
            if p.writable:
                props[key] = value
            continue
        n = ent.nav(key)
        if n is not None:
            navs[key] = value
            continue
        unknown.append(key)
    if unknown:
        where = f"{member}." if member else ""
        raise bad(", ".join(where + u for u in unknown),
                  f"not a member of {_a(ent)}; its members are "
                  + ", ".join([p.name for p in ent.props if p.writable] + [n.name for n in ent.navs]))
    return props, navs


def _a(ent: Entity) -> str:
    """"a Thing", "an Observation"."""
    return ("an " if ent.singular[0] in "AEIOU" else "a ") + ent.singular


def _m(member: str, name: str) -> str:
    return f"{member}.{name}" if member else name


# ------------------------------------------------------------------------------------- create

def create(tx: Tx, target: Target, body) -> tuple[Entity, int]:
    """POST to an entity set or a navigation path."""
    if target.id is not None:
        raise ApiError(405, "MethodNotAllowed", f"POST creates in a collection; {target.entity.set_name}"
                       f"({target.id}) is one entity (PATCH or PUT it)")
    new = _create(tx, target.entity, body, "", target.parent, top=True)
    return target.entity, new


def _inverse(child: Entity, parent: Entity, nav: Nav) -> Nav | None:
    """The child's navigation property back to ``parent`` for the parent's ``nav``."""
    for n in child.navs:
        if n.target != parent.set_name:
            continue
        if nav.back_fk and n.fk == nav.back_fk:
            return n
        if nav.link and n.link and n.link[0] == nav.link[0]:
            return n
    return None


def _link_row(tx: Tx, nav: Nav, pid: int, cid: int) -> None:
    table, pcol, ccol = nav.link
    if table == "sta_multi_datastream_properties":
        mds, op = (pid, cid) if pcol == "multi_datastream_id" else (cid, pid)
        tx.execute("INSERT INTO sta_multi_datastream_properties (multi_datastream_id, observed_property_id, rank) "
                   "SELECT %s, %s, coalesce(max(rank) + 1, 0) FROM sta_multi_datastream_properties "
                   "WHERE multi_datastream_id = %s", (mds, op, mds))
        return
    tx.execute(sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
        sql.Identifier(table), sql.Identifier(pcol), sql.Identifier(ccol)), (pid, cid))


def _link_or_create(tx: Tx, ent: Entity, obj, member: str, parent=None) -> int:
    ref = _ref_id(obj, member)
    if ref is None:
        return _create(tx, ent, obj, member, parent)
    if not _exists(tx, ent, ref):
        raise bad(_m(member, "@iot.id"), f"no {ent.singular} with @iot.id {ref}")
    return ref


def _create(tx: Tx, ent: Entity, obj, member: str, parent: tuple[Entity, int, Nav] | None, *,
            top: bool = False) -> int:
    if not isinstance(obj, dict):
        raise bad(member or "body", f"{_a(ent)} must be a JSON object")
    props, navs = _split(ent, obj, member)
    fixed: dict[str, object] = {}
    satisfied: set[str] = set()
    inverse: Nav | None = None
    if parent is not None:
        pent, pid, pnav = parent
        inverse = _inverse(ent, pent, pnav)
        if pnav.fk or inverse is None:
            raise bad(member or "body", f"cannot create {_a(ent)} through {pent.set_name}/{pnav.name}; "
                      f"create it at {ent.set_name} and link it")
        if inverse.name in navs:
            raise bad(_m(member, inverse.name), f"given twice: the {ent.singular} is already linked to "
                      f"{pent.singular} {pid} by where it is created")
        satisfied.add(inverse.name)
        if pnav.back_fk:
            fixed[pnav.back_fk] = pid

    missing = [p.name for p in ent.props if p.required and p.writable and p.name not in props]
    if ent is model.OBSERVATIONS:
        if not ({"Datastream", "MultiDatastream"} & (set(navs) | satisfied)):
            missing.append("Datastream (or MultiDatastream)")
        elif "Datastream" in navs and "MultiDatastream" in navs:
            raise bad(_m(member, "MultiDatastream"), "an Observation belongs to a Datastream or a MultiDatastream, "
                      "not both")
    missing += [n.name for n in ent.navs if n.required and n.name not in navs and n.name not in satisfied]
    if missing:
        raise bad(member or "body", f"{_a(ent)} needs {', '.join(missing)} (missing)")

    # to-one links first: their ids go into this row
    for name, value in navs.items():
        nav = ent.nav(name)
        if nav.many:
            continue
        fixed[nav.fk] = _link_or_create(tx, ENTITIES[nav.target], value, _m(member, name))

    if ent is model.OBSERVATIONS:
        new = _insert_observation(tx, props, fixed, member)
    else:
        cols: list[str] = []
        vals: list = []
        for p in ent.props:
            if p.name in props:
                cols += _columns(p)
                vals += _value(p, props[p.name], _m(member, p.name))
        for col, v in fixed.items():
            cols.append(col)
            vals.append(v)
        q = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
            sql.Identifier(ent.table), sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(v if isinstance(v, sql.Composable) else sql.Placeholder() for v in vals))
        new = tx.execute(q, [v for v in vals if not isinstance(v, sql.Composable)], member=member).fetchone()[0]
        if ent.set_name in _GEOM_DOC:
            _fill_geom(tx, ent, new, member)
    tx.created.append((ent, new))

    if parent is not None and parent[2].link:
        _link_row(tx, parent[2], parent[1], new)

    for name, value in navs.items():
        nav = ent.nav(name)
        if not nav.many:
            continue
        _add_many(tx, ent, new, nav, value, _m(member, name))

    # the rules of the model
    if ent is model.THINGS:
        _record_location(tx, new)
    elif ent is model.LOCATIONS and parent is not None and parent[0] is model.THINGS:
        # a Location POSTed under an existing Thing becomes its current one (one made in this
        # transaction records its history itself)
        if not any(e is model.THINGS and i == parent[1] for e, i in tx.created):
            _relocate(tx, parent[1], [new])
    elif ent is model.MULTI_DATASTREAMS:
        _check_multi(tx, new, member)
    return new


def _add_many(tx: Tx, ent: Entity, pid: int, nav: Nav, value, member: str) -> list[int]:
    """Link or create the children of a to-many member; returns their ids."""
    if not isinstance(value, list):
        raise bad(member, f"must be an array of {ENTITIES[nav.target].set_name}")
    child = ENTITIES[nav.target]
    ids = []
    for k, item in enumerate(value):
        where = f"{member}[{k}]"
        ref = _ref_id(item, where)
        if ref is None:
            ids.append(_create(tx, child, item, where, (ent, pid, nav)))
            continue
        if not _exists(tx, child, ref):
            raise bad(f"{where}.@iot.id", f"no {child.singular} with @iot.id {ref}")
        if nav.back_fk:
            tx.execute(sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(
                sql.Identifier(child.table), sql.Identifier(nav.back_fk)), (pid, ref))
            tx.updated.append((child, ref, (_inverse(child, ent, nav).name,)))
        else:
            _link_row(tx, nav, pid, ref)
            if ent is model.LOCATIONS and child is model.THINGS:
                _relocate(tx, ref, [pid])
        ids.append(ref)
    return ids


def _check_multi(tx: Tx, mds: int, member: str) -> None:
    n_ops, n_types, n_units = tx.conn.execute(
        "SELECT (SELECT count(*) FROM sta_multi_datastream_properties WHERE multi_datastream_id = m.id), "
        "cardinality(m.multi_observation_data_types), jsonb_array_length(m.unit_of_measurements) "
        "FROM sta_multi_datastreams m WHERE m.id = %s", (mds,)).fetchone()
    if not (n_ops == n_types == n_units):
        raise bad(member or "body", f"a MultiDatastream needs as many multiObservationDataTypes ({n_types}) and "
                  f"unitOfMeasurements ({n_units}) as ObservedProperties ({n_ops})")


def _fill_geom(tx: Tx, ent: Entity, id_: int, member: str) -> None:
    doc = _GEOM_DOC[ent.set_name]
    tx.execute(sql.SQL("UPDATE {} SET geom = " + _GEOM_SQL.format(doc=doc) + " WHERE id = %s").format(
        sql.Identifier(ent.table)), (id_,), member=_m(member, doc))


def _record_location(tx: Tx, thing: int) -> None:
    """A HistoricalLocation (time = now) of the Thing's current Locations, when it has any."""
    locs = [r[0] for r in tx.conn.execute(
        "SELECT location_id FROM sta_thing_locations WHERE thing_id = %s ORDER BY location_id", (thing,))]
    if not locs:
        return
    hl = tx.execute("INSERT INTO sta_historical_locations (thing_id, time) VALUES (%s, %s) RETURNING id",
                    (thing, tx.now)).fetchone()[0]
    tx.execute("INSERT INTO sta_location_history (historical_location_id, location_id) "
               "SELECT %s, unnest(%s::bigint[])", (hl, locs))
    tx.created.append((model.HISTORICAL_LOCATIONS, hl))


def _relocate(tx: Tx, thing: int, locations: list[int]) -> None:
    """The Thing is now at ``locations`` (its other Location links go) and that is history."""
    tx.execute("DELETE FROM sta_thing_locations WHERE thing_id = %s AND NOT (location_id = ANY(%s))",
               (thing, locations))
    tx.execute("INSERT INTO sta_thing_locations (thing_id, location_id) SELECT %s, unnest(%s::bigint[]) "
               "ON CONFLICT DO NOTHING", (thing, locations))
    _record_location(tx, thing)
    tx.updated.append((model.THINGS, thing, ("Locations",)))


# ------------------------------------------------------------------------------------- observations

def _stream_kind(tx: Tx, stream: int) -> str | None:
    """Datastreams | MultiDatastreams for a stream the caller may see, else None."""
    c1, p1 = _visible(model.DATASTREAMS, "d")
    c2, p2 = _visible(model.MULTI_DATASTREAMS, "m")
    row = tx.conn.execute(sql.SQL("SELECT 'Datastreams' FROM sta_datastreams d WHERE d.id = %s") + c1
                          + sql.SQL(" UNION ALL SELECT 'MultiDatastreams' FROM sta_multi_datastreams m WHERE m.id = %s")
                          + c2, [stream, *p1, stream, *p2]).fetchone()
    return row[0] if row else None


def _generated_foi(tx: Tx, stream: int, member: str) -> int:
    """The FeatureOfInterest made from the Location of the stream's Thing (one per location)."""
    if stream in tx._foi_of_stream:
        return tx._foi_of_stream[stream]
    thing = tx.conn.execute("SELECT thing_id FROM sta_datastreams WHERE id = %s UNION ALL "
                            "SELECT thing_id FROM sta_multi_datastreams WHERE id = %s", (stream, stream)).fetchone()
    if thing is None:
        raise bad(_m(member, "Datastream"), f"no Datastream or MultiDatastream with @iot.id {stream}")
    thing = thing[0]
    loc = tx.conn.execute(
        "SELECT l.name, l.description, l.encoding_type, l.location, l.geom FROM sta_locations l "
        "JOIN sta_thing_locations tl ON tl.location_id = l.id WHERE tl.thing_id = %s "
        "ORDER BY (l.encoding_type IN ('application/geo+json', 'application/vnd.geo+json')) DESC, l.id LIMIT 1",
        (thing,)).fetchone()
    if loc is None:
        raise bad(_m(member, "FeatureOfInterest"), f"missing, and Thing {thing} of the Datastream has no Location "
                  "to make one from: give a FeatureOfInterest (or {\"@iot.id\": n}) or a Location to the Thing")
    name, description, encoding, location, geom = loc
    # the same document at the same place (the GiST index finds the candidates by their box)
    row = tx.conn.execute("SELECT id FROM sta_features_of_interest WHERE encoding_type = %s AND feature = %s "
                          + ("AND geom ~= %s::geometry " if geom is not None else "AND geom IS NULL ")
                          + "ORDER BY id LIMIT 1",
                          (encoding, Jsonb(location), *([geom] if geom is not None else []))).fetchone()
    if row:
        foi = row[0]
    else:
        foi = tx.execute("INSERT INTO sta_features_of_interest (name, description, encoding_type, feature, geom) "
                         "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                         (name, description, encoding, Jsonb(location), geom)).fetchone()[0]
        tx.created.append((model.FEATURES_OF_INTEREST, foi))
    tx._foi_of_stream[stream] = foi
    return foi


def _check_result(tx: Tx, stream: int, result, member: str) -> None:
    if _stream_kind(tx, stream) != "MultiDatastreams":
        return
    n = tx.conn.execute("SELECT count(*) FROM sta_multi_datastream_properties WHERE multi_datastream_id = %s",
                        (stream,)).fetchone()[0]
    if not isinstance(result, list) or len(result) != n:
        raise bad(_m(member, "result"), f"an Observation of MultiDatastream {stream} has an array of {n} results "
                  "(one per ObservedProperty, in order)")


def _observation_columns(tx: Tx, props: dict, member: str, *, replace: bool) -> dict[str, object]:
    cols: dict[str, object] = {}
    ent = model.OBSERVATIONS
    for p in ent.props:
        if not p.writable:
            continue
        if p.name not in props:
            if not replace:
                continue
            if p.name == "phenomenonTime":
                cols.update(phenomenon_time_start=tx.now, phenomenon_time_end=None)
            elif p.name != "result":
                for c in _columns(p):
                    cols[c] = None
            continue
        value = props[p.name]
        if p.name == "result":
            cols["result_number"], cols["result_json"] = _result_values(value)
        elif p.name == "phenomenonTime":
            if value is None:
                raise bad(_m(member, p.name), "must not be null (leave it out for now)")
            cols["phenomenon_time_start"], cols["phenomenon_time_end"] = _interval(value, _m(member, p.name))
        else:
            for c, v in zip(_columns(p), _value(p, value, _m(member, p.name))):
                cols[c] = v
    return cols


def _insert_observation(tx: Tx, props: dict, fixed: dict, member: str) -> int:
    cols = _observation_columns(tx, props, member, replace=True)
    stream = fixed.get("stream_id")
    if _stream_kind(tx, stream) is None:
        raise bad(_m(member, "Datastream"), f"no Datastream or MultiDatastream with @iot.id {stream}")
    _check_result(tx, stream, props.get("result"), member)
    if fixed.get("feature_of_interest_id") is None:
        fixed["feature_of_interest_id"] = _generated_foi(tx, stream, member)
    cols.update(fixed)
    tx.execute("SELECT sta_ensure_partitions(%s, %s)", (cols["phenomenon_time_start"], cols["phenomenon_time_start"]))
    q = sql.SQL("INSERT INTO sta_observations ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols)))
    return tx.execute(q, list(cols.values()), member=member).fetchone()[0]


# ------------------------------------------------------------------------------------- update

def update(tx: Tx, target: Target, body, *, replace: bool) -> tuple[Entity, int]:
    """PATCH (merge) or PUT (replace) of one entity."""
    ent, id_ = target.entity, target.id
    if id_ is None:
        raise ApiError(405, "MethodNotAllowed", f"{'PUT' if replace else 'PATCH'} changes one entity: name it, "
                       f"e.g. {ent.set_name}(1)")
    if not isinstance(body, dict):
        raise bad("body", f"{_a(ent)} must be a JSON object")
    props, navs = _split(ent, body, "")
    if replace:
        missing = [p.name for p in ent.props if p.required and p.writable and p.name not in props]
        if missing:
            raise bad("body", f"PUT replaces the whole {ent.singular}: it needs {', '.join(missing)} (missing)")
    sets: dict[str, object] = {}
    if ent is model.OBSERVATIONS:
        sets = _observation_columns(tx, props, "", replace=replace)
    else:
        for p in ent.props:
            if not p.writable:
                continue
            if p.name in props:
                for c, v in zip(_columns(p), _value(p, props[p.name], p.name)):
                    sets[c] = v
            elif replace:
                for c in _columns(p):
                    sets[c] = sql.DEFAULT
    for name, value in navs.items():
        nav = ent.nav(name)
        if nav.many:
            continue
        if value is None:
            raise bad(name, f"{_a(ent)} cannot lose its {name}; link another one with {{\"@iot.id\": n}}")
        sets[nav.fk] = _link_or_create(tx, ENTITIES[nav.target], value, name)
    if ent is model.OBSERVATIONS:
        stream = sets.get("stream_id") or tx.conn.execute(
            "SELECT stream_id FROM sta_observations WHERE id = %s", (id_,)).fetchone()[0]
        if "result" in props or "stream_id" in sets:
            result = props["result"] if "result" in props else tx.conn.execute(
                f"SELECT {model.RESULT_SQL.format(a='o')} FROM sta_observations o WHERE o.id = %s", (id_,)).fetchone()[0]
            _check_result(tx, stream, result, "")
        if "phenomenon_time_start" in sets:
            t = sets["phenomenon_time_start"]
            tx.execute("SELECT sta_ensure_partitions(%s, %s)", (t, t))
    if sets:
        q = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
            sql.Identifier(ent.table),
            sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), v if isinstance(v, sql.Composable)
                                                         else sql.Placeholder()) for c, v in sets.items()))
        tx.execute(q, [v for v in sets.values() if not isinstance(v, sql.Composable)] + [id_])
        if ent.set_name in _GEOM_DOC:
            _fill_geom(tx, ent, id_, "")
    for name, value in navs.items():
        nav = ent.nav(name)
        if not nav.many:
            continue
        if ent is model.THINGS and name == "Locations":
            if not isinstance(value, list):
                raise bad(name, "must be an array of Locations")
            locs = []
            for k, item in enumerate(value):
                locs.append(_link_or_create(tx, model.LOCATIONS, item, f"{name}[{k}]"))
            _relocate(tx, id_, locs)
        else:
            _add_many(tx, ent, id_, nav, value, name)
    if ent is model.MULTI_DATASTREAMS:
        _check_multi(tx, id_, "")
    # a PUT may have reset any property: the changed ones are not listed (None: all)
    tx.updated.append((ent, id_, None if replace else tuple(props) + tuple(navs)))
    return ent, id_


def json_patch(tx: Tx, target: Target, operations) -> tuple[Entity, int]:
    """RFC 6902 JSON Patch applied to the entity as served, then written as a PUT."""
    if target.id is None:
        raise ApiError(405, "MethodNotAllowed", "PATCH changes one entity: name it")
    doc = entity_json(tx, target.entity, target.id)
    doc = {k: v for k, v in doc.items() if "@iot." not in k}
    patched = apply_json_patch(doc, operations)
    return update(tx, target, patched, replace=True)


def _pointer(path: str, member: str) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise bad(member, f"{path!r} is not a JSON pointer (e.g. /properties/owner)")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(doc, parts: list[str], member: str):
    cur = doc
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise bad(member, f"no member {p!r} on the path")
    return cur


def apply_json_patch(doc, operations):
    import copy

    if not isinstance(operations, list):
        raise bad("body", "a JSON Patch is an array of operations ({\"op\", \"path\", \"value\"})")
    doc = copy.deepcopy(doc)
    for k, op in enumerate(operations):
        member = f"body[{k}]"
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            raise bad(f"{member}.op", "must be add, remove, replace, move, copy or test")
        parts = _pointer(op.get("path"), f"{member}.path")
        if not parts:
            raise bad(f"{member}.path", "the whole entity cannot be replaced by a patch; PUT it")
        name = op["op"]
        if name in ("add", "replace", "test") and "value" not in op:
            raise bad(f"{member}.value", "missing")
        if name in ("move", "copy"):
            src = _pointer(op.get("from"), f"{member}.from")
            value = copy.deepcopy(_walk(doc, src, f"{member}.from"))
            if name == "move":
                parent = _walk(doc, src[:-1], f"{member}.from")
                del parent[int(src[-1]) if isinstance(parent, list) else src[-1]]
            name, op = "add", {**op, "value": value}
        parent = _walk(doc, parts[:-1], f"{member}.path")
        key = parts[-1]
        if name == "test":
            if _walk(doc, parts, f"{member}.path") != op["value"]:
                raise ApiError(409, "Conflict", f"{member}: test of {op['path']} failed")
            continue
        if isinstance(parent, list):
            if key == "-" and name == "add":
                parent.append(op["value"])
                continue
            if not key.isdigit() or int(key) > len(parent) or (name != "add" and int(key) == len(parent)):
                raise bad(f"{member}.path", f"{key!r} is not an index of the array")
            i = int(key)
            if name == "add":
                parent.insert(i, op["value"])
            elif name == "remove":
                del parent[i]
            else:
                parent[i] = op["value"]
        elif isinstance(parent, dict):
            if name in ("remove", "replace") and key not in parent:
                raise bad(f"{member}.path", f"no member {key!r} to {name}")
            if name == "remove":
                del parent[key]
            else:
                parent[key] = op["value"]
        else:
            raise bad(f"{member}.path", "leads into a value that is not an object or array")
    return doc


# ------------------------------------------------------------------------------------- delete

def delete(tx: Tx, target: Target) -> tuple[Entity, int]:
    ent, id_ = target.entity, target.id
    if id_ is None:
        raise ApiError(405, "MethodNotAllowed", f"DELETE removes one entity: name it, e.g. {ent.set_name}(1)")
    if ent is model.LOCATIONS:
        # HistoricalLocations that only knew this Location go with it
        tx.execute("DELETE FROM sta_historical_locations h WHERE h.id IN ("
                   "SELECT historical_location_id FROM sta_location_history WHERE location_id = %s) "
                   "AND NOT EXISTS (SELECT 1 FROM sta_location_history x WHERE x.historical_location_id = h.id "
                   "AND x.location_id <> %s)", (id_, id_))
    elif ent is model.OBSERVED_PROPERTIES:
        tx.execute("DELETE FROM sta_multi_datastreams WHERE id IN (SELECT multi_datastream_id FROM "
                   "sta_multi_datastream_properties WHERE observed_property_id = %s)", (id_,))
    elif ent is model.FEATURES_OF_INTEREST:
        tx.execute("DELETE FROM sta_observations WHERE feature_of_interest_id = %s", (id_,))
    deleted = tx.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(ent.table)), (id_,)).rowcount
    if not deleted:
        raise ApiError(404, "NotFound", f"no {ent.singular} with @iot.id {id_}")
    tx._foi_of_stream.clear()
    tx.deleted.append((ent, id_))
    return ent, id_


# ------------------------------------------------------------------------------------- $ref

def add_ref(tx: Tx, target: Target, body) -> None:
    """``POST …/Things(1)/Locations/$ref {"@iot.id": 2}`` (a to-many link) and
    ``PUT …/Datastreams(1)/Sensor/$ref`` style to-one links are both taken here."""
    if target.parent is None:
        raise bad("path", "$ref needs a navigation path, e.g. Things(1)/Locations/$ref")
    pent, pid, nav = target.parent
    ref = _ref_id(body, "body")
    if ref is None:
        raise bad("body", "a link is {\"@iot.id\": n}")
    _add_many(tx, pent, pid, nav, [body], "body")
    if pent is model.THINGS and nav.name == "Locations":
        _record_location(tx, pid)
    tx.updated.append((pent, pid, (nav.name,)))


def remove_ref(tx: Tx, path: str) -> None:
    """``DELETE …/Things(1)/Locations(2)/$ref``: the link goes, both entities stay."""
    segments = [s for s in path.strip("/").split("/") if s]
    if len(segments) < 3 or segments[-1] != "$ref":
        raise bad("path", "DELETE of a link is …/Parent(id)/Navigation(id)/$ref")
    parent_target = resolve(tx, "/".join(segments[:-2]))
    m = _SEGMENT.match(segments[-2])
    pent, pid = parent_target.entity, parent_target.id
    nav = pent.nav(m.group(1)) if m else None
    if pid is None or nav is None or not m.group(2):
        raise ApiError(404, "NotFound", f"no link at {path!r}")
    cid = int(m.group(2))
    if _related(tx, pent, pid, nav, cid) is None:
        raise ApiError(404, "NotFound", f"{pent.singular} {pid} has no {nav.name} link to {cid}")
    if nav.link:
        table, pcol, ccol = nav.link
        tx.execute(sql.SQL("DELETE FROM {} WHERE {} = %s AND {} = %s").format(
            sql.Identifier(table), sql.Identifier(pcol), sql.Identifier(ccol)), (pid, cid))
        if nav.required or _inverse(ENTITIES[nav.target], pent, nav).required:
            _check_multi(tx, pid if pent is model.MULTI_DATASTREAMS else cid, "path")
    else:
        raise bad("path", f"the {nav.name} of {_a(pent)} are held by their own link to it: "
                  f"link them elsewhere (PATCH) or delete them")
    tx.updated.append((pent, pid, (nav.name,)))


# ------------------------------------------------------------------------------------- DataArray

DATA_ARRAY_COMPONENTS = ("id", "phenomenonTime", "resultTime", "result", "resultQuality", "validTime",
                         "parameters", "FeatureOfInterest/id")


def create_observations(tx: Tx, body) -> list[str]:
    """18-088 §14.3.2 CreateObservations: per row the new Observation's self link, or ``"error"``
    for a row whose values cannot be taken (the other rows are stored). A structural mistake (no
    Datastream, an unknown component, a row of the wrong length) is a 400 naming where it is, and
    nothing is stored. All rows go in with one COPY."""
    if not isinstance(body, list):
        raise bad("body", "CreateObservations takes a JSON array of {Datastream, components, dataArray}")
    plan: list[tuple[int, list[str], list]] = []  # (stream, components, rows)
    for k, block in enumerate(body):
        member = f"[{k}]"
        if not isinstance(block, dict):
            raise bad(member, "must be an object {Datastream, components, dataArray}")
        unknown = sorted(set(block) - {"Datastream", "MultiDatastream", "components", "dataArray", "dataArray@iot.count"})
        if unknown:
            raise bad(", ".join(f"{member}.{u}" for u in unknown), "not a member of a DataArray block; its members "
                      "are Datastream (or MultiDatastream), components, dataArray")
        key = "MultiDatastream" if "MultiDatastream" in block else "Datastream"
        if key not in block:
            raise bad(f"{member}.Datastream", "missing: which Datastream ({\"@iot.id\": n}) the rows belong to")
        stream = _ref_id(block[key], f"{member}.{key}")
        if stream is None:
            raise bad(f"{member}.{key}", "must be a link {\"@iot.id\": n}")
        kind = _stream_kind(tx, stream)
        if kind != key + "s":
            raise bad(f"{member}.{key}.@iot.id", f"no {key} with @iot.id {stream}")
        comps = block.get("components")
        if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
            raise bad(f"{member}.components", "must be a non-empty array of names, e.g. "
                      "[\"phenomenonTime\", \"result\", \"FeatureOfInterest/id\"]")
        bad_comps = [c for c in comps if c not in DATA_ARRAY_COMPONENTS]
        if bad_comps or len(set(comps)) != len(comps):
            raise bad(f"{member}.components", f"{bad_comps or 'a repeated name'}: the components are "
                      + ", ".join(DATA_ARRAY_COMPONENTS) + " (each once)")
        if "result" not in comps:
            raise bad(f"{member}.components", "must include result")
        rows = block.get("dataArray")
        if not isinstance(rows, list):
            raise bad(f"{member}.dataArray", "must be an array of rows (arrays of values, in the order of components)")
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(comps):
                raise bad(f"{member}.dataArray[{r}]", f"must be an array of {len(comps)} values ({', '.join(comps)})")
        plan.append((stream, comps, rows))

    out: list[str] = []
    good: list[tuple] = []
    n_ops: dict[int, int] = {}
    named = {v for _, comps, rows in plan if "FeatureOfInterest/id" in comps
             for v in (row[comps.index("FeatureOfInterest/id")] for row in rows)
             if isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and v.isdigit())}
    known_fois = {r[0] for r in tx.conn.execute("SELECT id FROM sta_features_of_interest WHERE id = ANY(%s)",
                                                ([int(v) for v in named if int(v) < 2 ** 63],))}
    for stream, comps, rows in plan:
        if _stream_kind(tx, stream) == "MultiDatastreams":
            n_ops[stream] = tx.conn.execute("SELECT count(*) FROM sta_multi_datastream_properties "
                                            "WHERE multi_datastream_id = %s", (stream,)).fetchone()[0]
        for row in rows:
            values = dict(zip(comps, row))
            try:
                good.append(_array_row(tx, stream, values, n_ops.get(stream), known_fois))
                out.append("")  # filled with the self link below
            except ApiError:
                out.append("error")
    if good:
        times = [g[1] for g in good]
        tx.execute("SELECT sta_ensure_partitions(%s, %s)", (min(times), max(times)))
        ids = [r[0] for r in tx.conn.execute("SELECT nextval('sta_observation_ids') FROM generate_series(1, %s)",
                                             (len(good),))]
        with tx.conn.cursor() as cur, cur.copy(
                "COPY sta_observations (id, stream_id, phenomenon_time_start, phenomenon_time_end, result_time, "
                "result_number, result_json, result_quality, valid_time_start, valid_time_end, parameters, "
                "feature_of_interest_id) FROM STDIN") as copy:
            for i, g in zip(ids, good):
                copy.write_row((i, *g))
        it = iter(ids)
        out = [o if o == "error" else self_link(tx.base, model.OBSERVATIONS, next(it)) for o in out]
        tx.created.extend((model.OBSERVATIONS, i) for i in ids)
    return out


def _array_row(tx: Tx, stream: int, values: dict, n_results: int | None, known_fois: set[int]) -> tuple:
    t0, t1 = _interval(values["phenomenonTime"], "phenomenonTime") if values.get("phenomenonTime") is not None \
        else (tx.now, None)
    rt = _time(values["resultTime"], "resultTime") if values.get("resultTime") is not None else None
    v0, v1 = _interval(values["validTime"], "validTime") if values.get("validTime") is not None else (None, None)
    result = values["result"]
    if n_results is not None and (not isinstance(result, list) or len(result) != n_results):
        raise bad("result", f"an array of {n_results} results")
    number, js = _result_values(result)
    quality = values.get("resultQuality")
    params = values.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise bad("parameters", "must be a JSON object")
    foi = values.get("FeatureOfInterest/id")
    if foi is None:
        foi = _generated_foi(tx, stream, "")
    else:
        foi = _ref_id({"@iot.id": foi}, "FeatureOfInterest/id")
        if foi not in known_fois:
            raise bad("FeatureOfInterest/id", f"no FeatureOfInterest with @iot.id {foi}")
    return (stream, t0, t1, rt, number, js, None if quality is None else Jsonb(quality), v0, v1,
            None if params is None else Jsonb(params), foi)
