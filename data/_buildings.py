"""Building footprints: rectangles and L-shapes laid out on a jittered grid in each lot's own
orientation, kept where they fit inside the lot shrunk by its setback. Vectorised."""

from __future__ import annotations

import numpy as np
import shapely

# typology: footprint length / depth ranges (m), gaps along / across (m), floors, floor height,
# use, share of L-shapes
TYPOLOGY = {
    "tower": dict(w=(22, 30), d=(18, 26), gx=(22, 34), gy=(30, 46), floors=(26, 45), fh=3.0, use="residential", l=0.15),
    "slab": dict(w=(45, 70), d=(13, 17), gx=(14, 24), gy=(26, 38), floors=(9, 18), fh=3.0, use="residential", l=0.2),
    "oldres": dict(w=(28, 48), d=(11, 14), gx=(8, 14), gy=(12, 18), floors=(6, 9), fh=3.0, use="residential", l=0.1),
    "village": dict(w=(9, 14), d=(9, 14), gx=(1.5, 3.5), gy=(2.0, 4.5), floors=(5, 9), fh=3.0, use="residential", l=0.0),
    "factory": dict(w=(45, 90), d=(22, 36), gx=(10, 16), gy=(12, 18), floors=(3, 6), fh=5.0, use="industrial", l=0.0),
    "warehouse": dict(w=(60, 110), d=(30, 50), gx=(14, 20), gy=(16, 24), floors=(1, 2), fh=9.0, use="warehouse", l=0.0),
    "commercial": dict(w=(40, 80), d=(30, 55), gx=(18, 28), gy=(20, 30), floors=(4, 8), fh=5.0, use="commercial", l=0.25),
    "office": dict(w=(28, 40), d=(26, 36), gx=(25, 40), gy=(25, 40), floors=(18, 40), fh=4.0, use="office", l=0.0),
    "public": dict(w=(40, 70), d=(14, 18), gx=(18, 26), gy=(20, 30), floors=(4, 6), fh=4.0, use="public", l=0.45),
}


def frames(geoms: np.ndarray):
    """Each polygon's oriented envelope: origin corner, unit axis vectors and side lengths
    (axis 1 = the longer side)."""
    env = shapely.oriented_envelope(geoms)
    ok = shapely.get_type_id(env) == 3
    co = np.zeros((geoms.size, 5, 2))
    if ok.any():
        co[ok] = shapely.get_coordinates(shapely.get_exterior_ring(env[ok])).reshape(-1, 5, 2)
    e1 = co[:, 1] - co[:, 0]
    e2 = co[:, 3] - co[:, 0]
    l1 = np.hypot(*e1.T)
    l2 = np.hypot(*e2.T)
    swap = l2 > l1
    o = np.where(swap[:, None], co[:, 0], co[:, 0])
    a1 = np.where(swap[:, None], e2, e1)
    a2 = np.where(swap[:, None], e1, e2)
    L1 = np.where(swap, l2, l1)
    L2 = np.where(swap, l1, l2)
    with np.errstate(invalid="ignore", divide="ignore"):
        u1 = a1 / np.maximum(L1, 1e-9)[:, None]
        u2 = a2 / np.maximum(L2, 1e-9)[:, None]
    return o, u1, u2, L1, L2, ok


