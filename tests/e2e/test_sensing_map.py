"""The sensing room in the map client (/map) end to end: Debian's chromium against the app under
uvicorn (``e2e_server``), devices registered through ``sensing.devices`` on real demo buildings,
their readings written into the SensorThings store (the maintained stats and aggregates do the
rest), alerts opened through ``sensing.alerts``.

- the devices layer (vector tiles ``/sensing/tiles``) draws what the caller may see, and a
  community worker of another community sees none of the restricted households (tiles, list,
  alerts — also those arriving live);
- a click on a device opens its panel: the latest value of each datastream as the registry API
  gives it, and an ECharts canvas with the series the API returns for the same window (raw, then
  daily);
- an alert opened in the database reaches the open page through server-sent events (no reload),
  and the workflow buttons move it to acknowledged → visited → closed (checked in the database,
  with the worker's name as author); a click on an alert flies to its device.

Every wait is for a state (the page's ``geotwin.sensing.state``, the database), never a fixed time.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.e2e.conftest import E2E_TIMEOUT_MS, poll

READY = ("window.geotwin && geotwin.state.ready && !geotwin.state.loading && geotwin.state.styleDate"
         " && geotwin.map.loaded()")
SENSING_READY = "geotwin.sensing.state.enabled && geotwin.sensing.state.streamOpen && geotwin.sensing.state.listLoaded"
COMMUNITY_A, COMMUNITY_B = "e2e甲社区", "e2e乙社区"
HALF_HOUR = timedelta(minutes=30)


def wait_js(page, predicate: str, arg=None, timeout: int = E2E_TIMEOUT_MS):
    return page.wait_for_function(predicate, arg=arg, timeout=timeout)


def api(base: str, path: str, key: str, **params):
    r = httpx.get(base + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def open_map(page, key: str, lon: float, lat: float, zoom: float = 17):
    page.add_init_script(f"localStorage.setItem('geotwin.apiKey', {json.dumps(key)})")
    page.goto(f"/map/?center={lon},{lat}&zoom={zoom}&hide=hillshade,imagery")
    wait_js(page, READY)
    wait_js(page, SENSING_READY)
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads


def drawn_devices(page) -> set[str]:
    return set(page.evaluate("""() => geotwin.map.getLayer('sensing-devices')
        ? geotwin.map.queryRenderedFeatures({layers: ['sensing-devices']}).map((f) => f.properties.device_id) : []"""))


def wait_drawn(page, want: set[str]) -> set[str]:
    """Wait until the devices layer draws at least ``want`` and every tile of the view is loaded
    (so that what is absent then is absent, not late); return what it draws."""
    def drawn():
        got = drawn_devices(page)
        return got >= want and page.evaluate("geotwin.map.areTilesLoaded() && !geotwin.map.isMoving()") and got
    return poll(page, drawn, f"devices {sorted(want)} drawn")


def click_at(page, lon: float, lat: float):
    wait_js(page, "!geotwin.map.isMoving()")
    x, y = page.evaluate("""([lon, lat]) => { const p = geotwin.map.project([lon, lat]);
        const r = geotwin.map.getCanvas().getBoundingClientRect(); return [p.x + r.left, p.y + r.top]; }""", [lon, lat])
    page.mouse.click(x, y)


def metres(lon1, lat1, lon2, lat2):
    return math.hypot((lon2 - lon1) * 111_320 * math.cos(math.radians(lat1)), (lat2 - lat1) * 110_574)


# ------------------------------------------------------------------------------------------ data

@pytest.fixture(scope="module")
def site(e2e_server, e2e_district, database):
    """Two demo buildings of different communities 100–400 m apart, each with a household water
    meter (restricted, community A / B), a manhole cover near A (internal), half-hourly water use
    of the last 3 days on A's meter; a community-worker key for each community."""
    from sensing import devices
    from spatial_api import db
    from spatial_api.security import keys

    with db.connect(database) as conn:
        a = conn.execute(
            """SELECT b.fid, ST_X(p), ST_Y(p) FROM features b
               CROSS JOIN LATERAL (SELECT ST_Transform(ST_PointOnSurface(b.geom), 4326) AS p) x
               WHERE b.layer = 'buildings' AND b.valid_to IS NULL
                 AND EXISTS (SELECT 1 FROM features ad WHERE ad.layer = 'addresses' AND ad.valid_to IS NULL
                             AND ad.properties ->> 'building_id' = b.fid)
               ORDER BY b.fid OFFSET 200 LIMIT 1""").fetchone()
        b = conn.execute(
            """SELECT b.fid, ST_X(p), ST_Y(p) FROM features b
               CROSS JOIN LATERAL (SELECT ST_Transform(ST_PointOnSurface(b.geom), 4326) AS p) x
               WHERE b.layer = 'buildings' AND b.valid_to IS NULL AND b.fid <> %s
                 AND ST_DistanceSphere(p, ST_SetSRID(ST_MakePoint(%s, %s), 4326)) BETWEEN 100 AND 400
               ORDER BY b.fid LIMIT 1""", (a[0], a[1], a[2])).fetchone()
        assert a and b, "no pair of demo buildings 100-400 m apart"
        cover = (a[1] + 0.0006, a[2] - 0.0005)  # ~80 m south-east of A, in the street
        hh = {"resident": {"name": "张奶奶", "age": 86, "phone": "13800000001"},
              "family": [{"name": "张先生", "relation": "儿子", "phone": "13800000002"}]}
        wm_a = devices.add(conn, {"device_id": "E2EM-WM-A", "type": "water-meter", "name": "甲户水表",
                                  "building_id": a[0], "community": COMMUNITY_A, "street": "坂田街道",
                                  "restricted": True, "household": hh}, issue_credential=False)
        wm_b = devices.add(conn, {"device_id": "E2EM-WM-B", "type": "water-meter", "name": "乙户水表",
                                  "building_id": b[0], "community": COMMUNITY_B, "street": "坂田街道",
                                  "restricted": True, "household": {**hh, "resident": {"name": "李爷爷", "age": 88}}},
                           issue_credential=False)
        mc = devices.add(conn, {"device_id": "E2EM-MC-1", "type": "manhole-cover", "name": "井盖 1",
                                "lon": cover[0], "lat": cover[1], "community": COMMUNITY_A, "address": "测试路井盖"},
                         issue_credential=False)
        # readings: A's water use every half hour for 3 days up to ~now, its battery; the cover's water level
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        end = now - timedelta(minutes=now.minute % 30)
        times = [end - i * HALF_HOUR for i in range(3 * 48)][::-1]
        volume = [(t, round(0.004 * (1 + (i * 7) % 11), 3)) for i, t in enumerate(times)]
        volume[-1] = (times[-1], 0.037)
        conn.execute("SELECT sta_ensure_partitions(%s, %s)", (times[0], now))
        with conn.cursor().copy("COPY sta_observations (stream_id, phenomenon_time_start, result_time, result_number) "
                                "FROM STDIN") as cp:
            for t, v in volume:
                cp.write_row((wm_a.datastreams["volume"], t, t, v))
            cp.write_row((wm_a.datastreams["battery"], end, end, 87.5))
            cp.write_row((mc.datastreams["water-level"], end, end, 0.42))
            cp.write_row((wm_b.datastreams["volume"], end, end, 0.011))
        cw_a = keys.create(conn, "e2e 甲社区网格员", "community-worker", created_by="pytest", community=COMMUNITY_A)
        cw_b = keys.create(conn, "e2e 乙社区网格员", "community-worker", created_by="pytest", community=COMMUNITY_B)
        conn.commit()
    yield {"a": {"building_id": a[0], "lon": a[1], "lat": a[2]}, "b": {"building_id": b[0], "lon": b[1], "lat": b[2]},
           "cover": {"lon": cover[0], "lat": cover[1]}, "wm_a": wm_a, "wm_b": wm_b, "mc": mc, "volume": volume,
           "cw_a": cw_a, "cw_b": cw_b}
    retire_devices(database, ["E2EM-WM-A", "E2EM-WM-B", "E2EM-MC-1"])


