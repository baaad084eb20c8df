"""The tile hierarchy: a quadtree over EPSG:4547, ``refine: ADD`` for the buildings and
``REPLACE`` for the block models above them.

Where a building goes depends on itself only (so a change touches only its own tile): its
*size* σ = max(footprint bbox diagonal, height) picks the level, its centre picks the cell.
A non-leaf tile at level ``l`` claims the geometric error ``g_l = s_l / (2k)`` (``s_l`` the cell
size, ``k`` = 4): every building with σ ≥ g_l lives at level ``l`` or above, so leaving out the
levels below costs at most g_l metres. The errors halve level by level; leaves have 0. The
deepest level is chosen at a full build so that no leaf holds more than ``max_per_tile``
buildings, and kept (with the grid origin and size) for incremental rebuilds.

Bounding volumes are ``region``s (radians, ellipsoidal metres) computed from the content of the
tile and of all its descendants, so they are tight and nest. Content tiles carry a
``transform`` (their east-north-up frame → ECEF); as transforms compose down the tree, a
child's transform is stored relative to its nearest transformed ancestor.

Block tiles (:mod:`cim_builder.blocks`): in a district large enough, every cell with buildings
below it draws them generalised. Its tile holds the blocks, refines by ``REPLACE`` and claims
``Layout.block_error`` = g_{l+1} (cell/16) — the error the plain tiles one level down would
claim — so errors still halve down the tree. Its children are the cells below (blocks again, or
building tiles with nothing below them) and, as a leaf, the cell's own buildings (the large ones
its level holds, additive to the cells below): once the block gives way, they draw everything
it stood for, each building once. The building tiles are the leaves; a small district keeps
the plain ``ADD`` tree. ``refine`` is written where it changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cim_builder.geo import ecef_to_lonlat
from cim_builder.glb import accessor_array, read_glb


@dataclass(frozen=True)
class Layout:
    x0: float
    y0: float
    size: float
    max_level: int
    k: float = 4.0
    crs: str = "EPSG:4547"

    def cell(self, level: int) -> float:
        return self.size / 2 ** level

    def error(self, level: int) -> float:
        return self.cell(level) / (2 * self.k)

    def block_error(self, level: int) -> float:
        """The geometric error of a block tile at ``level``: that of the plain tiles below it."""
        return self.error(level + 1)

    def levels(self, sigma: np.ndarray) -> np.ndarray:
        sigma = np.maximum(np.asarray(sigma, float), 1e-3)
        level = np.ceil(np.log2(self.size / (2 * self.k * sigma)))
        return np.clip(level, 0, self.max_level).astype(np.int64)

    def index(self, x: np.ndarray, y: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cell_size = self.size / 2.0 ** level
        return (np.floor((x - self.x0) / cell_size).astype(np.int64),
                np.floor((y - self.y0) / cell_size).astype(np.int64))

    def contains(self, x: np.ndarray, y: np.ndarray) -> bool:
        return bool(np.all((x >= self.x0) & (x < self.x0 + self.size) & (y >= self.y0) & (y < self.y0 + self.size)))

    def cell_centre(self, level: int, ix: int, iy: int) -> tuple[float, float]:
        cell_size = self.cell(level)
        return self.x0 + (ix + 0.5) * cell_size, self.y0 + (iy + 0.5) * cell_size

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(**d)


def choose_layout(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, *, max_per_tile: int,
                  margin: float = 1000.0, k: float = 4.0) -> Layout:
    """Grid origin snapped to 1 km with a margin (so buildings added near the edge still fit),
    size a power of two times 256 m, and the shallowest deepest level that bounds leaf size."""
    if not len(x):
        return Layout(0.0, 0.0, 256.0, 0, k)
    x0 = math.floor((x.min() - margin) / 1000) * 1000
    y0 = math.floor((y.min() - margin) / 1000) * 1000
    extent = max(x.max() + margin - x0, y.max() + margin - y0, 256.0)
    size = 256.0 * 2 ** math.ceil(math.log2(extent / 256.0))
    layout = Layout(x0, y0, size, 0, k)
    for depth in range(1, 20):
        layout = Layout(x0, y0, size, depth, k)
        if layout.cell(depth) <= 64:
            break
        leaf = layout.levels(sigma) == depth
        if not leaf.any():
            continue
        ix, iy = layout.index(x[leaf], y[leaf], depth)
        _, counts = np.unique(ix * (1 << 21) + iy, return_counts=True)
        if counts.max() <= max_per_tile:
            break
    return layout


def cap_levels(layout: Layout, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, tiebreak: np.ndarray,
               cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels and cells of every building, with inner tiles bounded too: where a tile above the
    leaves would hold more than ``cap`` buildings (many towers in one cell), its smallest ones
    (ties broken by ``tiebreak``) move one level down, level by level. Leaves are bounded by the
    depth :func:`choose_layout` picked."""
    levels = layout.levels(sigma)
    ix, iy = layout.index(x, y, levels)
    for level in range(layout.max_level):
        here = np.flatnonzero(levels == level)
        if len(here) <= cap:
            continue
        cell_code = ix[here] * (1 << 24) + iy[here]
        order = np.lexsort((tiebreak[here], -sigma[here], cell_code))
        sorted_cells = cell_code[order]
        start = np.r_[0, np.flatnonzero(np.diff(sorted_cells)) + 1]
        rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))  # within its cell
        down = here[order[rank >= cap]]
        if len(down):
            levels[down] = level + 1
            ix[down], iy[down] = layout.index(x[down], y[down], levels[down])
    return levels, ix, iy


