"""The map client (/map) end to end: Debian's chromium (headless, WebGL through SwiftShader) against
a real uvicorn server over the small demo district in PostGIS. Every test runs under the guards of
``browser_page`` (no request leaving 127.0.0.1, no console or page error). What the map draws is
read back from MapLibre (``queryRenderedFeatures``), and checked against the server's own APIs.

Timing: every wait is for a state (the app's ``geotwin.state``, MapLibre's ``loaded()`` /
``isMoving()``, the requests the page made) with the generous deadline ``E2E_TIMEOUT_MS``, never a
fixed time, so a loaded machine makes these tests slower, never red."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import httpx
import openpyxl
import pyproj
import pytest
import shapely
from shapely.geometry import shape
from shapely.ops import transform

from tests.e2e.conftest import E2E_TIMEOUT_MS, poll

READY = ("window.geotwin && geotwin.state.ready && !geotwin.state.loading && geotwin.state.styleDate"
         " && geotwin.map.loaded()")
TO_4547 = pyproj.Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True).transform
GEOD = pyproj.Geod(ellps="GRS80")
# The query polygon of issue 12 (item 13) as it reached the server from a machine where the test's
# clicks came out degenerate: a repeated vertex (the 2nd and 3rd) and a bow-tie (edges 2-4 and 5-1 cross).
ISSUE_POLYGON = [(114.2447032, 22.7272259), (114.2444565, 22.7273149), (114.2444565, 22.7273149),
                 (114.2447500, 22.7275000), (114.2444000, 22.7275500)]


def wait_js(page, predicate: str, timeout: int = E2E_TIMEOUT_MS):
    """Wait for a state of the page (a JS predicate), at most ``timeout`` ms."""
    return page.wait_for_function(predicate, timeout=timeout)


def open_map(page, key: str | None = None, query: str = ""):
    """Open /map (as the holder of ``key``, kept in localStorage as the login box does) and wait
    until the district style is loaded and every tile of the view is drawn."""
    if key:
        page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(key)})")
    sep = "&" if "?" in query else "?"
    page.goto(f"/map/{query or ''}{sep}hide=hillshade")  # hillshade: terrain-RGB tiles, slow under SwiftShader
    wait_js(page, READY)
    assert page.evaluate("geotwin.state.error") is None


def wait_style(page, date: str):
    wait_js(page, f"geotwin.state.styleDate === {json.dumps(date)} && !geotwin.state.loading")


def rendered(page, *layers: str, prop: str | None = None) -> list:
    """Features MapLibre drew in the viewport on ``layers`` (their ``prop`` values if given)."""
    return page.evaluate(
        """([layers, prop]) => {
            const have = layers.filter((l) => geotwin.map.getLayer(l));
            if (!have.length) return [];
            const fs = geotwin.map.queryRenderedFeatures({layers: have});
            return prop ? fs.map((f) => f.properties[prop]) : fs.map((f) => f.layer.id);
        }""", [list(layers), prop])


def click_at(page, lon: float, lat: float):
    """Click the map at a lon/lat, once the map stands still (a pixel computed while it moves would
    land elsewhere)."""
    wait_js(page, "!geotwin.map.isMoving()")
    x, y = page.evaluate(
        """([lon, lat]) => { const p = geotwin.map.project([lon, lat]);
                             const r = geotwin.map.getCanvas().getBoundingClientRect();
                             return [p.x + r.left, p.y + r.top]; }""", [lon, lat])
    page.mouse.click(x, y)


def api(base: str, path: str, key: str | None = None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(base + path, params=params, headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def parcel(e2e_server, e2e_keys, e2e_district):
    """A planted R10 parcel (buildings over the height limit / in the setback): id, geometry, a
    point inside it, its area in EPSG:4547 and its findings, as the server's APIs give them."""
    pid = e2e_district.planted_cases["R10"][0]
    item = api(e2e_server, f"/collections/parcels/items/{pid}", e2e_keys["land-officer"])
    geom = shape(item["geometry"])
    inside = geom.representative_point()
    return {"id": pid, "item": item, "geom": geom, "lon": inside.x, "lat": inside.y,
            "area_m2": transform(TO_4547, geom).area}


