"""Project land supply: parcels with grant-contract attributes, building footprints (in parcels
and in the old built-up land around them), approval batches, and the planted supervision cases.

Dates are relative to the reference date (``REFERENCE_DATE``); every planted case is built so a
naive evaluation of the rule on the written files finds it (see ``data.checks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import shapely

from data import _buildings
from data._config import EPOCHS, REFERENCE_DATE, SURVEY_DATES
from data._world import World, _rng

REF = REFERENCE_DATE
E1, E2, E3 = (e[1] for e in EPOCHS)
OLD = date(2005, 1, 1)

# grant-contract land-use codes (GB/T 21010-2017) and what the land is coded as once built (三调)
USE_TO_LU = {"0701": "0701", "0505": "05H1", "0601": "0601", "0604": "0604", "0803": "08H2", "0805": "08H2"}
EXEMPTION_TEXT = "政府未按约定期限交付土地（《闲置土地处置办法》第八条第一项）"
PARCEL_FIELDS = [
    "parcel_id", "contract_no", "land_use_code", "price_cny", "contract_date", "agreed_start",
    "agreed_completion", "actual_start", "actual_completion", "extension_days", "exemption",
    "payment_due", "payment_received", "far_min", "far_max", "density_max", "green_ratio_min",
    "height_max_m", "setback_m", "gfa_due_m2", "gfa_built_m2", "investment_total_cny",
    "investment_done_cny", "stopped_since", "basement_levels", "approval_ids",
]
DATE_FIELDS = ["contract_date", "agreed_start", "agreed_completion", "actual_start", "actual_completion",
               "payment_due", "payment_received", "stopped_since"]


def d(days: float) -> date:
    """The reference date shifted by ``days``."""
    return REF + timedelta(days=int(round(days)))


def days_between(a: date, b: date) -> int:
    return (b - a).days


@dataclass
class Development:
    parcels: pd.DataFrame
    parcel_geom: np.ndarray
    parcel_lot: np.ndarray
    parcel_predev: np.ndarray  # land-use class before development
    buildings: pd.DataFrame
    building_geom: np.ndarray
    building_lot: np.ndarray
    building_visible: np.ndarray  # date the structure shows in imagery
    building_finished: np.ndarray  # date its roof is finished
    approvals: pd.DataFrame
    approval_geom: np.ndarray
    planted: dict = field(default_factory=dict)
    negatives: dict = field(default_factory=dict)
    imagery_change: list = field(default_factory=list)
    special_lots: dict = field(default_factory=dict)
    green_parcels: list = field(default_factory=list)  # parcel indices planted as R9 green-ratio cases


# -- carving special lots ------------------------------------------------------------------------

def _carve(world: World, lot: int, road_tree, road_geoms, half: float, rng) -> int:
    """Split ``lot`` into a ~2*half square piece on its road side and the rest; returns the
    index of the new piece (appended to world.lots)."""
    L = world.lots
    g = L["geom"][lot]
    j = road_tree.query_nearest(g)[0]
    p = shapely.shortest_line(g, road_geoms[j]).coords[0]
    c = shapely.Point(p)
    sq = shapely.box(c.x - half, c.y - half, c.x + half, c.y + half)
    piece = shapely.intersection(g, sq)
    parts = [q for q in shapely.get_parts(piece) if q.geom_type == "Polygon"]
    piece = max(parts, key=lambda q: q.area)
    rest = shapely.difference(g, piece)
    rest_parts = [q for q in shapely.get_parts(rest) if q.geom_type == "Polygon" and q.area > 0.5]
    L["geom"][lot] = max(rest_parts, key=lambda q: q.area) if rest_parts else g
    extra = [q for q in rest_parts if not q.equals(L["geom"][lot])]
    new_geoms = [piece] + extra
    n0 = L["geom"].size
    L["geom"] = np.concatenate([L["geom"], np.array(new_geoms, dtype=object)])
    for key in ("zone", "hill", "block"):
        L[key] = np.concatenate([L[key], np.repeat(L[key][lot], len(new_geoms))])
    return n0


def carve_special_lots(world: World) -> dict:
    rng = _rng(world.seed, 21)
    L = world.lots
    R = world.roads
    named = np.flatnonzero(np.isin(R["cls"], ["arterial", "secondary", "local"]))
    road_geoms = R["geom"][named]
    tree = shapely.STRtree(road_geoms)
    area = shapely.area(L["geom"])
    out = {}
    # R12b: a piece of forest at the foot of the hills next to a road
    hills = np.flatnonzero(L["hill"] & (area > 40000))
    dist = np.full(hills.size, np.inf)
    if hills.size:
        (qi, _), dd = tree.query_nearest(L["geom"][hills], return_distance=True, all_matches=False)
        dist[qi] = dd
    if hills.size:
        order = np.argsort(dist + rng.uniform(0, 5, dist.size))
        out["R12b"] = _carve(world, int(hills[order[0]]), tree, road_geoms, 65.0, rng)
    # R12a: a piece of farmland at the edge of town, next to a road
    area = shapely.area(L["geom"])
    rp = shapely.point_on_surface(L["geom"])
    u = world.urban_fn(shapely.get_x(rp), shapely.get_y(rp))
    agri = np.flatnonzero((L["zone"] == "agri") & ~L["hill"] & (area > 9000))
    if agri.size:
        pick = agri[np.argsort(-u[agri] + rng.uniform(0, 0.05, agri.size))[0]]
        if area[pick] < 16000:
            out["R12a"] = int(pick)
        else:
            out["R12a"] = _carve(world, int(pick), tree, road_geoms, 55.0, rng)
    return out


# -- selection -------------------------------------------------------------------------------

def _compactness(geoms):
    env = shapely.oriented_envelope(geoms)
    return shapely.area(geoms) / np.maximum(shapely.area(env), 1e-9)


def select_parcels(world: World, special: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    L = world.lots
    g = L["geom"]
    area = shapely.area(g)
    comp = _compactness(g)
    rp = shapely.point_on_surface(g)
    u = world.urban_fn(shapely.get_x(rp), shapely.get_y(rp))
    ind = world.industry_fn(shapely.get_x(rp), shapely.get_y(rp))
    z = L["zone"]
    dev_ok = np.isin(z, ["residential", "commercial", "industrial", "public"]) & ~L["hill"]
    good = (area > 4500) & (area < 70000) & (comp > 0.62)
    cand = np.flatnonzero(dev_ok & good)
    agri_c = np.flatnonzero((z == "agri") & ~L["hill"] & good & (u > 0.16) & (area < 45000))
    target = world.spec.parcel_target
    special_idx = set(special.values())
    cand = np.array([c for c in cand if c not in special_idx], dtype=np.int64)
    agri_c = np.array([c for c in agri_c if c not in special_idx], dtype=np.int64)
    n_agri = min(agri_c.size, max(3, int(0.08 * target)))
    n_dev = min(cand.size, target - n_agri - len(special))
    pick = np.concatenate([cand[rng.permutation(cand.size)[:n_dev]],
                           agri_c[rng.permutation(agri_c.size)[:n_agri]],
                           np.array(sorted(special.values()), dtype=np.int64)])
    pick = np.unique(pick)
    # use codes
    use = np.empty(pick.size, dtype=object)
    zz = z[pick]
    r = rng.uniform(size=pick.size)
    use[zz == "residential"] = "0701"
    use[zz == "commercial"] = "0505"
    use[zz == "industrial"] = np.where(r[zz == "industrial"] < 0.8, "0601", "0604")
    use[zz == "public"] = np.where(r[zz == "public"] < 0.7, "0803", "0805")
    agri_mask = (zz == "agri") | (zz == "forest")
    use[agri_mask] = np.where(ind[pick][agri_mask] > 0.5, "0601", "0701")
    # at least a few industrial projects (the R9 cases need them): convert the largest others
    n_ind = int((use == "0601").sum())
    if n_ind < 6:
        conv = [i for i in np.argsort(-area[pick]) if use[i] in ("0701", "0505") and zz[i] != "agri"][:6 - n_ind]
        use[conv] = "0601"
    return pick, use


KIND_OF_USE = {"0701": ("tower", "slab"), "0505": ("commercial", "office"), "0601": ("factory",),
               "0604": ("warehouse",), "0803": ("public",), "0805": ("public",)}


def _kinds_for_lots(world: World, lots: np.ndarray, rng) -> np.ndarray:
    z = world.lots["zone"][lots]
    r = rng.uniform(size=lots.size)
    k = np.full(lots.size, "", dtype=object)
    k[z == "village"] = "village"
    k[z == "residential"] = np.where(r[z == "residential"] < 0.55, "oldres", "slab")
    k[z == "industrial"] = np.where(r[z == "industrial"] < 0.8, "factory", "warehouse")
    k[z == "commercial"] = np.where(r[z == "commercial"] < 0.6, "commercial", "office")
    k[z == "public"] = "public"
    return k


# -- the main builder ---------------------------------------------------------------------------

def make_development(world: World) -> Development:
    rng = _rng(world.seed, 20)
    special = carve_special_lots(world)
    L = world.lots
    pick, use = select_parcels(world, special, rng)
    n = pick.size
    pgeom = L["geom"][pick]
    parea = shapely.area(pgeom)
    is_parcel = np.zeros(L["geom"].size, bool)
    is_parcel[pick] = True
    lot_to_parcel = np.full(L["geom"].size, -1)
    lot_to_parcel[pick] = np.arange(n)

    # setbacks and buildings inside parcels (laid out as if complete; states decide later)
    setback = np.where(np.isin(use, ["0601", "0604"]), rng.choice([5.0, 6.0, 8.0], n),
                       rng.choice([6.0, 8.0, 10.0, 12.0], n))
    kinds = np.array([KIND_OF_USE[u_][int(rng.integers(len(KIND_OF_USE[u_])))] for u_ in use], dtype=object)
    bl, bg, bf, bh, bu = _buildings.place(pgeom, kinds, setback, rng)
    # industrial: the smallest building is the office / dormitory if it is small enough
    bu = bu.copy()
    foot = shapely.area(bg)
    for p in np.flatnonzero(use == "0601"):
        idx = np.flatnonzero(bl == p)
        if idx.size >= 2:
            s = idx[np.argmin(foot[idx])]
            if foot[s] / parea[p] <= 0.05:
                bu[s] = "office"
                bf[s] = min(bf[s] + 2, 8)
                bh[s] = round(bf[s] * 3.6 + 1.0, 1)

    # buildings of the old built-up land outside parcels
    others = np.flatnonzero(~is_parcel & ~L["hill"] & np.isin(L["zone"], ["village", "residential", "industrial",
                                                                          "commercial", "public"]))
    okinds = _kinds_for_lots(world, others, rng)
    osb = np.where(okinds == "village", 1.0, 4.0)
    ol, og, of_, oh, ou = _buildings.place(L["geom"][others], okinds, osb, rng, keep_p=0.9)

    # per-parcel stats (as laid out)
    stats = _stats(bl, bg, bf, n)
    stats["area"] = parea
    states, roles = _assign_states(world, pick, use, stats, special, rng)
    P = _attributes(world, pick, use, parea, states, roles, setback, rng)

    # building edits for states and planted cases
    keepb = np.ones(bl.size, bool)
    st = states[bl]
    keepb &= ~np.isin(st, ["not_started", "uc_early"])
    visible = np.empty(bl.size, dtype=object)
    finished = np.empty(bl.size, dtype=object)
    for p in range(n):
        idx = np.flatnonzero(bl == p)
        if idx.size == 0:
            continue
        a_s, a_c = P.at[p, "actual_start"], P.at[p, "actual_completion"]
        if a_s is None:
            continue
        visible[idx] = a_s + timedelta(days=300)
        finished[idx] = a_c if a_c is not None else date(2100, 1, 1)
        if states[p] == "stalled":
            # partial structures: some buildings, few floors
            k = max(1, idx.size // 3)
            keepb[idx[k:]] = False
            bf[idx[:k]] = np.maximum(2, np.round(bf[idx[:k]] * 0.25)).astype(np.int64)
            bh[idx[:k]] = np.round(bf[idx[:k]] * 3.0 + 1.0, 1)
            visible[idx] = a_s + timedelta(days=200)
    bgeom = bg.copy()
    planted_bld = {}
    _plant_building_cases(P, pgeom, bl, bgeom, bf, bh, bu, keepb, roles, rng, planted_bld)

    # final building set
    bl, bgeom, bf, bh, bu = bl[keepb], bgeom[keepb], bf[keepb], bh[keepb], bu[keepb]
    visible, finished = visible[keepb], finished[keepb]
    stats = _stats(bl, bgeom, bf, n)
    _planning_conditions(P, parea, stats, states, roles, bl, bh, rng)

    # industrial parcels that end up under 30% coverage (odd shapes) become warehouses (0604)
    done = P["actual_completion"].notna().to_numpy()
    cov = stats["foot"] / parea
    bad_ind = (P["land_use_code"].to_numpy() == "0601") & done & (cov < 0.31) & ~np.isin(roles, ["R9a", "R9b"])
    P.loc[bad_ind, "land_use_code"] = "0604"
    off_share = _office_share(bl, bgeom, bu, n) / parea
    bad_off = (P["land_use_code"].to_numpy() == "0601") & done & (off_share > 0.065) & ~np.isin(roles, ["R9b"])
    for p in np.flatnonzero(bad_off):
        bu[(bl == p) & np.isin(bu, ["office", "dormitory"])] = "industrial"

    # R9 green ratio (≤ 20% on industrial land): the imagery renders completed industrial parcels
    # with little green (lawn strips, a few trees); one compliant one, with the most open ground, is
    # rendered as a landscaped campus instead — more than 20% of its pixels read as vegetation
    ind_done = np.flatnonzero((P["land_use_code"].to_numpy() == "0601") & done & (roles == ""))
    green_parcels = []
    if ind_done.size:
        cov = stats["foot"] / parea
        g = int(ind_done[np.lexsort((ind_done, cov[ind_done]))][0])
        roles[g] = "R9g"
        green_parcels.append(g)

    # assemble buildings: parcel ones then the others
    all_lot = np.concatenate([pick[bl], others[ol]])
    all_geom = np.concatenate([bgeom, og])
    all_f = np.concatenate([bf, of_])
    all_h = np.concatenate([bh, oh])
    all_u = np.concatenate([bu, ou])
    all_pid = np.concatenate([P["parcel_id"].to_numpy()[bl], np.full(og.size, None, dtype=object)])
    all_vis = np.concatenate([visible, np.full(og.size, OLD, dtype=object)])
    all_fin = np.concatenate([finished, np.full(og.size, OLD, dtype=object)])
    order = np.lexsort((shapely.get_y(shapely.centroid(all_geom)).round(1), all_lot))
    B = pd.DataFrame({
        "building_id": [f"B{i + 1:07d}" for i in range(order.size)],
        "parcel_id": all_pid[order],
        "height_m": all_h[order].astype(float),
        "floors": all_f[order].astype(np.int64),
        "use": all_u[order],
        "gfa_m2": np.round(shapely.area(all_geom[order]) * all_f[order], 1),
    })

    # planted building-level cases are listed by parcel id
    planted, negatives = _planted_lists(P, roles)
    approvals, ageom = _approvals(world, P, pgeom, pick, is_parcel, roles, planted, negatives, rng)
    change = [P.at[p, "parcel_id"] for p in np.flatnonzero(states == "built_between")]

    predev = _predev_classes(world, pick, use, P, roles, rng)
    return Development(
        parcels=P[PARCEL_FIELDS], parcel_geom=pgeom, parcel_lot=pick, parcel_predev=predev,
        buildings=B, building_geom=all_geom[order], building_lot=all_lot[order],
        building_visible=all_vis[order], building_finished=all_fin[order],
        approvals=approvals, approval_geom=ageom, planted=planted, negatives=negatives,
        imagery_change=change, special_lots=special, green_parcels=green_parcels,
    )


def _stats(bl, bg, bf, n):
    foot = np.bincount(bl, weights=shapely.area(bg), minlength=n) if bl.size else np.zeros(n)
    gfa = np.bincount(bl, weights=shapely.area(bg) * bf, minlength=n) if bl.size else np.zeros(n)
    cnt = np.bincount(bl, minlength=n) if bl.size else np.zeros(n, int)
    return {"foot": foot, "gfa": gfa, "count": cnt}


def _office_share(bl, bg, bu, n):
    m = np.isin(bu, ["office", "dormitory", "residential"])
    if not m.any():
        return np.zeros(n)
    return np.bincount(bl[m], weights=shapely.area(bg[m]), minlength=n)


# -- states ---------------------------------------------------------------------------------------

BUILT_ROLES = ["R8a", "R8b", "R10a", "R10b", "R11"]
IND_ROLES = ["R9a", "R9b"]
UC_ROLES = ["R2b", "R7", "R6a", "R6b", "R6neg_recent", "R6neg_ratio", "R2neg"]
NS_ROLES = ["R1", "R1neg", "R2a", "R3", "R3neg_ext", "R3neg_basement", "R4", "R4neg_exempt", "R5"]


def _assign_states(world, pick, use, stats, special, rng):
    n = pick.size
    roles = np.full(n, "", dtype=object)
    states = np.full(n, "", dtype=object)
    nb = stats["count"]
    pos = {lot: i for i, lot in enumerate(pick)}
    order = rng.permutation(n)
    free = np.ones(n, bool)
    zone = world.lots["zone"][pick]

    def take(prefs, role):
        """The first free parcel (in random order) meeting the first satisfiable mask."""
        if not isinstance(prefs, list):
            prefs = [prefs]
        for mask in prefs + [nb >= 1, np.ones(n, bool)]:
            idx = [i for i in order if free[i] and mask[i]]
            if idx:
                i = idx[0]
                free[i] = False
                roles[i] = role
                return i
        raise RuntimeError(f"demo builder: no parcel left for planted case {role}")

    for key, role in (("R12a", "R12a"), ("R12b", "R12b")):
        if key in special:
            i = pos[special[key]]
            free[i] = False
            roles[i] = role
    resi = np.isin(use, ["0701", "0505"])
    cov = stats["foot"] / np.maximum(stats["area"], 1.0)
    ind = use == "0601"
    take([ind & (nb >= 4) & (cov >= 0.3), ind & (nb >= 3), ind & (nb >= 2)], "R9a")
    take([ind & (nb >= 3) & (cov >= 0.36), ind & (nb >= 2) & (cov >= 0.3), ind & (nb >= 2)], "R9b")
    for role in BUILT_ROLES:
        take([resi & (nb >= 3), nb >= 3, nb >= 2], role)
    for role in UC_ROLES:
        take([resi & (nb >= 3), nb >= 3, nb >= 2], role)
    # R12neg: a parcel on farmland with its conversion approved, not started
    take([zone == "agri"], "R12neg")
    for role in NS_ROLES:
        take([nb <= 2, np.ones(n, bool)], role)
    # imagery change: built between the first and the last epoch
    n_change = max(6, int(round(0.06 * n)))
    for _ in range(n_change):
        take([resi & (nb >= 2) | (use == "0604") & (nb >= 1), nb >= 2], "change")

    for i in range(n):
        r = roles[i]
        if r in BUILT_ROLES or r in IND_ROLES or r == "R2neg":
            states[i] = "completed"
        elif r in ("R2b", "R7"):
            states[i] = "uc_late"
        elif r.startswith("R6"):
            states[i] = "stalled"
        elif r in NS_ROLES or r in ("R12b", "R12neg"):
            states[i] = "not_started"
        elif r == "R12a":
            states[i] = "uc_early"
        elif r == "change":
            states[i] = "built_between"
        else:
            x = rng.uniform()
            if nb[i] == 0:
                states[i] = "uc_early" if x < 0.4 else "not_started"
            elif zone[i] == "agri":
                states[i] = "uc_early" if x < 0.5 else "not_started"
            elif x < 0.62:
                states[i] = "completed"
            elif x < 0.82:
                states[i] = "uc_late"
            elif x < 0.9:
                states[i] = "uc_early"
            else:
                states[i] = "not_started"
    return states, roles


def _attributes(world, pick, use, parea, states, roles, setback, rng) -> pd.DataFrame:
    n = pick.size
    rows = []
    rp = shapely.point_on_surface(world.lots["geom"][pick])
    # parcel ids by block and position
    block = world.lots["block"][pick]
    order = np.lexsort((shapely.get_x(rp).round(0), block))
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    seq_by_year: dict[int, int] = {}
    for i in range(n):
        r, s = roles[i], states[i]
        u = rng.uniform
        ext = 0
        exemption = None
        a_start = a_done = None
        stopped = None
        basement = int(rng.choice([1, 2, 2, 3]) if use[i] in ("0701", "0505") else rng.choice([0, 0, 1]))
        if s == "completed" and r not in ("R2neg",):
            contract = d(-days_between(date(2008, 1, 1), REF) + u(0, days_between(date(2008, 1, 1), date(2016, 12, 31))))
            ag_start = contract + timedelta(days=int(u(120, 330)))
            ag_done = min(ag_start + timedelta(days=int(u(800, 1150))), contract + timedelta(days=1440))
            a_start = ag_start - timedelta(days=int(u(0, 60)))
            a_done = ag_done - timedelta(days=int(u(20, 200)))
            a_done = max(a_done, a_start + timedelta(days=600))
            if a_done > ag_done:
                ag_done = min(a_done + timedelta(days=30), contract + timedelta(days=1460))
                a_done = min(a_done, ag_done)
        elif r == "R2neg":
            ag_done = d(15)
            contract = ag_done - timedelta(days=1300)
            ag_start = contract + timedelta(days=200)
            a_start = ag_start - timedelta(days=5)
            a_done = d(-20)
        elif s == "built_between":
            a_start = E1 + timedelta(days=int(u(90, 480)))
            a_done = a_start + timedelta(days=int(u(620, 820)))
            if a_done > E3 - timedelta(days=40):
                a_done = E3 - timedelta(days=40)
            ag_start = a_start + timedelta(days=int(u(0, 40)))
            contract = ag_start - timedelta(days=int(u(150, 300)))
            ag_done = min(contract + timedelta(days=1440), a_done + timedelta(days=int(u(60, 240))))
        elif r == "R2b":
            ag_done = d(25)
            contract = ag_done - timedelta(days=1400)
            ag_start = contract + timedelta(days=200)
            a_start = ag_start - timedelta(days=10)
        elif r == "R7":
            contract = d(-1830)
            ag_start = contract + timedelta(days=180)
            a_start = ag_start + timedelta(days=5)
            ag_done = contract + timedelta(days=1461)
        elif s == "uc_late":  # under construction, structures up, completion due later
            ag_done = d(u(60, 500))
            contract = ag_done - timedelta(days=int(u(1300, 1455)))
            a_start = contract + timedelta(days=int(u(150, 300)))
            ag_start = a_start + timedelta(days=int(u(0, 40)))
        elif r == "R12a":
            contract = d(-700)
            ag_start = contract + timedelta(days=200)
            a_start = ag_start
            ag_done = contract + timedelta(days=1400)
        elif s == "uc_early":  # started recently, no structures yet
            a_start = max(d(-u(60, 400)), SURVEY_DATES[1] + timedelta(days=30))
            contract = a_start - timedelta(days=int(u(150, 300)))
            ag_start = a_start + timedelta(days=int(u(0, 30)))
            ag_done = contract + timedelta(days=int(u(1200, 1450)))
        elif s == "stalled":
            contract = {"R6a": d(-1300), "R6b": d(-1250), "R6neg_recent": d(-1100), "R6neg_ratio": d(-1200)}[r]
            ag_start = contract + timedelta(days=200)
            a_start = ag_start
            ag_done = contract + timedelta(days=1461)
            stopped = {"R6a": d(-580), "R6b": d(-470), "R6neg_recent": d(-150), "R6neg_ratio": d(-730)}[r]
        elif r in NS_ROLES:
            spec_ = {
                "R1": (-25, 300), "R1neg": (-40, 330), "R2a": (-280, None), "R3": (-450, None),
                "R3neg_ext": (-530, None), "R3neg_basement": (-420, 540), "R4": (-800, None),
                "R4neg_exempt": (-950, None), "R5": (-1300, None),
            }[r]
            contract = d(spec_[0])
            ag_start = {"R2a": d(20), "R3": d(-120), "R3neg_ext": d(-200), "R4": d(-510),
                        "R4neg_exempt": d(-620), "R5": d(-950)}.get(r) or contract + timedelta(days=spec_[1])
            ag_done = contract + timedelta(days=1400)
            if r == "R3neg_ext":
                ext = 365
            if r == "R3neg_basement":
                basement = 3
                ag_done = contract + timedelta(days=1461 + 180)
            if r == "R4neg_exempt":
                exemption = EXEMPTION_TEXT
        else:  # not started, on time
            contract = d(-u(20, 200))
            ag_start = max(contract + timedelta(days=int(u(180, 360))), d(45 + u(0, 60)))
            ag_done = contract + timedelta(days=int(u(1200, 1440)))
        # an approved extension on some compliant projects that started late but within it
        if r == "" and s in ("completed", "built_between") and u() < 0.12:
            ext = int(rng.choice([90, 180, 270]))
            a_start = min(a_start + timedelta(days=int(u(10, ext))), ag_start + timedelta(days=ext))
            if a_done is not None and a_done < a_start + timedelta(days=540):
                a_done = a_start + timedelta(days=540)
                ag_done = max(ag_done, a_done + timedelta(days=10))
                ag_done = min(ag_done, contract + timedelta(days=1461))
                a_done = min(a_done, ag_done)
        # payments
        pay_due = contract + timedelta(days=int(u(30, 120)))
        paid = pay_due - timedelta(days=int(u(0, 25)))
        if r == "R1":
            pay_due, paid = d(18), None
        elif r == "R1neg":
            pay_due, paid = d(10), d(-6)
        elif pay_due > REF:
            if pay_due <= d(31):
                paid = min(paid, REF - timedelta(days=1))
            else:
                paid = None
        if paid is not None and paid < contract:
            paid = contract
        yr = contract.year
        seq_by_year[yr] = seq_by_year.get(yr, 0) + 1
        rows.append(dict(
            parcel_id=f"G{block[i]:05d}-{rank[i] + 1:04d}",
            contract_no=f"深地合字（{yr}）{4000 + seq_by_year[yr] + 37 * (i % 7)}号",
            land_use_code=use[i], contract_date=contract, agreed_start=ag_start, agreed_completion=ag_done,
            actual_start=a_start, actual_completion=a_done, extension_days=ext, exemption=exemption,
            payment_due=pay_due, payment_received=paid, stopped_since=stopped, basement_levels=basement,
            setback_m=float(setback[i]),
        ))
    P = pd.DataFrame(rows)
    # make contract numbers unique
    dup = P["contract_no"].duplicated(keep=False)
    if dup.any():
        P.loc[dup, "contract_no"] = [f"{c[:-1]}-{k}号" for k, c in enumerate(P.loc[dup, "contract_no"])]
    for c in DATE_FIELDS:
        P[c] = P[c].astype(object).where(P[c].notna(), None)
    return P


# -- planted building cases ---------------------------------------------------------------------

def _nearest_edge_vector(poly, geom):
    """Unit vector from the footprint towards the nearest point of the parcel boundary, and
    the distance between them."""
    line = shapely.shortest_line(geom, shapely.boundary(poly))
    (x0, y0), (x1, y1) = line.coords
    v = np.array([x1 - x0, y1 - y0])
    nv = float(np.hypot(*v))
    if nv < 1e-9:
        c = shapely.centroid(geom)
        v = np.array([x1 - c.x, y1 - c.y])
        nv = float(np.hypot(*v))
    return v / max(nv, 1e-9), shapely.distance(geom, shapely.boundary(poly))


def _plant_building_cases(P, pgeom, bl, bgeom, bf, bh, bu, keepb, roles, rng, out):
    n = len(P)
    for p in range(n):
        r = roles[p]
        idx = np.flatnonzero((bl == p) & keepb)
        if r == "R10a" and idx.size:
            t = idx[np.argmax(bh[idx])]
            bf[t] = bf[t] + 10
            bh[t] = round(bh[t] + 30.0, 1)
        elif r in ("R10b", "R11") and idx.size:
            poly = pgeom[p]
            sb = float(P.at[p, "setback_m"])
            # the building closest to the boundary, moved towards it
            dists = shapely.distance(bgeom[idx], shapely.boundary(poly))
            done = False
            for strict in (True, False):
                for t in idx[np.argsort(dists)]:
                    v, dist = _nearest_edge_vector(poly, bgeom[t])
                    move = dist - sb / 3 if r == "R10b" else dist + 8.0
                    moved = shapely.transform(bgeom[t], lambda c, v=v, m=move: c + v * m)
                    others = np.array([o for o in idx if o != t], dtype=np.int64)
                    if strict and others.size and shapely.intersects(moved, bgeom[others]).any():
                        continue
                    if r == "R10b" and not (shapely.within(moved, poly)
                                            and shapely.distance(moved, shapely.boundary(poly)) < sb - 1.5):
                        continue
                    if r == "R11" and shapely.difference(moved, poly).area < 40:
                        continue
                    bgeom[t] = moved
                    done = True
                    break
                if done:
                    break
            if not done and r == "R10b":
                # the conditions ask for a wider setback than the nearest building keeps
                P.at[p, "setback_m"] = float(math.ceil(dists.min() + 3.0))
        elif r == "R9a" and idx.size:
            # half-built industrial site: halls cover only about a fifth of the land
            area = shapely.area(pgeom[p])
            order_ = idx[np.argsort(-shapely.area(bgeom[idx]))]
            cov = 0.0
            for t in order_:
                a = shapely.area(bgeom[t]) / area
                if cov + a > 0.22:
                    keepb[t] = False
                else:
                    cov += a
                    bu[t] = "industrial"
            if cov == 0.0:
                t = order_[-1]
                keepb[t] = True
                bu[t] = "industrial"
                f = math.sqrt(0.15 * area / shapely.area(bgeom[t])) if shapely.area(bgeom[t]) / area > 0.2 else 1.0
                bgeom[t] = _scale(bgeom[t], f)
        elif r == "R9b" and idx.size:
            # dormitories / offices take well over 7% of the site
            area = shapely.area(pgeom[p])
            order_ = idx[np.argsort(shapely.area(bgeom[idx]))]
            share = 0.0
            for t in order_:
                if share > 0.09 or t == order_[-1]:
                    break
                bu[t] = "dormitory"
                bf[t] = min(bf[t] + 2, 8)
                bh[t] = round(bf[t] * 3.2 + 1.0, 1)
                share += shapely.area(bgeom[t]) / area
            if share <= 0.07:  # force it with the largest hall as an office block
                bu[order_[-1]] = "office"


def _scale(geom, f):
    c = shapely.centroid(geom)
    return shapely.transform(geom, lambda xy: (xy - [c.x, c.y]) * f + [c.x, c.y])


# -- planning conditions ------------------------------------------------------------------------

def _planning_conditions(P, parea, stats, states, roles, bl, bh, rng):
    n = len(P)
    use = P["land_use_code"].to_numpy()
    far_act = stats["gfa"] / parea
    dens_act = stats["foot"] / parea
    hmax = np.zeros(n)
    if bl.size:
        np.maximum.at(hmax, bl, bh)
    typ_far = {"0701": (2.5, 4.5), "0505": (3.0, 6.0), "0601": (2.0, 4.0), "0604": (1.0, 2.0),
               "0803": (0.8, 1.8), "0805": (1.2, 2.5)}
    typ_den = {"0701": 0.3, "0505": 0.45, "0601": 0.55, "0604": 0.6, "0803": 0.35, "0805": 0.4}
    typ_h = {"0701": 100.0, "0505": 150.0, "0601": 50.0, "0604": 24.0, "0803": 24.0, "0805": 50.0}
    green = {"0701": (0.30, 0.40), "0505": (0.20, 0.30), "0601": (0.10, 0.20), "0604": (0.10, 0.15),
             "0803": (0.35, 0.40), "0805": (0.35, 0.40)}
    far_min = np.zeros(n)
    far_max = np.zeros(n)
    dmax = np.zeros(n)
    hlim = np.zeros(n)
    gfa_due = np.zeros(n)
    gfa_built = np.zeros(n)
    inv_total = np.zeros(n)
    inv_done = np.zeros(n)
    price = np.zeros(n)
    green_min = np.zeros(n)
    unit_cost = {"0701": 5200, "0505": 6800, "0601": 3000, "0604": 2200, "0803": 4500, "0805": 6000}
    for i in range(n):
        uu = use[i]
        s, r = states[i], roles[i]
        has_b = stats["count"][i] > 0
        lo, hi = typ_far[uu]
        if has_b and s in ("completed", "built_between", "uc_late"):
            fa = far_act[i]
            far_max[i] = math.ceil(max(fa * rng.uniform(1.06, 1.25), fa + 0.15) * 10) / 10
            far_min[i] = max(0.01, math.floor(fa * rng.uniform(0.6, 0.85) * 100) / 100)
            dmax[i] = min(0.95, math.ceil((dens_act[i] * rng.uniform(1.1, 1.35) + 0.02) * 100) / 100)
            hlim[i] = math.ceil(hmax[i] * rng.uniform(1.05, 1.3) / 5) * 5
            gfa_due[i] = round(stats["gfa"][i] / rng.uniform(0.985, 1.0), -1)
        else:
            far_min[i] = round(rng.uniform(lo, (lo + hi) / 2) * 10) / 10
            far_max[i] = round(rng.uniform((lo + hi) / 2 + 0.2, hi + 0.5) * 10) / 10
            dmax[i] = typ_den[uu]
            hlim[i] = typ_h[uu]
            gfa_due[i] = round(parea[i] * (far_min[i] + far_max[i]) / 2, -1)
        if s == "stalled":
            # partial structures; the planned area is several times what stands
            ratio = {"R6a": 0.2, "R6b": 0.5, "R6neg_recent": 0.2, "R6neg_ratio": 0.5}[r]
            built = stats["gfa"][i]
            gfa_due[i] = round(max(built / ratio, parea[i] * lo), -1)
            gfa_built[i] = round(gfa_due[i] * ratio, 1)
            far_min[i] = round(min(far_min[i], gfa_due[i] / parea[i] * 0.8), 1)
            far_max[i] = math.ceil(max(far_max[i], gfa_due[i] / parea[i] * 1.1, far_act[i] + 0.1) * 10) / 10
            dmax[i] = max(dmax[i], math.ceil((dens_act[i] + 0.05) * 100) / 100)
            hlim[i] = max(hlim[i], math.ceil((hmax[i] + 10) / 5) * 5)
        elif s in ("completed", "built_between"):
            gfa_built[i] = round(stats["gfa"][i], 1)
        elif s == "uc_late":
            gfa_built[i] = round(stats["gfa"][i] * rng.uniform(0.55, 0.9), 1)
        inv_total[i] = round(gfa_due[i] * unit_cost[uu] * rng.uniform(0.9, 1.1), -4)
        if s in ("completed", "built_between"):
            inv_done[i] = round(inv_total[i] * rng.uniform(0.96, 1.04), -4)
        elif s == "stalled":
            ir = {"R6a": 0.35, "R6b": 0.18, "R6neg_recent": 0.3, "R6neg_ratio": 0.6}[r]
            inv_done[i] = round(inv_total[i] * ir, -4)
        elif s == "uc_late":
            inv_done[i] = round(inv_total[i] * rng.uniform(0.5, 0.85), -4)
        elif s == "uc_early":
            inv_done[i] = round(inv_total[i] * rng.uniform(0.05, 0.2), -4)
        # planted violations of the planning conditions
        if r == "R8a":
            far_max[i] = math.floor(far_act[i] * 0.8 * 10) / 10
            far_min[i] = min(far_min[i], math.floor(far_max[i] * 0.7 * 10) / 10)
            gfa_due[i] = round(parea[i] * far_max[i], -1)
        elif r == "R8b":
            dmax[i] = math.floor(dens_act[i] * 0.75 * 100) / 100
        elif r == "R10a":
            # the tallest building was raised by 30 m after the limit was set
            second = np.sort(bh[bl == i])[-2] if (bl == i).sum() > 1 else hmax[i] - 30
            hlim[i] = max(math.ceil(second / 5) * 5, math.floor((hmax[i] - 20) / 5) * 5)
            hlim[i] = min(hlim[i], hmax[i] - 10)
        lp = {"0701": (7000, 12000), "0505": (5000, 9000), "0601": (900, 1800), "0604": (700, 1200),
              "0803": (400, 900), "0805": (500, 1000)}[uu]
        price[i] = round(gfa_due[i] * rng.uniform(*lp), -4)
        g0, g1 = green[uu]
        green_min[i] = round(rng.uniform(g0, g1), 2)
    P["green_ratio_min"] = green_min
    P["far_min"] = np.round(far_min, 2)
    P["far_max"] = np.round(far_max, 2)
    P["density_max"] = np.round(dmax, 2)
    P["height_max_m"] = hlim.astype(float)
    P["gfa_due_m2"] = gfa_due
    P["gfa_built_m2"] = gfa_built
    P["investment_total_cny"] = inv_total
    P["investment_done_cny"] = inv_done
    P["price_cny"] = price


# -- planted lists, approvals, pre-development cover --------------------------------------------

RULE_OF_ROLE = {"R1": "R1", "R2a": "R2", "R2b": "R2", "R3": "R3", "R4": "R4", "R5": "R5", "R6a": "R6",
                "R6b": "R6", "R7": "R7", "R8a": "R8", "R8b": "R8", "R9a": "R9", "R9b": "R9", "R9g": "R9",
                "R10a": "R10", "R10b": "R10", "R11": "R11", "R12a": "R12", "R12b": "R12"}
NEG_OF_ROLE = {"R1neg": ["R1"], "R2neg": ["R2"], "R3neg_ext": ["R2", "R3"], "R3neg_basement": ["R3", "R7"],
               "R4neg_exempt": ["R3", "R4", "R5"], "R6neg_recent": ["R6"], "R6neg_ratio": ["R6"],
               "R12neg": ["R12"]}


def _planted_lists(P, roles):
    planted = {f"R{i}": [] for i in range(1, 14)}
    negatives: dict[str, list] = {}
    for i, r in enumerate(roles):
        pid = P.at[i, "parcel_id"]
        if r in RULE_OF_ROLE:
            planted[RULE_OF_ROLE[r]].append(pid)
        for rule in NEG_OF_ROLE.get(r, []):
            negatives.setdefault(rule, []).append(pid)
    return planted, negatives


def _approvals(world, P, pgeom, pick, is_parcel, roles, planted, negatives, rng):
    n = len(P)
    L = world.lots
    has_appr = np.zeros(n, bool)
    zone = L["zone"][pick]
    r = rng.uniform(size=n)
    has_appr[(zone == "agri") | (r < 0.75)] = True
    has_appr[np.isin(roles, ["R12a", "R12b"])] = False
    has_appr[np.isin(roles, ["R12neg"])] = True
    ids = np.full(n, None, dtype=object)
    rows, geoms = [], []
    # batches: parcels with approvals grouped by contract year, then west→east, 1–4 per batch
    cyear = np.array([c.year for c in P["contract_date"]])
    cx = shapely.get_x(shapely.centroid(pgeom))
    seq: dict[int, int] = {}
    for yr in sorted(set(cyear[has_appr].tolist())):
        members = np.flatnonzero(has_appr & (cyear == yr))
        members = members[np.argsort(cx[members])]
        k = 0
        while k < members.size:
            size = int(rng.integers(1, 5))
            batch = members[k:k + size]
            k += size
            ay = min(P.at[b, "contract_date"] for b in batch) - timedelta(days=int(rng.uniform(60, 400)))
            seq[ay.year] = seq.get(ay.year, 0) + 1
            aid = f"PZ{ay.year}-{seq[ay.year]:03d}"
            for b in batch:
                ids[b] = aid
            rows.append(dict(approval_id=aid, approved_on=ay, name=f"龙岗区{ay.year}年度第{seq[ay.year]}批次城镇建设用地",
                             batch_type="农用地转用" if (zone[batch] == "agri").any() else "城镇建设用地"))
            geoms.append(shapely.union_all(pgeom[batch]))
    # R13: approved, never supplied (lots without parcels or buildings), and one half-supplied batch
    area = shapely.area(L["geom"])
    free = np.flatnonzero(~is_parcel & ~L["hill"] & np.isin(L["zone"], ["agri", "industrial", "residential"])
                          & (area > 6000) & (area < 60000))
    free = free[rng.permutation(free.size)]
    free = free[np.argsort(L["zone"][free] != "agri", kind="stable")]
    tree = shapely.STRtree(L["geom"])
    r13 = []
    for k, lot in enumerate(free[:2]):
        ay = date(2019 + k, 3 + 4 * k, 18)
        seq[ay.year] = seq.get(ay.year, 0) + 1
        aid = f"PZ{ay.year}-{seq[ay.year]:03d}"
        rows.append(dict(approval_id=aid, approved_on=ay, name=f"龙岗区{ay.year}年度第{seq[ay.year]}批次城镇建设用地",
                         batch_type="农用地转用"))
        geoms.append(L["geom"][lot])
        r13.append(aid)
    # a batch whose second half was never granted: an old completed parcel plus the lot next to it
    cand = [i for i in range(n) if has_appr[i] and roles[i] == "" and P.at[i, "actual_completion"] is not None]
    for i in cand[:50]:
        nb = tree.query(shapely.buffer(pgeom[i], 25.0), predicate="intersects")
        nb = [j for j in nb if not is_parcel[j] and not L["hill"][j] and 3000 < area[j] < 60000
              and j not in set(free[:2].tolist())]
        if not nb:
            continue
        j = nb[0]
        aid = ids[i]
        # give this parcel its own batch so the others stay fully supplied
        ay = P.at[i, "contract_date"] - timedelta(days=200)
        seq[ay.year] = seq.get(ay.year, 0) + 1
        new_id = f"PZ{ay.year}-{seq[ay.year]:03d}"
        # remove from its old batch geometry
        old = [t for t, row in enumerate(rows) if row["approval_id"] == aid]
        if old:
            mem = [b for b in range(n) if ids[b] == aid and b != i]
            if mem:
                geoms[old[0]] = shapely.union_all(pgeom[mem])
            else:
                rows.pop(old[0])
                geoms.pop(old[0])
        ids[i] = new_id
        rows.append(dict(approval_id=new_id, approved_on=ay, name=f"龙岗区{ay.year}年度第{seq[ay.year]}批次城镇建设用地",
                         batch_type="城镇建设用地"))
        geoms.append(shapely.union_all([pgeom[i], L["geom"][j]]))
        r13.append(new_id)
        break
    planted["R13"] = r13
    P["approval_ids"] = ids
    A = pd.DataFrame(rows)
    order = np.argsort(A["approval_id"].to_numpy(), kind="stable")
    A = A.iloc[order].reset_index(drop=True)
    ageom = np.array(geoms, dtype=object)[order]
    A["area_m2"] = np.round(shapely.area(ageom), 1)
    return A, ageom


def _predev_classes(world, pick, use, P, roles, rng):
    """What each parcel's land was before development (its 三调 code until it started)."""
    zone = world.lots["zone"][pick]
    out = np.empty(pick.size, dtype=object)
    r = rng.uniform(size=pick.size)
    out[:] = np.where(r < 0.4, "1206", np.where(r < 0.7, "0404", "1201"))
    out[zone == "agri"] = np.where(r[zone == "agri"] < 0.6, "0101", "0103")
    out[np.asarray(roles) == "R12b"] = "0301"
    out[np.asarray(roles) == "R12a"] = "0101"
    return out
