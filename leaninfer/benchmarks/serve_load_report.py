"""The serve-under-load report: from raw levels (every request's sample, /metrics before and after) to figures.

Per level: TTFT / ITL / e2e distributions (n, p50/p95/p99), goodput under the stated SLO, utilization (engine
busy seconds over the level's wall time), and two costs per 1K tokens, never mixed:

- **metered**: the server's own meter, the rise of ``leaninfer_cost_usd_total`` over the level (the sum of the
  responses' ``usage.leaninfer.cost_usd``: busy time x price) / tokens x 1000. Idle time is not in it.
- **all-in**: the level's wall time x $/hour / tokens x 1000: the machine paid for the whole time, idle included.

Tokens are what the responses' ``usage`` says: input tokens for embeddings, output tokens for generation (a
whole request per 1K output tokens, prefill included, as the offline bench's headline). At saturation (the
highest concurrency, = the server's max batch size) the metered figure is set against the offline bench's at
that batch size. A ``guidellm`` block per level carries GuideLLM's metric names (``requests_per_second``,
``request_latency`` in seconds, ``time_to_first_token_ms``, ``inter_token_latency_ms``, ...), each a
distribution over the successful requests, so results can be compared with GuideLLM's.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from ..latency import Latency
from .plots import cost_under_load_figure

AGREEMENT = 0.15  # the check: served $/1K at saturation within 15% of the offline bench
DEFAULT_SLO = {"embeddings": {"slo_e2e_ms": 250.0, "slo_ttft_ms": None},
               "completions": {"slo_e2e_ms": 5000.0, "slo_ttft_ms": 1000.0}}


def slo_of(group: dict) -> dict:
    d = DEFAULT_SLO.get(group["endpoint"], DEFAULT_SLO["completions"])
    return {k: group.get(k) if group.get(k) is not None else v for k, v in d.items()}


def meets_slo(sample: dict, slo: dict) -> bool:
    if slo.get("slo_e2e_ms") is not None and 1000 * (sample["end"] - sample["start"]) > slo["slo_e2e_ms"]:
        return False
    if slo.get("slo_ttft_ms") is not None and (sample["ttft_s"] is None or 1000 * sample["ttft_s"] > slo["slo_ttft_ms"]):
        return False
    return True


def distribution(values) -> dict:
    """GuideLLM's DistributionSummary fields (a subset) over ``values``."""
    xs = [float(x) for x in values]
    if not xs:
        return {"count": 0}
    return {"count": len(xs), "mean": statistics.fmean(xs), "median": statistics.median(xs),
            "std_dev": statistics.pstdev(xs), "min": min(xs), "max": max(xs), "total_sum": sum(xs),
            "percentiles": {f"p{q}": float(np.percentile(xs, q)) for q in (50, 90, 95, 99)}}


def guidellm_fields(ok: list[dict], errors: int, duration_s: float) -> dict:
    """Per-request metrics under GuideLLM's names (its ``GenerativeMetrics``), successful requests only."""
    lat = [s["end"] - s["start"] for s in ok]
    gen = [s for s in ok if s["ttft_s"] is not None]

    def status(values):
        return {"successful": distribution(values), "errored": {"count": errors}}

    return {
        "requests_per_second": {"successful": {"mean": len(ok) / duration_s, "count": len(ok)},
                                "errored": {"count": errors}},
        "request_concurrency": {"successful": {"mean": sum(lat) / duration_s}},  # Little's law over the level
        "request_latency": status(lat),
        "prompt_token_count": status(s["input_tokens"] for s in ok),
        "output_token_count": status(s["output_tokens"] for s in ok),
        "time_to_first_token_ms": status(1000 * s["ttft_s"] for s in gen),
        "inter_token_latency_ms": status(1000 * sum(s["itl_s"]) / (s["output_tokens"] - 1)
                                         for s in gen if s["output_tokens"] > 1),
        "time_per_output_token_ms": status(1000 * sum(s["itl_s"]) / s["output_tokens"]
                                           for s in gen if s["output_tokens"] > 0),
        "output_tokens_per_second": status(s["output_tokens"] / (s["end"] - s["start"]) for s in gen),
        "tokens_per_second": status((s["input_tokens"] + s["output_tokens"]) / (s["end"] - s["start"]) for s in ok),
    }


