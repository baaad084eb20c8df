"""The underground meshes (cim_builder.pipes) without a database: cylinders, boxes and shafts
have the right size and place, outward normals agreeing with their triangles' winding, and
closed surfaces; type colours; metadata written to a glb and read back."""

from __future__ import annotations

import numpy as np
import pytest

from cim_builder import pipes
from cim_builder.glb import (
    GlbWriter,
    Primitive,
    PropertyTable,
    accessor_array,
    property_values,
    read_glb,
)

UP = np.array([0.0, 0.0, 1.0])


def _axes():
    a = np.array([[0.0, 0.0, -1.5], [10.0, 5.0, -2.0], [0.0, 0.0, 0.0], [3.0, 3.0, -1.0]])
    b = np.array([[40.0, 0.0, -1.9], [10.0, 45.0, -2.6], [-20.0, -30.0, 0.5], [3.0, 3.0, -4.0]])  # last vertical
    return a, b


def _triangle_normals(mesh: pipes.Mesh) -> np.ndarray:
    t = mesh.indices.reshape(-1, 3)
    p = mesh.positions
    return np.cross(p[t[:, 1]] - p[t[:, 0]], p[t[:, 2]] - p[t[:, 0]])


def _closed(mesh: pipes.Mesh) -> bool:
    """Every edge (vertices welded by position) is shared by exactly two triangles, in opposite directions."""
    key = np.round(mesh.positions, 6)
    _, weld = np.unique(key, axis=0, return_inverse=True)
    t = weld.reshape(-1)[mesh.indices].reshape(-1, 3)
    edges = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    fwd = {tuple(e) for e in edges.tolist()}
    return len(fwd) == len(edges) and all((b, a) in fwd for a, b in fwd)


def test_cylinders_radius_axis_and_winding():
    a, b = _axes()
    r = np.array([0.15, 0.5, 0.1, 0.7])
    mesh = pipes.cylinders(a, b, r, np.tile(UP, (4, 1)))
    per = len(mesh.positions) // 4
    # two rings of 12; the caps are fans over the rings' vertices
    assert per == 2 * pipes.SIDES and len(mesh.indices) // 3 == 4 * (2 * pipes.SIDES + 2 * (pipes.SIDES - 2))
    for i in range(4):
        p = mesh.positions[mesh.owner == i]
        d = (b[i] - a[i]) / np.linalg.norm(b[i] - a[i])
        rel = p - a[i]
        along = rel @ d
        radial = rel - np.outer(along, d)
        assert np.allclose(np.linalg.norm(radial, axis=1), r[i])  # every vertex on the surface
        assert np.allclose(np.sort(np.unique(np.round(along, 6))), [0, np.linalg.norm(b[i] - a[i])])
        # the ring centred on the axis
        assert np.allclose(p[np.isclose(along, 0)].mean(axis=0), a[i], atol=1e-9)
    # normals unit length and agreeing with the triangles' winding (outward)
    assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1.0)
    tn = _triangle_normals(mesh)
    t = mesh.indices.reshape(-1, 3)
    side = np.arange(len(t)) % (2 * pipes.SIDES + 2 * (pipes.SIDES - 2)) < 2 * pipes.SIDES
    assert (np.einsum("ij,ij->i", tn[side], mesh.normals[t[side]].mean(axis=1)) > 0).all()
    centre = (a + b)[mesh.owner[t[:, 0]]] / 2
    outward = mesh.positions[t].mean(axis=1) - centre
    assert (np.einsum("ij,ij->i", tn, outward) > 0).all()
    assert _closed(pipes.Mesh(mesh.positions[:per], mesh.normals[:per], mesh.indices[mesh.indices < per],
                              mesh.owner[:per]))


