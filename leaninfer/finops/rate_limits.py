"""Requests and tokens per minute per key, on the maintained ``limits`` library (moving windows).

Tokens are counted at admission as the request's worst case (prompt + max_tokens), as budgets are: a limiter
that counted the true tokens after the fact would let a burst of long generations through first. Both limits
are tested before either is hit, so a refusal by one does not consume the other. ``storage_uri`` picks the
``limits`` storage: ``memory://`` on one server; a shared one (``redis://...``) across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItemPerMinute, storage, strategies

from .keys import KeyRecord


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


class RateLimits:
    def __init__(self, storage_uri: str = "memory://"):
        self._limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_uri))
        self._items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, n: int) -> RateLimitItemPerMinute:
        item = self._items.get(n)
        if item is None:
            item = self._items[n] = RateLimitItemPerMinute(n)
        return item

    def check(self, key: KeyRecord, tokens: int) -> dict[str, tuple[int, int, float]]:
        """Count one request of ``tokens`` against the key's limits, or raise :class:`RateLimited` (counting
        nothing). Returns ``{"rpm"|"tpm": (quota, remaining, reset_at)}`` for the response headers."""
        asks = [(name, n, cost) for name, n, cost in (("rpm", key.policy.rpm, 1), ("tpm", key.policy.tpm, tokens))
                if n is not None]
        for name, n, cost in asks:
            if not self._limiter.test(self._item(n), key.key_id, name, cost=cost):
                stats = self._limiter.get_window_stats(self._item(n), key.key_id, name)
                raise RateLimited(key.key_id, name, n, stats.remaining, stats.reset_time)
        out = {}
        for name, n, cost in asks:
            self._limiter.hit(self._item(n), key.key_id, name, cost=cost)
            stats = self._limiter.get_window_stats(self._item(n), key.key_id, name)
            out[name] = (n, stats.remaining, stats.reset_time)
        return out
