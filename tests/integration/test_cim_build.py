"""The CIM builder end to end on a real PostGIS: a hand-made buildings layer (written through the
ingestion) on a tilted-plane DEM (written with rasterio) → 3D Tiles 1.1 → the Khronos glTF
validator, a structural check, positions against pyproj, metadata lookups, BIM models merged
(the duplex sample placed on the command line; an ifcopenshell.api model with an
IfcMapConversion), incremental rebuilds, and serving through a real uvicorn server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from cim_builder.geo import CimError
from spatial_api import db, store
from cim_builder.glb import accessor_array, property_values, read_glb
from cim_builder.tileset import check_tileset, world_transforms
from tests.unit.test_cim_ifc import SAMPLES, expected_ecef, make_ifc, nearest, world_vertices

ROOT = Path(__file__).resolve().parents[2]
SEP = -2.6
X0, Y0 = 525500.0, 2513500.0  # south-west corner of the test block (EPSG:4547)
TO_ECEF = Transformer.from_crs(CRS("EPSG:4547").to_3d(), "EPSG:4978", always_xy=True)
TO_LONLAT = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)


def plane(x, y):
    """The DEM: a tilted plane (bilinear interpolation reproduces it exactly)."""
    return 20.0 + 0.02 * (np.asarray(x) - X0) + 0.01 * (np.asarray(y) - Y0)


def write_dem(path: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    res, w, h = 5.0, 200, 160
    left, top = X0 - 200, Y0 - 200 + h * res
    xs = left + (np.arange(w) + 0.5) * res
    ys = top - (np.arange(h) + 0.5) * res
    z = plane(xs[None, :], ys[:, None]).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs="EPSG:4547",
                       transform=from_origin(left, top, res, res)) as dst:
        dst.write(z, 1)
    return path


def buildings(version: int = 1):
    """30 buildings on a 6 x 5 grid (40 m apart), an L and a courtyard among them, one tower.
    Version 2: B005 taller, B010 gone, B031 new."""
    import geopandas as gpd

    rows = []
    for i in range(30):
        r, c = divmod(i, 6)
        x, y = X0 + 40 * c, Y0 + 40 * r
        g = shapely.box(x, y, x + 20, y + 12)
        if i == 7:
            g = shapely.Polygon([(x, y), (x + 24, y), (x + 24, y + 8), (x + 8, y + 8), (x + 8, y + 24), (x, y + 24)])
        if i == 14:
            g = shapely.Polygon([(x, y), (x + 30, y), (x + 30, y + 30), (x, y + 30)],
                                [[(x + 10, y + 10), (x + 10, y + 20), (x + 20, y + 20), (x + 20, y + 10)]])
        height = 8.0 + 3 * i
        floors = int(height // 3)
        if i == 20:
            height = 180.0  # a tower: σ = 180 m puts it high in the tree
            floors = 55
        props = {"building_id": f"B{i + 1:03d}", "parcel_id": f"G{(i // 6) + 1:02d}", "height_m": height,
                 "floors": floors, "use": ["residential", "commercial", "industrial"][i % 3], "gfa_m2": 1000.0 + i}
        if i == 3:
            props["height_m"] = None  # floors only: 7 floors x 3 m
            props["floors"] = 7
        if version == 2 and i == 4:
            props["height_m"] = 99.0
        if version == 2 and i == 9:
            continue
        rows.append({**props, "geometry": g})
    if version == 2:
        rows.append({"building_id": "B031", "parcel_id": "G06", "height_m": 12.0, "floors": 4, "use": "public",
                     "gfa_m2": 500.0, "geometry": shapely.box(X0 + 40 * 6, Y0, X0 + 40 * 6 + 15, Y0 + 10)})
    return gpd.GeoDataFrame(rows, crs="EPSG:4547")


def expected_heights(df) -> dict[str, tuple[float, float]]:
    out = {}
    for bid, h, fl, g in zip(df.building_id, df.height_m, df.floors, df.geometry):
        xy = np.asarray(g.exterior.coords)
        base = float(plane(xy[:, 0], xy[:, 1]).min())
        height = float(h) if h == h and h is not None else 3.0 * fl
        out[bid] = (base, base + height)
    return out


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    from spatial_api.ingest import ingest_vector

    tmp = tmp_path_factory.mktemp("cim")
    settings = database
    layer = f"t_cim_{uuid.uuid4().hex[:8]}"
    v1 = tmp / "b1.gpkg"
    buildings(1).to_file(v1, driver="GPKG")
    ingest_vector(v1, layer=layer, key="building_id", valid_from="2024-01-01", settings=settings)
    return {"settings": settings, "layer": layer, "dem": write_dem(tmp / "dem.tif"), "tmp": tmp,
            "models": tmp / "models"}


def decode_tileset(folder: Path) -> list[dict]:
    """Every content tile: its uri, the ECEF of its vertices, feature ids and property tables."""
    doc = json.loads((folder / "tileset.json").read_text())
    out = []
    for tile, world, _ in world_transforms(doc):
        if "content" not in tile:
            continue
        gl, binary = read_glb((folder / tile["content"]["uri"]).read_bytes())
        tables = [property_values(gl, binary, i)
                  for i in range(len(gl["extensions"]["EXT_structural_metadata"]["propertyTables"]))]
        for prim in gl["meshes"][0]["primitives"]:
            pos = accessor_array(gl, binary, prim["attributes"]["POSITION"]).astype(float)
            enu = np.stack([pos[:, 0], -pos[:, 2], pos[:, 1]], axis=1)
            fid = prim["extensions"]["EXT_mesh_features"]["featureIds"][0]
            out.append({"uri": tile["content"]["uri"], "ecef": enu @ world[:3, :3].T + world[:3, 3],
                        "feature": accessor_array(gl, binary, prim["attributes"]["_FEATURE_ID_0"]).astype(int),
                        "table": tables[fid["propertyTable"]]})
    return out


def validate_all(folder: Path) -> dict:
    files = sorted(str(p) for p in folder.rglob("*.glb"))
    assert files
    r = subprocess.run(["node", str(ROOT / "cim_builder" / "validate_gltf.mjs"), "-"], input="\n".join(files),
                       capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    assert len(report["files"]) == len(files)
    return report


@pytest.fixture(scope="module")
def first(env):
    from cim_builder.build import build

    out = env["tmp"] / "t1"
    report = build(env["settings"], tileset_id="t1", layer=env["layer"], dem=env["dem"], out=out,
                   max_per_tile=8)
    return {"report": report, "out": out}


def test_lod1_tileset_is_valid(env, first):
    r, out = first["report"], first["out"]
    assert r.buildings == 30 and r.full_rebuild and r.tiles == r.tiles_written > 3 and r.max_level >= 2
    report = validate_all(out)
    assert report["errors"] == 0, [m for f in report["files"] for m in f["messages"] if m["severity"] == 0][:5]
    assert check_tileset(out) == []
    doc = json.loads((out / "tileset.json").read_text())
    assert doc["asset"]["version"] == "1.1" and doc["extras"]["geotwin"]["geoid_separation_m"] == SEP
    # the tower sits above the leaves; the leaves hold at most max_per_tile buildings
    tiles = decode_tileset(out)
    where = {bid: t["uri"] for t in tiles for bid in t["table"]["building_id"]}
    assert len(where) == 30
    levels = {bid: int(uri.split("/")[1]) for bid, uri in where.items()}
    assert levels["B021"] < max(levels.values())
    assert max(len(t["table"]["building_id"]) for t in tiles) <= 8


def test_positions_heights_and_metadata_lookup(env, first):
    df = buildings(1)
    heights = expected_heights(df)
    tiles = decode_tileset(first["out"])
    src = {r.building_id: r for r in df.itertuples()}
    checked = 0
    for t in tiles:
        ids = t["table"]["building_id"]
        for bid in ("B001", "B004", "B008", "B015", "B021"):
            if bid not in ids:
                continue
            fid = ids.index(bid)
            base, top = heights[bid]
            geom = src[bid].geometry
            xy = np.vstack([np.asarray(r.coords)[:-1] for r in [geom.exterior, *geom.interiors]])
            exp_top = np.column_stack(TO_ECEF.transform(xy[:, 0], xy[:, 1], np.full(len(xy), top + SEP)))
            exp_base = np.column_stack(TO_ECEF.transform(xy[:, 0], xy[:, 1], np.full(len(xy), base + SEP)))
            mine = t["ecef"][t["feature"] == fid]
            assert nearest(exp_top, mine).max() < 0.01  # every roof corner is there, within 1 cm
            assert nearest(exp_base, mine).max() < 0.01
            # and the mesh holds nothing else: every vertex is one of those corners
            assert nearest(mine, np.vstack([exp_top, exp_base])).max() < 0.01
            # lookup by feature id → the right building and its attributes
            row = src[bid]
            assert t["table"]["parcel_id"][fid] == row.parcel_id and t["table"]["use"][fid] == row.use
            assert t["table"]["height_m"][fid] == pytest.approx(top - base, abs=1e-3)
            assert t["table"]["base_height_m"][fid] == pytest.approx(base, abs=1e-3)
            assert t["table"]["floors"][fid] == row.floors
            checked += 1
    assert checked == 5
    # a vertex picked at random in the L-shaped building resolves to B008
    t = next(t for t in tiles if "B008" in t["table"]["building_id"])
    i = int(np.flatnonzero(t["feature"] == t["table"]["building_id"].index("B008"))[3])
    assert t["table"]["building_id"][t["feature"][i]] == "B008"


def test_incremental_rebuild_touches_only_changed_tiles(env, first):
    from cim_builder.build import build
    from spatial_api.ingest import ingest_vector

    out = first["out"]
    s = env["settings"]
    again = build(s, tileset_id="t1", layer=env["layer"], dem=env["dem"], max_per_tile=8)
    assert not again.full_rebuild and again.tiles_written == 0 and again.tiles_unchanged == first["report"].tiles
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.glb")}
    old_where = {bid: t["uri"] for t in decode_tileset(out) for bid in t["table"]["building_id"]}
    v2 = env["tmp"] / "b2.gpkg"
    buildings(2).to_file(v2, driver="GPKG")
    ingest_vector(v2, layer=env["layer"], key="building_id", valid_from="2025-01-01", settings=s)
    r = build(s, tileset_id="t1", layer=env["layer"], dem=env["dem"], max_per_tile=8)
    assert not r.full_rebuild and r.buildings == 30
    new_where = {bid: t["uri"] for t in decode_tileset(out) for bid in t["table"]["building_id"]}

    def key(uri: str) -> str:
        return uri.split("/", 1)[1].rsplit("-", 1)[0]  # tiles/5/12/12-<hash>.glb → 5/12/12

    # B005 changed (and, 99 m tall now, moved up the tree), B010 removed, B031 added: exactly
    # the tiles they left or joined are rewritten, nothing else
    expected = {key(old_where["B005"]), key(old_where["B010"]), key(new_where["B005"]), key(new_where["B031"])}
    assert key(new_where["B005"]) != key(old_where["B005"])
    assert set(r.written) == expected and r.tiles_written == len(expected)
    assert all(key(new_where[b]) == key(old_where[b]) for b in new_where if b not in ("B005", "B031"))
    after = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.glb")}
    untouched = {u for u in before if key(u) not in expected}
    assert len(untouched) >= len(before) - 3
    assert all(after.get(u) == before[u] for u in untouched)  # same files, not rewritten
    assert check_tileset(out) == [] and validate_all(out)["errors"] == 0
    tiles = decode_tileset(out)
    ids = {b: t for t in tiles for b in t["table"]["building_id"]}
    assert "B010" not in ids and "B031" in ids
    t = ids["B005"]
    assert t["table"]["height_m"][t["table"]["building_id"].index("B005")] == pytest.approx(99.0)
    # as of a date before the change: the old state, in a tileset of its own
    old = build(s, tileset_id="t1-2024", layer=env["layer"], dem=env["dem"], as_of="2024-06-30",
                out=env["tmp"] / "t1-2024")
    assert old.buildings == 30 and old.full_rebuild
    t_old = {b: t for t in decode_tileset(env["tmp"] / "t1-2024") for b in t["table"]["building_id"]}
    assert "B010" in t_old and "B031" not in t_old
    assert t_old["B005"]["table"]["height_m"][t_old["B005"]["table"]["building_id"].index("B005")] == pytest.approx(20.0)


def test_failed_build_leaves_previous_state(env, first, monkeypatch):
    from cim_builder import build as build_mod
    from spatial_api import db

    out = first["out"]
    before_json = (out / "tileset.json").read_bytes()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with db.connect(env["settings"]) as conn:
        rows = conn.execute("SELECT tile_key, content_hash FROM cim_tiles WHERE tileset_id = 't1' ORDER BY 1").fetchall()
    calls = {"n": 0}
    real = build_mod.GlbWriter.write

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(self, *a, **k)

    monkeypatch.setattr(build_mod.GlbWriter, "write", failing)
    with pytest.raises(OSError, match="simulated"):
        build_mod.build(env["settings"], tileset_id="t1", layer=env["layer"], dem=env["dem"], full=True,
                        floor_height_m=3.5, max_per_tile=8)
    assert (out / "tileset.json").read_bytes() == before_json
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == files
    with db.connect(env["settings"]) as conn:
        assert conn.execute("SELECT tile_key, content_hash FROM cim_tiles WHERE tileset_id = 't1' ORDER BY 1").fetchall() == rows


def test_no_dem_and_no_layer_are_clear_errors(env):
    from cim_builder.build import build

    with pytest.raises(CimError, match="no DEM: pass --dem"):
        build(env["settings"], tileset_id="nodem", layer=env["layer"], out=env["tmp"] / "nodem")
    with pytest.raises(CimError, match="no 't_cim_missing' layer"):
        build(env["settings"], tileset_id="nolayer", layer="t_cim_missing", dem=env["dem"])
    with pytest.raises(CimError, match="--dem .*no such file"):
        build(env["settings"], tileset_id="nodem", layer=env["layer"], dem=env["tmp"] / "none.tif")
    # once the imagery catalogue has a `dem` collection, a build without --dem stands on it
    from spatial_api.ingest.imagery import ingest_imagery

    ingest_imagery(env["dem"], collection="dem", datetime_="2020-01-01", kind="dem", cog_dir=env["tmp"] / "cog",
                   settings=env["settings"])
    r = build(env["settings"], tileset_id="catdem", layer=env["layer"], out=env["tmp"] / "catdem")
    assert Path(r.dem).parent == env["tmp"] / "cog" and r.buildings > 0
    t = decode_tileset(env["tmp"] / "catdem")[0]
    bases = {**expected_heights(buildings(1)), **expected_heights(buildings(2))}  # footprints only matter
    assert t["table"]["base_height_m"][0] == pytest.approx(bases[t["table"]["building_id"][0]][0], abs=0.01)


def enu_to_ecef(lon: float, lat: float, h: float, enu: np.ndarray) -> np.ndarray:
    """PROJ's topocentric conversion, inverted: east-north-up metres at (lon, lat, h) → ECEF."""
    t = Transformer.from_pipeline(f"+proj=topocentric +lon_0={lon} +lat_0={lat} +h_0={h} +ellps=GRS80")
    x, y, z = t.transform(enu[:, 0], enu[:, 1], enu[:, 2], direction="INVERSE")
    return np.column_stack([x, y, z])


