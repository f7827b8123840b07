"""``leaninfer keys create|list|revoke|rotate`` (registered into the main typer app by ``leaninfer.cli``).

The plaintext of a key is printed once, on stdout, when it is created or rotated; the store keeps its hash.
"""

from __future__ import annotations

import json
import os
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LeaninferError
from .keys import KeyPolicy, KeyRecord, hash_key, new_key
from .stores import DEFAULT_STORE, open_store

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # piped: wide enough, ids never cut
STORE_HELP = "the keys and ledger file the server uses (env LEANINFER_STORE)"


def _store_option():
    return typer.Option(os.environ.get("LEANINFER_STORE", DEFAULT_STORE), "--store", help=STORE_HELP)


def _policy_option(field: str, **kw):
    return typer.Option(None, "--" + field.replace("_", "-"), help=KeyPolicy.model_fields[field].description, **kw)


def register(app: typer.Typer, user_errors) -> None:
    keys = typer.Typer(help="API keys: create, list, revoke, rotate (the server's --auth keys)",
                       no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    @user_errors
    def create(
        team: str = typer.Option(..., "--team", help=KeyPolicy.model_fields["team"].description),
        name: str = typer.Option("", "--name", help=KeyPolicy.model_fields["name"].description),
        budget_usd_day: float = _policy_option("budget_usd_day"),
        budget_usd_month: float = _policy_option("budget_usd_month"),
        budget_usd_total: float = _policy_option("budget_usd_total"),
        budget_tokens_day: int = _policy_option("budget_tokens_day"),
        budget_tokens_month: int = _policy_option("budget_tokens_month"),
        budget_tokens_total: int = _policy_option("budget_tokens_total"),
        rpm: int = _policy_option("rpm"),
        tpm: int = _policy_option("tpm"),
        models: str = typer.Option(None, "--models", help="comma-separated served names or routes (default: all)"),
        admin: bool = typer.Option(False, "--admin", help=KeyPolicy.model_fields["admin"].description),
        store: str = _store_option(),
    ):
        """Create a key and print it once (only its hash is stored)."""
        policy = KeyPolicy(team=team, name=name, budget_usd_day=budget_usd_day, budget_usd_month=budget_usd_month,
                           budget_usd_total=budget_usd_total, budget_tokens_day=budget_tokens_day,
                           budget_tokens_month=budget_tokens_month, budget_tokens_total=budget_tokens_total,
                           rpm=rpm, tpm=tpm, admin=admin,
                           models=[m.strip() for m in models.split(",") if m.strip()] if models is not None else None)
        key_id, plaintext, key_hash = new_key()
        s = open_store(store)
        try:
            s.add_key(KeyRecord(key_id, key_hash, policy, time.time()))
        finally:
            s.close()
        console.print(f"created key {key_id} for team {team!r} in {store}; it is shown once, here:")
        print(plaintext)

    @keys.command("list")
    @user_errors
    def list_(
        all_: bool = typer.Option(False, "--all", help="include revoked keys"),
        as_json: bool = typer.Option(False, "--json", help="one JSON list on stdout"),
        store: str = _store_option(),
    ):
        """The keys in the store, with their team, budgets and limits (never a secret or hash)."""
        s = _existing(store)
        try:
            records = s.list_keys(include_revoked=all_)
        finally:
            s.close()
        if as_json:
            print(json.dumps([r.public() for r in records], indent=2))
            return
        t = Table(title=f"keys in {store}")
        for col in ("key_id", "team", "name", "budgets", "limits", "models", "created", "revoked"):
            t.add_column(col, overflow="fold", no_wrap=col == "key_id")
        for r in records:
            p = r.policy
            budgets = ", ".join(f"{b}={v:g}" for b, (_, v) in p.budgets().items()) or "-"
            limits = ", ".join(f"{n}={v}" for n, v in (("rpm", p.rpm), ("tpm", p.tpm)) if v) or "-"
            t.add_row(r.key_id, p.team, p.name or "-", budgets, limits, ",".join(p.models) if p.models else "all",
                      _when(r.created_at), _when(r.revoked_at) if r.revoked_at else "-")
        out.print(t)

    @keys.command("revoke")
    @user_errors
    def revoke(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = _store_option()):
        """Revoke a key: running servers refuse it (401) within a second."""
        s = _existing(store)
        try:
            if not s.revoke_key(key_id, time.time()):
                raise LeaninferError(f"no active key {key_id!r} in {store}: see `leaninfer keys list --all`")
        finally:
            s.close()
        console.print(f"revoked key {key_id}")

    @keys.command("rotate")
    @user_errors
    def rotate(key_id: str = typer.Argument(..., help="the key's id (leaninfer keys list)"),
               store: str = _store_option()):
        """Give a key a new secret (printed once); the old secret stops working. Its id, team, budgets and
        spend so far stay."""
        s = _existing(store)
        try:
            _, fresh, _ = new_key()
            plaintext = f"lk_{key_id}.{fresh.split('.', 1)[1]}"
            if not s.set_key_hash(key_id, hash_key(plaintext)):
                raise LeaninferError(f"no active key {key_id!r} in {store}: see `leaninfer keys list`")
        finally:
            s.close()
        console.print(f"rotated key {key_id}; the new secret is shown once, here:")
        print(plaintext)


def _existing(store: str):
    path = store.removeprefix("sqlite:///")
    if "://" not in store and not os.path.isfile(path):
        raise LeaninferError(f"no store at {store!r}: create a key first (leaninfer keys create --store {store} ...)")
    return open_store(store)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
