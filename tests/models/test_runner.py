"""Greedy outputs from a batch equal the same request served alone (KV-cache and recompute runners)."""

from __future__ import annotations

import pytest
import torch

from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams
from leaninfer.models import RecomputeRunner

PROMPTS = ["hello there", "a much longer prompt with many words in it to pad the batch", "x",
           "the cat sat on the mat today"]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("runner_of", [lambda m: m.runner(), RecomputeRunner], ids=["kv-cache", "recompute"])
def test_batched_greedy_equals_alone(request, fixture, runner_of):
    m = request.getfixturevalue(fixture)
    ids = [m.tokenizer(p)["input_ids"] for p in PROMPTS]
    n = 10
    alone = []
    for p in ids:
        x = m.module.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
        alone.append(x[0, len(p):].tolist())
    s = GenerationScheduler(runner_of(m), max_batch_size=3, eos_token_id=None)
    seqs = []
    for i, p in enumerate(ids):  # staggered arrivals, different lengths: rows join and leave mid-flight
        seqs.append(s.submit(GenSequence(prompt=p, params=SamplingParams(max_tokens=n - i, temperature=0),
                                         on_event=lambda q, e: None)))
        if i == 1:
            s.step()
            s.step()
    while s.has_work():
        s.step()
    assert max(s.batch_sizes) == 3  # batching did happen
    for q, a in zip(seqs, alone, strict=True):
        assert q.finish_reason == "length"
        assert q.output == a[:len(q.output)] and len(q.output) == len(a[:len(q.output)])
