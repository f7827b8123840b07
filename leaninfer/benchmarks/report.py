"""From raw child results to the report: ratios to FP32, cost, roofline, projections, advice; JSON + Markdown.

The JSON keeps every raw sample; each derived figure sits next to what it was derived from (throughput,
price, bytes, bandwidth), so it can be recomputed by hand. Measured and projected figures live in
separate lists and every projected row says `"label": "projected"` and the model that produced it.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..cost import generation_cost, usd_per_1k_tokens
from .measures import Latency, Roofline, decode_step_cost, estimate_cpu_peak_tflops, forward_cost

SCHEMA_VERSION = 1
RANDOM_QUALITY = "n/a (random weights)"
PROJECTION_MODEL = ("roofline scaling: time on the target = max(bytes / bandwidth, FLOPs / peak) on the target, "
                    "divided by the fraction of the local roofline the measurement reached; ignores fixed "
                    "per-step overheads (Python, kernel launches), so small models are projected optimistic")
HEADLINE = {"embedding": "usd_per_1k_tokens (all tokens embedded)",
            "generation": "usd_per_1k_output_tokens (decode time only; input tokens are priced separately)"}


# --------------------------------------------------------------------------------------------------------
# Pooling rounds


def _pool_results(runs: list[dict]) -> list[dict]:
    """Merge the results of several measuring processes of one variant (rounds) into one set of figures."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run.get("results", []):
            key = (r["kind"], r["batch_size"], r.get("seq_len"), r.get("prompt_tokens"), r.get("gen_tokens"))
            groups.setdefault(key, []).append(r)
    out = []
    for (_kind, *_), rs in groups.items():
        r0 = dict(rs[0])
        if r0["kind"] == "embedding":
            samples = [s for r in rs for s in r["samples_s"]]
            lat = Latency.from_samples(samples)
            r0.update(samples_s=samples, latency=lat.to_dict(), tokens_per_s=r0["tokens_per_batch"] / (lat.p50_ms / 1e3),
                      sequences_per_s=r0["batch_size"] / (lat.p50_ms / 1e3))
        else:
            pre = [s for r in rs for s in r["prefill_samples_s"]]
            itl = [s for r in rs for s in r["itl_samples_s"]]
            rates = [x for r in rs for x in r["decode_tokens_per_s_per_repeat"]]
            ttft = Latency.from_samples(pre)
            r0.update(prefill_samples_s=pre, itl_samples_s=itl, ttft=ttft.to_dict(),
                      inter_token=Latency.from_samples(itl).to_dict() if itl else None,
                      decode_tokens_per_s_per_repeat=rates, decode_tokens_per_s=statistics.median(rates),
                      input_tokens_per_s=r0["batch_size"] * r0["prompt_tokens"] / (ttft.p50_ms / 1e3),
                      output_tokens_per_s=statistics.median([r["output_tokens_per_s"] for r in rs]),
                      repeats=sum(r["repeats"] for r in rs))
        r0["processes"] = len(rs)
        out.append(r0)
    return sorted(out, key=lambda r: (r["batch_size"], r.get("seq_len") or 0))


def _key(r: dict) -> tuple:
    return (r["kind"], r["batch_size"], r.get("seq_len"), r.get("prompt_tokens"), r.get("gen_tokens"))


# --------------------------------------------------------------------------------------------------------
# Quality


def quality_summary(quality: dict | None, weights: str, is_baseline: bool) -> dict:
    """What the quality column shows: the reference itself, a fidelity figure, or n/a for random weights."""
    if weights == "random":
        return {"text": RANDOM_QUALITY, "ok_for_floors": None}
    if is_baseline:
        return {"text": "reference (FP32)", "ok_for_floors": True}
    if not quality:
        return {"text": "not evaluated", "ok_for_floors": None}
    parts = []
    if isinstance(quality.get("mean_cosine_to_reference"), float):
        parts.append(f"cosine {quality['mean_cosine_to_reference']:.4f}")
    if isinstance(quality.get("sts_drop_pts"), float):
        parts.append(f"STS {-quality['sts_drop_pts']:+.2f} pts")
    if isinstance(quality.get("perplexity_increase_pct"), float):
        parts.append(f"ppl {quality['perplexity_increase_pct']:+.2f}%")
    if isinstance(quality.get("top1_agreement"), float) and not parts:
        parts.append(f"top-1 agree {quality['top1_agreement']:.3f}")
    return {"text": ", ".join(parts) or "evaluated", "ok_for_floors": True}


