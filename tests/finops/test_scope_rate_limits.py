"""Requests and tokens per minute above the key: a team's rpm across its keys, a default end user's per user, a
tpm, counted with the key's tpm in one atomic step (a refusal counts nothing anywhere); the 429 names the scope;
the headers show the tightest limit; and the CLI and the admin API carry rpm/tpm. On memory, SQLite and
PostgreSQL state."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app as cli_app
from leaninfer.errors import LeaninferError
from leaninfer.finops.budget_admin import set_budget
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.rate_limits import RateLimited, RateLimits
from leaninfer.finops.scope_budgets import ScopeLimits, covering, request_scopes
from leaninfer.finops.store import open_store

from .conftest import bearer, finops_client, make_key
from .store_fixtures import NOON, Clock, backend  # noqa: F401 (a fixture)
from .test_budgets_server import EMBED, _set, budget_state  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(600)


def _scopes(store, team, user=None):
    found = store.get_scope_budgets(request_scopes(team, "m", {}, user))
    return covering(found, team, "m", {}, user)


def test_scope_limits_count_with_the_key_all_or_nothing(backend):  # noqa: F811
    store, state = backend.ledger, backend.state
    set_budget(store, "team:search", ScopeLimits(rpm=2, tpm=100))
    key = KeyRecord("k1", "h", KeyPolicy(team="search", tpm=1000), 0.0)
    limits = RateLimits(state, clock=Clock(NOON))
    scopes = _scopes(store, "search")
    got = limits.check_scoped(key, 60, 1, scopes)
    assert got == {"tpm": (100, 40, NOON + 60), "rpm": (2, 1, NOON + 60)}  # the tightest of key and team
    with pytest.raises(RateLimited) as e:  # the team's tpm can't take 50 more: nothing is counted
        limits.check_scoped(key, 50, 1, scopes)
    assert (e.value.scope_id, e.value.limit, e.value.quota, e.value.remaining) == ("team:search", "tpm", 100, 40)
    assert e.value.message().startswith("rate limit reached: team search may use 100 tokens")
    assert limits.check_scoped(key, 40, 1, scopes)["rpm"] == (2, 0, NOON + 60)  # the refusal took no request
    with pytest.raises(RateLimited) as e:
        limits.check_scoped(key, 0, 1, scopes)
    assert (e.value.limit, e.value.scope) == ("rpm", "team search")
    # the key's own tpm: 100 counted of its 1000 (the refused 50 never were)
    assert limits.check_scoped(key, 900, 0, [])["tpm"] == (1000, 0, NOON + 60)


def test_a_default_end_user_rpm_is_per_user(backend):  # noqa: F811
    store, state = backend.ledger, backend.state
    set_budget(store, "default-user", ScopeLimits(rpm=1))
    key = KeyRecord("k1", "h", KeyPolicy(team="apps"), 0.0)
    limits = RateLimits(state, clock=Clock(NOON))
    limits.check_scoped(key, 10, 1, _scopes(store, "apps", "alice"))
    limits.check_scoped(key, 10, 1, _scopes(store, "apps", "bob"))  # bob has his own
    with pytest.raises(RateLimited) as e:
        limits.check_scoped(key, 10, 1, _scopes(store, "apps", "alice"))
    assert e.value.scope == "user alice (the default end-user budget)" and e.value.scope_id == "default-user"


def test_a_budget_of_rate_limits_alone_is_valid_and_none_at_all_is_not(tmp_path):
    store = open_store(tmp_path / "l.db")
    try:
        b = set_budget(store, "org", ScopeLimits(tpm=5000))
        assert b.limits.rates() == {"tpm": 5000} and b.limits.budgets() == {}
        with pytest.raises(LeaninferError, match="--rpm or --tpm"):
            set_budget(store, "org", ScopeLimits())
    finally:
        store.close()


def test_a_team_rpm_holds_across_its_keys_over_http(served, budget_state):  # noqa: F811
    store, shared = budget_state

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=shared) as c:
            _set(store, "team:search", rpm=3)
            keys = [make_key(store, team="search", rpm=100) for _ in range(2)]
            other = make_key(store, team="ads")
            rs = [await c.post("/v1/embeddings", json=EMBED, headers=bearer(keys[i % 2])) for i in range(4)]
            return rs, await c.post("/v1/embeddings", json=EMBED, headers=bearer(other))

    rs, other = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 200, 200, 429]
    err = rs[3].json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("rate_limit_exceeded", "rpm", "team:search")
    assert "team search may use 3 requests per minute" in err["message"]
    # the headers: the team's item by its kind (never its name), and OpenAI's from the tightest limit
    assert rs[3].headers["ratelimit-policy"].startswith('"team.rpm";q=3;w=60')
    assert rs[2].headers["x-ratelimit-limit-requests"] == "3" and rs[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert int(rs[3].headers["retry-after"]) >= 1
    assert other.status_code == 200  # another team is not in the scope


def test_the_cli_and_the_admin_api_carry_rpm_and_tpm(served, tmp_path):
    store = str(tmp_path / "l.db")
    res = CliRunner().invoke(cli_app, ["budgets", "set", "--team", "search", "--rpm", "600", "--tpm", "90000",
                                       "--store", store])
    assert res.exit_code == 0, res.output
    assert "rpm=600" in res.output and "tpm=90000" in res.output
    bad = CliRunner().invoke(cli_app, ["budgets", "set", "--org", "--rpm", "0", "--store", store])
    assert bad.exit_code == 2 and "--rpm" in bad.output

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            admin = make_key(store, team="ops", admin=True)
            put = await c.put("/v1/admin/budgets", json={"scope": "tag:env=prod", "tpm": 500}, headers=bearer(admin))
            bad = await c.put("/v1/admin/budgets", json={"scope": "org", "rpm": -1}, headers=bearer(admin))
            listed = await c.get("/v1/admin/budgets", headers=bearer(admin))
            return put, bad, listed

    put, bad, listed = asyncio.run(go())
    assert put.status_code == 200, put.text
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    by_scope = {b["scope"]: b for b in listed.json()["data"]}
    assert by_scope["team:search"]["rpm"] == 600 and by_scope["tag:env=prod"]["tpm"] == 500


def test_scope_budgets_have_gauges_and_alerts(served, tmp_path, caplog):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            r = await c.post("/v1/embeddings", json=EMBED, headers=bearer(make_key(store, team="probe")))
            per = r.json()["usage"]["prompt_tokens"]
            _set(store, "team:search", tokens_day=10 * per)
            _set(store, "default-user", tokens_day=100 * per)
            key = make_key(store, team="search")
            for _ in range(8):  # 80% of the team's day
                assert (await c.post("/v1/embeddings", json={**EMBED, "user": "u1"},
                                     headers=bearer(key))).status_code == 200
            return (await c.get("/metrics")).text

    with caplog.at_level("WARNING", logger="leaninfer.finops"):
        metrics = asyncio.run(go())
    assert 'leaninfer_scope_budget_used_ratio{scope="team:search",window="tokens_day"} 0.8' in metrics
    assert "default-user" not in metrics.split("leaninfer_scope_budget_used_ratio", 1)[1]  # no series per end user
    assert 'leaninfer_spend_alerts_total{entity="team:search",entity_kind="scope",kind="budget"} 2.0' in metrics
    alerts = [r.getMessage() for r in caplog.records if "budget 'team:search'" in r.getMessage()]
    assert any("has used 80% of its tokens_day budget (threshold 80%)" in a for a in alerts), alerts
