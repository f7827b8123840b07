"""FinOps in the server: keys, budgets under concurrency, the ledger against the responses, cache, limits."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from leaninfer.finops.money import to_nano
from leaninfer.finops.store import open_store

from .conftest import bearer, finops_client, make_key
from .conftest import ledger_rows as ledger
from .store_fixtures import postgres_database

pytestmark = pytest.mark.timeout(600)
EMBED = {"model": "minilm", "input": "a sentence about budgets"}


def test_keys_are_required_and_checked(served, tmp_path, caplog):
    store = str(tmp_path / "l.db")
    good = make_key(store, team="search")
    revoked = make_key(store, team="search")
    limited = make_key(store, team="ads", models=["tiny-gpt2"])
    s = open_store(store)
    s.revoke_key(revoked.split(".")[0][3:], 0.0)
    s.close()

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            out = {}
            for name, headers in [("none", {}), ("garbage", bearer("sk-not-a-key")),
                                  ("wrong-secret", bearer(good[:-4] + "AAAA")), ("revoked", bearer(revoked)),
                                  ("good", bearer(good)), ("other-model", bearer(limited))]:
                out[name] = await c.post("/v1/embeddings", json=EMBED, headers=headers)
            return out

    with caplog.at_level(logging.DEBUG):
        r = asyncio.run(go())
    for name in ("none", "garbage", "wrong-secret", "revoked"):
        assert r[name].status_code == 401, name
        assert r[name].json()["error"]["code"] == "invalid_api_key"
    assert r["good"].status_code == 200
    assert r["other-model"].status_code == 403
    assert "tiny-gpt2" in r["other-model"].json()["error"]["message"]
    # no key in plaintext anywhere: not in the store's files, not in the logs
    blob = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("l.db*") if p.is_file())
    for key in (good, revoked, limited):
        assert key.encode() not in blob and key.split(".")[1].encode() not in blob
        assert key.split(".")[1] not in caplog.text
    rows = ledger(store)
    assert [row.team for row in rows if row.status == 200] == ["search"]  # 401s are not attributed to anyone


@pytest.fixture(params=["in-process", "shared-sqlite", "shared-postgresql"])
def budget_state(request, tmp_path):
    """Where budgets live: this process's memory (one server), or the store (several replicas)."""
    if request.param == "shared-postgresql":
        with postgres_database() as url:
            yield url, True
    else:
        yield str(tmp_path / "l.db"), request.param == "shared-sqlite"


def test_budget_holds_under_200_concurrent_requests(served, budget_state):
    """A key whose $ budget allows about 50 requests, hit by 200 at once: settled spend <= budget, the rest
    get 429 budget_exceeded with Retry-After and RateLimit headers; every answered cost is in the ledger."""
    store, shared = budget_state

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=shared,
                                 batching={"max_queue": 1000}) as c:
            probe_key = make_key(store, team="probe")
            costs = [(await c.post("/v1/embeddings", json=EMBED, headers=bearer(probe_key))).json()["usage"]
                     ["leaninfer"]["cost_usd"] for _ in range(8)]
            budget = 50 * sorted(costs)[len(costs) // 2]
            key = make_key(store, team="search", budget_usd_day=budget)
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
                                        for _ in range(200)))
            return budget, key, rs

    budget, key, rs = asyncio.run(go())
    ok = [r for r in rs if r.status_code == 200]
    refused = [r for r in rs if r.status_code == 429]
    assert len(ok) + len(refused) == 200 and ok and refused
    for r in refused:
        assert r.json()["error"]["type"] == "budget_exceeded"
        assert int(r.headers["Retry-After"]) > 0
        assert "usd_day" in r.headers["RateLimit-Policy"] and "r=" in r.headers["RateLimit"]
    key_id = key.split(".")[0][3:]
    rows = [row for row in ledger(store) if row.key_id == key_id]
    settled = sum(row.cost_nusd for row in rows)
    assert settled <= to_nano(budget)
    assert settled == sum(to_nano(r.json()["usage"]["leaninfer"]["cost_usd"]) for r in ok)
    assert len([row for row in rows if row.status == 200]) == len(ok)
    assert len([row for row in rows if row.error_class == "budget_exceeded"]) == len(refused)


