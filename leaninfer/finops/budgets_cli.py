"""``leaninfer budgets set|list|delete``: budgets above the key (registered into the main typer app by
``leaninfer.cli``); the same code as ``/v1/admin/budgets`` (:mod:`.budget_admin`).

A scope is named by one flag: ``--team T``, ``--tag k=v``, ``--model M``, ``--org``, ``--user U`` or
``--default-user`` (each end user without a budget of their own gets this one, apart); limits by the budget's
name: ``--usd-day 50 --tokens-month 10000000``.
"""

from __future__ import annotations

import json
from contextlib import closing

import typer
from rich.console import Console
from rich.table import Table

from .budget_admin import delete_budget, listing, scope_from, set_budget
from .cli import cell, markup_safe, open_existing_store, print_table, store_option
from .scope_budgets import ScopeLimits
from .store import open_store
from .windows import timezone

console = Console(stderr=True)
STORE_HELP = "the store the servers use (keys, ledger, budgets)"


def _scope_options():
    return dict(
        team=typer.Option(None, "--team", help="every key of this team"),
        tag=typer.Option(None, "--tag", help="requests tagged key=value (X-Leaninfer-Tags)"),
        model=typer.Option(None, "--model", help="requests for this served name or route"),
        org=typer.Option(False, "--org", help="every request"),
        user=typer.Option(None, "--user", help="requests whose OpenAI `user` field is this"),
        default_user=typer.Option(False, "--default-user",
                                  help="each end user without a budget of their own, apart"),
    )


def register(app: typer.Typer, user_errors) -> None:
    budgets = typer.Typer(help="budgets above the key: team, tag, model, org, end user", no_args_is_help=True)
    app.add_typer(budgets, name="budgets")
    o = _scope_options()

    @budgets.command("set")
    @user_errors
    def set_(
        team: str = o["team"], tag: str = o["tag"], model: str = o["model"], org: bool = o["org"],
        user: str = o["user"], default_user: bool = o["default_user"],
        usd_day: float = typer.Option(None, "--usd-day", help=ScopeLimits.model_fields["usd_day"].description),
        usd_month: float = typer.Option(None, "--usd-month", help=ScopeLimits.model_fields["usd_month"].description),
        usd_total: float = typer.Option(None, "--usd-total", help=ScopeLimits.model_fields["usd_total"].description),
        tokens_day: int = typer.Option(None, "--tokens-day", help=ScopeLimits.model_fields["tokens_day"].description),
        tokens_month: int = typer.Option(None, "--tokens-month",
                                         help=ScopeLimits.model_fields["tokens_month"].description),
        tokens_total: int = typer.Option(None, "--tokens-total",
                                         help=ScopeLimits.model_fields["tokens_total"].description),
        rpm: int = typer.Option(None, "--rpm", help=ScopeLimits.model_fields["rpm"].description),
        tpm: int = typer.Option(None, "--tpm", help=ScopeLimits.model_fields["tpm"].description),
        store: str = store_option(STORE_HELP),
    ):
        """Set a scope's budget (every limit at once: one left out is removed). Servers on the store apply it
        within a second."""
        scope = scope_from(team, tag, model, org, user, default_user)
        limits = ScopeLimits(usd_day=usd_day, usd_month=usd_month, usd_total=usd_total, tokens_day=tokens_day,
                             tokens_month=tokens_month, tokens_total=tokens_total, rpm=rpm,
                             tpm=tpm)  # a bad value: its flag named
        with closing(open_store(store)) as s:
            b = set_budget(s, scope, limits)
        shown = ", ".join(f"{n}={v:g}" for n, v in b.limits.model_dump(exclude_none=True).items())
        console.print(f"budget of {markup_safe(scope)} set: {markup_safe(shown)}")

    @budgets.command("list")
    @user_errors
    def list_(as_json: bool = typer.Option(False, "--json", help="one JSON list on stdout"),
              budget_timezone: str = typer.Option("UTC", "--budget-timezone",
                                                  help="the servers' --budget-timezone (for today's use)"),
              store: str = store_option(STORE_HELP)):
        """The budgets above the key, with what each has used in its current windows."""
        tz = timezone(budget_timezone)
        with closing(open_existing_store(store, "store", "set a budget first (leaninfer budgets set ...)")) as s:
            rows = listing(s, tz)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        t = Table(title=f"budgets above the key in {markup_safe(store)}")
        for col in ("scope", "budgets", "used (spent + in flight / limit)"):
            t.add_column(col, no_wrap=col == "scope")
        for r in rows:
            budgets = ", ".join(f"{n}={v:g}" for n, v in r.items() if n in ScopeLimits.model_fields)
            used = ", ".join(f"{n} {u['spent'] + u['reserved']:g}/{u['limit']:g}" for n, u in r["usage"].items())
            t.add_row(cell(r["scope"]), budgets, used or "-")
        print_table(t)

    @budgets.command("delete")
    @user_errors
    def delete(team: str = o["team"], tag: str = o["tag"], model: str = o["model"], org: bool = o["org"],
               user: str = o["user"], default_user: bool = o["default_user"], store: str = store_option(STORE_HELP)):
        """Delete a scope's budget (set again later, it counts afresh from the ledger)."""
        scope = scope_from(team, tag, model, org, user, default_user)
        with closing(open_existing_store(store, "store", "nothing to delete")) as s:
            delete_budget(s, scope)
        console.print(f"budget of {markup_safe(scope)} deleted")
