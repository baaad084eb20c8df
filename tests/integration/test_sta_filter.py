"""STA ``$filter`` / ``$orderby`` SQL run on real rows in the ``sta_*`` tables (PostGIS): which
entities each expression selects, per operator and function group."""

from __future__ import annotations

import json

import pytest

from sensing.sta.filter import FilterError, compile_filter, compile_orderby
from sensing.sta.model import ENTITIES


@pytest.fixture(autouse=True)
def district_time(monkeypatch):
    """Date parts and naive date-times are district time; these cases are written for Shenzhen."""
    monkeypatch.setenv("GEOTWIN_TIMEZONE", "Asia/Shanghai")


@pytest.fixture(scope="module")
def sta(database):
    """A few Things / Locations / Datastreams / FeaturesOfInterest / Observations, inserted in one
    transaction that is rolled back at the end (nothing is left in the schema)."""
    from spatial_api import db

    conn = db.connect(database)
    ids: dict[str, dict[str, int]] = {k: {} for k in ENTITIES}

    def ins(table, cols: dict, key: str, set_name: str):
        names = ", ".join(cols)
        marks = ", ".join("%s" if not isinstance(v, Geo) else "ST_GeomFromText(%s, 4326)" for v in cols.values())
        vals = [v.wkt if isinstance(v, Geo) else (json.dumps(v) if isinstance(v, (dict, list)) else v)
                for v in cols.values()]
        ids[set_name][key] = conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id",
                                          vals).fetchone()[0]

    class Geo:
        def __init__(self, wkt):
            self.wkt = wkt

    ins("sta_things", {"name": "meter 坂田 1", "description": "kitchen",
                       "properties": {"community": "坂田", "floors": 12, "active": True, "owner": {"name": "Li"}}},
        "T1", "Things")
    ins("sta_things", {"name": "Meter Buji 2", "description": "  bathroom  ",
                       "properties": {"community": "布吉", "floors": 3, "active": False}}, "T2", "Things")
    ins("sta_things", {"name": "hydrant 3", "description": "it's red"}, "T3", "Things")
    for key, x, y in (("L1", 114.10, 22.70), ("L2", 114.20, 22.60)):
        ins("sta_locations", {"name": key, "encoding_type": "application/geo+json",
                              "location": {"type": "Point", "coordinates": [x, y]},
                              "geom": Geo(f"POINT({x} {y})")}, key, "Locations")
    conn.execute("INSERT INTO sta_thing_locations (thing_id, location_id) VALUES (%s, %s), (%s, %s)",
                 [ids["Things"]["T1"], ids["Locations"]["L1"], ids["Things"]["T2"], ids["Locations"]["L2"]])
    ins("sta_sensors", {"name": "S", "encoding_type": "text/html", "metadata": "http://example.org"},
        "S1", "Sensors")
    ins("sta_observed_properties", {"name": "volume", "definition": "http://example.org/volume"},
        "P1", "ObservedProperties")
    for key, thing, name, unit in (("D1", "T1", "water D1", "cubic metre"), ("D2", "T2", "water D2", "litre"),
                                   ("D3", "T3", "pressure D3", "bar")):
        ins("sta_datastreams", {"name": name, "observation_type": "OM_Measurement",
                                "unit_of_measurement": {"name": unit, "symbol": unit[:1]},
                                "thing_id": ids["Things"][thing], "sensor_id": ids["Sensors"]["S1"],
                                "observed_property_id": ids["ObservedProperties"]["P1"]}, key, "Datastreams")
    ins("sta_features_of_interest", {"name": "F1", "encoding_type": "application/geo+json",
                                     "feature": {"type": "Point", "coordinates": [114.1, 22.7]},
                                     "geom": Geo("POINT(114.1 22.7)")}, "F1", "FeaturesOfInterest")
    ins("sta_features_of_interest", {"name": "F2", "encoding_type": "application/geo+json",
                                     "feature": {"type": "Polygon"},
                                     "geom": Geo("POLYGON((114.15 22.55, 114.25 22.55, 114.25 22.65, "
                                                 "114.15 22.65, 114.15 22.55))")}, "F2", "FeaturesOfInterest")
    conn.execute("SELECT sta_ensure_partitions('2026-01-01T00:00:00Z', '2026-02-28T00:00:00Z')")
    d, f = ids["Datastreams"], ids["FeaturesOfInterest"]
    obs = [  # tag, stream, start, end, number, json, foi
        ("o1", "D1", "2026-01-01T00:00:00Z", None, 0.5, None, "F1"),
        ("o2", "D1", "2026-01-01T00:30:00.250Z", None, 1.5, None, "F1"),
        ("o3", "D1", "2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z", 2.0, None, "F1"),
        ("o4", "D1", "2026-02-01T00:00:00Z", None, 3.0, None, "F1"),
        ("o5", "D2", "2026-01-01T06:00:00Z", None, None, "on", "F2"),
        ("o6", "D2", "2026-01-01T07:00:00Z", None, None, True, "F2"),
        ("o7", "D2", "2026-01-01T08:00:00Z", None, None, {"a": 5, "when": "2026-01-01T08:00:00Z"}, "F2"),
        ("o8", "D3", "2026-01-01T09:00:00Z", None, None, None, "F2"),
    ]
    for tag, stream, t0, t1, num, js, foi in obs:
        ins("sta_observations", {"stream_id": d[stream], "phenomenon_time_start": t0, "phenomenon_time_end": t1,
                                 "result_time": t1 or t0, "result_number": num,
                                 "result_json": None if js is None else json.dumps(js),
                                 "parameters": {"tag": tag, "battery": 80 if stream == "D2" else 20},
                                 "feature_of_interest_id": f[foi]}, tag, "Observations")
    try:
        yield conn, ids
    finally:
        conn.rollback()
        conn.close()


