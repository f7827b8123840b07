"""Artifacts reload as what was saved: torch-state models rebuild from the manifest's structure map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import leaninfer
from leaninfer.errors import LeaninferError
from leaninfer.models.structure_map import structure_map
from leaninfer.steps import common as step_registry

TEXT = ["the structure map says which modules to rebuild as what"]


def _logits(m):
    return m.logits_batch(m.tokenize(TEXT))


@pytest.mark.slow
def test_gpt2_int8_artifact_reloads_tied_with_identical_logits(gpt2_int8_artifact):
    path, built = gpt2_int8_artifact
    m = leaninfer.load(path)
    assert m.state == "torch:int8"
    manifest = json.loads((path / "leaninfer.json").read_text())
    assert manifest["format"] == "torch-state"
    smap = manifest["quantization_map"]
    # every transformer block's four matmuls (GPT-2's Conv1D, linearized) were quantized; lm_head was kept
    assert sum(e["type"] == "torch-dynamic-int8" for e in smap.values()) == 4 * 12
    assert "lm_head" not in smap
    assert m.module.lm_head.weight is m.module.transformer.wte.weight, "tied embeddings must stay tied"
    np.testing.assert_array_equal(_logits(m), _logits(built))


@pytest.mark.parametrize("method", ["torchao", "torch-dynamic", "torchao-weight-only"])
def test_int8_artifacts_of_each_method_reload_identically(tiny_gpt2, tmp_path, method):
    r = leaninfer.optimize(tiny_gpt2, f"int8:method={method}", tmp_path / method)
    again = leaninfer.load(r.path)
    assert again.module.lm_head.weight is again.module.transformer.wte.weight
    np.testing.assert_array_equal(_logits(again), _logits(r.model))
    assert r.manifest["quantization_map"], "the manifest holds the map the model is rebuilt from"


@pytest.mark.slow
def test_loading_needs_no_step_registry(gpt2_int8_artifact, monkeypatch):
    monkeypatch.setattr(step_registry, "STEPS", {})
    with pytest.raises(LeaninferError, match="unknown step"):
        step_registry.get_step("int8")  # the registry really is empty now
    assert leaninfer.load(gpt2_int8_artifact[0]).state == "torch:int8"


def test_a_module_without_a_rebuild_rule_fails_the_save_not_the_reload(tiny_gpt2):
    module = tiny_gpt2.copy().module
    module.transformer.h[0].mlp = torch.nn.Identity()  # a swap the map has no rule for
    with pytest.raises(LeaninferError, match="transformer.h.0.mlp.*Identity.*no rebuild rule"):
        structure_map(module, module.config, "causal-lm")


def test_an_unmodified_model_saves_in_the_plain_transformers_format(tiny_gpt2, tmp_path):
    assert tiny_gpt2.save(tmp_path) == {"format": "hf"}
    assert (tmp_path / "model.safetensors").exists()
