"""`leaninfer keys`: the plaintext is printed once and never stored; list, revoke and rotate by id."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.finops.keys import key_id_of, matches
from leaninfer.finops.stores import open_store

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