def meets_floors(variant: dict, cfg: dict) -> tuple[bool | None, str]:
    """(passes, why) for the quality floors of the run; None when quality can't be known (random weights)."""
    if variant["is_baseline"]:
        return True, "the FP32 reference"
    if variant["weights"] == "random":
        return None, "quality not measurable (random weights)"
    q = variant.get("quality") or {}
    checks = [("mean_cosine_to_reference", cfg.get("min_cosine"), lambda v, f: v >= f, "min_cosine"),
              ("sts_drop_pts", cfg.get("max_sts_drop"), lambda v, f: v <= f, "max_sts_drop"),
              ("perplexity_increase_pct", cfg.get("max_ppl_increase_pct"), lambda v, f: v <= f,
               "max_ppl_increase_pct")]
    for key, floor, ok, name in checks:
        if floor is None:
            continue
        v = q.get(key)
        if not isinstance(v, (int, float)):
            return False, f"{key} not measured, floor {name}={floor}"
        if not ok(v, floor):
            return False, f"{key}={v:.4f} misses {name}={floor}"
    return True, "meets the quality floors" if any(c[1] is not None for c in checks) else "no quality floor given"


# --------------------------------------------------------------------------------------------------------
# Hardware context


def measured_hardware(state: dict, local: dict | None) -> dict:
    """The profile the measurement is priced with, plus the measured bandwidth and estimated peaks."""
    from ..hardware import get_profile, local_profile

    cfg = state["meta"]["config"]
    bw = state.get("bandwidth") or {}
    prof = get_profile(cfg["hardware"], cfg.get("profiles_yaml"), cfg.get("usd_per_hour"))
    if cfg["hardware"] == "local":
        prof = local_profile(cfg.get("usd_per_hour"), bw.get("read_gb_per_s"))
    bandwidth = bw.get("read_gb_per_s") or prof.memory_bandwidth_gb_per_s
    from .measures import cpu_mhz

    peaks, peak_source = dict(prof.peak_tflops_per_s), prof.spec_source
    if not peaks and local and not str(cfg.get("device", "cpu")).startswith("cuda"):
        peaks = estimate_cpu_peak_tflops(local.get("isa", ()), cfg.get("threads") or local["physical_cores"], cpu_mhz())
        peak_source = "estimate: threads x clock x FLOP/cycle of the ISA"
    return {
        "profile": prof.to_dict(),
        "priced": prof.priced,
        "name": cfg["hardware"],
        "priced_as": cfg["hardware"] if cfg["hardware"] != "local" else ("local at --usd-per-hour" if prof.priced else None),
        "bandwidth_gb_per_s": bandwidth,
        "bandwidth_source": "measured on this machine" if bw.get("read_gb_per_s") else prof.spec_source,
        "peak_tflops_per_s": peaks,
        "peak_source": peak_source,
        "local": local,
    }


def _precision_for_peak(state_str: str) -> str:
    p = state_str.split(":")[-1]
    return p if p in ("fp32", "fp16", "bf16", "int8") else ("int8" if "int" in p or "nf4" in p else "fp32")


def _roofline(v: dict, r: dict, bandwidth_gb: float | None, peaks: dict) -> tuple[Roofline, Roofline | None]:
    m = v["model"]
    lookup = m.get("lookup_only_bytes", 0)
    if m["backend"] != "torch" and lookup >= v["weight_bytes"]:  # reports written before the runtime-graph fix
        lookup = int(v["weight_bytes"] * (1 - m["matmul_params"] / max(m["num_parameters"], 1)))
    read_bytes = max(v["weight_bytes"] - lookup, 1)
    prec = _precision_for_peak(m["state"])
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


