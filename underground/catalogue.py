"""The pipe types of a CJJ 61 survey, as data: Chinese name, code, English name, what the depth is
measured to, the customary map colour (GB/T 50348 / CJJ 61 usage) and the deepest burial that is
still plausible.

Depth reference: gravity drains (排水 / 雨水 / 污水) are surveyed to the pipe's invert (管内底),
every other pipe to its top (管顶); a 3D model must know which (shared/docs/domain.md §8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PipeType:
    code: str          # two-letter code, also the fid prefix: JS-<point id>
    name: str          # Chinese, as survey tables and users write it
    name_en: str
    colour: str        # customary map colour
    depth_ref: str     # 'top' (管顶) | 'invert' (管内底)
    max_depth_m: float  # deeper than this is implausible (refused unless --accept depth)

    @property
    def gravity(self) -> bool:
        """A gravity drain: flows start → end, must not rise."""
        return self.depth_ref == "invert"

    def to_dict(self) -> dict:
        return {**asdict(self), "gravity": self.gravity}


# Plausible maximum depths. Cables and gas mains are laid in shallow trenches or ducts: 0.7–3 m
# typically, directionally drilled crossings reach 8–10 m, so 12 m leaves room for those and
# catches the usual blunders (a depth typed in cm or dm, an elevation typed as a depth). Drains
# and trunk water mains are deeper — sewers in Shenzhen's hilly districts reach 8–12 m, deep
# tunnels more — so 20 m. A survey with genuinely deeper pipes loads with --accept depth.
SHALLOW_MAX_M = 12.0
DEEP_MAX_M = 20.0

TYPES: tuple[PipeType, ...] = (
    PipeType("JS", "给水", "water supply", "#1f5fd6", "top", DEEP_MAX_M),
    PipeType("PS", "排水", "drainage", "#8b5a2b", "invert", DEEP_MAX_M),
    PipeType("YS", "雨水", "storm water", "#a0522d", "invert", DEEP_MAX_M),
    PipeType("WS", "污水", "sewage", "#6b3e1f", "invert", DEEP_MAX_M),
    PipeType("RQ", "燃气", "gas", "#d63ad6", "top", SHALLOW_MAX_M),
    PipeType("RL", "热力", "heat", "#f28c28", "top", DEEP_MAX_M),
    PipeType("DL", "电力", "power", "#e02020", "top", SHALLOW_MAX_M),
    PipeType("TX", "通信", "telecom", "#2ca02c", "top", SHALLOW_MAX_M),
    PipeType("GY", "工业", "industrial", "#202020", "top", DEEP_MAX_M),
)

BY_CODE = {t.code: t for t in TYPES}
BY_NAME = {t.name: t for t in TYPES}


class UnknownType(ValueError):
    pass


def pipe_type(value: str) -> PipeType:
    """The type named by a Chinese name (给水), its code (JS, any case) or English name."""
    text = (value or "").strip()
    found = BY_NAME.get(text) or BY_CODE.get(text.upper()) or next(
        (t for t in TYPES if t.name_en == text.lower()), None)
    if found is None:
        choices = ", ".join(f"{t.name} {t.code}" for t in TYPES)
        raise UnknownType(f"--type {value!r} is not a pipe type; use one of {choices}")
    return found


__all__ = ["BY_CODE", "BY_NAME", "DEEP_MAX_M", "SHALLOW_MAX_M", "TYPES", "PipeType", "UnknownType", "pipe_type"]
