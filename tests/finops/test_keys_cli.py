"""`leaninfer keys`: the plaintext is printed once and never stored; list, revoke and rotate by id."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.finops.keys import KeyPolicy, key_id_of, matches
from leaninfer.finops.store import open_store

runner = CliRunner()


def keys(*args: str):
    return runner.invoke(app, ["keys", *args])


def test_create_list_rotate_revoke(tmp_path):
    store = str(tmp_path / "k.db")
    r = keys("create", "--team", "search", "--budget-usd-day", "5", "--rpm", "60", "--models", "minilm,embed",
             "--store", store)
    assert r.exit_code == 0, r.output
    plaintext = r.stdout.strip().splitlines()[-1]
    key_id = key_id_of(plaintext)
    assert key_id is not None
    blob = b"".join(p.read_bytes() for p in Path(tmp_path).glob("k.db*"))
    assert plaintext.encode() not in blob and plaintext.split(".")[1].encode() not in blob

    listed = json.loads(keys("list", "--json", "--store", store).stdout)
    assert [k["key_id"] for k in listed] == [key_id]
    assert listed[0]["team"] == "search" and listed[0]["budget_usd_day"] == 5 and listed[0]["models"] == ["minilm", "embed"]
    assert "key_hash" not in listed[0] and plaintext not in json.dumps(listed)

    rotated = keys("rotate", key_id, "--store", store)
    assert rotated.exit_code == 0
    fresh = rotated.stdout.strip().splitlines()[-1]
    s = open_store(store)
    record = s.get_key(key_id)
    s.close()
    assert key_id_of(fresh) == key_id and matches(record, fresh) and not matches(record, plaintext)

    assert keys("revoke", key_id, "--store", store).exit_code == 0
    assert json.loads(keys("list", "--json", "--store", store).stdout) == []
    again = keys("revoke", key_id, "--store", store)
    assert again.exit_code == 2 and "no active key" in again.output


def test_bad_values_are_named(tmp_path):
    store = str(tmp_path / "k.db")
    r = keys("create", "--team", "a b", "--store", store)
    assert r.exit_code == 2 and "--team" in r.output
    r = keys("create", "--team", "a", "--tpm", "0", "--store", store)
    assert r.exit_code == 2 and "--tpm" in r.output and "greater than or equal to 1" in r.output
    r = keys("list", "--store", str(tmp_path / "missing.db"))
    assert r.exit_code == 2 and "no store at" in r.output
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "nan"])
def test_non_finite_budgets_are_refused_naming_the_flag(tmp_path, value):
    store = tmp_path / "k.db"
    r = keys("create", "--team", "a", "--budget-usd-day", value, "--store", str(store))
    assert r.exit_code == 2 and "--budget-usd-day" in r.output, r.output
    assert "finite" in r.output or "greater than or equal to 0" in r.output
    assert not store.exists()  # refused before the store was opened: no key, no file


@pytest.mark.parametrize("field", ["budget_usd_day", "budget_usd_month", "budget_usd_total"])
@pytest.mark.parametrize("value", [math.inf, math.nan, float("1e400"), "Infinity", "NaN"])
def test_the_policy_itself_refuses_non_finite_budgets(field, value):
    # the model, not the CLI, refuses them: every path that builds a key (an admin API too) goes through it
    with pytest.raises(ValidationError, match="finite number") as e:
        KeyPolicy(team="a", **{field: value})
    assert e.value.errors()[0]["loc"] == (field,)


def test_budgets_must_fit_the_stores_integers():
    with pytest.raises(ValidationError, match="less than or equal to"):
        KeyPolicy(team="a", budget_usd_day=1e300)  # 1e309 nano-dollars: no 64-bit column holds it
    with pytest.raises(ValidationError, match="less than or equal to"):
        KeyPolicy(team="a", budget_tokens_day=10**30)
    assert KeyPolicy(team="a", budget_usd_day=1e9, budget_tokens_total=10**18).budget_usd_day == 1e9


def test_create_has_a_flag_per_policy_field():
    r = keys("create", "--help")
    assert r.exit_code == 0
    flags = {"--" + f.replace("_", "-") for f in KeyPolicy.model_fields}
    assert all(flag in r.output for flag in flags | {"--store"}), r.output


def test_list_prints_names_and_models_inert(tmp_path):
    store = str(tmp_path / "k.db")
    name = "ops\x1b[31m [bold red]boss[/] \x9b2J\u202e"
    r = keys("create", "--team", "a", "--name", name, "--models", "m1,\x1b]0;title\x07", "--store", store)
    assert r.exit_code == 0, r.output
    out = keys("list", "--store", store)
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.stdout and "\x9b" not in out.stdout and "\x07" not in out.stdout
    assert "\u202e" not in out.stdout
    assert "[bold red]boss[/]" in out.stdout  # markup shown as the text it is
    assert "\\x1b[31m" in out.stdout and "\\x9b2J" in out.stdout and "\\u202e" in out.stdout
    assert "\\x1b]0;title\\x07" in out.stdout
