"""The ledger's reads and writes at scale, for :class:`~.sql.SQLStore`: the same SQL text for SQLite and
PostgreSQL (``?`` placeholders, filled in by the dialect's ``prepare``).

- **Append** keeps the daily rollups (:mod:`..rollups`) and the spend buckets (:mod:`..spend_buckets`) current in
  the rows' own transaction: the rows a retried write replaces are read first (by primary key) and their share
  taken back, so a rollup or a bucket always equals the sum of its rows.
- **Grouped sums** run in SQL: ``GROUP BY`` the asked fields, and the report's periods joined as a small
  ``VALUES`` table of ``[lo, hi)`` bounds, so that a day is the report zone's own day (DST included) on both
  engines. Durations of answered requests come back as bare floats (for an exact p95), not as rows.
- **Pages** of rows in ``(created_at, request_id)`` order, each page a short read (export, retention).
- **Prune**: one bounded batch per transaction, oldest first, and the horizon below which rows are gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from .. import spend_buckets
from ..ledger import LEDGER_FIELDS, LedgerRow
from ..rollups import COLUMNS, DIMS, HIST, SUMS, deltas
from .bucket_sql import ADD as BUCKET_ADD
from .ledger_schema import MODEL_OF_ROW, TEAM_COLUMNS

# a group-by name as a raw-row expression (the rollup table has a column of each name)
RAW_GROUP = {"key_id": "COALESCE(key_id, '')", "team": "team", "workflow": "workflow", "model": MODEL_OF_ROW,
             "endpoint": "endpoint"}
RAW_GROUP["user"] = "end_user"
ROLLUP_GROUPS = frozenset(RAW_GROUP) - {"user"}  # what the daily rollups have a column of
_RAW_SUMS = ("COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_nusd), 0), "
             "COALESCE(SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END), 0), COALESCE(SUM(cache_saved_nusd), 0), "
             "COALESCE(SUM(routing_saved_nusd), 0), COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0)")
# figures in the order both sum queries give them
FIGURES = ("requests", "input_tokens", "output_tokens", "cost_nusd", "cache_hits", "cache_saved_nusd",
           "routing_saved_nusd", "errors")
_ROLLUP_SUMS = ", ".join(f"COALESCE(SUM({c}), 0)" for c in (*FIGURES, *HIST))
_FIELDS = ", ".join(LEDGER_FIELDS)
PAGE_ROWS = 5000
ID_CHUNK = 500  # request ids per lookup of replaced rows

ROLLUP_ADD = (f"INSERT INTO ledger_daily ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
              f"ON CONFLICT ({', '.join(DIMS)}) DO UPDATE SET "
              + ", ".join(f"{c} = ledger_daily.{c} + excluded.{c}" for c in (*SUMS, *HIST)))

TEAM_ADD = (f"INSERT INTO ledger_team_daily ({', '.join(TEAM_COLUMNS)}) VALUES ({', '.join('?' * len(TEAM_COLUMNS))}) "
            "ON CONFLICT (day, team) DO UPDATE SET "
            + ", ".join(f"{c} = ledger_team_daily.{c} + excluded.{c}" for c in (*SUMS, *HIST)))
TEAM_GROUPS = frozenset({"team"})  # the reports ledger_team_daily answers


def by_team(changes: list[tuple]) -> list[tuple]:
    """The team-level rollup rows (``TEAM_COLUMNS`` order) of full rollup ``changes``, summed, in key order."""
    acc: dict[tuple, list[int]] = {}
    for c in changes:
        v = acc.setdefault((c[0], c[1]), [0] * (len(c) - len(DIMS)))
        for i, x in enumerate(c[len(DIMS):]):
            v[i] += x
    return [(*k, *v) for k, v in sorted(acc.items()) if any(v)]


def row_of(values) -> LedgerRow:
    return LedgerRow(**{k: json.loads(v) if k == "tags" else v for k, v in zip(LEDGER_FIELDS, values, strict=True)})


def _range(column: str, since: float | None, until: float | None) -> tuple[str, list]:
    where, args = [], []
    if since is not None:
        where.append(f"{column} >= ?")
        args.append(since)
    if until is not None:
        where.append(f"{column} < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(where)) if where else "", args


class LedgerSQL:
    """The statements above, bound to a dialect (its ``prepare`` and ``{real}`` type)."""

    def __init__(self, dialect):
        self.dialect = dialect
        self.real = dialect.types["real"]
        self.rollup_add = dialect.prepare(ROLLUP_ADD)
        self.team_add = dialect.prepare(TEAM_ADD)
        self.bucket_add = dialect.prepare(BUCKET_ADD)

    def q(self, sql: str) -> str:
        return self.dialect.prepare(sql)

    # -- writes ----------------------------------------------------------------------------------------------------
    def append(self, db, rows: list[LedgerRow], append_sql: str, values: list[tuple]) -> None:
        """Inside the caller's write transaction: the rows, and their rollups' deltas."""
        ids = [r.request_id for r in rows]
        replaced: list[LedgerRow] = []
        for i in range(0, len(ids), ID_CHUNK):
            chunk = ids[i:i + ID_CHUNK]
            sql = self.q(f"SELECT {_FIELDS} FROM ledger WHERE request_id IN ({', '.join('?' * len(chunk))})")
            replaced += [row_of(v) for v in db.execute(sql, chunk).fetchall()]
        if len(set(ids)) != len(ids):  # one id twice in a batch: the last one stays, as the upsert does
            last = {r.request_id: r for r in rows}
            rows = list(last.values())
        cur = db.cursor()
        try:
            cur.executemany(append_sql, values)
            # in key order: two servers' batches lock shared rollup rows in one order (no deadlock)
            changes = sorted(deltas(rows, replaced), key=lambda c: c[:len(DIMS)])
            if changes:
                cur.executemany(self.rollup_add, changes)
                cur.executemany(self.team_add, by_team(changes))
            spent = spend_buckets.deltas(rows, replaced)  # in key order too
            if spent:
                cur.executemany(self.bucket_add, spent)
        finally:
            cur.close()

    def prune(self, db, before: float, limit: int) -> int:
        """Inside a write transaction: raise the horizon to ``before`` and delete up to ``limit`` of the oldest
        rows under it; how many went."""
        db.execute(self.q("DELETE FROM ledger_pruned WHERE horizon < ?"), (before,))
        if db.execute(self.q("SELECT COUNT(*) FROM ledger_pruned")).fetchone()[0] == 0:
            db.execute(self.q("INSERT INTO ledger_pruned (horizon) VALUES (?)"), (before,))
        return db.execute(self.q("DELETE FROM ledger WHERE request_id IN (SELECT request_id FROM ledger "
                                 "WHERE created_at < ? ORDER BY created_at LIMIT ?)"), (before, limit)).rowcount

    # -- reads -----------------------------------------------------------------------------------------------------
    def horizon(self, db) -> float:
        return float(db.execute("SELECT COALESCE(MAX(horizon), 0) FROM ledger_pruned").fetchone()[0])

    def time_span(self, db, since: float | None, until: float | None) -> tuple[float, float] | None:
        where, args = _range("created_at", since, until)
        lo, hi = db.execute(self.q(f"SELECT MIN(created_at), MAX(created_at) FROM ledger{where}"), args).fetchone()
        return None if lo is None else (float(lo), float(hi))

    def _periods(self, periods: Sequence[tuple[float, float]] | None) -> tuple[str, str, str, list]:
        """(WITH clause, join, group column, args) of the periods table, or nothing."""
        if not periods:
            return "", "", "", []
        first = f"(CAST(? AS INTEGER), CAST(? AS {self.real}), CAST(? AS {self.real}))"
        values = ", ".join([first] + ["(?, ?, ?)"] * (len(periods) - 1))
        args = [v for i, (lo, hi) in enumerate(periods) for v in (i, lo, hi)]
        return (f"WITH per (i, lo, hi) AS (VALUES {values}) ",
                " JOIN per ON ledger.created_at >= per.lo AND ledger.created_at < per.hi", "per.i", args)

    def raw_sums(self, db, by: Sequence[str], since, until, periods) -> list[tuple]:
        """``(*group values, period index or nothing, *FIGURES)`` per group, summed in SQL over raw rows."""
        with_, join, pcol, pargs = self._periods(periods)
        cols = [RAW_GROUP[b] for b in by] + ([pcol] if pcol else [])
        where, args = _range("ledger.created_at", since, until)
        group = f" GROUP BY {', '.join(cols)}" if cols else ""
        sql = f"{with_}SELECT {', '.join([*cols, _RAW_SUMS])} FROM ledger{join}{where}{group}"
        return db.execute(self.q(sql), [*pargs, *args]).fetchall()

    def raw_latencies(self, db, by: Sequence[str], since, until, periods) -> Iterator[tuple]:
        """``(*group values, period index or nothing, duration_s)`` of each answered request."""
        with_, join, pcol, pargs = self._periods(periods)
        cols = [RAW_GROUP[b] for b in by] + ([pcol] if pcol else [])
        where, args = _range("ledger.created_at", since, until)
        where = (where + " AND" if where else " WHERE") + " status < 400"
        sql = f"{with_}SELECT {', '.join([*cols, 'duration_s'])} FROM ledger{join}{where}"
        cur = db.execute(self.q(sql), [*pargs, *args])
        while batch := cur.fetchmany(PAGE_ROWS):
            yield from batch

    def rollup_sums(self, db, by: Sequence[str], by_day: bool, since, until) -> list[tuple]:
        """``(*group values, day or nothing, *FIGURES, *histogram)`` per group, from the daily rollups."""
        cols = [*by, *(["day"] if by_day else [])]
        where, args = _range("day", since, until)
        group = f" GROUP BY {', '.join(cols)}" if cols else ""
        table = "ledger_team_daily" if set(by) <= TEAM_GROUPS else "ledger_daily"
        sql = f"SELECT {', '.join([*cols, _ROLLUP_SUMS])} FROM {table}{where}{group}"
        return db.execute(self.q(sql), args).fetchall()

    def rollup_requests(self, db, since, until) -> int:
        where, args = _range("day", since, until)
        return int(db.execute(self.q(f"SELECT COALESCE(SUM(requests), 0) FROM ledger_team_daily{where}"),
                              args).fetchone()[0])

    def page(self, db, since: float | None, until: float | None, after: tuple[float, str] | None,
             limit: int = PAGE_ROWS) -> list[LedgerRow]:
        """Up to ``limit`` rows in ``(created_at, request_id)`` order, after the row ``after`` names."""
        where, args = _range("created_at", since, until)
        if after is not None:
            where = (where + " AND" if where else " WHERE") + " (created_at, request_id) > (?, ?)"
            args += [after[0], after[1]]
        sql = f"SELECT {_FIELDS} FROM ledger{where} ORDER BY created_at, request_id LIMIT ?"
        return [row_of(v) for v in db.execute(self.q(sql), [*args, limit]).fetchall()]
