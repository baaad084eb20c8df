"""Features benchmark: geotwin's OGC API – Features items requests vs tipg and pygeoapi.

All three serve the same land-use polygons from the same PostGIS database in the same run:
the large demo district's first survey year (228k polygons) is loaded by geotwin's own ingest
into schema ``geotwin_featbench``; the peers get a plain table copy of the current rows in that
schema (``land_use_current``: one column per property, the same coordinates, primary key and
GiST index, analysed). Each server runs as one uvicorn worker on its own port; ``wrk`` measures
each request type against each server, alternating servers, and the medians of the runs go
into docs/benchmarks.md (between the bench:features markers).

Requests (the same for the three servers; their parameter names differ only where their APIs do):
  1. a bbox page of 1,000 features around (114.25 E, 22.72 N);
  2. a CQL2 text attribute filter, ``dlbm='0701'``, limit 100;
  3. a single feature by id.
Responses are checked first: same number of features, same ids, same properties.

Then a full download with ogr2ogr (Debian's GDAL, OAPIF driver) of the whole layer from geotwin
and from tipg into a GeoPackage: once as a user would run it (no open option: GDAL < 3.8 asks
10 features a page, and follows the servers' next links) and once with ``-oo PAGE_SIZE=1000``
for both (the same page size); wall time, HTTP requests (counted from GDAL's debug output) and
features written, servers alternating.

    .venv/bin/python bench/features.py [--runs 3] [--duration 10] [--connections 8]
        [--sections wrk,download] [--download-runs 2] [--download-timeout 1800]

The peers live in their own virtualenv (.geotwin/bench/peers-venv, created with pip install
tipg pygeoapi geoalchemy2 psycopg2-binary if missing): they pin other FastAPI / pydantic
versions than geotwin. wrk comes from Debian (`apt-get install -y wrk`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (bench/_common.py: shared by the HTTP benches)
    ROOT, UVICORN_FLAGS, Server, arguments, clean_env, drop_schema, fetch, free_port, geotwin_server, parse, wrk,
    write_block)

SCHEMA = "geotwin_featbench"
PEER_TABLE = "land_use_current"
START, END = "<!-- bench:features:start -->", "<!-- bench:features:end -->"
SERVERS = ("geotwin", "tipg", "pygeoapi")
PEERS = ("tipg", "pygeoapi")
QUERIES = ("bbox", "filter", "feature")
QUERY_TITLES = {
    "bbox": "bbox page, limit 1,000",
    "filter": "CQL2 `dlbm='0701'`, limit 100",
    "feature": "single feature by id",
}
#: Around (114.25 E, 22.72 N): about 1,500 current land-use polygons in the large district.
BBOX = (114.242, 22.712, 114.258, 22.728)
BBOX_LIMIT = 1000
FILTER_TEXT = "dlbm='0701'"
FILTER_LIMIT = 100
PEER_PACKAGES = ["tipg", "pygeoapi", "geoalchemy2", "psycopg2-binary", "uvicorn"]
SQL_TYPES = {"string": "text", "integer": "bigint", "number": "double precision", "boolean": "boolean",
             "date": "date", "datetime": "timestamptz"}

__all__ = ["ROOT", "Server", "fetch", "free_port", "wrk", "load_data", "peer_venv", "peer_versions", "tipg_server",
           "pygeoapi_server", "pygeoapi_provider",
           "pygeoapi_config"]


# -- data ----------------------------------------------------------------------------------------


def find_land_use(manifest_path: Path) -> list[dict]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.find_land_use(manifest_path)


def load_data(settings, size: str, need_bbox: bool = True) -> dict:
    """geotwin's schema with the land-use layer, and the peers' table copy. Returns facts."""
    from psycopg import sql

    from spatial_api import db, store
    from spatial_api.ingest import ingest_vector

    out = settings.home / "bench" / size
    manifest = out / "manifest.json"
    if not manifest.exists():
        from data.demo import build_files

        print(f"building the {size} demo district into {out} …", flush=True)
        t = time.perf_counter()
        build_files(out, size=size)
        print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
    first = find_land_use(manifest)[0]

    with db.connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    db.migrate(settings)
    t = time.perf_counter()
    summary = ingest_vector(first["path"], layer="land_use", key="bsm", valid_from=str(first["valid_from"])[:10],
                            access_level="public", settings=settings)
    print(f"geotwin ingest: {summary.added:,} features in {time.perf_counter() - t:.1f} s", flush=True)

    with db.connect(settings, autocommit=True) as conn:
        layer = store.get_layer(conn, "land_use")
        cols = [sql.SQL("f.fid AS id")]
        for p in layer.properties:
            cols.append(sql.SQL("(f.properties ->> {})::{} AS {}").format(
                sql.Literal(p["name"]), sql.SQL(SQL_TYPES[p["type"]]), sql.Identifier(p["name"])))
        # The same coordinates, labelled EPSG:4326: geotwin serves its EPSG:4490 geometries as CRS84
        # without a transform (CGCS2000 ↔ WGS84 is a null shift at metre level), and so do the peers
        # with this label; with 4490 both would ST_Transform / pyproj-transform every geometry.
        # (ST_Multi: the large district's polygons are multipolygons already; the smaller ones' are not)
        cols.append(sql.SQL("ST_Multi(ST_SetSRID(f.geom, 4326))::geometry(MultiPolygon, 4326) AS geom"))
        peer = sql.Identifier(SCHEMA, PEER_TABLE)
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT {} FROM {} f WHERE f.valid_to IS NULL ORDER BY f.fid")
                     .format(peer, sql.SQL(", ").join(cols), sql.Identifier(SCHEMA, store.partition_name("land_use"))))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(peer))
        conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(peer))
        # Steady state for everyone: planner statistics on both tables (autovacuum would get there).
        conn.execute(sql.SQL("ANALYZE {}").format(peer))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, "features")))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, store.partition_name("land_use"))))
        n_peer = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(peer)).fetchone()[0]
        env = sql.SQL("ST_MakeEnvelope(%s, %s, %s, %s, 4326)")
        n_bbox = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ST_Intersects(geom, {})").format(peer, env),
                              BBOX).fetchone()[0]
        n_filter = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE dlbm = '0701'").format(peer)).fetchone()[0]
        # the single feature: the first of the bbox page
        fid = conn.execute(sql.SQL("SELECT id FROM {} WHERE ST_Intersects(geom, {}) ORDER BY id LIMIT 1")
                           .format(peer, env), BBOX).fetchone()[0]
        pg = conn.execute("SHOW server_version").fetchone()[0]
        postgis = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
        jit = conn.execute("SHOW jit").fetchone()[0]
    if need_bbox and n_bbox < BBOX_LIMIT:
        raise SystemExit(f"bbox {BBOX} holds only {n_bbox} features (< {BBOX_LIMIT})")
    return {"source": Path(first["path"]).name, "valid_from": str(first["valid_from"])[:10],
            "features": summary.added, "peer_rows": n_peer, "bbox_matched": n_bbox, "filter_matched": n_filter,
            "fid": fid, "pg": pg, "postgis": postgis, "jit": jit}


# -- the peers -------------------------------------------------------------------------------------


def peer_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if not py.exists():
        print(f"creating the peers' virtualenv {path} (pip install {' '.join(PEER_PACKAGES)}) …", flush=True)
        subprocess.run(["python3", "-m", "venv", str(path)], check=True)
    probe = subprocess.run([str(py), "-c", "import tipg, pygeoapi, geoalchemy2, psycopg2, uvicorn"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return py


def peer_versions(py: Path) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['tipg', 'pygeoapi', 'fastapi', 'starlette', 'pydantic', 'asyncpg', 'SQLAlchemy', "
            "'psycopg2-binary', 'pygeofilter', 'uvicorn']}))")
    return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout)


def pygeoapi_provider(url: str, **kind) -> dict:
    """pygeoapi's PostgreSQL provider over the peers' table (``kind``: another type / name)."""
    u = urlparse(url)
    return {
        "type": "feature", "name": "PostgreSQL",
        "data": {"host": u.hostname, "port": u.port or 5432, "dbname": u.path.lstrip("/"),
                 "user": unquote(u.username or ""), "password": unquote(u.password or ""),
                 "search_path": [SCHEMA, "public"]},
        "id_field": "id", "table": PEER_TABLE, "geom_field": "geom", **kind,
    }


def pygeoapi_config(path: Path, url: str, port: int, bbox: list[float]) -> None:
    cfg = {
        "server": {
            "bind": {"host": "127.0.0.1", "port": port},
            "url": f"http://127.0.0.1:{port}",
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "languages": ["en-US"],
            "limits": {"default_items": 10, "max_items": 10000},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OSM"},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {"title": "geotwin features bench", "description": "peer",
                               "keywords": ["bench"], "keywords_type": "theme",
                               "terms_of_service": "https://creativecommons.org/licenses/by/4.0/",
                               "url": "http://127.0.0.1"},
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "geotwin", "url": "http://127.0.0.1"},
            "contact": {"name": "geotwin"},
        },
        "resources": {
            "land_use": {
                "type": "collection", "title": "land use", "description": "land use (current)",
                "keywords": ["land use"],
                "extents": {"spatial": {"bbox": bbox, "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
                "providers": [pygeoapi_provider(url)],
            }
        },
    }
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=1))  # JSON is YAML


def tipg_server(venv_py: Path, url: str, work: Path, name: str = "tipg", **env: str) -> Server:
    """tipg's FastAPI app under one uvicorn worker, over the peers' table only (catalog read once)."""
    port = free_port()
    tipg_env = dict(clean_env(), DATABASE_URL=url, TIPG_DB_SCHEMAS=json.dumps([SCHEMA]),
                    TIPG_DB_TABLES=json.dumps([f"{SCHEMA}.{PEER_TABLE}"]), TIPG_CATALOG_TTL="0", **env)
    return Server(name, [str(venv_py), "-m", "uvicorn", "tipg.main:app", "--port", str(port), "--workers", "1",
                         *UVICORN_FLAGS], tipg_env, port, f"/collections/{SCHEMA}.{PEER_TABLE}", work)


def pygeoapi_server(venv_py: Path, url: str, work: Path, name: str = "pygeoapi",
                    extra_providers: list[dict] | None = None) -> Server:
    """pygeoapi's Starlette app under one uvicorn worker, with :func:`pygeoapi_config` (plus
    ``extra_providers`` for the collection) and its generated OpenAPI document."""
    port = free_port()
    cfg, openapi = work / f"{name}-config.yml", work / f"{name}-openapi.yml"
    pygeoapi_config(cfg, url, port, [113.9, 22.4, 114.6, 22.95])
    if extra_providers:
        doc = json.loads(cfg.read_text())
        doc["resources"]["land_use"]["providers"] += extra_providers
        cfg.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    pg_env = dict(clean_env(), PYGEOAPI_CONFIG=str(cfg), PYGEOAPI_OPENAPI=str(openapi))
    subprocess.run([str(venv_py.parent / "pygeoapi"), "openapi", "generate", str(cfg), "--output-file", str(openapi)],
                   env=pg_env, check=True, capture_output=True)
    return Server(name, [str(venv_py), "-m", "uvicorn", "pygeoapi.starlette_app:APP", "--port", str(port),
                         "--workers", "1", *UVICORN_FLAGS], pg_env, port, "/collections/land_use?f=json", work)


# -- requests and checks --------------------------------------------------------------------------


def urls(servers: dict[str, Server], fid: str) -> dict[tuple[str, str], str]:
    bbox = ",".join(str(v) for v in BBOX)
    flt = quote(FILTER_TEXT, safe="")
    cid = {"geotwin": "land_use", "tipg": f"{SCHEMA}.{PEER_TABLE}", "pygeoapi": "land_use"}
    fmt = {"geotwin": "", "tipg": "&f=geojson", "pygeoapi": "&f=json"}
    lang = {"geotwin": "&filter-lang=cql2-text", "tipg": "&filter-lang=cql2-text",
            "pygeoapi": ""}  # pygeoapi takes cql-text / cql-json only; its text parser (ECQL) reads this
    out = {}
    for name, srv in servers.items():
        items = f"{srv.base}/collections/{cid[name]}/items"
        out[(name, "bbox")] = f"{items}?bbox={bbox}&limit={BBOX_LIMIT}{fmt[name]}"
        out[(name, "filter")] = f"{items}?filter={flt}{lang[name]}&limit={FILTER_LIMIT}{fmt[name]}"
        out[(name, "feature")] = f"{items}/{fid}" + (f"?{fmt[name][1:]}" if fmt[name] else "")
    return out


def check(url_map: dict, facts: dict) -> tuple[dict, dict, list[str]]:
    """Fetch each request once; returns (ok per (server, query), facts per (server, query), notes)."""
    ok, info, notes = {}, {}, []
    docs = {}
    for (name, q), url in url_map.items():
        status, body, headers = fetch(url)
        entry = {"status": status, "bytes": len(body), "server_timing": headers.get("Server-Timing")}
        info[(name, q)] = entry
        if status != 200:
            ok[(name, q)] = False
            notes.append(f"{name} {q}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
            continue
        doc = json.loads(body)
        docs[(name, q)] = doc
        feats = doc.get("features") if q != "feature" else [doc]
        entry["returned"] = len(feats or [])
        entry["matched"] = doc.get("numberMatched")
        entry["estimated"] = bool(doc.get("geotwin:numberMatchedIsEstimate"))
        entry["ids"] = [str(f.get("id")) for f in feats or []]
        ok[(name, q)] = True
        if q == "filter":
            bad_rows = [f for f in feats if (f.get("properties") or {}).get("dlbm") != "0701"]
            if bad_rows or not feats:
                ok[(name, q)] = False
                notes.append(f"{name} filter: the filter was not applied ({len(bad_rows)} of {len(feats)} "
                             f"features have dlbm != '0701'; numberMatched {doc.get('numberMatched')})")
    expect = {"bbox": BBOX_LIMIT, "filter": FILTER_LIMIT, "feature": 1}
    for q in QUERIES:
        ref = None
        for name in SERVERS:
            e = info.get((name, q))
            if not ok.get((name, q)):
                continue
            if e["returned"] != expect[q]:
                notes.append(f"{name} {q}: {e['returned']} features returned, expected {expect[q]}")
                ok[(name, q)] = False
                continue
            if ref is None:
                ref = (name, e["ids"])
            elif e["ids"] != ref[1]:
                same = len(set(e["ids"]) & set(ref[1]))
                notes.append(f"{name} {q}: ids differ from {ref[0]}'s ({same} of {len(e['ids'])} in common)")
        # properties of the single feature, compared with geotwin's
        if q == "feature" and ok.get(("geotwin", q)):
            gp = docs[("geotwin", q)].get("properties") or {}
            for name in PEERS:
                if ok.get((name, q)):
                    pp = docs[(name, q)].get("properties") or {}
                    diff = {k for k in set(gp) | set(pp) if gp.get(k) != pp.get(k) and k != "id"}  # tipg repeats its pk
                    if diff:
                        notes.append(f"{name} feature: properties differ from geotwin's: {sorted(diff)}")
    return ok, info, notes


# -- the report ------------------------------------------------------------------------------------


def counting_note(info: dict, facts: dict) -> str:
    """Say which numberMatched were exact counts and which were estimates (geotwin estimates when
    counting would exceed its time budget, and says so in the response)."""
    true = {"bbox": facts.get("bbox_matched"), "filter": facts.get("filter_matched")}
    parts = []
    for (name, q), e in sorted(info.items()):
        if q in true and e.get("matched") is not None and (e.get("estimated") or e["matched"] != true[q]):
            how = "an estimate, flagged `geotwin:numberMatchedIsEstimate`" if e.get("estimated") else "not the true count"
            parts.append(f"{name}'s numberMatched for {q} was {e['matched']:,} ({how}; true count {true[q]:,})")
    if not parts:
        return "All three returned the exact numberMatched."
    return "Every other numberMatched was exact; " + "; ".join(parts) + "."


def fmt_rps(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


DOWNLOAD_CLIENTS = (("no open option", []), ("-oo PAGE_SIZE=1000", ["-oo", "PAGE_SIZE=1000"]))
DOWNLOAD_SERVERS = ("geotwin", "tipg")


def gdal_version() -> str:
    out = subprocess.run(["ogrinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return out.split(",")[0].replace("GDAL ", "") if out else "?"


def ogr2ogr_download(base: str, collection: str, extra: list[str], work: Path, timeout: float) -> dict:
    """One ``ogr2ogr -f GPKG`` of the whole collection through the OAPIF driver: seconds, HTTP requests
    (GDAL's debug output names every fetch), features written (None: it failed or was stopped)."""
    import pyogrio

    out, log = work / "download.gpkg", work / "download.log"
    out.unlink(missing_ok=True)
    cmd = ["ogr2ogr", "--debug", "on", "-f", "GPKG", str(out), f"OAPIF:{base}", collection, *extra]
    t = time.perf_counter()
    with open(log, "w") as err:
        try:  # on timeout subprocess.run kills ogr2ogr (its own pid)
            code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout,
                                  env=clean_env()).returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - t
    fetches = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("HTTP: Fetch(")]
    features = pyogrio.read_info(out)["features"] if code == 0 and out.exists() else None
    tail = "" if code == 0 else log.read_text(errors="replace")[-600:]
    out.unlink(missing_ok=True)
    return {"seconds": seconds, "requests": len(fetches), "items_requests": sum("/items" in f for f in fetches),
            "features": features, "code": code, "tail": tail}


