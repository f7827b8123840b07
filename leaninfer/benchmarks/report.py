"""From raw child results to the report: rounds pooled, ratios to FP32, rooflines, cost; written and read back.

The JSON keeps every raw sample; each derived figure sits next to what it was derived from (throughput,
price, bytes, bandwidth), so it can be recomputed by hand. Measured and projected figures live in
separate lists (projection.py labels every projected row); advice.py picks among both, render.py writes
the Markdown.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..cost import generation_cost, usd_per_1k_tokens
from ..errors import LeaninferError
from ..hardware import LocalHardware, cpu_peak_tflops, get_profile, local_profile
from ..latency import Latency
from ..quality import Quality
from .advice import advise, run_notes
from .plots import plot_cost_curves
from .projection import PROJECTION_MODEL, projections, result_rooflines
from .render import to_markdown

SCHEMA_VERSION = 1
RANDOM_QUALITY = "n/a (random weights)"
HEADLINE = {"embedding": "usd_per_1k_tokens (all tokens embedded)",
            "generation": "usd_per_1k_output_tokens (a whole request, prefill included, per 1K output tokens; "
                          "usd_per_1k_input_tokens and usd_per_1k_decode_tokens are the two phases' rates)"}


def _key(r: dict) -> tuple:
    return (r["kind"], r["batch_size"], r.get("seq_len"), r.get("prompt_tokens"), r.get("gen_tokens"))


def pool_results(runs: list[dict]) -> list[dict]:
    """Merge the results of several measuring processes of one variant (rounds) into one set of figures."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run.get("results", []):
            groups.setdefault(_key(r), []).append(r)
    out = []
    for rs in groups.values():
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
            rates = [x for x in rates if x is not None and x == x]  # reports before gen_tokens=1 had NaN here
            ttft = Latency.from_samples(pre)
            r0.update(prefill_samples_s=pre, itl_samples_s=itl, ttft=ttft.to_dict(),
                      inter_token=Latency.from_samples(itl).to_dict() if itl else None,
                      decode_tokens_per_s_per_repeat=rates,
                      decode_tokens_per_s=statistics.median(rates) if rates else None,
                      input_tokens_per_s=r0["batch_size"] * r0["prompt_tokens"] / (ttft.p50_ms / 1e3),
                      output_tokens_per_s=statistics.median([r["output_tokens_per_s"] for r in rs]),
                      repeats=sum(r["repeats"] for r in rs))
        r0["processes"] = len(rs)
        out.append(r0)
    return sorted(out, key=lambda r: (r["batch_size"], r.get("seq_len") or 0))


def quality_summary(quality: dict | None, weights: str, is_baseline: bool) -> str:
    """What the quality column shows: the reference itself, a fidelity figure, or n/a for random weights."""
    if weights == "random":
        return RANDOM_QUALITY
    if is_baseline:
        return "reference (FP32)"
    if not quality:
        return "not evaluated"
    return Quality.from_dict(quality).summary()


def machine_name(local: dict | None) -> str:
    """The name measured rows carry: the machine that was measured, as its report recorded it."""
    if not local:
        return "local (not yet measured)"
    name = f"{local.get('cpu_name')}, {local.get('physical_cores')} cores"
    if local.get("microarchitecture"):
        name += f" ({local['microarchitecture']})"
    return f"{name}; GPU {local['gpu_name']}" if local.get("gpu_name") else name


def measured_hardware(state: dict, local: dict | None) -> dict:
    """The measured machine (as its measuring process recorded it, not the machine reading the report), the
    profile that prices it, the measured bandwidth and the peaks of the measured machine."""
    cfg = state["meta"]["config"]
    bw = state.get("bandwidth") or {}
    prof = get_profile(cfg["hardware"], cfg.get("profiles_yaml"), cfg.get("usd_per_hour"))
    local_hw = LocalHardware.from_dict(local) if local else None
    if cfg["hardware"] == "local":
        prof = local_profile(cfg.get("usd_per_hour"), bw.get("read_gb_per_s"), hw=local_hw)
    on_gpu = str(cfg.get("device", "cpu")).startswith("cuda")
    bandwidth = bw.get("read_gb_per_s") or (prof.memory_bandwidth_gb_per_s if on_gpu else None)
    peaks, peak_source = {}, None
    if on_gpu and prof.kind == "gpu" and prof.peak_tflops_per_s:
        peaks, peak_source = dict(prof.peak_tflops_per_s), f"{prof.name}: {prof.spec_source}"
    elif local and not on_gpu:
        threads = cfg.get("threads") or local["physical_cores"]
        peaks = cpu_peak_tflops(local.get("microarchitecture"), threads, local.get("cpu_mhz"))
        peak_source = (f"estimate: {threads} threads x {local.get('cpu_mhz')} MHz x FLOP/cycle of "
                       f"{local.get('microarchitecture')}" if peaks else None)
    return {
        "profile": prof.to_dict(),
        "priced": prof.priced,
        "name": machine_name(local),
        "priced_as": (cfg["hardware"] if cfg["hardware"] != "local" else
                      ("local at --usd-per-hour" if prof.priced else None)),
        "bandwidth_gb_per_s": bandwidth,
        "bandwidth_source": "measured on this machine" if bw.get("read_gb_per_s") else (
            prof.spec_source if bandwidth else None),
        "peak_tflops_per_s": peaks,
        "peak_source": peak_source or "unknown: no peak for this machine (rooflines say 'unknown')",
        "local": local,
    }


