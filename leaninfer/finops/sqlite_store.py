"""The default store: one SQLite file in WAL mode.

WAL with ``synchronous=NORMAL``: a commit is in the WAL file when ``append`` returns, so a killed process
(``kill -9``) loses nothing it committed; only a power cut can drop the last transactions (``FULL`` would
fsync each commit). Readers (``leaninfer usage`` while the server runs) don't block the writer.
The schema moves forward by ``PRAGMA user_version`` through :data:`MIGRATIONS`, each applied once.

Shared state (budgets, rate counters, the cache index; see :mod:`.store`) is written in ``BEGIN IMMEDIATE``
transactions: the write lock is taken before the first read, so the check and the update of a reservation
are one step for every process on this host that opens the same file (SQLite's file locks serialize them).
Across hosts, file locking on network file systems is not to be trusted: use PostgreSQL there.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from pathlib import Path

from ..errors import LeaninferError
from .keys import KeyPolicy, KeyRecord
from .ledger import LEDGER_FIELDS, LedgerRow
from .store import (
    RECLAIMED_HOLD_KEEP_S,
    BudgetAsk,
    BudgetCharge,
    BudgetRefused,
    RateAsk,
    RateResult,
    budget_unit,
    sliding_window,
)

MIGRATIONS = [
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL, policy TEXT NOT NULL,
        created_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY, created_at REAL NOT NULL, finished_at REAL NOT NULL,
        endpoint TEXT NOT NULL, requested_model TEXT NOT NULL, served_model TEXT NOT NULL,
        variant_hash TEXT NOT NULL, key_id TEXT, team TEXT NOT NULL, workflow TEXT NOT NULL, tags TEXT NOT NULL,
        input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
        charged_tokens INTEGER NOT NULL,
        queue_s REAL NOT NULL, ttft_s REAL, duration_s REAL NOT NULL, busy_s REAL NOT NULL,
        cost_input_nusd INTEGER NOT NULL, cost_output_nusd INTEGER NOT NULL, cost_nusd INTEGER NOT NULL,
        price_basis TEXT NOT NULL, reserved_nusd INTEGER NOT NULL, reserved_tokens INTEGER NOT NULL,
        status INTEGER NOT NULL, error_class TEXT NOT NULL, cache TEXT NOT NULL,
        cache_saved_nusd INTEGER NOT NULL, route TEXT NOT NULL, fp32_cost_nusd INTEGER,
        routing_saved_nusd INTEGER NOT NULL);
    CREATE INDEX ledger_key_time ON ledger (key_id, created_at);
    CREATE INDEX ledger_team_time ON ledger (team, created_at);
    CREATE INDEX ledger_time ON ledger (created_at);
    """,
    # 2: state shared by the processes that open the same file (see leaninfer.finops.store)
    """
    CREATE TABLE budget_usage (
        key_id TEXT NOT NULL, budget TEXT NOT NULL, window_start REAL NOT NULL,
        settled INTEGER NOT NULL, reserved INTEGER NOT NULL,
        PRIMARY KEY (key_id, budget, window_start));
    CREATE TABLE budget_holds (
        hold_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, items TEXT NOT NULL, expires_at REAL NOT NULL,
        reclaimed INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX budget_holds_expiry ON budget_holds (expires_at);
    CREATE TABLE rate_counters (
        key_id TEXT NOT NULL, name TEXT NOT NULL, window_start REAL NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (key_id, name, window_start));
    CREATE TABLE response_cache (
        key TEXT PRIMARY KEY, body BLOB NOT NULL, cost_nusd INTEGER NOT NULL, size INTEGER NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL);
    CREATE INDEX response_cache_age ON response_cache (created_at);
    CREATE INDEX response_cache_expiry ON response_cache (expires_at);
    """,
]

_SPEND_COLUMN = {"usd": "cost_nusd", "tokens": "charged_tokens"}

_INSERT = f"INSERT OR REPLACE INTO ledger ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join('?' * len(LEDGER_FIELDS))})"


