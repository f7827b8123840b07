"""Spend buckets: a budget window's first read (any start, any scope) equals the sum of its ledger rows, through
retried writes and retention; and the in-memory State reads the ledger outside its lock and forgets idle windows,
reading them back exactly."""

from __future__ import annotations

import random
import threading

import pytest

from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.retention import prune
from leaninfer.finops.spend_buckets import BUCKET_S, deltas, scopes_of
from leaninfer.finops.store import open_store
from leaninfer.finops.store.memory import IDLE_S, MemoryState
from leaninfer.finops.store.ports import BudgetRefused

from .store_fixtures import DAY1, Clock, store_url  # noqa: F401 (a fixture)

DAY_S = 86_400
# an account (as budgets name them: a key id, or a scope and its generation) and the rows it covers
MEMBERS = {
    "k1": lambda r: r.key_id == "k1",
    "team:search@1": lambda r: r.team == "search",
    "model:chat@1": lambda r: r.requested_model == "chat",
    "tag:env=prod@1": lambda r: r.tags.get("env") == "prod",
    "tag:tier=gold@1": lambda r: r.tags.get("tier") == "gold",
    "user:alice@1": lambda r: r.end_user == "alice",
    "org@1": lambda r: True,
}


def rows_of(rng: random.Random, n: int, start: int = 0) -> list[LedgerRow]:
    out = []
    for i in range(start, start + n):
        t = DAY1 + rng.random() * 6 * DAY_S
        tags = {k: v for k, v in (("env", rng.choice(["prod", "dev", "PROD"])), ("tier", rng.choice(["gold", ""])))
                if v}
        out.append(LedgerRow(
            request_id=f"r{i}", created_at=t, finished_at=t + 1, endpoint="embeddings",
            requested_model=rng.choice(["chat", "minilm", "chat-int8"]), key_id=rng.choice(["k1", "k2", None]),
            team=rng.choice(["search", "ads", "searchx"]), tags=tags, end_user=rng.choice(["alice", "bob", ""]),
            charged_tokens=rng.randrange(600), cost_nusd=rng.randrange(10**9)))
    return out


def want(rows, account: str, since: float) -> tuple[int, int]:
    mine = [r for r in rows if MEMBERS[account](r) and r.created_at >= since]
    return sum(r.cost_nusd for r in mine), sum(r.charged_tokens for r in mine)


def test_scopes_and_deltas_of_rows():
    r = LedgerRow("r1", DAY1 + 901.0, 0.0, "embeddings", "chat", key_id="k1", team="t", tags={"b": "2", "a": "1"},
                  end_user="u", cost_nusd=5, charged_tokens=3)
    assert scopes_of(r) == ["key:k1", "team:t", "model:chat", "tag:a=1", "tag:b=2", "user:u", "org"]
    again = LedgerRow("r1", DAY1 + 901.0, 0.0, "embeddings", "chat", key_id="k1", team="t", cost_nusd=7,
                      charged_tokens=3)
    # a retried write that replaces r with again: only the difference lands, in key order
    assert deltas([again], [r]) == [("key:k1", DAY1 + BUCKET_S, 2, 0), ("model:chat", DAY1 + BUCKET_S, 2, 0),
                                    ("org", DAY1 + BUCKET_S, 2, 0), ("tag:a=1", DAY1 + BUCKET_S, -5, -3),
                                    ("tag:b=2", DAY1 + BUCKET_S, -5, -3), ("team:t", DAY1 + BUCKET_S, 2, 0),
                                    ("user:u", DAY1 + BUCKET_S, -5, -3)]
    assert deltas([LedgerRow("r2", DAY1, 0.0, "embeddings", "chat", status=429)]) == []  # a refusal: nothing