def _cost(kind: str, r: dict, usd_per_hour: float | None, utilization: float) -> dict | None:
    if usd_per_hour is None:
        return None
    if kind == "embedding":
        return {"usd_per_hour": usd_per_hour, "utilization": utilization, "tokens_per_s": r["tokens_per_s"],
                "usd_per_1k_tokens": usd_per_1k_tokens(usd_per_hour, r["tokens_per_s"], utilization),
                "usd_per_1k_requests": usd_per_1k_tokens(usd_per_hour, r["sequences_per_s"], utilization)}
    g = generation_cost(usd_per_hour, r["input_tokens_per_s"], r["decode_tokens_per_s"], r["prompt_tokens"],
                        r["gen_tokens"], utilization)
    return {"usd_per_hour": usd_per_hour, "utilization": utilization, "input_tokens_per_s": r["input_tokens_per_s"],
            "output_tokens_per_s": r["decode_tokens_per_s"], "usd_per_1k_tokens": g.usd_per_1k_output_tokens,
            **g.to_dict()}


# --------------------------------------------------------------------------------------------------------
# Building the report


def build_report(state: dict) -> dict:
    from ..hardware import get_profile

    meta, cfg = state["meta"], state["meta"]["config"]
    runs_by_variant = state.get("measures", {})
    first_ok = next((r for runs in runs_by_variant.values() for r in runs if r.get("status") == "ok"), None)
    local = first_ok["hardware"] if first_ok else None
    hw = measured_hardware(state, local)
    price = hw["profile"]["usd_per_hour"]
    variants = []
    for spec in meta["variants"]:
        name = spec["name"]
        is_base = not spec["steps"] and not spec["artifact"] and name == "fp32"
        build = state.get("builds", {}).get(name)
        runs = runs_by_variant.get(name, [])
        ok_runs = [r for r in runs if r.get("status") == "ok"]
        v = {"name": name, "spec": spec, "is_baseline": is_base, "build": _strip(build)}
        if build and build.get("status") != "ok":
            v.update(status="failed", error=f"build: {build.get('error')}")
        elif not runs:
            v.update(status="pending")
        elif not ok_runs:
            v.update(status="failed", error=runs[-1].get("error"))
        else:
            r0 = ok_runs[0]
            m = r0["model"]
            quality = (build or {}).get("quality") or ((r0.get("model") or {}).get("manifest_quality"))
            v.update(status="ok" if len(ok_runs) == len(runs) else "partial", model=m, weights=m["weights"],
                     quality=quality, weight_bytes=r0["weight_bytes"], size_on_disk_bytes=r0.get("size_on_disk_bytes"),
                     peak_rss_bytes=_median([r.get("peak_rss_bytes") for r in ok_runs]),
                     rss_after_load_bytes=_median([r.get("rss_after_load_bytes") for r in ok_runs]),
                     cuda_max_memory_allocated_bytes=r0.get("cuda_max_memory_allocated_bytes"),
                     threads=r0["threads"], load_s=r0["load_s"], notes=r0.get("notes", []) + (build or {}).get("notes", []),
                     results=_pool_results(ok_runs), processes=[r.get("pid") for r in ok_runs])
            v["quality_summary"] = quality_summary(quality, m["weights"], is_base)["text"]
            if any(r.get("status") != "ok" for r in runs):
                v["error"] = next(r.get("error") for r in runs if r.get("status") != "ok")
        variants.append(v)

    base = next((v for v in variants if v["is_baseline"] and v.get("results")), None)
    base_by_key = {_key(r): r for r in (base or {}).get("results", [])}
    for v in variants:
        for r in v.get("results", []):
            b = base_by_key.get(_key(r))
            if r["kind"] == "embedding":
                r["ratio_to_fp32"] = None if b is None else {
                    "tokens_per_s": r["tokens_per_s"] / b["tokens_per_s"],
                    "p50_latency": r["latency"]["p50_ms"] / b["latency"]["p50_ms"],
                    "p95_latency": r["latency"]["p95_ms"] / b["latency"]["p95_ms"]}
            else:
                r["ratio_to_fp32"] = None if b is None else {
                    "decode_tokens_per_s": r["decode_tokens_per_s"] / b["decode_tokens_per_s"],
                    "input_tokens_per_s": r["input_tokens_per_s"] / b["input_tokens_per_s"],
                    "output_tokens_per_s": r["output_tokens_per_s"] / b["output_tokens_per_s"],
                    "ttft": r["ttft"]["p50_ms"] / b["ttft"]["p50_ms"]}
            main, prefill = _roofline(v, r, hw["bandwidth_gb_per_s"], hw["peak_tflops_per_s"])
            r["roofline"] = main.to_dict()
            if prefill is not None:
                r["roofline_prefill"] = prefill.to_dict()
            r["cost"] = _cost(r["kind"], r, price, cfg["utilization"])

    projections = []
    for target in cfg.get("project_to") or []:
        prof = get_profile(target, cfg.get("profiles_yaml"))
        for v in variants:
            for r in v.get("results", []):
                p = _project(v, r, prof, cfg["utilization"])
                if p:
                    projections.append(p)

    report = {
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "headline_cost": HEADLINE,
        "hardware": hw,
        "bandwidth": state.get("bandwidth"),
        "library_versions": first_ok["library_versions"] if first_ok else None,
        "threads": cfg.get("threads"),
        "variants": variants,
        "projections": projections,
        "projection_model": PROJECTION_MODEL,
        "notes": _run_notes(hw, variants),
    }
    report["advice"] = advise(report)
    return report


