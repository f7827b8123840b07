"""One `step:key=value[,key=value]` syntax: optimize --steps, bench --variants and recipes parse it alike."""

from __future__ import annotations

import pytest

from leaninfer.benchmarks.runner import BenchConfig, VariantSpec, parse_variants, split_variants
from leaninfer.errors import StepError
from leaninfer.pipeline import Recipe, continues_step, parse_steps, split_step_text


@pytest.mark.parametrize("text", ["prune-ffn:ratio=0.3", "prune-ffn:ratio=0.3,num_calibration_texts=8",
                                  "int8:method=torch-dynamic:exclude=", "onnx+ort-int8:per_channel=false",
                                  "drop-layers:num_layers=2+int8:method=torch-dynamic"])
def test_a_variant_means_what_optimize_steps_mean(text):
    assert parse_steps(list(VariantSpec.parse(text).steps)) == parse_steps(text)
    assert split_variants(f"fp32,{text},fp16") == ["fp32", text, "fp16"]
    assert BenchConfig(variants=f"fp32,{text}").variants == ["fp32", text]


def test_plus_and_comma_chain_steps_alike():
    assert parse_steps("onnx+ort-int8:per_channel=false") == parse_steps("onnx,ort-int8:per_channel=false")
    assert split_step_text("prune-ffn:ratio=1e+3") == [{"step": "prune-ffn", "ratio": "1e+3"}]  # a number


def test_commas_in_variants_continue_a_step_only_with_its_own_parameters():
    assert continues_step("prune-ffn:ratio=0.3", "num_calibration_texts=8")
    assert not continues_step("prune-ffn:ratio=0.3", "fast=int8")  # a variant named fast
    assert not continues_step("fp32", "ratio=0.3")
    specs = parse_variants("prune-ffn:ratio=0.3,num_calibration_texts=8,fast=int8:method=torch-dynamic")
    assert [s.name for s in specs] == ["fp32", "prune-ffn:ratio=0.3,num_calibration_texts=8", "fast"]
    # a list already split at every comma (the CLI's comma list) regroups the same way
    assert split_variants(["fp32", "prune-ffn:ratio=0.3", "num_calibration_texts=8", "fast=int8"]) == \
        ["fp32", "prune-ffn:ratio=0.3,num_calibration_texts=8", "fast=int8"]


def test_recipe_shorthand_takes_the_same_syntax(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("steps:\n  - prune-ffn:ratio=0.3,num_calibration_texts=8\n  - {step: int8, method: torch-dynamic}\n")
    assert Recipe.from_yaml(f).configs() == parse_steps("prune-ffn:ratio=0.3,num_calibration_texts=8,"
                                                        "int8:method=torch-dynamic")


@pytest.mark.parametrize("text", ["prune-ffn:ratio=1.5", "prune-ffn:ratio=0"])
def test_a_bad_parameter_is_named_with_its_range_everywhere(text):
    with pytest.raises(StepError) as a:
        parse_steps(text)
    with pytest.raises(StepError) as b:
        parse_variants(f"fp32,{text}")
    assert str(a.value) == str(b.value)
    assert "ratio=" in str(a.value) and "valid: above 0 up to (not including) 1" in str(a.value)


def test_a_parameter_needs_a_step():
    with pytest.raises(StepError, match="parameter 'ratio=3' comes before any step name"):
        parse_steps("ratio=3")
    with pytest.raises(StepError, match="comes after '\\+'"):
        parse_steps("onnx+ratio=3")
