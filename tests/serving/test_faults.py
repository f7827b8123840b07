"""The app in-process under faults: a dead engine thread, unexpected errors, and the metrics that report them."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from leaninfer.engines import engine as engine_module
from leaninfer.serving import embeddings, routes
from leaninfer.serving.app import ServerConfig, create_app

from .conftest import app_client
from .test_app import metric

pytestmark = pytest.mark.timeout(120)


def _kill_embedding_engine(eng, monkeypatch):
    # form_embedding_batches runs on the engine thread right after it took the queue: the taken requests are
    # in flight when the thread dies.
    def boom(*args, **kwargs):
        raise RuntimeError("injected fault")
    monkeypatch.setattr(engine_module, "form_embedding_batches", boom)


def _kill_generation_engine(eng, monkeypatch):
    # has_work is asked by the engine loop itself, outside the step's own guard: an escaping exception.
    s, has_work = eng.scheduler, eng.scheduler.has_work

    def boom():
        if s.inbox:
            raise RuntimeError("injected fault")
        return has_work()
    monkeypatch.setattr(s, "has_work", boom)


@pytest.mark.parametrize("model, path, body, kill", [
    ("minilm", "/v1/embeddings", {"input": "a cat"}, _kill_embedding_engine),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "max_tokens": 50, "ignore_eos": True},
     _kill_generation_engine),
])
def test_dead_engine_fails_health_and_its_requests_at_once(served, monkeypatch, model, path, body, kill):
    async def main():
        async with app_client(served) as c:
            eng = c.app.state.served[model].engine
            assert (await c.get("/health")).status_code == 200
            kill(eng, monkeypatch)
            # the waiting request fails when the thread dies (the request timeout is 600 s: no waiting for it)
            r = await c.post(path, json={"model": model, **body})
            assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
            h = await c.get("/health")
            assert h.status_code == 503 and h.json()["status"] == "engine_dead"
            assert model in h.json()["reason"] and "RuntimeError: injected fault" in h.json()["reason"]
            r = await c.post(path, json={"model": model, **body})  # a later request: refused at once
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
            m = (await c.get("/metrics")).text
            assert metric(m, "leaninfer_engine_up", model=model) == 0
            other = next(n for n in c.app.state.served if n != model)
            assert metric(m, "leaninfer_engine_up", model=other) == 1
    asyncio.run(main())


def test_itl_per_token_and_stream_latency_from_arrival(served):
    async def main():
        async with app_client(served) as c:
            body = {"model": "tiny-gpt2", "prompt": "hello", "max_tokens": 6, "ignore_eos": True, "temperature": 0}
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            m = (await c.get("/metrics")).text
            assert metric(m, "leaninfer_inter_token_latency_seconds_count", model="tiny-gpt2") == 5  # 6 tokens
            r = await c.post("/v1/completions", json={**body, "stream": True,
                                                      "stream_options": {"include_usage": True}})
            data = [x[6:] for x in r.text.splitlines() if x.startswith("data: ")]
            assert data[-1] == "[DONE]"
            usage = json.loads(data[-2])["usage"]
            m2 = (await c.get("/metrics")).text
            assert metric(m2, "leaninfer_inter_token_latency_seconds_count", model="tiny-gpt2") == 10
            e2e = (metric(m2, "leaninfer_e2e_latency_seconds_sum", endpoint="completions")
                   - metric(m, "leaninfer_e2e_latency_seconds_sum", endpoint="completions"))
            # from arrival: it holds the whole engine time of the request, queueing included
            assert e2e >= usage["leaninfer"]["duration_s"] > 0
            assert metric(m2, "leaninfer_e2e_latency_seconds_count", endpoint="completions") == 2
    asyncio.run(main())


def test_unexpected_errors_are_logged_counted_500s(served, monkeypatch, caplog):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    async def main():
        async with app_client(served) as c:
            monkeypatch.setattr(embeddings, "embed_tokens", bug)
            r = await c.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            m = (await c.get("/metrics")).text
            assert metric(m, "leaninfer_server_errors_total", endpoint="embeddings", status="500") == 1
            assert metric(m, "leaninfer_requests_total", endpoint="embeddings", status="500") == 1
        # outside the handlers' guard: the app's catch-all counts it too
        app = create_app(served, ServerConfig())
        monkeypatch.setattr(routes, "model_card", bug)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c2:
                r = await c2.get("/v1/models")
                assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
                m = (await c2.get("/metrics")).text
                assert metric(m, "leaninfer_server_errors_total", endpoint="/v1/models", status="500") == 1

    with caplog.at_level(logging.ERROR, logger="leaninfer.serving"):
        asyncio.run(main())
    logged = [rec for rec in caplog.records if rec.name == "leaninfer.serving"]
    assert len(logged) == 2 and all(rec.exc_info and rec.exc_info[0] is KeyError for rec in logged)


def test_an_error_inside_a_started_stream_counts_as_a_5xx(served, monkeypatch):
    async def main():
        async with app_client(served) as c:
            runner = c.app.state.served["tiny-gpt2"].engine.scheduler.runner

            def broken(*args, **kwargs):
                raise RuntimeError("prefill broke")
            monkeypatch.setattr(runner, "prefill", broken)
            r = await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "hi", "max_tokens": 5,
                                                      "ignore_eos": True, "stream": True})
            assert r.status_code == 200 and "prefill broke" in r.text and r.text.rstrip().endswith("[DONE]")
            m = (await c.get("/metrics")).text
            assert metric(m, "leaninfer_server_errors_total", endpoint="completions", status="500") == 1
            assert metric(m, "leaninfer_cancelled_requests_total") == 0
    asyncio.run(main())
