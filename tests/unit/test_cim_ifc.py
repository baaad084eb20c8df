"""IFC reading and georeferencing (no database): IFC files made with ifcopenshell.api, each with
an IfcMapConversion in EPSG:4547 at Longgang; positions checked against pyproj directly, the
real-world faults (millimetre eastings, no IfcProjectedCRS, a unit-mix-up Scale), and the IFC4X2
sample that must fail with a clear message."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS, Transformer

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
if not SAMPLES.exists():  # CI: a copy of shared/ beside the clone
    SAMPLES = Path("/work/shared/samples")

#: Longgang's centre in EPSG:4547 (domain.md §4).
E0, N0 = 525823.9, 2513719.0


def make_ifc(path: Path, *, eastings: float = E0, northings: float = N0, height: float = 42.0,
             rotation_deg: float = 30.0, scale: float | None = 0.001, crs_name: str = "EPSG:4547",
             millimetre_project: bool = True, version: str = "IFC4") -> Path:
    """A two-storey IFC: storey "B1" (elevation -3 m) with a basement slab, storey "1F" with two
    walls and a slab; georeferenced by IfcMapConversion (values as given, in the map unit)."""
    import ifcopenshell.api as api
    import ifcopenshell.api.geometry
    import ifcopenshell.api.material
    import ifcopenshell.api.root
    import ifcopenshell.api.spatial

    from tests.fixtures.ifc import georeference, new_model

    u = 1000.0 if millimetre_project else 1.0
    ifc = new_model("龙岗测试项目", "A栋", {"B1": -3.0 * u, "1F": 0.0}, version=version,
                    unit_name="MILLIMETERS" if millimetre_project else "METERS")
    f, body, b1, g1 = ifc.file, ifc.body, ifc.storeys["B1"], ifc.storeys["1F"]

    def place(product, x, y, z, angle=0.0):
        m = np.eye(4)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        m[:2, :2] = [[c, -s], [s, c]]
        m[:3, 3] = [x, y, z]
        api.geometry.edit_object_placement(f, product=product, matrix=m, is_si=True)

    wall1 = api.root.create_entity(f, ifc_class="IfcWall", name="外墙-南")
    api.geometry.assign_representation(f, product=wall1, representation=api.geometry.add_wall_representation(
        f, context=body, length=20.0, height=3.0, thickness=0.3))
    place(wall1, 0.0, 0.0, 0.0)
    wall2 = api.root.create_entity(f, ifc_class="IfcWall", name="外墙-西")
    api.geometry.assign_representation(f, product=wall2, representation=api.geometry.add_wall_representation(
        f, context=body, length=12.0, height=3.0, thickness=0.3))
    place(wall2, 0.0, 0.0, 0.0, angle=90.0)
    slab = api.root.create_entity(f, ifc_class="IfcSlab", name="首层楼板")
    api.geometry.assign_representation(f, product=slab, representation=api.geometry.add_slab_representation(
        f, context=body, depth=0.2, polyline=[(0.0, 0.0), (20.0, 0.0), (20.0, 12.0), (0.0, 12.0)]))
    place(slab, 0.0, 0.0, 0.0)
    base = api.root.create_entity(f, ifc_class="IfcSlab", name="地下室底板")
    api.geometry.assign_representation(f, product=base, representation=api.geometry.add_slab_representation(
        f, context=body, depth=0.4, polyline=[(0.0, 0.0), (20.0, 0.0), (20.0, 12.0), (0.0, 12.0)]))
    place(base, 0.0, 0.0, -3.4)
    concrete = api.material.add_material(f, name="C30混凝土")
    for el in (wall1, wall2, slab, base):
        api.material.assign_material(f, products=[el], material=concrete)
    api.spatial.assign_container(f, products=[wall1, wall2, slab], relating_structure=g1)
    api.spatial.assign_container(f, products=[base], relating_structure=b1)

    op = {"Eastings": eastings, "Northings": northings, "OrthogonalHeight": height,
          "XAxisAbscissa": math.cos(math.radians(rotation_deg)), "XAxisOrdinate": math.sin(math.radians(rotation_deg))}
    if scale is not None:
        op["Scale"] = scale
    georeference(ifc, crs_name, op)
    return ifc.write(path)


def world_vertices(path: Path, classes: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Elements' vertices in model world metres, by GlobalId, as IfcOpenShell meshes them (the
    same kernel the builder uses: the test is about placement, not tessellation)."""
    import ifcopenshell
    import ifcopenshell.geom

    f = ifcopenshell.open(str(path))
    s = ifcopenshell.geom.settings()
    s.set("use-world-coords", True)
    out = {}
    include = [e for c in classes for e in f.by_type(c)] if classes else None
    it = ifcopenshell.geom.iterator(s, f, 1, include=include, geometry_library="hybrid-cgal-simple-opencascade")
    assert it.initialize()
    while True:
        sh = it.get()
        out[sh.guid] = np.frombuffer(sh.geometry.verts_buffer, np.float64).reshape(-1, 3).copy()
        if not it.next():
            break
    return out


