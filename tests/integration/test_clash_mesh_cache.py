"""The clash check's mesh cache (cim_builder.clash): `add-ifc` writes the registered model's placed
mesh beside its stored copy, and `geotwin cim clash <id>` / POST /twin/clash read it instead of
tessellating the IFC file again — with the acceptance result unchanged (two cuts, 0.300 m). Proved
on real files: with the stored copy replaced by bytes that are no IFC at all, the check still gives
the acceptance report (it can only have come from the cache); a damaged cache is rebuilt."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import shapely

from cim_builder import clash, ifc, mesh_cache
from tests.integration.test_clash import (
    CST,
    PIPES,
    SEG_SCHEMA,
    X0,
    Y0,
    assert_acceptance,
    make_basement_ifc,
    write_layer,
)


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    from spatial_api import db

    tmp = tmp_path_factory.mktemp("clash-cache")
    tag = uuid.uuid4().hex[:8]
    pipes, basements = f"t_pipes_{tag}", f"t_base_{tag}"
    with db.connect(database) as conn:
        write_layer(conn, pipes, "LineString", SEG_SCHEMA, PIPES, "id", datetime(2024, 1, 1, tzinfo=CST))
        write_layer(conn, basements, "Polygon", [("basement_id", "string"), ("depth_m", "number"),
                                                 ("ground_z", "number")],
                    [("DX1", shapely.box(X0 - 22, Y0, X0 - 2, Y0 + 12),
                      {"basement_id": "DX1", "depth_m": 6.0, "ground_z": 30.0})], "basement_id",
                    datetime(2024, 1, 1, tzinfo=CST))
    return {"settings": database, "pipes": pipes, "basements": basements, "tmp": tmp, "tag": tag,
            "ifc": make_basement_ifc(tmp / "basement.ifc")}


def run(env, **kw):
    return clash.check(env["settings"], pipes_layer=env["pipes"], basements_layer=env["basements"], **kw)


def test_registration_writes_the_mesh_and_the_check_reads_it(env):
    mid = f"cache-{env['tag']}"
    store = env["tmp"] / "models"
    info = ifc.register(env["settings"], env["ifc"], model_id=mid, layer=f"none_{env['tag']}", store_dir=store)
    stored = Path(info["stored_path"])
    caches = sorted(store.glob(f"{stored.stem}.clash-*.npz"))
    assert len(caches) == 1
    with np.load(caches[0]) as z:
        tris, start = z["tris"], z["start"]
        assert z["ifc_class"].tolist() == ["IfcSlab"] and z["storey"].tolist() == ["B1"]
    # the slab's mesh in EPSG:4547 + orthometric height: the 20 × 12 × [22, 30] box
    v = tris.reshape(-1, 3)
    np.testing.assert_allclose(v.min(axis=0), [X0, Y0, 22.0], atol=2e-3)
    np.testing.assert_allclose(v.max(axis=0), [X0 + 20, Y0 + 12, 30.0], atol=2e-3)
    assert start.tolist() == [0, len(tris)]
    want = run(env, model=mid)
    assert_acceptance(want)

    # the stored copy is no IFC any more, and nothing is kept in memory: only the cache can answer
    original = stored.read_bytes()
    try:
        stored.write_bytes(b"not an IFC file")
        ifc._ELEMENTS_CACHE.clear()
        got = run(env, model=mid)
        assert_acceptance(got)
        assert [(p["id"], p["clearance_m"]) for p in got["pipes"]] == [(p["id"], p["clearance_m"])
                                                                       for p in want["pipes"]]
    finally:
        stored.write_bytes(original)

    # a damaged cache: the model is placed again from its stored copy and the cache rewritten
    caches[0].write_bytes(b"\x00" * 100)
    ifc._ELEMENTS_CACHE.clear()
    assert_acceptance(run(env, model=mid))
    with np.load(caches[0]) as z:
        np.testing.assert_array_equal(z["tris"], tris)


def test_a_file_placed_on_the_command_line_writes_no_cache(env):
    """A file given with --at (no registration) is the cold path: tessellated, nothing written."""
    before = set(env["tmp"].rglob("*.npz"))
    r = run(env, ifc_path=env["ifc"])  # georeferenced by its IfcMapConversion
    assert_acceptance(r)
    assert set(env["tmp"].rglob("*.npz")) == before


def test_the_cache_key_follows_the_georef(env):
    """Another placement of the same file is another cache file (a moved model is never read from
    the old placement's mesh)."""
    f = ifc.open_ifc(env["ifc"])
    g1 = ifc.read_georef(f, env["ifc"])
    g2 = ifc.read_georef(f, env["ifc"], at=(114.25, 22.72, 30.0))
    a = mesh_cache.mesh_cache_path(env["tmp"] / "x.ifc", "ab" * 32, g1)
    assert a != mesh_cache.mesh_cache_path(env["tmp"] / "x.ifc", "ab" * 32, g2)
    assert a != mesh_cache.mesh_cache_path(env["tmp"] / "x.ifc", "cd" * 32, g1)
    assert a != mesh_cache.mesh_cache_path(env["tmp"] / "x.ifc", "ab" * 32, g1, sep=-3.0)
    assert a == mesh_cache.mesh_cache_path(env["tmp"] / "x.ifc", "ab" * 32, ifc.Georef.from_json(g1.to_json()))
