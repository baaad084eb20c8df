"""geotwin's own MQTT broker: Debian's mosquitto (2.0), run like the local database
(``geotwin mqtt up | down | status``).

Everything lives in one folder, ``settings.mqtt_home`` (``<home>/mqtt`` unless ``GEOTWIN_MQTT_DIR``):
``mosquitto.conf`` (written by :func:`config_text`), ``passwd`` and ``acl`` (generated from the
``mqtt_credentials`` table by :mod:`sensing.mqtt.credentials`), ``data/`` (mosquitto's persistence),
``mosquitto.log``, ``mosquitto.pid``, ``service-password`` (0600: the password of the
``geotwin-service`` user that the ingestion worker and the notifier use) and ``state.json`` (the
port and the database schema whose credentials the broker serves — a test schema never rewrites
the password file of the main broker).

Settings that lose nothing:

- ``persistence true`` — sessions, subscriptions and queued / in-flight QoS 1 messages are written
  to ``data/mosquitto.db`` every ``autosave_interval`` seconds and on every orderly shutdown
  (``down``, SIGTERM), and read back at start: a restarted broker still holds what it had queued.
  A *crash* of the broker (SIGKILL, power) can lose what arrived since the last autosave — that is
  mosquitto 2.0's persistence model (snapshots, no write-ahead log);
- ``max_queued_messages 0`` and ``max_queued_bytes 0`` — no silent drop of a slow or offline
  persistent subscriber's queue (mosquitto's default of 1,000 drops the rest without a word);
- ``max_inflight_messages 10000`` — unacknowledged QoS 1 messages in flight per client, each way
  (mosquitto announces it as its Receive Maximum to MQTT 5 clients; an MQTT 5 client states its
  own for the other direction — the worker asks for 4 × its batch size); more wait in the queue;
- ``persistent_client_expiration 30d`` — a persistent session kept a month for a device that is
  offline that long, then dropped (the non-standard "never" would keep sessions of clients with
  random ids forever);
- ``set_tcp_nodelay false`` (mosquitto's default, said aloud): Nagle's algorithm lets the kernel
  put the many small packets of a busy connection (PUBACKs, notifications) into fewer segments —
  measured at 20,000 observations/s with STA notifications: the broker's CPU per observation
  33.9 → 28.4 µs and the store lag p50 1.7 s → 0.1 s (docs/benchmarks.md); a lone packet still
  leaves at once, a second one behind an unacknowledged segment waits for its ACK (≤ 40 ms);
- ``plugin geotwin_select.so`` — built here from ``sensing/mqtt/plugin/geotwin_select.c``: it
  announces the ``$select`` subscriptions to geotwin's publishers (:mod:`sensing.mqtt.select`) and
  decides nothing (the ACL file does);
- ``allow_anonymous false``, ``password_file`` (PBKDF2-SHA512, ``$7$``), ``acl_file``, one listener
  on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from spatial_api.config import Settings, get_settings

MOSQUITTO = os.environ.get("GEOTWIN_MOSQUITTO", "/usr/sbin/mosquitto")
SERVICE_USER = "geotwin-service"
#: The shared-subscription group of the ingestion workers (``--shared``).
SHARE_GROUP = "geotwin"
#: STA topics live under the API version.
TOPIC_ROOT = "v1.1"
#: What the ingestion worker subscribes to: every ``v1.1/<level>/Observations`` (a ``+`` fills a
#: whole level, so ``Datastreams(5)`` is one level, parsed by the worker).
INGEST_TOPIC = f"{TOPIC_ROOT}/+/Observations"
SHARED_INGEST_TOPIC = f"$share/{SHARE_GROUP}/{INGEST_TOPIC}"


def subscription(shared: bool = False):
    """(topic filter, options) of the worker's QoS 1 subscription. Not shared: "No Local" — the
    worker does not receive the notifications it publishes itself on the same connection (MQTT 5
    forbids No Local on a shared subscription)."""
    from paho.mqtt.subscribeoptions import SubscribeOptions

    if shared:
        return SHARED_INGEST_TOPIC, SubscribeOptions(qos=1)
    return INGEST_TOPIC, SubscribeOptions(qos=1, noLocal=True)

CONF = """# written by geotwin (sensing/mqtt/broker.py) — `geotwin mqtt up` rewrites it
user {user}
pid_file {dir}/mosquitto.pid
per_listener_settings false
listener {port} {host}
allow_anonymous false
password_file {dir}/passwd
acl_file {dir}/acl
persistence true
persistence_location {dir}/data/
persistence_file mosquitto.db
autosave_interval {autosave}
autosave_on_changes false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages {inflight}
persistent_client_expiration 30d
set_tcp_nodelay false
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
{plugin}"""


class BrokerError(RuntimeError):
    """The broker cannot be set up, started or reached; the message says what to do."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    port: int
    host: str
    folder: Path
    schema: str | None


