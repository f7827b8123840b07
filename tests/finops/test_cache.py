"""The response cache: canonical keys that never fail a request, what is deterministic enough to cache, and
ResponseCache's rules (bound, expiry, and no text in a persistent State without the operator's opt-in)."""

from __future__ import annotations

import pytest

from leaninfer.finops.cache import ResponseCache, cache_key, deterministic
from leaninfer.finops.store.memory import MemoryState

from .store_fixtures import Clock


def key(params: dict, team: str = "t", variant: str = "v1", endpoint: str = "completions") -> str | None:
    return cache_key(team, variant, endpoint, params)


def test_equal_requests_give_equal_keys():
    a = key({"prompt": "hi", "temperature": 0, "max_tokens": 16, "logit_bias": {5: 1, 7: -1.5}, "seed": 1})
    assert a == key({"seed": 1.0, "logit_bias": {"7": -1.5, "5": 1.0}, "max_tokens": 16.0, "temperature": 0.0,
                     "prompt": "hi"})
    assert a == key({"prompt": "hi", "temperature": 0e0, "max_tokens": 1.6e1, "logit_bias": {5: 1e0, 7: -1.5},
                     "seed": 1, "user": "someone", "stream": False, "model": "alias", "stop": None})
    assert len(a) == 64


def test_different_requests_give_different_keys():
    base = {"prompt": [0, 1], "temperature": 0}
    keys = {key(base), key({**base, "prompt": [0, 2]}), key({**base, "prompt": [[0, 1]]}),
            key({**base, "prompt": "[0, 1]"}), key({**base, "temperature": 0.5}), key({**base, "seed": True}),
            key({**base, "seed": 1}), key(base, team="u"), key(base, variant="v2"), key(base, endpoint="embeddings"),
            key({**base, "x": "nan"}), key({**base, "x": float("nan")}), key({**base, "x": 0.1}),
            key({**base, "x": 0.30000000000000004}), key({**base, "x": 0.3})}
    assert len(keys) == 15 and None not in keys


def test_keys_of_parsed_and_hostile_bodies_never_raise():
    # the 500s of issue 20: dict keys that collide once parsed, and integers past 64 bits
    assert key({"prompt": [[0]], "seed": 1, "logit_bias": {"00": 0.0, "0": 0.0}}) is not None
    assert key({"logit_bias": {0: 0.0, "0": 1.0}}) == key({"logit_bias": {"0": 1.0, 0: 0.0}})
    big = key({"input": "x", "extra": 232276198894203238102318912110592})
    assert big is not None and big != key({"input": "x", "extra": 232276198894203238102318912110593})
    assert key({"x": 2**200}) != key({"x": 2**200 + 1}) and key({"x": [2**200, 1]}) is not None
    assert key({"x": 1e300}) == key({"x": int(1e300)})
    assert key({"x": "\ud800", "y": "ünï", "ключ": {"日本": [None, True, float("inf")]}}) is not None
    assert key({"x": (1, 2)}) == key({"x": [1, 2]})
    assert key({"x": {1.5: "a", None: "b", True: "c"}}) is not None


def test_keys_that_cannot_be_spelled_are_none():
    assert key({"x": object()}) is None
    assert key({"x": 10**5000}) is None  # past Python's integer-to-text limit
    deep = []
    for _ in range(5000):
        deep = [deep]
    assert key({"x": deep}) is None
    assert key(None) is None  # not even a dict


def test_numpy_values_key_like_lists():
    np = pytest.importorskip("numpy")
    assert key({"x": np.array([1, 2])}) == key({"x": [1, 2]})
    assert key({"x": np.float32(0.5)}) == key({"x": 0.5})


def test_deterministic():
    assert deterministic("embeddings", {"input": "x"})
    assert deterministic("completions", {"temperature": 0})
    assert deterministic("completions", {"temperature": 0.7, "seed": 3})
    assert not deterministic("completions", {"temperature": 0.7})
    assert not deterministic("completions", {})  # OpenAI's default temperature is 1
    assert not deterministic("chat.completions", {"temperature": 0, "stream": True})


def test_put_get_expiry_and_bound():
    clock = Clock(1000.0)
    cache = ResponseCache(MemoryState(), max_bytes=100, ttl_s=60, clock=clock)
    assert cache.put("k", {"data": [0.5, 1]}, cost_nusd=7, has_text=True)  # memory: text may stay
    hit = cache.get("k")
    assert (hit.body, hit.cost_nusd, hit.size) == ({"data": [0.5, 1]}, 7, len(b'{"data":[0.5,1]}'))
    clock.t = 1060.0
    assert cache.get("k") is None
    assert not cache.put("huge", {"x": "y" * 200}, cost_nusd=1, has_text=False)  # larger than the whole cache
    assert not cache.put("odd", {"x": object()}, cost_nusd=1, has_text=False)  # not JSON: not kept, no error
    for i, name in enumerate(["old", "mid", "new"]):
        clock.t = 2000.0 + i
        cache.put(name, {"x": "y" * 32}, cost_nusd=i, has_text=False)
    assert [cache.get(n) is not None for n in ("old", "mid", "new")] == [False, True, True]


def test_text_reaches_a_persistent_state_only_by_opt_in():
    class Persistent(MemoryState):
        persistent = True

    state = Persistent()
    assert not ResponseCache(state, 1 << 20, 60).put("t", {"text": "secret"}, 1, has_text=True)
    assert state.cache_get("t", 0.0) is None
    assert ResponseCache(state, 1 << 20, 60).put("e", {"data": [[0.1]]}, 1, has_text=False)
    assert ResponseCache(state, 1 << 20, 60, keep_text=True).put("t", {"text": "secret"}, 1, has_text=True)


@pytest.mark.parametrize("max_bytes, ttl_s", [(0, 60), (100, 0), (100, float("nan"))])
def test_a_cache_needs_room_and_time(max_bytes, ttl_s):
    with pytest.raises(ValueError, match="both positive"):
        ResponseCache(MemoryState(), max_bytes, ttl_s)
