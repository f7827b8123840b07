"""GPU decode per step: leaninfer's decode modes beside transformers' static cache + compile, and the % of the
read bound each reaches.

Run on a GPU machine (a stage of scripts/gpu_check.sh):  python3 scripts/gpu_decode.py [OUT_DIR]

- leaninfer: each decode mode (``dynamic``, ``static``: the slot pool eager, ``cuda-graphs``: the slot pool with
  a graph per batch bucket, the CUDA default) through the benchmark worker's ``measure_generation``, i.e. the
  scheduler and runner the server steps; per-step time is the median inter-token latency, prompt 128, 64 new
  tokens, bf16.
- the peer: ``model.generate(cache_implementation="static")`` of transformers, which compiles its decode step;
  per step = (time of 64 new tokens - time of 2) / 62, after two warm-up calls; in a child process with a
  timeout (its compile has taken minutes at batch 8), so one slow peer can't eat the stage.
- the bound of a step: the weight bytes it reads over the GPU's read bandwidth measured read-only (a reduction
  over 4 GiB: ``measures.measure_bandwidth``), and over the HBM spec of its hardware profile; both labelled.
  (The first version divided by half a device copy's bandwidth, which overstated the % about 2x.)
- where a step's time goes (``step_profiles``, per model, batch 1): the eager step a graph captures, under
  torch.profiler: kernels per step, their summed GPU time against the wall time, the 15 costliest kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# DEVICE=cpu MODELS=random:tiny-llama: a smoke test of this script on a machine without a GPU
DEVICE = os.environ.get("DEVICE", "cuda")
MODELS = os.environ.get("MODELS", "random:qwen2.5-0.5b,random:llama-3.2-1b").split(",")
BATCHES = [1, 8]
PROMPT, NEW = 128, 64
PEER_TIMEOUT_S = 100
SPECS_GB_S = {"H200": 4800.0, "H100": 3350.0}  # HBM spec (hardware_profiles.yaml: h200, h100-sxm)


def sync() -> None:
    """Wait for the device (timings on CUDA); nothing on the CPU."""
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def peer(model_ref: str, batch: int) -> dict:
    """transformers static cache + compile: per-step seconds (in this process)."""
    import torch

    import leaninfer

    m = leaninfer.load(model_ref, device=DEVICE, dtype="bf16")
    ids = torch.randint(1000, 2000, (batch, PROMPT), device=DEVICE)
    mask = torch.ones_like(ids)

    def run(new: int) -> float:
        sync()
        t0 = time.perf_counter()
        m.module.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, cache_implementation="static", pad_token_id=0)
        sync()
        return time.perf_counter() - t0

    for _ in range(2):
        run(NEW)
    t_long = min(run(NEW) for _ in range(3))
    t_short = min(run(2) for _ in range(3))
    return {"step_ms": 1000 * (t_long - t_short) / (NEW - 2)}


def profile_step(model, batch: int, steps: int = 5) -> dict:
    """The slot pool's eager decode step (the forward a CUDA graph captures) under torch.profiler: kernels per
    step, their summed GPU time against the step's wall time, and the kernels that take the most. Kernel time near
    the wall time with many kernels means launch-bound kernels to fuse; far below it, host overhead."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    runner = model.runner("static", max_rows=batch)
    ids = list(range(batch))
    runner.prefill(ids, [[1000 + i] * PROMPT for i in range(batch)])
    for _ in range(3):
        runner.decode(ids, [5] * batch)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.decode(ids, [5] * batch)
        sync()
    wall_ms = 1000 * (time.perf_counter() - t0) / steps
    on_device = DEVICE == "cuda"
    events = [e for e in prof.key_averages()
              if (e.device_type == torch.autograd.DeviceType.CUDA) == on_device]
    key = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    events.sort(key=key, reverse=True)
    return {"batch": batch, "wall_ms_per_step_profiled": round(wall_ms, 3),
            "kernels_per_step" if on_device else "ops_per_step": round(sum(e.count for e in events) / steps, 1),
            "kernel_ms_per_step" if on_device else "self_cpu_ms_per_step":
                round(sum(key(e) for e in events) / steps / 1000, 3),
            "top": [{"name": e.key[:90], "per_step": round(e.count / steps, 1),
                     "ms_per_step": round(key(e) / steps / 1000, 4)} for e in events[:15]]}


