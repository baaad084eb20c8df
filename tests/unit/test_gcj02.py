"""GCJ-02 forward / inverse (no database)."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Geod, Transformer

from spatial_api.ingest.gcj02 import gcj02_to_wgs84, out_of_china, wgs84_to_gcj02
from tests.fixtures.files import gcj02_forward

GEOD = Geod(ellps="GRS80")
TO_4547 = Transformer.from_crs(4490, 4547, always_xy=True)


def metres(lon1, lat1, lon2, lat2) -> np.ndarray:
    return np.asarray(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def test_forward_matches_independent_scalar_formula():
    rng = np.random.default_rng(1)
    lon = rng.uniform(73.5, 135.0, 500)
    lat = rng.uniform(18.0, 53.5, 500)
    glon, glat = wgs84_to_gcj02(lon, lat)
    ref = np.array([gcj02_forward(a, b) for a, b in zip(lon, lat)])
    assert np.allclose(glon, ref[:, 0], rtol=0, atol=1e-12)
    assert np.allclose(glat, ref[:, 1], rtol=0, atol=1e-12)


def test_offset_in_longgang_is_the_documented_570_to_610_metres():
    lon, lat = np.meshgrid(np.linspace(114.05, 114.45, 9), np.linspace(22.55, 22.85, 7))
    glon, glat = wgs84_to_gcj02(lon.ravel(), lat.ravel())
    d = metres(lon.ravel(), lat.ravel(), glon, glat)
    assert d.min() > 540 and d.max() < 640


def test_inverse_round_trip_below_a_tenth_of_a_millimetre_in_longgang():
    lon, lat = np.meshgrid(np.linspace(114.05, 114.45, 41), np.linspace(22.55, 22.85, 31))
    lon, lat = lon.ravel(), lat.ravel()
    back_lon, back_lat = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    # measured in EPSG:4547 metres, as the brief asks (< 0.1 m); in fact far smaller
    x1, y1 = TO_4547.transform(lon, lat)
    x2, y2 = TO_4547.transform(back_lon, back_lat)
    err = np.hypot(x2 - x1, y2 - y1)
    assert err.max() < 0.1
    assert err.max() < 1e-4


def test_inverse_round_trip_across_china():
    rng = np.random.default_rng(7)
    lon = rng.uniform(73.7, 134.9, 5000)
    lat = rng.uniform(18.2, 53.4, 5000)
    back_lon, back_lat = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert metres(lon, lat, back_lon, back_lat).max() < 0.1


def test_outside_china_is_identity_both_ways():
    lon = np.array([2.35, -74.0, 151.2, 139.7])  # Paris, New York, Sydney, Tokyo
    lat = np.array([48.85, 40.7, -33.9, 35.7])
    assert out_of_china(lon, lat).all()
    assert np.array_equal(np.stack(wgs84_to_gcj02(lon, lat)), np.stack([lon, lat]))
    assert np.array_equal(np.stack(gcj02_to_wgs84(lon, lat)), np.stack([lon, lat]))


def test_scalars_work():
    glon, glat = wgs84_to_gcj02(114.2514, 22.7215)
    lon, lat = gcj02_to_wgs84(glon, glat)
    assert float(lon) == pytest.approx(114.2514, abs=1e-9)
    assert float(lat) == pytest.approx(22.7215, abs=1e-9)