def _strip(d):
    return None if d is None else {k: v for k, v in d.items() if k != "traceback"}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _run_notes(hw: dict, variants: list[dict]) -> list[str]:
    notes = []
    if not hw["priced"]:
        notes.append("the measured machine is unpriced: cost figures are left out for it. Pass --usd-per-hour, "
                     "or --hardware PROFILE to price it as a known instance.")
    for v in variants:
        if v.get("status") == "ok" and not v["is_baseline"]:
            slower = [r for r in v["results"] if r.get("ratio_to_fp32") and
                      next(iter(r["ratio_to_fp32"].values())) < 0.95]
            if slower:
                notes.append(f"{v['name']} is slower than FP32 at batch {', '.join(str(r['batch_size']) for r in slower)}"
                             f"{_why_slower(v, hw)}")
    return notes


def _why_slower(v: dict, hw: dict) -> str:
    state = v["model"]["state"]
    isa = set((hw.get("local") or {}).get("isa", ()))
    if state.endswith(":fp16") and hw["profile"]["kind"] == "cpu" and "avx512_fp16" not in isa:
        return ": this CPU has no native FP16 arithmetic, so FP16 matmuls are emulated or converted"
    if state.endswith(":bf16") and hw["profile"]["kind"] == "cpu" and not isa & {"avx512_bf16", "amx_bf16"}:
        return ": this CPU has no native BF16 arithmetic"
    if "bnb" in json.dumps(v["spec"]):
        return ": bitsandbytes dequantizes weights on the fly; it saves memory, not time"
    if state.endswith(":int8"):
        return (": the INT8 kernels' quantize/dequantize overhead outweighs the smaller weights at this size "
                "(small batches of a small model are not bandwidth-bound)")
    return ""


def _project(v: dict, r: dict, prof, utilization: float) -> dict | None:
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
    prec = _precision_for_peak(m["state"])
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


# --------------------------------------------------------------------------------------------------------
# Advice


