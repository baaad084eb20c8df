"""``geotwin ingest pipes`` against the real PostGIS: two store layers in one transaction, a load of
one type keeps the others, a reload replaces its type with history, every bad input listed by id
and nothing written on a refused or failed load, GBK CSV with Chinese headers, the stored axis
elevations, the CLI, and GET /underground/under on a parcel."""

from __future__ import annotations

import json
import uuid

import pytest
from psycopg import sql

from spatial_api import store
from spatial_api.ingest import IngestError, ingest_vector
from tests.fixtures import pipes
from underground.ingest import PipeSurveyRefused, ingest_pipes


@pytest.fixture
def layers(database):
    tag = uuid.uuid4().hex[:8]
    return {"points_layer": f"t_pp_{tag}", "segments_layer": f"t_ps_{tag}"}


def _current(conn, layer) -> dict[str, dict]:
    rows = conn.execute(sql.SQL("SELECT fid, properties FROM {} WHERE valid_to IS NULL").format(
        sql.Identifier(store.partition_name(layer)))).fetchall()
    return {r[0]: r[1] for r in rows}


def _versions(conn, *layer_names) -> int:
    return conn.execute("SELECT count(*) FROM features WHERE layer = ANY(%s)", (list(layer_names),)).fetchone()[0] + \
        conn.execute("SELECT count(*) FROM changesets WHERE layer = ANY(%s)", (list(layer_names),)).fetchone()[0]


def test_first_load_creates_both_layers_with_the_axis_elevations(database, conn, layers, tmp_path):
    pp, sp = pipes.write_gpkg(tmp_path, *pipes.water_main())
    report = ingest_pipes(pp, sp, type="给水", valid_from="2024-01-01", settings=database, **layers)
    assert report.points == 4 and report.segments == 3 and not report.problems
    ids = report.changeset_ids
    assert set(ids) == set(layers.values()) and len(set(ids.values())) == 2
    pl, sl = store.get_layer(conn, layers["points_layer"]), store.get_layer(conn, layers["segments_layer"])
    assert (pl.access_level, pl.key_field, pl.title_zh, pl.title_en) == ("internal", "id", "管线点", "Pipe points")
    assert (sl.geometry_family, sl.title_zh) == ("LineString", "管线段")
    seg = _current(conn, layers["segments_layer"])
    assert sorted(seg) == ["JS-J1-J2", "JS-J2-J3", "JS-J3-J4"]
    first = seg["JS-J1-J2"]
    # pressure pipe, depth to the top: 50.0 − 1.2 − 0.30 / 2 = 48.65 at both ends
    assert (first["start_axis_z"], first["end_axis_z"], first["length_m"]) == (48.65, 48.65, 50.0)
    assert (first["type"], first["type_code"], first["depth_ref"], first["diameter_mm"], first["width_mm"],
            first["height_mm"]) == ("给水", "JS", "top", 300, 300, 300)
    assert (first["material"], first["owner"], first["built"], first["pressure"]) == (
        "球墨铸铁", "深圳市水务集团", "2015-06", "0.4MPa")
    pts = _current(conn, layers["points_layer"])
    assert pts["JS-J2"]["is_manhole"] is True and pts["JS-J2"]["bottom_z"] == 48.0  # 50 − 井深 2.0
    assert pts["JS-J1"]["is_manhole"] is False and pts["JS-J1"]["bottom_z"] is None
    # stored coordinates are the surveyed ones (EPSG:4547 → 4490 and back within a millimetre)
    x, y = conn.execute(sql.SQL(
        "SELECT ST_X(ST_Transform(geom, 4547)), ST_Y(ST_Transform(geom, 4547)) FROM {} WHERE fid = 'JS-J2' "
        "AND valid_to IS NULL").format(sql.Identifier(store.partition_name(layers["points_layer"])))).fetchone()
    assert abs(x - 525750) < 1e-3 and abs(y - pipes.Y0) < 1e-3


