"""State shared by several server processes through one store (SQLite file, PostgreSQL database): budgets that
hold when 8 processes race for them, rate limits counted once across processes, the response cache index,
reclaimed holds of a process that died, and SQLite migrations. Every test runs on both stores where it applies."""

from __future__ import annotations

import multiprocessing
import sqlite3
from zoneinfo import ZoneInfo

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.budgets import BudgetBook, BudgetExceeded
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.rate_limits import RateLimited
from leaninfer.finops.shared_budgets import SharedBudgetBook
from leaninfer.finops.shared_cache import SharedResponseCache
from leaninfer.finops.shared_limits import SharedRateLimits
from leaninfer.finops.sqlite_store import MIGRATIONS
from leaninfer.finops.stores import open_store

from .store_fixtures import policy_key, rate_worker, reserve_worker, store_url  # noqa: F401 (a fixture)

UTC = ZoneInfo("UTC")
DAY1 = 1740787200.0  # 2025-03-01T00:00:00Z
NOON = DAY1 + 12 * 3600


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


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
        used = SharedBudgetBook(store, UTC).used(key)
        assert used["tokens_day"][:2] == (500, 500)
        assert used["usd_total"][0] == 50 * 10_000_000
        assert store.budget_used("k1", [("tokens_day", used["tokens_day"][2])])["tokens_day"] == (500, 0)
    finally:
        store.close()


def test_reserve_is_all_or_nothing_and_names_the_budget(store_url):  # noqa: F811
    key = policy_key(store_url, budget_tokens_day=100, budget_usd_day=1e-6)  # 1000 nano-dollars
    store = open_store(store_url)
    book = SharedBudgetBook(store, UTC, clock=Clock(NOON))
    try:
        book.reserve(key, nusd=100, tokens=90)
        with pytest.raises(BudgetExceeded) as e:  # tokens refuse; the $ budget must not keep the 100
            book.reserve(key, nusd=100, tokens=20)
        assert (e.value.budget, e.value.limit, e.value.used, e.value.asked) == ("tokens_day", 100, 90, 20)
        assert e.value.reset_at == DAY1 + 86_400
        assert store.budget_used("k1", [("usd_day", DAY1)]) == {"usd_day": (0, 100)}
    finally:
        store.close()


def test_settle_charges_at_most_the_reservation_once(store_url):  # noqa: F811
    key = policy_key(store_url, budget_tokens_total=100)
    store = open_store(store_url)
    book = SharedBudgetBook(store, UTC, clock=Clock(NOON))
    try:
        res = book.reserve(key, nusd=0, tokens=40)
        assert book.settle(res, nusd=0, tokens=70) == (0, 40)  # a slow request pays its quote
        assert book.settle(res, nusd=0, tokens=70) == (0, 0)
        # a second process settling the same hold changes nothing either
        store.settle_budget("k1", [("tokens_total", 0.0, 40, 40)], hold_id=res.hold_id)
        assert book.used(key)["tokens_total"] == (40, 100, 0.0)
    finally:
        store.close()


def test_new_window_starts_from_the_ledger(store_url):  # noqa: F811
    key = policy_key(store_url, budget_tokens_day=100)
    store = open_store(store_url)
    try:
        store.append([LedgerRow("yesterday", DAY1 - 60, DAY1 - 59, "embeddings", "m", key_id="k1", charged_tokens=99),
                      LedgerRow("today", DAY1 + 60, DAY1 + 61, "embeddings", "m", key_id="k1", charged_tokens=70)])
        book = SharedBudgetBook(store, UTC, clock=Clock(NOON))
        assert book.used(key)["tokens_day"] == (70, 100, DAY1)
        with pytest.raises(BudgetExceeded) as e:
            book.reserve(key, 0, 31)
        assert e.value.used == 70
        book.settle(book.reserve(key, 0, 30), 0, 30)
        assert book.used(key)["tokens_day"][0] == 100
    finally:
        store.close()


def test_a_dead_process_hold_is_reclaimed(store_url):  # noqa: F811
    """A replica killed between reserve and settle must not lock the budget until the window ends."""
    key = policy_key(store_url, budget_tokens_total=100)
    store = open_store(store_url)
    clock = Clock(NOON)
    try:
        dead = SharedBudgetBook(store, UTC, clock=clock, hold_s=60)
        lost = dead.reserve(key, 0, 80)  # never settled by its process
        alive = SharedBudgetBook(store, UTC, clock=clock, hold_s=60)
        with pytest.raises(BudgetExceeded):
            alive.reserve(key, 0, 80)
        clock.t += 61
        res = alive.reserve(key, 0, 80)  # reclaims the expired hold first
        assert store.budget_used("k1", [("tokens_total", 0.0)])["tokens_total"] == (0, 80)
        dead.settle(lost, 0, 10)  # alive after all: its spend counts, its reservation isn't released twice
        assert store.budget_used("k1", [("tokens_total", 0.0)])["tokens_total"] == (10, 80)
        alive.settle(res, 0, 80)
        assert alive.used(key)["tokens_total"][0] == 90
    finally:
        store.close()


