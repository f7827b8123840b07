"""Budget windows: a calendar day or month in the configured timezone, or the key's whole life."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import LeaninferError

WINDOWS = ("day", "month", "total")
WINDOW_SECONDS = {"day": 86_400, "month": 31 * 86_400}  # for RateLimit-Policy's w=, the longest such window


def timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise LeaninferError(f"unknown timezone {name!r}: give an IANA name such as UTC or Europe/Paris") from None


def window_bounds(window: str, now: float, tz: ZoneInfo) -> tuple[float, float | None]:
    """``(start, reset)`` in unix seconds of the ``window`` holding ``now``; ``reset`` is None for "total".

    Example:
        >>> window_bounds("day", 86_400 * 1.5, ZoneInfo("UTC"))
        (86400.0, 172800.0)
    """
    if window == "total":
        return 0.0, None
    last = _LAST.get((window, tz))
    if last is not None and last[0] <= now < last[1]:  # every request asks; the answer changes once a day
        return last
    local = dt.datetime.fromtimestamp(now, tz)
    if window == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # calendar arithmetic on the date, then midnight in the zone: a DST day is 23 or 25 hours long
        nxt = dt.datetime.combine(start.date() + dt.timedelta(days=1), dt.time(), tz)
    elif window == "month":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        y, m = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        nxt = dt.datetime(y, m, 1, tzinfo=tz)
    else:
        raise ValueError(f"unknown window {window!r}: one of {', '.join(WINDOWS)}")
    bounds = _LAST[(window, tz)] = (start.timestamp(), nxt.timestamp())
    return bounds


_LAST: dict[tuple[str, ZoneInfo], tuple[float, float]] = {}