def parse_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise BrokerError(f"GEOTWIN_MQTT_URL={url!r}: write it as mqtt://host:port")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise BrokerError(f"GEOTWIN_MQTT_URL={url!r}: the port is not a number") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, parts.scheme == "mqtts"


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


class LocalBroker:
    """geotwin's mosquitto: its folder, its files and its process."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.dir = Path(self.settings.mqtt_home)
        host, port, _, _, _ = parse_url(self.settings.mqtt_url)
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.conf_file = self.dir / "mosquitto.conf"
        self.passwd_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.pid_file = self.dir / "mosquitto.pid"
        self.log_file = self.dir / "mosquitto.log"
        self.data_dir = self.dir / "data"
        self.service_password_file = self.dir / "service-password"
        self.state_file = self.dir / "state.json"
        self.shared_sessions_file = self.dir / "shared-sessions.json"

    # -- files ---------------------------------------------------------------------------
    def config_text(self, *, autosave: int = 30, inflight: int = 10000, plugin: Path | None = None) -> str:
        return CONF.format(user=pwd.getpwuid(os.geteuid()).pw_name, dir=self.dir, port=self.port,
                           host=self.host, autosave=autosave, inflight=inflight,
                           plugin=f"plugin {plugin}\n" if plugin else "")

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def serves(self, schema: str) -> bool:
        """Does this broker take its users from ``schema``'s ``mqtt_credentials``?"""
        return self.state().get("schema") == schema

    def service_password(self) -> str | None:
        try:
            return self.service_password_file.read_text().strip() or None
        except OSError:
            return None

    # -- shared subscriptions --------------------------------------------------------------
    # mosquitto 2.0.11 restores a persistent session after a restart — its queued and in-flight
    # messages included — but not the session's *shared* subscriptions (measured; 2.0's persistence
    # writes the subscription tree, where shared subscriptions hang off a separate list). Until a
    # worker subscribes again, what devices publish matches no subscriber and is dropped after its
    # PUBACK. So the workers' client ids are recorded here, and `start` resubscribes them before
    # devices may log in (see `start`).
    def shared_sessions(self) -> list[str]:
        """Client ids of the workers holding the shared subscription (recorded when they subscribe)."""
        try:
            ids = json.loads(self.shared_sessions_file.read_text())
        except (OSError, ValueError):
            return []
        return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []

    def _write_shared_sessions(self, ids: list[str]) -> None:
        tmp = self.shared_sessions_file.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps(sorted(set(ids))) + "\n")
        os.replace(tmp, self.shared_sessions_file)

    @contextlib.contextmanager
    def _shared_sessions_locked(self):
        """Workers record themselves at once (threads of one supervisor, processes): the read-modify-
        write of the record holds an exclusive lock on its lock file, or one worker's entry is lost."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.shared_sessions_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add_shared_session(self, client_id: str) -> None:
        with self._shared_sessions_locked():
            ids = self.shared_sessions()
            if client_id not in ids:
                self._write_shared_sessions([*ids, client_id])

    def remove_shared_session(self, client_id: str) -> None:
        with self._shared_sessions_locked():
            ids = self.shared_sessions()
            if client_id in ids:
                self._write_shared_sessions([i for i in ids if i != client_id])

    # -- process -------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The broker's pid if it runs (the pid file names a live mosquitto using our config)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or not cmdline[0].endswith(b"mosquitto") or str(self.conf_file).encode() not in cmdline:
            return None
        try:  # a zombie is not running
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def prepare(self) -> None:
        """Check the host and the binary; write the folder and ``mosquitto.conf`` (the users are
        written by :mod:`sensing.mqtt.credentials`; :func:`sensing.mqtt.control.up` does all)."""
        if not _is_local(self.host):
            raise BrokerError(f"GEOTWIN_MQTT_URL={self.settings.mqtt_url!r} names another host: geotwin only "
                              "runs a broker on 127.0.0.1. Unset it for the local broker, or run that broker yourself.")
        if not Path(MOSQUITTO).exists():
            raise BrokerError(f"{MOSQUITTO} not found: install Debian's mosquitto (`apt-get install mosquitto`, "
                              "`make setup` does it) or set GEOTWIN_MOSQUITTO to its path.")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        os.chmod(self.dir, 0o700)
        from sensing.mqtt.select import build_plugin

        self.conf_file.write_text(self.config_text(plugin=build_plugin(self.dir)))

    def write_state(self, schema: str) -> None:
        self.state_file.write_text(json.dumps({"schema": schema, "port": self.port, "host": self.host}) + "\n")

    def start(self, *, timeout: float = 30, worker_session: str | None = None) -> bool:
        """Start mosquitto unless it runs (then reload its users). True if it was started.
        ``worker_session``: a worker client id whose persistent session (with its subscription) is
        made now, so that what devices publish before that worker first runs is kept for it — not
        dropped for want of a subscriber."""
        if self.is_running():
            self.reload()  # (its sessions are there already: connecting now could push a running worker off)
            return False
        if self._port_open():
            raise BrokerError(f"port {self.port} on {self.host} is taken by another program. Stop it, or set "
                              f"GEOTWIN_MQTT_URL=mqtt://127.0.0.1:<free port> and run `geotwin mqtt up` again.")
        self.pid_file.unlink(missing_ok=True)
        # The gate: with workers on the shared subscription, the broker first admits only
        # geotwin's service user; the workers' sessions get their shared subscription back (which
        # mosquitto 2.0.11 does not restore); then every device user is let in (password file
        # written back, SIGHUP). A device refused meanwhile keeps its QoS 1 messages and connects
        # again: nothing it publishes can arrive while no worker is subscribed.
        shared = self.shared_sessions()
        full_passwd = None
        if shared and self.passwd_file.exists():
            full_passwd = self.passwd_file.read_text()
            only_service = [ln for ln in full_passwd.splitlines() if ln.startswith(f"{SERVICE_USER}:")]
            self.passwd_file.write_text("\n".join(only_service) + "\n")
        try:
            self._spawn(timeout)
            for cid in shared:
                ensure_worker_session(self.settings, cid, shared=True)
        finally:
            if full_passwd is not None:
                self.passwd_file.write_text(full_passwd)
                self.reload()
        if worker_session:
            ensure_worker_session(self.settings, worker_session)
        return True

    def _spawn(self, timeout: float) -> None:
        proc = subprocess.run([MOSQUITTO, "-c", str(self.conf_file), "-d"], capture_output=True, text=True,
                              timeout=30, cwd=self.dir, check=False)
        if proc.returncode != 0:
            raise BrokerError(f"mosquitto did not start (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()} — see {self.log_file}")
        deadline = time.monotonic() + timeout
        while not (self.is_running() and self._port_open()):
            if time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                raise BrokerError(f"mosquitto did not come up on {self.host}:{self.port} within {timeout:.0f} s; "
                                  f"its log ({self.log_file}):\n{tail}")
            time.sleep(0.05)

    def reload(self) -> bool:
        """SIGHUP: mosquitto re-reads the password file and the ACL. False if it does not run."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGHUP)
        return True

    def down(self, *, timeout: float = 60, kill: bool = False) -> bool:
        """Stop the broker (SIGTERM: it writes its persistence file first). False if not running.
        ``kill``: SIGKILL instead (tests of a crash)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() == pid:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto (pid {pid}) did not stop within {timeout:.0f} s")
            time.sleep(0.05)
        # the listening port is released with the process; wait for it so that `up` can follow at once
        while self._port_open() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def status(self) -> BrokerStatus:
        pid = self.pid()
        return BrokerStatus(pid is not None, pid, self.port, self.host, self.dir, self.state().get("schema"))


def endpoint(settings: Settings | None = None) -> Endpoint:
    """Where the broker is and the credentials of geotwin's own clients (worker, notifier,
    simulator): the user of ``GEOTWIN_MQTT_URL`` if it has one, else the local broker's service user."""
    settings = settings or get_settings()
    host, port, user, password, tls = parse_url(settings.mqtt_url)
    if user is None:
        broker = LocalBroker(settings)
        password = broker.service_password()
        user = SERVICE_USER if password else None
    return Endpoint(host, port, user, password, tls)


