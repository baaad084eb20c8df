"""The clash check's branch and bound (cim_builder.clash.grouped_min): cluster boxes, a per-group
upper bound, only the pairs that may be nearer computed exactly — checked against the brute force
(every segment against every triangle, exactly) on random scenes with crossings, stacked clusters,
groups spanning several clusters and a bound given beforehand."""

from __future__ import annotations

import numpy as np
import pytest

from cim_builder.clash import clusters_by, grouped_min
from cim_builder.clash_geometry import segment_triangle_distance


def scene(seed: int, n_seg=120, n_tri=900, through: int = 10):
    rng = np.random.default_rng(seed)
    # triangles in 30 "elements": small triangles around element centres in a 40 m cube
    centres = rng.uniform(0, 40, (30, 3))
    el = rng.integers(0, 30, n_tri)
    a = centres[el] + rng.normal(0, 2.0, (n_tri, 3))
    tris = a[:, None, :] + rng.normal(0, 1.5, (n_tri, 3, 3))
    # segments: pieces of 12 "pipes", some through the elements (crossings → 0)
    p = rng.uniform(-5, 45, (n_seg, 3))
    q = p + rng.normal(0, 3.0, (n_seg, 3))
    through = rng.choice(n_seg, through, replace=False)
    p[through] = centres[el[through]] - 2.0
    q[through] = centres[el[through]] + 2.0
    pipe = rng.integers(0, 12, n_seg)
    return p, q, pipe, tris, el


def brute(p, q, pipe, tris, reach, n_groups):
    i, j = np.meshgrid(np.arange(len(p)), np.arange(len(tris)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    d = segment_triangle_distance(p[i], q[i], tris[j, 0], tris[j, 1], tris[j, 2])
    best = np.full(n_groups, np.inf)
    np.minimum.at(best, pipe[i], d)
    return np.where(best <= reach, best, np.inf)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_grouped_min_equals_brute_force(seed):
    p, q, pipe, tris, el = scene(seed)
    reach = 6.0
    want = brute(p, q, pipe, tris, reach, 12)
    # segments one per cluster (pipe pieces), triangles clustered by element in runs of 8
    got, gi, gj = grouped_min(p, q, np.arange(len(p)), tris, clusters_by(el, 8), lambda i, j: pipe[i], 12, reach)
    within = np.isfinite(want)
    assert within.sum() >= 6 and (want[within] == 0).any() and (want[within] > 0).any()
    np.testing.assert_allclose(got[within], want[within], rtol=0, atol=1e-12)
    # the pair returned is the one at that distance
    ok = within & (gi >= 0)
    d = segment_triangle_distance(p[gi[ok]], q[gi[ok]], tris[gj[ok], 0], tris[gj[ok], 1], tris[gj[ok], 2])
    np.testing.assert_allclose(d, got[ok], atol=1e-12)
    # groups with nothing within reach stay unanswered (or farther than reach)
    assert ((~np.isfinite(got[~within])) | (got[~within] > reach)).all()


def test_grouped_min_segment_clusters_and_bound():
    """Segments in clusters of 5 (like a box's edges), groups from the triangle side, and a bound
    given beforehand: only strictly better groups answer; a group bound at 0 computes nothing."""
    p, q, _, tris, el = scene(7, n_seg=40, through=0)
    s_cl = np.arange(len(p)) // 5
    t_cl = clusters_by(el, 16)
    t_group = el % 4  # the group of a pair: its triangle's element, mod 4
    grp_of_cluster = np.zeros(t_cl.max() + 1, int)
    grp_of_cluster[t_cl] = t_group
    i, j = np.meshgrid(np.arange(len(p)), np.arange(len(tris)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    d = segment_triangle_distance(p[i], q[i], tris[j, 0], tris[j, 1], tris[j, 2])
    want = np.full(4, np.inf)
    np.minimum.at(want, t_group[j], d)
    got, _, _ = grouped_min(p, q, s_cl, tris, t_cl, lambda ci, cj: grp_of_cluster[cj], 4, 100.0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (want[1:] > 0).all(), want  # the scene has no crossing in groups 1..3
    bound = np.array([0.0, np.inf, want[2] / 2, want[3] * 2])
    got, gi, _ = grouped_min(p, q, s_cl, tris, t_cl, lambda ci, cj: grp_of_cluster[cj], 4, 100.0, bound=bound)
    assert got[0] == 0.0 and gi[0] == -1  # bound at 0: nothing computed
    assert got[1] == pytest.approx(want[1], abs=1e-12) and gi[1] >= 0
    assert got[2] == bound[2] and gi[2] == -1  # nothing better than the bound
    assert got[3] == pytest.approx(want[3], abs=1e-12) and gi[3] >= 0


def test_clusters_by_runs():
    owner = np.array([3, 3, 1, 3, 1, 3, 3, 0])
    c = clusters_by(owner, 2)
    # owner 3 has 5 members → 3 runs; owner 1 → 1; owner 0 → 1: 5 clusters, each of one owner, ≤ 2 members
    assert len(np.unique(c)) == 5
    for k in np.unique(c):
        assert len(set(owner[c == k])) == 1 and (c == k).sum() <= 2
