"""The twin viewer (/twin) below ground and indoors, end to end (issue 17): Debian's chromium
(headless, WebGL through SwiftShader) against the app under uvicorn, over the small demo district,
its buildings twin with the duplex IFC, and a hand-made pipe survey loaded through the real
ingestion and built into the underground 3D Tiles (``underground_fixtures``).

- underground mode: the ground turns see-through, the `underground` tileset (never taken for the
  buildings twin) shows the pipes coloured by type; a pipe picked from above shows its type, size,
  material and the elevations of its top / invert (those of the survey), its stored depths and
  length, and its entity record link, which opens the entity page; the type filter hides a type;
  a basement picked shows its use and depth;
- the section plane: a pipe on the far side of the plane cannot be picked any more, one on the
  near side still can; flipped, the other way round; terrain, buildings and pipes all carry the plane;
- indoor mode: only the chosen storey's rooms of the duplex are shown, the rest of the model hidden
  and the buildings dimmed; a room picked shows its name, storey and area;
- the clash panel: a basement outline drawn by clicks, 6 m deep, over the water main and the
  storm drain: the server's cuts are listed in red and the same pipes highlighted in the tileset.

Every wait is for a state of the page, never a fixed time."""

from __future__ import annotations

import json
import time

import httpx
import shapely
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e.test_twin import canvas_point, idle, wait_ready
from tests.e2e.twin_fixtures import BIM_MODEL
from tests.e2e.underground_fixtures import underground_tileset  # noqa: F401 (a fixture; pipe_site, twin_tileset: conftest)

N = -2.6  # the geoid separation the twin is built with (orthometric → ellipsoidal)

PICK_ID = """([lon, lat, h]) => { const p = twin.windowPosition(lon, lat, h); if (!p) return 'off-screen';
    const f = twin.viewer.scene.pick(new Cesium.Cartesian2(p.x, p.y));
    if (!(f instanceof Cesium.Cesium3DTileFeature)) return null;
    return String(f.getProperty('id') ?? f.getProperty('basement_id') ?? f.getProperty('building_id') ?? f.getProperty('global_id')); }"""
FRAME = """() => new Promise((resolve) => { const s = twin.viewer.scene;
    const off = s.postRender.addEventListener(() => { off(); resolve(); }); s.requestRender(); })"""
UNDERGROUND_IDLE = """() => { twin.viewer.scene.requestRender(); const u = twin.underground.state.tileset;
    const a = twin.state.tilesetA; return !!u && u.tilesLoaded && (!a || a.tilesLoaded); }"""


def pick_id(page, lon, lat, h):
    page.evaluate(FRAME)
    return page.evaluate(PICK_ID, [lon, lat, h])


def click_until_picked(page, lon, lat, h, kind: str, deadline_s: float = 120.0) -> None:
    """Click where (lon, lat, h) lands until the pick shows a ``kind``: on a loaded machine the
    frame that draws the tile just loaded may come after the first click, which then picks nothing.
    Each attempt waits for that state (not a fixed time); the whole has a deadline."""
    end = time.monotonic() + deadline_s
    page.evaluate("() => { twin.lastPicked = null; }")
    while True:
        page.mouse.click(*canvas_point(page, lon, lat, h))  # the point again: the view may have settled
        try:
            page.wait_for_function("(kind) => twin.lastPicked && twin.lastPicked.kind === kind", arg=kind,
                                   timeout=10_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > end:
                raise
            page.wait_for_function(UNDERGROUND_IDLE, polling=500)


def look_down(page, lon, lat, height):
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [lon, lat, height])
    page.wait_for_function(UNDERGROUND_IDLE, polling=500)