def options(report: dict) -> list[dict]:
    """Every (variant, hardware, batch size) with a price: measured rows and projected rows, labelled."""
    hw = report["hardware"]
    out = []
    measured_name = hw.get("name") or "local"
    for v in report["variants"]:
        for r in v.get("results", []):
            if not r.get("cost"):
                continue
            p95 = r["latency"]["p95_ms"] if r["kind"] == "embedding" else (r.get("inter_token") or {}).get("p95_ms")
            out.append({"variant": v["name"], "hardware": measured_name, "label": "measured", "kind": r["kind"],
                        "batch_size": r["batch_size"], "p95_ms": p95, "usd_per_1k_tokens": r["cost"]["usd_per_1k_tokens"],
                        "tokens_per_s": r["tokens_per_s"] if r["kind"] == "embedding" else r["decode_tokens_per_s"],
                        "input_tokens_per_s": r.get("input_tokens_per_s") or r.get("tokens_per_s"),
                        "output_tokens_per_s": r.get("decode_tokens_per_s"),
                        "usd_per_hour": r["cost"]["usd_per_hour"]})
    for p in report["projections"]:
        if p.get("usd_per_1k_tokens") is None:
            continue
        out.append({"variant": p["variant"], "hardware": p["hardware"], "label": "projected", "kind": p["kind"],
                    "batch_size": p["batch_size"], "p95_ms": p["p95_ms"], "usd_per_1k_tokens": p["usd_per_1k_tokens"],
                    "tokens_per_s": p.get("tokens_per_s") or p.get("decode_tokens_per_s"),
                    "input_tokens_per_s": p.get("input_tokens_per_s") or p.get("tokens_per_s"),
                    "output_tokens_per_s": p.get("decode_tokens_per_s"), "usd_per_hour": p["usd_per_hour"]})
    return out


def advise(report: dict) -> dict:
    """The cheapest (variant, hardware, batch size) meeting the quality floors and --max-p95-ms, and the runner-up.

    The latency objective applies to the p95 batch latency (embeddings) or the p95 inter-token latency
    (generation). Random-weight variants can't be checked against a quality floor; they stay eligible and
    the advice says so.
    """
    cfg = report["meta"]["config"]
    by_name = {v["name"]: v for v in report["variants"] if v.get("status") in ("ok", "partial")}
    max_p95 = cfg.get("max_p95_ms")
    eligible, excluded = [], {"quality": 0, "latency": 0}
    for o in options(report):
        v = by_name.get(o["variant"])
        if v is None:
            continue
        ok, why = meets_floors(v, cfg)
        if ok is False:
            excluded["quality"] += 1
            continue
        if max_p95 is not None and (o["p95_ms"] is None or o["p95_ms"] > max_p95):
            excluded["latency"] += 1
            continue
        eligible.append({**o, "quality": why})
    eligible.sort(key=lambda o: o["usd_per_1k_tokens"])
    criteria = {"max_p95_ms": max_p95, "min_cosine": cfg.get("min_cosine"), "max_sts_drop": cfg.get("max_sts_drop"),
                "max_ppl_increase_pct": cfg.get("max_ppl_increase_pct")}
    if not eligible:
        return {"criteria": criteria, "cheapest": None, "runner_up": None, "excluded": excluded,
                "text": "no priced option meets the criteria" + (
                    "" if report["hardware"]["priced"] or report["projections"] else
                    " (the measured machine is unpriced and nothing was projected: pass --usd-per-hour, "
                    "--hardware PROFILE or --project-to PROFILES)")}
    best = eligible[0]
    # The runner-up is a different choice, not the same option at another batch size.
    runner = next((o for o in eligible[1:] if (o["variant"], o["hardware"]) != (best["variant"], best["hardware"])), None)
    text = f"cheapest: {_option_text(best)}"
    if runner:
        text += f"; runner-up: {_option_text(runner)}"
    return {"criteria": criteria, "cheapest": best, "runner_up": runner, "excluded": excluded,
            "considered": len(eligible), "text": text}


def _option_text(o: dict) -> str:
    return (f"{o['variant']} on {o['hardware']} ({o['label']}) at batch {o['batch_size']}: "
            f"${o['usd_per_1k_tokens']:.3g} per 1K tokens, p95 {o['p95_ms']:.1f} ms")


