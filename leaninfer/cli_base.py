"""What every ``leaninfer`` command shares: the typer app with its ``--verbose`` option, the consoles, and the
wrapper that turns a user's error into one line and an exit code. Light on purpose (typer, rich, pydantic):
:mod:`.entry` builds the ledger and key commands on it without importing the models or the server.
"""

from __future__ import annotations

import functools
import os
import sys

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from . import logs
from .errors import LeaninferError
from .logs import quiet_libraries

HELP = "Make open models cheaper to run, and prove it with numbers."
# Tables are wide: when output is piped (CI logs, `| tee`), don't wrap them at rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 130)
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 130)  # a set COLUMNS wins


def main_options(verbose: bool = typer.Option(
        False, "--verbose", "-v", help="show the libraries' warnings and progress bars and leaninfer's debug log "
        "(same as LEANINFER_LOG=debug)")):
    """Make open models cheaper to run, and prove it with numbers."""
    if verbose:
        os.environ[logs.ENV] = "debug"  # benchmark children inherit it
        logs.configure()


def new_app() -> typer.Typer:
    """The ``leaninfer`` app without commands: each module registers its own."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=HELP)
    app.callback()(main_options)
    return app


def user_errors(fn):
    """Turn LeaninferError (and bad-value errors from our own validation) into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except LeaninferError as e:
            # escaped: "[ray]" in a message is text, not markup; soft-wrapped: a long message stays one line
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except ValidationError as e:  # a config built from flags: name the flag and what is valid
            err = e.errors()[0]
            flag = "--" + str(err["loc"][-1]).replace("_", "-") if err["loc"] else "input"
            message = f"{flag}: {err['msg']} (got {err.get('input')!r})"
            console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: nothing was written[/]")
            raise typer.Exit(130) from None

    return wrapper


def run(app: typer.Typer) -> None:
    try:
        app()
    except BrokenPipeError:  # `leaninfer ... | head`
        sys.exit(0)