def test_underground_twin(browser_page, e2e_server, e2e_keys, twin_tileset, underground_tileset,  # noqa: F811
                          pipe_site, open_ground, screenshot):
    page = browser_page
    site = pipe_site
    assert underground_tileset.segments == len(site.segments), underground_tileset
    key = e2e_keys["gis-staff"]  # the pipe layers are internal
    page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(key)})")
    page.goto("/twin/?lite=1")
    wait_ready(page)

    # --- the buildings twin is not the underground tileset --------------------------------------
    assert page.evaluate("twin.state.tilesetIdA") == "twin"
    assert "underground" not in page.evaluate("twin.state.tilesets.map((t) => t.id)")

    # --- underground mode: translucent ground, the pipes tileset, its legend ---------------------
    page.check("#underground")
    page.wait_for_function("twin.underground.state.tileset !== null && twin.underground.state.entry.id === 'underground'")
    assert page.evaluate("twin.viewer.scene.globe.translucency.enabled && "
                         "!twin.viewer.scene.screenSpaceCameraController.enableCollisionDetection")
    legend = page.locator("#ug-types").inner_text()
    assert all(name in legend for name in ("给水", "雨水", "污水", "燃气", "电力", "通信")), legend

    def gz(pid):  # the ground of a survey point (orthometric)
        return site.points[pid][2]

    clon, clat = site.lonlat(0, 0)
    look_down(page, clon, clat, gz("E2EJ2") + N + 160)  # waits for both tilesets (the globe's imagery may still refine)
    screenshot("underground-overview")

    # --- pick the water main from above, through the ground ---------------------------------------
    west = "JS-E2EJ1-E2EJ2"
    js = site.segments[west]
    wlon, wlat = site.lonlat(-20, 8)
    axis_w = js["axis_z"][0] + (js["axis_z"][1] - js["axis_z"][0]) * (15 / 35)
    click_until_picked(page, wlon, wlat, axis_w + N, "pipe")
    props = page.evaluate("twin.lastPicked.props")
    assert props["id"] == west and props["type_code"] == "JS", props
    c = {k: page.locator(f'#ug-feature td[data-prop="{k}"]').inner_text() for k in ("type", "size", "material", "top_z", "invert_z")}
    assert "给水" in c["type"] and c["size"] == "DN400" and c["material"] == "球墨铸铁管", c
    # top = axis + r at both ends, as surveyed (ground − 1.2 m)
    tops = [float(v) for v in c["top_z"].split("→")]
    assert abs(tops[0] - (gz("E2EJ1") - 1.2)) < 0.05 and abs(tops[1] - (gz("E2EJ2") - 1.2)) < 0.05, (tops, c)
    # the stored feature adds depths and the length
    page.wait_for_selector('#ug-feature td[data-prop="length_m"]')
    assert abs(float(page.locator('#ug-feature td[data-prop="length_m"]').inner_text()) - 35.0) < 0.2
    assert page.locator('#ug-feature td[data-prop="depth"]').inner_text().startswith("1.20")
    # its entity record
    code = site.codes[("pipe_segments", west)]
    with page.expect_popup() as pop:
        page.click("#entity-link")
    entity_page = pop.value
    entity_page.wait_for_url("**/entities/**")
    entity_page.wait_for_load_state()
    assert code in entity_page.title(), entity_page.title()
    assert page.locator("#entity-code").inner_text() == code
    entity_page.close()
    screenshot("underground-pipe")

    # --- the type filter: 给水 off hides the water main ------------------------------------------
    shown = "twin.underground.state.tileset.style.show.evaluate(twin.lastPickedFeature)"
    assert page.evaluate(shown) is True
    page.uncheck('#ug-types input[data-type="JS"]')
    assert page.evaluate(shown) is False
    page.check('#ug-types input[data-type="JS"]')
    assert page.evaluate(shown) is True

    # --- section: a plane through the site centre, facing east, cuts the west away ----------------
    elon, elat = site.lonlat(20, 8)
    east = "JS-E2EJ2-E2EJ3"
    axis_e = site.segments[east]["axis_z"][0] + (site.segments[east]["axis_z"][1] - site.segments[east]["axis_z"][0]) * (20 / 35)
    look_down(page, clon, clat, gz("E2EJ2") + N + 160)
    assert pick_id(page, wlon, wlat, axis_w + N) == west
    assert pick_id(page, elon, elat, axis_e + N) == east
    page.check("#section-on")  # centred on the view: the site centre
    page.fill("#section-heading", "90")
    page.dispatch_event("#section-heading", "input")
    clip = page.evaluate("""() => { const s = twin.underground.state.section;
        const on = (x) => !!x.clippingPlanes && x.clippingPlanes.enabled;
        return {on: s.on, lon: s.lon, lat: s.lat, globe: on(twin.viewer.scene.globe),
                buildings: on(twin.state.tilesetA), pipes: on(twin.underground.state.tileset)}; }""")
    assert clip["on"] and clip["globe"] and clip["buildings"] and clip["pipes"], clip
    assert abs(clip["lon"] - clon) < 0.0002 and abs(clip["lat"] - clat) < 0.0002, (clip, clon, clat)
    page.wait_for_function(UNDERGROUND_IDLE, polling=500)
    assert pick_id(page, wlon, wlat, axis_w + N) != west  # the far side is cut away
    assert pick_id(page, elon, elat, axis_e + N) == east
    screenshot("underground-section")
    page.click("#section-flip")
    page.wait_for_function(UNDERGROUND_IDLE, polling=500)
    assert pick_id(page, wlon, wlat, axis_w + N) == west
    assert pick_id(page, elon, elat, axis_e + N) != east
    # moved 30 m along its heading (east), flipped (the west kept): neither pipe point is cut away
    page.fill("#section-offset", "30")
    page.dispatch_event("#section-offset", "input")
    page.wait_for_function(UNDERGROUND_IDLE, polling=500)
    assert pick_id(page, elon, elat, axis_e + N) == east and pick_id(page, wlon, wlat, axis_w + N) == west
    page.uncheck("#section-on")
    assert page.evaluate("[twin.viewer.scene.globe, twin.state.tilesetA, twin.underground.state.tileset]"
                         ".every((x) => !x.clippingPlanes || !x.clippingPlanes.enabled)")

    # --- clash: a 6 m deep basement outline drawn over the water main and the drain ----------------
    look_down(page, clon, clat, gz("E2EJ2") + N + 160)
    page.click("#clash-draw")
    outline = [(-10, 2), (15, 2), (15, 14), (-10, 14)]
    for dx, dy in outline:
        lon, lat = site.lonlat(dx, dy)
        page.mouse.click(*canvas_point(page, lon, lat, site.ground(site.x0 + dx, site.y0 + dy) + N))
    page.click("#clash-finish")
    assert page.evaluate("twin.underground.state.clash.points.length") == 4
    page.fill("#clash-depth", "6")
    page.click("#clash-run")
    page.wait_for_function("twin.underground.state.clash.result || twin.underground.state.clash.error")
    assert page.evaluate("twin.underground.state.clash.error") is None
    cuts = set(page.evaluate("[...twin.underground.state.clash.cuts]"))
    assert cuts == {"JS-E2EJ1-E2EJ2", "JS-E2EJ2-E2EJ3", "YS-E2EY1-E2EY2"}, cuts
    listed = set(page.locator("#clash-pipes tr.clash-cut").evaluate_all("(rows) => rows.map((r) => r.dataset.id)"))
    assert listed == cuts
    assert "DL-E2ED1-E2ED2" not in listed
    # the same request straight to the API gives the same cuts (the panel shows the server's answer)
    lonlats = [list(site.lonlat(dx, dy)) for dx, dy in outline]
    r = httpx.post(f"{e2e_server}/twin/clash", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"footprint": {"type": "Polygon", "coordinates": [lonlats + [lonlats[0]]]}, "depth_m": 6})
    assert r.status_code == 200, r.text
    assert {p["id"] for p in r.json()["pipes"] if p["cuts"]} == cuts
    # highlighted in the tileset: cuts red, the other pipes dimmed
    colours = page.evaluate("""() => { const out = {}; const ts = twin.underground.state.tileset;
        twin.underground.forEachFeature(ts, (f) => { const id = f.getProperty('id');
          if (id && f.getProperty('start_axis_z') !== undefined) out[id] = ts.style.color.evaluateColor(f, new Cesium.Color()).toBytes(); });
        return out; }""")
    for fid in cuts:
        assert colours[fid][:3] == [255, 23, 68], (fid, colours[fid])
    assert colours["DL-E2ED1-E2ED2"][3] < 100, colours
    assert page.locator("#clash-result a").count() >= 1
    screenshot("underground-clash")
    page.click("#clash-clear")
    assert page.evaluate("twin.underground.state.clash.result") is None

    # --- indoor mode: the duplex's rooms storey by storey -------------------------------------------
    page.uncheck("#underground")
    mlon, mlat = twin_tileset.bim_centre
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})", [mlon, mlat, open_ground["h"] + N + 90])
    idle(page, globe_soft_ms=5_000)
    page.wait_for_function("[...document.querySelectorAll('#storey option')].some((o) => o.value)")  # BIM tiles loaded
    page.check("#indoor-on")
    page.select_option("#indoor-model", BIM_MODEL)
    page.wait_for_function("twin.underground.state.indoor.storeys.length > 0")
    storeys = page.evaluate("twin.underground.state.indoor.storeys")
    with_rooms = [s for s in storeys if (s["rooms"] or 0) > 0]
    assert with_rooms, storeys
    storey = with_rooms[0]
    page.select_option("#indoor-storey", storey["name"])
    seen = page.evaluate("""([model, storey]) => { const ts = twin.state.tilesetA, st = ts.style; let shown = 0, wrong = 0, dimmed = 0, others = 0;
        twin.underground.forEachFeature(ts, (f) => {
          const show = st.show.evaluate(f);
          if (f.getProperty('model_id') === model) {
            const want = f.getProperty('is_space') === true && f.getProperty('storey') === storey;
            if (show !== want) wrong += 1; if (show) shown += 1;
          } else if (f.getProperty('building_id') !== undefined) {
            others += 1; if (st.color.evaluateColor(f, new Cesium.Color()).alpha < 0.5) dimmed += 1;
          } });
        return {shown, wrong, dimmed, others}; }""", [BIM_MODEL, storey["name"]])
    assert seen["wrong"] == 0 and seen["shown"] == storey["rooms"], (seen, storey)
    assert seen["others"] == 0 or seen["dimmed"] == seen["others"], seen
    assert page.locator("#indoor-count").inner_text() == f"本层房间 {storey['rooms']} 间"
    # a room of that storey, picked from above
    spaces = httpx.get(f"{e2e_server}/twin/models/{BIM_MODEL}/storeys/{storey['index']}/spaces",
                       headers={"Authorization": f"Bearer {key}"}, timeout=60).json()
    room = max(spaces["features"], key=lambda f: shapely.geometry.shape(f["geometry"]).area)
    inside = shapely.geometry.shape(room["geometry"]).representative_point()
    click_until_picked(page, inside.x, inside.y, storey["elevation"] + N + 1.0, "room")
    picked = page.evaluate("twin.lastPicked.props")
    assert picked["storey"] == storey["name"] and picked["model_id"] == BIM_MODEL, picked
    assert page.locator('#ug-feature td[data-prop="name"]').inner_text() == picked["name"]
    assert float(page.locator('#ug-feature td[data-prop="area_m2"]').inner_text()) > 0
    screenshot("indoor-storey")
    page.click("#indoor-exit")
    assert page.evaluate("twin.state.tilesetA.style.show.evaluate(twin.lastPickedFeature)") is False  # rooms hidden again

    # --- a basement (the underground tileset again): its use, levels, depth ----------------------------
    page.check("#underground")
    page.wait_for_function("twin.underground.state.tileset !== null")
    look_down(page, clon, clat, gz("E2EJ2") + N + 160)
    # --- a basement: its use, levels, depth -------------------------------------------------------
    b = site.basement
    blon, blat = site.to_lonlat(*b["centre"])
    click_until_picked(page, blon, blat, b["ground_z"] + N - 0.5, "structure")
    assert page.locator('#ug-feature td[data-prop="use"]').inner_text() == "地下车库"
    assert page.locator('#ug-feature td[data-prop="depth_m"]').inner_text() == "8.0"

