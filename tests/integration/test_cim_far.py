"""The twin from far away (issue 15, item 4): the upper levels of the 3D Tiles tree hold block
models — the buildings under each cell generalised — so the whole district is on screen from
10 km and refines as the camera comes near.

A synthetic district (≈3,000 buildings in three neighbourhoods of street blocks, towers, an
isolated hamlet, over ≈4.5 × 4 km on a sloping DEM with a hill) is ingested and built through
the real pipeline; the block footprints are read back from the glbs (their roof triangles) and
checked against the source footprints; a CesiumJS-like traversal (screen-space error) tells what
a camera at 3–14 km draws; the tree goes through the Khronos validator and ``check_tileset``; an
incremental rebuild after one building changed rewrites its leaf tile and the blocks above it,
nothing else."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from cim_builder.blocks import generalisation_distance
from cim_builder.glb import accessor_array, property_values, read_glb
from cim_builder.tileset import check_tileset, world_transforms
from tests.integration.test_cim_build import validate_all

X0, Y0 = 524000.0, 2510000.0  # south-west corner of the district (EPSG:4547)
SEP = -2.6
ECEF_TO_METRIC = Transformer.from_crs("EPSG:4479", CRS("EPSG:4547").to_3d(), always_xy=True)
METRIC_TO_ECEF = Transformer.from_crs(CRS("EPSG:4547").to_3d(), "EPSG:4479", always_xy=True)
LONLAT_TO_ECEF = Transformer.from_crs(CRS("EPSG:4490").to_3d(), "EPSG:4479", always_xy=True)


def ground(x, y):
    """The DEM: a slope with a 40 m hill under the second neighbourhood."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return 15.0 + 0.004 * (x - X0) + 0.002 * (y - Y0) + 40.0 * np.exp(-((x - X0 - 3200) ** 2 + (y - Y0 - 2100) ** 2)
                                                                      / 600.0 ** 2)


def write_dem(path: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    res, left, top = 25.0, X0 - 1500, Y0 + 6500
    w, h = int(8000 / res), int(8000 / res)
    xs = left + (np.arange(w) + 0.5) * res
    ys = top - (np.arange(h) + 0.5) * res
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs="EPSG:4547",
                       transform=from_origin(left, top, res, res)) as dst:
        dst.write(ground(xs[None, :], ys[:, None]).astype(np.float32), 1)
    return path


