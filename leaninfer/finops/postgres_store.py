"""The store for several replicas or hosts: PostgreSQL through psycopg 3 (``pip install leaninfer[postgres]``).

``PostgresStore("postgresql://user@host/db")`` holds what :class:`~.sqlite_store.SQLiteStore` holds, with the
same semantics. Atomicity comes from row locks: a reservation is, per budget of the request and in one
transaction,

    UPDATE budget_usage SET reserved = reserved + %s
     WHERE key_id = %s AND budget = %s AND window_start = %s AND settled + reserved + %s <= %s
    RETURNING reserved

and a missing row (a new window) is first created from the ledger's spend with ``INSERT ... ON CONFLICT DO
NOTHING``. Under READ COMMITTED a concurrent UPDATE of the same row waits for the first to commit, then
re-checks its WHERE on the new row, so two replicas can't both take the last of a budget. Rows are locked in
one order (a key's budgets in its policy's order, rate-limit names sorted), so two requests never deadlock.

The schema moves forward through :data:`MIGRATIONS`, one transaction each, recorded in ``schema_version``
and serialized across replicas starting at once by an advisory lock. Thread-safe: one connection per thread
(a server calls the store from a bounded thread pool, so connections stay few); psycopg_pool would be one
more dependency for what ``threading.local`` does here.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading

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
        created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION);
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION NOT NULL,
        endpoint TEXT NOT NULL, requested_model TEXT NOT NULL, served_model TEXT NOT NULL,
        variant_hash TEXT NOT NULL, key_id TEXT, team TEXT NOT NULL, workflow TEXT NOT NULL, tags TEXT NOT NULL,
        input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL,
        charged_tokens BIGINT NOT NULL,
        queue_s DOUBLE PRECISION NOT NULL, ttft_s DOUBLE PRECISION, duration_s DOUBLE PRECISION NOT NULL,
        busy_s DOUBLE PRECISION NOT NULL,
        cost_input_nusd BIGINT NOT NULL, cost_output_nusd BIGINT NOT NULL, cost_nusd BIGINT NOT NULL,
        price_basis TEXT NOT NULL, reserved_nusd BIGINT NOT NULL, reserved_tokens BIGINT NOT NULL,
        status INTEGER NOT NULL, error_class TEXT NOT NULL, cache TEXT NOT NULL,
        cache_saved_nusd BIGINT NOT NULL, route TEXT NOT NULL, fp32_cost_nusd BIGINT,
        routing_saved_nusd BIGINT NOT NULL);
    CREATE INDEX ledger_key_time ON ledger (key_id, created_at);
    CREATE INDEX ledger_team_time ON ledger (team, created_at);
    CREATE INDEX ledger_time ON ledger (created_at);
    """,
    """
    CREATE TABLE budget_usage (
        key_id TEXT NOT NULL, budget TEXT NOT NULL, window_start DOUBLE PRECISION NOT NULL,
        settled BIGINT NOT NULL, reserved BIGINT NOT NULL,
        PRIMARY KEY (key_id, budget, window_start));
    CREATE TABLE budget_holds (
        hold_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, items TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL, reclaimed BOOLEAN NOT NULL DEFAULT FALSE);
    CREATE INDEX budget_holds_expiry ON budget_holds (expires_at);
    CREATE TABLE rate_counters (
        key_id TEXT NOT NULL, name TEXT NOT NULL, window_start DOUBLE PRECISION NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (key_id, name, window_start));
    CREATE TABLE response_cache (
        key TEXT PRIMARY KEY, body BYTEA NOT NULL, cost_nusd BIGINT NOT NULL, size BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX response_cache_age ON response_cache (created_at);
    CREATE INDEX response_cache_expiry ON response_cache (expires_at);
    """,
]

_MIGRATION_LOCK = 0x1EA41F  # pg_advisory_xact_lock key: one replica migrates, the others wait
_SPEND_COLUMN = {"usd": "cost_nusd", "tokens": "charged_tokens"}
_INSERT = (f"INSERT INTO ledger ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join(['%s'] * len(LEDGER_FIELDS))}) "
           f"ON CONFLICT (request_id) DO UPDATE SET "
           + ", ".join(f"{f} = excluded.{f}" for f in LEDGER_FIELDS if f != "request_id"))
_EVICT = ("DELETE FROM response_cache WHERE key IN (SELECT key FROM (SELECT key, SUM(size) OVER "
          "(ORDER BY created_at DESC, key DESC) AS kept FROM response_cache) AS t WHERE kept > %s)")


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise LeaninferError("a postgresql:// store needs psycopg: pip install leaninfer[postgres]") from None
    return psycopg


