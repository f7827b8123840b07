"""What one key may read about itself (``GET /v1/usage/me``): its spend today, this month and in total ($ and
tokens, from the ledger), each of its budgets with what is spent, reserved and left (from the state the gate
reserves against, so it says exactly what the next request will be checked against), and its rate limits.

Budgets are a list whose items name their ``scope`` (``key``: the key's own), so that the budgets above the key
that cover it (team, tags, model) can join the list without changing its shape.
"""

from __future__ import annotations

import time
from zoneinfo import ZoneInfo

from .keys import KeyRecord
from .money import to_nano, to_usd
from .rate_limits import WINDOW_S
from .store.ports import budget_unit
from .windows import window_bounds

PERIODS = {"today": "day", "month": "month", "total": "total"}


def _amount(unit: str, n: int) -> float | int:
    return to_usd(n) if unit == "usd" else n


def key_usage(store, state, key: KeyRecord, tz: ZoneInfo, now: float | None = None) -> dict:
    """The ``/v1/usage/me`` document of ``key`` (blocking: store reads; run it off the event loop)."""
    now = time.time() if now is None else now
    spend = {}
    for period, window in PERIODS.items():
        start, _ = window_bounds(window, now, tz)
        nusd, tokens = store.spend(key.key_id, start)
        spend[period] = {"usd": to_usd(nusd), "tokens": tokens, "since": start}
    windows = {name: (window, limit, *window_bounds(window, now, tz))
               for name, (window, limit) in key.policy.budgets().items()}
    used = state.budget_used(key.key_id, [(name, w[2]) for name, w in windows.items()]) if windows else {}
    budgets = []
    for name, (window, limit, start, reset) in windows.items():
        unit = budget_unit(name)
        settled, reserved = used[name]
        cap = to_nano(limit) if unit == "usd" else int(limit)
        budgets.append({"scope": "key", "budget": name, "unit": unit, "window": window, "limit": limit,
                        "spent": _amount(unit, settled), "reserved": _amount(unit, reserved),
                        "remaining": _amount(unit, max(0, cap - settled - reserved)),
                        "window_start": start, "resets_at": reset})
    limits = {}
    asks = [(n, q, 0) for n, q in (("rpm", key.policy.rpm), ("tpm", key.policy.tpm)) if q is not None]
    if asks:  # a cost of 0 reads the windows without counting anything
        for (name, quota, _), (_, remaining, reset_at) in zip(asks, state.rate_hit(key.key_id, asks, WINDOW_S, now),
                                                              strict=True):
            limits[name] = {"limit": quota, "remaining": remaining, "window_s": WINDOW_S, "resets_at": reset_at}
    p = key.policy
    return {"object": "usage.me", "key_id": key.key_id, "team": p.team, "name": p.name, "expires_at": p.expires_at,
            "models": p.models, "timezone": str(tz), "spend": spend, "budgets": budgets, "rate_limits": limits}


__all__ = ["key_usage"]
