"""The HTTP app in-process (httpx ASGI transport): endpoints, batching, metering, every error path.

Bad inputs class by class: test_bad_input.py; schema-driven fuzzing: test_fuzz.py."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from .conftest import app_client

pytestmark = pytest.mark.timeout(120)


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            if line[len(name)] in "{ ":
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_embeddings_batch_together_and_match_offline(served, minilm):
    async def main():
        async with app_client(served, max_wait_ms=200, max_batch_size=8) as c:
            texts = [f"sentence number {i} about cats" for i in range(8)]
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"model": "minilm", "input": t})
                                        for t in texts))
            assert all(r.status_code == 200 for r in rs)
            m = (await c.get("/metrics")).text
            # 8 concurrent requests, one model call: batching happened
            assert metric(m, "leaninfer_batch_size_count", kind="embedding") == 1
            assert metric(m, "leaninfer_batch_size_sum", kind="embedding") == 8
            got = np.array([r.json()["data"][0]["embedding"] for r in rs])
            np.testing.assert_allclose(got, minilm.embed(texts), atol=1e-5)
            u = rs[0].json()["usage"]
            assert u["prompt_tokens"] > 0 and u["leaninfer"]["cost_usd"] > 0 and u["leaninfer"]["queue_time_s"] >= 0
            r = await c.post("/v1/embeddings", json={"model": "minilm", "input": ["a", "b c"],
                                                     "encoding_format": "base64"})
            vecs = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
            assert [d["index"] for d in r.json()["data"]] == [0, 1] and vecs[0].shape == (384,)
            np.testing.assert_allclose(vecs, minilm.embed(["a", "b c"]), atol=1e-5)
    asyncio.run(main())


def test_generation_endpoints_and_metrics_increase(served, tiny_gpt2):
    async def main():
        async with app_client(served) as c:
            body = {"model": "tiny-gpt2", "prompt": "hello world", "max_tokens": 6, "temperature": 0}
            r = await c.post("/v1/completions", json=body)
            j = r.json()
            assert r.status_code == 200 and j["usage"]["completion_tokens"] == 6
            ids = tiny_gpt2.tokenizer("hello world")["input_ids"]
            ref = tiny_gpt2.generate(["hello world"], 6)[0]
            assert j["choices"][0]["text"] == tiny_gpt2.tokenizer.decode(ref, skip_special_tokens=True)
            assert j["usage"]["prompt_tokens"] == len(ids)
            ex = j["usage"]["leaninfer"]
            assert ex["time_to_first_token_s"] <= ex["duration_s"] and ex["cost_usd_output"] > 0
            m1 = (await c.get("/metrics")).text
            # streaming gives the same text as non-streaming (greedy), in several chunks, then [DONE]
            r = await c.post("/v1/completions", json={**body, "stream": True,
                                                      "stream_options": {"include_usage": True}})
            lines = [x[6:] for x in r.text.splitlines() if x.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            chunks = [json.loads(x) for x in lines[:-1]]
            assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == j["choices"][0]["text"]
            assert chunks[-1]["usage"]["completion_tokens"] == 6
            r = await c.post("/v1/chat/completions", json={
                "model": "tiny-gpt2", "max_tokens": 4, "seed": 3, "temperature": 0.8,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
            r2 = await c.post("/v1/chat/completions", json={
                "model": "tiny-gpt2", "max_tokens": 4, "seed": 3, "temperature": 0.8,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
            assert r2.json()["choices"][0]["message"] == r.json()["choices"][0]["message"]  # per-request seed
            m2 = (await c.get("/metrics")).text
            for name in ("leaninfer_output_tokens_total", "leaninfer_input_tokens_total",
                         "leaninfer_time_to_first_token_seconds_count", "leaninfer_cost_usd_total",
                         "leaninfer_engine_busy_seconds_total"):
                assert metric(m2, name, model="tiny-gpt2") > metric(m1, name, model="tiny-gpt2"), name
            assert metric(m2, "leaninfer_requests_total", model="tiny-gpt2", status="200") == 4
            for name in ("leaninfer_inter_token_latency_seconds", "leaninfer_queue_depth",
                         "leaninfer_engine_utilization", "leaninfer_e2e_latency_seconds_bucket"):
                assert name in m2
            models = (await c.get("/v1/models")).json()
            assert {d["id"] for d in models["data"]} == {"minilm", "tiny-gpt2"}
            assert (await c.get("/health")).json()["status"] == "ok"
            spec = (await c.get("/openapi.json")).json()
            assert {"/v1/embeddings", "/v1/completions", "/v1/chat/completions"} <= set(spec["paths"])
    asyncio.run(main())


def test_concurrent_generation_shares_decode_steps(served):
    async def main():
        async with app_client(served, max_batch_size=8) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": "tiny-gpt2", "prompt": f"p {i}", "max_tokens": 24, "ignore_eos": True})
                for i in range(6)))
            assert all(r.json()["usage"]["completion_tokens"] == 24 for r in rs)
            eng = c.app.state.served["tiny-gpt2"].engine
            assert max(eng.scheduler.batch_sizes) > 1
    asyncio.run(main())


ERRORS = [
    (b"{", 400, "invalid_json"),
    (b"[1]", 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (json.dumps({"model": "nope", "input": "x"}), 404, "model_not_found"),
    (json.dumps({"model": "minilm"}), 400, "invalid_value"),
    (json.dumps({"model": "minilm", "input": []}), 400, "invalid_value"),
    (json.dumps({"model": "minilm", "input": [[1, 2], []]}), 400, "invalid_value"),
    (json.dumps({"model": "minilm", "input": [10**9]}), 400, "invalid_value"),
    (json.dumps({"model": "minilm", "input": "cat " * 600}), 400, "context_length_exceeded"),
    (json.dumps({"model": "minilm", "input": ["a"] * 3000}), 400, "too_many_inputs"),
    (json.dumps({"model": "minilm", "input": "a", "dimensions": 7}), 400, "invalid_value"),
    (json.dumps({"model": "minilm", "input": "a", "encoding_format": "int8"}), 400, "invalid_value"),
    (json.dumps({"model": "tiny-gpt2", "input": "a"}), 400, "wrong_task"),
]
GEN_ERRORS = [
    ({"model": "tiny-gpt2", "prompt": "a", "max_tokens": -1}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": "a", "max_tokens": 10**6}, 400, "context_length_exceeded"),
    ({"model": "tiny-gpt2", "prompt": "a", "temperature": -1}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": "a", "top_p": 0}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": "a", "n": 17}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": "a", "stop": ["a"] * 9}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": ["a", "b"]}, 400, "invalid_value"),
    ({"model": "tiny-gpt2", "prompt": []}, 400, "invalid_value"),
    ({"model": "minilm", "prompt": "a"}, 400, "wrong_task"),
]


def test_error_paths_are_openai_shaped(served):
    async def main():
        async with app_client(served) as c:
            for body, status, code in ERRORS:
                r = await c.post("/v1/embeddings", content=body)
                assert r.status_code == status, (body, r.text)
                assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
            assert "minilm, tiny-gpt2" in (await c.post("/v1/embeddings", content=ERRORS[3][0])).json()["error"][
                "message"]
            for body, status, code in GEN_ERRORS:
                r = await c.post("/v1/completions", json=body)
                assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
            r = await c.post("/v1/chat/completions", json={"model": "tiny-gpt2", "messages": []})
            assert r.status_code == 400
            r = await c.post("/v1/chat/completions", json={"model": "tiny-gpt2", "messages": [{"role": "x"}]})
            assert r.status_code == 400 and r.json()["error"]["param"]
            # no max_tokens: the default shrinks to the room left, and messages filling the context leave none
            long = [{"role": "user", "content": "hello " * 1000}]
            r = await c.post("/v1/chat/completions", json={"model": "tiny-gpt2", "messages": long})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "context_length_exceeded"), r.text
            r = await c.post("/v1/embeddings", content=b"[" + b"1," * 3_000_000 + b"1]")
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            r = await c.get("/v1/nothing")
            assert r.status_code == 404 and "error" in r.json()
            r = await c.get("/v1/models/nope")
            assert r.status_code == 404
            m = (await c.get("/metrics")).text
            assert metric(m, "leaninfer_request_errors_total", status="400") >= 20
    asyncio.run(main())


def test_full_queue_gets_503_with_retry_after(minilm):
    async def main():
        import httpx

        from leaninfer.engines.engine import BatchingConfig
        from leaninfer.serving.app import ServerConfig, create_app

        app = create_app({"minilm": minilm}, ServerConfig(BatchingConfig(max_queue=1)))
        # lifespan not entered: the engine never runs, so the first request stays queued
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.ensure_future(c.post("/v1/embeddings", json={"model": "minilm", "input": "a"}))
            await asyncio.sleep(0.2)
            r = await c.post("/v1/embeddings", json={"model": "minilm", "input": "b"})
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "queue_full"
            first.cancel()
    asyncio.run(main())
