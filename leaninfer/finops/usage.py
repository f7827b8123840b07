"""Usage reports from the ledger: spend, tokens, requests, p95 latency and savings, grouped any way a team asks.

The same figures feed ``leaninfer usage`` (table, JSON, CSV) and the server's ``/v1/usage`` admin endpoint
(:func:`usage_payload`). Money is summed as integer nano-dollars and converted to $ once, at the end, so a
report of a million tiny requests adds up to the cent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from ..errors import LeaninferError, valid_list
from .ledger import LedgerRow
from .store import Store
from .usage_figures import PERIODS, Group, period_of
from .usage_sql import grouped
from .windows import quoted, timezone

# group-by name -> how to read it from a row ("model" is the variant that answered; a request refused
# before a model was chosen counts under what it asked for)
GROUPS = {
    "key_id": lambda r: r.key_id or "",
    "team": lambda r: r.team,
    "workflow": lambda r: r.workflow,
    "model": lambda r: r.served_model or r.requested_model,
    "endpoint": lambda r: r.endpoint,
    "user": lambda r: r.end_user,  # OpenAI's ``user``: not in the daily rollups, so always summed from rows
}


def check_by(by: Sequence[str]) -> list[str]:
    bad = [b for b in by if b not in GROUPS]
    if bad:
        raise LeaninferError(f"unknown group-by {', '.join(repr(b) for b in bad)}; valid: {valid_list(GROUPS)}")
    if len(set(by)) != len(by):
        raise LeaninferError(f"group-by names a field twice: {', '.join(by)}")
    return list(by)


def check_period(period: str | None) -> str | None:
    if period is not None and period not in PERIODS:
        raise LeaninferError(f"unknown period {period!r}; valid: {valid_list(PERIODS)} (or none)")
    return period


def parse_time(value: str | float | None, tz: str = "UTC", what: str = "time") -> float | None:
    """Unix seconds from an ISO date/time (naive ones are read in ``tz``) or a finite number of unix seconds."""
    if value is None or value == "":
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = None
    if t is not None:
        if not math.isfinite(t):  # nan or inf would reach the SQL and the JSON answer (which can't hold them)
            raise LeaninferError(f"{what} {quoted(value)} is not a finite number of unix seconds")
        return t
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise LeaninferError(f"{what} {quoted(value)} is not an ISO date or time (e.g. 2025-03-01 or "
                             f"2025-03-01T14:00:00+00:00) nor unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone(tz))
    return dt.timestamp()


def usage_report(rows: Iterable[LedgerRow], by: Sequence[str] = ("team",), period: str | None = None,
                 tz: str = "UTC") -> list[dict]:
    """One dict per group of ``rows``: the ``by`` fields (and ``period``), then the figures.

    Figures: ``requests``, ``input_tokens``, ``output_tokens``, ``spend_usd`` (and the exact ``spend_nusd``),
    ``p95_latency_s`` over answered requests (status < 400) with ``latency_n`` samples and
    ``few_latency_samples`` when that is under 10, ``cache_hits``, ``cache_saved_usd``, ``routing_saved_usd``,
    ``errors`` (status >= 400). Sorted by spend, largest first (within each period, periods in order).

    Example:
        >>> from leaninfer.finops.ledger import LedgerRow
        >>> rows = [LedgerRow("r1", 0.0, 0.1, "embeddings", "minilm", team="a", cost_nusd=5),
        ...         LedgerRow("r2", 0.0, 0.1, "embeddings", "minilm", team="b", cost_nusd=7)]
        >>> [(g["team"], g["spend_nusd"]) for g in usage_report(rows, by=["team"])]
        [('b', 7), ('a', 5)]
    """
    by = check_by(by)
    check_period(period)
    z = timezone(tz)
    groups: dict[tuple, Group] = {}
    for r in rows:
        k = tuple(GROUPS[b](r) for b in by) + ((period_of(r.created_at, period, z),) if period else ())
        g = groups.get(k)
        if g is None:
            g = groups[k] = Group()
        g.add(r)
    names = [*by, "period"] if period else by
    out = [{**dict(zip(names, k, strict=True)), **g.figures()} for k, g in groups.items()]
    out.sort(key=lambda d: (d["period"] if period else "", -d["spend_nusd"], *(str(d[b]) for b in by)))
    return out


def totals(rows: Iterable[LedgerRow]) -> dict:
    """The figures of all ``rows`` together (p95 over all of them, not a sum of groups')."""
    report = usage_report(rows, by=[])
    return report[0] if report else Group().figures()


def key_budgets(store: Store) -> list[dict]:
    """The active keys' $ and token budgets: ``[{"key_id", "team", "usd_day": 5.0, ...}]`` (set ones only)."""
    out = []
    for k in store.list_keys():
        b = {name: limit for name, (_window, limit) in k.policy.budgets().items()}
        if b:
            out.append({"key_id": k.key_id, "team": k.policy.team, **b})
    return out


def daily_budgets(store: Store, by: str) -> dict[str, float]:
    """The $ per day budget of each key (``by="key_id"``) or team (``by="team"``). A team has one only when
    every active key of it has one (their sum): a team with an unbudgeted key has no cap to draw."""
    if by not in ("key_id", "team"):
        raise LeaninferError(f"budgets are per key_id or team, not {by!r}")
    found: dict[str, float | None] = {}
    for k in store.list_keys():
        name = k.key_id if by == "key_id" else k.policy.team
        day = k.policy.budget_usd_day
        prev = found.get(name, 0.0)
        found[name] = None if day is None or prev is None else prev + day
    return {n: v for n, v in found.items() if v is not None}


def usage_payload(store: Store, by: Sequence[str] = ("team",), period: str | None = None,
                  since: str | float | None = None, until: str | float | None = None, tz: str = "UTC") -> dict:
    """What ``/v1/usage`` answers (JSON-serializable): the groups, the totals, the keys' budgets, and the
    ``source`` of the figures: ``"rows"`` (raw rows, grouped in SQL) or ``"rollups"`` (the daily rollups, p95
    from their histograms: see :mod:`.usage_sql`); ``rows_since`` when retention deleted rows of the range and
    the report could not read rollups instead (another zone, hours, a bound inside a day): figures start there.

    ``since``/``until``: ISO dates or times (naive ones in ``tz``) or unix seconds; ``until`` is exclusive.
    """
    by = check_by(by)
    check_period(period)
    timezone(tz)
    t0, t1 = parse_time(since, tz, "since"), parse_time(until, tz, "until")
    if t0 is not None and t1 is not None and t1 <= t0:
        raise LeaninferError(f"until ({quoted(until)}) must be after since ({quoted(since)})")
    if not hasattr(store, "ledger_read"):  # a Store without SQL: group its rows here
        rows = store.rows(t0, t1)
        groups, tot, source, rows_since = usage_report(rows, by, period, tz), totals(rows), "rows", None
    else:
        groups, tot, source, rows_since = grouped(store, by, period, t0, t1, tz)
    return {
        "by": by, "period": period, "tz": tz, "since": t0, "until": t1,
        "groups": groups, "totals": tot, "budgets": key_budgets(store), "source": source,
        **({"rows_since": rows_since} if rows_since is not None else {}),
    }
