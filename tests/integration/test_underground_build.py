"""The underground tileset end to end on a real PostGIS: a hand-made survey with known depths
(a water main measured to the pipe top, a storm culvert measured to the invert, a power duct
bent at a middle vertex, manholes, two basements — one on the DEM) written into the contract's
store layers → ``build_underground`` → glb positions decoded back to EPSG:4547 + orthometric
height and compared with the survey; metadata by feature id; the Khronos glTF validator and the
tileset check; rebuilds, a failed build, errors; serving by a real uvicorn server."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone

import httpx
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import CRS, Transformer

from cim_builder.geo import CimError
from cim_builder.glb import property_values, read_glb
from cim_builder.tileset import check_tileset, world_transforms
from spatial_api import db, store
from tests.integration.test_cim_build import plane, validate_all, write_dem

SEP = -2.6
X0, Y0 = 525500.0, 2513500.0
TO_4490 = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
FROM_ECEF = Transformer.from_crs("EPSG:4479", CRS("EPSG:4547").to_3d(), always_xy=True)
T2024 = datetime(2024, 1, 1, tzinfo=timezone.utc)
T2025 = datetime(2025, 1, 1, tzinfo=timezone.utc)

# the survey: point → (x, y, ground_z, depth, type code, appurtenance, well_depth)
POINTS = {
    "J1": (X0 + 10, Y0 + 10, 20.0, 1.2, "JS", "", None),
    "J2": (X0 + 60, Y0 + 12, 20.5, 1.0, "JS", "", None),
    "J3": (X0 + 90, Y0 + 40, 20.8, 1.1, "JS", "阀门井", 2.0),
    "Y1": (X0 + 10, Y0 + 30, 21.0, 2.5, "YS", "检查井", 3.5),
    "Y2": (X0 + 70, Y0 + 35, 20.6, 2.7, "YS", "检查井", None),
    "D1": (X0 + 5, Y0 + 60, 20.2, 0.8, "DL", "", None),
    "D2": (X0 + 65, Y0 + 90, 20.9, 0.9, "DL", "", None),
}
TYPES = {"JS": ("给水", "top"), "YS": ("雨水", "invert"), "DL": ("电力", "top")}
# segments: id → (start, end, diameter mm, (W, H) mm, material, middle vertex or None)
SEGMENTS = {
    "J1-J2": ("J1", "J2", 300.0, None, "球墨铸铁", None),
    "J2-J3": ("J2", "J3", 200.0, None, "PE", None),
    "Y1-Y2": ("Y1", "Y2", None, (1000.0, 800.0), "钢筋混凝土", None),
    "D1-D2": ("D1", "D2", 150.0, None, "PVC", (X0 + 5, Y0 + 90)),  # bent: up the y axis, then east
}
BASEMENTS = {"BS1": (shapely.box(X0 + 120, Y0 + 10, X0 + 160, Y0 + 40), 8.0, 20.0, "地下车库", 2),
             "BS2": (shapely.box(X0 + 120, Y0 + 60, X0 + 150, Y0 + 80), 4.5, None, "设备用房", 1)}


def section_m(seg: str) -> tuple[float, float]:
    _, _, dia, wh, _, _ = SEGMENTS[seg]
    return (dia / 1000, dia / 1000) if dia else (wh[0] / 1000, wh[1] / 1000)


def axis_z(seg: str, end: int) -> float:
    """The contract's axis elevation: top-measured ground − depth − H/2, invert-measured + H/2."""
    pid = SEGMENTS[seg][end]
    _, _, ground, depth, code, _, _ = POINTS[pid]
    h = section_m(seg)[1]
    return ground - depth - h / 2 if TYPES[code][1] == "top" else ground - depth + h / 2


def bottom_z(pid: str) -> float:
    ground, well = POINTS[pid][2], POINTS[pid][6]
    if well:
        return ground - well
    inverts = [axis_z(s, e) - section_m(s)[1] / 2 for s, v in SEGMENTS.items() for e in (0, 1) if v[e] == pid]
    return min(inverts) - 0.3


