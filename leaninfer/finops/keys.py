"""API keys: a public id, a secret shown once, and the policy the key carries (team, budgets, limits, models).

A key reads ``lk_<key_id>.<secret>``. Only ``sha256(key)`` is stored: the secret is 256 random bits, so a
plain (unsalted, fast) hash is as safe as a slow one here, and checking a request costs microseconds. The
lookup goes by the public id, then the hashes are compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

PREFIX = "lk_"
MAX_BUDGET_USD = 1e9  # 1e18 nano-dollars: under 2**63, with room for the spend and reservations added to it
MAX_BUDGET_TOKENS = 10**18
MAX_EXPIRES_AT = 32503680000.0  # 3000-01-01: past it, a typo (milliseconds for seconds, say)
_KEY = re.compile(r"^lk_([0-9a-f]{12})\.([A-Za-z0-9_-]{20,})$")


class KeyPolicy(BaseModel):
    """What a key may spend and do. ``None`` means unlimited. CLI flags carry the field names.

    Example:
        >>> KeyPolicy(team="search", budget_usd_day=5.0, rpm=600).team
        'search'
    """

    model_config = ConfigDict(extra="forbid")

    team: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                      description="the team this key's spend is attributed to")
    name: str = Field("", max_length=128, description="a label for people (who holds the key, what for)")
    # A budget is a finite number whose nano-dollars (or tokens) fit the stores' 64-bit integers: inf, nan or
    # 1e400 would be stored as "no budget" (JSON has no inf) or fail every request when turned into nano-dollars.
    budget_usd_day: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                         description="$ per calendar day (in --budget-timezone)")
    budget_usd_month: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                           description="$ per calendar month")
    budget_usd_total: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False,
                                           description="$ over the key's life")
    budget_tokens_day: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS,
                                          description="tokens (input + output) per calendar day")
    budget_tokens_month: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS, description="tokens per calendar month")
    budget_tokens_total: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS, description="tokens over the key's life")
    rpm: int | None = Field(None, ge=1, description="requests per minute (moving window)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute, counted at admission as the worst "
                                                    "case (prompt + max_tokens)")
    models: list[str] | None = Field(None, description="served names or routes this key may use; None: all")
    admin: bool = Field(False, description="may read /v1/usage (everyone's spend) and manage keys and budgets "
                                           "(/v1/admin/...)")
    # In the policy (its JSON), not a column: it is read with the record the gate already reads and caches
    # (1 s), changed in place like a budget, and kept by a rotation; an older server that doesn't know the field
    # refuses the record rather than serving an expired key.
    expires_at: float | None = Field(None, ge=0, le=MAX_EXPIRES_AT, allow_inf_nan=False,
                                     description="when the key stops working: unix seconds, or ISO 8601 with a "
                                                 "timezone (2027-01-31T00:00:00Z); none: never")

    @field_validator("expires_at", mode="before")
    @classmethod
    def _expires_at(cls, v):
        return parse_time(v) if isinstance(v, str) else v

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        if v is not None and not v:
            raise ValueError("models must name at least one model, or be omitted for all")
        return v

    def budgets(self) -> dict[str, tuple[str, float | int]]:
        """The set budgets as ``{name: (window, limit)}``, e.g. ``{"usd_day": ("day", 5.0)}``."""
        return set_budgets(self, "budget_")


def set_budgets(limits, prefix: str = "") -> dict[str, tuple[str, float | int]]:
    """``{name: (window, limit)}`` of the budgets set on ``limits`` (fields ``<prefix><unit>_<window>``), in one
    fixed order: $ then tokens, day, month, total (a key's and a scope's alike)."""
    out = {}
    for unit in ("usd", "tokens"):
        for window in ("day", "month", "total"):
            v = getattr(limits, f"{prefix}{unit}_{window}")
            if v is not None:
                out[f"{unit}_{window}"] = (window, v)
    return out


@dataclass(frozen=True)
class KeyRecord:
    """A stored key: everything but the secret."""

    key_id: str
    key_hash: str
    policy: KeyPolicy
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: float | None = None) -> bool:
        at = self.policy.expires_at
        return at is not None and (time.time() if now is None else now) >= at

    def status(self, now: float | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        return "revoked" if not self.active else "expired" if self.expired(now) else "active"

    def public(self) -> dict:
        """What ``keys list`` shows: no hash, no secret."""
        return {"key_id": self.key_id, "created_at": self.created_at, "revoked_at": self.revoked_at,
                "status": self.status(), **self.policy.model_dump(exclude_none=True)}


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: a number of seconds, or an ISO 8601 time with its timezone.

    Example:
        >>> parse_time("2027-01-01T00:00:00Z")
        1798761600.0
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give unix seconds or ISO 8601 with a timezone, e.g. "
                         "2027-01-31T00:00:00Z") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone: add one, e.g. {text}Z (UTC) or {text}+02:00")
    return at.timestamp()


def new_key() -> tuple[str, str, str]:
    """A fresh ``(key_id, plaintext, hash)``."""
    key_id = secrets.token_hex(6)
    plaintext = f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
    return key_id, plaintext, hash_key(plaintext)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_id_of(plaintext: str) -> str | None:
    """The public id inside a presented key, or None when it doesn't have a key's shape."""
    m = _KEY.match(plaintext)
    return m.group(1) if m else None


def matches(record: KeyRecord, plaintext: str) -> bool:
    return hmac.compare_digest(record.key_hash, hash_key(plaintext))
