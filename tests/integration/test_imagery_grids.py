"""Imagery served from the tile grid (issue 15): the web-optimised copies `geotwin ingest imagery`
writes per served grid, tiles read from them without warping, JPEG by default for photographs,
ETag / 304, and the imagery tile cache against catalogue changes. Real parts: PostGIS, GeoTIFFs
written by rasterio, rio-cogeo, rio-tiler, the app through Starlette's TestClient (no timing)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
import rasterio.vrt
import rio_tiler.reader
from fastapi.testclient import TestClient
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from rio_tiler.io import Reader
from titiler.core.resources.enums import ImageType

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import IngestError
from spatial_api.ingest import imagery as ingest_mod
from spatial_api.ingest.imagery import ingest_imagery
from tiling.imagery import copy_read_zoom, render
from tiling.vector import TMS

ROOT = Path(__file__).resolve().parents[2]
GRIDS = ("WebMercatorQuad", "CGCS2000Quad")
WM = morecantile.tms.get("WebMercatorQuad")
TO_LONLAT = Transformer.from_crs(4547, 4326, always_xy=True)
X0, Y0, PX = 525000.0, 2514000.0, 2.0  # Longgang, EPSG:4547; 2 m pixels
H, W = 1000, 1200


def smooth(h: int = H, w: int = W, phase: float = 0.0) -> np.ndarray:
    """RGB varying gently (well under a grey level per pixel): a shift in where a pixel is sampled
    changes its value by at most a grey level or two."""
    yy, xx = np.mgrid[0:h, 0:w].astype("float64") * PX
    rgb = np.stack([128 + 60 * np.sin(xx / 500.0 + phase) * np.cos(yy / 700.0), 128 + 60 * np.sin((xx + yy) / 900.0 + phase),
                    128 + 50 * np.cos(xx / 600.0 - yy / 800.0 + phase)])
    return np.clip(rgb, 1, 255).astype("uint8")


def write_plain(path: Path, data: np.ndarray, x0: float = X0, y0: float = Y0) -> Path:
    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=str(data.dtype),
                       crs="EPSG:4547", transform=from_origin(x0, y0, PX, PX)) as dst:
        dst.write(data)
    return path


def tile_at(x: float, y: float, z: int, tms=WM):
    return tms.tile(*TO_LONLAT.transform(x, y), z)


def decode(body: bytes, mode: str = "RGBA") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert(mode))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype("float64") - b.astype("float64")) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def ortho(database, tmp_path_factory):
    """An orthophoto collection with one smooth 2.4 × 2 km image, ingested by the library call."""
    d = tmp_path_factory.mktemp("grids")
    cid = f"grid_{uuid.uuid4().hex[:6]}"
    s = ingest_imagery(write_plain(d / "a.tif", smooth()), collection=cid, datetime_="2022-01-01", kind="ortho",
                       cog_dir=d / "cogs", settings=database)
    return {"cid": cid, "item": s, "dir": d}


@pytest.fixture(scope="module")
def client(database, ortho):
    with TestClient(create_app(database)) as c:
        yield c


class Watch:
    """What rio-tiler and rasterio do while a request runs: the WarpedVRTs made and the reads of
    plain datasets (file, window, output shape)."""

    def __init__(self, monkeypatch):
        self.vrts: list[str] = []
        self.reads: list[tuple[str, object, object]] = []
        real_vrt, real_read = rio_tiler.reader.WarpedVRT, rasterio.io.DatasetReader.read
        watch = self

        class WatchedVRT(real_vrt):
            def __init__(self, src, *args, **kwargs):
                watch.vrts.append(src.name)
                super().__init__(src, *args, **kwargs)

        def read(ds, *args, **kwargs):
            watch.reads.append((ds.name, kwargs.get("window"), kwargs.get("out_shape")))
            return real_read(ds, *args, **kwargs)

        monkeypatch.setattr(rio_tiler.reader, "WarpedVRT", WatchedVRT)
        monkeypatch.setattr(rasterio.vrt, "WarpedVRT", WatchedVRT)
        monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)

    def clear(self):
        self.vrts.clear()
        self.reads.clear()


# -- the copies ------------------------------------------------------------------------------------


def test_ingest_writes_a_web_optimised_copy_per_grid(ortho, conn):
    s = ortho["item"]
    master = Path(s.cog_path)
    rows = store.imagery.grid_copies(conn, ortho["cid"], s.item_id)
    assert set(rows) == set(s.grids) == set(GRIDS)
    for tms_id, copy in rows.items():
        grid = TMS.get(tms_id)
        assert copy.cog_path == master.parent / "grids" / tms_id / master.name and copy.cog_path.exists()
        assert copy.file_size == copy.cog_path.stat().st_size
        assert cog_validate(copy.cog_path, quiet=True)[0]
        with rasterio.open(copy.cog_path) as src:
            assert src.crs == grid.rasterio_crs and src.block_shapes[0] == (256, 256)
            assert src.compression.name == "deflate"  # lossless
            assert len(src.overviews(1)) == copy.maxzoom - copy.minzoom
            # its pixels are the grid's pixels at its max zoom; its origin is a corner of a tile
            assert src.res[0] == pytest.approx(grid.matrix(copy.maxzoom).cellSize, rel=1e-9)
            tags = src.tags()
            assert tags["TILING_SCHEME_NAME"] == tms_id and int(tags["TILING_SCHEME_ZOOM_LEVEL"]) == copy.maxzoom
            aligned = int(tags["TILING_SCHEME_ALIGNED_LEVELS"])
            top = grid._tile(src.bounds.left + src.res[0] / 2, src.bounds.top - src.res[1] / 2, copy.maxzoom - aligned)
            corner = grid.xy_bounds(top)
            assert (corner.left, corner.top) == pytest.approx((src.bounds.left, src.bounds.top), rel=1e-12)
            # outside the image: masked (the image does not fill whole tiles)
            mask = src.dataset_mask()
            assert 0 < (mask == 0).mean() < 0.9 and set(np.unique(mask)) == {0, 255}
        # the zoom range recorded is what rio-tiler makes of the file at its finest
        with Reader(str(copy.cog_path), tms=grid) as r:
            assert r.maxzoom == copy.maxzoom
    # the item's own zooms (the master's, as before) are untouched
    assert store.imagery.get_item(conn, ortho["cid"], s.item_id).zooms["WebMercatorQuad"][1] == rows["WebMercatorQuad"].maxzoom


@pytest.mark.parametrize("tms_id", GRIDS)
def test_copy_and_warped_read_give_the_same_pixels(ortho, conn, tms_id):
    """Every tile of every zoom of the copy, read from the copy (no warping) and from the master
    COG through TiTiler's warped read (rio-tiler's Reader with the grid, as titiler.application):

    - PNG (exact values): within 2 grey levels, 99 % within 1. At the copy's finest zoom the
      copy holds the master sampled at the grid's pixel centres (nearest), as the warped read
      samples it: the values agree except where GDAL's approximate transformer (0.125 px
      tolerance) picks the neighbouring source pixel. At coarser zooms the two sample different
      points: the copy's overviews are made from its finest level (its OVERVIEW_RESAMPLING, the
      master's), the warped read samples the master's own overviews through a VRT of another
      pixel grid; on this image (well under a grey level per pixel) that is a grey level or two.
      On high-frequency imagery the same shift makes larger per-pixel differences (the bench
      measures both on the demo's orthophoto).
    - the mask: the same but for pixels on the image's edge (under 0.5 %);
    - JPEG (TiTiler's renderer) of the tiles wholly inside the image: PSNR ≥ 40 dB."""
    grid = TMS.get(tms_id)
    copy = store.imagery.grid_copies(conn, ortho["cid"], ortho["item"].item_id)[tms_id]
    master = ortho["item"].cog_path
    with Reader(master, tms=grid) as m, Reader(str(copy.cog_path), tms=grid) as c:
        w, s, e, n = m.get_geographic_bounds(grid.rasterio_geographic_crs)
        for z in range(copy.minzoom, copy.maxzoom + 1):
            diffs, mask_off, pixels, jpeg = [], 0, 0, []
            for t in grid.tiles(w, s, e, n, [z]):
                a, b = m.tile(t.x, t.y, t.z), c.tile(t.x, t.y, t.z)
                mask_a, mask_b = a.array.mask[0], b.array.mask[0]
                mask_off += int((mask_a != mask_b).sum())
                pixels += mask_a.size
                both = ~mask_a & ~mask_b
                diffs.append(np.abs(a.array.data.astype(int) - b.array.data.astype(int))[:, both].ravel())
                if not mask_a.any() and not mask_b.any():
                    ja = decode(render(a, output_format=ImageType.jpeg)[0], "RGB")
                    jb = decode(render(b, output_format=ImageType.jpeg)[0], "RGB")
                    jpeg.append(psnr(ja, jb))
            d = np.concatenate(diffs)
            assert d.size > 0
            assert d.max() <= 2 and (d > 1).mean() < 0.01, (tms_id, z, d.max(), (d > 1).mean())
            assert mask_off / pixels < 0.005, (tms_id, z, mask_off / pixels)
            if z == copy.maxzoom:
                assert (d == 0).mean() > 0.99 and mask_off / pixels < 0.001
            assert all(p >= 40 for p in jpeg), (tms_id, z, min(jpeg))
        assert jpeg, "no tile wholly inside the image at the finest zoom"


def test_a_tile_from_the_copy_is_one_block_read_without_warping(ortho, client, conn, monkeypatch):
    """Through the tile route: a tile of the grid at a tile-aligned zoom of the copy is one read of
    one level of the copy — an integer window exactly one tile (256 · 2^(max − z) pixels of the
    finest level, at multiples of that) into a 256 × 256 buffer: GDAL takes it from the overview of
    that factor, one 256-px block — and no WarpedVRT. Other requests fall back to the warped read
    of the master COG."""
    s, cid = ortho["item"], ortho["cid"]
    watch = Watch(monkeypatch)
    for tms_id in GRIDS:
        copy = store.imagery.grid_copies(conn, cid, s.item_id)[tms_id]
        with rasterio.open(copy.cog_path) as src:
            aligned = int(src.tags()["TILING_SCHEME_ALIGNED_LEVELS"])
            factors = [1, *src.overviews(1)]
        grid = TMS.get(tms_id)
        for z in range(copy.maxzoom - aligned, copy.maxzoom + 1):
            t = tile_at(X0 + 1200, Y0 - 1000, z, grid)
            for route in (f"/imagery/collections/{cid}/tiles", f"/imagery/collections/{cid}/items/{s.item_id}/tiles"):
                watch.clear()
                r = client.get(f"{route}/{tms_id}/{t.z}/{t.x}/{t.y}.png", params={"v": uuid.uuid4().hex})
                assert r.status_code == 200, r.text
                assert watch.vrts == [], (tms_id, z, watch.vrts)
                assert len(watch.reads) == 1, watch.reads
                name, window, out_shape = watch.reads[0]
                assert name == str(copy.cog_path) and tuple(out_shape)[-2:] == (256, 256)
                size = 256 * 2 ** (copy.maxzoom - z)
                offsets = np.array([window.col_off, window.row_off, window.width, window.height], dtype="float64")
                assert np.abs(offsets - np.round(offsets)).max() < 1e-6  # whole pixels
                col, row, width, height = (round(v) for v in offsets)
                assert (width, height) == (size, size) and col % size == 0 and row % size == 0
                assert size // 256 in factors
    # beyond the copy's finest zoom, another kernel, another grid's copy missing: the master, warped
    copy = store.imagery.grid_copies(conn, cid, s.item_id)["WebMercatorQuad"]
    t = tile_at(X0 + 1200, Y0 - 1000, copy.maxzoom + 1)
    for path, params in ((f"{t.z}/{t.x}/{t.y}.png", {}),
                         (f"{t.z - 1}/{t.x // 2}/{t.y // 2}.png", {"reproject": "bilinear"}),
                         (f"{t.z - 1}/{t.x // 2}/{t.y // 2}.png", {"nodata": "0"})):
        watch.clear()
        r = client.get(f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{path}", params={**params, "v": uuid.uuid4().hex})
        assert r.status_code == 200 and watch.vrts == [s.cog_path], (path, params, watch.vrts)
    assert copy_read_zoom({"tilesize": "512"}, "WebMercatorQuad", 15) == 16
    assert copy_read_zoom({"tilesize": "1024"}, "WebMercatorQuad", 15) == 17
    assert copy_read_zoom({}, "CGCS2000Quad", 12) == 12
    assert copy_read_zoom({"reproject": "cubic"}, "WebMercatorQuad", 15) is None


def test_a_datetime_mosaic_reads_each_items_copy(database, tmp_path, monkeypatch):
    """Two items, the newer covering the west half: a tile across its edge is mosaicked from both
    copies (newer first, the gaps from the older), each read without warping."""
    cid = f"mos_{uuid.uuid4().hex[:6]}"
    older = ingest_imagery(write_plain(tmp_path / "old.tif", smooth()), collection=cid, datetime_="2020-01-01",
                           kind="ortho", cog_dir=tmp_path / "cogs", settings=database)
    newer = ingest_imagery(write_plain(tmp_path / "new.tif", 255 - smooth(w=W // 2)), collection=cid,
                           datetime_="2023-01-01", cog_dir=tmp_path / "cogs", settings=database)
    edge = X0 + W // 2 * PX
    t = tile_at(edge, Y0 - 1000, 16)
    watch = Watch(monkeypatch)
    with TestClient(create_app(database)) as client:
        r = client.get(f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png")
        assert r.status_code == 200
        img = decode(r.content)
    assert watch.vrts == []
    assert [name for name, _, _ in watch.reads] == [newer.grids["WebMercatorQuad"]["cog_path"],
                                                    older.grids["WebMercatorQuad"]["cog_path"]]
    assert img[..., 3].min() == 255  # no gap: the older item fills it
    with Reader(newer.grids["WebMercatorQuad"]["cog_path"], tms=WM) as a, \
            Reader(older.grids["WebMercatorQuad"]["cog_path"], tms=WM) as b:
        n, o = a.tile(t.x, t.y, t.z), b.tile(t.x, t.y, t.z)
    has_new = ~n.array.mask[0]
    assert 0.05 < has_new.mean() < 0.95
    expected = np.where(has_new, n.array.data, o.array.data)
    assert np.array_equal(np.moveaxis(img[..., :3], -1, 0), expected)


# -- all or nothing ----------------------------------------------------------------------------------


def test_a_failed_copy_leaves_no_copy_and_no_row(database, tmp_path, conn, monkeypatch):
    cid = f"fail_{uuid.uuid4().hex[:6]}"
    real = ingest_mod.write_grid_copy

    def second_fails(master, dst, tms_id):
        if tms_id == "CGCS2000Quad":
            raise OSError("No space left on device")
        return real(master, dst, tms_id)

    monkeypatch.setattr(ingest_mod, "write_grid_copy", second_fails)
    with pytest.raises(IngestError, match="web-optimised copy on CGCS2000Quad failed.*No space left"):
        ingest_imagery(write_plain(tmp_path / "a.tif", smooth(300, 400)), collection=cid, datetime_="2022-01-01",
                       kind="ortho", cog_dir=tmp_path / "cogs", settings=database)
    assert list((tmp_path / "cogs").rglob("*")) == []  # not the master, not the first copy, no folder
    assert conn.execute("SELECT count(*) FROM imagery_items WHERE collection = %s", (cid,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM imagery_item_grids WHERE collection = %s", (cid,)).fetchone()[0] == 0


def test_an_item_without_copies_gets_them_when_ingested_again(database, tmp_path, conn):
    """An item registered before the copies existed (simulated: its rows and files removed) gets
    them from the next ingest of the same file, which otherwise writes nothing."""
    cid = f"back_{uuid.uuid4().hex[:6]}"
    src = write_plain(tmp_path / "a.tif", smooth(300, 400))
    first = ingest_imagery(src, collection=cid, datetime_="2022-01-01", kind="ortho", cog_dir=tmp_path / "cogs",
                           settings=database)
    conn.execute("DELETE FROM imagery_item_grids WHERE collection = %s", (cid,))
    conn.commit()
    for g in first.grids.values():
        Path(g["cog_path"]).unlink()
    again = ingest_imagery(src, collection=cid, datetime_="2022-01-01", cog_dir=tmp_path / "cogs", settings=database)
    assert again.skipped and again.cog_path == first.cog_path and set(again.grids) == set(GRIDS)
    assert all(Path(g["cog_path"]).exists() for g in again.grids.values())
    assert set(store.imagery.grid_copies(conn, cid, first.item_id)) == set(GRIDS)
    third = ingest_imagery(src, collection=cid, datetime_="2022-01-01", cog_dir=tmp_path / "cogs", settings=database)
    assert third.skipped and third.grids == {}


def test_the_cli_reports_the_copies(database, tmp_path):
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    cid = f"cli_{uuid.uuid4().hex[:6]}"
    out = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "imagery",
                          str(write_plain(tmp_path / "a.tif", smooth(300, 400))), "--collection", cid,
                          "--datetime", "2022-01-01", "--cog-dir", str(tmp_path / "cogs")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "WebMercatorQuad" in text and "CGCS2000Quad" in text and "web-optimised" in text


# -- formats, ETag, the cache ----------------------------------------------------------------------


def test_photographs_default_to_jpeg_everywhere_they_are_advertised(ortho, client, conn, database, tmp_path):
    cid = ortho["cid"]
    assert store.imagery.get_collection(conn, cid).default_format == "jpg"
    doc = client.get(f"/imagery/collections/{cid}").json()
    items = [ln for ln in doc["links"] if ln["rel"] == "item"]
    assert items and all(ln["href"].split("?")[0].endswith(".jpg") and ln["type"] == "image/jpeg" for ln in items)
    assert client.get(f"/imagery/collections/{cid}/tilejson.json").json()["tiles"][0].endswith("{y}.jpg")
    tileset = client.get(f"/imagery/collections/{cid}/map/tiles/WebMercatorQuad").json()
    assert next(ln["type"] for ln in tileset["links"] if ln["rel"] == "item") == "image/jpeg"
    caps = client.get("/wmts/1.0.0/WMTSCapabilities.xml").text
    layer = caps[caps.index(f"<ows:Identifier>{cid}</ows:Identifier>"):]
    assert layer.index("<Format>image/jpeg</Format>") < layer.index("<Format>image/png</Format>")
    # a DEM stays PNG (hillshade / Terrain-RGB)
    dem = f"dem_{uuid.uuid4().hex[:6]}"
    ys, xs = np.mgrid[0:100, 0:100]
    with rasterio.open(tmp_path / "dem.tif", "w", driver="GTiff", width=100, height=100, count=1, dtype="float32",
                       crs="EPSG:4547", transform=from_origin(X0, Y0, 10, 10), nodata=-9999) as dst:
        dst.write((100 + xs * 0.1 + ys * 0.2).astype("float32")[None])
    ingest_imagery(tmp_path / "dem.tif", collection=dem, datetime_="2022-01-01", kind="dem", cog_dir=tmp_path / "c",
                   settings=database)
    assert store.imagery.get_collection(conn, dem).default_format == "png"
    # inside the image a JPEG tile; outside the existing contract: PNG transparent, JPEG 404
    t = tile_at(X0 + 1200, Y0 - 1000, 16)
    r = client.get(f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    far = WM.tile(113.6, 22.45, 16)
    assert client.get(f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}.jpg").status_code == 404
    r = client.get(f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}.png")
    assert r.status_code == 200 and decode(r.content)[..., 3].max() == 0


def test_etag_and_304(ortho, client):
    cid = ortho["cid"]
    t = tile_at(X0 + 1100, Y0 - 900, 15)
    url = f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.jpg"
    first = client.get(url)
    assert first.status_code == 200 and first.headers["etag"].startswith('"')
    assert first.headers["cache-control"] == "public, max-age=0, must-revalidate"
    hits = client.get("/imagery/tiles/cache").json()["hits"]
    second = client.get(url)
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert second.headers["content-type"] == "image/jpeg" and second.headers["content-bbox"] == first.headers["content-bbox"]
    assert second.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert client.get("/imagery/tiles/cache").json()["hits"] == hits + 1
    same = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == first.headers["etag"]
    assert client.get(url, headers={"If-None-Match": '"other", W/' + first.headers["etag"]}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    # the item route, and a format not kept in memory, answer the same way
    for u in (f"/imagery/collections/{cid}/items/{ortho['item'].item_id}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png",
              f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.tif"):
        r = client.get(u)
        assert r.status_code == 200 and r.headers["etag"]
        assert client.get(u, headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_the_cache_follows_the_catalogue(database, tmp_path, conn, auth):
    """A cached tile is not served once the catalogue changed: a newer item over the tile, a
    replaced item, an access level changed by SQL — whoever wrote it, in whichever process."""
    cid = f"inv_{uuid.uuid4().hex[:6]}"
    ingest_imagery(write_plain(tmp_path / "a.tif", smooth()), collection=cid, datetime_="2020-01-01", kind="ortho",
                   cog_dir=tmp_path / "cogs", settings=database)
    t = tile_at(X0 + 1100, Y0 - 900, 16)
    url = f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
    with TestClient(create_app(database)) as client:
        def stats():
            return client.get("/imagery/tiles/cache").json()

        first = client.get(url)
        before = stats()
        assert client.get(url).headers["etag"] == first.headers["etag"] and stats()["hits"] == before["hits"] + 1
        # a newer item over the tile, by the command line (another process)
        env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
        out = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "imagery",
                              str(write_plain(tmp_path / "b.tif", 255 - smooth())), "--collection", cid,
                              "--datetime", "2023-01-01", "--cog-dir", str(tmp_path / "cogs"), "--json"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stderr
        newer = client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert newer.status_code == 200 and newer.headers["etag"] != first.headers["etag"]
        assert np.abs(decode(newer.content)[..., :3].astype(int) - decode(first.content)[..., :3]).mean() > 20
        assert stats()["dropped"] >= 1  # the tiles of the old version went
        # as of before the newer item: the older pixels again
        assert client.get(url, params={"datetime": "2021-01-01"}).content == first.content
        # the newer item replaced by another file (same datetime), in this process
        ingest_imagery(write_plain(tmp_path / "c.tif", smooth(phase=1.0)), collection=cid, datetime_="2023-01-01",
                       cog_dir=tmp_path / "cogs", settings=database)
        replaced = client.get(url)
        assert replaced.headers["etag"] not in (first.headers["etag"], newer.headers["etag"])
        # access level changed by plain SQL: the public no longer sees the cached tile
        assert client.get(url).headers["etag"] == replaced.headers["etag"]
        conn.execute("UPDATE imagery_collections SET access_level = 'internal' WHERE id = %s", (cid,))
        conn.commit()
        assert client.get(url).status_code == 404
        inside = client.get(url, headers=auth("planner"))
        assert inside.status_code == 200 and inside.headers["cache-control"].startswith("private")
        assert inside.content == replaced.content
        again = client.get(url, headers=auth("planner"))  # a hit, still private
        assert again.headers["cache-control"].startswith("private") and "authorization" in again.headers["vary"].lower()


def test_catalogue_version_is_kept_by_triggers(database, conn, tmp_path):
    cid = f"ver_{uuid.uuid4().hex[:6]}"
    s = ingest_imagery(write_plain(tmp_path / "a.tif", smooth(200, 300)), collection=cid, datetime_="2022-01-01",
                       kind="ortho", cog_dir=tmp_path / "cogs", settings=database)
    v0 = store.imagery.catalogue_state(conn, cid)[1]
    conn.execute("UPDATE imagery_collections SET title_en = 'x' WHERE id = %s", (cid,))
    v1 = store.imagery.catalogue_state(conn, cid)[1]
    conn.execute("UPDATE imagery_item_grids SET maxzoom = maxzoom WHERE collection = %s", (cid,))
    v2 = store.imagery.catalogue_state(conn, cid)[1]
    conn.execute("DELETE FROM imagery_items WHERE collection = %s AND item_id = %s", (cid, s.item_id))
    v3 = store.imagery.catalogue_state(conn, cid)
    conn.rollback()
    assert v0 < v1 < v2 < v3[1] and v3[0] == "public"
    # the item's deletion took its copies' rows with it (and they are back with the rollback)
    assert set(store.imagery.grid_copies(conn, cid, s.item_id)) == set(GRIDS)
    with db.connect(database) as other:
        assert store.imagery.catalogue_state(other, cid)[1] == v0
