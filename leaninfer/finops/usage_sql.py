"""A usage report summed by the database: the same groups and figures as :func:`.usage.usage_report` over the
rows, without loading the rows.

Two sources, chosen per query:

- **raw rows**, grouped in SQL (``GROUP BY`` the asked fields and the report zone's periods); only the answered
  requests' durations come back, as bare floats, for the exact p95. Figures identical to the Python report.
- **daily rollups** (:mod:`.rollups`): when the report's days are UTC days (a zone with no offset; no hours)
  and its bounds fall on midnights, and either the range reaches below the retention horizon (its rows are
  gone) or it holds more than :data:`RAW_ROWS_MAX` requests. Sums are exact; p95 comes from the rollups'
  histograms, within 12% (:func:`.rollups.hist_percentile`).
"""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

from ..errors import LeaninferError
from .rollups import DAY_S, hist_percentile
from .store.ledger_sql import FIGURES, ROLLUP_GROUPS
from .usage_figures import Group, period_of
from .windows import timezone

RAW_ROWS_MAX = 200_000  # above this many requests in range, a rollup-able report reads rollups
MAX_PERIODS = 10_000  # periods of one report grouped in SQL (beyond: a year of hours, the rows are grouped here)
_STEP_S = 900  # every zone's hour and day boundaries fall on a quarter hour UTC
# zones whose days are UTC days: reports in them can read the UTC-day rollups
ZERO_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu",
                        "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0", "GMT+0", "GMT-0",
                        "Greenwich", "Etc/Greenwich"})


def periods(lo: float, hi: float, period: str, z: ZoneInfo) -> list[tuple[float, float, str]]:
    """``[lo, hi)`` cut where ``period``'s label in ``z`` changes: ``(start, end, label)`` in order (a label may
    come twice: the repeated hour when DST ends).

    Example:
        >>> periods(0.0, 2 * 86_400.0, "day", ZoneInfo("UTC"))
        [(0.0, 86400.0, '1970-01-01'), (86400.0, 172800.0, '1970-01-02')]
    """
    out: list[tuple[float, float, str]] = []
    start, label = lo, period_of(lo, period, z)
    t = (lo // _STEP_S + 1) * _STEP_S
    while t < hi:
        here = period_of(t, period, z)
        if here != label:
            out.append((start, t, label))
            start, label = t, here
        t += _STEP_S
    out.append((start, hi, label))
    return out


def _aligned(t: float | None) -> bool:
    return t is None or t % DAY_S == 0


def grouped(store, by: Sequence[str], period: str | None, t0: float | None, t1: float | None,
            tz: str) -> tuple[list[dict], dict, str, float | None]:
    """``(groups, totals, source, rows_since)`` of the report, ``source`` ``"rows"`` or ``"rollups"``;
    ``rows_since``: the retention horizon when the report is from rows and its range reaches below it (the
    figures then start there), else None."""
    z = timezone(tz)
    horizon = store.ledger_read(lambda sql, db: sql.horizon(db))
    gone = horizon > 0 and (t0 is None or t0 < horizon)
    if period in (None, "day") and tz in ZERO_ZONES and _aligned(t0) and _aligned(t1) and set(by) <= ROLLUP_GROUPS:
        if gone or store.ledger_read(lambda sql, db: sql.rollup_requests(db, t0, t1)) > RAW_ROWS_MAX:
            return (*_from_rollups(store, by, period, t0, t1, z), None)
    if gone:
        t0 = horizon
    return (*_from_rows(store, by, period, t0, t1, z), horizon if gone else None)


def _report(groups: dict[tuple, Group], by: Sequence[str], period: str | None) -> list[dict]:
    names = [*by, "period"] if period else list(by)
    out = [{**dict(zip(names, k, strict=True)), **g.figures()} for k, g in groups.items()]
    out.sort(key=lambda d: (d["period"] if period else "", -d["spend_nusd"], *(str(d[b]) for b in by)))
    return out


def _add_sums(g: Group, sums: Sequence) -> None:
    for name, v in zip(FIGURES, sums, strict=True):
        setattr(g, name, getattr(g, name) + int(v))


def _from_rows(store, by, period, t0, t1, z) -> tuple[list[dict], dict, str]:
    cuts = None
    if period:
        span = store.ledger_read(lambda sql, db: sql.time_span(db, t0, t1))
        if span is None:
            return [], Group().figures(), "rows"
        lo = t0 if t0 is not None else span[0]
        hi = t1 if t1 is not None else span[1] + 1.0
        cuts = periods(lo, hi, period, z)
        if len(cuts) > MAX_PERIODS:
            raise_too_many(len(cuts), period)
    bounds = [(a, b) for a, b, _ in cuts] if cuts else None
    n = len(by)

    def key(values) -> tuple:
        return tuple(values[:n]) + ((cuts[values[n]][2],) if cuts else ())

    def read(sql, db):
        groups: dict[tuple, Group] = {}
        for values in sql.raw_sums(db, by, t0, t1, bounds):
            k = key(values)
            g = groups.get(k) or groups.setdefault(k, Group())
            _add_sums(g, values[n + bool(cuts):])
        for values in sql.raw_latencies(db, by, t0, t1, bounds):
            groups[key(values)].latencies.append(values[-1])
        return groups

    groups = store.ledger_read(read)
    if not groups:
        return [], Group().figures(), "rows"
    total = Group()
    for g in groups.values():
        _add_sums(total, [getattr(g, f) for f in FIGURES])
        total.latencies += g.latencies
    return _report(groups, by, period), total.figures(), "rows"


def raise_too_many(n: int, period: str) -> None:
    raise LeaninferError(f"the range holds {n} {period}s; a report holds at most {MAX_PERIODS}: "
                         "give --since/--until or a longer period")


def _from_rollups(store, by, period, t0, t1, z) -> tuple[list[dict], dict, str]:
    by_day = period == "day"
    found = store.ledger_read(lambda sql, db: sql.rollup_sums(db, by, by_day, t0, t1))
    groups: dict[tuple, tuple[Group, list[int]]] = {}
    total, total_hist = Group(), None
    n = len(by) + by_day
    for values in found:
        k = tuple(values[:len(by)]) + ((period_of(float(values[len(by)]), "day", z),) if by_day else ())
        sums, hist = values[n:n + len(FIGURES)], [int(h) for h in values[n + len(FIGURES):]]
        if int(sums[0]) == 0:  # a rollup row whose rows were all replaced away
            continue
        g, gh = groups.get(k) or groups.setdefault(k, (Group(), [0] * len(hist)))
        _add_sums(g, sums)
        _add_sums(total, sums)
        for i, h in enumerate(hist):
            gh[i] += h
        total_hist = [a + b for a, b in zip(total_hist or [0] * len(hist), hist, strict=True)]
    if not groups:
        return [], Group().figures(), "rollups"
    for g, gh in groups.values():
        g.latency_n, g.p95 = sum(gh), hist_percentile(gh, 95)
    total.latency_n, total.p95 = sum(total_hist), hist_percentile(total_hist, 95)
    return _report({k: g for k, (g, _) in groups.items()}, by, period), total.figures(), "rollups"
