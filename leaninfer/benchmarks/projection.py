"""Projections of measured results to hardware that was not measured: a calibrated model, with a band.

The model (PROJECTION_MODEL), per backend and kind of device:

- **GPU targets**: step time = max(step overhead, roofline time on the target / efficiency). The step overhead
  (the eager loop's Python and kernel launches, per phase, per layer: launches scale with the layers) and the
  efficiency (the fraction of the datasheet roofline the kernels reach, per precision) are calibrated per
  workload (embedding forward; generation) from real GPU measurements recorded as data
  (``leaninfer/data/projection_calibration.yaml``). A max, not a sum: the host launches asynchronously, so a
  step takes whichever is longer, launching or computing. On the H100 the decode steps took 20-24 ms at
  every batch size from 1 to 64 (launch-bound), while prefill at batch 32-64 was compute-bound.
- **CPU targets**: the measured step time scaled by the ratio of the target's roofline to the measured
  machine's (the fraction of the roofline reached, fixed costs included, carries over between CPUs).

Every projected row carries a band (low/high): for GPUs the spread of the model's errors on its calibration
points (at least -20%/+25%), widened 1.5x each way on a GPU other than the calibration one; for CPUs 0.5x-2x
(the same variant's ratio to FP32 differs up to 2x between CPU generations, DESIGN.md). A target without a
calibration for the variant's backend, or without a peak at its precision, is not projected.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import asdict, dataclass
from importlib import resources

import yaml

from ..cost import generation_cost, usd_per_1k_tokens
from ..hardware import HardwareProfile, get_profile
from .roofline import Roofline, decode_step_cost, forward_cost, prefill_cost

PROJECTION_MODEL = ("projected by a calibrated step model: GPU step time = max(layers x step overhead per layer, roofline time / "
                    "efficiency), both "
                    "calibrated on recorded GPU measurements; CPU step time = measured time x (target roofline / "
                    "measured roofline); every row has a low/high band")
MIN_BAND = (0.8, 1.25)  # the narrowest band a GPU projection gets, whatever its calibration residuals
OTHER_GPU_WIDENING = 1.5  # calibrated on one GPU (and its host), applied to another
CPU_BAND = (0.5, 2.0)
OVERHEAD_BOUND = 0.5  # a calibration point is launch-bound when its roofline time / efficiency < 0.5 x measured


def precision_for_peak(state: str) -> str:
    """Which peak of a profile bounds a model state, e.g. ``torch:int8`` -> ``int8``."""
    p = state.split(":")[-1]
    return p if p in ("fp32", "fp16", "bf16", "int8") else ("int8" if "int" in p or "nf4" in p else "fp32")


# --------------------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class Calibration:
    """A step model for one backend, kind of device and workload, fitted to recorded measurements.

    `overhead_s_per_layer` maps a phase ('forward', 'decode', 'prefill') to (low, median, high) of its
    launch-bound steps divided by the model's layers; `efficiency` maps a precision to the best fraction of
    the roofline a point at that precision reached (a precision without points takes the lowest of the
    others); `band` is the (low, high) ratios of measured to modelled time over all points, at least MIN_BAND.
    """

    backend: str
    device_kind: str
    workload: str
    measured_on: str
    source: str
    efficiency: dict
    overhead_s_per_layer: dict
    band: tuple[float, float]

    def eff(self, precision: str) -> float:
        return self.efficiency.get(precision) or min(self.efficiency.values())

    def step_s(self, phase: str, roofline_s: float, precision: str, layers: int) -> float:
        return max(self.overhead_s_per_layer[phase][1] * layers, roofline_s / self.eff(precision))

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(entry: dict, profiles_yaml=None) -> Calibration:
    """Fit the step model to one calibration entry (see projection_calibration.yaml)."""
    prof = get_profile(entry["measured_on"], profiles_yaml)
    bw = prof.memory_bandwidth_bytes_per_s
    pts = [(p["phase"], p["precision"], max(p["bytes_per_step"] / bw,
                                            p["flops_per_step"] / prof.peak_flops_per_s(p["precision"])),
            p["measured_step_s"]) for p in entry["points"]]
    eff = {prec: min(1.0, max(roof / t for _, pr, roof, t in pts if pr == prec)) for prec in {p[1] for p in pts}}
    layers = entry["layers"]
    overhead = {}
    for phase in sorted({p[0] for p in pts}):
        bound = [t / layers for ph, pr, roof, t in pts if ph == phase and roof / eff[pr] < OVERHEAD_BOUND * t]
        overhead[phase] = (min(bound), statistics.median(bound), max(bound)) if bound else (0.0, 0.0, 0.0)
    ratios = [t / max(overhead[ph][1] * layers, roof / eff[pr]) for ph, pr, roof, t in pts]
    band = (min(min(ratios), MIN_BAND[0]), max(max(ratios), MIN_BAND[1]))
    return Calibration(entry["backend"], entry["device_kind"], entry["workload"], entry["measured_on"],
                       entry["source"], eff, overhead, band)


@functools.lru_cache(maxsize=4)
def calibrations(profiles_yaml: str | None = None) -> dict[tuple[str, str, str], Calibration]:
    """The shipped calibrations by (backend, device kind, workload)."""
    text = resources.files("leaninfer.data").joinpath("projection_calibration.yaml").read_text()
    out = {}
    for entry in yaml.safe_load(text)["calibrations"]:
        c = calibrate(entry, profiles_yaml)
        out[(c.backend, c.device_kind, c.workload)] = c
    return out


# --------------------------------------------------------------------------------------------------------
# Rooflines of measured results


def flops_per_token(model: dict) -> dict:
    """{"body", "lm_head"} FLOPs per token of a report's model entry (reports before the shape count had only
    a parameter count: 2 FLOPs per matmul parameter, all of it body)."""
    f = model.get("matmul_flops_per_token")
    return f if f else {"body": 2 * model["matmul_params"], "lm_head": 0}


def _read_bytes(v: dict) -> int:
    m = v["model"]
    lookup = m.get("lookup_only_bytes", 0)
    if m["backend"] != "torch" and lookup >= v["weight_bytes"] and m.get("matmul_params"):
        lookup = int(v["weight_bytes"] * (1 - m["matmul_params"] / max(m["num_parameters"], 1)))  # old reports
    return max(v["weight_bytes"] - lookup, 1)


def step_costs(v: dict, r: dict) -> dict:
    """(bytes, FLOPs) of each phase of a result: {'forward'} for embeddings, {'decode', 'prefill'} otherwise."""
    m, f = v["model"], flops_per_token(v["model"])
    read = _read_bytes(v)
    if r["kind"] == "embedding":
        return {"forward": forward_cost(read, f, m["shape"], r["batch_size"], r["seq_len"])}
    return {"decode": decode_step_cost(read, f, m["shape"], r["batch_size"], int(r["mean_context"]),
                                       r["kv_bytes_per_elem"]),
            "prefill": prefill_cost(read, f, m["shape"], r["batch_size"], r["prompt_tokens"])}


def measured_steps(r: dict) -> dict:
    """The measured time of each phase's step, seconds (None where there was no such step): the batch p50 or
    TTFT p50, and for decode the step the decode rate counts (batch / decode tokens/s: the median pass's mean
    step, slow steps included), so a projected rate scales the measured rate."""
    if r["kind"] == "embedding":
        return {"forward": r["latency"]["p50_ms"] / 1e3}
    dec = r.get("decode_tokens_per_s")
    return {"decode": r["batch_size"] / dec if dec else None, "prefill": r["ttft"]["p50_ms"] / 1e3}


def result_rooflines(v: dict, r: dict, bandwidth_gb: float | None, peaks: dict) -> dict[str, Roofline]:
    """The roofline of each phase of one measured result against the measured machine's bounds."""
    prec = precision_for_peak(v["model"]["state"])
    bw = bandwidth_gb * 1e9 if bandwidth_gb else None
    pf = peaks[prec] * 1e12 if peaks.get(prec) else None
    steps = measured_steps(r)
    return {ph: Roofline.of(b, f, steps[ph], bw, pf) for ph, (b, f) in step_costs(v, r).items()}


