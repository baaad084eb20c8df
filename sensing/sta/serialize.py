"""Entity JSON of the SensorThings API (OGC 18-088 §8, FROST-Server's shapes where the standard is
silent): ``@iot.id``, ``@iot.selfLink``, the properties, ``<Nav>@iot.navigationLink``.

- Times are ISO 8601 instants in UTC (``2026-12-07T06:00:00Z``, fractions only when not zero);
  time intervals are ``start/end``; an Observation whose phenomenon time has no end is an instant.
- ``location`` / ``feature`` are served as stored (the GeoJSON given on create); ``observedArea``
  is GeoJSON made from the geometry column.
- An Observation's ``resultTime`` and ``result`` are always present (null allowed: the standard
  makes them mandatory members); other null properties are left out, like FROST does.

Rows come from :func:`columns`: one SQL column per property (two for an interval, suffixed
``|s`` and ``|e``) plus ``@id`` — so any reader (``read.py``, the write side's 201 bodies) selects
with :func:`columns` and serialises with :func:`entity_json`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sensing.sta import model
from sensing.sta.model import Entity

ROOT = "/sta/" + model.API_VERSION
#: Properties whose SQL is a PostGIS geometry (served as GeoJSON made by PostGIS).
GEOMETRY_COLUMNS = frozenset({("Datastreams", "observedArea"), ("MultiDatastreams", "observedArea")})
#: Null members kept in the output (mandatory in the standard even when null).
KEEP_NULL = frozenset({("Observations", "resultTime"), ("Observations", "result")})


def format_time(t: datetime | None) -> str | None:
    if t is None:
        return None
    t = t.astimezone(timezone.utc)
    if t.microsecond:
        frac = f"{t.microsecond:06d}"
        frac = frac[:3] if frac.endswith("000") else frac
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_interval(start: datetime | None, end: datetime | None, *, instant_if_open: bool) -> str | None:
    """``start/end``; just ``start`` when ``end`` is missing and the property may be an instant."""
    if start is None and end is None:
        return None
    if end is None and instant_if_open:
        return format_time(start)
    return f"{format_time(start)}/{format_time(end if end is not None else start)}"


def prop_sql(entity: Entity, prop: model.Prop, alias: str) -> list[tuple[str, str]]:
    """(SQL expression, column name) pairs that select ``prop`` of ``entity`` over ``alias``."""
    if prop.kind == model.INTERVAL:
        start, end = prop.sql.split("|")
        return [(start.format(a=alias), prop.name + "|s"), (end.format(a=alias), prop.name + "|e")]
    sql = prop.sql.format(a=alias)
    if (entity.set_name, prop.name) in GEOMETRY_COLUMNS:
        sql = f"ST_AsGeoJSON({sql})::jsonb"
    return [(sql, prop.name)]


def columns(entity: Entity, alias: str, props: list[str] | None = None) -> list[str]:
    """SELECT list items (``expr AS "name"``) for ``props`` (default: all) and ``@id``."""
    out = [f'{alias}.id AS "@id"']
    for p in entity.props:
        if props is not None and p.name not in props:
            continue
        out += [f'{sql} AS "{col}"' for sql, col in prop_sql(entity, p, alias)]
    return out


def prop_value(entity: Entity, prop: model.Prop, row: dict):
    """A property's JSON value from a row made with :func:`columns`."""
    if prop.kind == model.INTERVAL:
        return format_interval(row.get(prop.name + "|s"), row.get(prop.name + "|e"),
                               instant_if_open=entity.set_name == "Observations" and prop.name == "phenomenonTime")
    v = row.get(prop.name)
    if prop.kind == model.TIME:
        return format_time(v)
    if isinstance(v, datetime):
        return format_time(v)
    if prop.kind == model.TEXT_ARRAY and v is not None:
        return list(v)
    return v


def self_link(base: str, entity: Entity, ident) -> str:
    return f"{base}{ROOT}/{entity.set_name}({ident})"


def entity_json(entity: Entity, row: dict, base: str, select: list[str] | None = None) -> dict:
    """The JSON object of one entity. ``base``: scheme://host[:port][/prefix] of the server.
    ``select``: the names asked for by ``$select`` (properties, navigation properties, ``id``);
    None for all (then ``@iot.selfLink`` and the navigation links are included too)."""
    ident = row.get("@id")
    out: dict = {}
    link = self_link(base, entity, ident) if ident is not None else None
    if select is None:
        if ident is not None:
            out["@iot.id"] = ident
            out["@iot.selfLink"] = link
    else:
        if "id" in select and ident is not None:
            out["@iot.id"] = ident
        if "@iot.selfLink" in select and link is not None:
            out["@iot.selfLink"] = link
    for p in entity.props:
        if p.name == "id" or (select is not None and p.name not in select):
            continue
        v = prop_value(entity, p, row)
        if v is None and (entity.set_name, p.name) not in KEEP_NULL:
            continue
        out[p.name] = v
    if link is not None:
        for n in entity.navs:
            if select is None or n.name in select:
                out[f"{n.name}@iot.navigationLink"] = f"{link}/{n.name}"
    return out
