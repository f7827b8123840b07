"""The OpenAI surface evaluation harnesses and SDKs use (issue 24): logprobs on both endpoints (whole and
streamed, echo with the prompt scored, max_tokens=0), n and best_of, /tokenize and /detokenize, model cards."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from leaninfer.engines.engine import BatchingConfig
from leaninfer.finops.config import FinOpsConfig
from leaninfer.serving.app import ServerConfig, create_app

from .conftest import app_client

GPT = "tiny-gpt2"


def _events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def _reference(m, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(m.module(torch.tensor([ids])).logits[0].float(), -1)


def test_echo_logprobs_with_max_tokens_0_score_the_prompt(served, tiny_gpt2):
    """What lm-eval's loglikelihood requests send: echo, logprobs, max_tokens 0 (or 1), temperature 0."""
    ids = tiny_gpt2.tokenizer("the cat sat on the mat")["input_ids"]
    ref = _reference(tiny_gpt2, ids)

    async def main():
        async with app_client(served) as c:
            r = await c.post("/v1/completions", json={"model": GPT, "prompt": ids, "max_tokens": 0, "echo": True,
                                                      "logprobs": 1, "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            (ch,) = body["choices"]
            lp = ch["logprobs"]
            assert ch["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 0
            assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == len(ids)
            assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            want = [ref[k, ids[k + 1]].item() for k in range(len(ids) - 1)]
            assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
            assert lp["text_offset"] == sorted(lp["text_offset"])
            for k, top in enumerate(lp["top_logprobs"][1:]):
                # the most likely token and the prompt's own token are both there
                assert max(top.values()) == pytest.approx(ref[k].max().item(), abs=1e-4)
                assert lp["tokens"][k + 1] in top
            # max_tokens=1 (lm-eval's request): the same prompt scores, then one generated token
            r = await c.post("/v1/completions", json={"model": GPT, "prompt": ids, "max_tokens": 1, "echo": True,
                                                      "logprobs": 1, "temperature": 0})
            lp1 = r.json()["choices"][0]["logprobs"]
            assert len(lp1["tokens"]) == len(ids) + 1
            assert lp1["token_logprobs"][:len(ids)] == lp["token_logprobs"]
    asyncio.run(main())


def test_generated_logprobs_whole_and_streamed_agree(served):
    req = {"model": GPT, "prompt": "hello there", "max_tokens": 5, "temperature": 0, "logprobs": 3,
           "ignore_eos": True}

    async def main():
        async with app_client(served) as c:
            whole = (await c.post("/v1/completions", json=req)).json()["choices"][0]
            lp = whole["logprobs"]
            assert len(lp["tokens"]) == 5 and "".join(lp["tokens"])  # one entry per generated token
            for tok, val, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
                assert val == pytest.approx(max(top.values()))  # greedy: the chosen one is the top-1
                assert top[tok] == val and 3 <= len(top) <= 4
            r = await c.post("/v1/completions", json={**req, "stream": True})
            chunks = [e["choices"][0] for e in _events(r.text) if e["choices"]]
            streamed = [t for ch in chunks if ch["logprobs"] for t in ch["logprobs"]["token_logprobs"]]
            assert streamed == pytest.approx(lp["token_logprobs"])
            offsets = [t for ch in chunks if ch["logprobs"] for t in ch["logprobs"]["text_offset"]]
            assert offsets == lp["text_offset"]
    asyncio.run(main())


def test_chat_logprobs_shape_whole_and_streamed(served):
    req = {"model": GPT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
           "logprobs": True, "top_logprobs": 2, "ignore_eos": True}

    async def main():
        async with app_client(served) as c:
            ch = (await c.post("/v1/chat/completions", json=req)).json()["choices"][0]
            content = ch["logprobs"]["content"]
            assert len(content) == 4
            for item in content:
                assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
                assert len(item["top_logprobs"]) == 2
                assert item["logprob"] == pytest.approx(item["top_logprobs"][0]["logprob"])
                assert item["bytes"] == list(item["token"].encode())
            plain = (await c.post("/v1/chat/completions", json={**req, "logprobs": False, "top_logprobs": None}))
            assert plain.json()["choices"][0]["logprobs"] is None
            r = await c.post("/v1/chat/completions", json={**req, "stream": True})
            streamed = [x["logprob"] for e in _events(r.text) for x in
                        ((e["choices"][0]["logprobs"] or {}).get("content") or [] if e["choices"] else [])]
            assert streamed == pytest.approx([x["logprob"] for x in content])
    asyncio.run(main())


def test_requests_with_and_without_logprobs_share_a_batch(served):
    async def main():
        async with app_client(served, max_batch_size=8) as c:
            base = {"model": GPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
            prompts = ["one two three", "four five", "six seven eight nine"]
            alone = [(await c.post("/v1/completions", json={**base, "prompt": p})).json()["choices"][0]["text"]
                     for p in prompts]
            engine = c.app.state.served[GPT].engine
            before = len(engine.scheduler.batch_sizes)
            rs = await asyncio.gather(*[c.post("/v1/completions", json={**base, "prompt": p,
                                                                       **({"logprobs": 2} if i % 2 else {})})
                                        for i, p in enumerate(prompts)])
            assert max(engine.scheduler.batch_sizes[before:]) >= 2
            for i, r in enumerate(rs):
                ch = r.json()["choices"][0]
                assert ch["text"] == alone[i]  # a row's logprobs change nothing for its neighbours
                assert (ch["logprobs"] is not None) == bool(i % 2)
    asyncio.run(main())


def test_n_returns_n_choices_with_usage_summed(served):
    async def main():
        async with app_client(served) as c:
            r = await c.post("/v1/completions", json={"model": GPT, "prompt": "hi", "max_tokens": 3, "n": 4,
                                                      "seed": 5, "ignore_eos": True})
            body = r.json()
            assert [ch["index"] for ch in body["choices"]] == [0, 1, 2, 3]
            assert body["usage"]["completion_tokens"] == 12 and body["usage"]["prompt_tokens"] == 3
            assert len({ch["text"] for ch in body["choices"]}) > 1  # each its own sample
            r = await c.post("/v1/chat/completions", json={"model": GPT, "messages": [{"role": "user", "content": "x"}],
                                                           "max_tokens": 2, "n": 3, "ignore_eos": True,
                                                           "stream": True,
                                                           "stream_options": {"include_usage": True}})
            events = _events(r.text)
            finished = {e["choices"][0]["index"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]}
            assert finished == {0, 1, 2}
            assert events[-1]["usage"]["completion_tokens"] == 6
    asyncio.run(main())


def test_best_of_returns_the_best_n_and_charges_every_candidate(served):
    async def main():
        async with app_client(served) as c:
            r = await c.post("/v1/completions", json={"model": GPT, "prompt": "hi", "max_tokens": 3, "n": 1,
                                                      "best_of": 3, "seed": 1, "ignore_eos": True, "logprobs": 0})
            body = r.json()
            assert len(body["choices"]) == 1 and body["choices"][0]["index"] == 0
            assert body["usage"]["completion_tokens"] == 9  # three candidates were generated
            # the one returned has the best mean log-probability among the three the same seeds give
            r3 = await c.post("/v1/completions", json={"model": GPT, "prompt": "hi", "max_tokens": 3, "n": 3,
                                                       "seed": 1, "ignore_eos": True, "logprobs": 0})
            means = {ch["text"]: sum(ch["logprobs"]["token_logprobs"]) / 3 for ch in r3.json()["choices"]}
            assert body["choices"][0]["text"] == max(means, key=means.get)
    asyncio.run(main())


@pytest.mark.parametrize("body,param_or_words", [
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "n": 2, "best_of": 1}, "best_of"),
    ({"prompt": "x", "n": 1, "best_of": 2, "stream": True}, "best_of"),
    ({"prompt": "x", "n": 17}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_bad_values_get_a_400_naming_them(served, body, param_or_words):
    async def main():
        async with app_client(served) as c:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            r = await c.post(path, json={"model": GPT, **body})
            assert r.status_code == 400, r.text
            assert param_or_words in r.json()["error"]["message"]
    asyncio.run(main())


def test_tokenize_and_detokenize_round_trip(served, tiny_gpt2):
    async def main():
        async with app_client(served) as c:
            r = await c.post("/tokenize", json={"model": GPT, "prompt": "the cat sat", "return_token_strs": True})
            body = r.json()
            assert body["tokens"] == tiny_gpt2.tokenizer("the cat sat")["input_ids"]
            assert body["count"] == len(body["tokens"]) and body["max_model_len"] == tiny_gpt2.max_seq_length
            assert len(body["token_strs"]) == body["count"]
            # the same count the completions endpoint charges
            u = (await c.post("/v1/completions", json={"model": GPT, "prompt": "the cat sat", "max_tokens": 1}))
            assert u.json()["usage"]["prompt_tokens"] == body["count"]
            r = await c.post("/detokenize", json={"model": GPT, "tokens": body["tokens"]})
            assert "the cat sat" in r.json()["prompt"]
            chat = await c.post("/tokenize", json={"model": GPT, "messages": [{"role": "user", "content": "hi"}]})
            u = await c.post("/v1/chat/completions", json={"model": GPT, "max_tokens": 1,
                                                          "messages": [{"role": "user", "content": "hi"}]})
            assert chat.json()["count"] == u.json()["usage"]["prompt_tokens"]
            bad = await c.post("/detokenize", json={"model": GPT, "tokens": [10**8]})
            assert bad.status_code == 400 and "tokens" in bad.json()["error"]["message"]
            both = await c.post("/tokenize", json={"model": GPT})
            assert both.status_code == 400 and "prompt or messages" in both.json()["error"]["message"]
            unknown = await c.post("/tokenize", json={"model": "nope", "prompt": "x"})
            assert unknown.status_code == 404
    asyncio.run(main())


def test_model_cards_carry_context_variant_quality_and_price(served, tiny_gpt2, tmp_path):
    async def main():
        cfg = ServerConfig(BatchingConfig(), usd_per_hour=3.6, finops=FinOpsConfig(store=str(tmp_path / "l.db")))
        app = create_app(served, cfg)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                # the price follows the engine time metered: one generation teaches it
                await c.post("/v1/completions", json={"model": GPT, "prompt": "hi", "max_tokens": 4,
                                                      "ignore_eos": True})
                cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
                card = cards[GPT]
                assert card["context_length"] == tiny_gpt2.max_seq_length
                assert card["variant"]["hash"] and card["variant"]["source"] == "random:tiny-gpt2"
                assert "quality" in card and card["quality"] is None  # the source: never measured against itself
                price = card["price"]
                assert price["measured"] and price["usd_per_1k_output_tokens"] > 0
                assert price["usd_per_1k_input_tokens"] > 0 and "3.6" in price["basis"]
                assert (await c.get(f"/v1/models/{GPT}")).json()["price"] == price
    asyncio.run(main())


def test_the_reservation_covers_every_candidate_and_the_scored_prompt(served, monkeypatch):
    """The gate reserves (budget, tokens per minute) the Plan's worst case: n (or best_of) candidates, and
    the prompt's positions when they are scored."""
    import leaninfer.serving.generation as generation

    plans = []
    real = generation.Plan

    def recording(*args, **kw):
        plans.append(real(*args, **kw))
        return plans[-1]

    monkeypatch.setattr(generation, "Plan", recording)

    async def main():
        async with app_client(served) as c:
            ids = [5, 6, 7, 8]
            for extra in ({}, {"n": 4}, {"n": 2, "best_of": 3}, {"echo": True, "logprobs": 1}):
                r = await c.post("/v1/completions", json={"model": GPT, "prompt": ids, "max_tokens": 5, **extra})
                assert r.status_code == 200, r.text
    asyncio.run(main())
    assert [(p.input_tokens, p.max_output_tokens) for p in plans] == [(4, 5), (4, 20), (4, 15), (4, 5 + 4)]