def test_second_type_kept_and_reload_replaces_its_type_only(database, conn, layers, tmp_path):
    pp, sp = pipes.write_gpkg(tmp_path / "w", *pipes.water_main())
    ingest_pipes(pp, sp, type="JS", valid_from="2024-01-01", settings=database, **layers)
    yp, ysp = pipes.write_gpkg(tmp_path / "y", *pipes.storm_line())
    ingest_pipes(yp, ysp, type="雨水", valid_from="2024-02-01", settings=database, **layers)
    seg = _current(conn, layers["segments_layer"])
    assert sorted(seg) == ["JS-J1-J2", "JS-J2-J3", "JS-J3-J4", "YS-Y1-Y2", "YS-Y2-Y3"]
    # gravity drain, depth to the invert: 50 − 2.0 + 0.6 / 2 = 48.3 → 50 − 2.2 + 0.3 = 48.1
    assert (seg["YS-Y1-Y2"]["start_axis_z"], seg["YS-Y1-Y2"]["end_axis_z"]) == (48.3, 48.1)
    assert seg["YS-Y1-Y2"]["depth_ref"] == "invert"
    # a reload of 给水 without J4: J3-J4 and J4 closed, the storm line untouched
    pts, segs = pipes.water_main()
    w2 = pipes.write_gpkg(tmp_path / "w2", pts[:3], segs[:2])
    storm_versions = conn.execute("SELECT count(*) FROM features WHERE layer = %s AND fid LIKE 'YS-%%'",
                                  (layers["segments_layer"],)).fetchone()[0]
    report = ingest_pipes(*w2, type="给水", valid_from="2024-06-01", settings=database, **layers)
    conn.rollback()
    change = report.changes[layers["segments_layer"]]
    assert (change["closed"], change["unchanged"], change["added"]) == (1, 2, 0)
    assert report.changes[layers["points_layer"]]["closed"] == 1
    seg = _current(conn, layers["segments_layer"])
    assert sorted(seg) == ["JS-J1-J2", "JS-J2-J3", "YS-Y1-Y2", "YS-Y2-Y3"]
    assert conn.execute("SELECT count(*) FROM features WHERE layer = %s AND fid LIKE 'YS-%%'",
                        (layers["segments_layer"],)).fetchone()[0] == storm_versions
    history = store.feature_history(conn, layers["segments_layer"], "JS-J3-J4")
    assert len(history) == 1 and history[0]["valid_to"] is not None  # closed, kept
    # the same survey again: nothing recorded
    again = ingest_pipes(*w2, type="给水", valid_from="2024-07-01", settings=database, **layers)
    assert again.skipped and not again.changeset_ids


def test_every_bad_input_listed_by_id_and_nothing_written(database, conn, layers, tmp_path):
    pp, sp = pipes.write_gpkg(tmp_path / "ok", *pipes.water_main())
    ingest_pipes(pp, sp, type="给水", valid_from="2024-01-01", settings=database, **layers)
    before = _versions(conn, *layers.values())
    conn.rollback()
    pts, segs = pipes.storm_line()
    pts.append(dict(pts[0]))                                                         # duplicate Y1
    pts.append({"point_id": "Y4", "x": 525775.0, "y": pipes.Y0 - 100, "ground_z": 50.0, "depth": -1.0})
    pts.append({"point_id": "Y5", "x": 525700.0, "y": pipes.Y0 - 100, "ground_z": 50.0, "depth": 25.0})
    pts[1]["depth"] = 1.7       # Y2 invert 48.3 > Y1 48.0: Y1-Y2 uphill, and its axis 48.6 hits the water main
    segs += [{"start_id": "Y3", "end_id": "Y9", "diameter": 600},                   # missing point
             {"start_id": "Y3", "end_id": "Y4", "diameter": 600},                   # negative depth
             {"start_id": "Y4", "end_id": "Y5", "diameter": 600, "start_depth": 2.5}]  # implausible at Y5
    bad = pipes.write_gpkg(tmp_path / "bad", pts, segs)
    with pytest.raises(PipeSurveyRefused) as caught:
        ingest_pipes(*bad, type="雨水", valid_from="2024-02-01", settings=database, **layers)
    found = {(p["code"], p["id"]) for p in caught.value.report.problems}
    assert {("duplicate_point", "Y1"), ("missing_point", "Y3-Y9"), ("negative_depth", "Y3-Y4"),
            ("negative_depth", "Y4"), ("implausible_depth", "Y4-Y5"), ("uphill", "Y1-Y2"),
            ("crossing", "Y1-Y2"), ("crossing", "Y2-Y3")} <= found
    message = str(caught.value)
    assert "[missing_point] segment Y3-Y9 (row 3): end point 'Y9' is not in the points file" in message
    assert "stored segment 给水 JS-J2-J3" in message and "Fix the errors" in message
    assert _versions(conn, *layers.values()) == before


