"""Block models: what the upper levels of the tile tree draw ("the twin from far away").

When the district is large enough (its root hides :data:`BLOCK_MIN` buildings or more), every
quadtree cell with buildings in the tiles below it gets a *block tile*
(``cim_builder.build._plan_blocks``): every building of its subtree (its own level and below),
generalised; the building tiles become the leaves of a REPLACE tree.

- **Footprints**: the buildings are rasterised at a pixel of ``e/4`` (``e`` the tile's geometric
  error, ``Layout.block_error``: cell/16) — every pixel whose centre lies in a footprint, and
  every pixel its outline passes through — and the raster is closed (dilated, then eroded) by
  one pixel: gaps up to two pixels wide, the *generalisation distance* ``d = e/2``, fill up (the
  spaces between the buildings of a street block), wider ones (streets, squares) stay. Each
  4-connected region is one block, outlined by GDAL's polygonize and simplified by a pixel
  (Douglas–Peucker, topology kept). Every footprint lies within ``d`` of its block (≤ 2 pixels)
  and a block within ``e`` of its buildings (≤ ~0.85 e; about ``d`` in practice) — tested: the
  error a block tile claims is the distance between what it draws and what its children draw.
- **Heights**: a building that rises more than ``e`` above the median roof elevation of its
  block is a *landmark*: drawn as its own prism in the block tile too (a tower stays on the
  skyline from far). The block's roof is the area-weighted mean roof elevation of the others, its
  base the lowest ground under its buildings and under its outline (no block floats on a slope).
- **Metadata**: one row per feature (class ``block``): block id, building count, area-weighted
  mean and max height, and for a landmark the building's id.

The raster is per cell, from the cell's own buildings only: a block tile's content depends on
nothing but the buildings under it (so its content hash is theirs). Pure numpy + shapely, with
GDAL's polygonize (rasterio) for the outlines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

#: Blocks when the root hides at least this many buildings in the tiles below it (BIM models
#: count as buildings); a smaller district keeps the plain tree (refine ADD): from far it is a
#: handful of buildings, refined in as they come near.
BLOCK_MIN = 64
#: Pixel = block error / PIXEL_DIVISOR; closing radius and simplification tolerance in pixels.
PIXEL_DIVISOR = 4
CLOSING_PX = 1
SIMPLIFY_PX = 1.0
#: Part of every block tile's content hash: change it when the generalisation changes.
BLOCKS_VERSION = f"blocks/1 px=e/{PIXEL_DIVISOR} close={CLOSING_PX}px simplify={SIMPLIFY_PX}px"


def generalisation_distance(error: float) -> float:
    """The generalisation distance of a block tile of geometric error ``error`` (metres): gaps
    narrower than it close; every footprint lies within it of its block."""
    return 2 * CLOSING_PX * error / PIXEL_DIVISOR


@dataclass
class Outlines:
    """Every ring edge of a set of footprints (metric), grouped by footprint, with their bounds:
    computed once per build and shared by every level's rasterisation."""

    geoms: np.ndarray
    ax: np.ndarray  # edge start
    ay: np.ndarray
    dx: np.ndarray  # edge vector
    dy: np.ndarray
    length: np.ndarray
    eoff: np.ndarray  # (B+1,) edge offsets per footprint
    bounds: np.ndarray  # (B, 4)
    area: np.ndarray

    @classmethod
    def of(cls, geoms: np.ndarray) -> Outlines:
        geoms = np.asarray(geoms, dtype=object)
        parts, part_owner = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        same = coord_ring[1:] == coord_ring[:-1]  # consecutive vertices of one ring: an edge
        start = np.flatnonzero(same)
        owner = part_owner[ring_part[coord_ring[start]]]
        a, d = coords[start], coords[start + 1] - coords[start]
        eoff = np.zeros(len(geoms) + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=len(geoms)), out=eoff[1:])
        return cls(geoms, a[:, 0], a[:, 1], d[:, 0], d[:, 1], np.hypot(d[:, 0], d[:, 1]), eoff,
                   shapely.bounds(geoms).reshape(-1, 4), shapely.area(geoms))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(s, s + c)`` for every (s, c), and the range each element came from."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offset, owner


