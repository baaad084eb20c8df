"""SensorThings API DataArray create (18-088 §14.3.2, ``POST /sta/v1.1/CreateObservations``): one COPY
for all rows, per row a self link or "error", the maintained stream statistics and aggregates
counting them, structural mistakes refused whole (400 naming the place), and a round trip through
the read side."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from sensing.sta import events
from spatial_api import db
from tests.fixtures.sta import MEASUREMENT, ROOT, UOM, client, conn, staff  # noqa: F401  (fixtures)

POINT = {"type": "Point", "coordinates": [114.05, 22.63]}


def household(client, staff) -> tuple[int, int, int]:
    """A Thing with a Location and two Datastreams: (thing, datastream 1, datastream 2)."""
    def ds(name):
        return {"name": name, "description": "d", "observationType": MEASUREMENT, "unitOfMeasurement": UOM,
                "Sensor": {"name": "meter", "description": "d", "encodingType": "application/pdf", "metadata": "m"},
                "ObservedProperty": {"name": "volume", "definition": "http://example.org/volume", "description": "d"}}
    resp = client.post(f"{ROOT}/Things", headers=staff, json={
        "name": f"da-{uuid.uuid4().hex[:8]}", "description": "d",
        "Locations": [{"name": "flat", "description": "d", "encodingType": "application/geo+json", "location": POINT}],
        "Datastreams": [ds("usage"), ds("battery")]})
    assert resp.status_code == 201, resp.text
    thing = resp.json()["@iot.id"]
    return thing, *_streams(client, thing)


def _streams(client, thing):
    with db.connect(client.app.state.settings, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT id FROM sta_datastreams WHERE thing_id = %s ORDER BY id", (thing,))]


def test_create_observations_from_data_arrays(client, staff, conn):
    _, ds1, ds2 = household(client, staff)
    foi = client.post(f"{ROOT}/FeaturesOfInterest", headers=staff, json={
        "name": "meter", "description": "d", "encodingType": "application/geo+json",
        "feature": {"type": "Point", "coordinates": [114.0501, 22.6301]}}).json()["@iot.id"]
    seen: list[events.Change] = []
    unsubscribe = events.subscribe(seen.append)
    try:
        resp = client.post(f"{ROOT}/CreateObservations", headers=staff, json=[
            {"Datastream": {"@iot.id": ds1}, "components": ["phenomenonTime", "result", "FeatureOfInterest/id"],
             "dataArray@iot.count": 4,
             "dataArray": [["2026-11-05T00:00:00Z", 1.5, foi],
                           ["2026-11-05T00:30:00Z", 2.5, foi],
                           ["not a time", 1, foi],
                           ["2026-11-05T01:00:00Z", 4, 987654321]]},
            {"Datastream": {"@iot.id": ds2}, "components": ["phenomenonTime", "resultTime", "result"],
             "dataArray": [["2026-10-31T23:00:00Z", "2026-10-31T23:00:05Z", 97],
                           ["2026-11-01T00:00:00Z", None, 96]]},
        ])
    finally:
        unsubscribe()
    assert resp.status_code == 201, resp.text
    links = resp.json()
    assert links[2:4] == ["error", "error"]
    ids = [int(link.rsplit("(", 1)[1].rstrip(")")) for k, link in enumerate(links) if k not in (2, 3)]
    assert all(links[k].startswith("http") and f"{ROOT}/Observations(" in links[k] for k in (0, 1, 4, 5))
    rows = conn.execute("SELECT stream_id, phenomenon_time_start::text, result_time::text, result_number, "
                        "feature_of_interest_id FROM sta_observations WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
    gen_foi = rows[2][4]
    assert gen_foi != foi  # made from the Thing's Location for the rows without one
    assert rows == [(ds1, "2026-11-05 00:00:00+00", None, 1.5, foi), (ds1, "2026-11-05 00:30:00+00", None, 2.5, foi),
                    (ds2, "2026-10-31 23:00:00+00", "2026-10-31 23:00:05+00", 97.0, gen_foi),
                    (ds2, "2026-11-01 00:00:00+00", None, 96.0, gen_foi)]
    # the maintained statistics and aggregates count them (two partitions: October and November)
    assert conn.execute("SELECT stream_id, observations, last_result_number FROM sta_stream_stats "
                        "WHERE stream_id = ANY(%s) ORDER BY stream_id", ([ds1, ds2],)).fetchall() == \
        [(ds1, 2, 2.5), (ds2, 2, 96.0)]
    assert conn.execute("SELECT n, sum FROM sta_aggregates WHERE stream_id = %s AND period = 'hour'",
                        (ds1,)).fetchall() == [(2, 4.0)]
    assert sorted(c.id for c in seen if c.set_name == "Observations") == sorted(ids)
    # round trip through the read side
    got = client.get(urlsplit(links[0]).path)
    assert got.status_code == 200, got.text
    assert got.json()["result"] == 1.5 and got.json()["phenomenonTime"] == "2026-11-05T00:00:00Z"


@pytest.mark.parametrize("block,member", [
    ({"components": ["result"], "dataArray": [[1]]}, "[0].Datastream"),
    ({"Datastream": {"@iot.id": 987654321}, "components": ["result"], "dataArray": [[1]]}, "[0].Datastream.@iot.id"),
    ({"Datastream": "$ds", "components": ["result", "colour"], "dataArray": [[1, 2]]}, "[0].components"),
    ({"Datastream": "$ds", "components": ["phenomenonTime"], "dataArray": [["2026-11-05T00:00:00Z"]]},
     "[0].components"),
    ({"Datastream": "$ds", "components": ["phenomenonTime", "result"], "dataArray": [["2026-11-05T00:00:00Z", 1], [2]]},
     "[0].dataArray[1]"),
    ({"Datastream": "$ds", "components": ["result"], "dataArray": [[1]], "extra": 1}, "[0].extra"),
])
def test_structural_mistakes_refuse_the_whole_request(client, staff, conn, block, member):
    _, ds, _ = household(client, staff)
    if block.get("Datastream") == "$ds":
        block = {**block, "Datastream": {"@iot.id": ds}}
    before = conn.execute("SELECT count(*) FROM sta_observations").fetchone()[0]
    good = {"Datastream": {"@iot.id": ds}, "components": ["result"], "dataArray": [[1]]}
    resp = client.post(f"{ROOT}/CreateObservations", headers=staff, json=[good, block])
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"].startswith(member.replace("[0]", "[1]", 1) + ":")
    assert conn.execute("SELECT count(*) FROM sta_observations").fetchone()[0] == before
