"""Settings, read from the environment (prefix ``GEOTWIN_``; ``DATABASE_URL`` is honoured as is).

A frozen dataclass rather than pydantic-settings: every ``geotwin`` command reads these, and
importing pydantic-settings alone cost 0.11 s of each command's start-up (measured; see
docs/benchmarks.md). Values are checked here, with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from spatial_api.security.roles import ROLES

#: The checkout this package runs from (editable install) — the default home of local state.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(ValueError):
    """An environment variable has a value geotwin cannot use."""


def _env(name: str, default=None):
    return os.environ.get(f"GEOTWIN_{name}", default)


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"GEOTWIN_{name}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class Settings:
    #: An external PostGIS. When unset, the project-local cluster (``geotwin db up``) is used.
    database_url: str | None = field(
        default_factory=lambda: os.environ.get("DATABASE_URL") or _env("DATABASE_URL") or None)
    #: Local state: the database cluster, demo files, caches.
    home: Path = field(default_factory=lambda: Path(_env("HOME", PROJECT_ROOT / ".geotwin")))
    #: Port of the project-local PostgreSQL cluster (the first free one from here at creation).
    db_port: int = field(default_factory=lambda: _env_int("DB_PORT", 55432))
    #: Database schema holding geotwin's tables (tests use their own).
    db_schema: str = field(default_factory=lambda: _env("DB_SCHEMA", "geotwin"))
    #: Dates without a time of day (``--valid-from 2023-12-31``) mean midnight in this zone.
    timezone: str = field(default_factory=lambda: _env("TIMEZONE", "Asia/Shanghai"))
    #: Vector-tile cache in memory, in MiB (0: no cache).
    tile_cache_mb: int = field(default_factory=lambda: _env_int("TILE_CACHE_MB", 256))
    #: Optional on-disk tile cache folder (kept across restarts, invalidated like the memory one).
    tile_cache_dir: Path | None = field(default_factory=lambda: Path(_env("TILE_CACHE_DIR")) if _env("TILE_CACHE_DIR") else None)
    #: ``Cache-Control: max-age`` of tiles, in seconds. 0 (default): clients revalidate with the
    #: ETag every time, so an edit shows at once; a 304 costs no rendering.
    tile_max_age: int = field(default_factory=lambda: _env_int("TILE_MAX_AGE", 0))
    #: Role of callers without a key or token (see spatial_api.security): "public" by default.
    anonymous_role: str = field(default_factory=lambda: _env("ANONYMOUS_ROLE", "public"))
    #: Requests per minute per client address for callers without a key (0: unlimited).
    anonymous_rate_per_min: int = field(default_factory=lambda: _env_int("ANONYMOUS_RATE_PER_MIN", 0))
    #: OIDC: the identity provider's JWKS (a local file or an intranet URL); unset = no OIDC.
    oidc_jwks: str | None = field(default_factory=lambda: _env("OIDC_JWKS") or None)
    oidc_issuer: str | None = field(default_factory=lambda: _env("OIDC_ISSUER") or None)
    oidc_audience: str | None = field(default_factory=lambda: _env("OIDC_AUDIENCE") or None)
    #: The token claim naming the caller's geotwin role(s) (a string or a list).
    oidc_role_claim: str = field(default_factory=lambda: _env("OIDC_ROLE_CLAIM", "geotwin_roles"))
    #: The MQTT broker (sensing): ``mqtt://[user:password@]host:port``. The default is geotwin's own
    #: mosquitto (``geotwin mqtt up``); without a user in the URL the service user's is used.
    mqtt_url: str = field(default_factory=lambda: _env("MQTT_URL", "mqtt://127.0.0.1:51883"))
    #: Where the local broker keeps its configuration, password file, ACL and data (default
    #: ``<home>/mqtt``).
    mqtt_dir: Path | None = field(default_factory=lambda: Path(_env("MQTT_DIR")) if _env("MQTT_DIR") else None)
    #: The server's address as clients see it: the base of ``@iot.selfLink`` in MQTT notifications
    #: published outside an HTTP request (the ingestion worker).
    public_url: str = field(default_factory=lambda: _env("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"))
    #: The token claim naming a community worker's community (sensing: the households it sees).
    oidc_community_claim: str = field(default_factory=lambda: _env("OIDC_COMMUNITY_CLAIM", "geotwin_community"))

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"GEOTWIN_TIMEZONE={self.timezone!r} is not a time zone name "
                                "(e.g. Asia/Shanghai)") from None

        if self.anonymous_role not in ROLES:
            raise SettingsError(f"GEOTWIN_ANONYMOUS_ROLE={self.anonymous_role!r}: choose one of {', '.join(ROLES)}")
        if not self.mqtt_url.startswith(("mqtt://", "mqtts://")):
            raise SettingsError(f"GEOTWIN_MQTT_URL={self.mqtt_url!r}: write it as mqtt://host:port "
                                "(optionally mqtt://user:password@host:port)")

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def cluster_dir(self) -> Path:
        return self.home / "db"

    @property
    def mqtt_home(self) -> Path:
        return self.mqtt_dir or self.home / "mqtt"

    @property
    def uses_local_cluster(self) -> bool:
        return not self.database_url


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests change the environment)."""
    get_settings.cache_clear()


def author_default() -> str:
    for var in ("GEOTWIN_USER", "SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return "unknown"
