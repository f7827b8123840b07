"""The public API the way a notebook uses it: several calls in one process, in any order."""

from __future__ import annotations

import numpy as np
import pytest

import leaninfer


@pytest.mark.slow
def test_optimize_load_evaluate_any_number_of_times_in_any_order(tmp_path, tiny_gpt2):
    # optimize twice in a row: the old leaninfer.optimize was rebound to a subpackage by the first call
    a = leaninfer.optimize("random:tiny-bert", "onnx,ort-int8", tmp_path / "a")
    b = leaninfer.optimize("random:tiny-bert", "int8", tmp_path / "b")
    reference = leaninfer.load("random:tiny-bert")
    q1 = leaninfer.evaluate(leaninfer.load(a.path), reference)
    c = leaninfer.optimize(tiny_gpt2, "int8:method=torch-dynamic", tmp_path / "c")
    q2 = leaninfer.evaluate(b.model, reference)
    d = leaninfer.optimize(tiny_gpt2, "fp16", tmp_path / "d")
    assert (a.model.state, b.model.state, c.model.state, d.model.state) == \
        ("onnx:int8", "torch:int8", "torch:int8", "torch:fp16")
    assert q1["mean_cosine_to_reference"] > 0.9 and q2["mean_cosine_to_reference"] > 0.9
    # earlier handles stay usable after later calls, and agree with a fresh load of their artifact
    enc = a.model.tokenize(["still works"])
    np.testing.assert_allclose(a.model.embed_batch(enc), leaninfer.load(a.path).embed_batch(enc), atol=1e-6)
    assert leaninfer.load(c.path).generate(["hi"], 3) == c.model.generate(["hi"], 3)
    # the source handle was never modified by the steps applied to it
    np.testing.assert_array_equal(tiny_gpt2.logits_batch(enc), leaninfer.load("random:tiny-gpt2").logits_batch(enc))
