"""Requests and tokens per minute per key, counted in the store so that every replica shares one quota.

:class:`~.rate_limits.RateLimits` uses the maintained ``limits`` library, and across replicas that library is
still the first choice for users who run Redis (``rate_limit_storage="redis://..."``). ``limits`` has no SQL
storage, though, and the store (SQLite or PostgreSQL) is the one shared thing a leaninfer deployment always
has; so this counts in SQL (a sliding-window counter, :func:`.store.sliding_window`, as ``limits``'
``SlidingWindowCounterRateLimiter`` does). Both limits of a request are tested and counted in one store
transaction: a refusal by one counts neither. Blocking I/O: call it off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .keys import KeyRecord
from .rate_limits import RateLimited
from .store import Store

WINDOW_S = 60.0


class SharedRateLimits:
    """Example:
        >>> limits = SharedRateLimits(open_store("postgresql://..."))   # doctest: +SKIP
        >>> limits.check(key, tokens=120)          # raises RateLimited when over, counting nothing
        {'rpm': (600, 599, 1740787260.0)}
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store, self.clock = store, clock

    def check(self, key: KeyRecord, tokens: int) -> dict[str, tuple[int, int, float]]:
        """Count one request of ``tokens`` against the key's limits, or raise :class:`RateLimited` (counting
        nothing). Returns ``{"rpm"|"tpm": (quota, remaining, reset_at)}`` for the response headers."""
        asks = [(name, n, cost) for name, n, cost in (("rpm", key.policy.rpm, 1), ("tpm", key.policy.tpm, tokens))
                if n is not None]
        if not asks:
            return {}
        results = self.store.rate_hit(key.key_id, asks, WINDOW_S, self.clock())
        for (name, n, _), (allowed, remaining, reset_at) in zip(asks, results, strict=True):
            if not allowed:
                raise RateLimited(key.key_id, name, n, remaining, reset_at)
        return {name: (n, remaining, reset_at) for (name, n, _), (_, remaining, reset_at) in zip(asks, results,
                                                                                                 strict=True)}
