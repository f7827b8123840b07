"""The gate on the request path: each hole an adversarial pass found, closed, with the request's own evidence
(status, headers, the ledger row, what the engine did)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.gate import HOLD_MARGIN_S, KEY_CACHE_ENTRIES
from leaninfer.serving.app import ServerConfig, create_app

from .conftest import bearer, finops_client, ledger_rows, make_key

EMBED = {"model": "minilm", "input": "a cat sat on the mat"}


def test_a_wrong_dimensions_is_refused_before_the_engine_runs(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t", budget_usd_day=1000.0)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            eng = c.app.state.served["minilm"].engine
            calls = []
            submit = eng.submit
            eng.submit = lambda tokens: (calls.append(tokens), submit(tokens))[1]
            r = await c.post("/v1/embeddings", json={**EMBED, "dimensions": 7}, headers=bearer(key))
            return r, calls

    r, calls = asyncio.run(go())
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions" and "384" in r.text
    assert calls == []  # never reached the engine
    row = next(x for x in ledger_rows(store) if x.status == 400)
    assert row.cost_nusd == 0 and row.busy_s == 0.0


def test_rpm_counts_refused_requests_too(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t", rpm=3)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            unknown = [await c.post("/v1/embeddings", json={**EMBED, "model": "nope"}, headers=bearer(key))
                       for _ in range(3)]
            return unknown, await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))

    unknown, valid = asyncio.run(go())
    assert [r.status_code for r in unknown] == [404] * 3
    assert valid.status_code == 429 and valid.json()["error"]["code"] == "rpm"


def test_errors_carry_the_request_id_of_their_ledger_row(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            return (await c.post("/v1/embeddings", json={**EMBED, "model": "nope"}, headers=bearer(key)),
                    await c.post("/v1/embeddings", json=EMBED),
                    await c.post("/v1/embeddings", json=EMBED, headers=bearer(key)))

    missing, no_key, ok = asyncio.run(go())
    rows = {r.request_id: r for r in ledger_rows(store)}
    assert missing.status_code == 404 and rows[missing.headers["x-request-id"]].status == 404
    assert no_key.status_code == 401 and no_key.headers["x-request-id"].startswith("req-")
    assert ok.headers["x-request-id"] == ok.json()["usage"]["leaninfer"]["request_id"]


def test_unknown_key_ids_are_cached_in_a_bounded_table(served, tmp_path):
    store = str(tmp_path / "l.db")
    make_key(store, team="t")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            gate = c.app.state.gate
            for _ in range(3 * KEY_CACHE_ENTRIES // 2):
                assert await gate.authenticate(f"lk_{secrets.token_hex(6)}.{'x' * 40}") is None
            return len(gate._keys)

    assert asyncio.run(go()) <= KEY_CACHE_ENTRIES


def test_reservations_are_held_for_the_request_and_drain_timeouts_not_an_hour(served, tmp_path):
    cfg = ServerConfig(request_timeout_s=30.0, drain_timeout_s=5.0,
                       finops=FinOpsConfig(auth="keys", store=str(tmp_path / "l.db")))
    app = create_app(served, cfg)
    assert app.state.gate.book.hold_s == 30.0 + 5.0 + HOLD_MARGIN_S


def test_a_second_server_without_shared_state_is_refused(served, tmp_path):
    store = str(tmp_path / "l.db")
    first = create_app(served, ServerConfig(finops=FinOpsConfig(auth="keys", store=store)))
    second = create_app(served, ServerConfig(finops=FinOpsConfig(auth="keys", store=store)))
    shared = create_app(served, ServerConfig(finops=FinOpsConfig(auth="keys", store=store, shared_state=True)))
    first.state.gate.claim()
    try:
        for other in (second, shared):
            with pytest.raises(LeaninferError, match="shared-state"):
                other.state.gate.claim()
    finally:
        first.state.gate._release()
    second.state.gate.claim()  # the store is free again once the first let go
    second.state.gate._release()


def test_keyed_servers_answer_models_only_with_a_key_and_metrics_as_configured(served, tmp_path):
    store = str(tmp_path / "l.db")
    key, admin = make_key(store, team="t"), make_key(store, team="ops", admin=True)

    async def go(metrics_auth):
        async with finops_client(served, auth="keys", store=store, metrics_auth=metrics_auth) as c:
            return [(await c.get(path, headers=h)).status_code for path, h in [
                ("/v1/models", {}), ("/v1/models", bearer(key)), ("/v1/models/minilm", {}), ("/metrics", {}),
                ("/metrics", bearer(key)), ("/metrics", bearer(admin)), ("/health", {})]]

    assert asyncio.run(go("open")) == [401, 200, 401, 200, 200, 200, 200]
    assert asyncio.run(go("admin")) == [401, 200, 401, 401, 403, 200, 200]


def test_a_bad_timezone_in_usage_is_a_400(served, tmp_path):
    store = str(tmp_path / "l.db")
    admin = make_key(store, team="ops", admin=True)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            return [await c.get("/v1/usage", params={"tz": tz}, headers=bearer(admin))
                    for tz in ("x" * 300, "../../etc/passwd", "Europe/Nowhere")]

    for r in asyncio.run(go()):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value", r.text


def test_the_shared_cache_keeps_no_generated_text_unless_asked(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t")
    body = {"model": "tiny-gpt2", "prompt": "the cat", "max_tokens": 4, "temperature": 0}

    async def go(keep_text):
        async with finops_client(served, auth="keys", store=store, shared_state=True, cache_max_bytes=1 << 20,
                                 cache_store_text=keep_text) as c:
            await c.post("/v1/completions", json=body, headers=bearer(key))
            again = await c.post("/v1/completions", json=body, headers=bearer(key))
            emb = [await c.post("/v1/embeddings", json=EMBED, headers=bearer(key)) for _ in range(2)]
            return again.json()["usage"]["leaninfer"]["cached"], emb[1].json()["usage"]["leaninfer"]["cached"]

    assert asyncio.run(go(False)) == (False, True)  # embeddings shared; completions not written to disk
    assert asyncio.run(go(True)) == (True, True)


def test_a_bad_label_header_is_a_recorded_400_counted_against_rpm(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t", rpm=2)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            bad = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key, **{"X-Leaninfer-Workflow": "a\x7fb"}))
            ok = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            return bad, ok, await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))

    bad, ok, over = asyncio.run(go())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Leaninfer-Workflow"
    assert ok.status_code == 200 and over.status_code == 429  # the refused request counted
    row = next(r for r in ledger_rows(store) if r.request_id == bad.headers["x-request-id"])
    assert row.status == 400 and row.workflow == ""


def test_a_store_that_fails_is_a_counted_503_never_a_500(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t", budget_usd_day=100.0)

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    async def go():
        async with finops_client(served, auth="keys", store=store, shared_state=True) as c:
            ok = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            state = c.app.state.gate.state
            state.reserve = broken
            refused = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            del state.reserve
            c.app.state.gate._keys.clear()
            c.app.state.gate.store.get_key = broken
            unread = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            return ok, refused, unread, (await c.get("/metrics")).text

    ok, refused, unread, metrics = asyncio.run(go())
    assert ok.status_code == 200
    for r in (refused, unread):
        assert r.status_code == 503 and r.json()["error"]["code"] == "governance_unavailable", r.text
    assert 'reason="governance_unavailable"' in metrics


def test_a_row_the_ledger_cannot_write_fails_only_its_own_request(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t")

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            s = c.app.state.gate.store
            append = s.append

            def picky(rows):
                if any(r.workflow == "poison" for r in rows):
                    raise sqlite3.IntegrityError("this row can't be stored")
                return append(rows)

            s.append = picky
            return await asyncio.gather(*(
                c.post("/v1/embeddings", json=EMBED, headers=bearer(key, **{"X-Leaninfer-Workflow": w}))
                for w in ["a", "poison", "b", "c"] * 5))

    rs = asyncio.run(go())
    for r in rs:
        poisoned = r.request.headers["x-leaninfer-workflow"] == "poison"
        assert r.status_code == (503 if poisoned else 200), r.text
    rows = ledger_rows(store)
    assert len([r for r in rows if r.workflow in ("a", "b", "c")]) == 15 and not any(r.workflow == "poison"
                                                                                      for r in rows)


def test_a_window_s_first_ledger_read_runs_off_the_event_loop(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="t", budget_usd_day=100.0, budget_tokens_month=10**6)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            gate, threads = c.app.state.gate, []
            spend = gate.state._spend
            gate.state._spend = lambda *a: (threads.append(threading.get_ident()), spend(*a))[1]
            for _ in range(3):
                assert (await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))).status_code == 200
            return threads, threading.get_ident()

    threads, loop_thread = asyncio.run(go())
    assert len(threads) == 2 and loop_thread not in threads  # one read per window (day, month), in a worker
