"""A correction in valid time under a finished supervision run (issue 14): the run says its inputs
changed since, a rerun as known at the run's time reproduces its answer, a rerun now gives the
corrected one."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from land_supervision import engine, runs
from spatial_api import store
from tests.integration.test_supervision_rules import (  # noqa: F401  (world: the rules' hand-built layers)
    BASE, CST, PARCEL_SCHEMA, PARCELS, REF, found, parcel_box, parcel_features, to_4490, world, write_layer)


def _upsert_parcel(conn, layer_name, pid, changes, at):
    props = {**BASE, **PARCELS[pid][0], **changes, "parcel_id": pid}
    rows = store.FeatureRows(rows=np.array([1]), fids=np.array([pid], dtype=object),
                             geometry=np.array([to_4490(parcel_box(pid))], dtype=object),
                             properties=pd.DataFrame([{n: props.get(n) for n, _ in PARCEL_SCHEMA}], dtype=object))
    res = store.write_changeset(conn, store.get_layer(conn, layer_name), rows, mode="upsert", valid_from=at,
                                author="pytest", source="test")
    store.finish_changeset(conn, res.changeset_id, {"changed": res.changed})
    conn.commit()
    return res


def test_a_correction_under_a_run_is_flagged_and_both_answers_reproduce(world, database, conn):
    first = engine.run(database, as_of=REF, layers=world, imagery=False, author="pytest")
    assert "R3_IN" in found(conn, first.run_id)["R3"]  # not started though agreed to
    assert runs.get_run(conn, first.run_id)["inputs_changed_since"] == []
    # an ordinary later change (valid after the run's date) does not touch the run
    later = _upsert_parcel(conn, world["parcels"], "R4_364", {"actual_start": "2026-07-01"},
                           datetime(2026, 7, 1, tzinfo=CST))
    assert runs.get_run(conn, first.run_id)["inputs_changed_since"] == []
    # the officer learns that R3_IN had started on 15 June: recorded now, valid from the run's date
    fix = _upsert_parcel(conn, world["parcels"], "R3_IN", {"actual_start": "2026-06-15"},
                         datetime(2026, 6, 30, tzinfo=CST))
    assert fix.correction and not later.correction
    flagged = runs.get_run(conn, first.run_id)["inputs_changed_since"]
    assert [c["changeset_id"] for c in flagged] == [fix.changeset_id]
    assert first.run_id in {r["id"] for r in runs.list_runs(conn) if r["inputs_changed_since"]}

    started = runs.get_run(conn, first.run_id)["started_at"]
    as_then = engine.run(database, as_of=REF, layers=world, imagery=False, known_at=started)
    as_now = engine.run(database, as_of=REF, layers=world, imagery=False)
    assert found(conn, as_then.run_id) == found(conn, first.run_id)
    now_found = found(conn, as_now.run_id)
    assert "R3_IN" not in now_found["R3"]
    assert {r: s for r, s in now_found.items() if r != "R3"} == \
        {r: s for r, s in found(conn, first.run_id).items() if r != "R3"}
