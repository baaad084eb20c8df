"""One time policy for every entry point: HTTP parameters (``datetime``, ``from``/``to``,
``valid_from``), CQL2 literals, and the command line (``--valid-from``, ``--as-of``,
``--datetime``, ``--known-at``).

The rules (README, "Time"):

- An instant with an offset (``Z``, ``+08:00``) is that instant, always.
- A date-time without an offset is wall-clock time in the district's zone, ``GEOTWIN_TIMEZONE``
  (default ``Asia/Shanghai``) — never UTC, never the server's own zone.
- A date alone means a whole day in that zone. Where an instant is needed, the caller says which
  end of the day it takes: an *as-of* query (``?datetime=2024-06-30``) takes the end of the day
  (the state once the day is over, changes valid that day included); the start of an interval and
  a *valid-from* take its start (00:00); the end of an interval takes its end.
- ``..`` or an empty bound is open (None).

Every parser raises :class:`TimeError`, whose message names the parameter and shows a valid value;
HTTP routes turn it into a 400, commands into their own error.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Shanghai"
Day = Literal["start", "end"]

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EXAMPLES = "e.g. 2024-06-30, 2024-06-30T12:00:00 (district time) or 2024-06-30T04:00:00Z"


class TimeError(ValueError):
    """A time value geotwin cannot read; ``str()`` names the parameter."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter, self.message = parameter, message


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeError("GEOTWIN_TIMEZONE", f"{name!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None


def zone(tz: str | None = None) -> ZoneInfo:
    """The district's time zone: ``tz`` when given, else ``GEOTWIN_TIMEZONE`` (default Asia/Shanghai)."""
    return _zone(tz or os.environ.get("GEOTWIN_TIMEZONE") or DEFAULT_TIMEZONE)


def day_bound(day: date, which: Day, tz: str | None = None) -> datetime:
    """00:00 of ``day`` (``start``) or its last microsecond (``end``) in the district's zone."""
    z = zone(tz)
    if which == "start":
        return datetime.combine(day, time(0, 0), tzinfo=z)
    return datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=z) - timedelta(microseconds=1)


def parse_instant(text: str | None, parameter: str = "datetime", *, day: Day = "end",
                  tz: str | None = None) -> datetime | None:
    """One instant: an RFC 3339 date-time (offset honoured, naive = district time) or a date
    (the ``day`` end of it). ``None``, ``""`` and ``..`` are open: None."""
    if text is None:
        return None
    text = text.strip()
    if text in ("", ".."):
        return None
    if "\x00" in text or len(text) > 64:
        raise TimeError(parameter, f"not a date or date-time; {_EXAMPLES}")
    if _DATE.fullmatch(text):
        try:
            return day_bound(date.fromisoformat(text), day, tz)
        except ValueError:
            raise TimeError(parameter, f"{text!r} is not a calendar date; {_EXAMPLES}") from None
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        raise TimeError(parameter, f"{text!r} is not an RFC 3339 date-time or date; {_EXAMPLES}") from None
    if not _DATE.fullmatch(text[:10]):  # fromisoformat also takes 20240630 and week dates
        raise TimeError(parameter, f"{text!r} is not an RFC 3339 date-time or date; {_EXAMPLES}")
    return value if value.tzinfo else value.replace(tzinfo=zone(tz))


def parse_interval(text: str | None, parameter: str = "datetime", *, tz: str | None = None
                   ) -> tuple[datetime | None, datetime | None, bool] | None:
    """OGC API ``datetime``: None (not given), or ``(start, end, is_interval)``. An instant gives
    ``(t, t, False)`` (a date: the end of that day); ``a/b`` gives the start of ``a`` and the end
    of ``b`` (dates: whole days, both included), either bound open with ``..``."""
    if text is None:
        return None
    if "/" in text:
        a, b = text.split("/", 1)
        start = parse_instant(a, parameter, day="start", tz=tz)
        end = parse_instant(b, parameter, day="end", tz=tz)
        if start and end and start > end:
            raise TimeError(parameter, f"interval {text!r} ends before it starts")
        return start, end, True
    t = parse_instant(text, parameter, day="end", tz=tz)
    if t is None:
        raise TimeError(parameter, "an instant cannot be open ('..'); use an interval like ../2023-12-31")
    return t, t, False


def as_of(text: str | None, parameter: str = "datetime", *, tz: str | None = None) -> datetime | None:
    """The instant a snapshot is taken at: an instant, or the end of an interval (``a/b`` → b,
    ``a/..`` → now, i.e. None)."""
    if text is None:
        return None
    if "/" in text:
        text = text.split("/", 1)[1]
    return parse_instant(text, parameter, day="end", tz=tz)


def to_instant(value: date | datetime | str | None, parameter: str, *, day: Day = "start",
               tz: str | None = None) -> datetime | None:
    """A value from the command line or Python: a ``date`` (the ``day`` end of it), a
    ``datetime`` (naive = district time) or text (as :func:`parse_instant`)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone(tz))
    if isinstance(value, date):
        return day_bound(value, day, tz)
    return parse_instant(str(value), parameter, day=day, tz=tz)


def local(value: datetime, tz: str | None = None) -> datetime:
    """An instant shown in the district's zone (so that ``.date()`` is the date as meant there)."""
    return value.astimezone(zone(tz))


__all__ = ["DEFAULT_TIMEZONE", "TimeError", "as_of", "day_bound", "local", "parse_instant", "parse_interval",
           "to_instant", "zone"]