def level_summary(raw: dict, endpoint: str, usd_per_hour: float, slo: dict) -> dict:
    """One level's figures, every one recomputable from ``raw`` (its samples and /metrics readings)."""
    ok = [s for s in raw["samples"] if s["ok"]]
    errors = len(raw["samples"]) - len(ok)
    dur = raw["duration_s"]
    before, after = raw["metrics_before"], raw["metrics_after"]

    def delta(name):
        return after[name] - before[name]

    in_tok, out_tok = sum(s["input_tokens"] for s in ok), sum(s["output_tokens"] for s in ok)
    tokens = in_tok if endpoint == "embeddings" else out_tok
    cost, busy = delta("leaninfer_cost_usd_total"), delta("leaninfer_engine_busy_seconds_total")
    good = [s for s in ok if meets_slo(s, slo)]
    e2e = Latency.from_samples(s["end"] - s["start"] for s in ok)
    ttft = Latency.from_samples(s["ttft_s"] for s in ok if s["ttft_s"] is not None)
    itl = Latency.from_samples(x for s in ok for x in s["itl_s"])
    return {
        "mode": raw["mode"], "level": raw["level"],
        "label": f"c={raw['level']:g}" if raw["mode"] == "concurrency" else f"{raw['level']:g} req/s",
        "requests": len(raw["samples"]), "errors": errors, "duration_s": dur,
        "requests_per_s": len(ok) / dur, "input_tokens": in_tok, "output_tokens": out_tok,
        "tokens_counted": "input" if endpoint == "embeddings" else "output",
        "tokens_per_s": tokens / dur,
        "server_tokens": delta("leaninfer_input_tokens_total" if endpoint == "embeddings"
                               else "leaninfer_output_tokens_total"),
        "e2e": e2e.to_dict(), "ttft": ttft.to_dict(), "itl": itl.to_dict(),
        "slo": slo, "goodput_requests": len(good), "goodput_requests_per_s": len(good) / dur,
        "goodput_fraction": len(good) / len(raw["samples"]) if raw["samples"] else None,
        "engine_busy_s": busy, "utilization": busy / dur,
        "utilization_gauge_60s": after["leaninfer_engine_utilization"],
        "server_cpu_s": raw.get("server_cpu_s"), "client_cpu_s": raw.get("client_cpu_s"),
        "mean_batch_size": _mean_batches(before, after),
        "metered_cost_usd": cost,
        "usd_per_1k_tokens_metered": cost / tokens * 1000 if tokens else None,
        "all_in_cost_usd": usd_per_hour * dur / 3600.0,
        "usd_per_1k_tokens_all_in": usd_per_hour * dur / 3600.0 / tokens * 1000 if tokens else None,
        "guidellm": guidellm_fields(ok, errors, dur),
    }


def _mean_batches(before: dict, after: dict) -> dict:
    """Mean rows per model call over the level, per kind of call (embedding, prefill, decode)."""
    out = {}
    for key in after:
        if key.startswith("leaninfer_batch_size_count:"):
            kind = key.split(":", 1)[1]
            calls = after[key] - before.get(key, 0.0)
            rows = after[f"leaninfer_batch_size_sum:{kind}"] - before.get(f"leaninfer_batch_size_sum:{kind}", 0.0)
            if calls:
                out[kind] = rows / calls
    return out


def offline_figure(variant: dict | None, batch_size: int) -> dict | None:
    """The offline bench's $/1K tokens (its headline) at ``batch_size``, with its throughput."""
    for r in (variant or {}).get("results", []):
        if r["batch_size"] == batch_size and r.get("cost"):
            return {"batch_size": batch_size, "usd_per_1k_tokens": r["cost"]["usd_per_1k_tokens"],
                    "tokens_per_s": r.get("tokens_per_s") or r.get("output_tokens_per_s"),
                    "what": "tokens" if r["kind"] == "embedding" else "output tokens (whole request)"}
    return None


