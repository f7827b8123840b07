"""BudgetBook over this process's State: worst case reserved, true cost settled once and clamped to the
reservation (one function, which the gate uses too), windows by calendar, holds that carry the server and an
expiry derived from the caller's timeouts, and refusals that say whether waiting helps."""

from __future__ import annotations

import pytest

from leaninfer.finops.budgets import HOLD_S, BudgetBook, BudgetExceeded, Reservation
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.store import open_store
from leaninfer.finops.store.memory import MemoryState

from .store_fixtures import DAY1, NOON, UTC, Clock, policy_key


class Recording(MemoryState):
    """A MemoryState that records the holds it is given and counts reclaims."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.holds, self.reclaims = [], []

    def reserve(self, key_id, items, hold):
        self.holds.append(hold)
        return super().reserve(key_id, items, hold)

    def reclaim(self, now):
        self.reclaims.append(now)
        return super().reclaim(now)


def test_reserve_settle_and_used():
    key = policy_key(budget_usd_day=1e-6, budget_tokens_total=100)  # $ 1000 nano-dollars a day
    book = BudgetBook(MemoryState(), UTC, clock=Clock(NOON))
    res = book.reserve(key, nusd=600, tokens=50)
    assert res.windows == {"usd_day": DAY1, "tokens_total": 0.0}
    assert book.used(key) == {"usd_day": (0, 1000, DAY1), "tokens_total": (0, 100, 0.0)}  # in flight: no spend
    assert book.settle(res, nusd=400, tokens=70) == (400, 50)  # at most what was reserved
    assert book.settle(res, nusd=400, tokens=70) == (0, 0)  # once
    assert book.used(key) == {"usd_day": (400, 1000, DAY1), "tokens_total": (50, 100, 0.0)}


def test_clamp_is_the_one_rule():
    res = Reservation("k1", nusd=2_000, tokens=80)
    assert res.clamp(2_500, 57) == (2_000, 57)
    assert res.clamp(-5, 100) == (0, 80)


def test_a_refusal_says_what_blocks():
    key = policy_key(budget_tokens_day=100)
    clock = Clock(NOON)
    book = BudgetBook(MemoryState(), UTC, clock=clock)
    book.settle(book.reserve(key, 0, 60), 0, 60)
    held = book.reserve(key, 0, 30)
    with pytest.raises(BudgetExceeded) as e:  # 60 spent + 30 in flight + 20: in-flight work is in the way
        book.reserve(key, 0, 20)
    assert (e.value.used, e.value.settled, e.value.reserved, e.value.asked) == (90, 60, 30, 20)
    assert e.value.in_flight_blocks and e.value.reset_at == DAY1 + 86_400
    assert "30 tokens reserved by requests in flight" in e.value.message() and "retry when" in e.value.message()
    with pytest.raises(BudgetExceeded) as e:  # 60 spent + 50: only the next window helps
        book.reserve(key, 0, 50)
    assert not e.value.in_flight_blocks and "it resets at 2025-03-02T00:00:00Z" in e.value.message()
    book.settle(held, 0, 30)
    with pytest.raises(BudgetExceeded) as e:
        book.reserve(key, 0, 20)
    assert (e.value.settled, e.value.reserved) == (90, 0) and not e.value.in_flight_blocks
    clock.t += 86_400  # a new day
    book.reserve(key, 0, 100)


def test_a_lifetime_budget_does_not_reset():
    key = policy_key(budget_usd_total=1e-6)
    book = BudgetBook(MemoryState(), UTC, clock=Clock(NOON))
    with pytest.raises(BudgetExceeded) as e:
        book.reserve(key, 2_000, 0)
    assert e.value.reset_at is None and "it does not reset" in e.value.message()
    assert "$0.000002" in e.value.message()


def test_exceeded_built_without_the_split_counts_used_as_settled():
    e = BudgetExceeded("k1", "tokens_day", 100, 90, 20, None)
    assert (e.settled, e.reserved, e.in_flight_blocks) == (90, 0, False)


def test_holds_carry_the_owner_and_the_callers_expiry():
    state = Recording()
    book = BudgetBook(state, UTC, clock=Clock(NOON), hold_s=700.0, owner="server-1")
    res = book.reserve(policy_key(budget_tokens_day=100), 0, 10)
    (hold,) = state.holds
    assert (hold.hold_id, hold.owner, hold.expires_at) == (res.hold_id, "server-1", NOON + 700.0)
    other = BudgetBook(state, UTC, clock=Clock(NOON)).reserve(policy_key(budget_tokens_day=100), 0, 10)
    assert other.hold_id != res.hold_id
    assert HOLD_S < 3600  # a killed server's reservations no longer block a budget for an hour


@pytest.mark.parametrize("hold_s", [0, -1.0, float("nan")])
def test_a_hold_must_last(hold_s):
    with pytest.raises(ValueError, match="hold_s"):
        BudgetBook(MemoryState(), UTC, hold_s=hold_s)


def test_expired_holds_are_reclaimed_every_30_s():
    state, clock = Recording(), Clock(NOON)
    book = BudgetBook(state, UTC, clock=clock, hold_s=60)
    key = policy_key(budget_tokens_day=100)
    lost = book.reserve(key, 0, 90)
    clock.t += 20
    with pytest.raises(BudgetExceeded):
        book.reserve(key, 0, 20)
    clock.t += 45  # 65 s: the hold expired, and 30 s passed since the last reclaim
    book.reserve(key, 0, 20)
    assert state.reclaims == [NOON, NOON + 65]
    assert book.reclaim() == 0
    assert book.settle(lost, 0, 90) == (0, 90)  # a late settle still charges what it spent
    assert book.used(key)["tokens_day"][0] == 90


def test_a_new_window_starts_from_the_ledger(tmp_path):
    store = open_store(tmp_path / "ledger.db")
    try:
        store.append([LedgerRow("a", DAY1 - 60, DAY1, "embeddings", "m", key_id="k1", charged_tokens=99),
                      LedgerRow("b", DAY1 + 60, DAY1 + 61, "embeddings", "m", key_id="k1", charged_tokens=70)])
        book = BudgetBook(MemoryState(spend=store.spend), UTC, clock=Clock(NOON))
        key = policy_key(budget_tokens_day=100)
        assert book.used(key)["tokens_day"] == (70, 100, DAY1)
        with pytest.raises(BudgetExceeded) as e:
            book.reserve(key, 0, 31)
        assert e.value.used == 70
    finally:
        store.close()


def test_a_failed_settle_can_be_retried():
    class Flaky(MemoryState):
        fail = True

        def settle(self, key_id, items, hold_id):
            if self.fail:
                self.fail = False
                raise ConnectionError("store down")
            return super().settle(key_id, items, hold_id)

    book = BudgetBook(Flaky(), UTC, clock=Clock(NOON))
    key = policy_key(budget_tokens_day=100)
    res = book.reserve(key, 0, 50)
    with pytest.raises(ConnectionError):
        book.settle(res, 0, 40)
    assert book.settle(res, 0, 40) == (0, 40)
    assert book.used(key)["tokens_day"][0] == 40
