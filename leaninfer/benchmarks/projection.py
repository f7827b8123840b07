"""The roofline of each measured result, and its projection to hardware that was not measured.

A projection keeps the fraction of the local roofline the measurement reached and applies it to the
target's bounds (see PROJECTION_MODEL). Every projected row says `"label": "projected"` and names its model.
"""

from __future__ import annotations

import json

from ..cost import generation_cost, usd_per_1k_tokens
from ..hardware import HardwareProfile, get_profile
from .measures import Roofline, decode_step_cost, forward_cost

PROJECTION_MODEL = ("roofline scaling: time on the target = max(bytes / bandwidth, FLOPs / peak) on the target, "
                    "divided by the fraction of the local roofline the measurement reached; ignores fixed "
                    "per-step overheads (Python, kernel launches), so small models are projected optimistic")


def precision_for_peak(state: str) -> str:
    """Which peak of a profile bounds a model state, e.g. ``torch:int8`` -> ``int8``."""
    p = state.split(":")[-1]
    return p if p in ("fp32", "fp16", "bf16", "int8") else ("int8" if "int" in p or "nf4" in p else "fp32")


def result_rooflines(v: dict, r: dict, bandwidth_gb: float | None, peaks: dict) -> tuple[Roofline, Roofline | None]:
    """(main, prefill) rooflines of one measured result: the forward (embeddings) or decode step, and prefill."""
    m = v["model"]
    lookup = m.get("lookup_only_bytes", 0)
    if m["backend"] != "torch" and lookup >= v["weight_bytes"]:  # reports written before the runtime-graph fix
        lookup = int(v["weight_bytes"] * (1 - m["matmul_params"] / max(m["num_parameters"], 1)))
    read_bytes = max(v["weight_bytes"] - lookup, 1)
    prec = precision_for_peak(m["state"])
    peak = peaks.get(prec) or (peaks.get("fp32") if prec == "fp32" else None)
    bw = bandwidth_gb * 1e9 if bandwidth_gb else None
    pf = peak * 1e12 if peak else None
    if r["kind"] == "embedding":
        b, f = forward_cost(read_bytes, m["matmul_params"], m["shape"], r["batch_size"], r["seq_len"])
        return Roofline.of(b, f, r["latency"]["p50_ms"] / 1e3, bw, pf), None
    b, f = decode_step_cost(read_bytes, m["matmul_params"], m["shape"], r["batch_size"], int(r["mean_context"]),
                            r["kv_bytes_per_elem"])
    itl = r["inter_token"]["p50_ms"] / 1e3 if r.get("inter_token") else float("nan")
    decode = Roofline.of(b, f, itl, bw, pf)
    pb, pfl = forward_cost(read_bytes, m["matmul_params"], m["shape"], r["batch_size"], r["prompt_tokens"])
    prefill = Roofline.of(pb, pfl, r["ttft"]["p50_ms"] / 1e3, bw, pf)
    return decode, prefill


def projections(variants: list[dict], cfg: dict) -> list[dict]:
    """Every measured result of every variant projected to each `--project-to` profile it can run on."""
    out = []
    for target in cfg.get("project_to") or []:
        prof = get_profile(target, cfg.get("profiles_yaml"))
        for v in variants:
            for r in v.get("results", []):
                p = project(v, r, prof, cfg["utilization"])
                if p:
                    out.append(p)
    return out


def project(v: dict, r: dict, prof: HardwareProfile, utilization: float) -> dict | None:
    """Scale one measured result to another machine by the roofline (see PROJECTION_MODEL)."""
    m = v["model"]
    if prof.kind == "gpu" and m["backend"] != "torch":
        return None  # a CPU runtime graph (ONNX Runtime / OpenVINO CPU) says nothing about a GPU
    if prof.kind == "gpu" and "torch-dynamic" in json.dumps(v["spec"]):
        return None  # torch.ao dynamic quantization has CPU kernels only
    roof = r["roofline"]
    measured_roof = max(x for x in (roof["memory_bound_s"], roof["compute_bound_s"], 0.0) if x is not None)
    if not measured_roof:
        return None
    efficiency = min(measured_roof / roof["measured_step_s"], 1.0)
    prec = precision_for_peak(m["state"])
    bw, pf = prof.memory_bandwidth_bytes_per_s, prof.peak_flops_per_s(prec)
    if not bw and not pf:
        return None
    t_target = max(roof["bytes_per_step"] / bw if bw else 0.0, roof["flops_per_step"] / pf if pf else 0.0)
    scale = (t_target / efficiency) / roof["measured_step_s"]  # projected time / measured time
    out = {"label": "projected", "model": "roofline scaling", "from": "measured on local", "variant": v["name"],
           "hardware": prof.name, "hardware_kind": prof.kind, "kind": r["kind"], "batch_size": r["batch_size"],
           "efficiency_measured": efficiency, "time_scale": scale, "usd_per_hour": prof.usd_per_hour}
    if r["kind"] == "embedding":
        tps = r["tokens_per_s"] / scale
        out.update(seq_len=r["seq_len"], tokens_per_s=tps, p50_ms=r["latency"]["p50_ms"] * scale,
                   p95_ms=r["latency"]["p95_ms"] * scale,
                   usd_per_1k_tokens=usd_per_1k_tokens(prof.usd_per_hour, tps, utilization) if prof.priced else None)
    else:
        pre = r.get("roofline_prefill")
        pre_scale = scale
        if pre:
            pre_roof = max(x for x in (pre["memory_bound_s"], pre["compute_bound_s"], 0.0) if x is not None)
            if pre_roof:
                pre_eff = min(pre_roof / pre["measured_step_s"], 1.0)
                pre_t = max(pre["bytes_per_step"] / bw if bw else 0.0, pre["flops_per_step"] / pf if pf else 0.0)
                pre_scale = (pre_t / pre_eff) / pre["measured_step_s"]
        dec, inp = r["decode_tokens_per_s"] / scale, r["input_tokens_per_s"] / pre_scale
        out.update(prompt_tokens=r["prompt_tokens"], gen_tokens=r["gen_tokens"], decode_tokens_per_s=dec,
                   input_tokens_per_s=inp, p95_ms=r["inter_token"]["p95_ms"] * scale if r.get("inter_token") else None,
                   ttft_p50_ms=r["ttft"]["p50_ms"] * pre_scale)
        if prof.priced:
            g = generation_cost(prof.usd_per_hour, inp, dec, r["prompt_tokens"], r["gen_tokens"], utilization)
            out.update(usd_per_1k_tokens=g.usd_per_1k_output_tokens, **g.to_dict())
        else:
            out["usd_per_1k_tokens"] = None
    return out