# --------------------------------------------------------------------------------------------------------
# Writing


def write_report(report: dict, out_dir: str | Path) -> dict:
    """report.json (everything, raw samples included), report.md, and the plots. Atomic per file."""
    from .plots import plot_cost_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        report["plots"] = plot_cost_curves(report, out)
    except Exception as e:  # a plotting failure must not lose the measurements
        report["plots"] = []
        report.setdefault("notes", []).append(f"plots failed: {type(e).__name__}: {e}")
    _atomic_write(out / "report.json", json.dumps(report, indent=1, default=_json_default))
    _atomic_write(out / "report.md", to_markdown(report))
    return report


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_report(path: str | Path) -> dict:
    from ..errors import LeaninferError

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        report = json.loads(p.read_text())
    except OSError:
        raise LeaninferError(f"no benchmark report at {str(path)!r} (expected a report.json or its folder)") from None
    except json.JSONDecodeError as e:
        raise LeaninferError(f"{str(p)!r} is not valid JSON: {e}") from None
    if report.get("schema_version") != SCHEMA_VERSION:
        raise LeaninferError(f"{str(p)!r} is not a leaninfer benchmark report (schema_version "
                             f"{report.get('schema_version')!r}, expected {SCHEMA_VERSION})")
    return report


def _fmt(x, spec=".1f", none="–"):
    return none if x is None else format(x, spec)


