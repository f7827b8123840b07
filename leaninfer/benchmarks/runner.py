"""The bench runner: every variant built and measured in its own fresh (spawned) process.

Design: the parent never loads a model. It measures the local memory bandwidth in a child, builds each
variant that is made on the fly in a child (the optimize job, with its quality check against FP32), then
measures each variant in another fresh child that loads it from its artifact. Children write one JSON
file each; the parent rebuilds the report from those files after every child, so an interrupted or partly
failed run still leaves a valid report of what finished. The FP32 baseline is always part of the run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import LeaninferError
from ..hardware import detect_local, get_profile
from ..pipeline import continues_step, parse_steps
from ..spec_text import split_step_text
from .report import build_report, load_report, write_report

BASELINE = "fp32"


@dataclass(frozen=True)
class VariantSpec:
    """A variant: `fp32` (the reference as loaded), steps made on the fly, or an artifact directory.

    Text form (one item of `--variants`): `fp32`, `int8`, `onnx+ort-int8` (steps joined by '+'),
    `prune-ffn:ratio=0.3,num_calibration_texts=8` (the `optimize --steps` syntax), `name=STEPS` to name it,
    or a directory.
    """

    name: str
    steps: tuple = ()
    artifact: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.name == BASELINE and not self.steps and not self.artifact

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        text = text.strip()
        if not text:
            raise LeaninferError("empty variant in --variants")
        name = None
        head, sep, rest = text.partition("=")
        if sep and ":" not in head and "+" not in head and not Path(text).exists():
            name, text = head.strip(), rest.strip()
        if text == BASELINE:
            return cls(name=name or BASELINE)
        p = Path(text).expanduser()
        if p.is_dir():
            if not (p / "leaninfer.json").exists():
                raise LeaninferError(f"variant directory {text!r} has no leaninfer.json: not a leaninfer artifact")
            return cls(name=name or p.name, artifact=str(p.resolve()))
        steps = split_step_text(text)  # the one step syntax (leaninfer.pipeline), as in optimize --steps
        parse_steps(steps)  # validates step names and parameters now, naming what is valid
        return cls(name=name or text, steps=tuple(steps))

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": list(self.steps), "artifact": self.artifact}


def split_variants(value: str | list[str]) -> list[str]:
    """``--variants`` text (or a list, maybe already split at every comma) -> one text per variant.

    Commas separate variants, and also a step's further parameters (``prune-ffn:ratio=0.3,num_calibration_texts=8``,
    as in ``optimize --steps``): a ``key=value`` item naming a parameter of the step before it continues that
    variant; any other item (``fast=int8``: a variant named fast) starts the next one.
    """
    out: list[str] = []
    for item in (t.strip() for t in (value.split(",") if isinstance(value, str) else value)):
        if item and out and continues_step(_unnamed(out[-1]), item):
            out[-1] += "," + item
        elif item:
            out.append(item)
    return out


def _unnamed(text: str) -> str:
    head, sep, rest = text.partition("=")
    return rest if sep and ":" not in head and "+" not in head else text


def parse_variants(text: str | list[str]) -> list[VariantSpec]:
    specs = [VariantSpec.parse(t) for t in split_variants(text)]
    if not any(s.is_baseline for s in specs):  # the FP32 baseline is measured in every run
        specs.insert(0, VariantSpec(BASELINE))
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise LeaninferError(f"variant names must be unique; repeated: {', '.join(sorted(dup))}")
    return sorted(specs, key=lambda s: not s.is_baseline)


def _int_list(name: str, value) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise LeaninferError(f"{name} must be comma-separated positive integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise LeaninferError(f"{name} must be comma-separated positive integers, got {value!r}")
    return out


def check_profiles(hardware: str, profiles_yaml: str | None, usd_per_hour: float | None, project_to) -> None:
    """Fail on a bad profile name before any work (a run, or a re-pricing of one)."""
    get_profile(hardware, profiles_yaml, usd_per_hour)
    for name in project_to or []:
        get_profile(name, profiles_yaml)


class BenchConfig(BaseModel):
    """Everything a run needs; CLI flags are these field names (``--batch-sizes``; ``--profiles`` for profiles_yaml).

    Example:
        >>> BenchConfig(model="random:tiny-bert", batch_sizes="1,8", threads=2).batch_sizes
        [1, 8]
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("minilm", description="model reference (default minilm): a Hugging Face id, a local "
                                             "folder or random:<preset>")
    variants: list[str] = Field(default_factory=lambda: [BASELINE],
                                description="comma-separated: fp32, steps (int8, onnx+ort-int8, "
                                            "int8:method=torch-dynamic), name=steps, or artifact dirs; "
                                            "fp32 is always added")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32], description="batch sizes, e.g. 1,8,32")
    seq_lens: list[int] = Field(default_factory=lambda: [128], description="embeddings: tokens per sequence, e.g. 128")
    prompt_tokens: int = Field(64, ge=1, description="generation: prompt length")
    gen_tokens: int = Field(32, ge=1, description="generation: new tokens per sequence")
    gen_repeats: int = Field(3, ge=1, description="generation: timed passes per batch size, after one warm-up")
    warmup: int = Field(2, ge=0, description="untimed calls before each configuration is measured")
    min_repeats: int = Field(5, ge=1, description="timed calls per configuration, at least")
    max_repeats: int = Field(200, ge=1, description="timed calls per configuration, at most")
    min_time_s: float = Field(1.0, description="measure each configuration at least this long")
    threads: int | None = Field(None, ge=1, validate_default=True,
                                description="threads for every variant (default: the physical cores)")
    device: str = Field("cpu", description="cpu or cuda")
    hardware: str = Field("local", description="price the measured machine as this profile (default: local, "
                                               "unpriced)")
    usd_per_hour: float | None = Field(None, ge=0, description="price of the measured machine, $/hour")
    profiles_yaml: str | None = Field(None, description="YAML file with more hardware profiles")
    project_to: list[str] = Field(default_factory=list, description="profiles to project to (a calibrated step "
                                  "model with a low/high band; labelled projected)")
    include_projected: bool = Field(False, description="let projected rows compete with measured ones in the advice")
    utilization: float = Field(1.0, gt=0, le=1, description="fraction of the paid hour the hardware is busy")
    max_p95_ms: float | None = Field(None, description="latency objective for the advice")
    # The floors carry quality.Floors' bounds, so the advice's Floors of a validated config always builds.
    min_cosine: float | None = Field(None, gt=0, le=1, description="quality floor (embeddings) for the advice")
    max_sts_drop: float | None = Field(None, ge=0, description="quality floor: STS points (needs --sts)")
    max_ppl_increase_pct: float | None = Field(None, ge=0, description="quality floor (LMs)")
    sts: str | None = Field(None, description="STS CSV for the variants' quality check")
    rounds: int = Field(1, ge=1, description="measure every variant this many times, interleaved")
    timeout_s: float = Field(900.0, description="give up on a build or measuring process after this long")
    suite: str | None = Field(None, description="the suite the settings came from (recorded in the report)")

    def __init__(self, **data):
        # A user's bad value is a LeaninferError naming the field, like every other user error.
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise LeaninferError("bench config: " + "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}, got {err.get('input')!r}"
                for err in e.errors())) from None

    @field_validator("batch_sizes", "seq_lens", mode="before")
    @classmethod
    def _int_lists(cls, value, info):
        return _int_list(info.field_name, value)

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_list(cls, value):
        return split_variants(value) if isinstance(value, (str, list)) else value

    @field_validator("project_to", mode="before")
    @classmethod
    def _profile_list(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value):
        return detect_local().physical_cores if value is None else value

    @model_validator(mode="after")
    def _profiles_exist(self):
        check_profiles(self.hardware, self.profiles_yaml, self.usd_per_hour, self.project_to)
        return self

    def to_dict(self) -> dict:
        return self.model_dump()


