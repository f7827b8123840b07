"""Ledger writes off the request path's critical section, durable before the client hears back.

A request hands its row to :meth:`LedgerWriter.record` and awaits it; the writer thread takes every row
waiting, commits them in one transaction (group commit), then wakes their requests. The event loop never
touches the database, the cost of a commit is shared by all the rows that queued behind it, and a response
leaves only once its row is committed — so after ``kill -9`` every response a client received is in the
ledger (see :mod:`.store.sqlite` for what "committed" survives).

A group commit that fails is retried row by row: one row the store refuses (PostgreSQL's TEXT holds no NUL,
say) must not fail the other requests of its batch, nor lose their rows. Only the requests whose own row
can't be written get :class:`LedgerWriteFailed`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from ..handoff import settle
from .ledger import LedgerRow
from .refusals import Refusal
from .retention import Retention
from .store.ports import Store

log = logging.getLogger("leaninfer.finops")
MAX_ROWS_PER_COMMIT = 1024
_STOP = object()


class LedgerWriteFailed(Refusal):
    """The ledger could not record this request, so the server won't answer it as if it had (a 503: the
    store is down or refused the row)."""

    status, type = 503, "server_error"

    def __init__(self, request_id: str, cause: BaseException):
        super().__init__(f"the ledger could not record request {request_id} ({type(cause).__name__}); "
                         "it is not answered: retry later, or ask the operator to check the store",
                         "ledger_write_failed")
        self.request_id = request_id
        self.__cause__ = cause


class LedgerWriter:
    """Example:
        >>> writer = LedgerWriter(store)                     # doctest: +SKIP
        >>> await writer.record(row)                         # doctest: +SKIP
    """

    def __init__(self, store: Store, retention_days: int | None = None):
        self.store = store
        # the ledger's retention runs beside the writer, on its own thread (a server with a ledger has one)
        self.retention = Retention(store, retention_days) if retention_days else None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # lists of (row, future), a loop turn's each
        self._pending: dict = {}  # event loop -> the rows it recorded this turn, not yet handed over
        self.rows_written = 0
        self.rows_failed = 0
        self._thread = threading.Thread(target=self._run, name="leaninfer-ledger", daemon=True)
        self._thread.start()

    def record(self, row: LedgerRow) -> asyncio.Future:
        """Queue ``row``; the returned future resolves once it is committed, or fails with
        :class:`LedgerWriteFailed` when this row can't be written.

        The rows a loop records in one turn go to the writer thread together, at the end of the turn: one
        hand-off (a thread wake-up) per turn rather than per row, the mirror of :func:`~..handoff.settle`.
        Under load that hand-off per request was ~6% of a governed front's event loop (py-spy)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((row, fut))
        return fut

    def _hand_over(self, loop) -> None:
        rows = self._pending.pop(loop, None)
        if rows:  # (close() may have handed them over already)
            self._queue.put(rows)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = list(first)
            while len(batch) < MAX_ROWS_PER_COMMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)  # finish this batch, then stop
                    break
                batch.extend(item)
            errors = self._write([row for row, _ in batch])
            settle((fut, error) for (_, fut), error in zip(batch, errors, strict=True))

    def _write(self, rows: list[LedgerRow]) -> list[Exception | None]:
        """Commit ``rows`` together, or each alone when that fails; one error (or None) per row."""
        try:
            self.store.append(rows)
            self.rows_written += len(rows)
            return [None] * len(rows)
        except Exception as e:
            if len(rows) == 1:
                return [self._failed(rows[0], e)]
            log.warning("ledger group commit of %d rows failed (%s); writing them one by one", len(rows),
                        type(e).__name__)
        errors: list[Exception | None] = []
        for row in rows:
            try:
                self.store.append([row])
                self.rows_written += 1
                errors.append(None)
            except Exception as e:
                errors.append(self._failed(row, e))
        return errors

    def _failed(self, row: LedgerRow, e: Exception) -> LedgerWriteFailed:
        self.rows_failed += 1
        log.error("ledger row of request %s could not be written", row.request_id, exc_info=e)
        return LedgerWriteFailed(row.request_id, e)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread (and retention's)."""
        if self.retention is not None:
            self.retention.close(timeout_s)
        for loop in list(self._pending):  # rows recorded in a loop turn that hasn't ended
            self._hand_over(loop)
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)

