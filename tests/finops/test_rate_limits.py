"""RateLimits over this process's State: rpm and tpm as sliding windows, counted together or apart (rpm at
authentication, tpm at admission), nothing counted by a refusal."""

from __future__ import annotations

import pytest

from leaninfer.finops.rate_limits import RateLimited, RateLimits
from leaninfer.finops.store.memory import MemoryState

from .store_fixtures import NOON, Clock, policy_key


def test_a_refused_limit_counts_neither():
    key = policy_key(rpm=10, tpm=100)
    clock = Clock(NOON + 10)
    limits = RateLimits(MemoryState(), clock=clock)
    assert limits.check(key, 60) == {"rpm": (10, 9, NOON + 60), "tpm": (100, 40, NOON + 60)}
    with pytest.raises(RateLimited) as e:
        limits.check(key, 60)
    assert (e.value.key_id, e.value.limit, e.value.quota, e.value.remaining) == ("k1", "tpm", 100, 40)
    assert "100 tokens (prompt + max_tokens) per minute (40 left" in e.value.message()
    assert limits.check(key, 10)["rpm"] == (10, 8, NOON + 60)  # the refused request took no rpm
    clock.t = NOON + 90  # half of the last window still counts: 70 * 0.5 = 35 of 100 tokens
    assert limits.check(key, 65)["tpm"][1] == 0
    with pytest.raises(RateLimited):
        limits.check(key, 1)


def test_requests_at_authentication_tokens_at_admission():
    key = policy_key(rpm=2, tpm=50)
    limits = RateLimits(MemoryState(), clock=Clock(NOON))
    assert limits.check_requests(key) == {"rpm": (2, 1, NOON + 60)}
    with pytest.raises(RateLimited):
        limits.check_tokens(key, 51)
    assert limits.check_tokens(key, 50) == {"tpm": (50, 0, NOON + 60)}
    limits.check_requests(key)  # a request refused later (a 400) still counted its rpm
    with pytest.raises(RateLimited) as e:
        limits.check_requests(key)
    assert e.value.limit == "rpm" and "2 requests per minute" in e.value.message()


def test_keys_without_limits_count_nothing():
    state = MemoryState()
    limits = RateLimits(state, clock=Clock(NOON))
    key = policy_key()
    assert limits.check(key, 10**9) == {} and limits.check_requests(key) == {} and limits.check_tokens(key, 5) == {}
    assert state.rate_hit("k1", [("rpm", 1, 1)], 60.0, NOON) == [(True, 0, NOON + 60)]  # nothing counted before


def test_a_refusal_says_when_it_would_fit():
    key = policy_key(rpm=10)
    clock = Clock(NOON + 50)
    limits = RateLimits(MemoryState(), clock=clock)
    for _ in range(10):
        limits.check_requests(key)
    clock.t = NOON + 61  # 10 * 59/60 of the last window still count; at NOON + 66 only 9 will
    with pytest.raises(RateLimited) as e:
        limits.check_requests(key)
    assert e.value.reset_at == pytest.approx(NOON + 66)
    clock.t = NOON + 66
    limits.check_requests(key)