def test_boxes_keep_vertical_sides():
    a = np.array([[0.0, 0.0, -2.0]])
    b = np.array([[50.0, 20.0, -2.8]])  # a culvert falling 1.5 %
    mesh = pipes.boxes(a, b, np.array([1.2]), np.array([0.8]), UP[None, :])
    p = mesh.positions
    # at each end: 4 corners, at exactly ±H/2 in height and ±W/2 across the axis horizontally
    for end in (a[0], b[0]):
        corners = np.unique(np.round(p[np.linalg.norm(p[:, :2] - end[:2], axis=1) < 1.0], 9), axis=0)
        assert len(corners) == 4
        assert np.allclose(np.sort(corners[:, 2] - end[2]), [-0.4, -0.4, 0.4, 0.4])
        across = np.array([-(b - a)[0, 1], (b - a)[0, 0]]) / np.linalg.norm((b - a)[0, :2])
        assert np.allclose(np.sort(np.abs((corners[:, :2] - end[:2]) @ across)), [0.6] * 4)
    tn = _triangle_normals(mesh)
    t = mesh.indices.reshape(-1, 3)
    assert (np.einsum("ij,ij->i", tn, mesh.normals[t].mean(axis=1)) > 0).all()
    outward = p[t].mean(axis=1) - (a[0] + b[0]) / 2
    assert (np.einsum("ij,ij->i", tn, outward) > 0).all()
    assert _closed(mesh)
    # side faces: 4 vertical-sided faces: two normals horizontal, two (top / bottom) ⊥ the sloping axis
    side = mesh.normals[: 16]
    assert np.isclose(np.abs(side[:, 2]), 0, atol=1e-12).sum() == 8


def test_shafts_and_their_radius():
    top = np.array([[0.0, 0.0, 20.0], [5.0, 5.0, 21.0]])
    bottom = np.array([[0.0, 0.0, 18.0], [5.0, 5.0, 16.5]])
    radius = pipes.shaft_radius(top[:, 2] - bottom[:, 2])
    assert radius.tolist() == [0.5, 0.7]
    mesh = pipes.shafts(top, bottom, radius, np.tile(UP, (2, 1)))
    for i in range(2):
        p = mesh.positions[mesh.owner == i]
        assert p[:, 2].min() == pytest.approx(bottom[i, 2]) and p[:, 2].max() == pytest.approx(top[i, 2])
        assert np.allclose(np.hypot(p[:, 0] - top[i, 0], p[:, 1] - top[i, 1]), radius[i])
    tn = _triangle_normals(mesh)
    t = mesh.indices.reshape(-1, 3)
    outward = mesh.positions[t].mean(axis=1) - ((top + bottom) / 2)[mesh.owner[t[:, 0]]]
    assert (np.einsum("ij,ij->i", tn, outward) > 0).all()  # sides and both caps face out
    assert _closed(mesh)


def test_type_colours():
    c = pipes.type_colours(np.array(["JS", "RQ", "WS", None, "XX"], dtype=object))
    assert c.tolist() == [[0x1f, 0x5f, 0xd6, 255], [0xd6, 0x3a, 0xd6, 255], [0x6b, 0x3e, 0x1f, 255],
                          [0x80, 0x80, 0x80, 255], [0x80, 0x80, 0x80, 255]]


