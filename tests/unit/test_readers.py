"""read_vector on every supported format and every error a user can cause (no database)."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

import spatial_api.ingest.readers as readers
from spatial_api.ingest.encoding import classify_text_bytes, detect_dbf_encoding, normalise_codepage
from spatial_api.ingest.readers import read_vector
from spatial_api.ingest.types import GEOMETRY_FAMILIES, PROPERTY_TYPES, IngestError, PreparedBatch
from tests.fixtures import files as F

TO_4547 = Transformer.from_crs(4490, 4547, always_xy=True)
# Longgang district, generously
LONGGANG = shapely.box(113.9, 22.4, 114.7, 23.0)


def in_4547(lonlat: np.ndarray) -> np.ndarray:
    x, y = TO_4547.transform(lonlat[:, 0], lonlat[:, 1])
    return np.column_stack([x, y])


def assert_batch_ok(b: PreparedBatch, n: int, family: str) -> None:
    assert isinstance(b, PreparedBatch)
    assert len(b) == n == len(b.properties) == len(b.rows)
    assert b.geometry_family == family and family in GEOMETRY_FAMILIES
    assert list(b.properties.columns) == list(b.schema)
    assert set(b.schema.values()) <= set(PROPERTY_TYPES)
    assert not shapely.has_z(b.geometry).any()
    assert shapely.is_valid(b.geometry).all()
    assert shapely.within(b.geometry, LONGGANG).all(), "geometry not in CGCS2000 lon/lat around Longgang"
    assert (np.diff(b.rows) > 0).all() and b.rows[0] >= 1


# ------------------------------------------------------------------------------------------
# every format


def test_geojson(tmp_path):
    b = read_vector(F.geojson(tmp_path))
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4326"
    assert b.schema == {
        "code": "string", "name": "string", "dlbm": "string", "area_m2": "number",
        "floors": "integer", "approved": "date", "idle": "boolean",
    }
    assert b.properties["name"].iloc[0] == "龙岗街道"
    assert b.properties["approved"].iloc[0] == pd.Timestamp("2023-01-01")
    assert b.properties["floors"].dtype == np.int64
    assert list(b.rows) == list(range(1, 21))


def test_gpkg_in_4547_is_reprojected(tmp_path):
    b = read_vector(F.gpkg(tmp_path))
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4547"
    assert b.source_layer == "parcels"
    assert b.schema["updated"] == "datetime" and b.schema["idle"] == "boolean"
    # the first parcel's corners back in metres: the 80 m x 60 m box at (525500, 2513500)
    back = in_4547(shapely.get_coordinates(b.geometry[0]))
    want = shapely.get_coordinates(shapely.box(525500, 2513500, 525580, 2513560))
    assert np.abs(back - want).max() < 0.001
    # area preserved: 80 m x 60 m
    area = shapely.area(shapely.transform(b.geometry[:1], lambda c: in_4547(c)))[0]
    assert area == pytest.approx(4800, rel=1e-6)


def test_shapefile_with_prj_and_cpg(tmp_path):
    b = read_vector(F.shapefile(tmp_path))
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4547"
    assert b.encoding == "UTF-8"
    assert b.properties["name"].tolist()[:2] == ["龙岗街道", "坂田街道"]


def test_zipped_shapefile(tmp_path):
    b = read_vector(F.zipped_shapefile(tmp_path))
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4547"
    assert b.properties["code"].iloc[-1] == "LG-0020"


def test_zip_with_two_shapefiles_needs_source_layer(tmp_path):
    a = F.shapefile(tmp_path / "a")
    p, _ = F.epsg4547_points(tmp_path / "b")
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for shp in (a, p):
            for f in shp.parent.glob(shp.stem + ".*"):
                zf.write(f, f.name)
    with pytest.raises(IngestError) as e:
        read_vector(z)
    assert "parcels" in str(e.value) and "points_4547" in str(e.value) and "--source-layer" in str(e.value)
    b = read_vector(z, source_layer="points_4547")
    assert_batch_ok(b, 8, "Point")
    assert b.source_layer == "points_4547"


def test_csv_with_wkt_and_no_crs_is_taken_as_cgcs2000(tmp_path):
    b = read_vector(F.csv_wkt(tmp_path))
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4490"
    assert "WKT" not in b.schema
    assert b.schema == {
        "code": "string", "name": "string", "dlbm": "string", "area_m2": "number",
        "floors": "integer", "approved": "date",
    }


def test_csv_with_lonlat_columns(tmp_path):
    b = read_vector(F.csv_lonlat(tmp_path))
    assert_batch_ok(b, 7, "Point")
    assert b.schema == {"编号": "string", "名称": "string", "人数": "integer"}  # 经度/纬度 dropped
    assert b.properties["编号"].iloc[0] == "001"  # leading zeros kept: a code, not a number
    assert [r.row for r in b.rejected] == [5]
    assert b.rejected[0].reason == "empty geometry"
    assert b.rejected[0].properties["名称"] == F.POINT_NAMES[4]
    assert list(b.rows) == [1, 2, 3, 4, 6, 7, 8]
    got = shapely.get_coordinates(b.geometry)
    want = np.delete(F.POINTS_LONLAT, 4, axis=0)
    assert np.abs(got - want).max() < 1e-6


def test_filegdb(tmp_path):
    path = F.filegdb(tmp_path)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "parcels" in str(e.value) and "roads" in str(e.value) and "--source-layer" in str(e.value)
    b = read_vector(path, source_layer="parcels")
    assert_batch_ok(b, 20, "Polygon")
    assert b.source_crs == "EPSG:4547" and b.source_layer == "parcels"
    assert b.schema["floors"] == "integer"
    roads = read_vector(path, source_layer="roads")
    assert_batch_ok(roads, 5, "LineString")


def test_kml(tmp_path):
    b = read_vector(F.kml(tmp_path))
    assert_batch_ok(b, 8, "Point")
    assert b.properties["Name"].tolist() == F.POINT_NAMES
    assert {"code", "street"} <= set(b.schema)
    assert not {"tessellate", "extrude", "visibility", "altitudeMode"} & set(b.schema)  # LIBKML noise dropped
    assert np.abs(shapely.get_coordinates(b.geometry) - F.POINTS_LONLAT).max() < 1e-6


def test_arrow_and_plain_reading_agree(tmp_path, monkeypatch):
    path = F.gpkg(tmp_path)
    fast = read_vector(path)
    monkeypatch.setattr(readers, "HAVE_ARROW", False)
    slow = read_vector(path)
    assert fast.schema == slow.schema
    assert shapely.equals_exact(fast.geometry, slow.geometry, tolerance=0).all()
    for col in ("code", "name", "floors", "area_m2", "idle"):
        assert fast.properties[col].tolist() == slow.properties[col].tolist()


# ------------------------------------------------------------------------------------------
# encodings


def test_gbk_shapefile_without_cpg_is_detected(tmp_path):
    path = F.gbk_shapefile_without_cpg(tmp_path)
    assert detect_dbf_encoding(path.with_suffix(".dbf").read_bytes()) == "GB18030"
    b = read_vector(path)
    assert_batch_ok(b, 8, "Point")
    assert b.encoding == "GB18030"
    assert list(b.schema) == ["名称", "街道", "编号"]
    assert b.properties["名称"].tolist() == F.POINT_NAMES
    assert b.properties["街道"].iloc[0] == "龙岗街道"


def test_encoding_argument_overrides_detection(tmp_path):
    path = F.gbk_shapefile_without_cpg(tmp_path)
    b = read_vector(path, encoding="latin-1")
    assert b.encoding == "ISO-8859-1"
    assert b.properties.iloc[0, 0] != F.POINT_NAMES[0]  # mojibake, as asked
    with pytest.raises(IngestError, match="--encoding"):
        read_vector(path, encoding="no-such-codec")


def test_gbk_csv(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("名称,经度,纬度\n龙岗街道,114.2514,22.7215\n坂田街道,114.0632,22.6287\n".encode("gbk"))
    b = read_vector(path)
    assert b.encoding == "GB18030"
    assert b.properties["名称"].tolist() == ["龙岗街道", "坂田街道"]


def test_encoding_helpers():
    assert normalise_codepage("936") == "GB18030"
    assert normalise_codepage("GBK\r\n") == "GB18030"
    assert normalise_codepage("UTF-8") == "UTF-8"
    assert normalise_codepage("1252") == "CP1252"
    assert normalise_codepage("nonsense") is None
    assert classify_text_bytes("龙岗街道".encode("utf-8")) == "UTF-8"
    assert classify_text_bytes("龙岗街道".encode("gbk")) == "GB18030"
    assert classify_text_bytes(b"plain ascii") == "UTF-8"


# ------------------------------------------------------------------------------------------
# coordinates


def test_epsg4547_points_land_within_half_a_metre(tmp_path):
    path, expected = F.epsg4547_points(tmp_path)
    b = read_vector(path)
    assert b.source_crs == "EPSG:4547"
    got = shapely.get_coordinates(b.geometry)
    err = np.hypot(*(in_4547(got) - in_4547(expected)).T)
    assert err.max() < 0.5


def test_gcj02_points_land_within_half_a_metre(tmp_path):
    path, expected = F.gcj02_points(tmp_path)
    b = read_vector(path, from_gcj02=True)
    assert b.source_crs == "GCJ-02"
    got = shapely.get_coordinates(b.geometry)
    err = np.hypot(*(in_4547(got) - in_4547(expected)).T)
    assert err.max() < 0.5
    # and without the flag they are ~600 m off
    raw = shapely.get_coordinates(read_vector(path).geometry)
    assert np.hypot(*(in_4547(raw) - in_4547(expected)).T).min() > 400


def test_gcj02_with_projected_crs_is_an_error(tmp_path):
    path, _ = F.epsg4547_points(tmp_path)
    with pytest.raises(IngestError, match="--from-gcj02"):
        read_vector(path, from_gcj02=True)


def test_crs_argument_forms(tmp_path):
    path = F.no_crs_shapefile(tmp_path)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "--crs" in str(e.value) and "EPSG:4547" in str(e.value) and path.name in str(e.value)
    proj = "+proj=tmerc +lat_0=0 +lon_0=114 +k=1 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    results = [read_vector(path, crs=c) for c in ("EPSG:4547", "4547", proj)]
    assert results[0].source_crs == results[1].source_crs == "EPSG:4547"
    for r in results[1:]:
        assert shapely.equals_exact(r.geometry, results[0].geometry, tolerance=1e-9).all()


def test_bad_crs_argument(tmp_path):
    with pytest.raises(IngestError) as e:
        read_vector(F.geojson(tmp_path), crs="EPSG:99999999")
    assert "--crs" in str(e.value) and "EPSG:4547" in str(e.value)
    with pytest.raises(IngestError, match="--crs"):
        read_vector(F.geojson(tmp_path), crs="not a crs")


def test_crs_argument_overrides_the_file(tmp_path):
    # a file that claims lon/lat but holds metres: the message says what to do
    path = tmp_path / "wrong.csv"
    x0, y0 = TO_4547.transform(114.2514, 22.7215)
    path.write_text(f"name,x,y\na,{x0:.3f},{y0:.3f}\n", encoding="utf-8")
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "--crs" in str(e.value)
    b = read_vector(path, crs="EPSG:4547")
    x, y = shapely.get_coordinates(b.geometry)[0]
    assert x == pytest.approx(114.2514, abs=2e-6) and y == pytest.approx(22.7215, abs=2e-6)


def test_lonlat_file_with_projected_numbers_is_an_error(tmp_path):
    path = tmp_path / "p.geojson"
    path.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"a":1},'
                    '"geometry":{"type":"Point","coordinates":[525823.9,2513719.0]}}]}', encoding="utf-8")
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "row 1" in str(e.value) and "--crs" in str(e.value)


def test_z_is_dropped(tmp_path):
    path = tmp_path / "z.geojson"
    path.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"a":1},'
                    '"geometry":{"type":"Point","coordinates":[114.25,22.72,35.5]}}]}', encoding="utf-8")
    b = read_vector(path)
    assert not shapely.has_z(b.geometry).any()
    assert shapely.get_coordinates(b.geometry).tolist() == [[114.25, 22.72]]


# ------------------------------------------------------------------------------------------
# validation


def test_bowtie_is_repaired(tmp_path):
    b = read_vector(F.invalid_polygon(tmp_path))
    assert_batch_ok(b, 3, "Polygon")
    assert b.repaired == [F.BOWTIE_ROW]
    fixed = b.geometry[F.BOWTIE_ROW - 1]
    assert fixed.geom_type == "MultiPolygon" and len(fixed.geoms) == 2
    assert b.geometry[0].geom_type == "Polygon"  # valid geometries are left as they are
    assert b.rejected == []


def test_empty_and_null_geometries_are_rejected(tmp_path):
    b = read_vector(F.empty_geometry(tmp_path))
    assert_batch_ok(b, 3, "Polygon")
    assert [r.row for r in b.rejected] == list(F.EMPTY_ROWS)
    assert {r.reason for r in b.rejected} == {"empty geometry"}
    assert list(b.rows) == [1, 3, 5]
    assert b.properties["code"].tolist() == ["E-1", "E-3", "E-5"]


def test_unrepairable_geometry_is_rejected(tmp_path):
    path = tmp_path / "collapsed.csv"
    path.write_text(
        "code,wkt\n"
        "A,\"POLYGON ((114.25 22.72, 114.251 22.72, 114.251 22.721, 114.25 22.72))\"\n"
        "B,\"POLYGON ((114.25 22.72, 114.251 22.72, 114.25 22.72))\"\n",  # a flat ring: collapses to a line
        encoding="utf-8",
    )
    b = read_vector(path)
    assert len(b) == 1 and b.properties["code"].tolist() == ["A"]
    assert [r.row for r in b.rejected] == [2]
    assert "invalid geometry" in b.rejected[0].reason


def test_mixed_families_are_an_error(tmp_path):
    path = F.mixed_geometries(tmp_path)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "row 3" in str(e.value) and path.name in str(e.value)


def test_multi_parts_keep_their_type_and_family(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "code,wkt\n"
        "A,\"POLYGON ((114.25 22.72, 114.251 22.72, 114.251 22.721, 114.25 22.72))\"\n"
        "B,\"MULTIPOLYGON (((114.26 22.72, 114.261 22.72, 114.261 22.721, 114.26 22.72)))\"\n"
        "C,\"GEOMETRYCOLLECTION (POLYGON ((114.27 22.72, 114.271 22.72, 114.271 22.721, 114.27 22.72)))\"\n",
        encoding="utf-8",
    )
    b = read_vector(path)
    assert b.geometry_family == "Polygon"
    assert [g.geom_type for g in b.geometry] == ["Polygon", "MultiPolygon", "Polygon"]


# ------------------------------------------------------------------------------------------
# errors a user can cause


def test_missing_file(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        read_vector(tmp_path / "nope.gpkg")


@pytest.mark.parametrize("kind", ["gpkg", "geojson"])
def test_corrupt_file_names_the_file(tmp_path, kind):
    path = F.corrupt_file(tmp_path, kind)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    msg = str(e.value)
    assert path.name in msg and "Check" in msg


def test_bad_csv_row_names_file_and_row(tmp_path):
    path = F.bad_row_csv(tmp_path)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    msg = str(e.value)
    assert path.name in msg and f"row {F.BAD_CSV_ROW}" in msg and "WKT" in msg


def test_non_numeric_lonlat_names_the_row(tmp_path):
    path = tmp_path / "poi.csv"
    path.write_text("name,lng,lat\na,114.25,22.72\nb,114.26,22.73\nc,abc,22.74\n", encoding="utf-8")
    with pytest.raises(IngestError) as e:
        read_vector(path)
    assert "poi.csv" in str(e.value) and "row 3" in str(e.value) and "'abc'" in str(e.value)


def test_csv_without_geometry_columns(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("name,value\na,1\n", encoding="utf-8")
    with pytest.raises(IngestError, match="no geometry column"):
        read_vector(path)


def test_multilayer_gpkg_needs_source_layer(tmp_path):
    path = F.multilayer_gpkg(tmp_path)
    with pytest.raises(IngestError) as e:
        read_vector(path)
    msg = str(e.value)
    assert all(name in msg for name in F.GPKG_LAYERS) and "--source-layer" in msg
    b = read_vector(path, source_layer="poi")
    assert_batch_ok(b, 8, "Point")
    assert b.source_layer == "poi"
    with pytest.raises(IngestError, match="no layer 'buildings'"):
        read_vector(path, source_layer="buildings")


# ------------------------------------------------------------------------------------------
# CSV typing and the versions fixture


def test_csv_type_inference(tmp_path):
    path = tmp_path / "types.csv"
    path.write_text(
        "code,n,f,flag,day,ts,note,lon,lat\n"
        "001,1,1.5,true,2024-01-02,2024-01-02T08:00:00,x,114.25,22.72\n"
        "002,,2,FALSE,2024-02-03,2024-02-03 09:30:00,,114.26,22.73\n",
        encoding="utf-8",
    )
    b = read_vector(path)
    assert b.schema == {"code": "string", "n": "integer", "f": "number", "flag": "boolean",
                        "day": "date", "ts": "datetime", "note": "string"}
    p = b.properties
    assert p["code"].tolist() == ["001", "002"]
    assert p["n"].tolist() == [1, None]
    assert p["flag"].tolist() == [True, False]
    assert p["day"].iloc[1] == pd.Timestamp("2024-02-03")
    assert pd.isna(p["note"].iloc[1])


def test_keyed_versions_fixture(tmp_path):
    v = F.keyed_versions(tmp_path)
    one, two = read_vector(v.v1), read_vector(v.v2)
    k1 = dict(zip(one.properties[v.key], range(len(one))))
    k2 = dict(zip(two.properties[v.key], range(len(two))))
    added = set(k2) - set(k1)
    closed = set(k1) - set(k2)
    changed = {
        k for k in set(k1) & set(k2)
        if not one.geometry[k1[k]].equals_exact(two.geometry[k2[k]], 0)
        or one.properties.iloc[k1[k]].tolist() != two.properties.iloc[k2[k]].tolist()
    }
    assert (len(added), len(changed), len(closed)) == (v.added, v.changed, v.closed)
    assert sorted(added) == list(v.added_keys) and sorted(changed) == list(v.changed_keys)
    assert sorted(closed) == list(v.closed_keys)
    assert len(set(k1) & set(k2)) - len(changed) == v.unchanged


def test_big_layer_is_vectorised(tmp_path):
    """20,000 polygons in EPSG:4547 read, reprojected and validated well under a second or two."""
    import time

    import geopandas as gpd
    import pyogrio

    rng = np.random.default_rng(3)
    pts = shapely.multipoints(np.column_stack([rng.uniform(520000, 530000, 20000), rng.uniform(2510000, 2518000, 20000)]))
    cells = shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=shapely.box(520000, 2510000, 530000, 2518000)))
    cells = shapely.intersection(cells, shapely.box(520000, 2510000, 530000, 2518000))
    path = tmp_path / "big.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"code": np.arange(len(cells))}, geometry=cells, crs="EPSG:4547"), path)
    t = time.perf_counter()
    b = read_vector(path)
    elapsed = time.perf_counter() - t
    assert len(b) == len(cells) and b.geometry_family == "Polygon"
    assert elapsed < 5, elapsed


# ------------------------------------------------------------------------------------------
# GeoJSON "id" members (RFC 7946 feature ids) vs a property named "id"


def _feature(fid, props, x=114.25, **extra):
    f = {"type": "Feature", "properties": props, "geometry": {"type": "Point", "coordinates": [x, 22.7]}, **extra}
    if fid is not None:
        f["id"] = fid
    return f


def _write_fc(path, features, **top):
    import json

    path.write_text(json.dumps({"type": "FeatureCollection", **top, "features": features}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def _members(b):
    ids = getattr(b, "id_member", None)
    return None if ids is None else [None if v is None else v for v in ids.tolist()]


@pytest.mark.parametrize("ids,ptype", [(["P001", "P002", "P003"], "string"), ([17, 18, 19], "integer"),
                                       (["P001", 17, "Q"], "string"), ([0, 1, 2], "integer")])
def test_geojson_id_member_is_not_a_property(tmp_path, ids, ptype):
    path = _write_fc(tmp_path / "ids.geojson", [_feature(i, {"name": f"n{k}"}, x=114.2 + k / 100)
                                                 for k, i in enumerate(ids)])
    b = read_vector(path)
    assert list(b.schema) == ["name"] and "id" not in b.properties.columns
    assert _members(b) == [str(i) if ptype == "string" else i for i in ids]
    assert b.id_member_type == ptype
    assert list(b.id_member.index) == [1, 2, 3]  # source rows


def test_geojson_without_id_members_has_none(tmp_path):
    b = read_vector(F.geojson(tmp_path))
    assert getattr(b, "id_member", None) is None
    path = _write_fc(tmp_path / "prop.geojson", [_feature(None, {"id": v, "n": 1}) for v in ("A", "B")])
    b = read_vector(path)
    assert getattr(b, "id_member", None) is None
    assert b.schema == {"id": "string", "n": "integer"} and b.properties["id"].tolist() == ["A", "B"]


def test_geojson_id_member_and_property_id_apart(tmp_path):
    """GDAL mixes them (the property wins for strings, an integer property becomes the FID):
    the reader keeps the member and the property each as they are in the file."""
    feats = [_feature("P001", {"id": 7, "n": 1}), _feature("P002", {"id": 8, "n": 2}),
             _feature("P003", {"n": 3})]
    b = read_vector(_write_fc(tmp_path / "both.geojson", feats))
    assert _members(b) == ["P001", "P002", "P003"]
    assert b.schema["id"] == "integer" and b.properties["id"].tolist() == [7, 8, None]
    feats = [_feature(1, {"id": "X"}), _feature(2, {"id": "Y"})]
    b = read_vector(_write_fc(tmp_path / "both_int.geojson", feats))
    assert _members(b) == [1, 2] and b.properties["id"].tolist() == ["X", "Y"]


def test_geojson_id_members_as_they_are_in_the_file(tmp_path):
    """Duplicates and missing ids are reported as they are (GDAL silently renumbers them)."""
    feats = [_feature(1, {"n": 1}), _feature(1, {"n": 2}), _feature(None, {"n": 3})]
    b = read_vector(_write_fc(tmp_path / "dup.geojson", feats))
    assert _members(b) == [1, 1, None]


def test_geojson_id_scan_is_not_fooled(tmp_path):
    """"id" keys in nested objects, in strings, escaped quotes and brackets in text, a crs and
    foreign members: only the features' own "id" member counts."""
    feats = [
        _feature("a\"}]{[", {"note": 'say "id": 5 } ] { [', "nested": {"id": 99}, "list": [{"id": 1}]},
                 meta={"id": "foreign"}),
        _feature("b\\", {"note": "\\\"id\\\": 3"}),
        _feature(None, {"note": "x"}),
    ]
    path = _write_fc(tmp_path / "tricky.geojson", feats, metadata={"id": "top"},
                     crs={"type": "name", "properties": {"id": 4, "name": "urn:ogc:def:crs:OGC:1.3:CRS84"}})
    b = read_vector(path)
    assert _members(b) == ['a"}]{[', "b\\", None]
    assert "id" not in b.schema


