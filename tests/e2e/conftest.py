"""End-to-end fixtures for the web clients (``/map``, ``/twin``): Debian's chromium driven headless
by the Python ``playwright`` package (``executable_path``: no browser download), WebGL through
SwiftShader, against a real uvicorn server over the small demo district loaded once per session
into the e2e schema: ``GEOTWIN_E2E_SCHEMA``, else ``<GEOTWIN_DB_SCHEMA>_e2e`` (the fixtures
``settings`` / ``database`` / ``conn`` / ``api_keys`` / ``auth`` are overridden here to use it, so
what the e2e tests load never meets the integration tests in theirs).

Fixtures (stable — the twin tests reuse them):

- ``e2e_district``: the small demo district's :class:`data.demo.Manifest`, loaded (vectors with
  the manifest's access levels, imagery epochs → ``ortho``, DEM → ``dem``);
- ``e2e_run``: one supervision run at the district's reference date (``engine.RunResult``);
- ``e2e_server``: the base URL (``http://127.0.0.1:PORT``) of the app under uvicorn, started
  after ``e2e_run`` (so the map shows its findings);
- ``e2e_keys``: ``{role: api key}`` for every role (public, external-platform, planner,
  land-officer, gis-staff, admin);
- ``browser_page``: a fresh page (own context, 1200×720, zh-CN, Asia/Shanghai) with guards: every request not to
  127.0.0.1 (or data:/blob:) is aborted and recorded, console errors and page errors are recorded;
  at teardown the test fails if any were. ``browser_page.guard.allow(regex)`` tolerates an
  expected console error; ``browser_page.guard.check()`` asserts now;
- ``E2E_TIMEOUT_MS``: how long a test waits for a state before it fails (default 120 s,
  ``GEOTWIN_E2E_TIMEOUT_MS`` overrides) — also ``browser_page``'s default timeout. Tests wait for the
  state they need (``wait_for_function`` on the app's state, :func:`poll` on what Python sees), never
  a fixed time, so a slow or loaded machine only makes them slower, not red;
- ``screenshot(name, page=None)``: writes ``<artefacts>/screenshots/<name>.png`` (the artefact
  folder is ``.geotwin/artefacts``, git-ignored; ``GEOTWIN_ARTEFACTS_DIR`` overrides) and returns
  its path.

Chromium is ``/usr/bin/chromium`` (apt package ``chromium``, installed by
``scripts/setup-system.sh``); ``GEOTWIN_CHROMIUM`` overrides the path.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from psycopg import sql

from spatial_api.config import PROJECT_ROOT

# Session fixtures shared by several modules are registered here, once: a fixture imported into a
# test module is that module's own, and a second module importing it would build it again.
from tests.e2e.twin_fixtures import open_ground, twin_tileset  # noqa: F401
from tests.e2e.underground_fixtures import pipe_site  # noqa: F401

CHROMIUM = os.environ.get("GEOTWIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    # WebGL without a GPU: ANGLE over SwiftShader (software Vulkan)
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    # belt and braces: any host but 127.0.0.1 fails to resolve (interception also aborts it)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--no-first-run",
    "--no-default-browser-check",
]
#: the deadline of every wait for a state (a loaded 2-core CI runs the e2e tests 3-5x slower than idle)
E2E_TIMEOUT_MS = int(os.environ.get("GEOTWIN_E2E_TIMEOUT_MS", "120000"))
LOCAL_HOSTS = {"127.0.0.1"}
LOCAL_SCHEMES = {"data", "blob", "about"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)  # needs PostGIS, like the integration tests


def artefacts_dir() -> Path:
    env = os.environ.get("GEOTWIN_ARTEFACTS_DIR")
    return Path(env) if env else PROJECT_ROOT / ".geotwin" / "artefacts"


def e2e_schema() -> str:
    """The end-to-end tests' own schema: ``GEOTWIN_E2E_SCHEMA``, else ``<GEOTWIN_DB_SCHEMA>_e2e``.
    Their district (three imagery epochs, supervision runs, cases) is not what the integration
    tests expect to find, so it lives beside their schema, never in it."""
    return os.environ.get("GEOTWIN_E2E_SCHEMA") or f"{os.environ.get('GEOTWIN_DB_SCHEMA', 'geotwin_test')}_e2e"


# The root fixtures settings / database / conn / api_keys / auth, overridden for tests/e2e: the same
# behaviour over the e2e schema (dropped and re-migrated once per session).
@pytest.fixture(scope="session")
def settings():
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    s = get_settings().replace(db_schema=e2e_schema())
    assert s.db_schema != "geotwin", "tests must not run in the production schema"
    return s


@pytest.fixture(scope="session")
def database(settings):
    """The e2e schema, freshly migrated."""
    from spatial_api import db
    from spatial_api.db.cluster import LocalCluster

    if settings.uses_local_cluster:
        LocalCluster(settings).up()
    with db.connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema)))
    db.migrate(settings)
    return settings


@pytest.fixture
def conn(database):
    from spatial_api import db

    with db.connect(database) as c:
        yield c


@pytest.fixture(scope="session")
def api_keys(database):
    """One API key per role in the e2e schema: {role: key}."""
    from spatial_api import db
    from spatial_api.security import ROLES, keys

    with db.connect(database) as conn:
        made = {role: keys.create(conn, f"e2e-{role}", role, created_by="pytest",
                                  community="测试社区" if role == "community-worker" else None) for role in ROLES}
        conn.commit()
    return made


@pytest.fixture(scope="session")
def auth(api_keys):
    return lambda role: {"Authorization": f"Bearer {api_keys[role]}"}


@pytest.fixture(scope="session")
def e2e_district(database):
    """The small demo district, loaded into the e2e schema (once per session) as ``data.demo.load``
    does: vectors through ingest_vector with the manifest's access levels, imagery epochs →
    collection ``ortho``, the DEM → ``dem``."""
    from data.demo import build_files
    from spatial_api.ingest import ingest_vector
    from spatial_api.ingest.imagery import ingest_imagery

    # the folder `geotwin demo build --size small` writes; an earlier complete build is reused
    m = build_files(database.home / "demo" / "small", size="small", seed=2024, reuse=True)
    for lf in m.layers:
        ingest_vector(lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from, crs=lf.crs,
                      from_gcj02=False, encoding=lf.encoding, title_zh=lf.title_zh, title_en=lf.title_en,
                      access_level=lf.access_level, author="demo-builder", settings=database)
    for img in m.imagery:
        ingest_imagery(img.path, collection="ortho", datetime_=img.acquired_on, kind="ortho", item_id=img.epoch_id,
                       title_zh="正射影像", title_en="Orthophotos", author="demo-builder", settings=database)
    dem_date = m.dem.acquired_on or min(img.acquired_on for img in m.imagery)
    ingest_imagery(m.dem.path, collection="dem", datetime_=dem_date, kind="dem", item_id="dem",
                   title_zh="数字高程模型", title_en="Digital elevation model", author="demo-builder", settings=database)
    return m


@pytest.fixture(scope="session")
def e2e_run(e2e_district, database):
    """One supervision run at the demo's reference date (findings for the map's parcels)."""
    from land_supervision import engine

    return engine.run(database, as_of=e2e_district.reference_date, author="pytest", imagery=True)


@pytest.fixture(scope="session")
def e2e_server(e2e_district, e2e_run, database):
    """Base URL of the app (all routers + the web clients) under uvicorn on 127.0.0.1."""
    import web
    from spatial_api.app import create_app
    from styles import assets
    from tests.fixtures.server import live_server

    assets.build()  # glyphs and sprites (what `make assets` does; a no-op when up to date)
    got = web.build_vendor(database)  # maplibre-gl, turf (and cesium) from node_modules
    assert got.get("maplibre-gl"), "maplibre-gl is not in node_modules: run `make assets`"
    assert got.get("turf"), "@turf/turf is not in node_modules: run `make assets`"
    with live_server(create_app(database)) as base:
        yield base


@pytest.fixture(scope="session")
def e2e_keys(api_keys):
    """{role: API key} for every role, in the test schema."""
    return dict(api_keys)


@pytest.fixture(scope="session")
def _playwright():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (bash scripts/setup-system.sh) "
                    "or set GEOTWIN_CHROMIUM")
    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="session")
def browser(_playwright):
    b = _playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()


@dataclass
class Guard:
    """What a page did that it must not: requests leaving 127.0.0.1, console / page errors."""

    outside: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    allowed: list[re.Pattern] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Tolerate console errors matching ``pattern`` (e.g. an expected 403 the test provokes)."""
        self.allowed.append(re.compile(pattern))

    def problems(self) -> list[str]:
        errs = [e for e in self.console_errors if not any(p.search(e) for p in self.allowed)]
        return ([f"request left 127.0.0.1: {u}" for u in self.outside]
                + [f"console error: {e}" for e in errs] + [f"page error: {e}" for e in self.page_errors])

    def check(self) -> None:
        bad = self.problems()
        assert not bad, "\n".join(bad)


