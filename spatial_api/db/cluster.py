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
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.password_file = self.root / "password"
        self.port = settings.db_port

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
        if self._as_root:
            # postgres must be able to reach the folder: every parent needs o+x.
            for parent in [self.root, *self.root.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise ClusterError(
                        f"The postgres user cannot enter {parent} (mode {oct(mode & 0o777)}). "
                        "Run `chmod o+x` on it or set GEOTWIN_HOME to a folder under /tmp or /srv."
                    )
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        os.chmod(self.password_file, 0o600)
        self._chown(self.root)
        self._chown(self.password_file)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.data_dir)
        self._run([
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", DB_USER,
            f"--pwfile={self.password_file}", "--auth-host=scram-sha-256", "--auth-local=reject",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
        ], timeout=300)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(SERVER_CONF.format(port=self.port))

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
        if self._port_taken():
            raise ClusterError(
                f"Port {self.port} on 127.0.0.1 is taken by another program. "
                "Set GEOTWIN_DB_PORT to a free port, or DATABASE_URL to use an existing PostGIS."
            )
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
