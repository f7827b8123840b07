"""Budgets above the key in the server: the hierarchical race over HTTP (a team budget shared by 4 keys, a tag
budget that binds first for the tagged half) on every state, two servers on one SQLite store, end users apart
under the default end-user budget, a change reaching a server that cached the old answer within a second,
``/v1/admin/budgets`` (401/403/200, bad bodies 400 naming the field, in the OpenAPI), and ``leaninfer budgets``."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app as cli_app
from leaninfer.finops.budget_admin import set_budget
from leaninfer.finops.scope_budgets import ScopeLimits
from leaninfer.finops.store import open_store

from .conftest import bearer, finops_client, make_key
from .conftest import ledger_rows as ledger
from .store_fixtures import postgres_database

pytestmark = pytest.mark.timeout(600)
EMBED = {"model": "minilm", "input": "a sentence about budgets"}
TAGGED = {"X-Leaninfer-Tags": "env=prod"}


@pytest.fixture(params=["in-process", "shared-sqlite", "shared-postgresql"])
def budget_state(request, tmp_path):
    if request.param == "shared-postgresql":
        with postgres_database() as url:
            yield url, True
    else:
        yield str(tmp_path / "l.db"), request.param == "shared-sqlite"


def _set(store: str, scope: str, **limits):
    s = open_store(store)
    try:
        return set_budget(s, scope, ScopeLimits(**limits))
    finally:
        s.close()


async def _per_request(c, store) -> int:
    r = await c.post("/v1/embeddings", json=EMBED, headers=bearer(make_key(store, team="probe")))
    return r.json()["usage"]["prompt_tokens"]


async def _warm_up(c, keys):
    """A request of each key, tagged and not: the keys, scope budgets and windows are then known to the server,
    so that the race's requests reach the budgets in the order sent (else those of a key read from the store
    first come after the others have filled the team's budget)."""
    return [await c.post("/v1/embeddings", json=EMBED, headers=bearer(key, **t)) for key in keys
            for t in ({}, TAGGED)]


def _check_race(store, rs, tagged, team_limit, tag_limit):
    ok = [r for r, t in zip(rs, tagged, strict=True) if r.status_code == 200]
    refused = [(r, t) for r, t in zip(rs, tagged, strict=True) if r.status_code == 429]
    assert len(ok) + len(refused) == len(rs) and ok and refused
    for r, t in refused:
        err = r.json()["error"]
        assert err["type"] == "budget_exceeded" and err["code"] == "tokens_day"
        assert err["param"] in (("tag:env=prod", "team:search") if t else ("team:search",))
        named = {"tag:env=prod": "tag env=prod (tokens_day)", "team:search": "team search (tokens_day)"}
        assert named[err["param"]] in err["message"]
        assert r.headers["RateLimit-Policy"].startswith(f'"{err["param"].split(":")[0]}.tokens_day"')
    assert any(r.json()["error"]["param"] == "tag:env=prod" for r, _ in refused)
    rows = [row for row in ledger(store) if row.team == "search"]
    assert sum(row.charged_tokens for row in rows) <= team_limit
    assert sum(row.charged_tokens for row in rows if row.tags.get("env") == "prod") <= tag_limit
    assert sum(row.status == 200 for row in rows) == len(ok)
    assert sum(row.error_class == "budget_exceeded" for row in rows) == len(refused)
    return rows


def test_team_and_tag_budgets_hold_under_200_concurrent_requests(served, budget_state):
    store, shared = budget_state

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=shared,
                                 batching={"max_queue": 1000}) as c:
            per = await _per_request(c, store)
            team_limit, tag_limit = 50 * per + per // 2, 15 * per
            _set(store, "team:search", tokens_day=team_limit)
            _set(store, "tag:env=prod", tokens_day=tag_limit)
            keys = [make_key(store, team="search") for _ in range(4)]
            tagged = [i % 2 == 1 for i in range(200)]
            warm = await _warm_up(c, keys)
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json=EMBED,
                                               headers=bearer(keys[i % 4], **(TAGGED if t else {})))
                                        for i, t in enumerate(tagged)))
            return warm + rs, [False, True] * 4 + tagged, team_limit, tag_limit

    rs, tagged, team_limit, tag_limit = asyncio.run(go())
    rows = _check_race(store, rs, tagged, team_limit, tag_limit)
    if shared:  # the store's account agrees with the ledger, nothing left reserved
        s = open_store(store)
        try:
            b = s.get_scope_budgets(["team:search"])["team:search"]
            start = _day_start(rows)
            assert s.budget_used(b.account(), [("tokens_day", start)])["tokens_day"] == (
                sum(row.charged_tokens for row in rows), 0)
        finally:
            s.close()


