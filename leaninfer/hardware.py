"""Hardware: what this machine is (detection) and, for cost work, what machines cost (profiles).

Detection reads /proc/cpuinfo (Linux) or platform facts, never a network service. The instruction-set
flags decide which INT8 kernels are worth using: AVX-512 VNNI and AMX have native INT8 dot products,
plain AVX2 needs `reduce_range` to avoid saturating 16-bit intermediates, arm64 has its own (dotprod).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from importlib import resources

import psutil
import yaml

from .errors import LeaninferError, valid_list

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
    vendor: str = ""  # /proc/cpuinfo vendor_id, e.g. AuthenticAMD
    cpu_family: int | None = None
    cpu_model: int | None = None
    cpu_mhz: float | None = None  # the highest clock the OS reports (max, else current)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> LocalHardware:
        """The machine a report recorded (its `to_dict()`), e.g. to re-price a run on another machine."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**{**known, "isa": tuple(known.get("isa", ()))})

    @property
    def microarchitecture(self) -> str | None:
        """The CPU's microarchitecture where its SIMD datapath matters for peaks (see CPU_DATAPATHS)."""
        return cpu_microarchitecture(self.vendor, self.cpu_family, self.cpu_model, self.isa)

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
        d["microarchitecture"] = self.microarchitecture
        d.pop("extra", None)
        return d


def _cpu_info() -> tuple[str, set[str], dict]:
    name, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("vendor_id", "cpu family", "model", "cpu MHz") and key not in ids:
                    ids[key] = value.strip()
    except OSError:
        pass
    return name or "unknown CPU", flags, ids


