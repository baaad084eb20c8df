"""Land use (三调 DLTB-like) in two survey years, and the protection layers derived from it:
farmland, permanent basic farmland, forest land and the ecological protection red line.

Tessellation: each lot is cut into Voronoi cells of jittered seeds (one vectorised Voronoi
call per lot, denser in town, coarse on the hills); roads and water are cut into pieces by the
Voronoi cells of seeds along their centre lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import shapely

from data import _names
from data._buildings import frames
from data._config import DISTRICT_CODE, SURVEY_DATES
from data._development import USE_TO_LU, Development
from data._world import ROAD_LU, World, _rng

DLMC = {
    "0101": "水田", "0102": "水浇地", "0103": "旱地", "0201": "果园", "0204": "其他园地",
    "0301": "乔木林地", "0302": "竹林地", "0305": "灌木林地", "0307": "其他林地", "0404": "其他草地",
    "05H1": "商业服务业设施用地", "0508": "物流仓储用地", "0601": "工业用地", "0602": "采矿用地",
    "0604": "仓储用地", "0701": "城镇住宅用地", "0702": "农村宅基地", "08H1": "机关团体新闻出版用地",
    "08H2": "科教文卫用地", "0809": "公用设施用地", "0810": "公园与绿地", "0810A": "广场用地",
    "1003": "公路用地", "1004": "城镇村道路用地", "1006": "农村道路", "1101": "河流水面",
    "1103": "水库水面", "1104": "坑塘水面", "1107": "沟渠", "1201": "空闲地", "1202": "设施农用地",
    "1206": "裸土地",
}

# class mix per zone: (code, weight)
ZONE_MIX = {
    "agri": [("0101", 0.34), ("0102", 0.16), ("0103", 0.22), ("1104", 0.08), ("1202", 0.05), ("0702", 0.06),
             ("0404", 0.04), ("0201", 0.03), ("1107", 0.02)],
    "village": [("0702", 0.84), ("05H1", 0.05), ("1201", 0.03), ("0810", 0.02), ("08H2", 0.02), ("0601", 0.04)],
    "residential": [("0701", 0.86), ("05H1", 0.05), ("0810", 0.05), ("08H2", 0.03), ("0809", 0.01)],
    "commercial": [("05H1", 0.82), ("0701", 0.08), ("0810", 0.05), ("0810A", 0.05)],
    "industrial": [("0601", 0.8), ("0604", 0.12), ("1201", 0.04), ("05H1", 0.02), ("0809", 0.02)],
    "public": [("08H2", 0.55), ("08H1", 0.25), ("0809", 0.12), ("0810", 0.08)],
    "park": [("0810", 0.82), ("0301", 0.12), ("1104", 0.06)],
}
CELL_AREA = {"forest": 14000.0, "agri": 2600.0, "village": 1500.0, "residential": 2800.0, "commercial": 3200.0,
             "industrial": 4200.0, "public": 3500.0, "park": 5000.0}
# changes between the two surveys outside project parcels: from → [(to, weight)]
DRIFT = {
    "0101": [("0404", 0.3), ("1202", 0.2), ("0103", 0.2), ("1201", 0.3)],
    "0102": [("0103", 0.4), ("1201", 0.3), ("1202", 0.3)],
    "0103": [("0102", 0.3), ("0404", 0.3), ("1201", 0.4)],
    "0702": [("0701", 0.5), ("05H1", 0.3), ("1201", 0.2)],
    "0404": [("0301", 0.5), ("1201", 0.5)],
    "0201": [("0301", 0.5), ("0404", 0.5)],
    "1201": [("0810", 0.5), ("0404", 0.5)],
}
DRIFT_P = {"agri": 0.05, "village": 0.02, "forest": 0.01, "park": 0.02}


@dataclass
class LandUse:
    geom: np.ndarray  # 2023 pieces
    lot: np.ndarray  # lot index or -1 (roads / water)
    c2020: np.ndarray
    c2023: np.ndarray
    change_date: np.ndarray  # date the class changed (or None)
    bsm: np.ndarray
    frame2020: pd.DataFrame = None
    geom2020: np.ndarray = None
    frame2023: pd.DataFrame = None
    geom2023: np.ndarray = None
    counts: dict = field(default_factory=dict)
    comm_of_piece: np.ndarray = None


def quadsplit(geom, max_vertices: int = 1500) -> np.ndarray:
    """Cut a huge polygon into rectangular tiles of at most ``max_vertices`` vertices."""
    out = []
    stack = [(geom, geom.bounds)]
    while stack:
        g, (x0, y0, x1, y1) = stack.pop()
        if g.is_empty:
            continue
        if shapely.get_num_coordinates(g) <= max_vertices or (x1 - x0) < 50:
            out.append(g)
            continue
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        for bx in ((x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)):
            stack.append((shapely.clip_by_rect(g, *bx), bx))
    arr = shapely.make_valid(np.array(out, dtype=object))
    parts = shapely.get_parts(arr)
    return parts[shapely.get_type_id(parts) == 3]


def _seeds_in(geoms: np.ndarray, counts: np.ndarray, rng: np.random.Generator, inset: float = 2.0):
    """``counts[i]`` random points inside each polygon (rejection sampling, vectorised)."""
    b = shapely.bounds(geoms)
    area = np.maximum(shapely.area(geoms), 1e-6)
    barea = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    want = np.ceil(counts * np.clip(barea / area, 1, 12) * 1.6 + 4).astype(int)
    gi = np.repeat(np.arange(geoms.size), want)
    x = b[gi, 0] + rng.uniform(size=gi.size) * (b[gi, 2] - b[gi, 0])
    y = b[gi, 1] + rng.uniform(size=gi.size) * (b[gi, 3] - b[gi, 1])
    shrunk = shapely.buffer(geoms, -inset)
    shrunk = np.where(shapely.is_empty(shrunk), geoms, shrunk)
    shapely.prepare(shrunk)
    inside = shapely.contains_xy(shrunk[gi], x, y)
    gi, x, y = gi[inside], x[inside], y[inside]
    # first counts[i] per polygon
    start = np.searchsorted(gi, np.arange(geoms.size))
    rank = np.arange(gi.size) - start[gi]
    keep = rank < counts[gi]
    gi, x, y = gi[keep], x[keep], y[keep]
    return _seed_empty(geoms, gi, x, y)


def _seed_empty(geoms: np.ndarray, gi: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Give every polygon without a seed one (a point on its surface); seeds sorted by polygon."""
    have = np.bincount(gi, minlength=geoms.size)
    missing = np.flatnonzero(have == 0)
    if missing.size:
        p = shapely.point_on_surface(geoms[missing])
        gi = np.concatenate([gi, missing])
        x = np.concatenate([x, shapely.get_x(p)])
        y = np.concatenate([y, shapely.get_y(p)])
    o = np.argsort(gi, kind="stable")
    return gi[o], x[o], y[o]