def test_geojsonseq_and_single_feature_id_members(tmp_path):
    import json

    seq = tmp_path / "parcels.geojsonl"
    seq.write_text("\n".join(json.dumps(_feature(i, {"n": k})) for k, i in enumerate(["P001", "P002"])) + "\n",
                   encoding="utf-8")
    b = read_vector(seq)
    assert _members(b) == ["P001", "P002"] and list(b.schema) == ["n"]
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps(_feature(42, {"n": 1})), encoding="utf-8")
    b = read_vector(one)
    assert _members(b) == [42] and list(b.schema) == ["n"]


def test_geojson_id_members_in_a_zip(tmp_path):
    path = _write_fc(tmp_path / "ids.geojson", [_feature("P001", {"n": 1}), _feature("P002", {"n": 2})])
    z = tmp_path / "ids.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(path, "ids.geojson")
    b = read_vector(z)
    assert _members(b) == ["P001", "P002"] and list(b.schema) == ["n"]


def test_geojson_rejected_rows_keep_their_id_member(tmp_path):
    feats = [_feature("P001", {"n": 1}), {"type": "Feature", "id": "P002", "properties": {"n": 2}, "geometry": None}]
    b = read_vector(_write_fc(tmp_path / "rej.geojson", feats))
    assert [r.row for r in b.rejected] == [2] and b.id_member.loc[2] == "P002"
    assert len(b) == 1 and b.id_member.loc[1] == "P001"
