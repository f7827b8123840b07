"""Measures built from raw samples: memory, the local memory-bandwidth test, peak compute, rooflines.

Every figure keeps the samples it came from (the report's JSON has them), so a reader can recompute it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import psutil

# --------------------------------------------------------------------------------------------------------
# Memory


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:
        return rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark so the next peak is this phase's (Linux >= 4.0; else False)."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_bytes() -> int:
    """VmHWM (peak RSS since the last reset) from /proc, falling back to ru_maxrss."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def dir_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


# --------------------------------------------------------------------------------------------------------
# Local memory bandwidth


@dataclass(frozen=True)
class Bandwidth:
    """Measured DRAM bandwidth of this machine, GB/s (1e9 bytes).

    `read_gb_per_s` (a multi-threaded sum over a buffer far larger than the caches) is the bound we use for
    decode, which mostly reads weights; `copy_gb_per_s` counts read + written bytes of a buffer copy.
    """

    read_gb_per_s: float
    copy_gb_per_s: float
    buffer_bytes: int
    threads: int
    repeats: int
    method: str = "torch sum (read) and copy_ (read+write) of a buffer 8x+ the last-level cache, best of repeats"

    def to_dict(self) -> dict:
        return asdict(self)


def measure_bandwidth(buffer_bytes: int = 512 * 2**20, repeats: int = 7, threads: int | None = None,
                      device: str = "cpu") -> Bandwidth:
    """A quick STREAM-like test (about a second): best of `repeats` passes, after a warm-up pass."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n = buffer_bytes // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    reads, copies = [], []
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        a.sum()
        sync()
        t1 = time.perf_counter()
        b.copy_(a)
        sync()
        t2 = time.perf_counter()
        if i:
            reads.append(t1 - t0)
            copies.append(t2 - t1)
    return Bandwidth(read_gb_per_s=buffer_bytes / min(reads) / 1e9, copy_gb_per_s=2 * buffer_bytes / min(copies) / 1e9,
                     buffer_bytes=buffer_bytes, threads=torch.get_num_threads(), repeats=repeats)


# --------------------------------------------------------------------------------------------------------
# Peak compute of the local CPU (an estimate from cores, clock and instruction set)


def cpu_mhz() -> float | None:
    try:
        f = psutil.cpu_freq()
        if f and (f.max or f.current):
            return float(f.max or f.current)
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except OSError:
        pass
    return None


def estimate_cpu_peak_tflops(isa, cores: int, mhz: float | None) -> dict:
    """Peak TFLOP/s per precision: cores x clock x FLOP/cycle for the ISA (2 FMA units assumed).

    FP32: 64 FLOP/cycle with AVX-512, 32 with AVX2+FMA; INT8: 4x FP32 with VNNI (or AMX: 2048 OP/cycle),
    BF16: 2x FP32 with AVX512_BF16 (AMX: 1024). A rough bound labelled 'estimate' wherever it is used.
    """
    if not mhz:
        return {}
    isa = set(isa)
    fp32 = 64 if "avx512f" in isa else 32 if {"avx2", "fma"} <= isa else 16
    int8 = 2048 if "amx_int8" in isa else fp32 * 4 if isa & {"avx512_vnni", "avx_vnni"} else fp32 * 2
    bf16 = 1024 if "amx_bf16" in isa else fp32 * 2 if "avx512_bf16" in isa else fp32
    hz = mhz * 1e6 * cores
    return {"fp32": fp32 * hz / 1e12, "bf16": bf16 * hz / 1e12, "fp16": fp32 * hz / 1e12, "int8": int8 * hz / 1e12}


# --------------------------------------------------------------------------------------------------------
# Roofline


@dataclass(frozen=True)
class Roofline:
    """Where a measurement sits against the hardware's bounds.

    `bytes_per_step` (weights + KV cache read by one forward step) and `flops_per_step` come from the model's
    shape; bound times are bytes / bandwidth and FLOPs / peak. The fractions say how much of each bound
    the measured step time reached (1.0 = at the bound).
    """

    bytes_per_step: float
    flops_per_step: float
    bandwidth_bytes_per_s: float | None
    peak_flops_per_s: float | None
    memory_bound_s: float | None
    compute_bound_s: float | None
    measured_step_s: float
    fraction_of_memory_bound: float | None
    fraction_of_compute_bound: float | None
    bound: str  # 'memory' or 'compute' (whichever bound is larger), or 'unknown'

    @classmethod
    def of(cls, bytes_per_step, flops_per_step, measured_step_s, bandwidth_bytes_per_s=None,
           peak_flops_per_s=None) -> Roofline:
        mem = bytes_per_step / bandwidth_bytes_per_s if bandwidth_bytes_per_s else None
        comp = flops_per_step / peak_flops_per_s if peak_flops_per_s else None
        bound = "unknown" if mem is None and comp is None else (
            "memory" if (comp is None or (mem is not None and mem >= comp)) else "compute")
        return cls(float(bytes_per_step), float(flops_per_step), bandwidth_bytes_per_s, peak_flops_per_s, mem, comp,
                   float(measured_step_s), None if mem is None else mem / measured_step_s,
                   None if comp is None else comp / measured_step_s, bound)

    @property
    def roofline_s(self) -> float | None:
        vals = [v for v in (self.memory_bound_s, self.compute_bound_s) if v is not None]
        return max(vals) if vals else None

    def to_dict(self) -> dict:
        return asdict(self)


def model_shape(config) -> dict:
    """Layers, hidden size and KV width of a transformers config (GPT-2 and Llama/BERT naming alike)."""
    g = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None)), default)  # noqa: E731
    layers = int(g("num_hidden_layers", "n_layer", default=0))
    hidden = int(g("hidden_size", "n_embd", default=0))
    heads = int(g("num_attention_heads", "n_head", default=1))
    kv_heads = int(g("num_key_value_heads", default=heads))
    head_dim = int(g("head_dim", default=hidden // max(heads, 1)))
    return {"layers": layers, "hidden": hidden, "kv_width": kv_heads * head_dim}


def decode_step_cost(weight_bytes: int, matmul_params: int, shape: dict, batch: int, context: int,
                     kv_bytes_per_elem: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step of `batch` sequences at `context` tokens of KV cache.

    Bytes: every weight once (batch shares the read) + the KV cache (K and V, every layer, every sequence).
    FLOPs: 2 per matmul parameter per token + attention (QK^T and AV: 4 x layers x context x kv width).
    """
    kv = 2 * shape["layers"] * batch * context * shape["kv_width"] * kv_bytes_per_elem
    flops = batch * (2 * matmul_params + 4 * shape["layers"] * context * shape["hidden"])
    return float(weight_bytes + kv), float(flops)


def forward_cost(weight_bytes: int, matmul_params: int, shape: dict, batch: int, seq: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one full forward of `batch` x `seq` tokens (embeddings, prefill)."""
    flops = batch * seq * (2 * matmul_params + 4 * shape["layers"] * seq * shape["hidden"])
    return float(weight_bytes), float(flops)


def finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else x
