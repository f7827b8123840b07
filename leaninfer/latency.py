"""Latency statistics from raw samples: the one type the benchmarks and the load generator both report."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

# Below this many samples a tail percentile is an interpolation between the few largest samples, not an
# estimate of the tail: the report says so next to it.
MIN_SAMPLES_FOR_PERCENTILES = 10


def percentile(samples, q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]: numpy's default method, to the bit (its rank and its
    two-sided interpolation), in plain Python so that ``leaninfer usage`` needn't import numpy (~40 ms).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 95)
        3.85
    """
    s = sorted(float(x) for x in samples)
    if not s:
        raise ValueError("percentile of no samples")
    rank = (q / 100) * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    t = rank - lo
    a, b = s[lo], s[hi]
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


@dataclass(frozen=True)
class Latency:
    """Latency statistics in milliseconds from raw samples in seconds.

    `n` is the number of samples; `stdev_ms` (sample standard deviation) and `min_ms`/`max_ms` give the
    spread. An empty sample gives ``n == 0`` and None everywhere else: a load level where every request
    failed still has a row, and nothing is made up for it.
    """

    n: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    stdev_ms: float | None = None
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
        return cls(n=len(s), p50_ms=statistics.median(s), p90_ms=percentile(s, 90), p95_ms=percentile(s, 95),
                   p99_ms=percentile(s, 99), mean_ms=statistics.fmean(s),
                   stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0, min_ms=min(s), max_ms=max(s))

    @property
    def few_samples(self) -> bool:
        """True when tail percentiles rest on fewer than MIN_SAMPLES_FOR_PERCENTILES samples."""
        return 0 < self.n < MIN_SAMPLES_FOR_PERCENTILES

    def warning(self, what: str = "latency") -> str | None:
        """A note for the reader when the tail percentiles rest on too few samples, else None.

        >>> Latency.from_samples([0.001] * 4).warning("TTFT")
        'TTFT p90/p95/p99 rest on n=4 samples (< 10): read them as the maximum, not a tail estimate'
        """
        if not self.few_samples:
            return None
        return (f"{what} p90/p95/p99 rest on n={self.n} samples (< {MIN_SAMPLES_FOR_PERCENTILES}): "
                "read them as the maximum, not a tail estimate")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["few_samples"] = self.few_samples
        return d
