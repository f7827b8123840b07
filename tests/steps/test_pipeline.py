"""The pipeline around the steps: planning refusals, floors, manifest, atomic writes, recipes."""

import json

import pytest

import leaninfer
from leaninfer.errors import LeaninferError, QualityFloorError, StepError
from leaninfer.pipeline import Recipe, optimize, parse_steps, plan


def test_incompatible_combinations_are_refused_before_any_work(tmp_path, tiny_gpt2):
    with pytest.raises(StepError, match="'bnb-nf4' cannot run after 'onnx'.*onnx:fp32"):
        optimize(tiny_gpt2, "onnx,bnb-nf4", tmp_path / "x")
    with pytest.raises(StepError, match="'fp16' cannot run after 'int8'"):
        plan(parse_steps("int8,fp16"), "torch:fp32", "embedding")
    with pytest.raises(StepError, match="'ov-int8' cannot run after 'onnx'"):
        plan(parse_steps("onnx,ov-int8"), "torch:fp32", "embedding")
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


def test_runtime_steps_get_their_export_inserted():
    planned = plan(parse_steps("ort-int8"), "torch:fp32", "embedding")
    assert [s.name for s in planned] == ["onnx", "ort-int8"]


def test_floors_that_cannot_be_measured_are_refused_up_front(tmp_path, tiny_bert):
    with pytest.raises(StepError, match="max_sts_drop needs .*--sts"):
        optimize(tiny_bert, "fp16", tmp_path / "x", floors={"max_sts_drop": 0.5})
    with pytest.raises(StepError, match="max_ppl_increase_pct needs a causal LM with real"):
        optimize(tiny_bert, "fp16", tmp_path / "x", floors={"max_ppl_increase_pct": 5})


def test_missed_floor_fails_and_writes_nothing(tmp_path, minilm):
    with pytest.raises(QualityFloorError, match=r"mean_cosine_to_reference = 0\.99\d+, floor min_cosine = 0\.9999"):
        optimize(minilm, "int8", tmp_path / "x", floors={"min_cosine": 0.9999})
    assert list(tmp_path.iterdir()) == []  # no artifact, no temporary folder


def test_manifest_tells_the_whole_story(tmp_path, tiny_bert):
    r = optimize(tiny_bert, [{"step": "int8", "exclude": ["*pooler*"]}], tmp_path / "a", floors={"min_cosine": 0.9})
    m = json.loads((r.path / "leaninfer.json").read_text())
    assert m["source"]["ref"] == "random:tiny-bert" and m["weights"] == "random"
    assert m["steps"] == [{"step": "int8", "include": ["*"], "exclude": ["*pooler*"], "method": "torchao"}]
    assert m["floors"] == {"min_cosine": 0.9}
    assert {"torch", "transformers", "onnxruntime", "leaninfer"} <= set(m["library_versions"])
    assert m["hardware"]["cpu_name"] and m["hardware"]["int8_isa"]
    assert m["num_parameters"] > 0 and m["size_bytes"] == sum(f["bytes"] for f in m["files"].values())
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["quality"]["mean_cosine_to_reference"] > 0.9 and m["created_at"].endswith("+00:00")


def test_interrupted_run_leaves_no_half_written_artifact(tmp_path, tiny_bert, monkeypatch):
    from leaninfer.steps.onnx import OrtInt8

    def boom(self, model, ctx):
        assert (ctx.work_dir / "model.onnx").exists()  # the export was already written into the temp folder
        raise KeyboardInterrupt

    monkeypatch.setattr(OrtInt8, "apply", boom)
    with pytest.raises(KeyboardInterrupt):
        optimize(tiny_bert, "onnx,ort-int8", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny_bert):
    out = tmp_path / "a"
    optimize(tiny_bert, "fp16", out)
    with pytest.raises(LeaninferError, match="already exists; pass --overwrite"):
        optimize(tiny_bert, "bf16", out)
    assert json.loads((out / "leaninfer.json").read_text())["precision"] == "fp16"
    optimize(tiny_bert, "bf16", out, overwrite=True)
    assert json.loads((out / "leaninfer.json").read_text())["precision"] == "bf16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_artifact_reloads_as_the_same_handle_type(tmp_path, tiny_bert):
    r = optimize(tiny_bert, "onnx,ort-int8", tmp_path / "a")
    m = leaninfer.load(r.path)
    assert isinstance(m, leaninfer.Model) and m.state == "onnx:int8" and m.weights == "random"
    texts = ["reload me"]
    assert float((m.embed(texts) * r.model.embed(texts)).sum()) > 0.99999


