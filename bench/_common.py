"""Helpers shared by the HTTP benchmarks (bench/features.py, bench/tiles.py, bench/imagery.py).

- ``arguments``: the common command line (--runs, --duration, --warmup, --size, --peer-venv,
  --no-write, --keep) with each script's own defaults, and the checks (≥ 2 runs, wrk installed);
- ``free_port``, ``fetch`` and ``Server``: servers started in their own process group and stopped
  by their own group id (never by name), readiness polled over HTTP;
- ``clean_env`` / ``geotwin_server``: the environment a server starts with (no GEOTWIN_*, TIPG_*,
  PYGEOAPI_* or DATABASE_URL leaking in from the caller) and geotwin's own uvicorn command;
- ``wrk`` (one URL) and ``wrk_paths`` (a Lua ``request()`` cycling through a list of paths),
  parsed into ``{"rps", "requests", "p50", "p99", "non2xx", "socket_errors"}``;
- ``write_block``: replace a ``<!-- bench:NAME:start -->`` … ``end`` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UVICORN_FLAGS = ["--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]


# -- command line ----------------------------------------------------------------------------------


def arguments(doc: str, *, runs: int, duration: int, warmup: int,
              runs_help: str = "runs per figure (median reported)",
              warmup_help: str = "seconds of unrecorded wrk per server") -> argparse.ArgumentParser:
    """The options every HTTP bench has; add your own, then call :func:`parse`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs, help=runs_help)
    ap.add_argument("--duration", type=int, default=duration, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=warmup, help=warmup_help)
    ap.add_argument("--size", default="large")
    ap.add_argument("--peer-venv", type=Path, default=None, help="default: .geotwin/bench/peers-venv")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the bench schema afterwards")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    if args.runs < 2:
        raise SystemExit("--runs: at least 2")
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    return args


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 120, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class Server:
    """A server process in its own process group; stopped by its own pid (never by name)."""

    def __init__(self, name: str, cmd: list[str], env: dict, port: int, ready_path: str, log_dir: Path):
        self.name, self.cmd, self.env, self.port, self.ready_path = name, cmd, env, port, ready_path
        self.log_path = log_dir / f"{name.replace(' ', '_')}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), start_new_session=True)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start-up (code {self.proc.returncode}); "
                                 f"log {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
            try:
                status, _, _ = fetch(self.base + self.ready_path, timeout=5)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} not ready after {timeout:.0f} s; log {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the server's own pid
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def clean_env() -> dict:
    """The caller's environment without geotwin's, tipg's and pygeoapi's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOTWIN_", "TIPG_", "PYGEOAPI_"))}
    env.pop("DATABASE_URL", None)
    return env


def geotwin_env(settings, schema: str, **extra: str) -> dict:
    """What geotwin needs to reach the bench schema: the schema, and the database URL and home
    when the caller set them."""
    env = dict(clean_env(), GEOTWIN_DB_SCHEMA=schema, **extra)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    if settings.home != ROOT / ".geotwin":
        env["GEOTWIN_HOME"] = str(settings.home)
    return env


def geotwin_server(name: str, settings, schema: str, log_dir: Path, *, workers: int = 1,
                   ready_path: str = "/collections/land_use", **extra_env: str) -> Server:
    """What `geotwin serve` runs (uvicorn factory), without the access log."""
    port = free_port()
    return Server(name, [sys.executable, "-m", "uvicorn", "spatial_api.app:create_app", "--factory",
                         "--port", str(port), "--workers", str(workers), *UVICORN_FLAGS],
                  geotwin_env(settings, schema, **extra_env), port, ready_path, log_dir)


# -- wrk -------------------------------------------------------------------------------------------


def parse_wrk(out: str) -> dict:
    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)), "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": ms("50"), "p99": ms("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else None}


def wrk(url: str, *, threads: int, connections: int, duration: int) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", "--latency", url]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120).stdout)


LUA = """
paths = {%s}
local counter = 0
function setup(thread)
  thread:set("offset", (counter * 151) %% #paths)
  counter = counter + 1
end
function init(args)
  i = offset or 0
end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def wrk_paths(base: str, paths: list[str], script: Path, *, threads: int, connections: int,
              duration: int, timeout: int = 60) -> dict:
    """wrk over a list of paths, each thread starting at its own offset. The paths go in a fixed
    shuffled order (seed 0), so that a run that does not get through the whole list in
    ``duration`` seconds (a slow server) still samples the list in proportion instead of only
    its head."""
    order = list(paths)
    random.Random(0).shuffle(order)
    script.write_text(LUA % ", ".join(f'"{p}"' for p in order))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", f"{timeout}s", "--latency",
           "-s", str(script), base]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 60).stdout)


# -- docs/benchmarks.md ----------------------------------------------------------------------------


def write_block(start: str, end: str, block: str, *, heading: str, intro: str) -> None:
    """Replace the block between ``start`` and ``end`` in docs/benchmarks.md; append it under
    ``## heading`` with ``intro`` if the markers are not there yet."""
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n{intro}\n\n" + block + "\n"
    doc.write_text(text)


def drop_schema(settings, schema: str) -> None:
    from psycopg import sql

    from spatial_api import db

    with db.connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
