"""Requests and tokens per minute per key: sliding-window counters (the previous minute's count, weighted by
its overlap with the last 60 s, plus the current minute's; :func:`~.store.ports.sliding_window`), kept by a
:class:`~.store.ports.State`: this process's memory, or the store for replicas that share one quota.

Requests are counted at authentication (:meth:`RateLimits.check_requests`), before the body is read, so that
a request refused later (a bad body, an unknown model) still counts: a flood of 400s is still a flood. Tokens
are counted at admission as the request's worst case (prompt + max_tokens, :meth:`RateLimits.check_tokens`),
as budgets are: a limiter that counted the true tokens after the fact would let a burst of long generations
through first. The limits of one call are tested before any is counted, so a refusal counts nothing.

Budgets above the key (:mod:`.scope_budgets`) may cap requests and tokens per minute too. Their scopes (team,
model, tags, end user) are known only once the body is read, so a scope's requests are counted at admission
(:meth:`RateLimits.check_scoped`), with the key's tokens, in one atomic step across the key and its scopes.

Not the ``limits`` library: its storages are memory, Redis, Memcached and MongoDB, and a leaninfer deployment
always has its store (SQLite or PostgreSQL), where one transaction tests and counts every limit of a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .keys import KeyRecord
from .scope_budgets import Covering
from .store.ports import RateAsk, State

WINDOW_S = 60.0


@dataclass
class RateLimited(Exception):
    key_id: str
    limit: str  # "rpm" | "tpm"
    quota: int
    remaining: int
    reset_at: float  # when the request would fit again (an estimate of the sliding window)
    scope: str = ""  # a limit above the key: how it is named ("team search"); "" for the key's own
    scope_id: str = ""  # and its id ("team:search", "default-user")

    def message(self) -> str:
        what = "requests" if self.limit == "rpm" else "tokens (prompt + max_tokens)"
        whose = self.scope or f"key {self.key_id}"
        return (f"rate limit reached: {whose} may use {self.quota} {what} per minute "
                f"({self.remaining} left in this window)")


class RateLimits:
    """The ``rpm`` and ``tpm`` of keys' policies.

    Example:
        >>> from leaninfer.finops.keys import KeyPolicy, KeyRecord
        >>> from leaninfer.finops.store.memory import MemoryState
        >>> key = KeyRecord("k1", "h", KeyPolicy(team="search", rpm=600, tpm=10_000), 0.0)
        >>> limits = RateLimits(MemoryState(), clock=lambda: 1740787230.0)
        >>> limits.check(key, tokens=120)                     # raises RateLimited when over, counting nothing
        {'rpm': (600, 599, 1740787260.0), 'tpm': (10000, 9880, 1740787260.0)}
    """

    def __init__(self, state: State, clock: Callable[[], float] = time.time):
        self.state, self.clock = state, clock

    def check(self, key: KeyRecord, tokens: int) -> dict[str, tuple[int, int, float]]:
        """Count one request of ``tokens`` against the key's rpm and tpm, or raise :class:`RateLimited` (counting
        nothing). Returns ``{"rpm"|"tpm": (quota, remaining, reset_at)}`` for the response headers."""
        return self._hit(key, [("rpm", key.policy.rpm, 1), ("tpm", key.policy.tpm, tokens)])

    def check_requests(self, key: KeyRecord) -> dict[str, tuple[int, int, float]]:
        """Count one request against the key's rpm alone (at authentication)."""
        return self._hit(key, [("rpm", key.policy.rpm, 1)])

    def check_tokens(self, key: KeyRecord, tokens: int) -> dict[str, tuple[int, int, float]]:
        """Count ``tokens`` against the key's tpm alone (at admission, once the worst case is known)."""
        return self._hit(key, [("tpm", key.policy.tpm, tokens)])

    def check_scoped(self, key: KeyRecord, tokens: int, requests: int,
                     scopes: Sequence[Covering]) -> dict[str, tuple[int, int, float]]:
        """Count ``tokens`` against the key's tpm and ``requests`` (1, or 0 when counted already) and ``tokens``
        against the rpm and tpm of every scope budget covering the request, in one atomic step, or raise
        :class:`RateLimited` for the first that is full (counting nothing). Returns the tightest of each limit,
        ``{"rpm"|"tpm": (quota, remaining, reset_at)}``, for the response headers."""
        asks: list[tuple[str, str, int, int]] = []
        named: list[Covering | None] = []
        if key.policy.tpm is not None and tokens:
            asks.append((key.key_id, "tpm", key.policy.tpm, tokens))
            named.append(None)
        for c in scopes:
            for name, quota in c.budget.limits.rates().items():
                cost = requests if name == "rpm" else tokens
                if cost:
                    asks.append((c.account, name, quota, cost))
                    named.append(c)
        if not asks:
            return {}
        results = self.state.rate_hit_scoped(asks, WINDOW_S, self.clock())
        out: dict[str, tuple[int, int, float]] = {}
        for (_, name, quota, _), c, (allowed, remaining, reset_at) in zip(asks, named, results, strict=True):
            if not allowed:
                raise RateLimited(key.key_id, name, quota, remaining, reset_at,
                                  c.label if c else "", c.budget.scope if c else "")
            if name not in out or remaining < out[name][1]:
                out[name] = (quota, remaining, reset_at)
        return out

    def _hit(self, key: KeyRecord, limits: list[tuple[str, int | None, int]]) -> dict[str, tuple[int, int, float]]:
        asks: list[RateAsk] = [(name, quota, cost) for name, quota, cost in limits if quota is not None]
        if not asks:
            return {}
        results = self.state.rate_hit(key.key_id, asks, WINDOW_S, self.clock())
        for (name, quota, _), (allowed, remaining, reset_at) in zip(asks, results, strict=True):
            if not allowed:
                raise RateLimited(key.key_id, name, quota, remaining, reset_at)
        return {name: (quota, remaining, reset_at)
                for (name, quota, _), (_, remaining, reset_at) in zip(asks, results, strict=True)}