def fid(code: str, sid: str) -> str:
    return f"{code}-{sid}"


def point_rows(moved: dict | None = None) -> store.FeatureRows:
    rows, geoms, fids = [], [], []
    for pid, (x, y, ground, depth, code, app, well) in POINTS.items():
        if moved and pid in moved:
            ground = moved[pid]
        lon, lat = TO_4490.transform(x, y)
        rows.append({"id": fid(code, pid), "point_id": pid, "type": TYPES[code][0], "type_code": code,
                     "ground_z": ground, "depth": depth, "depth_ref": TYPES[code][1], "feature": "",
                     "appurtenance": app, "well_depth": well, "is_manhole": "井" in app,
                     "bottom_z": bottom_z(pid) if "井" in app else None})
        geoms.append(shapely.Point(lon, lat))
        fids.append(fid(code, pid))
    return store.FeatureRows(rows=np.arange(1, len(rows) + 1), fids=np.array(fids, dtype=object),
                             geometry=np.array(geoms, dtype=object), properties=pd.DataFrame(rows))


def segment_rows(extra_z: dict | None = None) -> store.FeatureRows:
    rows, geoms, fids = [], [], []
    for sid, (a, b, dia, wh, material, middle) in SEGMENTS.items():
        code = POINTS[a][4]
        w, h = (dia, dia) if dia else wh
        pts = [POINTS[a][:2], *([middle] if middle else []), POINTS[b][:2]]
        lonlat = [TO_4490.transform(x, y) for x, y in pts]
        z0, z1 = axis_z(sid, 0), axis_z(sid, 1)
        if extra_z and sid in extra_z:
            z0, z1 = z0 + extra_z[sid], z1 + extra_z[sid]
        rows.append({"id": fid(code, sid), "segment_id": sid, "type": TYPES[code][0], "type_code": code,
                     "start_id": a, "end_id": b, "diameter_mm": dia, "width_mm": w, "height_mm": h,
                     "material": material, "depth_ref": TYPES[code][1], "start_axis_z": z0, "end_axis_z": z1})
        geoms.append(shapely.LineString(lonlat))
        fids.append(fid(code, sid))
    return store.FeatureRows(rows=np.arange(1, len(rows) + 1), fids=np.array(fids, dtype=object),
                             geometry=np.array(geoms, dtype=object), properties=pd.DataFrame(rows))


def basement_rows() -> store.FeatureRows:
    rows, geoms = [], []
    for bid, (g, depth, ground, use, levels) in BASEMENTS.items():
        rows.append({"basement_id": bid, "building_id": f"B-{bid}", "name": bid, "use": use, "levels": levels,
                     "depth_m": depth, "ground_z": ground})
        geoms.append(shapely.transform(g, lambda c: np.column_stack(TO_4490.transform(c[:, 0], c[:, 1]))))
    return store.FeatureRows(rows=np.arange(1, len(rows) + 1), fids=np.array(list(BASEMENTS), dtype=object),
                             geometry=np.array(geoms, dtype=object), properties=pd.DataFrame(rows))


def schema_of(frame: pd.DataFrame) -> list[dict]:
    kinds = {"f": "number", "i": "integer", "b": "boolean"}
    return [{"name": c, "type": kinds.get(frame[c].dtype.kind, "string")} for c in frame.columns]


def write_layer(conn, name: str, family: str, key: str, rows: store.FeatureRows, valid_from: datetime) -> None:
    new = store.get_layer(conn, name) is None
    if new:
        store.create_layer(conn, store.Layer(name=name, geometry_family=family, key_field=key,
                                             properties=schema_of(rows.properties), access_level="internal"),
                           with_partition=False)
    layer = store.get_layer(conn, name)
    store.write_changeset(conn, layer, rows, mode="replace", valid_from=valid_from, author="pytest", source="test",
                          new_layer=new)
    conn.commit()


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    """A store of its own: the build reads THE pipe and basement layers, which the demo district's
    tests fill in the shared test schema."""
    settings = dataclasses.replace(database, db_schema=f"{database.db_schema}_ug")
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
    db.migrate(settings)
    tmp = tmp_path_factory.mktemp("underground")
    with db.connect(settings) as conn:
        write_layer(conn, "pipe_points", "Point", "id", point_rows(), T2024)
        write_layer(conn, "pipe_segments", "LineString", "id", segment_rows(), T2024)
        write_layer(conn, "basements", "Polygon", "basement_id", basement_rows(), T2024)
    yield {"settings": settings, "tmp": tmp, "dem": write_dem(tmp / "dem.tif"), "out": tmp / "ug"}
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


