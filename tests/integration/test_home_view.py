"""The map's first view (issue 12 item 9): the styles' ``center`` / ``zoom`` come from the ``home``
setting (`geotwin config set home …`, run as a real command) or, unset, from the buildings layer
(else the layer with the most features) — never from the union of every layer's extent, which one
layer loaded far away moved off the district.

The tests run in a schema of their own (``<test schema>_home``), so that they decide which layers
exist (a ``buildings`` layer or none) whatever other test files load into the shared test schema."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from spatial_api import db
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from tests.fixtures.server import live_server

#: where the synthetic district's features are (lon/lat boxes they are drawn in)
LAND_USE_BOX = (114.21, 22.70, 114.29, 22.74)
BUILDINGS_BOX = (114.23, 22.71, 114.27, 22.73)
#: a layer the district map draws, loaded far away (a test plot, a file in the wrong CRS): the kind
#: of layer that moved everyone's first view
FAR = (116.00, 24.00)
FAR_LAYER = "parcels"


def _squares(points, size: float = 0.0002) -> dict:
    feats = []
    for i, (x, y) in enumerate(points):
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        feats.append({"type": "Feature", "properties": {"code": f"F{i:05d}"},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": feats}


def _points_in(box, n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    w, s, e, n_ = box
    return list(zip(rng.uniform(w, e - 0.0002, n).tolist(), rng.uniform(s, n_ - 0.0002, n).tolist()))


def _load(settings, tmp, layer: str, points, valid_from: str = "2025-01-01") -> None:
    path = tmp / f"{layer}.geojson"
    path.write_text(json.dumps(_squares(points)), encoding="utf-8")
    ingest_vector(path, layer=layer, key="code", valid_from=valid_from, access_level="public", author="pytest",
                  settings=settings)


@pytest.fixture(scope="module")
def home(database, tmp_path_factory):
    """A store of its own: land use over the district and parcels far away (no buildings yet)."""
    settings = dataclasses.replace(database, db_schema=f"{database.db_schema}_home")
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
    db.migrate(settings)
    tmp = tmp_path_factory.mktemp("home")
    _load(settings, tmp, "land_use", _points_in(LAND_USE_BOX, 200, seed=1))
    _load(settings, tmp, FAR_LAYER, [(FAR[0] + 0.001 * i, FAR[1]) for i in range(4)])
    with live_server(create_app(settings)) as url:
        yield {"settings": settings, "url": url, "tmp": tmp}
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


def geotwin(home, *args: str) -> subprocess.CompletedProcess:
    """The real command line, on the home test schema."""
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": home["settings"].db_schema, "GEOTWIN_USER": "pytest-home"}
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def view(home, style: str = "district") -> dict:
    r = httpx.get(f"{home['url']}/styles/{style}", timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    return {"center": doc.get("center"), "zoom": doc.get("zoom"), "home": doc["metadata"].get("geotwin:home")}


def _inside(point, box, margin: float = 0.0) -> bool:
    return box[0] - margin <= point[0] <= box[2] + margin and box[1] - margin <= point[1] <= box[3] + margin


def _middle(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_the_default_home_is_the_district_not_the_middle_of_every_layer(home):
    # no buildings layer: the layer with the most features (land use, 200) — not the 4 far parcels
    v = view(home)
    assert _inside(v["center"], LAND_USE_BOX), v  # the union's middle would be near 115.1 E, 23.4 N
    assert abs(v["center"][0] - _middle(LAND_USE_BOX)[0]) < 0.005 and abs(v["center"][1] - _middle(LAND_USE_BOX)[1]) < 0.005
    assert 11 <= v["zoom"] <= 15 and _inside(v["home"]["bbox"][:2], LAND_USE_BOX, 0.002)
    assert "land_use" in v["home"]["source"]
    # every style opens there (imagery / terrain styles too), not on its own far-flung union
    assert view(home, "land_use")["center"] == v["center"]
    # a buildings layer — with one stray building 40 km away — becomes the home
    _load(home["settings"], home["tmp"], "buildings", _points_in(BUILDINGS_BOX, 300, seed=2) + [(114.60, 22.95)])
    v = view(home)
    assert abs(v["center"][0] - _middle(BUILDINGS_BOX)[0]) < 0.003 and abs(v["center"][1] - _middle(BUILDINGS_BOX)[1]) < 0.003, v
    w, s, e, n = v["home"]["bbox"]
    assert _inside((w, s), BUILDINGS_BOX, 0.001) and _inside((e, n), BUILDINGS_BOX, 0.001), v  # the stray one left out
    assert 12 <= v["zoom"] <= 16 and v["zoom"] > view(home, "land_use")["zoom"] - 5
    assert "buildings" in v["home"]["source"]
    out = geotwin(home, "config", "get", "home")
    assert out.returncode == 0 and "not set" in out.stdout and "buildings" in out.stdout, out.stdout + out.stderr


def test_config_set_home_moves_every_first_view(home):
    try:
        out = geotwin(home, "config", "set", "home", "114.2,22.7,15")
        assert out.returncode == 0, out.stderr
        v = view(home)
        assert v["center"] == [114.2, 22.7] and v["zoom"] == 15
        assert view(home, "land_use")["center"] == [114.2, 22.7]
        got = json.loads(geotwin(home, "config", "get", "home", "--json").stdout)
        assert got["value"] == {"center": [114.2, 22.7], "zoom": 15} and got["updated_by"] == "pytest-home"
        listed = geotwin(home, "config", "list", "--json")
        assert {"name": "home", "value": {"center": [114.2, 22.7], "zoom": 15}}.items() <= \
            next(e for e in json.loads(listed.stdout) if e["name"] == "home").items()
        # a box: the view shows it whole, centred on it
        out = geotwin(home, "config", "set", "home", "114.10,22.60,114.40,22.80")
        assert out.returncode == 0, out.stderr
        v = view(home)
        assert abs(v["center"][0] - 114.25) < 1e-6 and 22.69 < v["center"][1] < 22.71  # Mercator middle
        assert v["home"]["bbox"] == [114.1, 22.6, 114.4, 22.8] and 10 < v["zoom"] < 12.5
        # a layer's extent
        assert geotwin(home, "config", "set", "home", "layer:land_use").returncode == 0
        assert _inside(view(home)["center"], LAND_USE_BOX)
        # the change is in the audit log, with who made it
        with db.connect(home["settings"]) as conn:
            rows = conn.execute("SELECT principal, action, target FROM audit_log WHERE target = 'settings/home' "
                                "ORDER BY at").fetchall()
        assert rows and all(r[0] == "pytest-home" and r[1] == "config-set" for r in rows) and len(rows) >= 3
    finally:
        out = geotwin(home, "config", "unset", "home")
    assert out.returncode == 0 and "unset" in out.stdout
    assert abs(view(home)["center"][0] - _middle(BUILDINGS_BOX)[0]) < 0.003  # back to the default


BAD_HOMES = [
    ("22.72,114.25,13", "did you mean 114.25,22.72"),  # latitude first
    ("525000,2514000,13", "projected coordinates"),  # metres of EPSG:4547
    ("114.25,22.72", "has 2 values"),
    ("114.25,22.72,30", "zoom 30 is outside 0–22"),
    ("114.4,22.6,114.1,22.8", "MINLON < MAXLON"),
    ("114.25,north,13", "latitude 'north' is not a number"),
    ("layer:nosuch", "there is no layer 'nosuch'"),
    ("layer:../x", "is not a layer name"),
]


def test_a_bad_home_is_refused_with_a_message_and_changes_nothing(home):
    assert geotwin(home, "config", "set", "home", "114.2,22.7,15").returncode == 0
    try:
        for value, says in BAD_HOMES:
            out = geotwin(home, "config", "set", "home", value)
            assert out.returncode == 1, (value, out.stdout)
            assert "home" in out.stderr and says in out.stderr, (value, out.stderr)
            assert "Traceback" not in out.stderr
        assert view(home)["center"] == [114.2, 22.7]  # the stored value is untouched
    finally:
        geotwin(home, "config", "unset", "home")


def test_an_unknown_setting_name_is_refused(home):
    for args in (("set", "hoem", "114.2,22.7,15"), ("get", "hoem"), ("unset", "hoem")):
        out = geotwin(home, "config", *args)
        assert out.returncode == 1 and "'hoem' is not a setting" in out.stderr and "home" in out.stderr, out.stderr
