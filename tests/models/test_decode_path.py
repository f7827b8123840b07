"""One decode path: ``Model.generate``, the benchmark worker and the server drive the same runner, and give the
same greedy tokens."""

from __future__ import annotations

import asyncio

import pytest

import leaninfer
from leaninfer.benchmarks import worker
from leaninfer.models import RecomputeRunner, greedy_generate, kv_cache

from ..serving.conftest import app_client

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gpt2():
    return leaninfer.load("random:gpt2")


class CountingRunner:
    """Wraps a model's runner and counts the calls made through it."""

    def __init__(self, inner):
        self.inner, self.has_cache, self.calls = inner, inner.has_cache, []

    def prefill(self, ids, prompts):
        self.calls.append("prefill")
        return self.inner.prefill(ids, prompts)

    def decode(self, ids, tokens):
        self.calls.append("decode")
        return self.inner.decode(ids, tokens)

    def release(self, ids):
        self.inner.release(ids)


@pytest.mark.slow
def test_generate_bench_and_server_give_the_same_greedy_tokens(gpt2, monkeypatch):
    batch, prompt_tokens, gen_tokens = 3, 12, 6
    made = []
    real_runner = type(gpt2).runner
    monkeypatch.setattr(type(gpt2), "runner", lambda self: made.append(CountingRunner(real_runner(self))) or made[-1])
    bench = worker.measure_generation(gpt2, batch, prompt_tokens, gen_tokens, repeats=1)
    # The worker has no loop of its own: every model call went through the model's runner, one prefill of
    # all rows then one decode per further token, for the warm-up pass and the measured one.
    assert [r.calls for r in made] == [["prefill"] + ["decode"] * (gen_tokens - 1)] * 2
    prompts = [[int(t) for t in row] for row in worker._batch(gpt2, batch, prompt_tokens)["input_ids"]]
    assert bench["greedy_token_ids"] == gpt2.generate(prompts, max_new_tokens=gen_tokens)
    assert all(len(t) == gen_tokens for t in bench["greedy_token_ids"])

    async def served():
        async with app_client({"gpt2": gpt2}) as c:
            rs = [await c.post("/v1/completions", json={"model": "gpt2", "prompt": p, "max_tokens": gen_tokens,
                                                        "temperature": 0}) for p in prompts]
            return [r.json() for r in rs]

    made.clear()
    for body, tokens in zip(asyncio.run(served()), bench["greedy_token_ids"], strict=True):
        assert body["usage"]["completion_tokens"] == gen_tokens
        assert body["choices"][0]["text"] == gpt2.tokenizer.decode(tokens, skip_special_tokens=True)
    assert made, "the server decodes through Model.runner()"


def test_server_greedy_text_equals_generate_on_a_vocab_matched_model(tiny_gpt2):
    prompts = ["the cat sat", "a much longer prompt about the weather in the mountains", "x"]
    ref = tiny_gpt2.generate(prompts, max_new_tokens=8)

    async def served():
        async with app_client({"m": tiny_gpt2}, max_batch_size=4) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": "m", "prompt": p, "max_tokens": 8, "temperature": 0}) for p in prompts))
            return [r.json()["choices"][0]["text"] for r in rs]

    assert asyncio.run(served()) == [tiny_gpt2.tokenizer.decode(r, skip_special_tokens=True) for r in ref]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_generate_equals_transformers_greedy_generate(request, fixture):
    import torch

    m = request.getfixturevalue(fixture)
    prompts = ["hello there", "a longer prompt with several more words", "x"]
    ours = m.generate(prompts, max_new_tokens=7)
    for p, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([m.tokenizer(p)["input_ids"]])
        ref = m.module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False,
                                pad_token_id=m.tokenizer.pad_token_id, eos_token_id=m.eos_token_id)
        assert got == ref[0, ids.shape[1]:].tolist()


def test_recompute_runner_gives_the_kv_runner_tokens(tiny_llama):
    prompts = [tiny_llama.tokenizer(p)["input_ids"] for p in ["one two three", "four", "five six seven eight"]]
    kv = tiny_llama.generate(prompts, max_new_tokens=6)
    assert greedy_generate(RecomputeRunner(tiny_llama), prompts, 6, tiny_llama.eos_token_id) == kv


def test_the_in_place_kv_cache_grows_without_changing_a_token(tiny_llama, monkeypatch):
    """Two spare columns: the buffers double several times while 12 tokens are decoded, rows join and leave."""
    prompts = ["one two three", "four", "five six seven eight nine ten"]
    before = tiny_llama.generate(prompts, max_new_tokens=12)
    assert [len(t) for t in before] == [12, 12, 12]  # no early EOS: every step really decodes
    monkeypatch.setattr(kv_cache, "SPARE_COLUMNS", 2)
    assert tiny_llama.generate(prompts, max_new_tokens=12) == before
    assert greedy_generate(RecomputeRunner(tiny_llama), [tiny_llama.tokenizer(p)["input_ids"] for p in prompts],
                           12, tiny_llama.eos_token_id) == before


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_static_shape_runner_gives_the_dynamic_runner_tokens(request, fixture, monkeypatch):
    """The CUDA-graph path's cache layout, checked on the CPU: staggered joins and leaves, and a capacity
    regrowth mid-decode (capacity step shrunk to 8)."""
    from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams
    from leaninfer.models import static_runner

    m = request.getfixturevalue(fixture)
    monkeypatch.setattr(static_runner, "CAPACITY_STEP", 8)
    prompts = [m.tokenizer(p)["input_ids"] for p in ["hello there", "a much longer prompt with many words", "x"]]

    def run(decode):
        s = GenerationScheduler(m.runner(decode), max_batch_size=2, eos_token_id=None)
        seqs = [s.submit(GenSequence(prompt=p, params=SamplingParams(max_tokens=14 - 3 * i, temperature=0),
                                     on_event=lambda q, e: None)) for i, p in enumerate(prompts)]
        while s.has_work():
            s.step()
        return [q.output for q in seqs]

    assert isinstance(m.runner("static"), static_runner.StaticKVRunner)
    assert run("static") == run("dynamic")


def test_decode_modes_are_validated(tiny_gpt2):
    with pytest.raises(leaninfer.LeaninferError, match="unknown decode mode 'fast'; valid: dynamic, static"):
        tiny_gpt2.runner("fast")
    with pytest.raises(leaninfer.LeaninferError, match="'cuda-graphs' needs a CUDA device"):
        tiny_gpt2.runner("cuda-graphs")
