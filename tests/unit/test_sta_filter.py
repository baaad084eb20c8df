"""STA ``$filter`` / ``$orderby`` → SQL without a database (sensing.sta.filter): the SQL shape of
every operator and function group, precedence, literals, and the error messages."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from sensing.sta.filter import (
    FUNCTIONS,
    FilterError,
    compile_expr,
    compile_filter,
    compile_orderby,
    compile_orderby_expr,
)
from sensing.sta.model import ENTITIES

THINGS, OBS, DS, LOC, FOI, MDS = (ENTITIES[n] for n in (
    "Things", "Observations", "Datastreams", "Locations", "FeaturesOfInterest", "MultiDatastreams"))
CST = timezone(timedelta(hours=8))


@pytest.fixture(autouse=True)
def district_time(monkeypatch):
    monkeypatch.setenv("GEOTWIN_TIMEZONE", "Asia/Shanghai")


def f(text, entity=THINGS, alias="t"):
    sql, params = compile_filter(text, entity, alias)
    assert sql.count("%s") == len(params), sql
    # safe to paste into psycopg.sql.SQL templates and f-strings: no braces, no stray percent signs
    assert "{" not in sql and "}" not in sql, sql
    assert "%" not in sql.replace("%s", ""), sql
    return sql, params


def err(text, entity=THINGS) -> FilterError:
    with pytest.raises(FilterError) as e:
        compile_filter(text, entity, "t")
    assert isinstance(e.value, ValueError)
    return e.value


# --------------------------------------------------------------------------------------------
# comparison, logical, arithmetic, precedence


@pytest.mark.parametrize("op,sym", [("eq", "="), ("ne", "<>"), ("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")])
def test_comparison_operators(op, sym):
    assert f(f"name {op} 'a'") == (f"(t.name) {sym} (%s::text)", ["a"])
    assert f(f"id {op.upper()} 7") == (f"(t.id) {sym} (%s::bigint)", [7])  # keywords in any case


def test_null_comparisons():
    assert f("description eq null") == ("(t.description) IS NULL", [])
    assert f("null ne description") == ("(t.description) IS NOT NULL", [])
    sql, params = f("properties/a eq null")
    assert sql == "coalesce(jsonb_typeof((t.properties #> %s::text[])), 'null') = 'null'" and params == [["a"]]
    sql, _ = f("result ne null", OBS)
    assert "coalesce(jsonb_typeof(coalesce(to_jsonb(t.result_number), t.result_json)), 'null') <> 'null'" == sql
    assert "eq or ne" in str(err("name gt null"))


def test_logical_operators_and_precedence():
    sql, params = f("id eq 1 or id eq 2 and not id eq 3")
    assert sql == ("((t.id) = (%s::bigint)) OR (((t.id) = (%s::bigint)) AND "
                   "(NOT ((t.id) = (%s::bigint))))")
    assert params == [1, 2, 3]
    sql, _ = f("(id eq 1 or id eq 2) and id eq 3")
    assert sql.startswith("(((t.id) = (%s::bigint)) OR ((t.id) = (%s::bigint))) AND")
    # relational binds tighter than equality: (id gt 1) eq true
    assert f("id gt 1 eq true")[0] == "((t.id) > (%s::bigint)) = (TRUE)"


def test_long_chains_do_not_recurse():
    text = " or ".join(f"id eq {i}" for i in range(500))
    sql, params = f(text)
    assert params == list(range(500)) and sql.count(" OR ") == 499


def test_arithmetic():
    assert f("id add 1 eq 2")[0] == "((t.id) + (%s::bigint)) = (%s::bigint)"
    assert f("id sub 1 mul 2 eq 0")[0] == "((t.id) - ((%s::bigint) * (%s::bigint))) = (%s::bigint)"
    assert f("(id sub 1) mul 2 eq 0")[0] == "(((t.id) - (%s::bigint)) * (%s::bigint)) = (%s::bigint)"
    assert f("id div 2 eq 1")[0] == "((t.id) / NULLIF(%s::bigint, 0)) = (%s::bigint)"
    assert f("id mod 2 eq 1")[0] == "(mod((t.id)::numeric, NULLIF((%s::bigint)::numeric, 0))) = (%s::bigint)"
    assert f("-id lt -2.5") == ("(-(t.id)) < (%s::numeric)", [Decimal("-2.5")])
    assert f("result mul 2 gt 3", OBS)[0] == "((t.result_number) * (%s::bigint)) > (%s::bigint)"
    assert "cannot add" in str(err("name add 1"))
    assert "null cannot take part" in str(err("id add null eq 1"))


# --------------------------------------------------------------------------------------------
# literals


def test_literals():
    assert f("name eq 'it''s'")[1] == ["it's"]
    assert f("id eq 12")[1] == [12]
    assert f("id eq 1.5e3")[1] == [Decimal("1.5e3")]
    assert f("properties/ok eq true")[1] == [["ok"], ["ok"]]
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert f("resultTime eq 2026-01-01T00:00:00Z", OBS)[1] == [t]
    assert f("resultTime eq 2026-01-01T08:00:00+08:00", OBS)[1] == [t]
    # '+' turned into a space by URL decoding still means +08:00
    assert f("resultTime eq 2026-01-01T08:00:00 08:00", OBS)[1] == [t]
    # no offset: district time
    assert f("resultTime eq 2026-01-01T08:00:00", OBS)[1][0].utcoffset() == timedelta(hours=8)
    assert f("resultTime eq 2026-01-01T08:00:00.5", OBS)[1][0].microsecond == 500000
    _sql, params = f("date(resultTime) eq 2026-01-02 and time(resultTime) gt 07:30", OBS)
    assert date(2026, 1, 2) in params and time(7, 30) in params
    assert f("resultTime gt now() sub duration'P1DT2H'", OBS)[1] == ["P1DT2H"]
    assert f("resultTime gt '2026-01-01T00:00:00Z'", OBS)[1] == [t]  # a quoted date-time is accepted


def test_literal_errors():
    assert "not an ISO 8601 duration" in str(err("resultTime gt now() sub duration'1 day'", OBS))
    assert "not a calendar date" in str(err("date(resultTime) eq 2026-02-30", OBS))
    assert "not a valid date-time" in str(err("resultTime eq 2026-13-01T00:00:00Z", OBS))
    assert "ends before it starts" in str(err(
        "phenomenonTime eq 2026-01-02T00:00:00Z/2026-01-01T00:00:00Z", OBS))
    e = err("geo.intersects(location, geography'POINT(114.1')", LOC)
    assert "not valid WKT" in str(e) and "position 26" in str(e) and e.position == 26
    assert "SRID 3857" in str(err("geo.intersects(location, geometry'SRID=3857;POINT(1 2)')", LOC))
    assert "longitude" in str(err("geo.intersects(location, geometry'POINT(22.7 114.1)')", LOC))
    assert "empty" in str(err("geo.intersects(location, geometry'POINT EMPTY')", LOC))


# --------------------------------------------------------------------------------------------
# properties, JSON members, results, navigation


def test_json_members_take_the_type_of_the_other_side():
    assert f("properties/owner/name eq 'Li'") == ("((t.properties #>> %s::text[])) = (%s::text)",
                                                  [["owner", "name"], "Li"])
    sql, params = f("properties/floors gt 3")
    assert "jsonb_typeof((t.properties #> %s::text[])) = 'number'" in sql and "double precision" in sql
    assert params == [["floors"], ["floors"], 3]
    sql, _ = f("properties/on eq true")
    assert "= 'boolean'" in sql and "::boolean" in sql
    assert f("properties/a eq properties/b")[0] == "(t.properties #> %s::text[]) = (t.properties #> %s::text[])"
    # members that are keywords, contain '-', or are not ASCII
    assert f("properties/not eq 'x'")[1][0] == ["not"]
    assert f("properties/floor-count eq 'x'")[1][0] == ["floor-count"]
    assert f("properties/社区 eq '坂田'")[1] == [["社区"], "坂田"]
    assert f("parameters/a/0 eq 1", OBS)[1][0] == ["a", "0"]


def test_result_typing():
    assert f("result gt 1", OBS)[0] == "(t.result_number) > (%s::bigint)"
    assert f("result eq 'on'", OBS)[0] == ("(coalesce(t.result_json #>> ARRAY[]::text[], t.result_number::text)) "
                                           "= (%s::text)")
    assert "jsonb_typeof(t.result_json) = 'boolean'" in f("result eq false", OBS)[0]
    assert f("result/0 eq 2", OBS)[1][0] == ["0"]
    assert "coalesce(to_jsonb(t.result_number), t.result_json) = (t.parameters #> %s::text[])" in \
        f("result eq parameters/limit", OBS)[0]


def test_multidatastream_list_property():
    assert f("multiObservationDataTypes/1 eq 'x'", MDS)[0] == "((t.multi_observation_data_types)[2]) = (%s::text)"
    assert "name one element" in str(err("multiObservationDataTypes eq 'x'", MDS))


def test_navigation_becomes_exists():
    sql, params = f("Datastream/Thing/properties/community eq '坂田'", OBS)
    assert sql == ("EXISTS (SELECT 1 FROM sta_datastreams t_f1, sta_things t_f2 WHERE t_f1.id = t.stream_id "
                   "AND t_f2.id = t_f1.thing_id AND (((t_f2.properties #>> %s::text[])) = (%s::text)))")
    assert params == [["community"], "坂田"]
    sql, _ = f("Locations/name eq 'a'")
    assert sql.startswith("EXISTS (SELECT 1 FROM sta_locations t_f1 WHERE t_f1.id IN (SELECT location_id "
                          "FROM sta_thing_locations WHERE thing_id = t.id) AND")
    # one join per path prefix inside a condition; each condition its own EXISTS
    sql, _ = f("substringof(Datastreams/name, Datastreams/description) and Datastreams/name eq 'x'")
    assert sql.count("EXISTS") == 2 and sql.count("sta_datastreams t_f1") == 2
    # an id through a foreign key held by this row: no join
    assert f("FeatureOfInterest/id eq 3", OBS)[0] == "(t.feature_of_interest_id) = (%s::bigint)"
    assert f("Thing/id eq 3", DS)[0] == "(t.thing_id) = (%s::bigint)"
    # Observations' Datastream and MultiDatastream share stream_id: the kind is checked by a join
    assert "EXISTS (SELECT 1 FROM sta_datastreams" in f("Datastream/id eq 3", OBS)[0]


def test_geometry_properties_use_the_geometry_column():
    assert "ST_Intersects(t.geom, ST_GeomFromText(%s::text, 4326))" in \
        f("geo.intersects(location, geometry'POINT(1 2)')", LOC)[0]
    assert "t.geom" in f("st_within(feature, geometry'POINT(1 2)')", FOI)[0]
    assert "t.observed_area" in f("st_within(observedArea, geometry'POINT(1 2)')", DS)[0]
    assert f("location eq geometry'POINT(1 2)'", LOC)[0] == "ST_Equals(t.geom, ST_GeomFromText(%s::text, 4326))"
    assert f("location ne geometry'POINT(1 2)'", LOC)[0].startswith("NOT ST_Equals(")
    assert "eq or ne" in str(err("location gt geometry'POINT(1 2)'", LOC))


# --------------------------------------------------------------------------------------------
# time intervals (FROST's rules), date functions


@pytest.mark.parametrize("op,expected", [
    ("eq", "(S) = (T) AND (E) = (T)"),
    ("ne", "(S) <> (T) AND (E) <> (T)"),
    ("gt", "(S) > (T) AND (S) >= (T)"),
    ("ge", "(S) >= (T) AND (E) >= (T)"),
    ("lt", "(S) < (T) AND (E) <= (T)"),
    ("le", "(S) <= (T) AND (E) <= (T)"),
])
def test_interval_against_instant(op, expected):
    sql, params = f(f"phenomenonTime {op} 2026-01-01T00:00:00Z", OBS)
    sql = sql.replace("coalesce(t.phenomenon_time_end, t.phenomenon_time_start)", "E")
    sql = sql.replace("t.phenomenon_time_start", "S").replace("%s::timestamptz", "T")
    assert sql == expected
    assert len(params) == 2


def test_interval_against_interval_and_reversed():
    sql, params = f("phenomenonTime lt 2026-01-01T00:00:00Z/2026-01-02T00:00:00Z", OBS)
    assert params == [datetime(2026, 1, 1, tzinfo=timezone.utc)] * 2
    sql, params = f("2026-01-01T00:00:00Z lt phenomenonTime", OBS)  # instant before the interval
    assert sql.startswith("(%s::timestamptz) < (t.phenomenon_time_start)")
    sql, _ = f("phenomenonTime gt 2026-01-01T00:00:00Z", DS)
    assert "sta_stream_stats" in sql
    assert f("resultTime eq 2026-01-01T00:00:00Z", OBS)[0] == "(t.result_time) = (%s::timestamptz)"


def test_date_functions():
    sql, params = f("year(resultTime) eq 2026", OBS)
    assert sql == "(floor(extract(year FROM ((t.result_time) AT TIME ZONE %s::text)))::int) = (%s::bigint)"
    assert params == ["UTC", 2026]
    for fn in ("month", "day", "hour", "minute", "second"):
        assert f"extract({fn} FROM" in f(f"{fn}(resultTime) eq 1", OBS)[0]
    assert "extract(second FROM" in f("fractionalseconds(resultTime) gt 0.5", OBS)[0]
    assert "::date" in f("date(phenomenonTime) eq 2026-01-01", OBS)[0]
    assert "::time" in f("time(phenomenonTime) lt 12:00:00", OBS)[0]
    assert "/ 60" in f("totaloffsetminutes(resultTime) eq 480", OBS)[0]
    assert "'-infinity'::timestamptz" in f("resultTime gt mindatetime()", OBS)[0]
    assert "'infinity'::timestamptz" in f("resultTime lt maxdatetime()", OBS)[0]
    assert "now()" in f("resultTime lt now()", OBS)[0]
    assert "extract(year FROM" in f("year(date(resultTime)) eq 2026", OBS)[0]
    assert "needs a date-time" in str(err("year(name) eq 1"))
    assert "date(resultTime)" in str(err("resultTime eq 2026-01-01", OBS))  # a hint how to compare dates


def test_durations():
    assert f("resultTime sub phenomenonTime gt duration'PT1H'", OBS)[0] == \
        "((t.result_time) - (t.phenomenon_time_start)) > (%s::interval)"
    sql, _params = f("phenomenonTime add duration'P1D' lt 2026-01-01T00:00:00Z", OBS)
    assert "(t.phenomenon_time_start) + (%s::interval)" in sql
    assert "(coalesce(t.phenomenon_time_end, t.phenomenon_time_start)) + (%s::interval)" in sql
    assert f("resultTime lt now() sub duration'PT30M' mul 2", OBS)[1] == ["PT30M", 2]


# --------------------------------------------------------------------------------------------
# string, math, geospatial functions


def test_string_functions():
    assert f("substringof('ab', name)")[0] == "strpos(t.name, %s::text) > 0"
    assert f("contains(name, 'ab')")[0] == "strpos(t.name, %s::text) > 0"
    assert f("startswith(name, 'ab')")[0] == "starts_with(t.name, %s::text)"
    assert f("endswith(name, 'ab')") == ("right(t.name, char_length(%s::text)) = %s::text", ["ab", "ab"])
    assert f("length(name) eq 2")[0] == "(char_length(t.name)) = (%s::bigint)"
    assert f("indexof(name, 'b') eq 1")[0] == "((strpos(t.name, %s::text) - 1)) = (%s::bigint)"
    assert f("substring(name, 1) eq 'b'")[0] == "(substr(t.name, ((%s::bigint)::bigint + 1)::int)) = (%s::text)"
    assert "greatest((%s::bigint)::int, 0)" in f("substring(name, 1, 2) eq 'b'")[0]
    assert f("tolower(name) eq 'a'")[0] == "(lower(t.name)) = (%s::text)"
    assert f("toupper(name) eq 'A'")[0] == "(upper(t.name)) = (%s::text)"
    assert f("trim(name) eq 'a'") == ("(btrim(t.name, %s::text)) = (%s::text)", [" \t\r\n", "a"])
    assert f("concat(name, 'x') eq 'ax'")[0] == "(((t.name) || (%s::text))) = (%s::text)"
    assert "cannot be used as a text" in str(err("length(id) eq 1"))


def test_math_functions():
    for fn in ("round", "floor", "ceiling"):
        assert f(f"{fn}(result) eq 1", OBS)[0] == f"({fn}((t.result_number)::numeric)) = (%s::bigint)"


def test_geospatial_functions():
    wkt = "geography'POINT(114.1 22.7)'"
    assert f(f"geo.distance(location, {wkt}) lt 100", LOC) == (
        "(ST_Distance((t.geom)::geography, (ST_GeomFromText(%s::text, 4326))::geography)) < (%s::bigint)",
        ["POINT (114.1 22.7)", 100])
    assert f("geo.distance(location, geometry'POINT(114.1 22.7)') lt 0.1", LOC)[0].startswith(
        "(ST_Distance(t.geom, ST_GeomFromText(")
    assert "ST_Length((ST_GeomFromText(%s::text, 4326))::geography)" in \
        f("geo.length(geography'LINESTRING(0 0, 1 1)') gt 1", LOC)[0]
    assert "ST_Intersects(" in f(f"geo.intersects(location, {wkt})", LOC)[0]
    for fn in ("equals", "disjoint", "touches", "within", "overlaps", "crosses", "intersects", "contains"):
        sql = f(f"st_{fn}(location, {wkt})", LOC)[0]
        assert sql.lower().startswith(f"st_{fn}(t.geom, st_geomfromtext(")
    assert f(f"st_relate(location, {wkt}, 't*t***t**')", LOC)[1][-1] == "T*T***T**"
    assert "DE-9IM" in str(err(f"st_relate(location, {wkt}, 'xx')", LOC))
    assert "must be a geometry" in str(err(f"geo.intersects(name, {wkt})", LOC))
    assert "SRID=4326" not in f("geo.intersects(location, geometry'SRID=4326;POINT(1 2)')", LOC)[1][0]


def test_every_function_has_a_test_here():
    import pathlib

    text = pathlib.Path(__file__).read_text()
    missing = [fn for fn in FUNCTIONS if not re.search(re.escape(fn) + r"\(|\"" + re.escape(fn.split("_")[-1]) + "\"", text)]
    assert missing == []


# --------------------------------------------------------------------------------------------
# $orderby and expressions


def test_orderby():
    terms = compile_orderby("phenomenonTime desc, Datastream/name, concat(Datastream/name, 'x') ASC, result", OBS, "o")
    assert terms[0] == ("o.phenomenon_time_start", [], "DESC")
    assert terms[1] == ("(SELECT o_f1.name FROM sta_datastreams o_f1 WHERE o_f1.id = o.stream_id LIMIT 1)", [], "ASC")
    assert terms[2][1] == ["x"] and terms[2][2] == "ASC"
    assert terms[3] == ("coalesce(to_jsonb(o.result_number), o.result_json)", [], "ASC")
    assert compile_orderby_expr("properties/floors", THINGS, "t") == ("(t.properties #> %s::text[])", [["floors"]])
    assert compile_expr("result add 1", OBS, "o") == ("(o.result_number) + (%s::bigint)", [1], "number")
    with pytest.raises(FilterError, match="to-many"):
        compile_orderby("Datastreams/name", THINGS, "t")
    with pytest.raises(FilterError, match="geometry"):
        compile_orderby("location", LOC, "t")
    with pytest.raises(FilterError, match="unexpected 'sideways' at position 6") as e:
        compile_orderby("name sideways", THINGS, "t")
    assert e.value.parameter == "$orderby"
    with pytest.raises(FilterError, match="not valid WKT") as e:
        compile_orderby("geo.distance(location, geometry'POINT(1')", LOC, "t")
    assert e.value.parameter == "$orderby"


# --------------------------------------------------------------------------------------------
# errors name the position and what is wrong


def test_syntax_errors():
    e = err("name eq 'x' andx name eq 'y'")
    assert str(e).startswith("unexpected 'andx' at position 13; expected") and e.position == 13
    assert e.parameter == "$filter"
    assert "asc" not in str(e)
    e = err("name == 'x'")
    assert e.position == 6 and "eq, ne, gt, ge, lt, le" in str(e)
    assert "single quotes" in str(err('name eq "x"'))
    assert "not closed" in str(err("name eq 'x"))
    assert "add, sub" in str(err("id + 1 eq 2"))
    e = err("name eq")
    assert "ends too early" in str(e) and "a value" in str(e) and e.position == 8
    assert "expected ')'" in str(err("(name eq 'x'"))
    assert "is empty" in str(err("   "))
    assert "at most" in str(err("name eq '" + "x" * 9000 + "'"))
    assert "nests more than" in str(err("(" * 200 + "id eq 1" + ")" * 200))
    assert "NUL" in str(err("name eq 'a\x00'"))


def test_semantic_errors():
    e = err("name eq 'a' and nmae eq 'b'")
    assert str(e).startswith("unknown property 'nmae' at position 17: Things has id, name,")
    assert e.position == 17 and "Datastreams" in str(e)
    e = err("Datastreams/nmae eq 1")
    assert "Datastreams (reached by Datastreams) has" in str(e) and e.position == 13
    assert "names the entity Thing, not a value" in str(err("Datastream/Thing eq 1", OBS))
    assert "is a function" in str(err("length eq 1"))
    e = err("name eq 5")
    assert "cannot compare name (text) with 5 (number) at position 6" in str(e)
    assert "not a condition" in str(err("name"))
    assert "unknown function 'lenght' at position 1" in str(err("lenght(name) eq 1"))
    assert "takes 2 arguments, got 1" in str(err("startswith(name)"))
    assert "takes 2 or 3 arguments" in str(err("substring(name) eq 'a'"))
    assert "is a text property, it has no member 'x'" in str(err("name/x eq 1"))


def test_alias_and_entity_are_checked():
    with pytest.raises(ValueError, match="alias"):
        compile_filter("id eq 1", THINGS, "t; DROP TABLE x")
    with pytest.raises(TypeError):
        compile_filter("id eq 1", "Things", "t")


def test_user_text_never_becomes_sql_text():
    hostile = "x'); DROP TABLE sta_things; --"
    sql, params = f("name eq '" + hostile.replace("'", "''") + "'")
    assert "DROP" not in sql and params == [hostile]
    sql, params = f("properties/DROP eq 1")
    assert "DROP" not in sql and params[0] == ["DROP"]