def retire_devices(database, device_ids: list[str]) -> None:
    """Close the devices' active alerts and retire them: the other e2e tests of the session (the
    map's and the twin's, other roles) meet neither their points nor their alerts."""
    from sensing import alerts, devices
    from spatial_api import db

    with db.connect(database) as conn:
        active = [r[0] for r in conn.execute("SELECT alert_id FROM sensing_alerts WHERE device_id = ANY(%s) "
                                             "AND state <> 'closed'", (device_ids,))]
        if active:
            alerts.close_many(conn, active, author="pytest", note="e2e: teardown",
                              at=conn.execute("SELECT now()").fetchone()[0])
        for d in device_ids:
            devices.retire(conn, d)
        conn.commit()


def open_alert(database, device_id: str, rule_id: str = "wm-inactivity") -> int:
    """An alert opened as the rules side opens one (``sensing.alerts.open_alert``: its open step,
    the outbox, NOTIFY of the stream); returns its id."""
    from sensing import alerts
    from spatial_api import db

    with db.connect(database) as conn:
        alert = alerts.open_alert(conn, device_id=device_id, rule_id=rule_id,
                                  message="e2e: 12 小时用水量低于 0.01 m³", evidence={"volume_m3": 0.0})
        conn.commit()
    assert alert is not None, f"{device_id} already has an active {rule_id} alert"
    return alert["alert_id"]