def test_shared_book_decides_like_the_in_process_book(store_url):  # noqa: F811
    key = policy_key(store_url, budget_tokens_day=100, budget_usd_month=1e-6)
    store = open_store(store_url)
    try:
        books = [BudgetBook(store, UTC, clock=Clock(NOON)), SharedBudgetBook(store, UTC, clock=Clock(NOON))]
        asks = [(300, 30), (300, 30), (500, 30), (300, 50), (100, 10), (200, 40)]
        outcomes = []
        for book in books:
            seen, held = [], []
            for nusd, tokens in asks:
                try:
                    held.append(book.reserve(key, nusd, tokens))
                    seen.append("ok")
                except BudgetExceeded as e:
                    seen.append((e.budget, e.used))
                if len(held) == 2:
                    book.settle(held.pop(0), nusd // 2, tokens // 2)
            outcomes.append((seen, {b: v[:2] for b, v in book.used(key).items()}))
        assert outcomes[0] == outcomes[1]
    finally:
        store.close()


# -- rate limits -----------------------------------------------------------------------------------------------
def test_rate_limit_counts_once_across_processes(store_url):  # noqa: F811
    key = policy_key(store_url, rpm=30)
    out = _spawn(rate_worker, [(store_url, key, 20, NOON + 10)] * 4)
    assert sum(a for a, _ in out) == 30
    assert sum(r for _, r in out) == 50


def test_a_refused_limit_counts_neither(store_url):  # noqa: F811
    key = policy_key(store_url, rpm=10, tpm=100)
    store = open_store(store_url)
    clock = Clock(NOON + 10)
    limits = SharedRateLimits(store, clock=clock)
    try:
        assert limits.check(key, 60) == {"rpm": (10, 9, NOON + 60), "tpm": (100, 40, NOON + 60)}
        with pytest.raises(RateLimited) as e:
            limits.check(key, 60)
        assert (e.value.limit, e.value.quota, e.value.remaining) == ("tpm", 100, 40)
        assert limits.check(key, 10)["rpm"] == (10, 8, NOON + 60)  # the refused request took no rpm
        # a window later, half of the last one still counts (sliding window): 70 * 0.5 = 35 of 100 tokens
        clock.t = NOON + 90
        assert limits.check(key, 65)["tpm"][1] == 0
        with pytest.raises(RateLimited):
            limits.check(key, 1)
    finally:
        store.close()


# -- response cache --------------------------------------------------------------------------------------------
def test_cache_is_shared_expires_and_stays_bounded(store_url):  # noqa: F811
    clock = Clock(1000.0)
    a, b = open_store(store_url), open_store(store_url)
    try:
        writer = SharedResponseCache(a, max_bytes=100, ttl_s=60, clock=clock)
        reader = SharedResponseCache(b, max_bytes=100, ttl_s=60, clock=clock)
        writer.put("k", {"data": [0.5, 1]}, cost_nusd=7)
        hit = reader.get("k")
        assert (hit.body, hit.cost_nusd, hit.size) == ({"data": [0.5, 1]}, 7, len(b'{"data":[0.5,1]}'))
        clock.t = 1059.9
        assert reader.get("k") is not None
        clock.t = 1060.0
        assert reader.get("k") is None
        for i, name in enumerate(["old", "mid", "new"]):  # 3 bodies of 40 bytes, 100 bytes allowed
            clock.t = 2000.0 + i
            writer.put(name, {"x": "y" * 32}, cost_nusd=i)
        assert [reader.get(n) is not None for n in ("old", "mid", "new")] == [False, True, True]
        writer.put("huge", {"x": "y" * 200}, cost_nusd=1)  # larger than the whole cache: not kept
        assert reader.get("huge") is None and reader.get("new") is not None
    finally:
        a.close()
        b.close()


def test_cache_bodies_carry_numpy_values(store_url):  # noqa: F811
    np = pytest.importorskip("numpy")
    store = open_store(store_url)
    try:
        cache = SharedResponseCache(store, max_bytes=1 << 20, ttl_s=60)
        cache.put("e", {"embedding": np.array([0.25, 0.5], dtype=np.float32)}, cost_nusd=3)
        assert cache.get("e").body == {"embedding": [0.25, 0.5]}
    finally:
        store.close()


# -- SQLite migrations -----------------------------------------------------------------------------------------
def test_an_old_sqlite_file_is_upgraded_with_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO keys VALUES ('k1', 'h', ?, 0, NULL)", (KeyPolicy(team="t", budget_tokens_total=50)
                                                                    .model_dump_json(),))
    db.commit()
    db.close()
    store = open_store(path)
    try:
        store.append([LedgerRow("r1", NOON, NOON + 1, "embeddings", "m", key_id="k1", charged_tokens=20)])
        assert store.get_key("k1").policy.budget_tokens_total == 50
        book = SharedBudgetBook(store, UTC, clock=Clock(NOON))
        book.reserve(store.get_key("k1"), 0, 30)  # the new tables exist, and the window starts at 20
        with pytest.raises(BudgetExceeded):
            book.reserve(store.get_key("k1"), 0, 1)
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
    assert db.execute("SELECT request_id FROM ledger").fetchall() == [("r1",)]
    db.close()


def test_a_newer_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(LeaninferError, match="newer than this leaninfer knows"):
        open_store(path)


def test_budget_names_carry_their_unit(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        with pytest.raises(ValueError, match="starts with one of usd_, tokens_"):
            store.reserve_budget("k1", [("euros_day", 0.0, 10, 1)])
    finally:
        store.close()


def test_no_budget_no_store_call(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        res = SharedBudgetBook(store, UTC).reserve(KeyRecord("k9", "h", KeyPolicy(team="t"), 0.0), 10, 10)
        assert res.windows == {} and SharedBudgetBook(store, UTC).settle(res, 5, 5) == (5, 5)
    finally:
        store.close()
