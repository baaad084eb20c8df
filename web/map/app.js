// geotwin map client (/map): MapLibre GL JS over geotwin's styles, tiles, features, geocoder and
// supervision APIs. Everything is served by geotwin itself (no CDN, no internet).
import * as maplibregl from "/vendor/maplibre-gl/maplibre-gl.mjs";
import { STRINGS, DISPOSITIONS, FIELDS } from "./i18n.js";
import { cleanPolygon as cleanPoints } from "./draw.js";
import { createSensing } from "./sensing.js";
import { createUnderground } from "./underground.js";

const KEY_STORE = "geotwin.apiKey", LANG_STORE = "geotwin.lang";
const CJK_FONTS = "'Noto Sans CJK SC', 'Source Han Sans SC', 'Microsoft YaHei', 'PingFang SC', sans-serif";
const MIN_DATE = "2020-01-01";
const THEMES = [
  ["theme_imagery", ["imagery", "relief", "hillshade"]],
  ["theme_landuse", ["land_use", "farmland", "forest"]],
  ["theme_protected", ["basic_farmland", "eco_redline"]],
  ["theme_parcels", ["parcels", "approvals"]],
  ["theme_buildings", ["buildings", "buildings_3d"]],
  ["theme_places", ["place_names", "roads", "streets", "communities"]],
  ["theme_supervision", ["findings"]],
  ["theme_underground", ["pipes", "basements"]],
];
const $ = (sel) => document.querySelector(sel);
const state = {
  lang: localStorage.getItem(LANG_STORE) || "zh", key: localStorage.getItem(KEY_STORE) || "",
  who: null, date: isoDate(new Date()), styleDate: null, loading: true, ready: false, style: null,
  vis: {}, groups: [], titles: {}, findings: null, runId: null, tool: null, toolPts: [], lastFly: null,
  lastExport: null, parcel: null, swipe: false, error: null,
};
const t = (k) => (STRINGS[state.lang] || STRINGS.zh)[k] ?? k;
// a string with {name} slots filled in
const tf = (k, vars) => t(k).replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));

function isoDate(d) {
  const z = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return z.toISOString().slice(0, 10);
}
const dayMs = 86400000;
const dayIndex = (iso) => Math.round((Date.parse(iso) - Date.parse(MIN_DATE)) / dayMs);
const dayIso = (i) => new Date(Date.parse(MIN_DATE) + i * dayMs).toISOString().slice(0, 10);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (n, d = 2) => Number(n).toLocaleString(state.lang === "zh" ? "zh-CN" : "en", { maximumFractionDigits: d });

// ------------------------------------------------------------------ HTTP with the caller's key
function authHeaders() { return state.key ? { Authorization: `Bearer ${state.key}` } : {}; }
function sameOrigin(url) { return new URL(url, location.href).origin === location.origin; }
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { Accept: "application/json", ...authHeaders(), ...(opts.headers || {}) } });
  if (!r.ok) {
    let msg = `${r.status}`;
    try { const j = await r.json(); msg = j.detail || j.description || j.title || msg; } catch (e) { /* not JSON */ }
    const err = new Error(typeof msg === "string" ? msg : JSON.stringify(msg)); err.status = r.status; throw err;
  }
  return r.json();
}
const can = (perm) => !!state.who && (state.who.may || []).includes(perm);
function setStatus(text, isError = false) { const s = $("#status"); s.textContent = text || ""; s.classList.toggle("error", isError); }

// ------------------------------------------------------------------ the map
const map = new maplibregl.Map({
  container: "map", style: { version: 8, sources: {}, layers: [] }, center: [114.2514, 22.722], zoom: 13,
  localIdeographFontFamily: CJK_FONTS, attributionControl: { compact: true },
  canvasContextAttributes: { preserveDrawingBuffer: true },  // print / export of the canvas
  transformRequest: (url) => (sameOrigin(url) ? { url, headers: authHeaders() } : { url }),
});
map.addControl(new maplibregl.NavigationControl(), "top-right");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-right");
window.geotwin = { map, state, maplibregl, cleanPolygon };  // cleanPolygon: for the e2e tests too
// the sensing room: devices layer, device panel, live alerts (web/map/sensing.js)
const sensing = createSensing({ map, app: state, api, esc, setStatus });
window.geotwin.sensing = sensing;
// the underground: the pipes layer group, pipe / manhole / basement panels, "地下情况" (web/map/underground.js)
const underground = createUnderground({ map, app: state, api, esc, setStatus });
window.geotwin.underground = underground;

function groupOf(layer) { return layer.metadata?.["geotwin:group"] || (layer.id.startsWith("findings") ? "findings" : null); }

