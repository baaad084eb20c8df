"""The demo district's underground (data/_pipes.py): the utility network along the roads and the
basements, on the small district. No database: the network in memory and its survey files read
back with pyogrio and the readers / checks of ``geotwin ingest pipes``."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from data import _pipes, _world
from data._config import SIZES
from data.checks import network_problems
from data.demo import Manifest
from data.demo import build_files

SEED = 2024


def _world_for(seed: int):
    w = _world.make_world(SIZES["small"], seed)
    _world.make_admin(w)
    _world.make_roads(w)
    return w


@pytest.fixture(scope="module")
def world():
    return _world_for(SEED)


@pytest.fixture(scope="module")
def network(world):
    return _pipes.make_network(world, "small")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_files(tmp_path_factory.mktemp("demo_pipes"), size="small", seed=SEED)


def test_same_seed_same_network(world, network):
    again = _pipes.make_network(_world_for(SEED), "small")
    for code, n in network.types.items():
        m = again.types[code]
        assert np.array_equal(n.ids, m.ids) and np.array_equal(n.x, m.x) and np.array_equal(n.y, m.y)
        assert np.array_equal(n.a, m.a) and np.array_equal(n.start_depth, m.start_depth)
        assert np.array_equal(n.end_depth, m.end_depth) and np.array_equal(n.height, m.height)


def test_another_seed_another_network(network):
    other = _pipes.make_network(_world_for(SEED + 1), "small")
    assert other.counts() != network.counts()


def test_counts_per_type_on_the_small_district(network):
    counts = network.counts()
    assert list(counts) == ["TX", "RQ", "JS", "DL", "YS", "WS"]
    total = sum(c["segments"] for c in counts.values())
    assert 1200 <= total <= 3000, counts
    for code, c in counts.items():
        assert c["segments"] >= 150, (code, c)
    # water and both drains run along every road the survey covers; gas, power, telecom on part
    assert counts["JS"]["segments"] > counts["RQ"]["segments"]
    assert counts["YS"]["segments"] > counts["TX"]["segments"]


def test_storm_drains_grow_downstream_and_fall(network):
    n = network.types["YS"]
    d_in = np.zeros(n.x.size)
    np.maximum.at(d_in, n.b, n.height)
    assert (n.height >= d_in[n.a]).all()
    assert len(np.unique(n.height)) >= 4 and n.height.min() == 300
    z0, z1 = n.axis_z()
    run = np.hypot(n.x[n.b] - n.x[n.a], n.y[n.b] - n.y[n.a])
    assert ((z0 - z1) >= np.maximum(_pipes.MIN_SLOPE * run - 0.01, 0.01) - 1e-9).all()
    # one way out of every manhole; the outfalls have none
    outs = np.bincount(n.a, minlength=n.x.size)
    assert outs.max() == 1 and (outs[n.outlet] == 0).all() and n.outlet.sum() >= 1


def test_types_keep_to_their_place_in_the_road(network):
    g = network.graph
    for code in ("TX", "DL"):  # under the sidewalks, on opposite sides
        n = network.types[code]
        st = n.edge >= 0
        d = shapely.distance(shapely.points(n.x[st], n.y[st]), g.geom[n.edge[st]])
        assert np.median(d / g.hw[n.edge[st]]) == pytest.approx(0.8, abs=0.1)
    ys, ws = network.types["YS"], network.types["WS"]
    for n in (ys, ws):  # drains under the carriageway
        st = n.edge >= 0
        d = shapely.distance(shapely.points(n.x[st], n.y[st]), g.geom[n.edge[st]])
        assert (d / g.hw[n.edge[st]] < 0.4).all()


def test_depths_are_customary(network):
    for code, (lo, hi) in {"TX": (0.7, 3.0), "RQ": (1.0, 4.0), "JS": (1.2, 5.0), "DL": (1.0, 5.0)}.items():
        d = network.types[code].depth
        assert d.min() == pytest.approx(lo) and d.max() <= hi and np.median(d) < lo + 0.3, code
    for code in ("YS", "WS"):
        d = network.types[code].depth
        assert 1.8 <= d.min() and d.max() <= 12.0 and np.median(d) < 4.5, code


def test_the_generator_finds_nothing_implausible(network):
    assert _pipes.problems(network) == []


def test_survey_files_in_the_cjj61_shape(built):
    surveys = {t["code"]: t for t in built.pipe_surveys()}
    assert set(surveys) == {"JS", "YS", "WS", "RQ", "DL", "TX"}
    pts = pyogrio.read_dataframe(surveys["YS"]["points"])
    assert pyogrio.read_info(surveys["YS"]["points"])["crs"] == "EPSG:4547"
    assert list(pts.columns[:6]) == ["物探点号", "地面高程", "埋深", "特征", "附属物", "井深"]
    assert pts["物探点号"].str.match(r"^YS\d{4}$").all() and pts["物探点号"].is_unique
    assert set(pts["附属物"]) == {"检查井"} and {"三通", "出水口"} <= set(pts["特征"])
    seg = pd.read_csv(surveys["YS"]["segments"], encoding="utf-8")
    assert list(seg.columns) == ["起点点号", "终点点号", "起点埋深", "终点埋深", "管径", "材质", "埋设方式", "权属单位",
                                 "埋设日期"]
    assert set(seg["材质"]) == {"HDPE双壁波纹管", "钢筋混凝土管"}
    dl = pd.read_csv(surveys["DL"]["segments"], encoding="utf-8")
    assert set(dl["断面尺寸"]) <= {"800×600", "600×400"} and set(dl["埋设方式"]) == {"排管"}
    js = pd.read_csv(surveys["JS"]["segments"], encoding="utf-8")
    assert js["管径"].max() >= 500 and js["管径"].min() <= 200 and {"球墨铸铁管", "PE"} == set(js["材质"])
    assert built.underground["segments"] == sum(t["segments_count"] for t in surveys.values())


def test_built_network_passes_the_ingestion_checks(built):
    counts, problems = network_problems(Manifest.read(built.out_dir))
    assert problems == []
    assert counts["雨水"]["manholes"] == counts["雨水"]["points"]


def test_the_checks_catch_an_uphill_drain(built, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(built.out_dir, copy)
    t = next(x for x in built.pipe_surveys() if x["code"] == "WS")
    path = copy / t["segments"].relative_to(built.out_dir)
    seg = pd.read_csv(path, encoding="utf-8", dtype={"起点埋深": float, "终点埋深": float})
    seg.loc[3, "终点埋深"] = seg.loc[3, "起点埋深"] - 1.0  # the end 1 m shallower on flat ground: uphill
    seg.to_csv(path, index=False, encoding="utf-8")
    _, problems = network_problems(Manifest.read(copy))
    sid = f"{seg.loc[3, '起点点号']}-{seg.loc[3, '终点点号']}"
    assert any(p.startswith(f"污水 {sid}:") and "uphill" in p for p in problems), problems[:5]


def test_basements_under_large_buildings(built):
    b = pyogrio.read_dataframe(built.layer("basements").path)
    bld = pyogrio.read_dataframe(built.layer("buildings").path)
    assert 10 <= len(b) and b["basement_id"].is_unique
    assert set(b["use"]) <= set(_pipes.BASEMENT_USES) and b["levels"].between(1, 3).all()
    assert b["depth_m"].between(4.0, 12.0).all()
    joined = b.merge(bld[["building_id", "floors", "use", "geometry"]], on="building_id", suffixes=("", "_b"))
    assert len(joined) == len(b)
    assert ((joined["floors"] >= 10) | joined["use_b"].isin(["commercial", "office"])).all()
    foot = joined["geometry_b"].to_numpy()
    # under the building: a garage reaches at most 8 m beyond the footprint, a plant room stays inside
    assert shapely.covers(shapely.buffer(foot, 8.01, join_style="mitre"), joined["geometry"].to_numpy()).all()
    assert not shapely.overlaps(b.geometry.to_numpy()[:, None], b.geometry.to_numpy()[None, :]).any()
