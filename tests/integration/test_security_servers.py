"""Two real server processes (`geotwin serve`) on one database, as a deployment with several
workers or replicas runs: a key's rate limit holds across them (issue 12, item 5), unknown keys
from one client address are throttled across them, and their request logs hold no credential
(item 1)."""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from spatial_api import db
from spatial_api.security import keys
from tests.fixtures.server import free_port


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def servers(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_servers")
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema, "PYTHONUNBUFFERED": "1"}
    started: list[Server] = []
    try:
        for i in range(2):
            port = free_port()
            log = tmp / f"server{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "spatial_api", "serve", "--port", str(port)],
                                        stdout=out, stderr=subprocess.STDOUT, env=env)
            started.append(Server(f"http://127.0.0.1:{port}", proc, log))
        for s in started:  # wait until each answers (it imports everything first)
            deadline = time.monotonic() + 120
            while True:
                if s.proc.poll() is not None:
                    pytest.fail(f"`geotwin serve` exited ({s.proc.returncode}):\n{s.log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"`geotwin serve` did not answer within 120 s:\n{s.log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield started
    finally:
        for s in started:
            s.proc.terminate()
        for s in started:
            try:
                s.proc.wait(20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(10)


def hammer(url: str, n: int, headers: dict) -> list[httpx.Response]:
    with httpx.Client(headers=headers, timeout=30) as c:
        return [c.get(url) for _ in range(n)]


def test_a_keys_rate_limit_holds_across_server_processes(servers, database):
    limit = 40
    with db.connect(database) as conn:
        key = keys.create(conn, f"two-servers-{uuid.uuid4().hex[:6]}", "external-platform", created_by="pytest",
                          rate_per_min=limit)
        conn.commit()
    per_server = 3 * limit  # each process alone is asked three times the limit
    t0 = time.time()
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(hammer, f"{s.url}/whoami", per_server // 2, {"X-API-Key": key})
                for s in servers for _ in range(2)]
        answers = [r for j in jobs for r in j.result()]
    elapsed = time.time() - t0
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    allowed = codes.count(200)
    # The documented tolerance: none beyond the limit within a minute; a run that straddles the
    # turn of a minute may also use what the sliding window frees meanwhile (limit × elapsed / 60).
    most = limit + math.ceil(limit * elapsed / 60)
    # Claimed but unused requests are lost: each process claims at most a tenth of the limit.
    least = limit - 2 * max(1, limit // 10)
    assert least <= allowed <= most, (allowed, least, most, elapsed)
    refused = [r for r in answers if r.status_code == 429]
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert "rate limit of 40 requests per minute" in refused[0].json()["description"]


def test_unknown_keys_are_throttled_per_address_across_processes(servers):
    from spatial_api.security.limits import FAILED_KEYS_PER_MIN

    address = f"198.51.100.{secrets.randbelow(250) + 1}"  # uvicorn trusts X-Forwarded-For from 127.0.0.1
    sent = 4 * FAILED_KEYS_PER_MIN
    t0 = time.time()
    codes, answers = [], []
    with httpx.Client(timeout=30) as c:
        for i in range(sent):
            key = f"gtk_{secrets.token_hex(5)}_{secrets.token_urlsafe(20)}"
            r = c.get(f"{servers[i % 2].url}/whoami", headers={"X-API-Key": key, "X-Forwarded-For": address})
            codes.append(r.status_code)
            answers.append(r)
    elapsed = time.time() - t0
    assert set(codes) <= {401, 429}
    looked_up = codes.count(401)
    # each process may look up one key more (the one whose failure found the limit reached), and
    # a run that straddles a minute also what the sliding window frees meanwhile
    assert looked_up <= FAILED_KEYS_PER_MIN + 2 + math.ceil(FAILED_KEYS_PER_MIN * elapsed / 60), (looked_up, elapsed)
    assert codes[-FAILED_KEYS_PER_MIN:] == [429] * FAILED_KEYS_PER_MIN
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1 and address in refused.json()["description"]
    # another address is not affected
    r = httpx.get(f"{servers[0].url}/whoami", headers={"X-API-Key": f"gtk_{secrets.token_hex(5)}_{'x' * 24}",
                                                       "X-Forwarded-For": "198.51.100.251" if address != "198.51.100.251"
                                                       else "198.51.100.252"})
    assert r.status_code == 401


def test_the_request_log_holds_no_credential(servers, api_keys):
    marker = uuid.uuid4().hex[:10]
    key = api_keys["planner"]
    for s in servers:
        assert httpx.get(f"{s.url}/whoami?api_key={key}&m={marker}").json()["role"] == "planner"
        httpx.get(f"{s.url}/collections?m={marker}&access_token=Tok3n-{marker}&key=k3y-{marker}")
    deadline = time.monotonic() + 20  # the access log line is written after the response
    while True:
        logs = [s.log.read_text(errors="replace") for s in servers]
        lines = [ln for text in logs for ln in text.splitlines() if marker in ln]
        if len(lines) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 4, "\n".join(logs)[-3000:]
    for text in logs:
        assert key not in text and f"Tok3n-{marker}" not in text and f"k3y-{marker}" not in text
    assert all("REDACTED" in ln and f"m={marker}" in ln for ln in lines), lines
