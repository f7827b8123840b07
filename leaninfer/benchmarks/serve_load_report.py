"""The serve-under-load report: from raw levels (every request's sample, /metrics before and after) to figures.

Per level: TTFT / ITL / e2e distributions (n, p50/p95/p99), goodput under the stated SLO, utilization (engine
busy seconds over the level's wall time), and two costs per 1K tokens, never mixed:

- **metered**: the server's own meter, the rise of ``leaninfer_cost_usd_total`` over the level (the sum of the
  responses' ``usage.leaninfer.cost_usd``: busy time x price) / tokens x 1000. Idle time is not in it.
- **all-in**: the level's wall time x $/hour / tokens x 1000: the machine paid for the whole time, idle included.

Tokens are what the responses' ``usage`` says: input tokens for embeddings, output tokens for generation (a
whole request per 1K output tokens, prefill included, as the offline bench's headline). The wrk level (when
``wrk`` was installed: closed loop, c = max batch size) has no per-request samples: its requests/s and e2e
percentiles are wrk's summary, its tokens the server's ``/metrics`` deltas (``server_tokens``), and it has no
TTFT, ITL or goodput (``wrk_level_summary``).

At saturation the metered figure is set against the offline bench's. The saturation level is the wrk level
(its rounds) when there is one, else the highest closed-loop concurrency driven by the Python client (whose CPU
shares the server's cores: the report says which). The offline figure it is compared with is the one at the *matching*
batch size: the server's mean rows per model call at that level (embedding calls for embeddings, decode steps
for generation) over the mean share of the machine a call held (``matching_batch``: embedding lanes run calls
side by side on part of the cores each), which is below the max batch size when the queue doesn't keep every
call full. The offline
bench measures a few batch sizes; between two of them the figure is interpolated linearly in 1/batch (cost per
token = a + b/batch: a per-call cost amortized over the batch's rows), and clamped to the nearest measured one
outside them (``offline_figure``). With wrk the saturation level runs in rounds, and the offline bench of the
same variant runs again before the first round and after each (``serve_load.bracketed_saturation``): each round
is set against the mean of the runs just before and after it, and the median round is the figure
(``bracketed_rounds``), because the VM's speed drifts over the minutes between the offline bench at the start
and the served levels. The figure at the max batch size is shown too; ``within_15pct`` is decided on the
matching one. A ``guidellm`` block per Python level carries GuideLLM's metric names
(``requests_per_second``, ``request_latency`` in seconds, ``time_to_first_token_ms``,
``inter_token_latency_ms``, ...), each a distribution over the successful requests, so results can be compared
with GuideLLM's.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from ..latency import MIN_SAMPLES_FOR_PERCENTILES, Latency
from .plots import cost_under_load_figure
from .report import priced

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
    """One Python-driven level's figures, every one recomputable from ``raw`` (its samples and /metrics
    readings)."""
    ok = [s for s in raw["samples"] if s["ok"]]
    errors = len(raw["samples"]) - len(ok)
    dur = raw["duration_s"]
    in_tok, out_tok = sum(s["input_tokens"] for s in ok), sum(s["output_tokens"] for s in ok)
    tokens = in_tok if endpoint == "embeddings" else out_tok
    good = [s for s in ok if meets_slo(s, slo)]
    e2e = Latency.from_samples(s["end"] - s["start"] for s in ok)
    ttft = Latency.from_samples(s["ttft_s"] for s in ok if s["ttft_s"] is not None)
    itl = Latency.from_samples(x for s in ok for x in s["itl_s"])
    return {
        "mode": raw["mode"], "level": raw["level"], "client": "loadgen",
        "label": f"c={raw['level']:g}" if raw["mode"] == "concurrency" else f"{raw['level']:g} req/s",
        "requests": len(raw["samples"]), "errors": errors, "duration_s": dur,
        "requests_per_s": len(ok) / dur, "input_tokens": in_tok, "output_tokens": out_tok,
        "tokens_counted": "input" if endpoint == "embeddings" else "output",
        "tokens_per_s": tokens / dur,
        "server_tokens": _delta(raw, _token_series(endpoint)),
        "e2e": e2e.to_dict(), "ttft": ttft.to_dict(), "itl": itl.to_dict(),
        "slo": slo, "goodput_requests": len(good), "goodput_requests_per_s": len(good) / dur,
        "goodput_fraction": len(good) / len(raw["samples"]) if raw["samples"] else None,
        **_meter(raw, tokens, usd_per_hour),
        "guidellm": guidellm_fields(ok, errors, dur),
    }


def wrk_level_summary(raw: dict, endpoint: str, usd_per_hour: float) -> dict:
    """The wrk level's figures: requests/s, errors and e2e percentiles from wrk's summary, tokens and cost from
    the server's /metrics deltas over the level (``server_tokens``); no TTFT, ITL or goodput (no per-request
    samples). A level whose wrk run failed keeps only its ``error``."""
    rnd = f", round {raw['round']}/{raw['rounds']}" if raw.get("rounds", 1) > 1 else ""
    head = {"mode": "wrk", "level": raw["level"], "client": "wrk", "label": f"c={raw['level']:g} (wrk{rnd})",
            **({"round": raw["round"]} if raw.get("round") else {})}
    if raw.get("error"):
        return {**head, "error": raw["error"]}
    w, dur = raw["wrk"], raw["duration_s"]
    in_tok = _delta(raw, "leaninfer_input_tokens_total")
    out_tok = _delta(raw, "leaninfer_output_tokens_total")
    tokens = in_tok if endpoint == "embeddings" else out_tok
    e2e = {"n": w["requests"], "p50_ms": w["p50_us"] / 1e3, "p95_ms": w["p95_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3,
           "few_samples": 0 < w["requests"] < MIN_SAMPLES_FOR_PERCENTILES, "source": "wrk"}
    return {
        **head, "requests": w["requests"], "errors": w["errors"], "non2xx": w["non2xx"], "duration_s": dur,
        "wrk_duration_s": raw.get("wrk_duration_s"),
        "requests_per_s": w["req_per_s"], "input_tokens": in_tok, "output_tokens": out_tok,
        "tokens_counted": "input" if endpoint == "embeddings" else "output",
        "tokens_per_s": tokens / dur, "server_tokens": tokens,
        "e2e": e2e, "ttft": {"n": 0}, "itl": {"n": 0},
        "slo": None, "goodput_requests": None, "goodput_requests_per_s": None, "goodput_fraction": None,
        **_meter(raw, tokens, usd_per_hour),
        # wrk cuts the requests in flight when it stops (a generation request runs for seconds): the machine
        # time they took bought no tokens, so an all-in figure would charge it to the others. The all-in curve
        # is the Python levels', which let their last requests finish.
        "all_in_cost_usd": None, "usd_per_1k_tokens_all_in": None,
        "guidellm": None,
    }


def _token_series(endpoint: str) -> str:
    return "leaninfer_input_tokens_total" if endpoint == "embeddings" else "leaninfer_output_tokens_total"


def _delta(raw: dict, name: str) -> float:
    return raw["metrics_after"][name] - raw["metrics_before"][name]


def _meter(raw: dict, tokens: float, usd_per_hour: float) -> dict:
    """What the server's meter and the wall clock say of a level that counted ``tokens``: busy seconds,
    utilization, CPU, mean rows per model call, metered and all-in cost per 1K tokens."""
    dur = raw["duration_s"]
    cost, busy = _delta(raw, "leaninfer_cost_usd_total"), _delta(raw, "leaninfer_engine_busy_seconds_total")
    return {
        "engine_busy_s": busy, "utilization": busy / dur,
        "utilization_gauge_60s": raw["metrics_after"]["leaninfer_engine_utilization"],
        "server_cpu_s": raw.get("server_cpu_s"), "client_cpu_s": raw.get("client_cpu_s"),
        "mean_batch_size": _mean_batches(raw["metrics_before"], raw["metrics_after"]),
        "machine_share": _machine_share(raw, busy),
        "metered_cost_usd": cost,
        "usd_per_1k_tokens_metered": cost / tokens * 1000 if tokens else None,
        "all_in_cost_usd": usd_per_hour * dur / 3600.0,
        "usd_per_1k_tokens_all_in": usd_per_hour * dur / 3600.0 / tokens * 1000 if tokens else None,
    }


def summarize_level(raw: dict, endpoint: str, usd_per_hour: float, slo: dict) -> dict:
    return (wrk_level_summary(raw, endpoint, usd_per_hour) if raw["mode"] == "wrk"
            else level_summary(raw, endpoint, usd_per_hour, slo))


def _machine_share(raw: dict, busy: float) -> float:
    """The mean share of the machine a model call held over the level: busy (machine) seconds / the calls' wall
    seconds; 1 for one call at a time on every core, 1/2 for two embedding lanes running at once; 1 when the
    server didn't count call seconds."""
    calls = raw["metrics_after"].get("leaninfer_engine_call_seconds_total", 0.0) - raw["metrics_before"].get(
        "leaninfer_engine_call_seconds_total", 0.0)
    return min(1.0, busy / calls) if calls > 0 and busy > 0 else 1.0