def expected_ecef(xyz: np.ndarray, *, e0, n0, h0, rotation_deg, k, sep) -> np.ndarray:
    """IfcMapConversion written out (model metres → EPSG:4547 → ECEF via pyproj)."""
    t = math.radians(rotation_deg)
    e = e0 + k * (xyz[:, 0] * math.cos(t) - xyz[:, 1] * math.sin(t))
    n = n0 + k * (xyz[:, 0] * math.sin(t) + xyz[:, 1] * math.cos(t))
    h = h0 + k * xyz[:, 2] + sep
    tr = Transformer.from_crs(CRS("EPSG:4547").to_3d(), "EPSG:4978", always_xy=True)
    return np.column_stack(tr.transform(e, n, h))


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each point of a, the distance to the nearest point of b (brute force, small sets)."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return d.min(axis=1)


SEP = -2.6


def test_map_conversion_rotated_and_scaled_lands_within_5cm(tmp_path):
    from cim_builder import ifc

    k = 0.9996  # a grid scale factor on top of the millimetre → metre conversion
    path = make_ifc(tmp_path / "lg.ifc", scale=0.001 * k, rotation_deg=30.0, height=42.0)
    f = ifc.open_ifc(path)
    g = ifc.read_georef(f, path)
    assert g.method == "IfcMapConversion" and g.crs == "EPSG:4547" and not g.warnings
    assert g.rotation_deg == pytest.approx(30.0) and g.scale == pytest.approx(k)
    pm = ifc.place(path, "lg", g, SEP, f=f)
    verts = world_vertices(path)
    assert len(verts) == 4 == pm.elements.count
    for gid, v in verts.items():
        exp = expected_ecef(v, e0=E0, n0=N0, h0=42.0, rotation_deg=30.0, k=k, sep=SEP)
        got = pm.ecef[pm.elements.element == pm.elements.meta["global_id"].index(gid)]
        assert nearest(exp, got).max() < 0.05 and nearest(got, exp).max() < 0.05
    # metadata: storey, material, below ground
    m = pm.elements.meta
    byname = {n: i for i, n in enumerate(m["name"])}
    assert m["storey"][byname["地下室底板"]] == "B1" and m["below_ground"][byname["地下室底板"]] is True
    assert m["storey_elevation_m"][byname["地下室底板"]] == pytest.approx(-3.0)
    assert m["below_ground"][byname["外墙-南"]] is False and m["storey"][byname["外墙-南"]] == "1F"
    assert m["material"][byname["外墙-南"]] == "C30混凝土" and m["ifc_class"][byname["首层楼板"]] == "IfcSlab"


def test_millimetre_eastings_are_repaired_with_a_warning(tmp_path):
    from cim_builder import ifc

    # MapUnit metre (the CRS's), but eastings / northings / height written in millimetres
    path = make_ifc(tmp_path / "mm.ifc", eastings=E0 * 1000, northings=N0 * 1000, height=42000.0,
                    rotation_deg=0.0, scale=0.001)
    f = ifc.open_ifc(path)
    g = ifc.read_georef(f, path)
    assert any("assumed millimetres" in w for w in g.warnings)
    assert g.eastings == pytest.approx(E0) and g.northings == pytest.approx(N0) and g.height == pytest.approx(42.0)
    pm = ifc.place(path, "mm", g, SEP, f=f)
    v = world_vertices(path)
    allv = np.concatenate(list(v.values()))
    exp = expected_ecef(allv, e0=E0, n0=N0, h0=42.0, rotation_deg=0.0, k=1.0, sep=SEP)
    assert nearest(exp[:50], pm.ecef).max() < 0.05


