// Validate glb / gltf files with the Khronos glTF validator (npm gltf-validator, installed in
// node_modules by `make assets`) and print one JSON report:
//   {"files": [{"path", "errors", "warnings", "infos", "hints", "messages": [...]}], "errors": N}
// Usage: node cim_builder/validate_gltf.mjs FILE...   (or a list of files on stdin with "-")
// Exit status: 0 when every file has zero errors, 1 otherwise, 2 on bad usage.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "package.json"));
const validator = require("gltf-validator");

let files = process.argv.slice(2);
if (files.length === 1 && files[0] === "-") {
  files = readFileSync(0, "utf8").split("\n").map((s) => s.trim()).filter(Boolean);
}
if (!files.length) {
  console.error("usage: node validate_gltf.mjs FILE.glb ... (or - to read paths from stdin)");
  process.exit(2);
}

const out = [];
let errors = 0;
for (const file of files) {
  const bytes = new Uint8Array(readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 200,
    externalResourceFunction: (uri) =>
      Promise.resolve(new Uint8Array(readFileSync(path.resolve(path.dirname(file), decodeURIComponent(uri))))),
  });
  const issues = report.issues;
  errors += issues.numErrors;
  out.push({
    path: file,
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    infos: issues.numInfos,
    hints: issues.numHints,
    messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, message: m.message, pointer: m.pointer })),
  });
}
console.log(JSON.stringify({ files: out, errors }));
process.exitCode = errors ? 1 : 0;  // not process.exit(): a piped stdout must drain first
