"""Alembic migrations, run programmatically (no alembic.ini needed): ``geotwin db up``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from spatial_api.config import Settings

HERE = Path(__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    from spatial_api.db import schema_name, sqlalchemy_url

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(settings).replace("%", "%%"))
    cfg.attributes["schema"] = schema_name(settings)
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


def run_upgrade(settings: Settings, revision: str = "head") -> str:
    command.upgrade(alembic_config(settings), revision)
    return head_revision() if revision == "head" else revision
