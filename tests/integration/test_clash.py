"""The clash check on a real PostGIS (issue 17's acceptance test): a hand-made basement 20 m × 12 m,
8 m deep under ground at 30.0 m, that cuts two pipes and clears a third by 0.3 m — checked as a
planned footprint + depth, as a registered IFC4 model with the same geometry (an IfcSlab box
georeferenced by IfcMapConversion in EPSG:4547), and as the same IFC file placed on the command
line; through the Python API, the `geotwin cim clash` command, and POST /twin/clash (roles, HTML,
XLSX). The pipes are written into store layers with the contract's names and properties."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from datetime import datetime
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from cim_builder import clash
from cim_builder.geo import CimError
from spatial_api import store

ROOT = Path(__file__).resolve().parents[2]
X0, Y0 = 525500.0, 2513500.0  # the basement's south-west corner (EPSG:4547)
GROUND, DEPTH = 30.0, 8.0  # → the basement spans 22.0 .. 30.0 m
TO_4490 = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
CST = ZoneInfo("Asia/Shanghai")

SEG_SCHEMA = [("id", "string"), ("segment_id", "string"), ("type", "string"), ("type_code", "string"),
              ("start_id", "string"), ("end_id", "string"), ("diameter_mm", "number"), ("width_mm", "number"),
              ("height_mm", "number"), ("material", "string"), ("pressure", "string"), ("depth_ref", "string"),
              ("start_axis_z", "number"), ("end_axis_z", "number"), ("length_m", "number")]


def to_4490(g):
    return shapely.transform(g, lambda xy: np.column_stack(TO_4490.transform(xy[:, 0], xy[:, 1])))


def pipe(code: str, name: str, sid: str, xy0, xy1, z0: float, z1: float, *, d=None, w=None, h=None, material="PE"):
    line = shapely.LineString([xy0, xy1])
    props = {"id": f"{code}-{sid}", "segment_id": sid, "type": name, "type_code": code, "start_id": sid + "a",
             "end_id": sid + "b", "diameter_mm": d, "width_mm": w if w else d, "height_mm": h if h else d,
             "material": material, "pressure": None, "depth_ref": "invert" if code in ("PS", "YS", "WS") else "top",
             "start_axis_z": z0, "end_axis_z": z1, "length_m": math.hypot(line.length, z1 - z0)}
    return props["id"], line, props


#: The acceptance scene around the basement box(X0, Y0, X0 + 20, Y0 + 12) × [22, 30]:
PIPES = [
    # 1. a DN300 water main straight through the basement at 26 m: its axis runs inside → cuts
    pipe("JS", "给水", "J1", (X0 - 10, Y0 + 6), (X0 + 30, Y0 + 6), 26.0, 26.0, d=300),
    # 2. a DN600 sewer under the floor: axis 0.2 m below the bottom, radius 0.3 → cuts (by 0.1 m)
    pipe("WS", "污水", "W1", (X0 + 5, Y0 - 10), (X0 + 5, Y0 + 25), 21.8, 21.8, d=600, material="HDPE"),
    # 3. a DN200 gas main along the east wall, axis 0.4 m from it, radius 0.1 → clearance 0.300
    pipe("RQ", "燃气", "R1", (X0 + 20.4, Y0 - 8), (X0 + 20.4, Y0 + 20), 27.5, 27.5, d=200),
    # 4. far away (15 m north): not within the 5 m search distance
    pipe("TX", "通信", "T1", (X0 - 5, Y0 + 27), (X0 + 25, Y0 + 27), 28.5, 28.5, d=100),
    # 5. a 400×300 power duct 100 m east, along y at x = X0 + 120 (its own test below)
    pipe("DL", "电力", "D1", (X0 + 120, Y0 - 5), (X0 + 120, Y0 + 20), 27.0, 27.0, w=400, h=300),
]


def write_layer(conn, name, family, schema, feats, key, at):
    store.create_layer(conn, store.Layer(name=name, geometry_family=family, key_field=key,
                                         properties=[{"name": n, "type": t} for n, t in schema]), with_partition=False)
    layer = store.get_layer(conn, name)
    props = pd.DataFrame([{n: p.get(n) for n, _ in schema} for _, _, p in feats], dtype=object)
    rows = store.FeatureRows(rows=np.arange(1, len(feats) + 1), fids=np.array([f[0] for f in feats], dtype=object),
                             geometry=np.array([to_4490(f[1]) for f in feats], dtype=object), properties=props)
    store.write_changeset(conn, layer, rows, mode="replace", valid_from=at, author="pytest", source="test",
                          new_layer=True)
    conn.commit()


def footprint_geojson(x0=X0, y0=Y0, w=20.0, h=12.0) -> dict:
    return json.loads(shapely.to_geojson(to_4490(shapely.box(x0, y0, x0 + w, y0 + h))))


def make_basement_ifc(path: Path, *, georeferenced: bool = True) -> Path:
    """An IFC4 model of the same basement: one IfcSlab 20 × 12 × 8 m under storey B1, the project
    origin at the box's south-west corner on the ground (IfcMapConversion E = X0, N = Y0, H = 30)."""
    import ifcopenshell.api as api
    import ifcopenshell.api.geometry
    import ifcopenshell.api.root
    import ifcopenshell.api.spatial

    from tests.fixtures.ifc import georeference, new_model

    ifc = new_model("碰撞测试", "拟建楼", {"B1": -DEPTH})
    f, body, b1 = ifc.file, ifc.body, ifc.storeys["B1"]
    slab = api.root.create_entity(f, ifc_class="IfcSlab", name="地下室")
    api.geometry.assign_representation(f, product=slab, representation=api.geometry.add_slab_representation(
        f, context=body, depth=DEPTH, polyline=[(0.0, 0.0), (20.0, 0.0), (20.0, 12.0), (0.0, 12.0)]))
    m = np.eye(4)
    m[2, 3] = -DEPTH
    api.geometry.edit_object_placement(f, product=slab, matrix=m, is_si=True)
    api.spatial.assign_container(f, products=[slab], relating_structure=b1)
    if georeferenced:
        georeference(ifc, "EPSG:4547", {"Eastings": X0, "Northings": Y0, "OrthogonalHeight": GROUND,
                                        "XAxisAbscissa": 1.0, "XAxisOrdinate": 0.0, "Scale": 1.0})
    return ifc.write(path)


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    from spatial_api import db

    tmp = tmp_path_factory.mktemp("clash")
    tag = uuid.uuid4().hex[:8]
    pipes, basements = f"t_pipes_{tag}", f"t_base_{tag}"
    with db.connect(database) as conn:
        write_layer(conn, pipes, "LineString", SEG_SCHEMA, PIPES, "id", datetime(2024, 1, 1, tzinfo=CST))
        # an existing basement next door: 2.0 m west of the planned one, 6 m deep
        write_layer(conn, basements, "Polygon", [("basement_id", "string"), ("building_id", "string"),
                                                 ("name", "string"), ("use", "string"), ("levels", "integer"),
                                                 ("depth_m", "number"), ("ground_z", "number")],
                    [("DX1", shapely.box(X0 - 22, Y0, X0 - 2, Y0 + 12),
                      {"basement_id": "DX1", "building_id": "B9", "name": "邻楼车库", "use": "地下车库", "levels": 2,
                       "depth_m": 6.0, "ground_z": 30.0})], "basement_id", datetime(2024, 1, 1, tzinfo=CST))
    ifc = make_basement_ifc(tmp / "basement.ifc")
    return {"settings": database, "pipes": pipes, "basements": basements, "tmp": tmp, "ifc": ifc, "tag": tag}


