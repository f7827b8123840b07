"""The Store contract on SQLite and PostgreSQL: keys, ledger rows and spend; opening, schema versions and
migrations from what earlier releases created; claims (one server without shared state per store, shared-state
replicas together) in one process and across processes; and a killed replica's holds released at start-up."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.store import open_store
from leaninfer.finops.store.schema import migrations, statements
from leaninfer.finops.store.sqlite import SQLiteDialect

from .store_fixtures import DAY1, claim_worker, hold_worker, policy_key, store_url  # noqa: F401 (a fixture)

ROWS = [
    LedgerRow("r1", DAY1 + 1.25, DAY1 + 2.5, "embeddings", "minilm", "minilm", "abc", "k1", "search", "rag",
              {"env": "prod", "feature": "qa"}, input_tokens=100, charged_tokens=100, queue_s=0.001, ttft_s=None,
              duration_s=1.25, busy_s=0.5, cost_input_nusd=3_000_000_000_123, cost_nusd=3_000_000_000_123,
              price_basis="engine-busy-seconds at $0.10/h", reserved_nusd=4_000_000_000_000, reserved_tokens=120),
    LedgerRow("r2", DAY1 + 60.5, DAY1 + 61.0, "chat.completions", "chat", "gpt2-int8", "def", "k1", "search",
              "chat", input_tokens=10, output_tokens=20, charged_tokens=30, ttft_s=0.0625, cost_nusd=777,
              cache="miss", route="chat", fp32_cost_nusd=999, routing_saved_nusd=222),
    LedgerRow("r3", DAY1 + 90.0, DAY1 + 90.0, "embeddings", "minilm", key_id="k2", team="ads", status=429,
              error_class="budget_exceeded"),
    LedgerRow("r4", DAY1 + 120.0, DAY1 + 121.0, "embeddings", "minilm", "minilm", key_id=None, team="-",
              cache="hit", cached_tokens=5, cache_saved_nusd=55),
]


@pytest.fixture
def store(store_url):  # noqa: F811
    s = open_store(store_url)
    yield s
    s.close()


# -- keys and the ledger ---------------------------------------------------------------------------------------
def test_keys(store):
    store.add_key(KeyRecord("k1", "h1", KeyPolicy(team="search", budget_usd_day=5.0, rpm=60), 1.5))
    store.add_key(KeyRecord("k2", "h2", KeyPolicy(team="ads"), 2.5))
    assert store.revoke_key("k2", 3.0) and not store.revoke_key("k2", 4.0) and not store.revoke_key("nope", 1.0)
    assert store.set_key_hash("k1", "h1b") and not store.set_key_hash("k2", "x")
    assert [k.key_id for k in store.list_keys()] == ["k1"]
    assert [(k.key_id, k.revoked_at) for k in store.list_keys(include_revoked=True)] == [("k1", None), ("k2", 3.0)]
    assert store.get_key("k1") == KeyRecord("k1", "h1b", KeyPolicy(team="search", budget_usd_day=5.0, rpm=60), 1.5)
    assert store.get_key("nope") is None


def test_ledger_rows_and_spend(store):
    store.append(ROWS[:2])
    store.append(ROWS[2:])
    store.append([ROWS[1]])  # a retried write replaces, never duplicates
    assert store.rows() == ROWS
    assert [r.request_id for r in store.rows(since=DAY1 + 60.5, until=DAY1 + 120.0)] == ["r2", "r3"]
    assert [r.request_id for r in store.rows(since=DAY1 + 90.0)] == ["r3", "r4"]
    assert store.spend("k1", 0.0) == (3_000_000_000_900, 130)
    assert store.spend("k1", DAY1 + 2) == (777, 30)
    assert store.spend("k2", 0.0) == (0, 0) and store.spend("nobody", 0.0) == (0, 0)


def test_a_failed_append_writes_none_of_its_rows(store):
    bad = LedgerRow("bad", DAY1, DAY1, "embeddings", "m", team=object())  # no database can bind an object
    with pytest.raises(Exception):  # noqa: B017 (the driver's own error)
        store.append([ROWS[0], bad])
    assert store.rows() == []
    store.append([ROWS[0]])
    assert store.rows() == [ROWS[0]]


# -- opening ---------------------------------------------------------------------------------------------------
def test_unknown_schemes_and_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(LeaninferError, match="schemes: postgres, postgresql, sqlite"):
        open_store("redis://localhost")
    with pytest.raises(LeaninferError, match="is a directory"):
        open_store(tmp_path)
    (tmp_path / "notes.txt").write_text("not a database, but long enough to have a header" * 40)
    with pytest.raises(LeaninferError, match="not a leaninfer SQLite store"):
        open_store(tmp_path / "notes.txt")
    s = open_store(f"sqlite:///{tmp_path / 'by-url.db'}")
    s.close()
    assert (tmp_path / "by-url.db").exists()


def test_opening_stores_does_not_import_psycopg(tmp_path):
    code = ("import sys, leaninfer.finops.store as s; assert 'postgresql' in s.STORES; "
            "s.open_store(sys.argv[1]).close(); print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ledger.db")], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_newer_schema_is_refused(store_url):  # noqa: F811
    open_store(store_url).close()
    if store_url.startswith("postgresql"):
        psycopg = pytest.importorskip("psycopg")
        with psycopg.connect(store_url, autocommit=True) as db:
            db.execute("UPDATE schema_version SET version = 99")
    else:
        db = sqlite3.connect(store_url)
        db.execute("PRAGMA user_version = 99")
        db.close()
    with pytest.raises(LeaninferError, match="schema version 99, newer than this leaninfer knows"):
        open_store(store_url)


def test_an_old_sqlite_file_is_upgraded_with_its_rows(tmp_path):
    """A file of the first release (schema 1): its keys and rows stay, the shared-state tables appear."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    for statement in statements(migrations(SQLiteDialect.types)[0]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO keys VALUES ('k1', 'h', ?, 0, NULL)",
               (KeyPolicy(team="t", budget_tokens_total=50).model_dump_json(),))
    db.commit()
    db.close()
    store = open_store(path)
    try:
        store.append([LedgerRow("r1", DAY1, DAY1 + 1, "embeddings", "m", key_id="k1", charged_tokens=20)])
        assert store.get_key("k1").policy.budget_tokens_total == 50
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (20, 0)}
        store.reserve("k1", [("tokens_total", 0.0, 50, 30)], None)
        assert store.schema_version() == len(migrations(SQLiteDialect.types))
        assert store.rows()[0].attempts == ""  # schema 4's column, on a row written after the upgrade
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(migrations(SQLiteDialect.types)) == 9
    assert db.execute("SELECT request_id FROM ledger").fetchall() == [("r1",)]
    db.close()


