#!/usr/bin/env node
// Rasterise an SVG to PNG at a zoom factor with resvg (npm @resvg/resvg-js): used at set-up time
// by `python -m styles.assets build` for the sprite sheets (@1x and @2x). No text, no system fonts.
//   node scripts/render-svg.mjs IN.svg OUT.png ZOOM
import { readFileSync, writeFileSync } from "node:fs";
import { Resvg } from "@resvg/resvg-js";

const [input, output, zoomText] = process.argv.slice(2);
const zoom = Number(zoomText);
if (!input || !output || !(zoom > 0)) {
  console.error("usage: node scripts/render-svg.mjs IN.svg OUT.png ZOOM");
  process.exit(2);
}
const svg = readFileSync(input, "utf8");
const image = new Resvg(svg, {
  fitTo: { mode: "zoom", value: zoom },
  font: { loadSystemFonts: false },
  shapeRendering: 2, // geometricPrecision: anti-aliased edges
}).render();
writeFileSync(output, image.asPng());
console.log(`${output} ${image.width}x${image.height}`);
