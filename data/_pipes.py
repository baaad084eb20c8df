"""The demo district's underground: a utility network along the roads (water supply, storm and
sewage drains, gas, power, telecom) written as CJJ 61 pipe surveys, and basements under some of
the large buildings.

The network, built in EPSG:4547 metres from the world's road centrelines (class, width) and DEM:

- **Survey area.** A box around the district's centre, grown until the expected number of
  segments reaches the size's target (:data:`TARGET_SEGMENTS`): a utility survey covers the
  built-up core, not every rural track. Expressways (in cuttings / on viaducts) and rural tracks
  carry no pipes.
- **Road graph.** The centrelines inside the box, their ends stretched a little so T-junctions
  meet, noded (``shapely.union_all``): edges between junctions, each oriented like its road so a
  side of the road stays the same side along it; a street over a knoll or through a dip is also
  cut at its crests and sags (the ground turning by ≥ :data:`CLIMB_MAX`), so every edge runs
  downhill one way.
- **Placement.** Every type has its own offsets from the centreline as fractions of the road's
  half-width (:data:`SPECS`), the customary layout: power and telecom under the sidewalks, water
  and gas under the non-motorised lanes, storm and sewage drains under the carriageway; arterials
  carry water and storm on both sides; local roads carry gas, power and telecom only in part.
  Survey points stand at junctions (a tee on the main road's line of that type: 三通 / 四通) and
  along each edge, evenly spaced (drains ≤ 45 m, others ≤ 60 m), trimmed back from junctions by
  the crossing road's half-width; on streets steeper than :data:`MAX_SLOPE` the drains' manholes
  stand closer (at most :data:`DROP_MAX` / (slope − MAX_SLOPE) apart), so that the drop manholes
  stay a few metres high and the drains do not run deep down a steep street.
- **Drains by gravity.** Storm water flows to outfalls near the river and streams or in hollows,
  sewage to pumping stations in hollows or one outlet per connected part (the interceptor): a
  shortest-path tree over the road graph to the outlets where flowing uphill costs extra (the
  DEM) and no edge is taken climbing more than :data:`CLIMB_MAX` (ground ringed by such edges
  drains to its own lowest node); every other street's pipe is a branch that flows downhill
  into its lower junction. Diameters grow with the length of pipe upstream; inverts fall
  at ≥ 0.4 % along the flow, keeping the minimum cover, with drop manholes where the ground falls
  faster than a pipe may (≤ 15 %, steep streets): the pipe leaves the manhole deeper.
- **Depths.** Each type starts at its customary cover (telecom 0.7 m … sewage 2.6 m); where two
  pipes of different types come closer than their radii (the checks of
  :mod:`underground.checks`: 3D axes, a box counts with half its diagonal) the later type of
  :data:`SPECS` dips under the earlier one at that place, judged by the two axes' heights where
  they cross (not their mean heights: on a hillside those differ by metres) — iterated until no
  pair is too close. So pressure pipes and cables follow the ground at their cover depth (plus a
  dip at a crossing) and only the drains run deeper.

Basements: 10–20 % of the large buildings (towers ≥ 10 floors, offices, shops, public buildings),
a garage slightly larger than the footprint (inside the lot) or a plant room / shelter inside it,
1–3 levels, 4–12 m deep.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from data._world import World, _rng
from underground.checks import radius_m, segment_distance

#: Segments to aim for per size (the survey area grows until the estimate reaches it).
TARGET_SEGMENTS = {"small": 1500, "medium": 4800, "large": 9000}
#: Road classes that carry pipes.
PIPE_CLASSES = ("arterial", "secondary", "local")
CLASS_RANK = {"arterial": 0, "secondary": 1, "local": 2}
#: Gravity drains: minimum and maximum slope of a pipe.
MIN_SLOPE = 0.004
MAX_SLOPE = 0.15
#: Extra clearance the generator keeps between two pipes beyond their radii (m).
CLEARANCE = 0.05
#: Flowing uphill costs this many metres of pipe per metre of rise (the drains' routing).
UPHILL_COST = 200.0
#: The most a drain may climb along one edge of the road graph (m): the rise of the ground above
#: its lowest point so far, along the flow. A pipe dives that much deeper under the rise, so the
#: streets are cut at their crests and sags (every edge runs downhill one way within this) and
#: the drains' routing never takes an edge the climbing way.
CLIMB_MAX = 1.5
#: Ground profile sampling along the streets for the climbs (m).
PROFILE_STEP = 10.0
#: How much more than MAX_SLOPE the ground may fall between two drain manholes along a street (m):
#: what one drop manhole (跌水井) takes up; on steep streets the manholes stand closer.
DROP_MAX = 3.0
#: A manhole's sump below its lowest invert (drains) or below the pipe (others), m.
SUMP = 0.3
#: Two roads side by side whose cross-sections (plus this margin, m) overlap over a fifth of the
#: lesser one share one set of pipes.
DUPLICATE_M = 2.0


@dataclass(frozen=True)
class TypeSpec:
    code: str
    name: str
    gravity: bool
    spacing: float  # m between survey points along a road, at most
    cover: float  # m: depth to the top (pressure pipes, cables); drains: cover over the pipe's top
    offsets: dict  # road class → offsets (fractions of the half-width, + = left of the road's direction)
    share: float = 1.0  # share of local roads that carry the type
    buried: str = "直埋"


#: In tier order: where two types cross, the later one dips under the earlier one.
SPECS: tuple[TypeSpec, ...] = (
    TypeSpec("TX", "通信", False, 60.0, 0.7, {"arterial": (-0.88,), "secondary": (-0.88,), "local": (-0.8,)},
             0.5, "管块"),
    TypeSpec("RQ", "燃气", False, 60.0, 1.0, {"arterial": (-0.55,), "secondary": (-0.6,), "local": (-0.5,)}, 0.6),
    TypeSpec("JS", "给水", False, 60.0, 1.2, {"arterial": (0.65, -0.68), "secondary": (0.6,), "local": (0.5,)}),
    TypeSpec("DL", "电力", False, 55.0, 1.0, {"arterial": (0.88,), "secondary": (0.88,), "local": (0.8,)},
             0.5, "排管"),
    TypeSpec("YS", "雨水", True, 45.0, 1.6, {"arterial": (0.35, -0.35), "secondary": (0.25,), "local": (0.18,)}),
    TypeSpec("WS", "污水", True, 45.0, 2.4, {"arterial": (-0.12,), "secondary": (-0.25,), "local": (-0.18,)}),
)
BY_CODE = {s.code: s for s in SPECS}

OWNERS = {"JS": "深圳市水务（集团）有限公司", "YS": "深圳市龙岗区水务局", "WS": "深圳市水务（集团）有限公司",
          "RQ": "深圳市燃气集团股份有限公司", "DL": "深圳供电局有限公司"}
TELECOM = ("中国电信股份有限公司深圳分公司", "中国移动通信集团广东有限公司深圳分公司",
           "中国联合网络通信有限公司深圳市分公司")
#: Storm / sewage diameters (mm) by the length of pipe upstream (m): (up to, diameter).
STORM_SIZES = ((100, 300), (250, 400), (450, 500), (700, 600), (1100, 800), (1600, 1000), (2400, 1200),
               (math.inf, 1500))
SEWER_SIZES = ((300, 300), (900, 400), (2000, 500), (3500, 600), (math.inf, 800))
BUILT_YEARS = {"arterial": (2005, 2012), "secondary": (2008, 2016), "local": (2010, 2023)}


# -- the road graph ---------------------------------------------------------------------------

@dataclass
class RoadGraph:
    geom: np.ndarray  # edge centrelines, oriented like their road
    u: np.ndarray  # start node
    v: np.ndarray  # end node
    road: np.ndarray  # index into world.roads
    cls: np.ndarray
    hw: np.ndarray  # half-width, m
    length: np.ndarray
    node_xy: np.ndarray  # (n, 2)
    node_z: np.ndarray
    box: object
    climb_uv: np.ndarray = None  # m the ground rises along the edge above its lowest point so far, u → v
    climb_vu: np.ndarray = None  # the same, v → u
    steep: np.ndarray = None  # the ground's steepest slope along the edge

    def climb(self, e: int, frm: int) -> float:
        """How much the ground climbs along edge ``e`` leaving node ``frm``."""
        return float(self.climb_uv[e] if self.u[e] == frm else self.climb_vu[e])

    @property
    def n_nodes(self) -> int:
        return len(self.node_xy)


def _extend(lines: np.ndarray, d: float) -> np.ndarray:
    """Each line stretched by ``d`` at both ends along its end segments."""
    c, idx = shapely.get_coordinates(lines, return_index=True)
    first = np.r_[0, np.flatnonzero(np.diff(idx)) + 1]
    last = np.r_[first[1:], idx.size] - 1
    for end, nxt in ((first, first + 1), (last, last - 1)):
        t = c[end] - c[nxt]
        c[end] += t / np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None] * d
    return shapely.linestrings(c, indices=idx)


def _carrying_roads(world: World) -> np.ndarray:
    return np.flatnonzero(np.isin(world.roads["cls"], PIPE_CLASSES))


def survey_box(world: World, size: str):
    """The survey area: a box around the district's centre whose expected segment count
    reaches :data:`TARGET_SEGMENTS` (the whole district when it does not)."""
    R = world.roads
    idx = _carrying_roads(world)
    cls = R["cls"][idx]
    per_m = np.zeros(idx.size)
    for s in SPECS:
        share = np.where(cls == "local", s.share, 1.0)
        sides = np.array([len(s.offsets[c]) for c in cls])
        per_m += share * sides / s.spacing
    xmin, ymin, xmax, ymax = world.bounds
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    target = TARGET_SEGMENTS.get(size, TARGET_SEGMENTS["medium"])

    def estimate(f):
        b = shapely.box(cx - f * (cx - xmin), cy - f * (cy - ymin), cx + f * (cx - xmin), cy + f * (cy - ymin))
        return float((shapely.length(shapely.intersection(R["geom"][idx], b)) * per_m).sum() * 1.12), b

    lo, hi = 0.05, 1.0
    if estimate(hi)[0] <= target:
        return estimate(hi)[1]
    for _ in range(30):
        mid = (lo + hi) / 2
        if estimate(mid)[0] < target:
            lo = mid
        else:
            hi = mid
    return estimate(hi)[1]


def road_graph(world: World, box) -> RoadGraph:
    """The carrying roads inside ``box`` noded into edges between junctions."""
    R = world.roads
    idx = _carrying_roads(world)
    clipped = shapely.intersection(R["geom"][idx], box)
    parts, which = shapely.get_parts(clipped, return_index=True)
    ok = (shapely.get_type_id(parts) == 1) & (shapely.length(parts) > 1.0)
    parts, which = parts[ok], idx[which[ok]]
    noded = shapely.get_parts(shapely.union_all(_extend(parts, 1.5), grid_size=0.001))
    noded = noded[shapely.length(noded) > 0.01]
    # which road each piece belongs to: the nearest clipped road to its midpoint
    mid = shapely.line_interpolate_point(noded, 0.5, normalized=True)
    tree = shapely.STRtree(parts)
    qi, pi = tree.query_nearest(mid, all_matches=False)
    road = np.empty(noded.size, dtype=np.int64)
    road[qi] = which[pi]
    # orient every piece like its road
    a = shapely.line_locate_point(R["geom"][road], shapely.get_point(noded, 0))
    b = shapely.line_locate_point(R["geom"][road], shapely.get_point(noded, -1))
    noded = np.where(a > b, shapely.reverse(noded), noded)
    for _ in range(2):  # the stretched ends' stubs beyond the junctions
        u, v, node_xy = _nodes(noded)
        deg = np.bincount(np.concatenate([u, v]), minlength=len(node_xy))
        stub = (shapely.length(noded) < 2.0) & ((deg[u] == 1) | (deg[v] == 1))
        noded, road = noded[~stub], road[~stub]
    u, v, node_xy = _nodes(noded)
    keep = u != v
    noded, road, u, v = noded[keep], road[keep], u[keep], v[keep]
    # roads of neighbouring blocks that run side by side a few metres apart: one carries the pipes
    # (their cross-sections overlap: centrelines closer than the two half-widths)
    hw = R["width"][road].astype(float) / 2
    i, j = shapely.STRtree(noded).query(noded, predicate="dwithin", distance=hw + hw.max())
    sel = (i != j) & (u[i] != u[j]) & (u[i] != v[j]) & (v[i] != u[j]) & (v[i] != v[j])
    i, j = i[sel], j[sel]
    reach = hw[i] + hw[j] + DUPLICATE_M
    along = shapely.length(shapely.intersection(noded[i], shapely.buffer(noded[j], reach))) / shapely.length(noded[i])
    rank = np.array([CLASS_RANK[c] for c in R["cls"][road]]) * 1e7 - shapely.length(noded)
    drop = np.zeros(noded.size, bool)
    drop[i[(along > 0.2) & (rank[i] > rank[j])]] = True
    noded, road = noded[~drop], road[~drop]
    noded, road = _split_at_turns(noded, road, world)
    u, v, node_xy = _nodes(noded)
    cls = R["cls"][road]
    climb_uv, climb_vu, steep = _climbs(noded, world)
    return RoadGraph(geom=noded, u=u, v=v, road=road, cls=cls, hw=R["width"][road].astype(float) / 2,
                     length=shapely.length(noded), node_xy=node_xy,
                     node_z=world.elev(node_xy[:, 0], node_xy[:, 1]), box=box, climb_uv=climb_uv, climb_vu=climb_vu,
                     steep=steep)


def _profiles(lines: np.ndarray, world: World) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per line, the ground along it sampled every :data:`PROFILE_STEP` m or less: (distances
    along the line, elevations)."""
    L = shapely.length(lines)
    n = np.maximum(2, np.ceil(L / PROFILE_STEP).astype(np.int64) + 1)
    rep = np.repeat(np.arange(lines.size), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    s = L[rep] * k / (n[rep] - 1)
    xy = shapely.get_coordinates(shapely.line_interpolate_point(lines[rep], s))
    z = world.elev(xy[:, 0], xy[:, 1])
    cut = np.cumsum(n)[:-1]
    return np.split(s, cut), np.split(z, cut)


def _turns(z: np.ndarray, rise: float) -> list[int]:
    """The inner crests and sags of a profile: the points where it turns from rising to falling
    (or back) by at least ``rise`` (a zigzag filter: smaller bumps are not turns). Between two
    turns the ground never climbs more than ``rise`` walking downhill."""
    turns: list[int] = []
    hi = lo = 0
    trend = 0  # +1 rising, -1 falling, 0 not known yet
    for i in range(1, z.size):
        if trend >= 0 and z[i] >= z[hi]:
            hi = i
        if trend <= 0 and z[i] <= z[lo]:
            lo = i
        if trend >= 0 and z[hi] - z[i] >= rise:  # falls from the crest at hi
            if trend > 0 or hi > 0:
                turns.append(hi)
            trend, lo = -1, i
        elif trend <= 0 and z[i] - z[lo] >= rise:  # rises from the sag at lo
            if trend < 0 or lo > 0:
                turns.append(lo)
            trend, hi = 1, i
    return [t for t in turns if 0 < t < z.size - 1]


def _split_at_turns(lines: np.ndarray, road: np.ndarray, world: World) -> tuple[np.ndarray, np.ndarray]:
    """The streets cut at the crests and sags of their ground (:func:`_turns` by
    :data:`CLIMB_MAX`): every piece runs downhill one way, so a drain on it never dives under a
    knoll, a sag is a hollow the drains run into and a crest is where they part."""
    from shapely.ops import substring

    out, which = [], []
    for line, r, (s, z) in zip(lines, road, zip(*_profiles(lines, world))):
        at = [float(s[t]) for t in _turns(z, CLIMB_MAX)]
        if not at:
            out.append(line)
            which.append(r)
            continue
        bounds = [0.0] + at + [float(s[-1])]
        for a, b in pairwise(bounds):
            out.append(substring(line, a, b))
            which.append(r)
    return np.array(out, dtype=object), np.array(which, dtype=road.dtype)


def _climbs(lines: np.ndarray, world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per line, the most the ground along it rises above its lowest point so far (walking
    start → end, and end → start) and its steepest slope between two samples."""
    fwd, back, steep = np.zeros(lines.size), np.zeros(lines.size), np.zeros(lines.size)
    for i, (s, z) in enumerate(zip(*_profiles(lines, world))):
        fwd[i] = float((z - np.minimum.accumulate(z)).max())
        q = z[::-1]
        back[i] = float((q - np.minimum.accumulate(q)).max())
        steep[i] = float((np.abs(np.diff(z)) / np.maximum(np.diff(s), 1e-9)).max())
    return fwd, back, steep


def _nodes(lines: np.ndarray):
    ends = np.concatenate([shapely.get_coordinates(shapely.get_point(lines, 0)),
                           shapely.get_coordinates(shapely.get_point(lines, -1))])
    key = np.round(ends, 2)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = lines.size
    return inv[:n], inv[n:], uniq


# -- one type's points and segments --------------------------------------------------------------

@dataclass
class TypeNet:
    spec: TypeSpec
    x: np.ndarray
    y: np.ndarray
    ground: np.ndarray
    node: np.ndarray  # road-graph node of a tee, -1 for a station
    edge: np.ndarray  # road-graph edge of a station, -1 for a tee
    a: np.ndarray  # segment start point
    b: np.ndarray  # segment end point
    seg_edge: np.ndarray
    width: np.ndarray  # mm
    height: np.ndarray  # mm
    depth: np.ndarray = None  # point depth (top / invert of the outgoing pipe), m
    start_depth: np.ndarray = None
    end_depth: np.ndarray = None
    extra: np.ndarray = None  # m each point was pushed down to clear other pipes
    outlet: np.ndarray = None  # drains: points the network drains to
    ids: np.ndarray = None
    feature: np.ndarray = None
    appurtenance: np.ndarray = None
    well_depth: np.ndarray = None
    attrs: dict = field(default_factory=dict)

    @property
    def h(self) -> np.ndarray:
        return self.height / 1000.0

    def axis_z(self) -> tuple[np.ndarray, np.ndarray]:
        g0, g1 = self.ground[self.a], self.ground[self.b]
        sign = 1.0 if self.spec.gravity else -1.0
        return (g0 - self.start_depth + sign * self.h / 2, g1 - self.end_depth + sign * self.h / 2)


def _stations(g: RoadGraph, e: np.ndarray, t0: np.ndarray, t1: np.ndarray, spacing: np.ndarray):
    """Evenly spaced stations along edges ``e`` between t0 and L − t1, at most ``spacing`` (per
    edge) apart: (edge, k, n, s)."""
    L = g.length[e]
    run = L - t0 - t1
    n = np.where(run < 8.0, -1, np.maximum(1, np.ceil(run / spacing))).astype(np.int64)
    cnt = n + 1
    rep = np.repeat(np.arange(e.size), cnt)
    k = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    s = t0[rep] + run[rep] * k / np.maximum(n[rep], 1)
    return rep, k, n, s


def _offset_points(geoms: np.ndarray, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Points ``d`` metres left of the lines at distance ``s`` along them."""
    L = shapely.length(geoms)
    c = shapely.get_coordinates(shapely.line_interpolate_point(geoms, s))
    p0 = shapely.get_coordinates(shapely.line_interpolate_point(geoms, np.clip(s - 0.5, 0, L)))
    p1 = shapely.get_coordinates(shapely.line_interpolate_point(geoms, np.clip(s + 0.5, 0, L)))
    t = p1 - p0
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    return c + d[:, None] * np.column_stack([-t[:, 1], t[:, 0]])


def _carries(g: RoadGraph, spec: TypeSpec, seed: int, k: int) -> np.ndarray:
    """Edges that carry the type: every arterial / secondary edge, a share of the local roads."""
    rng = np.random.default_rng([seed, 60, k])
    draw = rng.uniform(size=int(g.road.max()) + 1)
    return (g.cls != "local") | (draw[g.road] < spec.share)


def _flow(g: RoadGraph, world: World, many_outlets: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drainage over the road graph: (distance to the outlet, parent edge (−1 at an outlet),
    outlet mask). Outlets: the hollows (no neighbour lower, or no way out that climbs less than
    :data:`CLIMB_MAX`: a storm outfall to a culvert, a sewage pumping station), the lower half of
    the roads' ends where the survey area cuts them (the pipe carries on beyond it), and nodes within 120 m of the river / streams / reservoir (storm: every
    one; sewage: the lowest per connected part) or else a part's lowest node."""
    w = world.water
    water = shapely.union_all([w.river_poly, w.reservoir] + [s[2] for s in w.streams])
    pts = shapely.points(g.node_xy)
    near = shapely.dwithin(pts, water, 120.0)
    adj: list[list[tuple[int, int]]] = [[] for _ in range(g.n_nodes)]
    for i, (a, b) in enumerate(zip(g.u.tolist(), g.v.tolist())):
        adj[a].append((b, i))
        adj[b].append((a, i))
    comp = np.full(g.n_nodes, -1)
    c = 0
    for s in range(g.n_nodes):
        if comp[s] >= 0:
            continue
        stack = [s]
        comp[s] = c
        while stack:
            n = stack.pop()
            for m, _ in adj[n]:
                if comp[m] < 0:
                    comp[m] = c
                    stack.append(m)
        c += 1
    # where the survey area cuts a road the pipes carry on beyond it: the lower half of those ends
    # drain out of the area (出图)
    gdeg = np.bincount(np.concatenate([g.u, g.v]), minlength=g.n_nodes)
    edge_of_area = (gdeg == 1) & shapely.dwithin(pts, shapely.boundary(g.box), 3.0)
    low = g.node_z <= np.median(g.node_z)
    # hollows (no neighbour lower): storm water leaves through an outfall to a culvert, sewage is
    # lifted by a pumping station into the trunk sewer
    lowest_nb = np.full(g.n_nodes, np.inf)
    np.minimum.at(lowest_nb, g.u, g.node_z[g.v])
    np.minimum.at(lowest_nb, g.v, g.node_z[g.u])
    outlet = (edge_of_area & low) | (g.node_z < lowest_nb)
    for k in range(c):
        members = np.flatnonzero(comp == k)
        cand = members[near[members]]
        if cand.size and many_outlets:
            outlet[cand] = True
        elif not outlet[members].any() or cand.size:
            pool = cand if cand.size else members
            outlet[pool[np.argmin(g.node_z[pool])]] = True
    dist = np.full(g.n_nodes, np.inf)
    parent = np.full(g.n_nodes, -1)
    heap = [(0.0, int(n)) for n in np.flatnonzero(outlet)]
    dist[outlet] = 0.0
    heapq.heapify(heap)
    while True:
        while heap:
            d, n = heapq.heappop(heap)
            if d > dist[n]:
                continue
            for m, e in adj[n]:  # m drains into n along e
                climb = g.climb(e, m)
                if climb > CLIMB_MAX:
                    continue  # over a ridge: the pipe would dive under it
                nd = d + g.length[e] + UPHILL_COST * climb
                if nd < dist[m] - 1e-9:
                    dist[m] = nd
                    parent[m] = e
                    heapq.heappush(heap, (nd, m))
        # ground ringed by ridges (every way out climbs too much): its lowest node is a hollow too
        cut_off = np.flatnonzero(~np.isfinite(dist))
        if not cut_off.size:
            break
        n = int(cut_off[np.argmin(g.node_z[cut_off])])
        outlet[n] = True
        dist[n] = 0.0
        heap = [(0.0, n)]
    return dist, parent, outlet


def type_network(g: RoadGraph, world: World, spec: TypeSpec, k: int, flow=None) -> TypeNet:
    """The points and segments of one type (before depths)."""
    carry = _carries(g, spec, world.seed, k)
    if spec.gravity:
        carry[:] = True
    tdeg = np.bincount(np.concatenate([g.u[carry], g.v[carry]]), minlength=g.n_nodes)
    gdeg = np.bincount(np.concatenate([g.u, g.v]), minlength=g.n_nodes)
    # the widest other road at each node: how far the pipes stop short of the junction
    hw_at = np.zeros(g.n_nodes)
    np.maximum.at(hw_at, g.u, g.hw)
    np.maximum.at(hw_at, g.v, g.hw)
    E = np.flatnonzero(carry)
    L = g.length[E]
    t0 = np.where(gdeg[g.u[E]] >= 2, np.minimum(hw_at[g.u[E]] + 2.5, 0.4 * L), 0.5)
    t1 = np.where(gdeg[g.v[E]] >= 2, np.minimum(hw_at[g.v[E]] + 2.5, 0.4 * L), 0.5)
    # tees: on the main carrying edge at each junction (widest class, then longest), at its offset
    tee_nodes = np.flatnonzero(tdeg >= 2)
    spacing = np.full(E.size, spec.spacing)
    if spec.gravity:  # drop manholes about DROP_MAX high at most on steep streets
        spacing = np.minimum(spacing, DROP_MAX / np.maximum(g.steep[E] - MAX_SLOPE, 1e-3))
    ends_node = np.concatenate([g.u[E], g.v[E]])
    ends_edge = np.concatenate([E, E])
    ends_s = np.concatenate([np.zeros(E.size), g.length[E]])
    rank = np.array([CLASS_RANK[c] for c in g.cls[ends_edge]]) * 1e7 - g.length[ends_edge]
    order = np.lexsort((rank, ends_node))
    first = order[np.r_[True, ends_node[order][1:] != ends_node[order][:-1]]]
    main_edge = np.full(g.n_nodes, -1)
    main_s = np.zeros(g.n_nodes)
    main_edge[ends_node[first]] = ends_edge[first]
    main_s[ends_node[first]] = ends_s[first]
    me = main_edge[tee_nodes]
    off = np.array([spec.offsets[c][0] for c in g.cls[me]]) * g.hw[me]
    tee_xy = _offset_points(g.geom[me], main_s[tee_nodes], off)
    tee_of = np.full(g.n_nodes, -1)
    tee_of[tee_nodes] = np.arange(tee_nodes.size)

    xs, ys, node_col, edge_col = [tee_xy[:, 0]], [tee_xy[:, 1]], [tee_nodes], [np.full(tee_nodes.size, -1)]
    count = tee_nodes.size
    chains = []  # (edge, side index, point indices along the edge)
    n_sides = np.array([len(spec.offsets[c]) for c in g.cls[E]])
    for side in range(int(n_sides.max()) if E.size else 0):
        sel = np.flatnonzero(n_sides > side)
        e = E[sel]
        rep, kk, n, s = _stations(g, e, t0[sel], t1[sel], spacing[sel])
        valid = n[rep] >= 0
        rep, kk, s = rep[valid], kk[valid], s[valid]
        d = np.array([spec.offsets[c][side] for c in g.cls[e]])[rep] * g.hw[e][rep]
        xy = _offset_points(g.geom[e][rep], s, d)
        xs.append(xy[:, 0])
        ys.append(xy[:, 1])
        node_col.append(np.full(rep.size, -1))
        edge_col.append(e[rep])
        idx = count + np.arange(rep.size)
        count += rep.size
        starts = np.r_[0, np.flatnonzero(np.diff(rep)) + 1]
        stops = np.r_[starts[1:], rep.size]
        by_edge = {int(rep[a_]): idx[a_:b_] for a_, b_ in zip(starts, stops)}
        for j, ed in enumerate(e.tolist()):
            st = by_edge.get(j, np.empty(0, dtype=np.int64))
            if st.size == 0 and side > 0:
                continue  # a short edge: one connection between the tees is enough
            tu, tv = tee_of[g.u[ed]], tee_of[g.v[ed]]
            chain = ([int(tu)] if tu >= 0 else []) + st.tolist() + ([int(tv)] if tv >= 0 else [])
            if len(chain) >= 2:
                chains.append((ed, side, chain, tu >= 0, tv >= 0))
    x, y = np.concatenate(xs), np.concatenate(ys)
    node_arr, edge_arr = np.concatenate(node_col), np.concatenate(edge_col)

    A, B, SE = [], [], []
    outlet = np.zeros(x.size, bool)
    if spec.gravity:
        _, parent, out_nodes = flow
        for ed, side, chain, has_u, has_v in chains:
            a_, b_ = int(g.u[ed]), int(g.v[ed])
            # a tree edge flows towards the outlet; any other street's pipe is a branch of its own
            # (its upper end not joined), so it simply flows downhill into the junction below
            if parent[a_] == ed or parent[b_] == ed:
                down = parent[a_] == ed
            else:
                down = g.node_z[a_] >= g.node_z[b_]
            pts = chain if down else chain[::-1]
            up_node, up_has = (a_, has_u) if down else (b_, has_v)
            if up_has and not (parent[up_node] == ed and side == 0):
                pts = pts[1:]  # not this junction's way out: the branch starts at its own manhole
            A += pts[:-1]
            B += pts[1:]
            SE += [ed] * (len(pts) - 1)
        outlet[tee_of[np.flatnonzero(out_nodes & (tee_of >= 0))]] = True
    else:
        for ed, side, chain, _, _ in chains:
            A += chain[:-1]
            B += chain[1:]
            SE += [ed] * (len(chain) - 1)
    A, B, SE = np.array(A, dtype=np.int64), np.array(B, dtype=np.int64), np.array(SE, dtype=np.int64)
    # one segment per pair of points (short edges between the same junctions)
    key = np.minimum(A, B) * (x.size + 1) + np.maximum(A, B)
    _, keep = np.unique(key, return_index=True)
    keep = np.sort(keep)
    A, B, SE = A[keep], B[keep], SE[keep]
    used = np.zeros(x.size, bool)
    used[A] = used[B] = True
    remap = np.cumsum(used) - 1
    x, y, node_arr, edge_arr, outlet = x[used], y[used], node_arr[used], edge_arr[used], outlet[used]
    A, B = remap[A], remap[B]
    x, y = np.round(x, 3), np.round(y, 3)
    net = TypeNet(spec=spec, x=x, y=y, ground=np.round(world.elev(x, y), 2), node=node_arr, edge=edge_arr,
                  a=A, b=B, seg_edge=SE, width=np.zeros(A.size), height=np.zeros(A.size), outlet=outlet)
    if spec.gravity:  # a drain outlet with no incoming pipe is no outlet
        net.outlet &= np.bincount(B, minlength=x.size) > 0
    return net


# -- sizes, depths -------------------------------------------------------------------------------

def _topo(n: int, a: np.ndarray, b: np.ndarray) -> list[int]:
    """Points in flow order (every point after the points that drain into it)."""
    indeg = np.bincount(b, minlength=n)
    out: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(a.tolist()):
        out[p].append(i)
    ready = [int(p) for p in np.flatnonzero(indeg == 0)]
    order = []
    indeg = indeg.tolist()
    while ready:
        p = ready.pop()
        order.append(p)
        for s in out[p]:
            q = int(b[s])
            indeg[q] -= 1
            if indeg[q] == 0:
                ready.append(q)
    if len(order) != n:
        raise AssertionError("demo pipes: a drain network with a cycle")
    return order


def _sizes(net: TypeNet, g: RoadGraph, rng: np.random.Generator) -> None:
    spec, e = net.spec, net.seg_edge
    cls = g.cls[e]
    if spec.gravity:
        seg_len = np.hypot(net.x[net.b] - net.x[net.a], net.y[net.b] - net.y[net.a])
        acc_in = np.zeros(net.x.size)
        acc = np.zeros(net.a.size)
        out_of = {int(p): i for i, p in enumerate(net.a.tolist())}
        for p in _topo(net.x.size, net.a, net.b):
            s = out_of.get(p)
            if s is not None:
                acc[s] = acc_in[p] + seg_len[s]
                acc_in[net.b[s]] += acc[s]
        table = STORM_SIZES if spec.code == "YS" else SEWER_SIZES
        limits = np.array([t[0] for t in table])
        d = np.array([t[1] for t in table])[np.searchsorted(limits, acc)]
        net.attrs["upstream_m"] = acc
        net.width = net.height = d.astype(float)
        return
    per_road = rng.uniform(size=int(g.road.max()) + 1)[g.road[e]]
    if spec.code == "JS":
        d = np.select([cls == "arterial", cls == "secondary"],
                      [np.where(per_road < 0.5, 600, 500), np.where(per_road < 0.5, 400, 300)],
                      np.where(per_road < 0.5, 200, 150))
    elif spec.code == "RQ":
        d = np.select([cls == "arterial", cls == "secondary"], [300, 200], np.where(per_road < 0.5, 150, 100))
    elif spec.code == "DL":
        w = np.where(cls == "local", 600, 800)
        net.width, net.height = w.astype(float), np.where(cls == "local", 400, 600).astype(float)
        return
    else:  # TX
        net.width, net.height = np.full(e.size, 400.0), np.full(e.size, 300.0)
        return
    net.width = net.height = d.astype(float)


def _floor_cm(v):
    return np.floor(np.asarray(v) * 100.0 + 1e-6) / 100.0


def _gravity(net: TypeNet) -> None:
    """Inverts along the flow: ≥ MIN_SLOPE, ≤ MAX_SLOPE, the minimum cover kept (plus each point's
    ``extra``), drops at the manholes where the ground falls faster. Sets the point depths (to the
    outgoing invert, the lowest at a manhole) and the segments' end depths (a pipe arriving above
    the outgoing one ends higher: 终点埋深)."""
    n, a, b, h = net.x.size, net.a, net.b, net.h
    g = net.ground
    L = np.hypot(net.x[b] - net.x[a], net.y[b] - net.y[a])
    need = net.spec.cover + h  # invert depth at least
    out_of = {int(p): i for i, p in enumerate(a.tolist())}
    arrive = np.full(n, np.inf)
    S = np.zeros(a.size)
    E = np.zeros(a.size)
    for p in _topo(n, a, b):
        s = out_of.get(p)
        if s is None:
            continue
        q = int(b[s])
        start = min(arrive[p], g[p] - need[s] - net.extra[p], g[q] - need[s] - net.extra[q] + MAX_SLOPE * L[s])
        start = float(_floor_cm(start))
        drop = max(0.01, math.ceil(MIN_SLOPE * L[s] * 100.0 - 1e-6) / 100.0)
        end = max(start - MAX_SLOPE * L[s], min(start - drop, g[q] - need[s] - net.extra[q]))
        end = min(float(_floor_cm(end)), start - drop)
        S[s], E[s] = start, end
        arrive[q] = min(arrive[q], end)
    inv = np.where(np.isfinite(arrive), arrive, np.nan)
    has_out = np.zeros(n, bool)
    has_out[a] = True
    inv[a] = S
    net.depth = np.round(g - inv, 2)
    net.start_depth = np.round(g[a] - S, 2)
    net.end_depth = np.round(g[b] - E, 2)


def _pressure_depths(net: TypeNet, jitter: np.ndarray) -> None:
    net.depth = np.round(net.spec.cover + jitter + net.extra, 2)
    net.start_depth = net.depth[net.a]
    net.end_depth = net.depth[net.b]


def _settle(nets: list[TypeNet], jitters: list[np.ndarray]) -> list:
    for net, j in zip(nets, jitters):
        if net.spec.gravity:
            _gravity(net)
        else:
            _pressure_depths(net, j)
    return nets


def close_pairs(nets: list[TypeNet], clearance: float = 0.0):
    """Pairs of segments (of any two types, or of one type without a shared point) whose axes come
    closer than their radii (+ ``clearance``): (type i, seg i, type j, seg j, distance, radii sum,
    z_i, z_j) arrays — z the axes' heights where they come closest in plan (:func:`_closest`)."""
    T, S, P, Q, R, A, B = [], [], [], [], [], [], []
    for t, net in enumerate(nets):
        z0, z1 = net.axis_z()
        T.append(np.full(net.a.size, t))
        S.append(np.arange(net.a.size))
        P.append(np.column_stack([net.x[net.a], net.y[net.a], z0]))
        Q.append(np.column_stack([net.x[net.b], net.y[net.b], z1]))
        R.append(radius_m(net.width, net.height))
        A.append(t * 10_000_000 + net.a)
        B.append(t * 10_000_000 + net.b)
    T, S, P, Q, R, A, B = (np.concatenate(v) for v in (T, S, P, Q, R, A, B))
    lines = shapely.linestrings(np.stack([P[:, :2], Q[:, :2]], axis=1))
    tree = shapely.STRtree(lines)
    i, j = tree.query(lines, predicate="dwithin", distance=R + float(R.max()) + clearance)
    keep = i < j
    i, j = i[keep], j[keep]
    shared = (A[i] == A[j]) | (A[i] == B[j]) | (B[i] == A[j]) | (B[i] == B[j])
    i, j = i[~shared], j[~shared]
    dist = segment_distance(P[i], Q[i], P[j], Q[j])
    rr = R[i] + R[j]
    hit = dist < rr + clearance
    i, j, dist, rr = i[hit], j[hit], dist[hit], rr[hit]
    si, sj = _closest(P[i], Q[i], P[j], Q[j])
    zi = P[i, 2] + (Q[i, 2] - P[i, 2]) * si
    zj = P[j, 2] + (Q[j, 2] - P[j, 2]) * sj
    return T[i], S[i], T[j], S[j], dist, rr, zi, zj


def _closest(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where two sets of segments come closest in plan: the parameters (0 … 1 along each) of the
    crossing, or of the nearest points when they do not cross. The heights there, not the
    segments' mean heights, tell which pipe runs above the other — on a slope the two differ by
    metres."""
    a = shapely.linestrings(np.stack([p1[:, :2], q1[:, :2]], axis=1))
    b = shapely.linestrings(np.stack([p2[:, :2], q2[:, :2]], axis=1))
    ends = shapely.get_coordinates(shapely.shortest_line(a, b)).reshape(-1, 2, 2)
    sa = shapely.line_locate_point(a, shapely.points(ends[:, 0]), normalized=True)
    sb = shapely.line_locate_point(b, shapely.points(ends[:, 1]), normalized=True)
    return np.nan_to_num(sa), np.nan_to_num(sb)  # a segment standing on one spot: its start


def _clear_crossings(nets: list[TypeNet], jitters: list[np.ndarray], rounds: int = 60) -> None:
    """Push the later type of every too-close pair down under the earlier one (two pipes of one
    type that meet without a joint, e.g. a side road leaving a main road at a sharp angle: the
    later segment under the earlier)."""
    for _ in range(rounds):
        ti, si, tj, sj, dist, rr, zi, zj = close_pairs(nets, CLEARANCE)
        if not ti.size:
            return
        # the mover: the later type (of one type: the later segment); it goes below the other by
        # the missing clearance (all the way under when it is above)
        swap = (ti > tj) | ((ti == tj) & (si > sj))
        mt = np.where(swap, ti, tj)
        ms = np.where(swap, si, sj)
        zm, zk = np.where(swap, zi, zj), np.where(swap, zj, zi)
        delta = np.where(zm < zk, rr + CLEARANCE - dist, zm - zk + rr + CLEARANCE) + 0.02
        for t in np.unique(mt):
            net = nets[t]
            sel = mt == t
            s_, d_ = ms[sel], delta[sel]
            # the depth each end must reach: its current depth + delta, as the point's extra depth
            # over the type's minimum (drains: over cover + diameter; others: over cover + jitter)
            base = net.spec.cover + net.h[s_] if net.spec.gravity else net.depth[net.a[s_]] - net.extra[net.a[s_]]
            base_b = net.spec.cover + net.h[s_] if net.spec.gravity else net.depth[net.b[s_]] - net.extra[net.b[s_]]
            want = np.full(net.x.size, -np.inf)
            np.maximum.at(want, net.a[s_], net.start_depth[s_] - base + d_)
            np.maximum.at(want, net.b[s_], net.end_depth[s_] - base_b + d_)
            net.extra = np.maximum(net.extra, np.ceil(want * 100) / 100)
        _settle(nets, jitters)
    left = close_pairs(nets, CLEARANCE)
    raise AssertionError(f"demo pipes: {left[0].size} pairs of pipes still too close after {rounds} rounds")


# -- attributes ------------------------------------------------------------------------------------

def _attributes(net: TypeNet, g: RoadGraph, world: World, rng: np.random.Generator) -> None:
    spec, n = net.spec, net.x.size
    a, b = net.a, net.b
    deg = np.bincount(np.concatenate([a, b]), minlength=n)
    # size change at a point
    dmax = np.zeros(n)
    dmin = np.full(n, np.inf)
    for ends in (a, b):
        np.maximum.at(dmax, ends, net.height)
        np.minimum.at(dmin, ends, net.height)
    # direction change at a two-pipe point
    vx, vy = net.x[b] - net.x[a], net.y[b] - net.y[a]
    ang = np.arctan2(vy, vx)
    first = np.full(n, np.nan)
    turn = np.zeros(n)
    for s, (p, q) in enumerate(zip(a.tolist(), b.tolist())):
        for pt in (p, q):
            if np.isnan(first[pt]):
                first[pt] = ang[s]
            else:
                d = abs((ang[s] - first[pt] + np.pi) % (2 * np.pi) - np.pi)
                turn[pt] = max(turn[pt], min(d, np.pi - d))
    feature = np.full(n, "直线点", dtype=object)
    feature[deg == 2] = np.where(turn[deg == 2] > math.radians(15), "弯头", "直线点")
    feature[(deg == 2) & (dmax != dmin)] = "变径"
    feature[deg == 3] = "三通"
    feature[deg >= 4] = "四通"
    feature[deg == 1] = "预留口"
    station_k = np.zeros(n, dtype=np.int64)
    station_k[net.node < 0] = np.arange((net.node < 0).sum())
    app = np.full(n, None, dtype=object)
    well = np.full(n, np.nan)
    is_tee = net.node >= 0
    if spec.gravity:
        feature[deg == 1] = "起始点"
        app[:] = "检查井"
        if spec.code == "YS":
            feature[net.outlet] = "出水口"
        else:
            feature[net.outlet] = "出图"
        well = net.depth + SUMP
    elif spec.code in ("DL", "TX"):
        app[:] = "检修井" if spec.code == "DL" else "人孔井"
        well = net.depth + dmax / 1000.0 + SUMP
    elif spec.code == "JS":
        app[is_tee] = "阀门井"
        app[~is_tee & (station_k % 4 == 0)] = "阀门井"
        app[~is_tee & (station_k % 4 == 2)] = "消防栓"
        well = np.where(app == "阀门井", net.depth + dmax / 1000.0 + 0.5, np.nan)
    else:  # RQ
        app[is_tee] = "阀门井"
        app[~is_tee & (station_k % 5 == 3)] = "凝水缸"
        well = np.where(app == "阀门井", net.depth + dmax / 1000.0 + 0.5, np.nan)
    net.feature, net.appurtenance, net.well_depth = feature, app, np.round(well, 2)
    width = max(4, len(str(n)))
    net.ids = np.array([f"{spec.code}{i + 1:0{width}d}" for i in range(n)], dtype=object)
    # per segment: material, owner, date, pressure
    e = net.seg_edge
    cls = g.cls[e]
    road = g.road[e]
    d = net.height
    if spec.code == "JS":
        material = np.where(d >= 300, "球墨铸铁管", "PE")
    elif spec.code == "RQ":
        material = np.where(d >= 200, "钢管", "PE")
    elif spec.code == "YS":
        material = np.where(d <= 500, "HDPE双壁波纹管", "钢筋混凝土管")
    elif spec.code == "WS":
        material = np.where(d <= 400, "HDPE双壁波纹管", "钢筋混凝土管")
    elif spec.code == "DL":
        material = np.full(e.size, "铜")
    else:
        material = np.full(e.size, "光缆")
    nroads = int(world.roads["road_id"].size)
    pick = np.random.default_rng([world.seed, 61, len(spec.code), ord(spec.code[0])]).integers(0, 3, nroads)
    owner = (np.array(TELECOM, dtype=object)[pick[road]] if spec.code == "TX"
             else np.full(e.size, OWNERS[spec.code], dtype=object))
    yrs = np.random.default_rng([world.seed, 62]).uniform(0, 1, nroads)
    lo = np.array([BUILT_YEARS[c][0] for c in cls])
    hi = np.array([BUILT_YEARS[c][1] for c in cls])
    year = (lo + yrs[road] * (hi - lo)).astype(int) + {"TX": 3, "DL": 2, "RQ": 1}.get(spec.code, 0)
    year = np.minimum(year, 2024)
    month = 1 + (road * 7 + len(spec.code)) % 12
    built = [date(int(yv), int(m), 15).isoformat() for yv, m in zip(year, month)]
    pressure = {"JS": "0.35MPa", "RQ": None, "DL": "10kV"}.get(spec.code)
    if spec.code == "RQ":
        pres = np.where(d >= 200, "中压A 0.4MPa", "中压B 0.2MPa").astype(object)
    else:
        pres = np.full(e.size, pressure, dtype=object)
    net.attrs.update(material=material.astype(object), owner=owner, built=np.array(built, dtype=object),
                     pressure=pres, road_name=world.roads["name"][road])


# -- the whole network -----------------------------------------------------------------------------

@dataclass
class Network:
    box: object
    graph: RoadGraph
    types: dict  # code → TypeNet
    seconds: float = 0.0

    def counts(self) -> dict:
        return {c: {"points": int(n.x.size), "segments": int(n.a.size)} for c, n in self.types.items()}

    def manholes(self) -> pd.DataFrame:
        """Every surveyed manhole (drains first): point id, type, x, y (EPSG:4547), well depth, the road."""
        rows = []
        for code in ("YS", "WS", "DL", "TX", "JS", "RQ"):
            n = self.types[code]
            m = np.array([bool(v) and "井" in v for v in n.appurtenance])
            road = np.full(n.x.size, "", dtype=object)
            road[n.a] = n.attrs["road_name"]
            road[n.b] = np.where(road[n.b] == "", n.attrs["road_name"], road[n.b])
            rows.append(pd.DataFrame({"point_id": n.ids[m], "type": n.spec.name, "type_code": code, "x": n.x[m],
                                      "y": n.y[m], "well_depth": n.well_depth[m], "appurtenance": n.appurtenance[m],
                                      "road": road[m]}))
        return pd.concat(rows, ignore_index=True)


def make_network(world: World, size: str) -> Network:
    """The demo's utility network (see the module doc)."""
    import time

    t0 = time.perf_counter()
    box = survey_box(world, size)
    g = road_graph(world, box)
    storm_flow = _flow(g, world, many_outlets=True)
    sewer_flow = _flow(g, world, many_outlets=False)
    nets, jitters = [], []
    for k, spec in enumerate(SPECS):
        flow = storm_flow if spec.code == "YS" else sewer_flow if spec.code == "WS" else None
        net = type_network(g, world, spec, k, flow)
        rng = _rng(world.seed, 70 + k)
        _sizes(net, g, rng)
        net.extra = np.zeros(net.x.size)
        jitters.append(np.round(rng.uniform(0.0, 0.15, net.x.size), 2))
        nets.append(net)
    _settle(nets, jitters)
    _clear_crossings(nets, jitters)
    for k, net in enumerate(nets):
        _attributes(net, g, world, _rng(world.seed, 80 + k))
    return Network(box=box, graph=g, types={n.spec.code: n for n in nets},
                   seconds=round(time.perf_counter() - t0, 2))


# -- checks ------------------------------------------------------------------------------------------

def problems(net: Network) -> list[str]:
    """What makes the network implausible: drains that rise, pipes closer than their radii, depths
    out of range, a manhole whose well does not reach its pipes."""
    out = []
    nets = list(net.types.values())
    for n in nets:
        z0, z1 = n.axis_z()
        if n.spec.gravity:
            inv0, inv1 = z0 - n.h / 2, z1 - n.h / 2
            up = np.flatnonzero(inv1 > inv0 - 1e-9)
            out += [f"{n.spec.name} {n.ids[n.a[i]]}→{n.ids[n.b[i]]} does not fall" for i in up[:5]]
            # diameters never shrink downstream
            d_in = np.zeros(n.x.size)
            np.maximum.at(d_in, n.b, n.height)
            shrink = np.flatnonzero(n.height < d_in[n.a])
            out += [f"{n.spec.name} {n.ids[n.a[i]]}: a d{int(d_in[n.a[i]])} drain continues as d{int(n.height[i])}"
                    for i in shrink[:5]]
            outs = np.bincount(n.a, minlength=n.x.size)
            if (outs > 1).any():
                out.append(f"{n.spec.name}: {(outs > 1).sum()} manholes with more than one outgoing pipe")
        for what, d in (("start", n.start_depth), ("end", n.end_depth)):
            bad = np.flatnonzero((d < 0.5) | (d > (12.0 if n.spec.gravity else 6.0)))
            out += [f"{n.spec.name} segment {n.ids[n.a[i]]}-{n.ids[n.b[i]]}: {what} depth {d[i]} m" for i in bad[:5]]
        well = n.well_depth
        lowest = np.full(n.x.size, -np.inf)
        bottoms = (n.start_depth + (0 if n.spec.gravity else n.h), n.end_depth + (0 if n.spec.gravity else n.h))
        np.maximum.at(lowest, n.a, bottoms[0])
        np.maximum.at(lowest, n.b, bottoms[1])
        shallow = np.flatnonzero(np.isfinite(well) & (well < lowest - 1e-6))
        out += [f"{n.spec.name} {n.ids[i]}: well {well[i]} m above its pipes ({lowest[i]:.2f} m)" for i in shallow[:5]]
    ti, si, tj, sj, dist, rr, _, _ = close_pairs(nets)
    for a_, b_, c_, d_, e_, f_ in list(zip(ti, si, tj, sj, dist, rr))[:10]:
        na, nb = nets[a_], nets[c_]
        out.append(f"{na.spec.name} {na.ids[na.a[b_]]}-{na.ids[na.b[b_]]} and {nb.spec.name} "
                   f"{nb.ids[nb.a[d_]]}-{nb.ids[nb.b[d_]]}: axes {e_:.2f} m apart, radii {f_:.2f} m")
    return out


# -- files ---------------------------------------------------------------------------------------

def survey_frames(n: TypeNet) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """One type's survey in the CJJ 61 shape: points (frame + geometries) and segments."""
    pts = pd.DataFrame({
        "物探点号": n.ids, "地面高程": n.ground, "埋深": n.depth, "特征": n.feature, "附属物": n.appurtenance,
        "井深": np.where(np.isfinite(n.well_depth), n.well_depth, np.nan),
    })
    size_col = ({"断面尺寸": [f"{int(w)}×{int(h)}" for w, h in zip(n.width, n.height)]}
                if n.spec.code in ("DL", "TX") else {"管径": n.height.astype(int)})
    seg = pd.DataFrame({
        "起点点号": n.ids[n.a], "终点点号": n.ids[n.b], "起点埋深": n.start_depth, "终点埋深": n.end_depth,
        **size_col, "材质": n.attrs["material"], "埋设方式": n.spec.buried, "权属单位": n.attrs["owner"],
        "埋设日期": n.attrs["built"], "压力": n.attrs["pressure"],
    })
    if all(v is None for v in n.attrs["pressure"]):  # telecom: no pressure / voltage column
        seg = seg.drop(columns="压力")
    return pts, shapely.points(n.x, n.y), seg


def write_surveys(net: Network, out_dir: Path, crs: str) -> list[dict]:
    """Per type a points GeoPackage and a segments CSV (UTF-8) in ``out_dir``; returns the
    manifest's entries."""
    from data._io import write_layer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for code, n in net.types.items():
        pts, geoms, seg = survey_frames(n)
        ppath = out_dir / f"{code}_points.gpkg"
        spath = out_dir / f"{code}_segments.csv"
        write_layer(ppath, pts, geoms, layer=f"{code}_points", crs=crs)
        seg.to_csv(spath, index=False, encoding="utf-8", lineterminator="\n")
        entries.append({"type": n.spec.name, "code": code, "points": ppath, "segments": spath,
                        "points_count": len(pts), "segments_count": len(seg),
                        "manholes": int(sum(1 for v in n.appurtenance if v and "井" in v)),
                        "length_km": round(float(np.hypot(n.x[n.b] - n.x[n.a], n.y[n.b] - n.y[n.a]).sum()) / 1000, 2)})
    return entries


# -- basements ------------------------------------------------------------------------------------

BASEMENT_USES = ("地下车库", "设备用房", "地下商业", "人防工程")


def make_basements(world: World, dev, share: float = 0.15) -> tuple[pd.DataFrame, np.ndarray]:
    """Basements under a share of the large buildings: (frame, polygons in EPSG:4547)."""
    rng = _rng(world.seed, 90)
    B = dev.buildings
    geoms = dev.building_geom
    area = shapely.area(geoms)
    use = B["use"].to_numpy()
    floors = B["floors"].to_numpy()
    large = (((floors >= 10) & np.isin(use, ["residential", "office", "commercial", "public", "dormitory"]))
             | (np.isin(use, ["commercial", "office"]) & (area > 800)))
    cand = np.flatnonzero(large)
    pick = np.sort(cand[rng.uniform(size=cand.size) < share])
    if pick.size == 0 and cand.size:
        pick = cand[:1]
    u = use[pick]
    p_use = rng.uniform(size=pick.size)
    kind = np.where(np.isin(u, ["commercial", "office"]) & (p_use < 0.45), "地下商业",
                    np.where(p_use < 0.7, "地下车库", np.where(p_use < 0.85, "设备用房", "人防工程")))
    levels = np.where(kind == "设备用房", 1, rng.integers(1, 4, pick.size))
    levels = np.where(floors[pick] >= 25, np.maximum(levels, 2), levels)
    depth = np.clip(np.round(levels * 3.6 + rng.uniform(0.3, 1.2, pick.size), 1), 4.0, 12.0)
    lots = world.lots["geom"][dev.building_lot[pick]]
    inner = shapely.buffer(lots, -1.0, join_style="mitre")
    garage = shapely.intersection(shapely.buffer(geoms[pick], rng.uniform(3, 8, pick.size), join_style="mitre"), inner)
    inside = shapely.buffer(geoms[pick], -0.5, join_style="mitre")
    poly = np.where(kind == "地下车库", garage, inside)
    # neighbours do not share a basement: later ones give way to earlier ones
    from data._io import polygonal

    poly = polygonal(shapely.make_valid(poly))
    taken = None
    out = poly.copy()
    for i in range(poly.size):
        g = out[i] if taken is None else shapely.difference(out[i], taken)
        g = polygonal(np.array([shapely.make_valid(g)], dtype=object))[0]
        out[i] = g
        taken = g if taken is None else shapely.union(taken, g)
    ok = shapely.area(out) >= 50.0
    pick, kind, levels, depth, out = pick[ok], kind[ok], levels[ok], depth[ok], out[ok]
    bid = B["building_id"].to_numpy()[pick]
    names = {"地下车库": "地下停车库", "设备用房": "地下设备用房", "地下商业": "地下商业街", "人防工程": "人防地下室"}
    frame = pd.DataFrame({
        "basement_id": [f"DX{i + 1:05d}" for i in range(pick.size)],
        "building_id": bid,
        "name": [f"{b} {names[k]}" for b, k in zip(bid, kind)],
        "use": kind.astype(object),
        "levels": levels.astype(np.int64),
        "depth_m": depth.astype(float),
    })
    return frame, out
