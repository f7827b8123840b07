"""Rooflines by hand, and FLOPs counted from layer shapes (quantized layers included)."""

import pytest

from leaninfer.benchmarks.roofline import Roofline, decode_step_cost, prefill_cost


def test_roofline_bounds_and_fractions_by_hand():
    # 2 GB at 1 TB/s = 2 ms; 1 GFLOP at 1 TFLOP/s = 1 ms; measured 4 ms -> memory-bound at 50% of its bound
    r = Roofline.of(2e9, 1e9, 0.004, bandwidth_bytes_per_s=1e12, peak_flops_per_s=1e12)
    assert (r.memory_bound_s, r.compute_bound_s, r.bound) == (0.002, 0.001, "memory")
    assert r.fraction_of_memory_bound == pytest.approx(0.5)
    assert r.fraction_of_compute_bound == pytest.approx(0.25)
    assert r.roofline_s == 0.002
    c = Roofline.of(1e9, 5e9, 0.010, bandwidth_bytes_per_s=1e12, peak_flops_per_s=1e12)
    assert c.bound == "compute" and c.roofline_s == 0.005


def test_a_missing_peak_makes_the_bound_unknown():
    r = Roofline.of(2e9, 1e9, 0.004, bandwidth_bytes_per_s=1e12, peak_flops_per_s=None)
    assert r.bound == "unknown" and r.roofline_s is None and r.compute_bound_s is None


def test_step_costs_by_hand():
    shape = {"layers": 2, "hidden": 4, "kv_width": 4}
    # decode of 3 sequences at context 5, fp16 KV: KV bytes 2 x 2 layers x 3 x 5 x 4 x 2 bytes = 480
    b, f = decode_step_cost(1000, {"body": 100, "lm_head": 10}, shape, batch=3, context=5, kv_bytes_per_elem=2)
    assert b == 1000 + 480
    assert f == 3 * (100 + 10 + 4 * 2 * 5 * 4)
    # prefill of 3 x 5 tokens: body at each position, LM head at the last one only
    b, f = prefill_cost(1000, {"body": 100, "lm_head": 10}, shape, batch=3, prompt=5)
    assert b == 1000
    assert f == 3 * (5 * 100 + 10 + 4 * 2 * 5 * 5 * 4)


@pytest.mark.slow
def test_torch_dynamic_int8_counts_the_same_matmul_flops_as_fp32(tmp_path):
    import leaninfer
    from leaninfer.pipeline import optimize

    fp32 = leaninfer.load("random:tiny-gpt2")
    cfg = fp32.config
    h, layers, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    # per layer: c_attn h x 3h, attn c_proj h x h, c_fc h x 4h, mlp c_proj 4h x h = 12 h^2
    expected = {"body": 2 * layers * 12 * h * h, "lm_head": 2 * h * vocab}
    assert fp32.matmul_flops_per_token() == expected
    int8 = optimize(fp32, "int8:method=torch-dynamic", tmp_path / "i8").model
    # the matmuls really are torch.ao's packed INT8 layers (their weights are no parameters)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in int8.module.modules())
    assert int8.matmul_flops_per_token() == expected
