"""Fixtures of the underground end-to-end tests (``test_underground_twin.py``,
``test_underground_map.py``), on top of ``conftest.py``'s ``e2e_district`` (the small demo
district) and ``e2e_server``:

- ``pipe_site``: a hand-made CJJ 61 survey laid inside a parcel, on open ground (≥ 40 m from any
  building and ≥ 150 m from ``open_ground``, where the twin test places the duplex IFC), at the
  demo DEM's ground heights, loaded through the real ingestion (``underground.ingest.ingest_pipes``
  — what ``geotwin ingest pipes`` runs): a water main 给水 (DN400, depth 1.2 m to the top) running
  east–west, a storm drain 雨水 (D800, inverts falling north → south) crossing under it with three
  检查井, a power duct bank 电力 (800×600, 0.8 m to the top) south of it; a basement (layer
  ``basements``, ``geotwin ingest vector``, added to the demo's own) west of the drain; entity codes assigned to the
  buildings, the pipe segments, the manholes and the basements (``spatial_api.entities.assign``).
  Positions are given in EPSG:4547 (x, y) and EPSG:4490 (lon, lat); heights are orthometric.
  Loaded once per session: the map and the twin tests read the same survey, neither changes it;
- ``underground_tileset``: the underground 3D Tiles built from those layers
  (``cim_builder.underground.build_underground``, what ``geotwin cim build-underground`` runs),
  registered as tileset ``underground`` (params.kind = "underground").

The survey's layout (metres from the site centre (x0, y0), east / north)::

    J1 (-35, 8) ── J2 (0, 8) ── J3 (35, 8)          给水 JS, west → east
                  Y1 (10, 35)
                    │                               雨水 YS, north → south (gravity)
                  Y2 (10, 0)
                    │
    D1 (-35, -15) ──┼──────── D2 (35, -15)          电力 DL
                  Y3 (10, -35)
    basement B: x -32 … -14, y -38 … -24, 8 m deep
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

SITE_RADIUS = 45.0  # the free circle the site needs (m)


@dataclass
class PipeSite:
    parcel_id: str
    x0: float
    y0: float
    to_lonlat: object  # (x, y) → (lon, lat)
    ground: object  # (x, y) → DEM orthometric height
    points: dict = field(default_factory=dict)  # point id → (x, y, ground_z)
    segments: dict = field(default_factory=dict)  # fid → {type_code, start, end, axis_z: (a, b), radius}
    basement: dict = field(default_factory=dict)
    codes: dict = field(default_factory=dict)  # (layer, fid) → entity code

    def lonlat(self, dx: float, dy: float) -> tuple[float, float]:
        return self.to_lonlat(self.x0 + dx, self.y0 + dy)


def _free_spot(e2e_district, avoid_lonlat):
    """A parcel with a circle of SITE_RADIUS m inside it, ≥ 40 m from buildings: (parcel_id, x, y)."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    buildings = gpd.read_file(next(lf for lf in e2e_district.layers if lf.layer == "buildings").path)
    parcels = gpd.read_file(next(lf for lf in e2e_district.layers if lf.layer == "parcels").path)
    assert buildings.crs.to_epsg() == parcels.crs.to_epsg() == 4547
    ax, ay = Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True).transform(*avoid_lonlat)
    blocked = shapely.union_all(shapely.buffer(buildings.geometry.values, 40.0))
    blocked = shapely.union(blocked, shapely.buffer(shapely.points(ax, ay), 150.0))
    best = None
    for pid, geom in sorted(zip(parcels.parcel_id, parcels.geometry.values)):
        free = shapely.difference(shapely.buffer(geom, -SITE_RADIUS), shapely.buffer(blocked, SITE_RADIUS - 40.0))
        if free.is_empty:
            continue
        centre = shapely.ops.polylabel(max(getattr(free, "geoms", [free]), key=lambda g: g.area), tolerance=1.0)
        if shapely.within(centre, free) and (best is None or free.area > best[0]):
            best = (free.area, pid, centre.x, centre.y)
    assert best, "no parcel of the demo district has open ground for the pipe site"
    return best[1], best[2], best[3]


