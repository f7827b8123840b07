"""Ledger retention: delete raw rows older than N days, in short batches, while the server serves.

The daily rollups stay (:mod:`.rollups`): reports on a pruned range read them. So do the spend buckets
(:mod:`.spend_buckets`) that budget windows start from, so a "total" window still counts what deleted rows
spent. The cut is a UTC midnight, so that a rollup day is either whole in the rows or gone from them, and rows
younger than :data:`MIN_DAYS` days always stay (35 days covers any month in any zone: a month's report, and a
window's partial first quarter hour, read rows).

Each batch is one short transaction of at most ``batch`` rows, oldest first, then a pause: SQLite has one
writer at a time, so the ledger writer's next commit waits for one batch, not for the whole deletion. The
work runs on its own thread (:class:`Retention`), never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import LeaninferError
from .rollups import DAY_S, utc_day

log = logging.getLogger("leaninfer.finops")
MIN_DAYS = 35
BATCH_ROWS = 500  # measured: 2000 a batch tripled a concurrent load's p99 on SQLite, 500 kept it within 1.4x
PAUSE_S = 0.05
BUSY_PAUSE = 4.0  # a batch that took t seconds is followed by at least 4t of pause
EVERY_S = 3600.0


def check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < MIN_DAYS:
        raise LeaninferError(f"ledger retention of {days!r} days: give a whole number of days, at least {MIN_DAYS} "
                             "(budget windows of a day or a month read the last 35 days of rows)")
    return days


def cutoff(now: float, days: int) -> float:
    """The UTC midnight under which rows go: ``days`` days before ``now``, rounded down to a midnight.

    Example:
        >>> cutoff(40 * 86_400 + 5, 35)
        432000.0
    """
    return utc_day(now - check_days(days) * DAY_S)


def prune(store, before: float, batch: int = BATCH_ROWS, pause_s: float = PAUSE_S,
          stop: threading.Event | None = None) -> int:
    """Delete the rows that arrived before ``before`` (a UTC midnight), ``batch`` rows a transaction with
    ``pause_s`` between; how many went. ``stop`` set: stop after the current batch."""
    if before % DAY_S:
        raise ValueError(f"prune before {before!r}: give a UTC midnight (the rollups keep whole days)")
    total = 0
    while True:
        t = time.perf_counter()
        n = store.prune(before, batch)
        total += n
        if n < batch or (stop is not None and stop.is_set()):
            return total
        # deleting at most a fifth of the time: a slow batch (PostgreSQL's, ~35 ms for 500 rows on 2 cores, where
        # 50 ms pauses let a month's deletion take a concurrent load's p99 to 2.1x idle) waits longer
        wait = max(pause_s, BUSY_PAUSE * (time.perf_counter() - t)) if pause_s else 0.0
        if wait and (stop.wait(wait) if stop is not None else time.sleep(wait)):
            return total


class Retention:
    """A thread that prunes the ledger to ``days`` days now, then every ``every_s`` seconds."""

    def __init__(self, store, days: int, every_s: float = EVERY_S, batch: int = BATCH_ROWS,
                 pause_s: float = PAUSE_S, clock=time.time):
        self.store, self.days, self.every_s = store, check_days(days), every_s
        self.batch, self.pause_s, self.clock = batch, pause_s, clock
        self.deleted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leaninfer-retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = prune(self.store, cutoff(self.clock(), self.days), self.batch, self.pause_s, self._stop)
                self.deleted += n
                if n:
                    log.info("ledger retention deleted %d rows older than %d days (rollups kept)", n, self.days)
            except Exception:  # the next round retries; serving goes on
                log.exception("ledger retention failed")
            self._stop.wait(self.every_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