@pytest.fixture(scope="module")
def first(env):
    from cim_builder.underground import build_underground

    report = build_underground(env["settings"], dem=env["dem"], out=env["out"], max_per_tile=3)
    return report


def decode(folder) -> dict[str, dict]:
    """Every object of the tileset: its class, metadata row and vertices (EPSG:4547 x, y and
    orthometric height), by id."""
    doc = json.loads((folder / "tileset.json").read_text())
    out = {}
    for tile, world, _ in world_transforms(doc):
        if "content" not in tile:
            continue
        gl, binary = read_glb((folder / tile["content"]["uri"]).read_bytes())
        from cim_builder.glb import accessor_array

        meta = gl["extensions"]["EXT_structural_metadata"]
        for prim in gl["meshes"][0]["primitives"]:
            fidx = prim["extensions"]["EXT_mesh_features"]["featureIds"][0]
            table_meta = meta["propertyTables"][fidx["propertyTable"]]
            table = property_values(gl, binary, fidx["propertyTable"])
            pos = accessor_array(gl, binary, prim["attributes"]["POSITION"]).astype(float)
            enu = np.stack([pos[:, 0], -pos[:, 2], pos[:, 1]], axis=1)
            ecef = enu @ world[:3, :3].T + world[:3, 3]
            x, y, h = FROM_ECEF.transform(ecef[:, 0], ecef[:, 1], ecef[:, 2])
            xyz = np.column_stack([x, y, np.asarray(h) - SEP])
            feature = accessor_array(gl, binary, prim["attributes"]["_FEATURE_ID_0"]).astype(int)
            colours = accessor_array(gl, binary, prim["attributes"]["COLOR_0"]) if "COLOR_0" in prim["attributes"] else None
            assert table_meta["class"] == "underground_element"  # one table per glb: CesiumJS reads one
            for i in np.unique(feature):  # this primitive's features; `kind` says which
                oid = table["id"][i]
                sel = feature == i
                out[oid] = {"class": table["kind"][i], "row": {k: v[i] for k, v in table.items()},
                            "xyz": xyz[sel], "colour": None if colours is None else colours[sel][0].tolist(),
                            "material": gl["materials"][prim["material"]], "tile": tile["content"]["uri"]}
    return out


def ring_at(xyz: np.ndarray, x: float, y: float, reach: float) -> np.ndarray:
    return xyz[np.hypot(xyz[:, 0] - x, xyz[:, 1] - y) < reach]


def test_tileset_is_valid_and_registered(env, first):
    r = first
    assert (r.segments, r.manholes, r.structures) == (4, 3, 2) and r.full_rebuild
    assert r.tiles == r.tiles_written >= 3  # 3 objects at most per leaf: a real tree
    assert r.max_level >= 1 and not r.warnings
    report = validate_all(env["out"])
    assert report["errors"] == 0, [m for f in report["files"] for m in f["messages"] if m["severity"] == 0][:5]
    assert check_tileset(env["out"]) == []
    doc = json.loads((env["out"] / "tileset.json").read_text())
    assert doc["asset"]["version"] == "1.1" and doc["root"]["refine"] == "ADD"
    assert doc["extras"]["geotwin"]["kind"] == "underground"
    assert doc["root"]["boundingVolume"]["region"][4] < 20.0 - 8.0 + SEP + 0.1  # reaches down to BS1's floor
    with db.connect(env["settings"]) as conn:
        params, stats = conn.execute("SELECT params, stats FROM cim_tilesets WHERE id = 'underground'").fetchone()
        n = conn.execute("SELECT count(*) FROM cim_tiles WHERE tileset_id = 'underground'").fetchone()[0]
    assert params["kind"] == "underground" and params["layer"] in ("pipe_segments", "pipe_points", "basements")
    assert stats["segments"] == 4 and n == r.tiles


