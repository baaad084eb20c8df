"""IFC georeferencing faults that must be said, not swallowed (issue 12, items 10 and 11):

* an IfcSite whose placement cannot be read (a grid placement, a placement relative to itself,
  degenerate axes): a warning that names the site and the placement (#id and class), never a
  silent zero offset;
* map conversions whose MapUnit lies about the unit of Eastings / Northings: the real Dutch IFC4
  fault (millimetres under a conversion-based MapUnit named ``METER`` whose factor is 0.3048, a
  foot) is read in the unit (declared factor, metre, millimetre) that lands inside the CRS's
  area of use (pyproj ``CRS.area_of_use``), with a warning naming that unit; no reading inside,
  or several, is refused with a clear message;
* a MapUnit that cannot be converted to metres (an IfcContextDependentUnit) or an IFC2X3
  ePSet_ProjectedCRS MapUnit that is not a unit name: said, not silently read as metres.

Files are made with ``ifcopenshell.api`` (the helpers of test_cim_ifc.py) or taken from the
real samples in shared/samples; positions are checked against pyproj directly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS, Transformer

from tests.unit.test_cim_ifc import SAMPLES, make_ifc, nearest, world_vertices

SEP = -2.6
#: Rotterdam in EPSG:28992 (Amersfoort / RD New), metres.
RD_E, RD_N = 92500.0, 437500.0
RD_H = 3.0  # metres above NAP


def with_map_unit(path: Path, unit: str, *, name: str | None = None) -> Path:
    """Give the file's IfcProjectedCRS a MapUnit: ``foot`` (an IfcConversionBasedUnit of 0.3048
    metre, renamed ``name`` if given, as the faulty exporter did), ``kilometre`` (an IfcSIUnit
    with prefix KILO) or ``context`` (an IfcContextDependentUnit, which has no factor to metres)."""
    import ifcopenshell
    import ifcopenshell.api.attribute
    import ifcopenshell.api.georeference
    import ifcopenshell.api.unit

    f = ifcopenshell.open(str(path))
    if unit == "foot":
        u = ifcopenshell.api.unit.add_conversion_based_unit(f, name="foot")
        assert u.ConversionFactor.ValueComponent.wrappedValue == pytest.approx(0.3048)
    elif unit == "kilometre":
        u = ifcopenshell.api.unit.add_si_unit(f, unit_type="LENGTHUNIT", prefix="KILO")
    elif unit == "context":
        u = ifcopenshell.api.unit.add_context_dependent_unit(f, unit_type="LENGTHUNIT", name="SURVEY ROD")
    else:
        raise AssertionError(unit)
    if name is not None:
        ifcopenshell.api.attribute.edit_attributes(f, product=u, attributes={"Name": name})
    ifcopenshell.api.georeference.edit_georeferencing(f, projected_crs={"MapUnit": u})
    f.write(str(path))
    return path


def expected_ecef(xyz: np.ndarray, crs: str, *, e0, n0, h0, k=1.0, sep=SEP) -> np.ndarray:
    """IfcMapConversion (rotation 0) written out: model metres → ``crs`` → ECEF via pyproj."""
    e = e0 + k * xyz[:, 0]
    n = n0 + k * xyz[:, 1]
    h = h0 + k * xyz[:, 2] + sep
    tr = Transformer.from_crs(CRS(crs).to_3d(), "EPSG:4978", always_xy=True)
    return np.column_stack(tr.transform(e, n, h))


def dutch_file(tmp_path: Path, *, scale: float | None, eastings=RD_E * 1000, northings=RD_N * 1000,
               height=RD_H * 1000, name="METER") -> Path:
    """The fault of a real Dutch IFC4 export: EPSG:28992, a millimetre project, Eastings /
    Northings / OrthogonalHeight in millimetres, MapUnit a conversion-based unit named METER
    whose conversion factor is 0.3048."""
    path = make_ifc(tmp_path / "nl.ifc", eastings=eastings, northings=northings, height=height, rotation_deg=0.0,
                    scale=scale, crs_name="EPSG:28992")
    return with_map_unit(path, "foot", name=name)


# ------------------------------------------------------------------------------------------
# item 11: MapUnit readings


@pytest.mark.parametrize("scale", [None, 0.001], ids=["scale-1", "scale-0.001"])
def test_millimetres_under_a_metre_named_foot_unit_are_read_as_millimetres(tmp_path, scale):
    from cim_builder import ifc

    path = dutch_file(tmp_path, scale=scale)
    f = ifc.open_ifc(path)
    assert f.by_type("IfcProjectedCRS")[0].MapUnit.Name == "METER"
    g = ifc.read_georef(f, path)
    assert g.method == "IfcMapConversion" and g.crs == "EPSG:28992"
    assert g.eastings == pytest.approx(RD_E) and g.northings == pytest.approx(RD_N)
    assert g.height == pytest.approx(RD_H)
    chosen = [w for w in g.warnings if "assumed millimetre" in w]
    assert len(chosen) == 1, g.warnings
    # the warning names the unit the file declared (and its factor) and the unit chosen
    assert "METER" in chosen[0] and "0.3048" in chosen[0] and "EPSG:28992" in chosen[0] and path.name in chosen[0]
    # the model keeps its size (Scale 0.001 besides millimetre eastings is said, and repaired to 1)
    assert g.scale == pytest.approx(1.0) and g.scale_z == pytest.approx(1.0)
    pm = ifc.place(path, "nl", g, SEP, f=f)
    aou = CRS("EPSG:28992").area_of_use
    lon, lat = pm.footprint.centroid.x, pm.footprint.centroid.y
    assert aou.west <= lon <= aou.east and aou.south <= lat <= aou.north
    verts = world_vertices(path)
    for gid, v in verts.items():
        exp = expected_ecef(v, "EPSG:28992", e0=RD_E, n0=RD_N, h0=RD_H)
        got = pm.ecef[pm.elements.element == pm.elements.meta["global_id"].index(gid)]
        assert nearest(exp, got).max() < 0.05 and nearest(got, exp).max() < 0.05


def test_declared_foot_is_kept_when_it_lands_inside(tmp_path):
    """A MapUnit that tells the truth (a foot, values in feet) is read as declared, silently."""
    from cim_builder import ifc

    ft = 0.3048
    path = make_ifc(tmp_path / "ft.ifc", eastings=RD_E / ft, northings=RD_N / ft, height=RD_H / ft,
                    rotation_deg=0.0, scale=0.001 / ft, crs_name="EPSG:28992")
    with_map_unit(path, "foot")
    g = ifc.read_georef(ifc.open_ifc(path), path)
    assert not g.warnings
    assert g.eastings == pytest.approx(RD_E) and g.northings == pytest.approx(RD_N) and g.height == pytest.approx(RD_H)
    assert g.scale == pytest.approx(1.0)


def test_map_coordinates_in_a_crs_measured_in_feet(tmp_path):
    """EPSG:2227 (California zone 3) counts in US survey feet: the file's MapUnit (a foot) turns
    its Eastings / Northings into metres, and those go into the CRS in its own unit."""
    from cim_builder import ifc

    crs = CRS("EPSG:2227")
    us_ft = crs.axis_info[0].unit_conversion_factor
    e_m, n_m, h_m = 6_010_000 * us_ft, 2_110_000 * us_ft, 12.0  # San Francisco, metres
    ft = 0.3048
    path = make_ifc(tmp_path / "sf.ifc", eastings=e_m / ft, northings=n_m / ft, height=h_m / ft, rotation_deg=0.0,
                    scale=0.001 / ft, crs_name="EPSG:2227")
    with_map_unit(path, "foot")
    f = ifc.open_ifc(path)
    g = ifc.read_georef(f, path)
    assert not g.warnings and g.crs == "EPSG:2227"
    assert g.eastings == pytest.approx(e_m) and g.height == pytest.approx(h_m) and g.scale == pytest.approx(1.0)
    pm = ifc.place(path, "sf", g, SEP, f=f)
    v = np.concatenate(list(world_vertices(path).values()))
    tr = Transformer.from_crs(crs.to_3d(), "EPSG:4978", always_xy=True)
    exp = np.column_stack(tr.transform((e_m + v[:, 0]) / us_ft, (n_m + v[:, 1]) / us_ft, h_m + v[:, 2] + SEP))
    assert nearest(exp, pm.ecef).max() < 0.05 and nearest(pm.ecef, exp).max() < 0.05
    # the model keeps its size in metres (not feet): its longest extent as in the model
    def extent(p):
        return np.linalg.norm(p[:, None, :] - p[None, :, :], axis=2).max()

    assert extent(v) > 20.0 and abs(extent(pm.ecef) - extent(v)) < 0.05


def test_scale_that_leaves_a_foot_unconverted_is_said(tmp_path):
    """A metre project, a true foot MapUnit, but Scale 1 (should be 3.28): the model would come
    out at 0.3048 of its size; said, and the unit conversion alone used."""
    from cim_builder import ifc

    ft = 0.3048
    path = make_ifc(tmp_path / "ft1.ifc", eastings=RD_E / ft, northings=RD_N / ft, height=RD_H / ft,
                    rotation_deg=0.0, scale=None, crs_name="EPSG:28992", millimetre_project=False)
    with_map_unit(path, "foot")
    g = ifc.read_georef(ifc.open_ifc(path), path)
    said = [w for w in g.warnings if "times its size" in w]
    assert len(said) == 1 and "0.3048" in said[0] and path.name in said[0], g.warnings
    assert g.scale == pytest.approx(1.0) and g.eastings == pytest.approx(RD_E)


def test_no_reading_inside_the_area_of_use_is_refused(tmp_path):
    """Longgang's millimetre coordinates under EPSG:28992: as feet, metres or millimetres they
    are nowhere near the Netherlands."""
    from cim_builder import ifc
    from cim_builder.geo import CimError

    path = dutch_file(tmp_path, scale=None, eastings=525823.9e3, northings=2513719.0e3)
    with pytest.raises(CimError) as exc:
        ifc.read_georef(ifc.open_ifc(path), path)
    msg = str(exc.value)
    assert "outside that CRS's area of use" in msg and str(path) in msg and "EPSG:28992" in msg
    assert "METER" in msg and "metre" in msg and "millimetre" in msg and "--at" in msg


def test_several_readings_inside_are_refused_not_guessed(tmp_path):
    """Web Mercator covers the world: a declared kilometre that lands outside leaves metres and
    millimetres both inside, and nothing says which one the author meant."""
    from cim_builder import ifc
    from cim_builder.geo import CimError

    path = make_ifc(tmp_path / "km.ifc", eastings=12_700_000.0, northings=2_600_000.0, height=0.0,
                    rotation_deg=0.0, scale=0.001, crs_name="EPSG:3857")
    with_map_unit(path, "kilometre")
    with pytest.raises(CimError) as exc:
        ifc.read_georef(ifc.open_ifc(path), path)
    msg = str(exc.value)
    assert str(path) in msg and "metre" in msg and "millimetre" in msg and "--at" in msg


def test_map_unit_without_a_factor_to_metres_is_said(tmp_path):
    """An IfcContextDependentUnit has no conversion to metres: said (naming the unit), and the
    metre reading used only because it lands inside the CRS's area of use."""
    from cim_builder import ifc

    path = make_ifc(tmp_path / "ctx.ifc", rotation_deg=0.0, scale=0.001)  # EPSG:4547 metres
    with_map_unit(path, "context")
    f = ifc.open_ifc(path)
    unit = f.by_type("IfcProjectedCRS")[0].MapUnit
    g = ifc.read_georef(f, path)
    said = [w for w in g.warnings if f"#{unit.id()}" in w and "IfcContextDependentUnit" in w]
    assert said and "SURVEY ROD" in said[0] and "metre" in said[0], g.warnings
    assert g.eastings == pytest.approx(525823.9) and g.scale == pytest.approx(1.0)