def run_downloads(servers: dict, args) -> dict[tuple[str, str], list[dict]]:
    """Each client configuration against geotwin and tipg, ``--download-runs`` times, alternating."""
    collection = {"geotwin": "land_use", "tipg": f"{SCHEMA}.{PEER_TABLE}"}
    work = servers["geotwin"].log_path.parent
    out: dict[tuple[str, str], list[dict]] = {}
    for run in range(args.download_runs):
        for ci, (client, extra) in enumerate(DOWNLOAD_CLIENTS):
            order = list(DOWNLOAD_SERVERS) if (run + ci) % 2 == 0 else list(reversed(DOWNLOAD_SERVERS))
            for name in order:
                r = ogr2ogr_download(servers[name].base, collection[name], extra, work, args.download_timeout)
                out.setdefault((client, name), []).append(r)
                state = ("ok" if r["code"] == 0 else
                         f"STOPPED after {args.download_timeout:.0f} s" if r["code"] is None else f"exit {r['code']}")
                print(f"download run {run + 1} {client:20} {name:8} {r['seconds']:8.1f} s  {r['requests']:>7,} "
                      f"requests  {r['features'] if r['features'] is not None else '—'} features  {state}", flush=True)
                if r["tail"] and r["code"] is not None:
                    print(r["tail"], flush=True)
    return out


