"""The twin viewer (/twin, CesiumJS) end to end: Debian's chromium (headless, WebGL through
SwiftShader) against the app under uvicorn, over the small demo district and its twin built by the
CIM builder. The page must load with no console error and no request leaving 127.0.0.1 (the
``browser_page`` guards), draw geotwin's 3D Tiles over geotwin's imagery and DEM terrain, show a
clicked building's metadata (EXT_structural_metadata) with a link to its parcel in the map, follow
the time slider (no twin before its date, the imagery epoch of the date), compare two dates side
by side, search a place and fly there, measure a distance, and colour by supervision status for a
planner's key. Screenshots go to the artefact folder."""

from __future__ import annotations

import math
import time

import pytest

from tests.e2e.twin_fixtures import AS_OF, BEFORE_TWIN, BIM_MODEL, known_building, known_place  # noqa: F401

IDLE_MS = 100_000


def wait_ready(page, timeout=60_000):
    page.wait_for_function("window.twin && (window.twin.ready === true || window.twin.failed)", timeout=timeout)
    failed = page.evaluate("window.twin.failed || null")
    assert failed is None, f"the twin page failed to start: {failed}"


def idle(page, *, globe_soft_ms=45_000):
    """Wait until the twin's tiles are loaded; give the globe (terrain + imagery) a bounded time
    more (on a busy 2-core machine TiTiler renders ~1 tile/s), then carry on."""
    page.wait_for_function("() => { twin.viewer.scene.requestRender(); const ts = twin.state.tilesetA; return !ts || ts.tilesLoaded; }",
                           timeout=IDLE_MS, polling=500)
    try:
        page.wait_for_function("twin.viewer.scene.requestRender() || twin.viewer.scene.globe.tilesLoaded",
                               timeout=globe_soft_ms, polling=500)
    except Exception:  # noqa: BLE001 - imagery still refining: the assertions below do not need it
        pass


def show_twin(page, on):
    """Show / hide the twin and wait for a frame drawn that way (picks read the last frame's depth)."""
    page.evaluate("""(on) => new Promise((resolve) => { const scene = twin.viewer.scene;
        twin.state.tilesetA.show = on;
        const off = scene.postRender.addEventListener(() => { off(); resolve(); }); scene.requestRender(); })""", on)


def canvas_point(page, lon, lat, height):
    """Window coordinates (page pixels) of a 3D point, by SceneTransforms.worldToWindowCoordinates."""
    p = page.evaluate("([lon, lat, h]) => twin.windowPosition(lon, lat, h)", [lon, lat, height])
    assert p is not None, f"({lon}, {lat}, {height}) is not in view"
    box = page.locator("#cesium canvas").bounding_box()
    return box["x"] + p["x"], box["y"] + p["y"]


def metres_between(lon1, lat1, lon2, lat2):
    k = 111_320.0
    return math.hypot((lon2 - lon1) * k * math.cos(math.radians((lat1 + lat2) / 2)), (lat2 - lat1) * 110_570.0)