def _grid_seeds(geoms: np.ndarray, counts: np.ndarray, aspect: np.ndarray, rng: np.random.Generator,
                jitter: float = 0.18):
    """Seeds on a jittered grid in each polygon's own orientation (Voronoi cells of such
    seeds are field- and plot-like quadrilaterals). About ``counts[i]`` per polygon."""
    o, u1, u2, L1, L2, ok = frames(geoms)
    area = np.maximum(shapely.area(geoms), 1.0)
    env_area = np.maximum(L1 * L2, area)
    cell = env_area / np.maximum(counts * env_area / area, 1)
    d2 = np.sqrt(cell / aspect)
    d1 = d2 * aspect
    n1 = np.clip(np.ceil(L1 / d1), 1, 200).astype(int)
    n2 = np.clip(np.ceil(L2 / d2), 1, 200).astype(int)
    n1 = np.where(ok, n1, 1)
    n2 = np.where(ok, n2, 1)
    tot = n1 * n2
    gi = np.repeat(np.arange(geoms.size), tot)
    st = np.repeat(np.cumsum(tot) - tot, tot)
    k = np.arange(gi.size) - st
    i = k % n1[gi]
    j = k // n1[gi]
    a = (i + 0.5 + rng.uniform(-jitter, jitter, gi.size)) * L1[gi] / n1[gi]
    b = (j + 0.5 + rng.uniform(-jitter, jitter, gi.size)) * L2[gi] / n2[gi]
    x = o[gi, 0] + a * u1[gi, 0] + b * u2[gi, 0]
    y = o[gi, 1] + a * u1[gi, 1] + b * u2[gi, 1]
    shapely.prepare(geoms)
    inside = shapely.contains_xy(geoms[gi], x, y)
    gi, x, y = gi[inside], x[inside], y[inside]
    return _seed_empty(geoms, gi, x, y)


