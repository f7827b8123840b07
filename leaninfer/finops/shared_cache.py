"""The exact-match response cache shared by every replica: :class:`~.cache.ResponseCache`'s interface, its
entries in the store (bodies as JSON bytes, with an expiry, bounded in bytes: the oldest go first).

Keys are :func:`.cache.cache_key`'s, which cover the team, so sharing across replicas shares nothing across
teams. Blocking I/O: call it off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from .cache import CachedAnswer
from .store import Store


class SharedResponseCache:
    """``max_bytes`` of answers, each kept at most ``ttl_s`` seconds, in ``store``.

    Example:
        >>> c = SharedResponseCache(open_store("/tmp/cache-example.db"), max_bytes=1 << 20, ttl_s=60)   # doctest: +SKIP
        >>> c.put("k", {"data": [1]}, cost_nusd=5)
        >>> c.get("k").cost_nusd
        5
    """

    def __init__(self, store: Store, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.time):
        if max_bytes <= 0 or ttl_s <= 0:
            raise ValueError(f"max_bytes={max_bytes!r}, ttl_s={ttl_s!r}: a cache needs both positive")
        self.store, self.max_bytes, self.ttl_s, self.clock = store, max_bytes, ttl_s, clock

    def get(self, key: str) -> CachedAnswer | None:
        found = self.store.cache_get(key, self.clock())
        if found is None:
            return None
        body, cost_nusd = found
        return CachedAnswer(orjson.loads(body), cost_nusd, len(body))

    def put(self, key: str, body: dict, cost_nusd: int) -> None:
        blob = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(blob) <= self.max_bytes:  # an answer larger than the whole cache is not kept
            now = self.clock()
            self.store.cache_put(key, blob, cost_nusd, now + self.ttl_s, now, self.max_bytes)
