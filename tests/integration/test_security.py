"""Access control end to end: a restricted layer is invisible everywhere to the public and to
roles below it, visible to a land officer; writes need the role; every write and every restricted
read is in the audit log; keys from the real CLI, revoked keys, rate limits, OIDC tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import geopandas as gpd
import jwt
import morecantile
import pytest
import shapely
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from spatial_api import db, store
from spatial_api.app import create_app
from spatial_api.ingest import ingest_vector

WM = morecantile.tms.get("WebMercatorQuad")
SITE = (114.2500, 22.7200)


def write_layer(path, names):
    x, y = SITE
    geoms = [shapely.box(x + i * 0.001, y, x + i * 0.001 + 0.0006, y + 0.0006) for i in range(len(names))]
    gpd.GeoDataFrame({"code": [f"K{i}" for i in range(len(names))], "name": names}, geometry=geoms,
                     crs="EPSG:4490").to_file(path, driver="GeoJSON")
    return path


@pytest.fixture(scope="module")
def layers(database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    sfx = uuid.uuid4().hex[:6]
    out = {}
    for level in ("public", "internal", "restricted"):
        name = f"t_sec_{level[:3]}_{sfx}"
        ingest_vector(write_layer(tmp / f"{level}.geojson", ["一", "二"]), layer=name, key="code",
                      access_level=level, valid_from="2024-01-01", settings=database)
        out[level] = name
    with db.connect(database) as conn:
        store.update_layer(conn, out["restricted"], editable=True)
        store.update_layer(conn, out["public"], editable=True)
        conn.commit()
    return out


@pytest.fixture(scope="module")
def app(database, layers):
    return create_app(database)


def as_role(app, auth, role):
    return TestClient(app, headers=auth(role)) if role else TestClient(app)


def urls(name):
    t = WM.tile(*SITE, 15)
    return {
        "collection": f"/collections/{name}",
        "items": f"/collections/{name}/items",
        "item": f"/collections/{name}/items/K0",
        "tiles": f"/collections/{name}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}",
        "xyz": f"/tiles/{name}/{t.z}/{t.x}/{t.y}.mvt",
        "tilejson": f"/tiles/{name}/tilejson.json",
    }


@pytest.mark.parametrize("role,sees", [(None, {"public"}), ("public", {"public"}),
                                       ("external-platform", {"public", "internal"}),
                                       ("planner", {"public", "internal"}),
                                       ("land-officer", {"public", "internal", "restricted"}),
                                       ("admin", {"public", "internal", "restricted"})])
def test_a_layer_is_visible_exactly_to_the_roles_that_may_see_it(app, auth, layers, role, sees):
    # An officer has already had the restricted tiles rendered: the cache must not leak them.
    officer = as_role(app, auth, "land-officer")
    for u in urls(layers["restricted"]).values():
        assert officer.get(u).status_code in (200, 204), u
    c = as_role(app, auth, role)
    listed = {col["id"] for col in c.get("/collections").json()["collections"]}
    wmts = c.get("/wmts/1.0.0/WMTSCapabilities.xml").text
    for level, name in layers.items():
        visible = level in sees
        assert (name in listed) == visible, (role, level)
        assert (f"<ows:Identifier>{name}</ows:Identifier>" in wmts) == visible, (role, level)
        for what, u in urls(name).items():
            status = c.get(u).status_code
            assert (status in (200, 204)) == visible, (role, level, what, status)
            if not visible:
                assert status == 404, (role, level, what, status)  # as if it did not exist
    multi = urls(layers["public"])["xyz"].replace(layers["public"], f"{layers['public']},{layers['restricted']}")
    assert c.get(multi).status_code == (200 if "restricted" in sees else 404)


def test_writes_need_the_role_and_are_audited(app, auth, layers, database):
    url = urls(layers["public"])["item"]
    tag = TestClient(app).get(url).headers["etag"]
    body = {"properties": {"name": "改"}}
    assert TestClient(app).patch(url, json=body, headers={"If-Match": tag}).status_code == 401
    planner = as_role(app, auth, "planner")
    r = planner.patch(url, json=body, headers={"If-Match": tag})
    assert r.status_code == 403 and "features:write" in r.json()["description"]
    # A restricted layer the caller cannot see stays a 404 even for writes.
    r = planner.patch(urls(layers["restricted"])["item"], json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 404
    staff = as_role(app, auth, "gis-staff")
    assert staff.patch(url, json=body, headers={"If-Match": tag}).status_code == 200
    admin = as_role(app, auth, "admin")
    entries = admin.get("/admin/audit", params={"target": url, "action": "write"}).json()["entries"]
    seen = {(e["principal"], e["status"], e["method"]) for e in entries}
    assert {("anonymous", 401, "PATCH"), ("test-planner", 403, "PATCH"), ("test-gis-staff", 200, "PATCH")} <= seen
    assert all(e["client"] for e in entries)
    assert planner.get("/admin/audit").status_code == 403
    assert TestClient(app).get("/admin/audit").status_code == 401
    # the changeset names the key's owner
    with db.connect(database) as conn:
        assert store.changesets(conn, layers["public"])[-1]["author"].startswith("test-gis-staff")


def test_reads_of_a_restricted_layer_are_audited(app, auth, layers):
    officer = as_role(app, auth, "land-officer")
    marker = uuid.uuid4().hex[:8]
    for u in urls(layers["restricted"]).values():
        assert officer.get(u, params={"m": marker}).status_code in (200, 204)
    assert officer.get(urls(layers["public"])["items"], params={"m": marker}).status_code == 200
    deadline = time.time() + 5  # restricted reads are written in batches every 0.5 s
    admin = as_role(app, auth, "admin")
    found = []
    while time.time() < deadline:
        found = [e for e in admin.get("/admin/audit", params={"action": "read-restricted", "limit": 1000}).json()["entries"]
                 if marker in json.dumps(e["detail"])]
        if len(found) >= 6:
            break
        time.sleep(0.2)
    assert len(found) == 6 and {e["principal"] for e in found} == {"test-land-officer"}
    assert not any(layers["public"] in e["target"] for e in found)  # public reads are not audited


def test_keys_from_the_cli_revocation_and_rate_limits(app, database):
    env = {**os.environ, "GEOTWIN_DB_SCHEMA": database.db_schema}

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "spatial_api", "keys", *args], capture_output=True, text=True,
                             env=env, timeout=60)
        return out

    made = cli("create", "city-brain", "--role", "external-platform", "--rate", "5", "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["key"].startswith("gtk_") and info["role"] == "external-platform"
    listed = json.loads(cli("list", "--json").stdout)
    assert any(k["key_id"] == info["key_id"] for k in listed) and "key" not in listed[0]
    with db.connect(database) as conn:  # only the digest is stored
        stored = conn.execute("SELECT secret_sha256 FROM api_keys WHERE key_id = %s", (info["key_id"],)).fetchone()[0]
    assert info["key"] not in stored and len(stored) == 64
    bad_role = cli("create", "x", "--role", "superuser")
    assert bad_role.returncode != 0 and "choose one of" in bad_role.stderr

    c = TestClient(create_app(database), headers={"X-API-Key": info["key"]})
    codes = [c.get("/whoami").status_code for _ in range(6)]
    assert codes[:5] == [200] * 5 and codes[5] == 429
    r = c.get("/whoami")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1

    assert cli("revoke", info["key_id"]).returncode == 0
    again = cli("revoke", info["key_id"])
    assert again.returncode != 0 and "already revoked" in again.stderr
    fresh = TestClient(create_app(database), headers={"Authorization": f"Bearer {info['key']}"})
    r = fresh.get("/collections")
    assert r.status_code == 401 and "revoked" in r.json()["description"]
    assert TestClient(create_app(database), headers={"Authorization": "Bearer gtk_0000000000_forged-key-forged-key"}
                      ).get("/collections").status_code == 401
    assert TestClient(create_app(database), headers={"Authorization": "Basic abc"}).get("/").status_code == 401


def test_oidc_bearer_tokens(database, layers, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]}))
    settings = database.replace(oidc_jwks=str(jwks), oidc_issuer="https://idp.longgang.gov.cn",
                                oidc_audience="geotwin")
    app = create_app(settings)

    def token(**claims):
        base = {"sub": "u-1", "preferred_username": "li.officer", "iss": "https://idp.longgang.gov.cn",
                "aud": "geotwin", "exp": int(time.time()) + 600, "geotwin_roles": ["planner", "land-officer"]}
        return jwt.encode({**base, **claims}, private, algorithm="RS256", headers={"kid": "idp-1"})

    c = TestClient(app, headers={"Authorization": f"Bearer {token()}"})
    me = c.get("/whoami").json()
    assert (me["name"], me["role"], me["via"]) == ("li.officer", "land-officer", "oidc")
    assert c.get(urls(layers["restricted"])["collection"]).status_code == 200
    for bad, why in ((token(exp=int(time.time()) - 10), "expired"), (token(aud="other"), "audience"),
                     (token(geotwin_roles=["nobody"]), "no geotwin role")):
        r = TestClient(app, headers={"Authorization": f"Bearer {bad}"}).get("/collections")
        assert r.status_code == 401 and why in r.json()["description"].lower(), r.text
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "iss": "https://idp.longgang.gov.cn",
                         "aud": "geotwin", "geotwin_roles": "admin"}, other, algorithm="RS256", headers={"kid": "idp-1"})
    assert TestClient(app, headers={"Authorization": f"Bearer {forged}"}).get("/collections").status_code == 401


def test_no_request_body_over_the_server_limit_is_read(app, auth):
    """An oversized body is refused before it is read — also on endpoints without a limit of their own."""
    import socket

    from spatial_api.security.middleware import MAX_REQUEST_BYTES
    from tests.fixtures.server import live_server

    key = auth("land-officer")["Authorization"]
    with live_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall((f"POST /supervision/cases HTTP/1.1\r\nHost: {host}\r\nAuthorization: {key}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n").encode())
            s.sendall(b"{" + b" " * 65536)
            reply = s.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413") and "PayloadTooLarge" in reply
