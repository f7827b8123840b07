"""``leaninfer usage`` (registered into the main typer app by ``leaninfer.cli``)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LeaninferError, valid_list
from .stores import DEFAULT_STORE, open_store
from .usage import GROUPS, PERIODS, check_by, check_period, daily_budgets, totals, usage_payload
from .usage_plot import PLOT_BY, plot_usage, save_figure

console = Console(stderr=True)
PLOT_FORMATS = ("png", "svg", "pdf")


def _csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def open_existing_store(url: str):
    """The store at ``url`` for reading: a SQLite file must already exist (reading never creates one)."""
    if "://" not in url or url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise LeaninferError(f"no ledger at {str(path)!r}: give --store PATH, the file `leaninfer serve` "
                                 f"writes (default {DEFAULT_STORE}, next to the server)")
    return open_store(url)


def _fmt_usd(v: float) -> str:
    if 0 < v < 1e-6:
        return "<$0.000001"
    return f"${v:,.6f}" if 0 < v < 0.01 else f"${v:,.2f}"


def _table(payload: dict) -> Table:
    names = [*payload["by"], *(["period"] if payload["period"] else [])]
    t = Table(title=f"usage by {', '.join(names) or 'everything'} ({payload['tz']})")
    for n in names:  # group names are what people search for: never cut them
        width = max([len(n)] + [len(str(g[n]) or "(none)") for g in payload["groups"]])
        t.add_column(n, no_wrap=True, min_width=width)
    for col in ("requests", "in tokens", "out tokens", "spend", "p95 s", "cache hits", "cache saved",
                "routing saved", "errors"):
        t.add_column(col, justify="right", no_wrap=True)

    def row(g: dict) -> list[str]:
        p95 = "-" if g["p95_latency_s"] is None else f"{g['p95_latency_s']:.3f}"
        if g["few_latency_samples"]:
            p95 += f" (n={g['latency_n']})"
        return [f"{g['requests']:,}", f"{g['input_tokens']:,}", f"{g['output_tokens']:,}", _fmt_usd(g["spend_usd"]),
                p95, f"{g['cache_hits']:,}", _fmt_usd(g["cache_saved_usd"]), _fmt_usd(g["routing_saved_usd"]),
                f"{g['errors']:,}"]

    for g in payload["groups"]:
        t.add_row(*[str(g[n]) or "(none)" for n in names], *row(g))
    if len(payload["groups"]) > 1:
        t.add_section()
        t.add_row("total", *[""] * (len(names) - 1), *row(payload["totals"]), style="bold")
    return t


def register(app: typer.Typer, user_errors) -> None:
    @app.command("usage")
    @user_errors
    def usage_cmd(
        store: str = typer.Option(DEFAULT_STORE, "--store", help="the ledger: a SQLite file or a store URL"),
        by: str = typer.Option("team", "--by", help=f"group by, comma-separated: {valid_list(GROUPS)}"),
        period: str = typer.Option(None, "--period", help=f"and by period: {valid_list(PERIODS)}"),
        since: str = typer.Option(None, "--since", help="from this ISO date/time (inclusive)"),
        until: str = typer.Option(None, "--until", help="to this ISO date/time (exclusive)"),
        tz: str = typer.Option("UTC", "--tz", help="time zone of days, hours and naive --since/--until"),
        json_out: bool = typer.Option(False, "--json", help="print the groups as a JSON list"),
        csv_out: bool = typer.Option(False, "--csv", help="print the groups as CSV"),
        plot: Path = typer.Option(None, "--plot", help="also draw spend over time against the daily budgets, "
                                                       "and the top spenders, to this PNG"),
        top: int = typer.Option(5, "--top", min=1, help="spenders drawn as their own line in --plot"),
    ):
        """Spend, tokens, requests, p95 latency and cache/routing savings from the ledger, grouped."""
        groups = check_by(_csv_list(by))
        check_period(period)
        if json_out and csv_out:
            raise LeaninferError("--json and --csv both print the report: choose one")
        if plot is not None and plot.suffix.lstrip(".").lower() not in PLOT_FORMATS:
            raise LeaninferError(f"--plot {str(plot)!r}: give a file ending in {valid_list(PLOT_FORMATS)}")
        st = open_existing_store(store)
        try:
            payload = usage_payload(st, groups, period, since, until, tz)
            if plot is not None:
                plot_by = next((b for b in groups if b in PLOT_BY), "team")
                rows = st.rows(payload["since"], payload["until"])
                fig = plot_usage(rows, daily_budgets(st, plot_by), by=plot_by, period=period or "day", tz=tz,
                                 top_n=top)
                console.print(f"wrote {save_figure(fig, plot)}")
        finally:
            st.close()
        if json_out:
            print(json.dumps(payload["groups"], indent=2))
        elif csv_out:
            buf = io.StringIO()
            fields = list(payload["groups"][0]) if payload["groups"] else list(totals([]))
            w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(payload["groups"])
            sys.stdout.write(buf.getvalue())
        else:
            if not payload["groups"]:
                console.print("no ledger rows in the chosen range")
            else:
                table = _table(payload)
                # never squeeze the table to the terminal (or rich's 80 columns when piped): cut names mislead
                width = max(Console().width, Console(width=100_000).measure(table).maximum)
                Console(width=width).print(table)
