"""Budgets above the key: a team's, a tag's, a model's, the whole organisation's, and each end user's.

A key's budget caps one key. A scope budget caps everything that falls in its scope, whichever key it comes
from: ``team:search`` (every key of team search), ``tag:env=prod`` (requests labelled so in the
``X-Leaninfer-Tags`` header), ``model:gpt2`` (requests for that served name or route), ``org`` (every request),
``user:alice`` (requests whose OpenAI ``user`` field is ``alice``) and ``default-user``: the budget each end user
without a budget of their own gets, each apart (LiteLLM's "customers": one key shared by many end users can't
let one of them spend it all). Same windows and units as a key's ($ and tokens per day, month, in total).

A request reserves its worst case in its key's budgets and in every scope budget that covers it in one atomic
step of the :class:`~.store.ports.State` (:meth:`~.store.ports.State.reserve_scoped`), refused by the first
that would pass its limit, named in the 429.

Spend is kept per *account*: the scope and its budget's generation, ``team:search@1733356800123456``. The
generation is the budget's creation time: a budget deleted and set again starts its windows afresh from the
ledger (what the scope spent while it had no budget counts), while changing a budget's limits keeps its spend.

Tags are the client's labels: a tag budget caps what is labelled so, an allocation tool rather than a wall (a
client that leaves the tag off is not in its scope); team, key, model and org budgets hold whatever the
client sends. A window seen for the first time starts from what its scope spent since the window's start (the
spend buckets, :mod:`.spend_buckets`; the ledger names each request's end user).

A scope may also cap requests and tokens per minute (``rpm``, ``tpm``: :mod:`.rate_limits`), counted at
admission with the key's tokens per minute in one atomic step, per account as its spend is.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ..errors import LeaninferError
from .keys import MAX_BUDGET_TOKENS, MAX_BUDGET_USD, set_budgets
from .windows import quoted

DEFAULT_USER = "default-user"
# The scopes that take a name, in the order their budgets are taken (after the key's): also the lock order of
# the store's rows, the same for every request, so that two requests whose scopes overlap can't deadlock.
KINDS = ("user", "tag", "model", "team", "org")
ALL_KINDS = (*KINDS, DEFAULT_USER)
MAX_NAME = {"team": 64, "tag": 129, "model": 256, "user": 256}  # tag: key=value, each at most 64
MAX_TAG = 64
_TEAM_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


class ScopeLimits(BaseModel):
    """The budgets of one scope, by budget name (``usd_day``: the CLI's ``--usd-day``, the admin API's field);
    ``None`` means no such budget. Same bounds as a key's.

    Example:
        >>> ScopeLimits(usd_day=50.0).budgets()
        {'usd_day': ('day', 50.0)}
    """

    model_config = ConfigDict(extra="forbid")

    usd_day: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                         description="$ per calendar day (in --budget-timezone)")
    usd_month: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                           description="$ per calendar month")
    usd_total: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                           description="$ in total, since the budget was set")
    tokens_day: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS,
                                          description="tokens (input + output) per calendar day")
    tokens_month: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS, description="tokens per calendar month")
    tokens_total: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS, description="tokens in total")
    rpm: int | None = Field(None, ge=1, description="requests per minute (moving window), counted at admission")
    tpm: int | None = Field(None, ge=1, description="tokens per minute, counted at admission as the worst case "
                                                   "(prompt + max_tokens)")

    def budgets(self) -> dict[str, tuple[str, float | int]]:
        """The set budgets as ``{name: (window, limit)}``, in the order a key's are given (not the rate limits)."""
        return set_budgets(self)

    def rates(self) -> dict[str, int]:
        """The set rate limits, ``{"rpm"|"tpm": quota}``."""
        return {name: q for name, q in (("rpm", self.rpm), ("tpm", self.tpm)) if q is not None}


@dataclass(frozen=True)
class ScopeBudget:
    """A stored scope budget: its scope id, its limits, its generation (creation time) and its last change."""

    scope: str
    limits: ScopeLimits
    created_at: float
    updated_at: float

    @property
    def generation(self) -> str:
        return f"{round(self.created_at * 1e6):d}"

    def account(self, user: str = "") -> str:
        """Where this budget's spend is kept: the scope (the end user's, for the default end-user budget) and
        the generation."""
        scope = f"user:{user}" if self.scope == DEFAULT_USER else self.scope
        return f"{scope}@{self.generation}"

    def public(self) -> dict:
        kind, name = parse_scope(self.scope)
        return {"scope": self.scope, "kind": kind, "name": name, "created_at": self.created_at,
                "updated_at": self.updated_at, **self.limits.model_dump(exclude_none=True)}


def _bad(kind: str, name, why: str) -> LeaninferError:
    return LeaninferError(f"{kind} {quoted(name)}: {why}")


