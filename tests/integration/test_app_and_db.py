"""The server's landing page and health check, and `geotwin db` on the real database."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi.testclient import TestClient

from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures import files


def test_landing_page_lists_public_layers_only(tmp_path, database, layer_name):
    ingest_vector(files.gpkg(tmp_path), layer=layer_name, key="code", title_zh="地块",
                  settings=database)
    hidden = layer_name + "_r"
    ingest_vector(files.geojson(tmp_path / "g"), layer=hidden, key="code", access_level="restricted",
                  settings=database)
    client = TestClient(create_app(database))
    assert client.get("/healthz").json()["status"] == "ok"
    body = client.get("/").json()
    names = {layer["name"]: layer for layer in body["layers"]}
    assert names[layer_name]["title_zh"] == "地块" and names[layer_name]["features"] == 20
    assert hidden not in names
    assert all(link.get("type") for link in body["links"])


def _cli(*args, database):
    env = dict(os.environ, GEOTWIN_DB_SCHEMA=database.db_schema)
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_db_commands(database):
    url = _cli("db", "url", database=database)
    assert url.returncode == 0 and url.stdout.startswith("postgresql://")
    status = _cli("db", "status", "--json", database=database)
    assert status.returncode == 0, status.stderr
    import json

    info = json.loads(status.stdout)
    from spatial_api.db.migrations import head_revision

    assert info["reachable"] and info["revision"] == info["head_revision"] == head_revision()
    assert info["postgis"].startswith("3.")
    up = _cli("db", "up", database=database)  # idempotent
    assert up.returncode == 0 and f"revision {head_revision()}" in up.stdout