def test_anonymous_page_public_layers_only(browser_page, e2e_server, screenshot):
    page = browser_page
    open_map(page)
    assert page.evaluate("geotwin.state.who.role") == "public"
    groups = page.evaluate("geotwin.state.groups")
    # internal / restricted layers are not in an anonymous caller's style, nor in the layer panel
    assert "buildings" in groups and "roads" in groups
    assert not {"parcels", "land_use", "basic_farmland", "eco_redline", "findings"} & set(groups)
    assert page.locator("#layer-list input[data-group=parcels]").count() == 0
    # the map draws public features (read back from MapLibre, not assumed)
    assert len(rendered(page, "buildings-fill")) > 0
    assert len(rendered(page, "roads-c1-fill", "roads-c2-fill", "roads-c3-fill", "roads-c0-fill")) > 0
    # Chinese by default; English by the switch
    assert page.inner_text("h1") == "龙岗区时空信息一张图"
    page.click("#lang")
    assert page.inner_text("h1") == "Longgang district map"
    assert page.locator("#layer-list").inner_text().count("Buildings") >= 1
    page.click("#lang")
    assert page.inner_text("h1") == "龙岗区时空信息一张图"
    # every request stayed on this server (the guard also aborts anything else)
    assert page.guard.requests and all(u.startswith(e2e_server) or u.startswith(("data:", "blob:"))
                                       for u in page.guard.requests)
    assert any("/vendor/maplibre-gl/maplibre-gl-worker.mjs" in u for u in page.guard.requests)
    assert any("/styles/sprites/" in u for u in page.guard.requests)
    screenshot("map-public")
    page.guard.check()


def test_login_box_officer_sees_internal_layers_legend_and_time_slider(browser_page, e2e_server, e2e_keys, parcel,
                                                                       screenshot):
    page = browser_page
    open_map(page, query=f"?center={parcel['lon']},{parcel['lat']}&zoom=16")
    # log in through the login box: the key is kept in localStorage and sent as a header
    page.fill("#api-key", e2e_keys["land-officer"])
    page.click("#login-btn")
    wait_js(page, "geotwin.state.who && geotwin.state.who.role === 'land-officer' && "
                  "geotwin.state.groups.includes('parcels') && !geotwin.state.loading")
    wait_js(page, READY)
    assert page.evaluate("localStorage.getItem('geotwin.apiKey')") == e2e_keys["land-officer"]
    assert "cases:write" in page.inner_text("#who")
    assert {"parcels", "land_use", "basic_farmland", "eco_redline", "findings"} <= set(page.evaluate("geotwin.state.groups"))

    today = page.evaluate("geotwin.state.date")
    ids_now = set(rendered(page, "parcels-fill", prop="parcel_id"))
    assert parcel["id"] in ids_now
    # the legend lists the land-use classes of the served style, code by code, with their colours
    style = api(e2e_server, "/styles/district", e2e_keys["land-officer"], datetime=today)
    expr = next(layer for layer in style["layers"] if layer["id"] == "land_use-fill")["paint"]["fill-color"]
    colours = {expr[i + 1] for i in range(2, len(expr) - 2, 2)}
    legend = page.evaluate("[...document.querySelectorAll('#legend .legend-row')].map((r) => "
                           "[r.dataset.codes, getComputedStyle(r.querySelector('i')).backgroundColor])")
    assert len(legend) == len(colours) and any(codes.startswith("0101") for codes, _ in legend)
    assert "水田" in page.inner_text("#legend")

    # the time slider: land use differs between the two surveys (2020 and 2023) as the features
    # API says, and the parcels (valid from the demo's reference date) are not drawn before it
    seen = {}
    for date in ("2022-06-01", "2024-06-01"):
        page.fill("#time-date", date)
        page.dispatch_event("#time-date", "change")
        wait_style(page, date)
        wait_js(page, READY)
        assert rendered(page, "parcels-fill") == [], date
        assert f"datetime={date}" in page.evaluate("geotwin.map.getStyle().sources.ortho.url")
        seen[date] = set(rendered(page, "land_use-fill", prop="bsm"))
        assert seen[date], date
        west, south, east, north = page.evaluate("geotwin.map.getBounds().toArray().flat()")
        fc = api(e2e_server, "/collections/land_use/items", e2e_keys["land-officer"], datetime=date, limit=10000,
                 bbox=f"{west},{south},{east},{north}")
        assert seen[date] <= {f["properties"]["bsm"] for f in fc["features"]}, date
    assert seen["2022-06-01"] != seen["2024-06-01"]
    # back to today: the parcels are drawn again
    page.fill("#time-date", today)
    page.dispatch_event("#time-date", "change")
    wait_style(page, today)
    wait_js(page, READY)
    assert parcel["id"] in set(rendered(page, "parcels-fill", prop="parcel_id"))
    screenshot("map-officer")