def test_accepted_problems_load_and_are_recorded(database, conn, layers, tmp_path):
    pp, sp = pipes.write_gpkg(tmp_path / "w", *pipes.water_main())
    ingest_pipes(pp, sp, type="给水", valid_from="2024-01-01", settings=database, **layers)
    pts, segs = pipes.storm_line()
    pts[1]["depth"] = 1.7  # uphill Y1-Y2, and Y1-Y2 / Y2-Y3 touch the water main at Y2
    bad = pipes.write_gpkg(tmp_path / "y", pts, segs)
    with pytest.raises(PipeSurveyRefused, match="--accept crossing\\b"):
        ingest_pipes(*bad, type="雨水", valid_from="2024-02-01", settings=database, accept={"uphill"}, **layers)
    report = ingest_pipes(*bad, type="雨水", valid_from="2024-02-01", settings=database, accept="uphill,crossing",
                          **layers)
    assert report.counts == {"uphill": 1, "crossing": 2}
    cs = report.changeset_ids[layers["segments_layer"]]
    message = conn.execute("SELECT message FROM changesets WHERE id = %s", (cs,)).fetchone()[0]
    assert "[uphill] Y1-Y2" in message and "[crossing] Y2-Y3" in message
    with pytest.raises(IngestError, match="--accept missing"):
        ingest_pipes(*bad, type="雨水", accept="missing", settings=database, **layers)


def test_a_failure_after_the_first_layer_is_written_leaves_both_as_they_were(database, conn, layers, tmp_path):
    # The segments layer name is taken by a polygon layer: the points layer is written first, then
    # the segments layer refuses — the transaction rolls back the points' changeset too.
    import geopandas as gpd
    import shapely

    gpd.GeoDataFrame({"code": ["P1"]}, geometry=[shapely.box(114.25, 22.72, 114.251, 22.721)],
                     crs="EPSG:4490").to_file(tmp_path / "poly.geojson", driver="GeoJSON")
    ingest_vector(tmp_path / "poly.geojson", layer=layers["segments_layer"], key="code", valid_from="2024-01-01",
                  settings=database)
    pp, sp = pipes.write_gpkg(tmp_path, *pipes.water_main())
    with pytest.raises(IngestError, match="not a pipe layer"):
        ingest_pipes(pp, sp, type="给水", valid_from="2024-02-01", settings=database, **layers)
    # a first load of the points layer: no registration and no side-built partition left behind
    assert store.get_layer(conn, layers["points_layer"]) is None
    assert conn.execute("SELECT to_regclass(%s)", (store.partition_name(layers["points_layer"]),)).fetchone()[0] is None
    conn.rollback()
    # with the points layer already loaded: its versions and changesets unchanged by a failed load
    other = {"points_layer": layers["points_layer"], "segments_layer": layers["segments_layer"] + "_ok"}
    ingest_pipes(pp, sp, type="给水", valid_from="2024-02-01", settings=database, **other)
    pts, segs = pipes.water_main()
    pts[0]["ground_z"] = 51.0
    changed = pipes.write_gpkg(tmp_path / "c", pts, segs)
    before = _versions(conn, layers["points_layer"])
    conn.rollback()
    with pytest.raises(IngestError, match="not a pipe layer"):
        ingest_pipes(*changed, type="给水", valid_from="2024-03-01", settings=database, **layers)
    assert _versions(conn, layers["points_layer"]) == before
    assert _current(conn, layers["points_layer"])["JS-J1"]["ground_z"] == 50.0


