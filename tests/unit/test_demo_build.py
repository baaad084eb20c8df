"""The demo district builder (data/): files, determinism, history, rasters, planted cases.
No database: everything is read back from the files with pyogrio / rasterio."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import geometry_mask

from data.demo import Manifest, build_files

SEED = 2024
ROOT = Path(__file__).resolve().parents[2]
PARCEL_FIELDS = [
    "parcel_id", "contract_no", "land_use_code", "price_cny", "contract_date", "agreed_start",
    "agreed_completion", "actual_start", "actual_completion", "extension_days", "exemption",
    "payment_due", "payment_received", "far_min", "far_max", "density_max", "green_ratio_min",
    "height_max_m", "setback_m", "gfa_due_m2", "gfa_built_m2", "investment_total_cny",
    "investment_done_cny", "stopped_since", "basement_levels", "approval_ids",
]
DATE_FIELDS = ["contract_date", "agreed_start", "agreed_completion", "actual_start", "actual_completion",
               "payment_due", "payment_received", "stopped_since"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Manifest:
    return build_files(tmp_path_factory.mktemp("demo_a"), size="small", seed=SEED)


@pytest.fixture(scope="module")
def built_again(tmp_path_factory) -> Manifest:
    return build_files(tmp_path_factory.mktemp("demo_b"), size="small", seed=SEED)


def read(m: Manifest, layer: str, which: int = -1) -> pd.DataFrame:
    return pyogrio.read_dataframe(m.layer(layer, which).path)


def as_date(v):
    return None if pd.isna(v) else pd.Timestamp(v).date()


# -- files and layers -----------------------------------------------------------------------------

def test_manifest_round_trips(built):
    m = Manifest.read(built.out_dir / "manifest.json")
    assert m.size == "small" and m.seed == SEED
    assert [x.layer for x in m.layers] == [x.layer for x in built.layers]
    assert m.reference_date == built.reference_date
    assert all(x.mode == "replace" and x.access_level in ("public", "internal", "restricted") for x in m.layers)
    assert {x.layer for x in m.layers} >= {"streets", "communities", "roads", "place_names", "addresses", "land_use",
                                          "farmland", "basic_farmland", "forest", "eco_redline", "approvals",
                                          "parcels", "buildings", "imagery"}


def test_every_file_opens_with_the_counts_of_the_manifest(built):
    for lf in built.layers:
        info = pyogrio.read_info(lf.path)
        assert info["features"] == lf.count > 0, lf.path
        assert list(info["fields"]) == lf.fields, lf.path
        assert info["crs"] == lf.file_crs, lf.path
        df = pyogrio.read_dataframe(lf.path)
        assert df[lf.key].is_unique and df[lf.key].notna().all(), (lf.layer, lf.key)
        assert df.geometry.is_valid.all() and not df.geometry.is_empty.any(), lf.path
        fam = {t.replace("Multi", "") for t in df.geometry.geom_type.unique()}
        assert len(fam) == 1, (lf.layer, fam)


def test_layer_counts_are_sane(built):
    c = {lf.layer: lf.count for lf in built.layers}
    assert c["streets"] == 11
    assert 22 <= c["communities"] <= 80
    assert 2000 <= built.layer("land_use").count <= 12000
    assert 300 <= c["buildings"] <= 20000
    assert c["parcels"] >= 60
    assert c["addresses"] == c["buildings"]
    assert c["place_names"] >= 50 and c["roads"] >= 30
    assert c["approvals"] >= 5 and c["farmland"] > 0 and c["basic_farmland"] > 0 and c["forest"] > 0
    assert c["eco_redline"] > 0
    assert len(built.imagery) >= 2 and c["imagery"] == len(built.imagery)


def test_streets_are_the_eleven_of_the_csv(built):
    shared = ROOT.parent / "shared" / "domain" / "longgang-streets.csv"
    src = shared if shared.exists() else ROOT / "data" / "longgang-streets.csv"
    with open(src, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["in_demo_district"] == "yes"]
    st = read(built, "streets")
    assert sorted(zip(st["code"], st["name"])) == sorted((r["code"], r["name"]) for r in rows)
    # they tile the district: no overlaps, union = the district box
    g = st.geometry.to_numpy()
    box = shapely.box(*built.bbox)
    assert abs(shapely.union_all(g).area - box.area) / box.area < 1e-3
    assert sum(shapely.area(g)) == pytest.approx(box.area, rel=1e-3)
    assert set(st.geometry.geom_type) == {"Polygon"}


def test_communities_nest_in_their_street(built):
    st = read(built, "streets").set_index("code")
    cm = read(built, "communities")
    assert cm["code"].str.fullmatch(r"\d{12}").all()
    assert (cm["code"].str[:9] == cm["street_code"]).all()
    assert cm["name"].str.endswith("社区").all() and cm["name"].is_unique
    for _, r in cm.iterrows():
        assert r.geometry.buffer(-1).within(st.loc[r["street_code"]].geometry)
    assert cm.groupby("street_code").size().min() >= 2


def test_parcels_have_exactly_the_contract_fields_and_real_dates(built):
    info = pyogrio.read_info(built.layer("parcels").path)
    assert list(info["fields"]) == PARCEL_FIELDS
    types = dict(zip(info["fields"], info["ogr_types"]))
    for f in DATE_FIELDS:
        assert types[f] == "OFTDate", f
    assert types["price_cny"] == "OFTReal" and types["basement_levels"] == "OFTInteger64"
    approvals = pyogrio.read_info(built.layer("approvals").path)
    assert dict(zip(approvals["fields"], approvals["ogr_types"]))["approved_on"] == "OFTDate"


def test_land_use_looks_like_a_survey_table(built):
    lu = read(built, "land_use")
    for f in ("bsm", "dlbm", "dlmc", "qsdwdm", "zldwdm", "tbmj"):
        assert f in lu.columns
    classes = json.loads((ROOT.parent / "shared" / "domain" / "landuse-classes.json").read_text(encoding="utf-8")) \
        if (ROOT.parent / "shared" / "domain" / "landuse-classes.json").exists() else None
    if classes:
        known = set(classes["gbt21010_2017"]["level2"]) | set(classes["gbt21010_2017"]["survey_extras"])
        first = set(classes["gbt21010_2017"]["level1"])
        assert all(c in known or c[:2] in first for c in lu["dlbm"])
    assert np.allclose(lu["tbmj"], shapely.area(lu.geometry.to_numpy()), atol=0.02)
    share = lu.groupby(lu["dlbm"].str[:2])["tbmj"].sum() / lu["tbmj"].sum()
    assert share["03"] > 0.1 and share["01"] > 0.02 and share["07"] > 0.05 and share["10"] > 0.05
    # forest sits on the hills, farmland and towns in the valley
    with rasterio.open(built.dem.path) as dem:
        def elev(df):
            p = shapely.point_on_surface(df.geometry.to_numpy())
            return np.array([v[0] for v in dem.sample(zip(shapely.get_x(p), shapely.get_y(p)))])
        assert np.median(elev(lu[lu["dlbm"].str.startswith("03")])) > np.median(elev(lu[lu["dlbm"] == "0701"])) + 40


def test_determinism_same_seed_same_attributes(built, built_again):
    for a, b in zip(built.layers, built_again.layers):
        fa = pyogrio.read_dataframe(a.path)
        fb = pyogrio.read_dataframe(b.path)
        if a.layer == "imagery":  # absolute paths of the COGs differ between the two folders
            fa = fa.drop(columns=["path"])
            fb = fb.drop(columns=["path"])
        pd.testing.assert_frame_equal(pd.DataFrame(fa.drop(columns="geometry")),
                                      pd.DataFrame(fb.drop(columns="geometry")), obj=a.layer)
        assert (shapely.to_wkb(fa.geometry.to_numpy()) == shapely.to_wkb(fb.geometry.to_numpy())).all(), a.layer
    assert built.planted_cases == built_again.planted_cases


def test_two_survey_years_differ_by_the_recorded_counts(built):
    y20 = read(built, "land_use", 0).set_index("bsm")
    y23 = read(built, "land_use", 1).set_index("bsm")
    assert built.layer("land_use", 0).valid_from < built.layer("land_use", 1).valid_from
    common = y20.index.intersection(y23.index)
    cols = ["dlbm", "dlmc", "qsxz", "qsdwdm", "zldwdm", "zldwmc", "tbmj", "kcxs"]
    attr_changed = (y20.loc[common, cols] != y23.loc[common, cols]).any(axis=1)
    geom_changed = ~np.array([a.equals_exact(b, 0) for a, b in zip(y20.loc[common].geometry, y23.loc[common].geometry)])
    changed = int((attr_changed | geom_changed).sum())
    rec = built.land_use_changes
    assert rec["changed"] == changed > 0
    assert rec["unchanged"] == len(common) - changed
    assert rec["removed"] == len(y20.index.difference(y23.index)) > 0
    assert rec["added"] == len(y23.index.difference(y20.index)) > 0
    # farmland turned into construction land somewhere
    moved = y20.loc[common[attr_changed.to_numpy()], "dlbm"].str[:2] + "→" + y23.loc[common[attr_changed.to_numpy()], "dlbm"].str[:2]
    assert any(m.startswith("01→0") and m[-2:] in ("05", "06", "07", "08") for m in moved)


def test_rasters_are_valid_cogs(built):
    from rio_cogeo.cogeo import cog_validate

    for r in built.imagery + [built.dem]:
        ok, errors, _ = cog_validate(str(r.path), quiet=True)
        assert ok, (r.path, errors)
        with rasterio.open(r.path) as ds:
            assert ds.crs.to_epsg() == 4547
            assert ds.overviews(1), r.path
            if r.kind == "imagery":
                assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
                a = ds.read(out_shape=(3, ds.height // 8, ds.width // 8))
                assert 40 < a.mean() < 200 and a.std() > 20
            else:
                assert ds.count == 1 and ds.dtypes[0] == "float32"


def test_dem_has_hills_and_a_flat_valley(built):
    with rasterio.open(built.dem.path) as ds:
        d = ds.read(1)
    assert d.max() - d.min() > 100
    assert d.max() > 300
    assert np.percentile(d, 30) < 60  # the valley floor


def test_imagery_changes_inside_the_construction_parcels(built):
    P = read(built, "parcels").set_index("parcel_id")
    with rasterio.open(built.imagery[0].path) as a, rasterio.open(built.imagery[-1].path) as b:
        A, B, T = a.read().astype(float), b.read().astype(float), a.transform

    def diff(pid):
        m = ~geometry_mask([P.loc[pid].geometry.buffer(-3)], out_shape=A.shape[1:], transform=T)
        return np.abs(A[:, m] - B[:, m]).mean()

    change = [diff(p) for p in built.imagery_changes["parcels"]]
    stable = [diff(p) for p in built.imagery_changes["stable_parcels"]]
    assert len(change) >= 5 and len(stable) >= 5
    assert min(change) > 3 * np.median(stable)
    # consistent with the attributes: started between the two epochs, finished before the last
    for pid in built.imagery_changes["parcels"]:
        r = P.loc[pid]
        assert built.imagery[0].acquired_on < as_date(r["actual_start"]) < built.imagery[-1].acquired_on
        assert as_date(r["actual_completion"]) < built.imagery[-1].acquired_on


# -- planted supervision cases ----------------------------------------------------------------------

def test_planted_cases_hold_under_the_naive_rules(built):
    from data.checks import naive_findings
    from data.demo import verify_planted

    found = naive_findings(built.out_dir)
    assert set(built.planted_cases) == {f"R{i}" for i in range(1, 14)}
    for rule, ids in built.planted_cases.items():
        assert ids, rule
        assert set(ids) <= set(found[rule]), rule
    for rule, ids in built.negative_cases.items():
        assert not set(ids) & set(found[rule]), rule
    assert found == built.expected_findings
    assert verify_planted(built, found) == []
    # plenty of compliant parcels
    flagged = {i for v in found.values() for i in v}
    assert built.layer("parcels").count - len(flagged) >= 40


def test_r7_shenzhen_variant_agrees(built):
    from data.checks import naive_findings, shenzhen_late_completion

    assert shenzhen_late_completion(built.out_dir) == naive_findings(built.out_dir)["R7"]


def test_idle_land_and_the_exemption_independently(built):
    """R4 / R5 computed here from scratch: idle a year (two) past the agreed start, no start
    reported, no Art. 8 exemption; the exempted idle parcel must not be found."""
    P = read(built, "parcels")
    ref = built.reference_date
    idle = []
    for _, r in P.iterrows():
        if pd.isna(r["actual_start"]) and not (isinstance(r["exemption"], str) and r["exemption"]):
            days = (ref - (as_date(r["agreed_start"]) + timedelta(days=int(r["extension_days"])))).days
            if days >= 365:
                idle.append((r["parcel_id"], days))
    r4 = {p for p, _ in idle}
    r5 = {p for p, d in idle if d >= 730}
    assert set(built.planted_cases["R4"]) <= r4 and set(built.planted_cases["R5"]) <= r5
    exempt = P[P["exemption"].notna() & (P["exemption"] != "")]
    assert len(exempt) >= 1
    for _, r in exempt.iterrows():
        assert pd.isna(r["actual_start"])
        assert (ref - as_date(r["agreed_start"])).days >= 365  # idle long enough …
        assert r["parcel_id"] not in r4  # … but exempt
    assert set(exempt["parcel_id"]) <= set(built.negative_cases["R4"])
    # R1 from scratch: due within 30 days, unpaid
    r1 = P[P["payment_received"].isna() & P["payment_due"].notna()]
    r1 = {r["parcel_id"] for _, r in r1.iterrows() if 0 <= (as_date(r["payment_due"]) - ref).days <= 30}
    assert r1 == set(built.planted_cases["R1"])


def test_buildings_and_parcels_geometry_independently(built):
    P = read(built, "parcels").set_index("parcel_id")
    B = read(built, "buildings")
    inb = B[B["parcel_id"].notna()]
    # R8 FAR by hand for the planted parcels
    for pid in built.planted_cases["R8"]:
        bb = inb[inb["parcel_id"] == pid]
        area = P.loc[pid].geometry.area
        far, dens = bb["gfa_m2"].sum() / area, shapely.area(bb.geometry.to_numpy()).sum() / area
        assert far > P.loc[pid, "far_max"] or dens > P.loc[pid, "density_max"]
    # R11: the planted footprint sticks out of its parcel by metres; nothing else does
    out = {}
    for _, b in inb.iterrows():
        d = b.geometry.difference(P.loc[b["parcel_id"]].geometry)
        if d.area > 20:
            out[b["parcel_id"]] = max(out.get(b["parcel_id"], 0), d.area)
    assert set(out) == set(built.planted_cases["R11"])
    # building footprints: gfa = footprint × floors, plausible heights
    assert np.allclose(B["gfa_m2"], shapely.area(B.geometry.to_numpy()) * B["floors"], rtol=1e-3, atol=1)
    assert (B["height_m"] >= B["floors"] * 2.5).all() and B["height_m"].max() < 300
    # R13 by hand: approvals not covered by parcels
    A = read(built, "approvals")
    supplied = shapely.union_all(P.geometry.to_numpy())
    left = shapely.area(shapely.difference(A.geometry.to_numpy(), supplied))
    assert set(A["approval_id"][left > 100]) == set(built.planted_cases["R13"])


def test_addresses_follow_the_hierarchy(built):
    ad = read(built, "addresses")
    st = read(built, "streets")
    assert pyogrio.read_info(built.layer("addresses").path)["crs"] == "EPSG:4490"
    assert set(ad["street"]) <= set(st["name"])
    assert ad["door_number"].str.endswith("号").all() and ad["building"].str.fullmatch(r"\d+栋").all()
    expect = "深圳市龙岗区" + ad["street"] + ad["community"] + ad["door_number"] + ad["building"]
    assert (ad["full_address"] == expect).all()
    assert all(d.startswith(r) for d, r in zip(ad["door_number"], ad["road"]))
    x, y = ad.geometry.x, ad.geometry.y
    assert x.between(114.1, 114.4).all() and y.between(22.6, 22.85).all()
    pn = read(built, "place_names")
    assert {"road", "river", "school", "park", "landmark", "mountain"} <= set(pn["kind"])
    assert set(pn.geometry.geom_type) == {"Point"}


def test_cli_builds_without_loading(tmp_path):
    from typer.testing import CliRunner

    from data.cli import app

    res = CliRunner().invoke(app, ["build", "--size", "small", "--out", str(tmp_path / "d"), "--no-load"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "manifest.json").exists()
    assert "parcels" in res.output