def test_ifc2x3_map_unit_that_is_not_a_unit_is_said(tmp_path, monkeypatch):
    import ifcopenshell
    import ifcopenshell.api.owner.settings as owner
    import ifcopenshell.api.pset

    from cim_builder import ifc

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    monkeypatch.setattr(owner, "get_user", lambda f: f.by_type("IfcPersonAndOrganization")[0])
    monkeypatch.setattr(owner, "get_application", lambda f: f.by_type("IfcApplication")[0])
    project = f.by_type("IfcProject")[0]
    mc = ifcopenshell.api.pset.add_pset(f, product=project, name="ePSet_MapConversion")
    ifcopenshell.api.pset.edit_pset(f, pset=mc, properties={"Eastings": RD_E, "Northings": RD_N,
                                                            "OrthogonalHeight": RD_H, "Scale": 1.0})
    crs = ifcopenshell.api.pset.add_pset(f, product=project, name="ePSet_ProjectedCRS")
    ifcopenshell.api.pset.edit_pset(f, pset=crs, properties={"Name": "EPSG:28992", "MapUnit": "Rijksdriehoek"})
    path = tmp_path / "duplex_nl.ifc"
    f.write(str(path))
    g = ifc.read_georef(ifc.open_ifc(path), path)
    said = [w for w in g.warnings if "MapUnit" in w and "Rijksdriehoek" in w]
    assert said and "metre" in said[0], g.warnings
    assert g.eastings == pytest.approx(RD_E) and g.crs == "EPSG:28992"


