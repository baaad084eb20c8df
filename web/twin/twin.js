// The twin viewer (/twin): geotwin's 3D Tiles twin (cim_builder) over geotwin's imagery and DEM
// terrain, in CesiumJS served from /vendor/cesium. Nothing comes from Cesium ion or the internet:
// the base layer is a UrlTemplateImageryProvider over /imagery/collections/ortho/tiles, the terrain
// a CustomHeightmapTerrainProvider decoding geotwin's Terrain-RGB PNG tiles of the DEM on the
// CGCS2000Quad grid (the same geographic quadtree as Cesium's GeographicTilingScheme).
import { WORDS } from "./i18n.js";
import { createTwinSensing } from "./sensing.js";
import { createTwinUnderground, isUndergroundTileset } from "./underground.js";

const C = window.Cesium;
const $ = (id) => document.getElementById(id);
const KEY_STORE = "geotwin.apiKey";
const LANG_STORE = "geotwin.lang";
const TZ = "Asia/Shanghai";
const MAP_PAGE = "/map/";
const DEM_WIDTH = 65; // heightmap samples per tile side (Cesium's usual 65)
const DEM_MIN_LEVEL = 9; // coarser terrain tiles are flat (the district is ~4-24 km wide)

const USE_COLOURS = { residential: "#e8c170", commercial: "#e06666", office: "#cc4125", industrial: "#8e7cc3",
  warehouse: "#9e9e9e", public: "#6fa8dc", dormitory: "#f6b26b" };
const HEIGHT_STOPS = [[100, "#b10026"], [60, "#e31a1c"], [40, "#fc4e2a"], [24, "#fd8d3c"], [12, "#feb24c"], [0, "#ffeda0"]];
const SEVERITY_COLOURS = { critical: "#7f0000", high: "#d7301f", medium: "#fc8d59", low: "#fdcc8a" };
const SEVERITY_RANK = { low: 1, medium: 2, high: 3, critical: 4 };

let sensing = null; // the sensing room (web/twin/sensing.js): sensors, buildings with open alerts
let underground = null; // below ground, section, indoor, clash (web/twin/underground.js)
const state = {
  lang: localStorage.getItem(LANG_STORE) === "en" ? "en" : "zh",
  key: localStorage.getItem(KEY_STORE) || "",
  whoami: null,
  ortho: null, dem: null, tilesets: [],
  date: null, splitDate: null, split: false,
  tilesetA: null, tilesetB: null, tilesetIdA: null, tilesetIdB: null,
  layerA: null, layerB: null,
  colourBy: "none", storey: "", underground: false,
  findings: null, // parcel_id → [finding]
  storeys: new Map(), // storey name → elevation
  tileLoads: 0, picked: null, lastSearch: null,
  measure: { mode: null, points: [], entities: [] },
  geoidSeparation: -2.6,
};