def run(env, **kw):
    return clash.check(env["settings"], pipes_layer=env["pipes"], basements_layer=env["basements"], **kw)


def assert_acceptance(report):
    by_id = {p["id"]: p for p in report["pipes"]}
    assert sorted(by_id) == ["JS-J1", "RQ-R1", "WS-W1"], by_id.keys()
    assert by_id["JS-J1"]["cuts"] and by_id["WS-W1"]["cuts"]
    assert by_id["JS-J1"]["clearance_m"] == pytest.approx(-0.15, abs=1e-3)  # axis inside: −radius
    assert by_id["WS-W1"]["clearance_m"] == pytest.approx(-0.1, abs=1e-3)   # within its radius of the floor
    assert not by_id["RQ-R1"]["cuts"]
    assert by_id["RQ-R1"]["clearance_m"] == pytest.approx(0.300, abs=0.001)
    assert by_id["RQ-R1"]["too_close"] and by_id["RQ-R1"]["required_m"] == 1.0  # 燃气, pressure unknown: 中压 B
    s = report["summary"]
    assert (s["pipes"], s["cuts"], s["too_close"]) == (3, 2, 1)
    assert s["by_type"]["给水"]["cuts"] == 1 and s["by_type"]["污水"]["cuts"] == 1
    assert report["highlight"]["cuts"] == ["JS-J1", "WS-W1"]


def test_planned_basement_footprint_and_depth(env):
    r = run(env, footprint=footprint_geojson(), depth_m=DEPTH, ground_z=GROUND)
    assert_acceptance(r)
    assert r["subject"]["bottom_z"] == pytest.approx(22.0)
    assert all(p["nearest"]["kind"] == "planned" for p in r["pipes"])
    # the neighbour's garage, 2.0 m west
    assert [(s["basement_id"], s["clearance_m"], s["overlaps"]) for s in r["structures"]] == [("DX1", 2.0, False)]


