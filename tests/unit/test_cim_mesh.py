"""LOD1 meshing, the glb writer and the quadtree layout, without a database. The glb files are
checked by the Khronos glTF validator (node, npm gltf-validator)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import shapely

from cim_builder.geo import Frame, enu_rotation, gltf_to_ecef, lonlat_to_ecef, to_ecef, transformer
from cim_builder.glb import (SCHEMA, GlbWriter, Primitive, PropertyTable, accessor_array, property_values,
                             read_glb)
from cim_builder.lod1 import footprints, prism_mesh
from cim_builder.tileset import Layout, build_tree, choose_layout, tileset_json

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "cim_builder" / "validate_gltf.mjs"
X0, Y0 = 525823.9, 2513719.0


def validate(paths: list[Path]) -> dict:
    r = subprocess.run(["node", str(VALIDATOR), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def shapes() -> np.ndarray:
    """A rectangle, an L, a courtyard block (a hole), a two-part building, a clockwise-drawn
    rectangle and a concave U — around Longgang's centre, in EPSG:4547."""
    rect = shapely.box(X0, Y0, X0 + 20, Y0 + 10)
    ell = shapely.Polygon([(X0 + 40, Y0), (X0 + 60, Y0), (X0 + 60, Y0 + 8), (X0 + 48, Y0 + 8), (X0 + 48, Y0 + 30),
                           (X0 + 40, Y0 + 30)])
    court = shapely.Polygon([(X0, Y0 + 50), (X0 + 30, Y0 + 50), (X0 + 30, Y0 + 80), (X0, Y0 + 80)],
                            [[(X0 + 10, Y0 + 60), (X0 + 10, Y0 + 70), (X0 + 20, Y0 + 70), (X0 + 20, Y0 + 60)]])
    multi = shapely.MultiPolygon([shapely.box(X0 + 50, Y0 + 50, X0 + 55, Y0 + 55),
                                  shapely.box(X0 + 60, Y0 + 50, X0 + 70, Y0 + 58)])
    cw = shapely.Polygon([(X0 + 80, Y0), (X0 + 80, Y0 + 10), (X0 + 90, Y0 + 10), (X0 + 90, Y0)])
    u = shapely.Polygon([(X0 + 100, Y0), (X0 + 130, Y0), (X0 + 130, Y0 + 20), (X0 + 122, Y0 + 20), (X0 + 122, Y0 + 6),
                         (X0 + 108, Y0 + 6), (X0 + 108, Y0 + 20), (X0 + 100, Y0 + 20)])
    return np.array([rect, ell, court, multi, cw, u], dtype=object)


def test_roofs_cover_each_footprint_exactly_once_and_face_up():
    g = shapes()
    fp = footprints(g)
    assert fp.count == len(g)
    a, b, c = fp.xy[fp.tri[:, 0]], fp.xy[fp.tri[:, 1]], fp.xy[fp.tri[:, 2]]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert (area2 > 0).all()  # counter-clockwise from above
    tb = np.repeat(np.arange(fp.count), np.diff(fp.toff))
    np.testing.assert_allclose(np.bincount(tb, area2 / 2), shapely.area(g), rtol=1e-9)
    # every roof triangle lies inside its footprint (the U's notch and the courtyard stay open)
    cents = shapely.points((a + b + c) / 3)
    assert shapely.contains(g[tb], cents).all()


def _mesh(heights=None):
    g = shapes()
    fp = footprints(g)
    lonlat = transformer("EPSG:4547", "EPSG:4490")
    lon, lat = lonlat.transform(X0 + 50, Y0 + 40)
    frame = Frame.at(lon, lat, 0.0)
    vb = fp.vertex_building()
    base = np.full(fp.count, 30.0)
    top = base + (np.arange(fp.count) * 3 + 10.0 if heights is None else heights)
    ecef = to_ecef("EPSG:4547")
    be = np.column_stack(ecef.transform(fp.xy[:, 0], fp.xy[:, 1], base[vb]))
    te = np.column_stack(ecef.transform(fp.xy[:, 0], fp.xy[:, 1], top[vb]))
    vlon, vlat = lonlat.transform(fp.xy[fp.voff[:-1], 0], fp.xy[fp.voff[:-1], 1])
    up = enu_rotation(vlon, vlat)[:, 2, :]
    return g, fp, frame, prism_mesh(fp, 0, fp.count, be, te, up, frame), top


