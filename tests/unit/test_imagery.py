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
