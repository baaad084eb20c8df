"""Exact 3D distances for the clash check (numpy, vectorised over pairs).

Everything is in EPSG:4547 metres with orthometric heights. The primitives:

- :func:`segment_triangle_distance` — a segment and a triangle: 0 when the segment crosses the
  triangle (Möller–Trumbore with the segment's parameter in [0, 1]); otherwise the minimum of the
  two endpoint–triangle distances and the three segment–edge distances. That minimum is exact: two
  disjoint convex sets are closest at a pair of points of which at least one lies on the boundary
  of its set, and a segment's boundary is its endpoints, a triangle's its edges.
- :func:`points_in_mesh` — ray parity against a closed triangle soup (three ray directions, the
  majority wins, so a ray grazing an edge cannot flip the answer on its own).
- :func:`segment_prism_distance` — a segment and a prism ``F × [z0, z1]`` (F a shapely polygon):
  a prism is a product set, so ``d(p)² = d_F(x, y)² + d_z(z)²``. Where the segment's plan runs
  inside F, ``d_F = 0`` and ``d_z`` is convex piecewise-linear along it (solved at the pieces' ends
  or 0 when the height crosses [z0, z1]). Outside F, ``d_F`` is the distance to F's nearest edge,
  and for each edge ``g(t) = d_edge(t)² + d_z(t)²`` is a convex piecewise quadratic in the
  segment parameter t with at most four breakpoints (the projection onto the edge reaches its
  ends; the height reaches z0 or z1). Its minimum is at a breakpoint, an end of [0, 1], or the
  stationary point of one of the 3 × 3 quadratic forms: all are evaluated, the smallest taken.
  No iteration, no tolerance — exact up to floating point.
- :func:`prism_triangles` — the prism as a closed triangle soup (caps by shapely's constrained
  Delaunay triangulation, walls two triangles per edge), for box-section pipes and solids that
  meet a mesh.
"""

from __future__ import annotations

import numpy as np
import shapely

_EPS = 1e-12
#: three ray directions for the parity test: irrational-ish, none along an axis or a diagonal
_RAYS = np.array([[0.5773503, 0.3141593, 0.7538607], [-0.2718282, 0.8660254, -0.4196278],
                  [0.6931472, -0.5411961, -0.4763104]])
