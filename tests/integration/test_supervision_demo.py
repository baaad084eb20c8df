"""The rule engine over the small demo district (built in a temporary folder, loaded with the
ingestion GIS staff use): every planted case found, no false one; imagery evidence; then the HTTP
API on a real uvicorn server — runs, GeoJSON (read back by GDAL) / CSV / XLSX exports, statistics,
the printable report, the findings vector tiles — and a case's full life."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import shapely

from land_supervision import engine, runs
from spatial_api import db, store
from spatial_api.ingest import ingest_vector

CST = timezone(timedelta(hours=8))
NEEDED = ("streets", "land_use", "basic_farmland", "eco_redline", "approvals", "parcels", "buildings", "imagery")


@pytest.fixture(scope="module")
def demo(database, tmp_path_factory):
    from data.demo import build_files

    out = database.home / "demo" / "small"  # the session's small district, shared, read only
    build_files(out, size="small", seed=2024, reuse=True)
    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for e in doc["layers"]:
        if e["layer"] in NEEDED:
            ingest_vector(out / e["path"], layer=e["layer"], key=e["key"], valid_from=e["valid_from"],
                          mode=e["mode"], settings=database, author="demo-builder")
    # The imagery catalogue, as `make demo` fills it (other tests may have put items in 'ortho' of
    # the shared test schema: the demo's epochs replace those of the same dates).
    from spatial_api.ingest.imagery import ingest_imagery

    for img in doc["imagery"]:
        ingest_imagery(out / img["path"], collection="ortho", datetime_=img["acquired_on"], kind="ortho",
                       item_id=img["epoch_id"], author="demo-builder", settings=database)
    return doc


@pytest.fixture(scope="module")
def demo_run(demo, database):
    return engine.run(database, as_of=demo["reference_date"], author="pytest", imagery=True)


def test_planted_cases_all_found_no_false_ones(demo, demo_run, conn):
    got: dict[str, list[str]] = {}
    for r in runs.findings(conn, demo_run.run_id):
        got.setdefault(r["rule"], []).append(r["subject_id"])
    got = {k: sorted(v) for k, v in got.items()}
    assert "V1" not in got  # no parcel reported "not started" shows construction
    for rule, ids in demo["planted_cases"].items():
        assert set(ids) <= set(got.get(rule, [])), rule
    for rule, ids in demo["negative_cases"].items():
        assert not set(ids) & set(got.get(rule, [])), rule
    # the complete result: the planted cases plus the documented overlaps, nothing else
    assert got == {k: v for k, v in demo["expected_findings"].items() if v}
    assert demo_run.counts["seconds_by_rule"] and demo_run.seconds < 30
    # idle parcels carry imagery evidence (nothing built on them)
    idle = runs.findings(conn, demo_run.run_id, rule="R4")
    assert idle and all(f["measures"]["imagery"]["construction_seen"] is False for f in idle)
    # R9's green ratio, measured on the latest epoch before the reference date: the planted
    # landscaped industrial parcel only (the other R9 cases are coverage / office share)
    r9 = runs.findings(conn, demo_run.run_id, rule="R9")
    green = [f for f in r9 if f["measures"]["green_ratio"] > 0.2]
    assert len(green) == 1 and green[0]["subject_id"] in demo["planted_cases"]["R9"]
    gi = green[0]["measures"]["green_imagery"]
    assert green[0]["measures"]["green_ratio_source"] == "imagery" and gi["acquired_on"] == "2025-11-15"
    # the imagery layer's epoch E2025 — or the same file in the catalogue, when another test of the
    # session registered the small demo's latest epoch in collection 'ortho' (test_styles does)
    assert (gi["source"], gi["item_id"]) == ("layer:imagery", "E2025") or gi["source"] == "catalogue:ortho"
    assert gi["pixels"] > 1000 and gi["threshold"] == 0.10
    assert all(f["measures"]["green_ratio"] is not None for f in r9)  # every completed 0601 parcel measured


def test_imagery_shows_construction_on_a_parcel_reported_not_started(demo, demo_run, database, conn):
    """A parcel built between the first and last epochs, re-reported as 'not started' with an
    agreed start between them: a V1 finding with the changed fraction."""
    pid = demo["imagery_changes"]["parcels"][0]
    stable = demo["imagery_changes"]["stable_parcels"][0]
    layer = store.get_layer(conn, "parcels")
    feats = []
    for fid in (pid, stable):
        f = store.features(conn, "parcels", at=datetime(2026, 6, 30, tzinfo=CST))
        f = next(x for x in f if x["fid"] == fid)
        props = {**f["properties"], "actual_start": None, "actual_completion": None, "agreed_start": "2022-03-01",
                 "extension_days": 0, "exemption": None}
        feats.append((fid, shapely.from_wkt(f["geometry"]), props))
    names = [p["name"] for p in layer.properties]
    rows = store.FeatureRows(rows=np.arange(1, 3), fids=np.array([f[0] for f in feats], dtype=object),
                             geometry=np.array([f[1] for f in feats], dtype=object),
                             properties=pd.DataFrame([{n: f[2].get(n) for n in names} for f in feats], dtype=object))
    store.write_changeset(conn, layer, rows, mode="upsert", valid_from=datetime(2026, 7, 1, tzinfo=CST),
                          author="pytest", source="test")
    conn.commit()
    r = engine.run(database, as_of="2026-07-01", rules="R3,R4,R5", imagery=True)
    v1 = runs.findings(conn, r.run_id, rule="V1")
    assert [f["subject_id"] for f in v1] == [pid]
    ev = v1[0]["measures"]["imagery"]
    assert ev["changed_fraction"] >= 0.35 and ev["epoch_before"] != ev["epoch_after"]
    r4 = {f["subject_id"]: f for f in runs.findings(conn, r.run_id, rule="R4")}
    assert r4[stable]["measures"]["imagery"]["construction_seen"] is False
    assert r4[pid]["measures"]["imagery"]["construction_seen"] is True
    # the reference-date run is untouched by this later edit
    again = engine.run(database, as_of=demo["reference_date"], imagery=False, rules="R4")
    assert {f["subject_id"] for f in runs.findings(conn, again.run_id)} == set(demo["expected_findings"]["R4"])


def _as(monkeypatch, default: dict) -> None:
    """Bare httpx.get / httpx.post calls in these tests authenticate as ``default`` unless they
    pass their own headers (an empty value removes the default: an anonymous call)."""
    for name in ("get", "post"):
        real = getattr(httpx, name)

        def call(url, *args, headers=None, _real=real, **kwargs):
            merged = {k: v for k, v in {**default, **(headers or {})}.items() if v}
            return _real(url, *args, headers=merged, **kwargs)

        monkeypatch.setattr(httpx, name, call)


@pytest.fixture(scope="module")
def officers(database):
    """Land officers' API keys, by name (their names are the authors of runs and case steps)."""
    from spatial_api.security import keys

    with db.connect(database) as conn:
        made = {n: keys.create(conn, n, "land-officer", created_by="pytest")
                for n in ("officer_zhang", "officer_li", "inspector_wang")}
        made["planner_chen"] = keys.create(conn, "planner_chen", "planner", created_by="pytest")
        conn.commit()
    return {n: {"Authorization": f"Bearer {k}"} for n, k in made.items()}


