"""What a request must pass before it costs anything, and where its costly steps run.

The cheap size check (characters, items) comes first; tokenizing and encoding a big request run off the event
loop (proved by the thread they run on, not by timing); the queues are bounded in tokens (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import pytest

from leaninfer.engines.engine import BatchingConfig, EmbeddingEngine
from leaninfer.engines.errors import Overloaded
from leaninfer.engines.metrics import ServerMetrics
from leaninfer.serving import embeddings as routes
from leaninfer.serving import generation
from leaninfer.serving.app import ServerConfig, create_app
from leaninfer.serving.errors import to_openai

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def client_for(models: dict, config: ServerConfig):
    app = create_app(models, config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


def _recording(fn, threads: list, gate: threading.Event | None = None):
    def wrapper(*args):
        threads.append(threading.get_ident())
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        return fn(*args)
    return wrapper


def test_big_requests_are_tokenized_and_encoded_off_the_event_loop(served, monkeypatch):
    tokenized, encoded = [], []
    gate = threading.Event()
    monkeypatch.setattr(routes, "embed_tokens", _recording(routes.embed_tokens, tokenized, gate))
    monkeypatch.setattr(routes, "json_bytes", _recording(routes.json_bytes, encoded))
    big = [f"sentence {i} about a cat that sat on the mat" for i in range(400)]  # ~17k chars, 400 x 384 floats

    async def main():
        loop_thread = threading.get_ident()
        async with client_for(served, ServerConfig()) as c:
            gate.set()  # a small request passes straight through, on the loop
            r = await c.post("/v1/embeddings", json={"model": "minilm", "input": "hi"})
            assert r.status_code == 200 and tokenized == encoded == [loop_thread]
            gate.clear()
            post = asyncio.ensure_future(c.post("/v1/embeddings", json={"model": "minilm", "input": big}))
            while len(tokenized) < 2:  # the big request is being tokenized: held there by the gate
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(c.get("/health"), 30)  # the loop still answers meanwhile
            assert health.status_code == 200 and not post.done()
            gate.set()
            r = await post
            assert r.status_code == 200 and len(r.json()["data"]) == len(big)
            assert tokenized[1] != loop_thread and encoded[1] != loop_thread
    asyncio.run(main())


@pytest.mark.parametrize("body, status, code, named", [
    ({"model": "minilm", "input": "x" * 101}, 413, "request_too_large", "--max-request-chars"),
    ({"model": "minilm", "input": ["a"] * 4}, 400, "too_many_inputs", "--max-request-items"),
    ({"model": "minilm", "input": [[1] * 60, [2] * 50]}, 413, "request_too_large", "--max-request-chars"),
    ({"model": "tiny-gpt2", "prompt": "y" * 200}, 413, "request_too_large", "--max-request-chars"),
    ({"model": "tiny-gpt2", "messages": [{"role": "user", "content": "z"}] * 4}, 400, "too_many_messages",
     "--max-request-items"),
    ({"model": "tiny-gpt2", "messages": [{"role": "user", "content": [{"type": "text", "text": "w" * 101}]}]},
     413, "request_too_large", "--max-request-chars"),
])
def test_size_limits_come_first_and_name_the_limit(served, monkeypatch, body, status, code, named):
    def never(*a):
        raise AssertionError("tokenized a request over the size limits")
    monkeypatch.setattr(routes, "embed_tokens", never)
    for fn in ("completion_prompt", "chat_prompt"):
        monkeypatch.setattr(generation, fn, never)
    path = {"input": "/v1/embeddings", "prompt": "/v1/completions", "messages": "/v1/chat/completions"}

    async def main():
        async with client_for(served, ServerConfig(max_request_chars=100, max_request_items=3)) as c:
            r = await c.post(path[next(k for k in path if k in body)], json=body)
            err = r.json()["error"]
            assert r.status_code == status and err["code"] == code and named in err["message"], err
    asyncio.run(main())


def test_embeddings_queue_is_bounded_in_tokens(minilm):
    # The engine is not started: what is submitted stays queued, and admission alone is under test.
    engine = EmbeddingEngine(minilm, "m", BatchingConfig(max_queue_tokens=20), ServerMetrics(), 0.0)

    async def main():
        alone = asyncio.ensure_future(engine.embed([[1] * 30]))  # over the bound, but nothing waits: taken
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as e:  # typed in the engine; serving answers it as a 503
            await engine.embed([[1] * 2])
        answer = to_openai(e.value)
        assert answer.status == 503 and answer.headers["Retry-After"] and "--max-queue-tokens" in answer.message
        alone.cancel()  # a cancelled request leaves the queue: its tokens no longer count
        await asyncio.gather(alone, return_exceptions=True)
        assert engine.queue.tokens == 0
        small = [asyncio.ensure_future(engine.embed([[1] * 5])) for _ in range(4)]  # 20 tokens: fits exactly
        await asyncio.sleep(0)
        assert engine.queue.tokens == 20 and not any(t.done() for t in small)
        for t in small:
            t.cancel()
        await asyncio.gather(*small, return_exceptions=True)
    asyncio.run(main())
