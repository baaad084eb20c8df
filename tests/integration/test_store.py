"""The versioned layer store on the real PostGIS: versions, closing, as-of, known-at, diff."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon

from spatial_api import store
from spatial_api.store.types import StoreError

CST = timezone(timedelta(hours=8))
T2020 = datetime(2020, 12, 31, tzinfo=CST)
T2023 = datetime(2023, 12, 31, tzinfo=CST)
T2025 = datetime(2025, 6, 30, tzinfo=CST)


def square(x0: float, y0: float, d: float = 0.001) -> Polygon:
    return Polygon([(x0, y0), (x0 + d, y0), (x0 + d, y0 + d), (x0, y0 + d)])


def rows(features: dict[str, tuple[Polygon, dict]]) -> store.FeatureRows:
    keys = list(features)
    return store.FeatureRows(
        rows=np.arange(1, len(keys) + 1),
        fids=np.array(keys, dtype=object),
        geometry=np.array([features[k][0] for k in keys], dtype=object),
        properties=pd.DataFrame([features[k][1] for k in keys]),
    )


def write(conn, name, feats, *, mode="replace", at=T2020, new=False):
    if new:
        store.create_layer(conn, store.Layer(name=name, geometry_family="Polygon", key_field="code",
                                             properties=[{"name": "code", "type": "string"},
                                                         {"name": "dlbm", "type": "string"}]),
                           with_partition=False)
    layer = store.get_layer(conn, name)
    res = store.write_changeset(conn, layer, rows(feats), mode=mode, valid_from=at, author="pytest",
                                source="test", new_layer=new)
    conn.commit()
    return res


V1 = {f"P{i}": (square(114.25 + i * 0.002, 22.72), {"code": f"P{i}", "dlbm": "0101"}) for i in range(6)}


def test_first_load_then_replace_keeps_unchanged_versions(conn, layer_name):
    r1 = write(conn, layer_name, V1, new=True)
    assert (r1.added, r1.current_total) == (6, 6)
    v2 = dict(V1)
    v2["P1"] = (V1["P1"][0], {"code": "P1", "dlbm": "0701"})  # class changed
    v2["P2"] = (square(114.2541, 22.7201), V1["P2"][1])  # geometry changed
    del v2["P5"]  # removed
    v2["P9"] = (square(114.27, 22.73), {"code": "P9", "dlbm": "0601"})  # added
    r2 = write(conn, layer_name, v2, at=T2023)
    assert (r2.added, r2.changed, r2.unchanged, r2.closed) == (1, 2, 3, 1)
    assert r2.current_total == 6

    # unchanged features keep their first version
    hist = store.feature_history(conn, layer_name, "P0")
    assert len(hist) == 1 and hist[0]["valid_to"] is None
    hist = store.feature_history(conn, layer_name, "P1")
    assert [h["properties"]["dlbm"] for h in hist] == ["0101", "0701"]
    assert hist[0]["valid_to"] == T2023 and hist[0]["closed_by"] == r2.changeset_id
    removed = store.feature_history(conn, layer_name, "P5")
    assert len(removed) == 1 and removed[0]["valid_to"] == T2023

    # as-of queries
    assert store.count(conn, layer_name, at=T2020 + timedelta(days=1)) == 6
    old = {f["fid"]: f for f in store.features(conn, layer_name, at=datetime(2022, 1, 1, tzinfo=CST))}
    assert set(old) == {f"P{i}" for i in range(6)} and old["P1"]["properties"]["dlbm"] == "0101"
    now = {f["fid"] for f in store.features(conn, layer_name)}
    assert now == {"P0", "P1", "P2", "P3", "P4", "P9"}
    assert store.count(conn, layer_name, at=datetime(2019, 1, 1, tzinfo=CST)) == 0

    d = store.diff(conn, layer_name, datetime(2021, 1, 1, tzinfo=CST), datetime(2024, 1, 1, tzinfo=CST))
    assert (d.added, sorted(d.changed), d.removed) == (["P9"], ["P1", "P2"], ["P5"])
    assert store.diff(conn, layer_name, T2023, T2023).counts() == {"added": 0, "changed": 0, "removed": 0}

    cs = store.changesets(conn, layer_name)
    assert [c["id"] for c in cs] == [r1.changeset_id, r2.changeset_id]


def test_known_at_sees_the_store_as_it_was(conn, layer_name):
    r1 = write(conn, layer_name, V1, new=True)
    v2 = {k: v for k, v in V1.items() if k != "P3"}
    write(conn, layer_name, v2, at=T2023)
    # As known right after the first changeset, P3 was still current even for a 2024 date.
    assert store.count(conn, layer_name, at=T2025, known_at=r1.recorded_at) == 6
    assert store.count(conn, layer_name, at=T2025) == 5


def test_upsert_closes_nothing_and_append_refuses_existing_keys(conn, layer_name):
    write(conn, layer_name, V1, new=True)
    r = write(conn, layer_name, {"P0": (square(114.3, 22.7), V1["P0"][1]),
                                 "Q1": (square(114.31, 22.7), {"code": "Q1", "dlbm": "1101"})},
              mode="upsert", at=T2023)
    assert (r.added, r.changed, r.closed, r.current_total) == (1, 1, 0, 7)
    with pytest.raises(StoreError, match="row 1: a feature with key 'P0' already exists"):
        write(conn, layer_name, {"P0": V1["P0"]}, mode="append", at=T2025)
    conn.rollback()
    assert store.count(conn, layer_name) == 7


T2024 = datetime(2024, 6, 30, tzinfo=CST)


def _history(conn, layer, fid, known_at=None):
    """(valid_from, valid_to, dlbm) of the versions believed (as known at ``known_at``)."""
    out = []
    for v in store.feature_history(conn, layer, fid):
        believed = v["superseded_at"] is None if known_at is None else (
            v["tx_from"] <= known_at and (v["superseded_at"] is None or v["superseded_at"] > known_at))
        if believed:
            open_then = v["valid_to"] is None or (known_at is not None and v["tx_to"] > known_at)
            out.append((v["valid_from"], None if open_then else v["valid_to"], v["properties"]["dlbm"]))
    return sorted(out, key=lambda r: r[0])


def test_a_late_record_is_added_from_its_valid_date(conn, layer_name):
    write(conn, layer_name, V1, new=True, at=T2023)
    before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    conn.commit()
    late = {"L1": (square(114.40, 22.70), {"code": "L1", "dlbm": "0601"})}
    r = write(conn, layer_name, late, mode="upsert", at=T2020)
    assert (r.added, r.changed, r.closed, r.correction) == (1, 0, 0, True)
    assert [f["fid"] for f in store.features(conn, layer_name, at=datetime(2021, 6, 1, tzinfo=CST))] == ["L1"]
    assert "L1" not in [f["fid"] for f in store.features(conn, layer_name, at=datetime(2021, 6, 1, tzinfo=CST),
                                                          known_at=before)]
    assert store.count(conn, layer_name) == 7


def test_a_correction_splits_the_history_at_its_date(conn, layer_name):
    write(conn, layer_name, V1, new=True, at=T2020)
    v2 = dict(V1)
    v2["P1"] = (V1["P1"][0], {"code": "P1", "dlbm": "0701"})
    write(conn, layer_name, v2, at=T2025)
    believed_before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    conn.commit()
    # surveyed again: from mid-2024 P1 was already 1001 (the 2025 change stays as recorded)
    r = write(conn, layer_name, {"P1": (V1["P1"][0], {"code": "P1", "dlbm": "1001"})}, mode="upsert", at=T2024)
    assert (r.added, r.changed, r.closed, r.correction) == (0, 1, 0, True)
    assert _history(conn, layer_name, "P1") == [(T2020, T2024, "0101"), (T2024, T2025, "1001"), (T2025, None, "0701")]
    # what was believed before the correction is still there
    assert _history(conn, layer_name, "P1", known_at=believed_before) == [(T2020, T2025, "0101"),
                                                                           (T2025, None, "0701")]
    mid = datetime(2024, 9, 1, tzinfo=CST)
    now_says = {f["fid"]: f["properties"]["dlbm"] for f in store.features(conn, layer_name, at=mid)}
    then_said = {f["fid"]: f["properties"]["dlbm"] for f in store.features(conn, layer_name, at=mid,
                                                                            known_at=believed_before)}
    assert now_says["P1"] == "1001" and then_said["P1"] == "0101"
    assert store.diff(conn, layer_name, datetime(2024, 1, 1, tzinfo=CST), mid).changed == ["P1"]
    assert store.diff(conn, layer_name, datetime(2024, 1, 1, tzinfo=CST), mid, known_at=believed_before).changed == []
    assert store.count(conn, layer_name) == 6  # the current state is untouched


def test_a_correction_of_the_current_version_and_a_removal_in_the_past(conn, layer_name):
    write(conn, layer_name, V1, new=True, at=T2020)
    write(conn, layer_name, {"Q1": (square(114.5, 22.7), {"code": "Q1", "dlbm": "0601"})}, mode="upsert", at=T2025)
    # P2's current version (since 2020) changed from 2024: an ordinary close at 2024
    write(conn, layer_name, {"P2": (V1["P2"][0], {"code": "P2", "dlbm": "0301"})}, mode="upsert", at=T2024)
    assert _history(conn, layer_name, "P2") == [(T2020, T2024, "0101"), (T2024, None, "0301")]
    # P3 was removed from 2024 (recorded now): it ends there
    layer = store.get_layer(conn, layer_name)
    res = store.close_features(conn, layer, ["P3"], valid_from=T2024, author="pytest", source="test")
    conn.commit()
    assert res.closed == 1 and res.correction
    assert _history(conn, layer_name, "P3") == [(T2020, T2024, "0101")]
    assert store.count(conn, layer_name) == 6  # P0..P5 less P3, plus Q1


def test_a_removal_inside_a_closed_version_leaves_later_versions(conn, layer_name):
    write(conn, layer_name, V1, new=True, at=T2020)
    v2 = dict(V1)
    v2["P4"] = (V1["P4"][0], {"code": "P4", "dlbm": "0701"})
    write(conn, layer_name, v2, at=T2025)
    layer = store.get_layer(conn, layer_name)
    store.close_features(conn, layer, ["P4"], valid_from=T2023, author="pytest", source="test")
    conn.commit()
    assert _history(conn, layer_name, "P4") == [(T2020, T2023, "0101"), (T2025, None, "0701")]
    assert "P4" not in [f["fid"] for f in store.features(conn, layer_name, at=T2024)]
    # a replace valid from 2024 without P0: P0 ends at 2024, the rest as they were then
    later = {k: v for k, v in V1.items() if k not in ("P0", "P4")}
    r = write(conn, layer_name, later, at=T2024)
    assert (r.added, r.changed, r.closed, r.correction) == (0, 0, 1, True)
    assert _history(conn, layer_name, "P0") == [(T2020, T2024, "0101")]



def test_derived_columns_follow_the_geometry(conn, layer_name):
    write(conn, layer_name, V1, new=True)
    part = store.partition_name(layer_name)
    x, y = conn.execute(f"SELECT ST_X(ST_Centroid(geom_3857)), ST_Y(ST_Centroid(geom_3857)) "
                        f"FROM {part} WHERE fid = 'P0'").fetchone()
    # Web Mercator of (114.2505, 22.7205), computed independently with pyproj
    from pyproj import Transformer

    ex, ey = Transformer.from_crs(4490, 3857, always_xy=True).transform(114.2505, 22.7205)
    assert (x, y) == (pytest.approx(ex, abs=0.01), pytest.approx(ey, abs=0.01))
    idx = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (part,))}
    assert any("gist (geom_3857)" in i for i in idx) and any("gist (geom)" in i for i in idx)


def test_orphan_of_a_failed_first_load_is_cleaned_and_live_partitions_never_are(conn, layer_name):
    part = store.partition_name(layer_name)
    # what a crash between staging and attaching leaves: a filled, unattached table
    conn.execute(f"CREATE TABLE {part} (LIKE features INCLUDING DEFAULTS)")
    conn.commit()
    r = write(conn, layer_name, V1, new=True)  # the next first load removes it and succeeds
    assert r.added == 6 and store.count(conn, layer_name) == 6
    assert store.drop_orphan_partition(layer_name, conn=conn) is False  # attached: untouched
    conn.commit()
    assert store.count(conn, layer_name) == 6


def test_first_load_indexes_are_the_parents(conn, layer_name):
    write(conn, layer_name, V1, new=True)
    part = store.partition_name(layer_name)
    parent = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'features'::regclass").fetchone()[0]
    attached = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
        "WHERE x.indrelid = %s::regclass", (part,)).fetchone()[0]
    total = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", (part,)).fetchone()[0]
    assert parent == attached == total == 5  # each built once, none duplicated
