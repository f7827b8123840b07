"""The SQL of spend buckets (:mod:`..spend_buckets`) for :class:`~.sql.SQLStore`, the same text for SQLite and
PostgreSQL: migration 8 (the ledger's ``end_user`` column, the table, its backfill), the upsert the ledger's
append runs, and a scope's spend since a time (buckets, plus the raw rows of the partial quarter hour before).

The backfill reads rows at or after the retention horizon and, under it, the daily rollups (keys, teams, the
organisation: the scopes they record); tags are exploded from the rows' JSON in Python (:func:`backfill_tags`),
the one step no SQL text does the same way on both engines.
"""

from __future__ import annotations

import json

from ..spend_buckets import BUCKET_S, first_whole

_B0 = f"(CAST(created_at AS {{int}}) / {BUCKET_S}) * {BUCKET_S}"
# the bucket of a row, dialect-neutral (CAST truncates in SQLite and rounds in PostgreSQL: see .ledger_schema)
BUCKET_OF_ROW = f"({_B0} - CASE WHEN {_B0} > created_at THEN {BUCKET_S} ELSE 0 END)"
_HORIZON = "(SELECT COALESCE(MAX(horizon), 0) FROM ledger_pruned)"
_ROWS = f"{BUCKET_OF_ROW} AS bucket, cost_nusd AS a, charged_tokens AS b FROM ledger WHERE created_at >= {_HORIZON}"
_DAILY = f"day AS bucket, cost_nusd AS a, charged_tokens AS b FROM ledger_daily WHERE day < {_HORIZON}"

# every bucket again from the ledger's rows and, under the horizon, its daily rollups (but tags: backfill_tags)
BUCKETS_FROM_LEDGER = f"""
    INSERT INTO spend_buckets (scope, bucket, cost_nusd, charged_tokens)
    SELECT scope, bucket, SUM(a), SUM(b) FROM (
        SELECT 'key:' || key_id AS scope, {_ROWS} AND key_id IS NOT NULL
        UNION ALL SELECT 'team:' || team, {_ROWS} AND team <> ''
        UNION ALL SELECT 'model:' || requested_model, {_ROWS} AND requested_model <> ''
        UNION ALL SELECT 'user:' || end_user, {_ROWS} AND end_user <> ''
        UNION ALL SELECT 'org', {_ROWS}
        UNION ALL SELECT 'key:' || key_id, {_DAILY} AND key_id <> ''
        UNION ALL SELECT 'team:' || team, {_DAILY} AND team <> ''
        UNION ALL SELECT 'org', {_DAILY}) AS u
    GROUP BY scope, bucket HAVING SUM(a) <> 0 OR SUM(b) <> 0
"""
# migration 8 (schema.py)
MIGRATION = f"""
    ALTER TABLE ledger ADD COLUMN end_user TEXT NOT NULL DEFAULT '';
    CREATE TABLE spend_buckets (
        scope TEXT NOT NULL, bucket {{real}} NOT NULL, cost_nusd {{int}} NOT NULL, charged_tokens {{int}} NOT NULL,
        PRIMARY KEY (scope, bucket));
    {BUCKETS_FROM_LEDGER}
"""
VERSION = 8

ADD = ("INSERT INTO spend_buckets (scope, bucket, cost_nusd, charged_tokens) VALUES (?, ?, ?, ?) "
       "ON CONFLICT (scope, bucket) DO UPDATE SET cost_nusd = spend_buckets.cost_nusd + excluded.cost_nusd, "
       "charged_tokens = spend_buckets.charged_tokens + excluded.charged_tokens")
_SUMS = "SELECT COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_tokens), 0) FROM "
_RAW = _SUMS + "ledger WHERE created_at >= ? AND created_at < ?"
STATEMENTS = {
    "bucket_add": ADD,
    "bucket_spend": _SUMS + "spend_buckets WHERE scope = ? AND bucket >= ?",
    # the raw rows of [since, first whole bucket): at most 15 minutes, an index range
    "raw_spend_key": _RAW + " AND key_id = ?",
    "raw_spend_team": _RAW + " AND team = ?",
    "raw_spend_model": _RAW + " AND requested_model = ?",
    "raw_spend_user": _RAW + " AND end_user = ?",
    # the row's tags JSON holds '"key": "value"' exactly once per tag (REPLACE, not LIKE: LIKE ignores case in SQLite)
    "raw_spend_tag": _RAW + " AND REPLACE(tags, ?, '') <> tags",
    "raw_spend_org": _RAW,
}


def tag_needle(name: str) -> str:
    """How the ledger's tags JSON (``json.dumps(sort_keys=True)``) writes the tag ``key=value``."""
    k, _, v = name.partition("=")
    return f"{json.dumps(k)}: {json.dumps(v)}"


def scope_spend(db, q: dict[str, str], scope: str, since: float) -> tuple[int, int]:
    """``(nano-dollars, tokens)`` that ``scope`` (``key:k1``, ``team:search``, ``tag:env=prod``, ``org``...) spent
    on requests that arrived at or after ``since``; ``q`` the store's prepared statements."""
    whole = first_whole(since)
    nusd, tokens = db.execute(q["bucket_spend"], (scope, whole)).fetchone()
    if whole > since:
        kind, _, name = scope.partition(":")
        arg = () if kind == "org" else (tag_needle(name) if kind == "tag" else name,)
        a, b = db.execute(q["raw_spend_" + kind], (since, whole, *arg)).fetchone()
        nusd, tokens = int(nusd) + int(a), int(tokens) + int(b)
    return int(nusd), int(tokens)


def backfill_tags(db, prepare, types: dict[str, str]) -> None:
    """Migration 8's tag buckets: each tagged row's spend, grouped by its tags JSON and bucket in SQL, exploded
    into one bucket per tag here."""
    rows = db.execute(prepare(
        f"SELECT tags, {BUCKET_OF_ROW.format(**types)}, SUM(cost_nusd), SUM(charged_tokens) FROM ledger "
        f"WHERE tags <> '{{}}' AND created_at >= {_HORIZON} GROUP BY tags, {BUCKET_OF_ROW.format(**types)}")).fetchall()
    acc: dict[tuple[str, float], list[int]] = {}
    for tags, bucket, nusd, tokens in rows:
        for k, v in json.loads(tags).items():
            s = acc.setdefault((f"tag:{k}={v}", float(bucket)), [0, 0])
            s[0] += int(nusd)
            s[1] += int(tokens)
    found = [(scope, b, n, t) for (scope, b), (n, t) in sorted(acc.items()) if n or t]
    if found:
        cur = db.cursor()
        try:
            cur.executemany(prepare(ADD), found)
        finally:
            cur.close()