// Adds the client's own sources / layers (findings, measure / draw sketch) and the user's visibility choices.
function decorate(style) {
  style.sources = { ...style.sources };
  style.layers = [...style.layers];
  if (state.findings) {
    style.sources.findings = { type: "geojson", data: state.findings };
    const at = style.layers.findIndex((l) => l.id.startsWith("hillshade"));
    const layers = [
      { id: "findings-fill", type: "fill", source: "findings", paint: { "fill-color": "#e53935", "fill-opacity": 0.25 },
        metadata: { "geotwin:group": "findings", "geotwin:title_zh": STRINGS.zh.findings_layer, "geotwin:title_en": STRINGS.en.findings_layer } },
      { id: "findings-line", type: "line", source: "findings", paint: { "line-color": "#b71c1c", "line-width": 2.5, "line-dasharray": [2, 1] },
        metadata: { "geotwin:group": "findings" } },
    ];
    style.layers.splice(at < 0 ? style.layers.length : at, 0, ...layers);
  }
  sensing.decorate(style);
  underground.decorate(style);
  style.sources.sketch = { type: "geojson", data: sketchData() };
  style.layers.push(
    { id: "sketch-fill", type: "fill", source: "sketch", filter: ["==", ["geometry-type"], "Polygon"], paint: { "fill-color": "#ff9800", "fill-opacity": 0.2 } },
    { id: "sketch-line", type: "line", source: "sketch", paint: { "line-color": "#e65100", "line-width": 2 } },
    { id: "sketch-point", type: "circle", source: "sketch", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-radius": 4, "circle-color": "#e65100" } },
    { id: "selected-line", type: "line", source: "sketch", filter: ["==", ["get", "kind"], "selected"], paint: { "line-color": "#00e5ff", "line-width": 4 } },
  );
  for (const l of style.layers) {
    const g = groupOf(l);
    if (!g) continue;
    if (!(g in state.vis)) state.vis[g] = (l.layout?.visibility ?? "visible") !== "none";
    const on = state.swipe ? g === "imagery" || (state.vis[g] && !["fill", "fill-extrusion", "hillshade"].includes(l.type)) : state.vis[g];
    l.layout = { ...(l.layout || {}), visibility: on ? "visible" : "none" };
  }
  return style;
}

async function loadStyle() {
  const date = state.date;
  state.loading = true;
  setStatus(t("loading"));
  try {
    const style = await api(`/styles/district?datetime=${encodeURIComponent(date)}`);
    const meta = style.metadata || {};
    state.groups = [...(meta["geotwin:groups"] || [])];
    if (state.findings) state.groups.push("findings");
    state.titles = {};
    for (const l of style.layers) {
      const g = groupOf(l);
      if (g && !state.titles[g]) state.titles[g] = { zh: l.metadata["geotwin:title_zh"], en: l.metadata["geotwin:title_en"] };
    }
    state.titles.findings = { zh: STRINGS.zh.findings_layer, en: STRINGS.en.findings_layer };
    const first = !state.style;
    state.style = decorate(style);
    if (first && style.center && !state.initialView) {
      // the configured home view (geotwin config set home): a box is shown whole, else centre + zoom
      const home = meta["geotwin:home"] || {};
      if (home.bbox) map.fitBounds([[home.bbox[0], home.bbox[1]], [home.bbox[2], home.bbox[3]]], { animate: false });
      else map.jumpTo({ center: style.center, zoom: style.zoom ?? 13 });
    }
    state.initialView = true;
    map.setStyle(state.style, { diff: !first });
    renderLayerList();
    renderLegend(style);
    await new Promise((resolve) => { map.once("idle", resolve); map.triggerRepaint(); });
    state.styleDate = date;
    setStatus(`${t("at_date")} ${date}`);
  } catch (e) {
    state.error = e.message;
    setStatus(e.message, true);
  } finally {
    state.loading = false;
    state.ready = true;
  }
}

function applyVisibility() {
  for (const l of map.getStyle().layers) {
    const g = groupOf(l);
    if (!g) continue;
    // swipe: imagery on both sides; fills are left out of the left side so the imagery shows
    const on = state.swipe ? g === "imagery" || (state.vis[g] && !["fill", "fill-extrusion", "hillshade"].includes(l.type)) : state.vis[g];
    map.setLayoutProperty(l.id, "visibility", on ? "visible" : "none");
  }
}

function renderLayerList() {
  const box = $("#layer-list");
  box.innerHTML = "";
  for (const [theme, groups] of THEMES) {
    const present = groups.filter((g) => state.groups.includes(g));
    if (!present.length) continue;
    const div = document.createElement("div");
    div.className = "theme";
    div.innerHTML = `<b>${esc(t(theme))}</b>` + present.map((g) =>
      `<label><input type="checkbox" data-group="${g}" ${state.vis[g] ? "checked" : ""}> ${esc(state.titles[g]?.[state.lang] || g)}</label>`).join("");
    box.appendChild(div);
  }
  box.querySelectorAll("input[data-group]").forEach((cb) => cb.addEventListener("change", () => {
    state.vis[cb.dataset.group] = cb.checked;
    applyVisibility();
  }));
}

// The land-use legend: the classes of the served style's match expression, named from the code table.
let classNames = null;
async function renderLegend(style) {
  const box = $("#legend");
  const layer = style.layers.find((l) => l.id === "land_use-fill") || style.layers.find((l) => l.id === "parcels-fill");
  if (!layer) { box.textContent = "—"; return; }
  if (!classNames) { try { classNames = await api("/map/landuse-classes.json"); } catch (e) { classNames = {}; } }
  const expr = layer.paint["fill-color"];
  const rows = [];
  for (let i = 2; i + 1 < expr.length - 1; i += 2) {
    const codes = Array.isArray(expr[i]) ? expr[i] : [expr[i]];
    rows.push([codes, expr[i + 1]]);
  }
  box.innerHTML = rows.map(([codes, colour]) => {
    const names = codes.map((c) => classNames[c]?.[state.lang] || classNames[c]?.zh || "").filter(Boolean);
    return `<div class="legend-row" data-codes="${esc(codes.join(","))}"><i style="background:${esc(colour)}"></i>`
      + `<span><code>${esc(codes.join(" "))}</code> ${esc(names.slice(0, 3).join("、"))}${names.length > 3 ? "…" : ""}</span></div>`;
  }).join("");
}

// ------------------------------------------------------------------ time slider, swipe
const slider = $("#time-slider"), dateInput = $("#time-date");
function initTime() {
  const max = [isoDate(new Date()), "2026-12-31"].sort().pop();
  slider.min = 0; slider.max = dayIndex(max); slider.value = dayIndex(state.date);
  dateInput.min = MIN_DATE; dateInput.max = max; dateInput.value = state.date;
  $("#swipe-date").min = MIN_DATE; $("#swipe-date").max = max; $("#swipe-date").value = "2021-12-31";
  slider.addEventListener("input", () => { dateInput.value = dayIso(+slider.value); });
  slider.addEventListener("change", () => setDate(dayIso(+slider.value)));
  dateInput.addEventListener("change", () => { if (dateInput.value) setDate(dateInput.value); });
}
let dateTimer = null;
function setDate(iso) {
  state.date = iso;
  slider.value = dayIndex(iso); dateInput.value = iso;
  clearTimeout(dateTimer);
  dateTimer = setTimeout(async () => { await loadStyle(); if (state.swipe) await loadSwipe(); if (state.parcel) showParcel(state.parcel); }, 150);
}

let mapB = null;
async function loadSwipe() {
  const when = $("#swipe-date").value || "2021-12-31";
  const style = await api(`/styles/imagery?datetime=${encodeURIComponent(when)}`);
  for (const l of style.layers) l.layout = { ...(l.layout || {}), visibility: "visible" };
  if (!mapB) {
    mapB = new maplibregl.Map({ container: "map-b", style, interactive: false, attributionControl: false,
      center: map.getCenter(), zoom: map.getZoom(), localIdeographFontFamily: CJK_FONTS,
      transformRequest: (url) => (sameOrigin(url) ? { url, headers: authHeaders() } : { url }) });
    map.on("move", syncB);
    mapB.on("load", syncB);
    window.geotwin.mapB = mapB;
  } else {
    mapB.setStyle(style);
  }
  syncB();
  await new Promise((resolve) => { mapB.once("idle", resolve); mapB.triggerRepaint(); });
  state.swipeDate = when;
}
function syncB() {
  if (mapB) mapB.jumpTo({ center: map.getCenter(), zoom: map.getZoom(), bearing: map.getBearing(), pitch: map.getPitch() });
}
function placeHandle(x) {
  const w = $("#map-wrap").clientWidth;
  x = Math.max(0, Math.min(w, x));
  $("#swipe-handle").style.left = `${x}px`;
  $("#map-b").style.clipPath = `inset(0 0 0 ${x}px)`;
}
function initSwipe() {
  const on = $("#swipe-on"), handle = $("#swipe-handle");
  on.addEventListener("change", async () => {
    state.swipe = on.checked;
    $("#map-b").hidden = !on.checked; handle.hidden = !on.checked;
    applyVisibility();
    if (on.checked) { placeHandle($("#map-wrap").clientWidth / 2); await loadSwipe(); mapB.resize(); setStatus(t("swipe_hint")); }
  });
  $("#swipe-date").addEventListener("change", () => state.swipe && loadSwipe());
  let drag = false;
  handle.addEventListener("pointerdown", (e) => { drag = true; handle.setPointerCapture(e.pointerId); });
  handle.addEventListener("pointermove", (e) => { if (drag) placeHandle(e.clientX - $("#map-wrap").getBoundingClientRect().left); });
  handle.addEventListener("pointerup", () => { drag = false; });
}

// ------------------------------------------------------------------ place search
function initSearch() {
  const input = $("#search"), list = $("#search-list");
  let timer = null, items = [];
  const show = (features) => {
    items = features;
    list.innerHTML = features.map((f, i) => `<li data-i="${i}">${esc(f.properties.name || f.properties.full_address || f.id)}`
      + `<small>${esc([f.properties.kind, f.properties.street, f.properties.community].filter(Boolean).join(" · "))}</small></li>`).join("")
      || `<li class="none">${esc(t("search_none"))}</li>`;
    list.hidden = false;
  };
  input.addEventListener("input", () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) { list.hidden = true; return; }
    timer = setTimeout(async () => {
      try { show((await api(`/geocode/autocomplete?q=${encodeURIComponent(q)}&limit=8`)).features); } catch (e) { setStatus(e.message, true); }
    }, 200);
  });
  input.addEventListener("keydown", async (e) => {
    if (e.key !== "Enter") return;
    const q = input.value.trim();
    if (!q) return;
    try {
      const fc = await api(`/geocode/search?q=${encodeURIComponent(q)}&limit=8`);
      if (fc.features.length) flyToResult(fc.features[0]); else show([]);
    } catch (err) { setStatus(err.message, true); }
  });
  list.addEventListener("click", (e) => {
    const li = e.target.closest("li[data-i]");
    if (li) flyToResult(items[+li.dataset.i]);
  });
  document.addEventListener("click", (e) => { if (!e.target.closest("#search-box")) list.hidden = true; });
}
function flyToResult(f) {
  $("#search-list").hidden = true;
  $("#search").value = f.properties.name || f.properties.full_address || $("#search").value;
  const c = f.geometry.type === "Point" ? f.geometry.coordinates : f.bbox ? [(f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2] : null;
  if (!c) return;
  state.lastFly = { id: f.id, name: f.properties.name, center: c, done: false };
  map.once("moveend", () => { state.lastFly.done = true; });
  map.flyTo({ center: c, zoom: Math.max(map.getZoom(), 16), speed: 2.5 });
}

// ------------------------------------------------------------------ geometry helpers
// Areas on the CGCS2000 / GRS80 ellipsoid: the spherical-excess sum of turf's ringArea on the
// authalic sphere, latitudes mapped to authalic latitudes (equal-area), so parcels' areas agree
// with the projected (EPSG:4547) areas of the server to well under 0.1 %.
const rad = (d) => (d * Math.PI) / 180;
const A_ = 6378137, F_ = 1 / 298.257222101, E2 = F_ * (2 - F_), E_ = Math.sqrt(E2);
const qf = (s) => (1 - E2) * (s / (1 - E2 * s * s) - (1 / (2 * E_)) * Math.log((1 - E_ * s) / (1 + E_ * s)));
const QP = qf(1), RQ = A_ * Math.sqrt(QP / 2);
const authalic = (latDeg) => Math.asin(Math.max(-1, Math.min(1, qf(Math.sin(rad(latDeg))) / QP)));
function ringArea(ring) {
  let area = 0;
  const n = ring.length;
  if (n < 3) return 0;
  for (let i = 0; i < n; i++) {
    const p1 = ring[i], p2 = ring[(i + 1) % n], p3 = ring[(i + 2) % n];
    area += (rad(p3[0]) - rad(p1[0])) * Math.sin(authalic(p2[1]));
  }
  return Math.abs((area * RQ * RQ) / 2);
}
function geomArea(g) {
  const poly = (rings) => ringArea(rings[0]) - rings.slice(1).reduce((s, r) => s + ringArea(r), 0);
  if (g.type === "Polygon") return poly(g.coordinates);
  if (g.type === "MultiPolygon") return g.coordinates.reduce((s, p) => s + poly(p), 0);
  return 0;
}
function distance(a, b) {
  const dLat = rad(b[1] - a[1]), dLon = rad(b[0] - a[0]);
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(rad(a[1])) * Math.cos(rad(b[1])) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.sqrt(h));
}
const pathLength = (pts) => pts.slice(1).reduce((s, p, i) => s + distance(pts[i], p), 0);
const areaText = (m2) => `${fmt(m2, 1)} ${t("area_m2")} / ${fmt(m2 / 10000, 4)} ${t("ha")} / ${fmt(m2 / (10000 / 15), 2)} ${t("mu")}`;