def scope_id(kind: str, name: str | None = None) -> str:
    """The id of a scope, its name checked: ``scope_id("team", "search") == "team:search"``; ``org`` and
    ``default-user`` take no name. A bad one is a :class:`LeaninferError` naming it and what is valid.

    Example:
        >>> scope_id("tag", "env=prod"), scope_id("org")
        ('tag:env=prod', 'org')
    """
    if kind not in ALL_KINDS:
        raise LeaninferError(f"unknown budget scope {quoted(kind)}: one of {', '.join(ALL_KINDS)}")
    if kind in ("org", DEFAULT_USER):
        if name not in (None, ""):
            raise _bad(kind, name, "takes no name")
        return kind
    if not isinstance(name, str) or not name:
        raise LeaninferError(f"a {kind} budget needs a {kind} name")
    if len(name) > MAX_NAME[kind]:
        raise _bad(kind, name, f"has {len(name)} characters; at most {MAX_NAME[kind]} are allowed")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise _bad(kind, name, "has a control character")
    if kind == "team" and not set(name) <= _TEAM_CHARS:
        raise _bad(kind, name, "a team is letters, digits and _ . : - (as a key's --team)")
    if kind == "tag":
        k, eq, v = name.partition("=")
        if not eq or not k or not v:
            raise _bad(kind, name, "must be key=value (as in the X-Leaninfer-Tags header), e.g. env=prod")
        for part in (k, v):
            if len(part) > MAX_TAG or "," in part or part != part.strip(" \t"):
                raise _bad(kind, name, f"a tag's key and value are at most {MAX_TAG} characters each, without "
                                       "',' or surrounding spaces")
    if kind in ("model", "user") and name != name.strip():
        raise _bad(kind, name, "has surrounding spaces")
    return f"{kind}:{name}"


def parse_scope(scope: str) -> tuple[str, str]:
    """``(kind, name)`` of a scope id (``("org", "")`` for ``org``), checked as :func:`scope_id` checks it.

    Example:
        >>> parse_scope("team:search")
        ('team', 'search')
    """
    kind, _, name = scope.partition(":")
    scope_id(kind, name or None)
    return kind, name


def scope_of_account(account: str) -> tuple[str, str]:
    """``(kind, name)`` of an account (``team:search@1733…``): what its new windows' ledger spend is summed
    over. A key's account (a key id) has no ``@``."""
    kind, _, name = account.rpartition("@")[0].partition(":")
    return kind, name


def is_scope_account(account: str) -> bool:
    return "@" in account


def label(scope: str, user: str = "") -> str:
    """How a refusal names a scope: ``team search``, ``tag env=prod``, ``user alice (the default end-user
    budget)``, ``org``."""
    if scope == DEFAULT_USER:
        return f"user {user} (the default end-user budget)"
    kind, _, name = scope.partition(":")
    return f"{kind} {name}" if name else kind


def request_scopes(team: str | None, model: str, tags: dict[str, str], user: str | None) -> list[str]:
    """The ids of the scope budgets that may cover a request, in :data:`KINDS` order (the end user's own and
    the default end-user budget both: the first found applies).

    Example:
        >>> request_scopes("search", "gpt2", {"env": "prod"}, "alice")
        ['user:alice', 'default-user', 'tag:env=prod', 'model:gpt2', 'team:search', 'org']
    """
    out = [f"user:{user}", DEFAULT_USER] if user else []
    out += [f"tag:{k}={v}" for k, v in sorted(tags.items())]
    if model:
        out.append(f"model:{model}")
    if team:
        out.append(f"team:{team}")
    out.append("org")
    return out


@dataclass(frozen=True)
class Covering:
    """A scope budget that covers one request: its refusal label, the account its spend goes to, its limits."""

    label: str
    account: str
    budget: ScopeBudget


def covering(found: dict[str, ScopeBudget | None], team: str | None, model: str, tags: dict[str, str],
             user: str | None) -> list[Covering]:
    """The scope budgets of ``found`` (by scope id, None for none) that cover the request, in lock order."""
    out = []
    if user:
        own = found.get(f"user:{user}")
        if own is not None:
            out.append(Covering(label(own.scope), own.account(), own))
        elif found.get(DEFAULT_USER) is not None:
            d = found[DEFAULT_USER]
            out.append(Covering(label(DEFAULT_USER, user), d.account(user), d))
    for scope in request_scopes(team, model, tags, None):
        b = found.get(scope)
        if b is not None:
            out.append(Covering(label(scope), b.account(), b))
    return out


def new_budget(scope: str, limits: ScopeLimits, existing: ScopeBudget | None, now: float | None = None) -> ScopeBudget:
    """``scope``'s budget set to ``limits``: a new one starts a generation, a change keeps it (and its spend)."""
    now = time.time() if now is None else now
    if not limits.budgets() and not limits.rates():
        raise LeaninferError(f"a budget for {scope} needs at least one limit: --usd-day, --usd-month, --usd-total, "
                             "--tokens-day, --tokens-month, --tokens-total, --rpm or --tpm")
    return ScopeBudget(scope, limits, existing.created_at if existing else now, now)