def test_pipe_axes_at_surveyed_depth(env, first):
    objs = decode(env["out"])
    for sid, (a, b, dia, wh, material, middle) in SEGMENTS.items():
        code = POINTS[a][4]
        o = objs[fid(code, sid)]
        w, h = section_m(sid)
        for end, pid in ((0, a), (1, b)):
            x, y = POINTS[pid][:2]
            ring = ring_at(o["xyz"], x, y, max(w, h))
            assert len(ring) >= 8
            centre = ring.mean(axis=0)
            # the axis within 5 cm of the survey, horizontally and in height
            assert math.hypot(centre[0] - x, centre[1] - y) < 0.05, (sid, pid)
            assert abs(centre[2] - axis_z(sid, end)) < 0.05, (sid, pid, centre[2], axis_z(sid, end))
            # its top and bottom are the axis ± r (cylinders: r·cos(slope) — slopes here < 2 %)
            assert ring[:, 2].max() - axis_z(sid, end) == pytest.approx(h / 2, abs=0.005), (sid, pid)
            assert axis_z(sid, end) - ring[:, 2].min() == pytest.approx(h / 2, abs=0.005), (sid, pid)
        if middle:  # the bend: the axis elevation interpolated along the line
            xa, ya = POINTS[a][:2]
            xb, yb = POINTS[b][:2]
            l1, l2 = math.hypot(middle[0] - xa, middle[1] - ya), math.hypot(xb - middle[0], yb - middle[1])
            expected = axis_z(sid, 0) + (axis_z(sid, 1) - axis_z(sid, 0)) * l1 / (l1 + l2)
            ring = ring_at(o["xyz"], *middle, 0.3)
            assert abs(ring[:, 2].mean() - expected) < 0.05
    # top-measured water main: top of pipe = ground − depth; invert-measured culvert: bottom = ground − depth
    j = objs["JS-J1-J2"]["xyz"]
    assert ring_at(j, *POINTS["J1"][:2], 0.3)[:, 2].max() == pytest.approx(20.0 - 1.2, abs=0.01)
    c = objs["YS-Y1-Y2"]["xyz"]
    assert ring_at(c, *POINTS["Y1"][:2], 1.0)[:, 2].min() == pytest.approx(21.0 - 2.5, abs=0.01)
    # the box keeps vertical sides: its corners sit ±W/2 across the axis, at exactly ±H/2
    ring = ring_at(c, *POINTS["Y1"][:2], 1.0)
    assert np.allclose(np.unique(np.round(ring[:, 2] - axis_z("Y1-Y2", 0), 3)), [-0.4, 0.4], atol=0.002)


def test_manholes_and_basements(env, first):
    objs = decode(env["out"])
    for pid in ("J3", "Y1", "Y2"):
        x, y, ground, _, code, _, well = POINTS[pid]
        o = objs[fid(code, pid)]
        assert o["class"] == "manhole"
        assert o["xyz"][:, 2].max() == pytest.approx(ground, abs=0.01)
        assert o["xyz"][:, 2].min() == pytest.approx(bottom_z(pid), abs=0.01)
        radius = np.hypot(o["xyz"][:, 0] - x, o["xyz"][:, 1] - y).max()
        assert radius == pytest.approx(0.7 if (well or ground - bottom_z(pid)) > 3 else 0.5, abs=0.01)
        assert o["row"]["ground_z"] == pytest.approx(ground) and o["row"]["bottom_z"] == pytest.approx(bottom_z(pid))
    assert "JS-J1" not in objs  # a plain pipe point is no shaft
    b1, b2 = objs["BS1"], objs["BS2"]
    assert b1["xyz"][:, 2].max() == pytest.approx(20.0, abs=0.01)
    assert b1["xyz"][:, 2].min() == pytest.approx(12.0, abs=0.01)
    xy = np.asarray(BASEMENTS["BS2"][0].exterior.coords)
    ground = float(plane(xy[:, 0], xy[:, 1]).min())  # no ground_z: the lowest DEM value under it
    assert b2["xyz"][:, 2].max() == pytest.approx(ground, abs=0.01)
    assert b2["xyz"][:, 2].min() == pytest.approx(ground - 4.5, abs=0.01)
    assert b1["row"]["use"] == "地下车库" and b1["row"]["levels"] == 2 and b1["row"]["depth_m"] == pytest.approx(8.0)
    assert b1["row"]["building_id"] == "B-BS1"
    assert b1["material"].get("alphaMode") == "BLEND"