@pytest.fixture(scope="module")
def bim(env):
    """Two models merged into tileset t2: the duplex placed with --at on building B013 (rotated
    20°), and an IFC4 model with an IfcMapConversion (rotated 30°, scaled) on building B027."""
    from cim_builder.build import build
    from cim_builder.ifc import register

    s = env["settings"]
    df = buildings(1).set_index("building_id")
    c13 = df.loc["B013"].geometry.centroid
    lon, lat = TO_LONLAT.transform(c13.x, c13.y)
    h = float(plane(c13.x, c13.y))
    duplex = register(s, SAMPLES / "duplex.ifc", at=(lon, lat, h), rotation=20.0, store_dir=env["models"],
                      layer=env["layer"])
    c27 = df.loc["B027"].geometry.centroid
    k = 0.9996
    ifc_path = make_ifc(env["tmp"] / "lg.ifc", eastings=c27.x - 10, northings=c27.y - 6, height=float(plane(c27.x, c27.y)),
                        rotation_deg=30.0, scale=0.001 * k)
    lg = register(s, ifc_path, model_id="lg-a", store_dir=env["models"], layer=env["layer"])
    report = build(s, tileset_id="t2", layer=env["layer"], dem=env["dem"], out=env["tmp"] / "t2", max_per_tile=8)
    return {"duplex": duplex, "lg": lg, "report": report, "env": env, "out": env["tmp"] / "t2", "at": (lon, lat, h),
            "lg_params": dict(e0=c27.x - 10, n0=c27.y - 6, h0=float(plane(c27.x, c27.y)), rotation_deg=30.0, k=k),
            "lg_path": ifc_path}


