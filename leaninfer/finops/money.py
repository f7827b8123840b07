"""Money as integer nano-dollars: sums of many tiny request costs stay exact (a float would drift)."""

from __future__ import annotations

NANO_PER_USD = 1_000_000_000


def to_nano(usd: float) -> int:
    """``usd`` rounded to the nearest nano-dollar.

    Example:
        >>> to_nano(0.000001234)
        1234
    """
    return round(usd * NANO_PER_USD)


def to_usd(nano: int) -> float:
    return nano / NANO_PER_USD
