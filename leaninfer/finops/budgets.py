"""Budgets enforced at admission: reserve the worst case before any work, settle the true cost after.

A request's reservation is checked against every budget of its key ($ and tokens, per day, month and in
total) as ``settled + reservations in flight + this one <= limit``, and taken in the same step, all or
nothing, by the :class:`~.store.ports.State`: this process's memory (one server) or the store (replicas
sharing one budget). The rule is written here once, for both.

Every reservation carries a hold (an id, this server's owner id, an expiry). Settling deletes it, so a
request settles once however many times it is closed; a hold whose request never settles (its server died,
or a bug) is released at its expiry (:meth:`BudgetBook.reclaim`, every :data:`RECLAIM_EVERY_S`), and a dead
server's holds as soon as another server starts (``State.reclaim_orphans``). So ``hold_s`` must outlast the
longest request: the gate passes the request timeout plus the drain timeout plus a margin.

Budgets above the key (a team's, a tag's, a model's, the organisation's, an end user's: :mod:`.scope_budgets`)
are taken in the same step: ``reserve(key, ..., scopes)`` puts the key's budgets and those of every scope that
covers the request into one :meth:`~.store.ports.State.reserve_scoped` call, in one global order (the key's,
then the scopes' in :data:`.scope_budgets.KINDS` order), refused by the first that would pass its limit.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from .keys import KeyRecord
from .money import to_nano, to_usd
from .scope_budgets import DEFAULT_USER, KINDS, Covering
from .store.ports import BudgetRefused, Hold, State
from .windows import window_bounds

# The default request timeout (600 s) + drain timeout (30 s) + a minute: what ``leaninfer serve`` passes
# unless its timeouts change. An hour (the first releases) held a killed replica's reservations far too long.
HOLD_S = 690.0
LIMIT_CACHE_ENTRIES = 10_000  # keys whose budget windows are kept at once
RECLAIM_EVERY_S = 30.0
BUDGET_ORDER = ("usd_day", "usd_month", "usd_total", "tokens_day", "tokens_month", "tokens_total")
_RANK = {kind: i + 1 for i, kind in enumerate(KINDS)}  # a key's account: 0


@dataclass
class BudgetExceeded(Exception):
    """The reservation would take ``budget`` of key ``key_id`` past its limit. ``used`` is ``settled`` (spent)
    plus ``reserved`` (requests in flight) before this request's ``asked``."""

    key_id: str
    budget: str  # e.g. "usd_day", "tokens_total"
    limit: int  # nano-dollars or tokens
    used: int
    asked: int
    reset_at: float | None  # when the window starts afresh; None for a lifetime budget
    settled: int | None = None  # None: all of ``used`` (when built without the split)
    reserved: int = 0
    scope: str = ""  # a budget above the key: how it is named ("team search"); "" for the key's own
    scope_id: str = ""  # and its id ("team:search", "default-user")

    def __post_init__(self):
        if self.settled is None:
            self.settled = self.used - self.reserved

    @property
    def in_flight_blocks(self) -> bool:
        """Whether requests in flight are what is in the way: once they settle (seconds, usually below their
        reservations) this request fits, where settled spend alone would leave it out until ``reset_at``."""
        return self.settled + self.asked <= self.limit

    def message(self) -> str:
        unit, window = self.budget.split("_", 1)
        fmt = (lambda v: f"${to_usd(v):.6f}") if unit == "usd" else (lambda v: f"{v} tokens")
        if self.in_flight_blocks:
            when = (f"requests in flight hold {fmt(self.reserved)} of it; retry when they finish")
        elif self.reset_at is None:
            when = "it does not reset"
        else:
            when = "it resets at " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.reset_at))
        whose = f"{self.scope} ({self.budget})" if self.scope else f"key {self.key_id}"
        return (f"budget exceeded: {whose} has used {fmt(self.used)} of its {window} budget of "
                f"{fmt(self.limit)} ({fmt(self.settled)} spent, {fmt(self.reserved)} reserved by requests in "
                f"flight), and this request may cost up to {fmt(self.asked)}; {when}")


@dataclass
class Reservation:
    """What a request reserved: its worst case, in the window of each budget of its key."""

    key_id: str
    nusd: int
    tokens: int
    windows: dict[str, float] = field(default_factory=dict)  # budget name -> start of its window (the key's)
    hold_id: str | None = None
    settled: bool = False
    # with budgets above the key: every (account, budget, window start) reserved, in the order taken
    scoped: list[tuple[str, str, float]] = field(default_factory=list)

    def clamp(self, nusd: int, tokens: int) -> tuple[int, int]:
        """The charge of a request that cost ``nusd`` and ``tokens``: never more than it reserved (a slow
        request pays its quote, the budget can't overshoot), never negative. The one place this is decided.

        Example:
            >>> Reservation("k1", nusd=2_000, tokens=80).clamp(2_500, 57)
            (2000, 57)
        """
        return max(0, min(nusd, self.nusd)), max(0, min(tokens, self.tokens))


