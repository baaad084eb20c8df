"""Vector-tile benchmark: geotwin's XYZ Mapbox Vector Tiles, uncached and from its tile cache, vs
tipg, MapServer, pygeoapi and the raw SQL floor.

Same PostGIS, same data, same run. The large demo district's first survey year is loaded by
geotwin's own ingest into schema ``geotwin_tilebench`` (bench/features.py's ``load_data``), with
the peers' plain table copy ``land_use_current`` beside it. The workload is a fixed list of 304
WebMercatorQuad tiles around (114.25 E, 22.72 N) — z10 ×4, z11 ×12, z12 ×16, z13 ×64, z14 ×80,
z15 ×80, z16 ×48 — one attribute (``dlbm``), extent 4096, buffer 64. Each peer is run as
/work/shared/docs/bench-notes.md says.

The layer's zoom generalisations (tiling/generalise.py: every version's geometry snapped to the
pixel grid of z9 … z13 ahead, read by geotwin's tiles at those zooms) are made right after the load,
timed, before anything is measured.

Measured:
  1. the raw SQL floor: ``ST_AsMVT(ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope(z,x,y),
     4096, 64, true))`` filtered with ``geom && ST_Transform(ST_TileEnvelope(z,x,y, margin =>
     64.0/4096), <srid>)`` over the peers' table, prepared, sequential over one warm psycopg
     connection (the naive floor); the same over geotwin's stored ``geom_3857`` (no per-row
     transform: the exact path); and geotwin's own statements (tiling/vector.py: generalised at
     z9–13, exact at z14+), the same way;
  2. geotwin uncached (``/tiles/land_use/{z}/{x}/{y}.mvt?properties=dlbm``, one uvicorn worker,
     ``GEOTWIN_TILE_CACHE_MB=0``: every request renders);
  3. tipg (``/collections/{schema.table}/tiles/WebMercatorQuad/{z}/{x}/{y}?properties=dlbm``, one
     uvicorn worker, TIPG_TILE_BUFFER=64, TIPG_MAX_FEATURES_PER_TILE=1000000,
     TIPG_SET_MVT_LAYERNAME=true);
  4. MapServer (Debian mapserv, 8 FastCGI processes from spawn-fcgi behind nginx, both written
     into .geotwin/bench/tiles/mapserver/ and started by this script: an MVT OUTPUTFORMAT with
     EXTENT=4096 and EDGE_BUFFER=4, a POSTGIS layer ``using unique id using srid=<srid>`` with
     ``CLOSE_CONNECTION=DEFER`` and ``gml_include_items`` = dlbm; tile mode ``tilemode=gmap``);
  2–4 with ``wrk`` and a Lua script that cycles through the 304 tile paths (fixed shuffled order),
  at 1 and 8 connections, servers alternating;
  5. pygeoapi (MVT-postgresql provider, one uvicorn worker; it always sends every column with a
     256 buffer; path ``{z}/{y}/{x}?f=mvt``) — about a tile a second or slower, so it is timed over
     a subset and a short duration only: the 48 z16 tiles of the list (the same shuffled order as
     wrk), each client (thread of a Python thread pool, whose cost is nil at that rate) cycling
     from its own offset for ``--duration`` seconds at 1 and at 8 clients, the requests under way
     at the deadline completed and counted (tiles / seconds until the last one finished); beside
     geotwin uncached over the same 48 tiles with wrk. Its tile content is compared over the first
     8 of them;
  6. geotwin cached: the default in-process LRU (``GEOTWIN_TILE_CACHE_MB`` unset = 256 MB), warmed
     by one pass over the 304 tiles (with 2 workers, until both workers' caches hold every tile),
     then ``wrk -t2 -c32`` over the same list — with 1 uvicorn worker and with ``--workers 2`` —
     beside the ceiling: a bare FastAPI app (written into .geotwin/bench/tiles/ceiling/) with the
     same route shape answering the same bodies from a dict; with each server's CPU time per
     request (its process group's user + system time over the run).
Tile content is compared first (features per tile, sizes, layer names and attributes, every tile
of every source; the cached tiles must equal the uncached ones byte for byte; geotwin's tiles against
the exact path's per zoom: features and bytes), and EXPLAIN
ANALYZE of geotwin's statement for one z12 and one z16 tile is written to
.geotwin/bench/tiles/explain.txt.

    .venv/bin/python bench/tiles.py [--runs 2] [--duration 20] [--warmup 3]

Needs wrk, mapserv, nginx and spawn-fcgi from Debian (apt-get install -y wrk cgi-mapserver
mapserver-bin nginx-light spawn-fcgi) and the peers' virtualenv (.geotwin/bench/peers-venv, made
by bench/features.py if missing). Helpers shared with the other benches are in bench/_common.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import features as fb  # noqa: E402  (bench/features.py: data, the peers' venv and servers)
from _common import (  # noqa: E402  (bench/_common.py: shared by the HTTP benches)
    LUA, UVICORN_FLAGS, Server, arguments, clean_env, drop_schema, fetch, free_port, geotwin_server, parse, wrk_paths,
    write_block)

SCHEMA = "geotwin_tilebench"
fb.SCHEMA = SCHEMA  # load_data / tipg / pygeoapi helpers read the module global at call time
PEER_TABLE = fb.PEER_TABLE
START, END = "<!-- bench:tiles:start -->", "<!-- bench:tiles:end -->"
CENTRE = (114.25, 22.72)
#: zoom -> (columns, rows) of the block of tiles centred on CENTRE's tile: 304 tiles in all.
BLOCKS = {10: (2, 2), 11: (4, 3), 12: (4, 4), 13: (8, 8), 14: (10, 8), 15: (10, 8), 16: (8, 6)}
EXTENT, BUFFER = 4096, 64
SINGLE_N = 20
CACHED_GOAL = 3000
MAPSERVER_TOOLS = {"mapserv": "cgi-mapserver mapserver-bin", "nginx": "nginx-light", "spawn-fcgi": "spawn-fcgi"}
__all__ = ["LUA", "wrk_paths", "tile_list", "mvt_counts"]  # bench/imagery.py uses tiles.wrk_paths

# The floor, as in docs/shared bench-notes (the filter envelope in the table's own SRID).
FLOOR_SQL = """
SELECT ST_AsMVT(t, 'land_use', 4096, 'geom') FROM (
  SELECT dlbm, ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 64, true) AS geom
  FROM {table}
  WHERE geom && ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => 64.0/4096), {srid})
) t WHERE t.geom IS NOT NULL
"""
# The same over geotwin's store and its stored Web Mercator copy.
FLOOR_3857_SQL = """
SELECT ST_AsMVT(t, 'land_use', 4096, 'geom') FROM (
  SELECT f.properties ->> 'dlbm' AS dlbm,
         ST_AsMVTGeom(f.geom_3857, ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 64, true) AS geom
  FROM {table} f
  WHERE f.layer = 'land_use' AND f.valid_to IS NULL
    AND f.geom_3857 && ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => 64.0/4096)
) t WHERE t.geom IS NOT NULL
"""


def tile_list() -> list[tuple[int, int, int]]:
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    out = []
    for z, (w, h) in BLOCKS.items():
        c = tms.tile(*CENTRE, z)
        x0, y0 = c.x - w // 2, c.y - h // 2
        out += [(z, x, y) for y in range(y0, y0 + h) for x in range(x0, x0 + w)]
    assert len(out) == 304, len(out)
    return out


def _varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def _fields(b):
    """(field number, value) of a protobuf message (a minimal walk, enough for MVT)."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        wt = key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield key >> 3, v


