"""Measures taken inside a measuring process: memory (RSS, its peak) and the local memory-bandwidth test.

Every figure keeps the samples it came from (the report's JSON has them), so a reader can recompute it.
Rooflines are in roofline.py; CPU peaks come from leaninfer.hardware (per microarchitecture).
"""

from __future__ import annotations

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
