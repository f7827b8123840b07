"""Open a store by URL: a file path or ``sqlite:///path`` (the default), ``postgresql://...`` for several replicas
or hosts; more schemes in :data:`STORES`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import LeaninferError
from .postgres_store import PostgresStore  # imports psycopg only when one is opened
from .sqlite_store import SQLiteStore
from .store import Store

DEFAULT_STORE = "leaninfer.db"
STORES: dict[str, Callable[[str], Store]] = {"sqlite": SQLiteStore, "postgresql": PostgresStore,
                                             "postgres": PostgresStore}


def open_store(url: str | Path = DEFAULT_STORE) -> Store:
    """The store at ``url``, created with its schema when new.

    Example:
        >>> store = open_store("/tmp/ledger-example.db")   # doctest: +SKIP
        >>> store = open_store("postgresql://postgres@127.0.0.1/leaninfer")   # doctest: +SKIP
    """
    url = str(url)
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    opener = STORES.get(scheme)
    if opener is None:
        raise LeaninferError(f"unknown store {url!r}: use a file path, sqlite:///path or postgresql://... "
                             f"(schemes: {', '.join(sorted(STORES))})")
    return opener(url)
