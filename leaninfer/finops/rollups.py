"""Daily rollups of the ledger: one row per UTC day and (team, key, model, workflow, endpoint), kept current in
the transaction that appends the rows, so that a month of spend reads a few thousand rollup rows, not millions
of requests.

Days are **UTC** days (``day`` = the unix second of 00:00 UTC): a report reads rollups only when its days are
UTC days too (a zone whose offset is 0 over the whole range: ``UTC``, ``Etc/UTC``, ``GMT``...); a report in any
other zone groups the raw rows in SQL by that zone's own midnights. One fixed zone keeps the rollup exact for
every store whatever zone its budgets use, and the migration that backfills them is plain SQL.

Latency can't be summed, so each rollup row also keeps a histogram of the answered requests' durations:
:data:`BUCKETS` log-spaced buckets, each edge 1.25x the one below, from 1 ms to ~1000 s (bucket 0 is under
1 ms, the last is everything above). A p95 read from rollups is the bucket's geometric middle, interpolated as
``numpy.percentile`` does: within 12% (sqrt(1.25)) of the exact p95 below ~1000 s. Reports read raw rows
(exact p95) whenever the range holds few enough of them (:data:`..usage.RAW_ROWS_MAX`) and is still in the ledger.

These constants are frozen into migration 5 (:mod:`.store.ledger_schema`): never change them.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable

from .ledger import LedgerRow

DAY_S = 86_400
BUCKETS = 64
BASE_S, RATIO = 0.001, 1.25
EDGES: tuple[float, ...] = tuple(BASE_S * RATIO ** i for i in range(BUCKETS - 1))  # bucket b: [EDGES[b-1], EDGES[b])
HIST = tuple(f"h{b:02d}" for b in range(BUCKETS))
DIMS = ("day", "team", "key_id", "model", "workflow", "endpoint")
SUMS = ("requests", "input_tokens", "output_tokens", "cost_nusd", "charged_tokens", "cache_hits",
        "cache_saved_nusd", "routing_saved_nusd", "errors")
COLUMNS = (*DIMS, *SUMS, *HIST)


def utc_day(t: float) -> float:
    """The unix second of 00:00 UTC of the day holding ``t``.

    Example:
        >>> utc_day(86_400 * 3 + 5.5)
        259200.0
    """
    return float(math.floor(t / DAY_S) * DAY_S)


def bucket(duration_s: float) -> int:
    """The histogram bucket of a duration (the SQL of the backfill puts it in the same one).

    Example:
        >>> bucket(0.0005), bucket(0.001), bucket(1.0), bucket(1e9)
        (0, 1, 31, 63)
    """
    return bisect_right(EDGES, duration_s)


def dims(r: LedgerRow) -> tuple:
    return (utc_day(r.created_at), r.team, r.key_id or "", r.served_model or r.requested_model, r.workflow,
            r.endpoint)


def deltas(added: Iterable[LedgerRow], removed: Iterable[LedgerRow] = ()) -> list[tuple]:
    """One rollup row (in :data:`COLUMNS` order) per day and dimensions touched: what ``added`` adds minus what
    ``removed`` (rows a retried write replaces) had added."""
    acc: dict[tuple, list[int]] = {}
    for rows, sign in ((added, 1), (removed, -1)):
        for r in rows:
            k = dims(r)
            v = acc.get(k)
            if v is None:
                v = acc[k] = [0] * (len(SUMS) + BUCKETS)
            v[0] += sign
            v[1] += sign * r.input_tokens
            v[2] += sign * r.output_tokens
            v[3] += sign * r.cost_nusd
            v[4] += sign * r.charged_tokens
            v[5] += sign * (r.cache == "hit")
            v[6] += sign * r.cache_saved_nusd
            v[7] += sign * r.routing_saved_nusd
            if r.status >= 400:
                v[8] += sign
            else:
                v[len(SUMS) + bucket(r.duration_s)] += sign
    return [(*k, *v) for k, v in acc.items() if any(v)]


def _middle(b: int) -> float:
    if b == 0:
        return EDGES[0] / 2
    if b == BUCKETS - 1:
        return EDGES[-1] * math.sqrt(RATIO)
    return math.sqrt(EDGES[b - 1] * EDGES[b])


def hist_percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` percentile of a histogram's samples (each at its bucket's geometric middle), interpolated
    between the two nearest ranks as ``numpy.percentile``; None when empty.

    Example:
        >>> round(hist_percentile([0] * 31 + [10] + [0] * 32, 95), 3)
        0.903
    """
    n = sum(counts)
    if n <= 0:
        return None
    rank = q / 100 * (n - 1)
    lo, hi = math.floor(rank), math.ceil(rank)

    def at(k: int) -> float:
        seen = 0
        for b, c in enumerate(counts):
            seen += c
            if k < seen:
                return _middle(b)
        return _middle(BUCKETS - 1)

    a = at(lo)
    return a if hi == lo else a + (at(hi) - a) * (rank - lo)