def _voronoi_cut(geoms: np.ndarray, gi: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Cut each polygon by the Voronoi diagram of its own seeds; returns (pieces, polygon idx)."""
    mp = shapely.multipoints(np.column_stack([x, y]), indices=gi)
    vor = shapely.voronoi_polygons(mp, extend_to=geoms)
    cells, idx = shapely.get_parts(vor, return_index=True)
    pieces = shapely.intersection(cells, geoms[idx])
    parts, j = shapely.get_parts(pieces, return_index=True)
    idx = idx[j]
    ok = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0.5)
    return parts[ok], idx[ok]


def _cut_by_line_seeds(poly_tiles: np.ndarray, lines: np.ndarray, spacing: np.ndarray, bbox, rng):
    """Cut strip polygons (roads, rivers) into pieces with Voronoi cells of seeds placed along
    their centre lines every ``spacing`` metres. Returns (pieces, nearest line index)."""
    lens = shapely.length(lines)
    nseg = np.maximum(1, np.round(lens / spacing)).astype(int)
    li = np.repeat(np.arange(lines.size), nseg)
    start = np.repeat(np.cumsum(nseg) - nseg, nseg)
    k = np.arange(li.size) - start
    frac = (k + 0.5 + rng.uniform(-0.2, 0.2, li.size)) / nseg[li]
    pts = shapely.line_interpolate_point(lines[li], frac, normalized=True)
    pts = shapely.set_precision(pts, 0.5)
    xy, uniq = np.unique(shapely.get_coordinates(pts), axis=0, return_index=True)
    li = li[uniq]
    vor = shapely.voronoi_polygons(shapely.multipoints(xy), extend_to=shapely.box(*bbox), ordered=True)
    cells = shapely.get_parts(vor)
    tree = shapely.STRtree(cells)
    ti, ci = tree.query(poly_tiles, predicate="intersects")
    pieces = shapely.intersection(poly_tiles[ti], cells[ci])
    parts, j = shapely.get_parts(pieces, return_index=True)
    ok = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0.5)
    return parts[ok], li[ci[j[ok]]]


def _pick(rng, mix, n):
    codes = np.array([c for c, _ in mix], dtype=object)
    w = np.array([p for _, p in mix])
    return codes[rng.choice(len(codes), size=n, p=w / w.sum())]


def make_landuse(world: World, dev: Development) -> LandUse:
    rng = _rng(world.seed, 30)
    L = world.lots
    lots = L["geom"]
    zone = L["zone"]
    nl = lots.size
    lot_parcel = np.full(nl, -1)
    lot_parcel[dev.parcel_lot] = np.arange(dev.parcel_lot.size)
    scale = world.spec.cell_scale
    area = shapely.area(lots)
    tgt = np.array([CELL_AREA[z] for z in zone]) * scale
    tgt = np.where(lot_parcel >= 0, np.maximum(area / rng.integers(1, 4, nl), 400), tgt)
    counts = np.maximum(1, np.round(area / tgt * rng.uniform(0.8, 1.2, nl))).astype(int)
    counts = np.minimum(counts, 400)
    forest = zone == "forest"
    gi_f, x_f, y_f = _seeds_in(lots[forest], counts[forest], rng)
    aspect = np.where(zone[~forest] == "agri", 2.2, 1.3)
    gi_g, x_g, y_g = _grid_seeds(lots[~forest], counts[~forest], aspect, rng)
    fi, gi_ = np.flatnonzero(forest), np.flatnonzero(~forest)
    gi = np.concatenate([fi[gi_f], gi_[gi_g]])
    x = np.concatenate([x_f, x_g])
    y = np.concatenate([y_f, y_g])
    o_ = np.argsort(gi, kind="stable")
    gi, x, y = gi[o_], x[o_], y[o_]
    pieces, pidx = _voronoi_cut(lots, gi, x, y)

    # roads and water
    R = world.roads
    w = world.water
    road_tiles = quadsplit(world.road_poly)
    spacing = np.where(np.isin(R["cls"], ["expressway", "arterial"]), 160.0, 110.0)
    road_pieces, road_line = _cut_by_line_seeds(road_tiles, R["geom"], spacing, world.bounds, rng)
    road_cls = np.array([ROAD_LU[c] for c in R["cls"][road_line]], dtype=object)
    river = shapely.difference(w.river_poly, world.road_poly)
    river = shapely.intersection(river, world.box)
    river_tiles = quadsplit(river, 800)
    river_pieces, _ = _cut_by_line_seeds(river_tiles, np.array([w.river_line]), np.array([260.0]), world.bounds, rng)
    streams = shapely.difference(shapely.union_all([s[2] for s in w.streams]), shapely.union_all([world.road_poly, w.river_poly]))
    stream_tiles = quadsplit(shapely.intersection(streams, world.box), 800)
    stream_lines = np.array([s[1] for s in w.streams], dtype=object)
    stream_pieces, _ = _cut_by_line_seeds(stream_tiles, stream_lines, np.full(stream_lines.size, 240.0), world.bounds, rng)
    res = shapely.difference(w.reservoir, world.road_poly)
    res_parts = shapely.get_parts(res)
    res_parts = res_parts[shapely.get_type_id(res_parts) == 3]

    geom = np.concatenate([pieces, road_pieces, river_pieces, stream_pieces, res_parts])
    lot = np.concatenate([pidx, np.full(road_pieces.size + river_pieces.size + stream_pieces.size + res_parts.size, -1)])
    n = geom.size
    c2020 = np.empty(n, dtype=object)
    c2020[pieces.size:pieces.size + road_pieces.size] = road_cls
    o = pieces.size + road_pieces.size
    c2020[o:o + river_pieces.size] = "1101"
    o += river_pieces.size
    c2020[o:o + stream_pieces.size] = "1101"
    o += stream_pieces.size
    c2020[o:] = "1103"

    # lot pieces by zone
    pz = zone[pidx]
    cc = np.empty(pieces.size, dtype=object)
    for z, mix in ZONE_MIX.items():
        m = pz == z
        if m.any():
            cc[m] = _pick(rng, mix, int(m.sum()))
    # agriculture near the river is paddy, further away dry land
    rp = shapely.point_on_surface(pieces)
    px_, py_ = shapely.get_x(rp), shapely.get_y(rp)
    dr = np.abs(py_ - w.river_fn(px_))
    farm = np.isin(cc, ["0101", "0102", "0103"])
    near = dr < 500
    cc[farm & near & (rng.uniform(size=cc.size) < 0.6)] = "0101"
    cc[farm & ~near & (cc == "0101") & (rng.uniform(size=cc.size) < 0.5)] = "0103"
    # hills: forest by elevation; orchards and shrub on the lower slopes
    fm = pz == "forest"
    if fm.any():
        el = world.elev(px_[fm], py_[fm])
        r = rng.uniform(size=fm.sum())
        low = el < 90
        fc = np.where(r < 0.78, "0301", np.where(r < 0.93, "0305", "0307"))
        fc = np.where(low & (r < 0.3), "0201", fc)
        fc = np.where(low & (r >= 0.3) & (r < 0.38), "0404", fc)
        fc = np.where(~low & (r > 0.97), "0302", fc)
        cc[fm] = fc
    # parcels: their class depends on the survey year and the project's progress
    c2023 = c2020.copy()
    c2020[:pieces.size] = cc
    c2023[:pieces.size] = cc
    change_date = np.full(n, None, dtype=object)
    pp = lot_parcel[pidx]
    inp = pp >= 0
    P = dev.parcels
    starts = P["actual_start"].to_numpy()
    uses = P["land_use_code"].to_numpy()
    for k in np.flatnonzero(inp):
        p = pp[k]
        s = starts[p]
        built = USE_TO_LU[uses[p]]
        pre = dev.parcel_predev[p]
        c2020[k] = built if (s is not None and s <= SURVEY_DATES[0]) else pre
        c2023[k] = built if (s is not None and s <= SURVEY_DATES[1]) else pre
        if c2020[k] != c2023[k]:
            change_date[k] = s
    # drift outside parcels
    drift_p = np.array([DRIFT_P.get(z, 0.01) for z in pz])
    cand = ~inp & (rng.uniform(size=pieces.size) < drift_p) & np.isin(cc, list(DRIFT))
    for k in np.flatnonzero(cand):
        c2023[k] = _pick(rng, DRIFT[cc[k]], 1)[0]
        change_date[k] = SURVEY_DATES[0] + timedelta(days=int(rng.uniform(60, 1040)))
    order = np.arange(n)
    bsm = np.array([f"{DISTRICT_CODE}2020{i + 1:08d}" for i in order], dtype=object)
    lu = LandUse(geom=shapely.set_precision(geom, 0.01), lot=lot, c2020=c2020, c2023=c2023,
                 change_date=change_date, bsm=bsm)
    lu.geom = shapely.make_valid(lu.geom)
    _two_years(world, dev, lu, rng)
    return lu


def _two_years(world: World, dev: Development, lu: LandUse, rng) -> None:
    """The 2020 and 2023 survey tables: reclassified pieces keep their BSM; a few pieces are
    split and a few adjacent pairs merged in 2023 (their BSMs retire, new ones appear)."""
    n = lu.geom.size
    lot_parcel = np.full(world.lots["geom"].size, -1)
    lot_parcel[dev.parcel_lot] = np.arange(dev.parcel_lot.size)
    in_parcel = (lu.lot >= 0) & (lot_parcel[np.maximum(lu.lot, 0)] >= 0)
    area = shapely.area(lu.geom)
    stable = (lu.lot >= 0) & ~in_parcel & (lu.c2020 == lu.c2023)
    # splits: larger non-parcel pieces cut in two across their long axis
    n_split = max(5, int(0.004 * n))
    cand = np.flatnonzero(stable & (area > np.median(area)))
    split = np.sort(cand[rng.permutation(cand.size)[:n_split]])
    halves = {int(i): _halve(lu.geom[i]) for i in split}
    split = np.array([i for i in split if len(halves[int(i)]) == 2], dtype=np.int64)
    # merges: pairs of touching pieces of the same class in the same lot
    n_merge = max(4, int(0.003 * n))
    tree = shapely.STRtree(lu.geom)
    cand = np.flatnonzero(stable)
    cand = cand[~np.isin(cand, split)]
    cand = cand[rng.permutation(cand.size)]
    used = np.zeros(n, bool)
    used[split] = True
    merges = []
    for i in cand:
        if len(merges) >= n_merge:
            break
        if used[i]:
            continue
        nb = tree.query(lu.geom[i], predicate="intersects")
        nb = [j for j in nb if j != i and not used[j] and stable[j] and lu.lot[j] == lu.lot[i]
              and lu.c2020[j] == lu.c2020[i]]
        for j in nb:
            inter = shapely.intersection(lu.geom[i], lu.geom[j])
            if shapely.length(inter) > 5:
                merges.append((i, j))
                used[i] = used[j] = True
                break
    # per-piece attributes
    comm = _community_of(world, lu.geom)
    lu.comm_of_piece = comm
    ccode = np.array(world.community_codes, dtype=object)
    cname = np.array(world.community_names, dtype=object)
    zone = np.where(lu.lot >= 0, world.lots["zone"][np.maximum(lu.lot, 0)], "road")
    collective = np.isin(zone, ["agri", "village", "forest"])
    zldwdm = np.array([f"{c}0000000" for c in ccode[comm]], dtype=object)
    zldwmc = cname[comm]
    qsdwdm = np.where(collective, np.array([f"{c}0100000" for c in ccode[comm]], dtype=object),
                      f"{DISTRICT_CODE}0000000000000")
    qsxz = np.where(collective, "30", "10")

    def kcxs_of(codes):
        return np.where(np.isin(codes, ["0101", "0102", "0103"]), np.round(rng.uniform(0.02, 0.12, codes.size), 3), 0.0)

    base_kcxs = kcxs_of(lu.c2020)

    def frame(idx, codes, bsm, geoms):
        a = np.round(shapely.area(geoms), 2)
        return pd.DataFrame({
            "bsm": bsm, "dlbm": codes, "dlmc": [DLMC[c] for c in codes], "qsxz": qsxz[idx],
            "qsdwdm": qsdwdm[idx], "zldwdm": zldwdm[idx], "zldwmc": zldwmc[idx], "tbmj": a,
            "kcxs": base_kcxs[idx],
        })

    merged_away = np.zeros(n, bool)
    for i, j in merges:
        merged_away[i] = merged_away[j] = True
    base = np.flatnonzero(~used)  # pieces present in both years with their BSM
    # 2020: everything as pieces
    idx20 = np.arange(n)
    f20 = frame(idx20, lu.c2020, lu.bsm, lu.geom)
    # 2023: base pieces (class may have changed), split halves, merged pairs
    next_no = n + 1
    g23 = list(lu.geom[base])
    i23 = list(base)
    b23 = list(lu.bsm[base])
    c23 = list(lu.c2023[base])
    for i in split:
        for k, h in enumerate(halves[int(i)]):
            g23.append(h)
            i23.append(i)
            b23.append(f"{DISTRICT_CODE}2023{next_no:08d}")
            next_no += 1
            # one half keeps the class, the other was often put to a new use
            cls = lu.c2023[i]
            if k == 1 and cls in DRIFT and rng.uniform() < 0.6:
                cls = _pick(rng, DRIFT[cls], 1)[0]
            c23.append(cls)
    for i, j in merges:
        g23.append(shapely.union(lu.geom[i], lu.geom[j]))
        i23.append(i)
        b23.append(f"{DISTRICT_CODE}2023{next_no:08d}")
        next_no += 1
        c23.append(lu.c2023[i])
    g23 = shapely.make_valid(shapely.set_precision(np.array(g23, dtype=object), 0.01))
    i23 = np.array(i23)
    c23 = np.array(c23, dtype=object)
    f23 = frame(i23, c23, np.array(b23, dtype=object), g23)
    f23["kcxs"] = np.where(c23 == lu.c2020[i23], base_kcxs[i23], kcxs_of(c23))
    # as 2020 rows keep their BSM order, sort 2023 by BSM too
    o = np.argsort(f23["bsm"].to_numpy(), kind="stable")
    f23 = f23.iloc[o].reset_index(drop=True)
    g23 = g23[o]
    changed = int((lu.c2023[base] != lu.c2020[base]).sum())
    lu.frame2020, lu.geom2020 = f20, lu.geom
    lu.frame2023, lu.geom2023 = f23, g23
    lu.counts = {
        "from_valid": SURVEY_DATES[0].isoformat(), "to_valid": SURVEY_DATES[1].isoformat(),
        "features_2020": int(len(f20)), "features_2023": int(len(f23)),
        "unchanged": int(base.size - changed), "changed": changed,
        "removed": int(split.size + 2 * len(merges)),
        "added": int(len(f23) - base.size),
        "split": int(split.size), "merged_pairs": len(merges),
    }
    # pieces of the 2023 geometry for rendering: which source piece, and its two classes
    lu.src23 = i23[o]
    lu.c23_final = f23["dlbm"].to_numpy()


def _halve(g):
    env = shapely.oriented_envelope(g)
    co = np.asarray(shapely.get_coordinates(shapely.get_exterior_ring(env)))[:4]
    e1, e2 = co[1] - co[0], co[3] - co[0]
    if np.hypot(*e1) < np.hypot(*e2):
        e1, e2 = e2, e1
        half = np.array([co[0], co[0] + e1 / 2, co[0] + e1 / 2 + e2, co[0] + e2])
    else:
        half = np.array([co[0], co[0] + e1 / 2, co[0] + e1 / 2 + e2, co[0] + e2])
    cut = shapely.Polygon(shapely.buffer(shapely.Polygon(half), 0.0).exterior)
    a = shapely.intersection(g, cut)
    b = shapely.difference(g, cut)
    out = []
    for h in (a, b):
        parts = [p for p in shapely.get_parts(h) if p.geom_type == "Polygon" and p.area > 1]
        if parts:
            out.append(shapely.union_all(parts) if len(parts) > 1 else parts[0])
    if len(out) != 2 or any(o.geom_type != "Polygon" for o in out):
        return [g]
    return out


def _community_of(world: World, geoms: np.ndarray) -> np.ndarray:
    pts = shapely.point_on_surface(geoms)
    tree = shapely.STRtree(world.community_geoms)
    gi, ci = tree.query(pts, predicate="within")
    out = np.full(geoms.size, -1)
    out[gi] = ci
    miss = np.flatnonzero(out < 0)
    if miss.size:
        pairs = tree.query_nearest(pts[miss], all_matches=False)
        out[miss[pairs[0]]] = pairs[1]
    return out


# -- protection layers ----------------------------------------------------------------------------

def protection_layers(world: World, dev: Development, lu: LandUse) -> dict:
    rng = _rng(world.seed, 31)
    f23, g23 = lu.frame2023, lu.geom2023
    dl = f23["dlbm"].to_numpy()
    bsm = f23["bsm"].to_numpy()
    src = lu.src23
    area = shapely.area(g23)
    out = {}
    # farmland
    fm = np.isin(dl, ["0101", "0102", "0103"])
    el = world.elev(*_xy(g23[fm]))
    out["farmland"] = (pd.DataFrame({
        "farmland_id": [f"GD{b}" for b in bsm[fm]], "bsm": bsm[fm], "dlbm": dl[fm],
        "dlmc": [DLMC[c] for c in dl[fm]], "area_m2": np.round(area[fm], 2),
        "zldb": np.clip(np.round(6 + rng.normal(0, 1.2, fm.sum())), 3, 12).astype(np.int64),
        "pdjb": np.where(el < 40, "1", np.where(el < 60, "2", "3")),
    }), g23[fm])
    # forest land
    fo = np.array([c.startswith("03") for c in dl])
    species = np.array(["马尾松", "桉树", "台湾相思", "阔叶混交林", "荔枝", "杉木"], dtype=object)
    out["forest"] = (pd.DataFrame({
        "forest_id": [f"LD{b}" for b in bsm[fo]], "bsm": bsm[fo], "dlbm": dl[fo], "dlmc": [DLMC[c] for c in dl[fo]],
        "lz": np.where(rng.uniform(size=fo.sum()) < 0.7, "公益林", "商品林"),
        "yssz": species[rng.choice(species.size, fo.sum(), p=[0.25, 0.2, 0.15, 0.3, 0.05, 0.05])],
        "ybd": np.round(rng.uniform(0.45, 0.9, fo.sum()), 2), "area_m2": np.round(area[fo], 2),
    }), g23[fo])
    # permanent basic farmland: whole farm lots (not supplied for building), plus the planted R12a
    L = world.lots
    lot23 = lu.lot[src]
    parcel_lots = set(dev.parcel_lot.tolist())
    r12a_lot = dev.special_lots.get("R12a")
    agri_lots = np.unique(lot23[fm & (lot23 >= 0)])
    rp = shapely.point_on_surface(L["geom"][agri_lots]) if agri_lots.size else np.array([])
    u = world.urban_fn(shapely.get_x(rp), shapely.get_y(rp)) if agri_lots.size else np.array([])
    sel = [int(l) for l, uu in zip(agri_lots, u) if (l not in parcel_lots and (uu < 0.3 or rng.uniform() < 0.5))]
    if r12a_lot is not None and r12a_lot not in sel:
        sel.append(int(r12a_lot))
    sel = sorted(sel)
    jg, jrows = [], []
    k = 0
    for l in sel:
        m = fm & (lot23 == l)
        if not m.any():
            continue
        g = shapely.union_all(g23[m])
        for part in shapely.get_parts(g):
            if part.geom_type != "Polygon" or part.area < 50:
                continue
            k += 1
            c = int(lu.comm_of_piece[src[np.flatnonzero(m)[0]]])
            jrows.append({"jbnt_id": f"JBNT{k:06d}", "bhkbh": f"{world.community_codes[c]}-{k:04d}",
                          "street": world.street_names[world.street_codes.index(world.community_street[c])],
                          "area_m2": round(part.area, 2),
                          "zldb": int(np.clip(round(6 + rng.normal(0, 1)), 3, 12)),
                          "designated_on": date(2017, 6, 30)})
            jg.append(part)
    out["basic_farmland"] = (pd.DataFrame(jrows), shapely.set_precision(np.array(jg, dtype=object), 0.01))
    # ecological protection red line: the forested hills (set back from their edge) and the
    # reservoir with its catchment buffer; never over supplied parcels, except the planted R12b
    hills = L["geom"][L["hill"]]
    r12b_lot = dev.special_lots.get("R12b")
    core = shapely.union_all(shapely.buffer(hills, 2.0))
    core = shapely.buffer(shapely.buffer(core, -45.0), 15.0)
    res = shapely.buffer(world.water.reservoir, 250.0)
    red = shapely.union(core, shapely.intersection(res, shapely.union(core, world.water.reservoir)))
    red = shapely.union(red, world.water.reservoir)
    keep_out = [dev.parcel_geom[i] for i, l in enumerate(dev.parcel_lot) if l != r12b_lot]
    if keep_out:
        red = shapely.difference(red, shapely.buffer(shapely.union_all(keep_out), 1.0))
    if r12b_lot is not None:
        # the red line takes in the forest piece the R12b project was granted on
        red = shapely.union(red, shapely.buffer(L["geom"][r12b_lot], -12.0))
    red = shapely.intersection(red, world.box)
    parts = [p for p in shapely.get_parts(shapely.make_valid(red)) if p.geom_type == "Polygon"
             and p.area > max(20000.0, 0.0005 * world.spec.width * world.spec.height)]
    parts.sort(key=lambda p: (-round(p.area), p.centroid.x))
    cats = ["水源涵养", "生物多样性维护", "水土保持"]
    mnames = [nm for nm in _mountain_names(world)]
    rows = []
    for k, p in enumerate(parts):
        near_res = p.intersects(world.water.reservoir)
        nm = (world.water.reservoir_name.replace("水库", "") + "水源保护区") if near_res else \
            (mnames[k % len(mnames)] if mnames else f"片区{k + 1}")
        rows.append({"redline_id": f"STHX{k + 1:04d}", "name": f"{nm}生态保护红线",
                     "category": cats[0] if near_res else cats[1 + (k % 2)],
                     "area_m2": round(p.area, 1), "approved_on": date(2022, 9, 30)})
    out["eco_redline"] = (pd.DataFrame(rows), shapely.set_precision(np.array(parts, dtype=object), 0.01))
    return out


def _mountain_names(world):
    return _names.MOUNTAIN_NAMES[:max(1, len(world.peaks))]


def _xy(geoms):
    p = shapely.point_on_surface(geoms)
    return shapely.get_x(p), shapely.get_y(p)
