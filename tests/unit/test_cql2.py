"""CQL2 text / JSON parsing and SQL generation without a database (spatial_api.ogc.cql2)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from psycopg import sql

from spatial_api.ogc import cql2
from spatial_api.ogc.cql2 import FilterError, parse, to_sql
from spatial_api.store.registry import Layer

LAYER = Layer(
    name="parcels",
    geometry_family="polygon",
    properties=[{"name": n, "type": t} for n, t in [
        ("code", "string"), ("name", "string"), ("dlbm", "string"), ("area_m2", "number"),
        ("floors", "integer"), ("updated", "datetime"), ("approved", "date"), ("idle", "boolean"),
        ("it's", "string"),
    ]],
)


def render(cond: sql.Composable) -> str:
    return cond.as_string(None)


def compile_(text, lang="cql2-text", **kw):
    cond, params = to_sql(parse(text, lang), LAYER, **kw)
    s = render(cond)
    assert s.count("%s") == len(params)
    return s, params


# --------------------------------------------------------------------------------------------
# each construct, text and JSON give the same AST

P = lambda n: {"property": n}  # noqa: E731

PAIRS = [
    ("name = 'x'", {"op": "=", "args": [P("name"), "x"]}),
    ("floors <> 3", {"op": "<>", "args": [P("floors"), 3]}),
    ("floors < 3", {"op": "<", "args": [P("floors"), 3]}),
    ("floors <= 3", {"op": "<=", "args": [P("floors"), 3]}),
    ("area_m2 > 1.5", {"op": ">", "args": [P("area_m2"), 1.5]}),
    ("area_m2 >= -2", {"op": ">=", "args": [P("area_m2"), -2]}),
    ("floors > 3 AND idle = TRUE", {"op": "and", "args": [{"op": ">", "args": [P("floors"), 3]},
                                                          {"op": "=", "args": [P("idle"), True]}]}),
    ("floors > 3 OR name = 'a'", {"op": "or", "args": [{"op": ">", "args": [P("floors"), 3]},
                                                       {"op": "=", "args": [P("name"), "a"]}]}),
    ("NOT floors > 3", {"op": "not", "args": [{"op": ">", "args": [P("floors"), 3]}]}),
    ("name LIKE 'LG%'", {"op": "like", "args": [P("name"), "LG%"]}),
    ("CASEI(name) LIKE CASEI('lg%')", {"op": "like", "args": [{"op": "casei", "args": [P("name")]},
                                                              {"op": "casei", "args": ["lg%"]}]}),
    ("floors IN (1, 2, 3)", {"op": "in", "args": [P("floors"), [1, 2, 3]]}),
    ("floors BETWEEN 1 AND 5", {"op": "between", "args": [P("floors"), 1, 5]}),
    ("name IS NULL", {"op": "isNull", "args": [P("name")]}),
    ("S_INTERSECTS(geometry, POINT(114.25 22.72))",
     {"op": "s_intersects", "args": [P("geometry"), {"type": "Point", "coordinates": [114.25, 22.72]}]}),
    ("S_WITHIN(geometry, BBOX(114, 22, 115, 23))",
     {"op": "s_within", "args": [P("geometry"), {"bbox": [114, 22, 115, 23]}]}),
    ("S_CONTAINS(geometry, POLYGON((114 22, 115 22, 115 23, 114 22)))",
     {"op": "s_contains", "args": [P("geometry"), {"type": "Polygon", "coordinates": [[[114, 22], [115, 22], [115, 23], [114, 22]]]}]}),
    ("T_BEFORE(updated, TIMESTAMP('2024-05-03T00:00:00Z'))",
     {"op": "t_before", "args": [P("updated"), {"timestamp": "2024-05-03T00:00:00Z"}]}),
    ("T_AFTER(approved, DATE('2023-05-03'))", {"op": "t_after", "args": [P("approved"), {"date": "2023-05-03"}]}),
    ("T_DURING(updated, INTERVAL('2024-05-01T00:00:00Z', '..'))",
     {"op": "t_during", "args": [P("updated"), {"interval": ["2024-05-01T00:00:00Z", ".."]}]}),
    ("floors + 1 > 3", {"op": ">", "args": [{"op": "+", "args": [P("floors"), 1]}, 3]}),
    ("floors * 2 = area_m2 / 2", {"op": "=", "args": [{"op": "*", "args": [P("floors"), 2]},
                                                      {"op": "/", "args": [P("area_m2"), 2]}]}),
]


@pytest.mark.parametrize("text,js", PAIRS, ids=[p[0] for p in PAIRS])
def test_text_and_json_parse_alike(text, js):
    a = parse(text)
    assert a == parse(js, "cql2-json")
    assert a == parse(__import__("json").dumps(js), "cql-json")  # draft alias, JSON as text
    assert a == parse(text, "cql-text")
    compile_(text)


def test_ast_shapes():
    assert parse("floors BETWEEN 1 AND 5 AND idle") == cql2.And((
        cql2.Between(cql2.Prop("floors"), cql2.Lit(1), cql2.Lit(5)), cql2.Prop("idle")))
    assert parse("name NOT LIKE 'a%'") == cql2.Like(cql2.Prop("name"), cql2.Lit("a%"), True)
    assert parse("floors NOT IN (1)") == cql2.In(cql2.Prop("floors"), (cql2.Lit(1),), True)
    assert parse("name IS NOT NULL") == cql2.IsNull(cql2.Prop("name"), True)
    assert parse("a = 1 or b = 2 and c = 3") == cql2.Or((
        cql2.Compare("=", cql2.Prop("a"), cql2.Lit(1)),
        cql2.And((cql2.Compare("=", cql2.Prop("b"), cql2.Lit(2)), cql2.Compare("=", cql2.Prop("c"), cql2.Lit(3))))))
    assert parse("name = 'it''s'").rhs == cql2.Lit("it's")
    assert parse('"it\'s" = \'x\'').lhs == cql2.Prop("it's")
    assert parse("T_AFTER(updated, TIMESTAMP('2024-05-03T08:00:00+08:00'))").rhs == cql2.Lit(
        datetime(2024, 5, 3, 0, 0, tzinfo=timezone.utc))
    assert parse("T_EQUALS(approved, DATE('2023-01-01'))").rhs == cql2.Lit(date(2023, 1, 1))
    assert parse("T_INTERSECTS(updated, INTERVAL('..', '2024-01-01'))").rhs == cql2.Interval(None, date(2024, 1, 1))
    assert parse("floors = -3").rhs == cql2.Lit(-3)
    assert parse("floors div 2 = 1").lhs.op == "div"


def test_sql_for_each_family():
    s, p = compile_("name = 'x' AND floors IN (1, 2) AND area_m2 BETWEEN 1 AND 2")
    assert "(\"f\".properties ->> 'name')::text" in s and "::bigint" in s and "double precision" in s
    assert p == ["x", 1, 2, 1, 2]
    s, p = compile_("idle AND approved IS NULL", alias="g")
    assert "\"g\".properties ->> 'idle')::boolean" in s and "::date) IS NULL" in s and p == []
    s, _ = compile_("id = 'LG-0001'")
    assert '"f".fid = %s' in s
    for op, fn in cql2.SPATIAL_OPS.items():
        s, p = compile_(f"{op.upper()}(geometry, POINT(114 22))")
        assert s == f'{fn}("f".geom, ST_GeomFromText(%s, 4490))' and p == ["POINT (114 22)"]
    for op in cql2.TEMPORAL_OPS:
        s, p = compile_(f"{op}(updated, INTERVAL('2024-05-01T00:00:00Z', '2024-05-05T00:00:00Z'))")
        assert "timestamptz" in s and len(p) >= 1
    s, p = compile_("CASEI(name) = CASEI('ABC')")
    assert s.count("lower(") == 2 and p == ["ABC"]


def test_filter_crs_transforms_and_flips():
    s, p = compile_("S_INTERSECTS(geom, POINT(2513700 525800))", filter_crs="http://www.opengis.net/def/crs/EPSG/0/4547")
    assert s == 'ST_Intersects("f".geom, ST_Transform(ST_SetSRID(ST_FlipCoordinates(ST_GeomFromText(%s)), 4547), 4490))'
    s, _ = compile_("S_INTERSECTS(geom, POINT(22.7 114.2))", filter_crs="EPSG:4490")
    assert s == 'ST_Intersects("f".geom, ST_SetSRID(ST_FlipCoordinates(ST_GeomFromText(%s)), 4490))'
    s, _ = compile_("S_INTERSECTS(geom, POINT(22.7 114.2))", filter_crs="http://www.opengis.net/def/crs/EPSG/0/4326")
    assert "ST_FlipCoordinates" in s and "ST_Transform" in s
    s, _ = compile_("S_INTERSECTS(geom, POINT(1 2))", filter_crs="EPSG:3857")
    assert "ST_FlipCoordinates" not in s and "3857" in s
    s, _ = compile_("S_INTERSECTS(geom, POINT(1 2))", filter_crs="http://www.opengis.net/def/crs/OGC/1.3/CRS84")
    assert s == 'ST_Intersects("f".geom, ST_GeomFromText(%s, 4490))'
    with pytest.raises(FilterError, match="filter-crs"):
        compile_("S_INTERSECTS(geom, POINT(1 2))", filter_crs="EPSG:4490); DROP TABLE layers; --")


def test_conformance_uris():
    base = "http://www.opengis.net/spec/cql2/1.0/conf/"
    assert all(u.startswith(base) for u in cql2.CONFORMANCE)
    names = {u[len(base):] for u in cql2.CONFORMANCE}
    assert {"cql2-text", "cql2-json", "basic-cql2", "advanced-comparison-operators",
            "basic-spatial-functions", "spatial-functions", "temporal-functions"} <= names
    assert "accent-insensitive-comparison" not in names and "array-functions" not in names


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("text,pos", [
    ("floors > 3 AND", 15),
    ("floors >", 9),
    ("name = 'unterminated", 8),
    ("floors > 3 floors", 12),
    ("(floors > 3", 12),
    ("floors IN 1, 2", 11),
    ("floors # 3", 8),
    ("S_INTERSECTS(geometry, POLYGON((0 0, 1 0, 1 1)))", 24),
])
def test_syntax_error_has_position(text, pos):
    with pytest.raises(FilterError) as e:
        parse(text)
    assert e.value.position == pos
    assert f"position {pos}" in str(e.value)


def test_json_errors_have_a_path():
    with pytest.raises(FilterError, match=r"position 12"):
        parse('{"op": "=",, "args": []}', "cql2-json")
    with pytest.raises(FilterError, match=r"\$\.args\[1\]"):
        parse({"op": "=", "args": [P("name"), {"what": 1}]}, "cql2-json")
    with pytest.raises(FilterError, match="takes 2 arguments"):
        parse({"op": "=", "args": [P("name")]}, "cql2-json")
    with pytest.raises(FilterError, match="unknown function"):
        parse({"op": "frobnicate", "args": [1]}, "cql2-json")


def test_other_errors():
    with pytest.raises(FilterError, match="filter-lang"):
        parse("a = 1", "ecql")
    with pytest.raises(FilterError, match="empty"):
        parse("   ")
    with pytest.raises(FilterError, match="condition"):
        parse("floors + 1")
    with pytest.raises(FilterError, match="integer.*string"):
        compile_("floors = 'abc'")
    with pytest.raises(FilterError, match="not a boolean"):
        compile_("floors")
    with pytest.raises(FilterError, match="ACCENTI"):
        compile_("ACCENTI(name) = 'x'")
    with pytest.raises(FilterError, match="TIMESTAMP"):
        parse("updated > TIMESTAMP('yesterday')")
    with pytest.raises(FilterError, match="geometr"):
        compile_("S_INTERSECTS(name, POINT(1 2))")


def test_unknown_property_names_it_and_lists_queryables():
    with pytest.raises(FilterError) as e:
        compile_("nmae = 'x'")
    msg = str(e.value)
    assert "'nmae'" in msg and "code, name, dlbm" in msg and "geometry" in msg and "id" in msg


# --------------------------------------------------------------------------------------------
# injection: user text ends up as a parameter or is refused, never as SQL text

INJECTIONS = [
    "name = 'x''; DROP TABLE layers; --'",
    "name = 'x\\'; DROP TABLE layers; --'",
    "name LIKE '%'' OR 1=1 --'",
    "floors IN (1, 2) OR name = ''');DELETE FROM layers;--'",
    "S_INTERSECTS(geometry, POINT(1 2)); DROP TABLE layers; --",
    "\"name; DROP TABLE x\" = 1",
    "\"name') OR 1=1 --\" = 1",
    "\"it's\" = 'x'",
    "name = 'x' --",
    "T_AFTER(updated, TIMESTAMP('2024-01-01T00:00:00Z''); DROP TABLE layers; --'))",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_is_a_parameter_or_refused(text):
    try:
        s, params = compile_(text)
    except FilterError:
        return
    for word in ("DROP", "DELETE", "--", "1=1", ";"):
        assert word not in s, s
    # the only quoted text in the SQL is a validated property name
    import re

    for lit in re.findall(r"->> '((?:[^']|'')*)'", s):
        assert lit.replace("''", "'") in LAYER.schema


def test_injection_in_json():
    with pytest.raises(FilterError, match="unknown property"):
        to_sql(parse({"op": "=", "args": [P("x'); DROP TABLE layers; --"), 1]}, "cql2-json"), LAYER)
    cond, params = to_sql(parse({"op": "=", "args": [P("name"), "'; DROP TABLE layers; --"]}, "cql2-json"), LAYER)
    assert params == ["'; DROP TABLE layers; --"] and "DROP" not in render(cond)
    with pytest.raises(FilterError):
        parse({"op": "s_intersects", "args": [P("geometry"), {"type": "Point", "coordinates": "1); DROP TABLE x; --"}]}, "cql2-json")


def test_quoted_property_names_render_escaped():
    s, params = compile_("\"it's\" = 'x'")
    assert "->> 'it''s'" in s and params == ["x"]