def matching_batch(lv: dict, kind: str, max_batch_size: int) -> float:
    """The offline batch size a level is compared at: its mean rows per ``kind`` call over the share of the
    machine a call held (two lanes' calls of 9 rows on half the cores each keep the machine as busy as one
    call of 18 on all of them; the offline bench runs one call on all of them). The max batch size when no such
    call was counted."""
    rows = lv["mean_batch_size"].get(kind)
    return rows / lv.get("machine_share", 1.0) if rows else float(max_batch_size)


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


# -- the offline figure at a batch size ---------------------------------------------------------------------------
def offline_points(variant: dict | None) -> list[dict]:
    """The offline bench's priced results of one variant, by batch size: its $/1K tokens (headline) and
    throughput."""
    pts = {}
    for r in (variant or {}).get("results", []):
        if r.get("cost"):
            pts[r["batch_size"]] = {"batch_size": r["batch_size"], "usd_per_1k_tokens": r["cost"]["usd_per_1k_tokens"],
                                    "tokens_per_s": r.get("tokens_per_s") or r.get("output_tokens_per_s"),
                                    "what": "tokens" if r["kind"] == "embedding" else "output tokens (whole request)"}
    return [pts[b] for b in sorted(pts)]


def offline_figure(variant: dict | None, batch_size: float) -> dict | None:
    """The offline bench's $/1K tokens at ``batch_size`` (None without any priced result): the measured one
    (``measured``); else interpolated linearly in 1/batch between the two measured batch sizes around it
    (``interpolated_between``: cost per token = a + b/batch, a per-call cost amortized over the batch); outside
    the measured sizes, the nearest one's (``clamped_to``). ``tokens_per_s`` only where measured.

    Example (measured 2.0 at batch 8, 1.5 at batch 16: a + b/8 = 2.0, a + b/16 = 1.5, so b = 8, a = 1):
        >>> v = {"results": [{"batch_size": b, "kind": "embedding", "cost": {"usd_per_1k_tokens": c}}
        ...                  for b, c in ((8, 2.0), (16, 1.5))]}
        >>> round(offline_figure(v, 12)["usd_per_1k_tokens"], 6)  # 1 + 8/12
        1.666667
    """
    pts = offline_points(variant)
    if not pts:
        return None
    fig = {"batch_size": batch_size, "measured": False, "interpolated_between": None, "clamped_to": None,
           "what": pts[0]["what"], "tokens_per_s": None}
    for p in pts:
        if p["batch_size"] == batch_size:
            return {**fig, **p, "measured": True}
    if batch_size < pts[0]["batch_size"] or batch_size > pts[-1]["batch_size"]:
        end = pts[0] if batch_size < pts[0]["batch_size"] else pts[-1]
        return {**fig, "usd_per_1k_tokens": end["usd_per_1k_tokens"], "clamped_to": end["batch_size"]}
    lo = max((p for p in pts if p["batch_size"] < batch_size), key=lambda p: p["batch_size"])
    hi = min((p for p in pts if p["batch_size"] > batch_size), key=lambda p: p["batch_size"])
    t = (1 / batch_size - 1 / lo["batch_size"]) / (1 / hi["batch_size"] - 1 / lo["batch_size"])
    cost = lo["usd_per_1k_tokens"] + t * (hi["usd_per_1k_tokens"] - lo["usd_per_1k_tokens"])
    return {**fig, "usd_per_1k_tokens": cost, "interpolated_between": [lo["batch_size"], hi["batch_size"]]}


