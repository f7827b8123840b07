"""The SQL store: keys, the ledger and the shared :class:`~.ports.State`, written once for SQLite and PostgreSQL.

Every statement below is the same text for both databases (``?`` placeholders and ``{real}``-style column types
are filled in by the dialect); what differs lives in the dialect: connections and threads, how a write
transaction takes its lock, row locks, migration bookkeeping, and the locks of :meth:`SQLStore.claim`
(:mod:`.sqlite`, :mod:`.postgres`).

Shared state, so that several servers on one store keep one budget:

- **Budgets**: one row per (key, budget, window) holding ``settled`` and ``reserved``. A reservation is a
  conditional update, ``settled + reserved + asked <= limit``, of every budget of the request in one
  transaction: all or nothing. A new window's row starts from the ledger's spend since the window's start
  (``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: a server creating it at the same moment does nothing).
  Under PostgreSQL's READ COMMITTED a concurrent UPDATE of the same row waits for the first to commit, then
  re-checks its WHERE on the new row; SQLite's ``BEGIN IMMEDIATE`` serializes whole transactions.
- **Holds**: a reservation names a hold (an id, its server, an expiry). Settling deletes the hold, so a second
  settle is a no-op in any process; :meth:`SQLStore.reclaim` releases holds past their expiry and
  :meth:`SQLStore.reclaim_orphans` those of servers that died (their liveness lock is free).
- **Rate limits**: sliding-window counters (:func:`.ports.sliding_window`), all limits of a request tested
  before any is counted, in one transaction; the current windows' rows locked in one order (names sorted).
- **Response cache**: bodies by cache key, with an expiry and a byte bound; the table keeps exactly the bytes
  it is given (what may be kept is :class:`~..cache.ResponseCache`'s decision).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any, Protocol

from ...errors import LeaninferError
from ..keys import KeyPolicy, KeyRecord
from ..ledger import LEDGER_FIELDS, LedgerRow
from .ports import (
    RECLAIMED_HOLD_KEEP_S,
    BudgetAsk,
    BudgetCharge,
    BudgetRefused,
    Hold,
    RateAsk,
    RateResult,
    budget_unit,
    sliding_window,
)
from .schema import migrations, statements

_SPEND_COLUMN = {"usd": "cost_nusd", "tokens": "charged_tokens"}
_KEY_COLUMNS = "key_id, key_hash, policy, created_at, revoked_at"
_OWNER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # an owner id names a lock file: no path characters
_RECLAIM = ("UPDATE budget_holds SET reclaimed = TRUE WHERE hold_id IN (SELECT hold_id FROM budget_holds "
            "WHERE {which} AND NOT reclaimed ORDER BY hold_id{skip_locked}) RETURNING key_id, items")
# the oldest entries beyond the newest ones that fit in max_bytes
_EVICT = ("DELETE FROM response_cache WHERE key IN (SELECT key FROM (SELECT key, SUM(size) OVER "
          "(ORDER BY created_at DESC, key DESC) AS kept FROM response_cache) AS t WHERE kept > ?)")

STATEMENTS: dict[str, str] = {
    "add_key": f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
    "get_key": f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?",
    "active_keys": f"SELECT {_KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL ORDER BY created_at",
    "all_keys": f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at",
    "revoke_key": "UPDATE keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
    "set_key_hash": "UPDATE keys SET key_hash = ? WHERE key_id = ? AND revoked_at IS NULL",
    # a retried write replaces its row, never duplicates it
    "append": (f"INSERT INTO ledger ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join('?' * len(LEDGER_FIELDS))}) "
               "ON CONFLICT (request_id) DO UPDATE SET "
               + ", ".join(f"{f} = excluded.{f}" for f in LEDGER_FIELDS if f != "request_id")),
    "spend": ("SELECT COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_tokens), 0) FROM ledger "
              "WHERE key_id = ? AND created_at >= ?"),
    "rows": f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= ? ORDER BY created_at",
    "rows_until": (f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= ? AND created_at < ? "
                   "ORDER BY created_at"),
    "take": ("UPDATE budget_usage SET reserved = reserved + ? WHERE key_id = ? AND budget = ? AND window_start = ? "
             "AND settled + reserved + ? <= ? RETURNING reserved"),
    **{f"new_window_{unit}": ("INSERT INTO budget_usage (key_id, budget, window_start, settled, reserved) "
                              "SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS {real}), "
                              f"COALESCE(SUM({column}), 0), 0 FROM ledger WHERE key_id = ? AND created_at >= ? "
                              "ON CONFLICT DO NOTHING")
       for unit, column in _SPEND_COLUMN.items()},
    "usage": "SELECT settled, reserved FROM budget_usage WHERE key_id = ? AND budget = ? AND window_start = ?",
    "hold": "INSERT INTO budget_holds (hold_id, key_id, items, expires_at, owner) VALUES (?, ?, ?, ?, ?)",
    "unhold": "DELETE FROM budget_holds WHERE hold_id = ? RETURNING reclaimed",
    "settle": ("UPDATE budget_usage SET reserved = CASE WHEN reserved > ? THEN reserved - ? ELSE 0 END, "
               "settled = settled + ? WHERE key_id = ? AND budget = ? AND window_start = ?"),
    "reclaim_expired": _RECLAIM.replace("{which}", "expires_at < ?"),
    "reclaim_owner": _RECLAIM.replace("{which}", "owner = ?"),
    "forget_reclaimed": "DELETE FROM budget_holds WHERE reclaimed AND expires_at < ?",
    "owners": "SELECT DISTINCT owner FROM budget_holds WHERE owner <> '' AND NOT reclaimed",
    "rate_row": ("INSERT INTO rate_counters (key_id, name, window_start, count) VALUES (?, ?, ?, 0) "
                 "ON CONFLICT DO NOTHING"),
    "rate_lock": "SELECT count FROM rate_counters WHERE key_id = ? AND name = ? AND window_start = ?{row_lock}",
    "rate_counts": "SELECT window_start, count FROM rate_counters WHERE key_id = ? AND name = ? AND window_start >= ?",
    "rate_add": "UPDATE rate_counters SET count = count + ? WHERE key_id = ? AND name = ? AND window_start = ?",
    "rate_forget": "DELETE FROM rate_counters WHERE key_id = ? AND name = ? AND window_start < ?",
    "cache_get": "SELECT body, cost_nusd FROM response_cache WHERE key = ? AND expires_at > ?",
    "cache_put": ("INSERT INTO response_cache (key, body, cost_nusd, size, created_at, expires_at) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET body = excluded.body, "
                  "cost_nusd = excluded.cost_nusd, size = excluded.size, created_at = excluded.created_at, "
                  "expires_at = excluded.expires_at"),
    "cache_expire": "DELETE FROM response_cache WHERE expires_at <= ?",
    "cache_size": "SELECT COALESCE(SUM(size), 0) FROM response_cache",
    "cache_evict": _EVICT,
}


class Dialect(Protocol):
    """What SQLite and PostgreSQL do differently (see :mod:`.sqlite`, :mod:`.postgres`)."""

    name: str
    types: dict[str, str]  # column types of the schema templates: real, int, blob, bool, false
    row_lock: str  # appended to a SELECT whose rows stay locked until commit ("" where a write locks it all)
    skip_locked: str  # the same, skipping rows another transaction holds

    def prepare(self, sql: str) -> str:
        """``sql`` with its ``?`` placeholders in this driver's style."""

    def write(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one transaction that holds the write lock from its first statement."""

    def read(self) -> contextlib.AbstractContextManager[Any]:
        """A connection for reads, which never waits behind a writer's commit."""

    def lock_schema(self, db) -> None:
        """Inside a write transaction: make concurrent migrators wait for this one."""

    def schema_version(self, db) -> int: ...
    def set_schema_version(self, db, version: int) -> None: ...

    def claim(self, owner: str, shared: bool) -> str | None:
        """Take the store lock (shared or exclusive) and ``owner``'s liveness lock, both held until
        :meth:`release` or the process's death; None when taken, else ``"shared"`` or ``"exclusive"``: how
        the live server in the way holds it."""

    def release(self) -> None: ...

    def owner_dead(self, owner: str) -> contextlib.AbstractContextManager[bool]:
        """True, holding ``owner``'s liveness lock for the block, when no live process holds it."""

    def close(self) -> None: ...


class SQLStore:
    """:class:`~.ports.Store` and :class:`~.ports.State` on one SQL database.

    Example:
        >>> store = open_store("leaninfer.db")          # or postgresql://...   # doctest: +SKIP
        >>> store.reserve("k1", [("usd_day", 1740787200.0, 5_000_000_000, 2_000)], None)   # doctest: +SKIP
    """

    blocking = True
    persistent = True

    def __init__(self, dialect: Dialect, url: str):
        self.url, self.dialect = url, dialect
        self._q = {name: dialect.prepare(sql.replace("{real}", dialect.types["real"])
                                         .replace("{row_lock}", dialect.row_lock)
                                         .replace("{skip_locked}", dialect.skip_locked))
                   for name, sql in STATEMENTS.items()}
        self._owner: str | None = None
        try:
            self._migrate()
        except BaseException:
            dialect.close()
            raise

    def _migrate(self) -> None:
        wanted = migrations(self.dialect.types)
        while True:  # one transaction per migration, with its version bump: a crash leaves the old or the new
            with self.dialect.write() as db:
                self.dialect.lock_schema(db)
                version = self.dialect.schema_version(db)
                if version > len(wanted):
                    raise LeaninferError(f"store {self.url!r} has schema version {version}, newer than this "
                                         f"leaninfer knows ({len(wanted)}): upgrade leaninfer")
                if version == len(wanted):
                    return
                for statement in statements(wanted[version]):
                    db.execute(statement)
                self.dialect.set_schema_version(db, version + 1)

    def schema_version(self) -> int:
        with self.dialect.read() as db:
            return self.dialect.schema_version(db)

    # -- claim ---------------------------------------------------------------------------------------------------
    def claim(self, owner: str, shared: bool) -> None:
        if not _OWNER.match(owner):
            raise ValueError(f"owner {owner!r}: 1 to 64 letters, digits, '_' or '-'")
        held = self.dialect.claim(owner, shared)
        if held == "exclusive":
            raise LeaninferError(f"another leaninfer server uses store {self.url!r} without shared state (its "
                                 "budgets, rate limits and cache live in its memory): stop it, or start every "
                                 "server on this store with --shared-state")
        if held == "shared":
            raise LeaninferError(f"leaninfer servers with shared state use store {self.url!r}: start this one "
                                 "with --shared-state too, or stop them first")
        self._owner = owner

    def release(self) -> None:
        self.dialect.release()
        self._owner = None

    # -- keys ----------------------------------------------------------------------------------------------------
    def add_key(self, record: KeyRecord) -> None:
        with self.dialect.write() as db:
            db.execute(self._q["add_key"], (record.key_id, record.key_hash, record.policy.model_dump_json(),
                                            record.created_at, record.revoked_at))

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self.dialect.read() as db:
            row = db.execute(self._q["get_key"], (key_id,)).fetchone()
        return _key(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        with self.dialect.read() as db:
            return [_key(r) for r in db.execute(self._q["all_keys" if include_revoked else "active_keys"]).fetchall()]

    def revoke_key(self, key_id: str, at: float) -> bool:
        with self.dialect.write() as db:
            return db.execute(self._q["revoke_key"], (at, key_id)).rowcount == 1

    def set_key_hash(self, key_id: str, key_hash: str) -> bool:
        with self.dialect.write() as db:
            return db.execute(self._q["set_key_hash"], (key_hash, key_id)).rowcount == 1

    # -- ledger --------------------------------------------------------------------------------------------------
    def append(self, rows: list[LedgerRow]) -> None:
        values = [tuple(json.dumps(v, sort_keys=True) if k == "tags" else v for k, v in r.to_record().items())
                  for r in rows]
        with self.dialect.write() as db:
            cur = db.cursor()
            try:
                cur.executemany(self._q["append"], values)
            finally:
                cur.close()

    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        with self.dialect.read() as db:
            nusd, tokens = db.execute(self._q["spend"], (key_id, since)).fetchone()
        return int(nusd), int(tokens)

    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]:
        with self.dialect.read() as db:
            if until is None:
                found = db.execute(self._q["rows"], (since or 0.0,)).fetchall()
            else:
                found = db.execute(self._q["rows_until"], (since or 0.0, until)).fetchall()
        return [LedgerRow(**{k: json.loads(v) if k == "tags" else v for k, v in zip(LEDGER_FIELDS, r, strict=True)})
                for r in found]

    # -- budgets -------------------------------------------------------------------------------------------------
    def reserve(self, key_id: str, items: list[BudgetAsk], hold: Hold | None) -> None:
        with self.dialect.write() as db:
            for budget, start, limit, asked in items:
                where = (key_id, budget, start)
                taken = db.execute(self._q["take"], (asked, *where, asked, limit)).fetchone()
                if taken is None:  # a new window (or a full one): create it from the ledger, then try again
                    db.execute(self._q["new_window_" + budget_unit(budget)], (*where, key_id, start))
                    taken = db.execute(self._q["take"], (asked, *where, asked, limit)).fetchone()
                if taken is None:
                    settled, reserved = db.execute(self._q["usage"], where).fetchone()
                    raise BudgetRefused(budget, start, limit, int(settled), int(reserved), asked)  # rolls back all
            if hold is not None:
                db.execute(self._q["hold"], (hold.hold_id, key_id, json.dumps([[b, s, a] for b, s, _, a in items]),
                                             hold.expires_at, hold.owner))

    def settle(self, key_id: str, items: list[BudgetCharge], hold_id: str | None) -> None:
        with self.dialect.write() as db:
            reclaimed = False
            if hold_id is not None:
                hold = db.execute(self._q["unhold"], (hold_id,)).fetchone()
                if hold is None:  # settled already
                    return
                reclaimed = bool(hold[0])
            for budget, start, reserved, charged in items:
                release = 0 if reclaimed else reserved
                db.execute(self._q["settle"], (release, release, charged, key_id, budget, start))

    def _reclaim(self, statement: str, arg) -> int:
        with self.dialect.write() as db:
            found = db.execute(self._q[statement], (arg,)).fetchall()
            # each hold's budgets in the order its reserve locked them (no deadlock with a reserve)
            for key_id, items in found:
                for budget, start, amount in json.loads(items):
                    db.execute(self._q["settle"], (amount, amount, 0, key_id, budget, start))
            if statement == "reclaim_expired":
                db.execute(self._q["forget_reclaimed"], (arg - RECLAIMED_HOLD_KEEP_S,))
        return len(found)

    def reclaim(self, now: float) -> int:
        return self._reclaim("reclaim_expired", now)

    def reclaim_orphans(self) -> int:
        with self.dialect.read() as db:
            owners = [owner for (owner,) in db.execute(self._q["owners"]).fetchall()]
        n = 0
        for owner in owners:
            if owner == self._owner or not _OWNER.match(owner):
                continue
            with self.dialect.owner_dead(owner) as dead:
                if dead:
                    n += self._reclaim("reclaim_owner", owner)
        return n

    def cold(self, key_id: str, windows: list[tuple[str, float]]) -> bool:
        return True  # every call does I/O (and is made off the event loop: ``blocking``)

    def budget_used(self, key_id: str, windows: list[tuple[str, float]]) -> dict[str, tuple[int, int]]:
        out = {}
        with self.dialect.read() as db:
            for budget, start in windows:
                row = db.execute(self._q["usage"], (key_id, budget, start)).fetchone()
                if row is None:  # not touched yet: what its row will start from
                    spent = db.execute(self._q["spend"], (key_id, start)).fetchone()
                    row = (spent[0 if budget_unit(budget) == "usd" else 1], 0)
                out[budget] = (int(row[0]), int(row[1]))
        return out

    # -- rate limits ---------------------------------------------------------------------------------------------
    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        start = math.floor(now / window_s) * window_s
        with self.dialect.write() as db:
            counts = {}
            for name in sorted({name for name, _, _ in items}):  # lock the current windows' rows in one order
                db.execute(self._q["rate_row"], (key_id, name, start))
                db.execute(self._q["rate_lock"], (key_id, name, start)).fetchall()
                counts[name] = {float(s): int(c) for s, c in
                                db.execute(self._q["rate_counts"], (key_id, name, start - window_s)).fetchall()}
            results = [sliding_window(counts[name].get(start - window_s, 0), counts[name].get(start, 0), start,
                                      window_s, now, quota, cost) for name, quota, cost in items]
            if all(allowed for allowed, _, _ in results):
                for name, _, cost in items:
                    db.execute(self._q["rate_add"], (cost, key_id, name, start))
                    db.execute(self._q["rate_forget"], (key_id, name, start - window_s))
        return results

    # -- response cache ------------------------------------------------------------------------------------------
    def cache_get(self, key: str, now: float) -> tuple[bytes, int] | None:
        with self.dialect.read() as db:
            row = db.execute(self._q["cache_get"], (key, now)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def cache_put(self, key: str, body: bytes, cost_nusd: int, expires_at: float, now: float,
                  max_bytes: int) -> None:
        with self.dialect.write() as db:
            db.execute(self._q["cache_put"], (key, body, cost_nusd, len(body), now, expires_at))
            db.execute(self._q["cache_expire"], (now,))
            if db.execute(self._q["cache_size"]).fetchone()[0] > max_bytes:
                db.execute(self._q["cache_evict"], (max_bytes,))

    def close(self) -> None:
        self.dialect.release()
        self.dialect.close()


def _key(row) -> KeyRecord:
    key_id, key_hash, policy, created_at, revoked_at = row
    return KeyRecord(key_id, key_hash, KeyPolicy.model_validate_json(policy), created_at, revoked_at)