def tile_key(level: int, ix: int, iy: int) -> str:
    return f"{level}/{ix}/{iy}"


@dataclass
class Node:
    key: str
    level: int
    ix: int
    iy: int
    region: list[float] | None = None  # west, south, east, north (rad), min h, max h
    content: str | None = None
    transform: list[float] | None = None  # world (ENU → ECEF), column-major
    error: float = 0.0
    children: list["Node"] = field(default_factory=list)
    refine: str = "ADD"
    fixed_error: float | None = None  # its own (blocks, BIM, a cell's buildings under its block); None: g_l


def union_region(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    if a is None:
        return b
    if b is None:
        return a
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5])]


def _matrix(transform: list[float] | None) -> np.ndarray:
    """A 3D Tiles transform (16 numbers, column-major) as a 4×4 matrix; identity for none."""
    return np.eye(4) if transform is None else np.asarray(transform, float).reshape(4, 4).T


def build_tree(layout: Layout, content_tiles: dict[str, dict], extra: list[dict],
               blocks: dict[str, dict] | None = None) -> Node:
    """``content_tiles``: key "l/x/y" → {"uri", "region", "transform"} (buildings); ``extra``: BIM
    tiles {"key", "uri", "region", "transform", "parent": (l, ix, iy)} hung under a quadtree cell;
    ``blocks``: key "l/x/y" → {"uri", "region", "transform"}, the block tile of that cell."""
    nodes: dict[tuple[int, int, int], Node] = {}

    def get(level: int, ix: int, iy: int) -> Node:
        cell = (level, ix, iy)
        if cell not in nodes:
            nodes[cell] = Node(tile_key(level, ix, iy), level, ix, iy)
            if level > 0:
                get(level - 1, ix >> 1, iy >> 1).children.append(nodes[cell])
        return nodes[cell]

    root = get(0, 0, 0)
    for key, info in content_tiles.items():
        level, ix, iy = (int(v) for v in key.split("/"))
        node = get(level, ix, iy)
        node.content, node.region, node.transform = info["uri"], list(info["region"]), info["transform"]
    for info in extra:
        parent = get(*info["parent"])
        parent.children.append(Node(info["key"], parent.level + 1, -1, -1, list(info["region"]),
                                    info["uri"], info["transform"], 0.0, fixed_error=0.0))
    for key, info in (blocks or {}).items():
        level, ix, iy = (int(v) for v in key.split("/"))
        node = get(level, ix, iy)
        if node.content:  # the cell's own buildings: a leaf under its block
            node.children.append(Node(node.key, level, ix, iy, node.region, node.content, node.transform,
                                      fixed_error=0.0))
        node.content, node.region, node.transform = info["uri"], list(info["region"]), info["transform"]
        node.refine, node.fixed_error = "REPLACE", layout.block_error(level)

    def finish(n: Node) -> None:
        n.children.sort(key=lambda c: c.key)
        for c in n.children:
            finish(c)
            n.region = union_region(n.region, c.region)
        n.children = [c for c in n.children if c.region is not None]
        n.error = n.fixed_error if n.fixed_error is not None else (layout.error(n.level) if n.children else 0.0)

    finish(root)
    return root


def tileset_json(root: Node, *, extras: dict | None = None) -> dict:
    def emit(n: Node, parent_world: np.ndarray, parent_refine: str | None, parent_transform: list | None) -> dict:
        out: dict = {"boundingVolume": {"region": [float(v) for v in n.region]},
                     "geometricError": float(n.error)}
        refine = parent_refine
        if n.children and n.refine != parent_refine:  # written where it changes (a leaf refines nothing)
            out["refine"] = refine = n.refine
        world = parent_world
        if n.transform is not None and n.transform != parent_transform:  # (a block's own buildings: its frame)
            world = _matrix(n.transform)
            rel = np.linalg.solve(parent_world, world)
            out["transform"] = [float(v) for v in rel.T.reshape(-1)]
        if n.content:
            out["content"] = {"uri": n.content}
        if n.children:
            out["children"] = [emit(c, world, refine, n.transform or parent_transform) for c in n.children]
        return out

    if root.region is None:  # nothing to show: an empty, valid tileset
        root.region = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    body = emit(root, np.eye(4), None, None)
    body["refine"] = root.refine
    doc = {"asset": {"version": "1.1", "generator": "geotwin cim_builder"},
           "geometricError": float(max(root.error * 2, 1.0)), "root": body}
    if extras:
        doc["extras"] = extras
    return doc


# ------------------------------------------------------------------------------------------
# the structural check (tests and `geotwin cim check`)