def download_lines(downloads: dict, facts: dict, args) -> list[str]:
    med = statistics.median
    rows, notes = [], []
    for client, _ in DOWNLOAD_CLIENTS:
        cells, reqs, secs = [], [], {}
        for name in DOWNLOAD_SERVERS:
            rs = downloads.get((client, name), [])
            done = [r for r in rs if r["code"] == 0]
            if rs and len(done) == len(rs):
                secs[name] = med(r["seconds"] for r in done)
                runs_txt = " / ".join(f"{r['seconds']:,.1f}" for r in done)
                cells.append(f"{secs[name]:,.1f} ({runs_txt})")
            elif rs:
                stopped = sum(r["code"] is None for r in rs)
                cells.append(f"> {args.download_timeout:,.0f} (stopped)" if stopped else "failed")
            else:
                cells.append("—")
            reqs.append(f"{med(r['requests'] for r in rs):,.0f}" if rs else "—")
            for r in done:
                if r["features"] != facts["peer_rows"]:
                    notes.append(f"{name} ({client}) wrote {r['features']:,} features, not {facts['peer_rows']:,}")
        ratio = f"{secs['tipg'] / secs['geotwin']:.2f}×" if len(secs) == 2 else "—"
        rows.append(f"| Debian ogr2ogr, {client} | " + " | ".join(cells) + " | " + " | ".join(reqs) + f" | {ratio} |")
    lines = [
        "",
        f"#### Full download with ogr2ogr ({facts['peer_rows']:,} features, geotwin vs tipg)",
        "",
        f"`ogr2ogr -f GPKG out.gpkg OAPIF:<server> <collection>` with Debian's GDAL {gdal_version()} (the OAPIF "
        f"driver; GDAL before 3.8 asks `limit=10`, a compiled-in page size, and follows the servers' `next` "
        f"links), the whole layer from each server in turn, {args.download_runs} "
        f"run{'s' if args.download_runs != 1 else ''} per cell, servers "
        f"alternating; wall seconds, medians (runs in brackets), and the HTTP requests GDAL made (counted from "
        f"its `--debug on` output). Without an open option geotwin answers GDAL 3.6's first pages of 10 with a "
        f"`next` link of 10,000 features (a keyset cursor); tipg's `next` links keep GDAL's 10. With "
        f"`-oo PAGE_SIZE=1000` both serve the same page size. tipg: `TIPG_MAX_FEATURES_PER_QUERY=10000`.",
        "",
        "| client | geotwin s | tipg s | geotwin requests | tipg requests | tipg s ÷ geotwin s |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        ("Checks: " + "; ".join(notes) + ".") if notes else
        f"Checks: every finished download wrote all {facts['peer_rows']:,} features.",
    ]
    return lines