def test_walls_face_outwards_and_roofs_up():
    g, fp, frame, mesh, top = _mesh()
    tri = mesh.indices.reshape(-1, 3)
    p = mesh.positions.astype(float)
    n = np.cross(p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    # winding agrees with the stored normals (front faces are the outside)
    assert (np.einsum("ij,ij->i", n, mesh.normals[tri[:, 0]]) > 0.999).all()
    assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1, atol=1e-5)
    # a wall's normal points away from the footprint: a point 0.5 m out along it is outside
    walls = np.abs(mesh.normals[tri[:, 0], 1]) < 0.01  # glTF y is up
    centre = p[tri[walls]].mean(axis=1) + 0.5 * n[walls]
    enu = np.stack([centre[:, 0], -centre[:, 2], centre[:, 1]], axis=1)
    ecef = enu @ frame.rotation + frame.origin
    from cim_builder.geo import ecef_to_lonlat

    llh = ecef_to_lonlat(ecef)
    x, y = transformer("EPSG:4490", "EPSG:4547").transform(llh[:, 0], llh[:, 1])
    owner = mesh.feature_ids[tri[walls, 0]]
    assert not shapely.contains(g[owner], shapely.points(x, y)).any()
    # roofs at their building's height
    roofs = mesh.normals[tri[:, 0], 1] > 0.99
    rp = gltf_to_ecef(p[tri[roofs].reshape(-1)], frame.transform())
    h = ecef_to_lonlat(rp)[:, 2]
    np.testing.assert_allclose(h, top[mesh.feature_ids[tri[roofs].reshape(-1)]], atol=0.01)


def test_glb_validates_and_metadata_round_trips(tmp_path):
    g, fp, frame, mesh, top = _mesh()
    w = GlbWriter()
    mat = w.material((0.8, 0.8, 0.8, 1), name="b")
    ids = [f"B{i:03d}" for i in range(fp.count)]
    table = PropertyTable("building", fp.count, {
        "building_id": ids, "parcel_id": ["G-1", "", "G-2", "", "", "地块-3"], "use": [""] * fp.count,
        "height_m": top - 30, "floors": np.array([3, -1, 5, 2, 1, 9], np.int16), "base_height_m": np.full(fp.count, 30.0),
        "source": ["test"] * fp.count})
    bim = PropertyTable("bim_element", 2, {
        "global_id": ["0BTBFw6f90Nfh9rP1dlXr2", "2O2Fr$t4X7Zf8NOew3FLOH"], "ifc_class": ["IfcWall", "IfcSpace"],
        "name": ["外墙", ""], "storey": ["B1", "B1"], "storey_elevation_m": [-3.0, -3.0], "material": ["C30", ""],
        "below_ground": [True, True], "is_space": [False, True], "model_id": ["m", "m"]})
    prims = [Primitive(mesh.positions, mesh.normals, mesh.indices, mesh.feature_ids, fp.count, 0, mat)]
    # a second primitive using the BIM table: one triangle per element
    tri_pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0, 0], [2, 1, 0]], np.float32)
    tri_n = np.tile(np.array([[0, 0, 1]], np.float32), (6, 1))
    prims.append(Primitive(tri_pos, tri_n, np.arange(6), np.array([0, 0, 0, 1, 1, 1]), 2, 1,
                           w.material((1, 1, 1, 0.3), name="s", blend=True),
                           colors=np.full((6, 4), 200, np.uint8)))
    data = w.write(prims, [table, bim])
    path = tmp_path / "t.glb"
    path.write_bytes(data)
    report = validate([path])
    assert report["errors"] == 0, report
    doc, binary = read_glb(data)
    assert doc["extensions"]["EXT_structural_metadata"]["schema"] == SCHEMA
    vals = property_values(doc, binary, 0)
    assert vals["building_id"] == ids and vals["parcel_id"][5] == "地块-3" and vals["floors"][1] == -1
    assert "use" not in vals  # every value empty: an optional property is left out, not an empty bufferView
    b = property_values(doc, binary, 1)
    assert b["is_space"] == [False, True] and b["below_ground"] == [True, True] and b["name"][0] == "外墙"
    fid = accessor_array(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["_FEATURE_ID_0"])
    assert set(np.unique(fid).astype(int)) == set(range(fp.count))