# --------------------------------------------------------------------------------------------------------
# Projection


def _target_roofline_s(b: float, f: float, prof: HardwareProfile, prec: str) -> float | None:
    bw, pf = prof.memory_bandwidth_bytes_per_s, prof.peak_flops_per_s(prec)
    if not bw or not pf:
        return None  # a missing peak stays missing: the projection would be a guess
    return max(b / bw, f / pf)


def project_steps(v: dict, r: dict, prof: HardwareProfile, calib: dict) -> dict | None:
    """{phase: (low, mid, high) step seconds on `prof`} and how they were made; None if it can't be projected."""
    m = v["model"]
    prec = precision_for_peak(m["state"])
    if prof.kind == "gpu":
        c = calib.get((m["backend"], "gpu", r["kind"]))
        if c is None or "torch-dynamic" in str(v["spec"]):
            return None  # a CPU runtime graph or torch.ao's CPU-only kernels say nothing about a GPU
        lo, hi = c.band
        if prof.name != c.measured_on:
            lo, hi = lo / OTHER_GPU_WIDENING, hi * OTHER_GPU_WIDENING
        out = {}
        for phase, (b, f) in step_costs(v, r).items():
            roof = _target_roofline_s(b, f, prof, prec)
            if roof is None:
                return None
            mid = c.step_s(phase, roof, prec, m["shape"]["layers"])
            out[phase] = (mid * lo, mid, mid * hi)
        how = f"calibrated on {c.measured_on}" + (
            "" if prof.name == c.measured_on else f", applied to {prof.name} (band widened {OTHER_GPU_WIDENING}x)")
        return {"steps": out, "calibration": how, "calibration_source": c.source}
    rooflines = r.get("rooflines") or {}
    out = {}
    for phase, (b, f) in step_costs(v, r).items():
        local = (rooflines.get(phase) or {})
        roof_local = None if local.get("bound", "unknown") == "unknown" else max(local["memory_bound_s"],
                                                                                 local["compute_bound_s"])
        roof = _target_roofline_s(b, f, prof, prec)
        t = local.get("measured_step_s")
        if roof is None or not roof_local or not t:
            if phase == "decode" and not t:
                out[phase] = None  # no decode step was measured (one output token)
                continue
            return None
        mid = t * roof / roof_local
        out[phase] = (mid * CPU_BAND[0], mid, mid * CPU_BAND[1])
    return {"steps": out, "calibration": "the measured CPU's fraction of the roofline",
            "calibration_source": "this run's measurement"}