def main() -> None:
    ap = arguments(__doc__, runs=3, duration=10, warmup=2,
                   runs_help="wrk runs per server and request (median reported)",
                   warmup_help="seconds of unrecorded wrk per server and request")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="wrk,download",
                    help="comma-separated: wrk (items requests, needs wrk), download (ogr2ogr of the whole layer)")
    ap.add_argument("--download-runs", type=int, default=2, help="ogr2ogr runs per server and client")
    ap.add_argument("--download-timeout", type=float, default=1800, help="seconds before an ogr2ogr run is stopped")
    sections = set(ap.parse_known_args()[0].sections.split(","))
    if not sections <= {"wrk", "download"} or not sections:
        raise SystemExit("--sections: wrk and / or download")
    args = parse(ap) if "wrk" in sections else ap.parse_args()  # parse() also insists on wrk being installed
    if "download" in sections and args.download_runs < 1:
        raise SystemExit("--download-runs: at least 1")

    from spatial_api import db
    from spatial_api.config import Settings

    started = time.perf_counter()
    settings = Settings(db_schema=SCHEMA)
    url = db.database_url(settings)
    venv_py = peer_venv(args.peer_venv or settings.home / "bench" / "peers-venv")
    versions = peer_versions(venv_py)
    facts = load_data(settings, args.size, need_bbox="wrk" in sections)
    print(f"peer table {SCHEMA}.{PEER_TABLE}: {facts['peer_rows']:,} rows; bbox holds {facts['bbox_matched']:,}; "
          f"dlbm='0701' {facts['filter_matched']:,}; single feature {facts['fid']}", flush=True)

    work = settings.home / "bench" / "features"
    work.mkdir(parents=True, exist_ok=True)
    geotwin = geotwin_server("geotwin", settings, SCHEMA, work)
    # tipg: its FastAPI app, asyncpg pool (default 1–10 connections), catalog read once at start-up
    tipg = tipg_server(venv_py, url, work, TIPG_MAX_FEATURES_PER_QUERY="10000")
    servers = {"geotwin": geotwin, "tipg": tipg}
    if "wrk" in sections:
        servers["pygeoapi"] = pygeoapi_server(venv_py, url, work)
    results: dict[tuple[str, str], list[dict]] = {}
    downloads: dict[tuple[str, str], list[dict]] = {}
    checked: tuple = ({}, [])
    try:
        for srv in servers.values():
            srv.start()
        if "wrk" in sections:
            results, checked = run_wrk(servers, facts, args)
        if "download" in sections:
            downloads = run_downloads(servers, args)
    finally:
        for srv in servers.values():
            srv.stop()
        if not args.keep:
            drop_schema(settings, SCHEMA)

    elapsed = time.perf_counter() - started
    lines = [START]
    if "wrk" in sections:
        lines += wrk_lines(results, checked, facts, versions, args, elapsed)
    else:
        lines += [f"### Features: {facts['features']:,} land-use polygons (geotwin vs tipg)", "",
                  f"Run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {facts['pg']} "
                  f"(jit {facts['jit']}), PostGIS {facts['postgis']}; tipg {versions['tipg']}; uvicorn, one worker "
                  f"each, no access log. Whole script {elapsed / 60:.1f} min."]
    if "download" in sections:
        lines += download_lines(downloads, facts, args)
    lines.append(END)
    block = "\n".join(lines)
    print(block)
    print(f"total {elapsed:.0f} s", flush=True)
    if not args.no_write and sections != {"wrk", "download"}:
        print("(not written to docs/benchmarks.md: only a part of the bench ran)", flush=True)
    elif not args.no_write:
        write_block(START, END, block, heading="Features",
                    intro="`.venv/bin/python bench/features.py` runs `bench/features.py`: geotwin's OGC API – Features "
                    "items requests against tipg and pygeoapi serving the same PostGIS rows, measured with `wrk`, "
                    "and a full download of the layer with ogr2ogr from geotwin and tipg.")