def test_search_flies_to_a_known_place(browser_page, e2e_server, e2e_district):
    import pyogrio

    lf = next(x for x in e2e_district.layers if x.layer == "place_names")
    names = pyogrio.read_dataframe(lf.path, columns=["name", "kind"], read_geometry=False)
    name = sorted(names[names["kind"] == "reservoir"]["name"])[0]
    expected = api(e2e_server, "/geocode/search", q=name)["features"][0]
    assert expected["properties"]["name"] == name
    page = browser_page
    open_map(page)
    start = page.evaluate("geotwin.map.getCenter().toArray()")
    page.fill("#search", name[:2])  # autocomplete offers names as one types
    page.wait_for_selector("#search-list li[data-i]")
    assert page.locator("#search-list li[data-i]").count() >= 1
    page.fill("#search", name)
    page.wait_for_function(f"[...document.querySelectorAll('#search-list li')].some((li) => li.textContent.includes({json.dumps(name)}))")
    page.press("#search", "Enter")
    wait_js(page, "geotwin.state.lastFly && geotwin.state.lastFly.done")
    lon, lat = page.evaluate("geotwin.map.getCenter().toArray()")
    want_lon, want_lat = expected["geometry"]["coordinates"]
    metres = math.hypot((lon - want_lon) * 111_320 * math.cos(math.radians(lat)), (lat - want_lat) * 110_574)
    assert metres < 5, (lon, lat, want_lon, want_lat)
    moved = math.hypot((start[0] - want_lon) * 111_320, (start[1] - want_lat) * 110_574)
    assert moved > 200, "the known place was already at the centre: the test would prove nothing"
    assert page.evaluate("geotwin.map.getZoom()") >= 15.9


def test_click_parcel_shows_attributes_area_history_findings(browser_page, e2e_server, e2e_keys, e2e_run, parcel,
                                                             screenshot):
    page = browser_page
    key = e2e_keys["land-officer"]
    open_map(page, key, f"?center={parcel['lon']},{parcel['lat']}&zoom=16")
    click_at(page, parcel["lon"], parcel["lat"])
    page.wait_for_selector("#parcel-history")
    body = page.inner_text("#info-body")
    assert page.inner_text("#parcel-id") == parcel["id"]
    props = parcel["item"]["properties"]
    assert props["contract_no"] in body and "合同编号" in body
    # the computed area (ellipsoidal, in the browser) agrees with the projected area of the parcel
    m2 = float(page.get_attribute("#parcel-area", "data-m2"))
    assert abs(m2 - parcel["area_m2"]) / parcel["area_m2"] < 0.001, (m2, parcel["area_m2"])
    text = page.inner_text("#parcel-area")
    assert "公顷" in text and "亩" in text
    assert f"{parcel['area_m2'] / 10000:.4f}"[:5] in text
    versions = api(e2e_server, f"/collections/parcels/items/{parcel['id']}/versions", key)["features"]
    assert page.locator("#parcel-history tr").count() == len(versions) + 1
    # its findings: those of the latest run for this parcel (R10 planted), with their evidence
    expected = api(e2e_server, f"/supervision/runs/{e2e_run.run_id}/findings", key)["findings"]
    mine = sorted(f["rule"] for f in expected if f["parcel_id"] == parcel["id"])
    assert "R10" in mine
    shown = sorted(page.eval_on_selector_all("#parcel-findings .finding", "els => els.map((e) => e.dataset.rule)"))
    assert shown == mine
    assert page.locator("#parcel-findings details").count() == len(mine)
    # the officer may open a case: the action is offered
    assert page.locator("#open-case").is_visible()
    screenshot("map-parcel")


