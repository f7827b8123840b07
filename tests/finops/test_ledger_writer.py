"""The ledger writer's group commit: rows are durable when their futures resolve, and one row the store
refuses fails its own request only — the other rows of its batch are written and their requests answered."""

from __future__ import annotations

import asyncio

import pytest

from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.ledger_writer import LedgerWriteFailed, LedgerWriter
from leaninfer.finops.store import open_store

from .store_fixtures import postgres_database


class PoisonedStore:
    """A store whose append fails for any batch holding a row of workflow "poison"; counts the commits."""

    def __init__(self):
        self.written: list[str] = []
        self.commits = 0

    def append(self, rows):
        self.commits += 1
        if any(r.workflow == "poison" for r in rows):
            raise ValueError("poisoned row")
        self.written += [r.request_id for r in rows]


def _row(i: int, workflow: str = "") -> LedgerRow:
    return LedgerRow(f"r{i}", 1.0 + i, 2.0 + i, "embeddings", "m", key_id="k1", workflow=workflow, charged_tokens=1)


async def _record_all(writer: LedgerWriter, rows: list[LedgerRow]) -> list[BaseException | None]:
    futures = [writer.record(r) for r in rows]  # queued before the thread wakes: one batch, mostly
    return [None if not isinstance(x, BaseException) else x
            for x in await asyncio.gather(*futures, return_exceptions=True)]


def _outcomes(store, rows) -> list[BaseException | None]:
    writer = LedgerWriter(store)
    try:
        return asyncio.run(_record_all(writer, rows))
    finally:
        writer.close()


def test_one_poisoned_row_fails_only_its_request():
    store = PoisonedStore()
    rows = [_row(i, "poison" if i == 3 else "") for i in range(8)]
    outcomes = _outcomes(store, rows)
    assert [type(o).__name__ if o else None for o in outcomes] == [None] * 3 + ["LedgerWriteFailed"] + [None] * 4
    assert sorted(store.written) == sorted(f"r{i}" for i in range(8) if i != 3)
    failed = outcomes[3]
    assert isinstance(failed, LedgerWriteFailed) and failed.status == 503 and failed.request_id == "r3"
    assert isinstance(failed.__cause__, ValueError) and "r3" in failed.message


def test_a_good_batch_is_one_commit():
    store = PoisonedStore()
    writer = LedgerWriter(store)

    async def main():
        futures = [writer.record(_row(i)) for i in range(50)]
        await asyncio.gather(*futures)

    try:
        asyncio.run(main())
    finally:
        writer.close()
    assert len(store.written) == 50 and store.commits <= 2 and writer.rows_written == 50


def _sql_case(url: str, poison: dict):
    store = open_store(url)
    try:
        rows = [_row(i) for i in range(6)]
        rows[2] = LedgerRow("r2", 3.0, 4.0, "embeddings", "m", key_id="k1", **poison)
        outcomes = _outcomes(store, rows)
        assert [o is None for o in outcomes] == [True, True, False, True, True, True]
        assert isinstance(outcomes[2], LedgerWriteFailed)
        assert [r.request_id for r in store.rows()] == ["r0", "r1", "r3", "r4", "r5"]
        assert store.spend("k1", 0.0) == (0, 5)
    finally:
        store.close()


def test_sqlite_a_row_it_cannot_bind_fails_alone(tmp_path):
    _sql_case(str(tmp_path / "ledger.db"), {"team": object()})


def test_postgresql_a_row_with_nul_fails_alone():
    """The adversarial case of issue 20: a client's NUL in ``user`` failed every row of the batch."""
    pytest.importorskip("psycopg")
    with postgres_database() as url:
        _sql_case(url, {"workflow": "\x00"})