# -- saturation -----------------------------------------------------------------------------------------------------
def matching_call_kind(endpoint: str) -> str:
    """The kind of model call whose mean rows give the batch size the offline bench is matched at."""
    return "embedding" if endpoint == "embeddings" else "decode"


def saturation_level(levels: list[dict]) -> dict | None:
    """The wrk level when it ran, else the highest closed-loop concurrency (driven by the Python client)."""
    wrk = [lv for lv in levels if lv["mode"] == "wrk" and not lv.get("error")]
    if wrk:
        return wrk[-1]
    closed = [lv for lv in levels if lv["mode"] == "concurrency"]
    return max(closed, key=lambda lv: lv["level"]) if closed else None


def bracketed_rounds(levels: list[dict], brackets: list[dict], kind: str, max_batch_size: int,
                     usd_per_hour: float) -> list[dict]:
    """Each wrk round's metered $/1K against the offline bench run just before it (``brackets[i - 1]``) and just
    after it (``brackets[i]``), both read at the round's matching batch size; the round's offline figure is
    their mean, ``drift`` the after/before ratio (how much the machine's speed moved meanwhile). Rounds whose
    wrk run or either offline run failed are left out."""
    out = []
    for lv in levels:
        i = lv.get("round")
        if lv["mode"] != "wrk" or lv.get("error") or not i or i >= len(brackets):
            continue
        before, after = brackets[i - 1], brackets[i]
        if before.get("status") != "ok" or after.get("status") != "ok" or not lv["usd_per_1k_tokens_metered"]:
            continue
        b = matching_batch(lv, kind, max_batch_size)
        fb = offline_figure({"results": priced(before["results"], usd_per_hour)}, b)
        fa = offline_figure({"results": priced(after["results"], usd_per_hour)}, b)
        if not fb or not fa:
            continue
        mean = (fb["usd_per_1k_tokens"] + fa["usd_per_1k_tokens"]) / 2
        out.append({"level": lv, "mean_batch_size": b,
                    "offline": {**fb, "usd_per_1k_tokens": mean, "bracket": [fb["usd_per_1k_tokens"],
                                                                             fa["usd_per_1k_tokens"]]},
                    "ratio": lv["usd_per_1k_tokens_metered"] / mean,
                    "drift": fa["usd_per_1k_tokens"] / fb["usd_per_1k_tokens"]})
    return out


