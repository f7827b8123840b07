"""The :class:`~.ports.State` of one server process: plain dicts under one lock.

Called inline on the event loop's thread (``blocking = False``): a reserve, a rate hit or a cache lookup is a
few dictionary operations, microseconds, where a thread hop would cost more than the work. The lock makes it
safe for any other caller too (threads of a test, a notebook) at the price of an uncontended acquire.

A budget window seen for the first time starts from the ledger's spend since its start (``spend``, the
store's; nothing without a store), read outside the lock, then counts what this process settles: right for one
server, which is why a server on this State takes its store exclusively (:meth:`~.ports.Store.claim`). Windows
idle for :data:`IDLE_S` with nothing reserved are forgotten and read back when used again, so memory follows
the accounts in use (a key shared by ever-new end users, each with the default end-user budget, included).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .ports import (
    RECLAIMED_HOLD_KEEP_S,
    BudgetAsk,
    BudgetCharge,
    BudgetRefused,
    Hold,
    RateAsk,
    RateResult,
    ScopedAsk,
    ScopedCharge,
    ScopedRateAsk,
    Spend,
    budget_unit,
    sliding_window,
)

# A budget window untouched this long with nothing reserved is forgotten, and read back from the ledger when used
# again (a response leaves only once its row is committed, so the ledger holds what it settled long before).
IDLE_S = 120.0
FORGET_PER_CALL = 4  # windows looked at per call: forgetting costs each call O(1), never a sweep of them all


@dataclass
class _Account:
    settled: int = 0
    reserved: int = 0
    used_at: float = 0.0  # monotonic time of the last reserve or settle


@dataclass
class _Hold:
    key_id: str
    items: list[tuple[str, str, float, int]]  # (account, budget, window start, reserved)
    expires_at: float
    reclaimed: bool = False


@dataclass
class _Window:
    start: float
    prev: int = 0
    curr: int = 0
    forget_at: float = 0.0  # monotonic time after which it counts nothing


@dataclass
class _Entry:
    body: bytes
    cost_nusd: int
    expires_at: float


@dataclass
class _Cache:
    entries: OrderedDict = field(default_factory=OrderedDict)  # key -> _Entry, oldest first
    size: int = 0


class MemoryState:
    """Budgets, holds, rate windows and the response cache of one process.

    Example:
        >>> state = MemoryState()
        >>> state.reserve("k1", [("tokens_day", 0.0, 100, 60)], None)
        >>> state.budget_used("k1", [("tokens_day", 0.0)])
        {'tokens_day': (0, 60)}
    """

    blocking = False
    persistent = False

    def __init__(self, spend: Spend | None = None, idle_s: float = IDLE_S,
                 clock: Callable[[], float] = time.monotonic):
        self._spend, self._idle_s, self._clock = spend, idle_s, clock
        self._lock = threading.Lock()
        # both in order of last use, oldest first: what has been idle longest is forgotten first (_forget)
        self._accounts: OrderedDict[tuple[str, str, float], _Account] = OrderedDict()
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._holds: dict[str, _Hold] = {}
        self._cache = _Cache()

    # -- budgets ------------------------------------------------------------------------------------------------
    def _start_of(self, key_id: str, budget: str, start: float) -> int:
        """What a window seen for the first time has spent already: the ledger's sum since its start."""
        if self._spend is None:
            return 0
        nusd, tokens = self._spend(key_id, start)
        return nusd if budget_unit(budget) == "usd" else tokens

    def _seeds(self, keys) -> dict[tuple[str, str, float], int]:
        """The ledger's spend of each window of ``keys`` not kept here: read outside the lock (I/O: the event
        loop's inline calls must never wait on it)."""
        return {k: self._start_of(*k) for k in keys if k not in self._accounts}

    def _account(self, key: tuple[str, str, float], seeds: dict, now: float) -> _Account | None:
        """The kept window ``key``, or a new one from ``seeds`` (None when it is in neither: read it first)."""
        acc = self._accounts.get(key)
        if acc is None:
            if key not in seeds:
                return None
            acc = self._accounts[key] = _Account(seeds[key])
        else:
            self._accounts.move_to_end(key)
        acc.used_at = now
        return acc

    def _forget(self, now: float) -> None:
        """Under the lock: drop a few of the windows idle longest, so that memory follows the accounts in use
        (ever-new end users, yesterday's windows), not every account ever seen. A budget window goes only when
        nothing is reserved in it and it has been idle :data:`IDLE_S`: its settled spend is in the ledger by
        then (a response leaves once its row is committed), where its next use reads it back from. Without a
        ledger to read back from, budget windows stay. A rate window goes once it counts nothing."""
        for _ in range(FORGET_PER_CALL):
            if not self._accounts or self._spend is None:
                break
            key, acc = next(iter(self._accounts.items()))
            if acc.used_at > now - self._idle_s:
                break
            if acc.reserved:  # a request older than IDLE_S still holds it: keep it, look again later
                acc.used_at = now
                self._accounts.move_to_end(key)
            else:
                del self._accounts[key]
        for _ in range(FORGET_PER_CALL):
            if not self._windows:
                break
            key, w = next(iter(self._windows.items()))
            if w.forget_at > now:
                break
            del self._windows[key]

    def cold(self, key_id: str, windows: list[tuple[str, float]]) -> bool:
        return self._spend is not None and any((key_id, b, s) not in self._accounts for b, s in windows)

    def reserve(self, key_id: str, items: list[BudgetAsk], hold: Hold | None) -> None:
        self.reserve_scoped([(key_id, *item) for item in items], hold, key_id)

    def reserve_scoped(self, items: list[ScopedAsk], hold: Hold | None, key_id: str = "") -> None:
        keys = [(account, budget, start) for account, budget, start, _, _ in items]
        seeds = self._seeds(keys)
        while True:
            with self._lock:
                now = self._clock()
                found = [self._account(k, seeds, now) for k in keys]
                if None in found:  # forgotten between the read and the lock: read it again, outside
                    missing = [k for k, acc in zip(keys, found, strict=True) if acc is None]
                else:
                    for acc, (account, budget, start, limit, asked) in zip(found, items, strict=True):
                        if acc.settled + acc.reserved + asked > limit:
                            raise BudgetRefused(budget, start, limit, acc.settled, acc.reserved, asked, account)
                    for acc, item in zip(found, items, strict=True):
                        acc.reserved += item[4]
                    if hold is not None:
                        self._holds[hold.hold_id] = _Hold(key_id, [(k, b, s, a) for k, b, s, _, a in items],
                                                          hold.expires_at)
                    self._forget(now)
                    return
            seeds |= self._seeds(missing)

    def settle(self, key_id: str, items: list[BudgetCharge], hold_id: str | None) -> None:
        self.settle_scoped([(key_id, *item) for item in items], hold_id)

    def settle_scoped(self, items: list[ScopedCharge], hold_id: str | None) -> None:
        with self._lock:
            now = self._clock()
            reclaimed = False
            if hold_id is not None:
                hold = self._holds.pop(hold_id, None)
                if hold is None:  # settled already
                    return
                reclaimed = hold.reclaimed
            for account, budget, start, reserved, charged in items:
                # A window forgotten since (it had nothing reserved: this request's hold was reclaimed) is not
                # brought back: its next use reads the ledger, which will hold this request's row.
                acc = self._account((account, budget, start), {}, now)
                if acc is not None:
                    acc.reserved = max(acc.reserved - (0 if reclaimed else reserved), 0)
                    acc.settled += charged

    def reclaim(self, now: float) -> int:
        with self._lock:
            n = 0
            for hold_id, hold in list(self._holds.items()):
                if hold.reclaimed:
                    if hold.expires_at < now - RECLAIMED_HOLD_KEEP_S:
                        del self._holds[hold_id]
                elif hold.expires_at < now:
                    hold.reclaimed = True
                    n += 1
                    for account, budget, start, amount in hold.items:
                        acc = self._accounts.get((account, budget, start))
                        if acc is not None:
                            acc.reserved = max(acc.reserved - amount, 0)
            return n

    def reclaim_orphans(self) -> int:
        """Nothing to do: every hold here belongs to this process, which is alive."""
        return 0

    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        seeds = self._seeds([(key_id, budget, start) for budget, start in windows])
        with self._lock:
            out = {}
            for budget, start in windows:
                acc = self._accounts.get((key_id, budget, start))
                out[budget] = (acc.settled, acc.reserved) if acc else (seeds.get((key_id, budget, start), 0), 0)
            return out

    # -- rate limits --------------------------------------------------------------------------------------------
    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        return self.rate_hit_scoped([(key_id, *item) for item in items], window_s, now)

    def rate_hit_scoped(self, items: list[ScopedRateAsk], window_s: float, now: float) -> list[RateResult]:
        start = math.floor(now / window_s) * window_s
        with self._lock:
            mono = self._clock()
            results, windows = [], []
            for account, name, quota, cost in items:
                w = self._windows.get((account, name))
                if w is None:
                    w = self._windows[(account, name)] = _Window(start)
                else:
                    self._windows.move_to_end((account, name))
                w.forget_at = mono + 2 * window_s
                if w.start != start:  # a new window: the current count becomes the previous one, if adjacent
                    w.prev, w.curr = (w.curr if start - w.start == window_s else 0), 0
                    w.start = start
                results.append(sliding_window(w.prev, w.curr, start, window_s, now, quota, cost))
                windows.append(w)
            if all(allowed for allowed, _, _ in results):
                for w, (_, _, _, cost) in zip(windows, items, strict=True):
                    w.curr += cost
            self._forget(mono)
            return results

    # -- response cache -----------------------------------------------------------------------------------------
    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        with self._lock:
            entry = self._cache.entries.get(key)
            if entry is None:
                return None
            if entry.expires_at <= now:
                self._cache.size -= len(self._cache.entries.pop(key).body)
                return None
            return entry.body, entry.cost_nusd

    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        # Not cachetools: the bound and the expiry come with each call (the SQL table's contract), and the
        # oldest entry goes first, as in the table, where an LRU would keep what is read.
        with self._lock:
            cache = self._cache
            old = cache.entries.pop(key, None)
            if old is not None:
                cache.size -= len(old.body)
            cache.entries[key] = _Entry(body, cost_nusd, expires_at)
            cache.size += len(body)
            # Entries come in expiry order when every one lives as long (one ResponseCache's ttl_s): expiring
            # from the front is then exact, at O(1) a put. One that expires out of order is never served (see
            # cache_get) and goes when it reaches the front or is read.
            while cache.entries:
                first = next(iter(cache.entries.values()))
                if first.expires_at > now:
                    break
                cache.size -= len(cache.entries.popitem(last=False)[1].body)
            while cache.size > max_bytes:
                cache.size -= len(cache.entries.popitem(last=False)[1].body)
