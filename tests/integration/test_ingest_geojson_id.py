"""GeoJSON feature ids (RFC 7946 "id" member, issue 14 part 3): the id member is the natural
--key, not a property; a property literally named "id" inside ``properties`` stays a property.

Files are written the way users make them: geopandas ``to_file(..., driver="GeoJSON",
ID_FIELD=...)`` (integer or string ids) and ``to_json()`` (the index as string ids)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import shapely

from spatial_api import store
from spatial_api.ingest import IngestError, ingest_vector

STR_IDS = ["P001", "P002", "P003"]
INT_IDS = [17, 18, 19]


def _gdf(ids=None, **extra):
    import geopandas as gpd

    n = 3
    frame = {"name": ["龙岗", "布吉", "横岗"], "area": [1.5, 2.5, 3.5], **extra}
    geoms = [shapely.box(114.20 + i * 0.01, 22.70, 114.205 + i * 0.01, 22.705) for i in range(n)]
    gdf = gpd.GeoDataFrame(frame, geometry=geoms, crs="EPSG:4326")
    if ids is not None:
        gdf.insert(0, "fid_", ids)
    return gdf


def with_id_members(path: Path, ids, **extra) -> Path:
    """A GeoJSON whose features carry ``"id": <ids[i]>`` (GDAL's ID_FIELD keeps ints as numbers)."""
    _gdf(ids, **extra).to_file(path, driver="GeoJSON", ID_FIELD="fid_")
    text = path.read_text(encoding="utf-8")
    assert f'"id": {json.dumps(ids[0])}' in text and '"fid_"' not in text
    return path


def plain(path: Path, **extra) -> Path:
    """The same parcels without any id member."""
    _gdf(**extra).to_file(path, driver="GeoJSON")
    assert '"id"' not in path.read_text(encoding="utf-8") or "id" in extra
    return path


def stored(conn, layer):
    return {f["fid"]: f for f in store.features(conn, layer)}


def _cli(*args: str, database) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEOTWIN_DB_SCHEMA=database.db_schema)
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _existing_layer_without_id(tmp_path, layer, database):
    """A layer loaded before (no key: append) whose schema has no field ``id``."""
    ingest_vector(plain(tmp_path / "before.geojson"), layer=layer, mode="append",
                  valid_from="2023-01-01", settings=database)


