// The twin viewer below ground and indoors (issue 17): the underground 3D Tiles tileset (pipes,
// manholes, basements from `geotwin cim build-underground`, the /twin/tilesets entry whose
// params.kind is "underground") coloured by pipe type with a type filter; a vertical section plane
// cutting the terrain, the buildings / BIM tileset and the underground tileset together; the
// indoor mode (a BIM model's rooms storey by storey); the pipe clash check (POST /twin/clash)
// with its results highlighted in the underground tileset; the "实体档案" link of a picked
// building, BIM element or pipe (/entities/by-feature/{layer}/{fid} → /entities/{code}).
//
// twin.js creates it (createTwinUnderground) once the viewer exists and calls: setTilesets(list)
// with every /twin/tilesets entry, setOn(on) from the underground checkbox, dateChanged() after a
// date change, adjustStyle(style) on the buildings tileset's style before it is set,
// click(position) before its own picking (the clash outline drawing takes clicks),
// pick(picked, position) for every pick (true: handled here), renderInfo(kind, props) at the start
// of its own (true: rendered here) and decorateInfo(kind, props) after it (the entity button),
// tilesetsChanged() when its buildings tilesets change (the section and the indoor style follow).
import { WORDS, PIPE_TYPES, STRUCTURE_COLOUR } from "./i18n.js";

const NAME_TO_CODE = Object.fromEntries(Object.entries(PIPE_TYPES).map(([code, v]) => [v.zh, code]));
const CUT_COLOUR = "#ff1744";
const CLOSE_COLOUR = "#ff9100";
const ROOM_COLOUR = "#4fc3f7";
const DIM_ALPHA = 0.25; // what is not the point of a mode (other pipes in a clash view, buildings indoors)
const SECTION_HALF = 800; // the drawn section line's half length (m)

export const isUndergroundTileset = (ts) => !!ts && (ts.kind === "underground" || (ts.params && ts.params.kind === "underground"));

