// The sensing room in the map client (/map): field devices drawn from geotwin's vector tiles
// (/sensing/tiles, layer "devices") by type and status, a device panel (latest value of each
// datastream, a time series drawn by ECharts served from /vendor/echarts), and the live alert list
// fed by server-sent events (/sensing/alerts/stream) with the community workers' workflow
// (确认 → 已到场 → 关闭). Everything comes from geotwin itself.
//
// app.js creates it (createSensing) and calls: start() after each login (who may see what),
// decorate(style) when it builds the map style, click(e) before its own click handling,
// applyLang() on a language switch. State for the tests: window.geotwin.sensing.state.
import { STRINGS, SENSING_TYPES } from "./i18n.js";

const STATUS_COLOURS = { online: "#2e7d32", offline: "#9e9e9e", unknown: "#f9a825" };
const SEVERITY_COLOURS = { critical: "#b71c1c", warning: "#ef6c00", info: "#1565c0" };
const OTHER_COLOUR = "#607d8b";
const ON_SITE_MINUTES = 15; // the pilot's target: someone at the door within 15 minutes of the alert
const PERIODS = { raw: 24 * 3600e3, hour: 7 * 86400e3, day: 60 * 86400e3 }; // period → span shown
const DEVICE_LAYERS = ["sensing-devices"];
const SUM_UNITS = new Set(["m³", "m3", "L", "veh/5min"]); // readings that are amounts per interval: sums per hour / day
const TZ = "Asia/Shanghai";

let echartsPromise = null;
function loadECharts() { // the chart library (1 MB) is fetched the first time a chart is drawn
  if (window.echarts) return Promise.resolve(window.echarts);
  if (!echartsPromise) {
    echartsPromise = new Promise((resolve, reject) => {
      const el = document.createElement("script");
      el.src = "/vendor/echarts/echarts.min.js";
      el.onload = () => (window.echarts ? resolve(window.echarts) : reject(new Error("echarts did not load")));
      el.onerror = () => { echartsPromise = null; reject(new Error("/vendor/echarts/echarts.min.js")); };
      document.head.appendChild(el);
    });
  }
  return echartsPromise;
}

