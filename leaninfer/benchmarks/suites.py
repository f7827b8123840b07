"""Benchmark suites shipped with leaninfer: named, versioned sets of bench settings.

A suite gives defaults; any flag given on the command line overrides it.
"""

from __future__ import annotations

from ..errors import LeaninferError, valid_list

SUITES: dict[str, dict] = {
    # minilm (real weights), the optimize job's CPU variants; under 10 minutes on 2 cores.
    "cpu-quick": {
        "description": "minilm: FP32 vs PyTorch INT8 (torchao, torch.ao dynamic), ONNX Runtime INT8, OpenVINO INT8; "
                       "batch 1/8/32 at 128 tokens; 2 interleaved rounds",
        "model": "minilm",
        "variants": ["fp32", "int8", "int8-dyn=int8:method=torch-dynamic", "onnx+ort-int8", "openvino+ov-int8"],
        "batch_sizes": [1, 8, 32],
        "seq_lens": [128],
        "min_time_s": 1.5,
        "rounds": 2,
        "project_to": ["aws-c7a.large", "aws-c7i.2xlarge", "aws-g4dn.xlarge", "aws-g6.xlarge"],
    },
    # A random-weight GPT-2 small: decode with a KV cache, FP32 vs INT8 paths, batch 1..16.
    "llm-cpu": {
        "description": "random:gpt2: FP32 vs INT8 (the default, torch.ao dynamic on CPU, with and without lm_head; "
                       "torchao); prompt 64, 32 new tokens, batch 1/4/16",
        "model": "random:gpt2",
        "variants": ["fp32", "int8", "int8-torchao=int8:method=torchao",
                     "int8-dyn-all=int8:method=torch-dynamic:exclude="],
        "batch_sizes": [1, 4, 16],
        "prompt_tokens": 64,
        "gen_tokens": 32,
        "gen_repeats": 3,
        "project_to": ["aws-c7a.large", "aws-c7i.2xlarge", "aws-g6.xlarge", "h100-sxm"],
    },
    # For a CUDA box.
    "gpu": {
        "description": "random:qwen2.5-0.5b on CUDA: FP32, FP16, BF16, INT8 (torchao); prompt 128, 64 new, batch 1..64",
        "model": "random:qwen2.5-0.5b",
        "device": "cuda",
        "variants": ["fp32", "fp16", "bf16", "int8"],
        "batch_sizes": [1, 8, 32, 64],
        "prompt_tokens": 128,
        "gen_tokens": 64,
        "gen_repeats": 3,
        "project_to": ["aws-g4dn.xlarge", "aws-g6.xlarge", "gcp-a2-highgpu-1g", "h100-sxm"],
    },
    # Cost under load, measured: each variant served by `leaninfer serve` and driven by the load generator, then
    # at saturation by wrk when installed, in rounds, each between two runs of the offline bench of that variant
    # (leaninfer/benchmarks/serve_load.py), against the offline bench at the matching batch (measured at
    # 1, m/4, m/2, m; m = the server's max batch size). About 16 minutes on 2 cores (16 min 39 s, Zen 4);
    # --duration-s: s per level and per wrk round.
    "serve-cpu": {
        "description": "served cost against load: minilm FP32 vs onnx+ort-int8 (embeddings, c=1/8/32, 25/75 req/s, "
                       "then c=32 driven by wrk), random:gpt2 FP32 vs int8 (completions, 32 new tokens, c=1/4/16, "
                       "1/3 req/s, then c=16 by wrk); saturation in 3 (minilm) and 5 (gpt2) wrk rounds, each set "
                       "against the offline bench run just before and after it at the matching batch size "
                       "(measured at 1, m/4, m/2, m; interpolated in 1/batch); the median round is the figure",
        "serve_load": {
            "groups": [
                {"model": "minilm", "variants": ["fp32", "onnx+ort-int8"], "endpoint": "embeddings",
                 "prompt_tokens": 32, "offline_tokens": 38, "max_batch_size": 32,
                 "concurrency": [1, 8, 32], "rates": [25, 75], "duration_s": 5, "wrk_duration_s": 8,
                 "saturation_rounds": 3},
                {"model": "random:gpt2", "variants": ["fp32", "int8"], "endpoint": "completions",
                 "prompt_tokens": 32, "offline_tokens": 38, "max_tokens": 32, "max_batch_size": 16,
                 "concurrency": [1, 4, 16], "rates": [1, 3], "duration_s": 8,
                 # requests of 2-5 s: a round spans 2-6 cohorts; gpt2's decode moves with the VM's memory
                 # bandwidth, so its rounds spread more than minilm's: 5 of them
                 "wrk_duration_s": 12, "saturation_rounds": 5},
            ],
        },
    },
    # Seconds, for tests and the notebook.
    "tiny": {
        "description": "random:tiny-bert, FP32 vs FP16, batch 1/2 at 16 tokens (tests, notebook)",
        "model": "random:tiny-bert",
        "variants": ["fp32", "fp16"],
        "batch_sizes": [1, 2],
        "seq_lens": [16],
        "warmup": 1,
        "min_repeats": 3,
        "max_repeats": 10,
        "min_time_s": 0.05,
        "project_to": ["aws-g6.xlarge"],
    },
}


def get_suite(name: str) -> dict:
    if name not in SUITES:
        raise LeaninferError(f"unknown suite {name!r}; valid suites: {valid_list(SUITES)}")
    return {k: v for k, v in SUITES[name].items() if k != "description"}
