"""Issue 12, item 1: a credential sent in the query string (``?api_key=`` is the documented way
for tile URLs, and QGIS 3.22's only way) is never stored in the audit log nor shown at
/admin/audit; nor are ``access_token``, ``token`` or ``key`` parameters. Other parameters stay
as they were sent, so the log still says what was asked. (The server's own request log is
checked with real server processes in test_security_servers.py.)"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import geopandas as gpd
import pytest
import shapely
from fastapi.testclient import TestClient

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector
from spatial_api.security import audit

SITE = (114.2500, 22.7200)


@pytest.fixture(scope="module")
def layers(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec_redact")
    sfx = uuid.uuid4().hex[:6]
    out = {}
    for level in ("public", "restricted"):
        name = f"t_red_{level[:3]}_{sfx}"
        path = tmp / f"{level}.geojson"
        gpd.GeoDataFrame({"code": ["K0"], "name": ["一"]},
                         geometry=[shapely.box(SITE[0], SITE[1], SITE[0] + 0.0006, SITE[1] + 0.0006)],
                         crs="EPSG:4490").to_file(path, driver="GeoJSON")
        ingest_vector(path, layer=name, key="code", access_level=level, valid_from="2024-01-01", settings=database)
        out[level] = name
    with db.connect(database) as conn:
        store.update_layer(conn, out["public"], editable=True)
        conn.commit()
    return out


@pytest.fixture(scope="module")
def app(database, layers):
    return create_app(database)


def audit_entries(app, auth, marker: str, want: int) -> list[dict]:
    """The audit entries whose detail mentions ``marker``, once ``want`` of them are there
    (restricted reads are written in batches)."""
    admin = TestClient(app, headers=auth("admin"))
    deadline = time.monotonic() + 10
    while True:
        entries = [e for e in admin.get("/admin/audit", params={"limit": 1000}).json()["entries"]
                   if marker in json.dumps(e["detail"])]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_query_credentials_never_reach_the_audit_log(app, auth, api_keys, layers, database):
    marker = uuid.uuid4().hex[:8]
    staff, officer = api_keys["gis-staff"], api_keys["land-officer"]
    secrets_sent = [staff, officer, "t0ken-Secret-1", "acc3ss.Token.2", "plain-key-3", "Upper-Secret-5"]
    anonymous = TestClient(app)
    item = f"/collections/{layers['public']}/items/K0"
    tag = anonymous.get(item).headers["etag"]
    # a write authenticated by ?api_key=
    r = anonymous.patch(f"{item}?api_key={staff}&token=t0ken-Secret-1&access_token=acc3ss.Token.2"
                        f"&m={marker}&valid_from=2024-06-01", json={"properties": {"name": "二"}},
                        headers={"If-Match": tag})
    assert r.status_code == 200, r.text
    # a restricted read by a percent-encoded parameter name, with more credential-like parameters
    r = anonymous.get(f"/collections/{layers['restricted']}/items?api%5Fkey={officer}&key=plain-key-3"
                      f"&m={marker}&x=Other-Key-4&TOKEN=Upper-Secret-5")
    assert r.status_code == 200
    # a refused write: still audited, still without the credential
    r = anonymous.delete(f"{item}?Access_Token=t0ken-Secret-1&m={marker}")
    assert r.status_code == 401

    entries = audit_entries(app, auth, marker, 3)
    assert len(entries) == 3, entries
    shown = json.dumps(entries, ensure_ascii=False)
    for secret in secrets_sent:
        assert secret not in shown, secret
    queries = sorted(e["detail"]["query"] for e in entries)
    assert any("valid_from=2024-06-01" in q and f"m={marker}" in q for q in queries)  # the rest is kept
    assert all("REDACTED" in q for q in queries)
    assert any("x=Other-Key-4" in q for q in queries)  # not a credential parameter: kept as sent
    with db.connect(database) as conn:  # and not in the table either
        stored = conn.execute("SELECT detail::text FROM audit_log WHERE detail::text LIKE %s",
                              (f"%{marker}%",)).fetchall()
    assert len(stored) == 3 and not any(s in row[0] for row in stored for s in secrets_sent)


def test_entries_written_before_the_fix_are_shown_redacted(app, auth, api_keys, database):
    """Rows recorded by an older server still hold keys: /admin/audit does not show them."""
    marker = uuid.uuid4().hex[:8]
    key = api_keys["planner"]
    with db.connect(database) as conn:
        audit.record(conn, audit.Entry(datetime.now(timezone.utc), "anonymous", "public", "anonymous", "write",
                                       "/collections/x/items", "POST", 401, "10.0.0.1",
                                       {"query": f"m={marker}&api_key={key}&access_token=abc"}))
        conn.commit()
    (entry,) = audit_entries(app, auth, marker, 1)
    assert key not in json.dumps(entry) and "abc" not in entry["detail"]["query"]
    assert entry["detail"]["query"].startswith(f"m={marker}&api_key=")


def test_migration_scrubs_entries_stored_before_the_fix(database):
    """Migration 0010 redacts the credentials that audit rows written before the fix still hold."""
    import uuid

    from spatial_api import db
    from spatial_api.db.migrations import run_upgrade

    scratch = database.replace(db_schema=f"geotwin_test_scrub_{uuid.uuid4().hex[:6]}")
    try:
        run_upgrade(scratch, "0009")
        leaked = "gtk_0123456789_abcdefabcdefabcdefabcdef"
        with db.connect(scratch) as conn:
            conn.execute("INSERT INTO audit_log (principal, role, via, action, target, detail) VALUES "
                         "('x', 'planner', 'key', 'read-restricted', 'tiles/a', %s::jsonb), "
                         "('y', 'planner', 'key', 'write', 'collections/a', %s::jsonb)",
                         (json.dumps({"query": f"datetime=2024-01-01&api_key={leaked}"}),
                          json.dumps({"query": "limit=5"})))
            conn.commit()
        run_upgrade(scratch, "head")
        with db.connect(scratch) as conn:
            queries = [r[0] for r in conn.execute("SELECT detail->>'query' FROM audit_log ORDER BY id")]
        assert queries == ["datetime=2024-01-01&api_key=REDACTED", "limit=5"]
    finally:
        with db.connect(database, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{scratch.db_schema}" CASCADE')
