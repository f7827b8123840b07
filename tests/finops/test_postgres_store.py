"""What only the PostgreSQL store does (a fresh database per test on the local server; skipped with the reason
when none answers): migrating databases of earlier releases, a clear error when the server is unreachable,
and NUL, which TEXT can't hold. The behaviour it shares with SQLite is in test_store_contract.py and
test_state_contract.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.keys import KeyPolicy
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.store import open_store
from leaninfer.finops.store.postgres import PostgresDialect
from leaninfer.finops.store.schema import migrations

from .store_fixtures import postgres_database

OLD_ROW = ("INSERT INTO ledger (request_id, created_at, finished_at, endpoint, requested_model, served_model, "
           "variant_hash, key_id, team, workflow, tags, input_tokens, output_tokens, cached_tokens, "
           "charged_tokens, queue_s, duration_s, busy_s, cost_input_nusd, cost_output_nusd, cost_nusd, "
           "price_basis, reserved_nusd, reserved_tokens, status, error_class, cache, cache_saved_nusd, "
           "route, routing_saved_nusd) VALUES ('old', 5.0, 6.0, 'embeddings', 'm', 'm', '', 'k1', 't', '', "
           "'{}', 1, 0, 0, 7, 0, 1, 0.5, 0, 0, 9, '', 0, 0, 200, '', 'off', 0, '', 0)")


@pytest.fixture
def pg_url():
    with postgres_database() as url:
        yield url


def _old_database(url: str, version: int) -> None:
    """What release ``version`` of the store created (migrations are only appended: the same texts)."""
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as db:
        for script in migrations(PostgresDialect.types)[:version]:
            db.execute(script)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        db.execute(OLD_ROW)
        db.execute("INSERT INTO keys VALUES ('k1', 'h', %s, 1.0, NULL)", (KeyPolicy(team="t").model_dump_json(),))


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_schema_is_migrated_and_keeps_its_rows(pg_url, version):
    _old_database(pg_url, version)
    store = open_store(pg_url)
    try:
        assert store.schema_version() == len(migrations(PostgresDialect.types)) == 9
        assert [r.request_id for r in store.rows()] == ["old"] and store.spend("k1", 0.0) == (9, 7)
        assert store.get_key("k1").policy.team == "t"
        store.reserve("k1", [("tokens_total", 0.0, 137, 130)], None)  # from the old row's 7
        assert store.budget_used("k1", [("tokens_total", 0.0)]) == {"tokens_total": (7, 130)}
    finally:
        store.close()
    again = open_store(pg_url)  # opening a current schema changes nothing
    try:
        assert again.schema_version() == 9 and again.spend("k1", 0.0) == (9, 7)
    finally:
        again.close()


def test_replicas_starting_at_once_migrate_once(pg_url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(pg_url), range(4)))
    try:
        assert {s.schema_version() for s in stores} == {len(migrations(PostgresDialect.types))}
    finally:
        for s in stores:
            s.close()


def test_an_unreachable_server_is_a_clear_error():
    pytest.importorskip("psycopg")
    url = "postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2"
    with pytest.raises(LeaninferError, match="can't connect to PostgreSQL"):
        open_store(url)


def test_a_row_with_nul_fails_alone(pg_url):
    """TEXT can't hold NUL: such a row is refused, in its own transaction, and the store stays usable."""
    store = open_store(pg_url)
    try:
        with pytest.raises(Exception, match="NUL"):
            store.append([LedgerRow("ok", 1.0, 2.0, "embeddings", "m"),
                          LedgerRow("nul", 1.0, 2.0, "embeddings", "m", workflow="\x00")])
        store.append([LedgerRow("ok", 1.0, 2.0, "embeddings", "m")])
        assert [r.request_id for r in store.rows()] == ["ok"]
    finally:
        store.close()
