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
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LeaninferError
from ..pipeline import parse_steps

BASELINE = "fp32"


@dataclass(frozen=True)
class VariantSpec:
    """A variant: `fp32` (the reference as loaded), steps made on the fly, or an artifact directory.

    Text form (one item of `--variants`): `fp32`, `int8`, `onnx+ort-int8` (steps joined by '+'),
    `int8:method=torch-dynamic:exclude=` (parameters after ':'), `name=STEPS` to name it, or a directory.
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
        steps = []
        for part in text.split("+"):
            step, *params = part.split(":")
            d = {"step": step.strip()}
            for kv in params:
                k, eq, v = kv.partition("=")
                if not eq:
                    raise LeaninferError(f"variant {text!r}: parameter {kv!r} must be key=value")
                d[k.strip()] = v.strip()
            steps.append(d)
        parse_steps(steps)  # validates step names and parameters now, naming what is valid
        return cls(name=name or text, steps=tuple(steps))

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": list(self.steps), "artifact": self.artifact}


def parse_variants(text: str | list[str]) -> list[VariantSpec]:
    items = text if isinstance(text, list) else [t for t in text.split(",") if t.strip()]
    specs = [VariantSpec.parse(t) for t in items]
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


@dataclass
class BenchConfig:
    """Everything a run needs; CLI flags are these field names."""

    model: str = "minilm"
    variants: list = field(default_factory=lambda: [BASELINE])
    batch_sizes: list = field(default_factory=lambda: [1, 8, 32])
    seq_lens: list = field(default_factory=lambda: [128])
    prompt_tokens: int = 64
    gen_tokens: int = 32
    gen_repeats: int = 3
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 200
    min_time_s: float = 1.0
    threads: int | None = None
    device: str = "cpu"
    hardware: str = "local"
    usd_per_hour: float | None = None
    profiles_yaml: str | None = None
    project_to: list = field(default_factory=list)
    utilization: float = 1.0
    max_p95_ms: float | None = None
    min_cosine: float | None = None
    max_sts_drop: float | None = None
    max_ppl_increase_pct: float | None = None
    sts: str | None = None
    rounds: int = 1
    timeout_s: float = 900.0
    suite: str | None = None

    def __post_init__(self):
        self.batch_sizes = _int_list("batch_sizes", self.batch_sizes)
        self.seq_lens = _int_list("seq_lens", self.seq_lens)
        for f in ("prompt_tokens", "gen_tokens", "gen_repeats", "min_repeats", "max_repeats", "rounds"):
            if int(getattr(self, f)) < 1:
                raise LeaninferError(f"{f} must be >= 1, got {getattr(self, f)!r}")
        if self.warmup < 0:
            raise LeaninferError(f"warmup must be >= 0, got {self.warmup!r}")
        if not 0 < self.utilization <= 1:
            raise LeaninferError(f"utilization must be in (0, 1], got {self.utilization!r}")
        if isinstance(self.variants, str):
            self.variants = [v for v in self.variants.split(",") if v.strip()]
        if isinstance(self.project_to, str):
            self.project_to = [v.strip() for v in self.project_to.split(",") if v.strip()]
        if self.threads is None:
            from ..hardware import detect_local

            self.threads = detect_local().physical_cores
        # Fail on a bad profile name before any work.
        from ..hardware import get_profile

        get_profile(self.hardware, self.profiles_yaml, self.usd_per_hour)
        for name in self.project_to:
            get_profile(name, self.profiles_yaml)

    def to_dict(self) -> dict:
        return asdict(self)


def _spawn(kind: str, job: dict, result_path: Path, timeout_s: float) -> dict:
    """Run `kind` in a fresh Python process (`python -m leaninfer.benchmarks.worker`), return its JSON.

    A subprocess rather than multiprocessing's spawn: nothing of the caller's __main__ (a script, a
    notebook) is re-imported in the child, and a crash or a timeout is contained.
    """
    import os
    import subprocess

    job_path = result_path.parent / "jobs" / result_path.name
    job_path.parent.mkdir(exist_ok=True)
    job_path.write_text(json.dumps(job))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        p = subprocess.run([sys.executable, "-m", "leaninfer.benchmarks.worker", kind, str(job_path), str(result_path)],
                           timeout=timeout_s, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout_s:.0f} s"}
    if not result_path.exists():
        tail = " | ".join((p.stdout or "").strip().splitlines()[-3:])
        return {"status": "failed", "error": f"the {kind} process died (exit code {p.returncode}) without a result: {tail}"}
    return json.loads(result_path.read_text())


def run_bench(cfg: BenchConfig, out_dir: str | Path, on_event: Callable[[str, int, int], None] | None = None,
              argv: list[str] | None = None) -> dict:
    """Run a benchmark; returns the report (also written under `out_dir` after every variant).

    Example:
        >>> cfg = BenchConfig(model="random:tiny-bert", variants=["fp32", "fp16"], batch_sizes=[1])
        >>> report = run_bench(cfg, "bench-out")  # doctest: +SKIP
        >>> report["variants"][1]["results"][0]["ratio_to_fp32"]["tokens_per_s"]  # doctest: +SKIP
    """
    from .report import build_report, write_report

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
        bw = _spawn("bandwidth", base_job, raw_dir / "bandwidth.json", 120)
        state["bandwidth"] = bw.get("bandwidth")
        artifacts: dict[str, str | None] = {}
        for s in specs:
            if s.steps:
                step(f"building {s.name}")
                job = {**base_job, "steps": list(s.steps), "artifact_dir": str(out / "variants" / _slug(s.name)),
                       "sts": cfg.sts}
                r = _spawn("build", job, raw_dir / f"build-{_slug(s.name)}.json", cfg.timeout_s)
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
                job = {**base_job, "artifact": artifacts[s.name], "batch_sizes": cfg.batch_sizes,
                       "seq_lens": cfg.seq_lens, "prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens,
                       "gen_repeats": cfg.gen_repeats, "warmup": cfg.warmup, "min_repeats": cfg.min_repeats,
                       "max_repeats": cfg.max_repeats, "min_time_s": cfg.min_time_s}
                t0 = time.perf_counter()
                r = _spawn("measure", job, raw_dir / f"measure-{_slug(s.name)}-r{rnd}.json", cfg.timeout_s)
                r["wall_s"] = time.perf_counter() - t0
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
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "variant"


def state_from_dir(out_dir: str | Path) -> dict:
    """Re-read a run's raw child results (for `curves`: re-price and re-project without measuring again)."""
    from .report import load_report

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
    from ..hardware import get_profile
    from .report import build_report, write_report

    state = state_from_dir(out_dir)
    cfg = state["meta"]["config"]
    cfg.update({k: v for k, v in config_overrides.items() if v is not None})
    get_profile(cfg["hardware"], cfg.get("profiles_yaml"), cfg.get("usd_per_hour"))
    for name in cfg.get("project_to") or []:
        get_profile(name, cfg.get("profiles_yaml"))
    return write_report(build_report(state), out_dir)
