"""Map styles served by a real server (uvicorn) over the small demo district in PostGIS: every
style validated by MapLibre's validator, every URL followed to a tile / glyph / sprite on this
server, land-use colours of every code in the data evaluated by MapLibre's expression engine."""

from __future__ import annotations

import json

import httpx
import mapbox_vector_tile
import morecantile
import pytest
from PIL import Image

from spatial_api import db, store
from spatial_api.app import create_app
from tests.fixtures.server import live_server
from styles import assets, documents, glyphs, palette
from tests.unit.test_styles import evaluate, rgb, urls, validate_styles

WM = morecantile.tms.get("WebMercatorQuad")
# Not loaded here, so the composite must leave it out. (In `make test` the supervision tests load
# it later into the shared schema: test files run in name order.)
LEFT_OUT = "approvals"
DATE = "2026-07-01"  # after every layer's first valid date (buildings: 2026-06-30)



@pytest.fixture(scope="module")
def district(database, tmp_path_factory):
    from data.demo import build_files
    from spatial_api.ingest import ingest_vector

    tmp = tmp_path_factory.mktemp("styles")
    # the folder `geotwin demo build --size small` writes; an earlier complete build is reused
    m = build_files(database.home / "demo" / "small", size="small", seed=2024, reuse=True)
    for lf in m.layers:
        if lf.layer in (LEFT_OUT, "imagery"):
            continue
        ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from, crs=lf.crs,
                      encoding=lf.encoding, title_zh=lf.title_zh, title_en=lf.title_en, access_level="public",
                      author="pytest", settings=database)
    with db.connect(database) as conn:
        for name in {lf.layer for lf in m.layers} - {LEFT_OUT, "imagery"}:
            store.update_layer(conn, name, access_level="public")  # also when an earlier test loaded it
        conn.commit()
    app = create_app(database)
    from styles.routes import _routed

    imagery = _routed(app, "/imagery/collections/ortho/tilejson.json")
    if imagery:  # the imagery API is mounted: give it the demo's latest epoch and the DEM
        from spatial_api.ingest.imagery import ingest_imagery

        latest = max((r for r in m.imagery if r.acquired_on.isoformat() <= DATE), key=lambda r: r.acquired_on)
        ingest_imagery(latest.path, collection="ortho", datetime_=latest.acquired_on.isoformat(), kind="ortho",
                       cog_dir=tmp / "cog", author="pytest", settings=database)
        ingest_imagery(m.dem.path, collection="dem", datetime_="2020-01-01", kind="dem", cog_dir=tmp / "cog",
                       author="pytest", settings=database)
    assets.build()  # what `make assets` does; a no-op when up to date
    with live_server(app) as url:
        yield {"base": url, "manifest": m, "imagery": imagery, "settings": database}


def get(url: str, **kw) -> httpx.Response:
    return httpx.get(url, timeout=60, **kw)


@pytest.fixture(scope="module")
def served(district, tmp_path_factory):
    """Every listed style as served with ?datetime=, saved to files."""
    base = district["base"]
    listing = get(f"{base}/styles").json()
    out = tmp_path_factory.mktemp("served")
    docs, paths = {}, []
    for s in listing["styles"]:
        (link,) = [ln for ln in s["links"] if ln["rel"] == "stylesheet"]
        r = get(link["href"], params={"datetime": DATE})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
        docs[s["id"]] = r.json()
        paths.append(out / f"{s['id']}.json")
        paths[-1].write_bytes(r.content)
    return {"listing": listing, "docs": docs, "paths": paths}


def test_the_list_names_what_the_store_can_draw(district, served):
    ids = {s["id"] for s in served["listing"]["styles"]}
    expected = {"district", "land_use", "farmland", "basic_farmland", "forest", "eco_redline", "parcels",
                "buildings", "buildings_3d", "roads", "place_names", "streets", "communities"}
    if district["imagery"]:
        expected |= {"imagery", "terrain"}
    assert ids == expected
    s = next(s for s in served["listing"]["styles"] if s["id"] == "eco_redline")
    assert s["title_zh"] == "生态保护红线" and s["title_en"] == "Ecological protection red line"
    assert "Noto Sans CJK SC" in served["listing"]["localIdeographFontFamily"]


def test_every_served_style_validates_with_maplibres_validator(served):
    validate_styles(served["paths"])


def test_the_composite_leaves_out_the_missing_layer(district, served):
    doc = served["docs"]["district"]
    vector = {k for k, v in doc["sources"].items() if v["type"] == "vector"}
    with db.connect(district["settings"]) as conn:
        present = {r["name"] for r in store.list_layers(conn) if r["access_level"] == "public"}
    wanted = {g.requires for g in documents.GROUPS.values() if g.requires != documents.IMAGERY}
    assert LEFT_OUT not in present and vector == wanted & present
    assert LEFT_OUT not in vector and not any(lyr["id"].startswith(LEFT_OUT) for lyr in doc["layers"])
    r = get(f"{district['base']}/styles/{LEFT_OUT}")
    assert r.status_code == 404 and f"layer '{LEFT_OUT}'" in r.json()["description"]


