"""Imagery without the database: the GeoTIFF checks of `geotwin ingest imagery` (real files written
by rasterio), the datetime parameter of the tile routes, and title handling."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from spatial_api.ingest import IngestError
from spatial_api.ingest.imagery import _title_fields, inspect_raster, is_cog, write_cog
from spatial_api.api.errors import ApiError
from tiling.imagery import parse_datetime

CST = timezone(timedelta(hours=8))


def _tif(path, *, crs="EPSG:4547", count=3, dtype="uint8", size=(64, 96)):
    h, w = size
    data = (np.arange(count * h * w) % 251).reshape(count, h, w).astype(dtype)
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=dtype,
                   transform=from_origin(525000, 2514000, 0.5, 0.5))
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_a_good_geotiff_is_described(tmp_path):
    info = inspect_raster(_tif(tmp_path / "ok.tif"))
    assert info == {"driver": "GTiff", "width": 96, "height": 64, "bands": 3, "dtype": "uint8", "nodata": None,
                    "crs": "EPSG:4547", "resolution_m": 0.5}
    geo = inspect_raster(_tif(tmp_path / "geo.tif", crs="EPSG:4490", count=1, dtype="float32"))
    assert geo["crs"] == "EPSG:4490" and geo["resolution_m"] > 1000  # 0.5° pixels, in metres


def test_bad_files_get_a_message_with_the_file_and_the_fix(tmp_path):
    no_crs = _tif(tmp_path / "no_crs.tif", crs=None)
    with pytest.raises(IngestError, match="no coordinate reference system") as err:
        inspect_raster(no_crs)
    assert str(no_crs) in str(err.value) and "gdal_edit.py -a_srs EPSG:4547" in str(err.value)

    good = _tif(tmp_path / "good.tif", size=(600, 700))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(IngestError, match="truncated or corrupt|not a readable raster") as err:
        inspect_raster(cut)
    assert str(cut) in str(err.value)

    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(IngestError, match="not a readable raster"):
        inspect_raster(text)
    with pytest.raises(IngestError, match="no such file"):
        inspect_raster(tmp_path / "missing.tif")
    with pytest.raises(IngestError, match="is a folder"):
        inspect_raster(tmp_path)


def test_a_plain_geotiff_becomes_a_lossless_cog(tmp_path):
    plain = _tif(tmp_path / "plain.tif", size=(1100, 1300))
    assert not is_cog(plain)
    out = tmp_path / "cog.tif"
    write_cog(plain, out, "uint8")
    assert is_cog(out)
    with rasterio.open(out) as a, rasterio.open(plain) as b:
        assert np.array_equal(a.read(), b.read()) and a.overviews(1) and a.compression.name == "deflate"


def test_datetime_parameter():
    tz = "Asia/Shanghai"
    end_of_day = parse_datetime("2023-11-15", tz)
    assert end_of_day == datetime(2023, 11, 16, tzinfo=CST) - timedelta(microseconds=1)
    assert parse_datetime("2023-11-15T10:00:00", tz) == datetime(2023, 11, 15, 10, tzinfo=CST)
    assert parse_datetime("2023-11-15T02:00:00Z", tz) == datetime(2023, 11, 15, 10, tzinfo=CST)
    assert parse_datetime("../2023-11-15", tz) == end_of_day == parse_datetime("2020-01-01/2023-11-15", tz)
    assert parse_datetime(None, tz) is None and parse_datetime("..", tz) is None
    with pytest.raises(ApiError) as err:
        parse_datetime("yesterday", tz)
    assert err.value.status == 400 and "datetime" in err.value.description


def test_title_goes_to_the_language_it_is_written_in():
    assert _title_fields("正射影像", None, None) == ("正射影像", None)
    assert _title_fields("Orthophotos", None, None) == (None, "Orthophotos")
    assert _title_fields("Orthophotos", "影像", None) == ("影像", "Orthophotos")


# -- issue 15: tiles from the grid ---------------------------------------------------------------


def test_photographs_default_to_jpeg():
    from spatial_api.store.imagery import default_format_for

    assert [default_format_for(k) for k in ("ortho", "satellite", "aerial", "dem", "dsm", "other")] == \
        ["jpg", "jpg", "jpg", "png", "png", "png"]


def test_which_zoom_a_tile_reads_from_a_grid_copy():
    from tiling.imagery import copy_read_zoom

    assert copy_read_zoom({}, "WebMercatorQuad", 14) == 14
    assert copy_read_zoom({"tilesize": "256"}, "WebMercatorQuad", 14) == 14
    assert copy_read_zoom({"tilesize": "512"}, "WebMercatorQuad", 14) == 15  # the pixels of zoom 15
    assert copy_read_zoom({"tilesize": "300"}, "CGCS2000Quad", 14) == 15  # finer than 256 → the next level
    assert copy_read_zoom({"tilesize": "128"}, "WebMercatorQuad", 14) == 14
    assert copy_read_zoom({"reproject": "nearest"}, "WebMercatorQuad", 14) == 14
    # the warped read of the COG: another kernel, a nodata override, a size TiTiler refuses anyway
    assert copy_read_zoom({"reproject": "bilinear"}, "WebMercatorQuad", 14) is None
    assert copy_read_zoom({"nodata": "0"}, "WebMercatorQuad", 14) is None
    assert copy_read_zoom({"tilesize": "big"}, "WebMercatorQuad", 14) is None


def test_a_grid_copy_serves_its_own_levels():
    from pathlib import Path

    from spatial_api.store.imagery import GridCopy

    copy = GridCopy("WebMercatorQuad", Path("x.tif"), 12, 16)
    assert copy.serves(12) and copy.serves(16) and not copy.serves(11) and not copy.serves(17)
    assert copy.serves(15, 16) and not copy.serves(16, 17)


def test_the_imagery_tile_cache_keeps_tiles_of_the_newest_version_only():
    from tiling.imagery import CachedTile, ImageryTileCache

    def tile(n: int, level: str = "public") -> CachedTile:
        return CachedTile(b"x" * n, f'"{n}"', "image/jpeg", (), level)

    cache = ImageryTileCache(max_bytes=1000)
    cache.put(("a", 1, "/t/1", ()), tile(100))
    cache.put(("a", 1, "/t/2", ()), tile(200))
    cache.put(("b", 7, "/t/1", ()), tile(300))
    assert cache.get(("a", 1, "/t/1", ())).body == b"x" * 100
    # a newer version of "a" is seen: its older tiles go, "b" keeps its own
    assert cache.get(("a", 2, "/t/1", ())) is None
    assert cache.stats()["dropped"] == 2 and cache.get(("b", 7, "/t/1", ())) is not None
    # a tile rendered from the older version is not kept any more
    cache.put(("a", 1, "/t/3", ()), tile(10))
    assert cache.get(("a", 1, "/t/3", ())) is None
    # bounded in bytes, least recently used out first
    cache.put(("a", 2, "/t/4", ()), tile(400))
    cache.get(("b", 7, "/t/1", ()))
    cache.put(("a", 2, "/t/5", ()), tile(400))
    assert cache.get(("a", 2, "/t/4", ())) is None and cache.get(("b", 7, "/t/1", ())) is not None
    assert cache.stats()["bytes"] <= 1000
    cache.put(("a", 2, "/t/6", ()), tile(2000))  # larger than the whole cache: not kept
    assert cache.get(("a", 2, "/t/6", ())) is None
