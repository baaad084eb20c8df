"""The demo's utility network (data/_pipes.py) on the large district's hills, and on every size:
the builder's own check (``_pipes.problems``) finds nothing and every type keeps to its customary
depths.

No database and no whole large build (≈ 75 s + its imagery): the world up to its roads (terrain,
water, streets, road network) is generated in memory and the network built with the builder's
own function for the size's survey area (``_pipes.make_network``) — the large one in ≈ 10 s.

The defect this guards: a full large build stopped at "the pipe network is implausible" with
water-supply and power pipes 6.1 / 9.0 m deep and storm / sewage drains 24 m deep. The large
survey area's streets climb knolls of up to ~100 m at up to 48 %: crossings were settled by the
two segments' *mean* heights (on a hillside metres apart from their heights where they cross), so
pressure pipes were pushed metres down; and drains followed streets over crests inside one edge
of the road graph (whose ends lay at the same height) and dived under them."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from data import _pipes, _world
from data._config import SIZES

SEED = 2024
#: Customary depths (m, to the top; drains to the invert): cables and gas in shallow trenches,
#: water a little deeper, a dip under another pipe at a crossing; drains deeper, within the
#: builder check's 12 m.
PRESSURE_MAX = {"TX": 3.0, "RQ": 4.0, "JS": 5.0, "DL": 5.0}
DRAIN_MAX = 12.0
DRAIN_MEDIAN_MAX = 4.5


@functools.cache
def _built(size: str) -> tuple[_world.World, _pipes.Network]:
    world = _world.make_world(SIZES[size], SEED)
    _world.make_admin(world)
    _world.make_roads(world)
    return world, _pipes.make_network(world, size)


@pytest.fixture(scope="module", autouse=True)
def _forget_worlds():
    yield
    _built.cache_clear()


@pytest.fixture(scope="module", params=list(SIZES))
def network(request):
    return _built(request.param)[1]


@pytest.fixture(scope="module")
def large():
    return _built("large")


def _end_depths(n: _pipes.TypeNet) -> np.ndarray:
    return np.concatenate([n.depth, n.start_depth, n.end_depth])


def test_the_generator_finds_nothing_implausible(network):
    assert _pipes.problems(network) == []


def test_depths_per_type_are_customary(network):
    for code, top in PRESSURE_MAX.items():
        n = network.types[code]
        d = _end_depths(n)
        assert d.min() == pytest.approx(n.spec.cover), code
        assert d.max() <= top and np.median(n.depth) < n.spec.cover + 0.3, (code, d.max(), np.median(n.depth))
    for code in ("YS", "WS"):
        n = network.types[code]
        d = _end_depths(n)
        assert d.min() >= n.spec.cover + 0.3 - 1e-9, code  # cover over the smallest drain (d300)
        assert d.max() <= DRAIN_MAX and np.median(n.depth) < DRAIN_MEDIAN_MAX, (code, d.max(), np.median(n.depth))


def test_the_large_survey_area_is_hilly(large):
    """The guard is not idle: the large survey area's streets do climb (steep and over knolls)."""
    _, net = large
    g = net.graph
    assert g.steep.max() > 2 * _pipes.MAX_SLOPE
    assert g.node_z.max() - g.node_z.min() > 60.0
    js = net.types["JS"]
    assert (np.abs(js.ground[js.a] - js.ground[js.b]) > 5.0).sum() >= 50, "few water pipes on a slope"
    # streets cut at their crests and sags: nodes joining two pieces of one road
    deg = np.bincount(np.concatenate([g.u, g.v]), minlength=g.n_nodes)
    first_road = np.full(g.n_nodes, -1)
    first_road[g.u] = g.road
    same = np.zeros(g.n_nodes, bool)
    same[g.v] = first_road[g.v] == g.road
    assert (same & (deg == 2)).sum() >= 20


def test_pressure_pipes_follow_the_ground_on_slopes(large):
    """Water, gas, power and telecom keep their cover down a slope: at both ends of a segment whose
    ground falls more than 5 m, within 2.5 m of the type's cover (its dips under other pipes)."""
    _, net = large
    for code in PRESSURE_MAX:
        n = net.types[code]
        steep = np.abs(n.ground[n.a] - n.ground[n.b]) > 5.0
        assert steep.any(), code
        deepest = max(n.start_depth[steep].max(), n.end_depth[steep].max())
        assert deepest <= n.spec.cover + 2.5, (code, deepest)
        assert n.extra.max() <= 2.5, (code, n.extra.max())


def test_drains_never_climb_a_street_more_than_allowed(large):
    """Every edge of the road graph runs downhill one way (within CLIMB_MAX, resampled: + 0.25 m),
    and neither drain's routing takes one the climbing way."""
    world, net = large
    g = net.graph
    assert np.minimum(g.climb_uv, g.climb_vu).max() <= _pipes.CLIMB_MAX + 0.25
    for many in (True, False):
        _, parent, outlet = _pipes._flow(g, world, many_outlets=many)
        child = np.flatnonzero(parent >= 0)
        climbs = np.array([g.climb(parent[m], m) for m in child])
        assert climbs.max() <= _pipes.CLIMB_MAX
        assert outlet.any() and (parent[outlet] == -1).all()


def test_the_check_catches_a_deep_water_main(large):
    """The builder's check still stops a 6.1 m deep water main (the large build's old defect)."""
    _, net = large
    js = net.types["JS"]
    deep = dataclasses.replace(js, start_depth=js.start_depth.copy())
    deep.start_depth[7] = 6.11
    bad = _pipes.Network(box=net.box, graph=net.graph, types={**net.types, "JS": deep})
    found = _pipes.problems(bad)
    sid = f"{js.ids[js.a[7]]}-{js.ids[js.b[7]]}"
    assert f"给水 segment {sid}: start depth 6.11 m" in found, found[:5]
