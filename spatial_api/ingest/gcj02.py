"""GCJ-02 ("Mars coordinates"), the obfuscated lon/lat of Chinese web maps (AMap, Tencent ...).

The forward formula is the widely published open one (eviltransform / coordtransform):
Krasovsky ellipsoid constants, the ``transform_lat`` / ``transform_lon`` polynomials with sine
terms, and no offset outside a rough bounding box of China. The inverse has no closed form; it
is solved by fixed-point iteration, which converges to far below a millimetre in a few steps.
Everything works on numpy arrays (scalars are accepted too).
"""

from __future__ import annotations

import numpy as np

A = 6378245.0
EE = 0.00669342162296594323

_PI = np.pi


def out_of_china(lon, lat) -> np.ndarray:
    """True where the point is outside the box in which GCJ-02 applies an offset."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    return (lon < 72.004) | (lon > 137.8347) | (lat < 0.8293) | (lat > 55.8271)


def _transform_lat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
    ret += (20.0 * np.sin(6.0 * x * _PI) + 20.0 * np.sin(2.0 * x * _PI)) * 2.0 / 3.0
    ret += (20.0 * np.sin(y * _PI) + 40.0 * np.sin(y / 3.0 * _PI)) * 2.0 / 3.0
    ret += (160.0 * np.sin(y / 12.0 * _PI) + 320.0 * np.sin(y * _PI / 30.0)) * 2.0 / 3.0
    return ret


def _transform_lon(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
    ret += (20.0 * np.sin(6.0 * x * _PI) + 20.0 * np.sin(2.0 * x * _PI)) * 2.0 / 3.0
    ret += (20.0 * np.sin(x * _PI) + 40.0 * np.sin(x / 3.0 * _PI)) * 2.0 / 3.0
    ret += (150.0 * np.sin(x / 12.0 * _PI) + 300.0 * np.sin(x / 30.0 * _PI)) * 2.0 / 3.0
    return ret


def _offset(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dlon, dlat) in degrees that GCJ-02 adds to a WGS84 point (0 outside China)."""
    dlat = _transform_lat(lon - 105.0, lat - 35.0)
    dlon = _transform_lon(lon - 105.0, lat - 35.0)
    radlat = lat / 180.0 * _PI
    magic = np.sin(radlat)
    magic = 1 - EE * magic * magic
    sqrtmagic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((A * (1 - EE)) / (magic * sqrtmagic) * _PI)
    dlon = (dlon * 180.0) / (A / sqrtmagic * np.cos(radlat) * _PI)
    outside = out_of_china(lon, lat)
    return np.where(outside, 0.0, dlon), np.where(outside, 0.0, dlat)


def wgs84_to_gcj02(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Forward: WGS84 (= CGCS2000 at metre level) lon/lat → GCJ-02 lon/lat."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    dlon, dlat = _offset(lon, lat)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon, lat, *, tol_deg: float = 1e-10, max_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Inverse: GCJ-02 lon/lat → WGS84 lon/lat by fixed-point iteration.

    Solves ``forward(w) == g`` for ``w``; ``tol_deg`` = 1e-10° is ~0.01 mm. Points outside China
    are returned unchanged (the forward formula is the identity there).
    """
    glon = np.asarray(lon, dtype=float)
    glat = np.asarray(lat, dtype=float)
    wlon = glon.copy()
    wlat = glat.copy()
    for _ in range(max_iter):
        flon, flat = wgs84_to_gcj02(wlon, wlat)
        elon = flon - glon
        elat = flat - glat
        wlon = wlon - elon
        wlat = wlat - elat
        finite = np.isfinite(elon) & np.isfinite(elat)
        if not finite.any() or max(np.abs(elon[finite]).max(initial=0.0), np.abs(elat[finite]).max(initial=0.0)) < tol_deg:
            break
    return wlon, wlat


def gcj02_to_wgs84_coords(coords: np.ndarray) -> np.ndarray:
    """The inverse on an (N, 2) coordinate array (the shape ``shapely.transform`` passes)."""
    lon, lat = gcj02_to_wgs84(coords[:, 0], coords[:, 1])
    return np.column_stack([lon, lat])
