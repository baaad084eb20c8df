"""Hostile input (issue 8): SQL injection through every query parameter of the items endpoint,
out-of-range bbox / zoom / limit, enormous and deeply nested request bodies on the Part 4 write
endpoints, imagery requests naming files or URLs, silly geocoding queries, and zip bombs / path
traversal in archives given to `geotwin ingest vector`.

Each is answered by a real server (uvicorn on a free port) over a real PostGIS schema with a 4xx
and a message that names the parameter, within a time bound, without the server's memory
growing by the size of the attack, and without anything written: the changesets, feature rows
and layer registry are counted before and after.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from spatial_api import store
from spatial_api.ingest import ingest_vector
from spatial_api.ingest.types import IngestError
from tests.fixtures import files
from tests.fixtures.server import free_port

MEMORY_MB = 250  # how much a refused ≤ 16 MB body may raise the server's peak memory
FAST = 5.0  # seconds: a refusal must come quickly (the whole request, on a shared 2-core machine)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(database, tmp_path_factory):
    """A public read-only polygon layer and an editable one, served by uvicorn."""
    tmp = tmp_path_factory.mktemp("hostile")
    suffix = uuid.uuid4().hex[:6]
    plain, editable = f"t_hos_p_{suffix}", f"t_hos_e_{suffix}"
    ingest_vector(files.gpkg(tmp / "p"), layer=plain, key="code", settings=database)
    ingest_vector(files.geojson(tmp / "e"), layer=editable, key="code", settings=database)
    from spatial_api import db

    with db.connect(database) as conn:
        store.update_layer(conn, editable, editable=True)
        conn.commit()
    # The server runs in its own process, so that its memory can be watched (/proc/PID/status).
    port = free_port()
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "spatial_api.app:create_app", "--factory",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
    try:
        yield {"url": url, "plain": plain, "editable": editable, "tmp": tmp, "pid": proc.pid, "log": log}
    finally:
        proc.terminate()
        proc.wait(20)
        log.seek(0)
        errors = log.read()
        assert "Traceback" not in errors, f"the server logged an error:\n{errors[-5000:]}"


def reset_peak(world) -> float:
    """Reset the server's peak-memory mark (Linux: clear_refs 5); returns its current RSS in MB."""
    Path(f"/proc/{world['pid']}/clear_refs").write_text("5")
    return server_mb(world, "VmRSS")


