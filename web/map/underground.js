// The underground in the map client (/map, issue 17): the pipe network's layer groups of the
// district style ("pipes": pipe_segments coloured by type and the manholes of pipe_points;
// "basements", hatched here), off by default, in the layer list's theme 地下空间 with a legend; a click on a pipe, manhole or basement shows it with its entity record link
// (/entities/by-feature/{layer}/{fid} → /entities/{code}); the parcel panel gets "地下情况"
// (/underground/under?layer=parcels&fid=…: totals by type and the list, also as a page) and,
// when a building was clicked, the building's entity record link.
//
// app.js creates it (createUnderground) and calls: start() after each login (which of the layers
// the caller may read: the legend), decorate(style) when it builds the map style (the layers that
// draw each pipe layer), groups(style) for the layer list, click(e) before its own click handling, parcelShown(pid) once the parcel panel is
// drawn, applyLang() on a language switch. State for the tests: window.geotwin.underground.state.
import { STRINGS, PIPE_TYPES } from "./i18n.js";

const LAYERS = ["pipe_segments", "pipe_points", "basements"];
const OTHER_COLOUR = "#607d8b";
const BASEMENT_COLOUR = "#616161";
const HATCH = "ug-hatch-basement";
const BUILDING_LAYERS = ["buildings-fill", "buildings_3d-extrusion"];