def _day_start(rows) -> float:
    t = rows[0].created_at
    return t - t % 86_400  # the servers' budget timezone is UTC


def test_two_servers_on_one_sqlite_store_share_team_and_tag_budgets(served, tmp_path):
    store = str(tmp_path / "shared.db")

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=True,
                                 batching={"max_queue": 1000}) as a, \
                finops_client(served, auth="keys", store=store, shared_state=True,
                              batching={"max_queue": 1000}) as b:
            per = await _per_request(a, store)
            team_limit, tag_limit = 40 * per, 12 * per
            _set(store, "team:search", tokens_day=team_limit)
            _set(store, "tag:env=prod", tokens_day=tag_limit)
            keys = [make_key(store, team="search") for _ in range(4)]
            tagged = [i % 2 == 1 for i in range(200)]
            warm = await _warm_up(a, keys) + await _warm_up(b, keys)
            rs = await asyncio.gather(*((a, b)[i % 2].post("/v1/embeddings", json=EMBED,
                                                           headers=bearer(keys[i % 4], **(TAGGED if t else {})))
                                        for i, t in enumerate(tagged)))
            return warm + rs, [False, True] * 8 + tagged, team_limit, tag_limit

    _check_race(store, *asyncio.run(go()))


def test_one_end_user_spending_the_default_budget_does_not_block_another(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            per = await _per_request(c, store)
            _set(store, "default-user", tokens_day=2 * per)
            key = make_key(store, team="apps")  # one key shared by many end users
            alice = [await c.post("/v1/embeddings", json={**EMBED, "user": "alice"}, headers=bearer(key))
                     for _ in range(3)]
            bob = await c.post("/v1/embeddings", json={**EMBED, "user": "bob"}, headers=bearer(key))
            anonymous = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
        async with finops_client(served, auth="keys", store=store) as c:  # a restart: spend is read from the ledger
            again = [await c.post("/v1/embeddings", json={**EMBED, "user": u}, headers=bearer(key))
                     for u in ("alice", "bob", "bob")]
        return alice, bob, anonymous, again

    alice, bob, anonymous, again = asyncio.run(go())
    assert [r.status_code for r in alice] == [200, 200, 429]
    err = alice[2].json()["error"]
    assert err["param"] == "default-user" and "user alice (the default end-user budget)" in err["message"]
    assert bob.status_code == 200 and anonymous.status_code == 200
    # the ledger names each row's end user: after a restart alice is still out, bob has one request left
    assert [r.status_code for r in again] == [429, 200, 429]


def test_a_budget_change_reaches_a_server_within_its_cache_time(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            key = make_key(store, team="search")
            before = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))  # caches "no team budget"
            _set(store, "team:search", tokens_day=1)  # another server, or the CLI, changes it in the store
            await asyncio.sleep(1.2)  # the cache time (1 s) has passed
            after = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            return before, after

    before, after = asyncio.run(go())
    assert before.status_code == 200
    assert after.status_code == 429 and after.json()["error"]["param"] == "team:search"


