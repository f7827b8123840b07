"""The key-admin API (/v1/admin/keys) end to end, /v1/usage/me, and key expiry: create -> use -> update a
budget in place -> expire -> revoke; rotation; 403 for non-admin keys on every admin route; bad bodies named;
a change made through one server applied by another on the same store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from leaninfer.finops.gate import KEY_CACHE_S
from leaninfer.finops.store import open_store
from leaninfer.serving.admin_keys import PATH
from leaninfer.serving.app import create_app

from .conftest import bearer, finops_client, make_key

pytestmark = pytest.mark.timeout(300)
EMBED = {"model": "minilm", "input": "a sentence about keys"}
ADMIN_ROUTES = [("POST", PATH, {"team": "x"}), ("GET", PATH, None), ("GET", PATH + "/0123456789ab", None),
                ("PATCH", PATH + "/0123456789ab", {"rpm": 5}), ("DELETE", PATH + "/0123456789ab", None),
                ("POST", PATH + "/0123456789ab/rotate", None),
                # the budgets above the key (another module): the same rule
                ("GET", "/v1/admin/budgets", None), ("PUT", "/v1/admin/budgets", {"scope": "org", "rpm": 1}),
                ("DELETE", "/v1/admin/budgets?scope=org", None)]


def _store_text(store: str) -> bytes:
    return b"".join(p.read_bytes() for p in Path(store).parent.glob(Path(store).name + "*") if p.is_file())


def test_admin_api_end_to_end(served, tmp_path):
    store = str(tmp_path / "l.db")
    admin = make_key(store, team="platform", admin=True)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            r = await c.post(PATH, json={"team": "search", "name": "ci", "budget_usd_day": 100.0, "rpm": 50,
                                         "models": ["minilm"]}, headers=bearer(admin))
            assert r.status_code == 201, r.text
            made = r.json()
            secret, key_id = made["key"], made["key_id"]
            assert secret.startswith(f"lk_{key_id}.") and made["team"] == "search" and made["status"] == "active"
            assert secret.encode() not in _store_text(store)  # only its hash is kept

            # the list and the key's own page: no secret, no hash
            listed = (await c.get(PATH, headers=bearer(admin))).json()["data"]
            assert key_id in {k["key_id"] for k in listed}
            one = (await c.get(f"{PATH}/{key_id}", headers=bearer(admin))).json()
            assert one["budget_usd_day"] == 100.0 and one["rpm"] == 50
            for item in [*listed, one]:
                assert "key" not in item and "key_hash" not in item and secret.split(".")[1] not in str(item)

            # use it
            used = await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))
            assert used.status_code == 200, used.text
            cost = used.json()["usage"]["leaninfer"]["cost_usd"]
            assert cost > 0
            me = (await c.get("/v1/usage/me", headers=bearer(secret))).json()
            assert me["key_id"] == key_id and me["spend"]["total"]["usd"] == pytest.approx(cost, abs=1e-9)
            budget = me["budgets"][0]
            assert budget["scope"] == "key" and budget["budget"] == "usd_day" and budget["limit"] == 100.0
            assert budget["remaining"] == pytest.approx(100.0 - cost, abs=1e-9)
            assert me["rate_limits"]["rpm"]["limit"] == 50 and me["rate_limits"]["rpm"]["remaining"] == 49
            assert used.headers["x-ratelimit-remaining-requests"] == "49"  # reading /v1/usage/me counts nothing

            # update a budget in place: below what it spent, so the next request is refused at once (this server)
            r = await c.patch(f"{PATH}/{key_id}", json={"budget_usd_day": cost / 2, "rpm": None},
                              headers=bearer(admin))
            assert r.status_code == 200, r.text
            assert r.json()["budget_usd_day"] == cost / 2 and "rpm" not in r.json()
            assert r.json()["models"] == ["minilm"] and r.json()["name"] == "ci"  # the rest stays
            refused = await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "usd_day", refused.text
            await c.patch(f"{PATH}/{key_id}", json={"budget_usd_day": None}, headers=bearer(admin))
            assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))).status_code == 200

            # expire it: 401 that says so
            r = await c.patch(f"{PATH}/{key_id}", json={"expires_at": time.time() - 1}, headers=bearer(admin))
            assert r.status_code == 200 and r.json()["status"] == "expired", r.text
            expired = await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))
            assert expired.status_code == 401
            err = expired.json()["error"]
            assert err["code"] == "expired_api_key" and "expired at" in err["message"], err
            assert (await c.get("/v1/usage/me", headers=bearer(secret))).json()["error"]["code"] == "expired_api_key"
            # a wrong secret for the same id learns nothing of the expiry
            wrong = await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret[:-4] + "AAAA"))
            assert wrong.json()["error"]["code"] == "invalid_api_key"
            # extend it, then revoke it
            r = await c.patch(f"{PATH}/{key_id}", json={"expires_in": "30d"}, headers=bearer(admin))
            assert r.json()["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
            assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))).status_code == 200
            assert (await c.delete(f"{PATH}/{key_id}", headers=bearer(admin))).json()["revoked"] is True
            gone = await c.post("/v1/embeddings", json=EMBED, headers=bearer(secret))
            assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"
            assert (await c.delete(f"{PATH}/{key_id}", headers=bearer(admin))).status_code == 404
            assert (await c.patch(f"{PATH}/{key_id}", json={"rpm": 1}, headers=bearer(admin))).status_code == 404
            all_ = (await c.get(PATH, params={"include_revoked": "true"}, headers=bearer(admin))).json()["data"]
            assert {k["key_id"]: k["status"] for k in all_}[key_id] == "revoked"
            assert key_id not in {k["key_id"] for k in (await c.get(PATH, headers=bearer(admin))).json()["data"]}

    asyncio.run(go())


def test_rotate_keeps_id_policy_and_spend(served, tmp_path):
    store = str(tmp_path / "l.db")
    admin = make_key(store, team="platform", admin=True)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            made = (await c.post(PATH, json={"team": "ads", "budget_tokens_total": 10_000},
                                 headers=bearer(admin))).json()
            old, key_id = made["key"], made["key_id"]
            assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(old))).status_code == 200
            spent = (await c.get("/v1/usage/me", headers=bearer(old))).json()["spend"]["total"]["tokens"]
            r = await c.post(f"{PATH}/{key_id}/rotate", headers=bearer(admin))
            assert r.status_code == 200, r.text
            new = r.json()["key"]
            assert new != old and new.startswith(f"lk_{key_id}.") and r.json()["budget_tokens_total"] == 10_000
            assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(old))).status_code == 401
            me = (await c.get("/v1/usage/me", headers=bearer(new))).json()
            assert me["key_id"] == key_id and me["spend"]["total"]["tokens"] == spent > 0
            assert me["budgets"][0]["remaining"] == 10_000 - spent

    asyncio.run(go())


def test_non_admin_keys_get_403_on_every_admin_route(served, tmp_path):
    store = str(tmp_path / "l.db")
    user = make_key(store, team="search")
    documented = {p for p in create_app(served).openapi()["paths"] if p.startswith("/v1/admin/")}
    assert documented == {p.split("?")[0] for _, p, _ in ADMIN_ROUTES if "0123" not in p} | {
        PATH + "/{key_id}", PATH + "/{key_id}/rotate"}  # a new admin route must join this list

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            for method, path, body in ADMIN_ROUTES:
                r = await c.request(method, path, json=body, headers=bearer(user))
                assert r.status_code == 403, (method, path, r.text)
                assert r.json()["error"]["code"] == "not_admin"
                r = await c.request(method, path, json=body)
                assert r.status_code == 401, (method, path, r.text)
            assert (await c.get("/v1/usage/me", headers=bearer(user))).status_code == 200

    asyncio.run(go())


@pytest.mark.parametrize("body,param", [
    ({"team": "a b"}, "team"), ({}, "team"), ({"team": "x", "rpm": 0}, "rpm"),
    ({"team": "x", "budget_usd_day": -1}, "budget_usd_day"), ({"team": "x", "budget_usd_day": "5"}, "budget_usd_day"),
    ({"team": "x", "models": []}, "models"), ({"team": "x", "bogus": 1}, "bogus"),
    ({"team": "x", "expires_at": "2027-01-01T00:00:00"}, "expires_at"), ({"team": "x", "expires_at": "soon"}, "expires_at"),
    ({"team": "x", "expires_at": 1.0}, "expires_at"), ({"team": "x", "expires_in": "3 fortnights"}, "expires_in"),
    ({"team": "x", "expires_in": "1d", "expires_at": 4e9}, "expires_in"), ({"team": "x", "expires_at": 1e300}, "expires_at"),
])
def test_bad_bodies_are_refused_by_name(served, tmp_path, body, param):
    store = str(tmp_path / "l.db")
    admin = make_key(store, team="platform", admin=True)
    target = make_key(store, team="t")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            created = await c.post(PATH, json=body, headers=bearer(admin))
            patch_body = {k: v for k, v in body.items() if k != "team"} or {"team": None}
            patched = await c.patch(f"{PATH}/{target.split('.')[0][3:]}", json=patch_body, headers=bearer(admin))
            return created, patched

    created, patched = asyncio.run(go())
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == param, created.text
    if param != "expires_at" or body["expires_at"] != 1.0:  # a past expiry is how a key is expired by hand
        assert patched.status_code == 400, patched.text
        assert patched.json()["error"]["param"] in (param, "team"), patched.text
    s = open_store(store)
    try:
        assert len(s.list_keys()) == 2  # nothing created
        assert s.get_key(target.split(".")[0][3:]).policy.model_dump(exclude_none=True) == {
            "team": "t", "name": "", "admin": False} or param == "expires_at"
    finally:
        s.close()


def test_a_change_through_one_server_reaches_another_within_the_key_cache(served, tmp_path):
    """Two servers on one store (shared state): a budget set through A refuses on B once B's cached record
    (KEY_CACHE_S) has expired; a revoke through A likewise."""
    store = str(tmp_path / "l.db")
    admin = make_key(store, team="platform", admin=True)
    user = make_key(store, team="search")
    key_id = user.split(".")[0][3:]

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=True) as a, \
                finops_client(served, auth="keys", store=store, shared_state=True) as b:
            assert (await b.post("/v1/embeddings", json=EMBED, headers=bearer(user))).status_code == 200
            r = await a.patch(f"{PATH}/{key_id}", json={"budget_tokens_day": 1}, headers=bearer(admin))
            assert r.status_code == 200
            await asyncio.sleep(KEY_CACHE_S + 0.1)
            refused = await b.post("/v1/embeddings", json=EMBED, headers=bearer(user))
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_day", refused.text
            await a.delete(f"{PATH}/{key_id}", headers=bearer(admin))
            await asyncio.sleep(KEY_CACHE_S + 0.1)
            assert (await b.post("/v1/embeddings", json=EMBED, headers=bearer(user))).status_code == 401

    asyncio.run(go())


def test_usage_me_reads_only_the_presented_key(served, tmp_path):
    store = str(tmp_path / "l.db")
    mine = make_key(store, team="a", budget_tokens_month=1_000_000, tpm=100_000)
    other = make_key(store, team="b")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            for _ in range(3):
                assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(other))).status_code == 200
            r = await c.post("/v1/embeddings", json=EMBED, headers=bearer(mine))
            tokens = r.json()["usage"]["total_tokens"]
            me = (await c.get("/v1/usage/me", headers=bearer(mine))).json()
            them = (await c.get("/v1/usage/me", headers=bearer(other))).json()
            return me, them, tokens

    me, them, tokens = asyncio.run(go())
    assert me["key_id"] == mine.split(".")[0][3:] and me["spend"]["today"]["tokens"] == tokens
    assert me["spend"]["month"]["tokens"] == me["spend"]["total"]["tokens"] == tokens
    assert them["spend"]["total"]["tokens"] == 3 * tokens and them["budgets"] == [] and them["rate_limits"] == {}
    assert me["budgets"] == [{**me["budgets"][0], "budget": "tokens_month", "limit": 1_000_000, "spent": tokens,
                              "reserved": 0, "remaining": 1_000_000 - tokens}]
    assert me["rate_limits"]["tpm"]["limit"] == 100_000
