"""Migration 5, the ledger at scale: a covering index for the budget windows' cold reads, (time, id) for pages
and retention, the daily rollups
(:mod:`..rollups`) backfilled from the rows already there, and the horizon below which retention deleted rows.

Generated from :mod:`..rollups`' frozen constants (64 histogram columns would be a wall of text); the same text
for SQLite and PostgreSQL, no ``;`` inside a statement. Day of a row, dialect-neutral: ``CAST(x AS BIGINT)``
truncates in SQLite and rounds in PostgreSQL, so the cast's day is taken back by one when it lands after ``x``.
"""

from __future__ import annotations

from ..rollups import DIMS, EDGES, HIST, SUMS

_DAY0 = "(CAST(created_at AS {int}) / 86400) * 86400"
DAY_OF_ROW = f"({_DAY0} - CASE WHEN {_DAY0} > created_at THEN 86400 ELSE 0 END)"
MODEL_OF_ROW = "CASE WHEN served_model <> '' THEN served_model ELSE requested_model END"


def _bucket_sum(b: int) -> str:
    lo = "" if b == 0 else f" AND duration_s >= {EDGES[b - 1]!r}"
    hi = "" if b == len(EDGES) else f" AND duration_s < {EDGES[b]!r}"
    return f"SUM(CASE WHEN status < 400{lo}{hi} THEN 1 ELSE 0 END)"


_SELECT = {
    "day": DAY_OF_ROW, "team": "team", "key_id": "COALESCE(key_id, '')", "model": MODEL_OF_ROW,
    "workflow": "workflow", "endpoint": "endpoint",
    "requests": "COUNT(*)", "input_tokens": "SUM(input_tokens)", "output_tokens": "SUM(output_tokens)",
    "cost_nusd": "SUM(cost_nusd)", "charged_tokens": "SUM(charged_tokens)",
    "cache_hits": "SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END)", "cache_saved_nusd": "SUM(cache_saved_nusd)",
    "routing_saved_nusd": "SUM(routing_saved_nusd)", "errors": "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)",
    **{h: _bucket_sum(b) for b, h in enumerate(HIST)},
}

# every rollup row again from the ledger's rows (the backfill; scripts/make_ledger.py after a bulk load)
ROLLUP_FROM_ROWS = (f"INSERT INTO ledger_daily ({', '.join((*DIMS, *SUMS, *HIST))}) "
                    f"SELECT {', '.join(_SELECT[c] for c in (*DIMS, *SUMS, *HIST))} FROM ledger "
                    f"GROUP BY {', '.join(_SELECT[c] for c in DIMS)}")

LEDGER_AT_SCALE = f"""
    CREATE INDEX ledger_key_spend ON ledger (key_id, created_at, cost_nusd, charged_tokens);
    DROP INDEX ledger_key_time;
    CREATE INDEX ledger_time_id ON ledger (created_at, request_id);
    DROP INDEX ledger_time;
    CREATE TABLE ledger_daily (
        day {{real}} NOT NULL, team TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
        workflow TEXT NOT NULL, endpoint TEXT NOT NULL,
        {', '.join(f'{c} {{int}} NOT NULL' for c in (*SUMS, *HIST))},
        PRIMARY KEY ({', '.join(DIMS)}));
    CREATE INDEX ledger_daily_key ON ledger_daily (key_id, day);
    CREATE INDEX ledger_daily_team ON ledger_daily (team, day);
    CREATE TABLE ledger_pruned (horizon {{real}} NOT NULL);
    {ROLLUP_FROM_ROWS}
"""

# migration 9: the daily rollups by team alone (a team's day is the sum of its rollup rows), backfilled from them:
# a month's spend per team, the report admins run most, reads 30 × teams rows, not every key × model × workflow
TEAM_COLUMNS = ("day", "team", *SUMS, *HIST)
TEAM_FROM_DAILY = (f"INSERT INTO ledger_team_daily ({', '.join(TEAM_COLUMNS)}) "
                   f"SELECT day, team, {', '.join(f'SUM({c})' for c in (*SUMS, *HIST))} FROM ledger_daily "
                   "GROUP BY day, team")
TEAM_ROLLUPS = f"""
    CREATE TABLE ledger_team_daily (
        day {{real}} NOT NULL, team TEXT NOT NULL,
        {', '.join(f'{c} {{int}} NOT NULL' for c in (*SUMS, *HIST))},
        PRIMARY KEY (day, team));
    {TEAM_FROM_DAILY}
"""
