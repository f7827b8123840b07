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
    monkeypatch.setattr(type(gpt2), "runner",
                        lambda self, **kw: made.append(CountingRunner(real_runner(self, **kw))) or made[-1])
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


def _serve(m, runner, prompts, max_tokens, max_batch_size, n=None):
    """Greedy outputs of ``prompts`` through the scheduler the server steps (joins as rows free up, leaves as they
    finish), with ``n[i]`` continuations of prompt i sharing its prefill (``Runner.fork``)."""
    from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams

    s = GenerationScheduler(runner, max_batch_size=max_batch_size, eos_token_id=None)
    seqs = []
    for i, (p, k) in enumerate(zip(prompts, max_tokens, strict=True)):
        group = object()
        for _ in range((n or [1] * len(prompts))[i]):
            seqs.append(s.submit(GenSequence(prompt=p, params=SamplingParams(max_tokens=k, temperature=0),
                                             on_event=lambda q, e: None, group=group)))
    while s.has_work():
        s.step()
    return [q.output for q in seqs], s


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_the_slot_pool_gives_the_dynamic_runner_tokens(request, fixture, monkeypatch):
    """The CUDA path's cache layout, checked on the CPU: staggered joins and leaves over 5 slots (the bucket
    moving between 1, 2, 4 and 5), forks, and the pool doubling mid-decode (initial capacity shrunk to 8)."""
    from leaninfer.models import slot_runner

    m = request.getfixturevalue(fixture)
    monkeypatch.setattr(slot_runner, "INITIAL_CAPACITY", 8)
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    prompts = [m.tokenizer(" ".join(words[: 1 + (3 * i) % 11]))["input_ids"] for i in range(9)]
    max_tokens = [3 + (5 * i) % 13 for i in range(9)]
    n = [1, 2, 1, 1, 3, 1, 1, 1, 1]
    want, _ = _serve(m, m.runner("dynamic"), prompts, max_tokens, 5, n)
    runner = m.runner("static", max_rows=5)
    assert isinstance(runner, slot_runner.SlotPoolRunner) and runner.buckets == [1, 2, 4, 5]
    got, sched = _serve(m, runner, prompts, max_tokens, 5, n)
    assert got == want
    assert runner.capacity > 8  # it doubled on the way
    assert set(sched.batch_sizes) >= {1, 2, 5}  # the rows came and went
    assert sorted(runner._free) == list(range(5)) and not runner.slot_of  # every slot came back


def test_a_leave_moves_no_other_row_and_joins_take_the_lowest_free_slot(tiny_llama):
    import torch

    runner = tiny_llama.runner("static", max_rows=4)
    prompts = [tiny_llama.tokenizer(p)["input_ids"] for p in ["a b c", "d e", "f g h i", "j"]]
    runner.prefill([1, 2, 3, 4], prompts)
    runner.decode([1, 2, 3, 4], [5, 6, 7, 8])
    keys = runner.layers[0].keys
    kept = keys[[0, 2, 3]].clone()
    runner.release([2])
    assert runner.layers[0].keys is keys and torch.equal(keys[[0, 2, 3]], kept)  # nothing copied or moved
    assert runner.bucket_for(max(runner.slot_of.values())) == 4
    runner.release([4])
    assert runner.bucket_for(max(runner.slot_of.values())) == 4  # slot 2 is still taken
    runner.release([3])
    assert runner.bucket_for(max(runner.slot_of.values())) == 1  # only slot 0 left
    runner.prefill([9], [prompts[1]])
    assert runner.slot_of[9] == 1  # the lowest free slot


def test_a_join_into_a_full_pool_is_refused_and_takes_nothing(tiny_gpt2):
    runner = tiny_gpt2.runner("static", max_rows=1)
    runner.prefill([1], [[5, 6]])
    with pytest.raises(RuntimeError, match="slot pool is full"):
        runner.prefill([2], [[7]])
    assert runner.slot_of == {1: 0} and runner.lengths == [2]


def test_decode_modes_are_validated(tiny_gpt2):
    with pytest.raises(leaninfer.LeaninferError, match="unknown decode mode 'fast'; valid: dynamic, static, "
                                                       "cuda-graphs"):
        tiny_gpt2.runner("fast")
    with pytest.raises(leaninfer.LeaninferError, match="'cuda-graphs' needs a CUDA device"):
        tiny_gpt2.runner("cuda-graphs")