def test_officer_case_life_and_planner_read_only(browser_page, browser, e2e_server, e2e_keys, parcel, tmp_path):
    from PIL import Image

    page = browser_page
    key = e2e_keys["land-officer"]
    open_map(page, key, f"?parcel={parcel['id']}&center={parcel['lon']},{parcel['lat']}&zoom=16")
    page.wait_for_selector("#open-case")
    page.click("#open-case")
    page.wait_for_selector("#parcel-cases .case[data-status=open]")
    cid = int(page.get_attribute("#parcel-cases .case", "data-case"))
    case = api(e2e_server, f"/supervision/cases/{cid}", key)
    assert case["status"] == "open" and case["parcel_id"] == parcel["id"]
    assert {f["rule"] for f in case["findings"]} >= {"R10"}
    # an inspection record with a photo
    photo = tmp_path / "site.png"
    Image.new("RGB", (32, 24), (200, 120, 40)).save(photo)
    page.fill(".inspect-form textarea[name=text]", "现场核查：退线范围内建筑一栋")
    page.set_input_files(".inspect-form input[name=files]", str(photo))
    page.click(".inspect-form button[type=submit]")
    page.wait_for_selector("#parcel-cases tr.event[data-kind=inspection] a[data-file]")
    case = api(e2e_server, f"/supervision/cases/{cid}", key)
    insp = [e for e in case["events"] if e["kind"] == "inspection"]
    assert len(insp) == 1 and insp[0]["files"][0]["file_name"] == "site.png"
    assert insp[0]["files"][0]["size_bytes"] == photo.stat().st_size
    # close it with a disposition
    page.select_option(".close-form select[name=disposition]", "rectified")
    page.fill(".close-form input[name=reason]", "已拆除退线范围内建筑")
    page.click(".close-form button[type=submit]")
    page.wait_for_selector("#parcel-cases .case[data-status=closed]")
    case = api(e2e_server, f"/supervision/cases/{cid}", key)
    assert case["status"] == "closed" and case["disposition"] == "rectified"
    assert not page.locator(".inspect-form").count() and not page.locator(".close-form").count()

    # a planner reads findings and cases but is offered no action
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=e2e_server)
    try:
        other = ctx.new_page()
        other.set_default_timeout(E2E_TIMEOUT_MS)
        errors = []
        other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        open_map(other, e2e_keys["planner"], f"?parcel={parcel['id']}&center={parcel['lon']},{parcel['lat']}&zoom=16")
        other.wait_for_selector("#parcel-cases .case[data-status=closed]")
        assert other.locator("#open-case").count() == 0 and other.locator(".inspect-form").count() == 0
        assert other.locator("#parcel-cases .no-permission").count() == 1
        assert other.locator("#parcel-findings .finding").count() >= 1
        assert "basic_farmland" not in other.evaluate("geotwin.state.groups")  # restricted: not for planners
        assert errors == []
    finally:
        ctx.close()


def add_vertex(page, lon: float, lat: float):
    """Click a vertex of the active tool and wait until the app has taken it."""
    n = page.evaluate("geotwin.state.toolPts.length")
    click_at(page, lon, lat)
    wait_js(page, f"geotwin.state.toolPts.length === {n + 1}")


def finish_draw(page) -> dict:
    """Finish the drawn polygon and wait until the app has answered (parcels listed, or a refusal)."""
    before = page.evaluate("geotwin.state.drawResult ? geotwin.state.drawResult.seq || 0 : 0")
    page.click("#tool-finish")
    wait_js(page, f"geotwin.state.drawResult && geotwin.state.drawResult.done && geotwin.state.drawResult.seq > {before}")
    return page.evaluate("geotwin.state.drawResult")


