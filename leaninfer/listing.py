"""Tables of things a user copies into a flag (profile names, model references, step names).

A name cut to ``aws-c7i.…`` can't be pasted into ``--hardware``: name columns never wrap or shorten, the
free-text column (a description) wraps instead, and where even that can't fit the console, the table is
printed wider than the console rather than cut (a terminal wraps the long line; a pipe keeps it whole).
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

NAME, DATA, TEXT = "name", "data", "text"  # column kinds: copied whole / short values / wrapping prose


def listing_table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A compact table (no vertical borders, so the prose column keeps room at 80 columns).

    ``columns``: (header, kind) with kind NAME (never wrapped), DATA (short values, kept on one line) or TEXT.
    """
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
              title_justify="left")
    for header, kind in columns:
        if kind == TEXT:
            t.add_column(header, ratio=1, overflow="fold")
        else:
            t.add_column(header, no_wrap=True, overflow="ignore", style="bold" if kind == NAME else None)
    return t


def print_listing(console: Console, table: Table) -> None:
    """Print ``table`` at the console's width, or at the table's narrowest whole width if that is wider."""
    # measured unconstrained: rich clamps a table's measurement to the width it is measured at
    need = Measurement.get(console, console.options.update_width(10_000), table).minimum
    if need <= console.width:
        console.print(table)
        return
    wide = console.width
    console.width = need
    try:
        console.print(table)
    finally:
        console.width = wide