def test_every_url_is_on_this_server_and_resolves(district, served):
    base = district["base"]
    tilejsons = set()
    for sid, doc in served["docs"].items():
        for u in urls(doc):
            assert u.startswith(base + "/"), (sid, u)  # nothing from any other host
        assert doc["glyphs"] == f"{base}/styles/glyphs/{{fontstack}}/{{range}}.pbf"
        assert doc["sprite"] == f"{base}/styles/sprites/geotwin"
        tilejsons |= {src["url"] for src in doc["sources"].values() if "url" in src}
    for u in sorted(tilejsons):  # every source of every style (the composite's are checked to the tile below)
        r = get(u)
        assert r.status_code == 200 and all(t.startswith(base + "/") for t in r.json()["tiles"]), (u, r.text)
    doc = served["docs"]["district"]
    lon, lat = doc["center"]
    t = WM.tile(lon, lat, 14)
    source_layers: dict[str, set] = {}
    for lyr in doc["layers"]:
        if "source-layer" in lyr:
            source_layers.setdefault(lyr["source"], set()).add(lyr["source-layer"])
    checked = []
    for sid, src in doc["sources"].items():
        if src["type"] == "vector":
            tj = get(src["url"])
            assert tj.status_code == 200, (sid, tj.text)
            template = tj.json()["tiles"][0]
            assert template.startswith(base) and f"datetime={DATE}" in template
            tile = get(template.format(z=t.z, x=t.x, y=t.y))
            assert tile.status_code in (200, 204), (sid, tile.status_code)
            if sid in ("land_use", "roads", "buildings", "streets"):
                assert tile.status_code == 200, sid
                assert set(mapbox_vector_tile.decode(tile.content)) == source_layers[sid]
            checked.append(sid)
        elif district["imagery"]:  # raster / raster-dem on the imagery API
            if "url" in src:
                tj = get(src["url"])
                assert tj.status_code == 200, (sid, tj.text)
                templates = tj.json()["tiles"]
            else:
                templates = src["tiles"]
            assert all(f"datetime={DATE}" in u for u in templates), (sid, templates)
            collection, ext, algorithm = {"ortho": ("ortho", "jpg", None), "dem": ("dem", "png", "terrainrgb"),
                                          "hillshade": ("dem", "png", "hillshade")}[sid]
            assert templates[0].startswith(
                f"{base}/imagery/collections/{collection}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.{ext}?"), templates
            assert algorithm is None or f"algorithm={algorithm}" in templates[0]
            tile = get(templates[0].format(z=t.z, x=t.x, y=t.y))
            assert tile.status_code == 200, (sid, tile.status_code, tile.text[:300])
            assert tile.headers["content-type"] in ("image/png", "image/jpeg", "image/jpg"), sid  # TiTiler: jpg
            checked.append(sid)
    assert {"land_use", "roads", "place_names", "buildings"} <= set(checked)
    if district["imagery"]:
        assert {"ortho", "dem", "hillshade"} <= set(checked)


def test_datetime_reaches_the_tile_query(district, served):
    """Through the style's own URLs: before the first survey the land-use tile is empty."""
    def tile_status(**params):
        doc = get(f"{district['base']}/styles/land_use", params=params).json()
        lon, lat = doc["center"]
        t = WM.tile(lon, lat, 14)
        template = get(doc["sources"]["land_use"]["url"]).json()["tiles"][0]
        return get(template.format(z=t.z, x=t.x, y=t.y)).status_code

    assert tile_status() == 200
    assert tile_status(datetime="2000-01-01") == 204
    assert tile_status(datetime="2000-01-01T00:00:00Z") == 204
    assert tile_status(datetime="2000-01-01T08:00:00+08:00") == 204  # the offset survives every hop
    assert tile_status(datetime=f"{DATE}T08:00:00+08:00") == 200


def fonts_used(doc) -> set[str]:
    """Font stacks of every ``text-font``: layout properties and those inside ``format`` sections."""
    stacks: set[str] = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "text-font":
                    fonts = x[1] if x and x[0] == "literal" else x
                    assert all(isinstance(f, str) for f in fonts), x
                    stacks.add(",".join(fonts))
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc["layers"])
    return stacks


