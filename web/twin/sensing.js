// The sensing room in the twin viewer (/twin): field devices as points on their buildings
// (/sensing/devices, clamped to the ground and the 3D Tiles), buildings with open alerts coloured
// (/sensing/buildings: the 3D Tiles features whose `building_id` matches), a click on a sensor
// shows its panel (latest value of each datastream). New or changed alerts arrive by server-sent
// events (/sensing/alerts/stream) and re-colour the buildings without a reload.
//
// twin.js creates it (createTwinSensing) once the viewer exists, calls start() after the login,
// wraps its tileset style's colour with colour(base), and offers every scene pick to pick(picked).
import { WORDS, SENSING_TYPES } from "./i18n.js";

const STATUS_COLOURS = { online: "#2e7d32", offline: "#9e9e9e", unknown: "#f9a825" };
const OTHER_COLOUR = "#607d8b";
const ALERT_COLOUR = "#ff1744";
const PAGE = 1000;

export function createTwinSensing({ C, state, getJSON, esc, restyle, relayout }) {
  const $ = (id) => document.getElementById(id);
  const w = () => WORDS[state.lang];
  const t = (k, vars = {}) => String(w()[k] ?? k).replace(/\{(\w+)\}/g, (_, x) => (vars[x] ?? ""));
  const s = {
    enabled: false, show: true, devices: [], buildings: [], alertBuildings: new Map(),
    loaded: false, loads: 0, stream: null, streamOpen: false, streamEvents: 0, device: null, error: null,
  };
  let entities = [], reloadTimer = null;
  const alertColour = C.Color.fromCssColorString(ALERT_COLOUR);
  const typeName = (d) => SENSING_TYPES[d.type]?.[state.lang] || d.type_label || d.type;

  // ---------------------------------------------------------------- data
  async function devicesAll() { // every device the caller sees (GeoJSON pages)
    const out = [];
    for (let offset = 0; ; offset += PAGE) {
      const fc = await getJSON(`/sensing/devices?limit=${PAGE}&offset=${offset}`);
      const got = fc.features || [];
      out.push(...got);
      if (got.length < PAGE) return out;
    }
  }
  async function load() {
    const [devices, buildings] = await Promise.all([devicesAll(), getJSON("/sensing/buildings")]);
    s.devices = devices;
    s.buildings = Array.isArray(buildings) ? buildings : buildings.buildings || [];
    s.alertBuildings = new Map(s.buildings.filter((b) => b.open_alerts > 0).map((b) => [String(b.building_id), b]));
    drawDevices();
    s.loaded = true;
    s.loads += 1;
    renderPanel();
    restyle();
  }
  function reloadSoon() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => load().catch((e) => { s.error = e.message; }), 300);
  }
  function openStream() { // EventSource sends no header: the key goes as ?api_key= (redacted in the logs)
    const url = `/sensing/alerts/stream${state.key ? `?api_key=${encodeURIComponent(state.key)}` : ""}`;
    const es = new EventSource(url);
    s.stream = es;
    // (re)connected: load again, so that nothing opened while the stream was not listening is missed
    es.addEventListener("open", () => { s.streamOpen = true; reloadSoon(); });
    es.addEventListener("alert", () => { s.streamEvents += 1; reloadSoon(); });
    es.addEventListener("error", () => { s.streamOpen = false; });
  }

  // ---------------------------------------------------------------- drawing
  function drawDevices() {
    const viewer = window.twin.viewer;
    for (const e of entities) viewer.entities.remove(e);
    entities = [];
    for (const f of s.devices) {
      if (!f.geometry || f.geometry.type !== "Point") continue;
      const p = f.properties || {};
      const [lon, lat] = f.geometry.coordinates;
      const alerting = (p.open_alerts || 0) > 0;
      const e = viewer.entities.add({
        id: `sensing:${p.device_id ?? f.id}`,
        position: C.Cartesian3.fromDegrees(lon, lat, 0),
        show: s.show,
        point: {
          pixelSize: alerting ? 13 : 9,
          color: C.Color.fromCssColorString(SENSING_TYPES[p.type]?.colour || OTHER_COLOUR).withAlpha(p.status === "offline" ? 0.5 : 1),
          // an alerting sensor: white ring (it stands on a building in the alert colour)
          outlineColor: alerting ? C.Color.WHITE : C.Color.fromCssColorString(STATUS_COLOURS[p.status] || STATUS_COLOURS.unknown),
          outlineWidth: alerting ? 3 : 2,
          heightReference: C.HeightReference.CLAMP_TO_GROUND, // on the terrain or on the building's roof
          disableDepthTestDistance: Number.POSITIVE_INFINITY,
        },
      });
      e.sensingDevice = { ...p, device_id: p.device_id ?? f.id, lon, lat };
      entities.push(e);
    }
    viewer.scene.requestRender();
  }
  // the tileset style's colour, with the buildings that have open alerts in the alert colour
  function colour(base) {
    if (!s.enabled || !s.alertBuildings.size) return base;
    return {
      evaluateColor(feature, result) {
        const id = feature.getProperty("building_id");
        if (id !== undefined && id !== null && s.alertBuildings.has(String(id))) return C.Color.clone(alertColour, result);
        return base ? (base.evaluateColor ? base.evaluateColor(feature, result) : base.evaluate(feature, result))
          : C.Color.clone(C.Color.WHITE, result);
      },
    };
  }
  function renderPanel() {
    const box = $("sensing-info");
    if (!box) return;
    box.innerHTML = `<label class="check"><input id="sensing-show" type="checkbox" ${s.show ? "checked" : ""}> ${esc(t("sensing_show"))}</label>`
      + `<div>${esc(t("sensing_count", { devices: s.devices.length, buildings: s.alertBuildings.size }))}</div>`
      + `<div id="sensing-legend">${Object.entries(SENSING_TYPES).map(([, v]) => `<div><i class="dot" style="background:${v.colour}"></i>${esc(v[state.lang])}</div>`).join("")}`
      + `<div><i style="background:${ALERT_COLOUR}"></i>${esc(t("sensing_alert_buildings"))}</div></div>`;
    box.querySelector("#sensing-show").addEventListener("change", (e) => {
      s.show = e.target.checked;
      for (const en of entities) en.show = s.show;
      window.twin.viewer.scene.requestRender();
    });
  }

  // ---------------------------------------------------------------- picking: a sensor's panel
  function pick(picked) {
    const e = picked && picked.id;
    if (!e || !e.sensingDevice) return false;
    showDevice(e.sensingDevice.device_id);
    return true;
  }
  async function showDevice(id) {
    s.device = id;
    const body = $("info-body");
    body.innerHTML = `<p>${esc(t("loading"))}</p>`;
    if ($("info").hidden) { $("info").hidden = false; relayout(); }
    let doc;
    try { doc = await getJSON(`/sensing/devices/${encodeURIComponent(id)}`); } catch (err) {
      if (s.device === id) body.innerHTML = `<p class="error">${esc(err.message)}</p>`;
      return;
    }
    if (s.device !== id) return;
    const p = doc.type === "Feature" ? { ...(doc.properties || {}) } : { ...doc };
    const latest = doc.latest || p.latest || [];
    const when = (iso) => (iso ? new Date(iso).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", { timeZone: "Asia/Shanghai", hour12: false }) : "—");
    const n = (v) => (typeof v === "number" ? v.toLocaleString(state.lang === "zh" ? "zh-CN" : "en", { maximumFractionDigits: 3 }) : v ?? "—");
    const row = (k, v) => `<tr><th>${esc(t(k))}</th><td>${v}</td></tr>`;
    body.innerHTML = `<div id="sensor-panel" data-device="${esc(id)}"><h3>${esc(p.name || id)}</h3><table>`
      + row("sensing_device", esc(id)) + row("sensing_type", esc(typeName(p)))
      + row("sensing_address", esc(p.address || "—")) + row("sensing_community", esc([p.street, p.community].filter(Boolean).join(" · ") || "—"))
      + (p.building_id ? row("sensing_building", esc(p.building_id)) : "")
      + row("sensing_status", `<span id="sensor-status">${esc(w().status[p.status] || p.status || "—")}</span>`)
      + row("sensing_last_seen", esc(when(p.last_seen)))
      + row("sensing_battery", p.battery === null || p.battery === undefined ? "—" : `${esc(n(p.battery))} %`)
      + (p.open_alerts ? row("sensing_open_alerts", esc(p.open_alerts)) : "")
      + `</table><h3>${esc(t("sensing_latest"))}</h3>`
      + (latest.length ? `<table id="sensor-latest">${latest.map((l) => `<tr data-datastream="${esc(l.datastream_id)}"><th>${esc(l.observed_property || l.name)}</th>`
        + `<td class="value">${esc(n(l.value))} ${esc(l.unit || "")}</td><td>${esc(when(l.time))}</td></tr>`).join("")}</table>`
        : `<p id="sensor-latest">${esc(t("sensing_no_latest"))}</p>`)
      + "</div>";
    window.twin.lastPicked = null; // a language switch re-renders buildings only
  }

  // ---------------------------------------------------------------- for the tests: what Cesium drew
  // the colour the loaded 3D Tiles give the features of a building ([r, g, b, a], or null if none loaded)
  function featureColour(buildingId) {
    const colours = [];
    for (const ts of [state.tilesetA, state.tilesetB]) {
      if (!ts || !ts.root) continue;
      const stack = [ts.root];
      while (stack.length) {
        const tile = stack.pop();
        stack.push(...(tile.children || []));
        const content = tile.contentReady ? tile.content : null;
        const n = content ? content.featuresLength || 0 : 0;
        for (let i = 0; i < n; i++) {
          const f = content.getFeature(i);
          if (String(f.getProperty("building_id")) === String(buildingId)) colours.push(C.Color.clone(f.color).toBytes());
        }
      }
    }
    return colours.length ? colours : null;
  }

  // ---------------------------------------------------------------- life cycle
  async function start() {
    const who = state.whoami;
    s.enabled = !!who && who.via !== "anonymous" && (who.sees || []).includes("internal");
    const section = $("sensing");
    if (section) section.hidden = !s.enabled;
    if (!s.enabled) return;
    openStream();
    await load();
  }
  return { state: s, start, colour, pick, featureColour, showDevice, alertColour: ALERT_COLOUR, reload: load, applyLang: renderPanel };
}
