"""The two ports FinOps rules are written against, and the types they share.

- :class:`Store`: what must outlive the process — keys and the ledger. One SQL implementation
  (:class:`~.sql.SQLStore`) over SQLite (one machine) or PostgreSQL (several hosts).
- :class:`State`: the counters the caps need — budget reservations and their holds, rate-limit windows, the
  response cache. :class:`~.memory.MemoryState` keeps them in one process (fast enough to stay inline on the
  event loop); :class:`~.sql.SQLStore` keeps them in the store, so that every replica on it shares them.

Budgets, rate limits and the cache (:mod:`..budgets`, :mod:`..rate_limits`, :mod:`..cache`) are written once
against :class:`State`; a contract test runs every implementation through the same cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..keys import KeyPolicy, KeyRecord
from ..ledger import LedgerRow

BudgetAsk = tuple[str, float, int, int]  # (budget name, window start, limit, asked)
BudgetCharge = tuple[str, float, int, int]  # (budget name, window start, reserved, charged)
# The same across accounts: a key id, or a scope's account above the key (``team:search@<generation>``, see
# ..scope_budgets), so that one request reserves in every budget that covers it in one atomic step.
ScopedAsk = tuple[str, str, float, int, int]  # (account, budget name, window start, limit, asked)
ScopedCharge = tuple[str, str, float, int, int]  # (account, budget name, window start, reserved, charged)
RateAsk = tuple[str, int, int]  # (limit name, quota, cost)
ScopedRateAsk = tuple[str, str, int, int]  # (account, limit name, quota, cost): a key id or a scope's account
RateResult = tuple[bool, int, float]  # (allowed, remaining, reset_at)
Spend = Callable[[str, float], tuple[int, int]]  # (key_id, since) -> (nano-dollars, tokens), the ledger's sums
BUDGET_UNITS = ("usd", "tokens")  # a budget's name starts with its unit: usd_day, tokens_total, ...
# A reclaimed hold is kept this long, so that its process, if alive after all, settles without releasing
# its reservation a second time.
RECLAIMED_HOLD_KEEP_S = 7 * 86_400.0


@dataclass(frozen=True)
class Hold:
    """A reservation's claim ticket: settling it deletes it (so a second settle does nothing, in any process);
    :meth:`State.reclaim` releases it after ``expires_at``, and :meth:`State.reclaim_orphans` as soon as the
    server ``owner`` that took it is no longer alive ("" : no owner, released at expiry only)."""

    hold_id: str
    owner: str
    expires_at: float


@dataclass
class BudgetRefused(Exception):
    """``reserve`` took nothing: ``budget`` (window starting at ``window_start``) would go past ``limit``.
    ``settled`` (spent) and ``reserved`` (in flight) are given apart, so that the caller can tell whether
    waiting for requests in flight can help (``settled + asked <= limit``) or only a new window will."""

    budget: str
    window_start: float
    limit: int
    settled: int
    reserved: int
    asked: int
    account: str = ""  # whose budget: a key id or a scope's account ("" where the caller knows)

    @property
    def used(self) -> int:
        return self.settled + self.reserved


def budget_unit(budget: str) -> str:
    """``"usd"`` or ``"tokens"``: which ledger sum (``cost_nusd`` or ``charged_tokens``) a budget starts from.

    Example:
        >>> budget_unit("tokens_day")
        'tokens'
    """
    unit = budget.split("_", 1)[0]
    if unit not in BUDGET_UNITS:
        valid = ", ".join(u + "_" for u in BUDGET_UNITS)
        raise ValueError(f"budget {budget!r} has no unit: its name starts with one of {valid}")
    return unit


def sliding_window(prev: int, curr: int, window_start: float, window_s: float, now: float, quota: int,
                   cost: int) -> RateResult:
    """A sliding-window counter (as ``limits``' ``SlidingWindowCounterRateLimiter``): the previous fixed
    window's count, weighted by how much of it still overlaps the last ``window_s`` seconds, plus the current
    window's. Returns ``(allowed, remaining after counting, reset_at)``; ``reset_at`` estimates when ``cost``
    would fit again (refused) or when the current window closes (allowed).

    Example:
        >>> sliding_window(prev=10, curr=5, window_start=60.0, window_s=60.0, now=90.0, quota=12, cost=2)
        (True, 0, 120.0)
    """
    weighted = prev * max(0.0, (window_start + window_s - now) / window_s) + curr
    allowed = weighted + cost <= quota
    remaining = max(0, math.floor(quota - weighted - (cost if allowed else 0)))
    end = window_start + window_s
    if allowed or curr + cost > quota or prev == 0:
        return allowed, remaining, end
    # the previous window's share decays linearly: it leaves room for cost at this time
    return allowed, remaining, min(end, window_start + window_s * (1 - (quota - curr - cost) / prev))


class State(Protocol):
    """The counters budgets, rate limits and the response cache keep."""

    blocking: bool  # calls do I/O: run them off the event loop (memory: False, inline on the loop)
    persistent: bool  # what is put here lands on disk or in a database (decides whether text may be cached)

    def reserve(self, key_id: str, items: list[BudgetAsk], hold: Hold | None) -> None:
        """Reserve ``asked`` in every budget of ``items`` or, when one would pass its limit, nothing: raise
        :class:`BudgetRefused` for the first such budget. A window seen for the first time starts from the
        ledger's spend since its start. Give a key's budgets in one fixed order (two requests can't deadlock)."""

    def settle(self, key_id: str, items: list[BudgetCharge], hold_id: str | None) -> None:
        """Release ``reserved`` and add ``charged`` to each budget's settled sum; with ``hold_id`` only once
        (a second settle of the hold changes nothing; a reclaimed hold adds its charge, releases nothing)."""

    def reserve_scoped(self, items: list[ScopedAsk], hold: Hold | None, key_id: str = "") -> None:
        """:meth:`reserve` across accounts (a key's budgets and those of its team, tags, model, end user, org)
        in one atomic step: all or nothing, :class:`BudgetRefused` (with its ``account``) for the first that
        would pass its limit. ``items`` come in one global order (the caller's: no deadlock between requests
        whose accounts overlap); the hold records the account of each item. A scope account's new window
        starts from the ledger's spend of that scope (the ``spend`` given to the State, or the store's)."""

    def settle_scoped(self, items: list[ScopedCharge], hold_id: str | None) -> None:
        """:meth:`settle` across accounts, in the order they were reserved; once per hold."""

    def reclaim(self, now: float) -> int:
        """Release the reservations of holds that expired before ``now``; returns how many holds."""

    def reclaim_orphans(self) -> int:
        """Release the reservations of holds whose owner is no longer alive; returns how many holds."""

    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        """``{budget: (settled, reserved)}`` for each ``(budget, window start)``."""

    def cold(self, key_id: str, windows: list[tuple[str, float]]) -> bool:
        """Whether touching these windows would read the ledger first (I/O, even for a State that otherwise
        doesn't block): the caller then reserves off the event loop."""

    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        """Count ``cost`` against every ``(name, quota, cost)`` of ``items`` if all fit, else count none; one
        ``(allowed, remaining, reset_at)`` per item (:func:`sliding_window`)."""

    def rate_hit_scoped(self, items: list[ScopedRateAsk], window_s: float, now: float) -> list[RateResult]:
        """:meth:`rate_hit` across accounts (a key's limits and those of the scopes above it) in one atomic step:
        all counted, or none when one would pass its quota; one result per item, in order."""

    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        """``(body, cost_nusd)`` of an entry that has not expired at ``now``, else None."""

    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        """Keep ``body`` (exactly what is given) until ``expires_at``; then drop expired entries, and the oldest
        while all bodies together exceed ``max_bytes``."""


class Store(Protocol):
    """Keys and the ledger, durable."""

    url: str

    def add_key(self, record: KeyRecord) -> None: ...
    def get_key(self, key_id: str) -> KeyRecord | None: ...
    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]: ...
    def revoke_key(self, key_id: str, at: float) -> bool: ...
    def set_key_hash(self, key_id: str, key_hash: str) -> bool: ...
    def update_key_policy(self, key_id: str, change: Callable[[KeyPolicy], KeyPolicy]) -> KeyRecord | None:
        """Replace an active key's policy with ``change(policy)`` in one transaction (the record as changed), or
        None when there is no such active key. An exception of ``change`` changes nothing."""

    def claim_report(self, report: str, at: float) -> bool:
        """Record that the spend report ``report`` is being sent; False when a server already did (send nothing)."""

    def append(self, rows: list[LedgerRow]) -> None:
        """Write ``rows`` durably, in one transaction: once this returns, a crash of the process loses none."""

    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        """``(nano-dollars, tokens)`` charged to ``key_id`` by requests that arrived at or after ``since``."""

    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]: ...

    def prune(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest rows that arrived before ``before`` (a UTC midnight) in one short
        transaction; their daily rollups stay, and ``spend`` counts them from there. How many rows went."""

    def claim(self, owner: str, shared: bool) -> None:
        """Take the store for the server ``owner`` for as long as it lives: ``shared`` when its State is the
        store (replicas share it), else exclusively (its budgets live in its memory: a second server would
        keep budgets of its own). A claim that conflicts with a live server raises ``LeaninferError`` saying
        what to do. Also marks ``owner`` alive, for :meth:`State.reclaim_orphans`. Commands that only read
        or edit keys never claim."""

    def release(self) -> None:
        """Drop the claim (the process dying drops it too)."""

    def close(self) -> None: ...