def test_glyphs_of_every_font_stack_used_decode(district, served):
    stacks = set().union(*(fonts_used(d) for d in served["docs"].values()))
    assert {"Noto Sans Regular", "Noto Sans Bold", "Noto Sans Italic"} <= stacks
    template = served["docs"]["district"]["glyphs"]
    for stack in stacks:
        for rng, has_a in (("0-255", True), ("19968-20223", False)):
            r = get(template.replace("{fontstack}", stack).replace("{range}", rng))
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf", (stack, rng)
            (fs,) = glyphs.decode(r.content).stacks
            assert fs.name == stack and fs.range == rng
            ids = {g.id: g for g in fs.glyphs}
            if has_a:
                a = ids[ord("A")]
                assert len(a.bitmap) == (a.width + 6) * (a.height + 6) and ord("0") in ids
            else:
                assert not ids  # CJK is drawn by the browser (localIdeographFontFamily)
    # a stack of two fonts, as a style with a fallback would ask for
    r = get(template.replace("{fontstack}", "Noto Sans Bold,Noto Sans Regular").replace("{range}", "0-255"))
    assert r.status_code == 200 and glyphs.decode(r.content).stacks[0].name == "Noto Sans Bold,Noto Sans Regular"


def test_sprites_match_and_every_image_the_styles_use_exists(served):
    sprite = served["docs"]["district"]["sprite"]
    one, two = get(sprite + ".json").json(), get(sprite + "@2x.json").json()
    p1, p2 = get(sprite + ".png"), get(sprite + "@2x.png")
    assert p1.headers["content-type"] == "image/png" == p2.headers["content-type"]
    im1, im2 = Image.open(__import__("io").BytesIO(p1.content)), Image.open(__import__("io").BytesIO(p2.content))
    assert im2.size == (2 * im1.size[0], 2 * im1.size[1])
    for name, e in one.items():
        assert e["x"] + e["width"] <= im1.size[0] and e["y"] + e["height"] <= im1.size[1]
        assert two[name]["width"] == 2 * e["width"] and two[name]["pixelRatio"] == 2
    used = set()
    for doc in served["docs"].values():
        for lyr in doc["layers"]:
            for key in ("icon-image", "fill-pattern"):
                v = {**lyr.get("layout", {}), **lyr.get("paint", {})}.get(key)
                if v is not None:
                    used |= {s for s in json.dumps(v).split('"') if s.startswith(("pn-", "hatch-"))}
    assert used and used <= set(one)


def test_every_landuse_code_in_the_data_gets_its_colour(district, served, tmp_path):
    with db.connect(district["settings"]) as conn:
        codes = [r[0] for r in conn.execute(
            "SELECT DISTINCT properties->>'dlbm' FROM features_land_use WHERE valid_to IS NULL ORDER BY 1")]
    assert len(codes) > 10
    unlisted = [c for c in codes if c not in palette.CODE_CLASS]
    assert not unlisted, f"codes coloured only by their first level: {unlisted}"
    got = evaluate(tmp_path, served["docs"]["land_use"], "land_use-fill", "fill-color", [{"dlbm": c} for c in codes])
    for code, colour in zip(codes, got):
        assert colour == rgb(palette.CODE_CLASS[code]) + [1], code


def test_cache_headers_and_conditional_requests(district, served):
    base = district["base"]
    for url, cache in ((f"{base}/styles/district?datetime={DATE}", "max-age=60"),
                       (f"{base}/styles", "max-age=60"),
                       (f"{base}/styles/glyphs/Noto Sans Regular/0-255.pbf", "max-age=86400"),
                       (f"{base}/styles/sprites/geotwin@2x.png", "max-age=86400")):
        r = get(url)
        assert r.status_code == 200 and cache in r.headers["cache-control"] and r.headers["etag"], url
        again = get(url, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content and again.headers["etag"] == r.headers["etag"]
        assert get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    a = get(f"{base}/styles/district", params={"datetime": DATE}).headers["etag"]
    assert a != get(f"{base}/styles/district").headers["etag"]  # another date, another document


@pytest.mark.parametrize("path, status, words", [
    ("/styles/nope", 404, "style 'nope' does not exist"),
    ("/styles/glyphs/Arial Unicode MS/0-255.pbf", 404, "font 'Arial Unicode MS' is not served"),
    ("/styles/glyphs/Noto Sans Regular,Comic Sans/0-255.pbf", 404, "font 'Comic Sans'"),
    ("/styles/glyphs/Noto Sans Regular/0-300.pbf", 404, "ranges are 256 code points"),
    ("/styles/glyphs/Noto Sans Regular/65536-65791.pbf", 404, "range"),
    ("/styles/glyphs/%2E%2E/0-255.pbf", 404, "font '..' is not served"),
    ("/styles/glyphs/Noto Sans Regular%2C%2E%2E/0-255.pbf", 404, "font '..' is not served"),
    ("/styles/sprites/other.png", 404, "sprite file 'other.png' does not exist"),
    ("/styles/sprites/geotwin.svg", 404, "does not exist"),
    ("/styles/district?datetime=yesterday", 400, "datetime"),
])
def test_bad_requests_get_the_ogc_exception(district, path, status, words):
    r = get(district["base"] + path)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "description"} and words in body["description"], body