def drawn_shape(result: dict):
    """The geometry the client sent as its query polygon (the cleaned drawing), as shapely."""
    return shape(result["geometry"])


def geod_area(geom) -> float:
    """Area on GRS80 (pyproj), of a Polygon or MultiPolygon in lon/lat."""
    return sum(abs(GEOD.geometry_area_perimeter(p)[0]) for p in getattr(geom, "geoms", [geom]))


def server_touching(base: str, key: str, layer: str, geom) -> set:
    """The ids of ``layer``'s features that intersect ``geom``, by the server's bbox query + shapely."""
    fc = api(base, f"/collections/{layer}/items", key, limit=10000, bbox=",".join(map(str, geom.bounds)))
    return {str(f["id"]) for f in fc["features"] if shape(f["geometry"]).intersects(geom)}


def same_shape(a, b) -> bool:
    """The same surface up to the ~1 cm rounding of what the client sends (1e-7°): no point of one
    more than 2e-7° from the other, and areas apart by no more than the outline moved by 1e-7°."""
    ok = a.hausdorff_distance(b) < 2e-7 and abs(a.area - b.area) <= 1e-7 * b.length
    assert ok, f"not the same shape: hausdorff {a.hausdorff_distance(b):.3g}°, areas {a.area:.6g} / {b.area:.6g}\n{a.wkt}\n{b.wkt}"
    return ok


def inner_circle(geom):
    """Centre (lon, lat) and radius (degrees) of a circle well inside ``geom``: 60 % of its largest
    inscribed circle. A shape drawn on it stays inside whatever the parcel's outline (notches,
    spikes) — unlike vertices picked from a buffered outline, which can come out 1 px apart or
    crossing."""
    c = shapely.maximum_inscribed_circle(geom, tolerance=1e-7)
    (x, y), r = c.coords[0], c.length
    return x, y, 0.6 * r


