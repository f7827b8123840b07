"""The OpenAI POST endpoints bypass FastAPI's stack (fast_path.py) but keep the app's middlewares, its error
shapes and its counters; everything else still goes through FastAPI."""

from __future__ import annotations

import asyncio
import logging

import httpx
import numpy as np
import pytest

from leaninfer.serving import routes
from leaninfer.serving.app import ServerConfig, create_app

from .test_app import metric

pytestmark = pytest.mark.timeout(120)


class Tagging:
    """An app middleware (as Ray's replica header is): stamps every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-tag", scope["path"].encode())]
            await send(message)
        await self.app(scope, receive, tagged)


async def _client(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_post_endpoints_skip_fastapi_but_keep_app_middleware_and_results(served, minilm):
    async def main():
        app = create_app(served, ServerConfig())
        app.add_middleware(Tagging)
        async with app.router.lifespan_context(app):
            async with await _client(app) as c:
                r = await c.post("/v1/embeddings", json={"model": "minilm", "input": ["a cat", "a dog"]})
                assert r.status_code == 200 and r.headers["x-tag"] == "/v1/embeddings"
                got = np.array([d["embedding"] for d in r.json()["data"]])
                assert np.abs(got - minilm.embed(["a cat", "a dog"])).max() < 1e-4
                r = await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "hi", "max_tokens": 3,
                                                          "ignore_eos": True})
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
                assert r.headers["x-tag"] == "/v1/completions"
                # FastAPI builds its middleware stack on the first request it sees: none has reached it yet
                assert app.middleware_stack is None
                # other methods and paths take FastAPI's way, with the same error shape
                r = await c.get("/v1/embeddings")
                assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
                assert r.headers["x-tag"] == "/v1/embeddings" and app.middleware_stack is not None
                spec = (await c.get("/openapi.json")).json()
                assert "post" in spec["paths"]["/v1/embeddings"] and "post" in spec["paths"]["/v1/chat/completions"]
                m = (await c.get("/metrics")).text
                assert metric(m, "leaninfer_requests_total", endpoint="embeddings", status="200") == 1
    asyncio.run(main())


def test_a_fast_request_counts_as_open_for_a_drain(served, monkeypatch):
    async def main():
        app = create_app(served, ServerConfig())
        inside, release = asyncio.Event(), asyncio.Event()
        embeddings = routes.FAST_ROUTES["/v1/embeddings"]

        async def held(request):
            inside.set()
            await release.wait()
            return await embeddings(request)
        monkeypatch.setitem(routes.FAST_ROUTES, "/v1/embeddings", held)
        async with app.router.lifespan_context(app):
            async with await _client(app) as c:
                task = asyncio.create_task(c.post("/v1/embeddings", json={"model": "minilm", "input": "x"}))
                await inside.wait()
                assert app.state.in_flight == 1
                release.set()
                assert (await task).status_code == 200
                assert app.state.in_flight == 0
    asyncio.run(main())


def test_a_bug_outside_the_handlers_guard_is_a_logged_counted_500(served, monkeypatch, caplog):
    async def bug(request):
        raise KeyError("a bug")

    async def main():
        app = create_app(served, ServerConfig())
        monkeypatch.setitem(routes.FAST_ROUTES, "/v1/embeddings", bug)
        async with app.router.lifespan_context(app):
            async with await _client(app) as c:
                r = await c.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
                assert r.status_code == 500 and r.json()["error"] == {
                    "message": "internal error: KeyError", "type": "server_error", "param": None, "code": None}
                # the connection survives: the next request is answered
                r = await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "hi", "max_tokens": 1})
                assert r.status_code == 200
                m = (await c.get("/metrics")).text
                assert metric(m, "leaninfer_server_errors_total", endpoint="/v1/embeddings", status="500") == 1

    with caplog.at_level(logging.ERROR, logger="leaninfer.serving"):
        asyncio.run(main())
    logged = [rec for rec in caplog.records if rec.name == "leaninfer.serving"]
    assert len(logged) == 1 and logged[0].exc_info[0] is KeyError
