"""What SQLite does its own way, for :class:`~.sql.SQLStore`: one file in WAL mode, on one machine.

WAL with ``synchronous=NORMAL``: a commit is in the WAL file when it returns, so a killed process
(``kill -9``) loses nothing it committed; only a power cut can drop the last transactions (``FULL`` would
fsync each commit). Readers (``leaninfer usage`` while the server runs) don't block the writer.

Two connections, each used under its own lock: one for writes, one for reads, so that a key lookup never
waits behind the ledger writer's commit (WAL lets a reader run beside a writer). Every write is a
``BEGIN IMMEDIATE`` transaction: the file's write lock is taken before the first read, so the check and the
update of a reservation are one step for every process on this host that opens the file. Across hosts, file
locking on network file systems is not to be trusted: use PostgreSQL there. The schema version is
``PRAGMA user_version``.

Claims are ``flock`` locks, which the kernel drops when their process dies (``kill -9`` included): the store
lock on ``<db>.lock`` (shared, or exclusive), and a server's liveness lock on ``<db>.owners/<owner>``.
``flock`` belongs to an open file, not to a process, so two stores in one process conflict as two processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from ...errors import LeaninferError


class SQLiteDialect:
    name = "SQLite"
    types = {"real": "REAL", "int": "INTEGER", "blob": "BLOB", "bool": "INTEGER", "false": "0"}
    row_lock = ""  # BEGIN IMMEDIATE holds the whole file
    skip_locked = ""

    def __init__(self, url: str):
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
        self.path = Path(path)
        if self.path.is_dir():
            raise LeaninferError(f"store {url!r} is a directory; give a file path such as leaninfer.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        self._claimed: list[int] = []  # file descriptors holding the claim's locks
        self._owner_file: Path | None = None
        try:
            self._db = self._connect()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._reader = self._connect()
        except sqlite3.DatabaseError as e:
            raise LeaninferError(f"store {url!r} is not a leaninfer SQLite store: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)

    @staticmethod
    def prepare(sql: str) -> str:
        return sql

    @contextlib.contextmanager
    def write(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def read(self):
        with self._read_lock:
            yield self._reader

    def checkpoint(self) -> None:
        """Copy the WAL's pages into the database file now, on this thread, without waiting for or blocking
        writers (PASSIVE): a bulk deletion's pages would otherwise be checkpointed inside some later commit."""
        with self._read_lock:
            self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def lock_schema(self, db) -> None:
        """Nothing more: the write transaction holds the file."""

    @staticmethod
    def schema_version(db) -> int:
        return db.execute("PRAGMA user_version").fetchone()[0]

    @staticmethod
    def set_schema_version(db, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")  # a pragma takes no parameters

    # -- claims ----------------------------------------------------------------------------------------------------
    def claim(self, owner: str, shared: bool) -> str | None:
        self.release()
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # who is in the way: servers that share it let a shared lock through
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = "shared"
            except BlockingIOError:
                held = "exclusive"
            os.close(fd)
            return held
        owners = self._owners()
        owners.mkdir(exist_ok=True)
        mine = os.open(owners / owner, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh owner id: nobody else holds it
        self._claimed, self._owner_file = [fd, mine], owners / owner
        return None

    def _owners(self) -> Path:
        return Path(f"{self.path}.owners")

    def release(self) -> None:
        if self._owner_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._owner_file.unlink()
        for fd in self._claimed:
            os.close(fd)  # drops its flock
        self._claimed, self._owner_file = [], None

    @contextlib.contextmanager
    def owner_dead(self, owner: str):
        path = self._owners() / owner
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # never claimed, or released: nobody alive holds it
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(fd)

    def close(self) -> None:
        self.release()
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()