def _int(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _max_mhz(ids: dict) -> float | None:
    try:
        f = psutil.cpu_freq()
        if f and (f.max or f.current):
            return float(f.max or f.current)
    except Exception:
        pass
    try:
        return float(ids["cpu MHz"])
    except (KeyError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------
# Peak compute of a CPU: cores x clock x FLOP/cycle, where FLOP/cycle depends on the SIMD datapath width.
# AVX-512 on Zen 4 is "double pumped": a 512-bit instruction runs on 256-bit units in two passes, so the
# FP32 peak is that of 2 x 256-bit FMA pipes (32 FLOP/cycle), half of what the ISA flags alone suggest. Zen 5
# (server parts) has full 512-bit datapaths; Intel Xeons with AVX-512 have two 512-bit FMA units.
# --------------------------------------------------------------------------------------------------------

# microarchitecture -> (FP32 FLOP/cycle/core, INT8 OP/cycle/core, BF16 FLOP/cycle/core, source)
CPU_DATAPATHS: dict[str, tuple[int, int, int, str]] = {
    "zen3": (32, 64, 32, "AMD Zen 3: 2x256-bit FMA, AVX2 (no VNNI: INT8 via vpmaddubsw, 2x FP32)"),
    "zen4": (32, 128, 64, "AMD Zen 4: AVX-512 executed on 2x256-bit FMA units (half the 512-bit rate); "
                          "VNNI 4x and AVX512_BF16 2x the FP32 rate"),
    "zen5": (64, 256, 128, "AMD Zen 5 (server): 2x512-bit FMA units, full-width AVX-512"),
    "intel-avx512": (64, 256, 128, "Intel Xeon with AVX-512: 2x512-bit FMA units; VNNI 4x, AVX512_BF16 2x FP32"),
    "intel-amx": (64, 2048, 1024, "Intel Xeon with AMX: 2x512-bit FMA; AMX 2048 INT8 / 1024 BF16 OP per cycle"),
    "avx2": (32, 64, 32, "AVX2 + FMA: 2x256-bit FMA units"),
}


def cpu_microarchitecture(vendor: str, family: int | None, model: int | None, isa) -> str | None:
    """The CPU_DATAPATHS key of a CPU from its vendor, family and ISA flags (None when unknown)."""
    isa = set(isa)
    if vendor == "AuthenticAMD":
        if family == 26:
            return "zen5"
        if family == 25:
            return "zen4" if "avx512f" in isa else "zen3"
    if vendor == "GenuineIntel":
        if "amx_int8" in isa:
            return "intel-amx"
        if "avx512f" in isa:
            return "intel-avx512"
    return "avx2" if {"avx2", "fma"} <= isa else None


def cpu_peak_tflops(microarchitecture: str | None, cores: int, mhz: float | None) -> dict:
    """Peak TFLOP/s per precision of `cores` at `mhz`: cores x clock x FLOP/cycle of the datapath.

    A precision the datapath has no fast path for (FP16 on these CPUs) is left out, never filled in.

    >>> cpu_peak_tflops("zen4", 2, 3700)["fp32"]   # c7a.large: 2 cores x 3.7 GHz x 32 FLOP/cycle
    0.2368
    """
    if not mhz or microarchitecture not in CPU_DATAPATHS:
        return {}
    fp32, int8, bf16, _ = CPU_DATAPATHS[microarchitecture]
    hz = mhz * 1e6 * cores
    return {"fp32": round(fp32 * hz / 1e12, 6), "bf16": round(bf16 * hz / 1e12, 6), "int8": round(int8 * hz / 1e12, 6)}


@functools.lru_cache(maxsize=1)
def detect_local() -> LocalHardware:
    """Describe this machine: CPU name, cores, instruction sets, RAM and the first CUDA GPU, if any."""
    name, flags, ids = _cpu_info()
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
        vendor=ids.get("vendor_id", ""),
        cpu_family=_int(ids.get("cpu family")),
        cpu_model=_int(ids.get("model")),
        cpu_mhz=_max_mhz(ids),
        extra={"flags": tuple(sorted(flags))},
    )


# --------------------------------------------------------------------------------------------------------
# Hardware profiles: a data table (leaninfer/data/hardware_profiles.yaml), extendable by a user YAML file.
# --------------------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
KINDS = ("cpu", "gpu")
LOCAL = "local"


def _profile_error(where: str, field_name: str, msg: str):
    return LeaninferError(f"{where}: field {field_name!r} {msg}")


@dataclass(frozen=True)
class HardwareProfile:
    """What a machine costs and what it can do. Units are in the names; peaks are dense datasheet figures.

    `usd_per_hour` is None for an unpriced machine (the local one until the user prices it): cost figures
    are then left out with a note, never guessed.

    >>> p = get_profile("aws-g6.xlarge")
    >>> p.kind, p.memory_bandwidth_bytes_per_s
    ('gpu', 300000000000.0)
    """

    name: str
    kind: str
    description: str = ""
    usd_per_hour: float | None = None
    price_date: str | None = None
    price_source: str | None = None
    price_estimate: bool = False  # True where the price is not a list price (a typical market price)
    memory_gb: float | None = None
    memory_bandwidth_gb_per_s: float | None = None
    peak_tflops_per_s: dict = field(default_factory=dict)
    cores: int | None = None
    spec_source: str | None = None
    notes: str | None = None
    measured_locally: bool = False

    def __post_init__(self):
        where = f"hardware profile {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise _profile_error("hardware profile", "name", f"must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise _profile_error(where, "kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for f in ("usd_per_hour", "memory_gb", "memory_bandwidth_gb_per_s"):
            v = getattr(self, f)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or \
                    (f != "usd_per_hour" and v == 0):
                raise _profile_error(where, f, f"must be a number {'>= 0' if f == 'usd_per_hour' else '> 0'}, "
                                               f"got {v!r}")
            object.__setattr__(self, f, float(v))
        if self.usd_per_hour is not None and (not self.price_date or not self.price_source) \
                and not self.measured_locally:
            missing = "price_date" if not self.price_date else "price_source"
            raise _profile_error(where, missing, "is required with usd_per_hour (prices change: say when and "
                                                 "where this one was read)")
        if not isinstance(self.peak_tflops_per_s, dict):
            raise _profile_error(where, "peak_tflops_per_s", f"must be a mapping of precision to TFLOP/s "
                                                             f"({', '.join(PRECISIONS)}), got {self.peak_tflops_per_s!r}")
        peaks = {}
        for k, v in self.peak_tflops_per_s.items():
            if k not in PRECISIONS:
                raise _profile_error(where, f"peak_tflops_per_s.{k}",
                                     f"is not a precision: valid are {', '.join(PRECISIONS)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise _profile_error(where, f"peak_tflops_per_s.{k}", f"must be a number > 0, got {v!r}")
            peaks[k] = float(v)
        object.__setattr__(self, "peak_tflops_per_s", peaks)
        if not isinstance(self.price_estimate, bool):
            raise _profile_error(where, "price_estimate", f"must be true or false, got {self.price_estimate!r}")
        if self.cores is not None and (isinstance(self.cores, bool) or not isinstance(self.cores, int)
                                       or self.cores < 1):
            raise _profile_error(where, "cores", f"must be an integer >= 1, got {self.cores!r}")

    @property
    def priced(self) -> bool:
        return self.usd_per_hour is not None

    @property
    def memory_bandwidth_bytes_per_s(self) -> float | None:
        return None if self.memory_bandwidth_gb_per_s is None else self.memory_bandwidth_gb_per_s * 1e9

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gb is None else int(self.memory_gb * 1e9)

    def peak_flops_per_s(self, precision: str) -> float | None:
        """Peak FLOP/s (or OP/s for int8) at `precision`; None where the datasheet gives none (a T4 has no
        BF16 peak: nothing is filled in from FP16)."""
        v = self.peak_tflops_per_s.get(precision)
        return None if v is None else v * 1e12

    def with_price(self, usd_per_hour: float) -> HardwareProfile:
        """The same machine at a user-given price (recorded as such)."""
        return replace(self, usd_per_hour=float(usd_per_hour), price_date="given by the user",
                       price_source="--usd-per-hour")

    def to_dict(self) -> dict:
        return asdict(self)


_PROFILE_FIELDS = {f for f in HardwareProfile.__dataclass_fields__ if f != "measured_locally"}


def _profiles_from_yaml(path, text: str | None = None) -> list[HardwareProfile]:
    where = str(path)
    try:
        data = yaml.safe_load(text if text is not None else open(path).read())
    except OSError as e:
        raise LeaninferError(f"cannot read hardware profiles {where!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LeaninferError(f"hardware profiles {where!r} is not valid YAML: {e}") from None
    if isinstance(data, dict):
        data = data.get("profiles")
    if not isinstance(data, list):
        raise LeaninferError(f"hardware profiles {where!r}: expected a list under 'profiles:'")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise LeaninferError(f"hardware profiles {where!r}: entry {i} is not a mapping")
        label = f"{where}: profile {entry.get('name', f'#{i}')!r}"
        unknown = sorted(set(entry) - _PROFILE_FIELDS)
        if unknown:
            raise LeaninferError(f"{label}: unknown field {unknown[0]!r}; valid fields are "
                                 f"{', '.join(sorted(_PROFILE_FIELDS))}")
        for req in ("name", "kind"):
            if req not in entry:
                raise LeaninferError(f"{label}: field {req!r} is required")
        try:
            out.append(HardwareProfile(**entry))
        except LeaninferError as e:
            raise LeaninferError(f"{where}: {e}") from None
    return out


@functools.lru_cache(maxsize=8)
def _load_profiles_cached(user_yaml: str | None) -> tuple[HardwareProfile, ...]:
    text = resources.files("leaninfer.data").joinpath("hardware_profiles.yaml").read_text()
    profiles = {p.name: p for p in _profiles_from_yaml("leaninfer/data/hardware_profiles.yaml", text)}
    if user_yaml:
        for p in _profiles_from_yaml(user_yaml):
            profiles[p.name] = p  # a user's entry replaces a shipped one of the same name (e.g. a new price)
    return tuple(profiles.values())


def load_profiles(user_yaml=None) -> dict[str, HardwareProfile]:
    """The shipped profiles, updated by a user YAML file (same format: `profiles:` list), by name."""
    return {p.name: p for p in _load_profiles_cached(str(user_yaml) if user_yaml else None)}


def local_profile(usd_per_hour: float | None = None, memory_bandwidth_gb_per_s: float | None = None,
                  hw: LocalHardware | None = None) -> HardwareProfile:
    """This machine as a profile: detected, unpriced unless the user gives a price, bandwidth if measured."""
    hw = hw or detect_local()
    kind = "gpu" if hw.gpu_name else "cpu"
    desc = f"{hw.cpu_name}, {hw.physical_cores} cores, {hw.int8_isa}, {hw.ram_bytes / 1e9:.1f} GB RAM"
    if hw.gpu_name:
        desc += f"; GPU {hw.gpu_name}"
    mem = (hw.gpu_memory_bytes if hw.gpu_name else hw.ram_bytes) or None
    return HardwareProfile(
        name=LOCAL, kind=kind, description=desc,
        usd_per_hour=None if usd_per_hour is None else float(usd_per_hour),
        price_date="given by the user" if usd_per_hour is not None else None,
        price_source="--usd-per-hour" if usd_per_hour is not None else None,
        memory_gb=mem / 1e9 if mem else None,
        memory_bandwidth_gb_per_s=memory_bandwidth_gb_per_s,
        cores=hw.physical_cores, spec_source="detected on this machine",
        notes=None if usd_per_hour is not None else "unpriced: pass --usd-per-hour to get cost figures",
        measured_locally=True,
    )


def get_profile(name: str, user_yaml=None, usd_per_hour: float | None = None) -> HardwareProfile:
    """A profile by name ('local' is this machine); raises LeaninferError listing the valid names.

    `usd_per_hour` overrides (or, for 'local', sets) the price.
    """
    if name == LOCAL:
        return local_profile(usd_per_hour)
    profiles = load_profiles(user_yaml)
    if name not in profiles:
        raise LeaninferError(f"unknown hardware profile {name!r}; valid: {valid_list([LOCAL, *profiles])}")
    p = profiles[name]
    return p.with_price(usd_per_hour) if usd_per_hour is not None else p


def hardware_listing(user_yaml=None) -> dict:
    """What ``leaninfer hardware --json`` prints: every profile (all fields) and this machine."""
    return {"profiles": [p.to_dict() for p in load_profiles(user_yaml).values()], "local": detect_local().to_dict()}
