"""The distill step on tiny models: loss falls, the student moves toward the teacher, runs resume exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

import leaninfer
from leaninfer.errors import LeaninferError, StepError
from leaninfer.pipeline import optimize
from leaninfer.steps import distill as D
from leaninfer.steps import get_step
from leaninfer.steps.common import StepContext
from leaninfer.steps.prune import num_blocks

TEXTS = D.read_corpus()[:64]


def run(model, tmp_path, **params):
    step = get_step("distill", **({"checkpoint_dir": str(tmp_path / "ck"), "progress": False} | params))
    c = StepContext(work_dir=tmp_path)
    return step.apply(model, c), step, c


def distance(a, b):
    return float(1 - (a.embed(TEXTS) * b.embed(TEXTS)).sum(-1).mean())


def test_embedding_distillation_loss_falls_and_student_moves_toward_teacher(tmp_path):
    teacher = leaninfer.load("random:tiny-bert")
    params = {"student": "config", "student_config": {"num_hidden_layers": 1}, "seed": 1}
    # The same student before training: a fresh random model from the same config and seed.
    before, _, _ = run(teacher, tmp_path / "a", max_steps=1, lr=1e-9, **params)
    after, step, c = run(teacher, tmp_path / "b", max_steps=60, lr=1e-3, batch_size=16, warmup_steps=5, **params)
    lin = step.to_dict()["lineage"]
    assert lin["loss_last"] < 0.5 * lin["loss_first"]
    assert distance(after, teacher) < 0.5 * distance(before, teacher)
    assert num_blocks(after.module) == 1 and after.module.config.num_hidden_layers == 1
    assert lin["steps"] == 60 and lin["stopped_by"] == "max_steps" and lin["corpus"]["num_texts"] == len(D.read_corpus())
    assert "distill: 60 steps" in c.notes[-1]


def test_causal_distillation_kl_falls(tiny_gpt2, tmp_path):
    out, step, _ = run(tiny_gpt2, tmp_path, num_layers=1, max_steps=30, lr=2e-3, batch_size=8, max_length=32,
                       warmup_steps=3, next_token_weight=0.1)
    lin = step.to_dict()["lineage"]
    assert lin["loss_last"] < lin["loss_first"]
    assert lin["student_layers"] == [1] and out.module.config.n_layer == 1


def test_student_is_evenly_spaced_teacher_layers():
    assert D.evenly_spaced(6, 3) == [0, 2, 5]
    assert D.evenly_spaced(12, 4) == [0, 4, 7, 11]
    assert D.evenly_spaced(6, 1) == [5]


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    teacher = leaninfer.load("random:tiny-bert")
    params = {"num_layers": 1, "max_steps": 12, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 5}
    full, _, _ = run(teacher, tmp_path / "full", **params)
    assert not (tmp_path / "full" / "ck").exists()  # finished runs clean up their checkpoints

    def interrupt(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(D, "_after_step_hook", interrupt)
    with pytest.raises(LeaninferError, match="interrupted at step 7.*run the same command again to resume"):
        run(teacher, tmp_path / "cut", **params)
    assert (tmp_path / "cut" / "ck" / "checkpoint.pt").exists()
    monkeypatch.setattr(D, "_after_step_hook", None)
    resumed, step, c = run(teacher, tmp_path / "cut", **params)
    assert step.to_dict()["lineage"]["resumed_from_step"] == 7
    assert "resumed from step 7" in c.notes[-1]
    for (n, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_same_seed_same_student_other_seed_other_student(tiny_bert, tmp_path):
    kw = {"num_layers": 1, "max_steps": 5, "batch_size": 8, "lr": 1e-3}
    a, _, _ = run(tiny_bert, tmp_path / "a", seed=3, **kw)
    b, _, _ = run(tiny_bert, tmp_path / "b", seed=3, **kw)
    c, _, _ = run(tiny_bert, tmp_path / "c", seed=4, **kw)
    wa, wb, wc = (m.module.encoder.layer[0].output.dense.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_wall_time_bound_stops_early(tiny_bert, tmp_path):
    _, step, _ = run(tiny_bert, tmp_path, num_layers=1, max_steps=100000, max_time_s=0.5, batch_size=4)
    lin = step.to_dict()["lineage"]
    assert lin["stopped_by"] == "max_time_s" and 0 < lin["steps"] < 100000


def test_artifact_with_lineage_reloads_and_composes_with_ort_int8(tiny_bert, tmp_path):
    steps = [{"step": "distill", "num_layers": 1, "max_steps": 5, "batch_size": 8, "progress": False,
              "checkpoint_dir": str(tmp_path / "ck")}]
    r = optimize(tiny_bert, steps, tmp_path / "student")
    manifest = json.loads((tmp_path / "student" / "leaninfer.json").read_text())
    lin = manifest["steps"][0]["lineage"]
    assert lin["teacher"]["ref"] == "random:tiny-bert" and lin["steps"] == 5 and len(lin["corpus"]["sha256"]) == 64
    assert AutoModel.from_pretrained(tmp_path / "student").config.num_hidden_layers == 1
    # the recorded step (with its lineage) parses back as a config
    assert get_step("distill", **{k: v for k, v in manifest["steps"][0].items() if k != "step"}).num_layers == 1
    # then INT8 on ONNX Runtime, starting from the student artifact
    q = optimize(r.path, "onnx,ort-int8", tmp_path / "student-int8")
    assert q.manifest["format"] == "onnx" and q.manifest["quality"]["mean_cosine_to_reference"] > 0.98


def test_student_input_is_a_pruned_model_taught_by_the_original(tmp_path):
    teacher = leaninfer.load("random:tiny-bert")
    pruned = get_step("prune-ffn", ratio=0.5).apply(teacher, StepContext(work_dir=tmp_path))
    out, step, _ = run(pruned, tmp_path, student="input", teacher="random:tiny-bert", max_steps=20, lr=1e-4,
                       batch_size=8)
    assert out.module.config.intermediate_size == 64  # the pruned shapes stay
    lin = step.to_dict()["lineage"]
    assert lin["teacher"]["ref"] == "random:tiny-bert" and lin["student"] == "input"
    assert lin["loss_last"] < lin["loss_first"]


def test_corpus_from_csv_columns(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text('A cat sat.,A dog ran.,3.0\n"Hello, world.",A cat sat.,1.0\n')
    assert D.read_corpus(p, (0, 1)) == ["A cat sat.", "A dog ran.", "Hello, world."]  # row by row, deduplicated
    h = tmp_path / "head.csv"
    h.write_text("id,text\n1,first text\n2,second text\n")
    assert D.read_corpus(h, ("text",)) == ["first text", "second text"]
    with pytest.raises(LeaninferError, match=r"column index 5 does not exist \(valid: 0\.\.2\)"):
        D.read_corpus(p, (5,))
    with pytest.raises(LeaninferError, match="not in the header row"):
        D.read_corpus(h, ("sentence",))
    assert get_step("distill", corpus_columns="0,1").corpus_columns == (0, 1)


@pytest.mark.parametrize("params,match", [
    ({"num_layers": 2}, r"num_layers=2: the teacher has 2 layers; a student needs fewer \(valid: 1\.\.1\)"),
    ({"student_layers": [0, 7]}, r"student_layers=\[0, 7\]: the teacher has 2 layers \(valid indices 0\.\.1\)"),
])
def test_student_bigger_than_teacher_is_a_clear_error(tiny_bert, tmp_path, params, match):
    with pytest.raises(StepError, match=match):
        run(tiny_bert, tmp_path, **params)


@pytest.mark.parametrize("params,match", [
    ({"max_steps": 0}, r"max_steps=0; valid: 1 or more"),
    ({"lr": 2.0}, r"lr=2\.0; valid: between 0 and 1"),
    ({"num_layers": 0}, r"num_layers=0; valid: 1 or more"),
    ({"student": "input"}, "name it with teacher="),
    ({"student": "config"}, "student=config needs student_config"),
    ({"num_layers": 2, "student_layers": [0]}, "not both"),
])
def test_bad_parameters_are_refused_on_construction(params, match):
    with pytest.raises(StepError, match=match):
        get_step("distill", **params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distill_on_gpu_with_autocast(tmp_path):
    teacher = leaninfer.load("random:tiny-bert", device="cuda")
    out, step, _ = run(teacher, tmp_path, num_layers=1, max_steps=20, lr=1e-3, batch_size=8)
    lin = step.to_dict()["lineage"]
    assert lin["device"].startswith("cuda") and np.isfinite(lin["loss_last"])
    assert next(out.module.parameters()).device.type == "cuda"


@pytest.mark.parametrize("name,task", [("minilm-smallest-3pct.yaml", "embedding"),
                                       ("causal-fastest-ppl-budget.yaml", "causal-lm")])
def test_shipped_recipes_parse_and_plan(name, task):
    from pathlib import Path

    from leaninfer.pipeline import Recipe, plan

    r = Recipe.from_yaml(Path(leaninfer.__file__).parent / "recipes" / name)
    planned = plan(r.configs(), "torch:fp32", task, floors=r.floors, has_sts=True)
    assert "distill" in [s.name for s in planned]