def build_serve_load_report(state: dict) -> dict:
    price = state["meta"]["usd_per_hour"]
    groups = []
    for g in state["groups"]:
        grp = g["group"]
        slo = slo_of(grp)
        variants = []
        for name, served in g["served"].items():
            v = {"name": name, "status": served["status"], "error": served.get("error"),
                 "reference": served.get("reference"), "levels": []}
            if served["status"] == "ok":
                v["levels"] = [level_summary(lv, grp["endpoint"], price, slo) for lv in served["levels"]]
                v["raw_levels"] = served["levels"]
            off = offline_figure(g.get("offline", {}).get(name), grp["max_batch_size"])
            v["offline"] = off
            closed = [lv for lv in v["levels"] if lv["mode"] == "concurrency"]
            sat = max(closed, key=lambda lv: lv["level"]) if closed else None
            if sat and off and sat["usd_per_1k_tokens_metered"]:
                ratio = sat["usd_per_1k_tokens_metered"] / off["usd_per_1k_tokens"]
                v["saturation"] = {"level": sat["label"], "usd_per_1k_tokens_metered": sat["usd_per_1k_tokens_metered"],
                                   "usd_per_1k_tokens_all_in": sat["usd_per_1k_tokens_all_in"],
                                   "offline_usd_per_1k_tokens": off["usd_per_1k_tokens"],
                                   "offline_batch_size": off["batch_size"], "metered_over_offline": ratio,
                                   "all_in_over_offline": sat["usd_per_1k_tokens_all_in"] / off["usd_per_1k_tokens"],
                                   "within_15pct": abs(ratio - 1.0) <= AGREEMENT, "utilization": sat["utilization"]}
            variants.append(v)
        groups.append({"model": grp["model"], "endpoint": grp["endpoint"], "settings": grp, "slo": slo,
                       "offline_dir": g["offline_dir"], "variants": variants})
    return {"kind": "serve-load", "meta": state["meta"], "usd_per_hour": price, "priced_as": state["meta"]["priced_as"],
            "groups": groups}


# -- Markdown -----------------------------------------------------------------------------------------------------
def _f(x, fmt="{:.1f}"):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _pcts(d: dict) -> str:
    if not d.get("n"):
        return "–"
    return f"{d['p50_ms']:.0f} / {d['p95_ms']:.0f} / {d['p99_ms']:.0f} (n={d['n']})"


