"""Where FinOps keeps things: the :class:`~.ports.Store` (keys, the ledger) and the :class:`~.ports.State`
(budget reservations, rate counters, the response cache) ports, with their implementations: memory
(:mod:`.memory`, one process) and one SQL store (:mod:`.sql`) over SQLite or PostgreSQL.

:func:`open_store` opens a store by URL: a file path or ``sqlite:///path`` (the default, one machine),
``postgresql://...`` for several replicas or hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import LeaninferError
from .ports import State, Store
from .postgres import PostgresDialect  # imports psycopg only when one is opened
from .sql import SQLStore
from .sqlite import SQLiteDialect

DEFAULT_STORE = "leaninfer.db"
DIALECTS: dict[str, Callable[[str], object]] = {"sqlite": SQLiteDialect, "postgresql": PostgresDialect,
                                                "postgres": PostgresDialect}
STORES = DIALECTS  # the schemes open_store knows


def open_store(url: str | Path = DEFAULT_STORE) -> SQLStore:
    """The store at ``url``, created with its schema when new, migrated when older.

    Example:
        >>> store = open_store("/tmp/ledger-example.db")   # doctest: +SKIP
        >>> store = open_store("postgresql://postgres@127.0.0.1/leaninfer")   # doctest: +SKIP
    """
    url = str(url)
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    dialect = DIALECTS.get(scheme)
    if dialect is None:
        raise LeaninferError(f"unknown store {url!r}: use a file path, sqlite:///path or postgresql://... "
                             f"(schemes: {', '.join(sorted(DIALECTS))})")
    return SQLStore(dialect(url), url)


__all__ = ["DEFAULT_STORE", "STORES", "SQLStore", "State", "Store", "open_store"]
