"""The physical district: terrain (DEM), river, streams and reservoir, the road network,
streets and communities, and the blocks / lots the roads cut the land into.

Everything is built in EPSG:4547 metres with numpy arrays and shapely 2 vectorised calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely import box

from data import _names
from data._config import CENTRE, SizeSpec
from data._noise import fbm, sample_bilinear, value_noise


def _rng(seed: int, stage: int) -> np.random.Generator:
    """An independent generator per stage, so one stage's draws never shift another's."""
    return np.random.default_rng([seed, stage])


class SineField:
    """Smooth analytic noise, evaluable at any points: a sum of random plane waves."""

    def __init__(self, rng: np.random.Generator, n: int, wl_min: float, wl_max: float) -> None:
        ang = rng.uniform(0, math.pi, n)
        wl = np.exp(rng.uniform(math.log(wl_min), math.log(wl_max), n))
        self.kx = np.cos(ang) * 2 * math.pi / wl
        self.ky = np.sin(ang) * 2 * math.pi / wl
        self.ph = rng.uniform(0, 2 * math.pi, n)
        self.amp = (wl / wl_max) ** 0.5
        self.amp /= math.sqrt(float((self.amp**2).sum()) / 2)

    def __call__(self, x, y) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (self.amp * np.sin(x * self.kx + y * self.ky + self.ph)).sum(-1)


@dataclass
class Water:
    river_line: shapely.LineString
    river_poly: shapely.Polygon
    river_fn: object  # x -> centre y
    streams: list  # (name, line, polygon, width)
    reservoir_name: str
    reservoir: shapely.Polygon
    reservoir_level: float


@dataclass
class World:
    spec: SizeSpec
    seed: int
    bounds: tuple[float, float, float, float]
    dem: np.ndarray
    dem_transform: tuple[float, float, float, float]
    water: Water
    developable: object  # (Multi)Polygon of flat land
    urban_fn: object
    industry_fn: object
    street_codes: list = field(default_factory=list)
    street_names: list = field(default_factory=list)
    street_geoms: np.ndarray | None = None
    community_codes: list = field(default_factory=list)
    community_names: list = field(default_factory=list)
    community_street: list = field(default_factory=list)
    community_geoms: np.ndarray | None = None
    roads: dict | None = None  # columns: road_id, name, cls, width, geom
    road_poly: object = None
    lots: dict | None = None  # columns: geom, block, hill, zone, ...
    peaks: list = field(default_factory=list)  # (x, y, elev)

    def elev(self, x, y) -> np.ndarray:
        return sample_bilinear(self.dem, self.dem_transform, x, y)

    @property
    def box(self):
        return box(*self.bounds)


# -- terrain -----------------------------------------------------------------------------------

# Hills in normalised coordinates (u east, v north, both in [-1, 1]): (u, v, height m, su, sv).
_PEAKS = [
    (-0.78, -0.82, 560.0, 0.24, 0.20),   # 梧桐山-like, south-west
    (-0.38, -0.80, 360.0, 0.20, 0.16),
    (0.06, -0.88, 430.0, 0.22, 0.17),    # 园山
    (0.46, -0.80, 500.0, 0.22, 0.19),    # 马峦山-like, south-east
    (0.88, -0.62, 280.0, 0.15, 0.20),
    (-0.30, 0.86, 210.0, 0.16, 0.12),    # northern hills (平湖 / 吉华)
    (0.38, 0.90, 170.0, 0.13, 0.10),
    (0.98, 0.95, 150.0, 0.12, 0.12),
    (0.16, 0.50, 85.0, 0.055, 0.05),     # a knoll in town (a hill park)
]
_RESERVOIR_UV = (-0.16, -0.60)


def _river_fn(spec: SizeSpec, rng: np.random.Generator):
    cx, cy = CENTRE
    hw, hh = spec.width / 2, spec.height / 2
    p = rng.uniform(0, 2 * math.pi, 4)
    a1 = min(70.0, 0.05 * spec.height)

    def f(x):
        u = (np.asarray(x, dtype=np.float64) - cx) / hw
        return (cy + hh * (0.03 + 0.07 * np.sin(1.1 * u + p[0]) + 0.02 * np.sin(2.9 * u + p[1]))
                + a1 * np.sin(2 * math.pi * x / 1100.0 + p[2]) + 0.4 * a1 * np.sin(2 * math.pi * x / 430.0 + p[3]))

    wf = float(np.clip(spec.width / 12000.0, 1.0, 1.8))

    def width(x):
        u = (np.asarray(x, dtype=np.float64) - cx) / hw
        return (26.0 + 24.0 * (u + 1) / 2) * wf

    return f, width


def _ribbon(xs: np.ndarray, ys: np.ndarray, widths: np.ndarray) -> shapely.Polygon:
    """A polygon of varying width around a polyline (offset both sides along vertex normals)."""
    dx = np.gradient(xs)
    dy = np.gradient(ys)
    n = np.hypot(dx, dy)
    nx, ny = -dy / n, dx / n
    left = np.column_stack([xs + nx * widths / 2, ys + ny * widths / 2])
    right = np.column_stack([xs - nx * widths / 2, ys - ny * widths / 2])
    poly = shapely.Polygon(np.vstack([left, right[::-1]]))
    return shapely.make_valid(poly) if not poly.is_valid else poly


def make_world(spec: SizeSpec, seed: int) -> World:
    rng = _rng(seed, 1)
    cx, cy = CENTRE
    hw, hh = spec.width / 2, spec.height / 2
    bounds = (cx - hw, cy - hh, cx + hw, cy + hh)
    px = spec.dem_px
    nx, ny = int(round(spec.width / px)), int(round(spec.height / px))
    xs = bounds[0] + (np.arange(nx) + 0.5) * px
    ys = bounds[3] - (np.arange(ny) + 0.5) * px
    U = ((xs - cx) / hw)[None, :]
    V = ((ys - cy) / hh)[:, None]
    shape = (ny, nx)

    base = 38.0 - 14.0 * U + 5.0 * value_noise(shape, 1500 / px, rng)
    # domain warp so hills and the mountain front are not ellipses / straight lines
    wu = 0.18 * fbm(shape, [4000 / px, 2500 / px, 1000 / px, 400 / px], rng)
    wv = 0.20 * fbm(shape, [4000 / px, 2500 / px, 1000 / px, 400 / px], rng)
    Uw, Vw = U + wu, V + wv
    hills = np.zeros(shape, dtype=np.float64)
    for (pu, pv, ph, su, sv) in _PEAKS:
        jitter = rng.normal(0, 0.02, 2)
        hills += ph * np.exp(-(((Uw - pu - jitter[0]) / su) ** 2 + ((Vw - pv - jitter[1]) / sv) ** 2))
    # knolls scattered over the plain (hill parks in town), one per ~12 km²
    krng = _rng(seed, 9)
    n_knolls = int(spec.width * spec.height / 12e6)
    river_probe, _ = _river_fn(spec, _rng(seed, 2))
    placed = 0
    for _ in range(n_knolls * 6):
        if placed >= n_knolls:
            break
        ku, kv = krng.uniform(-0.95, 0.95), krng.uniform(-0.3, 0.9)
        kx, ky = cx + ku * hw, cy + kv * hh
        if abs(ky - float(river_probe(np.array([kx]))[0])) < 700:
            continue
        r = krng.uniform(250, 650)
        hills += krng.uniform(70, 160) * np.exp(-(((Uw - ku) * hw / r) ** 2 + ((Vw - kv) * hh / (r * krng.uniform(0.6, 1.0))) ** 2))
        placed += 1
    t = np.clip((-Vw - 0.32) / 0.45, 0, 1)
    ridge = 240.0 * t * t * (3 - 2 * t) * (0.65 + 0.35 * value_noise(shape, 3000 / px, rng))
    hills = hills + ridge
    hills = 620.0 * (1 - np.exp(-hills / 620.0))
    rough = fbm(shape, [2200 / px, 900 / px, 380 / px, 160 / px, 70 / px], rng, gain=0.55).astype(np.float64)
    ridged = 1 - np.abs(fbm(shape, [700 / px, 320 / px, 150 / px, 60 / px], rng, gain=0.6))
    k = np.clip(hills / 150.0, 0, 1)
    hills = np.maximum(hills * (1 + 0.4 * rough) + 170 * (ridged - 0.55) * k * (0.4 + 0.6 * np.clip(hills / 300, 0, 1)), 0)
    foot = np.clip(hills / 40.0, 0, 1) * (1 - np.clip((hills - 200) / 200.0, 0, 1))
    hills = np.maximum(hills + 55 * fbm(shape, [600 / px, 250 / px, 100 / px], rng) * foot, 0)
    elev = base + hills

    # River: flatten the valley towards the river level, then carve the channel.
    river_fn, river_w = _river_fn(spec, _rng(seed, 2))
    ry = river_fn(xs)[None, :]
    rw = river_w(xs)[None, :]
    d = np.abs(ys[:, None] - ry)
    river_lvl = 16.0 - 7.0 * U
    s = np.clip((d - rw / 2) / 450.0, 0, 1)
    s = s * s * (3 - 2 * s)
    elev = river_lvl + 2.0 + (elev - river_lvl - 2.0) * s
    elev = np.where(d < rw / 2, river_lvl - 2.5, elev)

    # Streams from the southern hills down to the river (x as a function of y).
    wrng = _rng(seed, 3)
    streams = []
    n_streams = 2 if spec.width < 6000 else (4 if spec.width < 15000 else 7)
    us = (np.arange(n_streams) + 0.5) / n_streams * 1.7 - 0.85 + wrng.uniform(-0.25, 0.25, n_streams) / n_streams
    for i, u0 in enumerate(us):
        x0 = cx + u0 * hw
        y_top = float(river_fn(np.array([x0]))[0])
        y_bot = cy - hh * wrng.uniform(0.55, 0.8)
        yy = np.linspace(y_bot, y_top + 5, 160)
        ph = wrng.uniform(0, 2 * math.pi, 2)
        amp = min(60.0, 0.03 * spec.width)
        xx = x0 + amp * np.sin(2 * math.pi * yy / 700 + ph[0]) + 0.5 * amp * np.sin(2 * math.pi * yy / 260 + ph[1])
        xx += np.linspace(0, wrng.normal(0, 0.04 * hh), yy.size)
        width = float(wrng.uniform(9, 16))
        line = shapely.LineString(np.column_stack([xx, yy]))
        poly = _ribbon(xx, yy, np.full(yy.size, width))
        streams.append((_names.STREAM_NAMES[i % len(_names.STREAM_NAMES)], line, poly, width))
        # carve a valley along it
        sx = np.interp(ys, yy, xx, left=np.nan, right=np.nan)[:, None]
        ds = np.abs(xs[None, :] - sx)
        fade = np.clip((ys[:, None] - y_bot) / 300.0, 0, 1)
        valley = np.nan_to_num(np.exp(-((ds / 90.0) ** 2)), nan=0.0) * fade
        elev = elev - np.minimum(elev - river_lvl - 3, 0.35 * (elev - river_lvl)) * valley * (
            (ys[:, None] < y_top - 30))
        elev = np.where(np.nan_to_num(ds, nan=1e9) < width / 2, np.minimum(elev, elev - 1.5), elev)

    # Reservoir in a valley between the southern peaks.
    ru, rv = _RESERVOIR_UV
    rcx, rcy = cx + ru * hw + wrng.normal(0, 0.02 * hw), cy + rv * hh
    r0 = 0.075 * min(hw, hh * 1.4)
    th = np.linspace(0, 2 * math.pi, 181)[:-1]
    ph = wrng.uniform(0, 2 * math.pi, 3)
    rr = r0 * (1 + 0.28 * np.sin(2 * th + ph[0]) + 0.16 * np.sin(3 * th + ph[1]) + 0.09 * np.sin(5 * th + ph[2]))
    reservoir = shapely.Polygon(np.column_stack([rcx + 1.5 * rr * np.cos(th), rcy + rr * np.sin(th)]))
    dres = np.hypot((xs[None, :] - rcx) / 1.5, ys[:, None] - rcy)
    ring = (dres > r0 * 1.2) & (dres < r0 * 1.6)
    level = float(np.percentile(elev[ring], 15)) - 6.0 if ring.any() else 80.0
    level = max(level, float(river_lvl.max()) + 30)
    basin = np.clip((dres - r0 * 1.0) / (r0 * 1.4), 0, 1)
    elev = np.where(elev > level, level + (elev - level) * (0.35 + 0.65 * basin), elev)
    dem_transform = (bounds[0], bounds[3], px, px)
    inside = shapely.contains_xy(reservoir, *np.meshgrid(xs, ys))
    elev = np.where(inside, level, elev)

    river_xs = np.arange(bounds[0] - 300, bounds[2] + 300, 20.0)
    river_ys = river_fn(river_xs)
    river_line = shapely.LineString(np.column_stack([river_xs, river_ys]))
    river_poly = _ribbon(river_xs, river_ys, river_w(river_xs))
    water = Water(river_line, river_poly, river_fn, streams,
                  _names.RESERVOIR_NAMES[int(wrng.integers(len(_names.RESERVOIR_NAMES)))],
                  reservoir, level)

    dem = elev.astype(np.float32)
    developable = _developable(dem, dem_transform, bounds, river_lvl, spec)
    # the reservoir and its shore are not building land (nor road land)
    developable = shapely.difference(developable, shapely.buffer(reservoir, 120.0))

    # Peaks for place names: local maxima of the DEM on a coarse grid.
    peaks = _peaks(dem, dem_transform, spec)

    urban_fn, industry_fn = _urban_fields(spec, _rng(seed, 4))
    w = World(spec, seed, bounds, dem, dem_transform, water, developable, urban_fn, industry_fn, peaks=peaks)
    return w


def _developable(dem, transform, bounds, river_lvl, spec):
    """Flat land: elevation not far above the valley floor; as polygons."""
    from rasterio import features
    from rasterio.transform import Affine

    x0, ytop, px, _ = transform
    rel = dem - (river_lvl.astype(np.float32) + 2.0)
    mask = (rel < 42.0).astype(np.uint8)
    aff = Affine(px, 0, x0, 0, -px, ytop)
    polys = [shapely.geometry.shape(g) for g, v in features.shapes(mask, mask=mask.astype(bool), transform=aff)
             if v == 1]
    geoms = np.array(polys, dtype=object)
    if geoms.size == 0:
        return shapely.Polygon()
    geoms = shapely.simplify(shapely.buffer(shapely.buffer(geoms, px * 1.5), -px * 1.5), px * 0.8)
    geoms = geoms[shapely.area(geoms) > max(60000.0, (spec.width * spec.height) * 0.002)]
    out = shapely.union_all(geoms)
    # fill small hill knolls below a hectare: they are just noise
    parts = shapely.get_parts(out)
    filled = []
    for p in parts:
        holes = [r for r in p.interiors if shapely.Polygon(r).area > 20000]
        filled.append(shapely.Polygon(p.exterior, holes))
    return shapely.make_valid(shapely.MultiPolygon(filled)) if len(filled) > 1 else filled[0]


def _peaks(dem, transform, spec):
    x0, ytop, px, _ = transform
    blk = max(4, int(1500 / px))
    h, w = dem.shape
    out = []
    for i in range(0, h - blk + 1, blk):
        for j in range(0, w - blk + 1, blk):
            sub = dem[i:i + blk, j:j + blk]
            k = int(np.argmax(sub))
            ii, jj = divmod(k, sub.shape[1])
            if sub[ii, jj] > 150 and 0 < ii < blk - 1 and 0 < jj < blk - 1:
                out.append((x0 + (j + jj + 0.5) * px, ytop - (i + ii + 0.5) * px, float(sub[ii, jj])))
    out.sort(key=lambda p: -p[2])
    return out[:len(_names.MOUNTAIN_NAMES)]


def _urban_fields(spec: SizeSpec, rng: np.random.Generator):
    cx, cy = CENTRE
    hw, hh = spec.width / 2, spec.height / 2
    centres = []
    for code, (u, v) in _names.STREET_LAYOUT.items():
        centres.append((cx + u * hw * 0.92, cy + v * hh * 0.92, _names.STREET_URBAN[code],
                        _names.STREET_INDUSTRY[code]))
    cen = np.array(centres)
    noise = SineField(rng, 24, 600, 6000)
    noise_i = SineField(rng, 24, 800, 5000)
    r = 0.42 * min(hw, hh)

    def urban(x, y):
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        d2 = ((x - cen[:, 0]) ** 2 + (y - cen[:, 1]) ** 2) / r**2
        u = (cen[:, 2] * np.exp(-d2)).max(-1)
        return np.clip(u + 0.12 * noise(x[..., 0], y[..., 0]), 0, 1)

    def industry(x, y):
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        d2 = ((x - cen[:, 0]) ** 2 + (y - cen[:, 1]) ** 2) / (1.3 * r) ** 2
        wgt = np.exp(-d2)
        i = (cen[:, 3] * wgt).sum(-1) / np.maximum(wgt.sum(-1), 1e-9)
        return np.clip(i + 0.25 * noise_i(x[..., 0], y[..., 0]), 0, 1)

    return urban, industry


# -- streets and communities ---------------------------------------------------------------------

def _components_fix(owner: np.ndarray, cells: np.ndarray, groups: np.ndarray, tree) -> np.ndarray:
    """Reassign cells so that every group is one connected piece: cells of a group's smaller
    pieces go to the neighbouring group that touches them most."""
    owner = owner.copy()
    for _ in range(6):
        changed = False
        for g in groups:
            idx = np.flatnonzero(owner == g)
            if idx.size == 0:
                continue
            merged = shapely.union_all(cells[idx])
            parts = shapely.get_parts(merged)
            if parts.size <= 1:
                continue
            big = parts[np.argmax(shapely.area(parts))]
            for p in parts:
                if p.equals(big):
                    continue
                mine = idx[shapely.intersects(cells[idx], shapely.buffer(p, -0.01))]
                nb = tree.query(p, predicate="intersects")
                nb = nb[owner[nb] != g]
                if nb.size == 0:
                    continue
                vals, counts = np.unique(owner[nb], return_counts=True)
                owner[mine] = vals[np.argmax(counts)]
                changed = True
        if not changed:
            break
    return owner


def make_admin(world: World) -> None:
    spec = world.spec
    rng = _rng(world.seed, 5)
    xmin, ymin, xmax, ymax = world.bounds
    step = math.sqrt(spec.width * spec.height / spec.atoms)
    gx = np.arange(xmin + step / 2, xmax, step)
    gy = np.arange(ymin + step / 2, ymax, step)
    X, Y = np.meshgrid(gx, gy)
    px_ = X.ravel() + rng.uniform(-0.45, 0.45, X.size) * step
    py_ = Y.ravel() + rng.uniform(-0.45, 0.45, X.size) * step
    pts = shapely.points(px_, py_)
    vor = shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=world.box, ordered=True)
    cells = shapely.intersection(shapely.get_parts(vor), world.box)
    tree = shapely.STRtree(cells)

    warp_x = SineField(rng, 16, 900, 5000)
    warp_y = SineField(rng, 16, 900, 5000)
    amp = 0.07 * min(spec.width, spec.height)
    wx = px_ + amp * warp_x(px_, py_)
    wy = py_ + amp * warp_y(px_, py_)

    streets = _names.streets()
    cx, cy = CENTRE
    seeds = np.array([(cx + _names.STREET_LAYOUT[c][0] * spec.width / 2 * 0.85,
                       cy + _names.STREET_LAYOUT[c][1] * spec.height / 2 * 0.85) for c, _ in streets])
    seeds += rng.normal(0, 0.02 * min(spec.width, spec.height), seeds.shape)
    d = (wx[:, None] - seeds[:, 0]) ** 2 + (wy[:, None] - seeds[:, 1]) ** 2
    owner = np.argmin(d, axis=1)
    owner = _components_fix(owner, cells, np.arange(len(streets)), tree)

    c_owner = np.full(cells.size, -1)
    c_codes, c_names, c_street = [], [], []
    wx2 = px_ + 0.6 * amp * warp_y(py_, px_)
    wy2 = py_ + 0.6 * amp * warp_x(py_, px_)
    next_id = 0
    for s, (code, sname) in enumerate(streets):
        idx = np.flatnonzero(owner == s)
        k = int(rng.integers(spec.communities[0], spec.communities[1] + 1))
        k = max(1, min(k, idx.size // 3))
        # seeds spread over the street: greedy farthest-point picks from a random start
        chosen = [int(idx[rng.integers(idx.size)])]
        for _ in range(k - 1):
            dd = np.min((px_[idx, None] - px_[chosen]) ** 2 + (py_[idx, None] - py_[chosen]) ** 2, axis=1)
            dd = dd * rng.uniform(0.6, 1.0, dd.size)
            chosen.append(int(idx[np.argmax(dd)]))
        dc = (wx2[idx, None] - px_[chosen]) ** 2 + (wy2[idx, None] - py_[chosen]) ** 2
        local = np.argmin(dc, axis=1)
        sub_tree = shapely.STRtree(cells[idx])
        local = _components_fix(local, cells[idx], np.arange(k), sub_tree)
        # order communities north-west first for their codes
        cent = np.array([(px_[idx[local == j]].mean() if (local == j).any() else 0,
                          py_[idx[local == j]].mean() if (local == j).any() else 0) for j in range(k)])
        order = np.lexsort((cent[:, 0], -np.round(cent[:, 1] / 500)))
        pool = list(_names.COMMUNITY_SEEDS[code])
        perm = rng.permutation(len(pool))
        names_here = [pool[i] for i in perm]
        used = 0
        for rank, j in enumerate(order):
            members = idx[local == j]
            if members.size == 0:
                continue
            c_owner[members] = next_id
            c_codes.append(f"{code}{rank + 1:03d}")
            nm = names_here[used % len(names_here)]
            used += 1
            c_names.append(nm + "社区")
            c_street.append(code)
            next_id += 1
    comm_geoms = np.array([shapely.union_all(cells[c_owner == i]) for i in range(next_id)], dtype=object)
    comm_geoms = _clean_polys(comm_geoms)
    street_geoms = np.array([shapely.union_all(comm_geoms[[j for j in range(next_id) if c_street[j] == code]])
                             for code, _ in streets], dtype=object)
    street_geoms = _clean_polys(street_geoms)
    world.street_codes = [c for c, _ in streets]
    world.street_names = [n for _, n in streets]
    world.street_geoms = street_geoms
    world.community_codes = c_codes
    world.community_names = _dedupe_names(c_names)
    world.community_street = c_street
    world.community_geoms = comm_geoms


def _dedupe_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            base = n[:-2]
            n = f"{base}{'东西南北新'[seen[n] % 5]}社区"
        else:
            seen[n] = 0
        out.append(n)
    return out


def _clean_polys(geoms: np.ndarray) -> np.ndarray:
    """Union artefacts out: tiny slivers and holes, keep one polygon per feature."""
    out = []
    for g in geoms:
        g = shapely.make_valid(shapely.set_precision(g, 0.01))
        parts = [p for p in shapely.get_parts(g) if p.geom_type == "Polygon"]
        if not parts:
            out.append(g)
            continue
        big = max(parts, key=lambda p: p.area)
        out.append(shapely.Polygon(big.exterior, [r for r in big.interiors if shapely.Polygon(r).area > 100]))
    return np.array(out, dtype=object)


# -- roads ---------------------------------------------------------------------------------------

ROAD_WIDTH = {"expressway": 34.0, "arterial": 40.0, "secondary": 24.0, "local": 14.0, "rural": 6.0}
ROAD_LU = {"expressway": "1003", "arterial": "1004", "secondary": "1004", "local": "1004", "rural": "1006"}


def _smooth_line(xs, ys):
    return shapely.LineString(np.column_stack([xs, ys]))


def make_roads(world: World) -> None:
    spec = world.spec
    rng = _rng(world.seed, 6)
    xmin, ymin, xmax, ymax = world.bounds
    cx, cy = CENTRE
    dev = world.developable
    dev_b = shapely.buffer(dev, 120)
    river_fn = world.water.river_fn
    lines, names, classes = [], [], []

    # East-west arterials, following the valley, ~1.4 km apart.
    sp = 1400.0
    ew_names = list(_names.ARTERIALS_EW)
    ns_names = list(_names.ARTERIALS_NS)
    xs = np.arange(xmin - 200, xmax + 201, 40.0)
    ryx = river_fn(xs)
    offs = np.arange(-ymax + cy, ymax - cy, sp) + rng.uniform(0, sp)
    offs = np.sort(np.concatenate([offs, [rng.choice([-1, 1]) * rng.uniform(180, 320)]]))
    k_ew = 0
    for off in offs:
        coupling = float(np.clip(0.85 - abs(off) / 900, 0.0, 0.85))
        ph = rng.uniform(0, 2 * math.pi, 2)
        y = (cy + np.mean(ryx - cy) + off + coupling * (ryx - np.mean(ryx))
             + (1 - coupling) * 120 * np.sin(2 * math.pi * xs / rng.uniform(4000, 8000) + ph[0]))
        ok = (y > ymin + 60) & (y < ymax - 60)
        if ok.sum() < 10:
            continue
        # keep arterials off the river: if too close, push away
        dist = y - ryx
        if np.min(np.abs(dist)) < 60:
            sgn = np.sign(np.median(dist)) or 1.0
            y = np.where(np.abs(dist) < 60, ryx + sgn * 60, y)
        line = _smooth_line(xs, y)
        lines.append(line)
        names.append(ew_names[k_ew % len(ew_names)] if k_ew < len(ew_names) else ew_names[k_ew % len(ew_names)] + "辅道")
        classes.append("arterial" if abs(off) < 2500 or k_ew % 2 == 0 else "secondary")
        k_ew += 1
    # North-south arterials, ~1.7 km apart, gently curved.
    sp = 1700.0
    ys_ = np.arange(ymin - 200, ymax + 201, 40.0)
    x0s = np.arange(xmin + rng.uniform(300, sp), xmax - 200, sp)
    for k, x0 in enumerate(x0s):
        ph = rng.uniform(0, 2 * math.pi, 2)
        x = (x0 + 150 * np.sin(2 * math.pi * ys_ / rng.uniform(5000, 9000) + ph[0])
             + 40 * np.sin(2 * math.pi * ys_ / 1500 + ph[1]) + rng.normal(0, 0.06) * (ys_ - cy))
        lines.append(_smooth_line(x, ys_))
        names.append(ns_names[k % len(ns_names)])
        classes.append("arterial" if k % 2 == 0 else "secondary")
    art_lines = np.array(lines, dtype=object)
    art_lines = shapely.intersection(art_lines, dev_b)
    keep_lines, keep_names, keep_cls = [], [], []
    for g, n, c in zip(art_lines, names, classes):
        for p in shapely.get_parts(shapely.line_merge(g) if g.geom_type == "MultiLineString" else g):
            if p.length >= 350:
                keep_lines.append(p)
                keep_names.append(n)
                keep_cls.append(c)
    # Expressway(s): long sweeping lines across everything (through the hills in cuttings).
    n_exp = 1 if spec.width < 15000 else 2
    for i in range(n_exp):
        ph = rng.uniform(0, 2 * math.pi)
        base = cy + (0.55 if i == 0 else -0.25) * (ymax - cy)
        y = base + 0.12 * (ymax - cy) * np.sin(2 * math.pi * xs / (1.6 * spec.width) + ph) + 0.15 * (xs - cx) * (1 if i else -1)
        keep_lines.append(shapely.intersection(_smooth_line(xs, y), shapely.buffer(world.box, -15)))
        keep_names.append(_names.EXPRESSWAYS[i])
        keep_cls.append("expressway")

    major = np.array(keep_lines, dtype=object)
    # Superblocks between the major roads and the river.
    frame = shapely.boundary(world.box)
    noded = shapely.union_all(np.concatenate([major, [world.water.river_line, frame]]))
    superblocks = shapely.get_parts(shapely.polygonize(shapely.get_parts(noded)))
    superblocks = shapely.intersection(superblocks, world.box)

    # Local roads inside each superblock's flat land: a rotated, jittered grid with staggered
    # cross streets (T-junctions), denser in town, sparse rural tracks in farmland.
    loc_lines, loc_cls = [], []
    for sb in superblocks:
        region = shapely.intersection(sb, dev)
        if region.is_empty or region.area < 20000:
            continue
        c = shapely.centroid(region)
        u = float(world.urban_fn(c.x, c.y))
        env = shapely.oriented_envelope(sb)
        co = np.asarray(env.exterior.coords)
        e1 = co[1] - co[0]
        e2 = co[2] - co[1]
        edge = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
        theta = math.atan2(edge[1], edge[0]) + rng.normal(0, math.radians(4))
        rural = u < 0.22
        s_main = (rng.uniform(380, 560) if rural else np.interp(u, [0.22, 1.0], [330, 170]) * rng.uniform(0.85, 1.15))
        s_cross = s_main * rng.uniform(1.1, 1.7)
        bx = region.bounds
        rd = math.hypot(bx[2] - bx[0], bx[3] - bx[1]) / 2 + 50
        vs = np.arange(-rd + rng.uniform(0.3, 0.9) * s_main, rd, s_main)
        vs = vs + rng.uniform(-0.12, 0.12, vs.size) * s_main
        seg = [np.array([[-rd, v], [rd, v]]) for v in vs]
        keep_p = 0.55 if rural else 0.82
        for a, b in zip(vs[:-1], vs[1:]):
            us_ = np.arange(-rd + rng.uniform(0, s_cross), rd, s_cross)
            us_ = us_ + rng.uniform(-0.2, 0.2, us_.size) * s_cross
            for x in us_[rng.uniform(size=us_.size) < keep_p]:
                skew = rng.normal(0, 8)
                seg.append(np.array([[x, a], [x + skew, b]]))
        if rural:  # rural tracks also drop some long lines' pieces
            seg = [s for s in seg if rng.uniform() < 0.85]
        if not seg:
            continue
        arr = np.stack(seg)  # (n, 2, 2)
        ct, st = math.cos(theta), math.sin(theta)
        wx = c.x + arr[..., 0] * ct - arr[..., 1] * st
        wy = c.y + arr[..., 0] * st + arr[..., 1] * ct
        ls = shapely.linestrings(np.stack([wx, wy], -1))
        clipped = shapely.intersection(ls, region)
        parts = shapely.get_parts(clipped)
        parts = parts[(shapely.get_type_id(parts) == 1) & (shapely.length(parts) >= 60)]
        loc_lines.extend(parts)
        loc_cls.extend(["rural" if rural else "local"] * parts.size)

    loc = np.array(loc_lines, dtype=object)
    all_lines = np.concatenate([major, loc])
    cls = np.array(keep_cls + loc_cls, dtype=object)
    lnames = keep_names + _names.road_names(loc.size, _rng(world.seed, 7), set(keep_names))
    widths = np.array([ROAD_WIDTH[c] for c in cls])
    widths = widths * np.where(cls == "local", rng.uniform(0.85, 1.3, cls.size), 1.0)
    order = np.arange(all_lines.size)
    world.roads = {
        "road_id": np.array([f"R{i + 1:05d}" for i in order], dtype=object),
        "name": np.array(lnames, dtype=object),
        "cls": cls,
        "width": np.round(widths, 1),
        "geom": shapely.set_precision(all_lines, 0.01),
        "superblocks": superblocks,
    }
    bufs = shapely.buffer(all_lines, widths / 2, quad_segs=4, cap_style="flat")
    # round the T-junction ends a little so local roads meet the arterials cleanly
    world.road_poly = shapely.union_all(shapely.buffer(bufs, 0.0))


# -- blocks and lots -----------------------------------------------------------------------------

ZONES = ("forest", "agri", "village", "residential", "commercial", "industrial", "public", "park")
LOT_TARGET = {"agri": 60000.0, "village": 12000.0, "residential": 22000.0, "commercial": 15000.0,
              "industrial": 32000.0, "public": 16000.0, "park": 30000.0, "forest": 250000.0}


def _zone_of(world: World, x, y, rng: np.random.Generator) -> np.ndarray:
    u = world.urban_fn(x, y)
    ind = world.industry_fn(x, y)
    n = len(u)
    nf = {z: SineField(_rng(world.seed, 100 + i), 12, 500, 3000) for i, z in enumerate(ZONES)}
    p = {
        "agri": np.clip(0.42 - u, 0, None) * 3.0,
        "village": 0.12 + 0.2 * (1 - u),
        "industrial": (0.1 + 0.9 * ind) * (u > 0.2),
        "residential": 0.7 * u ** 1.3,
        "commercial": 0.35 * u ** 3,
        "public": 0.12 * u,
        "park": np.full(n, 0.03),
    }
    zs = list(p)
    score = np.stack([np.log(np.maximum(p[z], 1e-6)) + 0.9 * nf[z](x, y) + 0.35 * rng.gumbel(size=n) for z in zs])
    return np.array(zs, dtype=object)[np.argmax(score, axis=0)]


def make_lots(world: World) -> None:
    rng = _rng(world.seed, 8)
    w = world.water
    barrier = shapely.union_all([world.road_poly, w.river_poly, w.reservoir] + [s[2] for s in w.streams])
    land = shapely.difference(world.box, barrier)
    flat = shapely.get_parts(shapely.intersection(land, world.developable))
    hill = shapely.get_parts(shapely.difference(land, world.developable))
    flat = flat[shapely.get_type_id(flat) == 3]
    hill = hill[shapely.get_type_id(hill) == 3]
    flat = flat[shapely.area(flat) > 1.0]
    hill = hill[shapely.area(hill) > 1.0]

    rp = shapely.point_on_surface(flat)
    zone = _zone_of(world, shapely.get_x(rp), shapely.get_y(rp), rng)
    # small flat blocks squeezed between roads: mostly villages or parks
    small = shapely.area(flat) < 1500
    zone = np.where(small & (zone == "agri"), "agri", zone)

    lots, lot_zone, lot_block = _subdivide(flat, zone, rng, world.spec.cell_scale)
    # hill blocks: split the big forest areas a little (compartments)
    hl, hz, hb = _subdivide(hill, np.full(hill.size, "forest", dtype=object), rng, 1.0)
    # variation inside urban blocks: a park, a school, a shop here and there
    r = rng.uniform(size=lots.size)
    urban = np.isin(lot_zone, ["residential", "village", "commercial", "industrial"])
    lot_zone = np.where(urban & (r < 0.05), "public", lot_zone)
    lot_zone = np.where(urban & (r >= 0.05) & (r < 0.08), "park", lot_zone)
    lot_zone = np.where((lot_zone == "residential") & (r >= 0.08) & (r < 0.13), "commercial", lot_zone)

    geoms = np.concatenate([lots, hl])
    zones = np.concatenate([lot_zone, hz])
    is_hill = np.concatenate([np.zeros(lots.size, bool), np.ones(hl.size, bool)])
    keep = shapely.area(geoms) > 0.5
    world.lots = {"geom": geoms[keep], "zone": zones[keep].astype(object), "hill": is_hill[keep],
                  "block": np.concatenate([lot_block, hb + lots.size])[keep]}


def _subdivide(blocks: np.ndarray, zone: np.ndarray, rng: np.random.Generator, scale: float):
    """Cut blocks into lots: a jittered grid in each block's own orientation (oriented
    envelope), intersected with the block. Fully vectorised."""
    area = shapely.area(blocks)
    target = np.array([LOT_TARGET[z] for z in zone]) * rng.uniform(0.6, 1.5, blocks.size) * scale
    env = shapely.oriented_envelope(blocks)
    ok = shapely.get_type_id(env) == 3
    co = np.zeros((blocks.size, 5, 2))
    co[ok] = shapely.get_coordinates(shapely.get_exterior_ring(env[ok])).reshape(-1, 5, 2)
    e1 = co[:, 1] - co[:, 0]
    e2 = co[:, 3] - co[:, 0]
    l1 = np.hypot(*e1.T)
    l2 = np.hypot(*e2.T)
    side = np.sqrt(target)
    n1 = np.clip(np.round(l1 / (side * 1.25)), 1, 40).astype(int)
    n2 = np.clip(np.round(l2 / (side * 0.8)), 1, 40).astype(int)
    n1 = np.where(~ok | (area < target * 1.6), 1, n1)
    n2 = np.where(~ok | (area < target * 1.6), 1, n2)
    counts = n1 * n2
    bi = np.repeat(np.arange(blocks.size), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(bi.size) - start
    i = k % n1[bi]
    j = k // n1[bi]
    jit = 0.22
    # cut positions drawn once per block and cut line, so neighbouring lots share their edges
    max1, max2 = n1.max() + 1, n2.max() + 1
    g1 = (np.arange(max1)[None, :] + rng.uniform(-jit, jit, (blocks.size, max1))) / n1[:, None]
    g2 = (np.arange(max2)[None, :] + rng.uniform(-jit, jit, (blocks.size, max2))) / n2[:, None]
    g1[:, 0] = -0.01
    g2[:, 0] = -0.01
    g1[np.arange(blocks.size), n1] = 1.01
    g2[np.arange(blocks.size), n2] = 1.01
    s0, s1 = g1[bi, i], g1[bi, i + 1]
    t0, t1 = g2[bi, j], g2[bi, j + 1]
    o = co[bi, 0]
    E1, E2 = e1[bi], e2[bi]
    quad = np.stack([o + E1 * s0[:, None] + E2 * t0[:, None], o + E1 * s1[:, None] + E2 * t0[:, None],
                     o + E1 * s1[:, None] + E2 * t1[:, None], o + E1 * s0[:, None] + E2 * t1[:, None],
                     o + E1 * s0[:, None] + E2 * t0[:, None]], axis=1)
    single = counts[bi] == 1
    cells = shapely.polygons(quad)
    pieces = np.where(single, blocks[bi], shapely.intersection(blocks[bi], cells))
    parts, idx = shapely.get_parts(pieces, return_index=True)
    poly = shapely.get_type_id(parts) == 3
    parts, idx = parts[poly], idx[poly]
    keep = shapely.area(parts) > 0.5
    parts, idx = parts[keep], idx[keep]
    return parts, zone[bi[idx]], bi[idx]