def to_markdown(report: dict) -> str:
    meta, hw, cfg = report["meta"], report["hardware"], report["meta"]["config"]
    local = hw.get("local") or {}
    lines = [f"# leaninfer bench: {cfg['model']}", ""]
    lines.append(f"- command: `{meta['command']}`")
    lines.append(f"- started {meta['started']}, " + (f"finished {meta['finished']}" if meta.get("finished")
                                                        else "**partial: the run did not finish**"))
    if local:
        lines.append(f"- measured on: {local.get('cpu_name')} ({local.get('physical_cores')} cores, INT8 path "
                     f"{local.get('int8_isa')}, ISA {' '.join(local.get('isa', []))})"
                     + (f", GPU {local['gpu_name']}" if local.get("gpu_name") else "")
                     + f", {report['threads']} threads")
    bw = report.get("bandwidth") or {}
    if bw:
        lines.append(f"- memory bandwidth (measured): read {bw['read_gb_per_s']:.1f} GB/s, copy {bw['copy_gb_per_s']:.1f} GB/s")
    peaks = hw.get("peak_tflops_per_s") or {}
    if peaks:
        lines.append(f"- peak compute ({hw.get('peak_source')}): " + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in peaks.items()))
    prof = hw["profile"]
    lines.append("- price: " + (f"${prof['usd_per_hour']}/h ({hw['priced_as']}; {prof.get('price_source')}, "
                                 f"{prof.get('price_date')}), utilization {cfg['utilization']}" if hw["priced"]
                                 else "unpriced (pass --usd-per-hour or --hardware PROFILE)"))
    lv = report.get("library_versions") or {}
    if lv:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in lv.items()))
    lines.append("- each variant: its own fresh process, warm-up, then repeats; medians and p95 of all samples"
                 + (f" pooled over {cfg['rounds']} interleaved rounds" if cfg.get("rounds", 1) > 1 else ""))
    lines.append("")
    emb = [(v, r) for v in report["variants"] for r in v.get("results", []) if r["kind"] == "embedding"]
    gen = [(v, r) for v in report["variants"] for r in v.get("results", []) if r["kind"] == "generation"]
    cost_col = f"$/1K tok ({hw['name']})" if hw["priced"] else "$/1K tok"
    if emb:
        lines += ["## Embeddings", "",
                  f"| variant | batch | seq | p50 ms | p95 ms | tokens/s | seq/s | × FP32 | quality vs FP32 | weights MB "
                  f"| peak RSS MB | {cost_col} | % mem bound | % compute bound |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for v, r in emb:
            ratio = (r.get("ratio_to_fp32") or {}).get("tokens_per_s")
            rf = r["roofline"]
            lines.append(
                f"| {v['name']} | {r['batch_size']} | {r['seq_len']} | {r['latency']['p50_ms']:.2f} | {r['latency']['p95_ms']:.2f} "
                f"| {r['tokens_per_s']:,.0f} | {r['sequences_per_s']:,.1f} | {_fmt(ratio, '.2f')}× | {v['quality_summary']} "
                f"| {v['weight_bytes'] / 1e6:.1f} | {_fmt(v['peak_rss_bytes'] and v['peak_rss_bytes'] / 1e6)} "
                f"| {_fmt(r['cost'] and r['cost']['usd_per_1k_tokens'], '.3g')} "
                f"| {_fmt(rf['fraction_of_memory_bound'] and 100 * rf['fraction_of_memory_bound'])} "
                f"| {_fmt(rf['fraction_of_compute_bound'] and 100 * rf['fraction_of_compute_bound'])} |")
        lines.append("")
    if gen:
        lines += ["## Generation (greedy, KV cache)", "",
                  "| variant | batch | prompt | new | TTFT p50 ms | ITL p50 ms | ITL p95 ms | decode tok/s | × FP32 "
                  "| input tok/s | quality vs FP32 | weights MB | peak RSS MB | $/1K out tok | $/1K in tok | % mem bound (decode) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for v, r in gen:
            ratio = (r.get("ratio_to_fp32") or {}).get("decode_tokens_per_s")
            it = r.get("inter_token") or {}
            c = r.get("cost") or {}
            rf = r["roofline"]
            lines.append(
                f"| {v['name']} | {r['batch_size']} | {r['prompt_tokens']} | {r['gen_tokens']} | {r['ttft']['p50_ms']:.1f} "
                f"| {_fmt(it.get('p50_ms'), '.2f')} | {_fmt(it.get('p95_ms'), '.2f')} | {r['decode_tokens_per_s']:,.1f} "
                f"| {_fmt(ratio, '.2f')}× | {r['input_tokens_per_s']:,.0f} | {v['quality_summary']} "
                f"| {v['weight_bytes'] / 1e6:.1f} | {_fmt(v['peak_rss_bytes'] and v['peak_rss_bytes'] / 1e6)} "
                f"| {_fmt(c.get('usd_per_1k_output_tokens'), '.3g')} | {_fmt(c.get('usd_per_1k_input_tokens'), '.3g')} "
                f"| {_fmt(rf['fraction_of_memory_bound'] and 100 * rf['fraction_of_memory_bound'])} |")
        lines.append("")
    other = [v for v in report["variants"] if v.get("status") not in ("ok",)]
    if other:
        lines += ["## Not measured", ""]
        for v in other:
            lines.append(f"- {v['name']}: {v.get('status')}" + (f" ({v['error']})" if v.get("error") else ""))
        lines.append("")
    if report["projections"]:
        lines += ["## Projected to other hardware (not measured)", "", f"Model: {report['projection_model']}.", "",
                  "| variant | hardware | batch | label | tokens/s | p95 ms | $/1K tok |", "|---|---|---:|---|---:|---:|---:|"]
        for p in report["projections"]:
            tps = p.get("tokens_per_s") or p.get("decode_tokens_per_s")
            lines.append(f"| {p['variant']} | {p['hardware']} | {p['batch_size']} | projected | {tps:,.0f} "
                         f"| {_fmt(p['p95_ms'], '.2f')} | {_fmt(p['usd_per_1k_tokens'], '.3g')} |")
        lines.append("")
    lines += ["## Advice", "", report["advice"]["text"], ""]
    for n in report.get("notes", []):
        lines.append(f"- note: {n}")
    for v in report["variants"]:
        for n in v.get("notes") or []:
            lines.append(f"- {v['name']}: {n}")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]]
    return "\n".join(lines) + "\n"
