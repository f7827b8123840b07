"""Bench states made by hand (what the measuring processes write), so reports are built without measuring."""

from __future__ import annotations

from leaninfer.benchmarks.runner import BenchConfig

# A recorded measuring machine that is not this one: reports must use it, not the machine reading them.
ZEN4 = {"cpu_name": "AMD EPYC 9R14", "arch": "x86_64", "physical_cores": 2, "logical_cores": 2,
        "isa": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"], "ram_bytes": 4 * 10**9,
        "gpu_name": None, "gpu_memory_bytes": None, "gpu_count": 0, "vendor": "AuthenticAMD", "cpu_family": 25,
        "cpu_model": 17, "cpu_mhz": 3700.0, "int8_isa": "avx512_vnni", "microarchitecture": "zen4"}

# A tiny GPT-2-like model: 2 layers, hidden 4; FLOPs per token 1000 in the body and 200 in the LM head.
MODEL = {"ref": "random:toy", "task": "causal-lm", "backend": "torch", "precision": "fp32", "weights": "random",
         "num_parameters": 1000, "weight_bytes": 4000, "max_seq_length": 64, "state": "torch:fp32",
         "matmul_flops_per_token": {"body": 1000, "lm_head": 200}, "lookup_only_bytes": 0,
         "shape": {"layers": 2, "hidden": 4, "kv_width": 4}}


def generation_result(batch: int, prompt: int, gen: int, prefill_s: list[float], itl_s: list[float],
                      repeats: int) -> dict:
    """A worker's generation result from raw samples (the derived fields computed as the worker does)."""
    steps = gen - 1
    rates = [batch * steps / sum(itl_s[i * steps:(i + 1) * steps]) for i in range(repeats)] if steps else []
    ttft = sorted(prefill_s)[len(prefill_s) // 2]
    return {"kind": "generation", "batch_size": batch, "prompt_tokens": prompt, "gen_tokens": gen, "repeats": repeats,
            "prefill_samples_s": prefill_s, "itl_samples_s": itl_s, "decode_tokens_per_s_per_repeat": rates,
            "decode_tokens_per_s": sorted(rates)[len(rates) // 2] if rates else None,
            "input_tokens_per_s": batch * prompt / ttft, "output_tokens_per_s": 1.0, "kv_bytes_per_elem": 4,
            "mean_context": prompt + gen / 2, "ttft": {}, "inter_token": None}


def embedding_result(batch: int, seq: int, samples_s: list[float]) -> dict:
    p50 = sorted(samples_s)[len(samples_s) // 2]
    return {"kind": "embedding", "batch_size": batch, "seq_len": seq, "samples_s": samples_s,
            "tokens_per_batch": batch * seq, "tokens_per_s": batch * seq / p50, "sequences_per_s": batch / p50,
            "latency": {}}


def run(results: list[dict], model: dict | None = None, weight_bytes: int = 4000, pid: int = 1) -> dict:
    return {"status": "ok", "model": model or MODEL, "hardware": ZEN4, "results": results, "weight_bytes": weight_bytes,
            "threads": 2, "load_s": 0.1, "library_versions": {"torch": "test"}, "pid": pid,
            "memory": {"baseline_rss_bytes": 300e6, "model_rss_bytes": 10e6, "peak_rss_bytes": 320e6,
                       "peak_above_baseline_rss_bytes": 20e6, "note": "test"}}


def state(variants: dict[str, list[dict]], specs: list[dict] | None = None, bandwidth_gb: float = 20.0,
          **config) -> dict:
    """A run's state: {variant name: [measuring runs]}, the config given as BenchConfig fields."""
    cfg = BenchConfig(**{"model": "random:toy-not-loaded", **config}).to_dict()
    specs = specs or [{"name": n, "steps": [], "artifact": None} for n in variants]
    return {"meta": {"config": cfg, "variants": specs, "command": "test", "started": "now", "finished": "now"},
            "bandwidth": {"read_gb_per_s": bandwidth_gb, "copy_gb_per_s": bandwidth_gb}, "builds": {},
            "measures": variants}