// ------------------------------------------------------------------ measure and draw tools
let selected = null, drawn = null;  // drawn: the cleaned query polygon, once finished
function sketchData() {
  const pts = state.toolPts, feats = pts.map((p) => ({ type: "Feature", geometry: { type: "Point", coordinates: p }, properties: {} }));
  if (drawn) {
    feats.push({ type: "Feature", geometry: drawn, properties: { kind: "drawn" } });  // what was queried
  } else if (pts.length >= 2) {
    const closed = state.tool !== "line" && pts.length >= 3;
    feats.push(closed
      ? { type: "Feature", geometry: { type: "Polygon", coordinates: [[...pts, pts[0]]] }, properties: {} }
      : { type: "Feature", geometry: { type: "LineString", coordinates: pts }, properties: {} });
  }
  if (selected) feats.push({ ...selected, properties: { kind: "selected" } });
  return { type: "FeatureCollection", features: feats };
}
function refreshSketch() { map.getSource("sketch")?.setData(sketchData()); }
// cleanPolygon (draw.js) with its refusal put into words
function cleanPolygon(points) {
  const got = cleanPoints(points);
  if (got.error) got.message = tf(`draw_${got.error}`, { n: got.distinct, detail: got.detail || "" });
  return got;
}
function fixesText(fixes) {
  const said = [];
  if (fixes.duplicates) said.push(tf("draw_duplicates", { n: fixes.duplicates }));
  if (fixes.crossings) said.push(tf("draw_crossings", { n: fixes.crossings, parts: fixes.parts }));
  return said;
}
function toolText() {
  const pts = state.toolPts;
  if (state.tool === "line") return `${t("distance")}: ${fmt(pathLength(pts), 1)} ${t("m")}`;
  if (pts.length < 3) return t("draw_hint");
  const got = cleanPolygon(pts);  // the area of what would be queried (a bow-tie's lobes, not their difference)
  if (got.error) return t("draw_hint");
  const ring = [...pts, pts[0]];
  return `${t("area")}: ${areaText(geomArea(got.geometry))}\n${t("perimeter")}: ${fmt(pathLength(ring), 1)} ${t("m")}`;
}
function setTool(tool) {
  state.tool = state.tool === tool ? null : tool;
  state.toolPts = [];
  state.drawResult = null; drawn = null;
  for (const [id, name] of [["#measure-line", "line"], ["#measure-area", "area"], ["#draw-poly", "draw"]]) $(id).classList.toggle("on", state.tool === name);
  if (state.tool) map.doubleClickZoom.disable(); else map.doubleClickZoom.enable();
  map.getCanvas().style.cursor = state.tool ? "crosshair" : "";
  toolMessage(state.tool ? t("draw_hint") : "");
  refreshSketch();
}
function toolMessage(text, isError = false) {
  const box = $("#tool-result");
  box.textContent = text;
  box.classList.toggle("error", isError);
}
// The drawn polygon, cleaned (repeated vertices dropped, a self-intersection repaired: draw.js), is
// sent as S_INTERSECTS to the protected / parcel layers; fewer than 3 distinct vertices are refused.
// state.drawResult: {done, geometry, area_m2, fixes, <layer>: [ids], errors?} or {done, error, message}.
let drawSeq = 0;
async function finishTool() {
  if (state.tool !== "draw") return;
  const seq = ++drawSeq;
  const got = cleanPolygon(state.toolPts);
  if (got.error) {
    drawn = null; refreshSketch();
    state.drawResult = { done: true, seq, error: got.error, message: got.message };
    toolMessage(got.message, true);
    return;
  }
  drawn = got.geometry;
  refreshSketch();
  const area = geomArea(got.geometry);
  const out = [...fixesText(got.fixes), `${t("area")}: ${areaText(area)}`, `${t("touches")}:`];
  const result = { done: false, seq, geometry: got.geometry, area_m2: area, fixes: got.fixes };
  state.drawResult = result;
  toolMessage([...out, t("loading")].join("\n"));
  for (const layer of ["parcels", "basic_farmland", "eco_redline"]) {
    if (!state.groups.includes(layer)) continue;
    const q = new URLSearchParams({ filter: `S_INTERSECTS(geometry, ${got.wkt})`, "filter-lang": "cql2-text", datetime: state.date, limit: "1000" });
    try {
      const fc = await api(`/collections/${layer}/items?${q}`);
      result[layer] = fc.features.map((f) => String(f.id));
      out.push(`· ${state.titles[layer]?.[state.lang] || layer}: ${fc.features.length}${fc.features.length ? " — " + result[layer].slice(0, 12).join(", ") : ""}`);
    } catch (e) {
      (result.errors ||= {})[layer] = e.message;
      out.push(`· ${state.titles[layer]?.[state.lang] || layer}: ${e.message}`);
    }
    if (seq !== drawSeq || state.drawResult !== result) return;  // cleared or finished again meanwhile
  }
  result.done = true;
  toolMessage(out.join("\n"), !!result.errors);
}
function initTools() {
  $("#measure-line").addEventListener("click", () => setTool("line"));
  $("#measure-area").addEventListener("click", () => setTool("area"));
  $("#draw-poly").addEventListener("click", () => setTool("draw"));
  $("#tool-clear").addEventListener("click", () => { const keep = state.tool; state.tool = null; setTool(keep); selected = null; refreshSketch(); });
  $("#tool-finish").addEventListener("click", () => finishTool());
  $("#export-geojson").addEventListener("click", () => exportView("geojson"));
  $("#export-xlsx").addEventListener("click", () => exportView("xlsx"));
  $("#print").addEventListener("click", () => {
    $("#print-caption").textContent = `${t("title")} · ${t("at_date")} ${state.date} · ${new Date().toLocaleString()}`;
    window.print();
  });
}