def test_a_window_read_equals_its_rows_at_any_start_through_rewrites_and_retention(store_url):  # noqa: F811
    rng = random.Random(7)
    rows = rows_of(rng, 1500)
    store = open_store(store_url)
    try:
        for i in range(0, len(rows), 100):  # batches, as the ledger writer hands them
            store.append(rows[i:i + 100])
        rewritten = rows_of(random.Random(8), 200)  # the same ids written again with other figures
        store.append(rewritten)
        rows = rewritten + rows[200:]
        starts = [DAY1, DAY1 + 2 * DAY_S + 3 * BUCKET_S, DAY1 + 3 * DAY_S + 17.25, DAY1 + 5 * DAY_S - 0.5,
                  *(DAY1 + rng.random() * 6 * DAY_S for _ in range(6)), 0.0]
        for account in MEMBERS:
            for since in starts:
                assert store.budget_spend(account, since) == want(rows, account, since), (account, since)
        # retention deletes the raw rows of the first two days: every window still reads what they spent
        assert prune(store, DAY1 + 2 * DAY_S, pause_s=0) == sum(r.created_at < DAY1 + 2 * DAY_S for r in rows)
        for account in MEMBERS:
            for since in (0.0, DAY1 + BUCKET_S, DAY1 + 2 * DAY_S + 17.25):
                assert store.budget_spend(account, since) == want(rows, account, since), (account, since)
        assert store.spend("k1", 0.0) == want(rows, "k1", 0.0)
    finally:
        store.close()


def test_memory_state_reads_the_ledger_outside_its_lock():
    """A cold window's ledger read (a thread of the gate) never holds up a warm reserve (inline on the loop)."""
    reading, release = threading.Event(), threading.Event()

    def spend(account, since):
        if account == "cold":
            reading.set()
            assert release.wait(10)
        return 0, 0

    state = MemoryState(spend=spend)
    state.reserve("warm", [("tokens_day", DAY1, 100, 1)], None)
    cold = threading.Thread(target=state.reserve, args=("cold", [("tokens_day", DAY1, 100, 5)], None))
    cold.start()
    assert reading.wait(10)
    state.reserve("warm", [("tokens_day", DAY1, 100, 1)], None)  # would deadlock if the read held the lock
    assert state.budget_used("warm", [("tokens_day", DAY1)]) == {"tokens_day": (0, 2)}
    release.set()
    cold.join(10)
    assert state.budget_used("cold", [("tokens_day", DAY1)]) == {"tokens_day": (0, 5)}


def test_memory_state_forgets_idle_windows_and_reads_them_back_exactly():
    ledger: dict[str, int] = {}  # what the ledger holds per account (tokens)
    reads: list[str] = []

    def spend(account, since):
        reads.append(account)
        return 0, ledger.get(account, 0)

    clock = Clock(1000.0)
    state = MemoryState(spend=spend, clock=clock)
    for i in range(500):  # ever-new end users, each spending 10 of a 100-token default budget
        account = f"user:u{i}@1"
        state.reserve(account, [("tokens_day", DAY1, 100, 10)], None)
        state.settle(account, [("tokens_day", DAY1, 10, 10)], None)
        ledger[account] = 10  # the request's row is committed before its response leaves
    state.reserve("busy", [("tokens_day", DAY1, 100, 40)], None)  # in flight for longer than IDLE_S
    clock.t += IDLE_S + 1
    for _ in range(200):  # later traffic forgets what has been idle, a few windows per call
        state.reserve("k-live", [("tokens_day", DAY1, 10**9, 1)], None)
    assert len(state._accounts) < 120  # not 502: memory follows the windows in use
    # a forgotten user's window is read back from the ledger: her 10 tokens still count
    reads.clear()
    with pytest.raises(BudgetRefused) as e:
        state.reserve("user:u3@1", [("tokens_day", DAY1, 100, 91)], None)
    assert reads == ["user:u3@1"] and (e.value.settled, e.value.reserved) == (10, 0)
    # the window with a request in flight was kept, its reservation intact
    assert state.budget_used("busy", [("tokens_day", DAY1)]) == {"tokens_day": (0, 40)}
    # without a ledger to read back from, nothing is forgotten
    alone = MemoryState(clock=clock)
    alone.reserve("a", [("tokens_day", DAY1, 100, 7)], None)
    clock.t += 10 * IDLE_S
    for _ in range(10):
        alone.reserve("b", [("tokens_day", DAY1, 100, 1)], None)
    assert alone.budget_used("a", [("tokens_day", DAY1)]) == {"tokens_day": (0, 7)}