class PostgresStore:
    """Keys, ledger and shared state in a PostgreSQL database.

    Example:
        >>> store = PostgresStore("postgresql://postgres@127.0.0.1/leaninfer")   # doctest: +SKIP
        >>> store.reserve_budget("k1", [("usd_day", 1740787200.0, 5_000_000_000, 2_000)])
    """

    def __init__(self, url: str):
        self.url = url
        self._psycopg = _psycopg()
        self._local = threading.local()
        self._conns: list = []
        self._conns_lock = threading.Lock()
        self._migrate()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._psycopg.connect(self.url, autocommit=True)
            except self._psycopg.OperationalError as e:
                raise LeaninferError(f"store {self.url!r}: can't connect to PostgreSQL: {e}".strip()) from None
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _txn(self):
        conn = self._conn()
        with conn.transaction():
            yield conn

    def _migrate(self) -> None:
        while True:
            with self._txn() as db:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM schema_version").fetchone()
                version = 0 if row is None else row[0]
                if version > len(MIGRATIONS):
                    raise LeaninferError(f"store {self.url!r} has schema version {version}, newer than this "
                                         f"leaninfer knows ({len(MIGRATIONS)}): upgrade leaninfer")
                if version == len(MIGRATIONS):
                    return
                db.execute(MIGRATIONS[version])
                if row is None:
                    db.execute("INSERT INTO schema_version VALUES (1)")
                else:
                    db.execute("UPDATE schema_version SET version = %s", (version + 1,))

    def schema_version(self) -> int:
        return self._conn().execute("SELECT version FROM schema_version").fetchone()[0]

    # -- keys -------------------------------------------------------------------------------------------------
    def add_key(self, record: KeyRecord) -> None:
        self._conn().execute("INSERT INTO keys VALUES (%s, %s, %s, %s, %s)",
                             (record.key_id, record.key_hash, record.policy.model_dump_json(), record.created_at,
                              record.revoked_at))

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._conn().execute("SELECT * FROM keys WHERE key_id = %s", (key_id,)).fetchone()
        return _key(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        sql = "SELECT * FROM keys" + ("" if include_revoked else " WHERE revoked_at IS NULL") + " ORDER BY created_at"
        return [_key(r) for r in self._conn().execute(sql).fetchall()]

    def revoke_key(self, key_id: str, at: float) -> bool:
        cur = self._conn().execute("UPDATE keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                                   (at, key_id))
        return cur.rowcount == 1

    def set_key_hash(self, key_id: str, key_hash: str) -> bool:
        cur = self._conn().execute("UPDATE keys SET key_hash = %s WHERE key_id = %s AND revoked_at IS NULL",
                                   (key_hash, key_id))
        return cur.rowcount == 1

    # -- ledger -----------------------------------------------------------------------------------------------
    def append(self, rows: list[LedgerRow]) -> None:
        values = [tuple(json.dumps(v, sort_keys=True) if k == "tags" else v for k, v in r.to_record().items())
                  for r in rows]
        with self._txn() as db, db.cursor() as cur:
            cur.executemany(_INSERT, values)

    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        nusd, tokens = self._conn().execute(
            "SELECT COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_tokens), 0) "
            "FROM ledger WHERE key_id = %s AND created_at >= %s", (key_id, since)).fetchone()
        return int(nusd), int(tokens)

    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]:
        sql, args = f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= %s", [since or 0.0]
        if until is not None:
            sql, args = sql + " AND created_at < %s", [*args, until]
        found = self._conn().execute(sql + " ORDER BY created_at", args).fetchall()
        return [LedgerRow(**{k: json.loads(v) if k == "tags" else v for k, v in zip(LEDGER_FIELDS, r, strict=True)})
                for r in found]

    # -- budgets ----------------------------------------------------------------------------------------------
    def reserve_budget(self, key_id: str, items: list[BudgetAsk], hold_id: str | None = None,
                       expires_at: float | None = None) -> None:
        with self._txn() as db:
            for budget, start, limit, asked in items:
                where = (key_id, budget, start)
                taken = self._take(db, where, limit, asked)
                if taken is None:
                    column = _SPEND_COLUMN[budget_unit(budget)]
                    # a new window starts from the ledger's spend since its start; a replica that creates it
                    # at the same moment waits on this row's lock, then does nothing
                    db.execute(f"INSERT INTO budget_usage SELECT %s::text, %s::text, %s::float8, COALESCE(SUM({column}), 0), 0 "
                               "FROM ledger WHERE key_id = %s AND created_at >= %s ON CONFLICT DO NOTHING",
                               (*where, key_id, start))
                    taken = self._take(db, where, limit, asked)
                if taken is None:
                    used = db.execute("SELECT settled + reserved FROM budget_usage WHERE key_id = %s AND budget = %s "
                                      "AND window_start = %s", where).fetchone()[0]
                    raise BudgetRefused(budget, start, limit, int(used), asked)  # rolls back every item
            if hold_id is not None:
                db.execute("INSERT INTO budget_holds (hold_id, key_id, items, expires_at) VALUES (%s, %s, %s, %s)",
                           (hold_id, key_id, json.dumps([[b, s, a] for b, s, _, a in items]),
                            math.inf if expires_at is None else expires_at))

    @staticmethod
    def _take(db, where: tuple, limit: int, asked: int):
        return db.execute("UPDATE budget_usage SET reserved = reserved + %s WHERE key_id = %s AND budget = %s "
                          "AND window_start = %s AND settled + reserved + %s <= %s RETURNING reserved",
                          (asked, *where, asked, limit)).fetchone()

    def settle_budget(self, key_id: str, items: list[BudgetCharge], hold_id: str | None = None) -> None:
        with self._txn() as db:
            reclaimed = False
            if hold_id is not None:
                hold = db.execute("DELETE FROM budget_holds WHERE hold_id = %s RETURNING reclaimed",
                                  (hold_id,)).fetchone()
                if hold is None:  # settled already
                    return
                reclaimed = hold[0]
            for budget, start, reserved, charged in items:
                db.execute("UPDATE budget_usage SET reserved = GREATEST(reserved - %s, 0), settled = settled + %s "
                           "WHERE key_id = %s AND budget = %s AND window_start = %s",
                           (0 if reclaimed else reserved, charged, key_id, budget, start))

    def reclaim_budget_holds(self, now: float) -> int:
        with self._txn() as db:
            expired = db.execute("UPDATE budget_holds SET reclaimed = TRUE WHERE hold_id IN (SELECT hold_id FROM "
                                 "budget_holds WHERE expires_at < %s AND NOT reclaimed ORDER BY hold_id "
                                 "FOR UPDATE SKIP LOCKED) RETURNING key_id, items", (now,)).fetchall()
            # each hold's budgets in the order its reserve locked them (no deadlock with a reserve)
            releases = [(key_id, budget, start, amount) for key_id, items in expired
                        for budget, start, amount in json.loads(items)]
            for key_id, budget, start, amount in releases:
                db.execute("UPDATE budget_usage SET reserved = GREATEST(reserved - %s, 0) "
                           "WHERE key_id = %s AND budget = %s AND window_start = %s", (amount, key_id, budget, start))
            db.execute("DELETE FROM budget_holds WHERE reclaimed AND expires_at < %s", (now - RECLAIMED_HOLD_KEEP_S,))
        return len(expired)

    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        out, db = {}, self._conn()
        for budget, start in windows:
            row = db.execute("SELECT settled, reserved FROM budget_usage WHERE key_id = %s AND budget = %s "
                             "AND window_start = %s", (key_id, budget, start)).fetchone()
            if row is None:  # not touched yet: what its row will start from
                column = _SPEND_COLUMN[budget_unit(budget)]
                row = (db.execute(f"SELECT COALESCE(SUM({column}), 0) FROM ledger WHERE key_id = %s "
                                  "AND created_at >= %s", (key_id, start)).fetchone()[0], 0)
            out[budget] = (int(row[0]), int(row[1]))
        return out

    # -- rate limits ------------------------------------------------------------------------------------------
    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        start = math.floor(now / window_s) * window_s
        with self._txn() as db:
            counts = {}
            for name in sorted({name for name, _, _ in items}):  # lock the current windows' rows in one order
                db.execute("INSERT INTO rate_counters VALUES (%s, %s, %s::float8, 0) ON CONFLICT DO NOTHING",
                           (key_id, name, start))
                db.execute("SELECT count FROM rate_counters WHERE key_id = %s AND name = %s AND window_start = %s "
                           "FOR UPDATE", (key_id, name, start))
                counts[name] = dict(db.execute("SELECT window_start, count FROM rate_counters WHERE key_id = %s "
                                               "AND name = %s AND window_start >= %s",
                                               (key_id, name, start - window_s)).fetchall())
            results = [sliding_window(int(counts[name].get(start - window_s, 0)), int(counts[name].get(start, 0)),
                                      start, window_s, now, quota, cost) for name, quota, cost in items]
            if all(allowed for allowed, _, _ in results):
                for name, _, cost in items:
                    db.execute("UPDATE rate_counters SET count = count + %s WHERE key_id = %s AND name = %s "
                               "AND window_start = %s", (cost, key_id, name, start))
                    db.execute("DELETE FROM rate_counters WHERE key_id = %s AND name = %s AND window_start < %s",
                               (key_id, name, start - window_s))
        return results

    # -- response cache index ---------------------------------------------------------------------------------
    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        row = self._conn().execute("SELECT body, cost_nusd FROM response_cache WHERE key = %s AND expires_at > %s",
                                   (key, now)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        with self._txn() as db:
            db.execute("INSERT INTO response_cache VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                       "body = excluded.body, cost_nusd = excluded.cost_nusd, size = excluded.size, "
                       "created_at = excluded.created_at, expires_at = excluded.expires_at",
                       (key, body, cost_nusd, len(body), now, expires_at))
            db.execute("DELETE FROM response_cache WHERE expires_at <= %s", (now,))
            if db.execute("SELECT COALESCE(SUM(size), 0) FROM response_cache").fetchone()[0] > max_bytes:
                db.execute(_EVICT, (max_bytes,))

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


def _key(row) -> KeyRecord:
    key_id, key_hash, policy, created_at, revoked_at = row
    return KeyRecord(key_id, key_hash, KeyPolicy.model_validate_json(policy), created_at, revoked_at)