// ------------------------------------------------------------------ export of the current view
function viewFeatures() {
  const layers = map.getStyle().layers.filter((l) => ["fill", "line", "circle", "fill-extrusion"].includes(l.type)
    && l.source && !["sketch"].includes(l.source) && map.getLayoutProperty(l.id, "visibility") !== "none").map((l) => l.id);
  const seen = new Set(), feats = [];
  for (const f of map.queryRenderedFeatures({ layers })) {
    const key = `${f.source}:${f.id ?? JSON.stringify(f.properties)}`;
    if (seen.has(key)) continue;
    seen.add(key);
    feats.push({ type: "Feature", id: f.id, geometry: f.geometry, properties: { layer: f.sourceLayer || f.source, ...f.properties } });
  }
  return feats;
}
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
// The rows of the XLSX export: a header (id, the properties' names, geometry_type), one row a feature.
function exportRows(feats) {
  const cols = [...new Set(feats.flatMap((f) => Object.keys(f.properties)))];
  return [["id", ...cols, "geometry_type"], ...feats.map((f) => [f.id ?? "", ...cols.map((c) => f.properties[c] ?? ""), f.geometry.type])];
}
function exportView(kind) {
  const feats = viewFeatures();
  const stamp = `geotwin_${state.date}`;
  if (kind === "geojson") {
    const text = JSON.stringify({ type: "FeatureCollection", features: feats }, null, 0);
    state.lastExport = { kind, count: feats.length, size: text.length };
    download(`${stamp}.geojson`, new Blob([text], { type: "application/geo+json" }));
  } else {
    const bytes = xlsx(exportRows(feats));
    state.lastExport = { kind, count: feats.length, size: bytes.length };
    download(`${stamp}.xlsx`, new Blob([bytes], { type: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" }));
  }
  setStatus(`${t("exported")} ${feats.length} ${t("features")}`);
}
// OWASP's rule against formula (CSV) injection: a text cell that starts with = + - @, a tab or a
// carriage return gets a leading apostrophe, so no spreadsheet takes it for a formula; numbers stay numbers.
const FORMULA_START = /^[=+\-@\t\r]/;
const safeText = (s) => (FORMULA_START.test(s) ? `'${s}` : s);
// A minimal XLSX (Office Open XML) writer: one sheet of inline strings / numbers in an uncompressed zip.
function xlsx(rows) {
  const x = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c])
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, "").replace(/\r/g, "&#13;");  // a raw CR would be read back as LF
  const col = (i) => { let s = ""; for (i += 1; i > 0; i = Math.floor((i - 1) / 26)) s = String.fromCharCode(65 + ((i - 1) % 26)) + s; return s; };
  const cell = (v, ref) => (typeof v === "number" && isFinite(v)
    ? `<c r="${ref}"><v>${v}</v></c>`
    : `<c r="${ref}" t="inlineStr"><is><t xml:space="preserve">${x(safeText(typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)))}</t></is></c>`);
  const sheet = `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>`
    + rows.map((r, ri) => `<row r="${ri + 1}">` + r.map((v, ci) => cell(v, `${col(ci)}${ri + 1}`)).join("") + "</row>").join("")
    + "</sheetData></worksheet>";
  const files = {
    "[Content_Types].xml": `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>`,
    "_rels/.rels": `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>`,
    "xl/workbook.xml": `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="features" sheetId="1" r:id="rId1"/></sheets></workbook>`,
    "xl/_rels/workbook.xml.rels": `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>`,
    "xl/worksheets/sheet1.xml": sheet,
  };
  return zipStore(files);
}
const CRC = (() => { const tb = new Uint32Array(256); for (let n = 0; n < 256; n++) { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; tb[n] = c >>> 0; } return tb; })();
function crc32(b) { let c = 0xffffffff; for (let i = 0; i < b.length; i++) c = CRC[(c ^ b[i]) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; }
function zipStore(files) {
  const enc = new TextEncoder(), parts = [], central = [];
  let offset = 0;
  for (const [name, text] of Object.entries(files)) {
    const data = enc.encode(text), nm = enc.encode(name), crc = crc32(data);
    const head = new DataView(new ArrayBuffer(30));
    head.setUint32(0, 0x04034b50, true); head.setUint16(4, 20, true); head.setUint16(6, 0x0800, true);
    head.setUint32(14, crc, true); head.setUint32(18, data.length, true); head.setUint32(22, data.length, true); head.setUint16(26, nm.length, true);
    parts.push(new Uint8Array(head.buffer), nm, data);
    const cd = new DataView(new ArrayBuffer(46));
    cd.setUint32(0, 0x02014b50, true); cd.setUint16(4, 20, true); cd.setUint16(6, 20, true); cd.setUint16(8, 0x0800, true);
    cd.setUint32(16, crc, true); cd.setUint32(20, data.length, true); cd.setUint32(24, data.length, true); cd.setUint16(28, nm.length, true);
    cd.setUint32(42, offset, true);
    central.push(new Uint8Array(cd.buffer), nm);
    offset += 30 + nm.length + data.length;
  }
  const cdSize = central.reduce((s, p) => s + p.length, 0), end = new DataView(new ArrayBuffer(22)), n = Object.keys(files).length;
  end.setUint32(0, 0x06054b50, true); end.setUint16(8, n, true); end.setUint16(10, n, true); end.setUint32(12, cdSize, true); end.setUint32(16, offset, true);
  const all = [...parts, ...central, new Uint8Array(end.buffer)], out = new Uint8Array(all.reduce((s, p) => s + p.length, 0));
  let at = 0; for (const p of all) { out.set(p, at); at += p.length; }
  return out;
}

// ------------------------------------------------------------------ parcel details, findings, cases
async function loadFindings() {
  state.findings = null; state.runId = null; state.findingList = [];
  if (!can("supervision:read")) return;
  try {
    const runs = (await api("/supervision/runs?limit=20")).runs.filter((r) => r.finished_at);
    if (!runs.length) return;
    const run = runs.reduce((a, b) => (a.id > b.id ? a : b));
    state.runId = run.id;
    state.findings = await api(`/supervision/runs/${run.id}/findings?f=geojson`);
    state.findingList = (await api(`/supervision/runs/${run.id}/findings`)).findings;
  } catch (e) { setStatus(e.message, true); }
}

function table(obj, labels) {
  return `<table>${Object.entries(obj).map(([k, v]) => `<tr><th>${esc(labels?.[k]?.[state.lang === "zh" ? 0 : 1] || k)}</th><td>${esc(v ?? "—")}</td></tr>`).join("")}</table>`;
}

async function showParcel(pid) {
  state.parcel = pid;
  const box = $("#info-body");
  $("#info").hidden = false;
  box.innerHTML = `<p>${esc(t("loading"))}</p>`;
  map.resize();
  const id = encodeURIComponent(pid);
  let item, versions;
  try {
    [item, versions] = await Promise.all([
      api(`/collections/parcels/items/${id}?datetime=${encodeURIComponent(state.date)}`),
      api(`/collections/parcels/items/${id}/versions`),
    ]);
  } catch (e) { box.innerHTML = `<p class="error">${esc(pid)}: ${esc(e.message)}</p>`; return; }
  selected = item.geometry ? { type: "Feature", geometry: item.geometry } : null;
  refreshSketch();
  const p = item.properties || {};
  const ordered = Object.fromEntries([...Object.keys(FIELDS).filter((k) => k in p), ...Object.keys(p).filter((k) => !(k in FIELDS))].map((k) => [k, p[k]]));
  const m2 = item.geometry ? geomArea(item.geometry) : 0;
  let html = `<h3>${esc(t("parcel"))} <span id="parcel-id">${esc(pid)}</span></h3>`
    + `<h4>${esc(t("area"))}</h4><p id="parcel-area" data-m2="${m2.toFixed(2)}">${esc(areaText(m2))}</p>`;
  let tail = `<h4>${esc(t("attributes"))}</h4>${table(ordered, FIELDS)}`;
  const vs = (versions.features || []).slice().sort((a, b) => String(a.time?.interval?.[0]).localeCompare(String(b.time?.interval?.[0])));
  tail += `<h4>${esc(t("history"))} (${vs.length})</h4><table id="parcel-history"><tr><th>${esc(t("valid"))}</th><th>${esc(t("changed"))}</th></tr>`
    + vs.map((v, i) => {
      const prev = vs[i - 1]?.properties || {};
      const changed = i === 0 ? "—" : Object.keys(v.properties || {}).filter((k) => JSON.stringify(v.properties[k]) !== JSON.stringify(prev[k])).join(", ") || "—";
      const [a, b] = v.time?.interval || [];
      return `<tr><td>${esc(String(a).slice(0, 10))} → ${esc(b && b !== ".." ? String(b).slice(0, 10) : "…")}</td><td>${esc(changed)}</td></tr>`;
    }).join("") + "</table>";
  const findings = (state.findingList || []).filter((f) => f.parcel_id === pid || f.subject_id === pid);
  let cases = [];
  if (can("supervision:read")) {
    try {
      const list = (await api("/supervision/cases")).cases.filter((c) => c.parcel_id === pid);
      cases = await Promise.all(list.map((c) => api(`/supervision/cases/${c.id}`)));
    } catch (e) { html += `<p class="error">${esc(e.message)}</p>`; }
  }
  const inCase = new Set(cases.flatMap((c) => (c.findings || []).map((f) => f.id)));
  html += `<h4>${esc(t("findings"))} (${findings.length})</h4><div id="parcel-findings">`
    + (findings.length ? findings.map((f) => `<div class="finding" data-rule="${esc(f.rule)}" data-id="${f.id}">`
      + (can("cases:write") && !inCase.has(f.id) ? `<input type="checkbox" class="pick" value="${f.id}" checked> ` : "")
      + `<b>${esc(f.rule)}</b> ${esc(f.rule_title || "")} · ${esc(t("sev_" + f.severity))}<br>${esc(f.message)}`
      + `<details><summary>${esc(t("evidence"))}</summary><pre>${esc(JSON.stringify(f.measures, null, 1))}</pre></details></div>`).join("")
      : `<p>${esc(t(can("supervision:read") ? "no_findings" : "no_permission"))}</p>`) + "</div>";
  html += `<h4>${esc(t("cases"))} (${cases.length})</h4><div id="parcel-cases">`;
  const write = can("cases:write");
  if (write && findings.some((f) => !inCase.has(f.id))) html += `<button id="open-case" type="button">${esc(t("open_case"))}</button>`;
  if (!write && can("supervision:read")) html += `<p class="no-permission">${esc(t("no_permission"))}</p>`;
  for (const c of cases) {
    html += `<div class="case" data-case="${c.id}" data-status="${esc(c.status)}"><b>#${c.id} ${esc(c.title || "")}</b> · `
      + `<span class="case-status">${esc(t(c.status === "open" ? "case_status_open" : "case_status_closed"))}</span>`
      + (c.disposition ? ` · ${esc(DISPOSITIONS[c.disposition]?.[state.lang] || c.disposition)}` : "")
      + `<table class="events"><tr><th>${esc(t("at"))}</th><th>${esc(t("events"))}</th><th>${esc(t("author"))}</th></tr>`
      + (c.events || []).map((e) => `<tr class="event" data-kind="${esc(e.kind)}"><td>${esc(String(e.at).slice(0, 16).replace("T", " "))}</td>`
        + `<td>${esc(e.kind)} ${esc(e.details?.text || e.details?.reason || e.details?.disposition || "")}`
        + (e.files || []).map((fl) => ` <a href="/supervision/files/${fl.id}" target="_blank" data-file="${fl.id}">${esc(fl.file_name)}</a>`).join("")
        + `</td><td>${esc(e.author)}</td></tr>`).join("") + "</table>";
    if (write && c.status === "open") {
      html += `<form class="inspect-form"><b>${esc(t("inspection"))}</b>`
        + `<label>${esc(t("inspected_on"))} <input name="inspected_on" type="date" value="${esc(isoDate(new Date()))}"></label>`
        + `<textarea name="text" required placeholder="${esc(t("text"))}"></textarea>`
        + `<label>${esc(t("photos"))} <input name="files" type="file" multiple accept="image/*"></label>`
        + `<button type="submit">${esc(t("submit"))}</button></form>`
        + `<form class="close-form"><b>${esc(t("close_case"))}</b><label>${esc(t("disposition"))} <select name="disposition">`
        + Object.entries(DISPOSITIONS).map(([k, v]) => `<option value="${k}">${esc(v[state.lang])}</option>`).join("")
        + `</select></label><input name="reason" placeholder="${esc(t("reason"))}"><input name="fee_cny" type="number" step="0.01" placeholder="${esc(t("fee"))}">`
        + `<button type="submit">${esc(t("submit"))}</button></form>`;
    }
    html += "</div>";
  }
  if (!cases.length) html += `<p>${esc(t("no_cases"))}</p>`;
  html += `<p class="case-error error"></p></div>` + tail;
  if (state.parcel !== pid) return;  // another parcel was clicked meanwhile
  box.innerHTML = html;
  box.dataset.parcel = pid;
  wireCaseActions(pid, findings);
  underground.parcelShown(pid);  // the clicked building's entity record, "地下情况"
}

function wireCaseActions(pid, findings) {
  const box = $("#info-body"), err = box.querySelector(".case-error");
  const fail = (e) => { err.textContent = e.message; };
  box.querySelector("#open-case")?.addEventListener("click", async () => {
    const ids = [...box.querySelectorAll("input.pick:checked")].map((i) => +i.value);
    if (!ids.length) return;
    try {
      await api("/supervision/cases", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ finding_ids: ids, title: `${pid} ${findings.filter((f) => ids.includes(f.id)).map((f) => f.rule).join("/")}` }) });
      await showParcel(pid);
    } catch (e) { fail(e); }
  });
  box.querySelectorAll(".case").forEach((div) => {
    const cid = div.dataset.case;
    div.querySelector(".inspect-form")?.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = new FormData(ev.target);
      const fd = new FormData();
      fd.append("text", form.get("text"));
      if (form.get("inspected_on")) fd.append("inspected_on", form.get("inspected_on"));
      const c = map.getCenter(); fd.append("lon", c.lng.toFixed(7)); fd.append("lat", c.lat.toFixed(7));
      for (const f of ev.target.files.files) fd.append("files", f, f.name);
      try { await api(`/supervision/cases/${cid}/inspections`, { method: "POST", body: fd }); await showParcel(pid); } catch (e) { fail(e); }
    });
    div.querySelector(".close-form")?.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = new FormData(ev.target);
      const body = { disposition: form.get("disposition"), reason: form.get("reason") || null,
        fee_cny: form.get("fee_cny") ? Number(form.get("fee_cny")) : null };
      try {
        await api(`/supervision/cases/${cid}/close`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        await showParcel(pid);
      } catch (e) { fail(e); }
    });
  });
}

