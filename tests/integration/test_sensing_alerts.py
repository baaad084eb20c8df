"""Issue 16: alerts with a life cycle (open → notified → acknowledged → visited → closed, the
15-minute on-site target), the outbox delivered to a real local webhook, the live stream (SSE
over a real uvicorn server fed by PostgreSQL NOTIFY), who sees which alert, the rules API."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient

from sensing import alerts, notify, rules
from spatial_api import db
from spatial_api.app import create_app
from tests.integration.test_sensing_rules import (
    REF,
    insert_series,
    make_device,
    water_meter,
)

A, B = "坂田社区", "布吉社区"


def fall_case(conn, community: str = A) -> tuple[str, dict]:
    """A household whose resident stopped using water 14 h before REF, with its inactivity alert."""
    fall = REF - timedelta(hours=14)
    dev = water_meter(conn, seed=31, community=community, override=lambda t, v: 0.0 if t >= fall else v)
    found = rules.evaluate(conn, now=REF, device_ids=[dev], rule_ids=["wm-inactivity"])
    assert len(found) == 1
    return dev, found[0]


# ------------------------------------------------------------------------------------- life cycle

def test_the_life_cycle_and_the_15_minute_target(conn):
    dev, a = fall_case(conn)
    aid = a["alert_id"]
    opened_at = a["opened_at"]
    with pytest.raises(alerts.AlertError) as e:
        alerts.step(conn, aid, "visited", author="王社工", now=opened_at + timedelta(minutes=3))
    assert e.value.status == 409 and "visited may follow only acknowledged" in str(e.value)
    got = alerts.step(conn, aid, "acknowledged", author="王社工", note="马上过去", now=opened_at + timedelta(minutes=2))
    assert got["state"] == "acknowledged" and got["on_site_minutes"] is None and got["target_met"] is None
    got = alerts.step(conn, aid, "visited", author="王社工", note="老人摔倒，已送医", now=opened_at + timedelta(minutes=12))
    assert got["state"] == "visited" and got["on_site_minutes"] == 12.0 and got["target_met"] is True
    got = alerts.step(conn, aid, "closed", author="王社工", now=opened_at + timedelta(minutes=40))
    assert got["state"] == "closed"
    assert [(s["step"], s["author"]) for s in got["steps"]] == [
        ("open", "rule:wm-inactivity"), ("acknowledged", "王社工"), ("visited", "王社工"), ("closed", "王社工")]
    assert [s["seq"] for s in got["steps"]] == [1, 2, 3, 4]
    assert got["steps"][2]["note"] == "老人摔倒，已送医"
    with pytest.raises(alerts.AlertError) as e:
        alerts.step(conn, aid, "acknowledged", author="王社工")
    assert e.value.status == 409 and "closed" in str(e.value)
    # closed means seen to: the same silence does not reopen it; a new silence after the closure would
    assert rules.evaluate(conn, now=REF + timedelta(minutes=30), device_ids=[dev], rule_ids=["wm-inactivity"]) == []


def test_a_late_visit_misses_the_target_and_closing_unvisited_needs_a_note(conn):
    _, a = fall_case(conn)
    aid, t = a["alert_id"], a["opened_at"]
    alerts.step(conn, aid, "acknowledged", author="李社工", now=t + timedelta(minutes=10))
    got = alerts.step(conn, aid, "visited", author="李社工", now=t + timedelta(minutes=23, seconds=30))
    assert got["on_site_minutes"] == 23.5 and got["target_met"] is False
    _, b = fall_case(conn)
    with pytest.raises(alerts.AlertError) as e:
        alerts.step(conn, b["alert_id"], "closed", author="李社工")
    assert e.value.status == 400 and "note" in str(e.value)
    assert alerts.get(conn, b["alert_id"])["state"] == "open"  # refused: nothing changed
    got = alerts.step(conn, b["alert_id"], "closed", author="李社工", note="家属电话确认：老人外出")
    assert got["state"] == "closed" and got["on_site_minutes"] is None


def test_open_alert_by_hand_is_idempotent_per_device_and_rule(conn):
    dev, _ = make_device(conn, "hydrant-pressure", community=B)
    first = alerts.open_alert(conn, device_id=dev, rule_id="hp-low", message="巡检发现压力不足", now=REF)
    assert first["state"] == "open" and first["severity"] == "critical" and first["title"] == "消火栓水压过低"
    assert alerts.open_alert(conn, device_id=dev, rule_id="hp-low", message="again", now=REF) is None
    with pytest.raises(alerts.AlertError, match="rule_id"):
        alerts.open_alert(conn, device_id=dev, rule_id="no-such-rule", message="x")


# ------------------------------------------------------------------------------ outbox, webhook

class Hook:
    """A real HTTP server on 127.0.0.1 that records JSON posts; the first ``fail`` answers are 500."""

    def __init__(self, fail: int = 0):
        self.received: list[dict] = []
        self.fail = fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail > 0:
                    hook.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"gateway down")
                    return
                hook.received.append(json.loads(body.decode("utf-8")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks():
    made: list[Hook] = []
    yield lambda **kw: made.append(Hook(**kw)) or made[-1]
    for h in made:
        h.close()


def test_opening_writes_the_outbox_per_recipient(conn):
    leak_from = REF - timedelta(hours=26)
    dev = water_meter(conn, seed=32, override=lambda t, v: v + 0.004 if t >= leak_from else v)
    (a,) = rules.evaluate(conn, now=REF, device_ids=[dev], rule_ids=["wm-leak"])  # notify: person, family, community
    rows = conn.execute("SELECT channel, recipient_kind, recipient, payload FROM sensing_outbox WHERE alert_id = %s "
                        "ORDER BY id", (a["alert_id"],)).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("sms", "person", "138-0000-0001"), ("sms", "family", "138-0000-0002"), ("sms", "family", "138-0000-0003"),
        ("webhook", "community", f"community:{A}")]
    payload = rows[1][3]
    assert payload["alert_id"] == a["alert_id"] and payload["title"] == "疑似漏水"
    assert payload["recipient"] == {"kind": "family", "name": "张伟", "address": "138-0000-0002"}
    assert payload["text"].startswith("【社区关爱】疑似漏水：")


def test_dispatch_delivers_retries_with_backoff_and_marks_notified(database, hooks):
    sms, duty = hooks(fail=1), hooks()
    with db.connect(database) as conn:
        dev, a = fall_case(conn)  # notify: community, family (2 phones)
        conn.commit()
        aid = a["alert_id"]
        notifiers = {"sms": notify.WebhookNotifier(sms.url), "webhook": notify.WebhookNotifier(duty.url)}
        t0 = conn.execute("SELECT now()").fetchone()[0]
        first = notify.dispatch(conn, notifiers, now=t0, alert_ids=[aid])
        conn.commit()
        mine = conn.execute("SELECT recipient, attempts, sent_at IS NOT NULL, last_error, next_attempt_at "
                            "FROM sensing_outbox WHERE alert_id = %s ORDER BY id", (aid,)).fetchall()
        failed = [m for m in mine if not m[2]]
        assert len(failed) == 1 and failed[0][1] == 1 and "HTTP 500" in failed[0][3]
        assert failed[0][4] == t0 + timedelta(seconds=notify.BACKOFF_BASE_S)  # the first retry waits 30 s
        assert first["failed"] == 1 and first["sent"] == 2 and aid not in first["notified"]
        assert alerts.get(conn, aid)["state"] == "open"  # not every message out yet
        # nothing is due before the backoff is over; after it, the message goes and the alert is notified
        assert aid not in notify.dispatch(conn, notifiers, now=t0 + timedelta(seconds=10), alert_ids=[aid])["notified"]
        second = notify.dispatch(conn, notifiers, now=t0 + timedelta(seconds=31), alert_ids=[aid])
        conn.commit()
        assert aid in second["notified"]
        got = alerts.get(conn, aid)
        assert got["state"] == "notified" and got["steps"][-1]["author"] == "notifier"
        assert "家属 2" in got["steps"][-1]["note"] and "社区 1" in got["steps"][-1]["note"]
    to_family = [m for m in sms.received if m["alert_id"] == aid]
    assert sorted(m["recipient"]["address"] for m in to_family) == ["138-0000-0002", "138-0000-0003"]
    assert all(m["channel"] == "sms" and m["title"] == "长时间未用水" for m in to_family)
    to_duty = [m for m in duty.received if m["alert_id"] == aid]
    assert len(to_duty) == 1 and to_duty[0]["recipient"]["address"] == f"community:{A}"
    assert to_duty[0]["device_id"] == dev and "0.01" in to_duty[0]["message"]


def test_an_unreachable_webhook_is_an_error_kept_in_the_outbox(database):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    with db.connect(database) as conn:
        _, a = fall_case(conn)
        conn.commit()
        n = notify.dispatch(conn, {"sms": notify.WebhookNotifier(dead, timeout=2)},
                            now=conn.execute("SELECT now()").fetchone()[0] + timedelta(days=365),
                            alert_ids=[a["alert_id"]])
        conn.commit()
        assert n["sent"] == 0 and n["failed"] == 2
        errs = conn.execute("SELECT last_error FROM sensing_outbox WHERE alert_id = %s AND channel = 'sms'",
                            (a["alert_id"],)).fetchall()
        assert errs and all("ConnectError" in e[0] for e in errs)
    with pytest.raises(ValueError, match="http"):
        notify.WebhookNotifier("ftp://example.invalid/")


# ------------------------------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def app(database):
    return create_app(database)


@pytest.fixture(scope="module")
def workers(database):
    """Community-worker keys of communities A and B."""
    from spatial_api.security import keys

    with db.connect(database) as conn:
        made = {c: keys.create(conn, f"test-worker-{c}", "community-worker", created_by="pytest", community=c)
                for c in (A, B)}
        conn.commit()
    return {c: {"Authorization": f"Bearer {k}"} for c, k in made.items()}


@pytest.fixture(scope="module")
def cases(database):
    """Alerts in both communities: a household in A, one in B, a manhole cover in B."""
    with db.connect(database) as conn:
        hA, aA = fall_case(conn, A)
        hB, aB = fall_case(conn, B)
        cover, cs = make_device(conn, "manhole-cover", community=B, expected_interval="1 hour")
        insert_series(conn, cs["井盖开启"], [(REF, True)])
        (aC,) = rules.evaluate(conn, now=REF, device_ids=[cover], rule_ids=["mc-open"])
        conn.commit()
    return {"A": aA["alert_id"], "B": aB["alert_id"], "cover": aC["alert_id"], "hA": hA, "hB": hB, "dev_cover": cover}


def _ids(r) -> set[int]:
    assert r.status_code == 200, r.text
    return {a["alert_id"] for a in r.json()["alerts"]}


def test_who_sees_which_alert(app, auth, workers, cases):
    mine = {cases["A"], cases["B"], cases["cover"]}
    c = TestClient(app)
    assert _ids(c.get("/sensing/alerts", params={"limit": 10000}, headers=workers[A])) & mine == {cases["A"], cases["cover"]}
    assert _ids(c.get("/sensing/alerts", params={"limit": 10000}, headers=workers[B])) & mine == {cases["B"], cases["cover"]}
    assert _ids(c.get("/sensing/alerts", params={"limit": 10000}, headers=auth("admin"))) & mine == mine
    # roles that see internal data but not households: the manhole cover only
    assert _ids(c.get("/sensing/alerts", params={"limit": 10000}, headers=auth("gis-staff"))) & mine == {cases["cover"]}
    assert _ids(c.get("/sensing/alerts", params={"limit": 10000})) == set()  # anonymous: nothing
    # one alert: another community's household is not there (404), like a missing one
    assert c.get(f"/sensing/alerts/{cases['A']}", headers=workers[B]).status_code == 404
    assert c.get(f"/sensing/alerts/{cases['A']}", headers=auth("planner")).status_code == 404
    assert c.get("/sensing/alerts/999999999", headers=workers[A]).status_code == 404
    r = c.get(f"/sensing/alerts/{cases['A']}", headers=workers[A])
    assert r.status_code == 200 and r.headers["cache-control"].startswith("private")
    a = r.json()
    assert a["device_id"] == cases["hA"] and a["community"] == A and a["title"] == "长时间未用水"
    assert a["lon"] == pytest.approx(114.06) and a["address"].startswith(A) and a["steps"][0]["step"] == "open"
    assert "restricted" not in a


def test_household_alert_reads_are_audited(app, database, workers, cases):
    c = TestClient(app)
    t0 = datetime.now().astimezone()
    assert c.get(f"/sensing/alerts/{cases['A']}", headers=workers[A]).status_code == 200
    with db.connect(database) as conn:
        deadline = time.monotonic() + 15
        while True:  # restricted reads are written in batches by a background thread
            rows = conn.execute("SELECT principal, detail FROM audit_log WHERE action = 'read-restricted' AND at >= %s",
                                (t0 - timedelta(seconds=1),)).fetchall()
            hit = [r for r in rows if f"sensing/devices/{cases['hA']}" in json.dumps(r[1], ensure_ascii=False)]
            if hit or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert hit and hit[0][0] == f"test-worker-{A}"


def test_filters_of_the_list(app, workers, cases):
    c = TestClient(app)
    r = c.get("/sensing/alerts", params={"device": cases["dev_cover"], "state": "active"}, headers=workers[B])
    assert _ids(r) == {cases["cover"]}
    assert _ids(c.get("/sensing/alerts", params={"device": cases["dev_cover"], "state": "closed"}, headers=workers[B])) == set()
    assert _ids(c.get("/sensing/alerts", params={"community": A, "device": cases["hA"]}, headers=workers[B])) == set()
    for params, name in (({"state": "burning"}, "state"), ({"since": "yesterday"}, "since"), ({"limit": 0}, "limit")):
        r = c.get("/sensing/alerts", params=params, headers=workers[A])
        assert r.status_code in (400, 422) and name in r.text, (params, r.text)


def test_steps_over_http(app, auth, workers, database):
    with db.connect(database) as conn:
        _, a = fall_case(conn, A)
        conn.commit()
    aid = a["alert_id"]
    c = TestClient(app)
    url = f"/sensing/alerts/{aid}/steps"
    assert c.post(url, json={"step": "acknowledged"}).status_code == 401
    assert c.post(url, json={"step": "acknowledged"}, headers=auth("gis-staff")).status_code == 403
    assert c.post(url, json={"step": "acknowledged"}, headers=workers[B]).status_code == 404  # not theirs
    r = c.post(url, json={"step": "visited"}, headers=workers[A])
    assert r.status_code == 409 and r.json()["code"] == "Conflict" and "acknowledged" in r.json()["description"]
    r = c.post(url, json={"step": "visited!"}, headers=workers[A])
    assert r.status_code == 400 and r.json()["description"].startswith("step:")
    r = c.post(url, json={"step": "acknowledged", "note": "收到", "by": "x"}, headers=workers[A])
    assert r.status_code == 400 and r.json()["description"].startswith("by:")
    r = c.post(url, json={"step": "acknowledged", "note": "收到"}, headers=workers[A])
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert r.json()["steps"][-1]["author"] == f"test-worker-{A}"
    r = c.post(url, json={"step": "visited"}, headers=workers[A])
    assert r.status_code == 200 and r.json()["state"] == "visited" and r.json()["on_site_minutes"] is not None
    r = c.post(url, json={"step": "closed"}, headers=auth("admin"))
    assert r.status_code == 200 and r.json()["state"] == "closed" and r.json()["steps"][-1]["author"] == "test-admin"


def test_rules_over_http(app, auth, workers):
    c = TestClient(app)
    r = c.get("/sensing/rules", headers=workers[A])
    assert r.status_code == 200 and "wm-leak" in {x["rule_id"] for x in r.json()["rules"]}
    assert c.get("/sensing/rules").status_code == 401
    rid = f"t-{uuid.uuid4().hex[:6]}"
    body = {"kind": "threshold", "device_type": "hydrant-pressure", "observed_property": "水压",
            "params": {"op": "<", "value": 0.15}, "severity": "warning", "notify": ["community"], "title": "水压偏低"}
    assert c.put(f"/sensing/rules/{rid}", json=body, headers=workers[A]).status_code == 403
    r = c.put(f"/sensing/rules/{rid}", json=body, headers=auth("gis-staff"))
    assert r.status_code == 201 and r.json()["params"] == {"op": "<", "value": 0.15, "max_age_hours": None}
    assert r.json()["updated_by"] == "test-gis-staff"
    r = c.put(f"/sensing/rules/{rid}", json={"params": {"value": "low"}}, headers=auth("gis-staff"))
    assert r.status_code == 400 and r.json()["description"].startswith("params.value")
    r = c.put(f"/sensing/rules/{rid}", json={"enabled": False, "colour": "red"}, headers=auth("gis-staff"))
    assert r.status_code == 400 and r.json()["description"].startswith("colour")
    r = c.put(f"/sensing/rules/{rid}", json={"enabled": False}, headers=auth("gis-staff"))
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["params"]["value"] == 0.15


# ------------------------------------------------------------------------------ the live stream

@pytest.fixture(scope="module")
def server(app):
    """The app served by a real uvicorn on a free port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_the_stream_delivers_alerts_as_they_open_and_change(server, database, workers, monkeypatch):
    from sensing import alerts_api

    monkeypatch.setattr(alerts_api, "KEEPALIVE_S", 0.5)  # the server runs in this process
    got: dict[str, list[dict]] = {A: [], B: []}
    keepalives = {A: 0, B: 0}
    ready = {A: threading.Event(), B: threading.Event()}
    stop = threading.Event()
    clients = {c: httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) for c in (A, B)}
    status: dict[str, object] = {}

    def listen(community):
        try:
            with clients[community].stream("GET", f"{server}/sensing/alerts/stream", headers=workers[community]) as r:
                status[community] = (r.status_code, r.headers["content-type"])
                event, data = None, []
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith(": connected"):  # the stream says it is connected first
                        ready[community].set()
                    elif line.startswith(": keepalive"):
                        keepalives[community] += 1
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        if event == "alert":
                            got[community].append(json.loads("\n".join(data)))
                        event, data = None, []
        except Exception as exc:
            status[community] = exc

    threads = [threading.Thread(target=listen, args=(c,), daemon=True) for c in (A, B)]
    for t in threads:
        t.start()
    assert ready[A].wait(30) and ready[B].wait(30), status
    assert all(v[0] == 200 and v[1].startswith("text/event-stream") for v in status.values()), status
    def states(community, alert_id, want):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [x["state"] for x in got[community] if x["alert_id"] == alert_id] != want:
            time.sleep(0.05)
        return [x["state"] for x in got[community] if x["alert_id"] == alert_id]

    with db.connect(database) as conn:  # another connection, as the MQTT worker would be
        dev, a = fall_case(conn, A)
        conn.commit()
        aid = a["alert_id"]
        assert states(A, aid, ["open"]) == ["open"]
        alerts.step(conn, aid, "acknowledged", author="王社工")
        conn.commit()
    assert states(A, aid, ["open", "acknowledged"]) == ["open", "acknowledged"]
    first = next(x for x in got[A] if x["alert_id"] == aid)
    assert first["device_id"] == dev and first["title"] == "长时间未用水" and first["steps"][0]["step"] == "open"
    # B's worker heard nothing of A's household; a manhole cover in B reaches B (and A: not restricted)
    with db.connect(database) as conn:
        cover, cs = make_device(conn, "manhole-cover", community=B, expected_interval="1 hour")
        insert_series(conn, cs["倾角"], [(REF, 25.0)])
        (c,) = rules.evaluate(conn, now=REF, device_ids=[cover], rule_ids=["mc-tilt"])
        conn.commit()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(x["alert_id"] == c["alert_id"] for x in got[B]):
        time.sleep(0.05)
    assert any(x["alert_id"] == c["alert_id"] for x in got[B])
    assert not any(x["alert_id"] == aid for x in got[B])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (keepalives[A] and keepalives[B]):
        time.sleep(0.05)
    assert keepalives[A] and keepalives[B]  # ": keepalive" comments while nothing happens
    stop.set()
    for t in threads:  # each ends at its next line (a keepalive at the latest)
        t.join(timeout=30)
    for client in clients.values():
        client.close()


def test_a_stream_that_missed_events_ends_so_the_client_reloads(server, database, workers):
    """The LISTEN connection lost (a database restart, here its backend terminated): what was
    notified meanwhile never reaches the open streams, so they end — the browser's EventSource
    reconnects and the page reloads the list — rather than stay open and silently incomplete."""
    lines: list[str] = []
    connected, ended = threading.Event(), threading.Event()

    def listen():
        try:
            with httpx.Client(timeout=httpx.Timeout(5.0, read=120.0)) as c, \
                    c.stream("GET", f"{server}/sensing/alerts/stream", headers=workers[A]) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if line.startswith(": connected"):
                        connected.set()
        finally:
            ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert connected.wait(30), lines
    with db.connect(database, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        killed = 0
        while not killed and time.monotonic() < deadline:  # the LISTEN connection is up once connected
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = 'geotwin-alert-stream' AND datname = current_database()"
                                   ).fetchone()[0]
    assert killed >= 1
    assert ended.wait(60), "the stream stayed open after missing events"
