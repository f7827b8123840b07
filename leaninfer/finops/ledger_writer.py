"""Ledger writes off the request path's critical section, durable before the client hears back.

A request hands its row to :meth:`LedgerWriter.record` and awaits it; the writer thread takes every row
waiting, commits them in one transaction (group commit), then wakes their requests. The event loop never
touches the database, the cost of a commit is shared by all the rows that queued behind it, and a response
leaves only once its row is committed — so after ``kill -9`` every response a client received is in the
ledger (see :mod:`.sqlite_store` for what "committed" survives).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from .ledger import LedgerRow
from .store import Store

log = logging.getLogger("leaninfer.finops")
MAX_ROWS_PER_COMMIT = 1024
_STOP = object()


class LedgerWriter:
    def __init__(self, store: Store):
        self.store = store
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="leaninfer-ledger", daemon=True)
        self._thread.start()
        self.rows_written = 0

    def record(self, row: LedgerRow) -> asyncio.Future:
        """Queue ``row``; the returned future resolves once it is committed (or fails with the store's error)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((row, loop, fut))
        return fut

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_ROWS_PER_COMMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                self.store.append([row for row, _, _ in batch])
                error = None
                self.rows_written += len(batch)
            except Exception as e:  # the rows' requests fail with it (their responses must not claim a record)
                log.error("ledger write of %d rows failed", len(batch), exc_info=e)
                error = e
            for _, loop, fut in batch:
                loop.call_soon_threadsafe(_resolve, fut, error)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)


def _resolve(fut: asyncio.Future, error: Exception | None) -> None:
    if fut.done():  # its request was cancelled while waiting; the row is written all the same
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
