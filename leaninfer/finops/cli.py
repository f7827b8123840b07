"""``leaninfer usage``, and what it shares with ``leaninfer keys`` (:mod:`.keys_cli`): the ``--store`` flag,
opening a store only to read it, and printing a table of client strings.

Both are registered into the main typer app by ``leaninfer.cli``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import LeaninferError, valid_list
from .export import export_events
from .spend_report import run_cli as spend_report_cmd
from .store import DEFAULT_STORE, open_store
from .usage import GROUPS, PERIODS, check_by, check_period, daily_budgets, parse_time, totals, usage_payload
from .usage_plot import PLOT_BY, plot_usage, save_figure
from .windows import timezone

console = Console(stderr=True)
PLOT_FORMATS = ("png", "svg", "pdf")
STORE_ENV = "LEANINFER_STORE"

# What a terminal would act on rather than show: C0 and C1 controls (ESC starts a terminal escape), DEL, and
# the invisible or reordering characters (zero widths, line separators, bidi embeddings/overrides/isolates).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def shown(value) -> str:
    r"""``value`` as text with every control or invisible character written as an escape (``\x1b``,
    ``\u202e``): a client's ``user``, ``model``, workflow or tags can't move the cursor, recolour or hide text.

    Example:
        >>> print(shown("a\x1b[2Jb\n"))
        a\x1b[2Jb\x0a
    """
    return _UNSAFE.sub(_visible, str(value))


def cell(value) -> Text:
    """A table cell that prints ``value`` literally: controls escaped (:func:`shown`), rich markup such as
    ``[bold red]`` left as the text it is."""
    return Text(shown(value))


def markup_safe(value) -> str:
    """``value`` for a rich markup string (a message): controls escaped and markup escaped."""
    return escape(shown(value))


def print_table(table: Table) -> None:
    """Print ``table`` on stdout whole: never squeezed to the terminal (or to rich's 80 columns when piped),
    because names people search for and copy (key ids, teams, workflows) must not be cut."""
    width = max(Console().width, Console(width=100_000).measure(table).maximum)
    Console(width=width).print(table)


def store_option(help: str):
    """The ``--store`` flag of every ``keys`` and ``usage`` command (default: $LEANINFER_STORE, else the
    server's default)."""
    return typer.Option(os.environ.get(STORE_ENV, DEFAULT_STORE), "--store", help=f"{help} (env {STORE_ENV})")


def open_existing_store(url: str, what: str, missing: str):
    """The store at ``url`` for reading: a SQLite file must already exist (reading never creates one).
    ``what`` names it and ``missing`` says what to do in the error when it does not exist."""
    if "://" not in url or url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise LeaninferError(f"no {what} at {str(path)!r}: {missing}")
    return open_store(url)


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _fmt_usd(v: float) -> str:
    if 0 < v < 1e-6:
        return "<$0.000001"
    return f"${v:,.6f}" if 0 < v < 0.01 else f"${v:,.2f}"


def _table(payload: dict) -> Table:
    names = [*payload["by"], *(["period"] if payload["period"] else [])]
    t = Table(title=f"usage by {', '.join(names) or 'everything'} ({payload['tz']})")
    # group values are client strings (workflow, model): printed inert, and whole (people search for them)
    cells = [[cell(g[n]) if g[n] != "" else Text("(none)") for n in names] for g in payload["groups"]]
    for i, n in enumerate(names):
        t.add_column(n, no_wrap=True, min_width=max([len(n)] + [c[i].cell_len for c in cells]))
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

    for g, group_cells in zip(payload["groups"], cells, strict=True):
        t.add_row(*group_cells, *row(g))
    if len(payload["groups"]) > 1:
        t.add_section()
        t.add_row("total", *[""] * (len(names) - 1), *row(payload["totals"]), style="bold")
    return t


def register(app: typer.Typer, user_errors) -> None:
    @app.command("usage")
    @user_errors
    def usage_cmd(
        store: str = store_option("the ledger: a SQLite file or a store URL"),
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
        export: bool = typer.Option(False, "--export", help="write the ledger rows of --since/--until as "
                                                            "CloudEvents 1.0 JSON lines instead of a report"),
        output: Path = typer.Option(None, "-o", "--output", help="with --export: this file (default stdout)"),
        report: str = typer.Option(None, "--report", help="a spend summary of the last whole day or week (daily, "
                                                          "weekly), Slack-shaped: to --webhook URL, or --print"),
        webhook: str = typer.Option(None, "--webhook", help="with --report: POST it here (a Slack incoming "
                                                            "webhook, or any URL taking JSON)"),
        print_report: bool = typer.Option(False, "--print", help="with --report: print its JSON on stdout"),
    ):
        """Spend, tokens, requests, p95 latency and cache/routing savings from the ledger, grouped."""
        groups = check_by(csv_list(by))
        check_period(period)
        timezone(tz)
        if json_out and csv_out:
            raise LeaninferError("--json and --csv both print the report: choose one")
        if plot is not None and plot.suffix.lstrip(".").lower() not in PLOT_FORMATS:
            raise LeaninferError(f"--plot {str(plot)!r}: give a file ending in {valid_list(PLOT_FORMATS)}")
        missing = f"give --store PATH, the file `leaninfer serve` writes (default {DEFAULT_STORE}, next to the server)"
        if report is not None:
            with closing(open_existing_store(store, "ledger", missing)) as st:
                spend_report_cmd(st, report, tz, webhook, print_report)
            return
        if export:
            with closing(open_existing_store(store, "ledger", missing)) as st:
                n = export_events(st, output, parse_time(since, tz, "since"), parse_time(until, tz, "until"))
            console.print(f"exported {n:,} ledger rows" + (f" to {markup_safe(output)}" if output else ""))
            return
        with closing(open_existing_store(store, "ledger", missing)) as st:
            payload = usage_payload(st, groups, period, since, until, tz)
            if "rows_since" in payload:
                console.print(f"note: ledger rows before {datetime.fromtimestamp(payload['rows_since'], UTC):%Y-%m-%d} "
                              "were deleted by retention; give UTC midnights (--tz UTC) for the rollups of them")
            if plot is not None:
                plot_by = next((b for b in groups if b in PLOT_BY), "team")
                rows = st.rows(payload["since"], payload["until"])
                fig = plot_usage(rows, daily_budgets(st, plot_by), by=plot_by, period=period or "day", tz=tz,
                                 top_n=top)
                console.print(f"wrote {markup_safe(save_figure(fig, plot))}")
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
                print_table(_table(payload))
