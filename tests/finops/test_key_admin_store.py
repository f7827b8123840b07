"""The key operations on both stores: concurrent in-place changes of one key all land (the row is locked between
read and write), the expiry survives a rotation, and a spend report is claimed once."""

from __future__ import annotations

import threading

import pytest

from leaninfer.finops.key_admin import create_key, get_key, rotate_key, update_key
from leaninfer.finops.keys import KeyPolicy
from leaninfer.finops.store import open_store

from .store_fixtures import store_at

FIELDS = ["budget_usd_day", "budget_usd_month", "budget_usd_total", "budget_tokens_day", "budget_tokens_month",
          "budget_tokens_total", "rpm", "tpm"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_changes_all_land(kind, tmp_path):
    with store_at(kind, tmp_path) as url:
        s = open_store(url)
        try:
            record, old = create_key(s, KeyPolicy(team="a", expires_at=4e9))
            errors = []

            def change(field: str, value: int):
                t = open_store(url)
                try:
                    for v in range(value, value + 5):
                        update_key(t, record.key_id, {field: v})
                except Exception as e:  # noqa: BLE001 (reported below)
                    errors.append(e)
                finally:
                    t.close()

            threads = [threading.Thread(target=change, args=(f, 10 + i)) for i, f in enumerate(FIELDS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            policy = get_key(s, record.key_id).policy
            assert [getattr(policy, f) for f in FIELDS] == [14 + i for i in range(len(FIELDS))]
            new = rotate_key(s, record.key_id)
            after = get_key(s, record.key_id)
            assert new != old and after.policy == policy and after.policy.expires_at == 4e9
            assert s.claim_report("daily:UTC:1", 1.0) is True and s.claim_report("daily:UTC:1", 2.0) is False
        finally:
            s.close()