export function createUnderground({ map, app, api, esc, setStatus }) {
  const $ = (sel) => document.querySelector(sel);
  const t = (k) => (STRINGS[app.lang] || STRINGS.zh)[k] ?? STRINGS.zh[k] ?? k;
  const tf = (k, vars) => t(k).replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  const s = { layers: [], layerIds: { pipe_segments: [], pipe_points: [], basements: [] }, building: null, under: null, underError: null, picked: null, entity: null, loads: 0 };
  const typeName = (code, fallback) => PIPE_TYPES[code]?.[app.lang] || fallback || code || "—";
  const num = (v, d = 2) => (typeof v === "number" && Number.isFinite(v) ? v.toLocaleString(app.lang === "zh" ? "zh-CN" : "en", { maximumFractionDigits: d }) : v ?? "—");

  // ---------------------------------------------------------------- which layers, the style
  async function start() {
    s.layers = [];
    try {
      const doc = await api("/collections");
      const ids = new Set((doc.collections || []).map((c) => c.id));
      s.layers = LAYERS.filter((l) => ids.has(l));
    } catch (e) { setStatus(e.message, true); }
    s.loads += 1;
    renderLegend();
  }
  // the district style carries the pipe layers (style groups "pipes" and "basements", off by
  // default, only when the caller may read them): which of its layers draw which store layer
  function decorate(style) {
    const ids = { pipe_segments: [], pipe_points: [], basements: [] };
    for (const l of style.layers) {
      if (!(l["source-layer"] in ids) || l.type === "symbol") continue;
      ids[l["source-layer"]].push(l.id);
      if (l["source-layer"] === "basements" && l.type === "fill") l.paint = { ...l.paint, "fill-pattern": HATCH, "fill-opacity": 0.8 }; // hatched
    }
    s.layerIds = ids;
  }
  function groups(style) { // the layer-list groups of the underground
    return [...new Set(style.layers.filter((l) => LAYERS.includes(l["source-layer"]) && l.metadata?.["geotwin:group"])
      .map((l) => l.metadata["geotwin:group"]))];
  }
  // the basements' hatch, drawn here (the style's sprite has none): asked for when a tile needs it
  map.on("styleimagemissing", (e) => {
    if (e.id !== HATCH || map.hasImage(HATCH)) return;
    const n = 12, c = document.createElement("canvas");
    c.width = c.height = n;
    const g = c.getContext("2d");
    g.fillStyle = "rgba(158,158,158,0.25)"; g.fillRect(0, 0, n, n);
    g.strokeStyle = BASEMENT_COLOUR; g.lineWidth = 1.2;
    g.beginPath(); g.moveTo(0, n); g.lineTo(n, 0); g.moveTo(-n / 2, n / 2); g.lineTo(n / 2, -n / 2); g.moveTo(n / 2, 3 * n / 2); g.lineTo(3 * n / 2, n / 2); g.stroke();
    map.addImage(HATCH, g.getImageData(0, 0, n, n));
  });
  function renderLegend() {
    const box = $("#underground");
    if (!box) return;
    box.hidden = !s.layers.length;
    $("#underground-legend").innerHTML = Object.entries(PIPE_TYPES).map(([code, v]) =>
      `<div class="ug-row" data-type="${code}"><i style="background:${v.colour}"></i>${esc(v[app.lang])} <small>${code}</small></div>`).join("")
      + `<div class="ug-row"><i class="dot"></i>${esc(t("ug_manhole"))}</div>`
      + `<div class="ug-row"><i class="hatch"></i>${esc(t("ug_basement"))}</div>`;
  }

  // ---------------------------------------------------------------- clicks: a pipe, manhole, basement; a building
  function layersHere() {
    return LAYERS.flatMap((l) => s.layerIds[l]).filter((id) => map.getLayer(id) && map.getLayoutProperty(id, "visibility") !== "none");
  }
  function click(e) {
    s.building = null;
    const bl = BUILDING_LAYERS.filter((id) => map.getLayer(id) && map.getLayoutProperty(id, "visibility") !== "none");
    const b = bl.length ? map.queryRenderedFeatures(e.point, { layers: bl }).find((f) => f.properties.building_id || f.id) : null;
    if (b) s.building = { id: String(b.properties.building_id ?? b.id), props: b.properties };
    const box = [[e.point.x - 4, e.point.y - 4], [e.point.x + 4, e.point.y + 4]];
    const layers = layersHere();
    const hit = layers.length ? map.queryRenderedFeatures(box, { layers }) : [];
    const order = ["pipe_points", "pipe_segments", "basements"]; // a manhole over its pipes, a pipe over a basement
    hit.sort((a, c) => order.indexOf(a.sourceLayer) - order.indexOf(c.sourceLayer));
    if (hit.length) { showFeature(hit[0]); return true; }
    if (s.building) { // a building outside every parcel: its own panel (inside one, the parcel panel carries it)
      const pl = ["parcels-fill", "findings-fill"].filter((id) => map.getLayer(id));
      if (!(pl.length && map.queryRenderedFeatures(e.point, { layers: pl }).some((x) => x.properties.parcel_id))) {
        showBuilding(s.building);
        return true;
      }
    }
    return false;
  }
  function showBuilding(b) {
    const body = $("#info-body"), p = b.props;
    app.parcel = null;
    s.picked = { layer: "buildings", fid: b.id, props: p };
    delete body.dataset.parcel;
    body.innerHTML = `<h3>${esc(t("ug_building_clicked"))} <span id="ug-id">${esc(b.id)}</span></h3><table id="ug-feature" data-layer="buildings">`
      + Object.entries(p).filter(([k]) => k !== "building_id").map(([k, v]) => row(k, v, k)).join("") + "</table>";
    $("#info").hidden = false;
    map.resize();
    entityBox(body, "buildings", b.id);
  }
  function row(label, value, name) { return `<tr><th>${esc(label)}</th><td${name ? ` data-prop="${esc(name)}"` : ""}>${esc(value ?? "—")}</td></tr>`; }
  function size(p) {
    if (p.width_mm && p.height_mm && p.width_mm !== p.height_mm) return `${p.width_mm}×${p.height_mm} mm`;
    return p.diameter_mm ? `DN${p.diameter_mm}` : "—";
  }
  function showFeature(f) {
    const p = f.properties, layer = f.sourceLayer;
    const info = $("#info"), body = $("#info-body");
    let html, fid;
    if (layer === "pipe_segments") {
      fid = p.id ?? f.id;
      const ref = PIPE_TYPES[p.type_code]?.ref === "invert" ? t("ug_invert") : t("ug_top");
      html = `<h3>${esc(t("ug_pipe"))} <span id="ug-id">${esc(fid)}</span></h3><table id="ug-feature" data-layer="pipe_segments">`
        + row(t("ug_type"), `${typeName(p.type_code, p.type)} (${p.type_code || "—"})`, "type") + row(t("ug_size"), size(p), "size")
        + row(t("ug_material"), p.material, "material") + row(`${t("ug_depth")} (${ref})`, `${num(p.start_depth)} → ${num(p.end_depth)}`, "depth")
        + row(t("ug_length"), num(p.length_m), "length_m") + row(t("ug_ends"), `${p.start_id ?? "—"} → ${p.end_id ?? "—"}`, "ends")
        + (p.owner ? row(t("ug_owner"), p.owner, "owner") : "") + "</table>";
    } else if (layer === "pipe_points") {
      fid = p.id ?? f.id;
      html = `<h3>${esc(t("ug_manhole"))} <span id="ug-id">${esc(fid)}</span></h3><table id="ug-feature" data-layer="pipe_points">`
        + row(t("ug_type"), typeName(p.type_code, p.type), "type") + row(t("ug_appurtenance"), p.appurtenance, "appurtenance")
        + row(t("ug_ground"), num(p.ground_z), "ground_z") + row(t("ug_depth"), num(p.depth), "depth")
        + row(t("ug_bottom"), num(p.bottom_z), "bottom_z") + "</table>";
    } else {
      fid = p.basement_id ?? f.id;
      html = `<h3>${esc(t("ug_basement"))} <span id="ug-id">${esc(fid)}</span></h3><table id="ug-feature" data-layer="basements">`
        + row(t("ug_use"), p.use, "use") + row(t("ug_levels"), p.levels, "levels") + row(t("ug_struct_depth"), num(p.depth_m, 1), "depth_m")
        + row(t("ug_building"), p.building_id, "building_id") + "</table>";
    }
    s.picked = { layer, fid: String(fid), props: p };
    app.parcel = null;
    body.innerHTML = html;
    delete body.dataset.parcel;
    info.hidden = false;
    map.resize();
    entityBox(body, layer, String(fid));
  }
  async function entityCode(layer, fid) {
    const r = await fetch(`/entities/by-feature/${encodeURIComponent(layer)}/${encodeURIComponent(fid)}?datetime=${encodeURIComponent(app.date)}`,
      { headers: { Accept: "application/json", ...(app.key ? { Authorization: `Bearer ${app.key}` } : {}) } }); // the 307 is followed
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(`${r.status}`);
    const doc = await r.json();
    return doc.code || doc.properties?.code || doc.id || null;
  }
  function entityBox(body, layer, fid) { // "实体档案": the feature's entity page in a new tab
    const p = document.createElement("p");
    p.className = "entity-box";
    p.dataset.layer = layer;
    p.innerHTML = `<button class="entity-link" type="button">${esc(t("entity_page"))}</button> <code class="entity-code"></code>`;
    body.appendChild(p);
    // looked up when asked (a feature without an entity is a 404 the console would show for every click);
    // the tab is opened at the click (a popup blocker lets it), then sent to the entity page
    p.querySelector("button").addEventListener("click", async () => {
      const tab = window.open("about:blank", "_blank");
      s.entity = { layer, fid, code: undefined };
      let code = null;
      try { code = await entityCode(layer, fid); } catch (e) { s.entity.error = e.message; }
      s.entity.code = code;
      p.querySelector(".entity-code").textContent = code || t("entity_none");
      if (!tab) return;
      if (!code) { tab.close(); return; }
      tab.opener = null;
      tab.location.href = `/entities/${encodeURIComponent(code)}?f=html&datetime=${encodeURIComponent(app.date)}`;
    });
  }

  // ---------------------------------------------------------------- the parcel panel: the building, "地下情况"
  function parcelShown(pid) {
    const body = $("#info-body");
    if (!body || body.dataset.parcel !== pid) return;
    const box = document.createElement("div");
    box.id = "parcel-underground";
    if (s.building) {
      const h = document.createElement("h4");
      h.textContent = `${t("ug_building_clicked")} ${s.building.id}`;
      box.appendChild(h);
      entityBox(box, "buildings", s.building.id);
    }
    const btn = document.createElement("button");
    btn.type = "button"; btn.id = "under-btn"; btn.textContent = t("ug_under");
    const out = document.createElement("div");
    out.id = "under-result";
    btn.addEventListener("click", () => under(pid, out));
    box.append(btn, out);
    const h3 = body.querySelector("h3");
    if (h3 && h3.nextSibling) body.insertBefore(box, h3.nextSibling); else body.appendChild(box);
  }
  function underUrl(pid, f) {
    return `/underground/under?${new URLSearchParams({ layer: "parcels", fid: pid, datetime: app.date, ...(f ? { f } : {}) })}`;
  }
  async function under(pid, out) {
    s.under = null; s.underError = null;
    out.innerHTML = `<p>${esc(t("loading"))}</p>`;
    let doc;
    try { doc = await api(underUrl(pid)); } catch (e) {
      s.underError = e.message;
      out.innerHTML = `<p class="error">${esc(e.message)}</p>`;
      return;
    }
    s.under = doc;
    out.innerHTML = renderUnder(doc, pid);
  }
  function renderUnder(doc, pid) { // the room's answer: pipes, manholes, basements, models, totals.by_type
    const pipes = doc.pipes || [], manholes = doc.manholes || [], basements = doc.basements || [], models = doc.models || [];
    const byType = (doc.totals && doc.totals.by_type) || [];
    const totalRows = byType.map((v) => `<tr data-type="${esc(v.type_code)}"><td><i class="swatch" style="background:${esc(v.colour || PIPE_TYPES[v.type_code]?.colour || OTHER_COLOUR)}"></i>`
      + `${esc(typeName(v.type_code, v.type))}</td><td class="num">${esc(num(v.segments, 0))}</td><td class="num">${esc(num(v.inside_m, 1))}</td></tr>`).join("");
    const pipeRows = pipes.map((p) => `<tr class="under-pipe" data-id="${esc(p.id)}"><td>${esc(p.id)}</td><td>${esc(typeName(p.type_code, p.type))}</td>`
      + `<td>${esc(p.size || size(p))}</td><td>${esc(p.material ?? "—")}</td>`
      + `<td class="num">${esc(Array.isArray(p.depth_m) ? p.depth_m.map((d) => num(d)).join("–") : "—")}</td>`
      + `<td class="num">${esc(num(p.inside_m, 1))}</td></tr>`).join("");
    const structures = [...basements.map((x) => `<li data-id="${esc(x.id)}">${esc(x.basement_id || x.id)} · ${esc(x.use || x.name || "")} · `
      + `${esc(tf("ug_levels_n", { n: num(x.levels, 0) }))} · ${esc(num(x.depth_m, 1))} m</li>`),
    ...models.map((m) => `<li data-model="${esc(m.id || m.model_id)}">BIM ${esc(m.name || m.id || m.model_id)}</li>`)];
    const hidden = (doc.hidden || []).length ? `<p class="no-permission">${esc(tf("ug_hidden", { layers: doc.hidden.join(", ") }))}</p>` : "";
    return `<p id="under-summary">${esc(tf("ug_under_summary", { pipes: pipes.length, manholes: manholes.length, structures: structures.length }))}</p>`
      + hidden
      + (totalRows ? `<table id="under-totals"><tr><th>${esc(t("ug_type"))}</th><th>${esc(t("ug_count"))}</th><th>${esc(t("ug_length_inside"))}</th></tr>${totalRows}</table>` : "")
      + (pipeRows ? `<details open><summary>${esc(t("ug_pipes"))} (${pipes.length})</summary><table id="under-pipes"><tr><th>${esc(t("ug_id"))}</th><th>${esc(t("ug_type"))}</th>`
        + `<th>${esc(t("ug_size"))}</th><th>${esc(t("ug_material"))}</th><th>${esc(t("ug_depth"))}</th><th>${esc(t("ug_length_inside"))}</th></tr>${pipeRows}</table></details>` : "")
      + (structures.length ? `<details open><summary>${esc(t("ug_structures"))} (${structures.length})</summary><ul id="under-structures">${structures.join("")}</ul></details>` : "")
      + `<p><a id="under-page" href="${esc(underUrl(pid, "html"))}" target="_blank" rel="noopener">${esc(t("ug_under_page"))}</a></p>`;
  }
  function applyLang() { renderLegend(); }
  return { state: s, start, decorate, groups, click, parcelShown, applyLang, under };
}
