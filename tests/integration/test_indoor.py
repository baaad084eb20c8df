"""Rooms and storeys of BIM models (issue 17) on a real PostGIS: the duplex sample (21 IfcSpace on 4
storeys) registered on a hand-made building, a two-storey IFC4 model with an underground garage
(made with ifcopenshell.api: Qto areas, a use, a room below ground), IfcOpenHouse (no rooms) —
the indoor_spaces layer, /twin/models/{id}/storeys and the per-storey indoor map, the OGC items
link, re-registering, removing (history kept), access, the CLI, and the BIM glb's room metadata
through the Khronos validator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Transformer

from cim_builder.geo import CimError
from spatial_api import db, store
from tests.unit.test_cim_ifc import SAMPLES, world_vertices

ROOT = Path(__file__).resolve().parents[2]
AT = (114.2512, 22.7213, 30.0)  # the duplex's origin: lon, lat, orthometric height
TO_METRIC = Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True)
TO_LONLAT = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
SUFFIX = uuid.uuid4().hex[:6]
DUPLEX, GARAGE, HOUSE = f"dx-{SUFFIX}", f"garage-{SUFFIX}", f"house-{SUFFIX}"


def profile_area(space) -> float | None:
    """A room's floor area from its IFC extrusion profile (rectangle or polyline), by hand; None
    when the room is not a vertical extrusion."""
    for rep in space.Representation.Representations:
        for item in rep.Items:
            if not item.is_a("IfcExtrudedAreaSolid"):
                continue
            axis = item.Position.Axis
            if axis is not None and abs(abs(axis.DirectionRatios[2]) - 1) > 1e-9:
                return None  # extruded sideways (the stairs): the profile is a section, not the plan
            p = item.SweptArea
            if p.is_a("IfcRectangleProfileDef"):
                return float(p.XDim) * float(p.YDim)
            if p.is_a("IfcArbitraryClosedProfileDef") and p.OuterCurve.is_a("IfcPolyline"):
                return shapely.Polygon([tuple(pt.Coordinates[:2]) for pt in p.OuterCurve.Points]).area
    return None


def make_garage(path: Path) -> Path:
    """IFC4, metres: storey B1 (−4.5 m) with a 30 × 20 m underground garage room (Qto
    NetFloorArea 588.5 m², Pset_SpaceCommon.Category 地下车库) on a 0.5 m base slab, storey 1F
    (0 m) with a 10 × 8 m shop (no Qto: its footprint's area) and a slab."""
    import ifcopenshell.api as api
    import ifcopenshell.api.aggregate
    import ifcopenshell.api.geometry
    import ifcopenshell.api.pset
    import ifcopenshell.api.root
    import ifcopenshell.api.spatial

    from tests.fixtures.ifc import new_model

    ifc = new_model("地下车库测试", "B栋", {"B1": -4.5, "1F": 0.0})
    f, body, b1, g1 = ifc.file, ifc.body, ifc.storeys["B1"], ifc.storeys["1F"]

    def put(product, z, depth, polyline, storey, name):
        api.geometry.assign_representation(f, product=product, representation=api.geometry.add_slab_representation(
            f, context=body, depth=depth, polyline=polyline))
        m = np.eye(4)
        m[2, 3] = z
        api.geometry.edit_object_placement(f, product=product, matrix=m, is_si=True)
        product.Name = name
        if product.is_a("IfcSpace"):
            api.aggregate.assign_object(f, products=[product], relating_object=storey)
        else:
            api.spatial.assign_container(f, products=[product], relating_structure=storey)

    big = [(0.0, 0.0), (30.0, 0.0), (30.0, 20.0), (0.0, 20.0)]
    put(api.root.create_entity(f, ifc_class="IfcSlab"), -5.0, 0.5, big, b1, "底板")
    garage = api.root.create_entity(f, ifc_class="IfcSpace")
    put(garage, -4.5, 4.0, big, b1, "B101")
    garage.LongName = "地下停车库"
    common = api.pset.add_pset(f, product=garage, name="Pset_SpaceCommon")
    api.pset.edit_pset(f, pset=common, properties={"Category": "地下车库"})
    qto = api.pset.add_qto(f, product=garage, name="Qto_SpaceBaseQuantities")
    api.pset.edit_qto(f, qto=qto, properties={"NetFloorArea": 588.5, "GrossFloorArea": 600.0})
    put(api.root.create_entity(f, ifc_class="IfcSlab"), -0.3, 0.3, big, g1, "首层楼板")
    shop = api.root.create_entity(f, ifc_class="IfcSpace")
    put(shop, 0.0, 3.5, [(2.0, 2.0), (12.0, 2.0), (12.0, 10.0), (2.0, 10.0)], g1, "101")
    shop.LongName = "商铺"
    return ifc.write(path)


def write_buildings(tmp: Path, settings) -> str:
    """A buildings layer: one building under the duplex, one elsewhere."""
    import geopandas as gpd

    from spatial_api.ingest import ingest_vector

    x, y = TO_METRIC.transform(AT[0], AT[1])
    df = gpd.GeoDataFrame([
        {"building_id": "D1", "height_m": 9.0, "geometry": shapely.box(x - 12, y - 15, x + 30, y + 15)},
        {"building_id": "D2", "height_m": 9.0, "geometry": shapely.box(x + 200, y, x + 220, y + 20)},
    ], crs="EPSG:4547")
    layer = f"t_indoor_{SUFFIX}"
    df.to_file(tmp / "b.gpkg", driver="GPKG")
    ingest_vector(tmp / "b.gpkg", layer=layer, key="building_id", valid_from="2024-01-01", settings=settings)
    return layer


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    from cim_builder.ifc import register

    tmp = tmp_path_factory.mktemp("indoor")
    layer = write_buildings(tmp, database)
    models = tmp / "models"
    duplex = register(database, SAMPLES / "duplex.ifc", model_id=DUPLEX, at=AT, store_dir=models, layer=layer)
    x, y = TO_METRIC.transform(AT[0], AT[1])
    glon, glat = TO_LONLAT.transform(x + 120, y)
    garage_path = make_garage(tmp / "garage.ifc")
    garage = register(database, garage_path, model_id=GARAGE, at=(glon, glat, 31.0), store_dir=models, layer=layer)
    return {"settings": database, "tmp": tmp, "layer": layer, "models": models, "duplex": duplex,
            "garage": garage, "garage_path": garage_path}


def current_rooms(settings, model_id: str) -> list[dict]:
    with db.connect(settings) as conn:
        rows = conn.execute("SELECT fid, properties, ST_AsBinary(geom) FROM features_indoor_spaces "
                            "WHERE valid_to IS NULL AND properties->>'model_id' = %s ORDER BY fid",
                            (model_id,)).fetchall()
    return [{"fid": r[0], "p": r[1], "geom": shapely.from_wkb(bytes(r[2]))} for r in rows]


def metric_area(g) -> float:
    return shapely.transform(g, lambda c: np.column_stack(TO_METRIC.transform(c[:, 0], c[:, 1]))).area


def test_duplex_rooms_in_the_store(env):
    import ifcopenshell

    s = env["settings"]
    assert env["duplex"]["indoor"]["rooms"] == 21 and env["duplex"]["indoor"]["storeys"] == 4
    assert env["duplex"]["indoor"]["changeset_id"] is not None
    rooms = current_rooms(s, DUPLEX)
    assert len(rooms) == 21
    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    spaces = {sp.GlobalId: sp for sp in f.by_type("IfcSpace")}
    by_gid = {r["p"]["space_id"].rsplit("/", 1)[-1]: r for r in rooms}
    assert set(by_gid) == set(spaces)
    per_storey: dict[str, int] = {}
    checked = 0
    with db.connect(s) as conn:
        fp = shapely.from_wkb(bytes(conn.execute("SELECT ST_AsBinary(footprint) FROM cim_models WHERE id = %s",
                                                 (DUPLEX,)).fetchone()[0]))
    for gid, r in by_gid.items():
        p, sp = r["p"], spaces[gid]
        assert r["fid"] == p["space_id"] and p["model_id"] == DUPLEX
        assert p["name"] == sp.Name and p["long_name"] == sp.LongName and p["use"] == sp.LongName
        per_storey[p["storey"]] = per_storey.get(p["storey"], 0) + 1
        assert p["storey_index"] == {"Level 1": 1, "Level 2": 2, "Roof": 3}[p["storey"]]
        assert p["storey_elevation"] == pytest.approx(AT[2] + {"Level 1": 0.0, "Level 2": 3.1, "Roof": 6.0}[p["storey"]],
                                                      abs=0.01)
        assert p["below_ground"] is False and p["building_id"] == "D1"
        # no Qto in the duplex: the footprint's area (EPSG:4547), which the extrusion profile gives by hand
        assert p["area_m2"] == pytest.approx(metric_area(r["geom"]), rel=1e-3)
        hand = profile_area(sp)
        if hand is not None:
            assert p["area_m2"] == pytest.approx(hand, rel=0.01), sp.Name
            checked += 1
        # every room inside the model's footprint (the convex hull of its solid elements)
        assert r["geom"].geom_type == "Polygon" and r["geom"].is_valid
        assert shapely.within(r["geom"], fp.buffer(1e-7))
    assert checked == 17  # the two hallways are surface models, the two stairs extruded sideways
    assert per_storey == {"Level 1": 10, "Level 2": 10, "Roof": 1}
    heights = {r["p"]["name"]: r["p"]["height_m"] for r in rooms}
    assert heights["A102"] == pytest.approx(2.581, abs=0.01) and heights["R301"] == pytest.approx(3.0, abs=0.01)


def test_footprints_are_placed_like_the_mesh(env):
    """A room's corners in the store = its mesh vertices through the same --at placement (ENU)."""
    rooms = {r["p"]["name"]: r for r in current_rooms(env["settings"], DUPLEX)}
    verts = world_vertices(SAMPLES / "duplex.ifc", ("IfcSpace",))
    import ifcopenshell

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    topo = Transformer.from_pipeline(f"+proj=topocentric +lon_0={AT[0]} +lat_0={AT[1]} +h_0={AT[2] - 2.6} "
                                     "+ellps=GRS80")
    geo = Transformer.from_crs("EPSG:4978", "EPSG:4490", always_xy=True)
    for name in ("A102", "A104", "R301"):  # rectangular rooms: the plan is the hull of the mesh
        gid = next(sp.GlobalId for sp in f.by_type("IfcSpace") if sp.Name == name)
        v = verts[gid]
        x, y, z = topo.transform(v[:, 0], v[:, 1], v[:, 2], direction="INVERSE")
        lon, lat = geo.transform(x, y, z)[:2]
        hull = shapely.convex_hull(shapely.multipoints(np.column_stack([lon, lat])))
        g = rooms[name]["geom"]
        assert shapely.hausdorff_distance(g, hull) < 1e-8  # ≈ 1 mm
        assert metric_area(g) == pytest.approx(metric_area(hull), rel=1e-3)


def test_storeys_endpoint_and_indoor_map(env):
    from spatial_api.app import create_app

    c = TestClient(create_app(env["settings"]))
    r = c.get(f"/twin/models/{DUPLEX}/storeys")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    doc = r.json()
    st = doc["storeys"]
    assert [s["name"] for s in st] == ["T/FDN", "Level 1", "Level 2", "Roof"]
    assert [s["index"] for s in st] == [0, 1, 2, 3] and [s["rooms"] for s in st] == [0, 10, 10, 1]
    assert [s["elevation"] for s in st] == pytest.approx([AT[2] - 1.25, AT[2], AT[2] + 3.1, AT[2] + 6.0], abs=0.01)
    assert [s["below_ground"] for s in st] == [True, False, False, False]
    assert all(s["elements"] > 0 for s in st) and sum(s["elements"] for s in st) > 150
    # the foundation storey: its elements' outline and bottom (checked against IfcOpenShell's own mesh)
    import ifcopenshell
    import ifcopenshell.util.element

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    storey = next(x for x in f.by_type("IfcBuildingStorey") if x.Name == "T/FDN")
    fdn = [e.GlobalId for e in ifcopenshell.util.element.get_decomposition(storey)]
    verts = world_vertices(SAMPLES / "duplex.ifc")
    zmin = min(float(verts[g][:, 2].min()) for g in fdn if g in verts)
    assert st[0]["bottom_z"] == pytest.approx(AT[2] + zmin, abs=0.01)
    outline = shapely.geometry.shape(st[0]["footprint"])
    assert outline.is_valid and st[0]["footprint_area_m2"] == pytest.approx(metric_area(outline), rel=0.01)
    assert "bottom_z" not in st[1] and "footprint" not in st[1]
    # the indoor map of a storey: by index, by name (a name with a slash too), as GeoJSON and a plan
    one = c.get(st[2]["links"][0]["href"])
    assert one.status_code == 200 and one.headers["content-type"].startswith("application/geo+json")
    fc = one.json()
    assert fc["type"] == "FeatureCollection" and fc["numberReturned"] == 10 and fc["storey"]["name"] == "Level 2"
    assert {x["properties"]["storey"] for x in fc["features"]} == {"Level 2"}
    assert c.get(f"/twin/models/{DUPLEX}/storeys/Level 2/spaces").json()["numberReturned"] == 10
    assert c.get(f"/twin/models/{DUPLEX}/storeys/T/FDN/spaces").json()["numberReturned"] == 0
    html = c.get(f"/twin/models/{DUPLEX}/storeys/1/spaces?f=html")
    assert html.status_code == 200 and "<svg" in html.text and "Living Room" in html.text
    assert "T/FDN" in c.get(f"/twin/models/{DUPLEX}/storeys?f=html").text
    # the same rooms through OGC API Features (the CQL2 link)
    items = c.get(next(ln["href"] for ln in st[1]["links"] if ln["rel"] == "collection-items"))
    assert items.status_code == 200, items.text
    assert len(items.json()["features"]) == 10
    # as of a date before the model was registered: no rooms
    assert c.get(f"/twin/models/{DUPLEX}/storeys/1/spaces?datetime=2020-01-01").json()["numberReturned"] == 0
    # clear errors
    bad = c.get(f"/twin/models/{DUPLEX}/storeys/Level 9/spaces")
    assert bad.status_code == 404 and "Level 9" in bad.json()["description"] and "T/FDN" in bad.json()["description"]
    assert c.get("/twin/models/nope/storeys").status_code == 404
    assert c.get(f"/twin/models/{DUPLEX}/storeys/1/spaces?datetime=yesterday").status_code == 400


def test_garage_below_ground_with_qto_area_and_use(env):
    assert env["garage"]["indoor"]["rooms"] == 2
    rooms = {r["p"]["name"]: r for r in current_rooms(env["settings"], GARAGE)}
    g, shop = rooms["B101"]["p"], rooms["101"]["p"]
    assert g["use"] == "地下车库" and g["long_name"] == "地下停车库" and g["area_m2"] == 588.5  # Qto NetFloorArea
    assert g["below_ground"] is True and g["storey"] == "B1" and g["storey_index"] == 0
    assert g["storey_elevation"] == pytest.approx(31.0 - 4.5, abs=0.01) and g["height_m"] == pytest.approx(4.0, abs=0.01)
    assert shop["below_ground"] is False and shop["storey_index"] == 1 and shop["use"] == "商铺"
    assert shop["area_m2"] == pytest.approx(80.0, rel=2e-3)  # no Qto: its 10 × 8 m footprint
    assert metric_area(rooms["B101"]["geom"]) == pytest.approx(600.0, rel=2e-3)
    assert g["building_id"] is None  # no building under it
    with db.connect(env["settings"]) as conn:
        from cim_builder import indoor

        st = indoor.model_storeys(conn, GARAGE)
    assert [s["name"] for s in st] == ["B1", "1F"] and st[0]["below_ground"] and not st[1]["below_ground"]
    assert st[0]["bottom_z"] == pytest.approx(31.0 - 5.0, abs=0.01)
    assert st[0]["footprint_area_m2"] == pytest.approx(600.0, rel=0.01)


def test_reregistering_changes_nothing_and_other_models_are_kept(env):
    from cim_builder.ifc import register

    s = env["settings"]
    before = current_rooms(s, DUPLEX)
    again = register(s, SAMPLES / "duplex.ifc", model_id=DUPLEX, at=AT, store_dir=env["models"], layer=env["layer"])
    assert again["indoor"]["changeset_id"] is None and again["indoor"]["unchanged"] == 21
    with db.connect(s) as conn:
        n = conn.execute("SELECT count(*) FROM features_indoor_spaces WHERE properties->>'model_id' = %s",
                         (DUPLEX,)).fetchone()[0]
    assert n == 21 and [r["fid"] for r in current_rooms(s, DUPLEX)] == [r["fid"] for r in before]
    # the same file under another id: its rooms are its own (keyed <id>/<GlobalId>), the first model's kept
    other = f"dx2-{SUFFIX}"
    info = register(s, SAMPLES / "duplex.ifc", model_id=other, at=AT, store_dir=env["models"], layer=env["layer"])
    try:
        assert info["indoor"]["added"] == 21 and any("registered twice" in w for w in info["warnings"])
        assert all(r["fid"].startswith(f"{other}/") for r in current_rooms(s, other))
        assert len(current_rooms(s, DUPLEX)) == 21 and len(current_rooms(s, GARAGE)) == 2
    finally:
        with db.connect(s) as conn:
            from cim_builder import indoor

            conn.execute("UPDATE cim_models SET active = false WHERE id = %s", (other,))
            assert indoor.close_model(conn, other) == 21
    assert current_rooms(s, other) == [] and len(current_rooms(s, DUPLEX)) == 21


def test_a_failed_registration_writes_no_rooms(env, monkeypatch):
    """Rooms and the model row are one transaction: a failure in the rooms' write leaves neither."""
    from cim_builder import indoor
    from cim_builder.ifc import register

    def broken(*a, **k):
        raise CimError("disk full (simulated)")

    monkeypatch.setattr(indoor, "write_model", broken)
    with pytest.raises(CimError, match="simulated"):
        register(env["settings"], env["garage_path"], model_id=f"broken-{SUFFIX}", at=AT, store_dir=env["models"],
                 layer=env["layer"])
    with db.connect(env["settings"]) as conn:
        assert conn.execute("SELECT count(*) FROM cim_models WHERE id = %s", (f"broken-{SUFFIX}",)).fetchone()[0] == 0


def _cli(env, *args) -> subprocess.CompletedProcess:
    e = dict(os.environ, GEOTWIN_DB_SCHEMA=env["settings"].db_schema, GEOTWIN_MODELS_DIR=str(env["models"]))
    return subprocess.run([sys.executable, "-m", "spatial_api", "cim", *args], capture_output=True, text=True,
                          env=e, timeout=300, cwd=ROOT)


def test_model_without_rooms_and_the_cli(env):
    r = _cli(env, "add-ifc", str(SAMPLES / "IfcOpenHouse_IFC4.ifc"), "--id", HOUSE, "--at", "114.2530,22.7230,30",
             "--layer", env["layer"])
    assert r.returncode == 0, r.stderr
    assert "no rooms" in r.stdout and "IfcSpace" in r.stdout
    assert current_rooms(env["settings"], HOUSE) == []
    r = _cli(env, "indoor", "rooms", HOUSE)
    assert r.returncode == 0 and "has no rooms" in r.stdout
    r = _cli(env, "indoor", "storeys", DUPLEX, "--json")
    assert r.returncode == 0, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)] == ["T/FDN", "Level 1", "Level 2", "Roof"]
    r = _cli(env, "indoor", "rooms", DUPLEX, "--storey", "Level 2", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["features"]) == 10
    r = _cli(env, "indoor", "rooms", DUPLEX, "--storey", "Level 9")
    assert r.returncode == 1 and "Level 9" in r.stderr and "Traceback" not in r.stderr
    r = _cli(env, "indoor", "extract", GARAGE, "--layer", env["layer"], "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rooms"] == 2 and out["changeset_id"] is None and out["unchanged"] == 2
    r = _cli(env, "indoor", "extract", "nope")
    assert r.returncode == 1 and "no active model 'nope'" in r.stderr


