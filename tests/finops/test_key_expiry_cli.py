"""``leaninfer keys create --expires-at/--expires-in``: the expiry lands in the key's policy, ``keys list`` shows
it, bad values are refused by flag; and the shared key operations refuse what they must."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.errors import LeaninferError
from leaninfer.finops.key_admin import KeyNotFound, create_key, expiry, parse_duration, update_key
from leaninfer.finops.keys import KeyPolicy
from leaninfer.finops.store import open_store

runner = CliRunner()


def _create(store: str, *flags: str):
    return runner.invoke(app, ["keys", "create", "--store", store, "--team", "search", *flags])


def test_expires_in_and_at(tmp_path):
    store = str(tmp_path / "k.db")
    r = _create(store, "--expires-in", "30d")
    assert r.exit_code == 0, r.output
    r = _create(store, "--expires-at", "2031-01-01T00:00:00Z")
    assert r.exit_code == 0, r.output
    listed = json.loads(runner.invoke(app, ["keys", "list", "--store", store, "--json"]).stdout)
    at = sorted(k["expires_at"] for k in listed)
    assert at[0] == pytest.approx(time.time() + 30 * 86_400, abs=60) and at[1] == 1924992000.0
    assert {k["status"] for k in listed} == {"active"}
    table = runner.invoke(app, ["keys", "list", "--store", store]).output
    assert "2031-01-01" in table


@pytest.mark.parametrize("flags,words", [
    (["--expires-in", "soon"], "expires_in 'soon' is not a duration"),
    (["--expires-at", "2031-01-01"], "has no timezone"),
    (["--expires-at", "2001-01-01T00:00:00Z"], "is in the past"),
    (["--expires-in", "1d", "--expires-at", "2031-01-01T00:00:00Z"], "not both"),
])
def test_bad_expiry_is_refused(tmp_path, flags, words):
    store = str(tmp_path / "k.db")
    r = _create(store, *flags)
    assert r.exit_code != 0 and words in r.output, r.output
    s = open_store(store)
    try:
        assert s.list_keys() == []
    finally:
        s.close()


def test_shared_operations(tmp_path):
    s = open_store(str(tmp_path / "k.db"))
    try:
        record, _ = create_key(s, KeyPolicy(team="a", rpm=5))
        assert update_key(s, record.key_id, {"rpm": None, "tpm": 10}).policy.model_dump(exclude_none=True) == {
            "team": "a", "name": "", "tpm": 10, "admin": False}
        with pytest.raises(LeaninferError, match="tpm"):
            update_key(s, record.key_id, {"tpm": 0})
        assert s.get_key(record.key_id).policy.tpm == 10  # nothing changed
        with pytest.raises(KeyNotFound):
            update_key(s, "zzz", {"tpm": 1})
        with pytest.raises(KeyNotFound):
            update_key(s, "0123456789ab", {"tpm": 1})
        assert parse_duration("2w") == 14 * 86_400 and expiry(None, None) is None
        with pytest.raises(LeaninferError, match="100 years"):
            parse_duration("36600d")
    finally:
        s.close()


def test_keys_update_changes_in_place(tmp_path):
    store = str(tmp_path / "k.db")
    r = _create(store, "--rpm", "5", "--models", "minilm", "--name", "ci")
    assert r.exit_code == 0, r.output
    key_id = r.stdout.strip().split(".")[0][3:]
    r = runner.invoke(app, ["keys", "update", key_id, "--store", store, "--budget-usd-day", "2.5", "--clear", "rpm",
                            "--expires-in", "1d", "--admin"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    try:
        p = s.get_key(key_id).policy
    finally:
        s.close()
    assert (p.budget_usd_day, p.rpm, p.models, p.name, p.admin) == (2.5, None, ["minilm"], "ci", True)
    assert p.expires_at == pytest.approx(time.time() + 86_400, abs=60)
    for flags, words in ((["--tpm", "0"], "tpm"), ([], "nothing to change"), (["--clear", "bogus"], "bogus"),
                         (["--rpm", "3", "--clear", "rpm"], "choose one")):
        r = runner.invoke(app, ["keys", "update", key_id, "--store", store, *flags])
        assert r.exit_code != 0 and words in r.output, r.output
    r = runner.invoke(app, ["keys", "update", "0123456789ab", "--store", store, "--rpm", "3"])
    assert r.exit_code != 0 and "no active key '0123456789ab'" in r.output, r.output