def saturation(levels: list[dict], offline_variant: dict | None, endpoint: str, max_batch_size: int,
               brackets: list[dict] | None = None, usd_per_hour: float | None = None) -> dict | None:
    """The saturation level's metered $/1K against the offline bench: at the matching batch size (the level's
    mean rows per model call; the max batch size if no such call was counted) and at the max batch size.

    With ``brackets`` (the offline bench run around each wrk round, ``serve_load.bracketed_saturation``) the
    figure is the median round's (the lower middle one for an even count): each round against the offline runs
    seconds before and after it (``bracketed_rounds``); ``rounds`` lists every round's ratio. Without them, the
    saturation level against the offline bench run before the variant was served."""
    kind = matching_call_kind(endpoint)
    off_max = offline_figure(offline_variant, max_batch_size)
    rounds = bracketed_rounds(levels, brackets, kind, max_batch_size, usd_per_hour) if brackets else []
    if rounds:
        median = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]
        sat, mean_b, off = median["level"], median["mean_batch_size"], median["offline"]
    else:
        sat = saturation_level(levels)
        if not sat or not off_max or not sat["usd_per_1k_tokens_metered"]:
            return None
        mean_b = matching_batch(sat, kind, max_batch_size)
        off = offline_figure(offline_variant, mean_b)
    if not off_max:
        return None
    metered = sat["usd_per_1k_tokens_metered"]
    ratio = metered / off["usd_per_1k_tokens"]
    bench_at_start = offline_figure(offline_variant, mean_b)
    return {"level": sat["label"], "client": sat["client"], "bracketed": bool(rounds),
            "rounds": [{"level": r["level"]["label"], "mean_batch_size": r["mean_batch_size"],
                        "usd_per_1k_tokens_metered": r["level"]["usd_per_1k_tokens_metered"],
                        "offline_usd_per_1k_tokens": r["offline"]["usd_per_1k_tokens"],
                        "offline_before_after": r["offline"]["bracket"], "metered_over_offline": r["ratio"],
                        "offline_drift": r["drift"]} for r in rounds],
            "metered_over_offline_bench_at_start": metered / bench_at_start["usd_per_1k_tokens"],
            "server_cpu_s": sat["server_cpu_s"], "client_cpu_s": sat["client_cpu_s"],
            "usd_per_1k_tokens_metered": metered, "usd_per_1k_tokens_all_in": sat["usd_per_1k_tokens_all_in"],
            "utilization": sat["utilization"], "matching_call_kind": kind, "mean_batch_size": mean_b,
            "rows_per_call": sat["mean_batch_size"].get(kind), "machine_share": sat.get("machine_share", 1.0),
            "offline_matching": off, "offline_max_batch": off_max,
            "offline_usd_per_1k_tokens": off["usd_per_1k_tokens"], "offline_batch_size": off["batch_size"],
            "metered_over_offline": ratio,
            "all_in_over_offline": (sat["usd_per_1k_tokens_all_in"] / off["usd_per_1k_tokens"]
                                    if sat["usd_per_1k_tokens_all_in"] is not None else None),
            "metered_over_offline_max_batch": metered / off_max["usd_per_1k_tokens"],
            "within_15pct": abs(ratio - 1.0) <= AGREEMENT}


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
                v["levels"] = [summarize_level(lv, grp["endpoint"], price, slo) for lv in served["levels"]]
                v["raw_levels"] = served["levels"]
            offline = g.get("offline", {}).get(name)
            v["offline"] = offline_figure(offline, grp["max_batch_size"])
            v["offline_points"] = offline_points(offline)
            measured = [lv for lv in v["levels"] if not lv.get("error")]
            sat = saturation(measured, offline, grp["endpoint"], grp["max_batch_size"],
                             served.get("offline_brackets"), price)
            if sat:
                v["saturation"] = sat
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


