"""``leaninfer keys create|list|revoke|rotate`` (registered into the main typer app by ``leaninfer.cli``).

The plaintext of a key is printed once, on stdout, when it is created or rotated; the store keeps its hash.
``keys create`` has one flag per :class:`~.keys.KeyPolicy` field, named, typed and described by the field.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
import types
import typing
from contextlib import closing

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LeaninferError
from .cli import cell, csv_list, markup_safe, open_existing_store, print_table, shown, store_option
from .key_admin import create_key, expiry, revoke_key, rotate_key, update_key
from .keys import KeyPolicy
from .store import open_store

console = Console(stderr=True)
STORE_HELP = "the keys and ledger file the server uses"
_FLAG_HELP = {"models": "comma-separated served names or routes (default: all)"}
_OWN_FLAGS = {"expires_at"}  # given by create's own --expires-at / --expires-in (a time or a duration, as text)


def _policy_flags(fn, changes: bool = False):
    """Give ``fn`` (which takes ``**policy``) one keyword option per KeyPolicy field, ahead of its own
    parameters: ``budget_usd_day`` is ``--budget-usd-day``, typed and described by the field; a list field is
    one comma-separated string. With ``changes`` every option defaults to None (not given: unchanged)."""
    params = []
    for field, info in KeyPolicy.model_fields.items():
        if field in _OWN_FLAGS:
            continue
        kind = info.annotation
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None: X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            kind = str
        default = None if changes else ... if info.is_required() else info.default
        option = typer.Option(default, "--" + field.replace("_", "-"), help=_FLAG_HELP.get(field, info.description))
        params.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    fn.__signature__ = inspect.Signature([*params, *own])  # what typer reads the options from
    return fn


def _existing(store: str):
    return open_existing_store(store, "store", f"create a key first (leaninfer keys create --store {store} ...)")


def register(app: typer.Typer, user_errors) -> None:
    keys = typer.Typer(help="API keys: create, list, revoke, rotate (the server's --auth keys)",
                       no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    @user_errors
    @_policy_flags
    def create(*, store: str = store_option(STORE_HELP),
               expires_at: str = typer.Option(None, "--expires-at", help="when the key stops working: ISO 8601 "
                                              "with a timezone (2027-01-31T00:00:00Z) or unix seconds"),
               expires_in: str = typer.Option(None, "--expires-in", help="the key stops working this long from "
                                              "now: 30d, 12h, 90m, 3600 (s), 2w"),
               **policy):
        """Create a key and print it once (only its hash is stored)."""
        if policy["models"] is not None:
            policy["models"] = csv_list(policy["models"])
        policy["expires_at"] = expiry(expires_at, expires_in)
        checked = KeyPolicy(**policy)  # checks every value: the flag of a bad one is named (user_errors)
        with closing(open_store(store)) as s:
            record, plaintext = create_key(s, checked)
        until = f", expiring {_when(checked.expires_at)}" if checked.expires_at else ""
        console.print(f"created key {record.key_id} for team {checked.team!r} in {markup_safe(store)}{until}; it "
                      "is shown once, here:")
        print(plaintext)

    @keys.command("list")
    @user_errors
    def list_(
        all_: bool = typer.Option(False, "--all", help="include revoked keys"),
        as_json: bool = typer.Option(False, "--json", help="one JSON list on stdout"),
        store: str = store_option(STORE_HELP),
    ):
        """The keys in the store, with their team, budgets and limits (never a secret or hash)."""
        with closing(_existing(store)) as s:
            records = s.list_keys(include_revoked=all_)
        if as_json:
            print(json.dumps([r.public() for r in records], indent=2))
            return
        t = Table(title=f"keys in {markup_safe(store)}")
        for col in ("key_id", "team", "name", "budgets", "limits", "models", "created", "expires", "revoked"):
            t.add_column(col, no_wrap=col == "key_id")
        for r in records:
            p = r.policy
            budgets = ", ".join(f"{b}={v:g}" for b, (_, v) in p.budgets().items()) or "-"
            limits = ", ".join(f"{n}={v}" for n, v in (("rpm", p.rpm), ("tpm", p.tpm)) if v) or "-"
            t.add_row(cell(r.key_id), cell(p.team), cell(p.name or "-"), budgets, limits,
                      cell(",".join(p.models) if p.models else "all"), _when(r.created_at),
                      (_when(p.expires_at) + (" (expired)" if r.expired() else "")) if p.expires_at else "-",
                      _when(r.revoked_at) if r.revoked_at else "-")
        print_table(t)

    @keys.command("update")
    @user_errors
    @functools.partial(_policy_flags, changes=True)
    def update(*, key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               expires_at: str = typer.Option(None, "--expires-at", help="a new expiry: ISO 8601 with a timezone "
                                              "or unix seconds"),
               expires_in: str = typer.Option(None, "--expires-in", help="a new expiry this long from now: 30d, "
                                              "12h, 90m, 3600 (s), 2w"),
               clear: str = typer.Option(None, "--clear", help="comma-separated fields to remove (a budget, rpm, "
                                         "tpm, models, expires_at): unlimited, all models, never expires"),
               store: str = store_option(STORE_HELP), **policy):
        """Change a key's team, budgets, limits, models or expiry in place (the flags given; the rest stay).
        Running servers apply it within a second; its id, secret and spend stay."""
        changes = {k: v for k, v in policy.items() if v is not None}
        if "models" in changes:
            changes["models"] = csv_list(changes["models"])
        if expires_at is not None or expires_in is not None:
            changes["expires_at"] = expiry(expires_at, expires_in)
        for field in csv_list(clear) if clear else []:
            if field in changes:
                raise LeaninferError(f"--clear {field} and a value for it: choose one")
            changes[field] = None
        if not changes:
            raise LeaninferError("nothing to change: give a flag (leaninfer keys update --help)")
        with closing(_existing(store)) as s:
            record = update_key(s, key_id, changes)
        console.print(f"updated key {markup_safe(key_id)}: " + ", ".join(
            f"{k}={shown(getattr(record.policy, k))}" for k in changes))

    @keys.command("revoke")
    @user_errors
    def revoke(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = store_option(STORE_HELP)):
        """Revoke a key: running servers refuse it (401) within a second."""
        with closing(_existing(store)) as s:
            revoke_key(s, key_id)
        console.print(f"revoked key {markup_safe(key_id)}")

    @keys.command("rotate")
    @user_errors
    def rotate(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = store_option(STORE_HELP)):
        """Give a key a new secret (printed once); the old secret stops working. Its id, team, budgets and
        spend so far stay."""
        with closing(_existing(store)) as s:
            plaintext = rotate_key(s, key_id)
        console.print(f"rotated key {markup_safe(key_id)}; the new secret is shown once, here:")
        print(plaintext)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
