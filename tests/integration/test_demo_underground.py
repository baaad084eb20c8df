"""Issue 17: the demo district's underground loaded through the real ingestion.

The small demo built into a folder of its own (the same seed as everywhere), then each type's
CJJ 61 survey through ``underground.ingest.ingest_pipes`` — the checks of ``geotwin ingest pipes``
against the types already stored (no crossing, no uphill drain, no implausible depth), both layers
in one transaction per type — the basements through ``ingest_vector``, and the entity codes of
those layers through ``spatial_api.entities.assign`` as ``data.demo.load`` gives them. A second
load changes nothing."""

from __future__ import annotations

import json

import pyogrio
import pytest
from psycopg import sql

from data.demo import ENTITY_ASSIGNMENTS, build_files
from spatial_api import entities, store
from spatial_api.ingest import ingest_vector
from underground.ingest import ingest_pipes

UNDERGROUND = ("basements", "pipe_points", "pipe_segments")


def _load(m, settings):
    reports = [ingest_pipes(t["points"], t["segments"], type=t["type"], crs=m.crs, valid_from=m.reference_date,
                            author="demo-builder", settings=settings) for t in m.pipe_surveys()]
    lf = m.layer("basements")
    reports.append(ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from,
                                 title_zh=lf.title_zh, title_en=lf.title_en, access_level=lf.access_level,
                                 author="demo-builder", settings=settings))
    assigned = {layer: entities.assign(layer, entity_type=etype, author="demo-builder", settings=settings, **opts)
                for layer, etype, opts in ENTITY_ASSIGNMENTS if layer in UNDERGROUND}
    return reports, assigned


@pytest.fixture(scope="module")
def loaded(database, tmp_path_factory):
    m = build_files(database.home / "demo" / "small", size="small", seed=2024, reuse=True)  # shared, read only
    first = _load(m, database)
    return {"manifest": m, "first": first, "second": _load(m, database)}


def test_every_survey_loads_without_a_problem(loaded):
    m = loaded["manifest"]
    reports, _ = loaded["first"]
    pipes = reports[:-1]
    assert [r.type for r in pipes] == ["通信", "燃气", "给水", "电力", "雨水", "污水"]
    for r, t in zip(pipes, m.pipe_surveys()):
        assert r.problems == [] and not r.refused, (r.type, r.problems[:3])
        assert (r.points, r.segments) == (t["points_count"], t["segments_count"])
        assert set(r.changeset_ids) == {"pipe_points", "pipe_segments"}


def _current(conn, layer) -> dict[str, dict]:
    rows = conn.execute(sql.SQL("SELECT fid, properties FROM {} WHERE valid_to IS NULL").format(
        sql.Identifier(store.partition_name(layer)))).fetchall()
    return {r[0]: r[1] for r in rows}


def test_stored_layers_hold_the_survey(loaded, conn):
    m = loaded["manifest"]
    segs = _current(conn, "pipe_segments")
    by_type: dict[str, int] = {}
    for p in segs.values():
        by_type[p["type_code"]] = by_type.get(p["type_code"], 0) + 1
    assert by_type == {t["code"]: t["segments_count"] for t in m.pipe_surveys()}
    assert len(_current(conn, "pipe_points")) == sum(t["points_count"] for t in m.pipe_surveys())


def test_manholes_of_the_survey_are_manholes_with_a_bottom(loaded, conn):
    m = loaded["manifest"]
    ys = next(t for t in m.pipe_surveys() if t["code"] == "YS")
    pts = pyogrio.read_dataframe(ys["points"])
    first = pts.iloc[0]
    p = _current(conn, "pipe_points")[f"YS-{first['物探点号']}"]
    assert p["is_manhole"] is True and p["depth_ref"] == "invert" and p["type"] == "雨水"
    assert p["bottom_z"] == pytest.approx(first["地面高程"] - first["井深"], abs=0.01)
    assert p["ground_z"] == pytest.approx(first["地面高程"], abs=0.01)


def test_entities_for_pipes_and_basements(loaded, conn):
    m = loaded["manifest"]
    _, assigned = loaded["first"]
    assert len(assigned["pipe_segments"].new) == sum(t["segments_count"] for t in m.pipe_surveys())
    assert len(assigned["pipe_points"].new) == sum(t["points_count"] for t in m.pipe_surveys())
    assert len(assigned["basements"].new) == m.layer("basements").count > 0
    seg = next(t for t in m.pipe_surveys() if t["code"] == "WS")
    code = entities.entity_for_feature(conn, "pipe_segments", f"WS-{_first_segment_id(seg)}")
    assert code and code.startswith("440307GX")
    bf = pyogrio.read_dataframe(m.layer("basements").path, read_geometry=False)
    code = entities.entity_for_feature(conn, "basements", str(bf["basement_id"].iloc[0]))
    assert code and code.startswith("440307DX")


def test_a_second_load_changes_nothing(loaded):
    reports, assigned = loaded["second"]
    for r in reports[:-1]:
        assert r.skipped and not r.changeset_ids, r.type
    assert reports[-1].skipped or (reports[-1].added, reports[-1].changed, reports[-1].closed) == (0, 0, 0)
    for layer, rep in assigned.items():
        assert rep.counts()["new"] == 0 and rep.already > 0, layer


def test_manhole_covers_stand_on_the_networks_manholes(loaded):
    m = loaded["manifest"]
    plan = json.loads((m.out_dir / "sensing.json").read_text(encoding="utf-8"))
    covers = [d for d in plan["devices"] if d["type"] == "manhole-cover"]
    wells = {}
    for t in m.pipe_surveys():
        pts = pyogrio.read_dataframe(t["points"], read_geometry=False)
        wells.update(dict(zip(pts["物探点号"], pts["井深"])))
    assert len(covers) == 24
    for d in covers:
        assert d["manhole"] in wells and d["depth_m"] == round(float(wells[d["manhole"]]), 1)
    assert {d["pipe_type"] for d in covers} == {"雨水"}  # the small district has storm manholes enough


def _first_segment_id(t) -> str:
    import csv

    with open(t["segments"], encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    return f"{row['起点点号']}-{row['终点点号']}"
