"""The ``leaninfer`` executable: the ledger and key commands (``usage``, ``keys``, ``budgets``) run on an app
of their own, so that they start in a fraction of a second (an admin's ``leaninfer usage`` against a
10M-row ledger answers in under a second: docs/finops.md); every other command, and ``--help``, runs the whole
app of :mod:`.cli`, which imports the models, the benchmarks and the server.

The command's modules are imported by name in :func:`main`, not at the top (an exception to the house rule):
which modules load is the point.
"""

from __future__ import annotations

import importlib
import sys

from .cli_base import new_app, run, user_errors

# the commands whose modules import no model, server or benchmark code, and the module that registers each
LIGHT = {"usage": ".finops.cli", "keys": ".finops.keys_cli", "budgets": ".finops.budgets_cli"}


def command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names: its first word that is not an option (the only top-level option,
    ``--verbose``/``-v``, takes no value).

    Example:
        >>> command(["-v", "usage", "--by", "team"])
        'usage'
    """
    return next((a for a in argv if not a.startswith("-")), None)


def main() -> None:
    name = command(sys.argv[1:])
    if name in LIGHT:
        app = new_app()
        importlib.import_module(LIGHT[name], __package__).register(app, user_errors)
        run(app)
    else:
        importlib.import_module(".cli", __package__).main()


if __name__ == "__main__":
    main()