def test_bim_models_replace_their_prisms_and_validate(bim):
    r = bim["report"]
    assert bim["duplex"]["schema"] == "IFC2X3" and bim["duplex"]["georef"] == "command line"
    assert bim["lg"]["georef"] == "IfcMapConversion" and bim["lg"]["crs"] == "EPSG:4547" and not bim["lg"]["warnings"]
    assert r.models == 2 and set(r.replaced_by_bim) == {"B013", "B027"}
    tiles = decode_tileset(bim["out"])
    ids = {b for t in tiles if "building_id" in t["table"] for b in t["table"]["building_id"]}
    assert "B013" not in ids and "B027" not in ids and len(ids) == 28  # each building shown once
    assert validate_all(bim["out"])["errors"] == 0
    assert check_tileset(bim["out"]) == []


def test_duplex_lands_within_10cm_with_element_metadata(bim):
    lon, lat, h = bim["at"]
    verts = world_vertices(SAMPLES / "duplex.ifc", ("IfcWallStandardCase", "IfcSlab", "IfcWindow", "IfcDoor"))
    tiles = [t for t in decode_tileset(bim["out"]) if "global_id" in t["table"] and "duplex" in t["table"]["model_id"]]
    table = tiles[0]["table"]
    assert set(table["model_id"]) == {"duplex"} and len(tiles) == 2  # solids and spaces
    t = math.radians(20.0)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    checked = 0
    for gid in list(verts)[::9]:
        if gid not in table["global_id"]:
            continue
        fid = table["global_id"].index(gid)
        exp = enu_to_ecef(lon, lat, h + SEP, verts[gid] @ rot.T)
        got = np.vstack([tt["ecef"][tt["feature"] == fid] for tt in tiles])
        assert len(got) and nearest(exp, got).max() < 0.1 and nearest(got, exp).max() < 0.1
        checked += 1
    assert checked >= 5
    # metadata: a wall, its storey and material; spaces flagged
    i = table["ifc_class"].index("IfcWallStandardCase")
    assert table["storey"][i] and table["material"][i] and table["global_id"][i] in verts
    assert any(table["is_space"]) and all(c == "IfcSpace" for c, sp in zip(table["ifc_class"], table["is_space"]) if sp)