def test_gbk_csv_with_chinese_headers(database, conn, layers, tmp_path):
    pp, sp = pipes.write_csv(tmp_path, *pipes.storm_line(), encoding="gbk")
    report = ingest_pipes(pp, sp, type="WS", valid_from="2024-01-01", settings=database, **layers)
    assert report.encodings == ["GB18030", "GB18030"] and "northings" in report.notes[0]
    pts = _current(conn, layers["points_layer"])
    assert pts["WS-Y1"]["appurtenance"] == "检查井" and pts["WS-Y1"]["type"] == "污水"
    assert _current(conn, layers["segments_layer"])["WS-Y2-Y3"]["material"] == "钢筋混凝土"


def test_cli_refusal_report_and_types(database, layers, tmp_path):
    import typer
    from typer.testing import CliRunner

    from underground.cli import app
    from underground.cli import ingest_pipes as ingest_cmd

    runner = CliRunner()
    pts, segs = pipes.storm_line()
    segs.append({"start_id": "Y3", "end_id": "Y9", "diameter": 600})
    bad = pipes.write_gpkg(tmp_path, pts, segs)
    ingest = typer.Typer()
    ingest.command("pipes")(ingest_cmd)
    ingest.command("noop")(lambda: None)
    out = tmp_path / "report.json"
    result = runner.invoke(ingest, ["pipes", str(bad[0]), str(bad[1]), "--type", "雨水", "--report", str(out)],
                           env={"GEOTWIN_DB_SCHEMA": database.db_schema})
    assert result.exit_code == 1, result.output
    assert "Y3-Y9" in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["refused"] and [p["id"] for p in doc["problems"]] == ["Y3-Y9"]
    types = runner.invoke(app, ["types", "--json"])
    assert types.exit_code == 0 and {t["code"] for t in json.loads(types.output)} >= {"JS", "YS", "RQ", "DL"}
    check = runner.invoke(app, ["check", str(bad[0]), str(bad[1]), "--type", "YS"],
                          env={"GEOTWIN_DB_SCHEMA": database.db_schema})
    assert check.exit_code == 1 and "missing_point" in check.output