def test_measure_draw_export_and_swipe(browser_page, e2e_server, e2e_keys, parcel, screenshot):
    page = browser_page
    key = e2e_keys["land-officer"]
    open_map(page, key, f"?center={parcel['lon']},{parcel['lat']}&zoom=16")
    # measure a distance between two clicked points
    b = parcel["geom"].bounds
    a_pt, b_pt = (b[0], b[1]), (b[2], b[3])
    page.click("#measure-line")
    add_vertex(page, *a_pt)
    add_vertex(page, *b_pt)
    got = page.evaluate("geotwin.state.toolPts")
    metres = GEOD.line_length([p[0] for p in got], [p[1] for p in got])
    shown = float(page.inner_text("#tool-result").split(":")[1].split()[0].replace(",", ""))
    assert abs(shown - metres) / metres < 0.005, (shown, metres)
    # draw a pentagon inside the parcel: the parcels it touches are listed
    page.click("#draw-poly")
    x, y, r = inner_circle(parcel["geom"])
    pentagon = [(x + r * math.cos(2 * math.pi * k / 5), y + r * math.sin(2 * math.pi * k / 5)) for k in range(5)]
    assert shapely.Polygon(pentagon).within(parcel["geom"])
    for lon, lat in pentagon:
        add_vertex(page, lon, lat)
    result = finish_draw(page)
    assert not result.get("error") and not result.get("errors"), result
    assert result["fixes"] == {"duplicates": 0, "crossings": 0, "parts": 1}, result["fixes"]
    drawn = drawn_shape(result)
    assert drawn.is_valid and same_shape(drawn, shapely.Polygon(page.evaluate("geotwin.state.toolPts")))
    touched = set(result["parcels"])
    assert parcel["id"] in touched
    assert touched == server_touching(e2e_server, key, "parcels", drawn)
    assert result["area_m2"] == pytest.approx(geod_area(drawn), rel=1e-3)  # the drawn polygon's area on GRS80
    page.click("#tool-clear")
    page.click("#draw-poly")  # tool off
    # a feature whose attributes would be spreadsheet formulas (OWASP CSV / formula injection) is in
    # the view: here a finding of the client's findings source (server data) given hostile values
    hostile = {"note": '=HYPERLINK("http://127.0.0.1/x","y")', "plus": "+41", "minus": "-3", "at": "@SUM(A1)",
               "tab": "\tcmd", "cr": "\rcmd", "plain": "a=b", "negative": -5, "ratio": 12.5, "@head": "x"}
    assert page.evaluate("!!geotwin.map.getSource('findings') && !!geotwin.state.findings"), \
        "the officer's map has no findings source (the latest supervision run's findings did not load)"
    d = 0.4 * r
    square = [[x - d, y - d], [x + d, y - d], [x + d, y + d], [x - d, y + d], [x - d, y - d]]
    page.evaluate("""([props, ring]) => {
        const src = geotwin.map.getSource('findings'), data = geotwin.state.findings;
        src.setData({...data, features: [...data.features,
            {type: 'Feature', id: 999999, properties: props, geometry: {type: 'Polygon', coordinates: [ring]}}]});
    }""", [hostile, square])
    wait_js(page, "geotwin.map.loaded() && geotwin.map.queryRenderedFeatures({layers: ['findings-fill']})"
                  ".some((f) => f.properties.plus === '+41')")
    # export the view's features: GeoJSON and XLSX (read back by openpyxl)
    with page.expect_download() as dl:
        page.click("#export-geojson")
    doc = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    layers = {f["properties"]["layer"] for f in doc["features"]}
    assert doc["type"] == "FeatureCollection" and {"parcels", "buildings", "findings"} <= layers
    raw = next(f["properties"] for f in doc["features"] if f["properties"].get("plus"))
    assert raw["note"] == hostile["note"] and raw["negative"] == -5  # GeoJSON keeps the values as they are
    with page.expect_download() as dl:
        page.click("#export-xlsx")
    assert dl.value.suggested_filename.endswith(".xlsx")
    ws = openpyxl.load_workbook(io.BytesIO(Path(dl.value.path()).read_bytes())).active
    rows = list(ws.iter_rows(values_only=True))
    assert len(rows) == len(doc["features"]) + 1 and "layer" in rows[0]
    head = list(rows[0])
    assert "'@head" in head and "@head" not in head  # column names are strings from the data too
    row = dict(zip(head, next(r for r in rows[1:] if r[head.index("plus")])))
    assert row["note"] == "'" + hostile["note"]
    assert (row["plus"], row["minus"], row["at"]) == ("'+41", "'-3", "'@SUM(A1)")
    assert (row["tab"], row["cr"]) == ("'\tcmd", "'\rcmd")
    assert row["plain"] == "a=b" and row["'@head"] == "x"
    assert row["negative"] == -5 and isinstance(row["negative"], (int, float))  # numbers stay numbers
    assert row["ratio"] == 12.5 and isinstance(row["ratio"], float)
    numeric = [c for c in ("price_cny", "far_max") if c in head]
    assert numeric and all(isinstance(r[head.index(c)], (int, float)) for r in rows[1:] for c in numeric
                           if r[head.index(c)] not in (None, "")), numeric
    assert not any(isinstance(v, str) and v and v[0] in "=+-@\t\r" for r in rows for v in r)
    # swipe between two imagery dates: a second map of the earlier epoch, clipped at the handle
    page.fill("#swipe-date", "2022-01-01")
    page.check("#swipe-on")
    wait_js(page, "geotwin.state.swipeDate === '2022-01-01' && geotwin.mapB.loaded() && geotwin.map.loaded()")
    assert "datetime=2022-01-01" in page.evaluate("geotwin.mapB.getStyle().sources.ortho.url")
    # both maps show the same place
    cam = "(m) => [m.getCenter().lng, m.getCenter().lat, m.getZoom()]"
    a_cam, b_cam = page.evaluate(f"[({cam})(geotwin.map), ({cam})(geotwin.mapB)]")
    assert a_cam == pytest.approx(b_cam, abs=1e-7)
    assert page.evaluate("geotwin.map.getLayoutProperty('imagery-ortho', 'visibility')") == "visible"
    assert page.evaluate("getComputedStyle(document.getElementById('map-b')).clipPath").startswith("inset(")

    def ortho_tiles():
        tiles = [u for u in page.guard.requests if "/imagery/collections/ortho/tiles/" in u]
        return (any("datetime=2022-01-01" in u for u in tiles) and any("datetime=2022-01-01" not in u for u in tiles)
                and tiles)

    poll(page, ortho_tiles, "ortho tiles of both dates (the swipe map's and the main map's)")
    assert page.evaluate("geotwin.map.getLayoutProperty('parcels-fill', 'visibility')") == "none"
    assert page.evaluate("geotwin.map.getLayoutProperty('parcels-line', 'visibility')") == "visible"
    box = page.locator("#swipe-handle").bounding_box()
    wrap_x = page.locator("#map-wrap").bounding_box()["x"]
    page.mouse.move(box["x"] + 3, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] - 150, box["y"] + 200, steps=4)
    page.mouse.up()
    want = box["x"] + 3 - 150 - wrap_x
    wait_js(page, f"Math.abs(parseFloat(document.getElementById('swipe-handle').style.left) - {want}) <= 5")
    left = page.evaluate("parseFloat(document.getElementById('swipe-handle').style.left)")
    assert page.evaluate("document.getElementById('map-b').style.clipPath") == f"inset(0px 0px 0px {left:g}px)"
    screenshot("map-swipe")
    page.uncheck("#swipe-on")
    wait_js(page, "geotwin.map.getLayoutProperty('parcels-fill', 'visibility') === 'visible'")
    # print a map page: the print stylesheet leaves the map and a caption with the date
    page.evaluate("window.printed = 0; addEventListener('beforeprint', () => { window.printed += 1; })")
    page.click("#print")
    wait_js(page, "window.printed === 1")
    page.emulate_media(media="print")
    assert page.evaluate("getComputedStyle(document.getElementById('panel')).display") == "none"
    assert page.evaluate("geotwin.state.date") in page.inner_text("#print-caption")
    page.emulate_media(media="screen")