def poll(page, check, what: str, timeout_ms: int | None = None):
    """Wait until ``check()`` (evaluated in Python, e.g. over ``page.guard.requests``) is truthy and
    return its value; fail after ``timeout_ms`` (default :data:`E2E_TIMEOUT_MS`) saying ``what`` was
    awaited. Between checks the page runs and playwright delivers its events (requests, console)."""
    timeout_ms = E2E_TIMEOUT_MS if timeout_ms is None else timeout_ms
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_ms / 1000:.0f} s for {what}")
        page.wait_for_timeout(100)  # one polling interval (not a wait for the state itself)


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOCAL_HOSTS


@pytest.fixture
def browser_page(browser, e2e_server):
    """A fresh page (own context) with the guards; fails the test at teardown on any problem."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 720}, locale="zh-CN",
                              timezone_id="Asia/Shanghai", base_url=e2e_server, service_workers="block")
    guard = Guard()

    def route(r):
        url = r.request.url
        if _is_local(url):
            r.continue_()
        else:
            guard.outside.append(url)
            r.abort("blockedbyclient")

    ctx.route("**/*", route)
    ctx.on("request", lambda req: guard.requests.append(req.url) if _is_local(req.url)
           else guard.outside.append(req.url) if req.url not in guard.outside else None)
    page = ctx.new_page()

    def console(msg):
        if msg.type == "error":
            loc = msg.location or {}
            guard.console_errors.append(f"{msg.text} ({loc.get('url', '')}:{loc.get('lineNumber', '')})")

    page.on("console", console)
    page.on("pageerror", lambda exc: guard.page_errors.append(str(exc)))
    page.guard = guard
    page.set_default_timeout(E2E_TIMEOUT_MS)
    yield page
    try:
        guard.check()
    finally:
        ctx.close()


@pytest.fixture
def screenshot(browser_page):
    """screenshot(name, page=None) → path of <artefacts>/screenshots/<name>.png."""
    folder = artefacts_dir() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str, page=None) -> Path:
        path = folder / f"{name}.png"
        (page or browser_page).screenshot(path=str(path))
        return path

    return take