def connection_params(settings: Settings | None = None) -> dict:
    """``{"host", "port", "username", "password"}`` for a paho client (see :func:`client`)."""
    ep = endpoint(settings)
    return {"host": ep.host, "port": ep.port, "username": ep.username, "password": ep.password}


def client(settings: Settings | None = None, client_id: str = "", *, persistent: bool = False,
           receive_maximum: int | None = None, manual_ack: bool = False, ep: Endpoint | None = None,
           inflight: int = 1000, batched: bool = False):
    """A paho-mqtt 2 client (MQTT 5) with geotwin's credentials, not yet connected. ``persistent``:
    a session that outlives the connection (clean_start False, no session expiry) — then give a
    fixed ``client_id``. ``receive_maximum``: unacknowledged QoS 1 messages the broker may send it;
    ``inflight``: unacknowledged messages it sends (paho holds the rest in memory). Connect with
    :func:`connect`. ``batched``: a :class:`sensing.mqtt.fastclient.BatchClient` (many packets
    per read and per write: the ingestion worker, the announcer, load generators)."""
    import paho.mqtt.client as mqtt

    ep = ep or endpoint(settings)
    if batched:
        from sensing.mqtt.fastclient import BatchClient as cls
    else:
        cls = mqtt.Client
    c = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                    manual_ack=manual_ack)
    if ep.username:
        c.username_pw_set(ep.username, ep.password)
    if ep.tls:
        c.tls_set()
    c.max_inflight_messages_set(max(0, inflight))  # 0: no limit in paho (the caller keeps one)
    c.max_queued_messages_set(0)
    c.on_socket_open = _nodelay  # paho leaves Nagle on: small packets (PUBACKs) would wait ~40 ms for TCP ACKs
    c.geotwin_connect = {"host": ep.host, "port": ep.port, "persistent": persistent,
                         "receive_maximum": receive_maximum}
    return c