def test_twin_viewer(browser_page, e2e_server, e2e_keys, twin_tileset, known_building, known_place, open_ground,
                     screenshot):
    page = browser_page
    page.set_default_timeout(30_000)
    t0 = time.monotonic()

    def lap(what):  # stage timings, shown with -s or on failure
        print(f"{time.monotonic() - t0:6.1f} s  {what}")

    # --- anonymous: public data only, supervision colouring not offered ---------------------------
    page.goto("/twin/?lite=1")  # lite: resolutionScale 0.6, coarser globe tiles (SwiftShader on 2 shared cores)
    wait_ready(page)
    assert "匿名" in page.locator("#who").inner_text()
    assert page.locator('#colour-by option[value="supervision"]').is_disabled()

    lap('anonymous page')

    # --- a planner logs in with the key box (kept in localStorage, sent as a Bearer header) -------
    page.fill("#api-key", e2e_keys["planner"])
    with page.expect_navigation():
        page.click("#login-btn")
    wait_ready(page)
    who = page.locator("#who").inner_text()
    assert "规划人员" in who and "查看监管" in who, who
    assert not page.locator('#colour-by option[value="supervision"]').is_disabled()
    info = page.locator("#tileset-info").inner_text()
    assert "龙岗孪生 (e2e)" in info and f"{twin_tileset.buildings}" in info, info

    lap('planner page')

    # --- the twin loads its tiles over geotwin's imagery and terrain ------------------------------
    assert page.evaluate("twin.viewer.resolutionScale") == 0.6
    page.evaluate("""twin.setView({lon: 114.2515, lat: 22.700, height: 2600, pitch: -35})""")
    idle(page, globe_soft_ms=12_000)
    loaded = page.evaluate("""({tileLoads: twin.state.tileLoads, tilesLoaded: twin.state.tilesetA.tilesLoaded,
        asset: twin.state.tilesetA.asset.version, imagery: twin.viewer.imageryLayers.length,
        epoch: twin.state.layerA && twin.state.layerA.epoch,
        terrain: twin.viewer.terrainProvider.constructor.name === 'CustomHeightmapTerrainProvider'
          || !!twin.viewer.terrainProvider._callback})""")
    assert loaded["tileLoads"] > 0 and loaded["tilesLoaded"], loaded
    assert loaded["asset"] == "1.1" and loaded["imagery"] == 1 and loaded["epoch"] == "2025-11-15", loaded
    assert loaded["terrain"], loaded
    # every byte came from geotwin: its imagery tiles, its DEM as Terrain-RGB, its 3D Tiles content
    # (and the guard fails the test on any request leaving 127.0.0.1)
    reqs = page.guard.requests
    assert any("/imagery/collections/ortho/tiles/WebMercatorQuad/" in u and "datetime=2025-11-15" in u for u in reqs)
    assert any("/imagery/collections/dem/tiles/CGCS2000Quad/" in u and "algorithm=terrainrgb" in u for u in reqs)
    assert any(u.split("?")[0].endswith(".glb") and "/twin/tilesets/twin/" in u for u in reqs)
    assert any("/vendor/cesium/Cesium.js" in u for u in reqs)
    shot = screenshot("twin-overview")
    assert shot.stat().st_size > 50_000

    lap('overview loaded')

    # --- click the known building from above: its metadata and the parcel link --------------------
    b = known_building
    ground = b["ground"]
    roof = ground + b["height_m"]
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [b["lon"], b["lat"], roof + 350])
    idle(page, globe_soft_ms=6_000)
    # the terrain is geotwin's DEM (Terrain-RGB decoded, + geoid separation): once loaded there, the
    # globe's height under the building is the DEM's
    if page.evaluate("twin.viewer.scene.globe.tilesLoaded"):
        h = page.evaluate("([lon, lat]) => twin.groundHeight(lon, lat)", [b["lon"], b["lat"]])
        assert h is not None and abs(h - ground) < 3.0, (h, ground)
    x, y = canvas_point(page, b["lon"], b["lat"], roof)
    page.mouse.click(x, y)
    page.wait_for_selector("#info:not([hidden])")
    cell = page.locator('#info-body td[data-prop="building_id"]')
    assert cell.inner_text() == b["building_id"]
    assert page.locator('#info-body td[data-prop="parcel_id"]').inner_text() == b["parcel_id"]
    assert page.locator('#info-body td[data-prop="floors"]').inner_text() == str(b["floors"])
    assert b["use"] in page.locator('#info-body td[data-prop="use"]').inner_text()
    assert abs(float(page.locator('#info-body td[data-prop="height_m"]').inner_text()) - b["height_m"]) < 0.11
    href = page.locator("#parcel-link").get_attribute("href")
    assert href.startswith(f"/map/?parcel={b['parcel_id']}&date="), href
    assert page.evaluate("twin.lastPicked.kind") == "building"
    screenshot("twin-building")

    lap('building clicked')

    # --- a BIM element (the duplex IFC placed on open ground): IFC class, storey, GlobalId ----------
    g = open_ground
    ground_g = g["h"] - 2.6
    blon, blat = twin_tileset.bim_centre
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [blon, blat, ground_g + 90])
    idle(page, globe_soft_ms=3_000)
    page.wait_for_function("[...document.querySelectorAll('#storey option')].some(o => o.value === 'Level 1')")
    page.mouse.click(*canvas_point(page, blon, blat, ground_g + 3))
    page.wait_for_function("twin.lastPicked && twin.lastPicked.kind === 'bim_element'")
    el = page.evaluate("twin.lastPicked.props")
    assert el["model_id"] == BIM_MODEL and el["ifc_class"].startswith("Ifc") and len(el["global_id"]) == 22, el
    assert el["storey"] and page.locator('#info-body td[data-prop="global_id"]').inner_text() == el["global_id"]
    assert "BIM" in page.locator("#info-body h3").inner_text()
    # the storey filter: only that storey's elements (and the buildings) stay visible
    page.select_option("#storey", "Level 1")
    shown = page.evaluate("""() => { const f = twin.lastPickedFeature, show = twin.state.tilesetA.style.show;
        return {picked: show.evaluate(f), storey: f.getProperty('storey')}; }""")
    assert shown["picked"] == (shown["storey"] == "Level 1"), shown
    page.select_option("#storey", "")
    lap('BIM element')

    # --- colour by supervision status (the planner may read supervision) and by use ---------------
    page.select_option("#colour-by", "supervision")
    page.wait_for_function("twin.state.findings && twin.state.findings.size > 0")
    assert page.locator("#legend i").count() >= 5
    page.select_option("#colour-by", "use")
    assert page.evaluate("twin.state.tilesetA.style.style.color.conditions.length") >= 7

    # --- underground toggle: the ground turns see-through, the camera may go below it -------------
    page.check("#underground")
    assert page.evaluate("twin.viewer.scene.globe.translucency.enabled && "
                         "!twin.viewer.scene.screenSpaceCameraController.enableCollisionDetection")
    page.uncheck("#underground")

    lap('colours, underground')

    # --- measure: a distance on the ground (the twin hidden, so the picks hit the DEM terrain), then
    # a height: the roof, and the ground right under it -------------------------------------------
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [b["lon"], b["lat"], roof + 350])
    idle(page, globe_soft_ms=3_000)
    x, y = canvas_point(page, b["lon"], b["lat"], ground)  # the info panel narrowed the canvas
    east = b["lon"] + 60 / (111_320 * math.cos(math.radians(b["lat"])))
    show_twin(page, False)
    page.click("#measure-distance")
    page.mouse.click(x, y)
    page.mouse.click(*canvas_point(page, east, b["lat"], ground))
    m = page.evaluate("twin.lastMeasure")
    assert m and m["mode"] == "distance", m
    # top-down: the picks are the projected points (≤ ~10% further out while the terrain there is
    # still a flat parent tile)
    assert 54 < m["horizontal_m"] < 70, m
    assert "水平距离" in page.locator("#measure-result").inner_text()
    page.click("#measure-height")
    show_twin(page, True)
    page.mouse.click(*canvas_point(page, b["lon"], b["lat"], roof))
    show_twin(page, False)
    page.mouse.click(x, y)
    show_twin(page, True)
    m = page.evaluate("twin.lastMeasure")
    assert m["mode"] == "height" and b["height_m"] - 3 < m["height_m"] < b["height_m"] + ground + 3, m
    assert "高度" in page.locator("#measure-result").inner_text()
    page.click("#measure-clear")
    lap('measured')

    # --- time slider: before the twin's date there is no twin; the imagery follows the date -------
    page.fill("#time-date", BEFORE_TWIN)
    page.dispatch_event("#time-date", "change")
    page.wait_for_function("twin.state.tilesetA === null && twin.state.tilesetIdA === null")
    assert "没有孪生模型" in page.locator("#tileset-info").inner_text()
    page.fill("#time-date", "2022-03-01")
    page.dispatch_event("#time-date", "change")
    page.wait_for_function("twin.state.layerA && twin.state.layerA.epoch === '2021-11-15'")
    assert "date=2022-03-01" in page.url
    page.fill("#time-date", AS_OF)
    page.dispatch_event("#time-date", "change")
    page.wait_for_function("twin.state.tilesetA !== null && twin.state.tilesetIdA === 'twin'")

    lap('time slider')

    # --- split view: left the chosen date, right the comparison date -----------------------------
    page.fill("#split-date", "2021-11-15")
    page.check("#split-on")
    page.wait_for_function("twin.state.layerB && twin.state.layerB.epoch === '2021-11-15'")
    split = page.evaluate("""({a: twin.state.layerA.splitDirection, b: twin.state.layerB.splitDirection,
        left: Cesium.SplitDirection.LEFT, right: Cesium.SplitDirection.RIGHT, pos: twin.viewer.scene.splitPosition})""")
    assert split["a"] == split["left"] and split["b"] == split["right"] and split["pos"] == 0.5, split
    assert page.locator("#split-handle").is_visible()
    page.uncheck("#split-on")
    page.wait_for_function("twin.state.layerB === null")

    lap('split view')

    # --- place search (the geocoder's autocomplete) flies to the place ----------------------------
    page.fill("#search", known_place["name"])
    item = page.locator("#search-list li", has_text=known_place["name"]).first
    item.wait_for(timeout=60_000)  # the first geocoder call refreshes its index
    item.click()
    page.wait_for_function("twin.state.lastSearch && twin.state.lastSearch.arrived", timeout=30_000)
    centre = page.evaluate("twin.viewCentre()")
    assert centre is not None
    off = metres_between(centre["lon"], centre["lat"], known_place["lon"], known_place["lat"])
    assert off < 150, (centre, known_place, off)

    lap('search')

    # --- English by the switch -------------------------------------------------------------------
    page.click("#lang")
    assert page.locator("h1").inner_text() == "Longgang 3D digital twin"
    assert "planner" in page.locator("#who").inner_text()
    page.click("#lang")  # back to Chinese for the next visitor (localStorage)


