"""SensorThings API $batch as multipart/mixed (OGC 18-088 §11.2, OData 4.0 Part 1 §11.7; FROST-Server
where the standard is silent): GETs, change sets in one transaction with $<Content-ID> references,
a failing change set leaving nothing, GETs and change sets mixed, the batch's credentials only,
the 400s naming the part — and the standard's own batch example. Bodies are written as a client
writes them (CRLF lines, UTF-8 bodies); responses are taken apart with Python's email parser."""

from __future__ import annotations

import json
import uuid
from email import policy
from email.parser import BytesParser

import pytest

from tests.fixtures.sta import MEASUREMENT, ROOT, UOM, changes, client, conn  # noqa: F401  (fixtures)

BOUNDARY = "batch_36522ad7-fc75-4b56-8c71-56071383e77b"
CHANGESET = "changeset_77162fcd-b8da-41ac-a9f8-9357efbbd"
SENSOR = {"name": "meter", "description": "d", "encodingType": "application/pdf", "metadata": "https://example.org/m"}
PROP = {"name": "volume", "definition": "http://example.org/volume", "description": "d"}


def tag() -> str:
    return uuid.uuid4().hex[:8]


def datastream(**links):
    return {"name": "usage", "description": "d", "observationType": MEASUREMENT, "unitOfMeasurement": UOM, **links}


def request_part(line: str, body=None, content_id: str | None = None, headers: tuple[str, ...] = ()) -> str:
    """One application/http part (without its delimiter line)."""
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        head.append(f"Content-ID: {content_id}")
    req = [line, "Host: host", *headers]
    text = body if isinstance(body, str) or body is None else json.dumps(body, ensure_ascii=False)
    if text is not None:
        req.append("Content-Type: application/json")
    return "\r\n".join(head) + "\r\n\r\n" + "\r\n".join(req) + "\r\n\r\n" + (text or "")


def changeset(*parts: str, boundary: str = CHANGESET) -> str:
    return (f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
            + "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--")


