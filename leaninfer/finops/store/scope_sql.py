"""The SQL of budgets above the key (:mod:`..scope_budgets`) for :class:`~.sql.SQLStore`, the same text for
SQLite and PostgreSQL: the stored scope budgets, and what a scope spent since a time, read from the ledger
(where a scope account's new budget window starts, as a key's starts from its spend).

What a scope spent is summed over the ledger's rows: by ``team``, by ``requested_model`` (the served name or
route the client asked for), by tag (the row's ``tags`` JSON holds ``"key": "value"`` exactly once for each
tag; ``REPLACE`` rather than ``LIKE``, which ignores case in SQLite), or all rows (``org``). End users are
not in the ledger: their windows start from nothing. Rows that retention deleted are not counted: a scope's
"total" window set up after a deletion starts from the rows kept (35 days at least).
"""

from __future__ import annotations

import json

_SUMS = "SELECT COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_tokens), 0) FROM ledger WHERE created_at >= ?"
SCOPE_SPEND = {
    "team": _SUMS + " AND team = ?",
    "model": _SUMS + " AND requested_model = ?",
    "tag": _SUMS + " AND REPLACE(tags, ?, '') <> tags",
    "org": _SUMS,
}
_COLUMNS = "scope, limits, created_at, updated_at"
STATEMENTS = {
    **{f"scope_spend_{kind}": sql for kind, sql in SCOPE_SPEND.items()},
    "scope_window": ("INSERT INTO budget_usage (key_id, budget, window_start, settled, reserved) "
                     "VALUES (?, ?, ?, ?, 0) ON CONFLICT DO NOTHING"),
    "scope_put": (f"INSERT INTO scope_budgets ({_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                  "limits = excluded.limits, updated_at = excluded.updated_at"),
    "scope_list": f"SELECT {_COLUMNS} FROM scope_budgets ORDER BY scope",
    "scope_delete": "DELETE FROM scope_budgets WHERE scope = ?",
}
GET_MANY = f"SELECT {_COLUMNS} FROM scope_budgets WHERE scope IN "  # + (?, ?, ...)

# migration 6 (schema.py): the scope budgets; their spend lives in budget_usage under their accounts
MIGRATION = """
    CREATE TABLE scope_budgets (
        scope TEXT PRIMARY KEY, limits TEXT NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL)
"""


def spend_params(kind: str, name: str, since: float) -> tuple | None:
    """The parameters of ``scope_spend_<kind>``; None for a scope the ledger doesn't record (an end user)."""
    if kind == "org":
        return (since,)
    if kind == "tag":
        k, _, v = name.partition("=")
        return since, f"{json.dumps(k)}: {json.dumps(v)}"  # as the ledger writes tags (json.dumps, sort_keys)
    if kind in ("team", "model"):
        return since, name
    return None
