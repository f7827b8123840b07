"""Requests and tokens per minute per key: sliding-window counters (the previous minute's count, weighted by
its overlap with the last 60 s, plus the current minute's), as ``limits``' ``SlidingWindowCounterRateLimiter``.

Tokens are counted at admission as the request's worst case (prompt + max_tokens), as budgets are: a limiter
that counted the true tokens after the fact would let a burst of long generations through first. Both limits
are tested before either is counted, so a refusal by one does not consume the other.

In this process the counters are two integers per key and limit, kept here rather than in ``limits``'
memory storage: that storage starts a timer thread every 10 ms to expire keys, and at a few hundred requests
per second the thread churn cost about 0.7 ms of event-loop time per request (measured: docs/finops.md). A
``storage_uri`` other than ``memory://`` (``redis://...``) uses the maintained ``limits`` library with that
storage, for limits shared by several servers; replicas sharing a store use
:class:`~leaninfer.finops.shared_limits.SharedRateLimits`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .keys import KeyRecord
from .store import sliding_window

WINDOW_S = 60.0


@dataclass
class RateLimited(Exception):
    key_id: str
    limit: str  # "rpm" | "tpm"
    quota: int
    remaining: int
    reset_at: float

    def message(self) -> str:
        what = "requests" if self.limit == "rpm" else "tokens (prompt + max_tokens)"
        return (f"rate limit reached: key {self.key_id} may use {self.quota} {what} per minute "
                f"({self.remaining} left in this window)")


def _asks(key: KeyRecord, tokens: int) -> list[tuple[str, int, int]]:
    return [(name, n, cost) for name, n, cost in (("rpm", key.policy.rpm, 1), ("tpm", key.policy.tpm, tokens))
            if n is not None]


class RateLimits:
    def __init__(self, storage_uri: str = "memory://", clock: Callable[[], float] = time.time):
        self.clock = clock
        self._windows: dict[tuple[str, str], list] = {}  # (key_id, limit) -> [window_start, prev, curr]
        self._limits = None if storage_uri == "memory://" else _LimitsLibrary(storage_uri)

    def check(self, key: KeyRecord, tokens: int) -> None:
        """Count one request of ``tokens`` against the key's limits, or raise :class:`RateLimited` (counting
        nothing)."""
        asks = _asks(key, tokens)
        if not asks:
            return
        if self._limits is not None:
            return self._limits.check(key.key_id, asks)
        now = self.clock()
        start = math.floor(now / WINDOW_S) * WINDOW_S
        counted = []
        for name, quota, cost in asks:
            w = self._windows.get((key.key_id, name))
            if w is None:
                w = self._windows[(key.key_id, name)] = [start, 0, 0]
            elif w[0] != start:  # a new minute: the current count becomes the previous one, if adjacent
                w[:] = [start, w[2] if start - w[0] == WINDOW_S else 0, 0]
            allowed, remaining, reset_at = sliding_window(w[1], w[2], start, WINDOW_S, now, quota, cost)
            if not allowed:
                raise RateLimited(key.key_id, name, quota, remaining, reset_at)
            counted.append((w, cost))
        for w, cost in counted:
            w[2] += cost


class _LimitsLibrary:
    """The same limits on ``limits``' storage (``redis://...``), for several servers without a shared store."""

    def __init__(self, storage_uri: str):
        from limits import RateLimitItemPerMinute, storage, strategies

        self._item = RateLimitItemPerMinute
        self._limiter = strategies.SlidingWindowCounterRateLimiter(storage.storage_from_string(storage_uri))

    def check(self, key_id: str, asks: list[tuple[str, int, int]]) -> None:
        for name, n, cost in asks:
            if not self._limiter.test(self._item(n), key_id, name, cost=cost):
                stats = self._limiter.get_window_stats(self._item(n), key_id, name)
                raise RateLimited(key_id, name, n, stats.remaining, stats.reset_time)
        for name, n, cost in asks:
            self._limiter.hit(self._item(n), key_id, name, cost=cost)