def test_recipe_yaml(tmp_path, tiny_bert):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - onnx\n  - step: ort-int8\n    per_channel: false\nfloors:\n  min_cosine: 0.5\n")
    r = Recipe.from_yaml(recipe)
    assert [s.name for s in r.configs()] == ["onnx", "ort-int8"] and r.floors.min_cosine == 0.5
    assert r.configs()[1].per_channel is False


@pytest.mark.parametrize("text, message", [
    ("steps: [onnx]\nfloors: {min_cosine: 2}\n", "floors.min_cosine"),
    ("steps: [onnx]\nflors: {}\n", "flors"),
    ("- onnx\n", "must be a mapping"),
    ("steps: [onnx\n", "not valid YAML"),
])
def test_bad_recipes_are_named(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(LeaninferError, match=message):
        Recipe.from_yaml(recipe)


def test_the_quality_gate_judges_the_written_files_not_the_model_in_memory(tmp_path, tiny_bert, monkeypatch):
    """A save that loses something (here: a corrupted weight on disk) must fail the floors."""
    from leaninfer.models import TorchModel

    real_save = TorchModel.save

    def lossy_save(self, folder):
        saved = real_save(self, folder)
        from safetensors.torch import load_file, save_file

        state = load_file(folder / "model.safetensors")
        state = {k: v.zero_() if k.endswith("word_embeddings.weight") else v for k, v in state.items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return saved

    monkeypatch.setattr(TorchModel, "save", lossy_save)
    with pytest.raises(QualityFloorError, match="mean_cosine_to_reference"):
        optimize(tiny_bert, "fp16", tmp_path / "x", floors={"min_cosine": 0.999})
    assert list(tmp_path.iterdir()) == []


def test_one_step_syntax_with_parameters():
    configs = parse_steps("prune-ffn:ratio=0.3,num_calibration_texts=8,int8:method=torch-dynamic")
    assert [c.name for c in configs] == ["prune-ffn", "int8"]
    assert configs[0].ratio == 0.3 and configs[0].num_calibration_texts == 8
    assert configs[1].method == "torch-dynamic"
    with pytest.raises(StepError, match="unknown step 'int9'.*valid steps"):
        parse_steps("int9:method=x")
    with pytest.raises(StepError, match="'method'.*torchao"):
        parse_steps("int8:method=fast")
    with pytest.raises(StepError, match="parameter 'ratio' of step 'prune-ffn' must be key=value"):
        parse_steps("prune-ffn:ratio")


def test_the_gate_reloads_on_the_handles_device(tmp_path, tiny_bert, monkeypatch):
    """Issue 21: optimize(handle_on_cuda, "bnb-int8", out) reloaded the artifact on the CPU (the old default
    device), where transformers put it back on the GPU and .to("cpu") left the int8 scales there."""
    import leaninfer.pipeline as pipeline

    seen = []
    real = pipeline.load_artifact

    def spy(path, device):
        seen.append(device)
        return real(path, device="cpu")

    monkeypatch.setattr(pipeline, "load_artifact", spy)
    src = tiny_bert.derive(module=tiny_bert.module, config=tiny_bert.config)
    src.device = "cpu:0"  # a device other than the old default, which a CPU machine can still run
    optimize(src, "fp16", tmp_path / "a")
    optimize(src, "fp16", tmp_path / "b", device="cpu")
    assert seen == ["cpu:0", "cpu"]
