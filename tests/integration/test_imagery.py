"""The imagery catalogue, `geotwin ingest imagery` and imagery tiles through TiTiler, with real parts:
PostGIS, GeoTIFFs written by rasterio, rio-cogeo's validator, geotwin served by uvicorn, and
``titiler.application`` run by uvicorn in its own process as the reference renderer."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
import uvicorn
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from spatial_api import store
from spatial_api.app import create_app
from spatial_api.ingest import IngestError
from spatial_api.ingest.imagery import ingest_imagery
from tiling.imagery import collections_for_capabilities
from tiling.vector import TMS

WM = morecantile.tms.get("WebMercatorQuad")
TO_LONLAT = Transformer.from_crs(4547, 4326, always_xy=True)
FROM_MERC = Transformer.from_crs(3857, 4547, always_xy=True)
ROOT = Path(__file__).resolve().parents[2]

# The synthetic district: an older image of 2 × 2 km (2 m pixels) and a newer one of its west half.
X0, Y0, PX, SIZE = 525000.0, 2514000.0, 2.0, 1000
WEST_EDGE_X = X0 + SIZE * PX / 2  # the newer image's east edge
OLDER, NEWER = "2020-06-01", "2023-06-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """RGB with fine detail, so that any difference in resampling or windowing shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype("float64")
    base = np.stack([np.sin(xx / 7.0 + seed) * np.cos(yy / 11.0), np.sin((xx + yy) / 13.0), np.cos(xx / 5.0 - yy / 9.0)])
    noise = rng.integers(0, 40, size=(3, h, w))
    return np.clip(110 + 90 * base + noise, 1, 255).astype("uint8")


def write_plain(path: Path, data: np.ndarray, *, x0=X0, y0=Y0, px=PX, crs="EPSG:4547", nodata=None) -> Path:
    """A striped GeoTIFF without overviews: not a COG."""
    count, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=str(data.dtype), transform=from_origin(x0, y0, px, px))
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_cog(path: Path, data: np.ndarray, **kw) -> Path:
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    plain = write_plain(path.with_suffix(".plain.tif"), data, **kw)
    cog_translate(str(plain), str(path), cog_profiles.get("deflate"), quiet=True)
    plain.unlink()
    return path