def mvt_counts(body: bytes, with_keys: bool = False) -> dict:
    """Features per layer name of an MVT (Tile.layers=3, Layer.name=1, Layer.features=2,
    Layer.keys=3)."""
    out: dict[str, int] = {}
    for fno, layer in _fields(body):
        if fno != 3:
            continue
        name, n, keys = "", 0, []
        for f, v in _fields(layer):
            if f == 1:
                name = bytes(v).decode()
            elif f == 2:
                n += 1
            elif f == 3:
                keys.append(bytes(v).decode())
        out[name] = out.get(name, 0) + n
        if with_keys:
            out.setdefault("__keys__", set()).update(keys)
    return out


def mvt_features(body: bytes) -> Counter:
    """The features of an MVT as a multiset of (layer, extent, geometry type, encoded geometry,
    sorted attribute key/value pairs): equal for two tiles holding the same features in any order, with
    their attribute tables in any order."""
    out: Counter = Counter()
    for fno, layer in _fields(memoryview(body)):
        if fno != 3:
            continue
        name, feats, keys, values, extent = "", [], [], [], 4096
        for f, v in _fields(layer):
            if f == 1:
                name = bytes(v).decode()
            elif f == 5:
                extent = v
            elif f == 2:
                feats.append(v)
            elif f == 3:
                keys.append(bytes(v))
            elif f == 4:
                values.append(bytes(v))
        for feat in feats:
            tags, gtype, geom = [], 0, b""
            for f, v in _fields(feat):
                if f == 2:
                    i = 0
                    while i < len(v):
                        t, i = _varint(v, i)
                        tags.append(t)
                elif f == 3:
                    gtype = v
                elif f == 4:
                    geom = bytes(v)
            pairs = tuple(sorted((keys[tags[k]], values[tags[k + 1]]) for k in range(0, len(tags), 2)))
            out[(name, extent, gtype, geom, pairs)] += 1
    return out


def same_tile(a: bytes | None, b: bytes | None) -> str:
    """"bytes" if equal, "features" if the same features in another order, "" otherwise."""
    if a == b:
        return "bytes"
    if a is None or b is None:
        return ""
    return "features" if mvt_features(a) == mvt_features(b) else ""


def time_floor(conn, query, tiles) -> tuple[float, dict]:
    """One sequential pass: (seconds, {tile: body})."""
    bodies = {}
    t = time.perf_counter()
    for z, x, y in tiles:
        row = conn.execute(query, {"z": z, "x": x, "y": y}, prepare=True).fetchone()
        bodies[(z, x, y)] = bytes(row[0]) if row and row[0] else b""
    return time.perf_counter() - t, bodies


def time_statements(conn, layer, tiles) -> tuple[float, dict]:
    """geotwin's own statements (tiling/vector.py, generalisations at z9–13), one sequential pass over
    one connection like :func:`time_floor`: (seconds, {tile: body})."""
    from tiling.vector import TileRequest, render_tile

    bodies = {}
    t = time.perf_counter()
    for z, x, y in tiles:
        out = render_tile(conn, [layer], TileRequest("WebMercatorQuad", z, x, y), properties=["dlbm"],
                          generalised={layer.name})
        if out.behind:
            raise SystemExit(f"the generalisations of {layer.name} are not current")
        bodies[(z, x, y)] = out.body
    return time.perf_counter() - t, bodies


def generalised_in(server, paths: list[str], tiles, workers: int = 1) -> None:
    """A geotwin server learns that the layer has current generalisations from its first tile at
    z9–13 (which it renders exactly and which queues a check in the background): ask a few, let the
    check finish, so that every measured tile at those zooms comes from them."""
    low = [p for p, t in zip(paths, tiles) if 9 <= t[0] <= 13]
    for p in low[:4 * workers]:
        fetch(server.base + p)
    time.sleep(2)


def timed_loop(base: str, paths: list[str], clients: int, duration: float) -> tuple[float, int, int]:
    """A slow server's throughput: ``clients`` threads, each cycling through ``paths`` (in wrk's
    shuffled order) from its own offset until ``duration`` seconds have passed; the requests under
    way then are completed and counted. Returns (tiles per second, requests, failed requests)."""
    order = list(paths)
    random.Random(0).shuffle(order)
    deadline = time.perf_counter() + duration

    def worker(k: int) -> tuple[int, int]:
        i, n, failed = k * len(order) // clients, 0, 0
        while time.perf_counter() < deadline:
            status, _, _ = fetch(base + order[i % len(order)], timeout=900)
            n, failed, i = n + 1, failed + (status not in (200, 204)), i + 1
        return n, failed

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        done = list(ex.map(worker, range(clients)))
    secs = time.perf_counter() - t
    n = sum(d[0] for d in done)
    return n / secs, n, sum(d[1] for d in done)


def timed_pass(base: str, paths: list[str], clients: int) -> tuple[float, list[tuple[int, bytes]]]:
    """Every path once with ``clients`` concurrent requests (a thread pool): (seconds, [(status, body)])."""
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        out = [(s, b) for s, b, _ in ex.map(lambda p: fetch(base + p, timeout=900), paths)]
    return time.perf_counter() - t, out


def explain(conn, layer, tile) -> str:
    """EXPLAIN ANALYZE of geotwin's statement for a tile (generalised at z9–13)."""
    from tiling import generalise
    from tiling.vector import MAX_FEATURES, TileRequest, parameters, statement

    z, x, y = tile
    gen = generalise.covers("WebMercatorQuad", z)
    query = statement(layer, "WebMercatorQuad", z, properties=["dlbm"], generalised=gen).as_string(conn)
    params = parameters(TileRequest("WebMercatorQuad", z, x, y), at=None, cap=MAX_FEATURES, generalised=gen)
    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