def run_wrk(servers: dict, facts: dict, args) -> tuple[dict, tuple[dict, list[str]]]:
    """The items requests: checked once, then measured with wrk, servers alternating."""
    results: dict[tuple[str, str], list[dict]] = {}
    url_map = urls(servers, facts["fid"])
    ok, info, notes = check(url_map, facts)
    for n in notes:
        print("check:", n, flush=True)
    for (name, q), e in info.items():
        print(f"  {name:8} {q:7} HTTP {e['status']} {e['bytes']:>9,} bytes matched={e.get('matched')} "
              f"returned={e.get('returned')} {e.get('server_timing') or ''}", flush=True)
    todo = [(n, q) for q in QUERIES for n in SERVERS if ok.get((n, q))]
    if args.warmup:
        for name, q in todo:
            wrk(url_map[(name, q)], threads=args.threads, connections=args.connections, duration=args.warmup)
    for run in range(args.runs):
        for qi, q in enumerate(QUERIES):
            k = (run + qi) % len(SERVERS)
            order = list(SERVERS[k:] + SERVERS[:k])
            if run % 2:
                order.reverse()
            for name in order:
                if not ok.get((name, q)):
                    continue
                r = wrk(url_map[(name, q)], threads=args.threads, connections=args.connections,
                        duration=args.duration)
                results.setdefault((name, q), []).append(r)
                flag = ""
                if r["non2xx"] or r["socket_errors"]:
                    flag = f"  !! non-2xx {r['non2xx']}, socket errors {r['socket_errors']}"
                print(f"run {run + 1} {q:7} {name:8} {r['rps']:9.1f} req/s  p50 {fmt_ms(r['p50'])} ms  "
                      f"p99 {fmt_ms(r['p99'])} ms{flag}", flush=True)
    return results, (info, notes)


