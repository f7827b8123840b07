"""Budget windows: a calendar day or month in the configured timezone, or the key's whole life."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import LeaninferError

WINDOWS = ("day", "month", "total")
WINDOW_SECONDS = {"day": 86_400, "month": 31 * 86_400}  # for RateLimit-Policy's w=, the longest such window


def timezone(name: str) -> ZoneInfo:
    """The zone called ``name``, an IANA name such as ``Europe/Berlin``; anything else is a
    :class:`LeaninferError` naming the value (cut to 40 characters), which the server answers with a 400.

    ``ZoneInfo`` raises more than ``ZoneInfoNotFoundError`` for a bad name: ``ValueError`` for ``""``, ``../x``
    or a NUL byte, ``OSError`` for a name longer than a file name may be or one naming a folder (``Europe``).

    Example:
        >>> timezone("Europe/Berlin")
        zoneinfo.ZoneInfo(key='Europe/Berlin')
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise LeaninferError(f"unknown time zone {quoted(name)}: valid values are IANA names like Europe/Berlin "
                             f"or UTC") from None


def quoted(value, limit: int = 40) -> str:
    """``repr(value)`` for an error message: cut to ``limit`` characters (the full length said), control
    characters escaped."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


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
