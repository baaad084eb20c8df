"""Settings from the environment."""

from pathlib import Path

import pytest

from spatial_api.config import Settings, SettingsError


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/gis")
    monkeypatch.setenv("GEOTWIN_DB_PORT", "6543")
    monkeypatch.setenv("GEOTWIN_HOME", "/srv/geotwin")
    monkeypatch.setenv("GEOTWIN_DB_SCHEMA", "other")
    s = Settings()
    assert (s.database_url, s.db_port, s.home, s.db_schema) == ("postgresql://u:p@db:5432/gis", 6543,
                                                                 Path("/srv/geotwin"), "other")
    assert not s.uses_local_cluster and s.cluster_dir == Path("/srv/geotwin/db")
    assert Settings(db_schema="x").db_schema == "x" and s.replace(db_port=1).db_port == 1


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("GEOTWIN_DB_PORT", "five")
    with pytest.raises(SettingsError, match="GEOTWIN_DB_PORT='five'"):
        Settings()
    monkeypatch.delenv("GEOTWIN_DB_PORT")
    monkeypatch.setenv("GEOTWIN_TIMEZONE", "Mars/Olympus")
    with pytest.raises(SettingsError, match="GEOTWIN_TIMEZONE"):
        Settings()


def test_defaults(monkeypatch):
    for var in ("DATABASE_URL", "GEOTWIN_DATABASE_URL", "GEOTWIN_DB_PORT", "GEOTWIN_TIMEZONE"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.uses_local_cluster and s.db_port == 55432 and s.timezone == "Asia/Shanghai"