def select(sta, set_name: str, text: str) -> list[str]:
    """The keys (T1, o3 …) of the fixture's rows that ``text`` selects."""
    conn, ids = sta
    e = ENTITIES[set_name]
    cond, params = compile_filter(text, e, "e")
    by_id = {v: k for k, v in ids[set_name].items()}
    rows = conn.execute(f"SELECT e.id FROM {e.table} e WHERE e.id = ANY(%s) AND ({cond})",
                        [list(by_id), *params]).fetchall()
    return sorted(by_id[r[0]] for r in rows)


CASES = [
    # comparison and logical operators, null
    ("Things", "name eq 'hydrant 3'", ["T3"]),
    ("Things", "name ne 'hydrant 3'", ["T1", "T2"]),
    ("Things", "description eq 'it''s red'", ["T3"]),
    ("Things", "description gt 'j'", ["T1"]),
    ("Things", "properties eq null", ["T3"]),
    ("Things", "properties ne null and not (properties/active eq true)", ["T2"]),
    ("Things", "properties/owner/name eq 'Li' or name eq 'hydrant 3'", ["T1", "T3"]),
    ("Things", "properties/owner eq null", ["T2", "T3"]),
    ("Things", "properties/active", ["T1"]),
    ("Things", "not properties/active", ["T2"]),
    ("Observations", "result eq null", ["o8"]),
    ("Observations", "result ne null and phenomenonTime lt 2026-01-01T07:30:00Z", ["o1", "o2", "o5", "o6"]),
    # arithmetic and precedence
    ("Things", "properties/floors add 1 eq 13", ["T1"]),
    ("Things", "properties/floors mul 2 sub 1 eq 5", ["T2"]),
    ("Things", "properties/floors div 4 eq 3", ["T1"]),
    ("Things", "properties/floors mod 5 eq 2", ["T1"]),
    ("Things", "properties/floors div 0 eq 1 or properties/floors mod 0 eq 1", []),
    ("Things", "(properties/floors sub 2) mul 2 gt 10", ["T1"]),
    ("Things", "properties/floors gt 2 and properties/floors lt 4 or name eq 'hydrant 3'", ["T2", "T3"]),
    ("Things", "properties/floors gt 2 and (properties/floors lt 4 or name eq 'hydrant 3')", ["T2"]),
    ("Observations", "result mul 2 ge 3", ["o2", "o3", "o4"]),
    ("Observations", "-result lt -2.5", ["o4"]),
    # results of every kind
    ("Observations", "result gt 1", ["o2", "o3", "o4"]),
    ("Observations", "result eq 'on'", ["o5"]),
    ("Observations", "result eq true", ["o6"]),
    ("Observations", "result/a eq 5", ["o7"]),
    ("Observations", "result/when lt 2026-01-01T09:00:00Z", ["o7"]),
    ("Observations", "parameters/battery gt 50 and result ne 'on'", ["o6", "o7"]),
    ("Observations", "parameters/tag eq 'o3'", ["o3"]),
    # strings
    ("Things", "substringof('坂田', name)", ["T1"]),
    ("Things", "contains(name, 'Buji')", ["T2"]),
    ("Things", "startswith(name, 'meter')", ["T1"]),
    ("Things", "startswith(tolower(name), 'meter')", ["T1", "T2"]),
    ("Things", "endswith(name, ' 3')", ["T3"]),
    ("Things", "length(name) eq 9", ["T3"]),
    ("Things", "indexof(name, 'Buji') eq 6", ["T2"]),
    ("Things", "substring(name, 6) eq 'Buji 2'", ["T2"]),
    ("Things", "substring(name, 0, 7) eq 'hydrant'", ["T3"]),
    ("Things", "toupper(name) eq 'METER BUJI 2'", ["T2"]),
    ("Things", "trim(description) eq 'bathroom'", ["T2"]),
    ("Things", "concat(concat(name, '/'), description) eq 'hydrant 3/it''s red'", ["T3"]),
    ("Things", "substringof('坂', properties/community)", ["T1"]),
    # dates and times (date parts in district time, Asia/Shanghai)
    ("Observations", "phenomenonTime ge 2026-01-02T00:00:00Z", ["o3", "o4"]),
    ("Observations", "phenomenonTime gt 2026-01-02T00:30:00Z", ["o4"]),
    ("Observations", "phenomenonTime lt 2026-01-02T00:30:00Z", ["o1", "o2", "o5", "o6", "o7", "o8"]),
    ("Observations", "phenomenonTime lt 2026-01-02T01:00:00Z and phenomenonTime ge 2026-01-02T00:00:00Z", ["o3"]),
    ("Observations", "phenomenonTime eq 2026-01-01T08:00:00+08:00", ["o1"]),
    ("Observations", "phenomenonTime eq 2026-01-01T08:00:00", ["o1"]),  # naive = district time
    ("Observations", "phenomenonTime eq 2026-01-02T00:00:00Z/2026-01-02T01:00:00Z", ["o3"]),
    ("Observations", "phenomenonTime le 2026-01-01T06:00:00Z/2026-01-01T06:00:00Z", ["o1", "o2", "o5"]),
    ("Observations", "resultTime eq 2026-01-02T01:00:00Z", ["o3"]),
    ("Observations", "year(phenomenonTime) eq 2026 and month(phenomenonTime) eq 2", ["o4"]),
    ("Observations", "day(phenomenonTime) eq 2 and hour(phenomenonTime) eq 0", ["o3"]),  # UTC, as served
    ("Observations", "hour(phenomenonTime) eq 7", ["o6"]),
    ("Observations", "minute(phenomenonTime) eq 30 and second(phenomenonTime) eq 0", ["o2"]),
    ("Observations", "fractionalseconds(phenomenonTime) gt 0.2", ["o2"]),
    ("Observations", "date(phenomenonTime) eq 2026-01-02", ["o3"]),
    ("Observations", "time(phenomenonTime) ge 07:00:00 and time(phenomenonTime) lt 09:00:00", ["o6", "o7"]),
    ("Observations", "totaloffsetminutes(phenomenonTime) eq 0 and month(phenomenonTime) eq 2", ["o4"]),
    ("Observations", ("phenomenonTime lt now() and phenomenonTime gt mindatetime() and "
                     "phenomenonTime lt maxdatetime() and month(phenomenonTime) eq 2"), ["o4"]),
    ("Observations", "phenomenonTime add duration'P30D' gt 2026-02-15T00:00:00Z", ["o4"]),
    ("Observations", "resultTime sub phenomenonTime gt duration'PT30M'", ["o3"]),
    ("Datastreams", "phenomenonTime ge 2026-01-01T01:00:00Z", ["D2", "D3"]),
    ("Datastreams", "phenomenonTime eq 2026-01-01T00:00:00Z/2026-02-01T00:00:00Z", ["D1"]),
    ("Datastreams", "resultTime gt 2026-01-01T08:30:00Z", ["D3"]),
    # math
    ("Observations", "round(result) eq 2", ["o2", "o3"]),  # 1.5 → 2 (half away from zero)
    ("Observations", "floor(result) eq 1", ["o2"]),
    ("Observations", "ceiling(result) eq 1", ["o1"]),
    # geospatial
    ("Locations", ("geo.intersects(location, geography'POLYGON((114 22.65, 114.15 22.65, 114.15 22.75, "
                  "114 22.75, 114 22.65))')"), ["L1"]),
    ("Locations", "geo.distance(location, geography'POINT(114.1 22.71)') lt 1200", ["L1"]),
    ("Locations", "geo.distance(location, geometry'POINT(114.2 22.6)') lt 0.001", ["L2"]),
    ("Locations", "location eq geometry'POINT(114.2 22.6)'", ["L2"]),
    ("Locations", ("st_within(location, geometry'POLYGON((114.15 22.55, 114.25 22.55, 114.25 22.65, "
                  "114.15 22.65, 114.15 22.55))')"), ["L2"]),
    ("Locations", "st_disjoint(location, geometry'POINT(114.1 22.7)')", ["L2"]),
    ("Locations", "st_equals(location, geometry'POINT(114.1 22.7)')", ["L1"]),
    ("Locations", "st_intersects(location, geometry'LINESTRING(114.1 22.6, 114.1 22.8)')", ["L1"]),
    ("Locations", "st_touches(location, geometry'LINESTRING(114.1 22.7, 114.2 22.8)')", ["L1"]),
    ("Locations", "st_relate(location, geometry'POINT(114.2 22.6)', 'T********')", ["L2"]),
    ("FeaturesOfInterest", "st_contains(feature, geometry'POINT(114.2 22.6)')", ["F2"]),
    ("FeaturesOfInterest", ("st_overlaps(feature, geometry'POLYGON((114.2 22.6, 114.3 22.6, 114.3 22.7, "
                           "114.2 22.7, 114.2 22.6))')"), ["F2"]),
    ("FeaturesOfInterest", "st_crosses(geometry'LINESTRING(114.1 22.6, 114.3 22.6)', feature)", ["F2"]),
    ("FeaturesOfInterest", "geo.length(geometry'LINESTRING(0 0, 3 4)') eq 5 and name eq 'F1'", ["F1"]),
    ("FeaturesOfInterest", "geo.length(geography'LINESTRING(114 22, 114 23)') gt 110000 and name eq 'F2'", ["F2"]),
    # navigation: to-one chains, to-many (any related entity), ids through the foreign key
    ("Observations", "Datastream/name eq 'water D2'", ["o5", "o6", "o7"]),
    ("Observations", "Datastream/Thing/properties/community eq '坂田' and result gt 2", ["o4"]),
    ("Observations", "FeatureOfInterest/id eq {F2} and result eq null", ["o8"]),
    ("Observations", "Datastream/unitOfMeasurement/name eq 'litre'", ["o5", "o6", "o7"]),
    ("Observations", ("st_within(FeatureOfInterest/feature, geometry'POLYGON((114 22.6, 114.2 22.6, 114.2 22.8, "
                     "114 22.8, 114 22.6))')"), ["o1", "o2", "o3", "o4"]),
    ("Observations", "geo.distance(Datastream/Thing/Locations/location, geography'POINT(114.2 22.6)') lt 10",
     ["o5", "o6", "o7"]),
    ("Things", "Datastreams/name eq 'pressure D3'", ["T3"]),
    ("Things", "Datastreams/Observations/result gt 2.5", ["T1"]),
    ("Things", "Datastreams/Observations/result eq 'on' or Locations/name eq 'L1'", ["T1", "T2"]),
    ("Things", "not (Datastreams/Observations/result gt 0)", ["T2", "T3"]),
    ("Things", "geo.intersects(Locations/location, geography'POINT(114.2 22.6)')", ["T2"]),
    ("Things", "Locations/location eq null", []),
    ("Datastreams", "Thing/Locations/name eq 'L1'", ["D1"]),
    ("Datastreams", "Thing/id eq {T3}", ["D3"]),
    ("Datastreams", "Observations/parameters/battery eq 80", ["D2"]),
    ("Datastreams", "Thing/properties/floors gt 10 or ObservedProperty/name ne 'volume'", ["D1"]),
    ("Locations", "Things/name eq 'Meter Buji 2'", ["L2"]),
    ("FeaturesOfInterest", "Observations/result eq true", ["F2"]),
]