def _offline_cell(off: dict | None) -> str:
    if not off:
        return "–"
    b = off["batch_size"]
    if off["measured"]:
        how = f"batch {b:g}"
    elif off["interpolated_between"]:
        lo, hi = off["interpolated_between"]
        how = f"batch {b:.1f}, interpolated {lo}–{hi}"
    else:
        how = f"batch {b:.1f}, clamped to {off['clamped_to']}"
    if off.get("bracket"):
        how += f"; mean of the runs before / after: {off['bracket'][0]:.3g} / {off['bracket'][1]:.3g}"
    return f"{off['usd_per_1k_tokens']:.3g} ({how})"


def _matching(sat: dict) -> str:
    """The matching batch, and how it came: rows per call / machine share when calls held part of the machine."""
    if sat["rows_per_call"] and sat["machine_share"] < 0.995:
        return f"{sat['mean_batch_size']:.1f} ({sat['rows_per_call']:.1f} / {sat['machine_share']:.2f})"
    return _f(sat["mean_batch_size"])


def _every_round(sat: dict) -> str:
    """Each bracketed round's ratio and, in brackets, its offline drift (after / before), e.g. 1.05x (+3%)."""
    if not sat["rounds"]:
        return "–"
    return ", ".join(f"{r['metered_over_offline']:.2f}x ({100 * (r['offline_drift'] - 1):+.0f}%)"
                     for r in sat["rounds"])


def _level_row(name: str, lv: dict) -> str:
    if lv.get("error"):
        return f"| {name} | {lv['label']} failed: {lv['error']} |" + " |" * 11
    gp = lv["goodput_fraction"]
    goodput = "–" if lv["goodput_requests_per_s"] is None else (
        f"{lv['goodput_requests_per_s']:.1f} ({_f(None if gp is None else 100 * gp, '{:.0f}')}%)")
    return (f"| {name} | {lv['label']} | {lv['requests_per_s']:.1f} | {lv['errors']} | {_pcts(lv['e2e'])} | "
            f"{_pcts(lv['ttft'])} | {_pcts(lv['itl'])} | {goodput} | {100 * lv['utilization']:.0f}% | "
            f"{', '.join(f'{k} {b:.1f}' for k, b in lv.get('mean_batch_size', {}).items()) or '–'} | "
            f"{_f(lv['server_cpu_s'])} / {_f(lv['client_cpu_s'], '{:.2f}')} | "
            f"{_f(lv['usd_per_1k_tokens_metered'], '{:.3g}')} | {_f(lv['usd_per_1k_tokens_all_in'], '{:.3g}')} |")


