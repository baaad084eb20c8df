"""The broker's users: rows of ``mqtt_credentials`` (migration 0014), turned into mosquitto's
password file and ACL.

- :func:`issue` creates (or replaces) a user with a new random password and returns it — the
  only time it is seen; the table keeps the hash. :func:`revoke` marks a user revoked.
- Both rewrite ``passwd`` and ``acl`` of the local broker from the table *as the given connection
  sees it* (so the caller's uncommitted row is included; commit afterwards — if the caller rolls
  back, :func:`sync` puts the files back in line) and send SIGHUP to a running broker, which
  re-reads them. They do so only for the broker that serves the connection's schema (see
  ``state.json``): a test schema never rewrites the main broker's users.
- Hashes are mosquitto's ``$7$`` format: PBKDF2-HMAC-SHA512, 101 iterations (mosquitto_passwd's
  default), a 12-byte random salt: ``$7$101$<base64 salt>$<base64 hash>``.
- ACL: per user ``topic read|write|readwrite <filter>`` lines; nothing else is allowed (mosquitto
  denies what no line grants). A device typically writes ``v1.1/Datastreams(<id>)/Observations``
  for each of its datastreams and reads nothing.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from sensing.mqtt.broker import SERVICE_USER, SHARE_GROUP, TOPIC_ROOT, LocalBroker
from spatial_api.config import Settings

ITERATIONS = 101
SALT_BYTES = 12
ROLES = ("device", "service")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class CredentialError(ValueError):
    """A user name or topic that cannot go into the password file / ACL; the message says why."""


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        _, kind, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    again = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return secrets.compare_digest(base64.b64encode(again).decode(), digest)


def check_topic(topic: str, parameter: str) -> str:
    """An MQTT topic filter fit for the ACL: no blanks or control characters, wildcards filling
    whole levels (``v1.1/Datastreams(+)/…`` is not a filter: a ``+`` must be a level of its own)."""
    if not isinstance(topic, str) or not topic or len(topic) > 512:
        raise CredentialError(f"{parameter}: {topic!r} is not a topic (1–512 characters)")
    if any(ch.isspace() or ord(ch) < 32 for ch in topic) or "\0" in topic:
        raise CredentialError(f"{parameter}: {topic!r} contains blanks or control characters")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and (level != "#" or i != len(levels) - 1)):
            raise CredentialError(f"{parameter}: {topic!r}: a wildcard (+ or #) must fill a whole level, and # "
                                  "must be last — e.g. v1.1/Datastreams(5)/Observations or v1.1/+/Observations")
    return topic


def _check(username: str, role: str, read_topics, write_topics) -> tuple[list[str], list[str]]:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise CredentialError(f"username: {username!r} — use letters, digits and . _ @ - (at most 128, "
                              "starting with a letter or digit)")
    if role not in ROLES:
        raise CredentialError(f"role: {role!r} — choose one of {', '.join(ROLES)}")
    if isinstance(read_topics, str) or isinstance(write_topics, str):
        raise CredentialError("read_topics / write_topics: give lists of topic filters, not one string")
    return ([check_topic(t, "read_topics") for t in read_topics or []],
            [check_topic(t, "write_topics") for t in write_topics or []])


def issue(conn, username: str, *, role: str = "device", read_topics=(), write_topics=(),
          settings: Settings | None = None) -> str:
    """Create or replace the broker user ``username`` with a new password (returned; only its hash
    is kept). The caller commits ``conn``. The local broker (if it serves this schema) is updated."""
    reads, writes = _check(username, role, read_topics, write_topics)
    password = secrets.token_urlsafe(24)
    conn.execute(
        """INSERT INTO mqtt_credentials (username, password_hash, role, read_topics, write_topics)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role,
               read_topics = excluded.read_topics, write_topics = excluded.write_topics,
               created_at = now(), revoked_at = NULL""",
        (username, hash_password(password), role, reads, writes))
    _refresh(conn, settings)
    return password


def revoke(conn, username: str, *, settings: Settings | None = None) -> bool:
    """Revoke a user (kept in the table with ``revoked_at``). False if there was no such active user.
    Connections already open stay until they reconnect — mosquitto checks passwords at CONNECT."""
    row = conn.execute("UPDATE mqtt_credentials SET revoked_at = now() WHERE username = %s AND revoked_at IS NULL "
                       "RETURNING username", (username,)).fetchone()
    _refresh(conn, settings)
    return row is not None


def ensure_service_user(conn, broker: LocalBroker) -> None:
    """The user of geotwin's own clients: reads and writes all STA topics (and the workers'
    shared subscription), reads the broker plugin's ``$select`` announcements. Its password is kept in ``service-password`` (0600)."""
    from sensing.mqtt.select import ANNOUNCE_FILTER

    reads = [f"{TOPIC_ROOT}/#", f"$share/{SHARE_GROUP}/{TOPIC_ROOT}/#", ANNOUNCE_FILTER]
    password = broker.service_password()
    row = conn.execute("SELECT password_hash, read_topics FROM mqtt_credentials "
                       "WHERE username = %s AND revoked_at IS NULL", (SERVICE_USER,)).fetchone()
    if password and row and verify_password(password, row[0]):
        if list(row[1] or []) != reads:  # (an older geotwin's row: the select announcements came later)
            conn.execute("UPDATE mqtt_credentials SET read_topics = %s WHERE username = %s", (reads, SERVICE_USER))
        return
    password = password or secrets.token_urlsafe(24)
    conn.execute(
        """INSERT INTO mqtt_credentials (username, password_hash, role, read_topics, write_topics)
           VALUES (%s, %s, 'service', %s, %s)
           ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = 'service',
               read_topics = excluded.read_topics, write_topics = excluded.write_topics, revoked_at = NULL""",
        (SERVICE_USER, hash_password(password), reads, [f"{TOPIC_ROOT}/#"]))
    tmp = broker.service_password_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.replace(tmp, broker.service_password_file)


