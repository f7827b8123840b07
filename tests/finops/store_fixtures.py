"""Stores and States for the contract and shared-state tests: a throwaway SQLite file, or a throwaway database
on the local PostgreSQL server (created per test, dropped after; skipped with the reason when no server
answers), or this process's memory. Also the worker functions the multi-process tests spawn (they must be
importable by a fresh interpreter, so they live here and not in a conftest)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.budgets import BudgetBook, BudgetExceeded
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.rate_limits import RateLimited, RateLimits
from leaninfer.finops.store import Store, open_store
from leaninfer.finops.store.memory import MemoryState
from leaninfer.finops.store.ports import State

UTC = ZoneInfo("UTC")
DAY1 = 1740787200.0  # 2025-03-01T00:00:00Z
NOON = DAY1 + 12 * 3600

# the local server of the development machines (trust auth); LEANINFER_TEST_POSTGRES overrides
PG_ADMIN_URLS = [u for u in (os.environ.get("LEANINFER_TEST_POSTGRES"),
                             "postgresql://postgres@127.0.0.1:5432/postgres",
                             "postgresql://root@127.0.0.1:5432/postgres",
                             "postgresql:///postgres?host=/var/run/postgresql") if u]


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


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


@contextlib.contextmanager
def store_at(kind: str, tmp_path):
    """The URL of an empty store of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        yield str(tmp_path / "shared.db")
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A store URL of each kind, with nothing in it yet."""
    with store_at(request.param, tmp_path) as url:
        yield url


@dataclass
class Backend:
    """A State under test and the Store whose ledger it starts new budget windows from (the same object for
    SQL; a SQLite ledger beside a MemoryState)."""

    kind: str
    state: State
    ledger: Store
    url: str


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request, tmp_path):
    with store_at("sqlite" if request.param == "memory" else request.param, tmp_path) as url:
        store = open_store(url)
        try:
            state = MemoryState(spend=store.spend) if request.param == "memory" else store
            yield Backend(request.param, state, store, url)
        finally:
            store.close()


def policy_key(store_url: str | None = None, key_id: str = "k1", created_at: float = 0.0, **policy) -> KeyRecord:
    """A key of team "search" with ``policy``, added to the store at ``store_url`` when one is given."""
    record = KeyRecord(key_id, "hash-" + key_id, KeyPolicy(team="search", **policy), created_at)
    if store_url is not None:
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
    book = BudgetBook(store, UTC)
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
    limits = RateLimits(store, clock=lambda: now)
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


def claim_worker(url: str, owner: str, shared: bool, ready, done) -> None:
    """Claim the store (``shared`` or not), say so on ``ready`` ("ok" or the error), hold it until ``done``."""
    store = open_store(url)
    try:
        store.claim(owner, shared)
        ready.put("ok")
    except LeaninferError as e:
        ready.put(str(e))
    done.wait(120)
    store.close()


def hold_worker(url: str, owner: str, key: KeyRecord, tokens: int, ready) -> None:
    """Claim the store as a shared-state server, reserve ``tokens`` with a hold, say so, then wait to be
    killed (never settling)."""
    store = open_store(url)
    store.claim(owner, shared=True)
    BudgetBook(store, UTC, owner=owner, hold_s=3600).reserve(key, 0, tokens)
    ready.put("reserved")
    time.sleep(600)