def priced(results: list[dict], usd_per_hour: float, utilization: float = 1.0) -> list[dict]:
    """A measuring process's raw results, each with its ``cost`` as the report prices it."""
    return [{**r, "cost": _cost(r["kind"], r, usd_per_hour, utilization)} for r in results]


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
            "decode_tokens_per_s": r["decode_tokens_per_s"], "usd_per_1k_tokens": g.usd_per_1k_output_tokens,
            **g.to_dict()}


def _ratio_to_fp32(r: dict, b: dict | None) -> dict | None:
    if b is None:
        return None
    if r["kind"] == "embedding":
        return {"tokens_per_s": r["tokens_per_s"] / b["tokens_per_s"],
                "p50_latency": r["latency"]["p50_ms"] / b["latency"]["p50_ms"],
                "p95_latency": r["latency"]["p95_ms"] / b["latency"]["p95_ms"]}
    dec = r["decode_tokens_per_s"] / b["decode_tokens_per_s"] if r["decode_tokens_per_s"] and \
        b["decode_tokens_per_s"] else None
    return {"decode_tokens_per_s": dec,
            "input_tokens_per_s": r["input_tokens_per_s"] / b["input_tokens_per_s"],
            "output_tokens_per_s": r["output_tokens_per_s"] / b["output_tokens_per_s"],
            "ttft": r["ttft"]["p50_ms"] / b["ttft"]["p50_ms"]}


def _variant(spec: dict, build: dict | None, runs: list[dict]) -> dict:
    """One variant's entry: its status and, once measured, its pooled figures and quality."""
    name = spec["name"]
    is_base = not spec["steps"] and not spec["artifact"] and name == "fp32"
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
                 memory=_memory(ok_runs),
                 threads=r0["threads"], load_s=r0["load_s"], notes=r0.get("notes", []) + (build or {}).get("notes", []),
                 results=pool_results(ok_runs), processes=[r.get("pid") for r in ok_runs])
        v["quality_summary"] = quality_summary(quality, m["weights"], is_base)
        if any(r.get("status") != "ok" for r in runs):
            v["error"] = next(r.get("error") for r in runs if r.get("status") != "ok")
    return v


def _memory(runs: list[dict]) -> dict:
    """The memory split, median over the measuring processes (see the worker: baseline, model, peak)."""
    mems = [r.get("memory") or {"model_rss_bytes": r.get("rss_after_load_bytes"),  # reports before the split
                                 "peak_above_baseline_rss_bytes": r.get("peak_rss_bytes")} for r in runs]
    keys = [k for k in mems[0] if k != "note"]
    out = {k: _median([m.get(k) for m in mems]) for k in keys}
    out["note"] = mems[0].get("note")
    return out


def build_report(state: dict) -> dict:
    """The report of a run's state (what the children wrote so far): valid at every point of the run."""
    meta, cfg = state["meta"], state["meta"]["config"]
    runs_by_variant = state.get("measures", {})
    first_ok = next((r for runs in runs_by_variant.values() for r in runs if r.get("status") == "ok"), None)
    local = first_ok["hardware"] if first_ok else None
    hw = measured_hardware(state, local)
    price = hw["profile"]["usd_per_hour"]
    variants = [_variant(spec, state.get("builds", {}).get(spec["name"]), runs_by_variant.get(spec["name"], []))
                for spec in meta["variants"]]

    base = next((v for v in variants if v["is_baseline"] and v.get("results")), None)
    base_by_key = {_key(r): r for r in (base or {}).get("results", [])}
    stat_notes = []
    for v in variants:
        for r in v.get("results", []):
            r["ratio_to_fp32"] = _ratio_to_fp32(r, base_by_key.get(_key(r)))
            roofs = result_rooflines(v, r, hw["bandwidth_gb_per_s"], hw["peak_tflops_per_s"])
            r["rooflines"] = {ph: rf.to_dict() for ph, rf in roofs.items()}
            r["roofline"] = r["rooflines"]["forward" if r["kind"] == "embedding" else "decode"]
            r["cost"] = _cost(r["kind"], r, price, cfg["utilization"])
            stat_notes += _few_samples(v["name"], r)
    projected, projection_notes = projections(variants, cfg, hw["name"], hw["priced_as"])

    report = {
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "headline_cost": HEADLINE,
        "hardware": hw,
        "bandwidth": state.get("bandwidth"),
        "library_versions": first_ok["library_versions"] if first_ok else None,
        "threads": cfg.get("threads"),
        "variants": variants,
        "projections": projected,
        "projection_model": PROJECTION_MODEL,
        "notes": run_notes(hw, variants) + projection_notes + stat_notes,
    }
    report["advice"] = advise(report)
    return report


def _few_samples(name: str, r: dict) -> list[str]:
    """A note for each percentile of a result that rests on fewer than 10 samples."""
    stats = {"latency": r.get("latency"), "TTFT": r.get("ttft"), "inter-token latency": r.get("inter_token")}
    out = []
    for what, d in stats.items():
        if d and d.get("n"):
            w = Latency(**{k: d.get(k) for k in Latency.__dataclass_fields__}).warning(what)
            if w:
                out.append(f"{name} at batch {r['batch_size']}: {w}")
    return out


def _strip(d):
    return None if d is None else {k: v for k, v in d.items() if k != "traceback"}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def write_report(report: dict, out_dir: str | Path) -> dict:
    """report.json (everything, raw samples included), report.md, and the plots. Atomic per file."""
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
