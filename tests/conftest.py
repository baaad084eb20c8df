"""Test set-up. Integration tests run against a real PostGIS: the project-local cluster, or
DATABASE_URL when set. They use their own schema (geotwin_test), recreated once per run, so the
demo district in schema geotwin is never touched."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("GEOTWIN_DB_SCHEMA", "geotwin_test")
# Tests must not depend on the caller's login name.
os.environ.setdefault("GEOTWIN_USER", "pytest")


@pytest.fixture(scope="session")
def settings():
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    s = get_settings()
    assert s.db_schema != "geotwin", "tests must not run in the production schema"
    return s


@pytest.fixture(scope="session")
def database(settings):
    """The test schema, freshly migrated."""
    from spatial_api import db
    from spatial_api.db.cluster import LocalCluster

    if settings.uses_local_cluster:
        LocalCluster(settings).up()
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
    db.migrate(settings)
    return settings


@pytest.fixture
def conn(database):
    from spatial_api import db

    with db.connect(database) as c:
        yield c


@pytest.fixture
def layer_name():
    """A layer name no other test uses."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def api_keys(database):
    """One API key per role in the test schema: {role: key}."""
    from spatial_api import db
    from spatial_api.security import ROLES, keys

    with db.connect(database) as conn:
        made = {role: keys.create(conn, f"test-{role}", role, created_by="pytest",
                                  community="测试社区" if role == "community-worker" else None) for role in ROLES}
        conn.commit()
    return made


@pytest.fixture(scope="session")
def auth(api_keys):
    """Request headers for a role: auth("gis-staff") → {"Authorization": "Bearer gtk_…"}."""
    return lambda role: {"Authorization": f"Bearer {api_keys[role]}"}
