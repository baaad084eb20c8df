"""The store writer's client-side derived columns (no database)."""

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from spatial_api.store.writer import FeatureRows, _copy_text, _to_3857


def test_web_mercator_formula_matches_proj():
    rng = np.random.default_rng(7)
    pts = np.column_stack([rng.uniform(-180, 180, 1000), rng.uniform(-85, 85, 1000)])
    pts[:3] = [[114.2514, 22.7215], [0, 0], [-179.9, -84.9]]
    x, y = Transformer.from_crs(4490, 3857, always_xy=True).transform(pts[:, 0], pts[:, 1])
    got = _to_3857(pts)
    assert np.abs(got[:, 0] - x).max() < 1e-6 and np.abs(got[:, 1] - y).max() < 1e-6


def test_copy_text_escapes_what_copy_would_misread():
    assert _copy_text('{"a": "x\\\\/y"}') == '{"a": "x\\\\\\\\/y"}'
    assert _copy_text("a\tb\nc") == "a\\tb\\nc"
    assert _copy_text("龙岗") == "龙岗"


def test_content_hash_depends_on_geometry_and_properties_only():
    g = np.array([shapely.box(114.25, 22.72, 114.26, 22.73)] * 3, dtype=object)
    g[2] = shapely.box(114.25, 22.72, 114.26, 22.731)
    props = pd.DataFrame({"dlbm": ["0101", "0101", "0101"]})
    rows = FeatureRows(rows=np.arange(1, 4), fids=None, geometry=g, properties=props)
    _, _, _, h = rows.text_columns(0, 3)
    assert h[0] == h[1] != h[2]
    props2 = pd.DataFrame({"dlbm": ["0102", "0101", "0101"]})
    _, _, _, h2 = FeatureRows(rows=np.arange(1, 4), fids=None, geometry=g, properties=props2).text_columns(0, 3)
    assert h2[0] != h[0] and h2[1] == h[1]
    assert all(len(x) == 32 and int(x, 16) >= 0 for x in h)


def test_ewkb_hex_is_what_geos_writes_with_an_srid():
    from spatial_api.store.writer import _SRID_4490, _ewkb_hex

    geoms = np.array([shapely.box(114.25, 22.72, 114.26, 22.73), shapely.Point(114.2, 22.7),
                      shapely.MultiLineString([[(0, 0), (1, 1)], [(2, 2), (3, 3)]])], dtype=object)
    ours = _ewkb_hex(shapely.to_wkb(geoms, byte_order=1), _SRID_4490)
    theirs = shapely.to_wkb(shapely.set_srid(geoms, 4490), hex=True, include_srid=True, byte_order=1)
    assert [o.upper() for o in ours] == list(theirs)