def test_cleaning_the_issue_polygon(browser_page, e2e_server, e2e_keys):
    """The map client's cleaning of a drawn polygon, on the degenerate polygon of issue 12 (item 13):
    the repeated vertex goes, the bow-tie becomes its two lobes, the server takes the result (it
    refused the original with 400), and fewer than 3 distinct points (or a zero area) is refused."""
    page = browser_page
    open_map(page)
    key = e2e_keys["land-officer"]
    original = shapely.Polygon(ISSUE_POLYGON)
    assert not original.is_valid  # the oracle: GEOS sees the self-intersection too

    def items(wkt: str):
        return httpx.get(e2e_server + "/collections/parcels/items", headers={"Authorization": f"Bearer {key}"},
                         params={"filter": f"S_INTERSECTS(geometry, {wkt})", "filter-lang": "cql2-text",
                                 "limit": 10}, timeout=30)

    assert items(original.wkt).status_code == 400  # what the server answered on the machine of the issue
    got = page.evaluate("(pts) => geotwin.cleanPolygon(pts)", [list(p) for p in ISSUE_POLYGON])
    assert not got.get("error"), got
    assert got["fixes"] == {"duplicates": 1, "crossings": 1, "parts": 2}, got["fixes"]
    cleaned = shape(got["geometry"])
    assert cleaned.geom_type == "MultiPolygon" and cleaned.is_valid
    for part in cleaned.geoms:  # no repeated vertex left
        ring = list(part.exterior.coords)[:-1]
        assert len(set(ring)) == len(ring) >= 3
    # the same surface as GEOS's own repair of the original: the two lobes of the bow-tie
    repaired = shapely.make_valid(original)
    assert same_shape(cleaned, repaired)
    assert shapely.from_wkt(got["wkt"]).equals(cleaned)
    assert items(got["wkt"]).status_code == 200  # the server takes what the client now sends
    # a simple polygon passes unchanged (apart from the ~1 cm rounding of what is sent)
    square = [(114.25, 22.72), (114.251, 22.72), (114.251, 22.721), (114.25, 22.721)]
    same = page.evaluate("(pts) => geotwin.cleanPolygon(pts)", [list(p) for p in square])
    assert same["fixes"] == {"duplicates": 0, "crossings": 0, "parts": 1}
    assert shape(same["geometry"]).equals(shapely.Polygon(square))
    # refused, with a message: fewer than 3 distinct points, or all of them on one line
    few = page.evaluate("(pts) => geotwin.cleanPolygon(pts)", [[114.25, 22.72], [114.25, 22.72], [114.251, 22.72]])
    assert few["error"] == "too_few" and "3" in few["message"] and "geometry" not in few
    flat = page.evaluate("(pts) => geotwin.cleanPolygon(pts)", [[114.25, 22.72], [114.2505, 22.72], [114.251, 22.72]])
    assert flat["error"] == "flat" and flat["message"] and "geometry" not in flat


