"""Rasters: the DEM and the imagery epochs, rendered from the vector district so they read as
aerial / satellite imagery (textured fields, forest canopy with relief shading, roofs with
shadows, asphalt, water), written as Cloud-Optimized GeoTIFFs with internal overviews."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from data._buildings import frames
from data._config import CRS, EPOCHS
from data._development import USE_TO_LU, Development
from data._landuse import LandUse
from data._noise import sample_bilinear, value_noise
from data._world import World, _rng

# base colours (RGB) per land-use class as seen from above in November
BASE = {
    "0101": (118, 128, 84), "0102": (112, 136, 78), "0103": (142, 132, 96), "0201": (88, 112, 62),
    "0204": (96, 118, 70), "0301": (46, 74, 44), "0302": (58, 88, 50), "0305": (62, 86, 50),
    "0307": (56, 82, 48), "0404": (118, 130, 84), "05H1": (150, 148, 144), "0508": (160, 158, 150),
    "0601": (166, 164, 158), "0602": (176, 160, 136), "0604": (168, 166, 160), "0701": (128, 132, 120),
    "0702": (96, 94, 90), "08H1": (132, 138, 124), "08H2": (128, 136, 118), "0809": (150, 150, 146),
    "0810": (82, 118, 66), "0810A": (186, 182, 172), "1003": (88, 88, 90), "1004": (82, 82, 84),
    "1006": (150, 142, 124), "1101": (58, 84, 80), "1103": (38, 68, 78), "1104": (84, 104, 86),
    "1107": (62, 86, 80), "1201": (140, 134, 106), "1202": (208, 210, 206), "1206": (176, 128, 94),
    "SITE": (182, 150, 116),
}
CLASSES = list(BASE)
CI = {c: i for i, c in enumerate(CLASSES)}
VEG = {"0101", "0102", "0103", "0201", "0204", "0301", "0302", "0305", "0307", "0404", "0810"}
FOREST = {"0301", "0302", "0305", "0307"}
# thresholds on the patch noise (−1.4…1.4) above which urban ground is lawn / trees: ordinary urban
# ground, industrial parcels, the planted landscaped industrial parcel (R9 green ratio)
INDUSTRIAL_GREEN = 0.95
LANDSCAPED_GREEN = 0.0
# the noise is in pixels, so on coarse imagery (6 m) one lawn patch can cover much of a small parcel:
# the thresholds are also bounded per parcel by a share of its pixels — an industrial parcel's lawn
# covers at most INDUSTRIAL_LAWN_MAX of its pixels, the landscaped one's at least LANDSCAPED_LAWN_MIN
# (roofs cover a third of it) — so the R9 green ratio reads the same on every district size
INDUSTRIAL_LAWN_MAX = 0.06
LANDSCAPED_LAWN_MIN = 0.6
URBAN_GROUND = {"05H1", "0508", "0601", "0604", "0701", "08H1", "08H2", "0809", "0810A"}
WATER = {"1101", "1103", "1104", "1107"}
ROADS = {"1003", "1004"}


@dataclass
class Grid:
    width: int
    height: int
    px: float
    transform: Affine
    bounds: tuple


def grid_for(world: World) -> Grid:
    px = world.spec.px
    x0, y0, x1, y1 = world.bounds
    w, h = int(round((x1 - x0) / px)), int(round((y1 - y0) / px))
    return Grid(w, h, px, Affine(px, 0, x0, 0, -px, y1), world.bounds)


def _rasterize(geoms, values, grid: Grid, dtype="int32", all_touched=False, fill=0):
    if len(geoms) == 0:
        return np.full((grid.height, grid.width), fill, dtype=dtype)
    return features.rasterize(zip(geoms, values), out_shape=(grid.height, grid.width), transform=grid.transform,
                              fill=fill, dtype=dtype, all_touched=all_touched)


def _mask(geoms, grid: Grid, all_touched=False):
    return _rasterize(geoms, np.ones(len(geoms), np.uint8), grid, "uint8", all_touched) > 0


def _resample_dem(world: World, grid: Grid) -> np.ndarray:
    xs = grid.bounds[0] + (np.arange(grid.width) + 0.5) * grid.px
    ys = grid.bounds[3] - (np.arange(grid.height) + 0.5) * grid.px
    out = np.empty((grid.height, grid.width), np.float32)
    step = 256
    for r in range(0, grid.height, step):
        X, Y = np.meshgrid(xs, ys[r:r + step])
        out[r:r + step] = sample_bilinear(world.dem, world.dem_transform, X, Y)
    return out


def hillshade(dem: np.ndarray, px: float, az: float = 150.0, alt: float = 40.0) -> np.ndarray:
    gy, gx = np.gradient(dem.astype(np.float32), px)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)  # downslope direction, clockwise from north
    zen = math.radians(90 - alt)
    azr = math.radians(az)
    hs = math.cos(zen) * np.cos(slope) + math.sin(zen) * np.sin(slope) * np.cos(azr - aspect)
    return np.clip(hs, 0, 1).astype(np.float32)


def _shadow_polys(geoms: np.ndarray, heights: np.ndarray, az: float, alt: float) -> np.ndarray:
    """Shadow of each prism on flat ground: hull of the footprint and its translate."""
    L = heights / math.tan(math.radians(alt))
    sx, sy = -math.sin(math.radians(az)), -math.cos(math.radians(az))
    coords, idx = shapely.get_coordinates(geoms, return_index=True)
    moved = coords + np.column_stack([sx * L[idx], sy * L[idx]])
    allc = np.concatenate([coords, moved])
    alli = np.concatenate([idx, idx])
    o = np.argsort(alli, kind="stable")
    mp = shapely.multipoints(allc[o], indices=alli[o])
    return shapely.convex_hull(mp)


def _fast_shapes(geoms: np.ndarray):
    """GeoJSON-like dicts with numpy coordinate arrays (much faster to build than shapely's
    __geo_interface__ for many small polygons). Polygons and MultiPolygons."""
    parts, pi = shapely.get_parts(geoms, return_index=True)
    rings, ri = shapely.get_rings(parts, return_index=True)
    coords, ci = shapely.get_coordinates(rings, return_index=True)
    arrs = np.split(coords, np.flatnonzero(np.diff(ci)) + 1) if coords.size else []
    bounds = np.flatnonzero(np.diff(ri)) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    ends = np.concatenate([bounds, [len(ri)]]).astype(int)
    polys = [arrs[s_:e_] for s_, e_ in zip(starts, ends)]
    # polygon index -> geometry index
    gidx = pi[ri[starts]] if len(ri) else np.array([], int)
    return [{"type": "Polygon", "coordinates": p} for p in polys], gidx


def rasterize_fast(geoms, values, grid: Grid, dtype="int32", fill=0, all_touched=False):
    geoms = np.asarray(geoms, dtype=object)
    if geoms.size == 0:
        return np.full((grid.height, grid.width), fill, dtype=dtype)
    shapes, gidx = _fast_shapes(geoms)
    vals = np.asarray(values)[gidx]
    return features.rasterize(zip(shapes, vals.tolist()), out_shape=(grid.height, grid.width),
                              transform=grid.transform, fill=fill, dtype=dtype, all_touched=all_touched)


# pixel groups with their own texture
GROUPS = {"farm": {"0101", "0102", "0103"}, "gh": {"1202"}, "orch": {"0201", "0204"},
          "forest": FOREST | {"0810"}, "grass": {"0404", "1201"}, "bare": {"1206", "SITE"},
          "urban": URBAN_GROUND, "village": {"0702"}, "water": WATER, "road": ROADS | {"1006"}}
GROUP_NAMES = ["other"] + list(GROUPS)
CLASS_GROUP = np.zeros(len(CLASSES) + 1, np.int8)
for _gi, _gn in enumerate(GROUP_NAMES[1:], start=1):
    for _c in GROUPS[_gn]:
        CLASS_GROUP[CI[_c] + 1] = _gi
VEG_LUT = np.zeros(len(CLASSES) + 1, bool)
for _c in VEG:
    VEG_LUT[CI[_c] + 1] = True
BASE_ARR = np.vstack([[0, 0, 0], np.array([BASE[c] for c in CLASSES], np.float32)]).astype(np.float32)


class Renderer:
    def __init__(self, world: World, dev: Development, lu: LandUse):
        self.world, self.dev, self.lu = world, dev, lu
        self.grid = g = grid_for(world)
        rng = _rng(world.seed, 50)
        H, W = g.height, g.width
        geoms = lu.geom2023
        self.n = geoms.size
        self.ids = rasterize_fast(geoms, np.arange(1, self.n + 1), g).ravel()
        src = lu.src23
        self.c20 = lu.c2020[src]
        self.c23 = lu.c23_final
        cd = lu.change_date[src].copy()
        for k in np.flatnonzero((self.c20 != self.c23) & np.array([c is None for c in cd], bool)):
            cd[k] = date(2022, 6, 30)
        self.cdate = cd
        lot_parcel = np.full(world.lots["geom"].size, -1)
        lot_parcel[dev.parcel_lot] = np.arange(dev.parcel_lot.size)
        lot = lu.lot[src]
        self.piece_parcel = np.where(lot >= 0, lot_parcel[np.maximum(lot, 0)], -1)
        # per-piece looks; fields share their lot's direction
        self.tone = np.concatenate([[0], rng.normal(0, 1, self.n)]).astype(np.float32)
        lot_theta = rng.uniform(0, math.pi, world.lots["geom"].size)
        o, u1, _, _, _, ok = frames(world.lots["geom"])
        lot_theta = np.where(ok, np.arctan2(u1[:, 1], u1[:, 0]), lot_theta)
        th = np.where(lot >= 0, lot_theta[np.maximum(lot, 0)], 0.0) + rng.normal(0, 0.04, self.n)
        th = np.where(rng.uniform(size=self.n) < 0.3, th + math.pi / 2, th)
        self.theta = np.concatenate([[0], th]).astype(np.float32)
        self.period = np.concatenate([[8], rng.uniform(5, 11, self.n)]).astype(np.float32)
        self.state = rng.choice(4, size=(len(EPOCHS), self.n + 1), p=[0.45, 0.3, 0.1, 0.15])
        # noise fields shared by all epochs (the ground does not move between epochs)
        self.n_fine = value_noise((H, W), 1.3, rng).ravel()
        self.n_crown = value_noise((H, W), 2.2, rng).ravel()
        self.n_mid = value_noise((H, W), 7.0, rng).ravel()
        self.n_big = value_noise((H, W), 60.0, rng).ravel()
        self.n_patch = value_noise((H, W), 18.0, rng).ravel()
        self.hs = hillshade(_resample_dem(world, g), g.px).ravel()
        ids2 = self.ids.reshape(H, W)
        edge = np.zeros((H, W), bool)
        edge[:, 1:] |= ids2[:, 1:] != ids2[:, :-1]
        edge[1:, :] |= ids2[1:, :] != ids2[:-1, :]
        self.edge = edge.ravel()
        # road furniture: medians and street trees (rasterised as lines, then dotted)
        R = world.roads
        cls = R["cls"]
        art = R["geom"][np.isin(cls, ["arterial", "expressway"])]
        self.median = _rasterize(art, np.ones(art.size), g, "uint8", all_touched=g.px > 2.5).ravel() > 0
        loc = np.isin(cls, ["arterial", "secondary", "local"])
        offs = []
        for sgn in (1, -1):
            off = shapely.offset_curve(R["geom"][loc], sgn * (R["width"][loc] / 2 + 1.5), quad_segs=2)
            offs.append(off[~shapely.is_empty(off)])
        offs = np.concatenate(offs)
        tl = _rasterize(offs, np.ones(offs.size), g, "uint8", all_touched=True) > 0
        # thicken to crowns and break into individual trees with the crown noise
        t2 = tl.copy()
        t2[1:, :] |= tl[:-1, :]
        t2[:, 1:] |= tl[:, :-1]
        if g.px < 3:
            t2[:-1, :] |= tl[1:, :]
            t2[:, :-1] |= tl[:, 1:]
        self.parcel_ids = rasterize_fast(dev.parcel_geom, np.arange(1, len(dev.parcels) + 1), g).ravel()
        # street trees stand in the road reserve, not on granted land: on coarse imagery the tree
        # line (thickened to a crown) would otherwise reach a pixel or two into the parcels along it
        self.street_trees = t2.ravel() & (self.n_crown > -0.2) & (self.parcel_ids == 0)
        self.green_thr = self._green_thresholds()
        self.sheds = self._sheds(rng).ravel()
        self._prepare_buildings()

    def _green_thresholds(self) -> np.ndarray:
        """Lawn threshold on the patch score per parcel (+1; 0 = no parcel): 0.35 on ordinary ground;
        on industrial parcels INDUSTRIAL_GREEN, raised where more than INDUSTRIAL_LAWN_MAX of the
        parcel's pixels would pass it; on the planted landscaped ones LANDSCAPED_GREEN, lowered
        where fewer than LANDSCAPED_LAWN_MIN would."""
        P = self.dev.parcels
        n = len(P)
        ind = P["land_use_code"].to_numpy() == "0601"
        landscaped = np.zeros(n, bool)
        landscaped[list(self.dev.green_parcels)] = True
        thr = np.where(ind, INDUSTRIAL_GREEN, 0.35)
        thr[landscaped] = LANDSCAPED_GREEN
        ix = np.flatnonzero(self.parcel_ids > 0)
        ix = ix[ind[self.parcel_ids[ix] - 1]]
        if ix.size:
            pid = self.parcel_ids[ix] - 1
            score = self._lawn_score(ix)
            o = np.lexsort((score, pid))
            pid, score = pid[o], score[o]
            start = np.searchsorted(pid, np.arange(n))
            count = np.bincount(pid, minlength=n)
            has = count > 0
            share = np.where(landscaped, LANDSCAPED_LAWN_MIN, INDUSTRIAL_LAWN_MAX)
            # the score the k-th highest pixel reaches: more than k pixels may not pass (strict >)
            k = np.floor(share * count).astype(np.int64)
            at = np.clip(start + count - 1 - k, 0, max(pid.size - 1, 0))
            kth = score[at]
            cap = has & ~landscaped
            thr[cap] = np.maximum(thr[cap], kth[cap])
            low = has & landscaped
            thr[low] = np.minimum(thr[low], np.nextafter(kth[low], np.float32(-np.inf)))
        return np.concatenate([[0.35], thr]).astype(np.float32)

    def _lawn_score(self, ix: np.ndarray) -> np.ndarray:
        """Patch score of pixels ``ix``: lawn / trees where it is above the ground's threshold."""
        return self.n_patch[ix] + np.float32(0.4) * self.n_mid[ix]

    def _sheds(self, rng):
        P = self.dev.parcel_geom
        cent = shapely.point_on_surface(P)
        boxes, vals = [], []
        for k, c in enumerate(cent):
            for _ in range(2):
                dx, dy = rng.uniform(-25, 25, 2)
                w, h = rng.uniform(18, 32), rng.uniform(6, 9)
                r = shapely.box(c.x + dx, c.y + dy, c.x + dx + w, c.y + dy + h)
                if shapely.within(r, P[k]):
                    boxes.append(r)
                    vals.append(k + 1)
        return rasterize_fast(np.array(boxes, dtype=object), np.array(vals), self.grid)

    def _prepare_buildings(self):
        """Roof and shadow rasters once (ids in drawing order); epochs only switch them on."""
        dev, g = self.dev, self.grid
        nb = len(dev.buildings)
        geoms = dev.building_geom
        h = dev.buildings["height_m"].to_numpy()
        # draw old buildings last so their roofs / shadows win where rasters overlap
        vis = np.array([v.toordinal() for v in dev.building_visible])
        order = np.argsort(-vis, kind="stable")
        self.b_order = order
        self.b_vis = dev.building_visible
        self.b_fin = dev.building_finished
        val = np.empty(nb, np.int64)
        val[order] = np.arange(1, nb + 1)
        roof_ids = rasterize_fast(geoms[order], np.arange(1, nb + 1), g).ravel()
        shadows = _shadow_polys(geoms[order], h[order], 150.0, 40.0)
        shadow_ids = rasterize_fast(shadows, np.arange(1, nb + 1), g).ravel()
        self.roof_ids, self.shadow_ids = roof_ids, shadow_ids
        e = np.zeros((g.height, g.width), bool)
        r2 = roof_ids.reshape(g.height, g.width)
        e[:, 1:] |= r2[:, 1:] != r2[:, :-1]
        e[1:, :] |= r2[1:, :] != r2[:-1, :]
        self.roof_edge = e.ravel() & (roof_ids > 0)
        # roof colours by use (index in drawing order)
        brng = _rng(self.world.seed, 70)
        use = dev.buildings["use"].to_numpy()[order]
        pid = dev.buildings["parcel_id"].to_numpy()[order]
        hh = h[order]
        pal = {
            "residential": [(214, 210, 200), (196, 192, 186), (176, 146, 128), (226, 224, 218), (150, 150, 150)],
            "industrial": [(92, 132, 172), (196, 198, 198), (222, 222, 220), (120, 150, 176)],
            "warehouse": [(96, 136, 176), (200, 200, 198), (170, 172, 170)],
            "office": [(170, 186, 196), (206, 206, 204), (120, 140, 156)],
            "commercial": [(204, 204, 200), (180, 184, 188), (150, 160, 170)],
            "dormitory": [(190, 176, 160), (206, 200, 190)],
            "public": [(184, 120, 96), (200, 196, 186), (166, 110, 90)],
        }
        vill = [(150, 146, 140), (118, 114, 110), (162, 112, 88), (186, 182, 176), (104, 104, 106), (136, 96, 78)]
        pick = brng.uniform(size=nb)
        tone = 1 + brng.normal(0, 0.05, nb)
        cols = np.zeros((nb + 1, 3), np.float32)
        for k in range(nb):
            p = vill if (use[k] == "residential" and pid[k] is None and hh[k] < 32) else pal.get(use[k], pal["residential"])
            cols[k + 1] = np.array(p[int(pick[k] * len(p)) % len(p)], np.float32) * tone[k]
        self.roof_cols = cols
        self.concrete = np.vstack([[0, 0, 0], np.outer(tone, (168, 164, 156))]).astype(np.float32)

    # ---------------------------------------------------------------------------------------

    def classes_at(self, when: date) -> np.ndarray:
        """Class index (+1; 0 = nothing) per piece at a date; parcels follow their own timeline."""
        changed = np.array([c is not None and c <= when for c in self.cdate], bool)
        cls = np.where(changed, self.c23, self.c20).astype(object)
        P = self.dev.parcels
        starts = P["actual_start"].to_numpy()
        dones = P["actual_completion"].to_numpy()
        uses = P["land_use_code"].to_numpy()
        pp = self.piece_parcel
        for k in np.flatnonzero(pp >= 0):
            p = pp[k]
            s, f = starts[p], dones[p]
            if s is None or s > when:
                cls[k] = self.dev.parcel_predev[p]
            elif f is None or f > when:
                cls[k] = "SITE"
            else:
                cls[k] = USE_TO_LU[uses[p]]
        return np.concatenate([[0], np.array([CI[c] + 1 for c in cls])])

    def render(self, ei: int, when: date) -> np.ndarray:
        g = self.grid
        rng = _rng(self.world.seed, 60 + ei)
        lut = self.classes_at(when)
        cls = lut[self.ids]
        grp = CLASS_GROUP[cls]
        img = BASE_ARR[cls]
        img *= (1 + 0.06 * self.tone[self.ids])[:, None]

        def sel(name):
            return np.flatnonzero(grp == GROUP_NAMES.index(name))

        def xy(ix):
            return (ix % g.width).astype(np.float32), (ix // g.width).astype(np.float32)

        fine, crown, mid, big, patch = self.n_fine, self.n_crown, self.n_mid, self.n_big, self.n_patch
        ix = sel("farm")
        if ix.size:
            x, y = xy(ix)
            pid = self.ids[ix]
            th = self.theta[pid]
            per = self.period[pid] / g.px * 1.6
            stripe = np.sin(2 * np.pi * (x * np.cos(th) + y * np.sin(th)) / np.maximum(per, 1.5))
            palette = np.array([(110, 134, 72), (146, 136, 100), (96, 108, 100), (126, 122, 86)], np.float32)
            col = palette[self.state[ei][pid]] * (1 + 0.08 * self.tone[pid])[:, None]
            img[ix] = col * (1 + 0.07 * stripe + 0.05 * mid[ix])[:, None]
        ix = sel("gh")
        if ix.size:
            x, y = xy(ix)
            th = self.theta[self.ids[ix]]
            s_ = np.sin(2 * np.pi * (x * np.cos(th) + y * np.sin(th)) / max(7.0 / g.px, 1.5))
            img[ix] = np.array([196, 200, 198], np.float32) * (1 + 0.07 * s_)[:, None]
        ix = sel("orch")
        if ix.size:
            x, y = xy(ix)
            th = self.theta[self.ids[ix]]
            sp = max(6.0 / g.px, 1.6)
            a = (x * np.cos(th) + y * np.sin(th)) / sp
            b = (-x * np.sin(th) + y * np.cos(th)) / sp
            dots = (np.cos(2 * np.pi * a) * np.cos(2 * np.pi * b) + 0.35 * crown[ix]) > -0.25
            tree = np.array([56, 86, 48], np.float32) * (1 + 0.15 * crown[ix])[:, None]
            img[ix] = np.where(dots[:, None], tree, np.array([122, 118, 86], np.float32))
        ix = sel("forest")
        if ix.size:
            canopy = 0.55 * crown[ix] + 0.3 * mid[ix] + 0.15 * fine[ix]
            v = BASE_ARR[cls[ix]] * (1 + 0.02 * self.tone[self.ids[ix]])[:, None]
            v = v * (1 + 0.35 * canopy + 0.08 * big[ix])[:, None]
            v[canopy < -0.45] *= 0.6
            img[ix] = v
        ix = sel("grass")
        if ix.size:
            v = img[ix] * (1 + 0.08 * mid[ix])[:, None]
            soil = patch[ix] > 0.25
            v[soil] = v[soil] * 0.65 + np.array([158, 134, 100], np.float32) * 0.35
            img[ix] = v
        ix = sel("bare")
        if ix.size:
            x, y = xy(ix)
            v = img[ix] * (1 + 0.1 * mid[ix] + 0.05 * fine[ix])[:, None]
            tracks = np.abs(np.sin(0.09 * (x + y) + 3 * big[ix])) > 0.97
            v[tracks] *= 0.82
            img[ix] = v
        ix = sel("urban")
        if ix.size:
            # lawn and trees: patches of the ground; industrial parcels keep little green (the R9
            # limit is 20%), except the planted green-ratio case, landscaped all over
            thr = np.where(cls[ix] == CI["0601"] + 1, self.green_thr[self.parcel_ids[ix]], 0.35)
            green = self._lawn_score(ix) > thr
            v = img[ix] * (1 + 0.05 * fine[ix])[:, None]
            v[green] = np.array([62, 92, 56], np.float32) * (1 + 0.3 * crown[ix][green])[:, None]
            img[ix] = v
        ix = sel("village")
        if ix.size:
            img[ix] *= (1 + 0.1 * fine[ix])[:, None]
        ix = sel("water")
        if ix.size:
            img[ix] *= (1 + 0.05 * big[ix] + 0.02 * fine[ix])[:, None]
        ix = sel("road")
        if ix.size:
            img[ix] *= (1 + 0.05 * fine[ix])[:, None]
            med = ix[self.median[ix]]
            img[med] = np.array([70, 104, 60], np.float32) * (1 + 0.2 * crown[med])[:, None]
        # field banks and pond dikes
        farm_like = (grp == GROUP_NAMES.index("farm")) | (cls == CI["1104"] + 1)
        fe = np.flatnonzero(self.edge & farm_like)
        img[fe] = img[fe] * 0.6 + np.array([150, 150, 120], np.float32) * 0.4
        # relief shading on vegetation
        veg = np.flatnonzero(VEG_LUT[cls])
        img[veg] *= (0.55 + 0.6 * self.hs[veg])[:, None]
        # street trees (not on water)
        st = np.flatnonzero(self.street_trees & (grp != GROUP_NAMES.index("water")))
        img[st] = np.array([58, 90, 52], np.float32) * (1 + 0.25 * crown[st])[:, None]
        # construction sites: blue site sheds
        sh = np.flatnonzero((self.sheds > 0) & (cls == CI["SITE"] + 1))
        img[sh] = np.array([70, 118, 178], np.float32)
        # buildings standing at this date: shadows, roofs (concrete while unfinished), outlines
        ordv = np.array([v <= when for v in self.b_vis], bool)[self.b_order]
        ordf = np.array([f <= when for f in self.b_fin], bool)[self.b_order]
        vis = np.concatenate([[False], ordv])
        fin = np.concatenate([[False], ordf])
        sm = np.flatnonzero(vis[self.shadow_ids])
        img[sm] *= 0.42
        rf = np.flatnonzero(vis[self.roof_ids])
        rid = self.roof_ids[rf]
        img[rf] = np.where(fin[rid][:, None], self.roof_cols[rid], self.concrete[rid]) * (1 + 0.04 * fine[rf])[:, None]
        re = np.flatnonzero(self.roof_edge & vis[self.roof_ids])
        img[re] *= 0.8
        # sensor / season look and noise
        look = [((1.04, 1.0, 0.93), (6, 6, 4)), ((0.97, 1.0, 1.03), (0, 2, 6)), ((1.0, 1.0, 1.0), (0, 0, 0))][ei % 3]
        img = img * np.array(look[0], np.float32) + np.array(look[1], np.float32)
        img += rng.normal(0, 2.2, img.shape[0]).astype(np.float32)[:, None]
        return np.clip(img, 0, 255).astype(np.uint8).reshape(g.height, g.width, 3)


def write_cog(arr: np.ndarray, path: Path, transform: Affine, *, kind: str) -> None:
    path = Path(path)
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    count, h, w = arr.shape
    src_profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=arr.dtype.name, crs=CRS,
                       transform=transform)
    if kind == "rgb":
        prof = cog_profiles.get("jpeg")
        prof.update(quality=90, blockxsize=256, blockysize=256)
        resampling = "average"
    else:
        prof = cog_profiles.get("deflate")
        prof.update(predictor=3, blockxsize=256, blockysize=256)
        resampling = "bilinear"
    with MemoryFile() as mem:
        with mem.open(**src_profile) as dst:
            dst.write(arr)
            if kind == "rgb":
                dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                   rasterio.enums.ColorInterp.blue]
            else:
                dst.update_tags(1, units="metre")
        with mem.open() as src, warnings.catch_warnings():
            # rio-cogeo's own use of Affine * (a PendingDeprecationWarning in affine 2.4+)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            cog_translate(src, str(path), prof, overview_resampling=resampling, in_memory=True, quiet=True,
                          config={"GDAL_NUM_THREADS": "ALL_CPUS"})


def write_dem(world: World, path: Path) -> dict:
    x0, ytop, px, _ = world.dem_transform
    write_cog(world.dem.astype(np.float32), path, Affine(px, 0, x0, 0, -px, ytop), kind="dem")
    return {"res_m": px, "min_m": round(float(world.dem.min()), 1), "max_m": round(float(world.dem.max()), 1),
            "width": int(world.dem.shape[1]), "height": int(world.dem.shape[0])}