class SQLiteStore:
    """Keys and ledger in one SQLite file. Thread-safe: two connections, each used under its own lock — one
    for writes, one for reads, so that a request's key lookup on the event loop never waits behind the
    ledger writer's commit (WAL lets a reader run beside a writer)."""

    def __init__(self, url: str):
        self.url = url
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
        self.path = Path(path)
        if self.path.is_dir():
            raise LeaninferError(f"store {url!r} is a directory; give a file path such as leaninfer.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.DatabaseError as e:
            raise LeaninferError(f"store {url!r} is not a leaninfer SQLite store: {e}") from None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise LeaninferError(f"store {self.url!r} has schema version {version}, newer than this leaninfer "
                                 f"knows ({len(MIGRATIONS)}): upgrade leaninfer")
        for i in range(version, len(MIGRATIONS)):
            # one transaction per migration, with its version bump: a crash leaves the old or the new schema
            self._db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[i]} PRAGMA user_version = {i + 1}; COMMIT;")

    # -- keys -------------------------------------------------------------------------------------------------
    def add_key(self, record: KeyRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?)",
                             (record.key_id, record.key_hash, record.policy.model_dump_json(), record.created_at,
                              record.revoked_at))

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._read_lock:
            row = self._reader.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        sql = "SELECT * FROM keys" + ("" if include_revoked else " WHERE revoked_at IS NULL") + " ORDER BY created_at"
        with self._read_lock:
            return [_key(r) for r in self._reader.execute(sql).fetchall()]

    def revoke_key(self, key_id: str, at: float) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                                   (at, key_id))
        return cur.rowcount == 1

    def set_key_hash(self, key_id: str, key_hash: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE keys SET key_hash = ? WHERE key_id = ? AND revoked_at IS NULL",
                                   (key_hash, key_id))
        return cur.rowcount == 1

    # -- ledger -----------------------------------------------------------------------------------------------
    def append(self, rows: list[LedgerRow]) -> None:
        values = [tuple(json.dumps(v, sort_keys=True) if k == "tags" else v for k, v in r.to_record().items())
                  for r in rows]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        with self._read_lock:
            nusd, tokens = self._reader.execute(
                "SELECT COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_tokens), 0) "
                "FROM ledger WHERE key_id = ? AND created_at >= ?", (key_id, since)).fetchone()
        return int(nusd), int(tokens)

    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]:
        sql, args = f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= ?", [since or 0.0]
        if until is not None:
            sql, args = sql + " AND created_at < ?", [*args, until]
        with self._read_lock:
            found = self._reader.execute(sql + " ORDER BY created_at", args).fetchall()
        return [LedgerRow(**{k: json.loads(v) if k == "tags" else v for k, v in zip(LEDGER_FIELDS, r, strict=True)})
                for r in found]

    # -- shared state: every write in a BEGIN IMMEDIATE transaction ---------------------------------------------
    @contextlib.contextmanager
    def _immediate(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def reserve_budget(self, key_id: str, items: list[BudgetAsk], hold_id: str | None = None,
                       expires_at: float | None = None) -> None:
        with self._immediate() as db:
            for budget, start, limit, asked in items:
                where = (key_id, budget, start)
                taken = db.execute("UPDATE budget_usage SET reserved = reserved + ? WHERE key_id = ? AND budget = ? "
                                   "AND window_start = ? AND settled + reserved + ? <= ? RETURNING reserved",
                                   (asked, *where, asked, limit)).fetchone()
                if taken is None:
                    used = db.execute("SELECT settled + reserved FROM budget_usage WHERE key_id = ? AND budget = ? "
                                      "AND window_start = ?", where).fetchone()
                    if used is None:  # a new window: it starts from the ledger's spend since its start
                        column = _SPEND_COLUMN[budget_unit(budget)]
                        settled = db.execute(f"SELECT COALESCE(SUM({column}), 0) FROM ledger "
                                             "WHERE key_id = ? AND created_at >= ?", (key_id, start)).fetchone()[0]
                        if settled + asked <= limit:
                            db.execute("INSERT INTO budget_usage VALUES (?, ?, ?, ?, ?)", (*where, settled, asked))
                            continue
                        used = (settled,)
                    raise BudgetRefused(budget, start, limit, int(used[0]), asked)  # rolls back every item
            if hold_id is not None:
                db.execute("INSERT INTO budget_holds (hold_id, key_id, items, expires_at) VALUES (?, ?, ?, ?)",
                           (hold_id, key_id, json.dumps([[b, s, a] for b, s, _, a in items]),
                            float("inf") if expires_at is None else expires_at))

    def settle_budget(self, key_id: str, items: list[BudgetCharge], hold_id: str | None = None) -> None:
        with self._immediate() as db:
            reclaimed = False
            if hold_id is not None:
                hold = db.execute("DELETE FROM budget_holds WHERE hold_id = ? RETURNING reclaimed",
                                  (hold_id,)).fetchone()
                if hold is None:  # settled already
                    return
                reclaimed = bool(hold[0])
            for budget, start, reserved, charged in items:
                db.execute("UPDATE budget_usage SET reserved = MAX(reserved - ?, 0), settled = settled + ? "
                           "WHERE key_id = ? AND budget = ? AND window_start = ?",
                           (0 if reclaimed else reserved, charged, key_id, budget, start))

    def reclaim_budget_holds(self, now: float) -> int:
        with self._immediate() as db:
            expired = db.execute("UPDATE budget_holds SET reclaimed = 1 WHERE expires_at < ? AND reclaimed = 0 "
                                 "RETURNING key_id, items", (now,)).fetchall()
            for key_id, items in expired:
                for budget, start, amount in json.loads(items):
                    db.execute("UPDATE budget_usage SET reserved = MAX(reserved - ?, 0) "
                               "WHERE key_id = ? AND budget = ? AND window_start = ?", (amount, key_id, budget, start))
            db.execute("DELETE FROM budget_holds WHERE reclaimed = 1 AND expires_at < ?", (now - RECLAIMED_HOLD_KEEP_S,))
        return len(expired)

    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        out = {}
        with self._read_lock:
            for budget, start in windows:
                row = self._reader.execute("SELECT settled, reserved FROM budget_usage WHERE key_id = ? AND budget = ? "
                                           "AND window_start = ?", (key_id, budget, start)).fetchone()
                if row is None:  # not touched yet: what its row will start from
                    column = _SPEND_COLUMN[budget_unit(budget)]
                    row = (self._reader.execute(f"SELECT COALESCE(SUM({column}), 0) FROM ledger WHERE key_id = ? "
                                                "AND created_at >= ?", (key_id, start)).fetchone()[0], 0)
                out[budget] = (int(row[0]), int(row[1]))
        return out

    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        start = math.floor(now / window_s) * window_s
        with self._immediate() as db:
            results = []
            for name, quota, cost in items:
                counts = dict(db.execute("SELECT window_start, count FROM rate_counters WHERE key_id = ? AND name = ? "
                                         "AND window_start >= ?", (key_id, name, start - window_s)).fetchall())
                results.append(sliding_window(counts.get(start - window_s, 0), counts.get(start, 0), start, window_s,
                                              now, quota, cost))
            if all(allowed for allowed, _, _ in results):
                for name, _, cost in items:
                    db.execute("INSERT INTO rate_counters VALUES (?, ?, ?, ?) ON CONFLICT (key_id, name, window_start) "
                               "DO UPDATE SET count = count + excluded.count", (key_id, name, start, cost))
                    db.execute("DELETE FROM rate_counters WHERE key_id = ? AND name = ? AND window_start < ?",
                               (key_id, name, start - window_s))
        return results

    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        with self._read_lock:
            row = self._reader.execute("SELECT body, cost_nusd FROM response_cache WHERE key = ? AND expires_at > ?",
                                       (key, now)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        with self._immediate() as db:
            db.execute("INSERT OR REPLACE INTO response_cache VALUES (?, ?, ?, ?, ?, ?)",
                       (key, body, cost_nusd, len(body), now, expires_at))
            db.execute("DELETE FROM response_cache WHERE expires_at <= ?", (now,))
            if db.execute("SELECT COALESCE(SUM(size), 0) FROM response_cache").fetchone()[0] > max_bytes:
                db.execute(_EVICT, (max_bytes,))

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()


# the oldest entries beyond the newest ones that fit in max_bytes
_EVICT = ("DELETE FROM response_cache WHERE key IN (SELECT key FROM (SELECT key, SUM(size) OVER "
          "(ORDER BY created_at DESC, key DESC) AS kept FROM response_cache) WHERE kept > ?)")


def _key(row) -> KeyRecord:
    key_id, key_hash, policy, created_at, revoked_at = row
    return KeyRecord(key_id, key_hash, KeyPolicy.model_validate_json(policy), created_at, revoked_at)