def main(out: Path) -> None:
    import torch

    import leaninfer
    from leaninfer.benchmarks.measures import measure_bandwidth
    from leaninfer.benchmarks.worker import measure_generation

    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    read = measure_bandwidth(buffer_bytes=int((4 if DEVICE == "cuda" else 0.25) * 2**30), repeats=5, device=DEVICE)
    spec = next((v for k, v in SPECS_GB_S.items() if k in gpu), None)
    rows = []
    weights = {}
    profiles = {}

    def write() -> None:  # after every row: a stage cut off by its time box keeps what it measured
        result = {"gpu": gpu, "torch": torch.__version__, "read_gb_per_s_measured": read.read_gb_per_s,
                  "copy_gb_per_s_measured": read.copy_gb_per_s, "hbm_spec_gb_per_s": spec, "rows": rows,
                  "step_profiles": profiles}
        (out / "gpu_decode.json").write_text(json.dumps(result, indent=2))

    def record(row: dict, t0: float) -> None:
        rows.append(_bound(row, weights[row["model"]], read.read_gb_per_s, spec, t0))
        print(rows[-1], flush=True)
        write()

    # leaninfer's modes on every model first, then the peer: its compile has taken minutes, and it must not
    # keep the second model from being measured
    for ref in MODELS:
        model = leaninfer.load(ref, device=DEVICE, dtype="bf16")
        weights[ref] = model.weight_bytes()
        for decode in ("cuda-graphs", "dynamic", "static"):  # the default first
            for batch in BATCHES:
                t0 = time.perf_counter()
                row = {"model": ref, "decode": decode, "batch": batch}
                os.environ["LEANINFER_DECODE"] = decode  # what Model.runner() reads, in the worker as in serve
                try:
                    r = measure_generation(model, batch, PROMPT, NEW, 3)
                    row.update(step_ms=r["inter_token"]["p50_ms"], itl_p95_ms=r["inter_token"]["p95_ms"],
                               decode_tokens_per_s=r["decode_tokens_per_s"])
                except Exception as e:  # record and go on: one failing mode must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"[:500]
                record(row, t0)
        os.environ.pop("LEANINFER_DECODE")
        try:  # where a batch-1 step's time goes: what the next tuning starts from
            profiles[ref] = profile_step(model, 1)
            print(ref, "step profile:", {k: v for k, v in profiles[ref].items() if k != "top"}, flush=True)
        except Exception as e:
            profiles[ref] = {"error": f"{type(e).__name__}: {e}"[:500]}
        write()
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    for batch in BATCHES:  # batch 1 of both models first: the comparison the issue checks
        for ref in MODELS:
            t0 = time.perf_counter()
            row = {"model": ref, "decode": "transformers static+compile", "batch": batch}
            try:
                done = subprocess.run([sys.executable, __file__, "--peer", ref, str(batch)], capture_output=True,
                                      text=True, timeout=PEER_TIMEOUT_S)
                row.update(json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                           else {"error": done.stderr[-500:]})
            except subprocess.TimeoutExpired:
                row["error"] = f"did not finish within {PEER_TIMEOUT_S} s (compiling)"
            record(row, t0)


def _bound(row: dict, weights: int, read_gb_s: float, spec_gb_s: float | None, t0: float) -> dict:
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if "step_ms" in row:
        bound_ms = 1000 * weights / (read_gb_s * 1e9)
        row["read_bound_ms"] = bound_ms
        row["pct_of_measured_read_bound"] = 100 * bound_ms / row["step_ms"]
        if spec_gb_s:
            row["pct_of_hbm_spec_bound"] = 100 * 1000 * weights / (spec_gb_s * 1e9) / row["step_ms"]
    return row


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer"]:
        print(json.dumps(peer(sys.argv[2], int(sys.argv[3]))))
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out"))
