"""``leaninfer keys create|list|revoke|rotate`` (registered into the main typer app by ``leaninfer.cli``).

The plaintext of a key is printed once, on stdout, when it is created or rotated; the store keeps its hash.
``keys create`` has one flag per :class:`~.keys.KeyPolicy` field, named, typed and described by the field.
"""

from __future__ import annotations

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
from .cli import cell, csv_list, markup_safe, open_existing_store, print_table, store_option
from .keys import KeyPolicy, KeyRecord, hash_key, new_key
from .store import open_store

console = Console(stderr=True)
STORE_HELP = "the keys and ledger file the server uses"
_FLAG_HELP = {"models": "comma-separated served names or routes (default: all)"}


def _policy_flags(fn):
    """Give ``fn`` (which takes ``**policy``) one keyword option per KeyPolicy field, ahead of its own
    parameters: ``budget_usd_day`` is ``--budget-usd-day``, typed and described by the field; a list field is
    one comma-separated string."""
    params = []
    for field, info in KeyPolicy.model_fields.items():
        kind = info.annotation
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None: X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            kind = str
        default = ... if info.is_required() else info.default
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
    def create(*, store: str = store_option(STORE_HELP), **policy):
        """Create a key and print it once (only its hash is stored)."""
        if policy["models"] is not None:
            policy["models"] = csv_list(policy["models"])
        checked = KeyPolicy(**policy)  # checks every value: the flag of a bad one is named (user_errors)
        key_id, plaintext, key_hash = new_key()
        with closing(open_store(store)) as s:
            s.add_key(KeyRecord(key_id, key_hash, checked, time.time()))
        console.print(f"created key {key_id} for team {checked.team!r} in {markup_safe(store)}; it is shown once, "
                      f"here:")
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
        for col in ("key_id", "team", "name", "budgets", "limits", "models", "created", "revoked"):
            t.add_column(col, no_wrap=col == "key_id")
        for r in records:
            p = r.policy
            budgets = ", ".join(f"{b}={v:g}" for b, (_, v) in p.budgets().items()) or "-"
            limits = ", ".join(f"{n}={v}" for n, v in (("rpm", p.rpm), ("tpm", p.tpm)) if v) or "-"
            t.add_row(cell(r.key_id), cell(p.team), cell(p.name or "-"), budgets, limits,
                      cell(",".join(p.models) if p.models else "all"), _when(r.created_at),
                      _when(r.revoked_at) if r.revoked_at else "-")
        print_table(t)

    @keys.command("revoke")
    @user_errors
    def revoke(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = store_option(STORE_HELP)):
        """Revoke a key: running servers refuse it (401) within a second."""
        with closing(_existing(store)) as s:
            if not s.revoke_key(key_id, time.time()):
                raise LeaninferError(f"no active key {key_id!r} in {store}: see `leaninfer keys list --all`")
        console.print(f"revoked key {markup_safe(key_id)}")

    @keys.command("rotate")
    @user_errors
    def rotate(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = store_option(STORE_HELP)):
        """Give a key a new secret (printed once); the old secret stops working. Its id, team, budgets and
        spend so far stay."""
        _, fresh, _ = new_key()
        plaintext = f"lk_{key_id}.{fresh.split('.', 1)[1]}"
        with closing(_existing(store)) as s:
            if not s.set_key_hash(key_id, hash_key(plaintext)):
                raise LeaninferError(f"no active key {key_id!r} in {store}: see `leaninfer keys list`")
        console.print(f"rotated key {markup_safe(key_id)}; the new secret is shown once, here:")
        print(plaintext)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
