"""The SQL of budgets above the key (:mod:`..scope_budgets`) for :class:`~.sql.SQLStore`, the same text for
SQLite and PostgreSQL: the stored scope budgets, and a scope account's new window (its spend since the window's
start comes from the spend buckets, :mod:`.bucket_sql`).
"""

from __future__ import annotations

_COLUMNS = "scope, limits, created_at, updated_at"
STATEMENTS = {
    "new_window": ("INSERT INTO budget_usage (key_id, budget, window_start, settled, reserved) "
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