def projections(variants: list[dict], cfg: dict, measured_on: str, priced_as: str | None) -> tuple[list, list]:
    """(rows, notes): every measured result projected to each `--project-to` profile it can run on.

    The profile the measured machine is priced as is not projected to: its name would then stand for two
    different sets of numbers.
    """
    calib = calibrations(cfg.get("profiles_yaml"))
    rows, notes = [], []
    for target in cfg.get("project_to") or []:
        if target == priced_as:
            notes.append(f"not projected to {target}: the measured machine is priced as {target}")
            continue
        prof = get_profile(target, cfg.get("profiles_yaml"))
        for v in variants:
            for r in v.get("results", []):
                p = project(v, r, prof, cfg["utilization"], measured_on, calib)
                if p:
                    rows.append(p)
    return rows, notes


def project(v: dict, r: dict, prof: HardwareProfile, utilization: float, measured_on: str = "local",
            calib: dict | None = None) -> dict | None:
    """One measured result on another machine, labelled "projected", with a low/high band (PROJECTION_MODEL)."""
    made = project_steps(v, r, prof, calibrations() if calib is None else calib)
    if made is None:
        return None
    steps = made["steps"]
    out = {"label": "projected", "model": PROJECTION_MODEL, "calibration": made["calibration"],
           "calibration_source": made["calibration_source"],
           "measured_on": measured_on, "variant": v["name"], "hardware": prof.name, "hardware_kind": prof.kind,
           "kind": r["kind"], "batch_size": r["batch_size"], "usd_per_hour": prof.usd_per_hour,
           "price_estimate": prof.price_estimate}
    price = prof.usd_per_hour if prof.priced else None
    if r["kind"] == "embedding":
        tokens = r["batch_size"] * r["seq_len"]
        lo, mid, hi = steps["forward"]
        out.update(seq_len=r["seq_len"], step_s=[lo, mid, hi], tokens_per_s=tokens / mid,
                   tokens_per_s_low=tokens / hi, tokens_per_s_high=tokens / lo, p50_ms=mid * 1e3, p95_ms=hi * 1e3)
        if price is not None:
            out.update(usd_per_1k_tokens=usd_per_1k_tokens(price, tokens / mid, utilization),
                       usd_per_1k_tokens_low=usd_per_1k_tokens(price, tokens / lo, utilization),
                       usd_per_1k_tokens_high=usd_per_1k_tokens(price, tokens / hi, utilization))
        else:
            out["usd_per_1k_tokens"] = None
        return out
    b, n_in, n_out = r["batch_size"], r["prompt_tokens"], r["gen_tokens"]
    dec, pre = steps.get("decode"), steps["prefill"]
    rate = lambda i: None if dec is None else b / dec[i]  # noqa: E731
    out.update(prompt_tokens=n_in, gen_tokens=n_out, decode_step_s=dec and list(dec), prefill_s=list(pre),
               decode_tokens_per_s=rate(1), decode_tokens_per_s_low=rate(2), decode_tokens_per_s_high=rate(0),
               input_tokens_per_s=b * n_in / pre[1], ttft_p50_ms=pre[1] * 1e3,
               p95_ms=dec[2] * 1e3 if dec else None)
    if price is None:
        out["usd_per_1k_tokens"] = None
        return out
    cost = lambda i, j: generation_cost(price, b * n_in / pre[i], rate(j), n_in, n_out, utilization)  # noqa: E731
    g = cost(1, 1)
    out.update(usd_per_1k_tokens=g.usd_per_1k_output_tokens, **g.to_dict(),
               usd_per_1k_tokens_low=cost(0, 0).usd_per_1k_output_tokens,
               usd_per_1k_tokens_high=cost(2, 2).usd_per_1k_output_tokens)
    return out