def test_a_schema_2_sqlite_file_keeps_its_holds_and_loses_its_cached_text(tmp_path):
    """Schema 2 (the release with shared state): a hold taken then still settles once; cache entries, which
    may hold generated text, are dropped."""
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    for script in migrations(SQLiteDialect.types)[:2]:
        for statement in statements(script):
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO budget_usage VALUES ('k1', 'tokens_total', 0.0, 0, 40)")
    db.execute("INSERT INTO budget_holds (hold_id, key_id, items, expires_at) VALUES "
               "('old', 'k1', '[[\"tokens_total\", 0.0, 40]]', 1e12)")
    db.execute("INSERT INTO response_cache VALUES ('c', X'7b7d', 1, 2, 0.0, 1e12)")
    db.commit()
    db.close()
    store = open_store(path)
    try:
        assert store.cache_get("c", 1.0) is None
        assert store.reclaim_orphans() == 0  # an ownerless hold waits for its expiry
        store.settle("k1", [("tokens_total", 0.0, 40, 25)], "old")
        store.settle("k1", [("tokens_total", 0.0, 40, 25)], "old")
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (25, 0)}
    finally:
        store.close()


# -- claims ----------------------------------------------------------------------------------------------------
def _claims(url: str, first: bool, second: bool) -> str:
    """Two stores in this process claim ``url`` (``True``: shared); "ok" or the second one's error."""
    a, b = open_store(url), open_store(url)
    try:
        a.claim("owner-a", first)
        try:
            b.claim("owner-b", second)
            return "ok"
        except LeaninferError as e:
            return str(e)
    finally:
        a.close()
        b.close()


def test_claims_in_one_process(store_url):  # noqa: F811
    assert _claims(store_url, True, True) == "ok"
    assert "without shared state" in _claims(store_url, False, False)
    assert "--shared-state" in _claims(store_url, False, True)
    assert "start this one with --shared-state too" in _claims(store_url, True, False)


def test_a_released_claim_can_be_taken_again(store_url):  # noqa: F811
    a, b = open_store(store_url), open_store(store_url)
    try:
        a.claim("owner-a", shared=False)
        a.release()
        b.claim("owner-b", shared=False)
        with pytest.raises(LeaninferError, match="without shared state"):
            a.claim("owner-a", shared=True)
        b.close()  # closing releases too
        a.claim("owner-a", shared=True)
    finally:
        a.close()
        b.close()


def test_an_owner_id_is_checked(store):
    with pytest.raises(ValueError, match="owner '../x'"):
        store.claim("../x", shared=True)


def test_claims_across_processes(store_url):  # noqa: F811
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=claim_worker, args=(store_url, "child", False, ready, done))
    child.start()
    try:
        assert ready.get(timeout=120) == "ok"
        for shared in (False, True):
            s = open_store(store_url)
            try:
                with pytest.raises(LeaninferError, match="another leaninfer server uses store .* without shared"):
                    s.claim("parent", shared)
            finally:
                s.close()
    finally:
        done.set()
        child.join(timeout=60)
    assert child.exitcode == 0
    s = open_store(store_url)
    try:
        s.claim("parent", shared=False)  # the child released it
    finally:
        s.close()


def test_a_killed_replica_holds_are_released_at_start_up(store_url):  # noqa: F811
    """A shared-state replica reserves, then is killed (-9) before it settles: the next server to start releases
    its reservation at once, not at the hold's expiry an hour later; a live replica's holds stay."""
    key = policy_key(store_url, budget_tokens_total=100)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    victims = [ctx.Process(target=hold_worker, args=(store_url, name, key, 30, ready)) for name in ("dies", "lives")]
    for p in victims:
        p.start()
    store = open_store(store_url)
    try:
        assert [ready.get(timeout=120) for _ in victims] == ["reserved", "reserved"]
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (0, 60)}
        store.claim("next", shared=True)
        assert store.reclaim_orphans() == 0  # both alive
        os.kill(victims[0].pid, signal.SIGKILL)
        victims[0].join(timeout=30)
        released, deadline = 0, time.monotonic() + 20
        while not released and time.monotonic() < deadline:  # PostgreSQL ends the dead client's session
            released = store.reclaim_orphans()
            time.sleep(0.05)
        assert released == 1
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (0, 30)}
        assert store.reclaim_orphans() == 0
    finally:
        for p in victims:
            p.kill()
            p.join(timeout=30)
        store.close()