def measure_job(cfg: BenchConfig, artifact: str | None, batch_sizes: list[int] | None = None) -> dict:
    """The job of one measuring process: the variant at ``artifact`` (None: the model itself, FP32) at every
    configuration of ``cfg`` (or only at ``batch_sizes``)."""
    return {"threads": cfg.threads, "device": cfg.device, "model": cfg.model, "artifact": artifact,
            "batch_sizes": batch_sizes or cfg.batch_sizes, "seq_lens": cfg.seq_lens,
            "prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "gen_repeats": cfg.gen_repeats,
            "warmup": cfg.warmup, "min_repeats": cfg.min_repeats, "max_repeats": cfg.max_repeats,
            "min_time_s": cfg.min_time_s}


def spawn_worker(kind: str, job: dict, result_path: Path, timeout_s: float) -> dict:
    """Run `kind` in a fresh Python process (`python -m leaninfer.benchmarks.worker`), return its JSON.

    A subprocess rather than multiprocessing's spawn: nothing of the caller's __main__ (a script, a
    notebook) is re-imported in the child, and a crash or a timeout is contained.
    """
    job_path = result_path.parent / "jobs" / result_path.name
    job_path.parent.mkdir(exist_ok=True)
    job_path.write_text(json.dumps({**job, "spawned_at": time.time()}))  # the child measures its start-up from it
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "leaninfer.benchmarks.worker", kind, str(job_path), str(result_path)],
                           timeout=timeout_s, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - t0}
    if not result_path.exists():
        tail = " | ".join((p.stdout or "").strip().splitlines()[-3:])
        return {"status": "failed", "error": f"the {kind} process died (exit code {p.returncode}) without a result: {tail}",
                "wall_s": time.perf_counter() - t0}
    return {**json.loads(result_path.read_text()), "wall_s": time.perf_counter() - t0}