// ------------------------------------------------------------------ words, keys, fetching
const words = () => WORDS[state.lang];
function t(key, vars = {}) {
  const s = words()[key] ?? key;
  return typeof s === "string" ? s.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? "")) : s;
}
function applyWords() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  $("lang").textContent = t("lang");
}
function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}
async function getJSON(url) {
  const r = await fetch(url, { headers: authHeaders() });
  if (!r.ok) {
    let msg = `${r.status}`;
    try { msg = (await r.json()).description || msg; } catch (_) { /* not JSON */ }
    const e = new Error(`${url}: ${msg}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}
const resource = (url) => new C.Resource({ url, headers: authHeaders() });
function status(msg) { $("status").textContent = msg || ""; }
function fail(e) { console.warn(e); status(t("error", { msg: e.message || String(e) })); }
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const localDate = (iso) => new Intl.DateTimeFormat("en-CA", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit" })
  .format(new Date(iso));
const today = () => localDate(new Date().toISOString());

// ------------------------------------------------------------------ who is calling
async function loadWhoami() {
  try {
    state.whoami = await getJSON("/whoami");
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      state.key = "";
      localStorage.removeItem(KEY_STORE);
      state.whoami = await getJSON("/whoami");
      status(t("bad_key"));
    } else throw e;
  }
  renderWho();
}
function renderWho() {
  const w = state.whoami;
  if (!w) return;
  const role = words().roles[w.role] || w.role;
  const mayText = w.may.length ? w.may.map((a) => words().actions[a] || a).join("、") : t("may_none");
  $("who").textContent = w.via === "anonymous" ? `${t("anonymous")} · ${mayText}` : `${w.name} · ${role} · ${t("may")}: ${mayText}`;
  $("who").title = `${t("role")}: ${role}`;
  $("api-key").hidden = $("login-btn").hidden = !!state.key;
  $("logout-btn").hidden = !state.key;
  const sup = $("colour-by").querySelector('option[value="supervision"]');
  sup.disabled = !w.may.includes("supervision:read");
  sup.title = sup.disabled ? t("needs_role", { roles: ["planner", "land-officer", "gis-staff", "admin"].map((r) => words().roles[r]).join(" / ") }) : "";
}

// ------------------------------------------------------------------ terrain from geotwin's DEM
function rectanglesOverlap(a, b) {
  return a.west < b.east && b.west < a.east && a.south < b.north && b.south < a.north;
}
function geotwinTerrain(dem, geoidSeparation) {
  const tiling = new C.GeographicTilingScheme();
  const area = C.Rectangle.fromDegrees(...dem.bbox);
  const zooms = (dem.zooms && dem.zooms.CGCS2000Quad) || [dem.minzoom, dem.maxzoom];
  const maxSource = zooms[1];
  const cache = new Map();
  const W = DEM_WIDTH;

  function grid(z, x, y) {
    const key = `${z}/${x}/${y}`;
    if (cache.has(key)) return cache.get(key);
    const p = (async () => {
      const r = await fetch(`/imagery/collections/${dem.id}/tiles/CGCS2000Quad/${z}/${x}/${y}.png?algorithm=terrainrgb`,
        { headers: authHeaders() });
      if (r.status === 204 || !r.ok) return null; // no DEM there (or not visible to the caller): flat
      const bmp = await createImageBitmap(await r.blob(), { premultiplyAlpha: "none", colorSpaceConversion: "none" });
      const canvas = new OffscreenCanvas(bmp.width, bmp.height);
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(bmp, 0, 0);
      const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
      const h = new Float32Array(bmp.width * bmp.height);
      for (let i = 0; i < h.length; i++) {
        h[i] = px[4 * i + 3] === 0 ? NaN : -10000 + (px[4 * i] * 65536 + px[4 * i + 1] * 256 + px[4 * i + 2]) * 0.1;
      }
      return { w: bmp.width, h: bmp.height, data: h };
    })().catch((e) => { console.warn("terrain tile", key, e); return null; });
    cache.set(key, p);
    if (cache.size > 200) cache.delete(cache.keys().next().value);
    return p;
  }
  function sample(g, u, v) { // bilinear at pixel-centre coordinates (u, v)
    u = Math.min(Math.max(u, 0), g.w - 1); v = Math.min(Math.max(v, 0), g.h - 1);
    const i0 = Math.floor(u), j0 = Math.floor(v), i1 = Math.min(i0 + 1, g.w - 1), j1 = Math.min(j0 + 1, g.h - 1);
    const fu = u - i0, fv = v - j0, d = g.data;
    const a = d[j0 * g.w + i0], b = d[j0 * g.w + i1], c = d[j1 * g.w + i0], e = d[j1 * g.w + i1];
    const v0 = Number.isNaN(a) ? b : Number.isNaN(b) ? a : a + (b - a) * fu;
    const v1 = Number.isNaN(c) ? e : Number.isNaN(e) ? c : c + (e - c) * fu;
    const r = Number.isNaN(v0) ? v1 : Number.isNaN(v1) ? v0 : v0 + (v1 - v0) * fv;
    return Number.isNaN(r) ? 0 : r;
  }
  return new C.CustomHeightmapTerrainProvider({
    width: W, height: W, tilingScheme: tiling, credit: "geotwin DEM",
    callback(x, y, level) {
      const flat = new Float32Array(W * W);
      if (level < DEM_MIN_LEVEL || !rectanglesOverlap(tiling.tileXYToRectangle(x, y, level), area)) return flat;
      // a source tile of the DEM at level ≤ its finest zoom; deeper tiles resample their ancestor
      const d = Math.max(0, level - maxSource), z = level - d, n = 1 << d;
      const px = x >> d, py = y >> d, ox = x - px * n, oy = y - py * n;
      return grid(z, px, py).then((g) => {
        if (!g) return flat;
        const out = new Float32Array(W * W);
        for (let j = 0; j < W; j++) {
          const v = ((oy + j / (W - 1)) / n) * g.h - 0.5;
          for (let i = 0; i < W; i++) {
            const u = ((ox + i / (W - 1)) / n) * g.w - 0.5;
            const h = sample(g, u, v);
            out[j * W + i] = h === 0 ? 0 : h + geoidSeparation; // orthometric → ellipsoidal
          }
        }
        return out;
      });
    },
  });
}

// ------------------------------------------------------------------ imagery as of a date
function epochFor(date) { // the newest ortho acquisition at or before `date` (YYYY-MM-DD)
  if (!state.ortho) return null;
  const days = state.ortho.datetimes.map(localDate).filter((d) => d <= date).sort();
  return days.length ? days[days.length - 1] : null;
}
function imageryLayer(epoch) {
  const o = state.ortho;
  const provider = new C.UrlTemplateImageryProvider({
    url: resource(`/imagery/collections/${o.id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?datetime=${epoch}`),
    tilingScheme: new C.WebMercatorTilingScheme(),
    rectangle: C.Rectangle.fromDegrees(...o.bbox),
    minimumLevel: Math.max(0, o.minzoom - 4),
    maximumLevel: o.maxzoom,
    credit: `geotwin ${o.id} ${epoch}`,
  });
  provider.errorEvent.addEventListener((err) => { err.retry = false; }); // a gap in the mosaic: leave it
  const layer = new C.ImageryLayer(provider);
  layer.epoch = epoch;
  return layer;
}
function setImagery(which, epoch) {
  const viewer = window.twin.viewer;
  const key = which === "A" ? "layerA" : "layerB";
  const old = state[key];
  if (old && old.epoch === epoch) return old;
  if (old) viewer.imageryLayers.remove(old, true);
  state[key] = epoch ? imageryLayer(epoch) : null;
  if (state[key]) viewer.imageryLayers.add(state[key]);
  viewer.scene.requestRender();
  return state[key];
}

// ------------------------------------------------------------------ the twin as of a date
function tilesetDate(ts) { return ts.as_of ? localDate(ts.as_of) : localDate(ts.built_at); }
function tilesetFor(date) {
  const fit = state.tilesets.filter((ts) => tilesetDate(ts) <= date).sort((a, b) => tilesetDate(a).localeCompare(tilesetDate(b)));
  return fit.length ? fit[fit.length - 1] : null;
}
async function loadTileset(ts) {
  const link = ts.links.find((l) => l.rel === "tileset");
  const tileset = await C.Cesium3DTileset.fromUrl(resource(new URL(link.href, location.href).pathname), {
    maximumScreenSpaceError: 8,
  });
  tileset.geotwin = ts;
  tileset.tileLoad.addEventListener(() => { state.tileLoads += 1; });
  tileset.tileVisible.addEventListener((tile) => collectStoreys(tile.content));
  tileset.tileFailed.addEventListener((e) => status(t("error", { msg: `${e.url}: ${e.message}` })));
  window.twin.viewer.scene.primitives.add(tileset);
  return tileset;
}
async function setTileset(which, ts) {
  const viewer = window.twin.viewer;
  const idKey = which === "A" ? "tilesetIdA" : "tilesetIdB";
  const key = which === "A" ? "tilesetA" : "tilesetB";
  const id = ts ? ts.id : null;
  if (state[idKey] === id && (state[key] || !id)) return state[key];
  state[idKey] = id;
  if (state[key]) {
    if (state.picked && state.picked.feature.tileset === state[key]) state.picked = null;
    viewer.scene.primitives.remove(state[key]);
    state[key] = null;
  }
  if (!ts) return null;
  const tileset = await loadTileset(ts);
  if (state[idKey] !== id) { viewer.scene.primitives.remove(tileset); return state[key]; } // superseded meanwhile
  state[key] = tileset;
  applyStyle();
  return tileset;
}
async function applyDate() {
  const first = (list) => list.length ? list.sort()[0] : "—";
  const date = state.date;
  $("time-date").value = date;
  const epochA = epochFor(date);
  const tsA = tilesetFor(date);
  const lines = [];
  setImagery("A", epochA);
  lines.push(epochA ? t("imagery_line", { date: epochA }) : t("no_imagery", { first: first(state.ortho ? state.ortho.datetimes.map(localDate) : []) }));
  if (state.split) {
    const epochB = epochFor(state.splitDate);
    setImagery("B", epochB);
    $("split-left").textContent = t("split_left", { date });
    $("split-right").textContent = t("split_right", { date: state.splitDate });
  } else setImagery("B", null);
  const safe = (p) => p.catch((e) => { fail(e); return null; }); // a broken tileset must not take the page down
  const [a, b] = await Promise.all([
    safe(setTileset("A", tsA)),
    safe(setTileset("B", state.split ? tilesetFor(state.splitDate) : null)),
  ]);
  // split: the left half shows date A, the right half date B (imagery and, if it differs, the twin)
  const S = C.SplitDirection;
  if (state.layerA) state.layerA.splitDirection = state.split ? S.LEFT : S.NONE;
  if (state.layerB) state.layerB.splitDirection = S.RIGHT;
  const sameTwin = state.split && state.tilesetIdA === state.tilesetIdB;
  if (a) a.splitDirection = state.split && !sameTwin ? S.LEFT : S.NONE;
  if (b) { b.splitDirection = S.RIGHT; b.show = !sameTwin; }
  window.twin.viewer.scene.requestRender();
  if (underground) { underground.tilesetsChanged(); underground.dateChanged(); }
  if (tsA) {
    lines.unshift(t("tileset_line", { title: tsA.title, as_of: tilesetDate(tsA), buildings: tsA.buildings ?? "?",
      models: tsA.bim_models ?? 0, tiles: tsA.tiles ?? "?" }));
  } else {
    lines.unshift(t("no_tileset", { first: first(state.tilesets.map(tilesetDate)) }));
  }
  lines.push(t("terrain_line", { n: state.geoidSeparation }));
  $("tileset-info").textContent = lines.join("\n");
  writeHash();
}

// ------------------------------------------------------------------ time slider
let sliderDays = [];
function setupSlider() {
  const known = [...(state.ortho ? state.ortho.datetimes.map(localDate) : []), ...state.tilesets.map(tilesetDate)];
  const start = known.length ? known.sort()[0] : today();
  const end = [today(), ...known].sort().pop();
  sliderDays = [];
  for (let d = new Date(`${start}T00:00:00Z`); ; d.setUTCDate(d.getUTCDate() + 1)) {
    const s = d.toISOString().slice(0, 10);
    sliderDays.push(s);
    if (s >= end || sliderDays.length > 20000) break;
  }
  const slider = $("time-slider");
  slider.min = 0; slider.max = sliderDays.length - 1;
  $("time-date").min = $("split-date").min = start;
  $("time-date").max = $("split-date").max = end;
  slider.value = Math.max(0, sliderDays.indexOf(state.date));
}
function setDate(date) {
  state.date = date;
  const i = sliderDays.indexOf(date);
  if (i >= 0) $("time-slider").value = i;
  return applyDate().catch(fail);
}

// ------------------------------------------------------------------ styles
function useColourStyle() {
  const conditions = Object.entries(USE_COLOURS).map(([use, c]) => [`\${use} === '${use}'`, `color('${c}')`]);
  conditions.push(["true", "color('#d9d9d9')"]);
  return { conditions };
}
function heightColourStyle() {
  const conditions = HEIGHT_STOPS.map(([h, c]) => [`\${height_m} >= ${h}`, `color('${c}')`]);
  conditions.push(["true", "color('#d9d9d9')"]);
  return { conditions };
}
function supervisionColour() {
  const colours = {};
  for (const [s, c] of Object.entries(SEVERITY_COLOURS)) colours[s] = C.Color.fromCssColorString(c);
  const ok = C.Color.fromCssColorString("#66bd63"), none = C.Color.fromCssColorString("#d9d9d9");
  return {
    evaluateColor(feature, result) {
      const pid = feature.getProperty("parcel_id");
      let c = none;
      if (pid) {
        const found = state.findings && state.findings.get(pid);
        c = found ? colours[found.worst] : ok;
      }
      return C.Color.clone(c, result);
    },
  };
}
function applyStyle() {
  const style = new C.Cesium3DTileStyle(
    state.colourBy === "use" ? { color: useColourStyle() }
      : state.colourBy === "height" ? { color: heightColourStyle() } : {});
  if (state.colourBy === "supervision") style.color = supervisionColour();
  const base = style.color;
  const below = C.Color.fromCssColorString("#00bcd4");
  if (state.underground) { // basements (below_ground elements) stand out when the ground is see-through
    style.color = {
      evaluateColor(feature, result) {
        if (feature.getProperty("below_ground") === true) return C.Color.clone(below, result);
        return base ? (base.evaluateColor ? base.evaluateColor(feature, result) : base.evaluate(feature, result))
          : C.Color.clone(C.Color.WHITE, result);
      },
    };
  }
  if (sensing) style.color = sensing.colour(style.color); // buildings with open alerts
  const storey = state.storey;
  style.show = {
    evaluate(feature) {
      if (feature.getProperty("is_space") === true) return false; // IfcSpace volumes would hide the rooms
      if (!storey) return true;
      const s = feature.getProperty("storey");
      return s === undefined || s === null || s === storey; // buildings (no storey) stay
    },
  };
  if (underground) underground.adjustStyle(style); // indoor mode: one storey's rooms, the rest dimmed
  for (const ts of [state.tilesetA, state.tilesetB]) if (ts) ts.style = style;
  state.picked = null;
  if (window.twin && window.twin.viewer) window.twin.viewer.scene.requestRender();
  renderLegend();
}
function renderLegend() {
  const rows = [];
  const row = (colour, label) => rows.push(`<div><i style="background:${colour}"></i>${esc(label)}</div>`);
  if (state.colourBy === "use") {
    for (const [u, c] of Object.entries(USE_COLOURS)) row(c, `${words().use[u] || u} (${u})`);
    row("#d9d9d9", words().use.other);
  } else if (state.colourBy === "height") {
    rows.push(`<div>${esc(t("height_legend"))}</div>`);
    for (const [h, c] of HEIGHT_STOPS) row(c, `≥ ${h}`);
  } else if (state.colourBy === "supervision") {
    for (const [s, c] of Object.entries(SEVERITY_COLOURS)) row(c, words().severity[s]);
    row("#66bd63", t("supervision_legend_ok"));
    row("#d9d9d9", t("supervision_legend_none"));
  }
  if (state.underground) row("#00bcd4", words().props.below_ground);
  $("legend").innerHTML = rows.join("");
}
async function loadFindings() {
  if (state.findings || !state.whoami.may.includes("supervision:read")) return;
  const runs = (await getJSON("/supervision/runs?limit=1")).runs;
  const map = new Map();
  if (runs.length) {
    const doc = await getJSON(`/supervision/runs/${runs[0].id}/findings`);
    for (const f of doc.findings) {
      if (!f.parcel_id) continue;
      const e = map.get(f.parcel_id) || { worst: "low", list: [] };
      e.list.push(f);
      if ((SEVERITY_RANK[f.severity] || 0) > SEVERITY_RANK[e.worst]) e.worst = f.severity;
      map.set(f.parcel_id, e);
    }
  }
  state.findings = map;
}

// ------------------------------------------------------------------ BIM storeys, underground
function collectStoreys(content) {
  if (!content || !content.featuresLength) return;
  let added = false;
  const n = content.featuresLength;
  const first = content.getFeature(0);
  if (first.getProperty("global_id") === undefined && first.getProperty("storey") === undefined) {
    // a building tile: check a BIM tile may still mix classes; look at the last feature too
    const last = content.getFeature(n - 1);
    if (last.getProperty("storey") === undefined) return;
  }
  for (let i = 0; i < n; i++) {
    const f = content.getFeature(i);
    const s = f.getProperty("storey");
    if (s && !state.storeys.has(s)) {
      state.storeys.set(s, f.getProperty("storey_elevation_m") ?? 0);
      added = true;
    }
  }
  if (added) renderStoreys();
}
function renderStoreys() {
  const sel = $("storey");
  const keep = sel.value;
  const items = [...state.storeys.entries()].sort((a, b) => a[1] - b[1]);
  sel.innerHTML = `<option value="">${esc(t("all_storeys"))}</option>` +
    items.map(([s, e]) => `<option value="${esc(s)}">${esc(s)} (${Number(e).toFixed(1)} m)</option>`).join("");
  sel.value = keep;
}
function setUnderground(on) {
  const viewer = window.twin.viewer;
  state.underground = on;
  const globe = viewer.scene.globe;
  globe.translucency.enabled = on;
  globe.translucency.frontFaceAlphaByDistance = on ? new C.NearFarScalar(200.0, 0.25, 5000.0, 0.9) : undefined;
  globe.translucency.backFaceAlpha = on ? 0.2 : 1.0;
  viewer.scene.screenSpaceCameraController.enableCollisionDetection = !on; // the camera may go below ground
  viewer.scene.requestRender();
  applyStyle();
  if (underground) underground.setOn(on); // the underground tileset: pipes, manholes, structures
}

// ------------------------------------------------------------------ picking: metadata
const BUILDING_PROPS = ["building_id", "parcel_id", "use", "floors", "height_m", "base_height_m", "source"];
const BIM_PROPS = ["ifc_class", "name", "storey", "storey_elevation_m", "global_id", "material", "below_ground", "model_id"];
// a far-view block (cim_builder/blocks.py): the buildings of a street block merged into one prism
const BLOCK_PROPS = ["block_id", "building_count", "mean_height_m", "max_height_m", "landmark_id"];
function featureProperties(feature) {
  const isBim = feature.getPropertyInherited("global_id") !== undefined;
  const isBlock = !isBim && feature.getPropertyInherited("block_id") !== undefined;
  const names = isBim ? BIM_PROPS : isBlock ? BLOCK_PROPS : BUILDING_PROPS;
  const props = {};
  for (const name of names) {
    const v = feature.getPropertyInherited(name);
    if (v !== undefined && v !== null && v !== "") props[name] = v;
  }
  return { kind: isBim ? "bim_element" : isBlock ? "block" : "building", props };
}
function formatValue(name, v) {
  if (typeof v === "boolean") return v ? t("yes") : t("no");
  if (name === "use") return `${words().use[v] || v} (${v})`;
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(1);
  return String(v);
}
function showFeature(feature) {
  const { kind, props } = featureProperties(feature);
  renderInfo(kind, props);
}
function renderInfo(kind, props) { // from the values read at the click: the tile may be gone since
  if (underground && underground.renderInfo(kind, props)) { underground.decorateInfo(kind, props); return; }
  const labels = words().props;
  const title = kind === "bim_element" ? `${t("bim_element")} ${props.ifc_class || ""}`
    : kind === "block" ? (props.landmark_id ? `${t("landmark")} ${props.landmark_id}` : t("block"))
      : `${t("building")} ${props.building_id || ""}`;
  let html = `<h3>${esc(title)}</h3>` + (kind === "block" ? `<p class="hint">${esc(t("block_hint"))}</p>` : "") + "<table>" +
    Object.entries(props).map(([k, v]) => `<tr><th>${esc(labels[k] || k)}</th><td data-prop="${esc(k)}">${esc(formatValue(k, v))}</td></tr>`).join("") +
    "</table>";
  if (props.parcel_id) {
    // the map client opens a parcel from ?parcel= (its attributes, findings, case) at ?date=
    const mapUrl = `${MAP_PAGE}?${new URLSearchParams({ parcel: props.parcel_id, date: state.date })}`;
    html += `<p><a id="parcel-link" href="${esc(mapUrl)}" target="_blank">` +
      `${esc(t("open_in_map", { id: props.parcel_id }))}</a></p>`;
    if (state.findings) {
      const found = state.findings.get(props.parcel_id);
      html += `<h3>${esc(t("findings"))}</h3>` + (found
        ? found.list.map((f) => `<div class="finding"><b>${esc(f.rule)}</b> ${esc(f.rule_title || "")} · ${esc(words().severity[f.severity] || f.severity)}<br>${esc(f.message || "")}</div>`).join("")
        : `<p>${esc(t("no_findings"))}</p>`);
    }
  }
  $("info-body").innerHTML = html;
  const opening = $("info").hidden;
  $("info").hidden = false;
  if (opening) relayout();
  window.twin.lastPicked = { kind, props };
  if (underground) underground.decorateInfo(kind, props); // the entity record link
}
function highlight(feature) {
  if (state.picked) {
    try { state.picked.feature.color = state.picked.colour; } catch (_) { /* tile unloaded */ }
  }
  state.picked = null;
  if (feature) {
    state.picked = { feature, colour: C.Color.clone(feature.color) };
    feature.color = C.Color.YELLOW;
  }
  window.twin.viewer.scene.requestRender();
}

function relayout() { // the info panel changes the canvas size: redraw at the new size at once
  setTimeout(() => { window.twin.viewer.resize(); window.twin.viewer.scene.requestRender(); }, 0);
}

// ------------------------------------------------------------------ measuring
function clearMeasure() {
  const viewer = window.twin.viewer;
  for (const e of state.measure.entities) viewer.entities.remove(e);
  state.measure = { mode: null, points: [], entities: [] };
  $("measure-result").textContent = "";
  for (const id of ["measure-distance", "measure-height"]) $(id).classList.remove("on");
}
function startMeasure(mode) {
  clearMeasure();
  state.measure.mode = mode;
  $(mode === "distance" ? "measure-distance" : "measure-height").classList.add("on");
  $("measure-result").textContent = t(mode === "distance" ? "measure_hint_distance" : "measure_hint_height");
}
function pickPosition(windowPos) {
  const scene = window.twin.viewer.scene;
  let p = scene.pickPositionSupported ? scene.pickPosition(windowPos) : undefined;
  if (!C.defined(p)) p = scene.camera.pickEllipsoid(windowPos, scene.globe.ellipsoid);
  return p;
}
function measureClick(windowPos) {
  const viewer = window.twin.viewer;
  const p = pickPosition(windowPos);
  if (!C.defined(p)) { $("measure-result").textContent = t("no_position"); return; }
  const m = state.measure;
  m.points.push(p);
  m.entities.push(viewer.entities.add({ position: p, point: { pixelSize: 8, color: C.Color.ORANGE, disableDepthTestDistance: Number.POSITIVE_INFINITY } }));
  if (m.points.length < 2) return;
  const [a, b] = m.points;
  const ca = C.Cartographic.fromCartesian(a), cb = C.Cartographic.fromCartesian(b);
  const dz = cb.height - ca.height;
  const horizontal = new C.EllipsoidGeodesic(ca, cb).surfaceDistance;
  const result = measureResult(m.mode, a, b, horizontal, dz);
  const line = (positions) => viewer.entities.add({ polyline: { positions, width: 3, material: C.Color.ORANGE,
    depthFailMaterial: new C.PolylineDashMaterialProperty({ color: C.Color.ORANGE }) } });
  if (m.mode === "distance") {
    m.entities.push(line([a, b]));
  } else { // vertical leg from the lower point up to the upper one's height, then across
    const low = dz >= 0 ? ca : cb, high = dz >= 0 ? cb : ca;
    const corner = C.Cartesian3.fromRadians(low.longitude, low.latitude, high.height);
    m.entities.push(line([C.Cartographic.toCartesian(low), corner]), line([corner, C.Cartographic.toCartesian(high)]));
  }
  const mid = C.Cartesian3.midpoint(a, b, new C.Cartesian3());
  m.entities.push(viewer.entities.add({ position: mid, label: { text: result.label, font: "14px sans-serif",
    fillColor: C.Color.WHITE, outlineColor: C.Color.BLACK, outlineWidth: 3, style: C.LabelStyle.FILL_AND_OUTLINE,
    disableDepthTestDistance: Number.POSITIVE_INFINITY, pixelOffset: new C.Cartesian2(0, -14) } }));
  $("measure-result").textContent = result.text;
  window.twin.lastMeasure = result.values;
  m.points = [];
  m.mode = m.mode; // stay in the tool: the next two clicks measure again
}
function measureResult(mode, a, b, horizontal, dz) {
  const d = C.Cartesian3.distance(a, b);
  const values = { mode, distance_m: d, horizontal_m: horizontal, height_m: Math.abs(dz) };
  if (mode === "distance") {
    return { values, label: `${d.toFixed(1)} m`, text: t("distance_result", { d: d.toFixed(2), h: horizontal.toFixed(2), z: dz.toFixed(2) }) };
  }
  return { values, label: `↕ ${Math.abs(dz).toFixed(1)} m`, text: t("height_result", { z: Math.abs(dz).toFixed(2) }) };
}

// ------------------------------------------------------------------ place search
let searchTimer = null, searchSeq = 0, searchResults = [];
function setupSearch() {
  const input = $("search"), list = $("search-list");
  input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => suggest(input.value.trim()), 200);
  });
  input.addEventListener("keydown", async (ev) => {
    if (ev.key !== "Enter") return;
    const q = input.value.trim();
    if (!q) return;
    try {
      const doc = await getJSON(`/geocode/search?q=${encodeURIComponent(q)}&limit=8`);
      if (doc.features.length) flyToPlace(doc.features[0]);
      else status(t("search_none"));
    } catch (e) { fail(e); }
    list.hidden = true;
  });
  list.addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-i]");
    if (!li) return;
    flyToPlace(searchResults[Number(li.dataset.i)]);
    list.hidden = true;
  });
}
async function suggest(q) {
  const list = $("search-list");
  if (!q) { list.hidden = true; return; }
  const seq = ++searchSeq;
  try {
    const doc = await getJSON(`/geocode/autocomplete?q=${encodeURIComponent(q)}&limit=8`);
    if (seq !== searchSeq) return;
    searchResults = doc.features;
    list.innerHTML = searchResults.length
      ? searchResults.map((f, i) => `<li data-i="${i}">${esc(f.properties.name)}<small>${esc([f.properties.street, f.properties.kind].filter(Boolean).join(" · "))}</small></li>`).join("")
      : `<li>${esc(t("search_none"))}</li>`;
    list.hidden = false;
  } catch (e) { fail(e); }
}
function flyToPlace(feature) {
  const viewer = window.twin.viewer;
  const [lon, lat] = feature.geometry.coordinates;
  const carto = C.Cartographic.fromDegrees(lon, lat);
  const ground = viewer.scene.globe.getHeight(carto) ?? 0;
  const target = C.Cartesian3.fromDegrees(lon, lat, ground);
  $("search").value = feature.properties.name;
  state.lastSearch = { lon, lat, name: feature.properties.name, arrived: false };
  if (state.searchMarker) viewer.entities.remove(state.searchMarker);
  state.searchMarker = viewer.entities.add({ position: target, point: { pixelSize: 10, color: C.Color.RED,
    outlineColor: C.Color.WHITE, outlineWidth: 2, disableDepthTestDistance: Number.POSITIVE_INFINITY },
  label: { text: feature.properties.name, font: "14px sans-serif", fillColor: C.Color.WHITE, outlineColor: C.Color.BLACK,
    outlineWidth: 3, style: C.LabelStyle.FILL_AND_OUTLINE, pixelOffset: new C.Cartesian2(0, -18),
    disableDepthTestDistance: Number.POSITIVE_INFINITY } });
  viewer.camera.flyToBoundingSphere(new C.BoundingSphere(target, 80), {
    offset: new C.HeadingPitchRange(0, C.Math.toRadians(-50), 900), duration: 1.5,
    complete: () => { state.lastSearch.arrived = true; },
  });
}

// ------------------------------------------------------------------ split handle
function setupSplit() {
  const handle = $("split-handle"), wrap = $("view-wrap");
  let dragging = false;
  handle.addEventListener("pointerdown", (e) => { dragging = true; handle.setPointerCapture(e.pointerId); });
  handle.addEventListener("pointerup", () => { dragging = false; });
  handle.addEventListener("pointermove", (e) => {
    if (!dragging) return;
    const r = wrap.getBoundingClientRect();
    const f = Math.min(0.95, Math.max(0.05, (e.clientX - r.left) / r.width));
    handle.style.left = `${f * 100}%`;
    window.twin.viewer.scene.splitPosition = f;
    window.twin.viewer.scene.requestRender();
  });
  const toggle = () => {
    state.split = $("split-on").checked;
    state.splitDate = $("split-date").value || state.date;
    handle.hidden = $("split-labels").hidden = !state.split;
    window.twin.viewer.scene.splitPosition = 0.5;
    handle.style.left = "50%";
    applyDate().catch(fail);
  };
  $("split-on").addEventListener("change", toggle);
  $("split-date").addEventListener("change", () => { if (state.split) toggle(); });
}

// ------------------------------------------------------------------ hash (date) and views
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const d = h.get("date");
  return { date: d && /^\d{4}-\d{2}-\d{2}$/.test(d) ? d : null };
}
function writeHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  h.set("date", state.date);
  history.replaceState(null, "", `#${h.toString()}`);
}
function setView({ lon, lat, height, heading = 0, pitch = -45, roll = 0 }) {
  window.twin.viewer.scene.requestRender();
  window.twin.viewer.camera.setView({
    destination: C.Cartesian3.fromDegrees(lon, lat, height),
    orientation: { heading: C.Math.toRadians(heading), pitch: C.Math.toRadians(pitch), roll: C.Math.toRadians(roll) },
  });
}
function whenIdle(frames = 10, timeoutMs = 90000) {
  // resolves once the globe's and the twin's tiles have all loaded for `frames` frames in a row
  const scene = window.twin.viewer.scene;
  return new Promise((resolve, reject) => {
    let calm = 0;
    const started = performance.now();
    const off = scene.postRender.addEventListener(() => {
      const ok = scene.globe.tilesLoaded && [state.tilesetA, state.tilesetB].every((ts) => !ts || !ts.show || ts.tilesLoaded);
      calm = ok ? calm + 1 : 0;
      if (calm >= frames) { off(); resolve({ tileLoads: state.tileLoads, ms: performance.now() - started }); }
      else if (performance.now() - started > timeoutMs) { off(); reject(new Error("tiles still loading")); }
      scene.requestRender();
    });
  });
}
function windowPosition(lon, lat, height) { // for tests and tools: where a point lands on the canvas
  const scene = window.twin.viewer.scene;
  const p = C.SceneTransforms.worldToWindowCoordinates(scene, C.Cartesian3.fromDegrees(lon, lat, height));
  return p ? { x: p.x, y: p.y } : null;
}
function viewCentre() { // lon/lat of the point at the centre of the canvas
  const scene = window.twin.viewer.scene, canvas = scene.canvas;
  const p = pickPosition(new C.Cartesian2(canvas.clientWidth / 2, canvas.clientHeight / 2));
  if (!C.defined(p)) return null;
  const c = C.Cartographic.fromCartesian(p);
  return { lon: C.Math.toDegrees(c.longitude), lat: C.Math.toDegrees(c.latitude), height: c.height };
}
function groundHeight(lon, lat) {
  return window.twin.viewer.scene.globe.getHeight(C.Cartographic.fromDegrees(lon, lat));
}

// ------------------------------------------------------------------ start
async function main() {
  applyWords();
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_STORE, state.lang);
    applyWords(); renderWho(); renderLegend(); renderStoreys();
    if (sensing) sensing.applyLang();
    if (underground) underground.applyLang();
    applyDate().catch(fail);
    if (window.twin.lastPicked && !$("info").hidden) renderInfo(window.twin.lastPicked.kind, window.twin.lastPicked.props);
  });
  $("login-btn").addEventListener("click", async () => {
    const key = $("api-key").value.trim();
    if (!key) return;
    state.key = key;
    localStorage.setItem(KEY_STORE, key);
    location.reload(); // every provider and tileset is re-created with the new header
  });
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("login-btn").click(); });
  $("logout-btn").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    location.reload();
  });
  $("info-close").addEventListener("click", () => { $("info").hidden = true; highlight(null); relayout(); });

  status(t("loading"));
  await loadWhoami();
  const [imagery, tilesets] = await Promise.all([getJSON("/imagery/collections"), getJSON("/twin/tilesets")]);
  state.ortho = imagery.collections.find((c) => c.kind === "ortho" || c.id === "ortho") || null;
  state.dem = imagery.collections.find((c) => c.kind === "dem") || null;
  state.tilesets = tilesets.tilesets.filter((ts) => !isUndergroundTileset(ts)); // the buildings twin only
  const sep = state.tilesets.find((ts) => typeof ts.geoid_separation_m === "number");
  if (sep) state.geoidSeparation = sep.geoid_separation_m;

  const viewer = new C.Viewer("cesium", {
    baseLayer: false, // no Bing / ion imagery: geotwin's ortho layers are added below
    terrainProvider: state.dem ? geotwinTerrain(state.dem, state.geoidSeparation) : new C.EllipsoidTerrainProvider(),
    geocoder: false, baseLayerPicker: false, homeButton: false, sceneModePicker: false, navigationHelpButton: false,
    animation: false, timeline: false, infoBox: false, selectionIndicator: false, fullscreenButton: false,
    creditContainer: $("credits"), msaaSamples: 1,
    requestRenderMode: true, maximumRenderTimeChange: Infinity, // render on change only: idle pages cost no CPU
  });
  if (new URLSearchParams(location.search).has("lite")) { // low-end PCs (and software WebGL): fewer pixels and tiles
    viewer.resolutionScale = 0.6;
    viewer.scene.globe.maximumScreenSpaceError = 4;
  }
  // anything not driven by Cesium itself (styles, layers, translucency) asks for a frame
  const rerender = () => viewer.scene.requestRender();
  for (const id of ["colour-by", "storey", "underground", "split-on", "split-date", "time-date", "time-slider",
    "section-on", "section-offset", "section-heading", "indoor-on", "indoor-storey"]) {
    $(id).addEventListener("change", () => setTimeout(rerender, 0));
  }
  viewer.scene.globe.baseColor = C.Color.fromCssColorString("#3b4a3f");
  // a fixed midday sun (10:30 local, midsummer): the twin is lit the same at any hour of the day
  viewer.clock.currentTime = C.JulianDate.fromIso8601("2026-06-21T02:30:00Z");
  viewer.clock.shouldAnimate = false;
  viewer.scene.globe.depthTestAgainstTerrain = true;
  viewer.scene.skyAtmosphere.show = true;
  viewer.scene.renderError.addEventListener((_, e) => fail(e));
  window.twin = { viewer, state, setView, whenIdle, windowPosition, viewCentre, groundHeight, setDate,
    startMeasure, clearMeasure, lastPicked: null, lastMeasure: null };

  // where: the union of the twin's and the imagery's extents
  const bbox = (state.ortho || state.dem || { bbox: [114.2, 22.68, 114.3, 22.76] }).bbox;
  const cx = (bbox[0] + bbox[2]) / 2, cy = (bbox[1] + bbox[3]) / 2;
  setView({ lon: cx, lat: cy - (bbox[3] - bbox[1]) * 0.9, height: 2500, heading: 0, pitch: -35 });

  state.date = readHash().date || today();
  setupSlider();
  $("time-slider").addEventListener("input", () => {
    state.date = sliderDays[Number($("time-slider").value)];
    $("time-date").value = state.date;
  });
  $("time-slider").addEventListener("change", () => setDate(sliderDays[Number($("time-slider").value)]));
  $("time-date").addEventListener("change", () => { if ($("time-date").value) setDate($("time-date").value); });
  $("split-date").value = (state.ortho && state.ortho.datetimes.length) ? localDate(state.ortho.datetimes[0]) : state.date;
  setupSplit();
  setupSearch();

  $("colour-by").addEventListener("change", async () => {
    state.colourBy = $("colour-by").value;
    try { if (state.colourBy === "supervision") await loadFindings(); } catch (e) { fail(e); }
    applyStyle();
  });
  $("storey").addEventListener("change", () => { state.storey = $("storey").value; applyStyle(); });
  $("underground").addEventListener("change", () => setUnderground($("underground").checked));
  $("measure-distance").addEventListener("click", () => startMeasure("distance"));
  $("measure-height").addEventListener("click", () => startMeasure("height"));
  $("measure-clear").addEventListener("click", clearMeasure);

  const handler = new C.ScreenSpaceEventHandler(viewer.scene.canvas);
  handler.setInputAction((click) => {
    if (state.measure.mode) { measureClick(click.position); return; }
    if (underground && underground.click(click.position)) return; // drawing a clash outline
    const picked = viewer.scene.pick(click.position);
    if (sensing && sensing.pick(picked)) { highlight(null); return; } // a sensor: its panel
    if (underground && underground.pick(picked, click.position)) { // a pipe, manhole, structure or room
      highlight(picked);
      window.twin.lastPickedFeature = picked;
      return;
    }
    if (picked instanceof C.Cesium3DTileFeature) {
      highlight(picked);
      window.twin.lastPickedFeature = picked; // (tests; may belong to a tileset removed since)
      showFeature(picked);
    } else {
      highlight(null);
      if (!$("info").hidden) { $("info").hidden = true; relayout(); }
    }
  }, C.ScreenSpaceEventType.LEFT_CLICK);

  sensing = createTwinSensing({ C, state, getJSON, esc, restyle: applyStyle, relayout });
  window.twin.sensing = sensing;
  sensing.start().catch(fail);
  underground = createTwinUnderground({ C, state, getJSON, authHeaders, esc, relayout, restyle: applyStyle, fail });
  underground.setTilesets(tilesets.tilesets);
  window.twin.underground = underground;
  await applyDate();
  if (state.whoami.may.includes("supervision:read")) loadFindings().catch(fail);
  if ($("status").textContent === t("loading")) status("");
  window.twin.ready = true;
}

main().catch((e) => { fail(e); window.twin = Object.assign(window.twin || {}, { failed: String(e) }); });