export function createSensing({ map, app, api, esc, setStatus }) {
  const $ = (sel) => document.querySelector(sel);
  const t = (k) => (STRINGS[app.lang] || STRINGS.zh)[k] ?? STRINGS.zh[k] ?? k;
  const tf = (k, vars) => t(k).replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  const s = {
    enabled: false, // the caller sees devices (an authenticated role that sees "internal")
    canWork: false, // the caller may work alerts (sensing:alerts)
    show: true, types: {}, typeLabels: {}, counts: null, tilesVersion: 0,
    alerts: new Map(), stream: null, streamOpen: false, streamEvents: 0, listLoaded: false,
    device: null, deviceDoc: null, chart: null, lastFly: null, error: null, posted: 0,
  };
  let generation = 0; // a new login starts a new generation: late answers of the old one are dropped
  let ticker = null, tilesTimer = null;

  const typeName = (code) => SENSING_TYPES[code]?.[app.lang] || s.typeLabels[code] || code;
  const typeColour = (code) => SENSING_TYPES[code]?.colour || OTHER_COLOUR;
  const knownTypes = () => [...new Set([...Object.keys(SENSING_TYPES), ...Object.keys(s.typeLabels),
    ...Object.keys(s.counts || {})])];
  const enabledTypes = () => knownTypes().filter((c) => s.types[c] !== false);
  const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString(app.lang === "zh" ? "zh-CN" : "en-GB",
    { timeZone: TZ, hour12: false, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" }) : "—");
  const num = (v, d = 3) => (v === null || v === undefined || v === "" ? "—"
    : typeof v === "number" ? v.toLocaleString(app.lang === "zh" ? "zh-CN" : "en", { maximumFractionDigits: d }) : String(v));
  function duration(ms) {
    const m = Math.floor(Math.abs(ms) / 60000);
    if (m < 1) return `${Math.floor(Math.abs(ms) / 1000)} ${t("s_s_unit")}`;
    if (m < 60) return `${m} ${t("s_min_unit")}`;
    if (m < 1440) return `${Math.floor(m / 60)} ${t("s_h_unit")} ${m % 60} ${t("s_min_unit")}`;
    return `${Math.floor(m / 1440)} ${t("s_d_unit")} ${Math.floor((m % 1440) / 60)} ${t("s_h_unit")}`;
  }

  // ---------------------------------------------------------------- the devices layer
  function tileUrl() {
    return `${location.origin}/sensing/tiles/{z}/{x}/{y}.mvt${s.tilesVersion ? `?v=${s.tilesVersion}` : ""}`;
  }
  function typeFilter() { return ["in", ["get", "type"], ["literal", enabledTypes()]]; }
  function decorate(style) {
    if (!s.enabled) return;
    style.sources.sensing = { type: "vector", tiles: [tileUrl()], minzoom: 10, maxzoom: 16 };
    const colours = ["match", ["get", "type"]];
    for (const code of knownTypes()) colours.push(code, typeColour(code));
    colours.push(OTHER_COLOUR);
    const vis = s.show ? "visible" : "none";
    style.layers.push(
      { id: "sensing-alert-halo", type: "circle", source: "sensing", "source-layer": "devices",
        filter: ["all", typeFilter(), [">", ["to-number", ["get", "open_alerts"], 0], 0]], layout: { visibility: vis },
        paint: { "circle-radius": ["interpolate", ["linear"], ["zoom"], 11, 8, 17, 16], "circle-color": "#ff1744",
          "circle-opacity": 0.35, "circle-blur": 0.4, "circle-stroke-color": "#d50000", "circle-stroke-width": 1.5 } },
      { id: "sensing-devices", type: "circle", source: "sensing", "source-layer": "devices",
        filter: typeFilter(), layout: { visibility: vis },
        paint: { "circle-radius": ["interpolate", ["linear"], ["zoom"], 11, 3, 17, 8], "circle-color": colours,
          "circle-opacity": ["match", ["get", "status"], "offline", 0.45, 1],
          "circle-stroke-color": ["match", ["get", "status"], "online", STATUS_COLOURS.online,
            "offline", STATUS_COLOURS.offline, STATUS_COLOURS.unknown],
          "circle-stroke-width": ["interpolate", ["linear"], ["zoom"], 11, 1, 17, 2.5] } },
    );
  }
  function applyFilter() {
    if (!map.getLayer("sensing-devices")) return;
    const vis = s.show ? "visible" : "none";
    map.setFilter("sensing-devices", typeFilter());
    map.setFilter("sensing-alert-halo", ["all", typeFilter(), [">", ["to-number", ["get", "open_alerts"], 0], 0]]);
    for (const id of ["sensing-devices", "sensing-alert-halo"]) map.setLayoutProperty(id, "visibility", vis);
  }
  function refreshTiles() { // open_alerts / status changed: fetch the tiles again (a new URL, no stale cache)
    clearTimeout(tilesTimer);
    tilesTimer = setTimeout(() => {
      s.tilesVersion += 1;
      const src = map.getSource("sensing");
      if (src && src.setTiles) src.setTiles([tileUrl()]);
    }, 300);
  }
  function renderTypes() {
    const box = $("#sensing-types");
    if (!box) return;
    const counts = s.counts || {};
    const total = (code) => Object.values(counts[code] || {}).reduce((a, b) => a + b, 0);
    box.innerHTML = `<label class="sensing-all"><input type="checkbox" id="sensing-show" ${s.show ? "checked" : ""}> ${esc(t("s_all"))}</label>`
      + knownTypes().map((code) => `<label><input type="checkbox" data-sensing-type="${esc(code)}" ${s.types[code] !== false ? "checked" : ""}>`
        + ` <i class="dot" style="background:${typeColour(code)}"></i> ${esc(typeName(code))}`
        + (s.counts ? ` <small>${total(code)}</small>` : "") + "</label>").join("");
    box.querySelector("#sensing-show").addEventListener("change", (e) => { s.show = e.target.checked; applyFilter(); });
    box.querySelectorAll("input[data-sensing-type]").forEach((cb) => cb.addEventListener("change", () => {
      s.types[cb.dataset.sensingType] = cb.checked;
      applyFilter();
    }));
    const legend = $("#sensing-legend");
    legend.innerHTML = ["online", "offline", "unknown"].map((st) => {
      const n = s.counts ? Object.values(counts).reduce((a, c) => a + (c[st] || 0), 0) : null;
      return `<span><i class="ring" style="border-color:${STATUS_COLOURS[st]}"></i>${esc(t("s_" + st))}${n === null ? "" : ` ${n}`}</span>`;
    }).join("") + `<span><i class="ring halo"></i>${esc(t("s_open_alerts"))}</span>`;
  }
  async function loadCounts(gen) { // /sensing/status: {"types": [{type, type_label, online, offline, unknown, total}]}
    try {
      const doc = await api("/sensing/status");
      if (gen !== generation) return;
      const counts = {};
      for (const r of doc.types || []) {
        counts[r.type] = Object.fromEntries(["online", "offline", "unknown"].map((st) => [st, r[st] || 0]));
        if (r.type_label) s.typeLabels[r.type] = r.type_label;
      }
      s.counts = counts;
      renderTypes();
      applyFilter();
    } catch (e) { s.error = e.message; setStatus(e.message, true); }
  }

  // ---------------------------------------------------------------- the device panel
  function click(e) {
    if (!s.enabled || !s.show || !map.getLayer("sensing-devices")) return false;
    const r = 5;
    const hit = map.queryRenderedFeatures([[e.point.x - r, e.point.y - r], [e.point.x + r, e.point.y + r]], { layers: DEVICE_LAYERS });
    if (!hit.length) return false;
    showDevice(hit[0].properties.device_id);
    return true;
  }
  function openInfo() {
    app.parcel = null; // the panel now shows a device, not a parcel
    const opening = $("#info").hidden;
    $("#info").hidden = false;
    if (opening) map.resize();
    return $("#info-body");
  }
  async function showDevice(id) {
    const gen = generation;
    s.device = id; s.deviceDoc = null; s.chart = null;
    const box = openInfo();
    disposeChart();
    box.innerHTML = `<p>${esc(t("loading"))}</p>`;
    delete box.dataset.parcel;
    let doc;
    try { doc = await api(`/sensing/devices/${encodeURIComponent(id)}`); } catch (e) {
      if (s.device === id) box.innerHTML = `<p class="error">${esc(id)}: ${esc(e.message)}</p>`;
      return;
    }
    if (s.device !== id || gen !== generation) return; // another device was clicked meanwhile
    s.deviceDoc = doc;
    const p = doc.type === "Feature" ? { ...(doc.properties || {}) } : { ...doc }; // a GeoJSON Feature or a flat object
    if (p.type_label) s.typeLabels[p.type] = p.type_label;
    const latest = doc.latest || p.latest || [];
    const hh = p.household && typeof p.household === "object" ? p.household : null;
    const resident = hh && (hh.resident?.name || hh.name);
    const row = (label, value, cls = "") => `<tr${cls ? ` class="${cls}"` : ""}><th>${esc(label)}</th><td>${value}</td></tr>`;
    let html = `<div id="device-panel" data-device="${esc(id)}"><h3><i class="dot" style="background:${typeColour(p.type)}"></i> `
      + `${esc(p.name || id)}</h3><table id="device-props">`
      + row(t("s_device"), esc(id))
      + row(t("s_type"), esc(p.type_label || typeName(p.type)))
      + row(t("s_address"), esc(p.address || "—"))
      + row(t("s_community"), esc([p.street, p.community].filter(Boolean).join(" · ") || "—"))
      + (p.building_id ? row(t("s_building"), esc(p.building_id)) : "")
      + row(t("s_status"), `<span class="status status-${esc(p.status)}" id="device-status">${esc(t("s_" + (p.status || "unknown")))}</span>`)
      + row(t("s_last_seen"), esc(fmtTime(p.last_seen)))
      + row(t("s_battery"), p.battery === null || p.battery === undefined ? "—" : `${esc(num(p.battery, 1))} %`)
      + (p.installed_on ? row(t("s_installed"), esc(p.installed_on)) : "")
      + (resident ? row(t("s_household"), esc(resident)) : "")
      + `</table><h4>${esc(t("s_latest"))}</h4>`;
    html += latest.length ? `<table id="device-latest">${latest.map((l) => `<tr data-datastream="${esc(l.datastream_id)}"><th>${esc(l.observed_property || l.name)}</th>`
      + `<td class="value">${esc(num(l.value))} ${esc(l.unit || "")}</td><td class="when">${esc(fmtTime(l.time))}</td></tr>`).join("")}</table>`
      : `<p id="device-latest" class="none">${esc(t("s_no_latest"))}</p>`;
    if (latest.length) {
      html += `<h4>${esc(t("s_series"))}</h4><div class="series-bar"><select id="device-stream" aria-label="${esc(t("s_stream"))}">`
        + latest.map((l) => `<option value="${esc(l.datastream_id)}">${esc(l.observed_property || l.name)}${l.unit ? ` (${esc(l.unit)})` : ""}</option>`).join("")
        + `</select><span class="periods">${Object.keys(PERIODS).map((pr) => `<button type="button" data-period="${pr}">${esc(t("s_" + pr))}</button>`).join("")}</span></div>`
        + `<div id="device-chart"></div><p id="device-chart-note"></p>`;
    }
    html += "</div>";
    box.innerHTML = html;
    if (!latest.length) return;
    // the first numeric datastream that is not the battery is what one wants to see first
    const first = latest.find((l) => typeof l.value === "number" && !/电量|battery/i.test(`${l.observed_property} ${l.name}`)) || latest[0];
    const sel = box.querySelector("#device-stream");
    sel.value = String(first.datastream_id);
    const redraw = (period) => drawSeries(id, sel.value, period);
    sel.addEventListener("change", () => redraw(s.chart?.period || "raw"));
    box.querySelectorAll("button[data-period]").forEach((b) => b.addEventListener("click", () => redraw(b.dataset.period)));
    redraw("raw");
  }
  function disposeChart() {
    const el = document.getElementById("device-chart");
    if (el && window.echarts) window.echarts.dispose(el);
  }
  async function drawSeries(id, datastream, period) {
    const end = new Date(), start = new Date(end.getTime() - PERIODS[period]);
    const stamp = { device: id, datastream: String(datastream), period, points: null, rendered: false,
      start: start.toISOString(), end: end.toISOString() };
    s.chart = stamp;
    document.querySelectorAll("#device-panel button[data-period]").forEach((b) => b.classList.toggle("on", b.dataset.period === period));
    const note = $("#device-chart-note");
    let doc, echarts;
    try {
      [doc, echarts] = await Promise.all([
        api(`/sensing/devices/${encodeURIComponent(id)}/series?${new URLSearchParams({ datastream, period,
          start: stamp.start, end: stamp.end })}`),
        loadECharts().catch(() => null),
      ]);
    } catch (e) {
      if (s.chart === stamp && note) note.textContent = e.message;
      stamp.error = e.message;
      return;
    }
    if (s.chart !== stamp) return; // superseded
    const el = document.getElementById("device-chart");
    if (!el) return;
    if (!echarts) { note.textContent = t("s_chart_missing"); stamp.error = "echarts"; return; }
    const pts = doc.points || [];
    stamp.points = pts.length;
    stamp.unit = doc.unit || "";
    note.textContent = pts.length ? "" : t("s_no_points");
    const sel = $("#device-stream");
    const name = sel ? sel.options[sel.selectedIndex].text : t("s_value");
    const value = (v) => (typeof v === "boolean" ? Number(v) : v); // e.g. 井盖开启: true / false → 1 / 0
    const series = period === "raw"
      ? [{ name, type: "line", showSymbol: pts.length < 60, sampling: "lttb", data: pts.map((q) => [q.t, value(q.value)]) }]
      : SUM_UNITS.has(stamp.unit) // quantities per interval (water used, vehicles): the total of each hour / day
        ? [{ name: t("s_sum"), type: "bar", data: pts.map((q) => [q.t, q.sum]) }]
        : [
          { name: t("s_mean"), type: "line", showSymbol: pts.length < 60,
            data: pts.map((q) => [q.t, q.mean ?? (q.n ? q.sum / q.n : null)]) },
          { name: t("s_min"), type: "line", showSymbol: false, lineStyle: { type: "dashed", width: 1 }, data: pts.map((q) => [q.t, q.min]) },
          { name: t("s_max"), type: "line", showSymbol: false, lineStyle: { type: "dashed", width: 1 }, data: pts.map((q) => [q.t, q.max]) },
        ];
    const chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: "canvas" });
    chart.off("finished");
    chart.on("finished", () => { if (s.chart === stamp) stamp.rendered = true; });
    chart.setOption({
      animation: false,
      grid: { left: 52, right: 14, top: 28, bottom: 48 },
      tooltip: { trigger: "axis" },
      legend: period === "raw" ? { show: false } : { top: 0, textStyle: { fontSize: 11 } },
      xAxis: { type: "time", min: start.getTime(), max: end.getTime() },
      yAxis: { type: "value", name: stamp.unit, scale: series[0].type !== "bar" }, // bars stand on zero
      dataZoom: [{ type: "inside" }, { type: "slider", height: 14, bottom: 6 }],
      series,
    }, true);
  }

  // ---------------------------------------------------------------- alerts
  const STEP_BUTTONS = [["acknowledged", "s_ack"], ["visited", "s_visit"], ["closed", "s_close"]];
  function allowed(a, step) { // the workflow the server enforces, mirrored to offer only the next steps
    if (!s.canWork || a.state === "closed") return false;
    if (step === "acknowledged") return a.state === "open" || a.state === "notified";
    if (step === "visited") return a.state === "acknowledged";
    return true; // closed: from any state, with a note
  }
  function active() {
    return [...s.alerts.values()].filter((a) => a.state !== "closed")
      .sort((a, b) => String(b.opened_at).localeCompare(String(a.opened_at)));
  }
  function upsert(a) {
    if (!a || a.alert_id === undefined || a.alert_id === null) return;
    const key = String(a.alert_id);
    const old = s.alerts.get(key);
    if (old && old.updated_at && a.updated_at && Date.parse(old.updated_at) > Date.parse(a.updated_at)) return; // an older copy
    s.alerts.set(key, { ...(old || {}), ...a });
  }
  function countdownText(a) {
    if (a.state === "visited" || a.state === "closed" || a.on_site_minutes !== null && a.on_site_minutes !== undefined) {
      if (a.on_site_minutes === null || a.on_site_minutes === undefined) return ["", ""];
      const met = a.target_met ?? a.on_site_minutes <= ON_SITE_MINUTES;
      return [`${tf("s_on_site", { n: num(a.on_site_minutes, 1) })} · ${t(met ? "s_met" : "s_missed")}`, met ? "met" : "missed"];
    }
    const left = Date.parse(a.opened_at) + ON_SITE_MINUTES * 60000 - Date.now();
    if (left >= 0) {
      const m = Math.floor(left / 60000), sec = Math.floor((left % 60000) / 1000);
      return [tf("s_left", { mmss: `${m}:${String(sec).padStart(2, "0")}` }), "running"];
    }
    return [tf("s_over", { n: duration(-left) }), "over"];
  }
  function tick() {
    document.querySelectorAll("#alert-list .alert").forEach((div) => {
      const a = s.alerts.get(div.dataset.alert);
      if (!a) return;
      div.querySelector(".alert-age").textContent = tf("s_ago", { n: duration(Date.now() - Date.parse(a.opened_at)) });
      const [text, cls] = countdownText(a);
      const cd = div.querySelector(".alert-countdown");
      cd.textContent = text; cd.dataset.phase = cls;
    });
  }
  function renderAlerts() {
    const box = $("#alert-list");
    if (!box) return;
    const list = active();
    $("#alert-count").textContent = s.listLoaded ? `(${list.length})` : "";
    const live = $("#alert-live");
    live.textContent = s.streamOpen ? `● ${t("s_live")}` : s.stream ? t("s_offline_stream") : "";
    live.classList.toggle("on", s.streamOpen);
    // keep a half-written closing note across re-renders
    const notes = {};
    box.querySelectorAll(".alert").forEach((div) => {
      const f = div.querySelector(".alert-close-form");
      if (f && !f.hidden) notes[div.dataset.alert] = div.querySelector(".alert-note").value;
    });
    box.innerHTML = list.length ? list.map((a) => {
      const device = a.device_name || a.device_id;
      return `<div class="alert" data-alert="${esc(a.alert_id)}" data-state="${esc(a.state)}" data-device="${esc(a.device_id)}"`
        + ` style="border-left-color:${SEVERITY_COLOURS[a.severity] || "#d7301f"}">`
        + `<a href="#" class="alert-title">${esc(a.title || a.kind || a.rule_id)}</a>`
        + ` <span class="alert-state">${esc(t("state_" + a.state))}</span>`
        + `<div class="alert-meta">${esc(device)}${a.address ? ` · ${esc(a.address)}` : ""}</div>`
        + `<div class="alert-meta"><span class="alert-age"></span> · <span class="alert-countdown"></span></div>`
        + (s.canWork ? `<div class="alert-actions">${STEP_BUTTONS.map(([step, label]) => `<button type="button" data-step="${step}"`
          + `${allowed(a, step) ? "" : " disabled"}>${esc(t(label))}</button>`).join("")}</div>`
          + `<div class="alert-close-form" ${a.alert_id in notes ? "" : "hidden"}><input class="alert-note" placeholder="${esc(t("s_note_ph"))}"`
          + ` value="${esc(notes[a.alert_id] || "")}"><button type="button" class="alert-close-confirm">${esc(t("s_submit"))}</button></div>`
          + `<div class="alert-error error"></div>` : "")
        + "</div>";
    }).join("") : `<p class="none">${esc(t("s_no_alerts"))}</p>`;
    tick();
    clearInterval(ticker);
    ticker = list.length ? setInterval(tick, 1000) : null;
  }
  const findAlert = (key) => s.alerts.get(String(key));
  async function postStep(a, step, note, div) {
    const err = div.querySelector(".alert-error");
    err.textContent = "";
    div.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const body = { step, ...(note ? { note } : {}) };
      const doc = await api(`/sensing/alerts/${encodeURIComponent(a.alert_id)}/steps`, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      s.posted += 1;
      upsert(doc.alert || doc);
      renderAlerts();
      refreshTiles();
    } catch (e) {
      renderAlerts();
      const again = document.querySelector(`#alert-list .alert[data-alert="${CSS.escape(String(a.alert_id))}"] .alert-error`);
      if (again) again.textContent = e.message;
    }
  }
  function wireAlertList() {
    const box = $("#alert-list");
    box.addEventListener("click", (ev) => {
      const div = ev.target.closest(".alert");
      if (!div) return;
      const a = findAlert(div.dataset.alert);
      if (!a) return;
      if (ev.target.closest(".alert-title")) { ev.preventDefault(); flyToAlert(a); return; }
      const b = ev.target.closest("button");
      if (!b || b.disabled) return;
      if (b.dataset.step === "closed") {
        const form = div.querySelector(".alert-close-form");
        form.hidden = false;
        div.querySelector(".alert-note").focus();
      } else if (b.dataset.step) {
        postStep(a, b.dataset.step, "", div);
      } else if (b.classList.contains("alert-close-confirm")) {
        const note = div.querySelector(".alert-note").value.trim();
        if (!note) { div.querySelector(".alert-error").textContent = t("s_note_needed"); return; }
        postStep(a, "closed", note, div);
      }
    });
  }
  function flyToAlert(a) {
    const fly = { alert_id: a.alert_id, device_id: a.device_id, done: false };
    s.lastFly = fly;
    const go = (lon, lat) => {
      map.once("moveend", () => { fly.done = true; });
      map.flyTo({ center: [lon, lat], zoom: Math.max(map.getZoom(), 17), speed: 2.5 });
      fly.center = [lon, lat];
    };
    const shown = showDevice(a.device_id); // opens the panel now: the map is narrower before it flies
    if (Number.isFinite(a.lon) && Number.isFinite(a.lat)) go(a.lon, a.lat);
    shown.then(() => {
      const g = s.deviceDoc?.geometry;
      if (!fly.center && g && g.type === "Point") go(g.coordinates[0], g.coordinates[1]);
    });
  }
  async function loadAlerts(gen) {
    try {
      const doc = await api("/sensing/alerts?state=active&limit=500");
      if (gen !== generation) return;
      for (const a of doc.alerts || []) upsert(a);
      s.listLoaded = true;
      renderAlerts();
    } catch (e) { s.error = e.message; setStatus(e.message, true); }
  }
  function openStream(gen) { // EventSource cannot send headers: the key goes as ?api_key= (redacted in logs)
    return new Promise((resolve) => {
      const url = `/sensing/alerts/stream${app.key ? `?api_key=${encodeURIComponent(app.key)}` : ""}`;
      const es = new EventSource(url);
      s.stream = es;
      let first = true;
      es.addEventListener("open", () => {
        if (gen !== generation) return;
        s.streamOpen = true;
        renderAlerts();
        if (first) { first = false; resolve(); } else loadAlerts(gen); // reconnected: catch up on what was missed
      });
      es.addEventListener("alert", (ev) => {
        if (gen !== generation) return;
        let a;
        try { a = JSON.parse(ev.data); } catch (e) { return; }
        s.streamEvents += 1;
        upsert(a);
        renderAlerts();
        refreshTiles();
      });
      es.addEventListener("error", () => {
        if (gen !== generation) return;
        s.streamOpen = false;
        renderAlerts();
        if (first) { first = false; resolve(); }
      });
    });
  }
  function stop() {
    generation += 1;
    if (s.stream) { s.stream.close(); s.stream = null; }
    s.streamOpen = false; s.listLoaded = false;
    s.alerts = new Map();
    clearInterval(ticker); ticker = null;
  }

  // ---------------------------------------------------------------- life cycle
  // After each login: who is calling decides whether the sensing layer and the alerts exist at all
  // (an anonymous caller sees no device: nothing is requested, so no 401 reaches the console).
  function start() {
    stop();
    const gen = generation;
    const w = app.who;
    s.enabled = !!w && w.via !== "anonymous" && (w.sees || []).includes("internal");
    s.canWork = s.enabled && (w.may || []).includes("sensing:alerts");
    const section = $("#sensing");
    if (section) section.hidden = !s.enabled;
    $("#alert-box").hidden = !s.enabled;
    if (!s.enabled) { s.counts = null; return; }
    renderTypes();
    renderAlerts();
    loadCounts(gen);
    // the stream first, then the list: an alert opened in between comes by the stream
    openStream(gen).then(() => (gen === generation ? loadAlerts(gen) : null));
  }
  function applyLang() {
    if (!s.enabled) return;
    renderTypes();
    renderAlerts();
    if (s.device && document.getElementById("device-panel")) showDevice(s.device);
  }
  function close() { if (s.device) { disposeChart(); s.device = null; s.chart = null; } }

  wireAlertList();
  $("#alert-fold").addEventListener("click", () => {
    const folded = $("#alert-box").classList.toggle("folded");
    $("#alert-fold").textContent = folded ? "▸" : "▾";
    $("#alert-fold").setAttribute("aria-expanded", String(!folded));
  });
  $("#info-close").addEventListener("click", close);
  return { state: s, start, stop, decorate, click, applyLang, showDevice, refreshTiles, flyToAlert };
}