def test_a_block_model_from_far_away(browser_page, e2e_server, twin_tileset, known_building, screenshot):  # noqa: F811
    """From far away the tileset's upper levels draw street blocks (cim_builder/blocks.py): a click on
    one shows the block — its buildings' count and heights, or the landmark it stands for — and the
    hint that coming closer shows each building."""
    page = browser_page
    page.set_default_timeout(30_000)
    page.goto("/twin/?lite=1")
    wait_ready(page)
    b = known_building
    end = time.monotonic() + 240
    picked = None
    for height in (7000, 10_000, 14_000, 5000):  # block tiles are drawn until the view asks for buildings
        page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [b["lon"], b["lat"],
                                                                                          b["ground"] + height])
        idle(page, globe_soft_ms=3_000)
        page.evaluate("() => { twin.lastPicked = null; }")
        page.mouse.click(*canvas_point(page, b["lon"], b["lat"], b["ground"] + b["height_m"]))
        page.wait_for_function("twin.lastPicked !== null", timeout=20_000)
        picked = page.evaluate("twin.lastPicked")
        if picked["kind"] == "block" or time.monotonic() > end:
            break
    assert picked and picked["kind"] == "block", picked
    props = picked["props"]
    assert props["building_count"] >= 1 and props["max_height_m"] >= props["mean_height_m"] > 0, props
    assert props["block_id"].count("/") == 2 and "#" in props["block_id"], props
    title = page.locator("#info-body h3").inner_text()
    assert title in ("街区概略模型", f"地标建筑 {props.get('landmark_id')}"), title
    assert "拉近视角可查看单栋建筑" in page.locator("#info-body .hint").inner_text()
    assert page.locator('#info-body td[data-prop="building_count"]').inner_text() == str(props["building_count"])
    screenshot("twin-block")
