"""The sprite sheet: place-name icons (from ``@mapbox/maki`` SVGs, npm) and hatch patterns.

The sheet is composed here as ONE SVG document — every icon at its packed position — and
rasterised at set-up time by ``scripts/render-svg.mjs`` (``@resvg/resvg-js``) at pixel ratio 1
and 2, so ``@2x`` is the same picture at twice the size and the index JSON of ``@2x`` is the
1x index doubled. Nothing is drawn at run time; the server only reads the files.

Icon names are stable API for the styles: ``pn-<kind>`` for a place-name kind, ``hatch-*`` for
fill patterns (they tile seamlessly: 45° lines with a period equal to the cell size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from styles import palette

#: place-name ``kind`` → (maki icon, badge colour). ``road`` has none: roads are labelled
#: along their lines by the roads layer.
PLACE_ICONS: dict[str, tuple[str, str]] = {
    "school": ("school", "#d9822b"),
    "hospital": ("hospital", "#d7263d"),
    "park": ("park", "#3f9b3a"),
    "station": ("rail-metro", "#2364aa"),
    "reservoir": ("dam", "#2f86c8"),
    "river": ("water", "#2f86c8"),
    "mountain": ("mountain", "#8a6a45"),
    "landmark": ("landmark", "#7b4fa0"),
    "village": ("village", "#a0785a"),
    "residential": ("residential-community", "#c27c3a"),
    "industrial_park": ("industry", "#6b6f8f"),
    "community_centre": ("town-hall", "#c0504d"),
    "poi": ("marker", "#5f7080"),
}
ICON_SIZE = 21  # badge, px at ratio 1
GLYPH_SIZE = 13  # the maki glyph inside it (maki draws on a 15 px grid)
PATTERN_SIZE = 16
#: pattern name → (line colour, line width, background colour or None)
PATTERNS: dict[str, tuple[str, float, str | None]] = {
    "hatch-redline": (palette.RED_LINE, 1.5, None),
    "hatch-basic-farmland": (palette.darken(palette.BASIC_FARMLAND, 0.1), 1.5, None),
}
SHEET_WIDTH = 128
PAD = 1
SPRITE_NAME = "geotwin"


@dataclass(frozen=True)
class Entry:
    name: str
    x: int
    y: int
    width: int
    height: int
    svg: str  # the picture at (0, 0)


def icon_name(kind: str) -> str:
    return f"pn-{kind}"


class SpriteSourceError(RuntimeError):
    """An icon SVG is missing: the message names it and the fix."""


def maki_dir(project_root: Path) -> Path:
    return project_root / "node_modules" / "@mapbox" / "maki" / "icons"


def _maki_inner(path: Path) -> str:
    if not path.exists():
        raise SpriteSourceError(f"{path} is missing: run `make assets` (npm ci installs @mapbox/maki)")
    text = path.read_text(encoding="utf-8")
    m = re.search(r"<svg\b[^>]*>(.*)</svg>", text, re.S)
    if not m or 'viewBox="0 0 15 15"' not in text:
        raise SpriteSourceError(f"{path} is not a 15 x 15 maki icon")
    return re.sub(r'\sid="[^"]*"', "", m.group(1)).strip()


def _badge(inner: str, colour: str) -> str:
    r = ICON_SIZE / 2
    k = GLYPH_SIZE / 15
    off = (ICON_SIZE - GLYPH_SIZE) / 2
    return (f'<circle cx="{r}" cy="{r}" r="{r - 1}" fill="{colour}" stroke="#ffffff" stroke-width="1.5"/>'
            f'<g fill="#ffffff" transform="translate({off} {off}) scale({k:.6f})">{inner}</g>')


def _hatch(colour: str, width: float, background: str | None) -> str:
    s = PATTERN_SIZE
    bg = f'<rect width="{s}" height="{s}" fill="{background}"/>' if background else ""
    # the main diagonal plus the two corner pieces that continue it across the cell edges
    lines = f"M{-s // 2} {s // 2} L{s // 2} {-s // 2} M0 {s} L{s} 0 M{s // 2} {s + s // 2} L{s + s // 2} {s // 2}"
    return f'{bg}<path d="{lines}" stroke="{colour}" stroke-width="{width}" fill="none"/>'


def entries(project_root: Path) -> list[Entry]:
    """Every sprite image, packed in rows (shelves) of :data:`SHEET_WIDTH` px."""
    pictures: list[tuple[str, int, int, str]] = []
    for kind, (maki, colour) in PLACE_ICONS.items():
        pictures.append((icon_name(kind), ICON_SIZE, ICON_SIZE,
                         _badge(_maki_inner(maki_dir(project_root) / f"{maki}.svg"), colour)))
    for name, (colour, width, bg) in PATTERNS.items():
        pictures.append((name, PATTERN_SIZE, PATTERN_SIZE, _hatch(colour, width, bg)))
    out, x, y, row_h = [], 0, 0, 0
    for name, w, h, svg in pictures:
        if x + w > SHEET_WIDTH:
            x, y, row_h = 0, y + row_h + PAD, 0
        out.append(Entry(name, x, y, w, h, svg))
        x += w + PAD
        row_h = max(row_h, h)
    return out


def sheet_svg(items: list[Entry]) -> tuple[str, int, int]:
    """The whole sheet as one SVG (each picture clipped to its cell by a nested ``<svg>``)."""
    width = SHEET_WIDTH
    height = max(e.y + e.height for e in items)
    cells = "".join(
        f'<svg x="{e.x}" y="{e.y}" width="{e.width}" height="{e.height}" '
        f'viewBox="0 0 {e.width} {e.height}" overflow="hidden">{e.svg}</svg>' for e in items)
    doc = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">{cells}</svg>')
    return doc, width, height


def index(items: list[Entry], ratio: int) -> dict:
    """The sprite index JSON of MapLibre for pixel ratio ``ratio``."""
    return {e.name: {"x": e.x * ratio, "y": e.y * ratio, "width": e.width * ratio,
                     "height": e.height * ratio, "pixelRatio": ratio} for e in items}
