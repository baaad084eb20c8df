"""Fixtures of the twin viewer's end-to-end test (``test_twin.py``), on top of ``conftest.py``'s
``e2e_district`` (the small demo district loaded, with its imagery epochs and DEM) and
``e2e_server``:

- ``twin_tileset``: the district's twin built by the CIM builder (``cim_builder.build.build``,
  what ``geotwin cim build`` runs) from the buildings layer and the demo DEM, registered as
  tileset ``twin`` (served at ``/twin/tilesets/twin/tileset.json``), as of ``AS_OF``;
- ``open_ground``: a spot at least 70 m from any building, where the duplex IFC sample is placed
  (``cim_builder.ifc.register``, what ``geotwin cim add-ifc --at`` runs) before the build;
- ``known_building``: the tallest building on a parcel (lon/lat of a point inside its footprint,
  height, ids) — the one the test clicks;
- ``known_place``: a place name the geocoder finds (lon/lat, name).
"""

from __future__ import annotations

from pathlib import Path

import pytest

AS_OF = "2026-07-01"  # after the buildings' first valid date (2026-06-30)
BEFORE_TWIN = "2026-06-01"  # a date with imagery but no twin yet


SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
if not SAMPLES.exists():  # CI: a copy of shared/ beside the clone
    SAMPLES = Path("/work/shared/samples")
BIM_MODEL = "e2e-duplex"


@pytest.fixture(scope="session")
def open_ground(e2e_district):
    """A spot in the district at least 70 m from any building (the BIM model goes there, so a
    top-down click hits it and nothing else): lon, lat, the DEM's orthometric height. Once per
    session (the underground fixtures, session-scoped, keep their pipes away from it)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import shapely
    from pyproj import Transformer

    lf = next(lf for lf in e2e_district.layers if lf.layer == "buildings")
    df = gpd.read_file(lf.path)
    tree = shapely.STRtree(df.geometry.values)
    x0, y0, x1, y1 = df.total_bounds
    xs, ys = np.meshgrid(np.arange(x0 + 300, x1 - 300, 50.0), np.arange(y0 + 300, y1 - 300, 50.0))
    pts = shapely.points(xs.ravel(), ys.ravel())
    near = tree.query(shapely.buffer(pts, 70.0), predicate="intersects")
    free = np.setdiff1d(np.arange(len(pts)), near[0])
    assert len(free), "no open ground in the demo district"
    centre = shapely.points((x0 + x1) / 2, (y0 + y1) / 2)
    best = pts[free[np.argmin(shapely.distance(pts[free], centre))]]
    with rasterio.open(e2e_district.dem.path) as dem:
        h = float(next(dem.sample([(best.x, best.y)]))[0])
    lon, lat = Transformer.from_crs(df.crs, "EPSG:4490", always_xy=True).transform(best.x, best.y)
    return {"lon": lon, "lat": lat, "h": h}


@pytest.fixture(scope="session")
def twin_tileset(e2e_district, database, tmp_path_factory, open_ground):
    """The twin: buildings (LOD1) + the duplex IFC sample placed on open ground (``cim add-ifc``
    ``--at``), built once per session (``test_twin`` and ``test_underground_twin`` read it, neither
    changes it). The model is deactivated at the end so later builds in the schema leave it out."""
    from cim_builder.build import build
    from cim_builder.ifc import register
    from spatial_api import db

    tmp = tmp_path_factory.mktemp("twin")
    g = open_ground
    info = register(database, SAMPLES / "duplex.ifc", model_id=BIM_MODEL, at=(g["lon"], g["lat"], g["h"]), rotation=0.0,
             store_dir=tmp / "models")
    try:
        report = build(database, tileset_id="twin", as_of=AS_OF, out=tmp / "tiles", dem=e2e_district.dem.path,
                       title="龙岗孪生 (e2e)", full=True)
        assert report.buildings > 1000 and report.tiles > 0 and report.models >= 1, report.as_dict()
        report.bim_centre = tuple(info["centre"][:2])  # lon, lat of the model's footprint centre
        yield report
    finally:
        with db.connect(database) as conn:
            conn.execute("UPDATE cim_models SET active = false WHERE id = %s", (BIM_MODEL,))
            conn.commit()


@pytest.fixture(scope="module")
def known_building(e2e_district):
    import geopandas as gpd
    import rasterio
    from pyproj import Transformer

    from cim_builder import DEFAULT_GEOID_SEPARATION

    lf = next(lf for lf in e2e_district.layers if lf.layer == "buildings")
    df = gpd.read_file(lf.path)
    df = df[df.parcel_id.notna() & (df.parcel_id != "")].sort_values("height_m", ascending=False)
    row = df.iloc[0]
    inside = row.geometry.representative_point()
    lon, lat = Transformer.from_crs(df.crs, "EPSG:4490", always_xy=True).transform(inside.x, inside.y)
    with rasterio.open(e2e_district.dem.path) as dem:  # the DEM (orthometric) under that point
        assert dem.crs.to_epsg() == df.crs.to_epsg()
        ortho = float(next(dem.sample([(inside.x, inside.y)]))[0])
    return {"building_id": row.building_id, "parcel_id": row.parcel_id, "height_m": float(row.height_m),
            "floors": int(row.floors), "use": row.use, "lon": lon, "lat": lat,
            "ground": ortho + DEFAULT_GEOID_SEPARATION}  # ellipsoidal, as the twin and the terrain are


@pytest.fixture(scope="module")
def known_place(e2e_district):
    import geopandas as gpd
    from pyproj import Transformer

    lf = next(lf for lf in e2e_district.layers if lf.layer == "place_names")
    df = gpd.read_file(lf.path)
    df = df[df.kind.isin(["landmark", "school", "hospital", "park", "station"])].sort_values("name")
    row = df.iloc[0]
    lon, lat = Transformer.from_crs(df.crs, "EPSG:4490", always_xy=True).transform(row.geometry.x, row.geometry.y)
    return {"name": row["name"], "lon": lon, "lat": lat}
