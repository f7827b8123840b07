"""What runs inside a fresh benchmark process: build a variant, or load one and measure it.

Kept free of heavy third-party imports at module level (leaninfer's own modules import torch only where they
use it): a spawned child imports this module first, sets its thread count, and only then imports torch, so
every variant starts from the same clean state.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback

import numpy as np

from ..artifacts import library_versions
from ..data import default_texts
from ..engines.core import GenerationScheduler, GenSequence, SamplingParams
from ..hardware import detect_local
from ..latency import Latency
from ..logs import quiet_libraries
from ..models import load
from ..pipeline import optimize
from .measures import dir_bytes, hwm_bytes, measure_bandwidth, reset_peak_rss, rss_bytes
from .roofline import model_shape


def _set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["LEANINFER_THREADS"] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)


def child_main(kind: str, job: dict, result_path: str) -> None:
    """Entry point of a spawned process: run `kind` ('build', 'measure', 'bandwidth'), write JSON."""
    # Where a child's time goes (the parent prints it): interpreter + leaninfer imports before this line,
    # torch import, CUDA context start, then the job itself.
    process = {"startup_s": time.time() - job["spawned_at"] if job.get("spawned_at") else None}
    try:
        t0 = time.perf_counter()
        _set_threads(job["threads"])
        quiet_libraries()
        process["torch_import_s"] = time.perf_counter() - t0
        process["cuda_init_s"] = _cuda_init(job.get("device", "cpu"))
        fn = {"build": build_variant, "measure": measure_variant, "bandwidth": bandwidth_job}[kind]
        t0 = time.perf_counter()
        result = {"status": "ok", **fn(job)}
        process["job_s"] = time.perf_counter() - t0
    except BaseException as e:  # the parent turns this into a failed variant and goes on
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result["process"] = {k: None if v is None else round(v, 3) for k, v in process.items()}
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)


def _cuda_init(device: str) -> float | None:
    """Start the CUDA context now (seconds), so a slow start is told apart from a slow load or measurement."""
    if not device.startswith("cuda"):
        return None
    import torch

    t0 = time.perf_counter()
    torch.zeros(1, device=device)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def bandwidth_job(job: dict) -> dict:
    return {"bandwidth": measure_bandwidth(threads=job["threads"], device=job["device"]).to_dict()}


def build_variant(job: dict) -> dict:
    """Make the artifact of a variant from the source model (the optimize job, with its quality check)."""
    t0 = time.perf_counter()
    r = optimize(job["model"], job["steps"], job["artifact_dir"], overwrite=True, device=job["device"],
                 sts=job.get("sts"))
    m = r.manifest
    return {"artifact": str(r.path), "build_s": time.perf_counter() - t0, "quality": m.get("quality"),
            "notes": m.get("notes", []), "steps": m.get("steps"), "stage_s": m.get("stage_s")}


# --------------------------------------------------------------------------------------------------------
# Measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _token_source(model, n: int):
    """Token ids of real text (the bundled sentences), repeated to `n`: realistic ids, exact lengths."""
    ids = model.tokenizer(" ".join(default_texts()), add_special_tokens=False)["input_ids"]
    reps = n // max(len(ids), 1) + 1
    return np.asarray((ids * reps)[:n], dtype=np.int64)


def _batch(model, batch: int, seq: int) -> dict:
    src = _token_source(model, batch * seq + batch * 7)
    rows = np.stack([src[i * 7:i * 7 + seq] for i in range(batch)])  # offset rows: not all the same sentence
    return {"input_ids": rows, "attention_mask": np.ones_like(rows)}


def _timed_repeats(fn, *, warmup: int, min_repeats: int, max_repeats: int, min_time_s: float, device: str):
    for _ in range(warmup):
        fn()
    _sync(device)
    samples, t_start = [], time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() - t_start < min_time_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return samples


def measure_variant(job: dict) -> dict:
    """Load the variant in this fresh process, measure every configuration of the job, return raw samples."""
    import torch
    import transformers  # noqa: F401  (every handle needs it: its import is baseline, not model memory)

    device = job["device"]
    # Memory split: the process before loading (interpreter, torch, transformers), what loading the model
    # added, and the peak during load + measurement.
    rss_before = rss_bytes()
    reset_ok = reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = load(job.get("artifact") or job["model"], device=device)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_bytes()
    cuda_loaded = int(torch.cuda.memory_allocated()) if device.startswith("cuda") else None
    lookup_bytes = model.lookup_only_bytes()
    weight_bytes = model.weight_bytes()
    out = {
        "model": {**model.describe(), "state": model.state, "matmul_flops_per_token": model.matmul_flops_per_token(),
                  "lookup_only_bytes": lookup_bytes, "shape": model_shape(model.config),
                  "steps": (model.manifest or {}).get("steps") or []},
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "library_versions": library_versions(),
        "hardware": detect_local().to_dict(),
        "pid": os.getpid(),
        "results": [],
        "notes": [],
    }
    if job.get("artifact"):
        out["size_on_disk_bytes"] = dir_bytes(job["artifact"])
    rep = dict(warmup=job["warmup"], min_repeats=job["min_repeats"], max_repeats=job["max_repeats"],
               min_time_s=job["min_time_s"], device=device)
    if model.task == "embedding":
        for bs in job["batch_sizes"]:
            for seq in job["seq_lens"]:
                seq_eff = min(seq, model.max_seq_length)
                enc = _batch(model, bs, seq_eff)
                t_config = time.perf_counter()
                samples = _timed_repeats(lambda enc=enc: model.embed_batch(enc), **rep)
                config_s = time.perf_counter() - t_config  # warm-up + timed calls
                lat = Latency.from_samples(samples)
                out["results"].append({
                    "kind": "embedding", "batch_size": bs, "seq_len": seq_eff, "samples_s": samples,
                    "latency": lat.to_dict(), "tokens_per_batch": bs * seq_eff,
                    "tokens_per_s": bs * seq_eff / (lat.p50_ms / 1000), "sequences_per_s": bs / (lat.p50_ms / 1000),
                    "config_s": config_s,
                })
    else:
        if not model.runner().has_cache:
            out["notes"].append(f"{model.backend} causal-LM graphs have no KV cache in leaninfer: generation is "
                                "not benchmarked on them (it would recompute the prefix every token)")
        else:
            for bs in job["batch_sizes"]:
                out["results"].append(measure_generation(model, bs, job["prompt_tokens"], job["gen_tokens"],
                                                         job["gen_repeats"]))
    peak = hwm_bytes() if reset_ok else None
    out["memory"] = {
        "baseline_rss_bytes": rss_before,
        "model_rss_bytes": rss_loaded - rss_before,
        "peak_rss_bytes": peak,
        "peak_above_baseline_rss_bytes": None if peak is None else peak - rss_before,
        "note": "baseline: the measuring process before loading (Python, torch, transformers imported); model: "
                "RSS added by loading; peak: the process's highest RSS during load and measurement"
                + ("" if reset_ok else " (the peak could not be isolated on this OS)"),
    }
    if device.startswith("cuda"):
        out["memory"].update(cuda_allocated_after_load_bytes=cuda_loaded,
                             cuda_max_allocated_bytes=int(torch.cuda.max_memory_allocated()),
                             cuda_max_reserved_bytes=int(torch.cuda.max_memory_reserved()))
    out["weight_bytes"] = weight_bytes
    return out


def _warm(runner):
    """A runner as a server holds it before its first request: its decode pool allocated and, on CUDA, its
    graphs captured (``SlotPoolRunner.warmup``), so no pass times a capture."""
    if hasattr(runner, "warmup"):
        runner.warmup()
    return runner


def measure_generation(model, batch: int, prompt_tokens: int, gen_tokens: int, repeats: int) -> dict:
    """Generation as the server runs it: its scheduler over the model's runner, every model call timed.

    Design: ``batch`` greedy requests arrive together and go through :class:`GenerationScheduler`, the same
    object ``leaninfer serve`` steps, over ``model.runner()``, the runner it serves with. So the first step
    prefills all rows (time to first token) and each later step is one decode call; the scheduler's step hook
    reports each call's engine time (the runner hands back host logits, so a GPU is synced by then). Exactly
    ``gen_tokens`` tokens per request (EOS ignored), prompts of exactly ``prompt_tokens`` real-text tokens.
    """
    enc = _batch(model, batch, prompt_tokens)
    prompts = [[int(t) for t in row] for row in enc["input_ids"]]
    tok = model.tokenizer
    params = SamplingParams(max_tokens=gen_tokens, temperature=0.0, ignore_eos=True)

    def one_pass():
        calls: list[tuple[str, float]] = []
        scheduler = GenerationScheduler(
            _warm(model.runner(max_rows=batch)), max_batch_size=batch,
            max_batch_tokens=batch * (prompt_tokens + gen_tokens),
            eos_token_id=model.eos_token_id, max_seq_len=prompt_tokens + gen_tokens + 1,
            on_step=lambda kind, seconds, rows: calls.append((kind, seconds)))
        seqs = [scheduler.submit(GenSequence(prompt=p, params=params, on_event=lambda s, e: None,
                                             decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True)))
                for p in prompts]
        while scheduler.has_work():
            scheduler.step()
        failed = [s.finish_reason for s in seqs if s.finish_reason != "length"]
        if failed:
            raise RuntimeError(f"generation failed: finish reasons {failed}")
        prefill = sum(sec for kind, sec in calls if kind == "prefill")
        return prefill, [sec for kind, sec in calls if kind == "decode"], [s.output for s in seqs]

    one_pass()  # warm-up
    prefills, itl, decode_rates, e2e_rates = [], [], [], []
    for _ in range(repeats):
        prefill, steps, outputs = one_pass()
        prefills.append(prefill)
        itl.extend(steps)
        if steps:  # gen_tokens == 1: the prefill gives the only token, there is no decode step
            decode_rates.append(batch * len(steps) / sum(steps))
        e2e_rates.append(batch * gen_tokens / (prefill + sum(steps)))
    ttft = Latency.from_samples(prefills)
    inter = Latency.from_samples(itl) if itl else None
    kv_dtype_bytes = 2 if model.precision in ("fp16", "bf16") else 4
    return {
        "kind": "generation", "batch_size": batch, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        "repeats": repeats, "prefill_samples_s": prefills, "itl_samples_s": itl,
        "ttft": ttft.to_dict(), "inter_token": inter.to_dict() if inter else None,
        "input_tokens_per_s": batch * prompt_tokens / (ttft.p50_ms / 1000),
        "decode_tokens_per_s": statistics.median(decode_rates) if decode_rates else None,
        "decode_tokens_per_s_per_repeat": decode_rates,
        # End to end (prefill + decode), as the load generator and GuideLLM mean output tokens/s.
        "output_tokens_per_s": statistics.median(e2e_rates),
        "kv_bytes_per_elem": kv_dtype_bytes,
        "mean_context": prompt_tokens + gen_tokens / 2,
        "greedy_token_ids": outputs,
    }


if __name__ == "__main__":
    import sys

    _kind, _job, _result = sys.argv[1:4]
    with open(_job) as _f:
        child_main(_kind, json.load(_f), _result)
