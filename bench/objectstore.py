"""z14 orthophoto tiles from S3 (SeaweedFS on 127.0.0.1) vs the local disk: p50 latency through the
app (uvicorn in a thread, httpx client), uncached (imagery tile cache off: every request renders,
reading the COG copy) and cached (tile cache on). Schema geotwin_bench_k, the demo's E2023 COG.

    .venv/bin/python bench/objectstore.py [S3_PORT]
"""
import os, statistics, sys, time, uuid, json
from pathlib import Path
os.environ["GEOTWIN_DB_SCHEMA"] = "geotwin_bench_k"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import httpx, morecantile
from spatial_api.config import get_settings, reset_settings
from spatial_api import db
from spatial_api.objectstore.server import SeaweedServer
from tests.fixtures.server import live_server

home = Path(os.environ.get("TMPDIR", "/tmp")) / "geotwin_bench_objectstore"; home.mkdir(exist_ok=True)
srv = SeaweedServer(home / "s3", port=int(sys.argv[1]) if len(sys.argv) > 1 else 43333).up()
info = json.loads(srv.server_file.read_text())
os.environ.update(GEOTWIN_S3_ENDPOINT=info["endpoint"], GEOTWIN_S3_KEY=info["key"], GEOTWIN_S3_SECRET=info["secret"],
                  GEOTWIN_S3_BUCKET=info["bucket"])
try:
    reset_settings(); s = get_settings()
    from spatial_api.db.cluster import LocalCluster
    db.migrate(s)
    from spatial_api.ingest.imagery import ingest_imagery
    src = Path("/work/main/.geotwin/imagery/ortho/E2023.9d795ee2b151df2d.tif")
    a = ingest_imagery(src, collection="bench_local", datetime_="2023-11-15", kind="ortho", cog_dir=home / "cogs", settings=s)
    b = ingest_imagery(src, collection="bench_s3", datetime_="2023-11-15", kind="ortho", store="s3", settings=s)
    print(a.cog_path, b.cog_path, file=sys.stderr)
    wm = morecantile.tms.get("WebMercatorQuad")
    from spatial_api import store
    with db.connect(s) as conn:
        bbox = store.imagery.get_collection(conn, "bench_local").bbox
    tiles = list(wm.tiles(bbox[0], bbox[1], bbox[2], bbox[3], [14]))
    print(len(tiles), "z14 tiles", file=sys.stderr)
    from spatial_api.app import create_app
    out = {}
    for cache_mb, label in ((0, "uncached"), (64, "cached")):
        os.environ["GEOTWIN_TILE_CACHE_MB"] = str(cache_mb)
        reset_settings()
        with live_server(create_app(get_settings())) as url, httpx.Client(timeout=60) as c:
            for cid in ("bench_local", "bench_s3"):
                times, first = [], []
                for rnd in range(3):
                    for t in tiles:
                        t0 = time.perf_counter()
                        r = c.get(f"{url}/imagery/collections/{cid}/tiles/WebMercatorQuad/14/{t.x}/{t.y}.jpg")
                        dt = time.perf_counter() - t0
                        assert r.status_code in (200, 404), r.text
                        (first if rnd == 0 else times).append(dt * 1000)
                out[(label, cid)] = (statistics.median(first), statistics.median(times), len(first))
    for (label, cid), (f, t, n) in out.items():
        print(f"{label:9} {cid:12} first pass p50 {f:6.1f} ms   repeat passes p50 {t:6.1f} ms   ({n} tiles)")
finally:
    srv.down()