def to_markdown(report: dict) -> str:
    m = report["meta"]
    wrk_txt = ("Then the saturation level, closed loop at c = max batch size, driven by `wrk` (a C client: a "
               "small fraction of the Python client's CPU per request), posting the same prompts non-streaming, in "
               "rounds, with the offline bench of the same variant run (in its own process, the server idle) "
               "before the first round and after each: the `(wrk, round k/n)` rows; their requests/s and e2e "
               "latencies are wrk's, their tokens and cost the server's "
               "`/metrics`; no TTFT, ITL or goodput (wrk keeps no per-request samples), and no all-in cost (wrk "
               "cuts off the requests in flight when it stops: their machine time bought no tokens). " if m.get("wrk") else
               "`wrk` was not installed: there is no wrk level, and the saturation figures below were driven by "
               "the Python client, whose CPU (in the tables) slows the server's model calls. ")
    lines = ["# Cost under load (leaninfer bench, served)", "",
             f"Command: `{m['command']}`  ", f"Started {m['started']}, finished {m.get('finished') or '(running)'}. "
             f"Price: ${report['usd_per_hour']:g}/hour, {report['priced_as']}.", "",
             "Each variant is served by `leaninfer serve` (`--store none --cache-max-bytes 0`) in its own process "
             "and driven by the project's load generator from this process, **on the same machine and cores**. "
             + wrk_txt +
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
            lines += [_level_row(v["name"], lv) for lv in v["levels"]]
        kind = matching_call_kind(g["endpoint"])
        mb = s["max_batch_size"]
        lines += ["", f"At saturation (closed loop, c = max batch size {mb}; the wrk rounds when wrk ran, else "
                      "the highest concurrency driven by the Python client, whose CPU shares the server's cores) "
                      "against the offline bench of the same variant at the same price, at the **matching batch "
                      f"size**: the server's mean rows per {kind} call at that level over the mean share of the "
                      "machine a call held (busy / call seconds: two lanes' calls at once hold half each, and keep "
                      "the machine as busy as one call of twice the rows, which is what the offline bench runs), "
                      "interpolated linearly in 1/batch between the two measured batch sizes around it (cost per "
                      "token = a + b/batch). "
                      "Each wrk round is set against the offline bench run just before and just after it (their "
                      "mean; this VM's speed drifts by 10-30% over minutes, so a figure measured minutes earlier is "
                      "no yardstick), and the **median round** is shown; *every round* lists each round's ratio and, "
                      "in brackets, how far the offline figure moved from before to after it. *within 15%* is "
                      "decided on the median round. Beside it: the offline bench run before the variant was served "
                      f"(`{g['offline_dir']}/report.md`) at the max batch size, and the median round against the "
                      "matching batch of that earlier run.", "",
                  "| variant | served level | util | server / client CPU s | "
                  f"matching batch (rows per {kind} call / share) | "
                  "served $/1K metered | served $/1K all-in | offline $/1K, matching batch | metered / offline | "
                  "every round | within 15% | vs the offline bench at start, matching batch | "
                  f"offline $/1K at start, batch {mb} | metered / offline at {mb} |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|---:|---:|---:|"]
        for v in g["variants"]:
            sat = v.get("saturation")
            if not sat:
                lines.append(f"| {v['name']} | – | – | – | – | – | – | – | – | – | – | – | "
                             f"{_offline_cell(v.get('offline'))} | – |")
                continue
            lines.append(f"| {v['name']} | {sat['level']} | {100 * sat['utilization']:.0f}% | "
                         f"{_f(sat['server_cpu_s'])} / {_f(sat['client_cpu_s'], '{:.2f}')} | {_matching(sat)} | "
                         f"{sat['usd_per_1k_tokens_metered']:.3g} | {_f(sat['usd_per_1k_tokens_all_in'], '{:.3g}')} | "
                         f"{_offline_cell(sat['offline_matching'])} | {sat['metered_over_offline']:.2f}x | "
                         f"{_every_round(sat)} | {'yes' if sat['within_15pct'] else 'no'} | "
                         f"{sat['metered_over_offline_bench_at_start']:.2f}x | "
                         f"{_offline_cell(sat['offline_max_batch'])} | {sat['metered_over_offline_max_batch']:.2f}x |")
        py = [v["name"] for v in g["variants"] if (v.get("saturation") or {}).get("client") == "loadgen"]
        if py:
            lines += ["", f"Driven by the Python client at saturation (no wrk level): {', '.join(py)}; its CPU "
                          "shares the server's cores, which slows every model call and raises the metered cost."]
        lines.append("")
    few = [f"{g['model']} {v['name']} {lv['label']}" for g in report["groups"] for v in g["variants"]
           for lv in v["levels"] if not lv.get("error") and 0 < lv["e2e"]["n"] < 10]
    if few:
        lines += [f"p95/p99 rest on fewer than 10 requests (read them as the maximum) at: {', '.join(few)}.", ""]
    if report.get("plots"):
        lines += ["![cost per 1K tokens against load](cost_under_load.png)", ""]
    lines += ["JSON: `report.json` has every request's raw sample, the /metrics readings around each level, wrk's "
              "summary for the wrk level, the offline figures at every measured batch size (`offline_points`), and "
              "a `guidellm` block per Python level under GuideLLM's metric names.", ""]
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