def test_georeferenced_ifc_lands_within_5cm(bim):
    verts = world_vertices(bim["lg_path"])
    tiles = [t for t in decode_tileset(bim["out"]) if "global_id" in t["table"] and "lg-a" in t["table"]["model_id"]]
    table = tiles[0]["table"]
    assert len(table["global_id"]) == 4
    for gid, v in verts.items():
        fid = table["global_id"].index(gid)
        exp = expected_ecef(v, sep=SEP, **bim["lg_params"])
        got = np.vstack([t["ecef"][t["feature"] == fid] for t in tiles])
        assert nearest(exp, got).max() < 0.05 and nearest(got, exp).max() < 0.05
    i = table["name"].index("地下室底板")
    assert table["below_ground"][i] is True and table["storey"][i] == "B1" and table["material"][i] == "C30混凝土"


def _cli(env, *args) -> subprocess.CompletedProcess:
    e = dict(os.environ, GEOTWIN_DB_SCHEMA=env["settings"].db_schema, GEOTWIN_MODELS_DIR=str(env["models"]),
             GEOTWIN_TILESETS_DIR=str(env["tmp"] / "tilesets"))
    return subprocess.run([sys.executable, "-m", "spatial_api", "cim", *args], capture_output=True, text=True,
                          env=e, timeout=300, cwd=ROOT)


