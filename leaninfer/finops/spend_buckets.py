"""Spend buckets: what each budget scope spent per quarter hour, kept current as ledger rows land, so that a budget
window seen for the first time (a new day, a server's start, a budget just set) reads a few thousand small rows,
not every request of the month.

A row's spend goes to each scope it belongs to: its key (``key:<id>``), its team, the model it asked for (a served
name or a route, as scope budgets name it), each of its tags, its end user (OpenAI's ``user``) and ``org``. A
window's spend since ``t`` is the buckets from the first quarter hour at or after ``t`` plus the raw rows of the
at most 15 minutes before it (an index range). Quarter hours, not days or hours: every time zone's midnight
today is a quarter hour in UTC (offsets such as +05:45), so a day or month window of any ``--budget-timezone``
reads buckets alone.

Buckets outlive retention (:mod:`.retention` deletes raw rows only), so a "total" window stays exact after rows
are gone. The rows a retried write replaces take their share back, as the daily rollups do (:mod:`.rollups`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .ledger import LedgerRow

BUCKET_S = 900


def bucket_of(t: float) -> float:
    """The start of the quarter hour (UTC) holding ``t``.

    Example:
        >>> bucket_of(1_800.0), bucket_of(2_699.9)
        (1800.0, 1800.0)
    """
    return float(math.floor(t / BUCKET_S) * BUCKET_S)


def first_whole(since: float) -> float:
    """The first bucket start at or after ``since``: rows in ``[since, first_whole(since))`` are read raw.

    Example:
        >>> first_whole(1_800.0), first_whole(1_800.5)
        (1800.0, 2700.0)
    """
    return float(math.ceil(since / BUCKET_S) * BUCKET_S)


def scopes_of(row: LedgerRow) -> list[str]:
    """The spend scopes of a ledger row (the names :mod:`.scope_budgets` gives scopes; a key as ``key:<id>``).

    Example:
        >>> scopes_of(LedgerRow("r1", 0.0, 1.0, "embeddings", "minilm", key_id="k1", team="search",
        ...                     tags={"env": "prod"}, end_user="alice"))
        ['key:k1', 'team:search', 'model:minilm', 'tag:env=prod', 'user:alice', 'org']
    """
    out = [f"key:{row.key_id}"] if row.key_id else []
    if row.team:
        out.append(f"team:{row.team}")
    if row.requested_model:
        out.append(f"model:{row.requested_model}")
    out += [f"tag:{k}={v}" for k, v in sorted(row.tags.items())]
    if row.end_user:
        out.append(f"user:{row.end_user}")
    out.append("org")
    return out


def deltas(added: Iterable[LedgerRow], removed: Iterable[LedgerRow] = ()) -> list[tuple[str, float, int, int]]:
    """``(scope, bucket, nano-dollars, tokens)`` to add, one per scope and bucket touched, in key order (two
    writers lock shared bucket rows in one order): what ``added`` adds minus what ``removed`` had added."""
    acc: dict[tuple[str, float], list[int]] = {}
    for rows, sign in ((added, 1), (removed, -1)):
        for r in rows:
            if not r.cost_nusd and not r.charged_tokens:
                continue
            b = bucket_of(r.created_at)
            for scope in scopes_of(r):
                v = acc.setdefault((scope, b), [0, 0])
                v[0] += sign * r.cost_nusd
                v[1] += sign * r.charged_tokens
    return [(scope, b, nusd, tokens) for (scope, b), (nusd, tokens) in sorted(acc.items()) if nusd or tokens]