CEILING_APP = '''"""The ceiling for a cached tile (written by bench/tiles.py): bare FastAPI, the same route
shape and parameters as geotwin's XYZ tile, the same bodies and headers, from a dict."""
import hashlib
import os
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import Response

BODIES = {}
for p in Path(os.environ["TILEBENCH_TILES"]).glob("*.mvt"):
    body = p.read_bytes()
    BODIES[tuple(map(int, p.stem.split("_")))] = (body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
app = FastAPI()


@app.get("/tiles/{layers}/{z}/{x}/{y}.mvt")
async def tile(layers: str, z: int, x: int, y: int, datetime_: str | None = Query(None, alias="datetime"),
               properties: str | None = None):
    body, etag = BODIES[(z, x, y)]
    headers = {"ETag": etag, "Cache-Control": "public, max-age=0, must-revalidate"}
    if not body:
        return Response(status_code=204, headers=headers)
    return Response(body, media_type="application/vnd.mapbox-vector-tile", headers=headers)
'''


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group (a server and
    its workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, …
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- MapServer -------------------------------------------------------------------------------------


class MapServer:
    """Debian's mapserv as FastCGI processes (spawn-fcgi) behind nginx, as bench-notes says: the
    mapfile, MapServer's config file and nginx.conf are written into ``work``; nginx runs in the
    foreground as a child in its own process group; the FastCGI processes (each in a session of
    its own, made by spawn-fcgi) are stopped by the pids spawn-fcgi wrote, with SIGKILL (an idle
    mapserv ignores SIGTERM)."""

    def __init__(self, work: Path, db_url: str, srid: int, ready_tile: tuple[int, int, int], processes: int = 8):
        self.work, self.db_url, self.srid, self.processes = work, db_url, srid, processes
        self.work.mkdir(parents=True, exist_ok=True)
        self.sock, self.pidfile = work / "mapserv.sock", work / "mapserv.pids"
        self.port = free_port()
        self.nginx: Server | None = None
        self.pids: list[int] = []
        z, x, y = ready_tile
        self.ready_path = self.path(z, x, y)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def path(z: int, x: int, y: int) -> str:
        return f"/mapserv?map=TILEBENCH&mode=tile&tilemode=gmap&tile={x}+{y}+{z}&layers=land_use"

    @staticmethod
    def versions() -> dict:
        ms = subprocess.run(["mapserv", "-v"], capture_output=True, text=True).stdout
        ngx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
        return {"mapserver": re.search(r"MapServer version (\S+)", ms).group(1),
                "nginx": re.search(r"nginx/(\S+)", ngx).group(1)}

    def write_files(self) -> None:
        u = urlparse(self.db_url)
        conn = (f"host={u.hostname} port={u.port or 5432} dbname={u.path.lstrip('/')} "
                f"user={unquote(u.username or '')} password={unquote(u.password or '')}")
        mapfile = self.work / "tilebench.map"
        mapfile.write_text(f'''MAP
  NAME "tilebench"
  EXTENT -20037508.342789 -20037508.342789 20037508.342789 20037508.342789
  UNITS METERS
  SIZE 256 256
  PROJECTION "init=epsg:3857" END
  IMAGETYPE "mvt"
  OUTPUTFORMAT
    NAME "mvt"
    DRIVER MVT
    MIMETYPE "application/vnd.mapbox-vector-tile"
    FORMATOPTION "EXTENT={EXTENT}"
    FORMATOPTION "EDGE_BUFFER={BUFFER * 256 // EXTENT}"
  END
  LAYER
    NAME "land_use"
    TYPE POLYGON
    STATUS ON
    CONNECTIONTYPE POSTGIS
    CONNECTION "{conn}"
    DATA "geom from {SCHEMA}.{PEER_TABLE} using unique id using srid={self.srid}"
    PROJECTION "init=epsg:{self.srid}" END
    PROCESSING "CLOSE_CONNECTION=DEFER"
    METADATA
      "gml_include_items" "dlbm"
      "gml_types" "auto"
    END
  END
END
''')
        mapfile.chmod(0o600)  # it holds the database password
        (self.work / "mapserver.conf").write_text(f'''CONFIG
  MAPS
    "TILEBENCH" "{mapfile}"
  END
END
''')
        tmp = self.work / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        params = {"QUERY_STRING": "$query_string", "REQUEST_METHOD": "$request_method",
                  "CONTENT_TYPE": "$content_type", "CONTENT_LENGTH": "$content_length",
                  "SCRIPT_NAME": "$fastcgi_script_name", "REQUEST_URI": "$request_uri",
                  "SERVER_PROTOCOL": "$server_protocol", "GATEWAY_INTERFACE": "CGI/1.1",
                  "SERVER_SOFTWARE": "nginx", "REMOTE_ADDR": "$remote_addr", "SERVER_ADDR": "$server_addr",
                  "SERVER_PORT": "$server_port", "SERVER_NAME": "$server_name"}
        (self.work / "nginx.conf").write_text(f'''{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  fastcgi_temp_path {tmp}/fastcgi;
  proxy_temp_path {tmp}/proxy;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    location = /mapserv {{
      fastcgi_pass unix:{self.sock};
      fastcgi_buffer_size 64k;
      fastcgi_buffers 64 64k;
      fastcgi_read_timeout 600s;
{chr(10).join(f"      fastcgi_param {k} {v};" for k, v in params.items())}
    }}
  }}
}}
''')

    def start(self) -> None:
        self.write_files()
        for p in (self.sock, self.pidfile):
            p.unlink(missing_ok=True)
        env = dict(clean_env(), MAPSERVER_CONFIG_FILE=str(self.work / "mapserver.conf"))
        out = subprocess.run(["spawn-fcgi", "-F", str(self.processes), "-s", str(self.sock), "-M", "0600",
                              "-P", str(self.pidfile), "--", shutil.which("mapserv")],
                             env=env, capture_output=True, text=True, cwd=str(self.work), timeout=60)
        self.pids = [int(p) for p in re.findall(r"PID: (\d+)", out.stdout + out.stderr)]
        if self.pidfile.exists():
            self.pids = sorted(set(self.pids) | {int(p) for p in self.pidfile.read_text().split()})
        if out.returncode != 0 or len(self.pids) != self.processes:
            self.stop()
            raise SystemExit(f"spawn-fcgi failed (exit {out.returncode}, {len(self.pids)} of {self.processes} "
                             f"processes): {out.stdout}{out.stderr}")
        self.nginx = Server("nginx", ["nginx", "-p", str(self.work), "-c", str(self.work / "nginx.conf"),
                                      "-e", str(self.work / "nginx-error.log"), "-g", "daemon off;"],
                            clean_env(), self.port, self.ready_path, self.work)
        try:
            self.nginx.start(timeout=60)
        except SystemExit:
            self.stop()
            raise

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pids = []
        self.sock.unlink(missing_ok=True)


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    ap = arguments(__doc__, runs=2, duration=20, warmup=3)
    ap.add_argument("--cached-connections", type=int, default=32, help="wrk -c for the cached figure")
    ap.add_argument("--mapserver-processes", type=int, default=8)
    args = parse(ap)
    missing = [tool for tool in MAPSERVER_TOOLS if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: apt-get install -y "
                         + " ".join(MAPSERVER_TOOLS[t] for t in missing))

    import importlib.metadata as md

    from psycopg import sql

    from spatial_api import db, store
    from spatial_api.config import Settings

    started = time.perf_counter()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    settings = Settings(db_schema=SCHEMA)
    url = db.database_url(settings)
    venv_py = fb.peer_venv(args.peer_venv or settings.home / "bench" / "peers-venv")
    versions = fb.peer_versions(venv_py)
    gt_versions = {p: md.version(p) for p in ("fastapi", "uvicorn", "psycopg")}
    ms_versions = MapServer.versions()
    tiles = tile_list()
    z1416 = [t for t in tiles if t[0] >= 14]
    z16_block = [t for t in tiles if t[0] == 16]
    subset = z16_block  # pygeoapi's tiles
    z16 = tiles[-1 - BLOCKS[16][0] * (BLOCKS[16][1] // 2)]  # the fixed-cost tile (in the subset)
    work = settings.home / "bench" / "tiles"
    work.mkdir(parents=True, exist_ok=True)
    servers: dict = {}
    floor: dict[str, list[float]] = {"floor": [], "floor_3857": [], "geotwin_sql": []}
    floor_z1416: dict[str, list[float]] = {"floor": [], "floor_3857": [], "geotwin_sql": []}
    results: dict[tuple[str, int], list[dict]] = {}
    sub_results: dict[tuple[str, int], list[float]] = {}
    cached: dict[str, list[dict]] = {}
    content: dict[str, dict] = {}
    plans: dict[str, str] = {}
    single: dict[str, float] = {}
    checks: dict[str, tuple[int, int]] = {}
    med = statistics.median
    notes: list[str] = []
    try:
        facts = fb.load_data(settings, args.size)
        print(f"data loaded: {facts['features']:,} features; peer table {facts['peer_rows']:,} rows "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        from tiling import generalise

        t = time.perf_counter()
        done = generalise.sync(settings, "land_use")
        facts["generalise_s"] = time.perf_counter() - t
        with db.connect(settings, autocommit=True) as conn:
            facts["generalise_mb"], facts["partition_mb"] = (v / 1e6 for v in conn.execute(
                "SELECT pg_total_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
                (generalise.partition_name("land_use"), store.partition_name("land_use"))).fetchone())
        print(f"generalised {done.added:,} versions in {facts['generalise_s']:.1f} s "
              f"({facts['generalise_mb']:.0f} MB beside the partition's {facts['partition_mb']:.0f} MB)", flush=True)
        with db.connect(settings, autocommit=True) as conn:
            srid = int(conn.execute("SELECT Find_SRID(%s, %s, 'geom')", (SCHEMA, PEER_TABLE)).fetchone()[0])
            q_floor = sql.SQL(FLOOR_SQL.format(table=sql.Identifier(SCHEMA, PEER_TABLE).as_string(conn), srid=srid))
            q_3857 = sql.SQL(FLOOR_3857_SQL.format(
                table=sql.Identifier(SCHEMA, store.partition_name("land_use")).as_string(conn)))
            layer = store.get_layer(conn, "land_use")
            passes = {"floor": lambda ts: time_floor(conn, q_floor, ts),
                      "floor_3857": lambda ts: time_floor(conn, q_3857, ts),
                      "geotwin_sql": lambda ts: time_statements(conn, layer, ts)}
            for name, one_pass in passes.items():
                _, content[name] = one_pass(tiles)  # warm: plans prepared, pages cached
            for run in range(args.runs):
                for name, one_pass in passes.items():  # alternating, so that other load falls on all alike
                    secs, _ = one_pass(tiles)
                    floor[name].append(len(tiles) / secs)
                    secs, _ = one_pass(z1416)
                    floor_z1416[name].append(len(z1416) / secs)
                    print(f"run {run + 1} {name:11} {floor[name][-1]:6.1f} tiles/s  (z14–16 "
                          f"{floor_z1416[name][-1]:.1f})", flush=True)
            mid = {z: tiles[sum(w * h for zz, (w, h) in BLOCKS.items() if zz < z)
                         + (BLOCKS[z][0] * BLOCKS[z][1]) // 2 + BLOCKS[z][0] // 2] for z in (12, 16)}
            for z, t in mid.items():
                explain(conn, layer, t)  # warm
                plans[f"z{z} {t[0]}/{t[1]}/{t[2]}"] = explain(conn, layer, t)

        # -- the uncached servers -----------------------------------------------------------------
        servers["geotwin"] = geotwin_server("geotwin", settings, SCHEMA, work, GEOTWIN_TILE_CACHE_MB="0")
        servers["tipg"] = fb.tipg_server(venv_py, url, work, TIPG_TILE_BUFFER=str(BUFFER),
                                         TIPG_TILE_RESOLUTION=str(EXTENT), TIPG_MAX_FEATURES_PER_TILE="1000000",
                                         TIPG_SET_MVT_LAYERNAME="true")
        servers["MapServer"] = MapServer(work / "mapserver", url, srid, z16, args.mapserver_processes)
        # pygeoapi: the MVT-postgresql provider beside the features one; no options (its list
        # options crash it), so it serves both of its grids with every column and a 256 buffer
        tile_provider = fb.pygeoapi_provider(url, type="tile", name="MVT-postgresql",
                                             format={"name": "pbf", "mimetype": "application/vnd.mapbox-vector-tile"})
        servers["pygeoapi"] = fb.pygeoapi_server(venv_py, url, work, name="pygeoapi-tiles",
                                                 extra_providers=[tile_provider])
        paths = {
            "geotwin": [f"/tiles/land_use/{z}/{x}/{y}.mvt?properties=dlbm" for z, x, y in tiles],
            "tipg": [f"/collections/{SCHEMA}.{PEER_TABLE}/tiles/WebMercatorQuad/{z}/{x}/{y}?properties=dlbm"
                     for z, x, y in tiles],
            "MapServer": [MapServer.path(z, x, y) for z, x, y in tiles],
            "pygeoapi": [f"/collections/land_use/tiles/WebMercatorQuad/{z}/{y}/{x}?f=mvt" for z, x, y in tiles],
        }
        wrk_servers = ["geotwin", "tipg", "MapServer"]
        for srv in servers.values():
            srv.start()
        generalised_in(servers["geotwin"], paths["geotwin"], tiles)
        for name in wrk_servers:  # content, and a first (cold-ish) pass
            content[name] = {}
            for t, p in zip(tiles, paths[name]):
                status, body, _ = fetch(servers[name].base + p)
                if status not in (200, 204):
                    notes.append(f"{name} {'/'.join(map(str, t))}: HTTP {status}")
                content[name][t] = body if status in (200, 204) else None
            print(f"content: {name} fetched", flush=True)
        sub_paths = {n: [paths[n][tiles.index(t)] for t in subset] for n in ("geotwin", "pygeoapi")}
        shuffled = list(subset)
        random.Random(0).shuffle(shuffled)
        sample_tiles = shuffled[:8]  # pygeoapi's content: 8 of its tiles at 8 clients, unrecorded
        secs, got = timed_pass(servers["pygeoapi"].base, [paths["pygeoapi"][tiles.index(t)] for t in sample_tiles], 8)
        content["pygeoapi"] = {t: (b if s in (200, 204) else None) for t, (s, b) in zip(sample_tiles, got)}
        bad = [f"{'/'.join(map(str, t))} HTTP {s}" for t, (s, _) in zip(sample_tiles, got) if s not in (200, 204)]
        if bad:
            notes.append("pygeoapi: " + ", ".join(bad))
        print(f"content: pygeoapi fetched ({len(sample_tiles)} tiles in {secs:.0f} s at 8 clients)", flush=True)

        with db.connect(settings, autocommit=True) as conn:
            for name, q in (("floor", q_floor), ("floor_3857", q_3857)):
                ts = []
                for _ in range(SINGLE_N + 5):
                    t0 = time.perf_counter()
                    conn.execute(q, dict(zip("zxy", z16)), prepare=True).fetchone()
                    ts.append((time.perf_counter() - t0) * 1000)
                single[f"{name} SQL"] = med(ts[5:])
            ts = []
            for _ in range(SINGLE_N + 5):
                t0 = time.perf_counter()
                time_statements(conn, layer, [z16])
                ts.append((time.perf_counter() - t0) * 1000)
            single["geotwin SQL"] = med(ts[5:])
        for name, n in (("geotwin", SINGLE_N), ("tipg", SINGLE_N), ("MapServer", SINGLE_N), ("pygeoapi", 3)):
            p = paths[name][tiles.index(z16)]
            ts = []
            for _ in range(n + (5 if n > 3 else 1)):
                t0 = time.perf_counter()
                fetch(servers[name].base + p)
                ts.append((time.perf_counter() - t0) * 1000)
            single[f"{name} HTTP"] = med(ts[-n:])
        print("single z16 tile ms:", {k: round(v, 1) for k, v in single.items()}, flush=True)

        for name in wrk_servers:
            if args.warmup:
                wrk_paths(servers[name].base, paths[name], work / f"{name}.lua", threads=2, connections=8,
                          duration=args.warmup)
        for run in range(args.runs):
            for conns in (1, 8):
                k = (2 * run + conns) % len(wrk_servers)
                order = wrk_servers[k:] + wrk_servers[:k]
                for name in order:
                    r = wrk_paths(servers[name].base, paths[name], work / f"{name}.lua",
                                  threads=min(2, conns), connections=conns, duration=args.duration)
                    results.setdefault((name, conns), []).append(r)
                    flag = f"  !! non-2xx {r['non2xx']} socket errors {r['socket_errors']}" if (
                        r["non2xx"] or r["socket_errors"]) else ""
                    print(f"run {run + 1} c{conns} {name:9} {r['rps']:7.1f} tiles/s  p50 {r['p50']} ms  "
                          f"{r['requests']} requests{flag}", flush=True)
        # pygeoapi's subset, geotwin beside it
        for run in range(args.runs):
            for conns in (1, 8):
                rate, n, failed = timed_loop(servers["pygeoapi"].base, sub_paths["pygeoapi"], conns, args.duration)
                sub_results.setdefault(("pygeoapi", conns), []).append(rate if not failed else 0.0)
                r = wrk_paths(servers["geotwin"].base, sub_paths["geotwin"], work / "geotwin-subset.lua",
                              threads=min(2, conns), connections=conns, duration=args.duration)
                sub_results.setdefault(("geotwin", conns), []).append(r["rps"] if not r["non2xx"] else 0.0)
                print(f"run {run + 1} c{conns} z16: pygeoapi {rate:.2f} tiles/s ({n} tiles"
                      f"{f', {failed} failed' if failed else ''}), geotwin {r['rps']:.1f} tiles/s", flush=True)
        for srv in servers.values():
            srv.stop()
        servers.clear()

        # -- geotwin cached, and bare FastAPI serving the same bodies ------------------------------
        ceiling_dir = work / "ceiling"
        (ceiling_dir / "mvt").mkdir(parents=True, exist_ok=True)
        (ceiling_dir / "tilebench_ceiling.py").write_text(CEILING_APP)
        for t, body in content["geotwin"].items():
            (ceiling_dir / "mvt" / ("%d_%d_%d.mvt" % t)).write_bytes(body or b"")
        for workers in (1, 2):
            w = f"{workers} worker{'s' if workers > 1 else ''}"
            name = f"geotwin cached, {w}"
            servers[name] = geotwin_server(name, settings, SCHEMA, work, workers=workers)
            servers[name].start()
            generalised_in(servers[name], paths["geotwin"], tiles, workers)
            reordered = revalidated = 0
            for t, p in zip(tiles, paths["geotwin"]):
                status, body, headers = fetch(servers[name].base + p)
                same = same_tile(body if status in (200, 204) else None, content["geotwin"][t])
                if same == "features":
                    reordered += 1  # the same features in another order (a parallel plan)
                elif not same:
                    notes.append(f"{name}: tile {'/'.join(map(str, t))} differs from the uncached one")
                again = fetch(servers[name].base + p, headers={"If-None-Match": headers.get("etag", "")})
                revalidated += again[0] == 304
            checks[name] = (reordered, revalidated)
            # every worker must hold every tile: poll the stats (each answer comes from one worker)
            # and warm again until all answers report the whole list
            deadline = time.monotonic() + 120
            while True:
                wrk_paths(servers[name].base, paths["geotwin"], work / "cached.lua", threads=2, connections=8,
                          duration=max(args.warmup, 2))
                stats = [json.loads(fetch(servers[name].base + "/tiles/cache")[1]) for _ in range(8 * workers)]
                if all(s.get("entries", 0) >= len(tiles) and s.get("listening") for s in stats):
                    break
                if time.monotonic() > deadline:
                    notes.append(f"{name}: not every worker's cache held all {len(tiles)} tiles after warming "
                                 f"({sorted({s.get('entries') for s in stats})})")
                    break
            name = f"bare FastAPI, the same bodies from a dict, {w}"
            port = free_port()
            servers[name] = Server(name, [sys.executable, "-m", "uvicorn", "tilebench_ceiling:app", "--app-dir",
                                          str(ceiling_dir), "--port", str(port), "--workers", str(workers),
                                          *UVICORN_FLAGS],
                                   dict(clean_env(), TILEBENCH_TILES=str(ceiling_dir / "mvt")), port,
                                   paths["geotwin"][-1], work)
            servers[name].start()
            wrk_paths(servers[name].base, paths["geotwin"], work / "cached.lua", threads=2, connections=8,
                      duration=max(args.warmup, 2))
        for run in range(args.runs):
            for name in (list(servers) if run % 2 == 0 else list(reversed(servers))):
                cpu0 = group_cpu(servers[name].proc.pid)
                r = wrk_paths(servers[name].base, paths["geotwin"], work / "cached.lua", threads=2,
                              connections=args.cached_connections, duration=args.duration)
                r["cpu_us"] = (group_cpu(servers[name].proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
                cached.setdefault(name, []).append(r)
                flag = f"  !! non-2xx {r['non2xx']} socket errors {r['socket_errors']}" if (
                    r["non2xx"] or r["socket_errors"]) else ""
                print(f"run {run + 1} c{args.cached_connections} {name}: {r['rps']:8.1f} req/s  p50 {r['p50']} ms  "
                      f"p99 {r['p99']} ms  server CPU {r['cpu_us']:.0f} µs/request{flag}", flush=True)
        for name, srv in servers.items():
            if name.startswith("geotwin"):
                print(f"{name}: /tiles/cache after the runs (one worker's):",
                      fetch(srv.base + "/tiles/cache")[1].decode(), flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        if not args.keep:
            drop_schema(settings, SCHEMA)

    elapsed = time.perf_counter() - started
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    block = report(args, facts, srid, tiles, subset, z16, versions, gt_versions, ms_versions, floor, floor_z1416,
                   results, sub_results, cached, checks, content, single, notes, elapsed, load_before, load_after)
    print(block)
    for k, v in plans.items():
        print(f"\n--- EXPLAIN ANALYZE geotwin tile {k} ---\n{v}")
    (work / "explain.txt").write_text("\n\n".join(f"--- {k} ---\n{v}" for k, v in plans.items()))
    print(f"total {elapsed:.0f} s; load average before {' '.join(load_before)}, after {' '.join(load_after)}",
          flush=True)
    if not args.no_write:
        write_block(START, END, block, heading="Vector tiles",
                    intro="`.venv/bin/python bench/tiles.py` runs `bench/tiles.py`: geotwin's XYZ vector tiles, "
                    "uncached and cached, against tipg, MapServer, pygeoapi and the raw `ST_AsMVT` SQL floor, same "
                    "PostGIS rows, same 304 tiles, measured with `wrk`.")


# -- the report ------------------------------------------------------------------------------------


def report(args, facts, srid, tiles, subset, z16, versions, gt_versions, ms_versions, floor, floor_z1416, results,
           sub_results, cached, checks, content, single, notes, elapsed, load_before, load_after) -> str:
    med = statistics.median

    def runs_txt(vals, fmt="{:.1f}"):
        return " / ".join(fmt.format(v) for v in vals)

    def ratio(a, b):
        return f"{a / b:.2f}×" if a and b else "—"

    def rps(name, conns):
        rs = results.get((name, conns))
        return med(r["rps"] for r in rs) if rs and not any(r["non2xx"] for r in rs) else None

    def sub_rps(name, conns):
        vs = sub_results.get((name, conns))
        return med(vs) if vs and all(vs) else None

    # -- content ----------------------------------------------------------------------------------
    sources = ["floor", "floor_3857", "geotwin", "tipg", "MapServer", "pygeoapi"]
    counts = {s: {t: sum(mvt_counts(b).values()) if b else 0 for t, b in content[s].items() if b is not None}
              for s in sources}
    sizes = {s: {t: len(b) for t, b in content[s].items() if b is not None} for s in sources}
    layer_names = {s: sorted({n for b in content[s].values() if b for n in mvt_counts(b)}) for s in sources}
    attr_keys = {s: sorted(set().union(*(mvt_counts(b, True).get("__keys__", set())
                                         for b in content[s].values() if b))) for s in sources}
    summary = []
    for s in sources:
        have = [t for t in tiles if t in counts[s]]
        same = sum(counts[s][t] == counts["floor"][t] for t in have)
        feats, ffeats = sum(counts[s][t] for t in have), sum(counts["floor"][t] for t in have)
        nbytes, fbytes = sum(sizes[s][t] for t in have), sum(sizes["floor"][t] for t in have)
        summary.append(f"| {s} | {len(have)} | {feats:,} ({feats / ffeats:.3f}×) | {same}/{len(have)} | "
                       f"{nbytes / 1e6:.2f} MB ({nbytes / fbytes:.3f}×) | {', '.join(layer_names[s])} | "
                       f"{', '.join(attr_keys[s])} |")
    # geotwin and the floor over geotwin's store against the floor: byte for byte, or else the same
    # features (decoded; one tile at a time, the floor's decoded once)
    kinds: dict[str, dict[str, list]] = {s: {"bytes": [], "features": [], "": []} for s in ("floor_3857", "geotwin")}
    for t in tiles:
        ref, ref_features = content["floor"][t], None
        for s in kinds:
            body = content[s].get(t)
            if body == ref:
                kinds[s]["bytes"].append(t)
                continue
            if ref_features is None:
                ref_features = mvt_features(ref)
            same = body is not None and mvt_features(body) == ref_features
            kinds[s]["features" if same else ""].append(t)
    vs_floor = []
    for s, k in kinds.items():
        dev = max((abs(sizes[s][t] - sizes["floor"][t]) / max(sizes["floor"][t], 1) for t in k["features"]),
                  default=0.0)
        vs_floor.append(
            f"{s}: {len(k['bytes'])} of the {len(tiles)} tiles byte for byte the floor's"
            + (f", {len(k['features'])} the same features in another order (another plan or a parallel one "
               f"returns the rows in another order, so the attribute table is in another order too: sizes "
               f"within {dev * 100:.2f}%)" if k["features"] else "")
            + (f", {len(k[''])} with other features ({', '.join('/'.join(map(str, t)) for t in k[''][:4])})"
               if k[""] else ""))
        # geotwin's tiles at z9–13 come from the generalisations: compared with the exact path below
        other = [t for t in k[""] if s != "geotwin" or t[0] >= 14]
        if other:
            notes.append(f"{s}: {len(other)} tiles{' at z ≥ 14' if s == 'geotwin' else ''} with other features than "
                         f"the floor's")
    # geotwin against the exact path (the same statement over geom_3857 without generalisations), per zoom:
    # features as encoded (geometry and attributes) in the exact tile and not in geotwin's, and the reverse
    per_zoom = []
    for z in BLOCKS:
        zt = [t for t in tiles if t[0] == z and content["geotwin"].get(t) is not None]
        fe, fg = sum(counts["floor_3857"][t] for t in zt), sum(counts["geotwin"][t] for t in zt)
        be, bg = sum(sizes["floor_3857"][t] for t in zt), sum(sizes["geotwin"][t] for t in zt)
        only_e = only_g = 0
        for t in zt:
            a, b = mvt_features(content["floor_3857"][t] or b""), mvt_features(content["geotwin"][t] or b"")
            only_e += sum((a - b).values())
            only_g += sum((b - a).values())
        ident = sum(content["geotwin"][t] == content["floor_3857"][t] for t in zt)
        per_zoom.append(f"| {z} | {'generalised' if 9 <= z <= 13 else 'exact'} | {len(zt)} | {fe:,} | {fg:,} ({fg - fe:+,}) | "
                        f"{only_e:,} / {only_g:,} | {be / 1e6:.2f} MB | {bg / 1e6:.2f} MB "
                        f"({(bg - be) / max(be, 1) * 100:+.2f}%) | {ident}/{len(zt)} |")
    # the middle tile of each zoom's block, and one of pygeoapi's tiles
    sample, i = [], 0
    for z, (w, h) in BLOCKS.items():
        sample.append(tiles[i + (h // 2) * w + w // 2])
        i += w * h
    sample += [t for t in content["pygeoapi"] if t not in sample][:1]
    sample_rows = [f"| {z}/{x}/{y} | " + " | ".join(
        f"{counts[s][(z, x, y)]} / {sizes[s][(z, x, y)] / 1000:.1f} kB" if (z, x, y) in counts[s] else "—"
        for s in sources) + " |" for z, x, y in sample]

    # -- speed ------------------------------------------------------------------------------------
    f1 = med(floor["floor"])
    g1, g8 = rps("geotwin", 1), rps("geotwin", 8)
    rows = [
        f"| raw SQL floor (`ST_Transform` per row, peers' table), 1 connection, sequential | "
        f"{f1:.1f} ({runs_txt(floor['floor'])}) | — | {med(floor_z1416['floor']):.1f} | 1.00× | — |",
        f"| SQL floor on geotwin's stored `geom_3857` (the exact path), 1 connection, sequential | "
        f"{med(floor['floor_3857']):.1f} ({runs_txt(floor['floor_3857'])}) | — | "
        f"{med(floor_z1416['floor_3857']):.1f} | {ratio(med(floor['floor_3857']), f1)} | — |",
        f"| geotwin's statements (`tiling/vector.py`: zoom generalisations at z9–13, exact at z14+), "
        f"1 connection, sequential | {med(floor['geotwin_sql']):.1f} ({runs_txt(floor['geotwin_sql'])}) | — | "
        f"{med(floor_z1416['geotwin_sql']):.1f} | {ratio(med(floor['geotwin_sql']), f1)} | — |",
    ]
    labels = {"geotwin": "geotwin uncached (`/tiles/land_use/{z}/{x}/{y}.mvt`, `GEOTWIN_TILE_CACHE_MB=0`), "
                         "1 worker",
              "tipg": "tipg (`/collections/…/tiles/WebMercatorQuad/{z}/{x}/{y}`), 1 worker",
              "MapServer": f"MapServer (`mode=tile`), {args.mapserver_processes} FastCGI processes behind nginx"}
    for name in ("geotwin", "tipg", "MapServer"):
        r1, r8 = rps(name, 1), rps(name, 8)
        if r1 and r8:
            rows.append(f"| {labels[name]} | {r1:.1f} ({runs_txt(r['rps'] for r in results[(name, 1)])}) "
                        f"| {r8:.1f} ({runs_txt(r['rps'] for r in results[(name, 8)])}) | — | {ratio(r1, f1)} | "
                        + ("—" if name == "geotwin" else f"{ratio(g1, r1)} / {ratio(g8, r8)}") + " |")
        else:
            rows.append(f"| {labels[name]} | failed | failed | — | — | — |")
    p1, p8, s1, s8 = (sub_rps("pygeoapi", 1), sub_rps("pygeoapi", 8), sub_rps("geotwin", 1),
                      sub_rps("geotwin", 8))
    sub_rows = [
        f"| geotwin uncached, wrk | {s1:.1f} ({runs_txt(sub_results[('geotwin', 1)])}) | "
        f"{s8:.1f} ({runs_txt(sub_results[('geotwin', 8)])}) | — |" if s1 and s8
        else "| geotwin uncached | failed | failed | — |",
        f"| pygeoapi (MVT-postgresql, 1 uvicorn worker), thread-pool client | {p1:.2f} "
        f"({runs_txt(sub_results[('pygeoapi', 1)], '{:.2f}')}) | {p8:.2f} "
        f"({runs_txt(sub_results[('pygeoapi', 8)], '{:.2f}')}) | {ratio(s1, p1)} / {ratio(s8, p8)} |"
        if p1 and p8 else "| pygeoapi | failed | failed | — |",
    ]
    cached_rows = []
    cmed = {}
    for name, rs in cached.items():
        ok = not any(r["non2xx"] or r["socket_errors"] for r in rs)
        cmed[name] = med(r["rps"] for r in rs) if ok else None
        is_geotwin = name.startswith("geotwin")
        cached_rows.append(
            f"| {name} | {cmed[name]:,.0f} ({runs_txt((r['rps'] for r in rs), '{:,.0f}')}) | "
            f"{med(r['p50'] for r in rs):.1f} | {med(r['p99'] for r in rs):.1f} | "
            f"{med(r['cpu_us'] for r in rs):,.0f} | "
            + (f"{ratio(cmed[name], g8)} | {'met' if cmed[name] >= CACHED_GOAL else 'NOT met'} |" if is_geotwin
               else "— | — |")
            if ok else f"| {name} | errors: {rs} | — | — | — | — | — |")
    cmed = {n: v for n, v in cmed.items() if n.startswith("geotwin")}
    for name, (reordered, revalidated) in checks.items():
        if reordered:
            notes.append(f"{name}: {reordered} of the {len(tiles)} tiles came back with the uncached tile's "
                         "features but other bytes (large tiles are built by a parallel plan, whose row order "
                         "varies from one rendering to the next)")
        if revalidated != len(tiles):
            notes.append(f"{name}: {len(tiles) - revalidated} of the {len(tiles)} tiles re-requested with their "
                         "ETag in If-None-Match got a 200 instead of a 304 (with several workers the second "
                         "request may reach a worker that renders the tile itself; for a large tile built by a "
                         "parallel plan its bytes, and so its ETag, differ)")
    mean_kb = sum(sizes["geotwin"].values()) / len(tiles) / 1000

    peers = {"tipg": (rps("tipg", 1), rps("tipg", 8)), "MapServer": (rps("MapServer", 1), rps("MapServer", 8))}
    peer_txt = "; ".join(f"{n} {ratio(g1, a)} at 1 client and {ratio(g8, b)} at 8" for n, (a, b) in peers.items())
    faster = all(a and b and g1 and g8 and g1 > a and g8 > b for a, b in peers.values()) and bool(
        p1 and p8 and s1 and s8 and s1 > p1 and s8 > p8)
    within = bool(g1 and f1 / g1 <= 1.3)
    lines = [
        START,
        f"### Vector tiles: {len(tiles)} WebMercatorQuad tiles over {facts['features']:,} land-use polygons "
        f"(geotwin uncached and cached vs tipg, MapServer, pygeoapi and the raw SQL floor)",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, PostgreSQL "
        f"{facts['pg']} (jit {facts['jit']}, the same for every server), PostGIS {facts['postgis']}; geotwin "
        f"(FastAPI {gt_versions['fastapi']}, uvicorn {gt_versions['uvicorn']}, psycopg {gt_versions['psycopg']}); "
        f"tipg {versions['tipg']} (FastAPI {versions['fastapi']}, asyncpg {versions['asyncpg']}, uvicorn "
        f"{versions['uvicorn']}); MapServer {ms_versions['mapserver']} (Debian `mapserv`, FastCGI) behind nginx "
        f"{ms_versions['nginx']}; pygeoapi {versions['pygeoapi']} (Starlette app, SQLAlchemy "
        f"{versions['SQLAlchemy']}, psycopg2 {versions['psycopg2-binary']}). No access logs. 1-minute load "
        f"average {load_before[0]} before the run and {load_after[0]} after it. Whole script {elapsed / 60:.1f} min.",
        "",
        f"Workload: the bench-notes list — the blocks of tiles around (114.25 E, 22.72 N) at z10 ×4, z11 ×12, "
        f"z12 ×16, z13 ×64, z14 ×80, z15 ×80, z16 ×48 (304 tiles), one attribute (`dlbm`), extent {EXTENT}, "
        f"buffer {BUFFER}. Data: `{facts['source']}` through geotwin's ingest (`features_land_use`, EPSG:4490 "
        f"`geom` plus the stored EPSG:3857 `geom_3857`, both GiST); the peers and the floor read the plain copy "
        f"`{PEER_TABLE}` ({facts['peer_rows']:,} rows, `geometry(MultiPolygon, {srid})`, GiST, analysed — see "
        f"Features). geotwin: `/tiles/land_use/{{z}}/{{x}}/{{y}}.mvt?properties=dlbm`, uncached with "
        f"`GEOTWIN_TILE_CACHE_MB=0`. tipg: `/collections/{SCHEMA}.{PEER_TABLE}/tiles/WebMercatorQuad/{{z}}/{{x}}/"
        f"{{y}}?properties=dlbm` with `TIPG_TILE_BUFFER={BUFFER}`, `TIPG_TILE_RESOLUTION={EXTENT}`, "
        f"`TIPG_MAX_FEATURES_PER_TILE=1000000`, `TIPG_SET_MVT_LAYERNAME=true`. geotwin's zoom generalisations of the "
        f"layer (every version snapped to the pixel grids of z9–13 ahead, tiling/generalise.py) were made once "
        f"after the load: {facts['generalise_s']:.1f} s, {facts['generalise_mb']:.0f} MB beside the partition's "
        f"{facts['partition_mb']:.0f} MB. MapServer: `spawn-fcgi -F "
        f"{args.mapserver_processes}` mapserv processes on a Unix socket behind nginx (1 worker process, "
        f"`fastcgi_pass`), a mapfile with an MVT OUTPUTFORMAT (`EXTENT={EXTENT}`, `EDGE_BUFFER="
        f"{BUFFER * 256 // EXTENT}` = a {BUFFER}-unit buffer) and a POSTGIS layer `geom from {SCHEMA}.{PEER_TABLE} "
        f"using unique id using srid={srid}`, `PROCESSING \"CLOSE_CONNECTION=DEFER\"`, `gml_include_items` = dlbm; "
        f"`mapserv?map=…&mode=tile&tilemode=gmap&tile={{x}}+{{y}}+{{z}}&layers=land_use`. Servers: `wrk -t1 -c1` "
        f"and `wrk -t2 -c8`, -d{args.duration}s, with a Lua `request()` cycling through the 304 paths in a "
        f"fixed shuffled order (so that a server too slow to finish the list in {args.duration} s still gets "
        f"every zoom in proportion), after a {args.warmup} s warm-up at 8 clients, {args.runs} runs per cell, "
        f"servers alternating; medians (runs in brackets). The floor: the bench-notes statement "
        f"(`ST_AsMVT(ST_AsMVTGeom(ST_Transform(geom,3857), ST_TileEnvelope(z,x,y), 4096, 64, true))` where "
        f"`geom && ST_Transform(ST_TileEnvelope(z,x,y, margin => 64.0/4096), {srid})`), and the same over "
        f"`geom_3857 && ST_TileEnvelope(z,x,y, margin => 64.0/4096)` on geotwin's store, each prepared and "
        f"timed over one warm psycopg connection, 304 tiles sequentially after one warm pass.",
        "",
        "| source | tiles/s, 1 client | tiles/s, 8 clients | z14–16 only, 1 client | vs SQL floor (1 client) "
        "| geotwin uncached vs this (1 / 8 clients) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"pygeoapi is slower by two orders of magnitude (its MVT-postgresql provider transforms every row by "
        f"SRID *name* and runs `ST_CurveToLine` on it, and sends every column: a z16 tile takes seconds, a z12 "
        f"tile minutes), so it is measured over a subset and a short duration only: the {len(subset)} z16 tiles "
        f"of the list (`/collections/land_use/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}?f=mvt`, no provider "
        f"options), in wrk's shuffled order, each client (a thread of a Python thread pool; at this rate its "
        f"own cost is nil) cycling from its own offset for {args.duration} s, the requests under way at the "
        f"deadline completed and counted, {args.runs} runs at 1 client and at 8; geotwin uncached over the same "
        f"{len(subset)} tiles with wrk, {args.duration} s per cell:",
        "",
        f"| the {len(subset)} z16 tiles | tiles/s, 1 client | tiles/s, 8 clients | geotwin vs pygeoapi (1 / 8) |",
        "|---|---:|---:|---:|",
        *sub_rows,
        "",
        f"Cached tiles: geotwin with its tile cache on (`GEOTWIN_TILE_CACHE_MB` unset: the 256 MB in-process "
        f"LRU per worker), warmed by one pass over the 304 tiles (each compared with the uncached tile, and "
        f"asked again with its ETag in `If-None-Match`), then by wrk until every worker's `/tiles/cache` reports "
        f"all 304 entries; beside it, as the ceiling, a bare FastAPI app with the same route shape and "
        f"parameters (`async def`, typed path and query parameters) answering the same 304 bodies with the same "
        f"headers from a dict. `wrk -t2 -c{args.cached_connections} -d{args.duration}s` over the 304 paths "
        f"(responses average {mean_kb:.1f} kB: the list includes z10–z12 tiles of several MB), {args.runs} runs, "
        f"the four servers alternating. Server CPU per request: the user + system CPU time of the server's "
        f"processes (all workers) during the run divided by the requests answered — unlike req/s it hardly "
        f"depends on what else the machine runs, and 1 s divided by it is what one fully free core could serve:",
        "",
        f"| server | req/s, wrk -t2 -c{args.cached_connections} | p50 ms | p99 ms | server CPU µs / request | "
        f"vs uncached (8 clients) | ≥ {CACHED_GOAL:,} req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *cached_rows,
        "",
        f"Tile content (every tile fetched once from each source; pygeoapi {len(content['pygeoapi'])} of its "
        f"z16 tiles; ratios "
        f"against the floor over the same tiles):",
        "",
        "| source | tiles | features | tiles with the floor's feature count | bytes | layer names | attributes |",
        "|---|---:|---:|---:|---:|---|---|",
        *summary,
        "",
        "| tile | " + " | ".join(f"{s} features / size" for s in sources) + " |",
        "|---|" + "---:|" * len(sources),
        *sample_rows,
        "",
        "Differences in content: tipg filters a tile by the tile's own bounds (an `S_INTERSECTS` with the "
        "unbuffered tile envelope, tipg/collections.py), so features that reach only into the 64-unit buffer "
        "are missing from its tiles; pygeoapi does the same (`ST_Intersects` with the unbuffered envelope) but "
        "clips with a 256-unit buffer and sends all ten columns, hence its larger tiles; MapServer keeps "
        "collinear vertices and clips at its own edge buffer, so its tiles are larger for about the same "
        "features. Against the floor, " + "; ".join(vs_floor) + ".",
        "",
        "geotwin against the exact path (its statement over `geom_3857` without generalisations: the floor_3857 "
        "tiles), per zoom — features as encoded (geometry and attributes) that one has and the other not; at "
        "z9–13 a feature whose snapped geometry is repaired differently, or a sliver below a pixel, may differ:",
        "",
        "| zoom | geotwin path | tiles | exact features | geotwin features | encoded features only exact / only "
        "geotwin | exact bytes | geotwin bytes | tiles byte for byte the exact path's |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *per_zoom,
        "",
        f"Fixed cost per request (z16 tile {'/'.join(map(str, z16))}; median of {SINGLE_N} sequential requests "
        "after warm-up, pygeoapi 3): " + ", ".join(f"{k} {v:.1f} ms" for k, v in single.items()) + ".",
    ]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    best_cached = max((v for v in cmed.values() if v), default=None)
    lines += [
        "",
        "Against issue 15's goal (uncached tiles at ≥ 1.2× the naive floor's tiles/s at 1 client and ≥ 1.5× at 8 "
        "clients, the floor at 1 connection; same features at z ≥ 14): "
        + (f"1 client {g1 / f1:.2f}× — {'met' if g1 / f1 >= 1.2 else 'NOT met'}; 8 clients {g8 / f1:.2f}× — "
           f"{'met' if g8 / f1 >= 1.5 else 'NOT met'}" if g1 and g8 and f1 else "not measured")
        + "; z ≥ 14 tiles with the exact path's features: "
        + f"{sum(1 for t in tiles if t[0] >= 14 and content['geotwin'].get(t) is not None and mvt_features(content['geotwin'][t]) == mvt_features(content['floor_3857'][t]))}"
        + f"/{sum(1 for t in tiles if t[0] >= 14)}.",
        "",
        "Against issue 4's goals: uncached vector tiles within 1.3× of the SQL floor — "
        + (f"met (at 1 client geotwin uncached serves {g1:.1f} tiles/s, the floor {f1:.1f}: floor / geotwin = "
           f"{f1 / g1:.2f}, goal ≤ 1.30)" if within else
           f"NOT met (floor / geotwin = {f1 / g1:.2f}× at 1 client)" if g1 else "not measured")
        + "; faster than every peer — " + ("met" if faster else "NOT met") + f" ({peer_txt}; pygeoapi "
        + (f"{ratio(s1, p1)} / {ratio(s8, p8)} on its subset" if p1 and s1 else "not measured") + ")"
        + f"; cached tiles at ≥ {CACHED_GOAL:,} requests/s — "
        + ("met" if best_cached and best_cached >= CACHED_GOAL else "NOT met") + " ("
        + ", ".join(f"{n} {v:,.0f} req/s" if v else f"{n} failed" for n, v in cmed.items()) + ").",
        "",
        "Reproduce: `.venv/bin/python bench/tiles.py` (defaults: `--runs 2 --duration 20 --warmup 3 "
        "--cached-connections 32 --mapserver-processes 8 --size large`).",
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
