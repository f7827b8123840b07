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
from collections.abc import Callable
from typing import Any, Protocol

from ...errors import LeaninferError
from ..keys import KeyPolicy, KeyRecord
from ..ledger import LEDGER_FIELDS, LedgerRow
from ..scope_budgets import ScopeBudget, ScopeLimits, is_scope_account, scope_of_account
from .bucket_sql import STATEMENTS as _BUCKET_STATEMENTS
from .bucket_sql import VERSION as _BUCKETS_VERSION
from .bucket_sql import backfill_tags, scope_spend
from .ledger_sql import LedgerSQL, row_of
from .ports import (
    RECLAIMED_HOLD_KEEP_S,
    BudgetAsk,
    BudgetCharge,
    BudgetRefused,
    Hold,
    RateAsk,
    RateResult,
    ScopedAsk,
    ScopedCharge,
    ScopedRateAsk,
    budget_unit,
    sliding_window,
)
from .schema import migrations, statements
from .scope_sql import GET_MANY as _SCOPE_GET_MANY
from .scope_sql import STATEMENTS as _SCOPE_STATEMENTS

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
    "key_lock": f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ? AND revoked_at IS NULL{{row_lock}}",
    "set_key_policy": "UPDATE keys SET policy = ? WHERE key_id = ?",
    "claim_report": "INSERT INTO spend_reports (report, sent_at) VALUES (?, ?) ON CONFLICT (report) DO NOTHING",
    # a retried write replaces its row, never duplicates it
    "append": (f"INSERT INTO ledger ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join('?' * len(LEDGER_FIELDS))}) "
               "ON CONFLICT (request_id) DO UPDATE SET "
               + ", ".join(f"{f} = excluded.{f}" for f in LEDGER_FIELDS if f != "request_id")),
    "rows": f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= ? ORDER BY created_at",
    "rows_until": (f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger WHERE created_at >= ? AND created_at < ? "
                   "ORDER BY created_at"),
    "take": ("UPDATE budget_usage SET reserved = reserved + ? WHERE key_id = ? AND budget = ? AND window_start = ? "
             "AND settled + reserved + ? <= ? RETURNING reserved"),
    "usage": "SELECT settled, reserved FROM budget_usage WHERE key_id = ? AND budget = ? AND window_start = ?",
    "usage_lock": ("SELECT settled, reserved FROM budget_usage WHERE key_id = ? AND budget = ? AND window_start = ?"
                   "{row_lock}"),
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
STATEMENTS.update(_SCOPE_STATEMENTS)  # budgets above the key
STATEMENTS.update(_BUCKET_STATEMENTS)  # what each scope spent per quarter hour


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
        self._ledger = LedgerSQL(dialect)
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
                if version + 1 == _BUCKETS_VERSION:
                    backfill_tags(db, self.dialect.prepare, self.dialect.types)
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

    def claim_report(self, report: str, at: float) -> bool:
        # the first server to claim a spend report sends it (replicas and restarts: once)
        with self.dialect.write() as db:
            return db.execute(self._q["claim_report"], (report, at)).rowcount == 1

    def update_key_policy(self, key_id: str, change: Callable[[KeyPolicy], KeyPolicy]) -> KeyRecord | None:
        # read, change and write in one transaction, the row locked: two admins changing one key both land
        with self.dialect.write() as db:
            row = db.execute(self._q["key_lock"], (key_id,)).fetchone()
            if row is None:
                return None
            old = _key(row)
            policy = change(old.policy)
            db.execute(self._q["set_key_policy"], (policy.model_dump_json(), key_id))
        return KeyRecord(old.key_id, old.key_hash, policy, old.created_at, old.revoked_at)

    # -- ledger --------------------------------------------------------------------------------------------------
    def append(self, rows: list[LedgerRow]) -> None:
        values = [tuple(json.dumps(v, sort_keys=True) if k == "tags" else v for k, v in r.to_record().items())
                  for r in rows]
        with self.dialect.write() as db:
            self._ledger.append(db, rows, self._q["append"], values)  # and the rows' daily rollups

    def spend(self, key_id: str, since: float) -> tuple[int, int]:
        return self.budget_spend(key_id, since)

    def rows(self, since: float | None = None, until: float | None = None) -> list[LedgerRow]:
        with self.dialect.read() as db:
            if until is None:
                found = db.execute(self._q["rows"], (since or 0.0,)).fetchall()
            else:
                found = db.execute(self._q["rows_until"], (since or 0.0, until)).fetchall()
        return [row_of(r) for r in found]

    def ledger_read(self, fn, *args):
        """``fn(ledger_sql, db, *args)`` on a read connection (grouped sums, pages), ``ledger_sql`` the store's
        :class:`.ledger_sql.LedgerSQL`; ``fn`` consumes what it reads before returning."""
        with self.dialect.read() as db:
            return fn(self._ledger, db, *args)

    def prune(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest rows that arrived before ``before``, in one short transaction,
        and mark the rollups as the only record of what is under ``before``; how many rows went."""
        with self.dialect.write() as db:
            n = self._ledger.prune(db, before, limit)
        checkpoint = getattr(self.dialect, "checkpoint", None)
        if n and checkpoint is not None:  # write the deletion's pages back here, not in a request's commit
            checkpoint()
        return n

    # -- budgets -------------------------------------------------------------------------------------------------
    def reserve(self, key_id: str, items: list[BudgetAsk], hold: Hold | None) -> None:
        self.reserve_scoped([(key_id, *item) for item in items], hold, key_id)

    def reserve_scoped(self, items: list[ScopedAsk], hold: Hold | None, key_id: str = "") -> None:
        with self.dialect.write() as db:
            for account, budget, start, limit, asked in items:
                where = (account, budget, start)
                taken = db.execute(self._q["take"], (asked, *where, asked, limit)).fetchone()
                if taken is None and db.execute(self._q["usage"], where).fetchone() is None:
                    # a new window: created from what the account spent since its start (spend buckets: a few
                    # rows), then taken; a concurrent creator's row wins (ON CONFLICT DO NOTHING)
                    seed = self._account_spend(db, account, start)[0 if budget_unit(budget) == "usd" else 1]
                    db.execute(self._q["new_window"], (*where, seed))
                    taken = db.execute(self._q["take"], (asked, *where, asked, limit)).fetchone()
                if taken is None:
                    # Locked, the row's latest: under READ COMMITTED a reservation settled since the failed
                    # take may have made room (take again: the lock makes it succeed), else these are the
                    # figures the refusal reports, exactly (SQLite: the write transaction holds them already)
                    settled, reserved = db.execute(self._q["usage_lock"], where).fetchone()
                    if int(settled) + int(reserved) + asked <= limit:
                        taken = db.execute(self._q["take"], (asked, *where, asked, limit)).fetchone()
                if taken is None:
                    raise BudgetRefused(budget, start, limit, int(settled), int(reserved), asked,
                                        account)  # rolls back all
            if hold is not None:
                # a key's items as before ([budget, start, amount]); another account's name it (a 4th element)
                held = [[b, s, a] if k == key_id else [b, s, a, k] for k, b, s, _, a in items]
                db.execute(self._q["hold"], (hold.hold_id, key_id, json.dumps(held), hold.expires_at, hold.owner))

    def settle(self, key_id: str, items: list[BudgetCharge], hold_id: str | None) -> None:
        self.settle_scoped([(key_id, *item) for item in items], hold_id)

    def settle_scoped(self, items: list[ScopedCharge], hold_id: str | None) -> None:
        with self.dialect.write() as db:
            reclaimed = False
            if hold_id is not None:
                hold = db.execute(self._q["unhold"], (hold_id,)).fetchone()
                if hold is None:  # settled already
                    return
                reclaimed = bool(hold[0])
            for account, budget, start, reserved, charged in items:
                release = 0 if reclaimed else reserved
                db.execute(self._q["settle"], (release, release, charged, account, budget, start))

    def _account_spend(self, db, account: str, since: float) -> tuple[int, int]:
        if is_scope_account(account):
            kind, name = scope_of_account(account)
            return scope_spend(db, self._q, f"{kind}:{name}" if name else kind, since)
        return scope_spend(db, self._q, f"key:{account}", since)

    def budget_spend(self, account: str, since: float) -> tuple[int, int]:
        """``(nano-dollars, tokens)`` an account spent on requests that arrived at or after ``since``: a key's
        (its id) or a scope's above it (``team:search@<generation>``), read from the spend buckets (the ``spend``
        a :class:`~.memory.MemoryState` beside this store starts new windows from)."""
        with self.dialect.read() as db:
            return self._account_spend(db, account, since)

    # -- budgets above the key: their definitions ----------------------------------------------------------------
    def put_scope_budget(self, budget: ScopeBudget) -> None:
        """Set a scope's budget (its creation time, the generation of its spend, is kept when it exists)."""
        with self.dialect.write() as db:
            db.execute(self._q["scope_put"], (budget.scope, budget.limits.model_dump_json(exclude_none=True),
                                              budget.created_at, budget.updated_at))

    def get_scope_budgets(self, scopes: list[str]) -> dict[str, ScopeBudget]:
        """The budgets of those of ``scopes`` that have one."""
        if not scopes:
            return {}
        sql = self.dialect.prepare(_SCOPE_GET_MANY + "(" + ", ".join("?" * len(scopes)) + ")")
        with self.dialect.read() as db:
            return {r[0]: _scope_budget(r) for r in db.execute(sql, tuple(scopes)).fetchall()}

    def list_scope_budgets(self) -> list[ScopeBudget]:
        with self.dialect.read() as db:
            return [_scope_budget(r) for r in db.execute(self._q["scope_list"]).fetchall()]

    def delete_scope_budget(self, scope: str) -> bool:
        """Delete a scope's budget (its spend stays in budget_usage; set again, it starts a new generation)."""
        with self.dialect.write() as db:
            return db.execute(self._q["scope_delete"], (scope,)).rowcount == 1

    def _reclaim(self, statement: str, arg) -> int:
        with self.dialect.write() as db:
            found = db.execute(self._q[statement], (arg,)).fetchall()
            # each hold's budgets in the order its reserve locked them (no deadlock with a reserve)
            for key_id, items in found:
                for budget, start, amount, *account in json.loads(items):
                    db.execute(self._q["settle"], (amount, amount, 0, account[0] if account else key_id, budget,
                                                   start))
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
                    row = (self._account_spend(db, key_id, start)[0 if budget_unit(budget) == "usd" else 1], 0)
                out[budget] = (int(row[0]), int(row[1]))
        return out

    # -- rate limits ---------------------------------------------------------------------------------------------
    def rate_hit(self, key_id: str, items: list[RateAsk], window_s: float, now: float) -> list[RateResult]:
        return self.rate_hit_scoped([(key_id, *item) for item in items], window_s, now)

    def rate_hit_scoped(self, items: list[ScopedRateAsk], window_s: float, now: float) -> list[RateResult]:
        start = math.floor(now / window_s) * window_s
        with self.dialect.write() as db:
            counts = {}
            for account, name in sorted({(a, n) for a, n, _, _ in items}):  # lock the windows' rows in one order
                db.execute(self._q["rate_row"], (account, name, start))
                db.execute(self._q["rate_lock"], (account, name, start)).fetchall()
                counts[account, name] = {float(s): int(c) for s, c in db.execute(
                    self._q["rate_counts"], (account, name, start - window_s)).fetchall()}
            results = [sliding_window(counts[a, n].get(start - window_s, 0), counts[a, n].get(start, 0), start,
                                      window_s, now, quota, cost) for a, n, quota, cost in items]
            if all(allowed for allowed, _, _ in results):
                for account, name, _, cost in items:
                    db.execute(self._q["rate_add"], (cost, account, name, start))
                    db.execute(self._q["rate_forget"], (account, name, start - window_s))
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


def _scope_budget(row) -> ScopeBudget:
    scope, limits, created_at, updated_at = row
    return ScopeBudget(scope, ScopeLimits.model_validate_json(limits), float(created_at), float(updated_at))


def _key(row) -> KeyRecord:
    key_id, key_hash, policy, created_at, revoked_at = row
    return KeyRecord(key_id, key_hash, KeyPolicy.model_validate_json(policy), created_at, revoked_at)