def test_metadata_and_colours_per_feature(env, first):
    objs = decode(env["out"])
    j = objs["JS-J1-J2"]
    assert j["class"] == "pipe_segment"
    row = j["row"]
    assert (row["type"], row["type_code"], row["material"]) == ("给水", "JS", "球墨铸铁")
    assert row["diameter_mm"] == 300.0 and row["width_mm"] == 300.0
    assert row["start_axis_z"] == pytest.approx(axis_z("J1-J2", 0), abs=1e-4)
    assert row["end_axis_z"] == pytest.approx(axis_z("J1-J2", 1), abs=1e-4)
    culvert = objs["YS-Y1-Y2"]["row"]
    assert culvert["diameter_mm"] == -1.0 and (culvert["width_mm"], culvert["height_mm"]) == (1000.0, 800.0)
    assert j["colour"] == [0x1f, 0x5f, 0xd6, 255]  # 给水 blue
    assert objs["YS-Y1-Y2"]["colour"] == [0xa0, 0x52, 0x2d, 255]  # 雨水 brown
    assert objs["DL-D1-D2"]["colour"] == [0xe0, 0x20, 0x20, 255]  # 电力 red
    assert objs["YS-Y1"]["colour"] == [0xa0, 0x52, 0x2d, 255]


def test_rebuild_rewrites_only_changed_tiles(env, first):
    from cim_builder.underground import build_underground

    s = env["settings"]
    again = build_underground(s, dem=env["dem"], max_per_tile=3)
    assert not again.full_rebuild and again.tiles_written == 0 and again.tiles_unchanged == first.tiles
    before = decode(env["out"])
    with db.connect(s) as conn:
        write_layer(conn, "pipe_segments", "LineString", "id", segment_rows({"J2-J3": -0.5}), T2025)
    r = build_underground(s, dem=env["dem"], max_per_tile=3)
    assert r.tiles_written == 1 and r.tiles_unchanged == first.tiles - 1
    after = decode(env["out"])
    assert after["JS-J2-J3"]["row"]["start_axis_z"] == pytest.approx(axis_z("J2-J3", 0) - 0.5, abs=1e-4)
    assert after["JS-J2-J3"]["tile"] != before["JS-J2-J3"]["tile"]
    changed = before["JS-J2-J3"]["tile"]
    assert all(after[k]["tile"] == before[k]["tile"] for k in before if before[k]["tile"] != changed)
    assert all(after[k]["tile"] == after["JS-J2-J3"]["tile"] for k in before if before[k]["tile"] == changed)
    assert check_tileset(env["out"]) == [] and len(list(env["out"].rglob("*.glb"))) == first.tiles
    # as of a date before the change: the surveyed depth again, in a tileset of its own
    old = build_underground(s, tileset_id="underground-2024", as_of="2024-06-30", dem=env["dem"],
                            out=env["tmp"] / "ug2024")
    assert old.segments == 4
    assert decode(env["tmp"] / "ug2024")["JS-J2-J3"]["row"]["start_axis_z"] == pytest.approx(axis_z("J2-J3", 0), abs=1e-4)