def test_glb_with_the_underground_schema_round_trips():
    a, b = _axes()
    mesh = pipes.cylinders(a, b, np.full(4, 0.2), np.tile(UP, (4, 1)))
    writer = GlbWriter(pipes.SCHEMA)
    mat = writer.material((1, 1, 1, 1), name="pipes")
    columns, offsets = pipes.one_table([("pipe_segment", 4, {
        "id": ["JS-1", "JS-2", "YS-3", "DL-4"], "type": ["给水", "给水", "雨水", "电力"],
        "type_code": ["JS", "JS", "YS", "DL"], "diameter_mm": np.full(4, 400.0), "width_mm": np.full(4, 400.0),
        "height_mm": np.full(4, 400.0), "material": ["PE", "", "砼", "PVC"],
        "start_axis_z": a[:, 2], "end_axis_z": b[:, 2], "entity": [""] * 4})])
    assert offsets == [0]
    table = PropertyTable(pipes.CLASS, 4, columns)
    colours = pipes.type_colours(np.array(table.columns["type_code"], dtype=object))[mesh.owner]
    glb = writer.write([Primitive(pipes.to_gltf(mesh.positions), pipes.to_gltf(mesh.normals), mesh.indices,
                                  mesh.owner, 4, 0, mat, colours)], [table])
    doc, binary = read_glb(glb)
    meta = doc["extensions"]["EXT_structural_metadata"]
    assert meta["schema"]["id"] == "geotwin_underground" and "entity" not in meta["propertyTables"][0]["properties"]
    values = property_values(doc, binary, 0)
    assert values["id"] == ["JS-1", "JS-2", "YS-3", "DL-4"] and values["type"][2] == "雨水"
    assert values["start_axis_z"] == pytest.approx(a[:, 2].tolist())
    assert values["kind"] == ["pipe_segment"] * 4 and "ground_z" in values  # not a manhole's: noData
    assert values["ground_z"] == pytest.approx([pipes.NO_Z] * 4)
    pos = accessor_array(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    assert np.allclose(pos[:, 1], pipes.to_gltf(mesh.positions)[:, 1])  # glTF y is up


def test_undrawable_segments_are_named():
    """prepare_pipes leaves out what it cannot draw and names it; a bent line's axis is
    interpolated along its length."""
    import shapely

    from cim_builder.underground import prepare_pipes

    lines = [shapely.LineString([(114.25, 22.72), (114.2504, 22.72)]),
             shapely.MultiLineString([[(114.25, 22.72), (114.2504, 22.72)], [(114.251, 22.72), (114.2512, 22.72)]]),
             shapely.LineString([(114.25, 22.72), (114.2504, 22.72)]),
             shapely.LineString([(114.25, 22.72), (114.2504, 22.72)]),
             shapely.MultiLineString([[(114.25, 22.72), (114.2502, 22.72), (114.2502, 22.7202)]])]
    n = len(lines)
    raw = {"fid": np.array(["JS-ok", "JS-multi", "JS-noz", "JS-nosize", "JS-bent"], dtype=object),
           "vid": np.arange(n), "geom": np.array(shapely.to_wkb(lines), dtype=object),
           "type": np.array(["给水"] * n, dtype=object), "type_code": np.array(["JS"] * n, dtype=object),
           "material": np.array([None] * n, dtype=object), "entity": np.array([None] * n, dtype=object),
           "diameter_mm": np.array([300, 300, 300, np.nan, 200.0]), "width_mm": np.full(n, np.nan),
           "height_mm": np.full(n, np.nan), "start_axis_z": np.array([10, 10, np.nan, 10, 10.0]),
           "end_axis_z": np.array([9, 9, 9, 9, 8.0])}
    warnings: list[str] = []
    p = prepare_pipes(raw, -2.6, warnings)
    assert p.raw["fid"].tolist() == ["JS-ok", "JS-bent"]
    text = " | ".join(warnings)
    assert "JS-multi" in text and "JS-noz" in text and "JS-nosize" in text and len(warnings) == 3
    assert p.poff.tolist() == [0, 1, 3]  # the bent line: two pieces
    # its middle vertex: half way along (both legs ~20.5 m / 22 m): interpolated, not averaged
    from cim_builder.geo import ecef_to_lonlat

    h = ecef_to_lonlat(p.b_ecef[1:2])[0, 2] + 2.6
    leg1 = 0.0002 * 111320 * np.cos(np.radians(22.72))
    leg2 = 0.0002 * 110570
    assert h == pytest.approx(10 - 2 * leg1 / (leg1 + leg2), abs=0.01)


def test_one_table_puts_the_kinds_one_after_another():
    """CesiumJS reads one property table per glb: pipes, manholes and structures share it."""
    columns, offsets = pipes.one_table([
        ("pipe_segment", 2, {"id": ["JS-1", "JS-2"], "type": ["给水", "给水"], "diameter_mm": np.array([300.0, 200.0]),
                             "start_axis_z": np.array([10.0, 9.5]), "end_axis_z": np.array([9.5, 9.0])}),
        ("manhole", 1, {"id": ["JS-J1"], "type": ["给水"], "ground_z": np.array([12.0]), "bottom_z": np.array([9.0])}),
        ("underground_structure", 1, {"id": ["B1"], "basement_id": ["B1"], "levels": np.array([2], np.int16),
                                      "depth_m": np.array([8.0])})])
    assert offsets == [0, 2, 3]
    assert columns["kind"] == ["pipe_segment", "pipe_segment", "manhole", "underground_structure"]
    assert columns["id"] == ["JS-1", "JS-2", "JS-J1", "B1"] and columns["basement_id"] == ["", "", "", "B1"]
    assert columns["bottom_z"].tolist() == [pipes.NO_Z, pipes.NO_Z, 9.0, pipes.NO_Z]
    assert columns["diameter_mm"].tolist() == [300.0, 200.0, -1.0, -1.0] and columns["levels"].tolist() == [-1, -1, -1, 2]
