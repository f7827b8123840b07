"""Budgets above the key (team, tag, model, org, end user) through BudgetBook on every State (memory, SQLite,
PostgreSQL): one atomic reservation across a key and its scopes, refusals that name the scope and budget, settle
and reclaim releasing every scope once, the hierarchical race (a team budget shared by 4 keys, a tag budget
binding first for some) with no overshoot, two books on one store, end users apart under the default budget,
a budget's new generation counted from the ledger, and the 1-second cache of the definitions."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.budget_admin import delete_budget, scope_from, set_budget
from leaninfer.finops.budgets import BudgetBook, BudgetExceeded
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.scope_budgets import ScopeLimits, covering, request_scopes, scope_id
from leaninfer.finops.scope_cache import ScopeBudgetCache
from leaninfer.finops.store import open_store
from leaninfer.finops.store.memory import MemoryState

from .store_fixtures import DAY1, NOON, UTC, Clock, backend, policy_key, store_url  # noqa: F401 (fixtures)


def state_of(b):
    """The State under test; memory starts scope windows from the store's ledger as the gate's does."""
    return MemoryState(spend=b.ledger.budget_spend) if b.kind == "memory" else b.state


def scopes_for(store, key=None, model="m", tags=None, user=None):
    team = key.policy.team if key is not None else None
    found = store.get_scope_budgets(request_scopes(team, model, tags or {}, user))
    return covering(found, team, model, tags or {}, user)


def used(state, budget, name="tokens_day", start=DAY1, user=""):
    return state.budget_used(budget.account(user), [(name, start)])[name]


def test_one_reservation_across_key_and_scopes_all_or_nothing(backend):  # noqa: F811
    store, state = backend.ledger, state_of(backend)
    team = set_budget(store, "team:search", ScopeLimits(tokens_day=100), now=1.0)
    org = set_budget(store, "org", ScopeLimits(tokens_day=1000, usd_total=1.0), now=1.0)
    key = policy_key(budget_tokens_day=500)
    book = BudgetBook(state, UTC, clock=Clock(NOON))
    res = book.reserve(key, 10, 60, scopes_for(store, key))
    assert used(state, team) == (0, 60) and used(state, org) == (0, 60)
    with pytest.raises(BudgetExceeded) as e:  # the key and org fit; the team doesn't: nothing is taken
        book.reserve(key, 10, 50, scopes_for(store, key))
    assert (e.value.scope_id, e.value.scope, e.value.budget) == ("team:search", "team search", "tokens_day")
    assert (e.value.settled, e.value.reserved, e.value.asked, e.value.limit) == (0, 60, 50, 100)
    assert "team search (tokens_day) has used 60 tokens of its day budget of 100 tokens" in e.value.message()
    assert used(state, org) == (0, 60) and book.used(key)["tokens_day"][:2] == (0, 500)
    assert state.budget_used(key.key_id, [("tokens_day", DAY1)])["tokens_day"] == (0, 60)
    assert book.settle(res, 7, 45) == (7, 45)
    assert book.settle(res, 7, 45) == (0, 0)  # once, for every scope
    assert used(state, team) == (45, 0) and used(state, org) == (45, 0)
    assert state.budget_used(org.account(), [("usd_total", 0.0)])["usd_total"] == (7, 0)
    assert state.budget_used(key.key_id, [("tokens_day", DAY1)])["tokens_day"] == (45, 0)


def test_a_key_budget_refusal_still_names_the_key(backend):  # noqa: F811
    store, state = backend.ledger, state_of(backend)
    set_budget(store, "org", ScopeLimits(tokens_day=1000))
    key = policy_key(budget_tokens_day=50)
    book = BudgetBook(state, UTC, clock=Clock(NOON))
    with pytest.raises(BudgetExceeded) as e:
        book.reserve(key, 0, 60, scopes_for(store, key))
    assert (e.value.scope_id, e.value.key_id, e.value.budget) == ("", "k1", "tokens_day")
    assert e.value.message().startswith("budget exceeded: key k1 has used")


def test_expired_hold_releases_every_scope(backend):  # noqa: F811
    store, state = backend.ledger, state_of(backend)
    team = set_budget(store, "team:search", ScopeLimits(tokens_day=100))
    key = policy_key()
    clock = Clock(NOON)
    book = BudgetBook(state, UTC, clock=clock, hold_s=60)
    res = book.reserve(key, 0, 80, scopes_for(store, key))
    assert used(state, team) == (0, 80)
    assert book.reclaim(NOON + 61) == 1
    assert used(state, team) == (0, 0)
    book.settle(res, 0, 30)  # late: the charge counts, nothing is released twice
    assert used(state, team) == (30, 0)


def test_default_end_user_budget_keeps_users_apart(backend):  # noqa: F811
    store, state = backend.ledger, state_of(backend)
    default = set_budget(store, "default-user", ScopeLimits(tokens_day=100))
    vip = set_budget(store, "user:vip", ScopeLimits(tokens_day=1000))
    key = policy_key()
    book = BudgetBook(state, UTC, clock=Clock(NOON))
    book.settle(book.reserve(key, 0, 100, scopes_for(store, key, user="alice")), 0, 100)
    with pytest.raises(BudgetExceeded) as e:  # alice spent hers
        book.reserve(key, 0, 1, scopes_for(store, key, user="alice"))
    assert e.value.scope_id == "default-user" and "user alice (the default end-user budget)" in e.value.message()
    book.settle(book.reserve(key, 0, 100, scopes_for(store, key, user="bob")), 0, 100)  # bob has his own
    book.settle(book.reserve(key, 0, 500, scopes_for(store, key, user="vip")), 0, 500)  # vip: her own budget
    assert used(state, default, user="alice") == (100, 0) and used(state, default, user="bob") == (100, 0)
    assert used(state, vip) == (500, 0)
    book.reserve(key, 0, 10_000, scopes_for(store, key))  # no user: no end-user budget applies


def test_a_scope_window_starts_from_the_ledger_and_a_new_generation_recounts(backend):  # noqa: F811
    store, state = backend.ledger, state_of(backend)
    store.append([LedgerRow(request_id="r1", created_at=NOON - 60, finished_at=NOON - 59, endpoint="embeddings",
                            requested_model="m", team="search", key_id="other", workflow="",
                            tags={"env": "prod", "x": "Prod"}, charged_tokens=40, cost_nusd=900),
                  LedgerRow(request_id="r2", created_at=NOON - 60, finished_at=NOON - 59, endpoint="embeddings",
                            requested_model="m2", team="ads", key_id="other", workflow="",
                            tags={"env": "PROD"}, charged_tokens=5, cost_nusd=1)])
    team = set_budget(store, "team:search", ScopeLimits(tokens_day=100))
    tag = set_budget(store, "tag:env=prod", ScopeLimits(tokens_day=100))
    model = set_budget(store, "model:m", ScopeLimits(usd_day=1e-6))
    org = set_budget(store, "org", ScopeLimits(tokens_day=100))
    key = policy_key()
    book = BudgetBook(state, UTC, clock=Clock(NOON))
    book.settle(book.reserve(key, 0, 10, scopes_for(store, key, tags={"env": "prod"})), 0, 10)
    assert used(state, team) == (50, 0) and used(state, org) == (55, 0)
    assert used(state, tag) == (50, 0)  # the PROD row is another tag: matched exactly, case included
    assert used(state, model, "usd_day") == (900, 0)
    # deleted and set again: a new generation, counted afresh from the ledger (not from the old account)
    delete_budget(store, "team:search")
    book.reserve(key, 0, 10, scopes_for(store, key))  # no team budget now
    again = set_budget(store, "team:search", ScopeLimits(tokens_day=100), now=team.created_at + 5)
    assert again.account() != team.account()
    changed = set_budget(store, "team:search", ScopeLimits(tokens_day=200), now=team.created_at + 9)
    assert changed.account() == again.account()  # a change of limits keeps the spend
    assert used(state, changed) == (40, 0)


def test_hierarchical_race_no_budget_overshoots(backend):  # noqa: F811
    """A team budget shared by 4 keys and a tag budget that binds first for the tagged half: 200 requests from
    16 threads; every refusal names a budget that was indeed full, and nothing overshoots."""
    store, state = backend.ledger, state_of(backend)
    team = set_budget(store, "team:search", ScopeLimits(tokens_day=1000))
    tag = set_budget(store, "tag:env=prod", ScopeLimits(tokens_day=300))
    keys = [policy_key(key_id=f"k{i}", budget_tokens_day=10_000) for i in range(4)]
    book = BudgetBook(state, UTC, clock=Clock(NOON))
    _race([book], store, keys, team, tag, state)


def test_two_servers_on_one_store_share_scope_budgets(store_url):  # noqa: F811
    """Two books on two connections to one store (two servers): the same race, the same guarantees."""
    a, b = open_store(store_url), open_store(store_url)
    try:
        team = set_budget(a, "team:search", ScopeLimits(tokens_day=1000))
        tag = set_budget(a, "tag:env=prod", ScopeLimits(tokens_day=300))
        keys = [policy_key(key_id=f"k{i}") for i in range(4)]
        books = [BudgetBook(a, UTC, clock=Clock(NOON), owner="a"), BudgetBook(b, UTC, clock=Clock(NOON), owner="b")]
        _race(books, a, keys, team, tag, a)
    finally:
        a.close()
        b.close()


def _race(books, store, keys, team, tag, state):
    rng = random.Random(7)
    jobs = [(books[i % len(books)], keys[i % 4], {"env": "prod"} if i % 2 else {}, rng.randint(1, 10))
            for i in range(200)]
    scopes = {bool(t): scopes_for(store, keys[0], tags=t) for t in ({}, {"env": "prod"})}
    lock, charged, refused = threading.Lock(), {"team": 0, "tag": 0}, []

    def one(job):
        book, key, tags, charge = job
        try:
            res = book.reserve(key, 0, 10, scopes[bool(tags)])
        except BudgetExceeded as e:
            with lock:
                refused.append((bool(tags), e))
            return
        got = book.settle(res, 0, charge)[1]
        with lock:
            charged["team"] += got
            charged["tag"] += got if tags else 0

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, jobs))
    assert refused, "the budgets never bound: the race tested nothing"
    for tagged, e in refused:
        assert e.budget == "tokens_day" and e.used + e.asked > e.limit  # the budget named was full
        assert e.scope_id in (("tag:env=prod", "team:search") if tagged else ("team:search",))
        assert e.scope in e.message() and "tokens_day" in e.message()
    assert used(state, team) == (charged["team"], 0) and charged["team"] <= 1000
    assert used(state, tag) == (charged["tag"], 0) and charged["tag"] <= 300
    assert any(e.scope_id == "tag:env=prod" for _, e in refused)


def test_scope_names_are_checked():
    assert scope_id("user", "alice") == "user:alice"
    for kind, name, why in [("team", "a b", "letters, digits"), ("tag", "env", "key=value"), ("tag", "=x", "key=value"),
                            ("tag", "a=b,c", "without ','"), ("org", "x", "takes no name"),
                            ("user", "a\x00", "control character"), ("model", "m" * 257, "at most 256"),
                            ("galaxy", "x", "unknown budget scope")]:
        with pytest.raises(LeaninferError, match=why):
            scope_id(kind, name)
    with pytest.raises(LeaninferError, match="exactly one scope"):
        scope_from(team="a", org=True)
    with pytest.raises(LeaninferError, match="at least one limit"):
        set_budget(None, "org", ScopeLimits())


def test_a_budget_change_applies_within_the_cache_time(tmp_path):
    store = open_store(tmp_path / "s.db")
    now = Clock(100.0)
    try:
        cache = ScopeBudgetCache(store, ttl_s=1.0, timer=now)
        assert cache.lookup(["team:search"]) == {"team:search": None}
        set_budget(store, "team:search", ScopeLimits(tokens_day=5))
        now.t += 0.3
        assert cache.lookup(["team:search"])["team:search"] is None  # kept (half the time: answers built from
        now.t += 0.6                                                  # it are kept the other half)
        assert cache.lookup(["team:search"])["team:search"].limits.tokens_day == 5
        set_budget(store, "team:search", ScopeLimits(tokens_day=7))
        now.t += 1.1
        assert cache.lookup(["team:search"])["team:search"].limits.tokens_day == 7
        delete_budget(store, "team:search")
        now.t += 1.1
        assert cache.lookup(["team:search"])["team:search"] is None
        # a request's answer, built from what is kept, is itself never older than the cache time in all
        ask = ("search", "m", {}, None)
        assert asyncio.run(cache.covering(*ask)) == []
        set_budget(store, "team:search", ScopeLimits(tokens_day=9))
        now.t += 0.4
        assert asyncio.run(cache.covering(*ask)) == []  # kept
        now.t += 0.6
        assert [c.budget.limits.tokens_day for c in asyncio.run(cache.covering(*ask))] == [9]
    finally:
        store.close()