def world_transforms(doc: dict) -> list[tuple[dict, np.ndarray, list[dict]]]:
    """Every tile with its world transform (ENU → ECEF) and its ancestors, root first."""
    out = []

    def walk(t: dict, parent: np.ndarray, ancestors: list[dict]) -> None:
        world = parent @ _matrix(t.get("transform"))
        out.append((t, world, ancestors))
        for c in t.get("children", []):
            walk(c, world, ancestors + [t])

    walk(doc["root"], np.eye(4), [])
    return out


def check_tileset(folder: Path, doc: dict | None = None, *, tol_rad: float = 1e-9, tol_m: float = 1e-3,
                  check_positions: bool = True) -> list[str]:
    """Problems found in a tileset (empty list: fine): version, regions nested, geometric error
    non-increasing and 0 only at leaves, every content URI resolves to a glb whose metadata
    property tables match its schema, and (optionally) every vertex inside its tile's region."""
    folder = Path(folder)
    doc = doc or json.loads((folder / "tileset.json").read_text())
    problems: list[str] = []
    if doc.get("asset", {}).get("version") != "1.1":
        problems.append("asset.version is not 1.1")
    if doc["root"].get("refine") not in ("ADD", "REPLACE"):
        problems.append("root has no refine")
    for tile, _, _ in world_transforms(doc):
        if tile.get("refine", "ADD") not in ("ADD", "REPLACE"):
            problems.append(f"refine {tile['refine']!r} is neither ADD nor REPLACE")
    if doc["geometricError"] < doc["root"]["geometricError"]:
        problems.append("tileset geometricError below the root's")
    for tile, world, ancestors in world_transforms(doc):
        region = tile["boundingVolume"].get("region")
        name = tile.get("content", {}).get("uri", "(no content)")
        if region is None:
            problems.append(f"{name}: no region")
            continue
        if not (region[0] <= region[2] and region[1] <= region[3] and region[4] <= region[5]):
            problems.append(f"{name}: region inverted {region}")
        if ancestors:
            parent = ancestors[-1]["boundingVolume"]["region"]
            if (region[0] < parent[0] - tol_rad or region[1] < parent[1] - tol_rad
                    or region[2] > parent[2] + tol_rad or region[3] > parent[3] + tol_rad
                    or region[4] < parent[4] - tol_m or region[5] > parent[5] + tol_m):
                problems.append(f"{name}: region {region} not inside the parent's {parent}")
            if tile["geometricError"] > ancestors[-1]["geometricError"]:
                problems.append(f"{name}: geometricError grows from its parent")
            if ancestors[-1]["geometricError"] <= 0:
                problems.append(f"{name}: its parent has children but geometricError 0")
        if not tile.get("children") and tile["geometricError"] != 0:
            problems.append(f"{name}: a leaf with geometricError {tile['geometricError']}")
        if "content" not in tile:
            continue
        path = folder / tile["content"]["uri"]
        if not path.is_file():
            problems.append(f"content {tile['content']['uri']} does not resolve")
            continue
        gltf, binary = read_glb(path.read_bytes())
        meta = gltf.get("extensions", {}).get("EXT_structural_metadata")
        if not meta:
            problems.append(f"{name}: no EXT_structural_metadata")
            continue
        classes = meta["schema"]["classes"]
        for i, table in enumerate(meta["propertyTables"]):
            cls = classes.get(table["class"])
            if cls is None:
                problems.append(f"{name}: property table {i} has unknown class {table['class']}")
                continue
            missing = {k for k, v in cls["properties"].items() if v.get("required")} - set(table["properties"])
            unknown = set(table["properties"]) - set(cls["properties"])
            if missing or unknown:
                problems.append(f"{name}: table {i} missing {sorted(missing)} unknown {sorted(unknown)}")
        for prim in gltf["meshes"][0]["primitives"]:
            fid = prim["extensions"]["EXT_mesh_features"]["featureIds"][0]
            table = meta["propertyTables"][fid["propertyTable"]]
            ids = accessor_array(gltf, binary, prim["attributes"]["_FEATURE_ID_%d" % fid["attribute"]])
            # a primitive may hold some of its table's features (several primitives, one table)
            if fid["featureCount"] > table["count"] or (len(ids) and ids.max() >= table["count"]):
                problems.append(f"{name}: feature ids exceed the property table")
            if check_positions:
                pos = accessor_array(gltf, binary, prim["attributes"]["POSITION"]).astype(float)
                enu = np.stack([pos[:, 0], -pos[:, 2], pos[:, 1]], axis=1)
                ecef = enu @ world[:3, :3].T + world[:3, 3]
                llh = ecef_to_lonlat(ecef)
                lon, lat = np.radians(llh[:, 0]), np.radians(llh[:, 1])
                eps = 1e-7
                if (lon.min() < region[0] - eps or lon.max() > region[2] + eps or lat.min() < region[1] - eps
                        or lat.max() > region[3] + eps or llh[:, 2].min() < region[4] - 0.05
                        or llh[:, 2].max() > region[5] + 0.05):
                    problems.append(f"{name}: vertices outside the tile's region")
    return problems
