"""Setting, listing and deleting budgets above the key: the one code behind ``leaninfer budgets`` and
``/v1/admin/budgets``. Changes land in the store; every server on it applies them within
:data:`.scope_cache.SCOPE_CACHE_S`.
"""

from __future__ import annotations

import time
from zoneinfo import ZoneInfo

from ..errors import LeaninferError
from .money import to_usd
from .scope_budgets import DEFAULT_USER, ScopeBudget, ScopeLimits, new_budget, parse_scope, scope_id
from .store.ports import budget_unit
from .windows import window_bounds


def scope_from(team: str | None = None, tag: str | None = None, model: str | None = None, org: bool = False,
               user: str | None = None, default_user: bool = False) -> str:
    """The scope id named by exactly one of the CLI's scope flags.

    Example:
        >>> scope_from(team="search")
        'team:search'
    """
    given = [(k, v) for k, v in (("team", team), ("tag", tag), ("model", model), ("user", user)) if v is not None]
    given += [(k, None) for k, on in (("org", org), (DEFAULT_USER, default_user)) if on]
    if len(given) != 1:
        named = ", ".join("--" + k for k, _ in given) or "none"
        raise LeaninferError(f"name exactly one scope: --team T, --tag k=v, --model M, --org, --user U or "
                             f"--default-user (got {named})")
    return scope_id(*given[0])


def set_budget(store, scope: str, limits: ScopeLimits, now: float | None = None) -> ScopeBudget:
    """Set ``scope``'s budget to ``limits`` (all of them: a limit left out is removed); returns it."""
    parse_scope(scope)
    new_budget(scope, limits, None, now)  # checks the limits before the store is read
    existing = store.get_scope_budgets([scope]).get(scope)
    budget = new_budget(scope, limits, existing, now)
    store.put_scope_budget(budget)
    return budget


def delete_budget(store, scope: str) -> None:
    parse_scope(scope)
    if not store.delete_scope_budget(scope):
        raise LeaninferError(f"no budget for {scope!r}: see `leaninfer budgets list`")


def usage(store, budget: ScopeBudget, tz: ZoneInfo, now: float | None = None) -> dict:
    """``{budget name: {"limit", "spent", "reserved", "window_start"}}`` of a scope budget ($ in dollars): the
    store's shared state (servers with --shared-state), else what the ledger says the scope spent. The default
    end-user budget has one account per end user: none shown."""
    if budget.scope == DEFAULT_USER:
        return {}
    now = time.time() if now is None else now
    out = {}
    for name, (window, limit) in budget.limits.budgets().items():
        start, _ = window_bounds(window, now, tz)
        settled, reserved = store.budget_used(budget.account(), [(name, start)])[name]
        money = budget_unit(name) == "usd"
        out[name] = {"limit": limit, "spent": to_usd(settled) if money else settled,
                     "reserved": to_usd(reserved) if money else reserved, "window_start": start}
    return out


def listing(store, tz: ZoneInfo | None = None) -> list[dict]:
    """Every scope budget, public fields (and, with ``tz``, its use in the store's shared state)."""
    out = []
    for b in store.list_scope_budgets():
        row = b.public()
        if tz is not None:
            row["usage"] = usage(store, b, tz)
        out.append(row)
    return out


__all__ = ["delete_budget", "listing", "scope_from", "set_budget", "usage"]