def dem_height(x, y):
    """Gentle terrain in metres (EPSG:4547 x, y): under 0.7 m change per 10 m pixel."""
    return 120.0 + 20.0 * np.sin((x - X0) / 300.0) * np.cos((y - Y0) / 200.0) + 0.01 * (x - X0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imagery")
    f = {
        "older": write_plain(d / "older.tif", _texture(SIZE, SIZE, 1)),
        "newer": write_cog(d / "newer_cog.tif", 255 - _texture(SIZE, SIZE // 2, 2)),
        "replacement": write_plain(d / "replacement.tif", _texture(200, 300, 3)),
        "no_crs": write_plain(d / "no_crs.tif", _texture(50, 60, 4), crs=None),
        "secret": write_cog(d / "secret.tif", _texture(SIZE, SIZE, 5)),  # valid, NOT in the catalogue
    }
    ys, xs = np.mgrid[0:200, 0:200]
    dem = dem_height(X0 + (xs + 0.5) * 10.0, Y0 - (ys + 0.5) * 10.0).astype("float32")[None]
    f["dem"] = write_plain(d / "dem.tif", dem, px=10.0, nodata=-9999.0)
    truncated = d / "truncated.tif"
    raw = f["older"].read_bytes()
    truncated.write_bytes(raw[: len(raw) * 6 // 10])
    f["truncated"] = truncated
    (d / "not_a_tiff.tif").write_text("id,name\n1,龙岗\n", encoding="utf-8")
    f["not_a_raster"] = d / "not_a_tiff.tif"
    f["dir"] = d
    return f


@pytest.fixture(scope="module")
def catalogue(database, files, tmp_path_factory):
    """Collections ortho (older + partial newer) and dem, ingested by the library call."""
    sfx = uuid.uuid4().hex[:6]
    cog_dir = tmp_path_factory.mktemp("cogs")
    ortho, dem = f"ortho_{sfx}", f"dem_{sfx}"
    s_old = ingest_imagery(files["older"], collection=ortho, datetime_=OLDER, kind="ortho", title="正射影像",
                           cog_dir=cog_dir / ortho, settings=database)
    s_new = ingest_imagery(files["newer"], collection=ortho, datetime_=NEWER, cog_dir=cog_dir / ortho,
                           settings=database)
    s_dem = ingest_imagery(files["dem"], collection=dem, datetime_="2021-01-01", kind="dem", item_id="dem",
                           cog_dir=cog_dir / dem, settings=database)
    return {"ortho": ortho, "dem": dem, "old": s_old, "new": s_new, "dem_item": s_dem, "cog_dir": cog_dir}


@pytest.fixture(scope="module")
def server(database, catalogue):
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(database), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "geotwin did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def titiler():
    """titiler.application (the reference), one uvicorn worker in its own process."""
    port = _free_port()
    env = {**os.environ, "TITILER_API_DISABLE_STAC": "TRUE", "TITILER_API_DISABLE_MOSAIC": "TRUE",
           "TITILER_API_DISABLE_ZARR": "TRUE"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "titiler.application.main:app", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"titiler.application did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def get(url: str, **params) -> httpx.Response:
    return httpx.get(url, params=params, timeout=60)


def png(body: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG"
    return np.asarray(img)


def reference_tile(titiler: str, cog: str, t, fmt: str = "png", **params) -> np.ndarray:
    r = httpx.get(f"{titiler}/cog/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.{fmt}", params={"url": cog, **params},
                  timeout=60)
    assert r.status_code == 200, r.text
    return png(r.content)


def tile_at(x: float, y: float, z: int):
    return WM.tile(*TO_LONLAT.transform(x, y), z)


def catalogue_rows(conn) -> list[tuple]:
    return conn.execute("SELECT collection, item_id, sha256, cog_path FROM imagery_items ORDER BY 1, 2").fetchall()


# -- ingestion -----------------------------------------------------------------------------------


def test_cli_ingest_of_a_plain_geotiff_writes_a_cog_and_an_item(database, files, conn, tmp_path):
    cid = f"cli_{uuid.uuid4().hex[:6]}"
    cog_dir = tmp_path / "cogs"
    cmd = [sys.executable, "-m", "spatial_api", "ingest", "imagery", str(files["older"]), "--collection", cid,
           "--datetime", "2022-03-04", "--kind", "satellite", "--title-en", "GF-2", "--cog-dir", str(cog_dir), "--json"]
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["ok"] and s["converted"] and not s["skipped"] and s["item_id"] == "2022-03-04"
    assert not cog_validate(files["older"], quiet=True)[0]  # the input was not a COG …
    cog = Path(s["cog_path"])
    assert cog.parent == cog_dir.resolve() and cog_validate(cog, quiet=True)[0]  # … the stored file is
    with rasterio.open(cog) as src:
        assert src.overviews(1) and src.compression.name == "deflate" and src.crs.to_epsg() == 4547
        with rasterio.open(files["older"]) as orig:
            assert np.array_equal(src.read(), orig.read())  # lossless
    item = store.imagery.get_item(conn, cid, "2022-03-04")
    assert item.bands == 3 and item.dtype == "uint8" and item.resolution_m == pytest.approx(2.0)
    assert item.crs == "EPSG:4547" and item.converted and item.cog_path == cog
    assert item.file_size == cog.stat().st_size and item.sha256 == s["sha256"] and item.author == "pytest"
    import hashlib

    assert hashlib.sha256(cog.read_bytes()).hexdigest() == item.sha256
    # the footprint is the image's extent in EPSG:4490
    lons, lats = Transformer.from_crs(4547, 4490, always_xy=True).transform(
        [X0, X0 + SIZE * PX, X0, X0 + SIZE * PX], [Y0, Y0, Y0 - SIZE * PX, Y0 - SIZE * PX])
    lon0, lat0, lon1, lat1 = min(lons), min(lats), max(lons), max(lats)
    assert item.bbox == pytest.approx([lon0, lat0, lon1, lat1], abs=1e-6)
    inside = conn.execute("SELECT ST_Contains(footprint, ST_SetSRID(ST_MakePoint(%s, %s), 4490)) FROM imagery_items "
                          "WHERE collection = %s", ((lon0 + lon1) / 2, (lat0 + lat1) / 2, cid)).fetchone()[0]
    assert inside
    col = store.imagery.get_collection(conn, cid)
    assert (col.kind, col.title_en, col.access_level, col.items) == ("satellite", "GF-2", "public", 1)
    # its web-optimised copies, one per served grid, beside it (issue 15)
    assert set(s["grids"]) == {"WebMercatorQuad", "CGCS2000Quad"}
    assert {t: Path(g["cog_path"]) for t, g in s["grids"].items()} == \
        {t: cog_dir.resolve() / "grids" / t / cog.name for t in s["grids"]}
    assert {t: (g.minzoom, g.maxzoom) for t, g in store.imagery.grid_copies(conn, cid, "2022-03-04").items()} == \
        {t: (g["minzoom"], g["maxzoom"]) for t, g in s["grids"].items()}
    # the same file again: nothing written
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] is True and json.loads(again.stdout)["grids"] == {}
    assert sorted(p.name for p in cog_dir.iterdir() if p.is_file()) == [cog.name]
    assert sorted(p.relative_to(cog_dir).as_posix() for p in cog_dir.rglob("*") if p.is_file()) == \
        sorted([cog.name] + [f"grids/{t}/{cog.name}" for t in s["grids"]])
    assert len(store.imagery.list_items(conn, cid)) == 1


@pytest.mark.parametrize("case, expect", [
    ("truncated", "truncated or corrupt"),
    ("no_crs", "no coordinate reference system"),
    ("not_a_raster", "not a readable raster"),
    ("missing", "no such file"),
])
def test_bad_input_is_refused_and_the_catalogue_is_unchanged(database, catalogue, files, conn, tmp_path, case, expect):
    path = files["dir"] / "does_not_exist.tif" if case == "missing" else files[case]
    before = catalogue_rows(conn)
    cog_dir = tmp_path / "cogs"
    with pytest.raises(IngestError) as err:
        ingest_imagery(path, collection=catalogue["ortho"], datetime_="2024-01-01", cog_dir=cog_dir, settings=database)
    message = str(err.value)
    assert str(path) in message and expect in message
    assert catalogue_rows(conn) == before
    assert not cog_dir.exists() or not any(cog_dir.iterdir())
    if case == "no_crs":
        assert "gdal_edit.py -a_srs EPSG:4547" in message  # the fix


def test_cli_error_names_the_file_and_exits_non_zero(database, files):
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    out = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "imagery", str(files["no_crs"]),
                          "--collection", "ortho_cli_err", "--datetime", "2024-01-01"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    text = " ".join(out.stderr.split())
    assert "no_crs.tif" in text and "gdal_edit.py" in text and "Nothing was written" in text


def test_a_new_file_for_the_same_datetime_replaces_the_item(database, files, conn, tmp_path):
    cid = f"rep_{uuid.uuid4().hex[:6]}"
    first = ingest_imagery(files["older"], collection=cid, datetime_="2022-01-01", cog_dir=tmp_path, settings=database)
    second = ingest_imagery(files["replacement"], collection=cid, datetime_="2022-01-01", cog_dir=tmp_path,
                            settings=database)
    assert second.replaced == first.item_id == second.item_id and not second.skipped
    assert not Path(first.cog_path).exists() and Path(second.cog_path).exists()
    items = store.imagery.list_items(conn, cid)
    assert [(i.item_id, i.sha256) for i in items] == [(second.item_id, second.sha256)]
    # an item id already used by another datetime: refused after the COG was written — which is removed
    with pytest.raises(IngestError, match="already has this item"):
        ingest_imagery(files["older"], collection=cid, datetime_="2022-05-05", item_id=second.item_id,
                       cog_dir=tmp_path, settings=database)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [Path(second.cog_path).name]
    # the replaced item's grid copies went with it; the refused one left none
    assert sorted(p for p in (tmp_path / "grids").rglob("*") if p.is_file()) == \
        sorted(Path(g["cog_path"]) for g in second.grids.values())
    assert [(i.item_id, i.sha256) for i in store.imagery.list_items(conn, cid)] == [(second.item_id, second.sha256)]
    # an item named on its first load keeps its name: the same file again without --item-id is a no-op
    named = ingest_imagery(files["older"], collection=cid, datetime_="2021-01-01", item_id="E2021", cog_dir=tmp_path,
                           settings=database)
    again = ingest_imagery(files["older"], collection=cid, datetime_="2021-01-01", cog_dir=tmp_path, settings=database)
    assert again.skipped and again.item_id == named.item_id == "E2021" and again.cog_path == named.cog_path
    # a different kind for an existing collection is refused before anything is written
    with pytest.raises(IngestError, match="--kind 'dem'"):
        ingest_imagery(files["older"], collection=cid, datetime_="2022-06-01", kind="dem", cog_dir=tmp_path,
                       settings=database)


def test_catalogue_lookups(conn, catalogue):
    from datetime import datetime, timezone

    dem = catalogue["dem_item"]
    assert store.imagery.latest_path(conn, catalogue["dem"]) == Path(dem.cog_path)
    assert store.imagery.latest_path(conn, catalogue["dem"], at=datetime(2020, 1, 1, tzinfo=timezone.utc)) is None
    assert store.imagery.latest_path(conn, "no_such_collection") is None
    assert store.imagery.latest_path(conn, catalogue["ortho"]) == Path(catalogue["new"].cog_path)
    assert store.imagery.latest_path(conn, catalogue["ortho"], at=datetime(2022, 1, 1, tzinfo=timezone.utc)) \
        == Path(catalogue["old"].cog_path)
    # items covering a bbox at or before a datetime, newest first
    lon, lat = Transformer.from_crs(4547, 4490, always_xy=True).transform(X0 + 200, Y0 - 1000)  # west half
    box = (lon - 1e-4, lat - 1e-4, lon + 1e-4, lat + 1e-4)
    assert [i for i, _ in store.imagery.items_covering(conn, catalogue["ortho"], box)] == \
        [catalogue["new"].item_id, catalogue["old"].item_id]
    assert [i for i, _ in store.imagery.items_covering(conn, catalogue["ortho"], box,
                                                       at=datetime(2022, 1, 1, tzinfo=timezone.utc))] == \
        [catalogue["old"].item_id]
    lon, lat = Transformer.from_crs(4547, 4490, always_xy=True).transform(X0 + 1800, Y0 - 1000)  # east half
    assert [i for i, _ in store.imagery.items_covering(conn, catalogue["ortho"], (lon, lat, lon + 1e-5, lat + 1e-5))] \
        == [catalogue["old"].item_id]


# -- tiles ---------------------------------------------------------------------------------------


def read_file(summary, t, tms: str = "WebMercatorQuad") -> str:
    """The file geotwin reads tile t of an item from: the item's web-optimised copy on the grid
    when the copy holds the tile's zoom (issue 15), else the item's COG."""
    copy = summary.grids[tms]
    return copy["cog_path"] if copy["minzoom"] <= t.z <= copy["maxzoom"] else summary.cog_path


def test_xyz_tile_equals_titiler_application_pixel_for_pixel(server, titiler, catalogue):
    """The file geotwin reads through geotwin's XYZ template (collection mosaic and single item) and
    through titiler.application's /cog endpoint: identical decoded PNGs, edge tiles (alpha)
    included. Tiles at the zooms of the item's web-optimised copy are read from the copy, the others
    from the COG (the copy against the COG's warped read: test_imagery_grids.py)."""
    cid, old_id = catalogue["ortho"], catalogue["old"].item_id
    east = (X0 + 1500, Y0 - 1000)
    tiles = [tile_at(*east, z) for z in (14, 15, 16, 17)]
    tiles.append(tile_at(X0 + SIZE * PX - 5, Y0 - 5, 16))  # the NE corner: partly outside the image
    assert [read_file(catalogue["old"], t) == catalogue["old"].cog_path for t in tiles] == [False] * 3 + [True, False]
    for t in tiles:
        expected = reference_tile(titiler, read_file(catalogue["old"], t), t)
        ours = get(f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png",
                   datetime="2021-12-31")  # before the newer item: the older one alone
        assert ours.status_code == 200 and ours.headers["content-type"] == "image/png"
        assert np.array_equal(png(ours.content), expected), f"tile {t} differs from titiler.application"
        item = get(f"{server}/imagery/collections/{cid}/items/{old_id}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png")
        assert item.status_code == 200 and np.array_equal(png(item.content), expected)
    assert png(get(f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad/{tiles[-1].z}/{tiles[-1].x}/"
                   f"{tiles[-1].y}.png", datetime="2021-12-31").content)[..., 3].min() == 0  # the edge has alpha
    # rendering parameters pass through as in titiler: one band, rescaled, coloured
    for t in (tiles[2], tiles[3]):  # from the copy, from the COG
        params = {"bidx": "1", "rescale": "0,200", "colormap_name": "viridis"}
        ours = get(f"{server}/imagery/collections/{cid}/items/{old_id}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png",
                   **params)
        assert np.array_equal(png(ours.content), reference_tile(titiler, read_file(catalogue["old"], t), t, **params))
        # JPEG: the same bytes as titiler.application's, under the registered media type
        jpg = get(f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.jpg",
                  datetime="2021-12-31")
        ref = httpx.get(f"{titiler}/cog/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.jpg",
                        params={"url": read_file(catalogue["old"], t)}, timeout=60)
        assert jpg.headers["content-type"] == "image/jpeg" and jpg.content == ref.content
    # the newest item covers nothing east: without datetime the east tile still comes from the older item
    t = tile_at(X0 + 1800, Y0 - 1000, 17)
    ours = get(f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png")
    assert np.array_equal(png(ours.content), reference_tile(titiler, catalogue["old"].cog_path, t))


def test_datetime_mosaic_newest_first_gaps_from_older(server, titiler, catalogue):
    cid = catalogue["ortho"]
    old_cog, new_cog = catalogue["old"].cog_path, catalogue["new"].cog_path
    url = f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad"
    t = tile_at(X0 + 300, Y0 - 1000, 17)  # inside both
    older, newer = reference_tile(titiler, old_cog, t), reference_tile(titiler, new_cog, t)
    assert not np.array_equal(older, newer)

    def ours(**params):
        r = get(f"{url}/{t.z}/{t.x}/{t.y}.png", **params)
        assert r.status_code == 200, r.text
        return png(r.content)

    assert np.array_equal(ours(datetime="2021-12-31"), older)  # between the two: the older
    assert np.array_equal(ours(datetime="2024-01-01"), newer)  # after both: the newer
    assert np.array_equal(ours(datetime=NEWER), newer)  # a date includes items of that day
    assert np.array_equal(ours(datetime="2023-05-31T23:59:59+08:00"), older)
    assert np.array_equal(ours(), newer)  # no datetime: the latest
    nothing_yet = get(f"{url}/{t.z}/{t.x}/{t.y}.png", datetime="2019-01-01")  # before every item
    assert nothing_yet.status_code == 200 and png(nothing_yet.content)[..., 3].max() == 0  # a transparent tile
    # a tile across the newer item's east edge: newer pixels where it has data, the older elsewhere
    # (at z16, each item read from its web-optimised copy)
    t = tile_at(WEST_EDGE_X, Y0 - 1000, 16)
    older = reference_tile(titiler, read_file(catalogue["old"], t), t)
    newer = reference_tile(titiler, read_file(catalogue["new"], t), t)
    assert read_file(catalogue["new"], t) != new_cog
    has_new = newer[..., 3] == 255
    assert 0.05 < has_new.mean() < 0.95
    expected = np.where(has_new[..., None], newer, older)
    assert np.array_equal(ours(), expected)
    assert ours()[..., 3].min() == 255  # no gap: the older item fills it
    # the X-Assets-like answer of the point endpoint: values of both items, newest first
    lon, lat = TO_LONLAT.transform(X0 + 300, Y0 - 1000)
    pt = get(f"{server}/imagery/collections/{cid}/point/{lon},{lat}").json()
    assert [p["name"] for p in pt["assets"]] == [catalogue["new"].item_id, catalogue["old"].item_id]
    assert get(f"{url}/{t.z}/{t.x}/{t.y}.png", datetime="not-a-date").status_code == 400


def test_cgcs2000_quad_tile(server, catalogue, conn):
    from rio_tiler.io import Reader

    cid = catalogue["ortho"]
    grid = TMS.get("CGCS2000Quad")
    z = store.imagery.get_item(conn, cid, catalogue["old"].item_id).zooms["CGCS2000Quad"][1]
    assert z >= 14
    lon, lat = Transformer.from_crs(4547, 4490, always_xy=True).transform(X0 + 1000, Y0 - 1000)  # the centre
    t = grid.tile(lon, lat, z)
    r = get(f"{server}/imagery/collections/{cid}/tiles/CGCS2000Quad/{t.z}/{t.x}/{t.y}.png", datetime="2021-12-31")
    assert r.status_code == 200 and r.headers["content-crs"].endswith("/4490>")
    img = png(r.content)
    assert img.shape == (256, 256, 4) and img[..., 3].min() == 255 and img[..., :3].std() > 10
    # the same tile, read directly from the file geotwin reads it from (the item's copy on CGCS2000Quad)
    with Reader(read_file(catalogue["old"], t, "CGCS2000Quad"), tms=grid) as src:
        direct = src.tile(t.x, t.y, t.z)
    assert read_file(catalogue["old"], t, "CGCS2000Quad") != catalogue["old"].cog_path
    assert np.array_equal(np.moveaxis(img[..., :3], -1, 0), direct.data)


def test_dem_hillshade_and_terrain_rgb(server, catalogue, files):
    cid = catalogue["dem"]
    x, y = X0 + 900, Y0 - 1100
    t = tile_at(x, y, 16)
    url = f"{server}/imagery/collections/{cid}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}"
    raw = get(url + ".npy")
    assert raw.status_code == 200
    arr = np.load(io.BytesIO(raw.content))
    heights, valid = arr[0], arr[1] > 0
    assert heights.shape == (256, 256) and valid.all()
    assert 90 < heights.min() < heights.max() < 170
    # the npy tile holds the DEM's heights: check one pixel against the file, sampled at its centre
    b = WM.xy_bounds(t)
    row, col = 77, 190
    mx, my = b.left + (col + 0.5) * (b.right - b.left) / 256, b.top - (row + 0.5) * (b.top - b.bottom) / 256
    sx, sy = FROM_MERC.transform(mx, my)
    with rasterio.open(files["dem"]) as src:
        sampled = next(src.sample([(sx, sy)]))[0]
    assert abs(heights[row, col] - sampled) < 1.0 and abs(sampled - dem_height(sx, sy)) < 1.0

    rgb = get(url + ".png", algorithm="terrainrgb")
    assert rgb.status_code == 200 and rgb.headers["content-type"] == "image/png"
    px = png(rgb.content).astype("int64")
    decoded = -10000 + (px[..., 0] * 65536 + px[..., 1] * 256 + px[..., 2]) * 0.1
    assert np.abs(decoded - heights).max() <= 0.1
    assert abs(decoded[row, col] - sampled) < 1.0

    shade = get(url + ".png", algorithm="hillshade")
    assert shade.status_code == 200
    img = png(shade.content)
    assert img.shape[:2] == (256, 256)  # the 3-pixel buffer the algorithm crops is read by default
    grey = img[..., 0] if img.ndim == 3 else img
    assert 20 < grey.mean() < 235 and grey.std() > 0.5  # lit slopes and shaded ones
    explicit = get(url + ".png", algorithm="hillshade", buffer="3")
    assert explicit.content == shade.content
    # TileJSON for a MapLibre raster-dem source
    tj = get(f"{server}/imagery/collections/{cid}/tilejson.json", algorithm="terrainrgb").json()
    assert tj["tilejson"] == "3.0.0" and tj["tiles"][0].endswith(".png?algorithm=terrainrgb")
    lon, lat = TO_LONLAT.transform(x, y)
    assert tj["bounds"][0] < lon < tj["bounds"][2] and tj["bounds"][1] < lat < tj["bounds"][3]


def test_requests_naming_files_or_urls_are_refused_and_open_nothing(server, catalogue, files, monkeypatch):
    """No request opens a file outside the catalogue: rasterio.open (what every rio-tiler reader
    calls) is watched while the refused requests run; a valid COG outside the catalogue
    (``secret.tif``) would render if anything opened it."""
    opened: list[str] = []
    real_open = rasterio.open

    def watching_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", watching_open)
    cid, item = catalogue["ortho"], catalogue["old"].item_id
    secret = str(files["secret"])
    t = tile_at(X0 + 1500, Y0 - 1000, 16)
    tile = f"tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
    refused = [
        (f"/imagery/collections/{cid}/{tile}?url=/etc/passwd", 400),
        (f"/imagery/collections/{cid}/{tile}?url=http://example.com/x.tif", 400),
        (f"/imagery/collections/{cid}/{tile}?url={secret}", 400),
        (f"/imagery/collections/{cid}/items/{item}/{tile}?url={secret}", 400),
        (f"/imagery/collections/{cid}/items/{item}/info?url={secret}", 400),
        (f"/imagery/collections/{cid}/tilejson.json?url={secret}", 400),
        (f"/imagery/collections/{cid}/{tile}?URL=/etc/passwd", 400),
        (f"/imagery/collections/..%2F..%2Fetc%2Fpasswd/{tile}", 404),
        ("/imagery/collections/..%2F..%2Fetc%2Fpasswd", 404),
        (f"/imagery/collections/{cid}/items/{secret.replace('/', '%2F')}/{tile}", 404),
        (f"/imagery/collections/{cid}/items/secret.tif/{tile}", 404),
        (f"/imagery/collections/{cid}/items/..%2F..%2F..%2Fsecret.tif/{tile}", 404),
        (f"/imagery/collections/{cid}/items/%2Fetc%2Fpasswd/info", 404),
        (f"/imagery/collections/no_such/{tile}", 404),
        (f"/cog/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?url={secret}", 404),  # titiler's own path: not here
        # and no image of gigabytes for one request
        (f"/imagery/collections/{cid}/{tile}?tilesize=100000", 400),
        (f"/imagery/collections/{cid}/{tile}?buffer=50000", 400),
        (f"/imagery/collections/{cid}/items/{item}/preview/30000x30000.png", 400),
        (f"/imagery/collections/{cid}/items/{item}/preview.png?max_size=99999", 400),
    ]
    for path, code in refused:
        r = httpx.get(server + path, timeout=30)
        assert r.status_code == code, (path, r.status_code, r.text)
        assert 400 <= r.status_code < 500
    r = httpx.get(f"{server}/imagery/collections/{cid}/{tile}?url=/etc/passwd", timeout=30)
    assert "name a collection" in r.json()["description"].lower()
    assert opened == []  # nothing at all was opened for the refused requests
    # positive control: the hook sees what a served tile opens — catalogue files only
    assert httpx.get(f"{server}/imagery/collections/{cid}/{tile}", timeout=30).status_code == 200
    catalogue_files = {s.cog_path for s in (catalogue["old"], catalogue["new"])} | \
        {g["cog_path"] for s in (catalogue["old"], catalogue["new"]) for g in s.grids.values()}
    assert opened and set(opened) <= catalogue_files


def test_collection_documents_and_capabilities(server, catalogue, conn):
    cid = catalogue["ortho"]
    cols = {c["id"]: c for c in get(f"{server}/imagery/collections").json()["collections"]}
    c = cols[cid]
    assert c["kind"] == "ortho" and c["title"] == "正射影像" and c["items"] == 2
    assert [d[:10] for d in c["datetimes"]] == [OLDER, NEWER] and c["datetimes"][0].endswith("+08:00")
    lons, lats = TO_LONLAT.transform([X0, X0 + SIZE * PX, X0, X0 + SIZE * PX], [Y0, Y0, Y0 - SIZE * PX, Y0 - SIZE * PX])
    assert c["bbox"] == pytest.approx([min(lons), min(lats), max(lons), max(lats)], abs=1e-6)
    assert c["minzoom"] <= c["maxzoom"] == 16
    assert all(ln.get("type") for ln in c["links"])
    assert get(f"{server}/imagery/collections/{cid}").json()["id"] == cid
    items = get(f"{server}/imagery/collections/{cid}/items").json()["items"]
    assert [i["id"] for i in items] == [catalogue["new"].item_id, catalogue["old"].item_id]
    assert "cog_path" not in items[0]
    assert [i["id"] for i in get(f"{server}/imagery/collections/{cid}/items", datetime="2022-01-01").json()["items"]] \
        == [catalogue["old"].item_id]
    tj = get(f"{server}/imagery/collections/{cid}/tilejson.json", tms="CGCS2000Quad", datetime="2022-01-01").json()
    # an orthophoto's tiles are advertised as JPEG (issue 15)
    assert tj["tiles"][0].endswith(f"/imagery/collections/{cid}/tiles/CGCS2000Quad/{{z}}/{{x}}/{{y}}.jpg?datetime=2022-01-01")
    caps = {c["id"]: c for c in collections_for_capabilities(conn)}
    cap = caps[cid]
    assert cap["tile_path"] == f"/imagery/collections/{cid}/tiles/{{tms}}/{{z}}/{{x}}/{{y}}.{{format}}"
    assert cap["default_format"] == "jpg" and "png" in cap["formats"] and cap["bbox"] == pytest.approx(c["bbox"])
    assert caps[catalogue["dem"]]["default_format"] == "png"
    assert cap["zooms"]["CGCS2000Quad"] and len(cap["datetimes"]) == 2 and cap["tile_matrix_sets"] == \
        ["WebMercatorQuad", "CGCS2000Quad"]
    # a collection that is not public is not served
    conn.execute("UPDATE imagery_collections SET access_level = 'restricted' WHERE id = %s", (catalogue["dem"],))
    conn.commit()
    try:
        assert get(f"{server}/imagery/collections/{catalogue['dem']}").status_code == 404
        assert catalogue["dem"] not in {c["id"] for c in collections_for_capabilities(conn)}
    finally:
        conn.execute("UPDATE imagery_collections SET access_level = 'public' WHERE id = %s", (catalogue["dem"],))
        conn.commit()


# -- what clients see: the DEM's advertised tiles, tiles outside the data --------------------------


def _fill(template: str, t) -> str:
    """An advertised tile template (XYZ ``{z}/{x}/{y}`` or OGC ``{tileMatrix}/{tileCol}/{tileRow}``) for tile t."""
    return (template.replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y))
            .replace("{tileMatrix}", str(t.z)).replace("{tileCol}", str(t.x)).replace("{tileRow}", str(t.y)))


def test_the_dem_tiles_every_document_advertises_are_visible(server, catalogue):
    """Issue 12 item 8: the DEM tile URL in the collection's links, its TileJSON, its OGC map tileset,
    the WMTS capabilities — and the plain URL itself — showed a 256×256 PNG with alpha 0 everywhere
    (float heights cast to an 8-bit PNG). Each must show terrain: opaque over the data, with relief."""
    cid = catalogue["dem"]
    t = tile_at(X0 + 900, Y0 - 1100, 16)  # well inside the 2 × 2 km DEM
    base = f"{server}/imagery/collections/{cid}"
    doc = get(base).json()
    advertised = {f"collection link ({ln['type']})": ln["href"] for ln in doc["links"]
                  if ln["rel"] == "item" and "/WebMercatorQuad/" in ln["href"]}
    advertised["tilejson"] = get(f"{base}/tilejson.json").json()["tiles"][0]
    tileset = get(f"{base}/map/tiles/WebMercatorQuad").json()
    advertised |= {f"map tileset ({ln['type']})": ln["href"] for ln in tileset["links"] if ln["rel"] == "item"}
    caps = get(f"{server}/wmts/1.0.0/WMTSCapabilities.xml").text
    wmts = [u.replace("&amp;", "&") for u in
            re.findall(rf'template="([^"]*/imagery/collections/{cid}/tiles/[^"]*)"', caps)]
    assert wmts, "the DEM is not in the WMTS capabilities"
    advertised |= {f"WMTS {i}": u.replace("{TileMatrixSet}", "WebMercatorQuad").replace("{TileMatrix}", "{z}")
                   .replace("{TileCol}", "{x}").replace("{TileRow}", "{y}").replace("{Time}", "2021-01-01")
                   for i, u in enumerate(wmts)}
    advertised["plain URL"] = f"{base}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png"
    assert len(advertised) >= 5
    for what, template in advertised.items():
        r = httpx.get(_fill(template, t), timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), (what, r.status_code, r.text[:200])
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
        assert img.shape == (256, 256, 4), what
        assert img[..., 3].min() == 255, f"{what}: transparent pixels over the DEM ({template})"
        grey = img[..., :3].mean(axis=2)
        assert grey.std() > 2 and np.ptp(grey) > 20, f"{what}: no relief visible (std {grey.std():.2f})"
    # the data formats still carry the heights themselves
    raw = np.load(io.BytesIO(get(_fill(f"{base}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.npy", t)).content))
    assert 90 < raw[0].min() < raw[0].max() < 170
    # an explicit rendering is honoured: rescaled heights, not the hillshade
    stretched = png(get(_fill(f"{base}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png", t), rescale="90,170").content)
    shaded = png(get(_fill(f"{base}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png", t), algorithm="hillshade").content)
    assert not np.array_equal(stretched, shaded)
    assert png(get(_fill(f"{base}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png", t)).content).tolist() == shaded.tolist()


def _decode_tile(r: httpx.Response, fmt: str) -> np.ndarray:
    """The alpha / mask of a tile as a client decodes it (PIL for images, rasterio for GeoTIFF, numpy)."""
    if fmt == "npy":
        arr = np.load(io.BytesIO(r.content))
        return arr[-1]
    if fmt == "tif":
        from rasterio.io import MemoryFile

        with MemoryFile(r.content) as mem, mem.open() as ds:
            return ds.dataset_mask()
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3]


def test_tiles_outside_the_data_are_transparent_tiles_of_the_asked_format(server, catalogue):
    """Issue 12 item 8: outside the data (no item there, none yet at the date, outside one item) the
    answer was 204 without a content type, which QGIS logs as "Returned image is flawed". Now: 200
    and a fully transparent tile in the asked format and size; JPEG, which has no transparency,
    gets 404 with an explanation (as TiTiler answers a tile outside a COG)."""
    cid, dem, item = catalogue["ortho"], catalogue["dem"], catalogue["old"].item_id
    far = WM.tile(113.60, 22.45, 16)  # in the grid, kilometres from every item
    inside = tile_at(X0 + 300, Y0 - 1000, 16)
    cgcs = TMS.get("CGCS2000Quad").tile(113.60, 22.45, 16)
    cases = {
        "no item there": (f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}", {}),
        "none yet at the date": (f"/imagery/collections/{cid}/tiles/WebMercatorQuad/{inside.z}/{inside.x}/{inside.y}",
                                 {"datetime": "2019-01-01"}),
        "outside the item": (f"/imagery/collections/{cid}/items/{item}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}", {}),
        "CGCS2000Quad": (f"/imagery/collections/{cid}/tiles/CGCS2000Quad/{cgcs.z}/{cgcs.x}/{cgcs.y}", {}),
        "DEM hillshade": (f"/imagery/collections/{dem}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}",
                          {"algorithm": "hillshade"}),
        "DEM plain": (f"/imagery/collections/{dem}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}", {}),
    }
    media = {"png": "image/png", "webp": "image/webp", "tif": "image/tiff", "npy": "application/x-binary"}
    for what, (path, params) in cases.items():
        for fmt, mtype in media.items():
            r = get(f"{server}{path}.{fmt}", **params)
            assert r.status_code == 200, (what, fmt, r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith(mtype) and r.content, (what, fmt, r.headers)
            alpha = _decode_tile(r, fmt)
            assert alpha.shape == (256, 256) and alpha.max() == 0, (what, fmt)
        r = get(f"{server}{path}", **params)  # no extension: TiTiler picks PNG for a masked tile
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", what
        big = get(f"{server}{path}.png", tilesize="512", **params)
        assert big.status_code == 200 and _decode_tile(big, "png").shape == (512, 512), what
        jpg = get(f"{server}{path}.jpg", **params)
        assert jpg.status_code == 404, (what, jpg.status_code)
        assert jpg.headers["content-type"].startswith("application/json") and ".png" in jpg.json()["description"]
    # the map tileset's templates lead to the same answers
    tileset = get(f"{server}/imagery/collections/{cid}/map/tiles/WebMercatorQuad").json()
    template = next(ln["href"] for ln in tileset["links"] if ln["rel"] == "item" and ln["type"] == "image/png")
    r = httpx.get(_fill(template, far), timeout=60)
    assert r.status_code == 200 and _decode_tile(r, "png").max() == 0
    # WMTS KVP GetTile outside the data: the redirect ends on the same transparent tile
    r = httpx.get(f"{server}/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetTile", "LAYER": cid, "FORMAT": "image/png",
                                            "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": far.z, "TILEROW": far.y,
                                            "TILECOL": far.x}, follow_redirects=True, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and _decode_tile(r, "png").max() == 0


def test_imagery_tiles_carry_caching_headers_fit_for_their_access_level(server, catalogue, conn, auth):
    """Issue 12, item 4: a public collection's tiles may be kept by shared caches; the tiles of a
    collection that is not public are private to the caller, and vary on the credentials."""
    t = tile_at(X0 + 500, Y0 - 500, 14)
    url = f"{server}/imagery/collections/{catalogue['dem']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
    public = httpx.get(url, timeout=60)
    assert public.status_code == 200 and public.headers["cache-control"].startswith("public")
    conn.execute("UPDATE imagery_collections SET access_level = 'internal' WHERE id = %s", (catalogue["dem"],))
    conn.commit()
    try:
        assert httpx.get(url, timeout=60).status_code == 404  # the public does not see it at all
        inside = httpx.get(url, headers=auth("planner"), timeout=60)
        assert inside.status_code == 200
        assert inside.headers["cache-control"].startswith("private") and "public" not in inside.headers["cache-control"]
        assert {"authorization", "x-api-key"} <= {v.strip().lower() for v in inside.headers["vary"].split(",")}
    finally:
        conn.execute("UPDATE imagery_collections SET access_level = 'public' WHERE id = %s", (catalogue["dem"],))
        conn.commit()
