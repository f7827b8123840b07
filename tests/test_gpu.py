"""CUDA paths: the same behaviour on a GPU as on the CPU. Skipped cleanly where there is no CUDA device."""

import numpy as np
import pytest

import leaninfer
from leaninfer import optimize

from .conftest import requires_cuda

pytestmark = requires_cuda


def test_embeddings_on_cuda_match_cpu():
    cpu, gpu = leaninfer.load("random:tiny-bert"), leaninfer.load("random:tiny-bert", device="cuda")
    texts = ["the same model on two devices", "gives the same embeddings"]
    assert float((cpu.embed(texts) * gpu.embed(texts)).sum(-1).min()) > 0.9999


def test_greedy_generation_on_cuda_matches_cpu():
    cpu, gpu = leaninfer.load("random:tiny-llama"), leaninfer.load("random:tiny-llama", device="cuda")
    assert cpu.generate(["a prompt"], max_new_tokens=8) == gpu.generate(["a prompt"], max_new_tokens=8)


@pytest.mark.parametrize("decode", ["static", "cuda-graphs"])
def test_slot_pool_and_cuda_graph_decode_give_the_dynamic_tokens_on_cuda(decode):
    from leaninfer.models import greedy_generate

    m = leaninfer.load("random:tiny-llama", device="cuda")
    assert type(m.runner()).__name__ == "SlotPoolRunner" and m.runner().cuda_graphs  # the CUDA default
    prompts = [m.tokenizer(p)["input_ids"] for p in ["a prompt", "a longer prompt with more words", "x"]]
    ref = greedy_generate(m.runner("dynamic"), prompts, 20, None)
    runner = m.runner(decode, max_rows=4)
    runner.warmup()
    assert greedy_generate(runner, prompts, 20, None) == ref


@pytest.mark.parametrize("chunk", [0, 16])
def test_200_joins_and_leaves_capture_nothing_after_warmup_and_keep_the_tokens(chunk):
    """Arrivals and departures at varying batch sizes (every bucket of an 8-slot pool), through the scheduler
    the server steps: the graphs captured at warm-up serve them all, nothing is compiled, tokens unchanged.
    With ``chunk``, prompts over 16 tokens are fed in parts between the graph-replayed decode steps."""
    import random

    import torch

    from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams

    m = leaninfer.load("random:tiny-llama", device="cuda")
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 5000) for _ in range(rng.randrange(1, 40))] for _ in range(200)]
    lengths = [rng.randrange(1, 24) for _ in range(200)]

    def serve(runner, chunk=0):
        s = GenerationScheduler(runner, max_batch_size=8, eos_token_id=None, prefill_chunk=chunk)
        seqs = []
        for i, (p, k) in enumerate(zip(prompts, lengths, strict=True)):
            seqs.append(s.submit(GenSequence(prompt=p, params=SamplingParams(max_tokens=k, temperature=0),
                                             on_event=lambda q, e: None)))
            if i % 3 == 0:  # arrivals spread over the steps: rows join and leave all along
                s.step()
        while s.has_work():
            s.step()
        return [q.output for q in seqs], s

    want, _ = serve(m.runner("dynamic"))
    runner = m.runner("cuda-graphs", max_rows=8)
    info = runner.warmup()
    assert info["captured"] == [1, 2, 4, 8]
    captures, compiles = runner.captures, torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got, sched = serve(runner, chunk)
    assert got == want
    assert runner.captures == captures and torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles
    assert {1, 2, 4, 8} <= {runner.bucket_for(b - 1) for b in sched.batch_sizes}  # every bucket served


@pytest.mark.parametrize("step", ["fp16", "bf16"])
def test_half_precision_on_cuda_keeps_greedy_tokens_close(tmp_path, step):
    src = leaninfer.load("random:tiny-llama", device="cuda")
    r = optimize(src, step, tmp_path / step)
    assert r.manifest["quality"]["top1_agreement"] > 0.9
    assert not [n for n in r.manifest["notes"] if "no native" in n]  # GPUs compute 16-bit natively


def test_torchao_int8_on_cuda(tmp_path):
    src = leaninfer.load("random:tiny-gpt2", device="cuda")
    r = optimize(src, "int8", tmp_path / "i8")
    assert r.manifest["quality"]["top1_agreement"] > 0.9
    assert r.manifest["weight_bytes"] < r.manifest["source"]["weight_bytes"]


@pytest.mark.parametrize("step", ["bnb-int8", "bnb-nf4"])
def test_bitsandbytes_on_cuda(tmp_path, step):
    src = leaninfer.load("random:tiny-llama", device="cuda")
    import torch

    linear_bytes = sum(m.weight.numel() * 4 for n, m in src.module.named_modules()
                       if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    r = optimize(src, step, tmp_path / step)
    # Tiny models are mostly embeddings, which stay 32-bit: count the saving on the Linear layers.
    assert r.manifest["source"]["weight_bytes"] - r.manifest["weight_bytes"] > 0.5 * linear_bytes
    assert r.manifest["quality"]["top1_agreement"] > 0.8
    enc = src.tokenize(["round trip"])
    again = leaninfer.load(r.path, device="cuda")
    np.testing.assert_allclose(again.logits_batch(enc), r.model.logits_batch(enc), atol=1e-2)
