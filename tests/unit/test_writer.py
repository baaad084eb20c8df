"""The store writer's client-side derived columns and binary COPY rows (no database)."""

import struct
from datetime import datetime, timezone
from hashlib import md5

import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from spatial_api.store.writer import FeatureRows, _copy_prefix, _copy_text, _to_3857


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


def _rows(geoms, props):
    return FeatureRows(rows=np.arange(1, len(geoms) + 1), fids=np.array([f"F{i}" for i in range(len(geoms))], dtype=object),
                       geometry=np.array(geoms, dtype=object), properties=pd.DataFrame(props))


def _parse(block: bytes, prefix: bytes) -> list[list[bytes]]:
    """Split binary COPY tuples back into their fields."""
    out, pos = [], 0
    while pos < len(block):
        assert block[pos:pos + len(prefix)] == prefix
        pos += len(prefix)
        fields = []
        for _ in range(5):
            (n,) = struct.unpack(">i", block[pos:pos + 4])
            fields.append(block[pos + 4:pos + 4 + n])
            pos += 4 + n
        out.append(fields)
    return out


def test_binary_rows_carry_ewkb_with_srid_jsonb_and_the_content_hash():
    geoms = [shapely.box(114.25, 22.72, 114.26, 22.73), shapely.Point(114.2, 22.7),
             shapely.MultiLineString([[(114.0, 22.0), (114.1, 22.1)], [(114.2, 22.2), (114.3, 22.3)]])]
    rows = _rows(geoms, {"名称": ["龙岗", "a\\b/c", None], "n": [1, 2, 3]})
    prefix = _copy_prefix("land_use", datetime(2023, 12, 31, tzinfo=timezone.utc),
                          datetime(2024, 1, 1, tzinfo=timezone.utc), 7)
    parsed = _parse(rows.copy_rows(0, 3, prefix), prefix)
    assert [p[0] for p in parsed] == [b"F0", b"F1", b"F2"]
    for (fid, props, g, m, digest), geom in zip(parsed, geoms):
        assert props[:1] == b"\x01"
        expect = shapely.to_wkb(shapely.set_srid(geom, 4490), include_srid=True, byte_order=1)
        assert g == expect
        merc = shapely.from_wkb(m)
        assert shapely.get_srid(merc) == 3857
        assert np.allclose(shapely.get_coordinates(merc), _to_3857(shapely.get_coordinates(geom)))
        plain = shapely.to_wkb(geom, byte_order=1)
        assert digest == md5(plain + props[1:]).digest()
    assert parsed[0][1][1:].decode() == '{"名称":"龙岗","n":1}'
    # the same hashes as the text path used to compare keys first (replace / upsert)
    assert [p[4].hex() for p in parsed] == rows.digests(0, 3)


def test_content_hash_depends_on_geometry_and_properties_only():
    g = [shapely.box(114.25, 22.72, 114.26, 22.73)] * 2 + [shapely.box(114.25, 22.72, 114.26, 22.731)]
    h = _rows(g, {"dlbm": ["0101", "0101", "0101"]}).digests(0, 3)
    assert h[0] == h[1] != h[2]
    h2 = _rows(g, {"dlbm": ["0102", "0101", "0101"]}).digests(0, 3)
    assert h2[0] != h[0] and h2[1] == h[1]


def test_copy_prefix_encodes_postgres_epoch_microseconds():
    prefix = _copy_prefix("x", datetime(2000, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
                          datetime(2000, 1, 1, tzinfo=timezone.utc), 42)
    assert prefix == (struct.pack(">h", 9) + struct.pack(">i", 1) + b"x" + struct.pack(">iq", 8, 1_000_000)
                      + struct.pack(">iq", 8, 0) + struct.pack(">iq", 8, 42))
