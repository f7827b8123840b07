"""Rules over state shared by several server processes through one store (SQLite file, PostgreSQL database):
budgets that hold when 8 processes race for them, rate limits counted once across processes, a cache one
process writes and another reads (and no generated text in it unless the operator opts in), and a dead
process's expired holds reclaimed by the book's schedule. Every test runs on both stores."""

from __future__ import annotations

import multiprocessing

import pytest

from leaninfer.finops.budgets import BudgetBook, BudgetExceeded
from leaninfer.finops.cache import ResponseCache
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.rate_limits import RateLimited, RateLimits
from leaninfer.finops.store import open_store

from .store_fixtures import NOON, UTC, Clock, policy_key, rate_worker, reserve_worker, store_url  # noqa: F401


def _spawn(target, args_per_process):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in args_per_process]
    for p in procs:
        p.start()
    out = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


# -- budgets ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_budget_holds_when_8_processes_race(store_url):  # noqa: F811
    """8 processes x 25 reservations of 10 tokens against 500 tokens a day: exactly 50 are taken, the 150 others
    raise BudgetExceeded, and what was settled is the budget, not a token more."""
    key = policy_key(store_url, budget_tokens_day=500, budget_usd_total=2.0)
    out = _spawn(reserve_worker, [(store_url, key, 25, 10_000_000, 10)] * 8)
    ok, refused, charged = (sum(o[i] for o in out) for i in range(3))
    assert (ok, refused) == (50, 150)
    assert charged == 500
    store = open_store(store_url)
    try:
        used = BudgetBook(store, UTC).used(key)
        assert used["tokens_day"][:2] == (500, 500)
        assert used["usd_total"][0] == 50 * 10_000_000
        assert store.budget_used("k1", [("tokens_day", used["tokens_day"][2])])["tokens_day"] == (500, 0)
    finally:
        store.close()


def test_a_dead_process_hold_is_reclaimed_at_its_expiry(store_url):  # noqa: F811
    """A replica that never settles (no owner: e.g. one of an older release) must not lock the budget until the
    window ends: the next reserve after the hold expired, in any process, reclaims it."""
    key = policy_key(store_url, budget_tokens_total=100)
    store = open_store(store_url)
    clock = Clock(NOON)
    try:
        dead = BudgetBook(store, UTC, clock=clock, hold_s=60)
        lost = dead.reserve(key, 0, 80)  # never settled by its process
        alive = BudgetBook(open_store(store_url), UTC, clock=clock, hold_s=60)
        with pytest.raises(BudgetExceeded) as e:
            alive.reserve(key, 0, 80)
        assert e.value.in_flight_blocks and (e.value.settled, e.value.reserved) == (0, 80)
        clock.t += 29
        with pytest.raises(BudgetExceeded):  # reclaims every 30 s: the hold has not expired yet
            alive.reserve(key, 0, 80)
        clock.t += 32
        res = alive.reserve(key, 0, 80)  # reclaims the expired hold first
        assert store.budget_used("k1", [("tokens_total", 0.0)])["tokens_total"] == (0, 80)
        dead.settle(lost, 0, 10)  # alive after all: its spend counts, its reservation isn't released twice
        assert store.budget_used("k1", [("tokens_total", 0.0)])["tokens_total"] == (10, 80)
        alive.settle(res, 0, 80)
        assert alive.used(key)["tokens_total"][0] == 90
        alive.state.close()
    finally:
        store.close()


def test_no_budget_no_store_call(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        book = BudgetBook(store, UTC)
        res = book.reserve(KeyRecord("k9", "h", KeyPolicy(team="t"), 0.0), 10, 10)
        assert res.windows == {} and res.hold_id is None and book.settle(res, 5, 5) == (5, 5)
        assert book.used(KeyRecord("k9", "h", KeyPolicy(team="t"), 0.0)) == {}
    finally:
        store.close()


# -- rate limits -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rate_limit_counts_once_across_processes(store_url):  # noqa: F811
    key = policy_key(store_url, rpm=30)
    out = _spawn(rate_worker, [(store_url, key, 20, NOON + 10)] * 4)
    assert sum(a for a, _ in out) == 30
    assert sum(r for _, r in out) == 50


def test_requests_and_tokens_counted_apart(store_url):  # noqa: F811
    key = policy_key(store_url, rpm=2, tpm=100)
    store = open_store(store_url)
    try:
        limits = RateLimits(store, clock=Clock(NOON + 10))
        assert limits.check_requests(key) == {"rpm": (2, 1, NOON + 60)}
        assert limits.check_tokens(key, 100) == {"tpm": (100, 0, NOON + 60)}
        assert limits.check_requests(key)["rpm"][1] == 0
        with pytest.raises(RateLimited) as e:
            limits.check_requests(key)
        assert e.value.limit == "rpm"
    finally:
        store.close()


# -- response cache --------------------------------------------------------------------------------------------
def test_cache_is_shared_between_processes_stores(store_url):  # noqa: F811
    clock = Clock(1000.0)
    a, b = open_store(store_url), open_store(store_url)
    try:
        writer = ResponseCache(a, max_bytes=100, ttl_s=60, clock=clock)
        reader = ResponseCache(b, max_bytes=100, ttl_s=60, clock=clock)
        assert writer.put("k", {"data": [0.5, 1]}, cost_nusd=7, has_text=False)
        hit = reader.get("k")
        assert (hit.body, hit.cost_nusd, hit.size) == ({"data": [0.5, 1]}, 7, len(b'{"data":[0.5,1]}'))
        clock.t = 1060.0
        assert reader.get("k") is None
    finally:
        a.close()
        b.close()


def test_the_store_keeps_no_text_unless_the_operator_opts_in(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        body = {"choices": [{"text": "a secret answer"}], "usage": {"prompt_tokens": 3}}
        assert not ResponseCache(store, 1 << 20, 60).put("t", body, 5, has_text=True)
        assert ResponseCache(store, 1 << 20, 60).get("t") is None
        assert ResponseCache(store, 1 << 20, 60, keep_text=True).put("t", body, 5, has_text=True)
        assert ResponseCache(store, 1 << 20, 60).get("t").body == body
    finally:
        store.close()


def test_cache_bodies_carry_numpy_values(store_url):  # noqa: F811
    np = pytest.importorskip("numpy")
    store = open_store(store_url)
    try:
        cache = ResponseCache(store, max_bytes=1 << 20, ttl_s=60)
        cache.put("e", {"embedding": np.array([0.25, 0.5], dtype=np.float32)}, cost_nusd=3, has_text=False)
        assert cache.get("e").body == {"embedding": [0.25, 0.5]}
    finally:
        store.close()