# ------------------------------------------------------------------------------------------
# item 10: the IfcSite placement


def _duplex(tmp_path: Path, fault: str) -> tuple[Path, int, int]:
    """The duplex sample (IfcSite RefLatitude / RefLongitude, no map conversion) with its site's
    placement broken as ``fault`` says. Returns the path, the site's id and the placement's id."""
    import ifcopenshell

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    site = f.by_type("IfcSite")[0]
    if fault == "grid":  # placed at a grid intersection: a valid IFC placement the reader cannot follow
        ax1 = f.createIfcGridAxis("A", f.createIfcPolyline([f.createIfcCartesianPoint((0.0, 0.0)),
                                                            f.createIfcCartesianPoint((30.0, 0.0))]), True)
        ax2 = f.createIfcGridAxis("1", f.createIfcPolyline([f.createIfcCartesianPoint((12.0, -5.0)),
                                                            f.createIfcCartesianPoint((12.0, 25.0))]), True)
        site.ObjectPlacement = f.createIfcGridPlacement(f.createIfcVirtualGridIntersection([ax1, ax2], (0.0, 0.0, 0.0)),
                                                        None)
    elif fault == "cycle":  # placed relative to itself
        site.ObjectPlacement.PlacementRelTo = site.ObjectPlacement
    elif fault == "degenerate":  # Axis parallel to RefDirection: no frame, but a location
        rp = site.ObjectPlacement.RelativePlacement
        rp.Location = f.createIfcCartesianPoint((40.0, 25.0, 0.0))
        rp.Axis = f.createIfcDirection((1.0, 0.0, 0.0))
        rp.RefDirection = f.createIfcDirection((1.0, 0.0, 0.0))
    elif fault == "degenerate-parent":  # relative to a placement without a frame: no location either
        x = f.createIfcDirection((1.0, 0.0, 0.0))
        parent = f.createIfcLocalPlacement(None, f.createIfcAxis2Placement3D(
            f.createIfcCartesianPoint((5.0, 5.0, 0.0)), x, x))
        site.ObjectPlacement.PlacementRelTo = parent
        site.ObjectPlacement.RelativePlacement.Location = f.createIfcCartesianPoint((40.0, 25.0, 0.0))
    elif fault == "offset":  # healthy, away from the model's origin
        site.ObjectPlacement.RelativePlacement.Location = f.createIfcCartesianPoint((40.0, 25.0, 1.5))
    else:
        raise AssertionError(fault)
    path = tmp_path / f"duplex_{fault}.ifc"
    f.write(str(path))
    return path, site.id(), site.ObjectPlacement.id()


