"""The PostgreSQL store against a real local server (a fresh database per test; skipped with the reason when
none answers): its migrations, and parity with the SQLite store on keys, ledger rows and spend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.postgres_store import MIGRATIONS
from leaninfer.finops.stores import open_store

from .store_fixtures import postgres_database

DAY1 = 1740787200.0

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
def pg_url():
    with postgres_database() as url:
        yield url


def test_same_rows_give_the_same_answers_as_sqlite(pg_url, tmp_path):
    stores = [open_store(tmp_path / "ledger.db"), open_store(pg_url)]
    try:
        for s in stores:
            s.append(ROWS[:2])
            s.append(ROWS[2:])
            s.append([ROWS[1]])  # a retried write replaces, never duplicates
        sqlite, pg = stores
        assert pg.rows() == sqlite.rows() == ROWS
        assert pg.rows(since=DAY1 + 60.5, until=DAY1 + 120.0) == sqlite.rows(since=DAY1 + 60.5, until=DAY1 + 120.0)
        assert [r.request_id for r in pg.rows(since=DAY1 + 60.5, until=DAY1 + 120.0)] == ["r2", "r3"]
        for key_id, since in [("k1", 0.0), ("k1", DAY1 + 2), ("k2", 0.0), ("nobody", 0.0)]:
            assert pg.spend(key_id, since) == sqlite.spend(key_id, since)
        assert pg.spend("k1", 0.0) == (3_000_000_000_900, 130)
    finally:
        for s in stores:
            s.close()


def test_keys_behave_as_in_sqlite(pg_url, tmp_path):
    stores = [open_store(tmp_path / "keys.db"), open_store(pg_url)]
    try:
        for s in stores:
            s.add_key(KeyRecord("k1", "h1", KeyPolicy(team="search", budget_usd_day=5.0, rpm=60), 1.5))
            s.add_key(KeyRecord("k2", "h2", KeyPolicy(team="ads"), 2.5))
            assert s.revoke_key("k2", 3.0) and not s.revoke_key("k2", 4.0)
            assert s.set_key_hash("k1", "h1b") and not s.set_key_hash("k2", "x")
        sqlite, pg = stores
        assert pg.list_keys() == sqlite.list_keys() and [k.key_id for k in pg.list_keys()] == ["k1"]
        assert pg.list_keys(include_revoked=True) == sqlite.list_keys(include_revoked=True)
        assert pg.get_key("k1") == sqlite.get_key("k1") and pg.get_key("k1").key_hash == "h1b"
        assert pg.get_key("nope") is None
    finally:
        for s in stores:
            s.close()


def test_an_old_schema_is_migrated_and_keeps_its_rows(pg_url):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg_url, autocommit=True) as db:  # what a first release of this store created
        db.execute(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO ledger (request_id, created_at, finished_at, endpoint, requested_model, served_model, "
                   "variant_hash, key_id, team, workflow, tags, input_tokens, output_tokens, cached_tokens, "
                   "charged_tokens, queue_s, duration_s, busy_s, cost_input_nusd, cost_output_nusd, cost_nusd, "
                   "price_basis, reserved_nusd, reserved_tokens, status, error_class, cache, cache_saved_nusd, "
                   "route, routing_saved_nusd) VALUES ('old', 5.0, 6.0, 'embeddings', 'm', 'm', '', 'k1', 't', '', "
                   "'{}', 1, 0, 0, 7, 0, 1, 0.5, 0, 0, 9, '', 0, 0, 200, '', 'off', 0, '', 0)")
    store = open_store(pg_url)
    try:
        assert store.schema_version() == len(MIGRATIONS) == 2
        assert [r.request_id for r in store.rows()] == ["old"] and store.spend("k1", 0.0) == (9, 7)
        store.reserve_budget("k1", [("tokens_total", 0.0, 137, 130)])  # migration 2's table, from the old row's 7
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (7, 130)}
        store.append(ROWS)
    finally:
        store.close()
    again = open_store(pg_url)  # opening a current schema changes nothing
    try:
        assert again.schema_version() == 2 and again.rows()[1:] == ROWS
    finally:
        again.close()


def test_rows_written_before_a_migration_survive_it(pg_url):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO keys VALUES ('k1', 'h', %s, 1.0, NULL)", (KeyPolicy(team="t").model_dump_json(),))
    store = open_store(pg_url)
    try:
        assert store.schema_version() == 2
        assert store.get_key("k1").policy.team == "t"
    finally:
        store.close()


def test_a_newer_schema_is_refused(pg_url):
    open_store(pg_url).close()
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(LeaninferError, match="schema version 99, newer than this leaninfer knows"):
        open_store(pg_url)


def test_an_unreachable_server_is_a_clear_error():
    pytest.importorskip("psycopg")
    url = "postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2"
    with pytest.raises(LeaninferError, match="can't connect to PostgreSQL"):
        open_store(url)


def test_opening_stores_does_not_import_psycopg():
    code = "import sys, leaninfer.finops.stores as s; assert 'postgresql' in s.STORES; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