def place(lots: np.ndarray, kinds: np.ndarray, setbacks: np.ndarray, rng: np.random.Generator,
          keep_p: float = 0.92, max_per_lot: int = 400):
    """Footprints for each lot. Returns (lot index, polygon, floors, height_m, use)."""
    n = lots.size
    if n == 0:
        e = np.array([], dtype=object)
        return np.array([], dtype=np.int64), e, np.array([], dtype=np.int64), np.array([]), e
    o, u1, u2, L1, L2, ok = frames(lots)
    kinds = np.asarray(kinds, dtype=object)
    # per-lot template sizes
    def rng_of(key):
        lo = np.array([TYPOLOGY[k][key][0] for k in kinds], dtype=float)
        hi = np.array([TYPOLOGY[k][key][1] for k in kinds], dtype=float)
        return lo + (hi - lo) * rng.uniform(size=n)

    w = rng_of("w")
    d = rng_of("d")
    gx = rng_of("gx")
    gy = rng_of("gy")
    cw, cd = w + gx, d + gy
    inner_margin = setbacks + 0.5
    avail1 = np.maximum(L1 - 2 * inner_margin, 0)
    avail2 = np.maximum(L2 - 2 * inner_margin, 0)
    n1 = np.floor((avail1 + gx) / cw).astype(int)
    n2 = np.floor((avail2 + gy) / cd).astype(int)
    n1 = np.where(ok, np.clip(n1, 0, 60), 0)
    n2 = np.where(ok, np.clip(n2, 0, 60), 0)
    # small lots: try a single building if nothing fits
    n1 = np.where(n1 * n2 > max_per_lot, np.maximum(1, max_per_lot // np.maximum(n2, 1)), n1)
    counts = n1 * n2
    li = np.repeat(np.arange(n), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(li.size) - start
    i = k % np.maximum(n1[li], 1)
    j = k // np.maximum(n1[li], 1)
    # centre the grid inside the lot's envelope
    off1 = (L1[li] - (n1[li] * cw[li] - gx[li])) / 2
    off2 = (L2[li] - (n2[li] * cd[li] - gy[li])) / 2
    jit = rng.uniform(-0.25, 0.25, (li.size, 2))
    bw = w[li] * rng.uniform(0.85, 1.0, li.size)
    bd = d[li] * rng.uniform(0.85, 1.0, li.size)
    c1 = off1 + i * cw[li] + w[li] / 2 + jit[:, 0] * gx[li]
    c2 = off2 + j * cd[li] + d[li] / 2 + jit[:, 1] * gy[li]
    lshape = rng.uniform(size=li.size) < np.array([TYPOLOGY[k]["l"] for k in kinds])[li]
    # local outlines: rectangle, or L (a notch cut from one corner)
    hw, hd = bw / 2, bd / 2
    nx_, ny_ = bw * rng.uniform(0.35, 0.6, li.size), bd * rng.uniform(0.35, 0.6, li.size)
    rect = np.stack([np.stack([-hw, -hd], -1), np.stack([hw, -hd], -1), np.stack([hw, hd], -1),
                     np.stack([-hw, hd], -1), np.stack([-hw, -hd], -1)], 1)
    lpts = np.stack([np.stack([-hw, -hd], -1), np.stack([hw, -hd], -1), np.stack([hw, hd - ny_], -1),
                     np.stack([hw - nx_, hd - ny_], -1), np.stack([hw - nx_, hd], -1),
                     np.stack([-hw, hd], -1), np.stack([-hw, -hd], -1)], 1)
    flip = rng.uniform(size=li.size) < 0.5
    lpts[flip, :, 0] *= -1
    lpts[flip] = lpts[flip, ::-1]

    def to_world(pts):
        a = c1[:, None] + pts[..., 0]
        b = c2[:, None] + pts[..., 1]
        return (o[li][:, None, :] + a[..., None] * u1[li][:, None, :] + b[..., None] * u2[li][:, None, :])

    geoms = np.empty(li.size, dtype=object)
    if (~lshape).any():
        geoms[~lshape] = shapely.polygons(to_world(rect)[~lshape])
    if lshape.any():
        geoms[lshape] = shapely.polygons(to_world(lpts)[lshape])
    inner = shapely.buffer(lots, -inner_margin, join_style="mitre")
    shapely.prepare(inner)
    fits = shapely.contains(inner[li], geoms) & (rng.uniform(size=li.size) < keep_p)
    li, geoms = li[fits], geoms[fits]
    kk = kinds[li]
    flo = np.array([TYPOLOGY[x]["floors"][0] for x in kk])
    fhi = np.array([TYPOLOGY[x]["floors"][1] for x in kk])
    # floors: similar within a lot (same estate), a little variation per building
    lot_f = rng.uniform(size=n)
    floors = np.round(flo + (fhi - flo) * np.clip(lot_f[li] + rng.normal(0, 0.12, li.size), 0, 1)).astype(np.int64)
    fh = np.array([TYPOLOGY[x]["fh"] for x in kk])
    height = np.round(floors * fh + rng.uniform(0.5, 3.0, li.size), 1)
    use = np.array([TYPOLOGY[x]["use"] for x in kk], dtype=object)
    geoms = shapely.set_precision(geoms, 0.01)
    return li, geoms, floors, height, use
