"""Stores for the shared-state tests: a throwaway SQLite file, or a throwaway database on the local PostgreSQL
server (created per test, dropped after; skipped with the reason when no server answers). Also the worker
functions the multi-process tests spawn (they must be importable by a fresh interpreter)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from zoneinfo import ZoneInfo

import pytest

from leaninfer.finops.budgets import BudgetExceeded
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.rate_limits import RateLimited
from leaninfer.finops.shared_budgets import SharedBudgetBook
from leaninfer.finops.shared_limits import SharedRateLimits
from leaninfer.finops.stores import open_store

# the local server of the development machines (trust auth); LEANINFER_TEST_POSTGRES overrides
PG_ADMIN_URLS = [u for u in (os.environ.get("LEANINFER_TEST_POSTGRES"),
                             "postgresql://postgres@127.0.0.1:5432/postgres",
                             "postgresql://root@127.0.0.1:5432/postgres",
                             "postgresql:///postgres?host=/var/run/postgresql") if u]


def _admin():
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install leaninfer[postgres]")
    errors = []
    for url in PG_ADMIN_URLS:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=3), url
        except psycopg.OperationalError as e:
            errors.append(f"{url}: {str(e).strip()}")
    pytest.skip(f"no PostgreSQL at {'; '.join(errors)}")


def _with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    return head.rpartition("/")[0] + "/" + name + (f"?{query}" if query else "")


@contextlib.contextmanager
def postgres_database():
    """The URL of a fresh, empty database, dropped on exit."""
    admin, url = _admin()
    name = f"leaninfer_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_database(url, name)
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A store URL of each kind, with nothing in it yet."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
    else:
        with postgres_database() as url:
            yield url


def policy_key(store_url: str, key_id: str = "k1", created_at: float = 0.0, **policy) -> KeyRecord:
    record = KeyRecord(key_id, "hash-" + key_id, KeyPolicy(team="search", **policy), created_at)
    store = open_store(store_url)
    try:
        store.add_key(record)
    finally:
        store.close()
    return record


# -- workers run in spawned processes ------------------------------------------------------------------------
def reserve_worker(url: str, key: KeyRecord, n: int, nusd: int, tokens: int, barrier, results) -> None:
    """``n`` reserve + settle of the full amount against one key; puts ``(ok, refused, charged_tokens)``."""
    store = open_store(url)
    book = SharedBudgetBook(store, ZoneInfo("UTC"))
    ok = refused = charged = 0
    barrier.wait()
    for _ in range(n):
        try:
            res = book.reserve(key, nusd, tokens)
        except BudgetExceeded:
            refused += 1
            continue
        time.sleep(0.001)  # the request runs; others reserve meanwhile
        charged += book.settle(res, nusd, tokens)[1]
        ok += 1
    store.close()
    results.put((ok, refused, charged))


def rate_worker(url: str, key: KeyRecord, n: int, now: float, barrier, results) -> None:
    """``n`` checks at a fixed time; puts ``(allowed, refused)``."""
    store = open_store(url)
    limits = SharedRateLimits(store, clock=lambda: now)
    allowed = refused = 0
    barrier.wait()
    for _ in range(n):
        try:
            limits.check(key, tokens=1)
            allowed += 1
        except RateLimited:
            refused += 1
    store.close()
    results.put((allowed, refused))