def test_token_budget_is_exact(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            first = await c.post("/v1/embeddings", json=EMBED, headers=bearer(make_key(store, team="p")))
            per_request = first.json()["usage"]["prompt_tokens"]
            key = make_key(store, team="t", budget_tokens_total=7 * per_request + per_request // 2)
            race = await asyncio.gather(*(c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
                                          for _ in range(20)))
            return race, await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))

    rs, after = asyncio.run(go())
    assert sum(r.status_code == 200 for r in rs) == 7
    # during the race, reservations of requests in flight fill the budget: they free within a second or so
    in_flight = [r for r in rs if r.status_code == 429 and r.headers.get("Retry-After") == "1"]
    assert in_flight or all(r.status_code != 429 or "Retry-After" not in r.headers for r in rs)
    # once everything settled, spend fills it: a lifetime budget does not reset, so there's no Retry-After
    assert after.status_code == 429 and "Retry-After" not in after.headers
    assert "does not reset" in after.json()["error"]["message"]


def test_ledger_row_per_request_equals_the_response(served, tmp_path):
    store = str(tmp_path / "l.db")
    secret_text = "the launch codes are 0000 zebra-umbrella"

    async def go():
        key = make_key(store, team="search")
        h = bearer(key, **{"X-Leaninfer-Workflow": "nightly", "X-Leaninfer-Tags": "env=prod,feature=sim"})
        async with finops_client(served, auth="keys", store=store) as c:
            return [await c.post("/v1/embeddings", json={"model": "minilm", "input": [secret_text, "b"]}, headers=h),
                    await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": secret_text,
                                                          "max_tokens": 5}, headers=h),
                    await c.post("/v1/chat/completions", json={"model": "tiny-gpt2", "max_tokens": 4, "user": "u1",
                                                               "messages": [{"role": "user", "content": secret_text}]},
                                 headers=bearer(key)),
                    await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "x", "max_tokens": 99999},
                                 headers=h)]

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 200, 200, 400]
    rows = {row.request_id: row for row in ledger(store)}
    for r in rs[:3]:
        u = r.json()["usage"]
        row = rows[u["leaninfer"]["request_id"]]
        assert row.cost_nusd == to_nano(u["leaninfer"]["cost_usd"]) > 0
        assert row.cost_nusd <= row.reserved_nusd
        assert row.input_tokens == u["prompt_tokens"] and row.output_tokens == u.get("completion_tokens", 0)
        assert row.team == "search" and row.served_model == u["leaninfer"]["variant"]
        assert row.busy_s > 0 and row.duration_s >= row.busy_s
    by_endpoint = {row.endpoint: row for row in rows.values() if row.status == 200}
    assert by_endpoint["embeddings"].workflow == "nightly"
    assert by_endpoint["embeddings"].tags == {"env": "prod", "feature": "sim"}
    assert by_endpoint["chat.completions"].workflow == "u1"  # OpenAI's user, when no header names one
    bad = [row for row in rows.values() if row.status == 400]
    assert len(bad) == 1 and bad[0].cost_nusd == 0 and bad[0].error_class == "invalid_request_error"
    blob = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("l.db*") if p.is_file())
    assert b"zebra-umbrella" not in blob


