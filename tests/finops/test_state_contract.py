"""The State contract: every implementation (this process's memory, SQLite, PostgreSQL) through the same cases —
reservations all or nothing, refusals that tell settled spend from reservations in flight, settles once per
hold, expired holds reclaimed, new windows from the ledger, sliding-window rate counts, the cache's expiry and
byte bound, and no overshoot when threads race for a budget."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from leaninfer.finops.budgets import BudgetBook, BudgetExceeded
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.store.ports import BudgetRefused, Hold

from .store_fixtures import DAY1, NOON, UTC, Clock, backend, policy_key  # noqa: F401 (a fixture)

TOK, USD = ("tokens_day", DAY1), ("usd_day", DAY1)


def hold(hold_id: str, expires_at: float = NOON + 3600, owner: str = "") -> Hold:
    return Hold(hold_id, owner, expires_at)


def test_flags_say_how_to_call_it(backend):  # noqa: F811
    sql = backend.kind != "memory"
    assert (backend.state.blocking, backend.state.persistent) == (sql, sql)


# -- budgets ---------------------------------------------------------------------------------------------------
def test_reserve_is_all_or_nothing(backend):  # noqa: F811
    s = backend.state
    s.reserve("k1", [(*USD, 1000, 100), (*TOK, 100, 90)], hold("h1"))
    with pytest.raises(BudgetRefused) as e:  # $ fits, tokens don't: the $ budget must not keep its 100
        s.reserve("k1", [(*USD, 1000, 100), (*TOK, 100, 20)], hold("h2"))
    assert (e.value.budget, e.value.window_start, e.value.limit, e.value.asked) == ("tokens_day", DAY1, 100, 20)
    assert s.budget_used("k1", [USD, TOK]) == {"usd_day": (0, 100), "tokens_day": (0, 90)}
    s.settle("k1", [(*TOK, 0, 0)], "h2")  # the refused reservation left no hold: settling it does nothing
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (0, 90)}


def test_a_refusal_tells_settled_from_reserved(backend):  # noqa: F811
    s = backend.state
    s.reserve("k1", [(*TOK, 100, 60)], hold("h1"))
    s.settle("k1", [(*TOK, 60, 40)], "h1")
    s.reserve("k1", [(*TOK, 100, 50)], hold("h2"))  # in flight
    with pytest.raises(BudgetRefused) as e:
        s.reserve("k1", [(*TOK, 100, 20)], hold("h3"))
    assert (e.value.settled, e.value.reserved, e.value.asked, e.value.used) == (40, 50, 20, 90)


def test_settle_is_once_per_hold(backend):  # noqa: F811
    s = backend.state
    s.reserve("k1", [(*TOK, 100, 40)], hold("h1"))
    s.settle("k1", [(*TOK, 40, 30)], "h1")
    s.settle("k1", [(*TOK, 40, 30)], "h1")  # a second process, or a cancel racing a finish
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (30, 0)}
    s.reserve("k1", [(*TOK, 100, 10)], None)  # without a hold, each settle counts
    s.settle("k1", [(*TOK, 10, 5)], None)
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (35, 0)}


def test_expired_holds_are_reclaimed_once(backend):  # noqa: F811
    s = backend.state
    s.reserve("k1", [(*TOK, 100, 80)], hold("lost", expires_at=NOON + 60))
    with pytest.raises(BudgetRefused):
        s.reserve("k1", [(*TOK, 100, 80)], hold("h2"))
    assert s.reclaim(NOON + 59) == 0
    assert s.reclaim(NOON + 61) == 1
    assert s.reclaim(NOON + 62) == 0
    s.reserve("k1", [(*TOK, 100, 80)], hold("h2"))
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (0, 80)}
    s.settle("k1", [(*TOK, 80, 10)], "lost")  # alive after all: its spend counts, its release doesn't twice
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (10, 80)}
    s.settle("k1", [(*TOK, 80, 80)], "h2")
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (90, 0)}
    assert s.reclaim_orphans() == 0  # no hold names an owner


def test_a_new_window_starts_from_the_ledger(backend):  # noqa: F811
    backend.ledger.append([
        LedgerRow("yesterday", DAY1 - 60, DAY1 - 59, "embeddings", "m", key_id="k1", charged_tokens=99,
                  cost_nusd=7),
        LedgerRow("today", DAY1 + 60, DAY1 + 61, "embeddings", "m", key_id="k1", charged_tokens=70, cost_nusd=5),
        LedgerRow("other", DAY1 + 60, DAY1 + 61, "embeddings", "m", key_id="k2", charged_tokens=50)])
    s = backend.state
    assert s.budget_used("k1", [TOK, USD, ("tokens_total", 0.0)]) == {
        "tokens_day": (70, 0), "usd_day": (5, 0), "tokens_total": (169, 0)}
    with pytest.raises(BudgetRefused) as e:
        s.reserve("k1", [(*TOK, 100, 31)], hold("h1"))
    assert (e.value.settled, e.value.reserved) == (70, 0)
    s.reserve("k1", [(*TOK, 100, 30)], hold("h1"))
    assert s.budget_used("k1", [TOK]) == {"tokens_day": (70, 30)}


def test_budget_names_carry_their_unit(backend):  # noqa: F811
    with pytest.raises(ValueError, match="starts with one of usd_, tokens_"):
        backend.state.reserve("k1", [("euros_day", 0.0, 10, 1)], None)


def test_threads_racing_for_a_budget_never_overshoot(backend):  # noqa: F811
    """200 reservations of 1 token (and $0.01) from 16 threads, against 50 tokens: exactly 50 are taken."""
    key = policy_key(budget_tokens_day=50, budget_usd_day=10.0)
    book = BudgetBook(backend.state, UTC, clock=Clock(NOON))

    def one(_):
        try:
            return book.reserve(key, 10_000_000, 1)
        except BudgetExceeded:
            return None

    with ThreadPoolExecutor(16) as pool:
        taken = [r for r in pool.map(one, range(200)) if r is not None]
    assert len(taken) == 50
    assert backend.state.budget_used("k1", [TOK, USD]) == {"tokens_day": (0, 50), "usd_day": (0, 500_000_000)}
    with ThreadPoolExecutor(16) as pool:  # settling races too: each once
        list(pool.map(lambda r: book.settle(r, 10_000_000, 1), taken + taken))
    assert backend.state.budget_used("k1", [TOK, USD]) == {"tokens_day": (50, 0), "usd_day": (500_000_000, 0)}


# -- rate limits -----------------------------------------------------------------------------------------------
def test_rate_hit_counts_all_or_nothing_in_a_sliding_window(backend):  # noqa: F811
    s, asks = backend.state, lambda tokens: [("rpm", 10, 1), ("tpm", 100, tokens)]
    assert s.rate_hit("k1", asks(60), 60.0, NOON + 10) == [(True, 9, NOON + 60), (True, 40, NOON + 60)]
    refused = s.rate_hit("k1", asks(60), 60.0, NOON + 20)
    assert [allowed for allowed, _, _ in refused] == [True, False] and refused[1][1] == 40
    assert s.rate_hit("k1", asks(10), 60.0, NOON + 30)[0] == (True, 8, NOON + 60)  # the refused took no rpm
    # a window later, half of the last one still counts: 70 * 0.5 = 35 of 100 tokens
    assert s.rate_hit("k1", asks(65), 60.0, NOON + 90)[1] == (True, 0, NOON + 120)
    allowed, remaining, reset_at = s.rate_hit("k1", asks(1), 60.0, NOON + 90)[1]
    assert (allowed, remaining) == (False, 0) and NOON + 90 < reset_at <= NOON + 120
    # two windows later nothing of the first counts; other keys and names never did
    assert s.rate_hit("k1", asks(100), 60.0, NOON + 185)[1] == (True, 0, NOON + 240)
    assert s.rate_hit("k2", asks(100), 60.0, NOON + 185)[1] == (True, 0, NOON + 240)


# -- response cache --------------------------------------------------------------------------------------------
def test_cache_keeps_bytes_until_expiry_within_its_bound(backend):  # noqa: F811
    s = backend.state
    s.cache_put("k", b'{"data":[0.5,1]}', 7, 1060.0, 1000.0, 100)
    assert s.cache_get("k", 1059.9) == (b'{"data":[0.5,1]}', 7)
    assert s.cache_get("k", 1060.0) is None
    for i, name in enumerate(["old", "mid", "new"]):  # 3 bodies of 40 bytes, 100 bytes allowed
        s.cache_put(name, b"x" * 40, i, 3000.0, 2000.0 + i, 100)
    assert [s.cache_get(n, 2010.0) is not None for n in ("old", "mid", "new")] == [False, True, True]
    s.cache_put("mid", b"y" * 10, 9, 3000.0, 2003.0, 100)  # replaced: its old size no longer counts
    s.cache_put("more", b"z" * 45, 4, 3000.0, 2004.0, 100)
    assert [s.cache_get(n, 2010.0) for n in ("mid", "new", "more")] == [(b"y" * 10, 9), (b"x" * 40, 2),
                                                                        (b"z" * 45, 4)]
    s.cache_put("late", b"l", 1, 4000.0, 3500.0, 100)  # expired entries go on the next put
    assert s.cache_get("new", 3500.0) is None and s.cache_get("late", 3500.0) == (b"l", 1)


def test_rate_hit_scoped_counts_across_accounts_all_or_nothing(backend):  # noqa: F811
    s = backend.state
    items = lambda cost: [("k1", "tpm", 100, cost), ("team:a@1", "rpm", 2, 1), ("team:a@1", "tpm", 50, cost)]  # noqa: E731
    assert s.rate_hit_scoped(items(30), 60.0, NOON + 1) == [(True, 70, NOON + 60), (True, 1, NOON + 60),
                                                           (True, 20, NOON + 60)]
    refused = s.rate_hit_scoped(items(30), 60.0, NOON + 2)  # the team's tpm can't take 30 more
    assert [ok for ok, _, _ in refused] == [True, True, False]
    # nothing was counted by the refusal: the key's tpm and the team's rpm are as before
    assert s.rate_hit_scoped([("k1", "tpm", 100, 70), ("team:a@1", "rpm", 2, 1)], 60.0, NOON + 3) == [
        (True, 0, NOON + 60), (True, 0, NOON + 60)]
    assert s.rate_hit("k1", [("tpm", 100, 1)], 60.0, NOON + 4)[0][0] is False  # one account, as rate_hit sees it
