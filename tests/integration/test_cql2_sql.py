"""CQL2 → SQL on the real PostGIS: counts equal to the same filters evaluated in Python on the
sample file, and injection attempts that change nothing."""

from __future__ import annotations

from datetime import datetime, timezone

import geopandas as gpd
import pytest
import shapely
from psycopg import sql

from spatial_api import store
from spatial_api.ingest import ingest_vector
from spatial_api.ogc.cql2 import FilterError, parse, to_sql
from tests.fixtures import files


@pytest.fixture
def parcels(tmp_path, conn, layer_name, database):
    path = files.gpkg(tmp_path)
    ingest_vector(path, layer=layer_name, key="code", valid_from="2024-01-01", settings=database)
    gdf = gpd.read_file(path).to_crs(4490)
    gdf["updated"] = gdf["updated"].map(lambda v: v.to_pydatetime().replace(tzinfo=timezone.utc))
    return store.get_layer(conn, layer_name), gdf


def count(conn, layer, text, lang="cql2-text", **kw) -> int:
    cond, params = to_sql(parse(text, lang), layer, **kw)
    q = sql.SQL("SELECT count(*) FROM {} f WHERE f.valid_to IS NULL AND {}").format(
        sql.Identifier(store.partition_name(layer.name)), cond)
    return conn.execute(q, params).fetchone()[0]


T = lambda s: datetime.fromisoformat(s).replace(tzinfo=timezone.utc)  # noqa: E731


def test_counts_match_python(parcels, conn):
    layer, g = parcels
    assert len(g) == 20
    c = g.geometry.representative_point()
    cx, cy = float(c.iloc[7].x), float(c.iloc[7].y)  # inside parcel 8
    box = shapely.box(float(g.total_bounds[0]) - 1e-4, float(g.total_bounds[1]) - 1e-4,
                      float(c.iloc[12].x), float(c.iloc[12].y))
    line = shapely.LineString([(float(c.iloc[0].x), float(c.iloc[0].y)), (float(c.iloc[2].x), float(c.iloc[2].y))])
    geom = g.geometry
    cases = {
        "floors > 10": (g.floors > 10),
        "floors <= 10 AND idle = true": (g.floors <= 10) & g.idle,
        "floors <> 5 OR name = '龙岗街道'": (g.floors != 5) | (g.name == "龙岗街道"),
        "NOT (idle)": ~g.idle,
        "code LIKE 'LG-001%'": g.code.str.startswith("LG-001"),
        "CASEI(code) LIKE 'lg-000_'": g.code.str.lower().str.match(r"^lg-000.$"),
        "dlbm IN ('0701', '0501')": g.dlbm.isin(["0701", "0501"]),
        "floors NOT BETWEEN 5 AND 20": ~g.floors.between(5, 20),
        "name IS NULL": g.name.isna(),
        "id IN ('LG-0001', 'LG-0020', 'nope')": g.code.isin(["LG-0001", "LG-0020"]),
        "area_m2 * floors / 2 > 40000": (g.area_m2 * g.floors / 2 > 40000),
        "floors % 3 = 0": (g.floors % 3 == 0),
        f"S_INTERSECTS(geometry, POINT({cx!r} {cy!r}))": geom.intersects(shapely.Point(cx, cy)),
        f"S_WITHIN(geometry, {box.wkt})": geom.within(box),
        "S_WITHIN(geometry, BBOX({}, {}, {}, {}))".format(*box.bounds): geom.within(box),
        f"S_DISJOINT(geometry, {box.wkt})": geom.disjoint(box),
        f"S_CROSSES({line.wkt}, geometry)": geom.apply(lambda p: line.crosses(p)),
        f"S_CONTAINS(geometry, POINT({cx!r} {cy!r}))": geom.contains(shapely.Point(cx, cy)),
        "T_BEFORE(updated, TIMESTAMP('2024-05-05T09:30:00Z'))": g.updated < T("2024-05-05T09:30:00"),
        "T_AFTER(updated, DATE('2024-05-10'))": g.updated > T("2024-05-10T00:00:00"),
        "T_DURING(updated, INTERVAL('2024-05-03T00:00:00Z', '2024-05-08T00:00:00Z'))":
            (g.updated > T("2024-05-03T00:00:00")) & (g.updated < T("2024-05-08T00:00:00")),
        "T_INTERSECTS(updated, INTERVAL('2024-05-15T00:00:00Z', '..'))": g.updated >= T("2024-05-15T00:00:00"),
        "T_EQUALS(updated, TIMESTAMP('2024-05-02T09:30:00Z'))": g.updated == T("2024-05-02T09:30:00"),
    }
    for text, expected in cases.items():
        n = int(expected.sum())
        got = count(conn, layer, text)
        assert got == n, text
    # every family is non-trivial on this sample (guards against a filter that matches all / none
    # agreeing with a wrong expectation by accident)
    assert 0 < int(cases["floors > 10"].sum()) < 20 and 0 < int(cases[f"S_WITHIN(geometry, {box.wkt})"].sum()) < 20


def test_json_and_filter_crs(parcels, conn):
    layer, g = parcels
    p = g.geometry.iloc[3].representative_point()
    js = {"op": "and", "args": [
        {"op": "s_intersects", "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [p.x, p.y]}]},
        {"op": ">=", "args": [{"property": "floors"}, 0]}]}
    assert count(conn, layer, js, "cql2-json") == 1
    # EPSG:4490 literals are lat, lon; EPSG:4547 northing, easting
    assert count(conn, layer, f"S_INTERSECTS(geometry, POINT({p.y!r} {p.x!r}))",
                 filter_crs="http://www.opengis.net/def/crs/EPSG/0/4490") == 1
    assert count(conn, layer, f"S_INTERSECTS(geometry, POINT({p.x!r} {p.y!r}))",
                 filter_crs="http://www.opengis.net/def/crs/EPSG/0/4490") == 0
    from pyproj import Transformer

    e, n = Transformer.from_crs(4490, 4547, always_xy=True).transform(p.x, p.y)
    assert count(conn, layer, f"S_INTERSECTS(geometry, POINT({n!r} {e!r}))",
                 filter_crs="http://www.opengis.net/def/crs/EPSG/0/4547") == 1
    assert count(conn, layer, "S_INTERSECTS(geometry, BBOX(525400, 2513400, 525900, 2513800))",
                 filter_crs="EPSG:3857") == 0


INJECTIONS = [
    "name = 'x''; DROP TABLE layers; --'",
    "\"name; DROP TABLE layers\" = 1",
    "name = 'x'); DROP TABLE layers; --",
    "\"name') IS NULL OR 1=1; DROP TABLE layers; --\" = 'x'",
    "floors = 1; DROP TABLE layers",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_changes_nothing(parcels, conn, text):
    layer, _ = parcels
    before = conn.execute("SELECT count(*) FROM layers").fetchone()[0]
    try:
        n = count(conn, layer, text)
    except FilterError:
        pass
    else:
        assert n == 0  # the whole text was compared as a value
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM layers").fetchone()[0] == before
    assert store.get_layer(conn, layer.name) is not None
    assert store.count(conn, layer.name) == 20