_RAYS /= np.linalg.norm(_RAYS, axis=1, keepdims=True)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def point_segment_distance2(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from points p to segments ab (any dimension, broadcast)."""
    ab = b - a
    denom = np.maximum(_dot(ab, ab), _EPS)
    t = np.clip(_dot(p - a, ab) / denom, 0.0, 1.0)
    d = p - (a + t[..., None] * ab)
    return _dot(d, d)


def point_triangle_distance2(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distance from points to triangles (3D): the plane distance where the projection
    falls inside the triangle, else the nearest of the three edges."""
    ab, ac = b - a, c - a
    n = np.cross(ab, ac)
    nn = _dot(n, n)
    ap = p - a
    # barycentric coordinates of the projection (Cramer's rule on the plane)
    d00, d01, d11 = _dot(ab, ab), _dot(ab, ac), _dot(ac, ac)
    d20, d21 = _dot(ap, ab), _dot(ap, ac)
    den = d00 * d11 - d01 * d01
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (d11 * d20 - d01 * d21) / den
        w = (d00 * d21 - d01 * d20) / den
        plane2 = _dot(ap, n) ** 2 / nn
    inside = (nn > _EPS) & (v >= 0) & (w >= 0) & (v + w <= 1)
    edges = np.minimum(np.minimum(point_segment_distance2(p, a, b), point_segment_distance2(p, b, c)),
                       point_segment_distance2(p, c, a))
    return np.where(inside, plane2, edges)


def segment_segment_distance2(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Squared distance between segments p1q1 and p2q2 (3D, vectorised; Ericson, Real-Time
    Collision Detection §5.1.9, with the degenerate and parallel cases)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e = _dot(d1, d1), _dot(d2, d2)
    f, c, b = _dot(d2, r), _dot(d1, r), _dot(d1, d2)
    a_ = np.maximum(a, _EPS)
    e_ = np.maximum(e, _EPS)
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > _EPS * np.maximum(a * e, _EPS), np.clip((b * f - c * e) / denom, 0.0, 1.0), 0.0)
    t = (b * s + f) / e_
    s = np.where(t < 0, np.clip(-c / a_, 0.0, 1.0), np.where(t > 1, np.clip((b - c) / a_, 0.0, 1.0), s))
    t = np.clip(t, 0.0, 1.0)
    d = (p1 + s[..., None] * d1) - (p2 + t[..., None] * d2)
    return _dot(d, d)


def segment_crosses_triangle(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray,
                             c: np.ndarray) -> np.ndarray:
    """Does segment pq meet triangle abc (Möller–Trumbore, boundaries included)? Coplanar
    segments are not reported here: their distance is 0 through the edge and endpoint terms."""
    d = q - p
    e1, e2 = b - a, c - a
    h = np.cross(d, e2)
    det = _dot(e1, h)
    ok = np.abs(det) > _EPS * np.sqrt(_dot(d, d) * _dot(e1, e1) * _dot(e2, e2)).clip(_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        s = p - a
        u = inv * _dot(s, h)
        qv = np.cross(s, e1)
        v = inv * _dot(d, qv)
        t = inv * _dot(e2, qv)
    tol = 1e-12
    with np.errstate(invalid="ignore"):
        return ok & (u >= -tol) & (v >= -tol) & (u + v <= 1 + tol) & (t >= -tol) & (t <= 1 + tol)


def segment_triangle_distance(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray,
                              c: np.ndarray) -> np.ndarray:
    """Exact distance between segments pq and triangles abc, pairwise (arrays (n, 3))."""
    d2 = np.minimum(point_triangle_distance2(p, a, b, c), point_triangle_distance2(q, a, b, c))
    for u, v in ((a, b), (b, c), (c, a)):
        d2 = np.minimum(d2, segment_segment_distance2(p, q, u, v))
    return np.where(segment_crosses_triangle(p, q, a, b, c), 0.0, np.sqrt(d2))


def points_in_mesh(points: np.ndarray, tris: np.ndarray, chunk: int = 2_000_000) -> np.ndarray:
    """Which points lie inside the closed triangle soup ``tris`` (T, 3, 3): ray parity along three
    directions, majority vote."""
    points = np.asarray(points, float).reshape(-1, 3)
    if not len(points) or not len(tris):
        return np.zeros(len(points), bool)
    a, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    votes = np.zeros(len(points), int)
    step = max(1, chunk // len(tris))
    for d in _RAYS:
        h = np.cross(d, e2)  # (T, 3)
        det = _dot(e1, h)
        okt = np.abs(det) > _EPS
        inv = np.where(okt, 1.0 / np.where(okt, det, 1.0), 0.0)
        hits = np.zeros(len(points), int)
        for i in range(0, len(points), step):
            s = points[i:i + step, None, :] - a[None]  # (P, T, 3)
            u = inv * _dot(s, h[None])
            qv = np.cross(s, e1[None])
            v = inv * (qv @ d)
            t = inv * _dot(qv, e2[None])
            hit = okt & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
            hits[i:i + step] = hit.sum(axis=1)
        votes += hits % 2
    return votes >= 2


# ------------------------------------------------------------------------------------------
# prisms


def polygon_edges(poly) -> np.ndarray:
    """Every ring edge of a (Multi)Polygon: (m, 2, 2)."""
    rings = shapely.get_rings(shapely.get_parts(poly))
    coords, idx = shapely.get_coordinates(rings, return_index=True)
    same = idx[1:] == idx[:-1]
    return np.stack([coords[:-1][same], coords[1:][same]], axis=1)


def _axis_candidates(P0, D, z0, dz, A, B, zb, zt):
    """Candidate parameters t (pairs, 15) for min g(t) = d_edge(t)² + d_z(t)² (see module doc)."""
    e = B - A
    ee = np.maximum(_dot(e, e), _EPS)
    DD = _dot(D, D)
    De = _dot(D, e)
    w_a = P0 - A
    w_b = P0 - B
    # forms of the plan distance²: (A_, B_) of A_t² + B_t + C
    forms_d = [(DD, 2 * _dot(w_a, D)),
               (DD - De * De / ee, 2 * (_dot(w_a, D) - _dot(w_a, e) * De / ee)),
               (DD, 2 * _dot(w_b, D))]
    dz2 = dz * dz
    forms_z = [(dz2, -2 * dz * (zb - z0)), (np.zeros_like(dz), np.zeros_like(dz)), (dz2, 2 * dz * (z0 - zt))]
    cands = [np.zeros_like(dz), np.ones_like(dz)]
    with np.errstate(divide="ignore", invalid="ignore"):
        # breakpoints: projection parameter u(t) = (w_a + tD)·e/|e|² reaches 0 or 1; z(t) reaches zb or zt
        cands += [-_dot(w_a, e) / np.where(np.abs(De) > _EPS, De, np.nan),
                  (ee - _dot(w_a, e)) / np.where(np.abs(De) > _EPS, De, np.nan),
                  (zb - z0) / np.where(np.abs(dz) > _EPS, dz, np.nan),
                  (zt - z0) / np.where(np.abs(dz) > _EPS, dz, np.nan)]
        for ad, bd in forms_d:
            for az, bz in forms_z:
                a2 = ad + az
                cands.append(-(bd + bz) / (2 * np.where(a2 > _EPS, a2, np.nan)))
    t = np.stack(cands, axis=-1)
    return np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)


def _dz(z, zb, zt):
    return np.maximum(np.maximum(zb - z, z - zt), 0.0)


def segment_prism_distance(p: np.ndarray, q: np.ndarray, poly, zb: float, zt: float) -> np.ndarray:
    """Exact distance from 3D segments (p, q: (n, 3)) to the prism ``poly × [zb, zt]``."""
    p, q = np.asarray(p, float).reshape(-1, 3), np.asarray(q, float).reshape(-1, 3)
    n = len(p)
    best = np.full(n, np.inf)
    if not n:
        return best
    # 1. the parts of each segment whose plan lies in the footprint
    flat = np.hypot(*(q[:, :2] - p[:, :2]).T) < 1e-9
    lines = shapely.linestrings(np.stack([p[:, :2], q[:, :2]], axis=1))
    lines[flat] = shapely.points(p[flat, :2])
    shapely.prepare(poly)
    touched = np.flatnonzero(shapely.intersects(poly, lines))
    if len(touched):
        inter = shapely.intersection(lines[touched], poly)
        parts, owner = shapely.get_parts(inter, return_index=True)
        coords, cidx = shapely.get_coordinates(parts, return_index=True)
        seg = touched[owner[cidx]]
        d2 = q[seg, :2] - p[seg, :2]
        dd = _dot(d2, d2)
        t = np.where(dd > 1e-18, _dot(coords - p[seg, :2], d2) / np.maximum(dd, 1e-18), 0.0)
        part_of = cidx  # the part each coordinate belongs to
        tmin = np.full(len(parts), np.inf)
        tmax = np.full(len(parts), -np.inf)
        np.minimum.at(tmin, part_of, t)
        np.maximum.at(tmax, part_of, t)
        pseg = touched[owner]
        flat_parts = flat[pseg]
        tmin = np.where(flat_parts, 0.0, np.clip(tmin, 0, 1))
        tmax = np.where(flat_parts, 1.0, np.clip(tmax, 0, 1))
        za = p[pseg, 2] + tmin * (q[pseg, 2] - p[pseg, 2])
        zc = p[pseg, 2] + tmax * (q[pseg, 2] - p[pseg, 2])
        lo, hi = np.minimum(za, zc), np.maximum(za, zc)
        d_in = np.where((hi >= zb) & (lo <= zt), 0.0, np.minimum(_dz(za, zb, zt), _dz(zc, zb, zt)))
        np.minimum.at(best, pseg, d_in)
    # 2. outside the footprint: the nearest edge, exactly (convex piecewise quadratic per edge)
    edges = polygon_edges(poly)
    si, ei = np.meshgrid(np.arange(n), np.arange(len(edges)), indexing="ij")
    si, ei = si.ravel(), ei.ravel()
    P0, D = p[si, :2], q[si, :2] - p[si, :2]
    z0, dz = p[si, 2], q[si, 2] - p[si, 2]
    A, B = edges[ei, 0], edges[ei, 1]
    t = _axis_candidates(P0, D, z0, dz, A, B, zb, zt)  # (pairs, 15)
    pts = P0[:, None, :] + t[..., None] * D[:, None, :]
    g = point_segment_distance2(pts, A[:, None, :], B[:, None, :]) + _dz(z0[:, None] + t * dz[:, None], zb, zt) ** 2
    np.minimum.at(best, si, np.sqrt(g.min(axis=1)))
    return best


def prism_triangles(poly, zb: float, zt: float) -> np.ndarray:
    """A prism as a closed triangle soup (T, 3, 3)."""
    tris = shapely.constrained_delaunay_triangles(poly)
    caps = shapely.get_coordinates(shapely.get_exterior_ring(shapely.get_parts(tris))).reshape(-1, 4, 2)[:, :3]
    bottom = np.concatenate([caps, np.full(caps.shape[:2] + (1,), zb)], axis=2)
    top = np.concatenate([caps, np.full(caps.shape[:2] + (1,), zt)], axis=2)
    e = polygon_edges(poly)
    a0 = np.column_stack([e[:, 0], np.full(len(e), zb)])
    b0 = np.column_stack([e[:, 1], np.full(len(e), zb)])
    a1 = np.column_stack([e[:, 0], np.full(len(e), zt)])
    b1 = np.column_stack([e[:, 1], np.full(len(e), zt)])
    walls = np.concatenate([np.stack([a0, b0, b1], axis=1), np.stack([a0, b1, a1], axis=1)])
    return np.concatenate([bottom, top, walls])


def triangle_edges(tris: np.ndarray) -> np.ndarray:
    """(T, 3, 3) → the three edges of each triangle (3T, 2, 3), in triangle order."""
    return np.stack([tris, np.roll(tris, -1, axis=1)], axis=2).reshape(-1, 2, 3)


# ------------------------------------------------------------------------------------------
# box-section pipes


def box_frames(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit width (horizontal, across the axis) and height (across the axis, upward) directions
    of box-section pipes; a vertical pipe takes east as its width direction."""
    u = q - p
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), _EPS)
    w = np.cross(np.array([0.0, 0.0, 1.0]), u)
    wn = np.linalg.norm(w, axis=1, keepdims=True)
    w = np.where(wn > 1e-9, w / np.maximum(wn, _EPS), np.array([1.0, 0.0, 0.0]))
    h = np.cross(u, w)
    return w, h


def box_corners(p: np.ndarray, q: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The 8 corners of box-section pipes (n, 8, 3): 4 at p, then 4 at q."""
    w, h = box_frames(p, q)
    sw = [-0.5, 0.5, 0.5, -0.5]
    sh = [-0.5, -0.5, 0.5, 0.5]
    off = np.stack([sw[i] * width[:, None] * w + sh[i] * height[:, None] * h for i in range(4)], axis=1)
    return np.concatenate([p[:, None, :] + off, q[:, None, :] + off], axis=1)


#: a box's 12 triangles and 12 edges as corner indices (corners as in box_corners)
BOX_TRIS = np.array([[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6],
                     [0, 4, 5], [0, 5, 1], [1, 5, 6], [1, 6, 2], [2, 6, 7], [2, 7, 3], [3, 7, 4], [3, 4, 0]])
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7]])


def points_in_boxes(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Pairwise: is points[i] inside the box with corners[i] (8, 3)? (half-space tests)."""
    o = corners[:, 0]
    ax = [corners[:, 1] - o, corners[:, 3] - o, corners[:, 4] - o]
    d = points - o
    inside = np.ones(len(points), bool)
    for a in ax:
        s = _dot(d, a)
        inside &= (s >= 0) & (s <= _dot(a, a))
    return inside