def rasterise(outlines: Outlines, members: np.ndarray, x0: float, y0: float,
              pixel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pixels (column, row of a grid with origin x0, y0) the footprints ``members`` cover:
    every pixel whose centre lies inside one, and every pixel their outlines pass through
    (sampled every half pixel) — so a footprint smaller than a pixel still marks one.
    Returns the columns and rows of the marked pixels (not deduplicated) and of every member's
    *anchor* pixel (the one of its first vertex, marked too)."""
    members = np.asarray(members, np.int64)
    n_edges = np.diff(outlines.eoff)[members]
    first = outlines.eoff[members]
    b = outlines.bounds[members]
    axy = (b[:, :2] + b[:, 2:]) / 2  # (a footprint without edges: the centre of its bounds)
    has = n_edges > 0
    axy[has, 0], axy[has, 1] = outlines.ax[first[has]], outlines.ay[first[has]]
    a_col = np.floor((axy[:, 0] - x0) / pixel).astype(np.int64)
    a_row = np.floor((axy[:, 1] - y0) / pixel).astype(np.int64)
    # outlines: samples every half pixel along every edge, from its start
    edges, _ = _ranges(first, n_edges)
    steps = np.maximum(np.ceil(outlines.length[edges] / (pixel / 2)).astype(np.int64), 1)
    sample_edge, sample_of = _ranges(np.zeros(len(edges), np.int64), steps)
    e = edges[sample_of]
    frac = sample_edge / steps[sample_of]
    s_col = np.floor((outlines.ax[e] + frac * outlines.dx[e] - x0) / pixel).astype(np.int64)
    s_row = np.floor((outlines.ay[e] + frac * outlines.dy[e] - y0) / pixel).astype(np.int64)
    # interiors: pixel centres inside the bounds, tested
    c0 = np.ceil((b[:, 0] - x0) / pixel - 0.5).astype(np.int64)
    c1 = np.floor((b[:, 2] - x0) / pixel - 0.5).astype(np.int64)
    r0 = np.ceil((b[:, 1] - y0) / pixel - 0.5).astype(np.int64)
    r1 = np.floor((b[:, 3] - y0) / pixel - 0.5).astype(np.int64)
    nx, ny = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    k, i_member = _ranges(np.zeros(len(members), np.int64), nx * ny)
    width = np.maximum(nx[i_member], 1)
    cx, cy = c0[i_member] + k % width, r0[i_member] + k // width
    inside = shapely.contains_xy(outlines.geoms[members[i_member]], x0 + (cx + 0.5) * pixel, y0 + (cy + 0.5) * pixel)
    col = np.concatenate([a_col, s_col, cx[inside]])
    row = np.concatenate([a_row, s_row, cy[inside]])
    return col, row, a_col, a_row


_DISK = [(dy, dx) for dy in range(-CLOSING_PX, CLOSING_PX + 1) for dx in range(-CLOSING_PX, CLOSING_PX + 1)
         if dx * dx + dy * dy <= CLOSING_PX * CLOSING_PX]


def _dilate(grid: np.ndarray) -> np.ndarray:
    out = np.zeros_like(grid)
    h, w = grid.shape
    for dy, dx in _DISK:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= grid[max(-dy, 0):h + min(-dy, 0),
                                                                          max(-dx, 0):w + min(-dx, 0)]
    return out


def close(grid: np.ndarray) -> np.ndarray:
    """Morphological closing by a disk of CLOSING_PX pixels (the grid padded by more than that)."""
    return ~_dilate(~_dilate(grid))


@dataclass
class Blocks:
    """The features of one block tile: blocks first, then landmarks."""

    polygons: np.ndarray  # metric
    base: np.ndarray  # orthometric m
    roof: np.ndarray
    building_count: np.ndarray
    mean_height: np.ndarray  # area-weighted mean height of the buildings (landmarks: their own)
    max_height: np.ndarray
    landmark_id: list[str]  # "" for a block
    member_block: np.ndarray  # the block of every member (rank in the input)

    def __len__(self) -> int:
        return len(self.polygons)


def generalise(outlines: Outlines, members: np.ndarray, base: np.ndarray, roof: np.ndarray, ids,
               *, x0: float, y0: float, error: float, ground=None) -> Blocks:
    """The block models of the footprints ``members`` (indices into ``outlines``) for a tile of
    geometric error ``error``: ``base`` / ``roof`` orthometric elevations and ``ids`` of those
    members (same order); ``ground(x, y)`` the DEM (NaN off it) under the block outlines. The
    pixel grid is anchored at (x0, y0) (the quadtree's origin: pixels nest in cells)."""
    from rasterio.features import shapes

    members = np.asarray(members, np.int64)
    pixel = error / PIXEL_DIVISOR
    col, row, a_col, a_row = rasterise(outlines, members, x0, y0, pixel)
    pad = 2 * CLOSING_PX + 1
    c_min, r_min = int(col.min()) - pad, int(row.min()) - pad
    grid = np.zeros((int(row.max()) - r_min + pad + 1, int(col.max()) - c_min + pad + 1), bool)
    grid[row - r_min, col - c_min] = True
    closed = close(grid)
    # outlines (GDAL's polygonize, 4-connected regions) in metres
    ox, oy = x0 + c_min * pixel, y0 + r_min * pixel
    regions = []
    for geom, _ in shapes(closed.view(np.uint8), mask=closed, connectivity=4):
        rings = [shapely.linearrings(np.asarray(ring) * pixel + (ox, oy)) for ring in geom["coordinates"]]
        regions.append(shapely.polygons(rings[0], rings[1:] or None))
    regions = np.array(regions, dtype=object)
    # the block of every member: the region holding the centre of its anchor pixel (tested once
    # per pixel: at coarse levels thousands of buildings share one)
    width = grid.shape[1]
    pixel_key, member_pixel = np.unique((a_row - r_min) * width + (a_col - c_min), return_inverse=True)
    px = ox + (pixel_key % width + 0.5) * pixel
    py = oy + (pixel_key // width + 0.5) * pixel
    by_x = np.argsort(px, kind="stable")
    sorted_x = px[by_x]
    pixel_block = np.full(len(pixel_key), -1, np.int64)
    for k, region in enumerate(regions):
        shapely.prepare(region)
        west, south, east, north = region.bounds
        near = by_x[np.searchsorted(sorted_x, west):np.searchsorted(sorted_x, east, side="right")]
        near = near[(py[near] > south) & (py[near] < north)]
        pixel_block[near[shapely.contains_xy(region, px[near], py[near])]] = k
    lost = np.flatnonzero(pixel_block < 0)  # (none: an anchor pixel is marked, the closing keeps it)
    if len(lost):
        pixel_block[lost] = [int(np.argmin(shapely.distance(regions, shapely.Point(px[i], py[i])))) for i in lost]
    member_block = pixel_block[member_pixel.reshape(-1)]
    # (a region of the closing without an anchor — in theory possible — is dropped)
    used = np.flatnonzero(np.bincount(member_block, minlength=len(regions)))
    renumber = np.full(len(regions), -1, np.int64)
    renumber[used] = np.arange(len(used))
    regions, member_block = regions[used], renumber[member_block]
    nblocks = len(regions)
    regions = shapely.simplify(regions, SIMPLIFY_PX * pixel, preserve_topology=True)
    # heights: landmarks rise more than the error above the median roof of their block (a median:
    # one tower does not lift it); the others' area-weighted mean roof is the block's
    area = np.maximum(outlines.area[members], 1e-6)
    height = roof - base
    order = np.lexsort((roof, member_block))
    size = np.bincount(member_block, minlength=nblocks)
    start = np.r_[0, np.cumsum(size)[:-1]]
    median = (roof[order[start + (size - 1) // 2]] + roof[order[start + size // 2]]) / 2
    landmark = roof > median[member_block] + error
    w = np.where(landmark, 0.0, area)
    mean_roof = np.bincount(member_block, w * roof, nblocks) / np.bincount(member_block, w, nblocks)
    mean_height = np.bincount(member_block, w * height, nblocks) / np.bincount(member_block, w, nblocks)
    max_height = np.full(nblocks, -np.inf)
    np.maximum.at(max_height, member_block, height)
    block_base = np.full(nblocks, np.inf)
    np.minimum.at(block_base, member_block, base)
    if ground is not None:
        xy, owner = shapely.get_coordinates(regions, return_index=True)
        z = ground(xy[:, 0], xy[:, 1])
        z = np.where(np.isfinite(z), z, np.inf)
        np.minimum.at(block_base, owner, z)
    lm = np.flatnonzero(landmark)
    ids = np.asarray(ids, dtype=object)
    return Blocks(
        polygons=np.concatenate([regions, outlines.geoms[members[lm]]]),
        base=np.concatenate([block_base, base[lm]]),
        roof=np.concatenate([mean_roof, roof[lm]]),
        building_count=np.concatenate([np.bincount(member_block, minlength=nblocks), np.ones(len(lm), np.int64)]),
        mean_height=np.concatenate([mean_height, height[lm]]),
        max_height=np.concatenate([max_height, height[lm]]),
        landmark_id=[""] * nblocks + [str(i) for i in ids[lm]],
        member_block=member_block,
    )
