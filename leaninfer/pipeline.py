"""The optimize job: a recipe (a list of step configs) applied to a model, checked, saved as an artifact.

A recipe is planned before any work starts: each step must accept the state (``backend:precision``) the
previous one produces, and each floor must be measurable, so ``bnb-nf4`` after ``onnx`` or an STS floor
without STS data fail in milliseconds, not after an export. The quality gate runs on the written files,
loaded back, so a save/reload difference is caught by the floors too; only then is the folder renamed
into place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .artifacts import MANIFEST_NAME, atomic_dir, build_manifest
from .errors import LeaninferError, StepError, valid_list
from .evaluate import evaluate
from .models import Model, load, load_artifact
from .quality import Floors
from .spec_text import split_step_text
from .steps import STEPS, StepConfig, StepContext, get_step
from .steps.common import pydantic_message

__all__ = ["Floors", "OptimizeResult", "Recipe", "continues_step", "optimize", "parse_steps", "plan", "split_step_text"]


class Recipe(BaseModel):
    """``steps`` (names, or mappings with ``step:`` plus parameters), optional ``floors`` and ``model``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="model reference to optimize (minilm, random:<preset>, a Hugging Face id, a model or "
        "artifact directory); optimize --model overrides it; default: minilm")
    steps: list[str | dict] = Field(
        ..., description="the steps in order: names with optional parameters ('int8:method=torch-dynamic') or "
        "mappings with a 'step' key plus parameters")
    floors: Floors = Field(Floors(), description="quality floors the written artifact must meet, else nothing is "
                           "written")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise LeaninferError(f"cannot read recipe {str(path)!r}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise LeaninferError(f"recipe {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise LeaninferError(f"recipe {str(path)!r} must be a mapping with a 'steps' list")
        try:
            return cls(**data)
        except Exception as e:
            raise LeaninferError(f"recipe {str(path)!r}: {pydantic_message(e)}") from None

    def configs(self) -> list[StepConfig]:
        return parse_steps(self.steps)




def continues_step(text: str, item: str) -> bool:
    """Whether the comma item ``item`` (``key=value``) is one more parameter of the last step of ``text``.

    Where commas also separate other things (``bench --variants fp32,prune-ffn:ratio=0.3,num_calibration_texts=8``)
    this decides: a key that the step's config has continues it; anything else starts the next item.

    >>> continues_step("prune-ffn:ratio=0.3", "num_calibration_texts=8"), continues_step("int8", "fast=fp16")
    (True, False)
    """
    key, eq, _ = item.partition("=")
    if not eq or ":" in key or "+" in key:
        return False
    try:
        steps = split_step_text(text)
    except StepError:
        return False
    cls = STEPS.get(steps[-1]["step"]) if steps else None
    return cls is not None and key.strip() in cls.model_fields


def parse_steps(steps: Sequence[str | dict | StepConfig] | str) -> list[StepConfig]:
    """``"onnx,ort-int8"``, ``"int8:method=torch-dynamic"`` or ``["fp16", {"step": "int8", "method": "torchao"}]``
    -> validated configs."""
    if isinstance(steps, str):
        steps = split_step_text(steps)
    out = []
    for s in steps:
        if isinstance(s, str):
            s = split_step_text(s)
            if len(s) != 1:
                raise StepError(f"{s!r}: one step per list item")
            s = s[0]
        if isinstance(s, StepConfig):
            out.append(s)
        elif isinstance(s, dict) and "step" in s:
            params = {k: v for k, v in s.items() if k != "step"}
            out.append(get_step(s["step"], **params))
        else:
            raise StepError(f"step {s!r} must be a step name or a mapping with a 'step' key; "
                            f"valid steps: {valid_list(STEPS)}")
    if not out:
        raise StepError(f"no steps given; valid steps: {valid_list(STEPS)}")
    return out


def plan(steps: list[StepConfig], start_state: str, task: str, *, floors: Floors = Floors(),
         has_sts: bool = False, random_weights: bool = False) -> list[StepConfig]:
    """Check the whole chain before any work; insert the export a runtime step needs. Returns the plan."""
    planned, state = [], start_state
    for step in steps:
        if task not in step.tasks:
            raise StepError(f"step {step.name!r} does not apply to {task} models (it supports {', '.join(step.tasks)})")
        if state not in step.accepts and state == "torch:fp32" and step.export_step:
            export = get_step(step.export_step)  # e.g. ort-int8 on a PyTorch model: export to ONNX first
            planned.append(export)
            state = export.produces(state)
        if state not in step.accepts:
            before = f"after {planned[-1].name!r}" if planned else "on this model"
            raise StepError(f"step {step.name!r} cannot run {before}: the model is then {state}, and "
                            f"{step.name!r} needs {' or '.join(step.accepts)}")
        planned.append(step)
        state = step.produces(state)
    if floors.max_sts_drop is not None and (task != "embedding" or not has_sts):
        raise StepError("floor max_sts_drop needs an embedding model and STS data (--sts CSV)")
    if floors.max_ppl_increase_pct is not None and (task != "causal-lm" or random_weights):
        raise StepError("floor max_ppl_increase_pct needs a causal LM with real (not random) weights")
    if floors.min_top1_agreement is not None and task != "causal-lm":
        raise StepError("floor min_top1_agreement applies to causal LMs only")
    if floors.min_cosine is not None and task != "embedding":
        raise StepError("floor min_cosine applies to embedding models only")
    return planned


@dataclass
class OptimizeResult:
    path: Path
    manifest: dict
    model: object  # the optimized Model handle, loaded from the written artifact's files


def optimize(model, steps, out: str | Path, *, floors: Floors | dict | None = None, sts: str | Path | None = None,
             calibration_texts: list[str] | None = None, overwrite: bool = False, task: str | None = None,
             device: str | None = None, on_step: Callable[[int, int, str], None] | None = None) -> OptimizeResult:
    """Apply ``steps`` to ``model`` (a reference or a loaded handle), check quality, write an artifact.

    Example:
        >>> import leaninfer
        >>> r = leaninfer.optimize("minilm", "onnx,ort-int8", "out/minilm-int8")  # doctest: +SKIP
        >>> r.manifest["quality"]["mean_cosine_to_reference"] > 0.99  # doctest: +SKIP
        True
    """
    floors = Floors(**floors) if isinstance(floors, dict) else (floors or Floors())
    configs = parse_steps(steps)
    if sts is not None and not Path(sts).is_file():
        raise LeaninferError(f"STS file {str(sts)!r} does not exist")
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:  # refuses an existing --out before loading anything
        t_load = time.perf_counter()
        source = model if isinstance(model, Model) else load(model, task=task, device=device or "cpu")
        # The gate loads the written files where the source runs (default: a handle's own device). Reloading a
        # CUDA-made bitsandbytes artifact on the CPU of a CUDA machine is what broke bnb-int8 there (issue 21:
        # transformers places it on the GPU, .to("cpu") leaves the int8 scales behind).
        device = device or str(source.device)
        stage_s = {"load_source": time.perf_counter() - t_load}  # where a build's time goes (bench prints it)
        planned = plan(configs, source.state, source.task, floors=floors, has_sts=sts is not None,
                       random_weights=source.is_random)
        ctx = StepContext(work_dir=tmp, calibration_texts=list(calibration_texts or []))
        t0, current = time.perf_counter(), source
        for i, step in enumerate(planned):
            if on_step:
                on_step(i, len(planned), step.name)
            current = step.apply(current, ctx)
        elapsed = time.perf_counter() - t0
        stage_s["steps"] = elapsed
        t_save = time.perf_counter()
        saved = current.save(tmp)
        manifest = build_manifest(current, tmp, saved=saved, source=source, steps=planned, quality=None,
                                  notes=ctx.notes, elapsed_s=round(elapsed, 3))
        manifest["floors"] = floors.model_dump(exclude_none=True)
        _write_manifest(tmp, manifest)
        # The gate judges what a user will load, not the object in memory.
        t_reload = time.perf_counter()
        stage_s["save"] = t_reload - t_save
        written = load_artifact(tmp, device=device)
        t_eval = time.perf_counter()
        stage_s["reload"] = t_eval - t_reload
        quality = evaluate(written, source, sts=sts)
        stage_s["evaluate"] = time.perf_counter() - t_eval
        floors.check(quality)
        manifest["quality"] = quality
        manifest["stage_s"] = {k: round(v, 3) for k, v in stage_s.items()}
        _write_manifest(tmp, manifest)
    out = Path(out).resolve()
    # The folder was renamed, not rewritten: the handle loaded from it is the artifact's (no second load).
    return OptimizeResult(path=out, manifest=manifest, model=written.moved_to(out, manifest))


def _write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