def test_removing_a_model_closes_its_rooms_with_history(env):
    from spatial_api.app import create_app

    s = env["settings"]
    fids = [r["fid"] for r in current_rooms(s, GARAGE)]
    r = _cli(env, "remove-model", GARAGE)
    assert r.returncode == 0 and "2 room(s) closed" in r.stdout, r.stderr
    assert current_rooms(s, GARAGE) == [] and len(current_rooms(s, DUPLEX)) == 21
    with db.connect(s) as conn:
        hist = store.feature_history(conn, "indoor_spaces", fids[0])
    assert len(hist) == 1 and hist[0]["valid_to"] is not None  # closed, not deleted
    c = TestClient(create_app(s))
    assert c.get(f"/twin/models/{GARAGE}/storeys").status_code == 404


def test_rooms_are_as_visible_as_their_layer(env, auth):
    from spatial_api.app import create_app

    s = env["settings"]
    with db.connect(s) as conn:
        store.update_layer(conn, "indoor_spaces", access_level="restricted")
        conn.commit()
    try:
        app = create_app(s)
        public, officer = TestClient(app), TestClient(app, headers=auth("land-officer"))
        assert public.get(f"/twin/models/{DUPLEX}/storeys").status_code == 404
        assert public.get("/twin/models").json()["models"] == []  # the list is as visible as the storeys
        listed = {m["id"]: m for m in officer.get("/twin/models").json()["models"]}
        assert listed[DUPLEX]["storeys"] == 4 and listed[DUPLEX]["rooms"] == 21
        assert listed[DUPLEX]["footprint"]["type"] == "Polygon"
        assert listed[DUPLEX]["links"][0]["href"].endswith(f"/twin/models/{DUPLEX}/storeys")
        assert public.get(f"/twin/models/{DUPLEX}/storeys/1/spaces").status_code == 404
        r = officer.get(f"/twin/models/{DUPLEX}/storeys/1/spaces")
        assert r.status_code == 200 and r.json()["numberReturned"] == 10
        assert "private" in r.headers.get("cache-control", "")
    finally:
        with db.connect(s) as conn:
            store.update_layer(conn, "indoor_spaces", access_level="public")
            conn.commit()


