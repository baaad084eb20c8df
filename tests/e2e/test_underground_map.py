"""The underground in the map client (/map), end to end (issue 17): Debian's chromium against the
app under uvicorn, over the small demo district and a hand-made pipe survey loaded through the
real ingestion inside one of its parcels (``underground_fixtures.pipe_site``).

- the layer list has the pipes group (off by default, only for a caller who may read the pipe
  layers); switched on, geotwin's vector tiles draw every surveyed segment coloured by type, the
  manholes and the basement; the legend names the types;
- a click on a pipe shows its type, size, depth and length, and its entity record link;
- the parcel panel's "地下情况" lists the pipes under the parcel (the room's /underground/under)
  with the totals by type and the basement;
- a click on a building: its entity record link opens the entity page, whose title carries the code.

Every wait is for a state (the page's ``geotwin`` state, what MapLibre rendered), never a fixed time."""

from __future__ import annotations

import json

from tests.e2e.conftest import poll
from tests.e2e.test_sensing_map import READY, click_at, wait_js
from tests.e2e.twin_fixtures import known_building  # noqa: F401 (a fixture; pipe_site: conftest)

RENDERED = """(layer) => geotwin.map.getLayer(layer)
    ? geotwin.map.queryRenderedFeatures({layers: [layer]}).map((f) => String(f.properties.id ?? f.properties.basement_id)) : []"""


def rendered(page, layer: str, want: set[str]) -> set[str]:
    """Wait until ``layer`` draws at least ``want`` with every tile of the view loaded; what it draws."""
    def drawn():
        got = set(page.evaluate(RENDERED, layer))
        return got >= want and page.evaluate("geotwin.map.areTilesLoaded() && !geotwin.map.isMoving()") and got
    return poll(page, drawn, f"{layer} drawing {sorted(want)}")


def test_underground_map(browser_page, e2e_server, e2e_keys, pipe_site, known_building, database,  # noqa: F811
                         screenshot):
    from spatial_api import db, entities

    page = browser_page
    site = pipe_site
    # anonymous: the pipe layers are internal, the group is not offered
    lon, lat = site.lonlat(0, 0)
    page.goto(f"/map/?center={lon},{lat}&zoom=18&hide=hillshade,imagery")
    wait_js(page, READY)
    assert page.locator('#layer-list input[data-group="pipes"], #layer-list input[data-group="basements"]').count() == 0
    assert page.locator("#underground").is_hidden()

    # --- gis-staff: the pipes and basements groups, off by default ----------------------------------
    page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(e2e_keys['gis-staff'])})")
    page.goto(f"/map/?center={lon},{lat}&zoom=18&hide=hillshade,imagery")
    wait_js(page, READY)
    box = page.locator('#layer-list input[data-group="pipes"]')
    basements = page.locator('#layer-list input[data-group="basements"]')
    assert box.count() == 1 and not box.is_checked() and basements.count() == 1 and not basements.is_checked()
    assert page.evaluate("geotwin.map.getLayoutProperty('pipes-line', 'visibility')") == "none"
    assert not page.evaluate(RENDERED, "pipes-line")
    legend = page.locator("#underground-legend").inner_text()
    assert all(name in legend for name in ("给水", "雨水", "电力", "检查井", "地下室")), legend
    box.check()
    basements.check()
    drawn = rendered(page, "pipes-line", set(site.segments))
    assert drawn == set(site.segments), drawn
    assert rendered(page, "pipes-manhole", {"YS-E2EY1", "YS-E2EY2", "YS-E2EY3"})
    assert rendered(page, "basements-fill", {"E2E-B1"})
    assert page.evaluate("geotwin.map.getPaintProperty('basements-fill', 'fill-pattern')") == "ug-hatch-basement"
    # coloured by type: the style's expression gives each type its customary colour
    colour = page.evaluate("""() => { const e = geotwin.map.getPaintProperty('pipes-line', 'line-color');
        const m = {}; for (let i = 2; i + 1 < e.length; i += 2) m[e[i]] = e[i + 1]; return m; }""")
    assert colour["JS"] == "#1f5fd6" and colour["YS"] == "#a0522d" and colour["DL"] == "#e02020", colour
    screenshot("map-pipes")

    # --- a pipe: its panel and entity record --------------------------------------------------------
    click_at(page, *site.lonlat(-20, 8))
    page.wait_for_selector('#ug-feature[data-layer="pipe_segments"]')
    assert page.locator("#ug-id").inner_text() == "JS-E2EJ1-E2EJ2"
    assert "给水" in page.locator('#ug-feature td[data-prop="type"]').inner_text()
    assert page.locator('#ug-feature td[data-prop="size"]').inner_text() == "DN400"
    assert page.locator('#ug-feature td[data-prop="depth"]').inner_text().startswith("1.2")
    page.click("#info-body .entity-link")  # resolves the code (and opens the entity page)
    page.wait_for_function("(code) => document.querySelector('#info-body .entity-code').textContent === code",
                           arg=site.codes[("pipe_segments", "JS-E2EJ1-E2EJ2")])

    # --- the parcel: 地下情况 lists what is under it -------------------------------------------------
    click_at(page, *site.lonlat(28, -30))  # open ground of the parcel, away from the pipes
    page.wait_for_function("(pid) => document.querySelector('#info-body').dataset.parcel === pid", arg=site.parcel_id)
    page.click("#under-btn")
    page.wait_for_selector("#under-summary")
    listed = set(page.locator("#under-pipes tr.under-pipe").evaluate_all("(rows) => rows.map((r) => r.dataset.id)"))
    assert listed == set(site.segments), listed
    totals = dict(page.locator("#under-totals tr[data-type]").evaluate_all(
        "(rows) => rows.map((r) => [r.dataset.type, Number(r.cells[1].textContent)])"))
    assert totals == {"JS": 2, "YS": 2, "DL": 1}, totals
    assert "E2E-B1" in page.locator("#under-structures").inner_text()
    assert page.locator("#under-page").get_attribute("href").startswith(
        f"/underground/under?layer=parcels&fid={site.parcel_id}")
    screenshot("map-under-parcel")

    # --- a building: its entity record opens the entity page -----------------------------------------
    b = known_building
    # the building's addresses (an internal layer) become representations of its entity
    entities.assign("addresses", entity_type="building", key="building_id", ref_layer="buildings", match="key",
                    author="e2e", settings=database)
    with db.connect(database) as conn:
        code = entities.entity_for_feature(conn, "buildings", b["building_id"])
    assert code
    page.evaluate("([lon, lat]) => geotwin.map.jumpTo({center: [lon, lat], zoom: 18})", [b["lon"], b["lat"]])
    wait_js(page, "geotwin.map.areTilesLoaded() && geotwin.map.queryRenderedFeatures({layers: ['buildings-fill']}).length > 0")
    click_at(page, b["lon"], b["lat"])
    entity = page.locator('#info-body .entity-box[data-layer="buildings"] .entity-link')
    entity.wait_for()
    with page.expect_popup() as pop:
        entity.click()
    opened = pop.value
    opened.wait_for_url("**/entities/**")
    opened.wait_for_load_state()
    assert code in opened.title(), opened.title()
    # opened in a new tab, the page is first served to an anonymous caller (a link carries no key);
    # it asks again with the key the browser holds, so gis-staff see the internal `addresses` too
    opened.wait_for_function("document.body.innerText.includes('addresses /')", timeout=120_000)
    assert page.locator('#info-body .entity-box[data-layer="buildings"] .entity-code').inner_text() == code
    opened.close()