def test_failed_build_leaves_previous_tileset(env, first, monkeypatch):
    from cim_builder import underground

    out = env["out"]
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setattr(underground, "_write_tileset", broken)
    with pytest.raises(RuntimeError):
        underground.build_underground(env["settings"], dem=env["dem"], full=True, max_per_tile=3)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_clear_errors(env, first, tmp_path):
    from cim_builder.underground import build_underground

    s = env["settings"]
    with pytest.raises(CimError, match="nothing underground to draw as of 2000-01-01"):
        build_underground(s, as_of="2000-01-01", dem=env["dem"], out=tmp_path / "x", tileset_id="ug-empty")
    with pytest.raises(CimError, match="'t1-twin' is a buildings tileset"):
        with db.connect(s) as conn:
            conn.execute("INSERT INTO cim_tilesets (id, out_dir, layout, params, stats) VALUES "
                         "('t1-twin', '/nowhere', '{}', '{\"layer\": \"buildings\"}', '{}') ON CONFLICT DO NOTHING")
            conn.commit()
        build_underground(s, tileset_id="t1-twin", dem=env["dem"])
    with pytest.raises(CimError, match=r"basements BS2 have no ground_z: no DEM"):
        build_underground(s, tileset_id="ug-nodem", out=tmp_path / "y")
    # a schema without any underground layer
    bare = dataclasses.replace(s, db_schema=s.db_schema + "_bare")
    with db.connect(bare, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{bare.db_schema}" CASCADE')
    db.migrate(bare)
    try:
        with pytest.raises(CimError, match="no pipe_segments, pipe_points or basements layer"):
            build_underground(bare, out=tmp_path / "z")
    finally:
        with db.connect(bare, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{bare.db_schema}" CASCADE')


def test_served(env, first):
    """Served by the twin's routes, as visible as its layers (internal here: staff only)."""
    from spatial_api.app import create_app
    from spatial_api.security import keys
    from tests.fixtures.server import live_server

    with db.connect(env["settings"]) as conn:  # a key in this test's own schema
        staff = {"Authorization": f"Bearer {keys.create(conn, 'test-ug-staff', 'gis-staff', created_by='pytest')}"}
        conn.commit()
    with live_server(create_app(env["settings"])) as url:
        assert httpx.get(f"{url}/twin/tilesets/underground/tileset.json", timeout=30).status_code == 404
        r = httpx.get(f"{url}/twin/tilesets/underground/tileset.json", headers=staff, timeout=30)
        assert r.status_code == 200
        doc = r.json()
        assert doc == json.loads((env["out"] / "tileset.json").read_text())
        uri = next(t["content"]["uri"] for t, _, _ in world_transforms(doc) if "content" in t)
        g = httpx.get(f"{url}/twin/tilesets/underground/{uri}", headers=staff, timeout=30)
        assert g.status_code == 200 and g.headers["content-type"] == "model/gltf-binary"
        assert g.content == (env["out"] / uri).read_bytes()
        listing = {t["id"]: t for t in httpx.get(f"{url}/twin/tilesets", headers=staff, timeout=30).json()["tilesets"]}
        assert listing["underground"]["kind"] == "underground"


def test_entity_codes_in_the_metadata(env, first):
    """Once the pipes have geographic entities (spatial_api.entities), their tiles carry the codes."""
    import re

    from cim_builder.underground import build_underground
    from spatial_api import entities

    s = env["settings"]
    report = entities.assign("pipe_segments", entity_type="pipe_segment", valid_from="2025-06-01", settings=s)
    assert len(report.new) == 4
    r = build_underground(s, dem=env["dem"], max_per_tile=3)
    assert r.tiles_written >= 1  # the tiles holding pipes get the codes
    objs = decode(env["out"])
    with db.connect(s) as conn:
        for sid, (a, *_rest) in SEGMENTS.items():
            f = fid(POINTS[a][4], sid)
            code = objs[f]["row"]["entity"]
            assert re.fullmatch(r"440307GX\d{10}", code) and code == entities.entity_for_feature(conn, "pipe_segments", f)
    assert "entity" not in objs["YS-Y1"]["row"] or objs["YS-Y1"]["row"]["entity"] == ""  # manholes have none yet
    assert check_tileset(env["out"]) == [] and validate_all(env["out"])["errors"] == 0
