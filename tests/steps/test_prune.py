"""Pruning steps on tiny models: shapes shrink, configs agree, plain transformers reloads, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from leaninfer.errors import StepError
from leaninfer.pipeline import optimize, plan
from leaninfer.steps import get_step
from leaninfer.steps.common import StepContext
from leaninfer.steps.prune import arch_of, layers_of, num_blocks

TEXTS = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill.",
         "Stock prices fell sharply on Monday morning.", "She is slicing a tomato in the kitchen.",
         "Two dogs are running through a field of snow."] * 4


def ctx(tmp_path):
    return StepContext(work_dir=tmp_path, calibration_texts=TEXTS)


def reload(path, task):
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    return auto.from_pretrained(path).eval()


def ffn_width(module):
    arch = arch_of(module)
    block = layers_of(module, arch)[2][0]
    w = block.get_submodule(arch.ffn_out).weight
    return w.shape[0] if type(block.get_submodule(arch.ffn_out)).__name__ == "Conv1D" else w.shape[1]


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_prune_ffn_shrinks_and_reloads_with_plain_transformers(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    width = ffn_width(model.module)
    r = optimize(model, [{"step": "prune-ffn", "ratio": 0.5}], tmp_path / "out")
    assert r.manifest["format"] == "hf"
    assert r.manifest["num_parameters"] < model.num_parameters()
    plain = reload(tmp_path / "out", model.task)
    assert ffn_width(plain) == width // 2
    # plain transformers computes what the pruned model computed before saving
    enc = model.tokenize(TEXTS[:3])
    with torch.no_grad():
        ids = {k: torch.from_numpy(v) for k, v in enc.items()}
        a = plain(**ids)
    b = r.model.module(**ids)
    key = "logits" if model.task == "causal-lm" else "last_hidden_state"
    torch.testing.assert_close(getattr(a, key), getattr(b, key), atol=1e-5, rtol=1e-4)


def test_prune_ffn_keeps_the_most_important_neurons(tiny_bert, tmp_path):
    m = tiny_bert.copy()
    arch = arch_of(m.module)
    blocks = layers_of(m.module, arch)[2]
    # Make neurons 0..9 of every layer dominant, and neurons 10..19 dead: importance must see both.
    with torch.no_grad():
        for b in blocks:
            b.intermediate.dense.weight[:10] *= 20
            b.intermediate.dense.bias[:10] += 5
            b.output.dense.weight[:, 10:20] = 0
    out = get_step("prune-ffn", ratio=0.5).apply(m, ctx(tmp_path))
    for b_old, b_new in zip(blocks, layers_of(out.module, arch)[2], strict=True):
        kept_rows = {tuple(r.tolist()) for r in b_new.intermediate.dense.weight}
        old_rows = [tuple(r.tolist()) for r in b_old.intermediate.dense.weight]
        assert all(old_rows[i] in kept_rows for i in range(10))
        assert not any(old_rows[i] in kept_rows for i in range(10, 20))


def test_prune_heads_llama_shrinks_config_and_reloads(tiny_llama, tmp_path):
    r = optimize(tiny_llama, [{"step": "prune-heads", "ratio": 0.5}], tmp_path / "out")
    plain = reload(tmp_path / "out", "causal-lm")
    cfg = plain.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)
    assert plain.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    assert plain.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    assert r.manifest["num_parameters"] < tiny_llama.num_parameters()


def test_prune_heads_refuses_bert_with_the_reason(tiny_bert, tmp_path):
    with pytest.raises(StepError, match="pruned_heads.*prune-ffn"):
        get_step("prune-heads").apply(tiny_bert, ctx(tmp_path))


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_drop_layers_by_index(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    r = optimize(model, [{"step": "drop-layers", "layers": [0]}], tmp_path / "out")
    plain = reload(tmp_path / "out", model.task)
    assert num_blocks(plain) == 1
    assert r.model.num_parameters() < model.num_parameters()


def test_drop_layers_chooses_the_layer_that_matters_least(tmp_path):
    import leaninfer

    m = leaninfer.load("random:tiny-llama")
    # Layer 0 made inert (its output projections zeroed): removing it changes nothing, so it must go.
    with torch.no_grad():
        m.module.model.layers[0].self_attn.o_proj.weight.zero_()
        m.module.model.layers[0].mlp.down_proj.weight.zero_()
    c = ctx(tmp_path)
    out = get_step("drop-layers", num_layers=1).apply(m, c)
    assert "removed layers [0]" in c.notes[-1]
    assert num_blocks(out.module) == 1 and out.module.config.num_hidden_layers == 1
    # the remaining block is the old layer 1, renumbered for the cache
    assert out.module.model.layers[0].self_attn.layer_idx == 0
    torch.testing.assert_close(out.module.model.layers[0].mlp.down_proj.weight,
                               m.module.model.layers[1].mlp.down_proj.weight)


@pytest.mark.parametrize("params,match", [
    ({"num_layers": 2}, r"num_layers=2: the model has 2 layers; valid: 1\.\.1"),
    ({"layers": [0, 1]}, r"layers=\[0, 1\]: the model has 2 layers"),
    ({"layers": [5]}, r"indices 0\.\.1"),
])
def test_drop_layers_too_many_is_a_clear_error(tiny_bert, tmp_path, params, match):
    with pytest.raises(StepError, match=match):
        get_step("drop-layers", **params).apply(tiny_bert, ctx(tmp_path))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_magnitude_reaches_sparsity(tiny_bert, tmp_path, scope):
    c = ctx(tmp_path)
    out = get_step("prune-magnitude", sparsity=0.7, scope=scope).apply(tiny_bert, c)
    ws = [m.weight for n, m in out.module.named_modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros / total == pytest.approx(0.7, abs=0.01)
    if scope == "layer":
        assert all(float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01) for w in ws)
    assert "NOT faster" in c.notes[-1] and "Stored sparse" in c.notes[-1]
    # the smallest weights went: every survivor is at least as large as every removed one
    orig = [m.weight for n, m in tiny_bert.module.named_modules() if isinstance(m, torch.nn.Linear)]
    if scope == "global":
        kept_min = min(float(w[w != 0].abs().min()) for w in ws)
        removed_max = max(float(o[w == 0].abs().max()) for o, w in zip(orig, ws, strict=True))
        assert kept_min >= removed_max


def test_prune_magnitude_respects_include_exclude(tiny_bert, tmp_path):
    out = get_step("prune-magnitude", sparsity=0.5, include="*intermediate*").apply(tiny_bert, ctx(tmp_path))
    for n, m in out.module.named_modules():
        if isinstance(m, torch.nn.Linear):
            frac = float((m.weight == 0).float().mean())
            assert (frac > 0.3) == ("intermediate" in n), n


@pytest.mark.parametrize("step,params,match", [
    ("prune-magnitude", {"sparsity": 1.5}, r"sparsity=1\.5 is out of range; valid: 0 up to \(not including\) 1"),
    ("prune-magnitude", {"sparsity": -0.1}, r"sparsity=-0\.1"),
    ("prune-ffn", {"ratio": 1.0}, r"ratio=1\.0 is out of range"),
    ("prune-heads", {"ratio": 0}, r"ratio=0"),
    ("drop-layers", {}, "exactly one of num_layers"),
    ("drop-layers", {"num_layers": 0}, r"num_layers=0"),
])
def test_bad_parameters_name_value_and_range(step, params, match):
    with pytest.raises(StepError, match=match):
        get_step(step, **params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a CUDA GPU")
def test_prune_2of4_refused_at_plan_time_without_gpu():
    with pytest.raises(StepError, match="only on NVIDIA GPUs"):
        get_step("prune-2of4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prune_2of4_on_gpu(tmp_path):
    import leaninfer
    from leaninfer.steps.prune import semi_structured_support, to_semi_structured

    if semi_structured_support("cuda") is not None:
        pytest.skip(semi_structured_support("cuda"))
    m = leaninfer.load("random:minilm-l6", device="cuda")
    steps = plan([get_step("fp16"), get_step("prune-2of4")], m.state, m.task)
    c = ctx(tmp_path)
    for s in steps:
        m = s.apply(m, c)
    w = m.module.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    dense = m.embed(TEXTS)
    assert to_semi_structured(m) > 0
    np.testing.assert_allclose(m.embed(TEXTS), dense, atol=2e-2)
