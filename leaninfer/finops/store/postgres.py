"""What PostgreSQL does its own way, for :class:`~.sql.SQLStore`: one database for several replicas or hosts,
through psycopg 3 (``pip install leaninfer[postgres]``; imported only when such a store is opened).

Atomicity comes from row locks under READ COMMITTED: a conditional UPDATE of a budget row waits for a
concurrent one to commit, then re-checks its WHERE on the new row, so two replicas can't both take the last
of a budget. Thread-safe: one connection per thread (a server calls the store from a bounded thread pool, so
connections stay few; psycopg_pool would be one more dependency for what ``threading.local`` does here).

The schema version lives in ``schema_version``; concurrent migrators (replicas starting at once) queue on a
transaction-level advisory lock.

Claims are session-level advisory locks on a connection kept for the server's life, which PostgreSQL drops
when that session ends (its process killed with ``kill -9`` included): the store lock (shared, or exclusive)
and a server's liveness lock, keyed by a 64-bit hash of its owner id.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

from ...errors import LeaninferError

MIGRATION_LOCK = 0x1EA41F  # pg_advisory_xact_lock key: one replica migrates, the others wait
STORE_LOCK = (0x1EA41F, 1)  # the two-int key space of advisory locks, apart from the bigint one


def owner_lock(owner: str) -> int:
    """The bigint advisory-lock key of ``owner``'s liveness lock."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big", signed=True)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise LeaninferError("a postgresql:// store needs psycopg: pip install leaninfer[postgres]") from None
    return psycopg


class PostgresDialect:
    name = "PostgreSQL"
    types = {"real": "DOUBLE PRECISION", "int": "BIGINT", "blob": "BYTEA", "bool": "BOOLEAN", "false": "FALSE"}
    row_lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str):
        self.url = url
        self._psycopg = _psycopg()
        self._local = threading.local()
        self._conns: list = []
        self._conns_lock = threading.Lock()
        self._claim = None  # the connection whose session holds the claim's locks

    def _connect(self):
        try:
            return self._psycopg.connect(self.url, autocommit=True)
        except self._psycopg.OperationalError as e:
            raise LeaninferError(f"store {self.url!r}: can't connect to PostgreSQL: {e}".strip()) from None

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @staticmethod
    def prepare(sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def write(self):
        conn = self._conn()
        with conn.transaction():
            yield conn

    @contextlib.contextmanager
    def read(self):
        yield self._conn()

    def lock_schema(self, db) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")

    @staticmethod
    def schema_version(db) -> int:
        row = db.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else row[0]

    @staticmethod
    def set_schema_version(db, version: int) -> None:
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version VALUES (%s)", (version,))

    # -- claims ----------------------------------------------------------------------------------------------------
    def claim(self, owner: str, shared: bool) -> str | None:
        self.release()
        conn = self._connect()
        take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        if not conn.execute(f"SELECT {take}(%s, %s)", STORE_LOCK).fetchone()[0]:
            # who is in the way: servers that share it let a shared lock through
            others_share = conn.execute("SELECT pg_try_advisory_lock_shared(%s, %s)", STORE_LOCK).fetchone()[0]
            conn.close()
            return "shared" if others_share else "exclusive"
        conn.execute("SELECT pg_try_advisory_lock(%s)", (owner_lock(owner),))  # a fresh owner id: free
        self._claim = conn
        return None

    def release(self) -> None:
        if self._claim is not None:
            self._claim.close()  # the session ends: its advisory locks go with it
            self._claim = None

    @contextlib.contextmanager
    def owner_dead(self, owner: str):
        conn, key = self._conn(), owner_lock(owner)
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            yield False
            return
        try:
            yield True
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def close(self) -> None:
        self.release()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
