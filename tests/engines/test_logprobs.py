"""Log-probabilities out of the one decode path, checked against the model run directly; ``n`` sequences sharing
one prefill; ``max_tokens=0`` scoring the prompt alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams
from leaninfer.engines.logprobs import log_softmax, token_logprob
from leaninfer.models import RecomputeRunner
from leaninfer.models.runner import greedy_generate

PROMPTS = ["the cat sat on the mat", "hello", "a much longer prompt with quite a few more words in it"]
RUNNERS = [lambda m: m.runner(), RecomputeRunner, lambda m: m.runner("static")]


def _ids(m, text):
    return m.tokenizer(text)["input_ids"]


def _reference(m, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(m.module(torch.tensor([ids])).logits[0].float(), -1)


def _run(s):
    while s.has_work():
        s.step()


class Recording:
    def __init__(self):
        self.events = []

    def __call__(self, seq, ev):
        self.events.append(ev)


@pytest.mark.parametrize("runner_of", RUNNERS, ids=["kv-cache", "recompute", "slot-pool"])
def test_echo_logprobs_equal_log_softmax_of_the_models_logits(tiny_gpt2, runner_of):
    m = tiny_gpt2
    s = GenerationScheduler(runner_of(m), max_batch_size=8, eos_token_id=None)
    recs = []
    for i, text in enumerate(PROMPTS):  # one batch: scored rows beside one that isn't (row 1)
        rec = Recording()
        recs.append(rec)
        scored = None if i == 1 else 3
        s.submit(GenSequence(prompt=_ids(m, text), params=SamplingParams(max_tokens=0, prompt_logprobs=scored),
                             on_event=rec))
    _run(s)
    for i, (text, rec) in enumerate(zip(PROMPTS, recs, strict=True)):
        (ev,) = rec.events  # max_tokens=0: one event, the end, with the prompt's scores
        assert ev.finish_reason == "length" and ev.tokens == []
        if i == 1:
            assert ev.prompt_logprobs is None
            continue
        ids = _ids(m, text)
        ref = _reference(m, ids)
        assert ev.prompt_logprobs[0] is None and len(ev.prompt_logprobs) == len(ids)
        got = np.array([e.logprob for e in ev.prompt_logprobs[1:]])
        want = np.array([ref[k, ids[k + 1]].item() for k in range(len(ids) - 1)])
        np.testing.assert_allclose(got, want, atol=1e-4)
        for k, e in enumerate(ev.prompt_logprobs[1:]):
            top_ids = [t for t, _ in e.top]
            assert top_ids == torch.topk(ref[k], 3).indices.tolist()
            assert e.token == ids[k + 1]


@pytest.mark.parametrize("runner_of", RUNNERS, ids=["kv-cache", "recompute", "slot-pool"])
def test_sampled_logprobs_come_from_the_logits_that_sampled(tiny_gpt2, runner_of):
    m = tiny_gpt2
    ids = _ids(m, PROMPTS[0])
    s = GenerationScheduler(runner_of(m), max_batch_size=8, eos_token_id=None)
    rec, plain = Recording(), Recording()
    s.submit(GenSequence(prompt=ids, params=SamplingParams(max_tokens=5, temperature=0, logprobs=4), on_event=rec))
    s.submit(GenSequence(prompt=_ids(m, PROMPTS[2]), params=SamplingParams(max_tokens=5, temperature=0),
                         on_event=plain))  # a row without logprobs in the same batch
    _run(s)
    assert max(s.batch_sizes) == 2
    assert all(ev.logprobs is None for ev in plain.events)
    entries = [e for ev in rec.events for e in ev.logprobs]
    tokens = [t for ev in rec.events for t in ev.tokens]
    assert [e.token for e in entries] == tokens and len(tokens) == 5
    full = ids + tokens
    ref = _reference(m, full)
    for k, e in enumerate(entries):
        pos = len(ids) - 1 + k
        assert e.logprob == pytest.approx(ref[pos, full[pos + 1]].item(), abs=1e-4)
        # greedy: the chosen token is the most likely one, its log-probability the top-1's
        assert e.top[0] == (e.token, pytest.approx(e.logprob))
        assert len(e.top) == 4 and [lp for _, lp in e.top] == sorted([lp for _, lp in e.top], reverse=True)


def test_token_logprob_math():
    row = np.array([1.0, 3.0, 2.0, -1.0])
    lp = token_logprob(row, 2, 2)
    want = row - np.log(np.exp(row).sum())
    assert lp.logprob == pytest.approx(want[2])
    assert lp.top == ((1, pytest.approx(want[1])), (2, pytest.approx(want[2])))
    assert np.exp(log_softmax(row)).sum() == pytest.approx(1.0)
    assert token_logprob(row, 0, 0).top == ()


class CountingRunner:
    def __init__(self, inner):
        self.inner, self.prefilled_rows, self.forks = inner, 0, 0
        self.has_cache = inner.has_cache

    def prefill(self, ids, prompts):
        self.prefilled_rows += len(ids)
        return self.inner.prefill(ids, prompts)

    def prefill_scoring(self, ids, prompts, top):
        self.prefilled_rows += len(ids)
        return self.inner.prefill_scoring(ids, prompts, top)

    def fork(self, seq_id, new_ids):
        self.forks += len(new_ids)
        return self.inner.fork(seq_id, new_ids)

    def decode(self, ids, tokens):
        return self.inner.decode(ids, tokens)

    def release(self, ids):
        return self.inner.release(ids)


@pytest.mark.parametrize("runner_of", RUNNERS, ids=["kv-cache", "recompute", "slot-pool"])
def test_n_sequences_share_one_prefill_and_decode_as_if_alone(tiny_gpt2, runner_of):
    m = tiny_gpt2
    ids = _ids(m, PROMPTS[0])
    alone = greedy_generate(m.runner(), [ids], 6)[0]  # no EOS: six tokens each
    runner = CountingRunner(runner_of(m))
    s = GenerationScheduler(runner, max_batch_size=8, eos_token_id=None)
    group = object()
    seqs = [s.submit(GenSequence(prompt=ids, params=SamplingParams(max_tokens=6, temperature=0), group=group,
                                 on_event=lambda q, e: None)) for _ in range(4)]
    other = s.submit(GenSequence(prompt=_ids(m, PROMPTS[2]), params=SamplingParams(max_tokens=6, temperature=0),
                                 on_event=lambda q, e: None))
    _run(s)
    assert runner.prefilled_rows == 2 and runner.forks == 3  # one prefill for the 4, one for the other
    assert [q.output for q in seqs] == [alone] * 4
    assert other.output == greedy_generate(m.runner(), [_ids(m, PROMPTS[2])], 6)[0]
    # the shared prefill's engine time is split across the four, not charged four times
    assert sum(q.busy_prefill_s for q in seqs) > 0
    assert max(q.busy_prefill_s for q in seqs) == pytest.approx(min(q.busy_prefill_s for q in seqs))


def test_n_sampled_sequences_with_seeds_differ_and_repeat(tiny_gpt2):
    m = tiny_gpt2
    ids = _ids(m, PROMPTS[1])

    def outputs():
        s = GenerationScheduler(m.runner(), max_batch_size=8, eos_token_id=None)
        group = object()
        seqs = [s.submit(GenSequence(prompt=ids, params=SamplingParams(max_tokens=8, temperature=1.0, seed=7 + i),
                                     group=group, on_event=lambda q, e: None)) for i in range(3)]
        _run(s)
        return [q.output for q in seqs]

    first = outputs()
    assert first == outputs()  # seeded: the same again
    assert len({tuple(o) for o in first}) == 3  # each its own stream
