"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (issue 8).

The schemathesis CLI (a real client, in its own process) reads ``/openapi.json`` from a real
server (uvicorn on a free port) over a test schema holding three small layers — public, editable
and restricted — and generates requests for every operation: boundary values of every documented
parameter (coverage phase), then random valid and invalid ones (fuzzing phase), including GeoJSON
bodies for the Part 4 write endpoints, sent with a GIS-staff key so that writes are exercised.
The property checked: no 5xx. Path parameters are drawn from the real layer / feature ids most of
the time (schemathesis dictionaries), so that requests reach the database, not only the 404 path.

Bounded: ``--max-examples`` per operation (``GEOTWIN_FUZZ_EXAMPLES``, default 6) and a fixed
seed, about two minutes on two cores. Raise ``GEOTWIN_FUZZ_EXAMPLES`` for a longer run by hand.

(The schemathesis pytest plugin's ``from_fixture`` does not work with pytest 9 — it reads
``request.node._nodeid`` — hence the CLI. One worker: with two, hypothesis describing its lambdas
from two threads at once trips CPython 3.11's "AST constructor recursion depth mismatch", a
runtime error of the tool, not of the API.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures import files
from tests.fixtures.server import live_server

MAX_EXAMPLES = int(os.environ.get("GEOTWIN_FUZZ_EXAMPLES", "10"))
SEED = 20261127
BUDGET_S = 240  # the run is killed (and the test fails) past this

#: Operations left out of the bounded run, each with the reason (regular expressions on the path).
EXCLUDED: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_world(database, auth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    suffix = uuid.uuid4().hex[:6]
    public, editable, hidden = f"t_fz_p_{suffix}", f"t_fz_e_{suffix}", f"t_fz_r_{suffix}"
    ingest_vector(files.gpkg(tmp / "p"), layer=public, key="code", settings=database)
    ingest_vector(files.geojson(tmp / "e"), layer=editable, key="code", settings=database)
    ingest_vector(files.geojson(tmp / "r"), layer=hidden, key="code", access_level="restricted", settings=database)
    with db.connect(database) as conn:
        store.update_layer(conn, editable, editable=True)
        conn.commit()
    with live_server(create_app(database)) as url:
        yield {"url": url, "layers": [public, editable, hidden], "headers": auth("gis-staff"), "tmp": tmp,
               "settings": database}


def _toml(layers: list[str], editable_only: bool = False) -> str:
    q = json.dumps  # TOML basic strings and arrays of them are JSON-compatible
    lines = [
        "[dictionaries.layers]", f"values = {q(layers + ['no_such_layer'])}",
        "[dictionaries.layer_lists]", f"values = {q(layers + [','.join(layers[:2]), 'no_such_layer'])}",
        "[dictionaries.features]", f"values = {q(['LG-0001', 'LG-0007', 'LG-0020', 'NOPE'])}",
        "[dictionaries.grids]", f"values = {q(['WebMercatorQuad', 'CGCS2000Quad'])}",
        "[parameters]",
        '"path.layers" = { dictionary = "layer_lists", probability = 0.85 }',
        '"path.feature_id" = { dictionary = "features", probability = 0.7 }',
        '"path.tms_id" = { dictionary = "grids", probability = 0.7 }',
    ]
    if editable_only:  # every request on the editable layer: bodies are checked all the way to the store
        lines.append(f'"path.collection_id" = {q(layers[1])}')
    else:
        lines.append('"path.collection_id" = { dictionary = "layers", probability = 0.85 }')
    return "\n".join(lines) + "\n"


def _schemathesis(world: dict, name: str, *extra: str, phases: str = "examples,coverage,fuzzing",
                  max_examples: int = MAX_EXAMPLES, editable_only: bool = False) -> dict:
    """One schemathesis run against the live server; returns its JSON report (asserting no 5xx)."""
    tmp: Path = world["tmp"]
    config = tmp / f"{name}.toml"
    config.write_text(_toml(world["layers"], editable_only), encoding="utf-8")
    report = tmp / f"{name}.json"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "--no-color", "run",
           world["url"] + "/openapi.json", "--checks", "not_a_server_error",
           "--phases", phases, "--max-examples", str(max_examples), "--seed", str(SEED),
           "--workers", "1", "--request-timeout", "30", "--suppress-health-check", "all",
           "--generation-deterministic", "--no-shrink", "--continue-on-failure",
           "--report", "json", "--report-json-path", str(report),
           "-H", f"Authorization:{world['headers']['Authorization']}", *extra]
    for path_re in EXCLUDED:
        cmd += ["--exclude-path-regex", path_re]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET_S)
    elapsed = time.monotonic() - t0
    out = done.stdout + done.stderr
    print(out[-3000:], f"\nschemathesis ({name}) took {elapsed:.0f} s")
    result = json.loads(report.read_text())
    failures = json.dumps(result["failures"], ensure_ascii=False)[:6000]
    errors = out[out.find("ERRORS"):][:4000] if "ERRORS" in out else ""
    assert done.returncode == 0 and not result["failures"] and not result["errors"], \
        errors + out[-3000:] + failures
    return result


def test_no_5xx_anywhere(fuzz_world):
    # Every operation: documented examples, then random valid and invalid requests (the coverage
    # phase's thousands of boundary values are kept for the operations of the run below).
    result = _schemathesis(fuzz_world, "all", phases="examples,fuzzing")
    assert result["operations"]["tested"] >= 60 and result["test_cases"]["generated"] >= 400, result["test_cases"]


def test_no_5xx_from_feature_writes(fuzz_world):
    """The items and Part 4 operations with every request on the editable layer."""
    result = _schemathesis(fuzz_world, "writes", "--include-path", "/collections/{collection_id}/items",
                           "--include-path", "/collections/{collection_id}/items/{feature_id}", editable_only=True)
    assert result["operations"]["tested"] == 6, result["operations"]
    # Writes were exercised, not only refused: the documented example feature was created.
    with db.connect(fuzz_world["settings"]) as conn:
        sources = [c["source"] for c in store.changesets(conn, fuzz_world["layers"][1])]
    assert "api:create" in sources, sources
