"""The map client (/map) end to end: Debian's chromium (headless, WebGL through SwiftShader) against
a real uvicorn server over the small demo district in PostGIS. Every test runs under the guards of
``browser_page`` (no request leaving 127.0.0.1, no console or page error). What the map draws is
read back from MapLibre (``queryRenderedFeatures``), and checked against the server's own APIs."""

from __future__ import annotations

import io
import json
import math

import httpx
import openpyxl
import pyproj
import pytest
import shapely
from shapely.geometry import shape
from shapely.ops import transform

READY = ("window.geotwin && geotwin.state.ready && !geotwin.state.loading && geotwin.state.styleDate"
         " && geotwin.map.loaded()")
TO_4547 = pyproj.Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True).transform


def open_map(page, key: str | None = None, query: str = ""):
    """Open /map (as the holder of ``key``, kept in localStorage as the login box does) and wait
    until the district style is loaded and every tile of the view is drawn."""
    if key:
        page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(key)})")
    sep = "&" if "?" in query else "?"
    page.goto(f"/map/{query or ''}{sep}hide=hillshade")  # hillshade: terrain-RGB tiles, slow under SwiftShader
    page.wait_for_function(READY, timeout=60_000)
    assert page.evaluate("geotwin.state.error") is None


def wait_style(page, date: str):
    page.wait_for_function(f"geotwin.state.styleDate === {json.dumps(date)} && !geotwin.state.loading", timeout=60_000)


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
    page.wait_for_function("geotwin.state.who && geotwin.state.who.role === 'land-officer' && "
                           "geotwin.state.groups.includes('parcels') && !geotwin.state.loading", timeout=60_000)
    page.wait_for_function(READY, timeout=60_000)
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
        page.wait_for_function(READY)
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
    page.wait_for_function(READY)
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
    page.wait_for_function("geotwin.state.lastFly && geotwin.state.lastFly.done", timeout=30_000)
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


def test_measure_draw_export_and_swipe(browser_page, e2e_server, e2e_keys, parcel, screenshot):
    page = browser_page
    open_map(page, e2e_keys["land-officer"], f"?center={parcel['lon']},{parcel['lat']}&zoom=16")
    # measure a distance between two clicked points
    b = parcel["geom"].bounds
    a_pt, b_pt = (b[0], b[1]), (b[2], b[3])
    page.click("#measure-line")
    click_at(page, *a_pt)
    click_at(page, *b_pt)
    got = page.evaluate("geotwin.state.toolPts")
    geod = pyproj.Geod(ellps="GRS80")
    metres = geod.line_length([p[0] for p in got], [p[1] for p in got])
    shown = float(page.inner_text("#tool-result").split(":")[1].split()[0].replace(",", ""))
    assert abs(shown - metres) / metres < 0.005, (shown, metres)
    # draw a polygon inside the parcel: the parcels it touches are listed
    page.click("#draw-poly")
    inner = parcel["geom"].buffer(-0.00005).exterior.coords[:-1]  # ~5 m inside
    step = max(1, len(inner) // 5)
    for lon, lat in list(inner)[::step][:6]:
        click_at(page, lon, lat)
    page.click("#tool-finish")
    page.wait_for_function("geotwin.state.drawResult && geotwin.state.drawResult.parcels")
    touched = page.evaluate("geotwin.state.drawResult.parcels")
    assert parcel["id"] in touched
    drawn = shapely.Polygon(page.evaluate("geotwin.state.toolPts"))
    want = {f["id"] for f in api(e2e_server, "/collections/parcels/items", e2e_keys["land-officer"], limit=1000,
                                 bbox=",".join(map(str, drawn.bounds)))["features"]
            if shape(f["geometry"]).intersects(drawn)}
    assert set(touched) == want
    lons, lats = zip(*page.evaluate("geotwin.state.toolPts"))
    area = abs(geod.polygon_area_perimeter(lons, lats)[0])  # the drawn polygon's area on GRS80
    assert page.evaluate("geotwin.state.drawResult.area_m2") == pytest.approx(area, rel=1e-3)
    page.click("#tool-clear")
    page.click("#draw-poly")  # tool off
    # export the view's features: GeoJSON and XLSX (read back by openpyxl)
    with page.expect_download() as dl:
        page.click("#export-geojson")
    doc = json.loads(open(dl.value.path(), encoding="utf-8").read())
    layers = {f["properties"]["layer"] for f in doc["features"]}
    assert doc["type"] == "FeatureCollection" and {"parcels", "buildings"} <= layers
    with page.expect_download() as dl:
        page.click("#export-xlsx")
    assert dl.value.suggested_filename.endswith(".xlsx")
    ws = openpyxl.load_workbook(io.BytesIO(open(dl.value.path(), "rb").read())).active
    rows = list(ws.iter_rows(values_only=True))
    assert len(rows) == len(doc["features"]) + 1 and "layer" in rows[0]
    # swipe between two imagery dates: a second map of the earlier epoch, clipped at the handle
    page.fill("#swipe-date", "2022-01-01")
    page.check("#swipe-on")
    page.wait_for_function("geotwin.state.swipeDate === '2022-01-01' && geotwin.mapB.loaded()", timeout=60_000)
    assert "datetime=2022-01-01" in page.evaluate("geotwin.mapB.getStyle().sources.ortho.url")
    # both maps show the same place
    cam = "(m) => [m.getCenter().lng, m.getCenter().lat, m.getZoom()]"
    a_cam, b_cam = page.evaluate(f"[({cam})(geotwin.map), ({cam})(geotwin.mapB)]")
    assert a_cam == pytest.approx(b_cam, abs=1e-7)
    assert page.evaluate("geotwin.map.getLayoutProperty('imagery-ortho', 'visibility')") == "visible"
    assert page.evaluate("getComputedStyle(document.getElementById('map-b')).clipPath").startswith("inset(")
    tiles = [u for u in page.guard.requests if "/imagery/collections/ortho/tiles/" in u]
    assert any("datetime=2022-01-01" in u for u in tiles) and any("datetime=2022-01-01" not in u for u in tiles)
    assert page.evaluate("geotwin.map.getLayoutProperty('parcels-fill', 'visibility')") == "none"
    assert page.evaluate("geotwin.map.getLayoutProperty('parcels-line', 'visibility')") == "visible"
    box = page.locator("#swipe-handle").bounding_box()
    page.mouse.move(box["x"] + 3, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] - 150, box["y"] + 200, steps=4)
    page.mouse.up()
    left = page.evaluate("parseFloat(document.getElementById('swipe-handle').style.left)")
    assert abs(left - (box["x"] + 3 - 150 - page.locator("#map-wrap").bounding_box()["x"])) <= 5
    assert page.evaluate("document.getElementById('map-b').style.clipPath") == f"inset(0px 0px 0px {left:g}px)"
    screenshot("map-swipe")
    page.uncheck("#swipe-on")
    page.wait_for_function("geotwin.map.getLayoutProperty('parcels-fill', 'visibility') === 'visible'")
    # print a map page: the print stylesheet leaves the map and a caption with the date
    page.evaluate("window.printed = 0; addEventListener('beforeprint', () => { window.printed += 1; })")
    page.click("#print")
    page.wait_for_function("window.printed === 1")
    page.emulate_media(media="print")
    assert page.evaluate("getComputedStyle(document.getElementById('panel')).display") == "none"
    assert page.evaluate("geotwin.state.date") in page.inner_text("#print-caption")
    page.emulate_media(media="screen")
