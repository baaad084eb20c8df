"""The sensing room in the twin viewer (/twin) end to end: Debian's chromium (WebGL through
SwiftShader) against the app under uvicorn, over the small demo district's twin (3D Tiles built by
the CIM builder). Devices are registered through ``sensing.devices`` on two demo buildings, an
alert is opened through ``sensing.alerts`` on one of them:

- the building with the open alert is drawn in the alert colour (read back from the 3D Tiles
  features Cesium styled), the other one is not;
- the sensors stand on their buildings; a click on one shows its panel with the latest value;
- when the alert is closed (through the API, as another worker would), the building loses its
  colour without a reload (server-sent events).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.e2e.conftest import E2E_TIMEOUT_MS
from tests.e2e.test_twin import canvas_point, idle, wait_ready
from tests.e2e.twin_fixtures import AS_OF, known_building  # noqa: F401 (a fixture)

ALERT_BYTES = [255, 23, 68, 255]  # #ff1744, web/twin/sensing.js ALERT_COLOUR


@pytest.fixture(scope="module")
def sensing_twin(e2e_district, database, tmp_path_factory):
    """The district's twin as of AS_OF (tileset ``twin``, built by ``cim_builder.build`` unless an
    earlier test of the session built it)."""
    from cim_builder.build import build

    report = build(database, tileset_id="twin", as_of=AS_OF, out=tmp_path_factory.mktemp("sensing-twin") / "tiles",
                   dem=e2e_district.dem.path, title="龙岗孪生 (e2e)")
    return report


@pytest.fixture(scope="module")
def twin_site(e2e_server, database, known_building, sensing_twin):  # noqa: F811
    """A hydrant pressure sensor on the known building (with a reading), a household water meter
    on a building 40–150 m away that has no other device; an admin sees both."""
    from sensing import devices
    from spatial_api import db

    b = known_building
    with db.connect(database) as conn:
        other = conn.execute(
            """SELECT f.fid FROM features f WHERE f.layer = 'buildings' AND f.valid_to IS NULL AND f.fid <> %s
                 AND ST_DistanceSphere(ST_Transform(ST_PointOnSurface(f.geom), 4326), ST_SetSRID(ST_MakePoint(%s, %s), 4326))
                     BETWEEN 40 AND 150
                 AND NOT EXISTS (SELECT 1 FROM sensing_devices d WHERE d.building_id = f.fid)  -- other tests' devices
               ORDER BY f.fid LIMIT 1""", (b["building_id"], b["lon"], b["lat"])).fetchone()[0]
        assert not conn.execute("SELECT 1 FROM sensing_devices WHERE building_id = %s", (b["building_id"],)).fetchone(), \
            "another test put a device on the known building: its alert colour would not be this test's"
        hp = devices.add(conn, {"device_id": "E2ET-HP-1", "type": "hydrant-pressure", "name": "消火栓 1",
                                "building_id": b["building_id"], "community": "e2e丙社区"}, issue_credential=False)
        devices.add(conn, {"device_id": "E2ET-WM-2", "type": "water-meter", "name": "丁户水表", "building_id": other,
                           "community": "e2e丁社区", "restricted": True,
                           "household": {"resident": {"name": "王奶奶", "age": 90}}}, issue_credential=False)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (now - timedelta(hours=1), now))
        conn.execute("INSERT INTO sta_observations (stream_id, phenomenon_time_start, result_time, result_number) "
                     "VALUES (%s, %s, %s, 0.34)", (hp.datastreams["pressure"], now - timedelta(minutes=5), now))
        conn.commit()
        lon, lat = conn.execute("SELECT ST_X(geom), ST_Y(geom) FROM sensing_devices WHERE device_id = 'E2ET-HP-1'").fetchone()
    yield {"building_id": b["building_id"], "other_building": other, "lon": lon, "lat": lat,
           "roof": b["ground"] + b["height_m"]}
    retire_devices(database, ["E2ET-HP-1", "E2ET-WM-2"])  # test_twin.py clicks this building: no sensor on it then


def open_alert(database, device_id: str, rule_id: str) -> int:
    from tests.e2e.test_sensing_map import open_alert as opener

    return opener(database, device_id, rule_id)


def retire_devices(database, device_ids: list[str]) -> None:
    from tests.e2e.test_sensing_map import retire_devices as retire

    retire(database, device_ids)


def colours(page, building_id):
    return page.evaluate("(id) => twin.sensing.featureColour(id)", building_id)


def test_twin_highlights_buildings_with_open_alerts(browser_page, e2e_server, e2e_keys, database, twin_site, screenshot):
    page = browser_page
    key = e2e_keys["admin"]
    alert_id = open_alert(database, "E2ET-HP-1", "hp-low")
    page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(key)})")
    page.goto(f"/twin/?lite=1#date={AS_OF}")
    wait_ready(page)
    page.wait_for_function("twin.sensing.state.loaded && twin.sensing.state.streamOpen", timeout=E2E_TIMEOUT_MS)
    assert page.locator("#sensing").is_visible()
    alerting = page.evaluate("[...twin.sensing.state.alertBuildings.keys()]")
    assert twin_site["building_id"] in alerting and twin_site["other_building"] not in alerting
    assert {"E2ET-HP-1", "E2ET-WM-2"} <= set(page.evaluate("twin.sensing.state.devices.map((f) => f.id)"))

    # from above the building: its features in the alert colour, the neighbour's not
    page.evaluate("([lon, lat, h]) => twin.setView({lon, lat, height: h, pitch: -90})",
                  [twin_site["lon"], twin_site["lat"], twin_site["roof"] + 400])
    idle(page, globe_soft_ms=3_000)
    page.wait_for_function("""([a, b]) => { const ca = twin.sensing.featureColour(a), cb = twin.sensing.featureColour(b);
        return ca && cb; }""", arg=[twin_site["building_id"], twin_site["other_building"]], timeout=E2E_TIMEOUT_MS)
    assert all(c == ALERT_BYTES for c in colours(page, twin_site["building_id"]))
    assert all(c != ALERT_BYTES for c in colours(page, twin_site["other_building"]))
    screenshot("twin-sensing-alert")

    # the sensor stands on the roof: a click there opens its panel with the latest reading
    page.mouse.click(*canvas_point(page, twin_site["lon"], twin_site["lat"], twin_site["roof"]))
    page.wait_for_selector("#sensor-panel[data-device='E2ET-HP-1']")
    panel = page.inner_text("#sensor-panel")
    assert "消火栓 1" in panel and "消火栓压力" in panel and "0.34 MPa" in panel

    # closed elsewhere: the building loses its colour without a reload
    r = httpx.post(f"{e2e_server}/sensing/alerts/{alert_id}/steps", json={"step": "closed", "note": "e2e: 误报"},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    page.wait_for_function("(id) => !twin.sensing.state.alertBuildings.has(id)", arg=twin_site["building_id"],
                           timeout=E2E_TIMEOUT_MS)
    page.wait_for_function("(id) => { const c = twin.sensing.featureColour(id); return c && c.every((x) => "
                           "x.join() !== '255,23,68,255'); }", arg=twin_site["building_id"], timeout=E2E_TIMEOUT_MS)