@pytest.mark.parametrize("ids", [STR_IDS, INT_IDS], ids=["string", "integer"])
def test_id_members_load_into_an_existing_layer_with_key_id(ids, tmp_path, conn, layer_name, database):
    _existing_layer_without_id(tmp_path, layer_name, database)
    path = with_id_members(tmp_path / "with_ids.geojson", ids)
    s = ingest_vector(path, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    assert s.added == 3 and s.closed == 3
    layer = store.get_layer(conn, layer_name)
    assert layer.key_field == "id" and "id" not in layer.schema
    rows = stored(conn, layer_name)
    assert set(rows) == {str(i) for i in ids}
    assert all("id" not in r["properties"] for r in rows.values())
    assert rows[str(ids[0])]["properties"]["name"] == "龙岗"
    # the same features again (another file, a later date): nothing changes
    again = with_id_members(tmp_path / "again.geojson", ids)
    s2 = ingest_vector(again, layer=layer_name, key="id", valid_from="2024-06-01", settings=database)
    assert (s2.added, s2.changed, s2.closed, s2.unchanged) == (0, 0, 0, 3)
    # and the key is remembered: no --key needed
    s3 = ingest_vector(again, layer=layer_name, valid_from="2024-07-01", settings=database)
    assert (s3.added, s3.changed, s3.closed) == (0, 0, 0)


def test_cli_key_id_on_an_existing_layer(tmp_path, conn, layer_name, database):
    _existing_layer_without_id(tmp_path, layer_name, database)
    path = with_id_members(tmp_path / "with_ids.geojson", STR_IDS)
    ok = _cli("ingest", "vector", str(path), "--layer", layer_name, "--key", "id",
              "--valid-from", "2024-01-01", "--json", database=database)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["ok"] and summary["added"] == 3
    assert set(stored(conn, layer_name)) == set(STR_IDS)
    # geopandas' to_json: the index as string ids "0", "1", "2" — same parcels, other ids
    other = tmp_path / "to_json.geojson"
    other.write_text(_gdf().to_json(), encoding="utf-8")
    assert '"id": "0"' in other.read_text(encoding="utf-8")
    again = _cli("ingest", "vector", str(path), "--layer", layer_name, "--key", "id",
                 "--valid-from", "2024-06-01", "--json", database=database)
    assert again.returncode == 0, again.stdout + again.stderr
    s2 = json.loads(again.stdout)
    assert s2["added"] == s2["changed"] == s2["closed"] == 0 and s2["unchanged"] == 3
    moved = _cli("ingest", "vector", str(other), "--layer", layer_name, "--key", "id",
                 "--valid-from", "2024-07-01", "--json", database=database)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert set(stored(conn, layer_name)) == {"0", "1", "2"}


@pytest.mark.parametrize("ids", [STR_IDS, INT_IDS], ids=["string", "integer"])
def test_first_load_with_key_id_makes_no_id_column(ids, tmp_path, conn, layer_name, database):
    path = with_id_members(tmp_path / "first.geojson", ids)
    s = ingest_vector(path, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    assert s.new_layer and s.added == 3
    layer = store.get_layer(conn, layer_name)
    assert layer.key_field == "id" and list(layer.schema) == ["name", "area"]
    assert set(stored(conn, layer_name)) == {str(i) for i in ids}
    again = ingest_vector(with_id_members(tmp_path / "again.geojson", ids), layer=layer_name,
                          valid_from="2024-06-01", settings=database)
    assert again.added == again.changed == again.closed == 0 and again.unchanged == 3


def test_cli_first_load_and_rerun(tmp_path, conn, layer_name, database):
    path = with_id_members(tmp_path / "first.geojson", INT_IDS)
    ok = _cli("ingest", "vector", str(path), "--layer", layer_name, "--key", "id",
              "--valid-from", "2024-01-01", "--json", database=database)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "id" not in store.get_layer(conn, layer_name).schema
    rerun = _cli("ingest", "vector", str(path), "--layer", layer_name, "--key", "id",
                 "--valid-from", "2024-01-01", "--json", database=database)
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["skipped"]
    assert set(stored(conn, layer_name)) == {"17", "18", "19"}


def test_without_key_the_message_names_the_id_member(tmp_path, conn, layer_name, database):
    _existing_layer_without_id(tmp_path, layer_name, database)
    path = with_id_members(tmp_path / "with_ids.geojson", STR_IDS)
    with pytest.raises(IngestError) as info:
        ingest_vector(path, layer=layer_name, mode="append", valid_from="2024-01-01", settings=database)
    msg = str(info.value)
    assert 'GeoJSON "id" member' in msg and f"layer {layer_name!r}" in msg and "--key id" in msg
    # another key: same message
    with pytest.raises(IngestError, match=r'GeoJSON "id" member.*--key id'):
        ingest_vector(path, layer=layer_name, key="name", valid_from="2024-01-01", settings=database)
    # the command line says it too, and writes nothing
    fail = _cli("ingest", "vector", str(path), "--layer", layer_name, "--mode", "append",
                "--valid-from", "2024-01-01", database=database)
    assert fail.returncode != 0
    text = " ".join(fail.stderr.split())
    assert 'GeoJSON "id" member' in text and "--key id" in text and "Nothing was written" in text
    assert len(store.changesets(conn, layer_name)) == 1


def test_layer_keyed_by_another_field_is_told_how_to_keep_the_ids(tmp_path, conn, layer_name, database):
    ingest_vector(plain(tmp_path / "before.geojson"), layer=layer_name, key="name",
                  valid_from="2023-01-01", settings=database)
    path = with_id_members(tmp_path / "with_ids.geojson", INT_IDS)
    with pytest.raises(IngestError) as info:
        ingest_vector(path, layer=layer_name, valid_from="2024-01-01", settings=database)
    msg = str(info.value)
    assert 'GeoJSON "id" member' in msg and "keyed by 'name'" in msg and "--evolve-schema" in msg
    s = ingest_vector(path, layer=layer_name, valid_from="2024-01-01", evolve_schema=True, settings=database)
    assert s.changed == 3 and store.get_layer(conn, layer_name).schema["id"] == "integer"
    assert stored(conn, layer_name)["布吉"]["properties"]["id"] == 18


def test_a_property_named_id_is_still_a_property(tmp_path, conn, layer_name, database):
    path = plain(tmp_path / "prop_id.geojson", id=["A1", "A2", "A3"])
    s = ingest_vector(path, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    assert s.added == 3
    layer = store.get_layer(conn, layer_name)
    assert layer.schema["id"] == "string" and layer.key_field == "id"
    rows = stored(conn, layer_name)
    assert set(rows) == {"A1", "A2", "A3"} and rows["A2"]["properties"]["id"] == "A2"
    again = ingest_vector(plain(tmp_path / "again.geojson", id=["A1", "A2", "A3"]), layer=layer_name,
                          valid_from="2024-06-01", settings=database)
    assert again.unchanged == 3 and again.added == again.changed == again.closed == 0


def test_id_member_and_property_id_side_by_side(tmp_path, conn, layer_name, database):
    """Both present: the member is the key, the property keeps its own values."""
    path = with_id_members(tmp_path / "both.geojson", STR_IDS, id=["X", "Y", "Z"])
    ingest_vector(path, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    rows = stored(conn, layer_name)
    assert set(rows) == set(STR_IDS)
    assert [rows[i]["properties"]["id"] for i in STR_IDS] == ["X", "Y", "Z"]


def test_a_layer_with_an_id_property_gets_it_from_the_member(tmp_path, conn, layer_name, database):
    """Layers loaded before this fix hold the string id member as a property "id": it stays filled."""
    ingest_vector(plain(tmp_path / "old.geojson", id=STR_IDS), layer=layer_name, key="id",
                  valid_from="2023-01-01", settings=database)
    path = with_id_members(tmp_path / "with_ids.geojson", STR_IDS)
    s = ingest_vector(path, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    assert (s.added, s.changed, s.closed, s.unchanged) == (0, 0, 0, 3)
    s2 = ingest_vector(path, layer=layer_name, valid_from="2024-06-01", settings=database)
    assert (s2.added, s2.changed, s2.closed) == (0, 0, 0)


def test_key_id_errors_name_the_member(tmp_path, layer_name, database):
    dup = with_id_members(tmp_path / "dup.geojson", [5, 5, 6])
    with pytest.raises(IngestError, match=r"key id='5' appears in rows 1, 2"):
        ingest_vector(dup, layer=layer_name, key="id", settings=database)
    missing = tmp_path / "missing.geojson"
    fc = json.loads(with_id_members(tmp_path / "m.geojson", STR_IDS).read_text(encoding="utf-8"))
    del fc["features"][1]["id"]
    missing.write_text(json.dumps(fc), encoding="utf-8")
    with pytest.raises(IngestError, match=r'row 2: .*no GeoJSON "id" member'):
        ingest_vector(missing, layer=layer_name, key="id", settings=database)


def test_a_rejected_row_is_known_by_its_id_member(tmp_path, conn, layer_name, database):
    """Replace mode: a row left out (no geometry) keeps its stored feature, named by its id member."""
    first = with_id_members(tmp_path / "first.geojson", INT_IDS)
    ingest_vector(first, layer=layer_name, key="id", valid_from="2024-01-01", settings=database)
    fc = json.loads(first.read_text(encoding="utf-8"))
    fc["features"][1]["geometry"] = None
    broken = tmp_path / "broken.geojson"
    broken.write_text(json.dumps(fc), encoding="utf-8")
    s = ingest_vector(broken, layer=layer_name, valid_from="2024-06-01", settings=database)
    assert s.rejected_rows == [{"row": 2, "reason": s.rejected_rows[0]["reason"], "key": "18"}]
    assert s.closed == 0 and set(stored(conn, layer_name)) == {"17", "18", "19"}