def test_cli_ifc4x2_fails_cleanly_and_build_json(env):
    r = _cli(env, "add-ifc", str(SAMPLES / "ifcbridge-model03_georeferenced.ifc"))
    assert r.returncode == 1
    assert "IFC4X2" in r.stderr and "IFC2X3, IFC4, IFC4X3" in r.stderr and "Traceback" not in r.stderr
    r = _cli(env, "add-ifc", str(SAMPLES / "duplex.ifc"), "--at", "114.25")
    assert r.returncode == 1 and "--at" in r.stderr
    r = _cli(env, "build", "--id", "cli", "--layer", env["layer"], "--dem", str(env["dem"]), "--out",
             str(env["tmp"] / "cli"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["tileset_id"] == "cli" and rep["buildings"] > 0 and (env["tmp"] / "cli" / "tileset.json").exists()
    from spatial_api import db

    with db.connect(env["settings"]) as conn:
        assert conn.execute("SELECT count(*) FROM cim_models WHERE id LIKE 'ifcbridge%'").fetchone()[0] == 0
    # add-ifc --build: registered and merged in one command
    c = buildings(1).set_index("building_id").loc["B002"].geometry.centroid
    ifc_path = make_ifc(env["tmp"] / "cli.ifc", eastings=c.x - 10, northings=c.y - 6, height=float(plane(c.x, c.y)),
                        rotation_deg=0.0)
    try:
        r = _cli(env, "add-ifc", str(ifc_path), "--id", "cli-model", "--layer", env["layer"], "--build", "--tileset",
                 "cli", "--dem", str(env["dem"]), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["georef"] == "IfcMapConversion" and "B002" in out["overlapping_buildings"]
        # (the models other tests registered are in this twin too)
        assert "B002" in out["build"]["replaced_by_bim"] and "bim/cli-model" in out["build"]["written"]
    finally:
        with db.connect(env["settings"]) as conn:
            conn.execute("UPDATE cim_models SET active = false WHERE id = 'cli-model'")


@pytest.fixture(scope="module")
def server(env, first):
    from spatial_api.app import create_app
    from tests.fixtures.server import live_server

    with live_server(create_app(env["settings"])) as url:
        yield url


def test_serving_tilesets(server, first):
    listing = httpx.get(f"{server}/twin/tilesets", timeout=30)
    assert listing.status_code == 200 and listing.headers["access-control-allow-origin"] == "*"
    t1 = next(t for t in listing.json()["tilesets"] if t["id"] == "t1")
    link = next(ln for ln in t1["links"] if ln["rel"] == "tileset")
    assert link["type"] == "application/json" and t1["buildings"] == 30
    r = httpx.get(link["href"], headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers.get("content-encoding") == "gzip" and r.headers["access-control-allow-origin"] == "*"
    doc = r.json()  # httpx decompresses
    assert doc == json.loads((first["out"] / "tileset.json").read_text())
    etag = r.headers["etag"]
    assert httpx.get(link["href"], headers={"If-None-Match": etag}, timeout=30).status_code == 304
    uri = next(t["content"]["uri"] for t, _, _ in world_transforms(doc) if "content" in t)
    g = httpx.get(f"{server}/twin/tilesets/t1/{uri}", timeout=30)
    assert g.status_code == 200 and g.headers["content-type"] == "model/gltf-binary"
    assert g.content == (first["out"] / uri).read_bytes() and "immutable" in g.headers["cache-control"]
    raw = httpx.get(f"{server}/twin/tilesets/t1/{uri}", headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "content-encoding" not in raw.headers and raw.content == g.content
    pre = httpx.options(f"{server}/twin/tilesets/t1/tileset.json",
                        headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET"}, timeout=30)
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    assert httpx.get(f"{server}/twin/tilesets/nope/tileset.json", timeout=30).status_code == 404
    assert httpx.get(f"{server}/twin/tilesets/t1/..%2F..%2Fetc%2Fpasswd.json", timeout=30).status_code == 404
    assert httpx.get(f"{server}/twin/tilesets/t1/tiles/0/0/9-none.glb", timeout=30).status_code == 404


def test_a_tileset_is_as_visible_as_its_buildings_layer(env, first, auth):
    """Built from a restricted layer, the twin (and its building metadata) is not there for the public."""
    from fastapi.testclient import TestClient

    from spatial_api.app import create_app

    with db.connect(env["settings"]) as conn:
        store.update_layer(conn, env["layer"], access_level="restricted")
        conn.commit()
    try:
        app = create_app(env["settings"])
        public, officer = TestClient(app), TestClient(app, headers=auth("land-officer"))
        assert "t1" not in {t["id"] for t in public.get("/twin/tilesets").json()["tilesets"]}
        assert public.get("/twin/tilesets/t1/tileset.json").status_code == 404
        assert "t1" in {t["id"] for t in officer.get("/twin/tilesets").json()["tilesets"]}
        assert officer.get("/twin/tilesets/t1/tileset.json").status_code == 200
    finally:
        with db.connect(env["settings"]) as conn:
            store.update_layer(conn, env["layer"], access_level="public")
            conn.commit()


def test_model_far_from_the_district_is_refused(env):
    from cim_builder.ifc import register

    # the duplex's own IfcSite says Chicago: registering it without --at is refused, not placed
    with pytest.raises(CimError, match=r"km from the 't_cim_.*' layer: pass --at"):
        register(env["settings"], SAMPLES / "duplex.ifc", model_id="far", store_dir=env["models"], layer=env["layer"])
    from spatial_api import db

    with db.connect(env["settings"]) as conn:
        assert conn.execute("SELECT count(*) FROM cim_models WHERE id = 'far'").fetchone()[0] == 0


def test_removing_a_model_brings_the_prism_back_incrementally(bim):
    from cim_builder.build import build
    from spatial_api import db

    env = bim["env"]
    with db.connect(env["settings"]) as conn:
        conn.execute("UPDATE cim_models SET active = false WHERE id = 'lg-a'")
    try:
        r = build(env["settings"], tileset_id="t2", layer=env["layer"], dem=env["dem"], max_per_tile=8)
        assert not r.full_rebuild and r.models == 1 and r.replaced_by_bim == ["B013"]
        tiles = decode_tileset(bim["out"])
        where = {b: t["uri"] for t in tiles if "building_id" in t["table"] for b in t["table"]["building_id"]}
        assert "B027" in where and "B013" not in where
        # written: B027's tile and, where the returning building pushes that full tile's smallest
        # one down a level (max_per_tile = 8), cells below it; the lg-a tile is dropped; nothing
        # else is touched
        l0, x0, y0 = (int(v) for v in where["B027"].split("/", 1)[1].rsplit("-", 1)[0].split("/"))
        assert f"{l0}/{x0}/{y0}" in r.written and r.tiles_removed == 1
        for k in r.written:
            level, ix, iy = (int(v) for v in k.split("/"))
            assert level >= l0 and (ix >> (level - l0), iy >> (level - l0)) == (x0, y0), k
        assert not any(t["uri"].startswith("bim/lg-a") for t in tiles)
        assert check_tileset(bim["out"]) == []
    finally:
        with db.connect(env["settings"]) as conn:
            conn.execute("UPDATE cim_models SET active = true WHERE id = 'lg-a'")
