"""Place names (points: roads, river, reservoir, mountains, landmarks, schools, parks, estates,
stations …) and door-number addresses following the standard hierarchy
(district – street – community – road – door number – building)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from data import _names
from data._config import DISTRICT
from data._development import Development
from data._world import World, _rng

ROAD_CLASS_ZH = {"expressway": "高速公路", "arterial": "主干路", "secondary": "次干路", "local": "支路",
                 "rural": "乡村道路"}
STATIONS = ["大运站", "爱联站", "吉祥站", "龙城广场站", "南联站", "双龙站", "横岗站", "塘坑站", "六约站", "丹竹头站",
            "木棉湾站", "布吉站", "荷坳站", "永湖站", "龙东站", "宝龙站", "坪地站", "高桥站"]


def roads_frame(world: World):
    R = world.roads
    df = pd.DataFrame({
        "road_id": R["road_id"], "name": R["name"],
        "road_class": [ROAD_CLASS_ZH[c] for c in R["cls"]], "width_m": R["width"].astype(float),
    })
    return df, R["geom"]


def _admin_of(world: World, pts: np.ndarray):
    """(street name, community name, community index) for each point."""
    tree = shapely.STRtree(world.community_geoms)
    gi, ci = tree.query(pts, predicate="intersects")
    comm = np.full(pts.size, -1)
    comm[gi] = ci
    miss = np.flatnonzero(comm < 0)
    if miss.size:
        pairs = tree.query_nearest(pts[miss], all_matches=False)
        comm[miss[pairs[0]]] = pairs[1]
    cname = np.array(world.community_names, dtype=object)[comm]
    sidx = {c: i for i, c in enumerate(world.street_codes)}
    sname = np.array([world.street_names[sidx[world.community_street[c]]] for c in comm], dtype=object)
    return sname, cname, comm


def place_names(world: World, dev: Development):
    rng = _rng(world.seed, 40)
    pool = _names.NamePool(_rng(world.seed, 41))
    names, kinds, pts = [], [], []

    def add(name, kind, pt):
        names.append(name)
        kinds.append(kind)
        pts.append(pt)

    R = world.roads
    box = world.box
    # roads: one point per road name, on its longest piece
    best: dict[str, tuple[float, object]] = {}
    for nm, g in zip(R["name"], R["geom"]):
        ln = g.length
        if nm not in best or ln > best[nm][0]:
            best[nm] = (ln, g)
    for nm, (_, g) in best.items():
        add(nm, "road", shapely.line_interpolate_point(g, 0.5, normalized=True))
    w = world.water
    river_in = shapely.intersection(w.river_line, box)
    add(_names.RIVER_NAME, "river", shapely.line_interpolate_point(river_in, 0.5, normalized=True))
    for nm, line, _, _ in w.streams:
        s = shapely.intersection(line, box)
        if not s.is_empty:
            add(nm, "river", shapely.line_interpolate_point(s, 0.5, normalized=True))
    add(w.reservoir_name, "reservoir", shapely.point_on_surface(w.reservoir))
    for k, (x, y, _) in enumerate(world.peaks):
        add(_names.MOUNTAIN_NAMES[k % len(_names.MOUNTAIN_NAMES)], "mountain", shapely.Point(x, y))
    # metro stations along the first arterial (the main road along the valley)
    main = [g for nm, g, c in zip(R["name"], R["geom"], R["cls"]) if nm == _names.ARTERIALS_EW[0]]
    if main:
        g = max(main, key=lambda q: q.length)
        n_st = max(2, int(g.length // 1300))
        for k in range(n_st):
            add(STATIONS[k % len(STATIONS)], "station",
                shapely.line_interpolate_point(g, (k + 0.5) / n_st, normalized=True))
    # things on lots
    L = world.lots
    P = dev.parcels
    lot_parcel = np.full(L["geom"].size, -1)
    lot_parcel[dev.parcel_lot] = np.arange(len(P))
    area = shapely.area(L["geom"])
    rp = shapely.point_on_surface(L["geom"])
    zone = L["zone"]
    order = rng.permutation(L["geom"].size)
    landmarks = list(_names.LANDMARKS)
    lm_i = 0
    for i in order:
        z = zone[i]
        p = lot_parcel[i]
        use = P.at[p, "land_use_code"] if p >= 0 else None
        built = p < 0 or P.at[p, "actual_completion"] is not None
        if not built and p >= 0:
            continue
        if z == "public" and area[i] > 8000 and lm_i < len(landmarks) and rng.uniform() < 0.5:
            add(landmarks[lm_i], "landmark", rp[i])
            lm_i += 1
        elif z == "public" or use == "0803":
            add(pool.stem() + _names.SCHOOL_SUFFIX[int(rng.integers(len(_names.SCHOOL_SUFFIX)))], "school", rp[i])
        elif use == "0805":
            add(pool.stem() + _names.HOSPITAL_SUFFIX[int(rng.integers(len(_names.HOSPITAL_SUFFIX)))], "hospital", rp[i])
        elif z == "park" and area[i] > 3000:
            add(pool.stem() + _names.PARK_SUFFIX[int(rng.integers(len(_names.PARK_SUFFIX)))], "park", rp[i])
        elif use == "0701" or (z == "residential" and rng.uniform() < 0.6):
            add(pool.stem() + _names.COMPOUND_SUFFIX[int(rng.integers(len(_names.COMPOUND_SUFFIX)))], "residential", rp[i])
        elif use == "0505" or z == "commercial":
            add(pool.stem() + _names.COMMERCIAL_SUFFIX[int(rng.integers(len(_names.COMMERCIAL_SUFFIX)))], "poi", rp[i])
        elif (use in ("0601", "0604") or z == "industrial") and rng.uniform() < 0.5:
            add(pool.stem() + _names.INDUSTRIAL_SUFFIX[int(rng.integers(len(_names.INDUSTRIAL_SUFFIX)))], "industrial_park", rp[i])
        elif z == "village" and rng.uniform() < 0.3:
            add(pool.stem() + ("新村" if rng.uniform() < 0.5 else "村"), "village", rp[i])
    # community service centres
    for c, g in zip(world.community_names, world.community_geoms):
        add(c.replace("社区", "") + "社区党群服务中心", "community_centre", shapely.point_on_surface(g))
    pts = np.array(pts, dtype=object)
    sname, cname, _ = _admin_of(world, pts)
    df = pd.DataFrame({"pn_id": [f"PN{i + 1:06d}" for i in range(len(names))], "name": names, "kind": kinds,
                       "street": sname, "community": cname})
    return df, shapely.set_precision(pts, 0.01)


def addresses(world: World, dev: Development):
    """One address per building: the lot's door number on its nearest named road, the
    building number within the lot (1栋, 2栋 … nearest the road first)."""
    R = world.roads
    named = np.flatnonzero(np.isin(R["cls"], ["arterial", "secondary", "local"]))
    rgeom = R["geom"][named]
    rname = R["name"][named]
    tree = shapely.STRtree(rgeom)
    blot = dev.building_lot
    bgeom = dev.building_geom
    lots = np.unique(blot)
    lg = world.lots["geom"][lots]
    lc = shapely.point_on_surface(lg)
    li, ri = tree.query_nearest(lc, all_matches=False)
    road_of_lot = np.full(lots.size, -1)
    road_of_lot[li] = ri
    line = rgeom[road_of_lot]
    along = shapely.line_locate_point(line, lc)
    p0 = shapely.line_interpolate_point(line, along)
    p1 = shapely.line_interpolate_point(line, along + 1.0)
    dx, dy = shapely.get_x(p1) - shapely.get_x(p0), shapely.get_y(p1) - shapely.get_y(p0)
    cx, cy = shapely.get_x(lc) - shapely.get_x(p0), shapely.get_y(lc) - shapely.get_y(p0)
    left = (dx * cy - dy * cx) > 0
    # numbers grow along the road, odd on the left, even on the right (10 m per number pair)
    num = 2 * np.floor(along / 10.0).astype(int) + np.where(left, 1, 2)
    taken: dict[tuple[int, int], bool] = {}
    for k in np.argsort(along, kind="stable"):
        key = (road_of_lot[k], num[k])
        while key in taken:
            num[k] += 2
            key = (road_of_lot[k], num[k])
        taken[key] = True
    lot_pos = np.searchsorted(lots, blot)
    bc = shapely.point_on_surface(bgeom)
    dist = shapely.distance(bc, line[lot_pos])
    order = np.lexsort((np.round(dist, 1), lot_pos))
    rank = np.empty(order.size, int)
    start = np.searchsorted(lot_pos[order], np.arange(lots.size))
    rank[order] = np.arange(order.size) - start[lot_pos[order]]
    sname, cname, comm = _admin_of(world, bc)
    road = rname[road_of_lot[lot_pos]]
    door = np.array([f"{r}{n}号" for r, n in zip(road, num[lot_pos])], dtype=object)
    bld = np.array([f"{k + 1}栋" for k in rank], dtype=object)
    full = [f"{DISTRICT}{s}{c}{d}{b}" for s, c, d, b in zip(sname, cname, door, bld)]
    ccode = np.array(world.community_codes, dtype=object)[comm]
    # addr_id: community code + sequence within the community (GB/T 39609-like)
    seq = np.zeros(bgeom.size, int)
    o = np.lexsort((np.arange(bgeom.size), comm))
    cs = comm[o]
    st = np.searchsorted(cs, cs)
    seq[o] = np.arange(o.size) - st + 1
    df = pd.DataFrame({
        "addr_id": [f"{c}{s:06d}" for c, s in zip(ccode, seq)],
        "street": sname, "community": cname, "road": road, "door_number": door, "building": bld,
        "full_address": full, "building_id": dev.buildings["building_id"].to_numpy(),
    })
    return df, shapely.set_precision(bc, 0.01)