export function createTwinUnderground({ C, state, getJSON, authHeaders, esc, relayout, restyle, fail }) {
  const $ = (id) => document.getElementById(id);
  const w = () => WORDS[state.lang];
  const t = (k, vars = {}) => String(w()[k] ?? k).replace(/\{(\w+)\}/g, (_, x) => (vars[x] ?? ""));
  const viewer = () => window.twin.viewer;
  const u = {
    tilesets: [], entry: null, tileset: null, on: false, loads: 0, error: null,
    types: Object.fromEntries(Object.keys(PIPE_TYPES).map((c) => [c, true])), manholes: true, structures: true,
    section: { on: false, lon: null, lat: null, height: 0, heading: 90, offset: 0, flip: false, line: null },
    indoor: { on: false, model: "", storey: "", storeys: [], models: [] },
    clash: { running: false, result: null, error: null, cuts: new Set(), close: new Set(), drawing: false,
      points: [], entities: [], requests: 0 },
    lastPosition: null, entity: null,
  };

  // ---------------------------------------------------------------- helpers
  const num = (v, d = 2) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(d) : "—");
  const typeName = (code, fallback) => (PIPE_TYPES[code] ? PIPE_TYPES[code][state.lang] : fallback || code || "—");
  function prop(f, name) { const v = f.getProperty(name); return v === null || v === "" ? undefined : v; }
  const KINDS = { pipe_segment: "pipe", manhole: "manhole", underground_structure: "structure" };
  function kindOf(f) { // the tiles' one table says `kind` (cim_builder/pipes.py); else by the properties present
    const kind = prop(f, "kind");
    if (kind !== undefined) return KINDS[kind] ?? null;
    if (prop(f, "basement_id") !== undefined) return "structure";
    if (prop(f, "start_axis_z") !== undefined) return "pipe";
    if (prop(f, "bottom_z") !== undefined) return "manhole";
    return null;
  }
  function typeCode(f) {
    const code = prop(f, "type_code");
    if (code && PIPE_TYPES[code]) return code;
    const byName = NAME_TO_CODE[prop(f, "type")];
    if (byName) return byName;
    const head = String(prop(f, "id") ?? "").split("-")[0];
    return PIPE_TYPES[head] ? head : null;
  }
  function tilesetDate(ts) {
    const iso = ts.as_of || ts.built_at;
    return new Intl.DateTimeFormat("en-CA", { timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit" })
      .format(new Date(iso));
  }
  function frameAt(lon, lat, height) { return C.Transforms.eastNorthUpToFixedFrame(C.Cartesian3.fromDegrees(lon, lat, height)); }
  function forEachFeature(tileset, fn) { // every feature of the tiles loaded now
    if (!tileset || !tileset.root) return;
    const stack = [tileset.root];
    while (stack.length) {
      const tile = stack.pop();
      stack.push(...(tile.children || []));
      const content = tile.contentReady ? tile.content : null;
      // a tile with several contents (3D Tiles 1.1 `contents`, e.g. one per metadata class) has inner ones
      for (const c of content ? (content.innerContents || [content]) : []) {
        const n = c.featuresLength || 0;
        for (let i = 0; i < n; i++) fn(c.getFeature(i), c);
      }
    }
  }
  function lonLatAt(position) { // the scene's depth there, else the terrain under the ray
    const scene = viewer().scene;
    let p = scene.pickPositionSupported ? scene.pickPosition(position) : undefined;
    if (!C.defined(p)) p = scene.globe.pick(scene.camera.getPickRay(position), scene);
    if (!C.defined(p)) p = scene.camera.pickEllipsoid(position, scene.globe.ellipsoid);
    if (!C.defined(p)) return null;
    const c = C.Cartographic.fromCartesian(p);
    return { lon: C.Math.toDegrees(c.longitude), lat: C.Math.toDegrees(c.latitude), height: c.height };
  }

  // ---------------------------------------------------------------- the underground tileset
  function chooseEntry() {
    const list = u.tilesets.filter(isUndergroundTileset);
    const fit = list.filter((ts) => tilesetDate(ts) <= state.date).sort((a, b) => tilesetDate(a).localeCompare(tilesetDate(b)));
    return fit.length ? fit[fit.length - 1] : null;
  }
  async function showTileset() {
    const entry = u.on ? chooseEntry() : null;
    if (u.tileset && (!entry || u.entry !== entry)) {
      viewer().scene.primitives.remove(u.tileset);
      u.tileset = null;
    }
    u.entry = entry;
    if (entry && !u.tileset) {
      const link = entry.links.find((l) => l.rel === "tileset");
      const ts = await C.Cesium3DTileset.fromUrl(new C.Resource({ url: new URL(link.href, location.href).pathname, headers: authHeaders() }),
        { maximumScreenSpaceError: 4 });
      if (u.entry !== entry || !u.on) return; // superseded while loading
      ts.tileLoad.addEventListener(() => { u.loads += 1; });
      ts.tileFailed.addEventListener((e) => { u.error = `${e.url}: ${e.message}`; });
      viewer().scene.primitives.add(ts);
      u.tileset = ts;
      applyStyle();
      applySection();
    }
    renderPanel();
    viewer().scene.requestRender();
  }
  function applyStyle() {
    const ts = u.tileset;
    if (!ts) return;
    const colours = Object.fromEntries(Object.entries(PIPE_TYPES).map(([c, v]) => [c, C.Color.fromCssColorString(v.colour)]));
    const other = C.Color.fromCssColorString("#607d8b");
    const structure = C.Color.fromCssColorString(STRUCTURE_COLOUR).withAlpha(0.55);
    const cut = C.Color.fromCssColorString(CUT_COLOUR), close = C.Color.fromCssColorString(CLOSE_COLOUR);
    const clash = u.clash.result ? u.clash : null;
    const style = new C.Cesium3DTileStyle({});
    style.color = {
      evaluateColor(f, result) {
        const kind = kindOf(f);
        if (kind === "structure") return C.Color.clone(structure, result);
        const base = colours[typeCode(f)] || other;
        if (clash && kind === "pipe") {
          const id = String(prop(f, "id"));
          if (clash.cuts.has(id)) return C.Color.clone(cut, result);
          if (clash.close.has(id)) return C.Color.clone(close, result);
          return C.Color.clone(base, result).withAlpha(DIM_ALPHA, result);
        }
        return C.Color.clone(base, result);
      },
    };
    style.show = {
      evaluate(f) {
        const kind = kindOf(f);
        if (kind === "structure") return u.structures;
        if (kind === "manhole" && !u.manholes) return false;
        const code = typeCode(f);
        return !code || u.types[code] !== false;
      },
    };
    ts.style = style;
    viewer().scene.requestRender();
  }

  // ---------------------------------------------------------------- the panel
  function renderPanel() {
    const box = $("underground-info");
    if (!box) return;
    box.hidden = !u.on;
    if (!u.on) return;
    const entry = u.entry;
    const head = entry ? t("ug_loaded", { title: entry.title || entry.id, as_of: tilesetDate(entry) }) : t("ug_none");
    const types = Object.entries(PIPE_TYPES).map(([code, v]) => `<label class="ug-type"><input type="checkbox" data-type="${code}" ${u.types[code] ? "checked" : ""}>`
      + `<i style="background:${v.colour}"></i>${esc(v[state.lang])} <small>${code}</small></label>`).join("");
    box.innerHTML = `<div id="ug-head">${esc(head)}</div><fieldset id="ug-types"><legend>${esc(t("ug_types"))}</legend>${types}`
      + `<label class="ug-type"><input type="checkbox" id="ug-manholes" ${u.manholes ? "checked" : ""}><i class="shaft"></i>${esc(t("ug_manholes"))}</label>`
      + `<label class="ug-type"><input type="checkbox" id="ug-structures" ${u.structures ? "checked" : ""}><i style="background:${STRUCTURE_COLOUR};opacity:.6"></i>${esc(t("ug_structures"))}</label></fieldset>`;
    box.querySelectorAll("input[data-type]").forEach((cb) => cb.addEventListener("change", () => { u.types[cb.dataset.type] = cb.checked; applyStyle(); }));
    box.querySelector("#ug-manholes").addEventListener("change", (e) => { u.manholes = e.target.checked; applyStyle(); });
    box.querySelector("#ug-structures").addEventListener("change", (e) => { u.structures = e.target.checked; applyStyle(); });
  }

  // ---------------------------------------------------------------- section plane
  function sectionPlanes() {
    const s = u.section, h = C.Math.toRadians(s.heading), sign = s.flip ? -1 : 1;
    // a vertical plane through the section point moved `offset` metres along the heading (measured
    // clockwise from north); what lies ahead of it stays (flipped: what lies behind), the rest is cut away
    const normal = new C.Cartesian3(sign * Math.sin(h), sign * Math.cos(h), 0.0);
    return [new C.ClippingPlane(normal, -sign * s.offset)];
  }
  function collection(modelMatrix) {
    return new C.ClippingPlaneCollection({ planes: sectionPlanes(), modelMatrix, edgeWidth: 2.0,
      edgeColor: C.Color.fromCssColorString("#ffeb3b"), unionClippingRegions: false });
  }
  // each object keeps one collection, updated in place and disabled when the section is off
  // (replacing a collection under a drawn model can leave a draw command on a destroyed texture)
  function clip(holder, modelMatrix) {
    const cp = holder.clippingPlanes;
    if (!modelMatrix) { if (cp) cp.enabled = false; return; }
    if (!cp) { holder.clippingPlanes = collection(modelMatrix); return; }
    const [plane] = sectionPlanes();
    cp.enabled = true;
    cp.modelMatrix = modelMatrix;
    cp.get(0).normal = plane.normal;
    cp.get(0).distance = plane.distance;
  }
  function clipTileset(ts, frame) {
    if (!ts) return;
    // a tileset's planes are in its clipping origin frame (its root transform, or the ENU frame at
    // its centre): bring the section's ENU frame into it
    clip(ts, frame && C.Matrix4.multiply(C.Matrix4.inverse(ts.clippingPlanesOriginMatrix, new C.Matrix4()), frame, new C.Matrix4()));
  }
  function applySection() {
    const s = u.section, v = viewer();
    const frame = s.on && s.lon !== null ? frameAt(s.lon, s.lat, s.height) : null;
    clip(v.scene.globe, frame); // the terrain: planes in world (ECEF) coordinates
    for (const ts of [state.tilesetA, state.tilesetB, u.tileset]) clipTileset(ts, frame);
    if (s.line) { v.entities.remove(s.line); s.line = null; }
    if (frame) { // the plane's trace on the ground
      const h = C.Math.toRadians(s.heading);
      const n = [Math.sin(h), Math.cos(h)], along = [n[1], -n[0]]; // the offset runs along the heading, flipped or not
      const at = (k) => C.Matrix4.multiplyByPoint(frame, new C.Cartesian3(n[0] * s.offset + along[0] * k, n[1] * s.offset + along[1] * k, 1.0), new C.Cartesian3());
      s.line = v.entities.add({ polyline: { positions: [at(-SECTION_HALF), at(SECTION_HALF)], width: 3,
        material: C.Color.fromCssColorString("#ffeb3b"), depthFailMaterial: C.Color.fromCssColorString("#ffeb3b").withAlpha(0.5) } });
      $("section-centre").textContent = t("section_centre", { lon: s.lon.toFixed(5), lat: s.lat.toFixed(5) });
    } else if ($("section-centre")) $("section-centre").textContent = "";
    v.scene.requestRender();
  }
  function centreSection() {
    const canvas = viewer().scene.canvas;
    const c = lonLatAt(new C.Cartesian2(canvas.clientWidth / 2, canvas.clientHeight / 2));
    if (!c) return false;
    Object.assign(u.section, { lon: c.lon, lat: c.lat, height: c.height, offset: 0 });
    $("section-offset").value = 0;
    $("section-offset-value").textContent = "0";
    return true;
  }
  function setSection(opts) { // for the UI and the tests: {on, lon, lat, height, heading, offset, flip}
    Object.assign(u.section, opts);
    if (u.section.on && u.section.lon === null && !centreSection()) u.section.on = false;
    $("section-on").checked = u.section.on;
    $("section-heading").value = u.section.heading;
    $("section-offset").value = u.section.offset;
    $("section-offset-value").textContent = String(Math.round(u.section.offset));
    $("section-controls").hidden = !u.section.on;
    applySection();
  }
  function setupSection() {
    $("section-on").addEventListener("change", (e) => setSection({ on: e.target.checked }));
    $("section-offset").addEventListener("input", (e) => setSection({ offset: Number(e.target.value) }));
    $("section-heading").addEventListener("input", (e) => {
      const h = Number(e.target.value);
      if (Number.isFinite(h)) setSection({ heading: ((h % 360) + 360) % 360 });
    });
    $("section-flip").addEventListener("click", () => setSection({ flip: !u.section.flip }));
    $("section-here").addEventListener("click", () => { centreSection(); applySection(); });
  }

  // ---------------------------------------------------------------- indoor mode
  function bimModels() { // the BIM models in the loaded buildings tiles: id → {storeys: name → elevation}
    const out = new Map();
    for (const ts of [state.tilesetA, state.tilesetB]) {
      forEachFeature(ts, (f) => {
        const m = f.getProperty("model_id");
        if (m === undefined || m === null) return;
        const e = out.get(m) || { storeys: new Map() };
        const s = f.getProperty("storey");
        if (s && !e.storeys.has(s)) e.storeys.set(s, f.getProperty("storey_elevation_m") ?? 0);
        out.set(m, e);
      });
    }
    return out;
  }
  function renderModels() {
    const sel = $("indoor-model");
    const found = bimModels();
    const ids = [...new Set([...u.indoor.models, ...found.keys(), ...(u.indoor.model ? [u.indoor.model] : [])])].sort();
    u.indoor.models = ids;
    sel.innerHTML = `<option value="">${esc(t("indoor_pick_model"))}</option>` + ids.map((id) => `<option value="${esc(id)}">${esc(id)}</option>`).join("");
    sel.value = u.indoor.model;
  }
  async function loadStoreys(model) {
    let storeys;
    try { // the model's storeys from the IFC (/twin/models/{id}/storeys): index, elevation, rooms
      const doc = await getJSON(`/twin/models/${encodeURIComponent(model)}/storeys`);
      storeys = (Array.isArray(doc) ? doc : doc.storeys || []).map((s, i) => ({
        name: s.name ?? s.storey, index: s.index ?? s.storey_index ?? i, elevation: s.elevation ?? s.elevation_m ?? s.storey_elevation,
        below: s.below_ground === true, rooms: s.rooms ?? s.spaces ?? s.space_count ?? null,
      }));
    } catch (e) { // not served (or not visible): the storeys the model's loaded tiles carry
      const found = bimModels().get(model);
      storeys = found ? [...found.storeys.entries()].sort((a, b) => a[1] - b[1]).map(([name, elevation], index) => ({ name, index, elevation, below: elevation < 0, rooms: null })) : [];
    }
    return storeys.sort((a, b) => (a.elevation ?? a.index) - (b.elevation ?? b.index));
  }
  function renderStoreys() {
    const sel = $("indoor-storey");
    sel.innerHTML = u.indoor.storeys.map((s) => `<option value="${esc(s.name)}">${esc(s.name)}`
      + `${typeof s.elevation === "number" ? ` (${s.elevation.toFixed(1)} m)` : ""}${s.below ? ` ${esc(t("indoor_below"))}` : ""}</option>`).join("");
    sel.value = u.indoor.storey;
  }
  function countRooms() {
    let n = 0;
    const { model, storey } = u.indoor;
    forEachFeature(state.tilesetA, (f) => {
      if (f.getProperty("is_space") === true && f.getProperty("model_id") === model && f.getProperty("storey") === storey) n += 1;
    });
    return n;
  }
  async function setIndoor(opts) { // for the UI and the tests: {on, model, storey}
    const ind = u.indoor;
    if ("on" in opts) ind.on = opts.on;
    if (opts.model !== undefined && opts.model !== ind.model) {
      ind.model = opts.model;
      ind.storeys = ind.model ? await loadStoreys(ind.model) : [];
      if (opts.storey === undefined) {
        const ground = ind.storeys.find((s) => !s.below && (s.elevation ?? 0) >= 0) || ind.storeys[0];
        ind.storey = ground ? ground.name : "";
      }
    }
    if (opts.storey !== undefined) ind.storey = opts.storey;
    $("indoor-on").checked = ind.on;
    $("indoor-controls").hidden = !ind.on;
    if (ind.on) { renderModels(); renderStoreys(); }
    restyle(); // the buildings tileset's style (adjustStyle below) follows
    $("indoor-count").textContent = ind.on && ind.model && ind.storey ? t("indoor_rooms", { n: countRooms() }) : "";
  }
  function indoorActive() { return u.indoor.on && u.indoor.model && u.indoor.storey; }
  function adjustStyle(style) { // wraps the buildings tileset's style: the chosen storey's rooms, the rest dimmed
    if (!indoorActive()) return style;
    const { model, storey } = u.indoor;
    const baseShow = style.show, baseColour = style.color;
    const room = C.Color.fromCssColorString(ROOM_COLOUR).withAlpha(0.85);
    style.show = {
      evaluate(f) {
        if (f.getProperty("model_id") === model) return f.getProperty("is_space") === true && f.getProperty("storey") === storey;
        return baseShow ? baseShow.evaluate(f) : true;
      },
    };
    style.color = {
      evaluateColor(f, result) {
        if (f.getProperty("model_id") === model) return C.Color.clone(room, result);
        const c = baseColour ? (baseColour.evaluateColor ? baseColour.evaluateColor(f, result) : baseColour.evaluate(f, result))
          : C.Color.clone(C.Color.WHITE, result);
        return C.Color.clone(c, result).withAlpha(DIM_ALPHA, result);
      },
    };
    return style;
  }
  function setupIndoor() {
    $("indoor-on").addEventListener("change", (e) => setIndoor({ on: e.target.checked }).catch(fail));
    $("indoor-model").addEventListener("focus", renderModels);
    $("indoor-model").addEventListener("change", (e) => setIndoor({ model: e.target.value }).catch(fail));
    $("indoor-storey").addEventListener("change", (e) => setIndoor({ storey: e.target.value }).catch(fail));
    $("indoor-exit").addEventListener("click", () => setIndoor({ on: false }).catch(fail));
  }

  // ---------------------------------------------------------------- clash check
  function clearDrawing() {
    for (const e of u.clash.entities) viewer().entities.remove(e);
    u.clash.entities = [];
  }
  function drawOutline() {
    clearDrawing();
    const pts = u.clash.points;
    const v = viewer();
    for (const [lon, lat] of pts) {
      u.clash.entities.push(v.entities.add({ position: C.Cartesian3.fromDegrees(lon, lat), point: { pixelSize: 7, color: C.Color.fromCssColorString(CUT_COLOUR),
        heightReference: C.HeightReference.CLAMP_TO_GROUND, disableDepthTestDistance: Number.POSITIVE_INFINITY } }));
    }
    if (pts.length >= 2) {
      const ring = pts.length >= 3 && !u.clash.drawing ? [...pts, pts[0]] : pts;
      u.clash.entities.push(v.entities.add({ polyline: { positions: ring.map(([lon, lat]) => C.Cartesian3.fromDegrees(lon, lat)),
        clampToGround: true, width: 3, material: C.Color.fromCssColorString(CUT_COLOUR) } }));
    }
    $("clash-points").textContent = pts.length ? t("clash_points", { n: pts.length }) : "";
    v.scene.requestRender();
  }
  function click(position) { // the clash outline takes the scene's clicks while it is drawn
    if (!u.clash.drawing) return false;
    const c = lonLatAt(position);
    if (c) { u.clash.points.push([c.lon, c.lat]); drawOutline(); }
    return true;
  }
  function startDrawing() {
    u.clash.drawing = true;
    u.clash.points = [];
    $("clash-draw").classList.add("on");
    $("clash-msg").textContent = t("clash_draw_hint");
    drawOutline();
  }
  function finishDrawing() {
    u.clash.drawing = false;
    $("clash-draw").classList.remove("on");
    $("clash-msg").textContent = "";
    drawOutline();
  }
  function clashRequest() {
    const model = $("clash-model").value;
    if (model) return { model };
    const pts = u.clash.points;
    const depth = Number($("clash-depth").value);
    if (pts.length < 3 || !(depth > 0)) return null;
    const body = { footprint: { type: "Polygon", coordinates: [[...pts, pts[0]]] }, depth_m: depth };
    const g = $("clash-ground").value.trim();
    if (g !== "") body.ground_z = Number(g);
    return body;
  }
  async function runClash(body = clashRequest()) {
    const c = u.clash;
    if (!body) { $("clash-msg").textContent = t("clash_need_input"); return null; }
    if (c.drawing) finishDrawing();
    c.running = true; c.error = null; c.requests += 1;
    $("clash-msg").textContent = t("clash_running");
    try {
      const r = await fetch("/twin/clash", { method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() } });
      const doc = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(doc.description || doc.detail || `${r.status}`);
      setClashResult(doc);
      $("clash-msg").textContent = "";
      return doc;
    } catch (e) {
      c.error = e.message;
      $("clash-msg").textContent = t("error", { msg: e.message });
      return null;
    } finally { c.running = false; }
  }
  const tooClose = (p) => !p.cuts && (p.too_close === true || (typeof p.required_m === "number" && p.clearance_m < p.required_m));
  function setClashResult(doc) {
    const c = u.clash;
    c.result = doc;
    c.cuts = new Set(doc ? doc.pipes.filter((p) => p.cuts).map((p) => String(p.id)) : []);
    c.close = new Set(doc ? doc.pipes.filter(tooClose).map((p) => String(p.id)) : []);
    renderClash();
    applyStyle();
  }
  function renderClash() {
    const box = $("clash-result"), doc = u.clash.result;
    if (!doc) { box.innerHTML = ""; return; }
    const pipes = [...doc.pipes].sort((a, b) => a.clearance_m - b.clearance_m);
    const state_ = (p) => (p.cuts ? "cut" : tooClose(p) ? "close" : "ok");
    const label = { cut: t("clash_cuts"), close: t("clash_close"), ok: t("clash_ok") };
    const links = (doc.links || []).filter((l) => l.rel === "report" || l.rel === "alternate");
    box.innerHTML = `<div id="clash-summary">${esc(t("clash_summary", { cuts: u.clash.cuts.size, close: u.clash.close.size, n: pipes.length }))}</div>`
      + `<table id="clash-pipes"><tr><th>${esc(t("ug_id"))}</th><th>${esc(t("ug_type"))}</th><th>${esc(t("clash_clearance"))}</th><th>${esc(t("clash_required"))}</th><th></th></tr>`
      + pipes.map((p) => `<tr class="clash-${state_(p)}" data-id="${esc(p.id)}"><td>${esc(p.id)}</td><td>${esc(typeName(p.type_code, p.type))}</td>`
        + `<td class="num">${esc(num(p.clearance_m, 3))}</td><td class="num">${esc(num(p.required_m, 2))}</td><td>${esc(label[state_(p)])}</td></tr>`).join("")
      + "</table>"
      + (doc.structures && doc.structures.length ? `<div>${esc(t("clash_structures", { n: doc.structures.length }))}</div>` : "")
      + `<p class="links">${links.map((l) => `<a href="${esc(l.href)}" target="_blank" rel="noopener" data-type="${esc(l.type || "")}">`
        + `${esc(/xlsx|spreadsheet/.test(`${l.type} ${l.href}`) ? t("clash_report_xlsx") : t("clash_report_html"))}</a>`).join(" · ")}</p>`;
  }
  async function renderClashModels() {
    const sel = $("clash-model"), keep = sel.value;
    const ids = [...new Set([...u.indoor.models, ...bimModels().keys()])].sort();
    sel.innerHTML = `<option value="">—</option>` + ids.map((id) => `<option value="${esc(id)}">${esc(id)}</option>`).join("");
    sel.value = ids.includes(keep) ? keep : "";
  }
  function setupClash() {
    $("clash-model").addEventListener("focus", renderClashModels);
    $("clash-draw").addEventListener("click", () => (u.clash.drawing ? finishDrawing() : startDrawing()));
    $("clash-finish").addEventListener("click", finishDrawing);
    $("clash-run").addEventListener("click", () => runClash());
    $("clash-clear").addEventListener("click", () => {
      u.clash.points = []; u.clash.drawing = false; $("clash-draw").classList.remove("on");
      clearDrawing(); setClashResult(null); $("clash-msg").textContent = ""; $("clash-points").textContent = "";
    });
  }

  // ---------------------------------------------------------------- picking and the info panel
  function pick(picked, position) {
    u.lastPosition = position ? lonLatAt(position) : null;
    if (!(picked instanceof C.Cesium3DTileFeature)) return false;
    if (u.tileset && picked.tileset === u.tileset) {
      const kind = kindOf(picked);
      if (!kind) return false;
      const props = {};
      for (const name of picked.getPropertyIds()) {
        const v = picked.getProperty(name);
        if (v !== undefined && v !== null && v !== "") props[name] = v;
      }
      props.type_code = props.type_code || typeCode(picked);
      showInfo(kind, props);
      return true;
    }
    if (picked.getProperty("is_space") === true && indoorActive()) {
      const props = {};
      for (const name of picked.getPropertyIds()) {
        const v = picked.getProperty(name);
        if (v !== undefined && v !== null && v !== "") props[name] = v;
      }
      showInfo("room", props);
      return true;
    }
    if (u.indoor.on && picked.getProperty("model_id") !== undefined && picked.getProperty("model_id") !== u.indoor.model) {
      setIndoor({ model: picked.getProperty("model_id") }).catch(fail); // indoor: a click on a BIM building chooses it
    }
    return false;
  }
  function showInfo(kind, props) {
    renderInfo(kind, props);
    const info = $("info");
    if (info.hidden) { info.hidden = false; relayout(); }
    window.twin.lastPicked = { kind, props };
    decorateInfo(kind, props);
  }
  function row(label, value, name) {
    return `<tr><th>${esc(label)}</th><td${name ? ` data-prop="${esc(name)}"` : ""}>${esc(value)}</td></tr>`;
  }
  function pipeRows(p, extra) {
    const code = p.type_code;
    const ref = PIPE_TYPES[code] ? PIPE_TYPES[code].ref : "top";
    const hMm = p.height_mm || p.diameter_mm || 0, half = hMm / 2000;
    const size = p.diameter_mm && !(p.width_mm && p.height_mm && p.width_mm !== p.height_mm) ? `DN${p.diameter_mm}`
      : p.width_mm && p.height_mm ? `${p.width_mm}×${p.height_mm} mm` : "—";
    const ends = (a, b, d = 2) => `${num(a, d)} → ${num(b, d)}`;
    let html = row(t("ug_id"), p.id, "id") + row(t("ug_type"), `${typeName(code, p.type)} (${code || "—"})`, "type")
      + row(t("ug_size"), size, "size") + row(t("ug_material"), p.material || "—", "material")
      + row(t("ug_axis"), ends(p.start_axis_z, p.end_axis_z), "axis_z");
    const top = [p.start_axis_z + half, p.end_axis_z + half], inv = [p.start_axis_z - half, p.end_axis_z - half];
    html += ref === "invert" ? row(t("ug_invert"), ends(inv[0], inv[1]), "invert_z") + row(t("ug_top"), ends(top[0], top[1]), "top_z")
      : row(t("ug_top"), ends(top[0], top[1]), "top_z") + row(t("ug_invert"), ends(inv[0], inv[1]), "invert_z");
    if (extra) { // the stored feature (OGC API Features): depths, ground, length, owner
      html += row(`${t("ug_depth")} ${t(ref === "invert" ? "ug_depth_ref_invert" : "ug_depth_ref_top")}`, ends(extra.start_depth, extra.end_depth), "depth")
        + row(t("ug_ground"), ends(extra.start_ground_z, extra.end_ground_z), "ground_z")
        + row(t("ug_length"), num(extra.length_m, 2), "length_m")
        + row(t("ug_start_end"), `${extra.start_id ?? "—"} → ${extra.end_id ?? "—"}`, "ends")
        + (extra.owner ? row(t("ug_owner"), extra.owner, "owner") : "") + (extra.built ? row(t("ug_built"), extra.built, "built") : "");
    }
    return html;
  }
  const LAYER = { pipe: ["pipe_segments", "id"], manhole: ["pipe_points", "id"], structure: ["basements", "basement_id"] };
  function renderInfo(kind, props) {
    if (!["pipe", "manhole", "structure", "room"].includes(kind)) return false;
    let html;
    if (kind === "pipe") {
      html = `<h3>${esc(t("ug_pipe"))} ${esc(props.id || "")}</h3><table id="ug-feature" data-kind="pipe">${pipeRows(props, props._stored)}</table>`;
    } else if (kind === "manhole") {
      const depth = typeof props.ground_z === "number" && typeof props.bottom_z === "number" ? props.ground_z - props.bottom_z : undefined;
      html = `<h3>${esc(t("ug_manhole"))} ${esc(props.id || "")}</h3><table id="ug-feature" data-kind="manhole">`
        + row(t("ug_id"), props.id, "id") + row(t("ug_type"), typeName(props.type_code, props.type), "type")
        + row(t("ug_ground"), num(props.ground_z), "ground_z") + row(t("ug_bottom"), num(props.bottom_z), "bottom_z")
        + row(t("ug_well_depth"), num(depth), "well_depth") + "</table>";
    } else if (kind === "structure") {
      html = `<h3>${esc(t("ug_structure"))} ${esc(props.basement_id || "")}</h3><table id="ug-feature" data-kind="structure">`
        + row(t("ug_id"), props.basement_id, "basement_id") + row(t("ug_building"), props.building_id || "—", "building_id")
        + row(t("ug_use"), props.use || "—", "use") + row(t("ug_levels"), props.levels ?? "—", "levels")
        + row(t("ug_struct_depth"), num(props.depth_m, 1), "depth_m") + "</table>";
    } else {
      const area = props.area_m2 ?? props.net_floor_area ?? props.area;
      html = `<h3>${esc(t("indoor_room"))} ${esc(props.name || "")}</h3><table id="ug-feature" data-kind="room">`
        + row(w().props.name, props.name || "—", "name") + (props.long_name ? row(t("indoor_long_name"), props.long_name, "long_name") : "")
        + row(w().props.storey, props.storey || "—", "storey") + row(t("indoor_area"), num(area, 2), "area_m2")
        + (props.height_m !== undefined ? row(t("indoor_height"), num(props.height_m, 2), "height_m") : "")
        + row(t("indoor_use"), props.use || props.object_type || "—", "use")
        + row(w().props.global_id, props.global_id || props.space_id || "—", "global_id") + row(w().props.model_id, props.model_id || "—", "model_id")
        + "</table>";
    }
    $("info-body").innerHTML = html;
    if (kind === "pipe" && !props._stored && props.id) { // depths, ground and length from the stored feature
      const id = props.id;
      getJSON(`/collections/pipe_segments/items/${encodeURIComponent(id)}?datetime=${encodeURIComponent(state.date)}`)
        .then((doc) => {
          if (!window.twin.lastPicked || window.twin.lastPicked.props !== props) return;
          props._stored = doc.properties || {};
          renderInfo(kind, props);
          decorateInfo(kind, props);
        }).catch(() => { /* not readable for this caller: the tile's metadata stays */ });
    }
    return true;
  }
  async function entityCode(url) {
    const r = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() } }); // the 307 is followed
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    const doc = await r.json();
    if (doc.type === "FeatureCollection") return doc.features.length ? (doc.features[0].properties?.code || doc.features[0].id) : null;
    return doc.code || doc.properties?.code || doc.id || null;
  }
  function decorateInfo(kind, props) { // the entity record button under the picked feature
    let url = null;
    if (kind === "building" && props.building_id) url = `/entities/by-feature/buildings/${encodeURIComponent(props.building_id)}`;
    else if (LAYER[kind] && props[LAYER[kind][1]]) url = `/entities/by-feature/${LAYER[kind][0]}/${encodeURIComponent(props[LAYER[kind][1]])}`;
    else if (kind === "bim_element" && u.lastPosition) { // a BIM element: the building entity where it stands
      const { lon, lat } = u.lastPosition, d = 0.00005;
      url = `/entities?bbox=${[lon - d, lat - d, lon + d, lat + d].map((x) => x.toFixed(6)).join(",")}&type=building&limit=1`;
    }
    if (!url) return;
    url += `${url.includes("?") ? "&" : "?"}datetime=${encodeURIComponent(state.date)}`;
    const p = document.createElement("p");
    p.id = "entity-box";
    p.innerHTML = `<button id="entity-link" type="button">${esc(t("entity_page"))}</button> <code id="entity-code"></code>`;
    $("info-body").appendChild(p);
    // looked up when asked (a feature without an entity is a 404 the console would show for every pick);
    // the tab is opened at the click (a popup blocker lets it), then sent to the entity page
    p.querySelector("button").addEventListener("click", async () => {
      const tab = window.open("about:blank", "_blank");
      u.entity = { url, code: undefined };
      let code = null;
      try { code = await entityCode(url); } catch (e) { u.entity.error = e.message; }
      u.entity.code = code;
      if (p.isConnected) $("entity-code").textContent = code || t("entity_none");
      if (!tab) return;
      if (!code) { tab.close(); return; }
      tab.opener = null;
      tab.location.href = `/entities/${encodeURIComponent(code)}?f=html&datetime=${encodeURIComponent(state.date)}`;
    });
  }

  // ---------------------------------------------------------------- life cycle
  function setOn(on) {
    u.on = on;
    return showTileset().catch((e) => { u.error = e.message; fail(e); });
  }
  function setTilesets(list) { u.tilesets = list; }
  function dateChanged() { if (u.on) showTileset().catch(fail); }
  function tilesetsChanged() { applySection(); }
  function applyLang() {
    renderPanel();
    if (u.indoor.on) renderStoreys();
    renderClash();
  }
  setupSection();
  setupIndoor();
  setupClash();
  return { state: u, setOn, setTilesets, dateChanged, tilesetsChanged, adjustStyle, click, pick, renderInfo, decorateInfo,
    setSection, setIndoor, runClash, startDrawing, finishDrawing, applyLang, kindOf, typeCode, forEachFeature };
}