def test_registered_ifc_model(env):
    from cim_builder.ifc import register

    mid = f"clash-{env['tag']}"
    info = register(env["settings"], env["ifc"], model_id=mid, layer=f"none_{env['tag']}",
                    store_dir=env["tmp"] / "models")
    assert info["georef"] == "IfcMapConversion"
    r = run(env, model=mid)
    assert_acceptance(r)
    near = {p["id"]: p["nearest"] for p in r["pipes"]}
    assert near["RQ-R1"]["ifc_class"] == "IfcSlab" and near["RQ-R1"]["storey"] == "B1"
    assert near["RQ-R1"]["global_id"]
    assert r["subject"]["z_range"] == pytest.approx([22.0, 30.0], abs=1e-6)
    assert r["structures"][0]["basement_id"] == "DX1"
    assert r["structures"][0]["clearance_m"] == pytest.approx(2.0, abs=1e-3)


def test_ifc_file_placed_on_the_command_line(env):
    """The same model without georeferencing, placed with --at at the box's corner (the ENU frame
    there is turned from the grid by the meridian convergence: the rotation compensates it)."""
    path = make_basement_ifc(env["tmp"] / "plain.ifc", georeferenced=False)
    lon, lat = TO_4490.transform(X0, Y0)
    from pyproj import Geod
    lon1, lat1 = TO_4490.transform(X0 + 100, Y0)
    azimuth = Geod(ellps="GRS80").inv(lon, lat, lon1, lat1)[0]  # grid east, clockwise from true north
    r = run(env, ifc_path=path, at=(lon, lat, GROUND), rotation=90.0 - azimuth)
    assert_acceptance(r)


def test_box_pipe_exact_and_as_of(env):
    # a basement whose east wall is 0.6 m west of the duct's axis: the duct is 400 wide → 0.400 clear
    fp = footprint_geojson(X0 + 120 - 0.6 - 10, Y0, 10, 10)
    r = run(env, footprint=fp, depth_m=DEPTH, ground_z=GROUND)
    assert [(p["id"], p["size"], p["clearance_m"], p["cuts"]) for p in r["pipes"]] == [("DL-D1", "400×300", 0.4, False)]
    assert r["pipes"][0]["too_close"] is True and r["pipes"][0]["required_m"] == 0.6  # 电力 直埋 0.6 m
    # before the pipes were surveyed there is nothing to report
    r0 = run(env, footprint=fp, depth_m=DEPTH, ground_z=GROUND, as_of="2023-06-30")
    assert r0["pipes"] == [] and r0["summary"]["pipes"] == 0