class BudgetBook:
    """Reservations and settled spend per key and budget window, in a :class:`~.store.ports.State`.

    Example:
        >>> from leaninfer.finops.keys import KeyPolicy, KeyRecord
        >>> from leaninfer.finops.store.memory import MemoryState
        >>> key = KeyRecord("k1", "h", KeyPolicy(team="search", budget_tokens_day=100), 0.0)
        >>> book = BudgetBook(MemoryState(), ZoneInfo("UTC"), owner="server-1")
        >>> r = book.reserve(key, nusd=2_000, tokens=80)                # raises BudgetExceeded when over
        >>> book.settle(r, nusd=1_500, tokens=57)
        (1500, 57)
    """

    def __init__(self, state: State, tz: ZoneInfo, clock: Callable[[], float] = time.time, hold_s: float = HOLD_S,
                 owner: str = "", reclaim_every_s: float = RECLAIM_EVERY_S):
        if not hold_s > 0:
            raise ValueError(f"hold_s={hold_s!r}: a reservation's hold must last a positive number of seconds "
                             "(longer than the longest request)")
        self.state, self.tz, self.clock = state, tz, clock
        self.hold_s, self.owner, self.reclaim_every_s = hold_s, owner, reclaim_every_s
        # Hold ids: a random prefix per book and a counter (uuid4 per request reads os.urandom, a system call
        # that gives up the GIL, on the event loop's thread).
        self._hold_prefix, self._holds = uuid.uuid4().hex[:16], itertools.count(1)
        self._next_reclaim = 0.0
        self._limit_cache: dict[str, tuple] = {}  # key id -> (its record, valid from, valid until, limits)
        self._lock = threading.Lock()  # guards Reservation.settled and the reclaim schedule

    def _limits(self, key: KeyRecord, now: float) -> list[tuple[str, float, float | None, int]]:
        """``(budget, window start, reset, limit)`` of each budget of ``key``, in the policy's fixed order.
        Kept per key record until a window ends (a request asks three times; the answer changes once a day)."""
        hit = self._limit_cache.get(key.key_id)
        if hit is not None and hit[0] is key and hit[1] <= now < hit[2]:
            return hit[3]
        out, first_end = [], float("inf")
        for budget, (window, limit) in key.policy.budgets().items():
            start, reset = window_bounds(window, now, self.tz)
            out.append((budget, start, reset, to_nano(limit) if budget.startswith("usd") else int(limit)))
            if reset is not None:
                first_end = min(first_end, reset)
        if len(self._limit_cache) >= LIMIT_CACHE_ENTRIES:
            self._limit_cache.clear()
        self._limit_cache[key.key_id] = (key, now, first_end, out)
        return out

    def cold(self, key: KeyRecord | None, scopes: Sequence[Covering] = ()) -> bool:
        """Whether reserving for ``key`` (and ``scopes``) now would read the ledger (a window this process
        hasn't seen yet)."""
        now = self.clock()
        limits = self._limits(key, now) if key is not None else []
        if limits and self.state.cold(key.key_id, [(b, start) for b, start, _, _ in limits]):
            return True
        return any(self.state.cold(c.account, [(b, start)]) for _, c, b, start, _, _ in self._scope_items(scopes, now))

    def _scope_items(self, scopes: Sequence[Covering], now: float) -> list[tuple[int, Covering, str, float,
                                                                                   float | None, int]]:
        """``(rank, covering, budget, window start, reset, limit)`` of every budget of ``scopes``."""
        out = []
        for c in scopes:
            rank = _RANK.get(c.budget.scope.partition(":")[0], _RANK["user"])  # default-user: an end user's
            for budget, (window, limit) in c.budget.limits.budgets().items():
                start, reset = window_bounds(window, now, self.tz)
                out.append((rank, c, budget, start, reset, to_nano(limit) if budget.startswith("usd") else int(limit)))
        out.sort(key=lambda i: (i[0], i[1].account, BUDGET_ORDER.index(i[2])))
        return out

    def reserve(self, key: KeyRecord | None, nusd: int, tokens: int, scopes: Sequence[Covering] = ()) -> Reservation:
        """Take ``nusd`` nano-dollars and ``tokens`` from every budget of ``key`` and of the ``scopes`` that cover
        the request (:func:`.scope_budgets.covering`), or raise :class:`BudgetExceeded` for the first one it would
        exceed (and take nothing)."""
        now = self.clock()
        self._maybe_reclaim(now)
        res = Reservation(key.key_id if key else "", nusd, tokens)
        limits = self._limits(key, now) if key is not None else []
        if scopes:
            return self._reserve_scoped(res, key, limits, self._scope_items(scopes, now), now)
        if not limits:
            return res
        res.hold_id = f"{self._hold_prefix}{next(self._holds):x}"
        items = [(b, start, cap, nusd if b.startswith("usd") else tokens) for b, start, _, cap in limits]
        try:
            self.state.reserve(key.key_id, items, Hold(res.hold_id, self.owner, now + self.hold_s))
        except BudgetRefused as e:
            reset = next(r for b, _, r, _ in limits if b == e.budget)
            raise BudgetExceeded(key.key_id, e.budget, e.limit, e.used, e.asked, reset, e.settled,
                                 e.reserved) from None
        res.windows = {b: start for b, start, _, _ in limits}
        return res

    def _reserve_scoped(self, res: Reservation, key: KeyRecord | None, limits, scoped, now: float) -> Reservation:
        if not limits and not scoped:
            return res
        res.hold_id = f"{self._hold_prefix}{next(self._holds):x}"
        items = [(res.key_id, b, start, cap, res.nusd if b.startswith("usd") else res.tokens)
                 for b, start, _, cap in limits]
        items += [(c.account, b, start, cap, res.nusd if b.startswith("usd") else res.tokens)
                  for _, c, b, start, _, cap in scoped]
        try:
            self.state.reserve_scoped(items, Hold(res.hold_id, self.owner, now + self.hold_s), res.key_id)
        except BudgetRefused as e:
            if not e.account or e.account == res.key_id:
                reset = next(r for b, _, r, _ in limits if b == e.budget)
                raise BudgetExceeded(res.key_id, e.budget, e.limit, e.used, e.asked, reset, e.settled,
                                     e.reserved) from None
            _, c, _, _, reset, _ = next(i for i in scoped if i[1].account == e.account and i[2] == e.budget)
            raise BudgetExceeded(res.key_id, e.budget, e.limit, e.used, e.asked, reset, e.settled, e.reserved,
                                 scope=c.label, scope_id=c.budget.scope) from None
        res.windows = {b: start for b, start, _, _ in limits}
        res.scoped = [(k, b, start) for k, b, start, _, _ in items]
        return res

    def settle(self, res: Reservation, nusd: int, tokens: int) -> tuple[int, int]:
        """Release the reservation and charge the true cost, clamped by :meth:`Reservation.clamp`; returns the
        charge ``(nusd, tokens)``. Settling twice is a no-op returning ``(0, 0)`` (a cancel racing a finish)."""
        nusd, tokens = res.clamp(nusd, tokens)
        with self._lock:
            if res.settled:
                return 0, 0
            res.settled = True
        if res.scoped:
            items = [(k, b, start, *((res.nusd, nusd) if b.startswith("usd") else (res.tokens, tokens)))
                     for k, b, start in res.scoped]
            try:
                self.state.settle_scoped(items, res.hold_id)
            except BaseException:
                res.settled = False  # not settled: a retry may (the hold keeps it to once)
                raise
        elif res.windows:
            items = [(b, start, *((res.nusd, nusd) if b.startswith("usd") else (res.tokens, tokens)))
                     for b, start in res.windows.items()]
            try:
                self.state.settle(res.key_id, items, res.hold_id)
            except BaseException:
                res.settled = False  # not settled: a retry may (the hold keeps it to once)
                raise
        return nusd, tokens

    def used(self, key: KeyRecord) -> dict[str, tuple[int, int, float]]:
        """Per budget of ``key``: ``(settled, limit, window start)``, in nano-dollars or tokens (what alerts
        and the gauge show: reservations in flight are promises, not spend)."""
        limits = self._limits(key, self.clock())
        if not limits:
            return {}
        found = self.state.budget_used(key.key_id, [(b, start) for b, start, _, _ in limits])
        return {b: (found[b][0], cap, start) for b, start, _, cap in limits}

    def used_scoped(self, scopes: Sequence[Covering]) -> list[tuple[Covering, str, int, int, float]]:
        """``(covering, budget, settled, limit, window start)`` of every budget of ``scopes`` but the default
        end-user budget's (one account per end user: no gauge or alert each), for gauges and alerts."""
        out = []
        for c in scopes:
            if c.budget.scope == DEFAULT_USER:
                continue
            items = [(b, start, cap) for _, _, b, start, _, cap in self._scope_items([c], self.clock())]
            if items:
                found = self.state.budget_used(c.account, [(b, start) for b, start, _ in items])
                out += [(c, b, found[b][0], cap, start) for b, start, cap in items]
        return out

    def reclaim(self, now: float | None = None) -> int:
        """Release the reservations of holds past their expiry; returns how many."""
        return self.state.reclaim(self.clock() if now is None else now)

    def _maybe_reclaim(self, now: float) -> None:
        with self._lock:
            if now < self._next_reclaim:
                return
            self._next_reclaim = now + self.reclaim_every_s
        self.state.reclaim(now)
