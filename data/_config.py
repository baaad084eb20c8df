"""Sizes, fixed dates and constants of the demo district."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

#: CGCS2000 / 3-degree Gauss-Krueger zone 38, central meridian 114 E (Longgang's projected CRS).
CRS = "EPSG:4547"
#: Longgang's centre (114.2514 E, 22.7215 N) in EPSG:4547.
CENTRE = (525823.9, 2513719.0)
#: The date the supervision rules are evaluated at; planted cases are relative to it.
REFERENCE_DATE = date(2026, 6, 30)
#: Land-use survey dates (the yearly 三调 update: two vintages so history exists).
SURVEY_DATES = (date(2020, 12, 31), date(2023, 12, 31))
#: Imagery epochs (acquisition dates) with their sensors.
EPOCHS = (
    ("E2021", date(2021, 11, 15), "GF-2 PMS fused (synthetic)"),
    ("E2023", date(2023, 11, 15), "BJ-3A (synthetic)"),
    ("E2025", date(2025, 11, 15), "aerial DOM (synthetic)"),
)
DISTRICT = "深圳市龙岗区"
DISTRICT_CODE = "440307"


@dataclass(frozen=True)
class SizeSpec:
    name: str
    width: float  # metres (x)
    height: float  # metres (y)
    px: float  # imagery pixel size, metres
    dem_px: float  # DEM pixel size, metres
    cell_scale: float  # land-use tessellation: multiplier of target cell areas
    atoms: int  # admin tessellation atoms (street / community boundaries)
    communities: tuple[int, int]  # communities per street (min, max)
    parcel_target: int  # how many project parcels to aim for
    village_keep: float  # share of urban-village lots that get their dense buildings


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec("small", 4000.0, 3000.0, 2.0, 5.0, 1.0, 2500, (3, 4), 90, 0.35),
    "medium": SizeSpec("medium", 12000.0, 9000.0, 3.0, 10.0, 0.85, 9000, (5, 8), 700, 0.6),
    "large": SizeSpec("large", 24000.0, 18000.0, 6.0, 20.0, 0.5, 20000, (8, 12), 5600, 1.0),
}