@pytest.mark.parametrize("set_name,text,expected", CASES, ids=[c[1][:60] for c in CASES])
def test_filter_selects(sta, set_name, text, expected):
    _conn, ids = sta
    all_ids = {k: v for d in ids.values() for k, v in d.items()}
    text = text.format(**all_ids)
    assert select(sta, set_name, text) == expected


def test_every_function_group_is_exercised():
    """The cases above call every function the grammar knows (a function added later gets a case)."""
    from sensing.sta.filter import FUNCTIONS

    used = {f for f in FUNCTIONS if any(f + "(" in c[1] for c in CASES)}
    assert set(FUNCTIONS) - used == set()


def test_orderby_on_rows(sta):
    conn, ids = sta
    e = ENTITIES["Observations"]
    by_id = {v: k for k, v in ids["Observations"].items()}
    terms = compile_orderby("Datastream/name desc, phenomenonTime desc", e, "e")
    order = ", ".join(f"{sql} {d}" for sql, _, d in terms)
    params = [p for _, ps, _ in terms for p in ps]
    rows = conn.execute(f"SELECT e.id FROM {e.table} e WHERE e.id = ANY(%s) ORDER BY {order}",
                        [list(by_id), *params]).fetchall()
    assert [by_id[r[0]] for r in rows] == ["o7", "o6", "o5", "o4", "o3", "o2", "o1", "o8"]
    terms = compile_orderby("concat(Datastream/name, 'x') asc, result sub 10 desc", e, "e")
    order = ", ".join(f"{sql} {d} NULLS LAST" for sql, _, d in terms)
    params = [p for _, ps, _ in terms for p in ps]
    rows = conn.execute(f"SELECT e.id FROM {e.table} e WHERE e.id = ANY(%s) ORDER BY {order}",
                        [list(by_id), *params]).fetchall()
    assert [by_id[r[0]] for r in rows][:4] == ["o8", "o4", "o3", "o2"]