def to_markdown(report: dict) -> str:
    m = report["meta"]
    lines = ["# Cost under load (leaninfer bench, served)", "",
             f"Command: `{m['command']}`  ", f"Started {m['started']}, finished {m.get('finished') or '(running)'}. "
             f"Price: ${report['usd_per_hour']:g}/hour, {report['priced_as']}.", "",
             "Each variant is served by `leaninfer serve` (`--store none --cache-max-bytes 0`) in its own process "
             "and driven by the project's load generator from this process, **on the same machine and cores**. "
             "$/1K **metered** = the server's own cost meter over the level (engine busy time x price; idle time "
             "not in it) / tokens; **all-in** = the level's wall time x price / tokens (idle time paid for). "
             "Latencies in ms: p50 / p95 / p99 (n). Utilization = engine busy seconds / the level's wall time.", ""]
    for g in report["groups"]:
        s, slo = g["settings"], g["slo"]
        what = "input tokens" if g["endpoint"] == "embeddings" else "output tokens (a whole request, prefill included)"
        slo_txt = ", ".join(f"{k[4:-3]} ≤ {v:g} ms" for k, v in slo.items() if v is not None)
        lines += [f"## {g['model']} ({g['endpoint']})", "",
                  f"Prompts of {s['prompt_tokens']} words" + (f", {s['max_tokens']} new tokens (ignore_eos)"
                                                              if g["endpoint"] != "embeddings" else "")
                  + f"; serve --max-batch-size {s['max_batch_size']}; {s['duration_s']:g} s per level. "
                  f"Goodput SLO: {slo_txt} (`--slo-e2e-ms`, `--slo-ttft-ms`). $ per 1K {what}.", "",
                  "| variant | load | req/s | err | e2e ms | TTFT ms | ITL ms | goodput req/s (%) | util | mean batch | "
                  "server / client CPU s | $/1K metered | $/1K all-in |",
                  "|---|---|---:|---:|---|---|---|---:|---:|---|---:|---:|---:|"]
        for v in g["variants"]:
            if v["status"] != "ok":
                lines.append(f"| {v['name']} | failed: {v['error']} |" + " |" * 11)
                continue
            for lv in v["levels"]:
                gp = lv["goodput_fraction"]
                lines.append(
                    f"| {v['name']} | {lv['label']} | {lv['requests_per_s']:.1f} | {lv['errors']} | {_pcts(lv['e2e'])} | "
                    f"{_pcts(lv['ttft'])} | {_pcts(lv['itl'])} | {lv['goodput_requests_per_s']:.1f} "
                    f"({_f(None if gp is None else 100 * gp, '{:.0f}')}%) | {100 * lv['utilization']:.0f}% | "
                    f"{', '.join(f'{k} {b:.1f}' for k, b in lv.get('mean_batch_size', {}).items()) or '–'} | "
                    f"{_f(lv['server_cpu_s'])} / {_f(lv['client_cpu_s'])} | "
                    f"{_f(lv['usd_per_1k_tokens_metered'], '{:.3g}')} | {_f(lv['usd_per_1k_tokens_all_in'], '{:.3g}')} |")
        lines += ["", f"At saturation (c = max batch size) against the offline bench at batch {s['max_batch_size']} "
                      f"(same variants, same price; `{g['offline_dir']}/report.md`):", "",
                  "| variant | served level | util | served $/1K metered | served $/1K all-in | offline $/1K | "
                  "metered / offline | within 15% |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for v in g["variants"]:
            sat = v.get("saturation")
            if not sat:
                lines.append(f"| {v['name']} | – | – | – | – | {_f((v.get('offline') or {}).get('usd_per_1k_tokens'), '{:.3g}')}"
                             " | – | – |")
                continue
            lines.append(f"| {v['name']} | {sat['level']} | {100 * sat['utilization']:.0f}% | "
                         f"{sat['usd_per_1k_tokens_metered']:.3g} | {sat['usd_per_1k_tokens_all_in']:.3g} | "
                         f"{sat['offline_usd_per_1k_tokens']:.3g} | {sat['metered_over_offline']:.2f}x | "
                         f"{'yes' if sat['within_15pct'] else 'no'} |")
        lines.append("")
    few = [f"{g['model']} {v['name']} {lv['label']}" for g in report["groups"] for v in g["variants"]
           for lv in v["levels"] if 0 < lv["e2e"]["n"] < 10]
    if few:
        lines += [f"p95/p99 rest on fewer than 10 requests (read them as the maximum) at: {', '.join(few)}.", ""]
    if report.get("plots"):
        lines += ["![cost per 1K tokens against load](cost_under_load.png)", ""]
    lines += ["JSON: `report.json` has every request's raw sample, the /metrics readings around each level, and "
              "a `guidellm` block per level under GuideLLM's metric names.", ""]
    return "\n".join(lines)


def write_serve_load_report(report: dict, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    report["plots"] = []
    try:
        fig = cost_under_load_figure(report)
        if fig is not None:
            fig.savefig(out / "cost_under_load.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            report["plots"].append(str(out / "cost_under_load.png"))
    except Exception as e:  # a plotting failure must not lose the measurements
        report["plot_error"] = f"{type(e).__name__}: {e}"
    for name, text in (("report.json", json.dumps(report, indent=1, default=str)), ("report.md", to_markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
    return report
