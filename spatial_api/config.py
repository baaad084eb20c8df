"""Settings, read from the environment (prefix ``GEOTWIN_``; ``DATABASE_URL`` is honoured as is)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The checkout this package runs from (editable install) — the default home of local state.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEOTWIN_", extra="ignore")

    #: An external PostGIS. When unset, the project-local cluster (``geotwin db up``) is used.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "GEOTWIN_DATABASE_URL")
    )
    #: Local state: the database cluster, demo files, caches.
    home: Path = PROJECT_ROOT / ".geotwin"
    #: Port of the project-local PostgreSQL cluster.
    db_port: int = 55432
    #: Database schema holding geotwin's tables (tests use their own).
    db_schema: str = "geotwin"
    #: Dates without a time of day (``--valid-from 2023-12-31``) mean midnight in this zone.
    timezone: str = "Asia/Shanghai"

    @property
    def cluster_dir(self) -> Path:
        return self.home / "db"

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