@pytest.fixture(scope="session")
def pipe_site(e2e_district, database, open_ground, tmp_path_factory):
    import geopandas as gpd
    import pandas as pd
    import rasterio
    import shapely
    from pyproj import Transformer

    from spatial_api import db, entities
    from spatial_api.ingest import ingest_vector
    from underground.ingest import ingest_pipes

    pid, x0, y0 = _free_spot(e2e_district, (open_ground["lon"], open_ground["lat"]))
    tr = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
    def ground(x, y):  # the DEM (orthometric) at a point
        with rasterio.open(e2e_district.dem.path) as dem:
            return round(float(next(dem.sample([(x, y)]))[0]), 3)

    site = PipeSite(pid, x0, y0, lambda x, y: tr.transform(x, y), ground)
    tmp = tmp_path_factory.mktemp("pipes")

    def survey(code, pts, segs):
        rows = []
        for pid_, dx, dy, depth, extra in pts:
            x, y = x0 + dx, y0 + dy
            gz = ground(x, y)
            site.points[pid_] = (x, y, gz)
            if "invert" in extra:  # a gravity drain's surveyed invert elevation → its depth
                depth = round(gz - extra["invert"], 3)
            rows.append({"物探点号": pid_, "地面高程": gz, "埋深": depth,
                         "特征": extra.get("feature"), "附属物": extra.get("appurtenance"), "井深": extra.get("well_depth"),
                         "geometry": shapely.points(x, y)})
        points = gpd.GeoDataFrame(rows, crs="EPSG:4547")
        points.to_file(tmp / f"{code}_points.gpkg", driver="GPKG")
        pd.DataFrame(segs).to_csv(tmp / f"{code}_segments.csv", index=False, encoding="utf-8")
        return ingest_pipes(tmp / f"{code}_points.gpkg", tmp / f"{code}_segments.csv", type=code, crs="EPSG:4547",
                            author="e2e", settings=database)

    # 给水: depth 1.2 m to the top of a DN400 → axis = ground − 1.4
    survey("JS", [("E2EJ1", -35, 8, 1.2, {"feature": "弯头"}), ("E2EJ2", 0, 8, 1.2, {"appurtenance": "阀门井", "well_depth": 2.0}),
                  ("E2EJ3", 35, 8, 1.2, {"feature": "预留口"})],
           [{"起点点号": "E2EJ1", "终点点号": "E2EJ2", "管径": 400, "材质": "球墨铸铁管", "权属单位": "深圳市水务集团", "埋设日期": "2018-05"},
            {"起点点号": "E2EJ2", "终点点号": "E2EJ3", "管径": 400, "材质": "球墨铸铁管", "权属单位": "深圳市水务集团", "埋设日期": "2018-05"}])
    # 雨水: inverts 3.0 m below the lowest ground of the line, falling 0.1 m per 35 m north → south
    low = min(ground(x0 + 10, y0 + dy) for dy in (35, 0, -35))
    inverts = {"E2EY1": low - 3.0, "E2EY2": low - 3.1, "E2EY3": low - 3.2}
    survey("YS", [(p, 10, dy, None, {"appurtenance": "检查井", "well_depth": 4.0, "invert": inverts[p]})
                  for p, dy in (("E2EY1", 35), ("E2EY2", 0), ("E2EY3", -35))],
           [{"起点点号": "E2EY1", "终点点号": "E2EY2", "管径": 800, "材质": "钢筋混凝土管"},
            {"起点点号": "E2EY2", "终点点号": "E2EY3", "管径": 800, "材质": "钢筋混凝土管"}])
    # 电力: an 800×600 duct bank 0.8 m to the top → axis = ground − 1.1
    survey("DL", [("E2ED1", -35, -15, 0.8, {}), ("E2ED2", 35, -15, 0.8, {})],
           [{"起点点号": "E2ED1", "终点点号": "E2ED2", "断面尺寸": "800×600", "材质": "管块", "权属单位": "深圳供电局"}])

    def seg(code, a, b, axis_a, axis_b, radius):
        site.segments[f"{code}-{a}-{b}"] = {"type_code": code, "start": a, "end": b, "axis_z": (axis_a, axis_b), "radius": radius}

    p = site.points
    seg("JS", "E2EJ1", "E2EJ2", p["E2EJ1"][2] - 1.4, p["E2EJ2"][2] - 1.4, 0.2)
    seg("JS", "E2EJ2", "E2EJ3", p["E2EJ2"][2] - 1.4, p["E2EJ3"][2] - 1.4, 0.2)
    seg("YS", "E2EY1", "E2EY2", inverts["E2EY1"] + 0.4, inverts["E2EY2"] + 0.4, 0.4)
    seg("YS", "E2EY2", "E2EY3", inverts["E2EY2"] + 0.4, inverts["E2EY3"] + 0.4, 0.4)
    seg("DL", "E2ED1", "E2ED2", p["E2ED1"][2] - 1.1, p["E2ED2"][2] - 1.1, 0.5)

    # a basement without BIM (contract §3; its ground from the DEM), loaded with the ordinary vector ingestion
    box = shapely.box(x0 - 32, y0 - 38, x0 - 14, y0 - 24)
    gz = ground(x0 - 23, y0 - 31)
    site.basement = {"basement_id": "E2E-B1", "use": "地下车库", "levels": 2, "depth_m": 8.0, "ground_z": gz,
                     "centre": (x0 - 23, y0 - 31)}
    gpd.GeoDataFrame([{"basement_id": "E2E-B1", "building_id": None, "name": "测试地下车库", "use": "地下车库", "levels": 2,
                       "depth_m": 8.0, "geometry": box}], crs="EPSG:4547").to_file(tmp / "basements.gpkg", driver="GPKG")
    # added to the demo district's basements (its own are under its larger buildings, none here)
    ingest_vector(tmp / "basements.gpkg", layer="basements", key="basement_id", mode="upsert", crs=None, from_gcj02=False,
                  title_zh="地下室", title_en="Basements", access_level="internal", author="e2e", settings=database)

    # entity codes (the entity pages the clients link to)
    for layer, etype in (("buildings", "building"), ("pipe_segments", "pipe_segment"), ("basements", "underground_structure")):
        entities.assign(layer, entity_type=etype, match="new", author="e2e", settings=database)
    with db.connect(database) as conn:
        for fid in site.segments:
            site.codes[("pipe_segments", fid)] = entities.entity_for_feature(conn, "pipe_segments", fid)
        site.codes[("basements", "E2E-B1")] = entities.entity_for_feature(conn, "basements", "E2E-B1")
    assert all(site.codes.values()), site.codes
    return site


@pytest.fixture(scope="module")
def underground_tileset(pipe_site, database, e2e_district, tmp_path_factory):
    from cim_builder.underground import build_underground

    report = build_underground(database, tileset_id="underground", out=tmp_path_factory.mktemp("underground"),
                               dem=e2e_district.dem.path, title="地下管线 (e2e)", full=True)
    return report