@pytest.mark.parametrize("fault, offset", [("grid", (0.0, 0.0, 0.0)), ("cycle", (0.0, 0.0, 0.0)),
                                           ("degenerate", (40.0, 25.0, 0.0)),
                                           ("degenerate-parent", (0.0, 0.0, 0.0))])
def test_unreadable_site_placement_is_reported(tmp_path, fault, offset):
    from cim_builder import ifc

    path, site_id, placement_id = _duplex(tmp_path, fault)
    f = ifc.open_ifc(path)
    placement = f.by_id(placement_id)
    g = ifc.read_georef(f, path)
    assert g.method == "IfcSite"
    said = [w for w in g.warnings if f"#{site_id} IfcSite" in w]
    assert len(said) == 1, g.warnings
    assert f"#{placement_id} {placement.is_a()}" in said[0] and path.name in said[0] and "--at" in said[0]
    assert "assumed" in said[0]
    assert g.origin_offset == pytest.approx(offset) and all(math.isfinite(v) for v in g.origin_offset)


def test_readable_site_placement_offset_is_used_silently(tmp_path):
    from cim_builder import ifc

    path, site_id, _ = _duplex(tmp_path, "offset")
    g = ifc.read_georef(ifc.open_ifc(path), path)
    assert g.origin_offset == pytest.approx((40.0, 25.0, 1.5))
    assert not [w for w in g.warnings if f"#{site_id}" in w]
    # the site's origin, not the model's, lands on RefLatitude / RefLongitude
    origin = g.to_ecef(np.array([[40.0, 25.0, 1.5]]), 0.0)
    from cim_builder.geo import lonlat_to_ecef

    assert np.abs(origin - lonlat_to_ecef(g.lon, g.lat, g.height)).max() < 1e-6


def test_true_north_without_direction_is_said(tmp_path):
    import ifcopenshell

    from cim_builder import ifc

    f = ifcopenshell.open(str(SAMPLES / "duplex.ifc"))
    ctx = next(c for c in f.by_type("IfcGeometricRepresentationContext")
               if not c.is_a("IfcGeometricRepresentationSubContext"))
    ctx.TrueNorth = f.createIfcDirection((0.0, 0.0))
    path = tmp_path / "duplex_north.ifc"
    f.write(str(path))
    g = ifc.read_georef(ifc.open_ifc(path), path)
    said = [w for w in g.warnings if "TrueNorth" in w]
    assert said and f"#{ctx.id()}" in said[0] and path.name in said[0], g.warnings
    assert math.isfinite(g.rotation_deg) and g.rotation_deg == 0.0