def test_cache_hits_are_free_and_never_cross_teams(served, tmp_path):
    store = str(tmp_path / "l.db")
    greedy = {"model": "tiny-gpt2", "prompt": "hello there", "max_tokens": 6, "temperature": 0}

    async def go():
        a, b = make_key(store, team="a"), make_key(store, team="b")
        async with finops_client(served, auth="keys", store=store, cache_max_bytes=1 << 20) as c:
            out = []
            for key, body in [(a, greedy), (a, greedy), (b, greedy), (a, EMBED), (a, EMBED),
                              (a, {**greedy, "temperature": 0.8}), (a, {**greedy, "temperature": 0.8})]:
                out.append(await c.post("/v1/completions" if "prompt" in body else "/v1/embeddings", json=body,
                                        headers=bearer(key)))
            return out

    rs = asyncio.run(go())
    u = [r.json()["usage"]["leaninfer"] for r in rs]
    assert [x.get("cached") for x in u] == [False, True, False, False, True, None, None]
    assert u[1]["cost_usd"] == 0 and u[1]["saved_usd"] == u[0]["cost_usd"] > 0
    assert rs[1].json()["choices"][0]["text"] == rs[0].json()["choices"][0]["text"]
    assert rs[4].json()["data"][0]["embedding"] == rs[3].json()["data"][0]["embedding"]
    rows = {row.request_id: row for row in ledger(store)}
    hit = rows[u[1]["request_id"]]
    assert (hit.cache, hit.cost_nusd, hit.cache_saved_nusd, hit.charged_tokens) == \
        ("hit", 0, to_nano(u[0]["cost_usd"]), 0)
    assert rows[u[2]["request_id"]].cache == "miss"  # team b computed its own
    assert rows[u[5]["request_id"]].cache == "off"  # sampled: never cached


def test_rate_limit_429_with_headers(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        key = make_key(store, team="t", rpm=3)
        async with finops_client(served, auth="keys", store=store) as c:
            return [await c.post("/v1/embeddings", json=EMBED, headers=bearer(key)) for _ in range(5)]

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 200, 200, 429, 429]
    r = rs[3]
    assert r.json()["error"]["type"] == "rate_limit_exceeded" and r.json()["error"]["code"] == "rpm"
    assert r.headers["RateLimit-Policy"] == '"rpm";q=3;w=60'
    assert r.headers["RateLimit"].startswith('"rpm";r=0;t=') and 0 < int(r.headers["Retry-After"]) <= 60


def test_open_server_keeps_a_ledger_without_keys(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, store=store) as c:
            return await c.post("/v1/embeddings", json=EMBED)

    r = asyncio.run(go())
    assert r.status_code == 200
    (row,) = ledger(store)
    assert row.key_id is None and row.team == "-" and row.cost_nusd == to_nano(r.json()["usage"]["leaninfer"]["cost_usd"])


def test_usage_endpoint_needs_an_admin_key_and_matches_the_ledger(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        a, b, admin = make_key(store, team="a"), make_key(store, team="b"), make_key(store, team="ops", admin=True)
        async with finops_client(served, auth="keys", store=store) as c:
            for key, n in ((a, 3), (b, 2)):
                for _ in range(n):
                    assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))).status_code == 200
            return (await c.get("/v1/usage", headers=bearer(a)),
                    await c.get("/v1/usage?by=team", headers=bearer(admin)),
                    await c.get("/v1/usage?by=colour", headers=bearer(admin)))

    denied, ok, bad = asyncio.run(go())
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"  # a key, not admin
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    groups = {g["team"]: g for g in ok.json()["groups"]}
    rows = ledger(store)
    for team, n in (("a", 3), ("b", 2)):
        assert groups[team]["requests"] == n
        assert to_nano(groups[team]["spend_usd"]) == sum(r.cost_nusd for r in rows if r.team == team)


def test_budget_thresholds_fire_alerts(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            per = (await c.post("/v1/embeddings", json=EMBED, headers=bearer(make_key(store, team="p")))).json()
            key = make_key(store, team="t", budget_tokens_day=4 * per["usage"]["prompt_tokens"])
            for _ in range(4):
                await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            return (await c.get("/metrics")).text

    text = asyncio.run(go())
    fired = [line for line in text.splitlines() if line.startswith("leaninfer_spend_alerts_total{")
             and 'entity_kind="key"' in line]
    # used 25%, 50%, 75%, 100%: 50% fires, then the jump past 80% and 100% fires the highest only
    assert len(fired) == 1 and fired[0].endswith(" 2.0")
    ratio = [line for line in text.splitlines() if line.startswith("leaninfer_budget_used_ratio{")]
    assert ratio and ratio[0].endswith(" 1.0")
