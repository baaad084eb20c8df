"""Set-up-time assets of the styles: glyph PBFs and sprite sheets, under ``<home>/assets``
(``.geotwin/assets``, git-ignored; ``GEOTWIN_ASSETS_DIR`` overrides). Built by ``make assets``:

    python -m styles.assets build [--out DIR] [--force]

- ``glyphs/<font name>/<start>-<end>.pbf``: ``fontnik``'s ``build-glyphs`` (npm) over the Debian
  ``fonts-noto-core`` TTFs of :data:`FONTS`, every 256-code-point range 0–65535;
- ``sprites/geotwin{,@2x}.{json,png}``: the sheet of :mod:`styles.sprites`, rasterised by
  ``scripts/render-svg.mjs`` (``@resvg/resvg-js``).

Idempotent: a fingerprint of the inputs (font files, npm package versions, the sprite and
palette code) is kept in ``styles-assets.json``; an unchanged build is skipped. A build writes
into a temporary folder and swaps it in only when complete, so a failed build leaves the
previous assets whole. Needs node and the npm packages only here, never at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spatial_api.config import PROJECT_ROOT, Settings, get_settings
from styles import glyphs, sprites

#: Font name (as fontnik writes it into the PBFs and as styles name it) → TTF file name.
FONTS = {
    "Noto Sans Regular": "NotoSans-Regular.ttf",
    "Noto Sans Bold": "NotoSans-Bold.ttf",
    "Noto Sans Italic": "NotoSans-Italic.ttf",
}
FONT_DIRS = [Path("/usr/share/fonts/truetype/noto"), Path("/usr/share/fonts/noto"),
             Path("/usr/local/share/fonts/noto")]
STAMP = "styles-assets.json"


class AssetError(RuntimeError):
    """An input of the asset build is missing or a tool failed: the message says what to do."""


def assets_dir(settings: Settings | None = None) -> Path:
    env = os.environ.get("GEOTWIN_ASSETS_DIR")
    if env:
        return Path(env)
    return (settings or get_settings()).home / "assets"


def font_file(name: str) -> Path:
    for d in FONT_DIRS:
        p = d / FONTS[name]
        if p.exists():
            return p
    raise AssetError(f"font file {FONTS[name]} ({name}) not found in {', '.join(map(str, FONT_DIRS))}: "
                     "install the Debian package fonts-noto-core (bash scripts/setup-system.sh)")


def _npm_version(package: str, root: Path) -> str:
    pj = root / "node_modules" / package / "package.json"
    if not pj.exists():
        raise AssetError(f"npm package {package} is not installed in {root / 'node_modules'}: run `make assets` "
                         "(npm ci)")
    return json.loads(pj.read_text())["version"]


def fingerprint(root: Path = PROJECT_ROOT) -> dict:
    code = hashlib.sha256()
    for p in (Path(sprites.__file__), Path(sprites.palette.__file__), Path(__file__),
              root / "scripts" / "render-svg.mjs"):
        code.update(p.read_bytes())
    fonts = {}
    for name in FONTS:
        f = font_file(name)
        fonts[name] = {"file": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    return {"fonts": fonts, "code": code.hexdigest(),
            "npm": {p: _npm_version(p, root) for p in ("fontnik", "@mapbox/maki", "@resvg/resvg-js")}}


def _run(cmd: list[str], what: str) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise AssetError(f"{what}: {cmd[0]} is not installed (bash scripts/setup-system.sh installs nodejs)") from None
    if out.returncode != 0:
        raise AssetError(f"{what} failed ({' '.join(cmd)}): {out.stderr.strip() or out.stdout.strip()}")


def build_glyphs(out: Path, root: Path = PROJECT_ROOT, fonts: list[str] | None = None) -> None:
    """``out/<font name>/<range>.pbf`` for each font (all of :data:`FONTS` by default)."""
    tool = root / "node_modules" / "fontnik" / "bin" / "build-glyphs"
    if not tool.exists():
        raise AssetError(f"{tool} is missing: run `make assets` (npm ci installs fontnik)")
    for name in fonts or list(FONTS):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        _run(["node", str(tool), str(font_file(name)), str(folder)], f"glyphs of {name}")
        first = glyphs.decode((folder / "0-255.pbf").read_bytes()).stacks[0]
        if first.name != name or len(first.glyphs) < 90:
            raise AssetError(f"fontnik made {first.name!r} with {len(first.glyphs)} glyphs in 0-255 from "
                             f"{font_file(name)}; expected {name!r} with the Latin range")


def build_sprites(out: Path, root: Path = PROJECT_ROOT) -> None:
    """``out/geotwin{,@2x}.{json,png}``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    items = sprites.entries(root)
    doc, width, height = sprites.sheet_svg(items)
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "sheet.svg"
        svg.write_text(doc, encoding="utf-8")
        for ratio, suffix in ((1, ""), (2, "@2x")):
            png = out / f"{sprites.SPRITE_NAME}{suffix}.png"
            _run(["node", str(root / "scripts" / "render-svg.mjs"), str(svg), str(png), str(ratio)],
                 f"sprite sheet {png.name}")
            with Image.open(png) as im:
                if im.size != (width * ratio, height * ratio):
                    raise AssetError(f"{png} is {im.size}, expected {(width * ratio, height * ratio)}")
            (out / f"{sprites.SPRITE_NAME}{suffix}.json").write_text(
                json.dumps(sprites.index(items, ratio), indent=1), encoding="utf-8")


def build(out: Path | None = None, *, force: bool = False, root: Path = PROJECT_ROOT) -> bool:
    """Build glyphs and sprites into ``out`` (default :func:`assets_dir`). Returns False when an
    identical earlier build was kept."""
    out = Path(out or assets_dir())
    print_ = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    fp = fingerprint(root)
    stamp = out / STAMP
    if not force and stamp.exists() and json.loads(stamp.read_text()) == fp \
            and (out / "glyphs").is_dir() and (out / "sprites").is_dir():
        print_(f"style assets: up to date in {out}")
        return False
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        build_glyphs(tmp / "glyphs", root)
        build_sprites(tmp / "sprites", root)
        for part in ("glyphs", "sprites"):
            old = out / f".old-{part}"
            shutil.rmtree(old, ignore_errors=True)
            if (out / part).exists():
                (out / part).rename(old)
            (tmp / part).rename(out / part)
            shutil.rmtree(old, ignore_errors=True)
        stamp.write_text(json.dumps(fp, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_(f"style assets: glyphs ({', '.join(FONTS)}) and sprites built in {out}")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m styles.assets", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build glyphs and sprites (skipped when up to date)")
    b.add_argument("--out", type=Path, default=None, help="folder (default: <GEOTWIN_HOME>/assets)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    try:
        build(args.out, force=args.force)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
