"""Exact-match response cache, for deterministic requests only (embeddings; greedy or seeded generation).

The key covers the team, the served variant's hash, the endpoint and the request's normalized parameters,
so one team never reads another's entry and a changed model never answers from an old one. Bounded in bytes
and in age by ``cachetools.TTLCache``. A hit costs nothing; it records what the original answer cost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from cachetools import TTLCache

# Fields that don't change the answer (who asks, how it is delivered) stay out of the key.
_NOT_IN_KEY = {"model", "user", "stream", "stream_options"}


@dataclass(frozen=True)
class CachedAnswer:
    body: dict  # the response body as first answered (its usage is rewritten on a hit)
    cost_nusd: int
    size: int  # bytes, for the cache's bound


def deterministic(endpoint: str, params: dict) -> bool:
    """Whether the same request always gets the same answer: embeddings; greedy or seeded generation, not
    streamed (a stream is answered as it is generated)."""
    if endpoint == "embeddings":
        return True
    if params.get("stream"):
        return False
    return params.get("temperature", 1.0) == 0 or params.get("seed") is not None


def cache_key(team: str, variant_hash: str, endpoint: str, params: dict) -> str:
    normalized = {k: v for k, v in params.items() if k not in _NOT_IN_KEY and v is not None}
    blob = orjson.dumps([team, variant_hash, endpoint, normalized], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class ResponseCache:
    """``max_bytes`` of answers, each kept at most ``ttl_s`` seconds.

    Example:
        >>> c = ResponseCache(max_bytes=1 << 20, ttl_s=60)
        >>> c.put("k", {"data": [1]}, cost_nusd=5)
        >>> c.get("k").cost_nusd
        5
    """

    def __init__(self, max_bytes: int, ttl_s: float):
        self._entries: TTLCache = TTLCache(maxsize=max_bytes, ttl=ttl_s, getsizeof=lambda a: a.size)

    def get(self, key: str) -> CachedAnswer | None:
        return self._entries.get(key)

    def put(self, key: str, body: dict, cost_nusd: int) -> None:
        size = len(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
        if size <= self._entries.maxsize:  # an answer larger than the whole cache is not kept
            self._entries[key] = CachedAnswer(body, cost_nusd, size)

    def __len__(self) -> int:
        return len(self._entries)
