"""The pipe survey checks (underground.checks, underground.survey): the segment–segment distance on
hand-computed cases, section parsing, axis elevations per depth reference, and every problem named
by id — no database."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.fixtures import pipes
from underground import catalogue
from underground.checks import (
    check_all,
    crossings,
    load_axes,
    radius_m,
    segment_distance,
)
from underground.survey import parse_sizes, read_survey


def dist(p1, q1, p2, q2) -> float:
    return float(segment_distance(np.array([p1]), np.array([q1]), np.array([p2]), np.array([q2]))[0])


# -- segment_distance --------------------------------------------------------------------------

def test_crossing_segments_at_different_heights():
    # x axis at z 0, y axis at z 2: closest points (0,0,0) and (0,0,2)
    assert dist((-1, 0, 0), (1, 0, 0), (0, -1, 2), (0, 1, 2)) == pytest.approx(2.0)


def test_skew_segments_clamped_at_an_end():
    # second segment starts beyond the first's end: closest (1,0,0) – (3,0,0)… along x: 2
    assert dist((0, 0, 0), (1, 0, 0), (3, -1, 0), (3, 1, 0)) == pytest.approx(2.0)
    # and lifted by 1: sqrt(2² + 1²)
    assert dist((0, 0, 0), (1, 0, 0), (3, -1, 1), (3, 1, 1)) == pytest.approx(math.sqrt(5))


def test_closest_point_interior_of_one_end_of_other():
    # segment 2 end (0.5, 1, 0) above the middle of segment 1: distance 1
    assert dist((0, 0, 0), (1, 0, 0), (0.5, 1, 0), (0.5, 3, 0)) == pytest.approx(1.0)


def test_parallel_segments_overlapping_and_apart():
    # parallel, overlapping in x, 0.5 apart in y and 0.5 in z: sqrt(0.5)
    assert dist((0, 0, 0), (10, 0, 0), (2, 0.5, 0.5), (12, 0.5, 0.5)) == pytest.approx(math.sqrt(0.5))
    # parallel, collinear, a gap of 3 along the line
    assert dist((0, 0, 0), (1, 0, 0), (4, 0, 0), (6, 0, 0)) == pytest.approx(3.0)
    # antiparallel (opposite directions), not overlapping: end to end 1 along x and 1 in y
    assert dist((0, 0, 0), (1, 0, 0), (3, 1, 0), (2, 1, 0)) == pytest.approx(math.sqrt(2))


def test_degenerate_segments():
    assert dist((0, 0, 0), (0, 0, 0), (0, 0, 3), (0, 0, 3)) == pytest.approx(3.0)      # two points
    assert dist((5, 1, 0), (5, 1, 0), (0, 0, 0), (10, 0, 0)) == pytest.approx(1.0)      # point – segment
    assert dist((0, 0, 0), (10, 0, 0), (12, 0, 0), (12, 0, 0)) == pytest.approx(2.0)    # segment – point


def test_vectorised_against_brute_force():
    rng = np.random.default_rng(17)
    p1, q1, p2, q2 = (rng.normal(size=(300, 3)) * 5 for _ in range(4))
    got = segment_distance(p1, q1, p2, q2)
    s = np.linspace(0, 1, 401)
    for k in range(0, 300, 15):
        a = p1[k] + np.outer(s, q1[k] - p1[k])
        b = p2[k] + np.outer(s, q2[k] - p2[k])
        brute = np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2))
        assert got[k] <= brute + 1e-9 and got[k] == pytest.approx(brute, abs=0.05)


def test_radius_of_round_pipes_and_boxes():
    np.testing.assert_allclose(radius_m([600, 1000], [600, 800]), [0.3, math.hypot(1.0, 0.8) / 2])


# -- sizes -------------------------------------------------------------------------------------

def test_sections_and_diameters_parse():
    w, h, d, ok = parse_sizes(pd.Series(["300", None, "DN200", None, "abc", 400.0]),
                              pd.Series([None, "1000×800", None, "1200x600", None, "800*800"]))
    np.testing.assert_allclose(w[:4], [300, 1000, 200, 1200])
    np.testing.assert_allclose(h[:4], [300, 800, 200, 600])
    assert np.isnan(d[1]) and d[0] == 300 and d[2] == 200
    assert list(ok) == [True, True, True, True, False, True]
    assert w[5] == 800 and h[5] == 800 and np.isnan(d[5])  # a square box stays a box


# -- a whole survey ----------------------------------------------------------------------------

def _survey(tmp_path, pts, segs, kind="给水", fmt="gpkg"):
    write = pipes.write_gpkg if fmt == "gpkg" else pipes.write_csv
    pp, sp = write(tmp_path, pts, segs)
    return read_survey(pp, sp, catalogue.pipe_type(kind))


def _codes(problems):
    return sorted((p.code, p.id) for p in problems)


def test_axis_elevations_top_and_invert(tmp_path):
    s = _survey(tmp_path, *pipes.water_main())
    # 给水: depth to the top: 50 − 1.2 − 0.3/2
    assert s.segments["start_axis_z"].tolist() == pytest.approx([48.65] * 3)
    assert s.segments["length_m"].tolist() == pytest.approx([50.0] * 3)
    d = _survey(tmp_path / "ys", *pipes.storm_line(), kind="YS")
    # 雨水: depth to the invert: 50 − 2.0 + 0.6/2, 50 − 2.2 + 0.3 …
    assert d.segments["start_axis_z"].tolist() == pytest.approx([48.3, 48.1])
    assert d.segments["end_axis_z"].tolist() == pytest.approx([48.1, 47.9])
    assert d.segments["length_m"].iat[0] == pytest.approx(math.sqrt(50 ** 2 + 0.2 ** 2))
    # manholes: Y3 from its well depth, Y1 from the lowest invert − 0.3 m
    bottoms = dict(zip(d.points["point_id"], d.points["bottom_z"]))
    assert bottoms["Y3"] == pytest.approx(47.0) and bottoms["Y1"] == pytest.approx(48.0 - 0.3)
    assert check_all(d.points, d.segments, d.ptype) == []


def test_every_structural_problem_named_by_id(tmp_path):
    pts, segs = pipes.water_main()
    pts.append(dict(pts[0]))                              # J1 twice
    pts.append({"point_id": "J5", "x": 525900.0, "y": pipes.Y0, "ground_z": 50.0})   # no depth
    pts.append({"point_id": "J6", "x": 525950.0, "y": pipes.Y0, "ground_z": 50.0, "depth": -0.5})
    pts.append({"point_id": "J7", "x": 525950.0, "y": pipes.Y0, "ground_z": 50.0, "depth": 1.0})  # where J6 is
    segs += [
        {"start_id": "J4", "end_id": "J9", "diameter": 300},           # J9 missing
        {"start_id": "J4", "end_id": "J4", "diameter": 300},           # a loop
        {"start_id": "J4", "end_id": "J5", "diameter": 300},           # no depth at J5
        {"start_id": "J4", "end_id": "J6", "diameter": 300},           # negative depth at J6
        {"start_id": "J6", "end_id": "J7", "diameter": 300, "start_depth": 1.0},  # zero length
        {"start_id": "J3", "end_id": "J4", "segment_id": "J3-J4"},     # duplicate id, no size
        {"start_id": "J1", "end_id": "J3", "section": "宽×高"},          # bad section
    ]
    s = _survey(tmp_path, pts, segs)
    problems = check_all(s.points, s.segments, s.ptype, read_problems=s.problems)
    got = _codes(problems)
    for expected in [("duplicate_point", "J1"), ("missing_point", "J4-J9"), ("same_point", "J4-J4"),
                     ("missing_depth", "J4-J5"), ("negative_depth", "J4-J6"), ("negative_depth", "J6"),
                     ("zero_length", "J6-J7"), ("duplicate_segment", "J3-J4"), ("missing_size", "J3-J4"),
                     ("bad_section", "J1-J3")]:
        assert expected in got, (expected, got)
    assert all(p.kind == "error" for p in problems)
    missing = next(p for p in problems if p.code == "missing_point")
    assert "'J9'" in missing.message and missing.row == 4


def test_implausible_depth_and_top_above_ground(tmp_path):
    pts, segs = pipes.water_main()
    pts[3]["depth"] = 25.0         # 给水 max 20 m
    s = _survey(tmp_path, pts, segs)
    assert _codes(check_all(s.points, s.segments, s.ptype)) == [("implausible_depth", "J3-J4")]
    # a drain whose invert is 0.4 m deep with a 600 mm pipe: its top sticks out 0.2 m
    pts, segs = pipes.storm_line()
    pts[0]["depth"] = 0.4
    d = _survey(tmp_path / "ys", pts, segs, kind="雨水")
    got = check_all(d.points, d.segments, d.ptype)
    assert [(p.code, p.kind, p.id) for p in got] == [("above_ground", "depth", "Y1-Y2")]
    # 12 m is the limit for 燃气
    pts, segs = pipes.water_main()
    pts[1]["depth"] = 12.5
    g = _survey(tmp_path / "rq", pts, segs, kind="RQ")
    assert {p.id for p in check_all(g.points, g.segments, g.ptype)} == {"J1-J2", "J2-J3"}


def test_uphill_drain_names_both_inverts_and_the_slope(tmp_path):
    pts, segs = pipes.storm_line()
    pts[2]["depth"] = 1.9     # invert at Y3 48.1 > Y2's 47.8: rises 0.3 m over 50 m = +6‰
    s = _survey(tmp_path, pts, segs, kind="污水")
    problems = check_all(s.points, s.segments, s.ptype)
    assert [(p.code, p.id) for p in problems] == [("uphill", "Y2-Y3")]
    assert "47.8" in problems[0].message and "48.1" in problems[0].message and "+6.0‰" in problems[0].message
    # the same depths on a pressure pipe are no problem
    w = _survey(tmp_path / "js", pts, segs, kind="给水")
    assert check_all(w.points, w.segments, w.ptype) == []


def test_crossings_within_the_load_and_against_stored(tmp_path):
    pts, segs = pipes.water_main()
    # a second water pipe crossing J2-J3 at x 525775, 0.3 m deeper: axes 0.3 apart < 0.15 + 0.15… no:
    # radii 0.15 + 0.1 = 0.25 → clearance 0.05, fine; 0.2 deeper → overlap of 0.05
    pts += [{"point_id": "K1", "x": 525775.0, "y": pipes.Y0 + 20, "ground_z": 50.0, "depth": 1.3},
            {"point_id": "K2", "x": 525775.0, "y": pipes.Y0 - 20, "ground_z": 50.0, "depth": 1.3}]
    segs += [{"start_id": "K1", "end_id": "K2", "diameter": 200}]
    s = _survey(tmp_path, pts, segs)
    problems = check_all(s.points, s.segments, s.ptype)
    # K axis: 50 − 1.3 − 0.1 = 48.6; J axis 48.65: 0.05 apart, radii 0.25
    assert [(p.code, p.id) for p in problems] == [("crossing", "J2-J3")]
    assert "'K1-K2'" in problems[0].message and "0.05 m" in problems[0].message
    # segments sharing a point (J2-J3 and J3-J4 meet at J3) are never a crossing
    assert not any("J3-J4" in p.message for p in problems)
    # against stored segments: the storm line passes under at a clearance of 0.10 m — none; lift it 0.2 m
    ys = _survey(tmp_path / "ys", *pipes.storm_line(), kind="雨水")
    w = _survey(tmp_path / "w", *pipes.water_main())
    assert crossings(load_axes(w.segments), load_axes(ys.segments)) == []
    ys.segments["start_axis_z"] += 0.2
    ys.segments["end_axis_z"] += 0.2
    hit = crossings(load_axes(w.segments), load_axes(ys.segments))
    assert sorted(p.id for p in hit) == ["J2-J3", "J2-J3"]  # both storm segments meet it at Y2


def test_csv_in_gbk_with_northing_first(tmp_path):
    pp, sp = pipes.write_csv(tmp_path, *pipes.water_main(), encoding="gbk")
    s = read_survey(pp, sp, catalogue.pipe_type("JS"))
    assert s.encodings == ("GB18030", "GB18030")
    assert s.points["appurtenance"].tolist()[1] == "阀门井" and s.segments["material"].iat[0] == "球墨铸铁"
    assert s.points["x"].tolist() == pytest.approx([525700, 525750, 525800, 525850])
    assert s.notes and "northings" in s.notes[0]


def test_unknown_type_and_missing_column(tmp_path):
    with pytest.raises(catalogue.UnknownType, match="给水 JS"):
        catalogue.pipe_type("自来水")
    assert catalogue.pipe_type("rq").name == "燃气" and catalogue.pipe_type("污水").code == "WS"
    pts, segs = pipes.water_main()
    pp, sp = pipes.write_csv(tmp_path, pts, [{k: v for k, v in s.items() if k != "end_id"} for s in segs])
    from spatial_api.ingest.types import IngestError

    with pytest.raises(IngestError, match="no column 终点点号"):
        read_survey(pp, sp, catalogue.pipe_type("JS"))


# -- map styles --------------------------------------------------------------------------------

def test_pipe_styles_validate_and_colour_by_type(tmp_path):
    import json

    from styles import documents, palette
    from tests.unit.test_styles import evaluate, validate_styles

    # the style palette and the room's catalogue agree
    assert palette.PIPE_COLOURS == {t.code: t.colour for t in catalogue.TYPES}
    ctx = documents.Context(base="http://127.0.0.1:8765", layers={n: {"name": n} for n in (
        "pipe_segments", "pipe_points", "basements")})
    # the district map holds them as groups the client switches on (hidden at first)
    district = documents.build(documents.STYLES["district"], ctx)
    assert district["metadata"]["geotwin:groups"] == ["basements", "pipes"]
    paths = [tmp_path / "district.json", tmp_path / "pipes.json"]
    paths[0].write_text(json.dumps(district, ensure_ascii=False), encoding="utf-8")
    pipes_doc = documents.build(documents.StyleDef("pipes", "地下管线", "Underground utilities", ("pipes",)), ctx)
    paths[1].write_text(json.dumps(pipes_doc, ensure_ascii=False), encoding="utf-8")
    validate_styles(paths)
    assert {"pipes-line", "pipes-manhole", "pipes-label"} <= {layer["id"] for layer in pipes_doc["layers"]}
    assert all(layer["layout"]["visibility"] == "none" for layer in district["layers"][1:])
    got = evaluate(tmp_path, pipes_doc, "pipes-line", "line-color",
                   [{"type_code": "YS", "diameter_mm": 600}, {"type_code": "RQ"}, {"type_code": "??"}], zoom=16)
    # 雨水 #a0522d, 燃气 #d63ad6, an unknown code grey
    assert got == [[160, 82, 45, 1], [214, 58, 214, 1], [128, 128, 128, 1]]
