"""Exact-match response cache, for deterministic requests only (embeddings; greedy or seeded generation).

The key covers the team, the served variant's hash, the endpoint and the request's parameters that change
the answer, so one team never reads another's entry and a changed model never answers from an old one. It is
canonical (:func:`cache_key`): equal requests give equal keys whatever their key order or number spelling,
and a request it can't key on is simply not cached — building a key never fails a request.

Entries live in a :class:`~.store.ports.State` (this process's memory, or the store shared by replicas),
bounded in bytes and in age; a hit costs nothing and records what the original answer cost. An answer with
generated text is kept in a persistent State (the store: a file or a database) only when the operator opts
in (``--cache-store-text``): no prompt or completion text is written to disk otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .store.ports import State

log = logging.getLogger("leaninfer.finops")
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


class _Uncacheable(Exception):
    """A value :func:`_canonical` has no canonical spelling for."""


def _number(v: int | float) -> str:
    """One spelling per number: an integral float is its integer (``1``, ``1.0`` and ``1e0`` are one value)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return repr(v)  # nan, inf, -inf: bare words, apart from the strings "nan", ...
        if not v.is_integer():
            return repr(v)  # the shortest spelling that reads back as this float
        v = int(v)
    return str(v)  # ValueError past 4300 digits (Python's int limit): not cacheable


def _canonical(v) -> str:
    """``v`` as canonical JSON-like text: dict keys stringified (``{0: x}`` and ``{"0": x}`` are JSON's same
    object) and sorted with their values (so keys that collide once stringified still give one order)."""
    if v is None or isinstance(v, bool):
        return "null" if v is None else "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number(v)
    if isinstance(v, str):
        return json.dumps(v)  # ASCII, every character escaped one way (lone surrogates included)
    if isinstance(v, dict):
        pairs = sorted((json.dumps(k if isinstance(k, str) else _canonical(k)), _canonical(x)) for k, x in v.items())
        return "{" + ",".join(f"{k}:{x}" for k, x in pairs) + "}"
    if isinstance(v, (list, tuple)):
        kinds = set(map(type, v))  # token ids, texts: one C call (the key is built on the event loop)
        if kinds == {int}:
            try:
                return orjson.dumps(v).decode()
            except orjson.JSONEncodeError:  # past 64 bits
                return json.dumps(v, separators=(",", ":"))
        if kinds == {str}:
            return json.dumps(v, separators=(",", ":"))
        return "[" + ",".join(_canonical(x) for x in v) + "]"
    if hasattr(v, "tolist"):  # numpy arrays and scalars
        return _canonical(v.tolist())
    raise _Uncacheable(type(v).__name__)


def cache_key(team: str, variant_hash: str, endpoint: str, params: dict) -> str | None:
    """The entry of a request: a hex digest, or None when ``params`` hold a value with no canonical spelling
    (the request is then not cached). Never raises.

    Example:
        >>> cache_key("t", "v1", "completions", {"temperature": 0, "logit_bias": {5: 1}}) == \\
        ...     cache_key("t", "v1", "completions", {"logit_bias": {"5": 1.0}, "temperature": 0.0})
        True
    """
    try:
        normalized = {k: v for k, v in params.items() if k not in _NOT_IN_KEY and v is not None}
        blob = _canonical([team, variant_hash, endpoint, normalized])
    except Exception as e:  # noqa: BLE001 (a key that can't be built means no caching, never a failed request)
        log.debug("request not cached: no canonical key (%s: %s)", type(e).__name__, str(e)[:80])
        return None
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``max_bytes`` of answers, each kept at most ``ttl_s`` seconds, in ``state``.

    Example:
        >>> from leaninfer.finops.store.memory import MemoryState
        >>> c = ResponseCache(MemoryState(), max_bytes=1 << 20, ttl_s=60)
        >>> c.put("k", {"data": [1]}, cost_nusd=5, has_text=False)
        True
        >>> c.get("k").cost_nusd
        5
    """

    def __init__(self, state: State, max_bytes: int, ttl_s: float, keep_text: bool = False,
                 clock: Callable[[], float] = time.time):
        if max_bytes <= 0 or not ttl_s > 0:
            raise ValueError(f"max_bytes={max_bytes!r}, ttl_s={ttl_s!r}: a cache needs both positive")
        self.state, self.max_bytes, self.ttl_s, self.keep_text, self.clock = state, max_bytes, ttl_s, keep_text, clock

    def get(self, key: str) -> CachedAnswer | None:
        found = self.state.cache_get(key, self.clock())
        if found is None:
            return None
        body, cost_nusd = found
        return CachedAnswer(orjson.loads(body), cost_nusd, len(body))

    def put(self, key: str, body: dict, cost_nusd: int, has_text: bool) -> bool:
        """Keep ``body`` (``has_text``: it holds generated text); returns whether it was kept. Not kept: text
        bound for a persistent State without the operator's opt-in, a body larger than the whole cache, or
        one that isn't JSON."""
        if has_text and self.state.persistent and not self.keep_text:
            return False
        try:
            blob = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError as e:
            log.warning("answer not cached: %s", e)
            return False
        if len(blob) > self.max_bytes:
            return False
        now = self.clock()
        self.state.cache_put(key, blob, cost_nusd, now + self.ttl_s, now, self.max_bytes)
        return True
