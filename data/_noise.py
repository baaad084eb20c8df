"""Deterministic smooth noise on raster grids (value noise / fBm) with numpy only."""

from __future__ import annotations

import numpy as np


def value_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator,
                dtype=np.float32) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a lattice every ``cell`` pixels, smoothstep-
    interpolated. Cost: four gathers of the output size."""
    h, w = shape
    cell = max(float(cell), 1.0)
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    lattice = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(dtype)
    off_y, off_x = rng.uniform(0, 1, size=2)
    fy = np.arange(h, dtype=np.float64) / cell + off_y
    fx = np.arange(w, dtype=np.float64) / cell + off_x
    iy, ix = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = (fy - iy).astype(dtype), (fx - ix).astype(dtype)
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    top = lattice[iy][:, ix] * (1 - tx) + lattice[iy][:, ix + 1] * tx
    bot = lattice[iy + 1][:, ix] * (1 - tx) + lattice[iy + 1][:, ix + 1] * tx
    return top * (1 - ty)[:, None] + bot * ty[:, None]


def fbm(shape: tuple[int, int], cells: list[float], rng: np.random.Generator,
        gain: float = 0.55, dtype=np.float32) -> np.ndarray:
    """Fractal sum of value-noise octaves, coarse to fine; normalised to roughly [-1, 1]."""
    out = np.zeros(shape, dtype=dtype)
    amp, total = 1.0, 0.0
    for c in cells:
        out += amp * value_noise(shape, c, rng, dtype)
        total += amp
        amp *= gain
    out /= total
    return out


def sample_bilinear(grid: np.ndarray, transform: tuple[float, float, float, float],
                    x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of ``grid`` (row 0 = north) at world points. ``transform`` is
    (x0, y0_top, px, py) with py > 0 the row height; points outside are clamped."""
    x0, y_top, px, py = transform
    fx = (np.asarray(x, dtype=np.float64) - x0) / px - 0.5
    fy = (y_top - np.asarray(y, dtype=np.float64)) / py - 0.5
    h, w = grid.shape
    fx = np.clip(fx, 0, w - 1.000001)
    fy = np.clip(fy, 0, h - 1.000001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = fx - ix, fy - iy
    g = grid
    return ((g[iy, ix] * (1 - tx) + g[iy, ix + 1] * tx) * (1 - ty)
            + (g[iy + 1, ix] * (1 - tx) + g[iy + 1, ix + 1] * tx) * ty)