def test_no_pipes_near_and_errors(env):
    far = footprint_geojson(X0 + 400, Y0 + 400)
    r = run(env, footprint=far, depth_m=5, ground_z=GROUND)
    assert r["pipes"] == [] and r["structures"] == [] and r["summary"]["cuts"] == 0
    with pytest.raises(clash.UnknownModel, match="no-such-model"):
        run(env, model="no-such-model")
    with pytest.raises(CimError, match=r"footprint\.type: must be Polygon"):
        run(env, footprint={"type": "Point", "coordinates": [114.25, 22.72]}, depth_m=5, ground_z=GROUND)
    with pytest.raises(CimError, match=r"footprint\.coordinates: positions must be EPSG:4490"):
        run(env, footprint=json.loads(shapely.to_geojson(shapely.box(X0, Y0, X0 + 5, Y0 + 5))), depth_m=5,
            ground_z=GROUND)
    bow = {"type": "Polygon", "coordinates": [[[114.25, 22.72], [114.251, 22.721], [114.251, 22.72],
                                               [114.25, 22.721], [114.25, 22.72]]]}
    with pytest.raises(CimError, match=r"footprint\.coordinates: the polygon is invalid"):
        run(env, footprint=bow, depth_m=5, ground_z=GROUND)
    with pytest.raises(CimError, match=r"footprint\.features\[0\]\.geometry"):
        run(env, footprint={"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None}]},
            depth_m=5, ground_z=GROUND)
    with pytest.raises(CimError, match="depth_m"):
        run(env, footprint=footprint_geojson(), depth_m=-3, ground_z=GROUND)
    with pytest.raises(CimError, match="--clearance 给水=abc"):
        run(env, footprint=footprint_geojson(), depth_m=5, ground_z=GROUND, clearances=["给水=abc"])


def test_clearance_override(env):
    r = run(env, footprint=footprint_geojson(), depth_m=DEPTH, ground_z=GROUND, clearances=["燃气=0.2"])
    rq = next(p for p in r["pipes"] if p["id"] == "RQ-R1")
    assert rq["required_m"] == 0.2 and rq["too_close"] is False


def test_reports_html_and_xlsx(env):
    from openpyxl import load_workbook

    from cim_builder import clash_report

    r = run(env, footprint=footprint_geojson(), depth_m=DEPTH, ground_z=GROUND)
    r["pipes"][0]["material"] = "=HYPERLINK(\"http://x\")"  # a formula typed into a survey
    html = clash_report.html(r)
    for pid in ("JS-J1", "WS-W1", "RQ-R1"):
        assert pid in html
    assert "0.300" in html and "冲突" in html and "<script" not in html
    wb = load_workbook(BytesIO(clash_report.xlsx(r)))
    ws = wb["管线 pipes"]
    rows = list(ws.iter_rows(min_row=2, values_only=True))
    assert [row[0] for row in rows] == ["JS-J1", "WS-W1", "RQ-R1"]
    assert rows[2][4] == pytest.approx(0.3, abs=1e-3) and isinstance(rows[2][4], float)
    assert rows[0][3].startswith("'=")  # neutralised, not a formula
    assert all(c.data_type != "f" for row in ws.iter_rows() for c in row)


def test_cli(env, tmp_path):
    fp = tmp_path / "fp.geojson"
    fp.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": footprint_geojson()}))
    out = tmp_path / "report.xlsx"
    geotwin = [sys.executable, "-m", "spatial_api", "cim", "clash"]
    res = subprocess.run([*geotwin, "--footprint", str(fp), "--depth", str(DEPTH), "--ground-z", str(GROUND),
                          "--pipes-layer", env["pipes"], "--basements-layer", env["basements"], "--out", str(out),
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr  # a clash is a finding, not an error
    assert_acceptance(json.loads(res.stdout))
    assert out.is_file() and out.read_bytes()[:2] == b"PK"
    table = subprocess.run([*geotwin, "--footprint", str(fp), "--depth", str(DEPTH), "--ground-z", str(GROUND),
                            "--pipes-layer", env["pipes"], "--basements-layer", env["basements"]],
                           capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and "RQ-R1" in table.stdout and "2 cut" in table.stdout
    bad = subprocess.run([*geotwin, "no-such-model"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 1 and "no registered model" in bad.stderr


def test_http(env, auth, monkeypatch):
    from fastapi.testclient import TestClient

    from spatial_api.app import create_app

    client = TestClient(create_app(env["settings"]))
    body = {"footprint": footprint_geojson(), "depth_m": DEPTH, "ground_z": GROUND}
    assert client.post("/twin/clash", json=body).status_code == 401
    assert client.post("/twin/clash", json=body, headers=auth("public")).status_code == 403
    assert client.post("/twin/clash", json=body, headers=auth("land-officer")).status_code == 403
    # the room reads the contract's layer names: point them at this test's layers
    monkeypatch.setattr(clash, "PIPES_LAYER", env["pipes"])
    monkeypatch.setattr(clash, "BASEMENTS_LAYER", env["basements"])
    monkeypatch.setenv("GEOTWIN_CLASH_DIR", str(env["tmp"] / "reports"))
    res = client.post("/twin/clash", json=body, headers=auth("planner"))
    assert res.status_code == 200, res.text
    report = res.json()
    assert_acceptance(report)
    links = {l["type"]: l["href"] for l in report["links"]}
    html = client.get(links["text/html"], headers=auth("gis-staff"))
    assert html.status_code == 200 and "RQ-R1" in html.text
    x = client.get(f"/twin/clash/{report['id']}?f=xlsx", headers=auth("planner"))
    assert x.status_code == 200 and x.content[:2] == b"PK"
    assert client.get(links["text/html"]).status_code == 401
    assert client.get("/twin/clash/" + "0" * 32, headers=auth("planner")).status_code == 404
    bad = client.post("/twin/clash", json={"footprint": {"type": "Polygon"}, "depth_m": 3},
                      headers=auth("planner"))
    assert bad.status_code == 400 and "footprint.coordinates" in bad.json()["description"]
    unknown = client.post("/twin/clash", json={"model": "nope"}, headers=auth("planner"))
    assert unknown.status_code == 404 and "nope" in unknown.json()["description"]
    extra = client.post("/twin/clash", json={**body, "depth": 3}, headers=auth("planner"))
    assert extra.status_code == 400 and "depth" in extra.json()["description"]


def test_entity_codes(env):
    """Pipes with geographic entity codes (spatial_api.entities) carry them in the report."""
    from spatial_api import db, entities

    entities.assign(env["pipes"], entity_type="pipe_segment", settings=env["settings"])
    r = run(env, footprint=footprint_geojson(), depth_m=DEPTH, ground_z=GROUND)
    with db.connect(env["settings"]) as conn:
        expected = {p["id"]: entities.entity_for_feature(conn, env["pipes"], p["id"]) for p in r["pipes"]}
    assert all(code and entities.CODE_RE.match(code) for code in expected.values())
    assert {p["id"]: p["entity"] for p in r["pipes"]} == expected
