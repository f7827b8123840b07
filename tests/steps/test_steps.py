"""Every quantization step on tiny models (and minilm where real numerics matter): the module types change,
outputs stay close to FP32, sizes go down, exports match PyTorch."""

import numpy as np
import pytest

import leaninfer
from leaninfer.errors import StepError
from leaninfer.hardware import detect_local
from leaninfer.pipeline import optimize
from leaninfer.steps import get_step

from ..conftest import DEVICES


def cos_to(ref, model, texts=None):
    texts = texts or ["A man is playing a guitar.", "Prices rose again this month.", "The cat sleeps in the sun."]
    return float((ref.embed(texts) * model.embed(texts)).sum(-1).min())


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_and_bf16_casts(tmp_path, tiny_bert, device):
    import torch

    src = leaninfer.load("random:tiny-bert", device=device)
    for step, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        r = optimize(src, step, tmp_path / step)
        assert {p.dtype for p in r.model.module.parameters()} == {dtype}
        assert r.manifest["weight_bytes"] == pytest.approx(r.manifest["source"]["weight_bytes"] / 2, rel=0.01)
        assert r.manifest["quality"]["mean_cosine_to_reference"] > 0.99
        if device == "cpu":  # a CPU without native arithmetic in this precision: the artifact says so and why
            hw = detect_local()
            native = hw.native_fp16 if step == "fp16" else hw.native_bf16
            assert any(f"{step} on this CPU" in n for n in r.manifest["notes"]) == (not native)


def test_int8_torchao_quantizes_linears_and_stays_close(tmp_path, minilm):
    r = optimize(minilm, "int8", tmp_path / "int8")
    dense = r.model.module.encoder.layer[0].intermediate.dense
    assert type(dense.weight).__name__ != "Parameter" or dense.weight.dtype != minilm.module.encoder.layer[0].intermediate.dense.weight.dtype
    assert r.manifest["format"] == "torch-state"
    assert r.manifest["weight_bytes"] < 0.7 * minilm.weight_bytes()
    assert r.manifest["quality"]["mean_cosine_to_reference"] > 0.99
    again = leaninfer.load(r.path)  # rebuilt from config + recorded steps + saved state
    assert cos_to(r.model, again) > 0.9999


def test_int8_on_gpt2_quantizes_conv1d_layers(tmp_path, tiny_gpt2):
    r = optimize(tiny_gpt2, "int8", tmp_path / "g")
    attn = r.model.module.transformer.h[0].attn.c_attn
    assert type(attn).__name__ == "Linear"  # Conv1D was linearized so the quantizer sees it
    assert r.model.module.lm_head.weight.dtype.is_floating_point  # lm_head kept by default
    assert r.manifest["quality"]["top1_agreement"] > 0.9
    again = leaninfer.load(r.path)  # rebuilt from state: the tied lm_head must stay tied, not a copy
    assert again.module.lm_head.weight is again.module.transformer.wte.weight
    assert again.weight_bytes() == r.model.weight_bytes()


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_onnx_export_parity(tmp_path, fixture, request):
    src = request.getfixturevalue(fixture)
    r = optimize(src, "onnx", tmp_path / "o")
    assert r.model.backend == "onnx" and r.manifest["format"] == "onnx"
    enc = src.tokenize(["parity between onnx and torch", "second, longer text for the padding path here"])
    if src.task == "embedding":
        assert float((src.embed_batch(enc) * r.model.embed_batch(enc)).sum(-1).min()) > 0.9999
    else:
        np.testing.assert_allclose(r.model.logits_batch(enc), src.logits_batch(enc), atol=1e-3)


def test_export_leaves_the_source_model_untouched(tmp_path, tiny_bert):
    enc = tiny_bert.tokenize(["the traced model must not change"])
    before = tiny_bert.embed_batch(enc)
    optimize(tiny_bert, "onnx", tmp_path / "o")
    np.testing.assert_array_equal(tiny_bert.embed_batch(enc), before)


@pytest.fixture(scope="module")
def minilm_ort_int8(tmp_path_factory, minilm):
    return optimize(minilm, "onnx,ort-int8", tmp_path_factory.mktemp("a") / "ort")


@pytest.mark.slow
def test_ort_int8_minilm(minilm_ort_int8, minilm):
    r = minilm_ort_int8
    assert r.model.backend == "onnx" and r.model.precision == "int8"
    assert [s["step"] for s in r.manifest["steps"]] == ["onnx", "ort-int8"]
    assert r.manifest["weight_bytes"] < 0.35 * minilm.weight_bytes()
    assert r.manifest["quality"]["mean_cosine_to_reference"] > 0.99
    import onnx

    ops = {n.op_type for n in onnx.load(str(r.path / "model.onnx")).graph.node}
    assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops


