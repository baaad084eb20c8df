"""The query parameters every endpoint shares, read once and the same way everywhere: ``crs`` /
``bbox-crs``, ``datetime`` (the house's time policy, spatial_api.api.time), ``f``."""

from __future__ import annotations

import re
from datetime import datetime

from spatial_api.api import time as timepolicy
from spatial_api.api.errors import from_time_error, invalid_parameter

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/{}"
#: Output / bbox CRSs: URI → (SRID, whether the CRS's first axis is northing / latitude).
CRS_AXES: dict[str, tuple[int, bool]] = {
    CRS84: (4490, False),  # CGCS2000 ↔ WGS84 is a null shift at metre level (PROJ "ballpark")
    EPSG.format(4490): (4490, True),
    EPSG.format(4326): (4326, True),
    EPSG.format(4547): (4547, True),  # northing, easting
    EPSG.format(3857): (3857, False),
}
STORAGE_CRS = EPSG.format(4490)


def crs_param(value: str | None, parameter: str) -> tuple[str, int, bool]:
    """``crs`` / ``bbox-crs`` / ``filter-crs``: (URI, SRID, northing first)."""
    if not value:
        return CRS84, *CRS_AXES[CRS84]
    uri = value.strip().strip("[]")
    m = re.fullmatch(r"(?i)epsg:(\d+)", uri)
    if m:
        uri = EPSG.format(m.group(1))
    if uri not in CRS_AXES:
        raise invalid_parameter(parameter, f"unsupported CRS {value!r}; supported: {', '.join(CRS_AXES)}")
    return uri, *CRS_AXES[uri]


def instant_param(text: str | None, parameter: str = "datetime", day: timepolicy.Day = "end") -> datetime | None:
    """One instant (a date: its ``day`` end); a 400 naming the parameter."""
    try:
        return timepolicy.parse_instant(text, parameter, day=day)
    except timepolicy.TimeError as exc:
        raise from_time_error(exc) from None


def interval_param(value: str | None, parameter: str = "datetime"
                   ) -> tuple[datetime | None, datetime | None, bool] | None:
    """OGC API ``datetime`` of a query: None, or (start, end, is_interval)."""
    try:
        return timepolicy.parse_interval(value, parameter)
    except timepolicy.TimeError as exc:
        raise from_time_error(exc) from None


def as_of_param(value: str | None, parameter: str = "datetime") -> datetime | None:
    """``datetime`` of a snapshot (tiles, styles, imagery): an instant or the end of an interval."""
    try:
        return timepolicy.as_of(value, parameter)
    except timepolicy.TimeError as exc:
        raise from_time_error(exc) from None


__all__ = ["CRS84", "CRS_AXES", "EPSG", "STORAGE_CRS", "as_of_param", "crs_param", "instant_param", "interval_param"]
