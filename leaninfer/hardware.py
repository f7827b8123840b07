"""Hardware: what this machine is (detection) and, for cost work, what machines cost (profiles).

Detection reads /proc/cpuinfo (Linux) or platform facts, never a network service. The instruction-set
flags decide which INT8 kernels are worth using: AVX-512 VNNI and AMX have native INT8 dot products,
plain AVX2 needs `reduce_range` to avoid saturating 16-bit intermediates, arm64 has its own (dotprod).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field

import psutil

# Flags worth recording with every result, in the order we report them.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimddp", "sve")


@dataclass(frozen=True)
class LocalHardware:
    cpu_name: str
    arch: str
    physical_cores: int
    logical_cores: int
    isa: tuple[str, ...]
    ram_bytes: int
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    gpu_count: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def int8_isa(self) -> str:
        """The INT8 instruction family the CPU kernels will use: amx, avx512_vnni, avx_vnni, avx2, arm64."""
        if "amx_int8" in self.isa:
            return "amx"
        if "avx512_vnni" in self.isa:
            return "avx512_vnni"
        if "avx_vnni" in self.isa:
            return "avx_vnni"
        if self.arch in ("aarch64", "arm64"):
            return "arm64"
        if "avx2" in self.isa:
            return "avx2"
        return "generic"

    @property
    def native_fp16(self) -> bool:
        """True when the CPU computes FP16 natively (AVX-512 FP16 or AMX-FP16, or arm64 fp16 arithmetic)."""
        return "avx512_fp16" in self.isa or self.arch in ("aarch64", "arm64") and "asimdhp" in self.extra.get("flags", ())

    @property
    def native_bf16(self) -> bool:
        return "avx512_bf16" in self.isa or "amx_bf16" in self.isa

    def to_dict(self) -> dict:
        d = asdict(self)
        d["isa"] = list(self.isa)
        d["int8_isa"] = self.int8_isa
        d.pop("extra", None)
        return d


def _cpu_info() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name or "unknown CPU", flags


@functools.lru_cache(maxsize=1)
def detect_local() -> LocalHardware:
    """Describe this machine: CPU name, cores, instruction sets, RAM and the first CUDA GPU, if any."""
    name, flags = _cpu_info()
    gpu_name = gpu_mem = None
    gpu_count = 0
    try:
        import torch

        if torch.cuda.is_available():
            gpu_count = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            gpu_name, gpu_mem = props.name, int(props.total_memory)
    except Exception:  # a broken CUDA install must not stop CPU work
        pass
    return LocalHardware(
        cpu_name=name,
        arch=platform.machine(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        isa=tuple(f for f in _ISA_FLAGS if f in flags),
        ram_bytes=int(psutil.virtual_memory().total),
        gpu_name=gpu_name,
        gpu_memory_bytes=gpu_mem,
        gpu_count=gpu_count,
        extra={"flags": tuple(sorted(flags))},
    )
