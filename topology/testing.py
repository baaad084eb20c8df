"""Helpers for tests and benchmarks that run a whole cluster (``geotwin cluster up``) on this machine:
free ports below the ephemeral range, the ``geotwin`` command in a clean environment, the pids a
cluster's pid files name, killing a process tree, and :func:`running` — a cluster from a
``cluster.toml`` text that is always torn down, by ``down`` and then by pid."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spatial_api.objectstore.server import GRPC_OFFSET, PORT_SPAN

#: Ports are taken below the ephemeral range (32768–60999 here): a port freed by a killed process must
#: not be taken meanwhile as the source port of some outgoing connection.
PORT_RANGE = (20000, 32000)
#: Variables of the caller that would point a cluster's processes elsewhere.
FOREIGN_ENV = ("DATABASE_URL", "GEOTWIN_DATABASE_URL", "GEOTWIN_READ_DATABASE_URL", "GEOTWIN_S3_ENDPOINT",
               "GEOTWIN_S3_KEY", "GEOTWIN_S3_SECRET", "GEOTWIN_S3_BUCKET", "GEOTWIN_S3_REGION")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports in PORT_RANGE."""
    ports = []
    for port in random.sample(range(*PORT_RANGE), 400):
        if _free(port):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports in {PORT_RANGE[0]}–{PORT_RANGE[1]}")


def free_s3_port(avoid: list[int] = ()) -> int:
    """A port P for the object store: P … P+4 and their gRPC ports 10,000 above all free (and none in
    ``avoid``), P+10,004 still below the ephemeral range."""
    low, high = PORT_RANGE[0], PORT_RANGE[1] - GRPC_OFFSET - PORT_SPAN
    for port in random.sample(range(low, high), 400):
        taken = [port + i + g for i in range(PORT_SPAN) for g in (0, GRPC_OFFSET)]
        if not set(taken) & set(avoid) and all(_free(p) for p in taken):
            return port
    raise RuntimeError(f"no free object-store ports in {low}–{high} (+{GRPC_OFFSET})")


def config_text(schema: str, *, replicas: int = 1, apis: int = 2, workers: tuple[str, ...] = (),
                synchronous: bool = False, s3_bucket: str | None = None, broker: bool = True,
                api_workers: int = 1, nginx: dict | None = None) -> str:
    """A cluster.toml on free ports: a primary, ``replicas`` streaming replicas (replica1 …), ``apis``
    API replicas behind nginx (``nginx``: more [nginx] keys), the broker and the ``workers`` (their
    client ids), and with ``s3_bucket`` the object store."""
    n = 2 + replicas + apis + (1 if broker else 0)
    ports = free_ports(n)
    pg, rest = ports[0], ports[1:]
    reps, rest = rest[:replicas], rest[replicas:]
    api_ports, rest = rest[:apis], rest[apis:]
    ngx, rest = rest[0], rest[1:]
    lines = ["[cluster]", 'state_dir = "state"', f'schema = "{schema}"', "[postgres]",
             f"synchronous = {'true' if synchronous else 'false'}", "[postgres.primary]", f"port = {pg}"]
    for i, port in enumerate(reps, 1):
        lines += ["[[postgres.replicas]]", f'name = "replica{i}"', f"port = {port}"]
    lines += ["[api]", f"workers = {api_workers}"]
    for port in api_ports:
        lines += ["[[api.replicas]]", f"port = {port}"]
    lines += ["[nginx]", f"port = {ngx}"]
    lines += [f"{key} = {json.dumps(value)}"  # TOML's strings, numbers and booleans as JSON writes them
              for key, value in {"max_fails": 1, "fail_timeout": "10s", **(nginx or {})}.items()]
    if broker:
        lines += ["[mqtt]", f"port = {rest[0]}"]
        for client_id in workers:
            lines += ["[[sensing.workers]]", f'client_id = "{client_id}"']
    if s3_bucket:
        lines += ["[s3]", f"port = {free_s3_port(avoid=ports)}", f'bucket = "{s3_bucket}"']
    return "\n".join(lines) + "\n"


def geotwin(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``geotwin ARGS`` in this interpreter, without the caller's database or object-store settings."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return subprocess.run([sys.executable, "-m", "spatial_api", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def processes(ctl) -> list[int]:
    """Every pid the cluster's pid files and postmaster.pid files name that is still alive."""
    files = [*ctl.run_dir.glob("*.pid"), ctl.nginx_dir / "nginx.pid", ctl.topo.state_dir / "mqtt" / "mosquitto.pid",
             *(s.data_dir / "postmaster.pid" for s in [ctl.primary, *ctl.replicas, *ctl.retired])]
    if ctl.s3 is not None:
        files.append(ctl.s3.pid_file)
    pids = []
    for f in files:
        try:
            pid = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(pid):
            pids.append(pid)
    return pids


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every process under it (a machine lost, not a shutdown)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return tree


def environ(pid: int) -> dict:
    """A running process's environment."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def teardown(config: Path, *controllers) -> None:
    """``down`` every view of the cluster (as first made and as it is now, after a promotion), kill by
    pid whatever a failed ``down`` left (never by name), then delete its data."""
    from topology.control import load_controller

    views = list(controllers)
    try:
        views.insert(0, load_controller(config, echo=lambda *_: None))
    except Exception as exc:  # noqa: BLE001 — a broken failover.json must not keep processes alive
        print(f"cluster state unreadable at teardown: {exc}")
    for c in views:
        try:
            c.down(purge=False)
        except Exception as exc:  # noqa: BLE001 — go on with the kills
            print(f"cluster down failed at teardown: {exc}")
        for pid in processes(c):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    if views:
        views[0].down(purge=True)  # the latest view names every database folder, retired ones too


@contextmanager
def running(config_text: str, folder: Path, timeout: float = 300) -> Iterator:
    """``geotwin cluster up`` from ``config_text`` written to ``folder/cluster.toml``; yields its
    Controller (with ``config`` and ``up_seconds`` set); torn down on exit whatever happened."""
    from topology.control import load_controller

    config = Path(folder) / "cluster.toml"
    config.write_text(config_text)
    ctl = load_controller(config, echo=lambda *_: None)
    try:
        started = time.monotonic()
        up = geotwin("cluster", "up", "--config", str(config), timeout=timeout)
        ctl.up_seconds = time.monotonic() - started
        if up.returncode != 0:
            raise RuntimeError(f"geotwin cluster up failed:\n{up.stdout}\n{up.stderr}")
        ctl.config = config
        ctl.up_output = up.stdout
        yield ctl
    finally:
        teardown(config, ctl)


def commit_times(url: str, blocks: int = 10, per_block: int = 20, table: str = "public.commit_cost_probe"
                 ) -> dict[str, list[float]]:
    """Milliseconds of single-row commits on ``url`` with ``synchronous_commit`` = on and = local,
    in alternating blocks (so that a drift in load falls on both): {"on": [...], "local": [...]}.
    The probe table is made and dropped here."""
    import psycopg

    times: dict[str, list[float]] = {"on": [], "local": []}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (i int)")
        try:
            for block in range(blocks):
                for mode in (("on", "local") if block % 2 == 0 else ("local", "on")):
                    conn.execute(f"SET synchronous_commit = {mode}")
                    for i in range(per_block):
                        t0 = time.perf_counter()
                        conn.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
                        times[mode].append((time.perf_counter() - t0) * 1000)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    return times
