"""The figures of one group of a usage report (sums, p95 of answered requests, savings) and the names of its
periods: shared by the report over rows (:mod:`.usage`) and the one over SQL sums (:mod:`.usage_sql`)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ..latency import MIN_SAMPLES_FOR_PERCENTILES, percentile
from .ledger import LedgerRow
from .money import to_usd

PERIODS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00"}


def period_of(t: float, period: str, tz: ZoneInfo) -> str:
    """The period bucket of unix time ``t`` in ``tz``, e.g. ``2025-03-01`` or ``2025-03-01T14:00``."""
    return datetime.fromtimestamp(t, tz).strftime(PERIODS[period])


class Group:
    __slots__ = ("requests", "input_tokens", "output_tokens", "cost_nusd", "latencies", "cache_hits",
                 "cache_saved_nusd", "routing_saved_nusd", "errors", "p95", "latency_n")

    def __init__(self):
        self.requests = self.input_tokens = self.output_tokens = self.cost_nusd = 0
        self.cache_hits = self.cache_saved_nusd = self.routing_saved_nusd = self.errors = 0
        self.latencies: list[float] = []
        self.p95: float | None = None  # given (from a histogram) instead of computed from latencies
        self.latency_n: int | None = None  # the same

    def add(self, r: LedgerRow) -> None:
        self.requests += 1
        self.input_tokens += r.input_tokens
        self.output_tokens += r.output_tokens
        self.cost_nusd += r.cost_nusd
        self.cache_hits += r.cache == "hit"
        self.cache_saved_nusd += r.cache_saved_nusd
        self.routing_saved_nusd += r.routing_saved_nusd
        if r.status >= 400:
            self.errors += 1
        else:  # a refusal's few microseconds say nothing about how long answers take
            self.latencies.append(r.duration_s)

    def figures(self) -> dict:
        n = self.latency_n if self.latency_n is not None else len(self.latencies)
        return {
            "requests": self.requests, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "spend_nusd": self.cost_nusd, "spend_usd": to_usd(self.cost_nusd),
            "p95_latency_s": (self.p95 if self.p95 is not None or not n else percentile(self.latencies, 95)),
            "latency_n": n,
            "few_latency_samples": 0 < n < MIN_SAMPLES_FOR_PERCENTILES,
            "cache_hits": self.cache_hits, "cache_saved_usd": to_usd(self.cache_saved_nusd),
            "routing_saved_usd": to_usd(self.routing_saved_nusd), "errors": self.errors,
        }