def test_unit_mixup_scale_and_missing_projected_crs(tmp_path):
    from cim_builder import ifc
    from cim_builder.geo import CimError

    # Scale 1 with a millimetre project would make the model 1000x too big
    path = make_ifc(tmp_path / "s.ifc", scale=None, rotation_deg=10.0)
    f = ifc.open_ifc(path)
    g = ifc.read_georef(f, path)
    assert any("times its size" in w for w in g.warnings) and g.scale == 1.0
    # a CRS name PROJ does not know → EPSG:4547 assumed, said so; --crs picks another
    path2 = make_ifc(tmp_path / "nocrs.ifc", crs_name="LOCAL-GRID-深圳", scale=0.001)
    f2 = ifc.open_ifc(path2)
    g2 = ifc.read_georef(f2, path2)
    assert g2.crs == "EPSG:4547" and any("assumed EPSG:4547" in w for w in g2.warnings)
    local = "+proj=tmerc +lat_0=0 +lon_0=114.1 +k=1 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    g3 = ifc.read_georef(f2, path2, crs=local)
    assert g3.crs == local and not any("assumed EPSG:4547" in w for w in g3.warnings)
    # a CRS whose area of use does not hold the model: a clear error
    with pytest.raises(CimError, match="outside that CRS's area of use"):
        ifc.read_georef(f2, path2, crs="EPSG:4526")
    with pytest.raises(CimError, match="--crs 'EPSG:99999'"):
        ifc.read_georef(f2, path2, crs="EPSG:99999")


def test_site_fallback_and_command_line(tmp_path):
    from cim_builder import ifc
    from cim_builder.geo import CimError

    path = SAMPLES / "duplex.ifc"
    f = ifc.open_ifc(path)
    g = ifc.read_georef(f, path)
    assert g.method == "IfcSite" and any("IfcSite RefLatitude" in w for w in g.warnings)
    assert g.lat == pytest.approx(41 + 52 / 60 + 27.84 / 3600, abs=1e-6) and g.lon < -87
    g2 = ifc.read_georef(f, path, at=(114.25, 22.72, 30.0), rotation=15.0)
    assert g2.method == "command line" and g2.lon == 114.25 and g2.height == 30.0 and g2.rotation_deg == 15.0
    house = SAMPLES / "IfcOpenHouse_IFC4.ifc"
    with pytest.raises(CimError, match="pass --at"):
        ifc.read_georef(ifc.open_ifc(house), house)


def test_ifc4x2_sample_fails_cleanly():
    from cim_builder import ifc
    from cim_builder.geo import CimError

    path = SAMPLES / "ifcbridge-model03_georeferenced.ifc"
    with pytest.raises(CimError) as exc:
        ifc.open_ifc(path)
    msg = str(exc.value)
    assert "IFC4X2" in msg and "IFC2X3, IFC4, IFC4X3" in msg and path.name in msg


def test_not_an_ifc_file(tmp_path):
    from cim_builder import ifc
    from cim_builder.geo import CimError

    p = tmp_path / "x.ifc"
    p.write_text("hello")
    with pytest.raises(CimError, match="not an IFC-SPF file"):
        ifc.open_ifc(p)
    with pytest.raises(CimError, match="no such file"):
        ifc.open_ifc(tmp_path / "missing.ifc")


def test_ifc2x3_epset_map_conversion(tmp_path, monkeypatch):
    """IFC2X3 has no IfcMapConversion: the buildingSMART ePSet_MapConversion / ePSet_ProjectedCRS
    property sets on the project carry it (here added to the duplex sample)."""
    import ifcopenshell
    import ifcopenshell.api.owner.settings as owner
    import ifcopenshell.api.pset

    from cim_builder import ifc

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    monkeypatch.setattr(owner, "get_user", lambda f: f.by_type("IfcPersonAndOrganization")[0])
    monkeypatch.setattr(owner, "get_application", lambda f: f.by_type("IfcApplication")[0])
    project = f.by_type("IfcProject")[0]
    mc = ifcopenshell.api.pset.add_pset(f, product=project, name="ePSet_MapConversion")
    ifcopenshell.api.pset.edit_pset(f, pset=mc, properties={
        "Eastings": E0, "Northings": N0, "OrthogonalHeight": 12.0, "XAxisAbscissa": math.cos(math.radians(30)),
        "XAxisOrdinate": math.sin(math.radians(30)), "Scale": 1.0})
    crs = ifcopenshell.api.pset.add_pset(f, product=project, name="ePSet_ProjectedCRS")
    ifcopenshell.api.pset.edit_pset(f, pset=crs, properties={"Name": "EPSG:4547"})
    path = tmp_path / "duplex_epset.ifc"
    f.write(str(path))
    g = ifc.read_georef(ifc.open_ifc(path), path)
    assert g.method == "ePSet_MapConversion" and g.crs == "EPSG:4547" and not g.warnings
    assert g.rotation_deg == pytest.approx(30.0, abs=1e-5) and g.height == 12.0
    pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 3.0], [0.0, 10.0, 6.0]])
    exp = expected_ecef(pts, e0=E0, n0=N0, h0=12.0, rotation_deg=30.0, k=1.0, sep=SEP)
    assert np.abs(g.to_ecef(pts, SEP) - exp).max() < 0.01