def test_bim_glb_carries_room_metadata_and_validates(env, tmp_path):
    """The duplex's glb: rooms are their own (translucent) primitive, pickable, with the metadata
    the viewer's indoor mode reads; the Khronos validator finds no error."""
    from cim_builder.glb import property_values, read_glb
    from cim_builder.ifc import convert

    info = convert(SAMPLES / "duplex.ifc", tmp_path / "dx", at=AT)
    glb = tmp_path / "dx" / f"{info['id']}.glb"
    doc, binary = read_glb(glb.read_bytes())
    t = property_values(doc, binary, 0)
    stored = {r["p"]["space_id"].rsplit("/", 1)[-1]: r["p"] for r in current_rooms(env["settings"], DUPLEX)}
    rooms = [i for i, sp in enumerate(t["is_space"]) if sp]
    assert len(rooms) == 21
    for i in rooms:
        p = stored[t["global_id"][i]]
        assert t["storey"][i] == p["storey"] and t["storey_index"][i] == p["storey_index"]
        assert t["long_name"][i] == p["long_name"] and t["use"][i] == p["use"] and t["name"][i] == p["name"]
        assert t["area_m2"][i] == pytest.approx(p["area_m2"], rel=2e-3)
        assert t["height_m"][i] == pytest.approx(p["height_m"], abs=0.01)
    solids = [i for i, sp in enumerate(t["is_space"]) if not sp]
    assert all(t["area_m2"][i] == -1.0 for i in solids)  # noData
    wall = t["ifc_class"].index("IfcWallStandardCase")
    assert 0 <= t["storey_index"][wall] <= 3
    r = subprocess.run(["node", str(ROOT / "cim_builder" / "validate_gltf.mjs"), "-"], input=str(glb),
                       capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    assert len(report["files"]) == 1 and report["errors"] == 0, report
