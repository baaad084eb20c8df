"""The clash check's exact distances, against hand-computed values and against a dense brute
force (points sampled along the segment, distances to the solid by shapely in plan and the
z-interval — an upper bound that converges to the true distance)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from cim_builder.clash_geometry import (
    box_corners,
    point_triangle_distance2,
    points_in_boxes,
    points_in_mesh,
    prism_triangles,
    segment_prism_distance,
    segment_segment_distance2,
    segment_triangle_distance,
)

BOX = shapely.box(0, 0, 20, 12)
L_SHAPE = shapely.Polygon([(0, 0), (24, 0), (24, 8), (8, 8), (8, 24), (0, 24)])
COURT = shapely.Polygon([(0, 0), (30, 0), (30, 30), (0, 30)], [[(10, 10), (10, 20), (20, 20), (20, 10)]])


def brute(p, q, poly, zb, zt, n=20001):
    t = np.linspace(0, 1, n)[:, None]
    pts = p + t * (q - p)
    dxy = shapely.distance(poly, shapely.points(pts[:, :2]))
    dz = np.maximum(np.maximum(zb - pts[:, 2], pts[:, 2] - zt), 0)
    return float(np.sqrt(dxy ** 2 + dz ** 2).min())


def mesh_distance(p, q, tris):
    d = segment_triangle_distance(np.repeat(p[None], len(tris), 0), np.repeat(q[None], len(tris), 0),
                                  tris[:, 0], tris[:, 1], tris[:, 2]).min()
    return 0.0 if points_in_mesh(p[None], tris)[0] else float(d)


def test_hand_computed_prism_distances():
    zb, zt = -8.0, 0.0
    cases = [
        # a pipe along y at x = 20.6, z = -3: 0.6 m from the east wall
        (np.array([20.6, -5, -3.0]), np.array([20.6, 17, -3.0]), 0.6),
        # under the floor: 0.5 m below, inside the plan
        (np.array([5, 5, -8.5]), np.array([15, 6, -8.5]), 0.5),
        # through the box: 0
        (np.array([-5, 6, -2.0]), np.array([25, 6, -2.0]), 0.0),
        # entirely inside: 0
        (np.array([5, 5, -2.0]), np.array([6, 6, -3.0]), 0.0),
        # diagonal off the corner (20, 12) at the floor's level: 3-4-5 in plan, 1 m lower → √26
        (np.array([23, 16, -9.0]), np.array([23, 30, -9.0]), float(np.hypot(5, 1))),
        # a vertical pipe 2 m east of the box
        (np.array([22, 6, -20.0]), np.array([22, 6, 5.0]), 2.0),
    ]
    p = np.array([c[0] for c in cases], float)
    q = np.array([c[1] for c in cases], float)
    got = segment_prism_distance(p, q, BOX, zb, zt)
    np.testing.assert_allclose(got, [c[2] for c in cases], atol=1e-9)


@pytest.mark.parametrize("poly", [BOX, L_SHAPE, COURT], ids=["box", "L", "courtyard"])
def test_prism_distance_matches_brute_force_and_the_mesh(poly):
    rng = np.random.default_rng(17)
    zb, zt = -7.5, 0.0
    minx, miny, maxx, maxy = poly.bounds
    p = np.column_stack([rng.uniform(minx - 8, maxx + 8, 60), rng.uniform(miny - 8, maxy + 8, 60),
                         rng.uniform(-14, 3, 60)])
    q = p + np.column_stack([rng.normal(0, 10, 60), rng.normal(0, 10, 60), rng.normal(0, 2, 60)])
    exact = segment_prism_distance(p, q, poly, zb, zt)
    tris = prism_triangles(poly, zb, zt)
    for i in range(len(p)):
        b = brute(p[i], q[i], poly, zb, zt)
        # the brute force samples 20,001 points: it can overshoot by up to half a step
        step = np.linalg.norm(q[i] - p[i]) / 20000
        assert exact[i] <= b + 1e-9, (i, exact[i], b)
        assert b - exact[i] <= step + 1e-9, (i, exact[i], b)
        assert mesh_distance(p[i], q[i], tris) == pytest.approx(exact[i], abs=1e-9), i


def test_segment_segment_and_point_triangle():
    # skew segments 1 m apart, parallel segments, a point over a triangle and off its corner
    d = segment_segment_distance2(np.array([[0, 0, 0.0], [0, 0, 0], [0, 0, 0]]),
                                  np.array([[1, 0, 0.0], [1, 0, 0], [1, 0, 0]]),
                                  np.array([[0.5, -1, 1.0], [0, 2, 0], [3, 0, 4]]),
                                  np.array([[0.5, 1, 1.0], [1, 2, 0], [3, 0, 5]]))
    np.testing.assert_allclose(d, [1.0, 4.0, 4.0 + 16.0])
    a, b, c = np.array([[0, 0, 0.0]] * 2), np.array([[2, 0, 0.0]] * 2), np.array([[0, 2, 0.0]] * 2)
    d = point_triangle_distance2(np.array([[0.5, 0.5, 3.0], [-1, -1, 0.0]]), a, b, c)
    np.testing.assert_allclose(d, [9.0, 2.0])


def test_crossing_segment_is_zero_and_parity():
    tris = prism_triangles(BOX, -8, 0)
    assert mesh_distance(np.array([10, -3, -4.0]), np.array([10, 3, -4.0]), tris) == 0.0  # through a wall
    inside = points_in_mesh(np.array([[10, 6, -4.0], [19.99, 11.99, -0.01], [20.01, 6, -4], [10, 6, 0.01]]), tris)
    assert inside.tolist() == [True, True, False, False]


def test_boxes():
    p, q = np.array([[0, 0, 0.0]]), np.array([[10, 0, 0.0]])
    corners = box_corners(p, q, np.array([2.0]), np.array([1.0]))
    assert corners[0, :, 1].min() == pytest.approx(-1) and corners[0, :, 2].max() == pytest.approx(0.5)
    assert points_in_boxes(np.array([[5, 0.9, 0.4]]), corners).tolist() == [True]
    assert points_in_boxes(np.array([[5, 1.1, 0.4]]), corners).tolist() == [False]


def test_required_clearances():
    from cim_builder.clash import CimError, parse_clearances, required_clearance

    assert required_clearance("JS", 200, None) == 1.0 and required_clearance("JS", 300, None) == 3.0
    assert required_clearance("RQ", 150, "中压A") == 1.5 and required_clearance("RQ", 150, "次高压 b") == 5.0
    assert required_clearance("RQ", 150, None) == 1.0 and required_clearance("WS", 600, None) == 2.5
    over = parse_clearances(["给水=0.5", "rq=2"])
    assert over == {"JS": 0.5, "RQ": 2.0} and required_clearance("JS", 300, None, over) == 0.5
    with pytest.raises(CimError, match="not a pipe type"):
        parse_clearances(["水=1"])
