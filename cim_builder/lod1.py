"""LOD1 prisms from building footprints, vectorised.

A :class:`Footprints` holds every ring vertex of every building (EPSG:4547, closing vertex
dropped, exterior rings counter-clockwise and holes clockwise seen from above) in building order,
with the index of each vertex's successor in its ring and the roof triangles. Walls are built per
tile from those arrays: one quad (4 vertices, 2 triangles) per ring edge, normal outward;
roofs reuse the ring vertices at the roof height with the local "up" as normal. Convex
single-ring roofs (most buildings) are fans built with numpy; only the others go through
earcut, one call per polygon (never per vertex).
"""

from __future__ import annotations

from dataclasses import dataclass

import mapbox_earcut
import numpy as np
import shapely

from cim_builder.geo import Frame


@dataclass
class Footprints:
    xy: np.ndarray  # (V, 2) ring vertices, EPSG:4547
    nxt: np.ndarray  # (V,) successor of each vertex in its ring (global index)
    voff: np.ndarray  # (B+1,) vertex offsets per building
    tri: np.ndarray  # (T, 3) roof triangles (global vertex indices), CCW from above
    toff: np.ndarray  # (B+1,) roof-triangle offsets per building

    @property
    def count(self) -> int:
        return len(self.voff) - 1

    def vertex_building(self) -> np.ndarray:
        return np.repeat(np.arange(self.count), np.diff(self.voff))