def stage_line(label: str, r: dict) -> str:
    """One line saying where a child's time went (seconds), e.g. ``built fp16: ok in 8.9 s (startup 0.2; torch
    import 0.8; cuda init 0.6; job 7.2; load_source 2.8, steps 0.4, save 0.7, reload 0.1, evaluate 3.1)``."""
    parts = [f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in (r.get("process") or {}).items()
             if v is not None]
    stages = r.get("stage_s") or {}
    if stages:
        parts.append(", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    configs = [f"b{c['batch_size']}" + (f"x{c['seq_len']}" if "seq_len" in c else "") + f" {c['config_s']:.1f}"
               for c in r.get("results") or [] if c.get("config_s") is not None]
    if configs:
        parts.append("configs " + ", ".join(configs))
    if r.get("load_s") is not None:
        parts.append(f"load {r['load_s']:.1f}")
    status = r.get("status", "?") if r.get("status") == "ok" else f"failed ({r.get('error')})"
    detail = f" ({'; '.join(parts)})" if parts else ""
    return f"{label}: {status} in {r.get('wall_s', 0.0):.1f} s{detail}"


def run_bench(cfg: BenchConfig, out_dir: str | Path, on_event: Callable[[str, int, int], None] | None = None,
              argv: list[str] | None = None, on_stage: Callable[[str], None] | None = None) -> dict:
    """Run a benchmark; returns the report (also written under `out_dir` after every variant).

    Example:
        >>> cfg = BenchConfig(model="random:tiny-bert", variants=["fp32", "fp16"], batch_sizes=[1])
        >>> report = run_bench(cfg, "bench-out")  # doctest: +SKIP
        >>> report["variants"][1]["results"][0]["ratio_to_fp32"]["tokens_per_s"]  # doctest: +SKIP
    """
    out = Path(out_dir).resolve()
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    specs = parse_variants(cfg.variants)
    meta = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(argv if argv is not None else ["leaninfer", *sys.argv[1:]]),
        "config": cfg.to_dict(),
        "variants": [s.to_dict() for s in specs],
    }
    state: dict = {"meta": meta, "bandwidth": None, "builds": {}, "measures": {}}
    n_jobs = 1 + sum(1 for s in specs if s.steps) + len(specs) * cfg.rounds
    done = 0

    def step(label: str):
        nonlocal done
        if on_event:
            on_event(label, done, n_jobs)
        if on_stage and label != "done":  # said before the child starts: a run cut off names the stage it was in
            on_stage(f"{label} ...")
        done += 1

    def save(final: bool = False):
        meta["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds") if final else None
        report = build_report(state)
        write_report(report, out)
        return report

    base_job = {"threads": cfg.threads, "device": cfg.device, "model": cfg.model}
    interrupted = False
    try:
        step("measuring memory bandwidth")
        bw = spawn_worker("bandwidth", base_job, raw_dir / "bandwidth.json", 120)
        state["bandwidth"] = bw.get("bandwidth")
        if on_stage:
            on_stage(stage_line("measured bandwidth", bw))
        artifacts: dict[str, str | None] = {}
        for s in specs:
            if s.steps:
                step(f"building {s.name}")
                job = {**base_job, "steps": list(s.steps), "artifact_dir": str(out / "variants" / _slug(s.name)),
                       "sts": cfg.sts}
                r = spawn_worker("build", job, raw_dir / f"build-{_slug(s.name)}.json", cfg.timeout_s)
                if on_stage:
                    on_stage(stage_line(f"built {s.name}", r))
                state["builds"][s.name] = r
                artifacts[s.name] = r.get("artifact")
                save()
            else:
                artifacts[s.name] = s.artifact
        # Rounds cycle through the variants (fp32, a, b, fp32, a, b, ...) so slow drifts in background load
        # hit every variant alike; the report pools the samples of all rounds.
        for rnd in range(cfg.rounds):
            for s in specs:
                step(f"measuring {s.name}" + (f" (round {rnd + 1}/{cfg.rounds})" if cfg.rounds > 1 else ""))
                if s.steps and not artifacts.get(s.name):
                    continue  # its build failed: the report says why
                r = spawn_worker("measure", measure_job(cfg, artifacts[s.name]),
                                 raw_dir / f"measure-{_slug(s.name)}-r{rnd}.json", cfg.timeout_s)
                if on_stage:
                    on_stage(stage_line(f"measured {s.name}", r))
                state["measures"].setdefault(s.name, []).append(r)
                save()
        step("done")
    except KeyboardInterrupt:
        interrupted = True
        meta["interrupted"] = True
    report = save(final=not interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return report


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "variant"


def state_from_dir(out_dir: str | Path) -> dict:
    """Re-read a run's raw child results (for `curves`: re-price and re-project without measuring again)."""
    out = Path(out_dir)
    report = load_report(out)
    raw = out / "raw"
    state: dict = {"meta": report["meta"], "bandwidth": None, "builds": {}, "measures": {}}
    if (raw / "bandwidth.json").exists():
        state["bandwidth"] = json.loads((raw / "bandwidth.json").read_text()).get("bandwidth")
    for spec in report["meta"]["variants"]:
        slug = _slug(spec["name"])
        b = raw / f"build-{slug}.json"
        if b.exists():
            state["builds"][spec["name"]] = json.loads(b.read_text())
        runs = sorted(raw.glob(f"measure-{slug}-r*.json"), key=lambda p: int(p.stem.rsplit("-r", 1)[1]))
        if runs:
            state["measures"][spec["name"]] = [json.loads(p.read_text()) for p in runs]
    return state


def recompute(out_dir: str | Path, **config_overrides) -> dict:
    """Rebuild a report from its raw results with new pricing/projection settings; rewrites the report files."""
    state = state_from_dir(out_dir)
    cfg = state["meta"]["config"]
    cfg.update({k: v for k, v in config_overrides.items() if v is not None})
    check_profiles(cfg["hardware"], cfg.get("profiles_yaml"), cfg.get("usd_per_hour"), cfg.get("project_to"))
    return write_report(build_report(state), out_dir)