def test_admin_budgets_route(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            admin, user = bearer(make_key(store, team="ops", admin=True)), bearer(make_key(store, team="search"))
            out = {"none": await c.get("/v1/admin/budgets"),
                   "user_get": await c.get("/v1/admin/budgets", headers=user),
                   "user_put": await c.put("/v1/admin/budgets", json={"scope": "org", "usd_day": 1}, headers=user),
                   "user_delete": await c.delete("/v1/admin/budgets?scope=org", headers=user),
                   "put": await c.put("/v1/admin/budgets", json={"scope": "team:search", "tokens_day": 1},
                                      headers=admin),
                   "get": await c.get("/v1/admin/budgets", headers=admin),
                   "refused": await c.post("/v1/embeddings", json=EMBED, headers=user),  # applied at once here
                   "bad": {}}
            for name, body in {"scope": {"scope": "team:a b", "usd_day": 1}, "usd_day": {"scope": "org", "usd_day": -1},
                               "bogus": {"scope": "org", "bogus": 1}, "limits": {"scope": "org"},
                               "type": {"scope": "org", "tokens_day": "lots"},
                               "kind": {"scope": "galaxy:x", "usd_day": 1}}.items():
                out["bad"][name] = await c.put("/v1/admin/budgets", json=body, headers=admin)
            out["not_json"] = await c.put("/v1/admin/budgets", content=b"{nope", headers=admin)
            out["delete_none"] = await c.delete("/v1/admin/budgets", headers=admin)
            out["delete_unknown"] = await c.delete("/v1/admin/budgets?scope=team:other", headers=admin)
            out["delete"] = await c.delete("/v1/admin/budgets?scope=team:search", headers=admin)
            out["after_delete"] = await c.post("/v1/embeddings", json=EMBED, headers=user)
            out["openapi"] = await c.get("/openapi.json")
            return out

    r = asyncio.run(go())
    assert r["none"].status_code == 401
    for name in ("user_get", "user_put", "user_delete"):
        assert r[name].status_code == 403 and r[name].json()["error"]["code"] == "not_admin", name
    assert r["put"].status_code == 200 and r["put"].json()["tokens_day"] == 1
    assert [b["scope"] for b in r["get"].json()["data"]] == ["team:search"]
    assert r["get"].json()["data"][0]["usage"]["tokens_day"]["limit"] == 1
    assert r["refused"].status_code == 429 and r["refused"].json()["error"]["param"] == "team:search"
    for field, resp in r["bad"].items():
        assert resp.status_code == 400, (field, resp.text)
        err = resp.json()["error"]
        named = {"limits": "at least one limit", "kind": "galaxy", "type": "tokens_day"}.get(field, field)
        assert named in err["message"] or err["param"] == field, (field, err)
    assert r["bad"]["scope"].json()["error"]["param"] == "scope"
    assert r["not_json"].status_code == 400 and r["delete_none"].status_code == 400
    assert r["delete_unknown"].status_code == 404 and "team:other" in r["delete_unknown"].json()["error"]["message"]
    assert r["delete"].status_code == 200 and r["after_delete"].status_code == 200
    ops = r["openapi"].json()["paths"]["/v1/admin/budgets"]
    assert set(ops) >= {"get", "put", "delete"}
    assert "scope" in ops["put"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_budgets_cli(tmp_path):
    store = str(tmp_path / "c.db")
    run = CliRunner().invoke
    ok = run(cli_app, ["budgets", "set", "--team", "search", "--usd-day", "5", "--tokens-month", "1000",
                       "--store", store])
    assert ok.exit_code == 0, ok.output
    assert run(cli_app, ["budgets", "set", "--default-user", "--tokens-day", "100", "--store", store]).exit_code == 0
    listed = run(cli_app, ["budgets", "list", "--json", "--store", store])
    rows = json.loads(listed.stdout)
    assert {r["scope"]: {k: r.get(k) for k in ("usd_day", "tokens_month", "tokens_day")} for r in rows} == {
        "default-user": {"usd_day": None, "tokens_month": None, "tokens_day": 100},
        "team:search": {"usd_day": 5.0, "tokens_month": 1000, "tokens_day": None}}
    for args, named in [(["--team", "a b", "--usd-day", "1"], "'a b'"), (["--org", "--usd-day", "-1"], "--usd-day"),
                        (["--tag", "env", "--usd-day", "1"], "key=value"),
                        (["--team", "x", "--org", "--usd-day", "1"], "exactly one scope"),
                        (["--org"], "at least one limit")]:
        bad = run(cli_app, ["budgets", "set", *args, "--store", store])
        assert bad.exit_code != 0 and named in bad.output, (args, bad.output)
    assert run(cli_app, ["budgets", "delete", "--team", "search", "--store", store]).exit_code == 0
    gone = run(cli_app, ["budgets", "delete", "--team", "search", "--store", store])
    assert gone.exit_code != 0 and "no budget for 'team:search'" in gone.output