def test_under_a_parcel(database, auth, tmp_path, request):
    """GET /underground/under on a parcel: an industrial line of two segments crossing it (20 m of
    each inside), the manhole between them and a basement — placed 3 km from the other tests'
    surveys, in the real pipe layers; the pipe layers are internal: anonymous callers see none."""
    import geopandas as gpd
    import numpy as np
    import shapely
    from fastapi.testclient import TestClient
    from pyproj import Transformer

    from spatial_api.app import create_app

    tag = uuid.uuid4().hex[:6]
    x0, y0 = 528700.0, 2516700.0
    pts = [{"point_id": f"G1{tag}", "x": x0, "y": y0, "ground_z": 40.0, "depth": 1.5},
           {"point_id": f"G2{tag}", "x": x0 + 40, "y": y0, "ground_z": 40.0, "depth": 1.5, "appurtenance": "检修井"},
           {"point_id": f"G3{tag}", "x": x0 + 100, "y": y0, "ground_z": 40.0, "depth": 1.5}]
    segs = [{"start_id": f"G1{tag}", "end_id": f"G2{tag}", "section": "400×300", "material": "钢"},
            {"start_id": f"G2{tag}", "end_id": f"G3{tag}", "diameter": 200, "material": "钢"}]
    ingest_pipes(*pipes.write_gpkg(tmp_path, pts, segs), type="工业", valid_from="2024-01-01", settings=database)
    to4490 = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
    parcel = shapely.transform(shapely.box(x0 + 20, y0 - 20, x0 + 60, y0 + 20), lambda c: np.column_stack(to4490.transform(c[:, 0], c[:, 1])))
    parcels = f"t_parcels_{tag}"
    gpd.GeoDataFrame({"parcel_id": [f"DK{tag}"]}, geometry=[parcel], crs="EPSG:4490").to_file(
        tmp_path / "parcels.geojson", driver="GeoJSON")
    ingest_vector(tmp_path / "parcels.geojson", layer=parcels, key="parcel_id", valid_from="2024-01-01",
                  settings=database)
    basement = shapely.transform(shapely.box(x0 + 30, y0 + 5, x0 + 50, y0 + 15), lambda c: np.column_stack(to4490.transform(c[:, 0], c[:, 1])))
    gpd.GeoDataFrame({"basement_id": [f"B{tag}"], "building_id": [f"JZ{tag}"], "name": ["厂房地下室"],
                      "use": ["设备用房"], "levels": [1], "depth_m": [5.0]}, geometry=[basement], crs="EPSG:4490").to_file(
        tmp_path / "basements.geojson", driver="GeoJSON")
    ingest_vector(tmp_path / "basements.geojson", layer="basements", key="basement_id", mode="upsert",
                  evolve_schema=True, valid_from="2024-01-01", settings=database)
    # the shared test schema may hold the demo's basements layer (internal): public for this test
    from spatial_api import db

    with db.connect(database) as conn:
        level = store.get_layer(conn, "basements").access_level
        store.update_layer(conn, "basements", access_level="public")
        conn.commit()

    def restore():
        with db.connect(database) as c:
            store.update_layer(c, "basements", access_level=level)
            c.commit()

    request.addfinalizer(restore)

    app = create_app(database)
    planner = TestClient(app, headers=auth("planner"))
    r = planner.get("/underground/under", params={"layer": parcels, "fid": f"DK{tag}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [p["id"] for p in doc["pipes"]] == [f"GY-G1{tag}-G2{tag}", f"GY-G2{tag}-G3{tag}"]
    first, second = doc["pipes"]
    assert first["size"] == "400×300" and second["size"] == "DN200" and first["material"] == "钢"
    assert first["inside_m"] == pytest.approx(20.0, abs=0.01) and second["inside_m"] == pytest.approx(20.0, abs=0.01)
    # top-measured: 40 − 1.5 − 0.3 / 2 = 38.35 (box) and 40 − 1.5 − 0.1 = 38.4 (DN200)
    assert first["axis_z"] == [38.35, 38.35] and second["axis_z"] == [38.4, 38.4] and first["depth_m"] == [1.5, 1.5]
    assert doc["totals"]["by_type"] == [{"type": "工业", "type_code": "GY", "colour": "#202020", "segments": 2,
                                         "inside_m": pytest.approx(40.0, abs=0.02)}]
    assert [m["id"] for m in doc["manholes"]] == [f"GY-G2{tag}"]
    assert [b["basement_id"] for b in doc["basements"]] == [f"B{tag}"]
    assert doc["basements"][0]["inside_m2"] == pytest.approx(200.0, rel=0.01)
    page = planner.get("/underground/under", params={"layer": parcels, "fid": f"DK{tag}", "f": "html"})
    assert page.status_code == 200 and "工业" in page.text and "厂房地下室" in page.text
    # before the survey's date nothing was there
    past = planner.get("/underground/under", params={"layer": parcels, "fid": f"DK{tag}", "datetime": "2023-06-01"})
    assert past.status_code == 404  # the parcel itself did not exist yet
    # anonymous: the internal pipe layers are hidden, the public basement is shown
    anon = TestClient(app).get("/underground/under", params={"layer": parcels, "fid": f"DK{tag}"}).json()
    assert anon["pipes"] == [] and anon["manholes"] == [] and set(anon["hidden"]) >= {"pipe_segments", "pipe_points"}
    assert len(anon["basements"]) == 1
    # bad requests name the parameter
    assert planner.get("/underground/under").status_code == 400
    assert "bbox" in planner.get("/underground/under", params={"bbox": "1,2,3"}).text
    assert planner.get("/underground/under", params={"layer": parcels, "fid": "nope"}).status_code == 404
    box = planner.get("/underground/under", params={"bbox": ",".join(map(str, parcel.bounds))}).json()
    assert len(box["pipes"]) == 2
    assert {t["code"] for t in planner.get("/underground/types").json()["types"]} >= {"GY", "JS"}