def _nodelay(client, userdata, sock) -> None:
    import socket as _socket

    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


def connect_properties(*, persistent: bool, receive_maximum: int | None = None):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = 0xFFFFFFFF  # never expires (the broker's 30 d limit applies)
    if receive_maximum:
        props.ReceiveMaximum = min(65535, receive_maximum)
    return props


def connect(c, *, keepalive: int = 30, blocking: bool = True) -> None:
    """Connect a client made by :func:`client` (``blocking=False``: in the background, retried by
    paho's loop — for processes that must run without a broker)."""
    opts = c.geotwin_connect
    props = connect_properties(persistent=opts["persistent"], receive_maximum=opts["receive_maximum"])
    c.reconnect_delay_set(min_delay=1, max_delay=10)
    if blocking:
        c.connect(opts["host"], opts["port"], keepalive=keepalive, clean_start=not opts["persistent"],
                  properties=props)
    else:
        c.connect_async(opts["host"], opts["port"], keepalive=keepalive, clean_start=not opts["persistent"],
                        properties=props)


__all__ = ["INGEST_TOPIC", "SERVICE_USER", "SHARED_INGEST_TOPIC", "SHARE_GROUP", "TOPIC_ROOT", "BrokerError",
           "BrokerStatus", "Endpoint", "LocalBroker",
           "client", "connect", "connect_properties", "connection_params", "endpoint", "ensure_worker_session",
           "forget_session", "parse_url", "subscription"]


def ensure_worker_session(settings: Settings | None, client_id: str, timeout: float = 20, *,
                          shared: bool = False) -> None:
    """Make (or keep) the persistent session of worker ``client_id`` with its QoS 1 subscription,
    without consuming anything: connect, subscribe, leave."""
    import threading

    c = client(settings, client_id, persistent=True, manual_ack=True)
    done = threading.Event()
    c.on_connect = lambda cl, *a: cl.subscribe([subscription(shared)])
    c.on_subscribe = lambda *a: done.set()
    c.on_message = lambda *a: None  # not acknowledged: redelivered to the worker itself
    connect(c)
    c.loop_start()
    try:
        if not done.wait(timeout):
            raise BrokerError(f"no SUBACK within {timeout:.0f} s for the session of worker {client_id!r}")
    finally:
        c.disconnect()
        c.loop_stop()


def forget_session(settings: Settings | None, client_id: str, timeout: float = 20) -> None:
    """End the persistent session of ``client_id`` (a retired worker or subscriber): connect with
    clean start and no session expiry, then leave. Messages still queued for it are dropped —
    retire a worker only after it has drained its queue (a shared group keeps giving an offline
    member its share of messages until then)."""
    import threading

    with contextlib.suppress(OSError):
        LocalBroker(settings).remove_shared_session(client_id)
    c = client(settings, client_id, persistent=False)
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    connect(c)
    c.loop_start()
    try:
        if not done.wait(timeout):
            raise BrokerError(f"no CONNACK within {timeout:.0f} s while forgetting session {client_id!r}")
    finally:
        c.disconnect()
        c.loop_stop()
