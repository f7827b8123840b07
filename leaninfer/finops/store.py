"""The store interface: where keys, the ledger and the state that replicas share persist, so that a PostgreSQL
store can replace the SQLite default (one machine) without touching the server.
:func:`leaninfer.finops.stores.open_store` opens one.

Shared state (several server processes, each with its own Governance, one budget):

- **Budgets**: one row per (key, budget, window) holding ``settled`` and ``reserved``. A reservation is a
  conditional update, ``settled + reserved + asked <= limit``, of every budget of the request in one
  transaction: all or nothing. A new window's row starts from the ledger's spend since the window's start.
- **Holds**: a reservation may name a hold (an id and an expiry). Settling deletes the hold, so a second
  settle is a no-op in any process; :meth:`Store.reclaim_budget_holds` releases the reservations of holds
  whose process died before settling (they would otherwise block the budget until its window ends).
- **Rate limits**: sliding-window counters (:func:`sliding_window`), all limits of a request tested before
  any is counted, in one transaction.
- **Response cache index**: bodies (JSON bytes) by cache key, with an expiry and a byte bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .keys import KeyRecord
from .ledger import LedgerRow

BudgetAsk = tuple[str, float, int, int]  # (budget name, window start, limit, asked)
BudgetCharge = tuple[str, float, int, int]  # (budget name, window start, reserved, charged)
RateAsk = tuple[str, int, int]  # (limit name, quota, cost)
RateResult = tuple[bool, int, float]  # (allowed, remaining, reset_at)
BUDGET_UNITS = ("usd", "tokens")
# A reclaimed hold is kept this long, so that its process, if alive after all, settles without releasing
# its reservation a second time.
RECLAIMED_HOLD_KEEP_S = 7 * 86_400.0  # a budget's name starts with its unit: usd_day, tokens_total, ...


@dataclass
class BudgetRefused(Exception):
    """``reserve_budget`` took nothing: ``budget`` (window starting at ``window_start``) would go past ``limit``,
    having ``used`` (settled + reserved) before this request's ``asked``."""

    budget: str
    window_start: float
    limit: int
    used: int
    asked: int


def budget_unit(budget: str) -> str:
    """``"usd"`` or ``"tokens"``: which ledger sum (``cost_nusd`` or ``charged_tokens``) a budget starts from."""
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


class Store(Protocol):
    url: str

    # keys
    def add_key(self, record: KeyRecord) -> None: ...
    def get_key(self, key_id: str) -> KeyRecord | None: ...
    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]: ...
    def revoke_key(self, key_id: str, at: float) -> bool: ...
    def set_key_hash(self, key_id: str, key_hash: str) -> bool: ...

    # ledger
    def append(self, rows: list[LedgerRow]) -> None:
        """Write ``rows`` durably (one transaction): once this returns, a crash of the process loses none."""
    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        """``(nano-dollars, tokens)`` charged to ``key_id`` by requests that arrived at or after ``since``."""
    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]: ...
    def close(self) -> None: ...

    # budgets shared by every process on the store
    def reserve_budget(self, key_id: str, items: list[BudgetAsk], hold_id: str | None = None,
                       expires_at: float | None = None) -> None:
        """Reserve ``asked`` in every budget of ``items`` or, when one would exceed its limit, nothing: raise
        :class:`BudgetRefused` for the first such budget. With ``hold_id``, record the reservation as a hold
        that :meth:`settle_budget` deletes and :meth:`reclaim_budget_holds` releases after ``expires_at``.
        Rows are locked in the order of ``items``: give a key's budgets in one fixed order (the key policy's),
        so two requests can't deadlock."""
    def settle_budget(self, key_id: str, items: list[BudgetCharge], hold_id: str | None = None) -> None:
        """Release ``reserved`` and add ``charged`` to the settled sum of each budget. With ``hold_id``, only
        once: a second settle of the same hold changes nothing (and a reclaimed hold releases nothing again)."""
    def reclaim_budget_holds(self, now: float) -> int:
        """Release the reservations of holds that expired before ``now``; returns how many holds."""
    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        """``{budget: (settled, reserved)}`` for each ``(budget, window start)``."""

    # rate limits shared by every process on the store
    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        """Count ``cost`` against every ``(name, quota, cost)`` of ``items`` if all of them fit, else count none;
        one ``(allowed, remaining, reset_at)`` per item (see :func:`sliding_window`)."""

    # response cache index
    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        """``(body as JSON bytes, cost_nusd)`` of an entry that has not expired at ``now``, else None."""
    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        """Keep ``body`` until ``expires_at``; then drop expired entries, and the oldest while all bodies
        together exceed ``max_bytes``."""