def wrk_lines(results: dict, checked: tuple, facts: dict, versions: dict, args, elapsed: float) -> list[str]:
    info, notes = checked
    med = statistics.median

    def stat(name, q, key):
        rs = results.get((name, q))
        if not rs or any(r["non2xx"] for r in rs):
            return None
        return med(r[key] for r in rs if r[key] is not None)

    ratios, verdicts = {}, []
    rows = []
    for q in QUERIES:
        rps = {n: stat(n, q, "rps") for n in SERVERS}
        peers = {n: rps[n] for n in PEERS if rps[n] is not None}
        best = max(peers, key=peers.get) if peers else None
        ratio = rps["geotwin"] / peers[best] if best and rps["geotwin"] else None
        ratios[q] = ratio
        if ratio is None:
            verdicts.append(f"{q}: not measured for geotwin")
        cells = []
        for n in SERVERS:
            if (n, q) in results:
                runs_txt = " / ".join(fmt_rps(r["rps"]) for r in results[(n, q)])
                cells.append(f"{fmt_rps(rps[n])} ({runs_txt})")
            else:
                cells.append("not comparable" if info.get((n, q), {}).get("status") == 200 else
                             f"failed (HTTP {info.get((n, q), {}).get('status')})")
        lat = []
        for n in SERVERS:
            p50, p99 = stat(n, q, "p50"), stat(n, q, "p99")
            lat.append(f"{fmt_ms(p50)} / {fmt_ms(p99)}" if p50 is not None else "—")
        rows.append(f"| {QUERY_TITLES[q]} | " + " | ".join(cells) + " | " + " | ".join(lat) +
                    f" | {f'{ratio:.2f}× vs {best}' if ratio else '—'} |")
    sizes = []
    for q in QUERIES:
        sizes.append(f"{QUERY_TITLES[q]}: " + ", ".join(
            f"{n} {info[(n, q)]['bytes'] / 1000:,.1f} kB" for n in SERVERS if info.get((n, q), {}).get("status") == 200))
    measured = [r for r in ratios.values() if r is not None]
    met = len(measured) == len(QUERIES) and all(r >= 1.0 for r in measured)
    lines = [
        f"### Features: items requests on {facts['features']:,} land-use polygons (geotwin vs tipg vs pygeoapi)",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {facts['pg']} (jit {facts['jit']}), "
        f"PostGIS {facts['postgis']}; tipg {versions['tipg']} (FastAPI {versions['fastapi']}, asyncpg "
        f"{versions['asyncpg']}), pygeoapi {versions['pygeoapi']} (Starlette app, PostgreSQL provider: "
        f"SQLAlchemy {versions['SQLAlchemy']}, psycopg2 {versions['psycopg2-binary']}, pygeofilter "
        f"{versions['pygeofilter']}); uvicorn, one worker each, no access log. "
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency`, {args.runs} runs per cell "
        f"after a {args.warmup} s warm-up, servers alternating; medians (runs in brackets). Whole script "
        f"{elapsed / 60:.1f} min.",
        "",
        f"Data: `{facts['source']}` (first survey year, valid from {facts['valid_from']}) loaded by geotwin's ingest "
        f"into its versioned store (`features_land_use`: jsonb properties, EPSG:4490 geometry, GiST, "
        f"open-row unique index on fid). The peers read a plain table copy of the same current rows, "
        f"`{PEER_TABLE}` ({facts['peer_rows']:,} rows: `id` primary key = geotwin's fid, one typed column per "
        f"property, the same coordinates as `geometry(MultiPolygon, 4326)` with a GiST index, analysed) — a "
        f"table rather than a view over geotwin's store so that they get real column statistics and their "
        f"own primary key, and labelled 4326 so that neither transforms geometries (geotwin serves its "
        f"4490 coordinates as CRS84 as they are). tipg: `TIPG_DB_SCHEMAS`, `TIPG_DB_TABLES` = that table, "
        f"`TIPG_CATALOG_TTL=0`. pygeoapi: `max_items: 10000`, provider `PostgreSQL` with `id_field: id`, "
        f"logging ERROR.",
        "",
        f"Requests: bbox `{','.join(map(str, BBOX))}` ({facts['bbox_matched']:,} features match, first "
        f"{BBOX_LIMIT:,} by id); `filter={FILTER_TEXT}` ({facts['filter_matched']:,} match; `filter-lang=cql2-text` for "
        f"geotwin and tipg, pygeoapi's default text parser for pygeoapi), limit {FILTER_LIMIT}; feature "
        f"`{facts['fid']}`. All three sort by id. " + counting_note(info, facts),
        "",
        "| request | geotwin req/s | tipg req/s | pygeoapi req/s | geotwin p50 / p99 ms | tipg p50 / p99 ms | "
        "pygeoapi p50 / p99 ms | geotwin vs best peer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Response sizes — " + "; ".join(sizes) + ".",
    ]
    if notes:
        lines += ["", "Checks: " + "; ".join(notes) + "."]
    else:
        lines += ["", "Checks: every server returned the same number of features with the same ids in the same "
                  "order for each request, and the same properties for the single feature."]
    lines += ["", "Goal: geotwin at least the better of the two peers on every request — "
              + ("met" if met else "NOT met") + " ("
              + ", ".join(f"{q} {ratios[q]:.2f}×" if ratios[q] else f"{q} not measured" for q in QUERIES) + ").",
              ]
    return lines


if __name__ == "__main__":
    main()
