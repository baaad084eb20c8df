"""API keys: ``gtk_<key_id>_<secret>``; only the SHA-256 of the whole key is stored.

A key is shown once, at creation. ``key_id`` (public, 10 hex characters) names it in listings,
audit entries and ``revoke``. Keys carry 160 bits of randomness, so a plain SHA-256 is the right
digest (a slow password hash guards low-entropy secrets; it would only slow every request).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from spatial_api.security.roles import ROLES

KEY_RE = re.compile(r"^gtk_([0-9a-f]{10})_([A-Za-z0-9_-]{20,})$")


class KeyError_(ValueError):
    """A bad key operation (unknown role, unknown key id …): the message says what to do."""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    role: str
    rate_per_min: int
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    community: str | None = None  # a community-worker key's community


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(conn: psycopg.Connection, name: str, role: str, *, created_by: str, rate_per_min: int = 6000,
           community: str | None = None) -> str:
    """Create a key; returns it (the only time it is ever visible). A ``community-worker`` key needs
    its ``community`` (the households it may see)."""
    if role not in ROLES:
        raise KeyError_(f"role {role!r}: choose one of {', '.join(ROLES)}")
    community = community.strip() if community and community.strip() else None
    if role == "community-worker" and community is None:
        raise KeyError_("a community-worker key needs its community: add --community <name> "
                        "(e.g. --community 坂田社区); it sees only that community's households")
    if not name.strip():
        raise KeyError_("give the key a name (who or what uses it, e.g. 'land-bureau-gis')")
    if rate_per_min < 1:
        raise KeyError_(f"--rate {rate_per_min}: requests per minute must be at least 1")
    key_id = secrets.token_hex(5)
    key = f"gtk_{key_id}_{secrets.token_urlsafe(20)}"
    conn.execute(
        "INSERT INTO api_keys (key_id, secret_sha256, name, role, rate_per_min, created_by, community) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (key_id, digest(key), name.strip(), role, rate_per_min, created_by, community))
    return key


def listing(conn: psycopg.Connection, *, include_revoked: bool = False) -> list[KeyRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT key_id, name, role, rate_per_min, created_at, created_by, revoked_at, community FROM api_keys "
            + ("" if include_revoked else "WHERE revoked_at IS NULL ") + "ORDER BY created_at").fetchall()
    return [KeyRecord(**r) for r in rows]


def revoke(conn: psycopg.Connection, key_id: str, *, revoked_by: str) -> KeyRecord:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE api_keys SET revoked_at = now(), revoked_by = %s WHERE key_id = %s AND revoked_at IS NULL "
            "RETURNING key_id, name, role, rate_per_min, created_at, created_by, revoked_at, community",
            (revoked_by, key_id)).fetchone()
        if row is None:
            known = cur.execute("SELECT revoked_at FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
            if known is None:
                raise KeyError_(f"no key with id {key_id!r}; `geotwin keys list` shows the ids")
            raise KeyError_(f"key {key_id!r} was already revoked at {known['revoked_at']:%Y-%m-%d %H:%M}")
    conn.execute("SELECT pg_notify('geotwin_keys', %s)", (key_id,))
    return KeyRecord(**row)


def lookup(conn: psycopg.Connection, key: str) -> KeyRecord | None:
    """The live key record for a presented key, or None (malformed, unknown or revoked)."""
    m = KEY_RE.match(key)
    if not m:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT key_id, name, role, rate_per_min, created_at, created_by, revoked_at, community, secret_sha256 "
            "FROM api_keys WHERE key_id = %s", (m.group(1),)).fetchone()
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(row.pop("secret_sha256"), digest(key)):
        return None
    return KeyRecord(**row)