def test_validator_reports_errors(tmp_path):
    """The validator run is not a rubber stamp: a broken glb gets errors and a non-zero status."""
    g, fp, frame, mesh, top = _mesh()
    w = GlbWriter()
    mat = w.material((1, 1, 1, 1), name="b")
    data = bytearray(w.write([Primitive(mesh.positions, mesh.normals, mesh.indices, mesh.feature_ids, fp.count, 0,
                                        mat)], [PropertyTable("building", fp.count, {
                                            "building_id": ["x"] * fp.count, "height_m": np.ones(fp.count),
                                            "base_height_m": np.ones(fp.count), "source": ["s"] * fp.count})]))
    doc, binary = read_glb(bytes(data))
    doc["accessors"][0]["count"] += 10**6  # runs past its bufferView
    from cim_builder.glb import pack_glb

    bad = tmp_path / "bad.glb"
    bad.write_bytes(pack_glb(doc, binary))
    r = subprocess.run(["node", str(VALIDATOR), str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and json.loads(r.stdout)["errors"] > 0


def test_layout_levels_errors_and_tree():
    rng = np.random.default_rng(1)
    x = X0 + rng.uniform(0, 3000, 4000)
    y = Y0 + rng.uniform(0, 2000, 4000)
    sigma = rng.lognormal(3, 0.6, 4000)
    lay = choose_layout(x, y, sigma, max_per_tile=300)
    lev = lay.levels(sigma)
    # bigger buildings never sit deeper than smaller ones
    order = np.argsort(sigma)
    assert (np.diff(lev[order]) <= 0).all()
    # a building at level l < max is at least as big as that level's error
    inner = lev < lay.max_level
    assert (sigma[inner] >= np.array([lay.error(int(l)) for l in lev[inner]]) - 1e-9).all()
    ix, iy = lay.index(x, y, lev)
    leaf = lev == lay.max_level
    _, counts = np.unique(ix[leaf] * 100000 + iy[leaf], return_counts=True)
    assert counts.max() <= 300
    assert [lay.error(l) for l in range(4)] == [lay.size / 8, lay.size / 16, lay.size / 32, lay.size / 64]
    assert lay.contains(x, y) and not lay.contains(np.array([lay.x0 - 1]), np.array([lay.y0]))
    # a tree over two content tiles: regions nest, errors shrink, leaves 0
    tr = Frame.at(114.25, 22.72).transform()
    content = {"3/1/1": {"uri": "a.glb", "region": [1.0, 0.3, 1.1, 0.4, 0, 10], "transform": tr},
               "4/5/4": {"uri": "b.glb", "region": [1.05, 0.35, 1.2, 0.38, -5, 20], "transform": tr}}
    lay2 = Layout(0, 0, 4096, 4)
    doc = tileset_json(build_tree(lay2, content, []))
    root = doc["root"]
    assert root["boundingVolume"]["region"] == [1.0, 0.3, 1.2, 0.4, -5, 20]
    assert doc["asset"]["version"] == "1.1" and root["refine"] == "ADD"

    def walk(t, parent=None):
        if parent is not None:
            assert t["geometricError"] <= parent["geometricError"]
        if not t.get("children"):
            assert t["geometricError"] == 0
        for c in t.get("children", []):
            walk(c, t)

    walk(root)


def test_frame_round_trip():
    f = Frame.at(114.2514, 22.7215, 10.0)
    p = lonlat_to_ecef(np.array([114.2520, 114.25]), np.array([22.7220, 22.72]), np.array([50.0, -3.0]))
    back = gltf_to_ecef(f.gltf(p), f.transform())
    assert np.abs(back - p).max() < 0.005  # float32 positions within a few hundred metres
