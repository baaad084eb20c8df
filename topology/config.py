"""``cluster.toml``: every process of a geotwin deployment, by role, with its host and port.

The same file describes one machine (every host 127.0.0.1, as ``cluster.example.toml``) and several:
``geotwin cluster up`` on a machine starts the roles whose host is that machine (127.0.0.1,
localhost, its name or one of its addresses) and leaves the others to their own machines.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from spatial_api.objectstore.server import GRPC_OFFSET as S3_GRPC_OFFSET
from spatial_api.objectstore.server import PORT_SPAN as S3_PORT_SPAN


class TopologyError(ValueError):
    """cluster.toml cannot be used: the message names the file, the key and what to write."""


@dataclass(frozen=True)
class Endpoint:
    role: str
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Topology:
    file: Path
    state_dir: Path
    schema: str
    primary: Endpoint
    replicas: list[Endpoint]
    replica_slots: dict[str, str]
    apis: list[Endpoint]
    api_workers: int
    nginx: Endpoint
    nginx_options: dict
    broker: Endpoint | None
    workers: list[Endpoint]  # port 0: a worker listens on nothing
    s3: dict = field(default_factory=dict)  # GEOTWIN_S3_* for every process (endpoint, bucket, region …)
    synchronous: bool = False
    s3_server: Endpoint | None = None  # a SeaweedFS object store the cluster runs itself ([s3] port)

    def all(self) -> list[Endpoint]:
        return [self.primary, *self.replicas, *([self.s3_server] if self.s3_server else []),
                *([self.broker] if self.broker else []), *self.workers, *self.apis, self.nginx]

    def public_url(self) -> str:
        return f"http://{self.nginx.host}:{self.nginx.port}"


def _table(doc: dict, key: str, file: Path, required: bool = True) -> dict:
    value = doc.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{file}: [{key}] is missing or not a table (see cluster.example.toml)")
    return value


def _port(value, where: str, file: Path) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise TopologyError(f"{file}: {where}.port = {value!r} is not a port number (1–65535)")
    return value


def _host(value, where: str, file: Path) -> str:
    if value is None:
        return "127.0.0.1"
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"{file}: {where}.host = {value!r}: write a host name or address, e.g. \"127.0.0.1\"")
    return value.strip()


def load(path: Path) -> Topology:
    """Read and check ``cluster.toml`` (paths in it are relative to its folder)."""
    path = Path(path)
    if not path.exists():
        raise TopologyError(f"{path} does not exist: copy cluster.example.toml to {path.name} and edit it")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    cluster = _table(doc, "cluster", path, required=False)
    state_dir = Path(cluster.get("state_dir", ".geotwin/cluster"))
    state_dir = state_dir if state_dir.is_absolute() else base / state_dir
    schema = cluster.get("schema", "geotwin")

    pg = _table(doc, "postgres", path)
    prim = _table(pg, "primary", path)
    primary = Endpoint("postgres-primary", "primary", _host(prim.get("host"), "postgres.primary", path),
                       _port(prim.get("port"), "postgres.primary", path))
    replicas, slots = [], {}
    for i, r in enumerate(pg.get("replicas", []), 1):
        where = f"postgres.replicas[{i}]"
        name = r.get("name", f"replica{i}")
        if name == "primary":  # its data would share the primary's folder (<state_dir>/pg-primary)
            raise TopologyError(f"{path}: {where}.name = \"primary\" is the primary's own name: call it otherwise")
        replicas.append(Endpoint("postgres-replica", name, _host(r.get("host"), where, path),
                                 _port(r.get("port"), where, path)))
        slots[name] = r.get("slot", f"geotwin_{name}".lower().replace("-", "_"))

    api = _table(doc, "api", path)
    apis = [Endpoint("api", f"api{i}", _host(a.get("host"), f"api.replicas[{i}]", path),
                     _port(a.get("port"), f"api.replicas[{i}]", path))
            for i, a in enumerate(api.get("replicas", []), 1)]
    if not apis:
        raise TopologyError(f"{path}: [[api.replicas]] lists no API replica (give at least one host and port)")

    ngx = _table(doc, "nginx", path)
    nginx = Endpoint("nginx", "nginx", _host(ngx.get("host"), "nginx", path), _port(ngx.get("port"), "nginx", path))

    mqtt = _table(doc, "mqtt", path, required=False)
    broker = (Endpoint("mqtt-broker", "mosquitto", _host(mqtt.get("host"), "mqtt", path),
                       _port(mqtt.get("port"), "mqtt", path)) if mqtt else None)
    sensing = _table(doc, "sensing", path, required=False)
    workers = [Endpoint("sensing-worker", w.get("client_id", f"geotwin-worker-{i}"),
                        _host(w.get("host"), f"sensing.workers[{i}]", path), 0)
               for i, w in enumerate(sensing.get("workers", []), 1)]
    if workers and broker is None:
        raise TopologyError(f"{path}: [[sensing.workers]] need an [mqtt] broker (host, port)")

    s3 = _table(doc, "s3", path, required=False)
    s3_server = None
    if "port" in s3:
        if "endpoint" in s3:
            raise TopologyError(f"{path}: [s3] gives both port (a store the cluster runs) and endpoint (a store "
                                "run elsewhere): keep one")
        port = _port(s3["port"], "s3", path)
        if port + S3_PORT_SPAN - 1 + S3_GRPC_OFFSET > 65535:
            raise TopologyError(f"{path}: s3.port = {port}: the store also takes ports {port}–{port + S3_PORT_SPAN - 1} "
                                f"and {port + S3_GRPC_OFFSET}–{port + S3_GRPC_OFFSET + S3_PORT_SPAN - 1}; choose a port "
                                f"≤ {65535 - S3_GRPC_OFFSET - S3_PORT_SPAN + 1}, e.g. 18333")
        s3_server = Endpoint("s3", "seaweedfs", _host(s3.get("host"), "s3", path), port)
        s3 = {k: v for k, v in s3.items() if k not in ("host", "port")}
    elif "endpoint" not in s3 and s3:
        raise TopologyError(f"{path}: [s3] needs port (the cluster runs SeaweedFS there) or endpoint (a store run "
                            "elsewhere, e.g. \"http://minio.example:9000\")")

    names = [e.name for e in [*replicas, *apis, *workers]]
    if len(set(names)) != len(names):
        raise TopologyError(f"{path}: names must be unique across replicas, API replicas and workers: {names}")
    ports = [(e.host, e.port) for e in [primary, *replicas, *apis, nginx, *([broker] if broker else [])]]
    if s3_server:  # the store's own five ports and their gRPC ports
        ports += [(s3_server.host, s3_server.port + i + g) for i in range(S3_PORT_SPAN) for g in (0, S3_GRPC_OFFSET)]
    if len(set(ports)) != len(ports):
        raise TopologyError(f"{path}: two roles share a host and port: {sorted(ports)}")
    return Topology(file=path, state_dir=state_dir, schema=schema, primary=primary, replicas=replicas,
                    replica_slots=slots, apis=apis, api_workers=int(api.get("workers", 1)), nginx=nginx,
                    nginx_options=ngx, broker=broker, workers=workers, s3=s3,
                    synchronous=bool(pg.get("synchronous", False)), s3_server=s3_server)


def is_local(host: str) -> bool:
    """Does ``host`` name this machine (then ``cluster up`` here starts its roles)?"""
    if host in ("127.0.0.1", "localhost", "::1", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        return bool(mine & {a[4][0] for a in socket.getaddrinfo(host, None)})
    except OSError:
        return False