def mixed(*parts: str, boundary: str = BOUNDARY) -> bytes:
    return ("".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n").encode()


def post(client, body: bytes, headers: dict | None = None, boundary: str = BOUNDARY):
    return client.post(f"{ROOT}/$batch", content=body,
                       headers={"Content-Type": f"multipart/mixed; boundary={boundary}", **(headers or {})})


def responses(resp) -> list:
    """The batch response taken apart: per part a dict (status, content_id, headers, body) or, for a
    change set, the list of its responses' dicts."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("multipart/mixed; boundary=")
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + resp.headers["content-type"].encode() + b"\r\n\r\n" + resp.content)
    assert msg.is_multipart() and not msg.defects, msg.defects

    def one(part) -> dict:
        assert part.get_content_type() == "application/http"
        assert part["Content-Transfer-Encoding"] == "binary"
        raw = part.get_payload(decode=True)
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version == "HTTP/1.1"
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
        assert int(headers["content-length"]) == len(body)
        return {"status": int(status), "content_id": part.get("Content-ID"), "headers": headers,
                "body": json.loads(body) if body else None}

    out = []
    for part in msg.iter_parts():
        if part.is_multipart():
            assert not part.defects
            out.append([one(p) for p in part.iter_parts()])
        else:
            out.append(one(part))
    return out


def make_thing(client, staff, name: str) -> int:
    resp = client.post(f"{ROOT}/Things", json={"name": name, "description": "d"}, headers=staff)
    assert resp.status_code == 201, resp.text
    return resp.json()["@iot.id"]


def count(conn, table: str, name: str | None = None) -> int:
    if name is None:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return conn.execute(f"SELECT count(*) FROM {table} WHERE name = %s", (name,)).fetchone()[0]


def test_gets_with_every_url_form(client, auth, conn):
    staff = auth("gis-staff")
    name = f"坂田-{tag()}"
    thing = make_thing(client, staff, name)
    body = mixed(
        request_part(f"GET Things({thing})?$select=name HTTP/1.1"),                         # relative to the root
        request_part(f"GET /v1.1/Things?$filter=name%20eq%20'{name}'&$count=true HTTP/1.1"),  # FROST's form
        request_part(f"GET http://testserver{ROOT}/Things({thing}) HTTP/1.1"),              # an absolute URL
        request_part("GET /sta/v1.1/Things(987654321)"),                                    # no HTTP version
    )
    out = responses(post(client, body, staff))
    assert [r["status"] for r in out] == [200, 200, 200, 404]
    assert out[0]["body"] == {"name": name}
    assert out[0]["headers"]["content-type"].startswith("application/json")
    assert out[1]["body"]["@iot.count"] == 1 and out[1]["body"]["value"][0]["@iot.id"] == thing
    assert out[2]["body"]["@iot.selfLink"].endswith(f"{ROOT}/Things({thing})")
    assert out[3]["body"]["code"] == 404 and out[3]["body"]["type"] == "error"
    # bare LF line ends, as a body written in an editor and sent with curl --data-binary, work too
    lf = mixed(request_part(f"GET Things({thing})?$select=name HTTP/1.1")).replace(b"\r\n", b"\n")
    assert [(r["status"], r["body"]) for r in responses(post(client, lf, staff))] == [(200, {"name": name})]


def test_changeset_creates_a_thing_then_a_datastream_referencing_it(client, auth, conn, changes):
    name = f"布吉水表-{tag()}"
    body = mixed(changeset(
        request_part("POST Sensors HTTP/1.1", SENSOR, "sensor"),
        request_part("POST /v1.1/ObservedProperties HTTP/1.1", PROP, "prop"),
        request_part("POST Things HTTP/1.1", {"name": name, "description": "独居老人 家中水表"}, "1"),
        request_part("POST $1/Datastreams HTTP/1.1",
                     datastream(Sensor={"@iot.id": "$sensor"}, ObservedProperty={"@iot.id": "$prop"}), "2"),
        request_part("PATCH $1 HTTP/1.1", {"properties": {"community": "坂田"}}, "3"),
    ))
    [cs] = responses(post(client, body, auth("gis-staff")))
    assert [(r["content_id"], r["status"]) for r in cs] == [("sensor", 201), ("prop", 201), ("1", 201), ("2", 201),
                                                              ("3", 200)]
    thing, ds = cs[2]["body"]["@iot.id"], cs[3]["body"]["@iot.id"]
    assert cs[2]["headers"]["location"].endswith(f"{ROOT}/Things({thing})")
    assert cs[3]["headers"]["location"].endswith(f"{ROOT}/Datastreams({ds})")
    row = conn.execute("SELECT thing_id, sensor_id, observed_property_id FROM sta_datastreams WHERE id = %s",
                       (ds,)).fetchone()
    assert row == (thing, cs[0]["body"]["@iot.id"], cs[1]["body"]["@iot.id"])
    assert conn.execute("SELECT name, description, properties FROM sta_things WHERE id = %s", (thing,)).fetchone() == (
        name, "独居老人 家中水表", {"community": "坂田"})
    created = {(c.set_name, c.id) for c in changes if c.op == "create"}
    assert {("Things", thing), ("Datastreams", ds)} <= created


def test_a_failing_changeset_leaves_nothing_and_answers_its_error(client, auth, conn, changes):
    name = f"rollback-{tag()}"
    before = {t: count(conn, t) for t in ("sta_things", "sta_sensors", "sta_datastreams")}
    body = mixed(
        changeset(
            request_part("POST Sensors HTTP/1.1", SENSOR, "s"),
            request_part("POST Things HTTP/1.1", {"name": name}, "t"),
            request_part("POST $t/Datastreams HTTP/1.1", datastream(Sensor={"@iot.id": "$s"}), "d"),  # no property
            request_part("PATCH $t HTTP/1.1", {"description": "never"}, "p"),
        ),
        request_part("POST Things HTTP/1.1", {"name": name + "-alone"}, "alone"),
    )
    failed, alone = responses(post(client, body, auth("admin")))
    # the change set's answer is the failed request's own error, alone, with its Content-ID
    assert isinstance(failed, dict) and failed["status"] == 400 and failed["content_id"] == "d"
    assert "part 1.3 failed, so part 1 (a change set) was rolled back" in failed["body"]["message"]
    assert "a Datastream needs ObservedProperty" in failed["body"]["message"]
    assert alone["status"] == 201
    assert count(conn, "sta_things", name) == 0
    assert {t: count(conn, t) for t in before} == {**before, "sta_things": before["sta_things"] + 1}
    assert [(c.op, c.set_name) for c in changes] == [("create", "Things")]  # only "alone"


def test_gets_and_changesets_mixed_run_in_order(client, auth, conn):
    staff = auth("gis-staff")
    name = f"mixed-{tag()}"
    old = make_thing(client, staff, name + "-old")
    body = mixed(
        request_part(f"GET Things?$filter=name%20eq%20'{name}'&$count=true HTTP/1.1"),
        changeset(request_part("POST Things HTTP/1.1", {"name": name}, "new"),
                  request_part(f"DELETE Things({old}) HTTP/1.1", content_id="gone")),
        request_part(f"GET Things?$filter=name%20eq%20'{name}'&$count=true HTTP/1.1"),
        request_part(f"GET Things({old}) HTTP/1.1"),
    )
    first, cs, second, deleted = responses(post(client, body, staff))
    assert first["body"]["@iot.count"] == 0
    assert [(r["content_id"], r["status"]) for r in cs] == [("new", 201), ("gone", 200)]
    assert second["body"]["@iot.count"] == 1 and second["body"]["value"][0]["@iot.id"] == cs[0]["body"]["@iot.id"]
    assert deleted["status"] == 404


def test_only_the_batch_credentials_count(client, auth, conn):
    name = f"anon-{tag()}"
    admin = auth("admin")["Authorization"]
    body = mixed(
        request_part("POST Things HTTP/1.1", {"name": name}, headers=(f"Authorization: {admin}",)),
        changeset(request_part("POST Things HTTP/1.1", {"name": name}, "1")),
        request_part("GET Things?$top=1 HTTP/1.1"),
    )
    alone, cs, get = responses(post(client, body))          # no credentials on the batch itself
    assert (alone["status"], cs["status"], cs["content_id"], get["status"]) == (401, 401, "1", 200)
    assert count(conn, "sta_things", name) == 0
    [ok] = responses(post(client, mixed(request_part("POST Things HTTP/1.1", {"name": name})), auth("gis-staff")))
    assert ok["status"] == 201 and count(conn, "sta_things", name) == 1


THING = request_part("POST Things HTTP/1.1", {"name": "x"}, "1")


@pytest.mark.parametrize("content_type,body,where,says", [
    ("multipart/mixed", mixed(THING), "body:", "has no boundary"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(THING, boundary="other"), "body:", f'no line "--{BOUNDARY}"'),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(THING)[:-len(f"--{BOUNDARY}--\r\n")], "body:",
     f'"--{BOUNDARY}--" is missing'),
    (f"multipart/mixed; boundary={BOUNDARY}", b"", "body:", "empty"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(), "body:", "holds no part"),
    (f"multipart/related; boundary={BOUNDARY}", mixed(THING), "Content-Type:", "a batch is multipart/mixed"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(THING, changeset()), "part 2:", "holds no part"),
    (f"multipart/mixed; boundary={BOUNDARY}",
     mixed(THING, 'Content-Type: application/json\r\n\r\n{"name": "x"}'), "part 2:", "application/http"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(request_part("FETCH Things HTTP/1.1")), "part 1:",
     "the request line 'FETCH Things HTTP/1.1' is not"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(changeset(request_part("POST Things", {"name": "x"}, "1"),
                                                          request_part("POST $2/Datastreams", datastream(), "3"))),
     "part 1.2:", "$2 in the URL names no request earlier in this change set (Content-IDs before it: $1)"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(changeset(THING, request_part(
        "POST Things(1)/Datastreams", datastream(Sensor={"@iot.id": "$sensor"}), "2"))),
     "part 1.2:", "$sensor in the body names no request earlier"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(THING, request_part("POST $1/Datastreams", datastream())),
     "part 2:", "works only inside a change set"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(changeset(request_part("GET Things HTTP/1.1", content_id="1"))),
     "part 1.1:", "a GET cannot be part of a change set"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(changeset(changeset(THING, boundary="inner"))),
     "part 1.1:", "change sets cannot be nested"),
    (f"multipart/mixed; boundary={BOUNDARY}", mixed(THING, request_part("POST Things", {"name": "y"}, "1")),
     "part 2:", "Content-ID '1' is used by part 1 too"),
])
def test_malformed_batches_are_refused_naming_the_part(client, auth, conn, content_type, body, where, says):
    things = count(conn, "sta_things")
    resp = client.post(f"{ROOT}/$batch", content=body, headers={"Content-Type": content_type, **auth("gis-staff")})
    assert resp.status_code == 400, resp.text
    message = resp.json()["message"]
    assert message.startswith(where) and says in message, message
    assert count(conn, "sta_things") == things          # nothing of a refused batch ran


def test_the_standards_batch_example(client, auth, conn):
    """The batch request body example of OGC 18-088 §11.2.1, which follows OData 4.0 §11.7.2's (its
    text reconstructed from FROST-Server's test of it and OData's example), CRLF line ends, "Host:
    host", "Content-Length: ###" and "If-Match: xxxxx" as the examples write them; the ids are this
    database's: Things(1) is a Thing made here and Things(3) one that does not exist."""
    staff = auth("gis-staff")
    one = make_thing(client, staff, f"example-{tag()}")
    three = 987654321
    example = f"""--batch_36522ad7-fc75-4b56-8c71-56071383e77b
Content-Type: application/http
Content-Transfer-Encoding:binary

GET /v1.1/Things({one}) HTTP/1.1
Host: host


--batch_36522ad7-fc75-4b56-8c71-56071383e77b
Content-Type: multipart/mixed;boundary=changeset_77162fcd-b8da-41ac-a9f8-9357efbbd

--changeset_77162fcd-b8da-41ac-a9f8-9357efbbd
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 1

POST /v1.1/Things HTTP/1.1
Host: host
Content-Type: application/json
Content-Length: ###

{{
  "name": "New",
  "description": "Thing"
}}

--changeset_77162fcd-b8da-41ac-a9f8-9357efbbd
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 2

PATCH /v1.1/Things({one}) HTTP/1.1
Host: host
Content-Type: application/json
If-Match: xxxxx
Content-Length: ###

{{
  "name": "Patched"
}}

--changeset_77162fcd-b8da-41ac-a9f8-9357efbbd--

--batch_36522ad7-fc75-4b56-8c71-56071383e77b
Content-Type: application/http
Content-Transfer-Encoding:binary

GET /v1.1/Things({three}) HTTP/1.1
Host: host


--batch_36522ad7-fc75-4b56-8c71-56071383e77b--
""".replace("\n", "\r\n").encode()
    got, cs, missing = responses(post(client, example, staff))
    assert got["status"] == 200 and got["body"]["@iot.id"] == one
    assert [(r["content_id"], r["status"]) for r in cs] == [("1", 201), ("2", 200)]
    new = cs[0]["body"]["@iot.id"]
    assert conn.execute("SELECT name, description FROM sta_things WHERE id = %s", (new,)).fetchone() == ("New", "Thing")
    assert conn.execute("SELECT name FROM sta_things WHERE id = %s", (one,)).fetchone()[0] == "Patched"
    assert cs[1]["body"]["name"] == "Patched"
    assert missing["status"] == 404


def test_the_json_batch_still_answers_json(client, auth):
    resp = client.post(f"{ROOT}/$batch", json={"requests": [{"id": "1", "method": "get", "url": "Things?$top=1"}]},
                       headers=auth("gis-staff"))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert [r["status"] for r in resp.json()["responses"]] == [200]