def test_hostile_literals_change_nothing(sta):
    """Quotes, semicolons and SQL in literals and JSON member names stay data."""
    conn, ids = sta
    assert select(sta, "Things", "name eq 'x''; DROP TABLE sta_things; --'") == []
    with pytest.raises(FilterError):
        select(sta, "Things", "properties/x'y eq 'z'")
    assert select(sta, "Things", "substringof(''';--', name) or name eq 'hydrant 3'") == ["T3"]
    assert conn.execute("SELECT count(*) FROM sta_things WHERE id = ANY(%s)",
                        [list(ids["Things"].values())]).fetchone()[0] == 3


def test_generated_sql_can_be_explained_for_each_entity(sta):
    """Every property and navigation of every entity compiles to SQL PostgreSQL accepts."""
    conn, _ = sta
    for e in ENTITIES.values():
        for p in e.props:
            if p.kind == "geometry":
                text = f"geo.intersects({p.name}, geometry'POINT(1 2)')"
            elif p.kind == "text[]":
                text = f"{p.name}/0 eq 'x'"
            else:
                text = f"{p.name} ne null"
            cond, params = compile_filter(text, e, "e")
            conn.execute(f"EXPLAIN SELECT 1 FROM {e.table} e WHERE {cond}", params)
        for n in e.navs:
            cond, params = compile_filter(f"{n.name}/id eq 1", e, "e")
            conn.execute(f"EXPLAIN SELECT 1 FROM {e.table} e WHERE {cond}", params)