@pytest.fixture(scope="module")
def server(database, demo, officers):
    from spatial_api.app import create_app
    from tests.fixtures.server import live_server

    with live_server(create_app(database)) as url:
        yield f"{url}/supervision"


def test_http_runs_exports_statistics_report_tiles(server, demo, tmp_path, officers, monkeypatch):
    _as(monkeypatch, officers["officer_zhang"])
    # who may: anonymous callers and planners may not start a run; planners may read
    assert httpx.post(server + "/runs", json={"as_of": "2026-06-30"}, headers={"Authorization": ""}).status_code in (401,)
    assert httpx.post(server + "/runs", json={"as_of": "2026-06-30"}, headers=officers["planner_chen"]).status_code == 403
    assert httpx.get(server + "/rules", headers=officers["planner_chen"]).status_code == 200
    bad = httpx.post(server + "/runs", json={"as_of": "2026-06-31"}, timeout=60)
    assert bad.status_code == 400 and "as-of" in bad.json()["description"]
    bad = httpx.post(server + "/runs", json={"as_of": "2026-06-30", "rules": ["R14"]}, timeout=60)
    assert bad.status_code == 400 and "R14" in bad.json()["description"]
    r = httpx.post(server + "/runs", json={"as_of": demo["reference_date"], "rules": ["R4", "R12", "R13"],
                                           "imagery": False}, headers=officers["officer_zhang"], timeout=120)
    assert r.status_code == 201, r.text
    run = r.json()
    rid = run["run_id"]
    assert httpx.get(f"{server}/runs/{rid}").json()["author"] == "officer_zhang"
    expected = {(k, s) for k in ("R4", "R12", "R13") for s in demo["expected_findings"][k]}

    gj = httpx.get(f"{server}/runs/{rid}/findings", params={"f": "geojson"})
    assert gj.headers["content-type"].startswith("application/geo+json")
    path = tmp_path / "findings.geojson"
    path.write_bytes(gj.content)
    import pyogrio  # GDAL reads the export

    df = pyogrio.read_dataframe(path)
    assert {(a, b) for a, b in zip(df["rule"], df["subject_id"])} == expected
    assert {"rule", "parcel_id", "severity"} <= set(df.columns)
    r12 = df[df["rule"] == "R12"]
    assert (r12.geometry.area > 0).all()  # the overlap itself
    assert df[df["rule"] == "R4"]["idle_fee_cny"].notna().all()

    rows = list(csv.DictReader(io.StringIO(httpx.get(f"{server}/runs/{rid}/findings", params={"f": "csv"}).text.lstrip("\ufeff"))))
    assert {(x["rule"], x["subject_id"]) for x in rows} == expected
    assert all(x["overlap.mu"] for x in rows if x["rule"] == "R12")

    from openpyxl import load_workbook

    wb = load_workbook(io.BytesIO(httpx.get(f"{server}/runs/{rid}/findings", params={"f": "xlsx"}).content))
    assert {"概况", "发现", "按规则", "按街道", "按用地类型", "已消除"} <= set(wb.sheetnames)
    sheet = wb["发现"]
    head = [c.value for c in sheet[1]]
    assert sheet.max_row - 1 == len(expected) and "idle_fee_cny" in head

    stats = httpx.get(f"{server}/runs/{rid}/statistics").json()
    assert sum(x["findings"] for x in stats["by_rule"]) == len(expected)
    assert sum(x["findings"] for x in stats["by_street"]) == len(expected)
    assert all(x["key"] for x in stats["by_street"])  # every finding located in a street
    by_rule = {x["key"]: x for x in stats["by_rule"]}
    assert by_rule["R12"]["area_mu"] == pytest.approx(by_rule["R12"]["area_m2"] * 15 / 10000, abs=0.01)

    html = httpx.get(f"{server}/runs/{rid}/report")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    text = html.text
    for _, subject in expected:
        assert subject in text
    assert "<svg" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained

    # vector tiles: the tile holding an R12 overlap has it
    import mapbox_vector_tile
    import morecantile

    g = r12.geometry.iloc[0].representative_point()
    t = morecantile.tms.get("WebMercatorQuad").tile(g.x, g.y, 15)
    tile = httpx.get(f"{server}/tiles/{t.z}/{t.x}/{t.y}.mvt", params={"run": rid})
    assert tile.status_code == 200 and tile.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    feats = mapbox_vector_tile.decode(tile.content)["findings"]["features"]
    assert any(f["properties"]["rule"] == "R12" for f in feats)
    assert httpx.get(f"{server}/tiles/15/0/0.mvt", params={"run": rid}).status_code == 204
    assert httpx.get(f"{server}/runs/999999").status_code == 404


