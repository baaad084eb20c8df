// Cleaning what the user drew before it becomes a query polygon (S_INTERSECTS on the server, which
// refuses an invalid geometry with 400). Clicks can repeat a vertex (two clicks on the same pixel)
// or cross the outline (a bow-tie); the server must get a valid polygon, and the user must be told
// what was changed. Done with turf (@turf/turf's browser build, served from /vendor/turf/, copied
// from node_modules by `python -m web build`): cleanCoords, kinks, unkinkPolygon and union
// (polyclip-ts), no geometry code of our own.
import "/vendor/turf/turf.min.js";  // UMD: defines globalThis.turf

const turf = globalThis.turf;

//: decimal places of the coordinates sent (1e-7° ≈ 1 cm); cleaning is done on the rounded values,
//: so rounding cannot bring back a repeated vertex or a crossing
export const DIGITS = 7;

const round = (v) => Number(Number(v).toFixed(DIGITS));
const same = (p, q) => p[0] === q[0] && p[1] === q[1];

// turf.union of one feature is refused ("at least 2 geometries"); the union of a polygon with
// itself is the polygon, its self-intersections resolved (polyclip-ts).
function union(features) {
  const fc = turf.featureCollection(features.length === 1 ? [features[0], features[0]] : features);
  return turf.union(fc);
}

/** Cleans the vertices ``points`` ([[lon, lat], …], the ring not closed) of a drawn polygon.
 *
 * Returns ``{geometry, wkt, fixes: {duplicates, crossings, parts}}`` — a valid GeoJSON Polygon or
 * MultiPolygon (the lobes of a bow-tie), the WKT to send and what was done: repeated vertices
 * removed, self-intersections found (and repaired), parts of the result — or ``{error, distinct}``
 * with ``error`` one of ``too_few`` (fewer than 3 distinct vertices), ``flat`` (no area: the
 * vertices lie on one line) or ``failed`` (``detail`` says why). */
export function cleanPolygon(points) {
  const pts = (points || []).filter((p) => Array.isArray(p) && p.length >= 2 && isFinite(p[0]) && isFinite(p[1]))
    .map((p) => [round(p[0]), round(p[1])]);
  if (pts.length > 1 && same(pts[0], pts[pts.length - 1])) pts.pop();  // the user closed the ring by hand
  const distinct = new Set(pts.map((p) => `${p[0]} ${p[1]}`)).size;
  if (distinct < 3) return { error: "too_few", distinct };
  let poly;
  try {
    poly = turf.cleanCoords(turf.polygon([[...pts, pts[0]]]));  // repeated (and collinear) vertices
  } catch (e) {
    return { error: "flat", distinct };  // fewer than 3 vertices are left: they lie on one line
  }
  // repeated vertices: consecutive equal points, the closing one included (not the collinear ones
  // cleanCoords also drops, which change nothing of the shape)
  const duplicates = pts.filter((p, i) => same(p, pts[(i + 1) % pts.length])).length;
  const crossings = turf.kinks(poly).features.length;
  let geometry = poly.geometry;
  if (crossings) {
    try {
      let parts;
      try {
        parts = turf.unkinkPolygon(poly).features;  // the simple polygons the crossings cut it into
      } catch (e) {
        parts = [poly];  // a vertex visited twice (not consecutively): unkink refuses, union copes
      }
      const merged = union(parts);  // nested / overlapping parts of a looped outline become one
      if (!merged) return { error: "flat", distinct };
      geometry = merged.geometry;
    } catch (e) {
      return { error: "failed", distinct, detail: String(e.message || e) };
    }
  }
  if (!(turf.area(geometry) > 0)) return { error: "flat", distinct };
  const parts = geometry.type === "MultiPolygon" ? geometry.coordinates.length : 1;
  return { geometry, wkt: toWkt(geometry), fixes: { duplicates, crossings, parts } };
}

/** WKT of a GeoJSON Polygon or MultiPolygon (lon lat, the shortest text that reads back exactly). */
export function toWkt(g) {
  const ring = (r) => `(${r.map((p) => `${p[0]} ${p[1]}`).join(",")})`;
  const poly = (rings) => `(${rings.map(ring).join(",")})`;
  if (g.type === "Polygon") return `POLYGON${poly(g.coordinates)}`;
  if (g.type === "MultiPolygon") return `MULTIPOLYGON(${g.coordinates.map(poly).join(",")})`;
  throw new Error(`not a polygon: ${g.type}`);
}
