"""Chunked prefill: a long prompt fed a part a step, between the running rows' decode steps, gives the tokens of a
whole-prompt prefill on both cache layouts, and its cancellation, failure or admission touches nobody else."""

from __future__ import annotations

import numpy as np
import pytest

from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


def _prompt(m, words: int) -> list[int]:
    return m.tokenizer(" ".join(WORDS[i % len(WORDS)] for i in range(words)))["input_ids"]


def _run(runner, prompts, max_tokens, *, chunk, max_batch_size=4, n=None, arrive=None, log=None, cancel=None):
    """Greedy outputs through the server's scheduler. ``arrive[i]``: the step before which prompt i is
    submitted; ``log`` collects (kind, rows) of every model call; ``cancel``: (prompt index, step) to cancel at."""
    s = GenerationScheduler(runner, max_batch_size=max_batch_size, eos_token_id=None, prefill_chunk=chunk,
                            on_step=(lambda kind, dt, rows: log.append((kind, rows))) if log is not None else None)
    arrive = arrive or [0] * len(prompts)
    seqs: list[list[GenSequence]] = [[] for _ in prompts]
    step = 0
    while step <= max(arrive) or s.has_work():
        for i, p in enumerate(prompts):
            if arrive[i] == step:
                group = object()
                seqs[i] = [s.submit(GenSequence(prompt=p, params=SamplingParams(max_tokens=max_tokens[i],
                                                                                 temperature=0),
                                                on_event=lambda q, e: None, group=group))
                           for _ in range((n or [1] * len(prompts))[i])]
        if cancel and cancel[1] == step:
            for q in seqs[cancel[0]]:
                s.cancel(q)
        s.step()
        step += 1
    return [[q.output for q in group] for group in seqs], [[q.finish_reason for q in g] for g in seqs], s


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_a_prompt_fed_in_parts_gives_the_whole_prefills_logits_and_tokens(request, fixture, decode):
    m = request.getfixturevalue(fixture)
    prompt = _prompt(m, 40)
    for size in (7, 1, len(prompt) - 1):  # parts of one token, and a last part of one token
        whole = m.runner(decode, max_rows=2)
        want = whole.prefill([1], [prompt])
        parts = m.runner(decode, max_rows=2)
        parts.prefill([2], [prompt[:5]])  # a row already running: the parts join beside it
        for start in range(0, len(prompt), size):
            got = parts.prefill_part(1, prompt[start:start + size], start + size >= len(prompt))
            assert (got is None) == (start + size < len(prompt))  # logits with the last part only
        np.testing.assert_allclose(got, want, atol=1e-4)
        tok = [int(np.argmax(want[0]))]
        for _ in range(5):  # the cache it left decodes as the whole prefill's does
            a, b = whole.decode([1], tok), parts.decode([2, 1], [0, *tok])[1:]
            np.testing.assert_allclose(b, a, atol=1e-4)
            tok = [int(np.argmax(a[0]))]
        assert not parts._parts  # nothing left aside once it joined


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_chunked_serving_gives_the_same_tokens_and_decodes_between_the_parts(request, fixture, decode):
    """Short rows decode; two long prompts (one with n=2 copies) arrive while they run and are fed 8 tokens a
    step. Every output equals the whole-prompt run's, and the running rows got a decode step between parts."""
    m = request.getfixturevalue(fixture)
    prompts = [_prompt(m, 3), _prompt(m, 5), _prompt(m, 30), _prompt(m, 4), _prompt(m, 26)]
    max_tokens, arrive, n = [12, 9, 6, 7, 5], [0, 0, 2, 3, 3], [1, 1, 2, 1, 1]
    assert len(prompts[2]) > 16 and len(prompts[4]) > 16 and max(len(prompts[i]) for i in (0, 1, 3)) <= 8
    want, _, _ = _run(m.runner(decode, max_rows=6), prompts, max_tokens, chunk=0, max_batch_size=6, n=n,
                      arrive=arrive)
    runner, calls = m.runner(decode, max_rows=6), []
    for name in ("decode", "prefill_part"):
        real = getattr(runner, name)
        setattr(runner, name, lambda *a, _real=real, _name=name: calls.append((_name, a[0])) or _real(*a))
    got, reasons, s = _run(runner, prompts, max_tokens, chunk=8, max_batch_size=6, n=n, arrive=arrive)
    assert got == want
    assert all(r == "length" for g in reasons for r in g)
    parts = [i for i, (name, _) in enumerate(calls) if name == "prefill_part"]
    assert len(parts) == -(-len(prompts[2]) // 8) - (-len(prompts[4]) // 8)  # ceil(len / 8) parts each
    assert all("decode" in [name for name, _ in calls[a + 1:b]] for a, b in zip(parts, parts[1:], strict=False))
    assert not s.prefilling and not s.runner._parts


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_a_long_prompt_cancelled_mid_prefill_frees_its_part_and_nobody_else_notices(tiny_llama, decode):
    m = tiny_llama
    prompts = [_prompt(m, 3), _prompt(m, 30), _prompt(m, 4)]
    want, _, _ = _run(m.runner(decode, max_rows=2), [prompts[0], prompts[2]], [10, 6], chunk=0, max_batch_size=2)
    runner = m.runner(decode, max_rows=2)
    got, reasons, s = _run(runner, prompts, [10, 8, 6], chunk=8, max_batch_size=2, arrive=[0, 1, 3],
                           cancel=(1, 2))
    assert reasons[1] == ["cancelled"] and got[1] == [[]]
    # the third prompt waited for the long one's row (2 rows at most), then took it once it was cancelled
    assert [got[0], got[2]] == want and reasons[0] == reasons[2] == ["length"]
    assert not runner._parts and not s.prefilling
    if decode == "static":
        assert sorted(runner._free) == [0, 1]


def test_a_part_that_fails_fails_its_request_only(tiny_gpt2):
    runner = tiny_gpt2.runner("static", max_rows=3)
    real = runner.prefill_part
    fed = []

    def flaky(seq_id, tokens, last):
        fed.append(len(tokens))
        if len(fed) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(seq_id, tokens, last)

    runner.prefill_part = flaky
    prompts = [_prompt(tiny_gpt2, 3), _prompt(tiny_gpt2, 30), _prompt(tiny_gpt2, 5)]
    want, _, _ = _run(tiny_gpt2.runner("static", max_rows=3), [prompts[0], prompts[2]], [8, 8], chunk=0)
    got, reasons, s = _run(runner, prompts, [8, 8, 8], chunk=8, arrive=[0, 1, 1])
    assert reasons == [["length"], ["error"], ["length"]] and got[1] == [[]]
    assert [got[0], got[2]] == want
    assert not runner._parts and not s.prefilling and sorted(runner._free) == [0, 1, 2]


def test_rows_being_prefilled_count_against_the_batch_and_scored_prompts_go_whole(tiny_gpt2):
    runner = tiny_gpt2.runner("static", max_rows=2)
    s = GenerationScheduler(runner, max_batch_size=2, eos_token_id=None, prefill_chunk=8)
    long = _prompt(tiny_gpt2, 30)
    short = _prompt(tiny_gpt2, 3)
    a, b = (s.submit(GenSequence(prompt=long, params=SamplingParams(max_tokens=4, temperature=0),
                                 on_event=lambda q, e: None)) for _ in range(2))
    s.step()
    c = s.submit(GenSequence(prompt=short, params=SamplingParams(max_tokens=4, temperature=0),
                             on_event=lambda q, e: None))
    s.step()
    # a and b are being fed and hold the batch's 2 rows (and the pool's 2 slots, taken at their last part):
    # c waits, where counting running rows only would have let it in and filled the pool under them
    assert list(s.prefilling) == [a, b] and list(s.waiting) == [c]
    while s.has_work():
        s.step()
    assert a.finish_reason == b.finish_reason == c.finish_reason == "length" and a.output == b.output
    scored = s.submit(GenSequence(prompt=long, params=SamplingParams(max_tokens=2, temperature=0,
                                                                    prompt_logprobs=1),
                                  on_event=lambda q, e: None))
    s.step()
    assert not s.prefilling and scored.output  # prefilled whole in one step: its prompt is scored in one call


def test_a_runner_without_parts_prefills_whole(tiny_gpt2):
    from leaninfer.models import RecomputeRunner

    s = GenerationScheduler(RecomputeRunner(tiny_gpt2), max_batch_size=2, prefill_chunk=8)
    assert s.prefill_chunk == 0


def test_the_server_feeds_long_prompts_in_parts_with_the_same_text(tiny_gpt2):
    """Over HTTP: concurrent completions, two with long prompts, give the same text with parts of 8 tokens as
    with whole prompts; unset, the engine takes the runner's part size (256 on a CPU)."""
    import asyncio

    from leaninfer.engines.engine import BatchingConfig

    from ..serving.conftest import app_client

    prompts = ["hi", " ".join(WORDS * 3), "a b c", " ".join(WORDS[::-1] * 2)]

    async def texts(**batching):
        async with app_client({"tiny-gpt2": tiny_gpt2}, **batching) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": "tiny-gpt2", "prompt": p, "max_tokens": 10, "ignore_eos": True, "temperature": 0})
                for p in prompts))
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
            return [r.json()["choices"][0]["text"] for r in rs], c.app.state.served["tiny-gpt2"].engine.scheduler

    whole, s0 = asyncio.run(texts(prefill_chunk_tokens=0))
    parts, s8 = asyncio.run(texts(prefill_chunk_tokens=8))
    _, default = asyncio.run(texts())
    assert parts == whole and (s0.prefill_chunk, s8.prefill_chunk, default.prefill_chunk) == (0, 8, 256)
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        BatchingConfig(prefill_chunk_tokens=-1)