def alert_row(database, alert_id: int) -> dict:
    from psycopg.rows import dict_row

    from spatial_api import db

    with db.connect(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT state, closed_at FROM sensing_alerts WHERE alert_id = %s", (alert_id,)).fetchone()
        row["steps"] = cur.execute("SELECT step, author, note FROM sensing_alert_steps WHERE alert_id = %s "
                                   "ORDER BY seq", (alert_id,)).fetchall()
    return row


def audit_entries(database, target: str | None, principal: str | None, containing: str | None = None) -> list[dict]:
    from psycopg.rows import dict_row

    from spatial_api import db

    where, params = ["true"], []
    if target:
        where.append("target = %s")
        params.append(target)
    if principal:
        where.append("principal = %s")
        params.append(principal)
    if containing:
        where.append("(detail::text LIKE %s OR target LIKE %s)")
        params += [f"%{containing}%"] * 2
    with db.connect(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT principal, target, detail FROM audit_log WHERE {' AND '.join(where)}",
                           params).fetchall()


# ------------------------------------------------------------------------------------------ tests

def test_devices_layer_panel_and_chart(browser_page, e2e_server, site, screenshot):
    page = browser_page
    a, key = site["a"], site["cw_a"]
    open_map(page, key, a["lon"], a["lat"])
    assert page.locator("#sensing").is_visible()
    # the layer draws the worker's own household and the internal cover, not the other community's household
    got = wait_drawn(page, {"E2EM-WM-A", "E2EM-MC-1"})
    assert "E2EM-WM-B" not in got
    b = site["b"]
    assert page.evaluate("([lon, lat]) => geotwin.map.getBounds().contains([lon, lat])", [b["lon"], b["lat"]]), \
        "B's building is outside the view: its absence would prove nothing"
    assert any("/sensing/tiles/" in u and u.endswith(".mvt") or "/sensing/tiles/" in u and ".mvt?" in u
               for u in page.guard.requests)
    # the legend and the per-type toggles: hiding the water meters hides A's meter
    assert "智能水表" in page.inner_text("#sensing-types") and "智能井盖" in page.inner_text("#sensing-types")
    page.uncheck("#sensing-types input[data-sensing-type='water-meter']")
    poll(page, lambda: "E2EM-WM-A" not in drawn_devices(page), "water meters hidden")
    page.check("#sensing-types input[data-sensing-type='water-meter']")
    wait_drawn(page, {"E2EM-WM-A"})

    # click A's meter: its panel with the latest values the registry API gives
    click_at(page, a["lon"], a["lat"])
    page.wait_for_selector("#device-panel[data-device='E2EM-WM-A']")
    device = api(e2e_server, "/sensing/devices/E2EM-WM-A", key)
    body = page.inner_text("#device-panel")
    assert "甲户水表" in body and "智能水表" in body and device["properties"]["address"] in body
    assert COMMUNITY_A in body and "在线" in body and "87.5 %" in body
    volume_id = site["wm_a"].datastreams["volume"]
    latest = {row["datastream_id"]: row for row in device["latest"]}
    assert latest[volume_id]["value"] == 0.037
    shown = page.inner_text(f"#device-latest tr[data-datastream='{volume_id}'] td.value")
    assert shown.split()[0] == "0.037" and "m³" in shown

    # the chart: ECharts drew on a canvas the series the API returns for the same window
    wait_js(page, "(() => { const c = geotwin.sensing.state.chart; return c && c.rendered && c.period === 'raw'; })()")
    chart = page.evaluate("geotwin.sensing.state.chart")
    assert chart["datastream"] == str(volume_id)
    raw = api(e2e_server, "/sensing/devices/E2EM-WM-A/series", key, datastream=volume_id, period="raw",
              start=chart["start"], end=chart["end"])
    assert 46 <= chart["points"] == len(raw["points"]) <= 49
    drawn = page.evaluate("""() => { const el = document.getElementById('device-chart');
        const opt = echarts.getInstanceByDom(el).getOption(); return opt.series[0].data; }""")
    assert [p[1] for p in drawn] == [p["value"] for p in raw["points"]]
    assert page.locator("#device-chart canvas").count() >= 1
    inked = page.evaluate("""() => { const c = document.querySelector('#device-chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert inked > 500, inked
    assert any("/vendor/echarts/echarts.min.js" in u for u in page.guard.requests)
    # the 60-day daily range: the API's daily aggregates
    page.click("#device-panel button[data-period='day']")
    wait_js(page, "(() => { const c = geotwin.sensing.state.chart; return c && c.rendered && c.period === 'day'; })()")
    chart = page.evaluate("geotwin.sensing.state.chart")
    daily = api(e2e_server, "/sensing/devices/E2EM-WM-A/series", key, datastream=volume_id, period="day",
                start=chart["start"], end=chart["end"])
    assert chart["points"] == len(daily["points"]) >= 3
    # water used per day: bars of the daily totals (the store's maintained aggregates)
    bars = page.evaluate("""() => echarts.getInstanceByDom(document.getElementById('device-chart')).getOption().series""")
    assert bars[0]["type"] == "bar" and [p[1] for p in bars[0]["data"]] == [p["sum"] for p in daily["points"]]
    assert sum(p["sum"] for p in daily["points"]) == pytest.approx(sum(v for _, v in site["volume"]))
    screenshot("map-sensing-device")
    # English by the switch: the legend and the panel too
    page.click("#lang")
    assert "Smart water meter" in page.inner_text("#sensing-types")
    page.wait_for_function("document.querySelector('#device-panel h4') && "
                           "document.querySelector('#device-panel h4').textContent === 'Latest values'")
    page.click("#lang")
    assert "智能水表" in page.inner_text("#sensing-types")


def test_alerts_arrive_live_and_the_workflow_moves_them(browser_page, e2e_server, database, site, screenshot):
    page = browser_page
    a, key = site["a"], site["cw_a"]
    open_map(page, key, a["lon"] + 0.004, a["lat"] + 0.003, zoom=16)
    assert page.locator("#alert-list .alert[data-device='E2EM-WM-A']").count() == 0
    # opened in the database by the rules side: it reaches the open page by the stream, no reload
    alert_id = open_alert(database, "E2EM-WM-A")
    item = f"#alert-list .alert[data-alert='{alert_id}']"
    page.wait_for_selector(item)
    assert page.evaluate("window.__sameDocument === true")
    assert page.evaluate("geotwin.sensing.state.streamEvents") >= 1
    text = page.inner_text(item)
    assert "甲户水表" in text or "E2EM-WM-A" in text
    assert "距到场时限" in text  # the 15-minute on-site countdown runs
    screenshot("map-sensing-alert")

    # a click on the alert flies to the device and opens its panel
    page.click(f"{item} .alert-title")
    wait_js(page, f"geotwin.sensing.state.lastFly && geotwin.sensing.state.lastFly.alert_id == {alert_id}"
                  " && geotwin.sensing.state.lastFly.done")
    lon, lat = page.evaluate("geotwin.map.getCenter().toArray()")
    assert metres(lon, lat, a["lon"], a["lat"]) < 5
    page.wait_for_selector("#device-panel[data-device='E2EM-WM-A']")

    # the worker's workflow: 确认 → 已到场 → 关闭 (with a note), each a step in the database
    page.click(f"{item} button[data-step='acknowledged']")
    poll(page, lambda: alert_row(database, alert_id)["state"] == "acknowledged", "the alert acknowledged")
    page.wait_for_selector(f"{item}[data-state='acknowledged'] button[data-step='visited']:not([disabled])")
    page.click(f"{item} button[data-step='visited']")
    poll(page, lambda: alert_row(database, alert_id)["state"] == "visited", "the alert visited")
    page.wait_for_selector(f"{item}[data-state='visited']")
    assert "到场用时" in page.inner_text(item)
    page.click(f"{item} button[data-step='closed']")
    page.click(f"{item} .alert-close-confirm")  # no note: refused in the page
    assert "请填写处理说明" in page.inner_text(f"{item} .alert-error")
    assert alert_row(database, alert_id)["state"] == "visited"
    page.fill(f"{item} .alert-note", "已上门，老人外出买菜，已联系家属")
    page.click(f"{item} .alert-close-confirm")
    poll(page, lambda: alert_row(database, alert_id)["state"] == "closed", "the alert closed")
    page.wait_for_selector(item, state="detached")  # the list shows active alerts only
    row = alert_row(database, alert_id)
    worker = [s for s in row["steps"] if s["step"] in ("acknowledged", "visited", "closed")]
    assert [s["step"] for s in worker] == ["acknowledged", "visited", "closed"]
    assert {s["author"] for s in worker} == {"e2e 甲社区网格员"}
    assert worker[-1]["note"] == "已上门，老人外出买菜，已联系家属"
    assert page.evaluate("window.__sameDocument === true")

    # EventSource sends no header: the page gave its key as ?api_key=, which no log keeps
    page.evaluate("geotwin.sensing.stop()")  # closes the EventSource: its request is audited as it ends
    entry = poll(page, lambda: audit_entries(database, "/sensing/alerts/stream", "e2e 甲社区网格员"),
                 "the stream's audit entry")
    assert entry[0]["detail"]["query"] == "api_key=REDACTED"
    assert "sensing/devices/E2EM-WM-A" in entry[0]["detail"]["restricted"]  # the household's alerts, audited
    assert not audit_entries(database, None, None, containing=key)


def test_worker_of_another_community_sees_none_of_the_households(browser_page, e2e_server, database, site):
    page = browser_page
    a, b, key = site["a"], site["b"], site["cw_b"]
    open_map(page, key, (a["lon"] + b["lon"]) / 2, (a["lat"] + b["lat"]) / 2)  # both buildings in view
    got = wait_drawn(page, {"E2EM-WM-B", "E2EM-MC-1"})
    assert page.evaluate("([lon, lat]) => geotwin.map.getBounds().contains([lon, lat])", [a["lon"], a["lat"]])
    assert "E2EM-WM-A" not in got
    # nor by the API, nor by the device panel's route
    listed = {f["id"] for f in api(e2e_server, "/sensing/devices", key)["features"]}
    assert "E2EM-WM-B" in listed and "E2EM-WM-A" not in listed
    r = httpx.get(e2e_server + "/sensing/devices/E2EM-WM-A", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 404
    # alerts: A's household alert never reaches B's worker, not even live; B's own does
    a_alert = open_alert(database, "E2EM-WM-A")
    b_alert = open_alert(database, "E2EM-WM-B")
    page.wait_for_selector(f"#alert-list .alert[data-alert='{b_alert}']")
    seen = page.evaluate("[...geotwin.sensing.state.alerts.keys()]")
    assert str(a_alert) not in seen and str(b_alert) in seen
    assert "甲户水表" not in page.inner_text("#alert-list") and "E2EM-WM-A" not in page.inner_text("#alert-list")
    # and after a reload (the initial list): the same
    page.reload()
    page.wait_for_function(READY)
    wait_js(page, SENSING_READY)
    seen = page.evaluate("[...geotwin.sensing.state.alerts.keys()]")
    assert str(a_alert) not in seen and str(b_alert) in seen