map.on("click", (e) => {
  if (state.tool) {
    state.toolPts.push([e.lngLat.lng, e.lngLat.lat]);
    if (drawn || state.drawResult) { drawn = null; state.drawResult = null; }  // a new vertex: the drawing goes on
    refreshSketch();
    toolMessage(toolText());
    return;
  }
  if (sensing.click(e)) return;  // a device: its panel
  if (underground.click(e)) return;  // a pipe, manhole or basement: its panel (a building is remembered)
  const layers = ["parcels-fill", "findings-fill"].filter((id) => map.getLayer(id));
  const hit = layers.length ? map.queryRenderedFeatures(e.point, { layers }) : [];
  const f = hit.find((x) => x.properties.parcel_id);
  if (f) showParcel(f.properties.parcel_id);
});
$("#info-close").addEventListener("click", () => { $("#info").hidden = true; state.parcel = null; selected = null; refreshSketch(); map.resize(); });

// ------------------------------------------------------------------ who am I, language
async function whoami() {
  try { state.who = await api("/whoami"); } catch (e) {
    state.who = null;
    if (state.key) { setStatus(`${t("bad_key")} (${e.message})`, true); }
  }
  renderWho();
}
function renderWho() {
  const w = state.who;
  $("#who").textContent = w && w.via !== "anonymous"
    ? `${w.name} · ${t("role")}: ${w.role} · ${t("may")}: ${(w.may || []).join(", ") || t("none")}` : t("anonymous");
  $("#who").dataset.role = w?.role || "";
  $("#logout-btn").hidden = !state.key; $("#login-btn").hidden = !!state.key; $("#api-key").hidden = !!state.key;
}
function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("#lang").textContent = t("lang");
  renderWho();
  if (state.style) { renderLayerList(); renderLegend(state.style); }
  if (state.parcel) showParcel(state.parcel);
  sensing.applyLang();
  underground.applyLang();
}
async function relogin() {
  await whoami();
  sensing.start();
  await underground.start();
  await loadFindings();
  state.style = null;
  await loadStyle();
}
function initHeader() {
  $("#lang").addEventListener("click", () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem(LANG_STORE, state.lang); applyLang(); });
  $("#login-btn").addEventListener("click", async () => {
    const k = $("#api-key").value.trim();
    if (!k) return;
    state.key = k; localStorage.setItem(KEY_STORE, k); $("#api-key").value = "";
    await relogin();
  });
  $("#api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("#login-btn").click(); });
  $("#logout-btn").addEventListener("click", async () => { state.key = ""; localStorage.removeItem(KEY_STORE); $("#info").hidden = true; await relogin(); });
}

// ------------------------------------------------------------------ start
const params = new URLSearchParams(location.search);
if (params.get("date")) state.date = params.get("date");
if (params.get("lang")) state.lang = params.get("lang") === "en" ? "en" : "zh";
// ?show=group,… / ?hide=group,…: the initial layer choice (a bookmarkable view)
for (const g of (params.get("show") || "").split(",").filter(Boolean)) state.vis[g] = true;
for (const g of (params.get("hide") || "").split(",").filter(Boolean)) state.vis[g] = false;
{
  const c = params.get("center"), z = params.get("zoom");  // ?center=lon,lat&zoom=z: the initial view
  if (c) {
    const [lon, lat] = c.split(",").map(Number);
    if (isFinite(lon) && isFinite(lat)) { map.jumpTo({ center: [lon, lat], zoom: z ? Number(z) : 16 }); state.initialView = true; }
  }
}
initHeader(); initTime(); initSwipe(); initSearch(); initTools(); applyLang();
map.on("load", async () => {
  await whoami();
  sensing.start();
  await underground.start();
  await loadFindings();
  await loadStyle();
  if (params.get("parcel")) showParcel(params.get("parcel"));
});