def test_case_full_life(server, demo, officers, monkeypatch):
    _as(monkeypatch, officers["officer_li"])
    run = httpx.post(server + "/runs", json={"as_of": demo["reference_date"], "rules": ["R4"], "imagery": False},
                     timeout=120).json()
    finding = httpx.get(f"{server}/runs/{run['run_id']}/findings").json()["findings"][0]
    u1, u2 = officers["officer_li"], officers["inspector_wang"]
    r = httpx.post(server + "/cases", json={"finding_ids": [finding["id"]], "assignee": "inspector_wang",
                                            "due_date": "2026-08-15"}, headers=u1)
    assert r.status_code == 201, r.text
    case = r.json()
    cid = case["id"]
    assert case["status"] == "open" and case["parcel_id"] == finding["subject_id"]
    dup = httpx.post(server + "/cases", json={"finding_ids": [finding["id"]]}, headers=u1)
    assert dup.status_code == 400 and "already in open case" in dup.json()["description"]

    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    r = httpx.post(f"{server}/cases/{cid}/inspections", headers=u2,
                   data={"text": "现场未见施工，围挡完好", "inspected_on": "2026-07-03", "lon": "114.25", "lat": "22.72"},
                   files=[("files", ("现场.png", photo, "image/png"))])
    assert r.status_code == 201, r.text
    file_meta = r.json()["case"]["events"][-1]["files"][0]
    got = httpx.get(f"{server}/files/{file_meta['id']}")
    assert got.content == photo and hashlib.sha256(photo).hexdigest() == file_meta["sha256"]
    assert got.headers["content-type"] == "image/png"

    bad = httpx.post(f"{server}/cases/{cid}/close", json={"disposition": "exempted"}, headers=u1)
    assert bad.status_code == 400 and "reason" in bad.json()["description"]
    bad = httpx.post(f"{server}/cases/{cid}/close", json={"disposition": "fee_charged"}, headers=u1)
    assert bad.status_code == 400 and "fee_cny" in bad.json()["description"]
    fee = finding["measures"]["idle_fee_cny"]
    r = httpx.post(f"{server}/cases/{cid}/close", json={"disposition": "fee_charged", "fee_cny": fee}, headers=u1)
    assert r.status_code == 200 and r.json()["status"] == "closed" and r.json()["fee_cny"] == pytest.approx(fee)
    again = httpx.post(f"{server}/cases/{cid}/close", json={"disposition": "rectified"}, headers=u1)
    assert again.status_code == 400 and "already closed" in again.json()["description"]
    r = httpx.post(f"{server}/cases/{cid}/reopen", json={"reason": "复核：闲置费未到账"}, headers=u2)
    assert r.json()["status"] == "open" and r.json()["disposition"] is None
    r = httpx.post(f"{server}/cases/{cid}/close", json={"disposition": "exempted", "reason": "政府原因（第八条）"},
                   headers=u1)
    case = r.json()
    assert case["disposition"] == "exempted" and case["disposition_reason"] == "政府原因（第八条）"
    steps = [(e["kind"], e["author"]) for e in case["events"]]
    assert steps == [("opened", "officer_li"), ("inspection", "inspector_wang"), ("closed", "officer_li"),
                     ("reopened", "inspector_wang"), ("closed", "officer_li")]
    times = [e["at"] for e in case["events"]]
    assert times == sorted(times)
    insp = case["events"][1]
    assert insp["inspected_on"] == "2026-07-03" and insp["lon"] == pytest.approx(114.25)
    assert httpx.get(f"{server}/cases/424242").status_code == 404


def test_cli_run_and_exports(demo, database, tmp_path):
    import os
    import subprocess
    import sys

    from openpyxl import load_workbook

    exe = Path(sys.executable).with_name("geotwin")
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}
    out = tmp_path / "r.xlsx"
    p = subprocess.run([str(exe), "supervise", "run", "--as-of", demo["reference_date"], "--rules", "R4,R12",
                        "--no-imagery", "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout[: p.stdout.rindex("}") + 1])
    assert summary["counts"]["by_rule"] == {"R4": len(demo["expected_findings"]["R4"]),
                                            "R12": len(demo["expected_findings"]["R12"])}
    wb = load_workbook(out)
    assert wb["发现"].max_row - 1 == summary["counts"]["total"]
    gj = tmp_path / "r.geojson"
    p = subprocess.run([str(exe), "supervise", "export", str(summary["run_id"]), "--out", str(gj)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(gj.read_text())["features"]) == summary["counts"]["total"]
    p = subprocess.run([str(exe), "supervise", "run", "--as-of", "2026-06-30", "--rules", "R4,R77"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and "unknown rule 'R77'" in p.stderr
