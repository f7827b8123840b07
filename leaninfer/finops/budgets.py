"""Budgets enforced at admission: reserve the worst case before any work, settle the true cost after.

A request's reservation is checked against every budget of its key (``$`` and tokens, per day, month and
in total) as ``settled + outstanding reservations + this one <= limit``, and taken in the same step, so
concurrent requests cannot overshoot: on one server every reserve and settle runs on the event loop's thread,
one at a time. Settled spend lives in the ledger (the store); this book keeps, per key and window, the
settled sum it loaded from the store when the window was first touched plus what it settled since, and the
reservations in flight. A request settles at most what it reserved (see :class:`Reservation`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from .keys import KeyRecord
from .money import to_usd
from .store import Store
from .windows import window_bounds


@dataclass
class BudgetExceeded(Exception):
    """The reservation would take ``budget`` of key ``key_id`` past its limit."""

    key_id: str
    budget: str  # e.g. "usd_day", "tokens_total"
    limit: int  # nano-dollars or tokens
    used: int  # settled + reserved before this request
    asked: int
    reset_at: float | None  # when the window starts afresh; None for a lifetime budget

    def message(self) -> str:
        unit, window = self.budget.split("_")
        fmt = (lambda v: f"${to_usd(v):.6f}") if unit == "usd" else (lambda v: f"{v} tokens")
        when = "it does not reset" if self.reset_at is None else "it resets at " + time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.reset_at))
        return (f"budget exceeded: key {self.key_id} has used {fmt(self.used)} of its {window} budget of "
                f"{fmt(self.limit)}, and this request may cost up to {fmt(self.asked)}; {when}")


@dataclass
class Reservation:
    key_id: str
    nusd: int
    tokens: int
    windows: dict[str, float] = field(default_factory=dict)  # budget name -> start of its window
    settled: bool = False


@dataclass
class _Account:
    settled: int = 0
    reserved: int = 0


class BudgetBook:
    """Reservations and settled spend per key and budget window.

    Example:
        >>> book = BudgetBook(store, ZoneInfo("UTC"))                   # doctest: +SKIP
        >>> r = book.reserve(key, nusd=2_000, tokens=80)                # raises BudgetExceeded when over
        >>> book.settle(r, nusd=1_500, tokens=57)
    """

    def __init__(self, store: Store, tz: ZoneInfo, clock: Callable[[], float] = time.time):
        self.store, self.tz, self.clock = store, tz, clock
        self._accounts: dict[tuple[str, str, float], _Account] = {}
        # The server calls reserve/settle from the event loop's thread only; the lock makes the book safe for
        # any other caller (a test's threads, a notebook) at the price of an uncontended acquire.
        self._lock = threading.Lock()

    def _account(self, key_id: str, budget: str, start: float) -> _Account:
        acc = self._accounts.get((key_id, budget, start))
        if acc is None:
            nusd, tokens = self.store.spend(key_id, start)
            acc = self._accounts[(key_id, budget, start)] = _Account(nusd if budget.startswith("usd") else tokens)
        return acc

    def reserve(self, key: KeyRecord, nusd: int, tokens: int) -> Reservation:
        """Take ``nusd`` nano-dollars and ``tokens`` from every budget of ``key``, or raise
        :class:`BudgetExceeded` for the first one it would exceed (and take nothing)."""
        now = self.clock()
        res = Reservation(key.key_id, nusd, tokens)
        with self._lock:
            plan = []
            for budget, (window, limit) in key.policy.budgets().items():
                start, reset = window_bounds(window, now, self.tz)
                acc = self._account(key.key_id, budget, start)
                asked, cap = (nusd, round(limit * 1e9)) if budget.startswith("usd") else (tokens, int(limit))
                if acc.settled + acc.reserved + asked > cap:
                    raise BudgetExceeded(key.key_id, budget, cap, acc.settled + acc.reserved, asked, reset)
                plan.append((acc, asked))
                res.windows[budget] = start
            for acc, asked in plan:
                acc.reserved += asked
        return res

    def settle(self, res: Reservation, nusd: int, tokens: int) -> tuple[int, int]:
        """Release the reservation and charge the true cost, at most what was reserved; returns the charge
        ``(nusd, tokens)``. Settling twice is a no-op (a cancel racing a finish)."""
        nusd, tokens = min(nusd, res.nusd), min(tokens, res.tokens)
        with self._lock:
            if res.settled:
                return 0, 0
            res.settled = True
            for budget, start in res.windows.items():
                acc = self._accounts[(res.key_id, budget, start)]  # reserve created it
                reserved, charged = (res.nusd, nusd) if budget.startswith("usd") else (res.tokens, tokens)
                acc.reserved -= reserved
                acc.settled += charged
        return nusd, tokens

    def used(self, key: KeyRecord) -> dict[str, tuple[int, int, float]]:
        """Per budget of ``key``: ``(settled, limit, window start)``, in nano-dollars or tokens (what alerts
        and the gauge show: reservations in flight are promises, not spend)."""
        now, out = self.clock(), {}
        with self._lock:
            for budget, (window, limit) in key.policy.budgets().items():
                start, _ = window_bounds(window, now, self.tz)
                acc = self._account(key.key_id, budget, start)
                cap = round(limit * 1e9) if budget.startswith("usd") else int(limit)
                out[budget] = (acc.settled, cap, start)
        return out
