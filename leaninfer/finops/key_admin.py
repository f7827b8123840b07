"""Creating, listing, changing, revoking and rotating keys: the one code behind ``leaninfer keys`` and
``/v1/admin/keys``. Every change lands in the store; every server on it applies it within
:data:`.gate.KEY_CACHE_S` (the one that made it at once, by forgetting its cached record).

Example:
    >>> record, plaintext = create_key(store, KeyPolicy(team="search"), expires_in="30d")   # doctest: +SKIP
    >>> update_key(store, record.key_id, {"budget_usd_day": 5.0, "rpm": None})          # doctest: +SKIP
"""

from __future__ import annotations

import re
import time

from pydantic import ValidationError

from ..errors import LeaninferError
from .keys import KeyPolicy, KeyRecord, hash_key, new_key, parse_time

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
MAX_EXPIRES_IN_S = 100 * 365 * 86_400.0


class KeyNotFound(LeaninferError):
    """No key (or no active key, where the operation needs one) with that id."""


class BadField(LeaninferError):
    """A value refused, with the field it was given for (``field``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit, s m h d w.

    Example:
        >>> parse_duration("30d"), parse_duration("90m"), parse_duration("45")
        (2592000.0, 5400.0, 45.0)
    """
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise BadField("expires_in", f"expires_in {text!r} is not a duration: give a positive number with an optional "
                             "unit, s m h d or w (e.g. 30d, 12h, 3600)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > MAX_EXPIRES_IN_S:
        raise BadField("expires_in", f"expires_in {text!r} is more than 100 years: leave it out for a key that never "
                             "expires")
    return seconds


def expiry(expires_at: str | float | None = None, expires_in: str | None = None,
           now: float | None = None) -> float | None:
    """Unix seconds at which a key expires, from at most one of ``expires_at`` (unix seconds or ISO 8601 with a
    timezone) and ``expires_in`` (a duration from ``now``); None for neither."""
    if expires_at is not None and expires_in is not None:
        raise BadField("expires_in", "give expires_at or expires_in, not both")
    if expires_in is not None:
        return (time.time() if now is None else now) + parse_duration(expires_in)
    if isinstance(expires_at, str):
        try:
            return parse_time(expires_at)
        except ValueError as e:
            raise BadField("expires_at", f"expires_at: {e}") from None
    return expires_at


def checked_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise KeyNotFound(f"no key {key_id!r}: a key id is 12 hex digits (see `leaninfer keys list`)")
    return key_id


def create_key(store, policy: KeyPolicy, now: float | None = None) -> tuple[KeyRecord, str]:
    """A new key with ``policy``: its record (stored: the hash, never the secret) and its plaintext, which is
    shown once and nowhere kept."""
    now = time.time() if now is None else now
    if policy.expires_at is not None and policy.expires_at <= now:
        raise BadField("expires_at", f"expires_at {policy.expires_at} is in the past: a key must expire after it "
                                     "is made")
    key_id, plaintext, key_hash = new_key()
    record = KeyRecord(key_id, key_hash, policy, now)
    store.add_key(record)
    return record, plaintext


def get_key(store, key_id: str) -> KeyRecord:
    record = store.get_key(checked_id(key_id))
    if record is None:
        raise KeyNotFound(f"no key {key_id!r}: see `leaninfer keys list --all`")
    return record


def list_keys(store, include_revoked: bool = False) -> list[dict]:
    """Every key's public fields (id, status, team, budgets, limits, models, expiry): never a hash or secret."""
    return [r.public() for r in store.list_keys(include_revoked=include_revoked)]


def update_key(store, key_id: str, changes: dict) -> KeyRecord:
    """Change fields of an active key's policy in place: each of ``changes`` replaces its field (``None``
    removes a limit, budget, model list or expiry); the rest stay. Raises KeyNotFound, or LeaninferError
    naming the bad field (nothing changed)."""
    unknown = sorted(set(changes) - set(KeyPolicy.model_fields))
    if unknown:
        raise BadField(unknown[0], f"no key field {unknown[0]!r}; fields: {', '.join(KeyPolicy.model_fields)}")

    def change(policy: KeyPolicy) -> KeyPolicy:
        try:
            return KeyPolicy.model_validate({**policy.model_dump(), **changes})
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise BadField(field, f"invalid value for {field!r}: {err['msg']}") from None

    record = store.update_key_policy(checked_id(key_id), change)
    if record is None:
        raise KeyNotFound(f"no active key {key_id!r}: see `leaninfer keys list --all`")
    return record


def revoke_key(store, key_id: str, now: float | None = None) -> None:
    if not store.revoke_key(checked_id(key_id), time.time() if now is None else now):
        raise KeyNotFound(f"no active key {key_id!r}: see `leaninfer keys list --all`")


def rotate_key(store, key_id: str) -> str:
    """A new secret for an active key (returned, shown once): the old one stops working; the key's id, policy
    (expiry included) and spend stay."""
    _, fresh, _ = new_key()
    plaintext = f"lk_{checked_id(key_id)}.{fresh.split('.', 1)[1]}"
    if not store.set_key_hash(key_id, hash_key(plaintext)):
        raise KeyNotFound(f"no active key {key_id!r}: see `leaninfer keys list`")
    return plaintext


__all__ = ["BadField", "KeyNotFound", "checked_id", "create_key", "expiry", "get_key", "list_keys", "parse_duration",
           "revoke_key", "rotate_key", "update_key"]