def district(seed: int = 15):
    """Street blocks of 100 m (20 m streets) with 4 × 4 slots each, most holding a building of
    12–20 m a side (heights log-normal around 15 m), a few blocks left as parks; four towers
    (150–220 m); a hamlet of 12 houses 1.3 km from the rest."""
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    rows = []

    def add(geom, height, parcel):
        rows.append({"building_id": f"B{len(rows) + 1:05d}", "parcel_id": parcel, "height_m": round(float(height), 1),
                     "floors": max(1, int(height // 3)), "use": "residential", "geometry": geom})

    for hood, (hx, hy, nx, ny) in enumerate([(X0 + 200, Y0 + 300, 12, 8), (X0 + 2600, Y0 + 1500, 10, 10),
                                             (X0 + 600, Y0 + 2700, 9, 6)]):
        for bx in range(nx):
            for by in range(ny):
                if rng.random() < 0.12:
                    continue  # a park
                parcel = f"P{hood}{bx:02d}{by:02d}"
                for sx in range(4):
                    for sy in range(4):
                        if rng.random() < 0.2:
                            continue
                        x = hx + bx * 120 + sx * 25 + rng.uniform(0, 3)
                        y = hy + by * 120 + sy * 25 + rng.uniform(0, 3)
                        w, d = rng.uniform(12, 20), rng.uniform(12, 20)
                        add(shapely.box(x, y, x + w, y + d), np.clip(rng.lognormal(np.log(15), 0.5), 4, 60), parcel)
    for k, (tx, ty) in enumerate([(X0 + 700, Y0 + 700), (X0 + 3100, Y0 + 2000), (X0 + 3500, Y0 + 2500),
                                  (X0 + 1000, Y0 + 3000)]):
        add(shapely.box(tx + 10, ty + 10, tx + 40, ty + 40), 150 + 20 * k, f"T{k}")
    for k in range(12):  # the hamlet
        x, y = X0 + 4300 + (k % 4) * 30, Y0 + 200 + (k // 4) * 30
        add(shapely.box(x, y, x + 12, y + 9), 7.0, "H0")
    return gpd.GeoDataFrame(rows, crs="EPSG:4547")


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    from spatial_api import db
    from spatial_api.ingest import ingest_vector

    tmp = tmp_path_factory.mktemp("cimfar")
    layer = f"t_far_{uuid.uuid4().hex[:8]}"
    df = district()
    path = tmp / "district.gpkg"
    df.to_file(path, driver="GPKG")
    ingest_vector(path, layer=layer, key="building_id", valid_from="2024-01-01", settings=database)
    # every build merges every registered BIM model: those of other tests sit out this module
    with db.connect(database) as conn:
        active = [r[0] for r in conn.execute("UPDATE cim_models SET active = false WHERE active RETURNING id")]
    try:
        yield {"settings": database, "layer": layer, "dem": write_dem(tmp / "dem.tif"), "tmp": tmp, "df": df}
    finally:
        with db.connect(database) as conn:
            conn.execute("UPDATE cim_models SET active = true WHERE id = ANY(%s)", (active,))


def _build(env, tileset_id: str, **kw):
    from cim_builder.build import build

    return build(env["settings"], tileset_id=tileset_id, layer=env["layer"], dem=env["dem"], max_per_tile=150,
                 **kw)


@pytest.fixture(scope="module")
def far(env):
    out = env["tmp"] / "far"
    report = _build(env, "far", out=out)
    doc = json.loads((out / "tileset.json").read_text())
    return {"report": report, "out": out, "doc": doc, "tree": Tree(out, doc, env["df"])}


class Tree:
    """The tileset read back: every tile with its effective refine, the buildings its subtree
    draws, and (block tiles) the footprints of its features from their roof triangles."""

    def __init__(self, folder: Path, doc: dict, df):
        self.folder, self.doc = folder, doc
        self.source = dict(zip(df.building_id, df.geometry))
        self.height = dict(zip(df.building_id, df.height_m))
        self.tiles: list[dict] = []

        def walk(t: dict, world: np.ndarray, refine: str, parent: dict | None) -> dict:
            refine = t.get("refine", refine)
            world = world @ (np.eye(4) if "transform" not in t else np.asarray(t["transform"], float).reshape(4, 4).T)
            node = {"tile": t, "world": world, "refine": refine, "parent": parent, "children": [],
                    "uri": t.get("content", {}).get("uri"), "error": t["geometricError"], "own": set()}
            if node["uri"] and node["uri"].startswith("tiles/"):
                gl, binary = read_glb((folder / node["uri"]).read_bytes())
                node["own"] = set(property_values(gl, binary, 0)["building_id"])
            node["children"] = [walk(c, world, refine, node) for c in t.get("children", [])]
            node["under"] = set(node["own"]).union(*(c["under"] for c in node["children"]))
            self.tiles.append(node)
            return node

        self.root = walk(doc["root"], np.eye(4), doc["root"]["refine"], None)
        self._blocks: dict[str, tuple] = {}

    def blocks(self, node: dict) -> tuple[dict, dict]:
        """A block tile's features: index → footprint (EPSG:4547, from the roof triangles), and its
        property table."""
        uri = node["uri"]
        if uri not in self._blocks:
            gl, binary = read_glb((self.folder / uri).read_bytes())
            prim = gl["meshes"][0]["primitives"][0]
            pos = accessor_array(gl, binary, prim["attributes"]["POSITION"]).astype(float)
            normal = accessor_array(gl, binary, prim["attributes"]["NORMAL"]).astype(float)
            feature = accessor_array(gl, binary, prim["attributes"]["_FEATURE_ID_0"]).astype(int)
            tri = accessor_array(gl, binary, prim["indices"]).astype(int).reshape(-1, 3)
            enu = np.stack([pos[:, 0], -pos[:, 2], pos[:, 1]], axis=1)
            world = node["world"]
            ecef = enu @ world[:3, :3].T + world[:3, 3]
            x, y, _ = ECEF_TO_METRIC.transform(ecef[:, 0], ecef[:, 1], ecef[:, 2])
            roof = tri[(normal[tri][:, :, 1] > 0.99).all(axis=1)]  # glTF y is up
            polys = shapely.polygons(np.stack([x[roof], y[roof]], axis=2))
            owner = feature[roof[:, 0]]
            shapes = {int(f): shapely.multipolygons(polys[owner == f]) for f in np.unique(owner)}  # (unmerged)
            self._blocks[uri] = (shapes, property_values(gl, binary, 0))
        return self._blocks[uri]

    def footprints(self, ids) -> np.ndarray:
        return np.array([self.source[b] for b in sorted(ids)], dtype=object)


def farthest(a, b, step: float) -> float:
    """How far a point of the geometries ``a`` (their outlines every ``step`` m and a grid of
    ``step`` inside) lies from the nearest of the geometries ``b``: a directed Hausdorff distance."""
    a = shapely.get_parts(np.atleast_1d(np.asarray(a, dtype=object)))
    x0, y0, x1, y1 = shapely.total_bounds(a)
    gx, gy = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step))
    grid = shapely.points(gx.ravel(), gy.ravel())
    inside = np.unique(shapely.STRtree(a).query(grid, predicate="intersects")[0])
    points = np.concatenate([shapely.points(shapely.get_coordinates(shapely.segmentize(a, step))), grid[inside]])
    b = shapely.get_parts(np.atleast_1d(np.asarray(b, dtype=object)))
    _, dist = shapely.STRtree(b).query_nearest(points, return_distance=True, all_matches=False)
    return float(dist.max())


def block_nodes(tree: Tree) -> list[dict]:
    return [n for n in tree.tiles if n["uri"] and n["uri"].startswith("blocks/")]


def test_blocks_cover_the_whole_district_at_every_upper_level(far, env):
    tree, r = far["tree"], far["report"]
    assert r.buildings == len(env["df"]) and r.block_tiles == len(block_nodes(tree)) >= 8
    root = tree.root
    assert root["uri"].startswith("blocks/0/") and root["refine"] == "REPLACE"
    assert root["under"] == set(env["df"].building_id)
    levels = {int(n["uri"].split("/")[1]) for n in block_nodes(tree)}
    assert levels == set(range(max(levels) + 1)) and max(levels) >= 3
    for node in block_nodes(tree):
        shapes, table = tree.blocks(node)
        e = node["error"]
        blocks = list(shapes.values())
        under = tree.footprints(node["under"])
        # every building under the tile lies under its blocks, within the generalisation distance …
        assert farthest(under, blocks, e / 8) <= generalisation_distance(e) == e / 2, node["uri"]
        # … and no block reaches further than the tile's geometric error from them
        assert farthest(blocks, under, e / 8) <= e, node["uri"]
        # the metadata: every feature a row, block ids unique, buildings counted once (landmarks aside)
        count = len(table["block_id"])
        assert sorted(shapes) == list(range(count)) and len(set(table["block_id"])) == count
        landmark = np.array([bool(x) for x in table.get("landmark_id", [""] * count)])
        assert sum(np.array(table["building_count"])[~landmark]) == len(node["under"])
        heights = [tree.height[b] for b in node["under"]]
        assert max(table["max_height_m"]) == pytest.approx(max(heights), abs=0.01)
        assert min(heights) - 0.01 <= min(table["mean_height_m"]) and max(table["mean_height_m"]) <= max(heights) + 0.01
        # landmarks: buildings standing out of their block by more than the error, drawn as themselves
        for i in np.flatnonzero(landmark):
            bid = table["landmark_id"][i]
            assert bid in node["under"] and table["building_count"][i] == 1
            assert shapely.hausdorff_distance(shapes[i], tree.source[bid]) < 0.01
    # the skyline stays: in the block tiles of 1 km cells and finer (errors up to 64 m), each tower
    # stands at its own height — a landmark, or a block of its own
    towers = set(env["df"].building_id[env["df"].height_m >= 150])
    seen = 0
    for node in block_nodes(tree):
        if node["error"] > 100:
            continue
        shapes, table = tree.blocks(node)
        for bid in towers & node["under"]:
            centre = tree.source[bid].centroid
            assert any(shapes[i].intersects(centre) and table["mean_height_m"][i] == pytest.approx(tree.height[bid])
                       for i in shapes), (node["uri"], bid)
            seen += 1
    assert seen >= len(towers) == 4


def test_replace_tiles_children_draw_what_their_parent_drew(far):
    tree = far["tree"]
    # every tile with children is a block, refined by REPLACE; the building tiles are the leaves
    assert all(n["refine"] == "REPLACE" and n["uri"].startswith("blocks/") for n in tree.tiles if n["children"])
    assert all(not n["children"] for n in tree.tiles if n["uri"] and not n["uri"].startswith("blocks/"))
    checked = 0
    for node in tree.tiles:
        if node["refine"] != "REPLACE" or not node["children"]:
            continue
        assert node["uri"].startswith("blocks/")  # only a generalisation is replaced
        e = node["error"]
        assert e > 0 and all(c["error"] <= e for c in node["children"])
        # the children, once the parent gave way: child blocks, building tiles
        parts = []
        for c in node["children"]:
            parts += (list(tree.blocks(c)[0].values()) if c["uri"].startswith("blocks/")
                      else list(tree.footprints(c["own"])))
        parent = list(tree.blocks(node)[0].values())
        # the error is the distance between the two drawings: nothing appears or vanishes farther
        assert farthest(parent, parts, e / 8) <= e, node["uri"]
        assert farthest(parts, parent, e / 8) <= e, node["uri"]
        # and every building the parent stood for is drawn by exactly one child's subtree
        assert sorted(b for c in node["children"] for b in c["under"]) == sorted(node["under"])
        checked += 1
    assert checked >= 8


def test_a_small_district_keeps_the_plain_tree(env):
    """Hiding fewer than ``block_min`` buildings under its root, a district gets no blocks: the
    size-ordered tree with refine ADD, as before (the buildings from far are a handful)."""
    out = env["tmp"] / "far-plain"
    r = _build(env, "far-plain", out=out, block_min=len(env["df"]) + 1)
    doc = json.loads((out / "tileset.json").read_text())
    assert r.block_tiles == 0 and doc["root"]["refine"] == "ADD" and "content" not in doc["root"]
    assert not (out / "blocks").exists() and check_tileset(out) == []
    assert all("refine" not in t for t, _, anc in world_transforms(doc) if anc)


def _rendered(tree: Tree, camera: np.ndarray, *, sse: float = 16.0, height_px: int = 1080,
              fov_deg: float = 60.0) -> list[dict]:
    """The tiles a CesiumJS-like traversal draws from ``camera`` (ECEF): a tile whose screen-space
    error (geometricError × height / (distance × 2 tan(fov/2))) exceeds ``sse`` is refined — its
    children drawn instead (REPLACE) or as well (ADD); distance to the nearest point of its region."""
    k = height_px / (2 * math.tan(math.radians(fov_deg) / 2))
    lon_c, lat_c, h_c = Transformer.from_crs("EPSG:4479", CRS("EPSG:4490").to_3d(), always_xy=True).transform(
        *camera)
    out = []

    def distance(region):
        w, s, e, n, lo, hi = region
        lon = min(max(math.radians(lon_c), w), e)
        lat = min(max(math.radians(lat_c), s), n)
        h = min(max(h_c, lo), hi)
        p = np.array(LONLAT_TO_ECEF.transform(math.degrees(lon), math.degrees(lat), h))
        return max(float(np.linalg.norm(p - camera)), 1.0)

    def visit(node):
        refine_it = node["children"] and node["error"] * k / distance(node["tile"]["boundingVolume"]["region"]) > sse
        if node["uri"] and (not refine_it or node["refine"] == "ADD"):
            out.append(node)
        if refine_it:
            for c in node["children"]:
                visit(c)

    visit(tree.root)
    return out


@pytest.mark.parametrize("altitude", [14000, 10000, 7000, 3000])
def test_the_whole_district_is_drawn_from_far_away(far, env, altitude):
    """A camera looking down on the district's centre: every building is drawn — as itself, or
    inside a block drawn at that distance (within the block's generalisation distance)."""
    tree = far["tree"]
    x, y = X0 + 2300, Y0 + 2000
    camera = np.array(METRIC_TO_ECEF.transform(x, y, float(ground(x, y)) + altitude))
    drawn = _rendered(tree, camera)
    shown: set[str] = set()
    block_tiles = 0
    for node in drawn:
        if node["uri"].startswith("blocks/"):  # (its blocks cover them: the first test)
            block_tiles += 1
            shown |= node["under"]
        else:
            shown |= node["own"]
    assert shown == set(env["df"].building_id), len(set(env["df"].building_id) - shown)
    if altitude >= 7000:
        assert block_tiles and all(n["uri"].startswith("blocks/") for n in drawn)  # far: blocks only
    else:
        assert any(n["uri"].startswith("tiles/") for n in drawn)  # near: buildings come in


def test_block_tiles_validate_and_match_the_ground(far, env):
    out = far["out"]
    assert check_tileset(out) == []
    report = validate_all(out)
    assert report["errors"] == 0, [m for f in report["files"] for m in f["messages"] if m["severity"] == 0][:5]
    doc = far["doc"]
    assert doc["geometricError"] >= doc["root"]["geometricError"] > 0
    # block bases stand on the DEM's lowest point under them: no block floats
    tree = far["tree"]
    for node in block_nodes(tree)[:6]:
        gl, binary = read_glb((out / node["uri"]).read_bytes())
        prim = gl["meshes"][0]["primitives"][0]
        pos = accessor_array(gl, binary, prim["attributes"]["POSITION"]).astype(float)
        feature = accessor_array(gl, binary, prim["attributes"]["_FEATURE_ID_0"]).astype(int)
        enu = np.stack([pos[:, 0], -pos[:, 2], pos[:, 1]], axis=1)
        world = node["world"]
        ecef = enu @ world[:3, :3].T + world[:3, 3]
        x, y, h = ECEF_TO_METRIC.transform(ecef[:, 0], ecef[:, 1], ecef[:, 2])
        for f in np.unique(feature):
            mine = feature == f
            base = h[mine].min() - SEP
            assert base <= ground(x[mine], y[mine]).min() + 0.05


def test_incremental_rebuild_rewrites_the_leaf_and_the_blocks_above_it(env):
    from spatial_api.ingest import ingest_vector

    out = env["tmp"] / "far-inc"
    first = _build(env, "far-inc", out=out)
    assert first.full_rebuild and first.block_tiles > 0
    again = _build(env, "far-inc")
    assert not again.full_rebuild and again.tiles_written == 0
    tree = Tree(out, json.loads((out / "tileset.json").read_text()), env["df"])
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.glb")}
    # a building deep in the second neighbourhood grows a little (its tile stays the same)
    df = env["df"]
    bid = df.building_id[(df.geometry.centroid.x > X0 + 3000) & (df.height_m < 20)].iloc[0]
    leaf = next(n for n in tree.tiles if bid in n["own"])
    above, n = [], leaf["parent"]
    while n is not None:
        if n["uri"] and n["uri"].startswith("blocks/"):
            above.append(n)
        n = n["parent"]
    assert len(above) >= 3 and above[-1] is tree.root

    def key(uri: str) -> str:  # tiles/5/12/12-<hash>.glb → 5/12/12; blocks/… → block/…
        kind, rest = uri.split("/", 1)
        return ("block/" if kind == "blocks" else "") + rest.rsplit("-", 1)[0]

    changed = df[df.building_id == bid].copy()
    changed["height_m"] = changed["height_m"] + 2.5
    path = env["tmp"] / "one.gpkg"
    changed.to_file(path, driver="GPKG")
    ingest_vector(path, layer=env["layer"], key="building_id", mode="upsert", valid_from="2025-01-01",
                  settings=env["settings"])
    r = _build(env, "far-inc")
    assert not r.full_rebuild
    expected = {key(leaf["uri"])} | {key(n["uri"]) for n in above}
    assert set(r.written) == expected and r.tiles_written == len(expected)
    after = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.glb")}
    rewritten = {leaf["uri"]} | {n["uri"] for n in above}
    assert all(after.get(u) == t for u, t in before.items() if u not in rewritten)  # untouched
    assert all(u not in after for u in rewritten)  # replaced by new names, the old files gone
    assert check_tileset(out) == []
    new = Tree(out, json.loads((out / "tileset.json").read_text()), changed.combine_first(df))
    root_table = new.blocks(new.root)[1]
    assert sum(c for c, lm in zip(root_table["building_count"], root_table.get("landmark_id", [""] * 10**6))
               if not lm) == len(df)


def test_a_bim_model_stands_in_the_blocks_above_it(env):
    """A registered IFC model replaces a building's prism; from far, the blocks above stand for it
    (it counts as a building), and it hangs under them."""
    from cim_builder.build import _project_to_metric
    from cim_builder.ifc import register, registered_models
    from spatial_api import db
    from tests.unit.test_cim_ifc import make_ifc

    df = env["df"]
    target = df[(df.geometry.centroid.x > X0 + 2700) & (df.height_m < 30)].iloc[40]
    c = target.geometry.centroid
    ifc_path = make_ifc(env["tmp"] / "far.ifc", eastings=c.x - 10, northings=c.y - 6, height=float(ground(c.x, c.y)),
                        rotation_deg=0.0)
    register(env["settings"], ifc_path, model_id="far-model", store_dir=env["tmp"] / "models", layer=env["layer"])
    try:
        with db.connect(env["settings"]) as conn:
            model = next(m for m in registered_models(conn) if m.id == "far-model")
        footprint = _project_to_metric(model.footprint)
        out = env["tmp"] / "far-bim"
        r = _build(env, "far-bim", out=out)
        assert r.models == 1 and target.building_id in r.replaced_by_bim
        assert check_tileset(out) == []
        tree = Tree(out, json.loads((out / "tileset.json").read_text()), df)
        node = next(n for n in tree.tiles if n["uri"] and n["uri"].startswith("bim/far-model"))
        above, n = [], node["parent"]
        while n is not None:
            if n["uri"] and n["uri"].startswith("blocks/"):
                above.append(n)
            n = n["parent"]
        assert len(above) >= 3 and above[-1] is tree.root
        for n in above:
            shapes, _ = tree.blocks(n)
            assert farthest([footprint], list(shapes.values()), n["error"] / 8) <= n["error"] / 2, n["uri"]
        table = tree.blocks(tree.root)[1]
        landmark = [bool(x) for x in table.get("landmark_id", [""] * len(table["block_id"]))]
        replaced = len(r.replaced_by_bim)
        assert sum(c for c, lm in zip(table["building_count"], landmark) if not lm) == len(df) - replaced + 1
    finally:
        with db.connect(env["settings"]) as conn:
            conn.execute("DELETE FROM cim_models WHERE id = 'far-model'")