@pytest.mark.slow
def test_ort_int8_static_minilm(tmp_path, minilm):
    from leaninfer.data import default_texts

    r = optimize(minilm, "ort-int8-static", tmp_path / "s", calibration_texts=default_texts()[:64])
    assert [s["step"] for s in r.manifest["steps"]] == ["onnx", "ort-int8-static"]  # export inserted
    # MinMax-calibrated static INT8 of minilm is the least faithful INT8 path (README: -0.6 STS pts).
    assert r.manifest["quality"]["mean_cosine_to_reference"] > 0.9
    import onnx

    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(r.path / "model.onnx")).graph.node}


@pytest.mark.slow
def test_openvino_int8_minilm(tmp_path, minilm):
    r = optimize(minilm, "ov-int8", tmp_path / "ov")
    assert [s["step"] for s in r.manifest["steps"]] == ["openvino", "ov-int8"]
    assert r.model.backend == "openvino" and r.manifest["format"] == "openvino"
    assert r.manifest["quality"]["mean_cosine_to_reference"] > 0.99
    assert r.manifest["weight_bytes"] < 0.35 * minilm.weight_bytes()


def test_exclude_pattern_keeps_modules_in_fp32(tmp_path, tiny_bert):
    r = optimize(tiny_bert, [{"step": "int8", "exclude": ["*attention*"]}], tmp_path / "x")
    layer = r.model.module.encoder.layer[0]
    assert type(layer.attention.self.query.weight).__name__ == "Parameter"
    assert type(layer.intermediate.dense.weight).__name__ != "Parameter"


def test_patterns_that_select_nothing_are_refused(tmp_path, tiny_bert):
    with pytest.raises(StepError, match="selects no Linear"):
        optimize(tiny_bert, [{"step": "int8", "include": ["nothing.matches"]}], tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("step", ["bnb-int8", "bnb-nf4"])
def test_bitsandbytes_quantizes_or_says_why(tmp_path, tiny_gpt2, step):
    try:
        r = optimize(tiny_gpt2, step, tmp_path / step)
    except StepError as e:  # an installed build without CPU support must say so and what to use instead
        assert "bitsandbytes" in str(e) and "ort-int8" in str(e)
        return
    assert r.manifest["quality"]["top1_agreement"] > 0.5
    assert r.manifest["weight_bytes"] < r.manifest["source"]["weight_bytes"]
    again = leaninfer.load(r.path)
    enc = tiny_gpt2.tokenize(["bitsandbytes round trip"])
    np.testing.assert_allclose(again.logits_batch(enc), r.model.logits_batch(enc), atol=1e-3)


def test_bitsandbytes_artifacts_are_placed_by_their_loader(tmp_path, tiny_gpt2, monkeypatch):
    """A bitsandbytes artifact is loaded with ``device_map`` on the asked device, never moved with ``.to()``:
    on a CUDA machine transformers would otherwise put it on the GPU, and ``.to("cpu")`` leaves Linear8bitLt's
    int8 scales behind (bitsandbytes #1332; it failed in int8_mm_dequant on an H200). A plain artifact is moved."""
    from leaninfer.models import torch_model

    try:
        r = optimize(tiny_gpt2, "bnb-int8", tmp_path / "bnb")
    except StepError:
        pytest.skip("this bitsandbytes build has no CPU support")
    plain = optimize(tiny_gpt2, "fp16", tmp_path / "fp16")
    calls, real = [], torch_model.auto_class

    class Spy:
        def __init__(self, cls):
            self.cls = cls

        def from_pretrained(self, location, **kwargs):
            calls.append(kwargs.get("device_map"))
            return self.cls.from_pretrained(location, **kwargs)

    monkeypatch.setattr(torch_model, "auto_class", lambda task: Spy(real(task)))
    again = leaninfer.load(r.path, device="cpu")
    leaninfer.load(plain.path, device="cpu")
    assert calls == [{"": "cpu"}, None]
    enc = tiny_gpt2.tokenize(["placed by its loader"])
    np.testing.assert_allclose(again.logits_batch(enc), r.model.logits_batch(enc), atol=1e-3)


def test_bad_step_parameters_are_named():
    with pytest.raises(StepError, match="calibration_samples"):
        get_step("ort-int8-static", calibration_samples=-1)
    with pytest.raises(StepError, match="method"):
        get_step("int8", method="int3")
    with pytest.raises(StepError, match="unknown step 'int7'; valid steps: .*ort-int8"):
        get_step("int7")
