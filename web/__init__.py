"""The web clients geotwin serves: ``/map`` (MapLibre GL JS, land officers) and ``/twin``
(CesiumJS, planners), static applications of plain ES modules — no bundler.

- ``web/map/`` and ``web/twin/`` (when present) are served as they are at ``/map/`` and ``/twin/``;
- the browser libraries they import come from npm (``package.json``, installed by ``make assets``)
  and are copied by :func:`build_vendor` (``python -m web build``, part of ``make assets``) into
  ``<home>/assets/web/vendor/<package>/`` (``GEOTWIN_ASSETS_DIR`` overrides ``<home>/assets``),
  served at ``/vendor/<package>/...``. Nothing is fetched from the internet at run time.

Pages import e.g. ``/vendor/maplibre-gl/maplibre-gl.mjs``, ``/vendor/turf/turf.min.js``,
``/vendor/echarts/echarts.min.js`` and ``/vendor/cesium/Cesium.js``.
:data:`VENDOR` lists what is copied; a package missing from node_modules is skipped (the page
that needs it says so), and an unchanged copy is skipped (idempotent, fast).

``install(app, settings)`` mounts it all; call it after every API router (``/twin/tilesets`` of
``cim_builder`` must match before the static ``/twin`` folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from spatial_api.config import PROJECT_ROOT, Settings, get_settings

HERE = Path(__file__).resolve().parent
NODE_MODULES = PROJECT_ROOT / "node_modules"

#: served name → (folder inside node_modules, files or sub-folders to copy; None = the whole folder)
VENDOR: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "maplibre-gl": ("maplibre-gl/dist", ("maplibre-gl.mjs", "maplibre-gl-worker.mjs", "maplibre-gl-shared.mjs",
                                         "maplibre-gl.css", "LICENSE.txt")),
    "cesium": ("cesium/Build/Cesium", None),
    # turf's browser build (UMD, defines globalThis.turf): the map's cleaning of drawn polygons (web/map/draw.js)
    "turf": ("@turf/turf", ("turf.min.js", "LICENSE")),
    # ECharts' browser build (UMD, defines globalThis.echarts): the sensing panel's time series (web/map/sensing.js)
    "echarts": ("echarts/dist", ("echarts.min.js", "LICENSE")),
}
#: what the map page cannot start without: `python -m web build` fails when one is not installed
REQUIRED = ("maplibre-gl", "turf")
#: page folder → URL prefix
PAGES = {"map": "/map", "twin": "/twin"}
STAMP = "web-vendor.json"


class VendorError(RuntimeError):
    """A browser library is missing: the message says what to run."""


def vendor_dir(settings: Settings | None = None) -> Path:
    env = os.environ.get("GEOTWIN_ASSETS_DIR")
    base = Path(env) if env else (settings or get_settings()).home / "assets"
    return base / "web" / "vendor"


def _package_version(folder: str) -> str | None:
    top = NODE_MODULES / folder.split("/")[0]
    if folder.startswith("@"):
        top = NODE_MODULES.joinpath(*folder.split("/")[:2])
    pj = top / "package.json"
    if not pj.exists():
        return None
    return json.loads(pj.read_text(encoding="utf-8")).get("version")


def build_vendor(settings: Settings | None = None, *, out: Path | None = None, force: bool = False) -> dict:
    """Copy the browser libraries of :data:`VENDOR` from node_modules into ``out`` (default
    :func:`vendor_dir`). A package whose npm version is unchanged since the last copy is left
    alone; each package is copied into a temporary folder and swapped in whole. Returns
    ``{package: version | None}`` (None: not installed, skipped)."""
    out = Path(out) if out else vendor_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    stamp_path = out / STAMP
    stamp = json.loads(stamp_path.read_text(encoding="utf-8")) if stamp_path.exists() else {}
    done: dict[str, str | None] = {}
    for name, (folder, files) in VENDOR.items():
        version = _package_version(folder)
        src = NODE_MODULES / folder
        if version is None or not src.is_dir():
            done[name] = None
            continue
        done[name] = version
        if not force and stamp.get(name) == version and (out / name).is_dir():
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
        try:
            if files is None:
                shutil.copytree(src, tmp / name)
            else:
                (tmp / name).mkdir()
                for f in files:
                    p = src / f
                    if not p.exists():
                        p = NODE_MODULES / folder.split("/")[0] / f  # e.g. LICENSE.txt at the package root
                    if p.is_dir():
                        shutil.copytree(p, tmp / name / f)
                    elif p.exists():
                        shutil.copy2(p, tmp / name / f)
                    elif f.endswith((".mjs", ".js", ".css")):
                        raise VendorError(f"{src / f} is missing: run `make assets` (npm ci) again")
            old = out / name
            if old.exists():
                trash = out / f".{name}-old"
                shutil.rmtree(trash, ignore_errors=True)
                old.rename(trash)
                (tmp / name).rename(old)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                (tmp / name).rename(old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stamp[name] = version
        stamp_path.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return done


def _landuse_classes() -> dict:
    doc = json.loads((PROJECT_ROOT / "styles" / "landuse-classes.json").read_text(encoding="utf-8"))["gbt21010_2017"]
    names = {**doc.get("level1", {}), **doc.get("level2", {})}
    return {code: {"zh": name} for code, name in names.items() if isinstance(name, str)}


def install(app, settings: Settings | None = None) -> None:
    """Mount ``/vendor``, ``/map`` and (if ``web/twin/`` exists) ``/twin`` on ``app``."""
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    settings = settings or get_settings()
    vendor = vendor_dir(settings)
    vendor.mkdir(parents=True, exist_ok=True)  # served even before `make assets`: pages then say what is missing
    app.mount("/vendor", StaticFiles(directory=vendor, follow_symlink=False), name="web-vendor")
    @app.get("/map/landuse-classes.json", include_in_schema=False)
    def landuse_classes() -> dict:
        """Land-use class names by GB/T 21010 code, for the map's legend ({code: {"zh": name}})."""
        return _landuse_classes()

    for folder, prefix in PAGES.items():
        root = HERE / folder
        if not (root / "index.html").exists():
            continue

        def to_folder(prefix=prefix):
            return RedirectResponse(prefix + "/", status_code=307)

        app.add_api_route(prefix, to_folder, methods=["GET"], include_in_schema=False)
        app.mount(prefix, StaticFiles(directory=root, html=True), name=f"web-{folder}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m web", description="copy the web clients' npm libraries")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="copy node_modules libraries into <home>/assets/web/vendor")
    b.add_argument("--out", type=Path)
    b.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        done = build_vendor(out=args.out, force=args.force)
    except VendorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, version in done.items():
        print(f"web vendor {name}: {version or 'not installed (skipped)'}")
    missing = [name for name in REQUIRED if done.get(name) is None]
    if missing:
        print(f"error: {', '.join(missing)} not in node_modules: run `make assets` (npm ci)", file=sys.stderr)
        return 1
    return 0
