"""Items pages chained by keyset cursors (issue 15, item 3: deep pages in constant time).

A ``next`` link carries the last row's sort key instead of an offset: every parameter of the
request is repeated, the cursor is opaque and checked (400 naming it when tampered with or
reused with another query), a deep page reads what the first one reads, paging while another
connection edits the layer returns every feature that exists throughout exactly once, and a
``datetime`` in the past pages through that snapshot. The OpenAPI document declares ``limit``
where QGIS reads the page size, and real GDAL clients — Debian's ogr2ogr (GDAL 3.6, page size 10
compiled in) and pyogrio's GDAL (≥ 3.8) — download a 2,600-feature layer in a handful of requests,
counted at the server.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from spatial_api import store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from spatial_api.ogc import features as ogc
from tests.fixtures.server import live_server

N = 2600  # features of the big layer
GROUPS = ["a", "b", "c", None]


def _points(path, rows):
    """A GeoJSON of points: rows are (code, properties, (lon, lat))."""
    feats = [{"type": "Feature", "properties": {"code": code, **props},
              "geometry": {"type": "Point", "coordinates": list(xy)}} for code, props, xy in rows]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")
    return path


def _xy(i: int) -> tuple[float, float]:
    return 114.2 + (i % 60) * 0.001, 22.7 + (i // 60) * 0.001


class Counter:
    """ASGI wrapper recording every HTTP request (path, query, headers) the server receives."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append((scope["path"], scope["query_string"].decode(), dict(scope["headers"])))
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def world(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyset")
    s = uuid.uuid4().hex[:6]
    big, snap, edit = f"t_ks_big_{s}", f"t_ks_snap_{s}", f"t_ks_edit_{s}"
    # the big layer: n unique, grp with ties and NULLs, val with NULLs (sortby with nulls and ties)
    rows = [(f"K{i:05d}", {"n": (i * 7919) % N, "grp": GROUPS[i % 4],
                           "val": None if i % 5 == 0 else float(i % 13) / 4}, _xy(i)) for i in range(N)]
    ingest_vector(_points(tmp / "big.geojson", rows), layer=big, key="code", settings=database)
    # a layer in two states: 2020 (S000–S299) and 2023 (every 3rd removed, every 4th changed, 60 added)
    v1 = [(f"S{i:03d}", {"n": i}, _xy(i)) for i in range(300)]
    v2 = [(c, {"n": p["n"] + (1000 if i % 4 == 0 else 0)}, xy) for i, (c, p, xy) in enumerate(v1) if i % 3]
    v2 += [(f"S{i:03d}", {"n": i}, _xy(i)) for i in range(300, 360)]
    ingest_vector(_points(tmp / "v1.geojson", v1), layer=snap, key="code", valid_from="2020-12-31", settings=database)
    ingest_vector(_points(tmp / "v2.geojson", v2), layer=snap, key="code", valid_from="2023-12-31", settings=database)
    # an editable layer: E0000, E0010, … E3990 (gaps for features added while paging)
    rows = [(f"E{i:04d}", {"n": i}, _xy(i // 10)) for i in range(0, 4000, 10)]
    ingest_vector(_points(tmp / "edit.geojson", rows), layer=edit, key="code", settings=database)
    from spatial_api import db

    with db.connect(database) as conn:
        store.update_layer(conn, edit, editable=True)
        conn.commit()
    with db.connect(database, autocommit=True) as conn:
        for name in (big, snap, edit):
            conn.execute(f'ANALYZE "{store.partition_name(name)}"')
    counter = Counter(create_app(database))
    with live_server(counter) as url:
        yield {"url": url, "big": big, "snap": snap, "edit": edit, "counter": counter, "v1": v1, "v2": v2,
               "settings": database}


def get(url: str, **params) -> httpx.Response:
    return httpx.get(url, params=params, timeout=60)


def rel(doc: dict, name: str) -> str | None:
    return next((ln["href"] for ln in doc["links"] if ln["rel"] == name), None)


def walk(first_url: str, params: dict, *, between=None, cap: int = 2000) -> tuple[list[dict], list[dict]]:
    """Follow the next links from the first page; returns (features, pages). ``between(page)`` runs
    after each page (edits by another connection)."""
    page = get(first_url, **params).json()
    feats, pages = list(page["features"]), [page]
    while (nxt := rel(page, "next")) and len(pages) < cap:
        if between:
            between(page)
        r = httpx.get(nxt, timeout=60)
        assert r.status_code == 200, r.text
        page = r.json()
        feats += page["features"]
        pages.append(page)
    return feats, pages


def ids(feats: list[dict]) -> list[str]:
    return [f["id"] for f in feats]


# -- cursors in the links -----------------------------------------------------------------------


def test_next_links_carry_a_cursor_and_repeat_every_parameter(world):
    url = f"{world['url']}/collections/{world['big']}/items"
    params = {"limit": 7, "bbox": "114.2,22.7,114.21,22.705", "properties": "n,grp", "sortby": "-n",
              "crs": "EPSG:4326", "filter": "n >= 100", "datetime": "2030-01-01T00:00:00Z"}
    page = get(url, **params).json()
    nxt = urlparse(rel(page, "next"))
    q = {k: v[0] for k, v in parse_qs(nxt.query).items()}
    assert "offset" not in q and q.pop("cursor")
    assert q == {k: str(v) for k, v in params.items()}  # everything repeated, nothing else added
    # the cursor is opaque to clients: urlsafe base64, no offset in sight
    cursor = parse_qs(nxt.query)["cursor"][0]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor) and "=" not in cursor
    # page by page = one big request, same features in the same order
    feats, pages = walk(url, params)
    whole = get(url, **{**params, "limit": 10000}).json()
    assert ids(feats) == ids(whole["features"]) and len(feats) == whole["numberMatched"] > 30
    assert all(p["numberMatched"] == whole["numberMatched"] for p in pages)  # exact on every page
    assert all(set(f["properties"]) == {"n", "grp"} for f in feats)
    assert all(httpx.get(rel(p, "self"), timeout=60).json()["features"] == p["features"] for p in pages[:3])


@pytest.mark.parametrize("sortby", [None, "-n", "grp,-val", "-grp,val,-id", "val", "id"])
def test_cursor_pages_follow_any_sort_order_with_ties_and_nulls(world, sortby):
    url = f"{world['url']}/collections/{world['big']}/items"
    params = {"limit": 97, **({"sortby": sortby} if sortby else {}), "properties": "n,grp,val"}
    feats, pages = walk(url, params)
    whole = get(url, **{**params, "limit": 10000}).json()["features"]
    assert len(feats) == N and ids(feats) == ids(whole)
    assert len(set(ids(feats))) == N and len(pages) == -(-N // 97)
    if sortby == "grp,-val":  # NULLs last in either direction, ties broken by id
        keyed = [(f["properties"]["grp"], f["properties"]["val"], f["id"]) for f in feats]
        assert keyed[-1][0] is None and keyed[0][0] == "a"
        firsts = [k for k in keyed if k[0] == "a"]
        assert [k[1] for k in firsts if k[1] is not None] == sorted((k[1] for k in firsts if k[1] is not None),
                                                                   reverse=True)
        assert firsts[-1][1] is None


def test_prev_links_walk_back_through_the_same_pages(world):
    url = f"{world['url']}/collections/{world['big']}/items"
    params = {"limit": 50, "sortby": "grp,-val"}
    _, pages = walk(url, params, cap=6)
    assert rel(pages[0], "prev") is None and all(rel(p, "prev") for p in pages[1:])
    page = pages[-1]
    for expected in reversed(pages[:-1]):
        page = httpx.get(rel(page, "prev"), timeout=60).json()
        assert ids(page["features"]) == ids(expected["features"])
        assert page["numberMatched"] == N
    assert rel(page, "prev") is None  # back at the start
    # and forward again from a page reached backwards
    assert ids(httpx.get(rel(page, "next"), timeout=60).json()["features"]) == ids(pages[1]["features"])


def test_offset_is_still_accepted_and_continues_with_cursors(world):
    url = f"{world['url']}/collections/{world['big']}/items"
    everything = ids(get(url, limit=10000).json()["features"])
    page = get(url, limit=20, offset=1000).json()
    assert ids(page["features"]) == everything[1000:1020]
    assert "cursor=" in rel(page, "next") and "offset=" not in rel(page, "next")
    assert ids(httpx.get(rel(page, "next"), timeout=60).json()["features"]) == everything[1020:1040]
    assert ids(httpx.get(rel(page, "prev"), timeout=60).json()["features"]) == everything[980:1000]
    last = get(url, limit=20, offset=N - 5).json()
    assert last["numberMatched"] == N and last["numberReturned"] == 5 and rel(last, "next") is None


def test_a_bad_cursor_is_a_400_naming_it(world):
    url = f"{world['url']}/collections/{world['big']}/items"
    page = get(url, limit=5, sortby="-n").json()
    cursor = parse_qs(urlparse(rel(page, "next")).query)["cursor"][0]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    body = json.loads(raw[8:])
    edited = dict(body, k=["999999", body["k"][-1]])  # another position, old checksum
    forged_body = json.dumps(edited, separators=(",", ":")).encode()
    tampered = base64.urlsafe_b64encode(raw[:8] + forged_body).rstrip(b"=").decode()
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    for bad in ("nope", "", "!!!", cursor[:-4], flipped, tampered, "A" * 20000,
                base64.urlsafe_b64encode(b"x" * 8 + b'{"d":"n"}').decode().rstrip("=")):
        r = get(url, limit=5, sortby="-n", cursor=bad)
        assert r.status_code == 400, (bad[:40], r.text)
        assert r.json()["code"] == "InvalidParameterValue" and r.json()["description"].startswith("cursor"), r.text
    # a genuine cursor with another query: another sort order, filter, bbox, datetime or collection
    for other in ({"sortby": "n"}, {"sortby": "-n", "filter": "n > 3"}, {"sortby": "-n", "bbox": "114,22,115,23"},
                  {"sortby": "-n", "datetime": "2020-01-01T00:00:00Z"}, {"sortby": "-n", "grp": "a"}):
        r = get(url, limit=5, cursor=cursor, **other)
        assert r.status_code == 400 and "another query" in r.json()["description"], (other, r.text)
    r = get(f"{world['url']}/collections/{world['snap']}/items", limit=5, sortby="-n", cursor=cursor)
    assert r.status_code == 400 and r.json()["description"].startswith("cursor")
    r = get(url, limit=5, sortby="-n", cursor=cursor, offset=0)
    assert r.status_code == 400 and "offset" in r.json()["description"]
    # the page size, properties, crs and format may change from page to page
    r = get(url, limit=9, sortby="-n", cursor=cursor, properties="n", crs="EPSG:4490", f="json")
    assert r.status_code == 200 and r.json()["numberReturned"] == 9
    # a cursor forged with a valid checksum but a value its key's type cannot read: 400, not 500
    forged = ogc._encode_cursor("n", ["not-a-number", "K00001"], 5, body["q"])
    r = get(url, limit=5, sortby="-n", cursor=forged)
    assert r.status_code == 400 and r.json()["description"].startswith("cursor"), r.text


# -- constant time ------------------------------------------------------------------------------


def _rows_read(plan: dict) -> int:
    """Rows the scans of a plan produced (actual rows × loops), summed."""
    node, total = plan, 0
    if "Scan" in node["Node Type"]:
        total += node["Actual Rows"] * node["Actual Loops"]
    for child in node.get("Plans", []):
        total += _rows_read(child)
    return total


def _nodes(plan: dict) -> list[str]:
    return [plan["Node Type"]] + [n for c in plan.get("Plans", []) for n in _nodes(c)]


def test_a_deep_page_reads_what_the_first_page_reads(world, conn):
    """The page statement itself (features.page_sql), explained: from a cursor the (layer, fid)
    index is entered at the key; an offset reads and drops every row before it."""
    from psycopg import sql

    layer = store.get_layer(conn, world["big"])
    keys = ogc._sort_keys(layer, None)
    source = sql.SQL("{} f").format(sql.Identifier(store.partition_name(world["big"])))
    filt = sql.SQL("f.layer = {} AND f.valid_to IS NULL").format(sql.Literal(world["big"]))
    columns = sql.SQL("f.fid, f.properties::text AS properties, ST_AsGeoJSON(f.geom) AS geometry")

    def read(**kw) -> tuple[int, list[str]]:
        query, params = ogc.page_sql(columns, source, filt, [], keys, limit=10, **kw)
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, params).fetchone()[0][0]["Plan"]
        return _rows_read(plan), _nodes(plan)

    first, _ = read()
    deep, deep_nodes = read(key=[f"K{N - 20:05d}"])
    back, _ = read(key=[f"K{N - 20:05d}"], backward=True)
    by_offset, _ = read(offset=N - 20)
    assert first <= 11 and deep <= 11 and back <= 11, (first, deep, back)
    assert by_offset >= N - 20  # what keysets avoid
    assert "Sort" not in deep_nodes and any("Index" in n for n in deep_nodes), deep_nodes


# -- concurrent edits and snapshots --------------------------------------------------------------


def test_paging_while_another_connection_edits(world, auth):
    """Features added, changed and removed between the pages — before and after the cursor — and
    every feature that exists throughout comes exactly once; with offsets it would not."""
    url = f"{world['url']}/collections/{world['edit']}/items"
    before = set(ids(get(url, limit=10000).json()["features"]))
    editor = httpx.Client(base_url=world["url"], headers=auth("gis-staff"), timeout=60)
    removed, added, changed = set(), set(), set()
    counter = iter(range(10**6))

    def square(fid: str) -> dict:
        n = int(fid[1:5])
        lon, lat = _xy(n // 10)
        return {"type": "Point", "coordinates": [lon, lat]}

    def edit(page: dict) -> None:
        last = page["features"][-1]["id"]
        present = sorted(before - removed)
        done, ahead = [f for f in present if f < last], [f for f in present if f > last]
        for fid in done[1::7][:2] + ahead[3::11][:1]:  # remove two behind the cursor, one ahead
            tag = editor.get(f"/collections/{world['edit']}/items/{fid}").headers["etag"]
            assert editor.delete(f"/collections/{world['edit']}/items/{fid}",
                                 headers={"If-Match": tag}).status_code == 204
            removed.add(fid)
        for fid in (done[-1] if done else None, ahead[0] if ahead else None):  # add one behind, one ahead
            if fid is None:
                continue
            new = f"{fid}-{next(counter)}"
            r = editor.post(f"/collections/{world['edit']}/items",
                            json={"type": "Feature", "geometry": square(fid), "properties": {"code": new, "n": -1}})
            assert r.status_code == 201, r.text
            added.add(new)
        for fid in [f for f in ahead[1::13] if f not in removed][:1] + done[2::17][:1]:  # change two
            item = editor.get(f"/collections/{world['edit']}/items/{fid}")
            r = editor.patch(f"/collections/{world['edit']}/items/{fid}", json={"properties": {"n": -2}},
                             headers={"If-Match": item.headers["etag"]})
            assert r.status_code == 200, r.text
            changed.add(fid)

    feats, pages = walk(url, {"limit": 20}, between=edit)
    got = ids(feats)
    assert len(pages) >= 15 and len(removed) >= 20 and len(added) >= 20 and changed
    assert len(got) == len(set(got)), "a feature came twice"
    throughout = before - removed
    assert throughout <= set(got), f"missing: {sorted(throughout - set(got))[:10]}"
    assert not (set(got) - before - added), "a feature from nowhere"

    # the same edits under offset paging lose features (the control: the test can see the difference)
    before = set(ids(get(url, limit=10000).json()["features"]))
    removed.clear()
    seen, offset = [], 0
    while page := get(url, limit=20, offset=offset).json()["features"]:
        seen += ids(page)
        edit({"features": page})
        offset += 20
    assert (before - removed) - set(seen), "offset paging lost nothing: the edits did not bite"
    editor.close()


def test_a_past_datetime_pages_through_that_snapshot(world, auth):
    url = f"{world['url']}/collections/{world['snap']}/items"
    v1 = sorted(c for c, _, _ in world["v1"])
    v2 = sorted(c for c, _, _ in world["v2"])
    editor = httpx.Client(base_url=world["url"], headers=auth("gis-staff"), timeout=60)
    from spatial_api import db

    with db.connect(world["settings"]) as conn:
        store.update_layer(conn, world["snap"], editable=True)
        conn.commit()
    state = {"i": 0}

    def edit_now(page: dict) -> None:  # today's edits do not touch 2021
        fid = v2[state["i"]]
        state["i"] += 7
        tag = editor.get(f"/collections/{world['snap']}/items/{fid}").headers["etag"]
        assert editor.delete(f"/collections/{world['snap']}/items/{fid}", headers={"If-Match": tag}).status_code == 204

    feats, pages = walk(url, {"limit": 13, "datetime": "2021-06-30T00:00:00Z"}, between=edit_now)
    assert ids(feats) == v1 and len(pages) == -(-300 // 13)
    assert all("datetime=2021-06-30" in rel(p, "next") for p in pages[:-1])
    assert all(f["properties"]["n"] < 1000 for f in feats)  # the 2020 versions
    feats, _ = walk(url, {"limit": 17, "datetime": "2024-06-30T00:00:00Z", "sortby": "-n"})
    assert sorted(ids(feats)) == v2  # the 2023 state, as recorded (a date before today's edits)
    span, _ = walk(url, {"limit": 11, "datetime": "2020-01-01T00:00:00Z/2024-06-30T00:00:00Z"})
    assert ids(span) == sorted(set(v1) | set(v2))  # an interval: each feature once
    editor.close()


# -- page size for GDAL and QGIS ----------------------------------------------------------------


def test_openapi_declares_the_limit_where_qgis_and_gdal_look(world):
    """QGIS (qgsoapifapirequest.cpp) reads components/parameters/limit/schema {default, maximum} and
    pages by min(max(1000, default), maximum); GDAL ≥ 3.8 (ogroapifdriver.cpp,
    DeterminePageSizeFromAPI) starts from 1000 and applies the same formula to the parameter its
    items path references by $ref."""
    for path in ("/api", "/openapi.json"):
        doc = httpx.get(world["url"] + path, timeout=60).json()
        schema = doc["components"]["parameters"]["limit"]["schema"]
        default, maximum = schema["default"], schema["maximum"]
        assert (default, maximum) == (10, 10000)  # the standard's default, and the server's maximum
        assert min(max(1000, default), maximum) == 1000  # QGIS's and GDAL's page size
        items = doc["paths"]["/collections/{collection_id}/items"]["get"]["parameters"]
        assert {"$ref": "#/components/parameters/limit"} in items
        assert not [p for p in items if p.get("name") == "limit"]
        assert any(p.get("name") == "cursor" for p in items)
    assert httpx.get(world["url"] + "/api", timeout=60).headers["content-type"].startswith(
        "application/vnd.oai.openapi+json")


def _requests_since(counter: Counter, mark: int) -> list[tuple[str, str, dict]]:
    return counter.seen[mark:]


def test_debian_ogr2ogr_downloads_the_layer_in_a_few_requests(world, tmp_path):
    """Debian's GDAL 3.6: page size 10 compiled in, no PAGE_SIZE given. Its two limit=10 requests
    (the schema probe and the first page) get 10 features as asked; the next link asks for the
    maximum, so the remaining 2,590 come in one more request."""
    version = subprocess.run(["ogrinfo", "--version"], capture_output=True, text=True).stdout
    counter, mark = world["counter"], len(world["counter"].seen)
    out = tmp_path / "big.geojson"
    done = subprocess.run(["ogr2ogr", "-f", "GeoJSON", str(out), f"OAPIF:{world['url']}", world["big"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = [f["properties"]["id"] for f in json.loads(out.read_text())["features"]]
    assert len(got) == len(set(got)) == N
    seen = _requests_since(counter, mark)
    pages = [parse_qs(q) for p, q, _ in seen if p.endswith("/items")]
    print(version, [(p, q[:60]) for p, q, _ in seen])
    assert len(seen) < 5, seen  # /collections, 2 × limit=10, then one page of the rest
    assert [pg["limit"] for pg in pages[:2]] == [["10"], ["10"]]
    assert all(int(pg["limit"][0]) >= 1000 and "cursor" in pg for pg in pages[2:])


def test_newer_gdal_reads_pages_of_a_thousand(world):
    """pyogrio's own GDAL (3.8 or later) through its OAPIF driver: limit=1000 pages (and one small
    probe), each feature once. Run in a child process: GDAL there would wait on this process's
    server thread while holding the GIL."""
    code = ("import sys, json, pyogrio; df = pyogrio.read_dataframe(sys.argv[1], layer=sys.argv[2]); "
            "print(json.dumps({'gdal': pyogrio.__gdal_version_string__, 'ids': list(df['id'])}))")
    counter, mark = world["counter"], len(world["counter"].seen)
    done = subprocess.run([sys.executable, "-c", code, f"OAPIF:{world['url']}", world["big"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    major, minor = (int(x) for x in result["gdal"].split(".")[:2])
    # pyogrio's wheels bundle GDAL ≥ 3.8 (the version that reads its page size from the API): an older
    # one means the environment changed, and this test would no longer show what it claims
    assert (major, minor) >= (3, 8), f"pyogrio bundles GDAL {result['gdal']}, older than 3.8"
    assert len(result["ids"]) == len(set(result["ids"])) == N
    seen = _requests_since(counter, mark)
    limits = [int(parse_qs(q)["limit"][0]) for p, q, _ in seen if p.endswith("/items")]
    assert max(limits) == 1000 and len(limits) <= 1 + -(-N // 1000), limits
    assert all(h.get(b"user-agent", b"").startswith(b"GDAL/") for _, _, h in seen)  # not the 3.6 shim


def test_a_client_asking_ten_keeps_pages_of_ten(world):
    """Only GDAL < 3.8's signature (no User-Agent, its Accept header, limit 10) gets larger next
    pages; any other client gets the page size it asked for."""
    url = f"{world['url']}/collections/{world['big']}/items"
    page = httpx.get(url, params={"limit": 10}, timeout=60).json()
    assert parse_qs(urlparse(rel(page, "next")).query)["limit"] == ["10"]
    page = httpx.get(url, params={"limit": 10}, headers={"Accept": ogc.LEGACY_GDAL_ACCEPT}, timeout=60).json()
    assert parse_qs(urlparse(rel(page, "next")).query)["limit"] == ["10"]  # httpx sends a User-Agent