def _lines(conn) -> tuple[str, str]:
    rows = conn.execute("SELECT username, password_hash, read_topics, write_topics FROM mqtt_credentials "
                        "WHERE revoked_at IS NULL ORDER BY username").fetchall()
    passwd = "".join(f"{u}:{h}\n" for u, h, _, _ in rows)
    acl = ["# written by geotwin from mqtt_credentials (sensing/mqtt/credentials.py); do not edit\n"]
    for user, _, reads, writes in rows:
        acl.append(f"\nuser {user}\n")
        for topic in dict.fromkeys([*reads, *writes]):
            mode = "readwrite" if topic in reads and topic in writes else "read" if topic in reads else "write"
            acl.append(f"topic {mode} {topic}\n")
    return passwd, "".join(acl)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@contextmanager
def _locked(broker: LocalBroker):
    broker.dir.mkdir(parents=True, exist_ok=True)
    with open(broker.dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_files(conn, broker: LocalBroker) -> None:
    """Rewrite ``passwd`` and ``acl`` from the table as ``conn`` sees it."""
    passwd, acl = _lines(conn)
    with _locked(broker):
        _atomic_write(broker.passwd_file, passwd)
        _atomic_write(broker.acl_file, acl)


def _refresh(conn, settings: Settings | None) -> bool:
    broker = LocalBroker(settings)
    if not broker.state_file.exists():
        return False
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    if not broker.serves(schema):
        return False
    write_files(conn, broker)
    broker.reload()
    return True


def sync(settings: Settings | None = None) -> bool:
    """Rewrite the local broker's files from the committed table and reload it."""
    from spatial_api import db

    with db.connect(settings) as conn:
        return _refresh(conn, settings)


__all__ = ["CredentialError", "check_topic", "ensure_service_user", "hash_password", "issue", "revoke", "sync",
           "verify_password", "write_files"]