def test_draw_degenerate_polygon_is_repaired_and_said(browser_page, e2e_server, e2e_keys, parcel, screenshot):
    """Drawing a bow-tie with a doubled vertex in the UI: the client repairs it, says so, and lists
    the parcels the repaired polygon touches; fewer than 3 distinct vertices are refused in the UI
    (in Chinese and in English) and nothing is sent."""
    page = browser_page
    key = e2e_keys["land-officer"]
    open_map(page, key, f"?center={parcel['lon']},{parcel['lat']}&zoom=16")
    x, y, r = inner_circle(parcel["geom"])
    d = r / math.sqrt(2)  # a square inside the circle, its corners ≥ 10 px apart at zoom 16
    a, b, c, dd = (x - d, y - d), (x + d, y - d), (x + d, y + d), (x - d, y + d)
    page.click("#draw-poly")
    for pt in (a, b, b, dd, c):  # b twice; a-b, b-d, d-c, c-a: the diagonals cross
        add_vertex(page, *pt)
    clicked = page.evaluate("geotwin.state.toolPts")
    assert clicked[1] == clicked[2]
    result = finish_draw(page)
    assert not result.get("error") and not result.get("errors"), result
    assert result["fixes"] == {"duplicates": 1, "crossings": 1, "parts": 2}, result["fixes"]
    text = page.inner_text("#tool-result")
    assert "已移除重复顶点" in text and "已修复自相交" in text, text
    drawn = drawn_shape(result)
    assert drawn.is_valid and drawn.geom_type == "MultiPolygon"
    repaired = shapely.make_valid(shapely.Polygon(clicked))
    assert same_shape(drawn, repaired)
    touched = set(result["parcels"])
    assert parcel["id"] in touched and touched == server_touching(e2e_server, key, "parcels", drawn)
    assert set(result["basic_farmland"]) == server_touching(e2e_server, key, "basic_farmland", drawn)
    assert result["area_m2"] == pytest.approx(geod_area(drawn), rel=1e-3)
    # the map shows what was queried: the repaired lobes
    sketch = page.evaluate("geotwin.map.getSource('sketch').getData()")
    assert [shape(f["geometry"]) for f in sketch["features"] if f["geometry"]["type"] != "Point"] == [drawn]
    screenshot("map-draw-repaired")

    # fewer than 3 distinct vertices: refused with a message, no query sent
    page.click("#tool-clear")
    for pt in (a, b, b):
        add_vertex(page, *pt)
    sent = len([u for u in page.guard.requests if "filter=" in u])
    result = finish_draw(page)
    assert result["error"] == "too_few" and "parcels" not in result
    assert "至少需要 3 个不同的顶点" in page.inner_text("#tool-result")
    assert page.evaluate("document.getElementById('tool-result').classList.contains('error')")
    page.click("#lang")
    result = finish_draw(page)
    assert result["error"] == "too_few"
    assert "at least 3 distinct vertices" in page.inner_text("#tool-result").lower()
    page.click("#lang")
    assert len([u for u in page.guard.requests if "filter=" in u]) == sent
