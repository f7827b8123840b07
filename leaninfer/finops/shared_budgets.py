"""Budgets shared by every replica on one store: :class:`BudgetBook`'s interface, its state in the store.

:class:`~.budgets.BudgetBook` keeps settled sums and reservations in its process, which is right for one
server and wrong for several: two replicas would each let a key spend its whole budget. Here every reserve
and settle is one transaction on the store (a conditional ``UPDATE`` in PostgreSQL, a ``BEGIN IMMEDIATE``
transaction in SQLite; see :mod:`.store`), so all replicas see one budget. Blocking I/O: call it off the
event loop.

Each reservation is recorded as a hold with an expiry (``hold_s``): settling deletes it, and a replica that
dies holding reservations has them released by whichever replica next reclaims (every ``reclaim_every_s``),
so a kill doesn't lock a budget until its window ends. ``hold_s`` must exceed the longest request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from .budgets import BudgetExceeded, Reservation
from .keys import KeyRecord
from .store import BudgetRefused, Store
from .windows import window_bounds

HOLD_S = 3_600.0
RECLAIM_EVERY_S = 30.0


@dataclass
class SharedReservation(Reservation):
    hold_id: str = ""


class SharedBudgetBook:
    """Reservations and settled spend per key and budget window, in the store.

    Example:
        >>> book = SharedBudgetBook(open_store("postgresql://..."), ZoneInfo("UTC"))   # doctest: +SKIP
        >>> r = book.reserve(key, nusd=2_000, tokens=80)      # raises BudgetExceeded when over, in any replica
        >>> book.settle(r, nusd=1_500, tokens=57)
        (1500, 57)
    """

    def __init__(self, store: Store, tz: ZoneInfo, clock: Callable[[], float] = time.time,
                 hold_s: float = HOLD_S, reclaim_every_s: float = RECLAIM_EVERY_S):
        if hold_s <= 0:
            raise ValueError(f"hold_s={hold_s!r}: a reservation's hold must last a positive number of seconds")
        self.store, self.tz, self.clock = store, tz, clock
        self.hold_s, self.reclaim_every_s = hold_s, reclaim_every_s
        self._next_reclaim = 0.0
        self._lock = threading.Lock()  # guards Reservation.settled and the reclaim schedule

    def _limits(self, key: KeyRecord, now: float) -> list[tuple[str, float, float | None, int]]:
        out = []
        for budget, (window, limit) in key.policy.budgets().items():
            start, reset = window_bounds(window, now, self.tz)
            out.append((budget, start, reset, round(limit * 1e9) if budget.startswith("usd") else int(limit)))
        return out

    def reserve(self, key: KeyRecord, nusd: int, tokens: int) -> SharedReservation:
        """Take ``nusd`` nano-dollars and ``tokens`` from every budget of ``key``, or raise
        :class:`~.budgets.BudgetExceeded` for a budget it would exceed (and take nothing)."""
        now = self.clock()
        self._maybe_reclaim(now)
        res = SharedReservation(key.key_id, nusd, tokens, hold_id=uuid.uuid4().hex)
        limits = self._limits(key, now)
        if not limits:
            return res
        items = [(b, start, cap, nusd if b.startswith("usd") else tokens) for b, start, _, cap in limits]
        try:
            self.store.reserve_budget(key.key_id, items, hold_id=res.hold_id, expires_at=now + self.hold_s)
        except BudgetRefused as e:
            reset = next(r for b, _, r, _ in limits if b == e.budget)
            raise BudgetExceeded(key.key_id, e.budget, e.limit, e.used, e.asked, reset) from None
        res.windows = {b: start for b, start, _, _ in limits}
        return res

    def settle(self, res: Reservation, nusd: int, tokens: int) -> tuple[int, int]:
        """Release the reservation and charge the true cost, at most what was reserved; returns the charge
        ``(nusd, tokens)``. Settling twice is a no-op (a cancel racing a finish)."""
        nusd, tokens = min(nusd, res.nusd), min(tokens, res.tokens)
        with self._lock:
            if res.settled:
                return 0, 0
            res.settled = True
        if res.windows:
            items = [(b, start, *((res.nusd, nusd) if b.startswith("usd") else (res.tokens, tokens)))
                     for b, start in res.windows.items()]
            self.store.settle_budget(res.key_id, items, hold_id=getattr(res, "hold_id", None) or None)
        return nusd, tokens

    def used(self, key: KeyRecord) -> dict[str, tuple[int, int, float]]:
        """Per budget of ``key``: ``(settled, limit, window start)``, in nano-dollars or tokens, across replicas."""
        limits = self._limits(key, self.clock())
        found = self.store.budget_used(key.key_id, [(b, start) for b, start, _, _ in limits])
        return {b: (found[b][0], cap, start) for b, start, _, cap in limits}

    def _maybe_reclaim(self, now: float) -> None:
        with self._lock:
            if now < self._next_reclaim:
                return
            self._next_reclaim = now + self.reclaim_every_s
        self.store.reclaim_budget_holds(now)
