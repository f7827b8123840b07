"""Latency statistics from raw samples: the one type the benchmarks and the load generator both report."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np


def percentile(samples, q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


@dataclass(frozen=True)
class Latency:
    """Latency statistics in milliseconds from raw samples in seconds.

    An empty sample gives ``n == 0`` and None everywhere else: a load level where every request failed
    still has a row, and nothing is made up for it.
    """

    n: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def from_samples(cls, seconds) -> Latency:
        """Statistics of ``seconds`` (any iterable of floats).

        >>> Latency.from_samples([0.001, 0.002, 0.003]).p50_ms
        2.0
        >>> Latency.from_samples([]).p95_ms is None
        True
        """
        s = [float(x) * 1000.0 for x in seconds]
        if not s:
            return cls(n=0)
        return cls(n=len(s), p50_ms=statistics.median(s), p95_ms=percentile(s, 95), p99_ms=percentile(s, 99),
                   mean_ms=statistics.fmean(s), min_ms=min(s), max_ms=max(s))

    def to_dict(self) -> dict:
        return asdict(self)
