"""Object storage (issue 18): a real SeaweedFS S3 server started by `geotwin s3 up` on free ports
(its data in a temporary folder; stopped by `geotwin s3 down` at the end). Imagery ingested to
the bucket is served as the same tile bytes as the same file ingested locally; a tileset built to
the bucket is served with the same glb bytes as a local build; failures leave no object behind;
wrong settings are named. Real parts throughout: PostGIS, SeaweedFS, obstore, GDAL's /vsis3/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spatial_api import db, objectstore, store
from spatial_api.ingest import IngestError
from spatial_api.ingest.imagery import ingest_imagery
from tests.integration.test_imagery_grids import X0, Y0, smooth, tile_at, write_plain
from topology import testing

ROOT = Path(__file__).resolve().parents[2]
S3_VARS = ("GEOTWIN_S3_ENDPOINT", "GEOTWIN_S3_KEY", "GEOTWIN_S3_SECRET", "GEOTWIN_S3_BUCKET", "GEOTWIN_S3_REGION")


def geotwin(*args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=check)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """`geotwin s3 up` in a temporary home on free ports; its settings exported as GEOTWIN_S3_*."""
    home = tmp_path_factory.mktemp("s3home")
    env = {k: v for k, v in os.environ.items() if k not in S3_VARS} | {"GEOTWIN_HOME": str(home)}
    port = testing.free_s3_port()
    up = geotwin("s3", "up", "--port", str(port), env=env, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    saved = {k: os.environ.get(k) for k in S3_VARS}
    try:
        info = json.loads((home / "s3" / "server.json").read_text())
        assert info["endpoint"] == f"http://127.0.0.1:{port}"
        assert oct((home / "s3" / "server.json").stat().st_mode & 0o777) == "0o600"
        os.environ.update(GEOTWIN_S3_ENDPOINT=info["endpoint"], GEOTWIN_S3_KEY=info["key"],
                          GEOTWIN_S3_SECRET=info["secret"], GEOTWIN_S3_BUCKET=info["bucket"])
        yield {"home": home, "env": env, "port": port, **info}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        geotwin("s3", "down", env=env, check=False)


def keys_under(prefix: str) -> set[str]:
    return {m["path"] for m in objectstore.list_keys(prefix)}


# -- the server and the client -------------------------------------------------------------------


def test_s3_status_and_idempotent_up(s3):
    st = geotwin("s3", "status", "--json", env=s3["env"])
    doc = json.loads(st.stdout)
    assert doc["running"] and doc["endpoint"] == s3["endpoint"] and doc["bucket"] == "geotwin"
    again = geotwin("s3", "up", env=s3["env"])  # running already: nothing started, same port
    assert s3["endpoint"] in again.stdout
    assert json.loads(geotwin("s3", "status", "--json", env=s3["env"]).stdout)["pid"] == doc["pid"]


def test_put_get_head_presign_delete_round_trip(s3, tmp_path):
    prefix = f"s3://{s3['bucket']}/rt-{uuid.uuid4().hex[:6]}"
    data = np.random.default_rng(1).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    objectstore.put(f"{prefix}/a.bin", data)
    local = tmp_path / "b.bin"
    local.write_bytes(data[:1000])
    objectstore.put(f"{prefix}/b.bin", local)
    assert objectstore.get(f"{prefix}/a.bin") == data and objectstore.get(f"{prefix}/b.bin") == data[:1000]
    meta = objectstore.head(f"{prefix}/a.bin")
    assert meta["size"] == len(data) and meta["e_tag"]
    assert objectstore.head(f"{prefix}/none.bin") is None and not objectstore.exists(f"{prefix}/none.bin")
    # a presigned URL reads without credentials; with its signature altered it is refused
    url = objectstore.presign(f"{prefix}/a.bin", expires_s=60)
    assert httpx.get(url, timeout=30).content == data
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert httpx.get(url[:-4] + ("0000" if not url.endswith("0000") else "1111"), timeout=30).status_code == 403
    assert httpx.get(url.split("?")[0], timeout=30).status_code == 403  # no anonymous access
    # the Path-like location
    p = objectstore.location(prefix)
    assert isinstance(p, objectstore.ObjectPath) and str(p / "a.bin") == f"{prefix}/a.bin"
    assert p.is_dir() and (p / "a.bin").is_file() and (p / "a.bin").stat().st_size == len(data)
    assert sorted(str(x) for x in p.rglob("*.bin")) == [f"{prefix}/a.bin", f"{prefix}/b.bin"]
    with pytest.raises(objectstore.ObjectStoreError, match=r"'\.\.'"):
        p / "../escape"
    objectstore.delete(f"{prefix}/a.bin")
    (p / "b.bin").unlink()
    assert keys_under(prefix) == set()


# -- imagery -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagery(s3, database, tmp_path_factory):
    """The same GeoTIFF ingested twice: into a local collection and into one in the bucket."""
    d = tmp_path_factory.mktemp("s3img")
    src = write_plain(d / "a.tif", smooth())
    tag = uuid.uuid4().hex[:6]
    local = ingest_imagery(src, collection=f"loc_{tag}", datetime_="2022-01-01", kind="ortho", cog_dir=d / "cogs",
                           settings=database)
    remote = ingest_imagery(src, collection=f"rem_{tag}", datetime_="2022-01-01", kind="ortho",
                            store=f"s3://{s3['bucket']}/imagery", settings=database)
    return {"local": local, "remote": remote, "src": src, "dir": d, "tag": tag}


def test_ingest_to_s3_uploads_the_cog_and_its_copies(imagery, conn, database):
    loc, rem = imagery["local"], imagery["remote"]
    prefix = f"s3://geotwin/imagery/{database.db_schema}/{rem.collection}"
    assert rem.cog_path == f"{prefix}/{rem.item_id}.{rem.sha256[:16]}.tif"
    assert rem.sha256 == loc.sha256 and rem.file_size == loc.file_size  # the same COG, checked the same way
    assert objectstore.get(rem.cog_path) == Path(loc.cog_path).read_bytes()
    item = store.imagery.get_item(conn, rem.collection, rem.item_id)
    assert str(item.cog_path) == rem.cog_path and isinstance(item.cog_path, objectstore.ObjectPath)
    copies = store.imagery.grid_copies(conn, rem.collection, rem.item_id)
    assert set(copies) == {"WebMercatorQuad", "CGCS2000Quad"}
    for tms_id, copy in copies.items():
        assert str(copy.cog_path) == f"{prefix}/grids/{tms_id}/{Path(loc.cog_path).name}"
        assert copy.cog_path.stat().st_size == copy.file_size == loc.grids[tms_id]["file_size"]
    assert keys_under(prefix) == {rem.cog_path.removeprefix("s3://geotwin/")} | {
        str(c.cog_path).removeprefix("s3://geotwin/") for c in copies.values()}
    # nothing left in the local staging folder
    assert not any((database.home / "s3" / "staging").glob("*/*"))
    # the same file again: nothing written (the object is found in the bucket)
    again = ingest_imagery(imagery["src"], collection=rem.collection, datetime_="2022-01-01", settings=database)
    assert again.skipped and not again.grids
    # a copy gone from the bucket is written again from the master, read from the bucket (/vsis3/)
    lost = copies["WebMercatorQuad"].cog_path
    size = lost.stat().st_size
    lost.unlink()
    healed = ingest_imagery(imagery["src"], collection=rem.collection, datetime_="2022-01-01", settings=database)
    assert healed.skipped and set(healed.grids) == {"WebMercatorQuad"} and lost.stat().st_size == size
    assert not any((database.home / "s3" / "staging").glob("*/*"))


def test_tiles_from_s3_are_the_bytes_of_the_local_item(imagery, database):
    from spatial_api.app import create_app

    loc, rem = imagery["local"], imagery["remote"]
    with TestClient(create_app(database)) as client:
        checked = 0
        for tms_id, z in (("WebMercatorQuad", 15), ("WebMercatorQuad", 12), ("CGCS2000Quad", 14)):
            from tiling.vector import TMS

            t = tile_at(X0 + 1200, Y0 - 1000, z, TMS.get(tms_id))
            for fmt in ("png", "jpg"):
                a = client.get(f"/imagery/collections/{loc.collection}/tiles/{tms_id}/{z}/{t.x}/{t.y}.{fmt}")
                b = client.get(f"/imagery/collections/{rem.collection}/tiles/{tms_id}/{z}/{t.x}/{t.y}.{fmt}")
                assert a.status_code == b.status_code == 200, b.text
                assert a.content == b.content and a.headers["etag"] == b.headers["etag"]
                checked += 1
            a = client.get(f"/imagery/collections/{loc.collection}/items/{loc.item_id}/tiles/{tms_id}/{z}/{t.x}/{t.y}.png")
            b = client.get(f"/imagery/collections/{rem.collection}/items/{rem.item_id}/tiles/{tms_id}/{z}/{t.x}/{t.y}.png")
            assert a.status_code == b.status_code == 200 and a.content == b.content
        # the warped read of the master (a kernel other than nearest) and the item's info
        t = tile_at(X0 + 1200, Y0 - 1000, 15)
        q = "?reproject=bilinear"
        a = client.get(f"/imagery/collections/{loc.collection}/tiles/WebMercatorQuad/15/{t.x}/{t.y}.png{q}")
        b = client.get(f"/imagery/collections/{rem.collection}/tiles/WebMercatorQuad/15/{t.x}/{t.y}.png{q}")
        assert a.status_code == b.status_code == 200 and a.content == b.content
        info = client.get(f"/imagery/collections/{rem.collection}/items/{rem.item_id}/info")
        assert info.status_code == 200 and info.json()["width"] == 1200
    assert checked == 6


def test_a_failed_ingest_to_s3_leaves_no_object_and_no_row(imagery, conn, database, tmp_path, monkeypatch):
    rem = imagery["remote"]
    uploaded = []  # what the ingest uploads (observed: the real upload runs)
    real_place = objectstore.place

    def place(tmp, dest):
        real_place(tmp, dest)
        uploaded.append(str(dest))

    monkeypatch.setattr(objectstore, "place", place)
    prefix = f"s3://geotwin/imagery/{database.db_schema}/{rem.collection}"
    before = keys_under(prefix)
    rows_before = conn.execute("SELECT count(*) FROM imagery_item_grids WHERE collection = %s",
                               (rem.collection,)).fetchone()[0]
    other = write_plain(tmp_path / "b.tif", smooth(phase=1.0))
    # the item id of the existing item, for another date: refused by the catalogue in the
    # registering transaction — after the COG and its copies were uploaded
    with pytest.raises(IngestError, match=f"item-id '{rem.item_id}'.*already has this item"):
        ingest_imagery(other, collection=rem.collection, datetime_="2023-05-01", item_id=rem.item_id,
                       store="s3://geotwin/imagery", settings=database)
    assert len(uploaded) == 3 and all(u.startswith(prefix) for u in uploaded)  # the COG and its 2 copies
    assert keys_under(prefix) == before  # … deleted again
    assert conn.execute("SELECT count(*) FROM imagery_item_grids WHERE collection = %s",
                        (rem.collection,)).fetchone()[0] == rows_before
    assert not any((database.home / "s3" / "staging").glob("*/*"))


def test_wrong_settings_are_named_and_nothing_is_written(s3, database, tmp_path, monkeypatch):
    src = write_plain(tmp_path / "c.tif", smooth())
    cid = f"bad_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("GEOTWIN_S3_SECRET", "not-the-secret")
    with pytest.raises(IngestError, match="GEOTWIN_S3_KEY and GEOTWIN_S3_SECRET"):
        ingest_imagery(src, collection=cid, datetime_="2022-01-01", store="s3", settings=database)
    monkeypatch.setenv("GEOTWIN_S3_SECRET", s3["secret"])
    with pytest.raises(IngestError, match="no such bucket.*GEOTWIN_S3_BUCKET"):
        ingest_imagery(src, collection=cid, datetime_="2022-01-01", store="s3://nobucket-here/x", settings=database)
    monkeypatch.setenv("GEOTWIN_S3_ENDPOINT", f"http://127.0.0.1:{testing.free_s3_port()}")
    with pytest.raises(IngestError, match="cannot reach.*GEOTWIN_S3_ENDPOINT"):
        ingest_imagery(src, collection=cid, datetime_="2022-01-01", store="s3", settings=database)
    monkeypatch.delenv("GEOTWIN_S3_KEY")
    with pytest.raises(IngestError, match="GEOTWIN_S3_KEY is not"):
        ingest_imagery(src, collection=cid, datetime_="2022-01-01", store="s3", settings=database)
    with pytest.raises(IngestError, match="--store 'ftp://x'"):
        ingest_imagery(src, collection=cid, datetime_="2022-01-01", store="ftp://x", settings=database)
    with db.connect(database) as c:
        assert store.imagery.get_collection(c, cid) is None
    # the command line says the same and exits non-zero
    env = {**os.environ, "GEOTWIN_S3_ENDPOINT": s3["endpoint"], "GEOTWIN_S3_KEY": "nobody",
           "GEOTWIN_S3_SECRET": "wrong"}
    r = subprocess.run([sys.executable, "-m", "spatial_api", "ingest", "imagery", str(src), "-c", cid, "--datetime",
                        "2022-01-01", "--store", "s3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "GEOTWIN_S3_SECRET" in r.stderr and "Nothing was written" in r.stderr


# -- tilesets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tilesets(s3, database, tmp_path_factory):
    """The same small district built to a folder and to the bucket."""
    from cim_builder.build import build
    from spatial_api.ingest import ingest_vector
    from tests.integration.test_cim_build import buildings, write_dem

    tmp = tmp_path_factory.mktemp("s3cim")
    layer = f"t_s3cim_{uuid.uuid4().hex[:6]}"
    buildings(1).to_file(tmp / "b.gpkg", driver="GPKG")
    ingest_vector(tmp / "b.gpkg", layer=layer, key="building_id", valid_from="2024-01-01", settings=database)
    dem = write_dem(tmp / "dem.tif")
    tag = uuid.uuid4().hex[:6]
    local = build(database, tileset_id=f"l{tag}", layer=layer, dem=dem, out=tmp / "local", max_per_tile=8)
    remote = build(database, tileset_id=f"r{tag}", layer=layer, dem=dem, store=f"s3://{s3['bucket']}/tilesets",
                   max_per_tile=8)
    return {"local": local, "remote": remote, "layer": layer, "dem": dem, "tmp": tmp}


def test_tileset_built_to_s3_is_served_with_the_local_bytes(tilesets, database, monkeypatch):
    from spatial_api.app import create_app

    loc, rem = tilesets["local"], tilesets["remote"]
    prefix = f"s3://geotwin/tilesets/{database.db_schema}/{rem.tileset_id}"
    assert rem.out_dir == prefix and rem.tiles == loc.tiles > 3 and rem.tiles_written == rem.tiles
    with db.connect(database) as c:
        uris = sorted(r[0] for r in c.execute("SELECT uri FROM cim_tiles WHERE tileset_id = %s", (rem.tileset_id,)))
        assert uris == sorted(r[0] for r in c.execute("SELECT uri FROM cim_tiles WHERE tileset_id = %s",
                                                      (loc.tileset_id,)))
    assert keys_under(prefix) == {f"tilesets/{database.db_schema}/{rem.tileset_id}/{u}" for u in uris} | {
        f"tilesets/{database.db_schema}/{rem.tileset_id}/tileset.json"}
    with TestClient(create_app(database)) as client:
        doc = client.get(f"/twin/tilesets/{rem.tileset_id}/tileset.json")
        assert doc.status_code == 200 and doc.headers["content-type"] == "application/json"
        assert doc.headers["access-control-allow-origin"] == "*" and doc.headers["cache-control"] == "public, no-cache"
        local_doc = client.get(f"/twin/tilesets/{loc.tileset_id}/tileset.json").json()
        assert doc.json()["root"] == local_doc["root"]  # same tree, same content uris
        for uri in uris:
            a = client.get(f"/twin/tilesets/{loc.tileset_id}/{uri}", headers={"Accept-Encoding": "identity"})
            b = client.get(f"/twin/tilesets/{rem.tileset_id}/{uri}", headers={"Accept-Encoding": "identity"})
            assert b.status_code == 200 and b.content == a.content and b.content[:4] == b"glTF"
            assert b.headers["content-type"] == "model/gltf-binary" and "immutable" in b.headers["cache-control"]
            assert b.headers["etag"] == objectstore.head(f"{prefix}/{uri}")["e_tag"]
            again = client.get(f"/twin/tilesets/{rem.tileset_id}/{uri}", headers={"If-None-Match": b.headers["etag"]})
            assert again.status_code == 304 and not again.content
        gz = client.get(f"/twin/tilesets/{rem.tileset_id}/tileset.json", headers={"Accept-Encoding": "gzip"})
        assert gz.headers.get("content-encoding") == "gzip" and gz.json() == doc.json()
        assert client.get(f"/twin/tilesets/{rem.tileset_id}/tiles/none.glb").status_code == 404
        escape = client.get(f"/twin/tilesets/{rem.tileset_id}/tiles/%2E%2E/%2E%2E/%2E%2E/x.glb")
        assert escape.status_code == 404 and "not in the tileset" in escape.json()["description"]
        # the option: content by redirect to a presigned URL (tileset.json still served)
        monkeypatch.setenv("GEOTWIN_TILESET_REDIRECT", "presigned")
        r = client.get(f"/twin/tilesets/{rem.tileset_id}/{uris[0]}", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].startswith(s3_endpoint(rem))
        assert httpx.get(r.headers["location"], timeout=30).content == \
            client.get(f"/twin/tilesets/{loc.tileset_id}/{uris[0]}").content
        assert client.get(f"/twin/tilesets/{rem.tileset_id}/tileset.json").status_code == 200


def s3_endpoint(_report) -> str:
    return os.environ["GEOTWIN_S3_ENDPOINT"]


def test_rebuild_stays_in_the_bucket_and_uploads_nothing_unchanged(tilesets, database):
    from cim_builder.build import build

    rem = tilesets["remote"]
    again = build(database, tileset_id=rem.tileset_id, layer=tilesets["layer"], dem=tilesets["dem"], max_per_tile=8)
    assert again.out_dir == rem.out_dir  # the registry's prefix, no --store needed
    assert again.tiles_written == 0 and again.tiles_unchanged == rem.tiles
    assert objectstore.exists(f"{rem.out_dir}/tileset.json")
    assert not any(k.endswith(tuple(f".tmp{p}" for p in (os.getpid(),))) for k in keys_under(rem.out_dir))


def test_the_dem_and_the_supervision_evidence_read_s3_items(imagery):
    """The other readers of catalogue paths: a DEM for `cim build` and two epochs for the
    supervision's evidence / R9 green ratio read an s3:// item as they read the local copy."""
    import shapely

    from cim_builder.geo import Dem
    from land_supervision.evidence import changed_fraction
    from land_supervision.greenness import green_fraction

    loc, rem = imagery["local"], imagery["remote"]
    a, b = Dem.open(loc.cog_path), Dem.open(rem.cog_path)
    assert np.array_equal(a.data, b.data) and a.transform == b.transform and a.crs == b.crs
    parcel = shapely.box(X0 + 100, Y0 - 300, X0 + 400, Y0 - 100)  # EPSG:4547, inside the image
    wkb = lambda epsg: shapely.to_wkb(parcel)
    local = changed_fraction(Path(loc.cog_path), Path(loc.cog_path), wkb, veg_index_min=0.1, brightness_delta=30)
    remote = changed_fraction(rem.cog_path, rem.cog_path, wkb, veg_index_min=0.1, brightness_delta=30)
    assert remote == local and remote["pixels"] > 1000
    import rasterio

    with objectstore.rasterio_env(), rasterio.open(str(rem.cog_path)) as r, rasterio.open(loc.cog_path) as l_:
        assert green_fraction(r, parcel, 0.1) == green_fraction(l_, parcel, 0.1)