def server_mb(world, field: str = "VmHWM") -> float:
    """The server's peak (VmHWM) or current (VmRSS) resident memory, in MB."""
    for line in Path(f"/proc/{world['pid']}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


_PROBE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _probe_connection(database):
    """One autocommit connection for :func:`state` (a connection per check costs more than it)."""
    from spatial_api import db

    with db.connect(database, autocommit=True) as conn:
        _PROBE["conn"] = conn
        yield
    _PROBE.clear()


def state(database) -> tuple:
    """Everything a write would change: changesets, feature rows (all versions), layers."""
    return _PROBE["conn"].execute(
        "SELECT (SELECT count(*) FROM changesets), (SELECT coalesce(max(id), 0) FROM changesets), "
        "(SELECT count(*) FROM features), (SELECT count(*) FROM layers), "
        "(SELECT md5(string_agg(name || access_level || editable::text, ',' ORDER BY name)) FROM layers)"
    ).fetchone()


def refused(r: httpx.Response, elapsed: float, *words: str, status: int | tuple = (400,),
            within: float = FAST) -> dict:
    """A 4xx with the OGC exception JSON whose description names ``words``, within ``within`` seconds."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert elapsed < within, f"refusal took {elapsed:.1f} s"
    body = r.json()
    assert body.get("code") and body.get("description"), body
    for w in words:
        assert w.lower() in body["description"].lower(), (w, body)
    return body


def timed(method: str, url: str, **kw) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = httpx.request(method, url, timeout=60, **kw)
    return r, time.perf_counter() - t0


# -- SQL injection through the query parameters of /collections/{id}/items ------------------------

INJECTIONS = [
    # (parameter, value, a word the message must contain)
    ("filter", "code = 'x' OR 1=1; DROP TABLE layers; --", "filter"),
    ("filter", "code = 'x'); DELETE FROM changesets; --", "filter"),
    ("filter", "code IN (SELECT fid FROM features)", "filter"),
    ("filter", "\"code\" = 'a' UNION SELECT * FROM pg_user --", "filter"),
    ("filter", "pg_sleep(10) = 1", "filter"),
    ("filter", "S_INTERSECTS(geometry, POLYGON((0 0, 1 1, 0 0)); DROP TABLE layers)", "filter"),
    ("filter", "code = 'a' AND floors = 1::text", "filter"),
    ("filter", "NOT " * 5000 + "code = 'a'", "nested too deeply"),
    ("filter", "floors = " + "+".join(["1"] * 3000), "nested too deeply"),
    ("filter", json.dumps({"op": "and", "args": []}), "filter"),
    ("filter", "\"code; DROP TABLE layers; --\" = 'a'", "filter"),
    ("filter", "(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
               "((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
               * 30, "filter"),
    ("filter-lang", "sql", "filter-lang"),
    ("filter-crs", "EPSG:4326'; DROP TABLE layers; --", "filter-crs"),
    ("sortby", "code; DROP TABLE layers", "sortby"),
    ("sortby", "-code,(SELECT 1)", "sortby"),
    ("sortby", "pg_sleep(10)", "sortby"),
    ("sortby", "code DESC NULLS FIRST", "sortby"),
    ("properties", "code,(SELECT usename FROM pg_user)", "properties"),
    ("properties", "code\"; DROP TABLE layers; --", "properties"),
    ("crs", "EPSG:4326; DROP TABLE layers", "crs"),
    ("crs", "http://www.opengis.net/def/crs/EPSG/0/4326' OR '1'='1", "crs"),
    ("crs", "EPSG:99999999999999999999", "crs"),
    ("bbox-crs", "EPSG:4547) ; DROP TABLE layers; --", "bbox-crs"),
    ("datetime", "2024-01-01'; DROP TABLE layers; --", "datetime"),
    ("datetime", "2024-01-01/2023-01-01", "datetime"),
    ("datetime", "../..; SELECT 1", "datetime"),
    ("bbox", "1,2,3,4); DROP TABLE layers; --", "bbox"),
    ("bbox", "nan,nan,nan,nan", "bbox"),
    ("bbox", "-inf,-90,inf,90", "bbox"),
    ("bbox", "1e308,1e308,1e309,1e309", "bbox"),
    ("bbox", "-200,-100,200,100", "bbox"),
    ("bbox", "10,10,0,0", "bbox"),
    ("bbox", "1,2,3", "bbox"),
    ("limit", "100000000000000000000000", "limit"),
    ("limit", "-1", "limit"),
    ("limit", "1 OR 1=1", "limit"),
    ("offset", "-5", "offset"),
    ("offset", "1; DROP TABLE layers", "offset"),
    ("f", "json'; --", "f"),
    ("offset", "99999999999999999999", ""),
    ("floors", "abc", "floors"),  # queryables as query parameters
    ("floors", "99999999999999999999999", "floors"),
    ("code", "\x00", "code"),
    ("updated", "notadate", "updated"),
    ("filter", "code = '\x00'", ""),
    ("filter", "floors ^ 100000 = 1", ""),
    ("filter", "floors / 0 = 1", "division by zero"),
    ("filter", "S_INTERSECTS(geometry, POLYGON((1e308 1e308, 1 1, 1 0, 1e308 1e308)))", "out of range"),
    ("filter", "S_INTERSECTS(geometry, POLYGON((114 22, 115 23, 115 22, 114 23, 114 22)))", "invalid"),
]


@pytest.mark.parametrize(("param", "value", "word"), INJECTIONS, ids=[f"{p}:{v[:30]}" for p, v, _ in INJECTIONS])
def test_query_parameters_that_try_injection_get_400(world, database, param, value, word):
    before = state(database)
    r, dt = timed("GET", f"{world['url']}/collections/{world['plain']}/items", params={param: value})
    refused(r, dt, *([word] if word else []))
    assert state(database) == before


def test_injection_inside_a_cql2_string_literal_is_only_data(world, database):
    """A well-formed filter whose string literal holds SQL is a comparison with that text: it matches
    nothing, runs as a bound parameter, and the tables are all still there."""
    before = state(database)
    for text in ("x' OR '1'='1", "'; DROP TABLE layers; --", "x%' OR code LIKE '%"):
        literal = "'" + text.replace("'", "''") + "'"
        r, dt = timed("GET", f"{world['url']}/collections/{world['plain']}/items",
                      params={"filter": f"code = {literal}", "limit": 100})
        assert r.status_code == 200 and dt < FAST, r.text[:300]
        assert r.json()["numberReturned"] == 0
    r = httpx.get(f"{world['url']}/collections/{world['plain']}/items", params={"limit": 100})
    assert r.json()["numberReturned"] == 20
    assert state(database) == before


def test_unknown_collection_names_that_look_like_sql(world):
    for name in ("layers;DROP TABLE layers", "t_x%27%20OR%201=1", "..%2F..%2Fetc%2Fpasswd", "a" * 5000):
        r, dt = timed("GET", f"{world['url']}/collections/{name}/items")
        refused(r, dt, status=404)


# -- tiles: zoom, row / column and matrix set out of range ---------------------------------------

TILE_CASES = [
    # (path template, status, word)
    ("/collections/{plain}/tiles/WebMercatorQuad/99/0/0", 404, "zoom"),
    ("/collections/{plain}/tiles/WebMercatorQuad/-1/0/0", 404, ""),
    ("/collections/{plain}/tiles/WebMercatorQuad/14/-1/0", 404, ""),
    ("/collections/{plain}/tiles/WebMercatorQuad/14/0/999999999", 404, ""),
    ("/collections/{plain}/tiles/WebMercatorQuad/14/99999999999999999999999/0", (400, 404), ""),
    ("/collections/{plain}/tiles/NoSuchTMS/14/0/0", 404, "NoSuchTMS"),
    ("/collections/{plain}/tiles/WebMercatorQuad/14/1/1?datetime=never", 400, "datetime"),
    ("/collections/{plain}/tiles/WebMercatorQuad/14/1/1?properties=code,%22;DROP%20TABLE%20layers", 400,
     "properties"),
    ("/tiles/{plain}/30/0/0.mvt", 404, ""),
    ("/tiles/{plain}/5/40/40.mvt", 404, ""),
    ("/tiles/{plain}/5/-1/0.mvt", 404, ""),
    ("/tiles/{plain},nope_layer/14/0/0.mvt", 404, "nope_layer"),
    ("/tiles/{plain};DROP%20TABLE%20layers/14/0/0.mvt", 404, ""),
    ("/tiles/,,,/14/0/0.mvt", 400, "layers"),
    ("/tiles/" + ",".join(["{plain}"] * 2000) + "/14/0/0.mvt", 400, "at most"),
    ("/tiles/{plain},{plain}/14/0/0.mvt", 400, "more than once"),
    ("/tiles/" + ",".join(f"x{i}" for i in range(40)) + "/tilejson.json", 400, "at most"),
]


@pytest.mark.parametrize(("path", "status", "word"), TILE_CASES, ids=[c[0][:60] for c in TILE_CASES])
def test_tiles_out_of_range(world, database, path, status, word):
    before = state(database)
    r, dt = timed("GET", world["url"] + path.format(plain=world["plain"]))
    refused(r, dt, *([word] if word else []), status=status)
    assert state(database) == before


def test_cql2_json_nested_or_enormous(world, database):
    before = state(database)
    url = f"{world['url']}/collections/{world['plain']}/items"
    deep = "[" * 8000 + "]" * 8000  # json.loads would recurse 8000 deep
    text = '{"op": "not", "args": [' * 300 + '{"op": "=", "args": [{"property": "code"}, "a"]}' + "]}" * 300
    for value, word in ((deep, "nested too deeply"), (text, "nested too deeply"), ("{" * 5000, "filter")):
        r, dt = timed("GET", url, params={"filter": value, "filter-lang": "cql2-json"})
        refused(r, dt, word)
    big = " OR ".join(f"code = 'LG-{i:05d}'" for i in range(1500))  # 28 000 characters, 1500 terms
    r, dt = timed("GET", url, params={"filter": big})
    assert r.status_code == 200 and dt < FAST and r.json()["numberReturned"] == 0
    assert state(database) == before


# -- Part 4 writes: enormous, deeply nested and malformed bodies -----------------------------------


def raw_request(base: str, method: str, path: str, headers: dict, chunks, *, chunked: bool = False,
                give_up_after: float = FAST) -> tuple[int, dict, float, int]:
    """Send a request over a plain socket, streaming ``chunks`` until the server answers (it may
    answer before the body is complete, as it should for a body it refuses). Returns the status,
    the JSON body, the seconds until the answer and the bytes sent."""
    import select

    u = urlsplit(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: {u.hostname}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    sock.sendall((head + "\r\n").encode())
    t0, sent, answer = time.perf_counter(), 0, b""
    try:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered already
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            assert time.perf_counter() - t0 < give_up_after * 6, "the server kept reading the body"
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        sock.settimeout(give_up_after * 2)
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _content_length(answer):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    finally:
        elapsed = time.perf_counter() - t0
        sock.close()
    status = int(answer.split(b" ", 2)[1])
    body = answer.split(b"\r\n\r\n", 1)[1]
    return status, (json.loads(body) if body else {}), elapsed, sent


def _content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def _megabytes(n: int):
    block = (b'{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[' +
             b"[114.26, 22.73], " * 60_000)[: 1 << 20]
    yield block[:1 << 20]
    filler = b"[114.26, 22.73], " * 61_681
    for _ in range(n - 1):
        yield filler[: 1 << 20]


@pytest.mark.parametrize(("method", "chunked"), [("POST", False), ("POST", True), ("PUT", False), ("PATCH", True)],
                         ids=["POST-content-length", "POST-chunked", "PUT-content-length", "PATCH-chunked"])
def test_a_200_mb_body_is_refused_without_reading_it(world, database, auth, method, chunked):
    before, rss0 = state(database), reset_peak(world)
    path = f"/collections/{world['editable']}/items" + ("" if method == "POST" else "/LG-0001")
    headers = {**auth("gis-staff"), "Content-Type": "application/geo+json", "If-Match": '"1"'}
    if not chunked:
        headers["Content-Length"] = str(200 << 20)
    status, body, dt, sent = raw_request(world["url"], method, path, headers, _megabytes(200), chunked=chunked)
    assert status == 413, (status, body)
    d = body["description"]
    if chunked:  # the write endpoint's own 16 MB limit, met as the body streams in
        assert "16 MB" in d and "geotwin ingest vector" in d
    else:  # a declared 200 MB is refused by the server-wide limit before the endpoint runs
        assert "over the server's limit" in d
    assert dt < FAST and sent < 40 << 20, (dt, sent)  # answered long before 200 MB went over the wire
    assert server_mb(world) - rss0 < 60, "the server's memory grew by the body"
    assert state(database) == before


def _feature(geometry, code="HX-1", **props) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": {"code": code, **props}}


def _bowtie(n: int) -> dict:
    """A self-intersecting ring (a bow tie) of n vertices: a JSON body of ~n * 40 bytes."""
    edge = [[114.26 + 0.01 * i / n, 22.73 + 0.01 * i / n] for i in range(n)]
    return {"type": "Polygon", "coordinates": [edge + [[114.27, 22.74], [114.27, 22.73], [114.26, 22.74], edge[0]]]}


def _square() -> dict:
    return {"type": "Polygon", "coordinates": [[[114.26, 22.73], [114.261, 22.73], [114.261, 22.731], [114.26, 22.73]]]}


DEEP = b'{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": ' + \
    b"[" * 50_000 + b"]" * 50_000 + b"}}"
BODIES = [
    # (id, body bytes or JSON, status, word)
    ("nested-50000", DEEP, 400, "nests"),
    ("nested-properties", b'{"type": "Feature", "geometry": null, "properties": {"code": ' + b'{"a": ' * 500 + b"1"
     + b"}" * 500 + b"}}", 400, "nests"),
    ("not-json", b"\x00\xff\xfe garbage {", 400, "JSON"),
    ("invalid-utf8", b'{"type": "Feature", "properties": {"code": "\xff\xfe"}}', 400, "JSON"),
    ("json-array", b"[" + b"1," * 100_000 + b"1]", 400, "Feature"),
    ("feature-collection", {"type": "FeatureCollection", "features": [_feature(None, f"F{i}") for i in range(5000)]},
     400, "Feature"),
    ("properties-list", {"type": "Feature", "geometry": None, "properties": [["code", "x"]]}, 400, "properties"),
    ("properties-string", {"type": "Feature", "geometry": None, "properties": "code=x"}, 400, "properties"),
    ("10000-unknown-properties", _feature(_square(), **{f"p{i}": i for i in range(10_000)}), 400,
     "not in the layer schema"),
    ("geometry-string", _feature("POLYGON((0 0, 1 1, 1 0, 0 0))"), 400, "geometry"),
    ("geometry-nan", b'{"type": "Feature", "properties": {"code": "HX-2"}, "geometry": {"type": "Polygon", '
     b'"coordinates": [[[NaN, 22.7], [114.3, 22.7], [114.3, 22.8], [NaN, 22.7]]]}}', 400, "geometry"),
    ("geometry-infinity", b'{"type": "Feature", "properties": {"code": "HX-3"}, "geometry": {"type": "Polygon", '
     b'"coordinates": [[[1e999, 22.7], [114.3, 22.7], [114.3, 22.8], [1e999, 22.7]]]}}', 400, "geometry"),
    ("geometry-collection", _feature({"type": "GeometryCollection", "geometries": [_bowtie(5)] * 1000}), 400,
     "geometry"),
    ("self-intersecting-200k-vertices", _feature(_bowtie(200_000)), 400, "invalid"),
    ("out-of-range", _feature({"type": "Polygon", "coordinates": [[[500, 95], [501, 95], [501, 96], [500, 95]]]}),
     400, "geometry"),
    ("huge-string-property", _feature(_square(), name="名" * 3_000_000), 400, "at most 100,000"),
]


#: PUT and PATCH read and check bodies with the same code as POST: a few cases for each suffice.
ALSO_PUT_PATCH = {"nested-properties", "not-json", "feature-collection", "properties-list", "geometry-nan",
                  "out-of-range"}
CASES = [pytest.param(m, *b[1:], id=f"{m}-{b[0]}") for b in BODIES for m in ("POST", "PUT", "PATCH")
         if m == "POST" or b[0] in ALSO_PUT_PATCH]


@pytest.mark.parametrize(("method", "body", "status", "word"), CASES)
def test_hostile_feature_bodies(world, database, auth, method, body, status, word):
    before, rss0 = state(database), reset_peak(world)
    url = f"{world['url']}/collections/{world['editable']}/items"
    if method != "POST":
        url += "/LG-0001"
        etag = httpx.get(url).headers["etag"]
    if isinstance(body, dict) and method != "POST" and isinstance(body.get("properties"), dict):
        body = {**body, "properties": {**body["properties"], "code": "LG-0001"}}  # the id of the URL
    content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers = {**auth("gis-staff"), "Content-Type": "application/geo+json"}
    if method != "POST":
        headers["If-Match"] = etag
    r, dt = timed(method, url, content=content, headers=headers)
    if method == "PATCH" and word == "geometry" and r.status_code == 200:
        pytest.fail(f"PATCH accepted {body!r:.200}")
    # Bodies of several MB take a while to parse on a loaded 2-core machine; the rest are quick.
    refused(r, dt, *([word] if word else []), status=status, within=FAST if len(content) < 1 << 20 else 3 * FAST)
    assert server_mb(world) - rss0 < MEMORY_MB, f"the server's memory grew by {server_mb(world) - rss0:.0f} MB"
    assert state(database) == before


# -- archives given to `geotwin ingest vector`: zip bombs and path traversal -----------------------


def _cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    done = subprocess.run([str(REPO / ".venv/bin/geotwin"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    return done, time.perf_counter() - t0


def _shapefile_members(tmp: Path) -> dict[str, bytes]:
    shp = files.shapefile(tmp / "src")
    return {f.name: f.read_bytes() for f in sorted(shp.parent.iterdir())}


def _bomb(path: Path, members: dict[str, bytes]) -> Path:
    """The parcels shapefile whose .dbf is followed by a 128 MB run of zeros (deflated to ~0.5 MB:
    229:1) — written in a few tenths of a second at level 1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            if name.endswith(".dbf"):
                with zf.open(f"parcels/{name}", "w", force_zip64=True) as fh:
                    fh.write(data)
                    zeros = bytes(1 << 24)
                    for _ in range(8):
                        fh.write(zeros)
            else:
                zf.writestr(f"parcels/{name}", data)
    return path


def _lying(path: Path, members: dict[str, bytes], claimed: int = 0xFFFF_FFF0) -> Path:
    """A small honest archive whose central directory then claims a .dbf of ~4 GiB (a header
    that lies, as crafted zip bombs do)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(f"parcels/{name}", data)
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # the first central directory entry
    while entry != -1:
        name_len = int.from_bytes(raw[entry + 28:entry + 30], "little")
        if raw[entry + 46:entry + 46 + name_len].endswith(b".dbf"):
            raw[entry + 24:entry + 28] = claimed.to_bytes(4, "little")  # uncompressed size
        entry = raw.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(raw))
    return path


def _traversal(path: Path, members: dict[str, bytes], prefix: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(prefix + name), data)
    return path


def _symlink(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"parcels/{name}", data)
        link = zipfile.ZipInfo("parcels/secret.prj")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    return path


ARCHIVES = [
    ("zip-bomb-128MB", lambda p, m: _bomb(p / "bomb.zip", m), "zip bomb"),
    ("header-claims-4GiB", lambda p, m: _lying(p / "lying.zip", m), "zip bomb"),
    ("header-claims-40GiB", lambda p, m: _lying_many(p / "many.zip", m), "GiB"),
    ("dotdot", lambda p, m: _traversal(p / "dotdot.zip", m, "../../"), "'..'"),
    ("dotdot-inside", lambda p, m: _traversal(p / "inside.zip", m, "parcels/../../../tmp/"), "'..'"),
    ("absolute", lambda p, m: _traversal(p / "abs.zip", m, "/tmp/"), "absolute"),
    ("windows", lambda p, m: _traversal(p / "win.zip", m, "..\\..\\"), "'..'"),
    ("drive", lambda p, m: _traversal(p / "drive.zip", m, "C:/Windows/"), "absolute"),
    ("symlink", lambda p, m: _symlink(p / "link.zip", m), "symbolic link"),
]


def _lying_many(path: Path, members: dict[str, bytes]) -> Path:
    """Eleven members that each claim ~4 GiB at a plausible ratio: the total is refused."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"parcels/{name}", data)
        for k in range(11):
            zf.writestr(f"parcels/extra{k}.bin", bytes(200))
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")
    while entry != -1:
        name_len = int.from_bytes(raw[entry + 28:entry + 30], "little")
        if b"extra" in raw[entry + 46:entry + 46 + name_len]:
            raw[entry + 20:entry + 24] = (0xFFFF_FFF0 // 50).to_bytes(4, "little")  # compressed size
            raw[entry + 24:entry + 28] = (0xFFFF_FFF0).to_bytes(4, "little")
        entry = raw.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def shapefile_members(tmp_path_factory):
    return _shapefile_members(tmp_path_factory.mktemp("members"))


@pytest.mark.parametrize(("make", "word"), [a[1:] for a in ARCHIVES], ids=[a[0] for a in ARCHIVES])
def test_hostile_archives_are_refused_before_expanding(database, tmp_path, shapefile_members, make, word):
    from spatial_api.ingest.readers import read_vector

    archive = make(tmp_path, shapefile_members)
    before = state(database)
    t0 = time.perf_counter()
    with pytest.raises(IngestError) as refusal:
        ingest_vector(archive, layer=f"t_hos_zip_{uuid.uuid4().hex[:6]}", key="code", settings=database)
    message = str(refusal.value)
    assert "refused" in message and word in message and archive.name in message, message
    assert time.perf_counter() - t0 < 1.0  # refused from the directory: nothing was decompressed
    assert state(database) == before
    assert not (tmp_path.parent / "tmp").exists() and not Path("/tmp/parcels.shp").exists()
    with pytest.raises(IngestError, match="refused"):
        read_vector(archive)


@pytest.mark.parametrize("make", [ARCHIVES[0][1], ARCHIVES[3][1]], ids=["zip-bomb", "dotdot"])
def test_the_cli_refuses_hostile_archives(database, tmp_path, shapefile_members, make):
    archive = make(tmp_path, shapefile_members)
    before = state(database)
    done, dt = _cli("ingest", "vector", str(archive), "--layer", f"t_hos_zip_{uuid.uuid4().hex[:6]}",
                    "--key", "code")
    message = " ".join((done.stderr + done.stdout).split())
    assert done.returncode != 0 and "refused" in message and archive.name in message, message
    assert "Traceback" not in done.stderr
    assert dt < 30, f"the refusal took {dt:.0f} s"  # the CLI's start-up included, on a loaded machine
    assert state(database) == before


def test_an_honest_zipped_shapefile_still_loads(database, tmp_path):
    layer = f"t_hos_zip_{uuid.uuid4().hex[:6]}"
    ingest_vector(files.zipped_shapefile(tmp_path), layer=layer, key="code", settings=database)
    from spatial_api import db

    with db.connect(database) as conn:
        assert store.count(conn, layer) == 20


# -- imagery: no file or URL can be named; geocoding: silly queries -------------------------------

IMAGERY = [
    # (path, status, word)
    ("/imagery/collections?url=file:///etc/passwd", 400, "catalogue only"),
    ("/imagery/collections/x/tiles/WebMercatorQuad/1/1/1.png?url=http://169.254.169.254/latest/x.tif", 400,
     "catalogue only"),
    ("/imagery/collections/x/tiles/WebMercatorQuad/1/1/1.png?URL=/vsicurl/http://evil/x.tif", 400, "catalogue only"),
    ("/imagery/collections/x/items/y/tiles/WebMercatorQuad/1/1/1.png?path=/etc/shadow", 400, "catalogue only"),
    ("/imagery/collections/x/tilejson.json?src_path=/work/main/.geotwin/demo/medium/dem.tif", 400, "catalogue only"),
    ("/imagery/collections/..%2F..%2Fetc%2Fpasswd", 404, ""),
    ("/imagery/collections/%2Fetc%2Fpasswd/items", 404, ""),
    ("/imagery/collections/x/items/..%2F..%2Fetc%2Fpasswd", 404, ""),
    ("/imagery/collections/file:%2F%2F%2Fetc%2Fpasswd/tiles/WebMercatorQuad/1/1/1.png", 404, ""),
    ("/imagery/collections/%2Fvsicurl%2Fhttp:%2F%2Fevil%2Fx.tif/tiles/WebMercatorQuad/1/1/1.png", 404, ""),
    ("/imagery/collections/no_such/tiles/WebMercatorQuad/1/1/1.png", 404, "no_such"),
]


@pytest.mark.parametrize(("path", "status", "word"), IMAGERY, ids=[i[0][:70] for i in IMAGERY])
def test_imagery_names_no_file_or_url(world, database, path, status, word):
    before = state(database)
    r, dt = timed("GET", world["url"] + path)
    refused(r, dt, *([word] if word else []), status=status)
    assert state(database) == before


GEOCODE = [
    ("/geocode/search", {"q": "a" * 20_000}, "at most"),
    ("/geocode/search", {"q": "\x00\x01\x02"}, "q"),
    ("/geocode/search", {"q": "   "}, "q"),
    ("/geocode/search", {"q": "龙岗", "limit": "99999999999999999999"}, "limit"),
    ("/geocode/search", {"q": "龙岗", "limit": "1; DROP TABLE layers"}, "limit"),
    ("/geocode/autocomplete", {"q": "深圳市龙岗区"}, "nothing left"),
    ("/geocode/autocomplete", {"q": "x" * 101}, "at most"),
    ("/geocode/reverse", {"lon": "nan", "lat": "22.7"}, "lon"),
    ("/geocode/reverse", {"lon": "114.2", "lat": "inf"}, "lat"),
    ("/geocode/reverse", {"lon": "1e400", "lat": "0"}, "lon"),
    ("/geocode/reverse", {"lon": "114.2' OR 1=1 --", "lat": "22.7"}, "lon"),
    ("/geocode/reverse", {"lon": "114.2"}, "lat"),
]


@pytest.mark.parametrize(("path", "params", "word"), GEOCODE, ids=[f"{g[0]}:{str(g[1])[:40]}" for g in GEOCODE])
def test_geocoding_refuses_silly_queries(world, database, path, params, word):
    before = state(database)
    r, dt = timed("GET", world["url"] + path, params=params)
    refused(r, dt, word)
    assert state(database) == before


def test_geocoding_treats_sql_and_wildcards_as_text(world, database):
    before = state(database)
    for q in ("' OR 1=1 --", "%%%_", "\\", "龙岗'; DROP TABLE layers; --", "😀😀😀", "(((((", "*", "a:b|c&!d"):
        r, dt = timed("GET", world["url"] + "/geocode/search", params={"q": q})
        assert r.status_code in (200, 400) and dt < FAST, (q, r.status_code, r.text[:300])
        if r.status_code == 200:
            assert r.json()["type"] == "FeatureCollection"
    assert state(database) == before


# -- truncated / malformed GeoTIFF and IFC through their CLIs --------------------------------------

_IFC_HEADER = ("ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION((''),'2;1');\nFILE_NAME('x','2020-01-01T00:00:00',(''),"
               "(''),'','','');\nFILE_SCHEMA(('IFC4'));\nENDSEC;\nDATA;\n")


def _geotiff(path: Path) -> Path:
    import numpy as np
    import rasterio
    from affine import Affine

    data = (np.arange(256 * 256, dtype=np.float32).reshape(256, 256) % 97)
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1, dtype="float32", crs="EPSG:4547",
                       transform=Affine(10, 0, 525000, 0, -10, 2515000)) as dst:
        dst.write(data, 1)
    return path


def _truncated_tiff(tmp: Path) -> Path:
    whole = _geotiff(tmp / "whole.tif").read_bytes()
    out = tmp / "truncated.tif"
    out.write_bytes(whole[: len(whole) // 2])
    return out


def _not_a_tiff(tmp: Path) -> Path:
    out = tmp / "fake.tif"
    out.write_bytes(b"<html>404 Not Found</html>")
    return out


def _cut_ifc(tmp: Path) -> Path:
    out = tmp / "cut.ifc"
    out.write_text(_IFC_HEADER + "#1=IFCPROJECT('0YvctVUKr0kugbFTf53O9L',$,'P',$,$,$,$,(#2),#3);\n#2=IFCGEOMETRICREPRESENTATIONCO")
    return out


def _garbage_ifc(tmp: Path) -> Path:
    out = tmp / "garbage.ifc"
    out.write_bytes(_IFC_HEADER.encode() + bytes(range(256)) * 64)
    return out


FILES = [
    ("geotiff-truncated", _truncated_tiff, ["ingest", "imagery", "{path}", "--collection", "t_hos_img",
                                            "--datetime", "2024-01-01", "--cog-dir", "{tmp}/cogs"]),
    ("geotiff-not-a-tiff", _not_a_tiff, ["ingest", "imagery", "{path}", "--collection", "t_hos_img",
                                         "--datetime", "2024-01-01", "--cog-dir", "{tmp}/cogs"]),
    # (--at: without it the refusal is "no georeferencing", before the file's content is looked at)
    ("ifc-cut-mid-entity", _cut_ifc, ["cim", "add-ifc", "{path}", "--at", "114.25,22.72"]),
    ("ifc-garbage-data", _garbage_ifc, ["cim", "add-ifc", "{path}", "--at", "114.25,22.72"]),
]


def _catalogues(conn) -> tuple:
    return conn.execute("SELECT (SELECT count(*) FROM imagery_collections), (SELECT count(*) FROM imagery_items), "
                        "(SELECT count(*) FROM cim_models)").fetchone()


@pytest.mark.parametrize(("make", "args"), [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_truncated_or_malformed_files_through_the_cli(database, tmp_path, make, args):
    path = make(tmp_path)
    before = (state(database), _catalogues(_PROBE["conn"]))
    done, dt = _cli(*[a.format(path=path, tmp=tmp_path) for a in args])
    message = " ".join((done.stderr + done.stdout).split())
    # Named by the file, or (cim add-ifc) by the model id taken from the file's name.
    assert done.returncode != 0 and "error" in message.lower() and path.stem in message, message
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert dt < 60, f"the refusal took {dt:.0f} s"
    assert (state(database), _catalogues(_PROBE["conn"])) == before
    assert not (tmp_path / "cogs").exists() or not any((tmp_path / "cogs").rglob("*.tif"))
