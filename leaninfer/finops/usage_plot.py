"""The usage plot: how is spend moving against the budget, and who spends it.

Top panel: spend per day (or hour) of the top spenders, one line each (the rest summed as "other"), with
each one's daily $ budget as a dashed line in its colour (per hour: the budget / 24, the even pace).
Bottom panel: the top spenders over the whole range, as bars. Legends sit outside the data.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import LeaninferError
from .ledger import LedgerRow
from .usage import check_period, period_of, usage_report
from .windows import timezone

PLOT_BY = ("team", "key_id")


def _periods(rows: Sequence[LedgerRow], period: str, tz: str) -> list[str]:
    """Every period from the first row's to the last's, empty ones included (a gap is a zero, not nothing)."""
    z = timezone(tz)
    t0, t1 = min(r.created_at for r in rows), max(r.created_at for r in rows)
    out: list[str] = []
    t = t0 - t0 % 3600  # hour steps name every day and hour, DST days included
    while t <= t1:
        p = period_of(t, period, z)
        if not out or out[-1] != p:
            out.append(p)
        t += 3600
    last = period_of(t1, period, z)
    if out[-1] != last:
        out.append(last)
    return out


def plot_usage(rows: Sequence[LedgerRow], budgets: dict[str, float] | None = None, by: str = "team",
               period: str = "day", tz: str = "UTC", top_n: int = 5):
    """The usage figure (a matplotlib ``Figure``; save it with :func:`save_figure`).

    ``budgets``: $ per day per ``by`` value (see :func:`leaninfer.finops.usage.daily_budgets`).

    Example:
        >>> fig = plot_usage(store.rows(), daily_budgets(store, "team"))   # doctest: +SKIP
        >>> save_figure(fig, "usage.png")                                   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    if by not in PLOT_BY:
        raise LeaninferError(f"the plot groups by {' or '.join(PLOT_BY)}, not {by!r}")
    if check_period(period) is None:
        raise LeaninferError("the plot needs a period: day or hour")
    if not rows:
        raise LeaninferError("no ledger rows in the chosen range: nothing to plot")
    budgets = budgets or {}
    overall = usage_report(rows, [by])
    top = [g[by] for g in overall[:top_n]]
    periods = _periods(rows, period, tz)
    index = {p: i for i, p in enumerate(periods)}
    series = {name: [0.0] * len(periods) for name in top}
    other = [0.0] * len(periods)
    for g in usage_report(rows, [by], period, tz):
        (series[g[by]] if g[by] in series else other)[index[g["period"]]] += g["spend_usd"]

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    ax, bars = fig.subplots(2, 1, height_ratios=[3, 2])
    colors = [f"C{i}" for i in range(10)]
    x = list(range(len(periods)))
    per = "day" if period == "day" else "hour"
    for i, name in enumerate(top):
        c = colors[i % 10]
        ax.plot(x, series[name], marker="o", markersize=3, color=c, label=f"{name or '(none)'}")
        if name in budgets:
            b = budgets[name] if period == "day" else budgets[name] / 24
            pace = "/day" if period == "day" else "/day ÷ 24"
            ax.axhline(b, color=c, linestyle="--", linewidth=1.2,
                       label=f"{name} budget ${budgets[name]:,.2f}{pace}")
    if len(overall) > len(top):
        ax.plot(x, other, color="0.5", linewidth=1, label=f"other ({len(overall) - len(top)} {by})")
    step = max(1, len(periods) // 12)
    ax.set_xticks(x[::step], periods[::step], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"spend per {per} ($)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"spend per {per} by {by} ({tz}), top {len(top)}, dashed: daily budget"
                 + (" ÷ 24" if period == "hour" else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)

    ranked = overall[: max(top_n, 10)][::-1]  # largest at the top
    names = [g[by] or "(none)" for g in ranked]
    spend = [g["spend_usd"] for g in ranked]
    drawn = bars.barh(names, spend, color=[colors[top.index(g[by]) % 10] if g[by] in top else "0.6"
                                           for g in ranked])
    bars.bar_label(drawn, labels=[f"${v:,.2f}" for v in spend], padding=3, fontsize=8)
    bars.set_xlabel("spend over the range ($)")
    bars.set_title(f"top spenders by {by}, {periods[0]} to {periods[-1]}", fontsize=10)
    bars.grid(True, axis="x", alpha=0.3)
    bars.margins(x=0.15)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically: a temp file beside it, then a rename."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
