"""The SQL store's schema, written once for SQLite and PostgreSQL: each migration is a template whose column
types come from the dialect (``{real}``: REAL / DOUBLE PRECISION, ``{int}``: INTEGER / BIGINT, ``{blob}``:
BLOB / BYTEA, ``{bool}`` and ``{false}``: INTEGER 0 / BOOLEAN FALSE), so that the two schemas can't drift.

Migrations are only ever appended: version *n* of a store is the first *n* of them, whichever leaninfer
created it. The texts of 1 and 2 are those of the stores before this module existed, so their files and
databases open and move forward unchanged. Statements are separated by ``;`` (no ``;`` inside one).
"""

from __future__ import annotations

from .bucket_sql import MIGRATION as SPEND_BUCKETS
from .ledger_schema import LEDGER_AT_SCALE, TEAM_ROLLUPS
from .scope_sql import MIGRATION as SCOPE_BUDGETS

MIGRATIONS = [
    # 1: keys and the ledger
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL, policy TEXT NOT NULL,
        created_at {real} NOT NULL, revoked_at {real});
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY, created_at {real} NOT NULL, finished_at {real} NOT NULL,
        endpoint TEXT NOT NULL, requested_model TEXT NOT NULL, served_model TEXT NOT NULL,
        variant_hash TEXT NOT NULL, key_id TEXT, team TEXT NOT NULL, workflow TEXT NOT NULL, tags TEXT NOT NULL,
        input_tokens {int} NOT NULL, output_tokens {int} NOT NULL, cached_tokens {int} NOT NULL,
        charged_tokens {int} NOT NULL,
        queue_s {real} NOT NULL, ttft_s {real}, duration_s {real} NOT NULL, busy_s {real} NOT NULL,
        cost_input_nusd {int} NOT NULL, cost_output_nusd {int} NOT NULL, cost_nusd {int} NOT NULL,
        price_basis TEXT NOT NULL, reserved_nusd {int} NOT NULL, reserved_tokens {int} NOT NULL,
        status INTEGER NOT NULL, error_class TEXT NOT NULL, cache TEXT NOT NULL,
        cache_saved_nusd {int} NOT NULL, route TEXT NOT NULL, fp32_cost_nusd {int},
        routing_saved_nusd {int} NOT NULL);
    CREATE INDEX ledger_key_time ON ledger (key_id, created_at);
    CREATE INDEX ledger_team_time ON ledger (team, created_at);
    CREATE INDEX ledger_time ON ledger (created_at)
    """,
    # 2: state shared by the servers on one store (budgets and their holds, rate counters, the response cache)
    """
    CREATE TABLE budget_usage (
        key_id TEXT NOT NULL, budget TEXT NOT NULL, window_start {real} NOT NULL,
        settled {int} NOT NULL, reserved {int} NOT NULL,
        PRIMARY KEY (key_id, budget, window_start));
    CREATE TABLE budget_holds (
        hold_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, items TEXT NOT NULL, expires_at {real} NOT NULL,
        reclaimed {bool} NOT NULL DEFAULT {false});
    CREATE INDEX budget_holds_expiry ON budget_holds (expires_at);
    CREATE TABLE rate_counters (
        key_id TEXT NOT NULL, name TEXT NOT NULL, window_start {real} NOT NULL, count {int} NOT NULL,
        PRIMARY KEY (key_id, name, window_start));
    CREATE TABLE response_cache (
        key TEXT PRIMARY KEY, body {blob} NOT NULL, cost_nusd {int} NOT NULL, size {int} NOT NULL,
        created_at {real} NOT NULL, expires_at {real} NOT NULL);
    CREATE INDEX response_cache_age ON response_cache (created_at);
    CREATE INDEX response_cache_expiry ON response_cache (expires_at)
    """,
    # 3: each hold names the server that took it, so that a dead server's holds are released at the next
    # start-up rather than at their expiry; and the cache entries of earlier versions go, since they may hold
    # generated text (a cache only ever costs a recomputation to empty)
    """
    ALTER TABLE budget_holds ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE INDEX budget_holds_owner ON budget_holds (owner);
    DELETE FROM response_cache
    """,
    # 4: the candidates a request tried before the one that answered it (a route's fallback: an engine
    # overloaded, an upstream down), named with why
    """
    ALTER TABLE ledger ADD COLUMN attempts TEXT NOT NULL DEFAULT ''
    """,
    # 5: the ledger at scale: a covering index for budget windows' spend, daily rollups backfilled from the rows,
    # the retention horizon (text in .ledger_schema)
    LEDGER_AT_SCALE,
    # 6: budgets above the key (team, tag, model, org, end user): the budgets; their spend is kept in budget_usage
    # under accounts such as "team:search@<generation>" (text in .scope_sql)
    SCOPE_BUDGETS,
    # 7: the spend reports sent (daily/weekly summaries): one row per report, so that replicas on one store send
    # each once, and a restart doesn't send it again. (A key's expiry lives in its policy JSON: no column.)
    """
    CREATE TABLE spend_reports (report TEXT PRIMARY KEY, sent_at {real} NOT NULL)
    """,
    # 8: the ledger names the end user (OpenAI's ``user``), and what each budget scope (key, team, model, tag, end
    # user, org) spent per quarter hour, backfilled: a budget window's first read sums a few bucket rows, not the
    # month's requests (text in .bucket_sql)
    SPEND_BUCKETS,
    # 9: the daily rollups by team alone (`usage --by team` over a month reads a few hundred rows; text in
    # .ledger_schema)
    TEAM_ROLLUPS,
]


def migrations(types: dict[str, str]) -> list[str]:
    """:data:`MIGRATIONS` with a dialect's column types filled in.

    Example:
        >>> "BYTEA" in migrations({"real": "DOUBLE PRECISION", "int": "BIGINT", "blob": "BYTEA",
        ...                        "bool": "BOOLEAN", "false": "FALSE"})[1]
        True
    """
    return [m.format(**types) for m in MIGRATIONS]


def statements(script: str) -> list[str]:
    """The statements of one migration, to run one by one inside the caller's transaction."""
    return [s.strip() for s in script.split(";") if s.strip()]
