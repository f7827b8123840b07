"""The scope budgets a server applies, read from the store and kept :data:`SCOPE_CACHE_S`: a budget set, changed
or deleted (``leaninfer budgets``, ``/v1/admin/budgets``) takes effect within that time on every server on the
store, and a request pays no database read for the scopes it has seen in the last second.

Bounded: at most :data:`SCOPE_CACHE_ENTRIES` scope ids (found or not) are kept, so requests naming ever new end
users or tags can't grow the server's memory; one read fetches every scope of a request not kept yet.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from .scope_budgets import Covering, ScopeBudget, covering, request_scopes

SCOPE_CACHE_S = 1.0  # as a key's record (gate.KEY_CACHE_S)
SCOPE_CACHE_ENTRIES = 10_000
_NONE = object()


class ScopeBudgetCache:
    """Scope budgets by scope id, from ``store.get_scope_budgets``, each kept :data:`SCOPE_CACHE_S`.

    Example:
        >>> cache = ScopeBudgetCache(store)                                          # doctest: +SKIP
        >>> await cache.covering("search", "gpt2", {"env": "prod"}, "alice")         # doctest: +SKIP
        [Covering(label='team search', account='team:search@1733…', budget=...)]
    """

    def __init__(self, store, ttl_s: float = SCOPE_CACHE_S, entries: int = SCOPE_CACHE_ENTRIES,
                 timer: Callable[[], float] = time.monotonic):
        self.store = store
        # Budgets read, and the answer for a request's (team, model, tags, user) built from them: a request like
        # the last costs one dict read (py-spy: building it each time was ~2.5% of a busy loop). Each is kept half
        # the time, so that an answer is never older than ``ttl_s`` in all.
        self._kept: TTLCache = TTLCache(maxsize=entries, ttl=ttl_s / 2, timer=timer)
        self._answers: TTLCache = TTLCache(maxsize=entries, ttl=ttl_s / 2, timer=timer)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe; reads run in worker threads

    def lookup(self, scopes: list[str]) -> dict[str, ScopeBudget | None]:
        """The budget (or None) of each of ``scopes``; those not kept are read in one query (blocking)."""
        with self._lock:
            out = {s: self._kept.get(s, _NONE) for s in scopes}
        missing = [s for s, b in out.items() if b is _NONE]
        if missing:
            found = self.store.get_scope_budgets(missing)
            with self._lock:
                for s in missing:
                    out[s] = self._kept[s] = found.get(s)
        return out

    def forget(self, scope: str) -> None:
        """Drop what is kept of ``scope`` (a change made through this server applies to it at once)."""
        with self._lock:
            self._kept.pop(scope, None)
            self._answers.clear()

    def kept(self, scopes: list[str]) -> bool:
        with self._lock:
            return all(s in self._kept for s in scopes)

    async def covering(self, team: str | None, model: str, tags: dict[str, str], user: str | None) -> list[Covering]:
        """The scope budgets that cover a request (:func:`.scope_budgets.covering`): read off the event loop when
        some of its scopes are not kept."""
        key = (team, model, tuple(sorted(tags.items())) if tags else (), user)
        with self._lock:
            answer = self._answers.get(key)
        if answer is not None:
            return answer
        scopes = request_scopes(team, model, tags, user)
        found = self.lookup(scopes) if self.kept(scopes) else await asyncio.to_thread(self.lookup, scopes)
        answer = covering(found, team, model, tags, user)
        with self._lock:
            self._answers[key] = answer
        return answer
