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
def test_static_and_cuda_graph_decode_give_the_dynamic_tokens_on_cuda(decode):
    from leaninfer.models import greedy_generate

    m = leaninfer.load("random:tiny-llama", device="cuda")
    prompts = [m.tokenizer(p)["input_ids"] for p in ["a prompt", "a longer prompt with more words", "x"]]
    ref = greedy_generate(m.runner("dynamic"), prompts, 20, None)
    assert greedy_generate(m.runner(decode), prompts, 20, None) == ref


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
