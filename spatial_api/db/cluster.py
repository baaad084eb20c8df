"""The project-local PostgreSQL + PostGIS cluster: ``geotwin db up | down | status | url``.

The cluster lives in ``<home>/db/data``, listens on 127.0.0.1 only (its own port, no Unix
socket), and authenticates with a generated password kept in ``<home>/db/password``. PostgreSQL
refuses to run as root, so when geotwin runs as root the server processes run as the
``postgres`` system user, which then owns the data folder.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from spatial_api.config import Settings

DB_NAME = "geotwin"
DB_USER = "geotwin"

# Settings for a single-machine analytics workload; PostgreSQL's defaults are tuned for 128 MB.
SERVER_CONF = """
# --- geotwin local cluster ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
shared_buffers = '512MB'
work_mem = '32MB'
maintenance_work_mem = '512MB'
max_wal_size = '4GB'
checkpoint_timeout = '15min'
wal_level = 'minimal'
max_wal_senders = 0
max_connections = 200
timezone = 'UTC'
log_min_messages = 'warning'
"""


class ClusterError(RuntimeError):
    """The local cluster cannot be set up or started; the message says what to do."""


@dataclass
class ClusterStatus:
    initialised: bool
    running: bool
    port: int
    data_dir: Path
    pg_version: str | None


def find_pg_bin() -> tuple[Path, str]:
    """The newest installed PostgreSQL whose PostGIS extension is installed too."""
    override = os.environ.get("GEOTWIN_PG_BIN")
    if override:
        return Path(override), "custom"
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p.name for p in root.glob("*") if (p / "bin" / "initdb").exists()),
        key=lambda v: [int(x) for x in re.findall(r"\d+", v)],
        reverse=True,
    ) if root.exists() else []
    for version in versions:
        if list(Path(f"/usr/share/postgresql/{version}/extension").glob("postgis.control")):
            return root / version / "bin", version
    found = ", ".join(versions) or "none"
    raise ClusterError(
        f"No PostgreSQL with PostGIS found (PostgreSQL versions found: {found}). "
        "Run `make setup` (it installs postgresql and postgresql-postgis with apt-get), "
        "or set DATABASE_URL to an existing PostGIS database."
    )


class LocalCluster:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.cluster_dir
        self.server_root = self._server_root()
        self.data_dir = self.server_root / "data"
        self.log_file = self.server_root / "server.log"
        self.password_file = self.root / "password"
        self.port_file = self.root / "port"
        explicit = "GEOTWIN_DB_PORT" in os.environ
        if self.port_file.exists() and not explicit:
            self.port = int(self.port_file.read_text().strip())
        else:
            self.port = settings.db_port
        self._explicit_port = explicit

    def _server_root(self) -> Path:
        """Where the server's own files go: the project's folder, unless the ``postgres`` user
        (used when running as root) cannot reach it — then a folder under /var/tmp named after
        the project path, so that each checkout still gets its own cluster."""
        if os.geteuid() != 0 or self._reachable_by_others(self.root):
            return self.root
        import hashlib

        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:10]
        return Path("/var/tmp") / f"geotwin-{digest}"

    @staticmethod
    def _reachable_by_others(path: Path) -> bool:
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                return False
        return True

    # -- identity -------------------------------------------------------------------------
    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run_user(self) -> str | None:
        return "postgres" if self._as_root else None

    def _chown(self, path: Path) -> None:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            args, user=self._run_user(), capture_output=True, text=True, timeout=timeout,
            cwd="/",
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"`{' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stderr.strip() or proc.stdout.strip()}"
                + (f"\nServer log: {self.log_file}" if self.log_file.exists() else "")
            )
        return proc

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self) -> str:
        return (
            f"postgresql://{DB_USER}:{quote(self.password(), safe='')}@127.0.0.1:{self.port}/{DB_NAME}"
        )

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        bindir, _ = find_pg_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_root.mkdir(parents=True, exist_ok=True)
        self._chown(self.server_root)
        if not self._explicit_port:
            # Another checkout's cluster may hold the default port: take the next free one.
            for candidate in range(self.port, self.port + 50):
                self.port = candidate
                if not self._port_taken():
                    break
        self.port_file.write_text(f"{self.port}\n")
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        os.chmod(self.password_file, 0o600)
        self._chown(self.root)
        self._chown(self.password_file)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.data_dir)
        pwfile = self.server_root / ".initdb-password"
        pwfile.write_text(self.password_file.read_text())
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        try:
            self._run([
                str(bindir / "initdb"), "-D", str(self.data_dir), "-U", DB_USER,
                f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=reject",
                "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
            ], timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_conf()

    def _write_conf(self) -> None:
        # postgresql.auto.conf is read last: the port and settings can be rewritten there.
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text("# written by geotwin (spatial_api/db/cluster.py)\n" + SERVER_CONF.format(port=self.port))
        self._chown(conf)

    def _port_taken(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def is_running(self) -> bool:
        if not self.initialised:
            return False
        bindir, _ = find_pg_bin()
        return self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False).returncode == 0

    def start(self) -> None:
        bindir, _ = find_pg_bin()
        if self.is_running():
            return
        if self._port_taken() and self._explicit_port is False and self.port_file.exists():
            raise ClusterError(
                f"Port {self.port} on 127.0.0.1 (this cluster's, in {self.port_file}) is taken by another "
                "program. Stop it, or set GEOTWIN_DB_PORT to a free port and run `geotwin db up` again."
            )
        if self._port_taken():
            raise ClusterError(
                f"Port {self.port} on 127.0.0.1 is taken by another program. "
                "Set GEOTWIN_DB_PORT to a free port, or DATABASE_URL to use an existing PostGIS."
            )
        if self._explicit_port:
            self.port_file.write_text(f"{self.port}\n")
            self._write_conf()
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)
        self._run([
            str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", "60", "start",
        ])
        # pg_ctl -w waits for the postmaster; wait for the TCP port too.
        deadline = time.monotonic() + 30
        while not self._port_taken():
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL started but does not listen on port {self.port}; see {self.log_file}")
            time.sleep(0.1)

    def stop(self) -> bool:
        if not self.is_running():
            return False
        bindir, _ = find_pg_bin()
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        return True

    def ensure_database(self) -> None:
        import psycopg

        admin_url = self.url().rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DB_NAME}" OWNER "{DB_USER}"')

    def up(self) -> None:
        if not self.initialised:
            self.init()
        self.start()
        self.ensure_database()

    def status(self) -> ClusterStatus:
        version = (self.data_dir / "PG_VERSION").read_text().strip() if self.initialised else None
        return ClusterStatus(self.initialised, self.is_running(), self.port, self.data_dir, version)