def footprints(geoms: np.ndarray) -> Footprints:
    """Polygons / multipolygons (EPSG:4547, one per building, none empty) → Footprints."""
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        geoms = shapely.orient_polygons(geoms)
    else:
        from shapely.geometry.polygon import orient

        geoms = np.array([orient(g) if g.geom_type == "Polygon" else
                          shapely.MultiPolygon([orient(p) for p in g.geoms]) for g in geoms], dtype=object)
    geoms = shapely.remove_repeated_points(geoms, 0.01)
    polys, poly_building = shapely.get_parts(geoms, return_index=True)
    keep = shapely.get_type_id(polys) == 3
    polys, poly_building = polys[keep], poly_building[keep]
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    # drop each ring's closing vertex
    last = np.r_[coord_ring[1:] != coord_ring[:-1], True]
    xy = coords[~last]
    vring = coord_ring[~last]
    nring = len(rings)
    rstart = np.searchsorted(vring, np.arange(nring))
    rend = np.r_[rstart[1:], len(vring)]
    nxt = np.arange(1, len(xy) + 1)
    nxt[rend - 1] = rstart
    # rings with fewer than 3 vertices after cleaning cannot make a face: they stay in the
    # vertex arrays (walls of zero area are skipped later by normal length) but get no roof
    vertex_building = poly_building[ring_poly[vring]]
    count = len(geoms)
    voff = np.zeros(count + 1, np.int64)
    np.cumsum(np.bincount(vertex_building, minlength=count), out=voff[1:])

    # roofs
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(len(nxt))
    d1 = xy - xy[prev]
    d2 = xy[nxt] - xy
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    rings_per_poly = np.bincount(ring_poly, minlength=len(polys))
    pstart_ring = np.searchsorted(ring_poly, np.arange(len(polys)))
    first_v = rstart[pstart_ring]
    nvert_ext = rend[pstart_ring] - first_v
    # convex: every turn left (or straight) along the CCW exterior
    min_cross = np.full(nring, np.inf)
    np.minimum.at(min_cross, vring, cross)
    convex = (rings_per_poly == 1) & (min_cross[pstart_ring] >= -1e-9) & (nvert_ext >= 3)
    fan_polys = np.flatnonzero(convex)
    ntri = nvert_ext[fan_polys] - 2
    fan_poly = np.repeat(np.arange(len(fan_polys)), ntri)  # of each fan triangle
    k = np.arange(ntri.sum()) - np.repeat(np.cumsum(ntri) - ntri, ntri) + 1  # its rank in the fan, from 1
    hub = first_v[fan_polys][fan_poly]
    fan = np.stack([hub, hub + k, hub + k + 1], axis=1)
    fan_building = poly_building[fan_polys][fan_poly]

    other = np.flatnonzero(~convex & (nvert_ext >= 3))
    ear_tris, ear_building = [], []
    for p in other:
        r0 = pstart_ring[p]
        r1 = r0 + rings_per_poly[p]
        v0, v1 = rstart[r0], rend[r1 - 1]
        ends = (rend[r0:r1] - v0).astype(np.uint32)
        local = mapbox_earcut.triangulate_float64(xy[v0:v1] - xy[v0], ends)
        if len(local):
            ear_tris.append(local.reshape(-1, 3).astype(np.int64) + v0)
            ear_building.append(np.full(len(local) // 3, poly_building[p]))
    tri = np.concatenate([fan] + ear_tris) if ear_tris else fan
    tri_building = np.concatenate([fan_building] + ear_building) if ear_building else fan_building
    order = np.argsort(tri_building, kind="stable")
    tri, tri_building = tri[order], tri_building[order]
    # counter-clockwise from above
    a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    flip = area2 < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    toff = np.zeros(count + 1, np.int64)
    np.cumsum(np.bincount(tri_building, minlength=count), out=toff[1:])
    return Footprints(xy=xy, nxt=nxt, voff=voff, tri=tri, toff=toff)


@dataclass
class Mesh:
    positions: np.ndarray
    normals: np.ndarray
    indices: np.ndarray
    feature_ids: np.ndarray


_QUAD = np.array([0, 1, 2, 0, 2, 3])


def prism_mesh(fp: Footprints, b0: int, b1: int, base_ecef: np.ndarray, top_ecef: np.ndarray,
               up_ecef: np.ndarray, frame: Frame) -> Mesh:
    """Walls and roofs of buildings b0..b1-1 in the frame's glTF coordinates. ``base_ecef`` /
    ``top_ecef`` are the ECEF positions of their vertices (``fp.voff[b0]:fp.voff[b1]``) at the
    base / roof height; ``up_ecef`` is every building's local up unit vector (global array)."""
    v0, v1 = fp.voff[b0], fp.voff[b1]
    base = frame.local(base_ecef)
    top = frame.local(top_ecef)
    base = np.stack([base[:, 0], base[:, 2], -base[:, 1]], axis=1)  # ENU → glTF y-up
    top = np.stack([top[:, 0], top[:, 2], -top[:, 1]], axis=1)
    vertex_building = np.repeat(np.arange(b1 - b0), np.diff(fp.voff[b0:b1 + 1]))
    v = np.arange(v1 - v0)
    w = fp.nxt[v0:v1] - v0
    # walls: one quad per edge (v → w): base v, base w, top w, top v
    walls = np.stack([base[v], base[w], top[w], top[v]], axis=1)  # (E, 4, 3)
    normal = np.cross(base[w] - base[v], top[v] - base[v])
    length = np.linalg.norm(normal, axis=1)
    ok = length > 1e-9
    walls, normal, length, wall_building = walls[ok], normal[ok], length[ok], vertex_building[ok]
    normal = normal / length[:, None]
    wall_count = len(walls)
    wall_idx = (np.arange(wall_count)[:, None] * 4 + _QUAD).reshape(-1)
    t0, t1 = fp.toff[b0], fp.toff[b1]
    roof_idx = (fp.tri[t0:t1] - v0).reshape(-1) + 4 * wall_count
    up = frame.direction_gltf(up_ecef[b0:b1])
    positions = np.concatenate([walls.reshape(-1, 3), top]).astype(np.float32)
    normals = np.concatenate([np.repeat(normal, 4, axis=0), up[vertex_building]]).astype(np.float32)
    feature_ids = np.concatenate([np.repeat(wall_building, 4), vertex_building])
    indices = np.concatenate([wall_idx, roof_idx])
    return Mesh(positions, normals, indices, feature_ids)
