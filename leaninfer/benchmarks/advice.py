"""What a report recommends: the priced options, the cheapest one meeting the criteria, and why a variant is slower.

The options (measured and projected rows alike, each labelled) are also what the cost curves draw and what
a forecast prices, so all three read one list. Projected rows enter advice and forecasts only when asked
(`--include-projected`); measured rows carry the name of the measured machine and the profile pricing it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..quality import Floors


@dataclass(frozen=True)
class Option:
    """One (variant, hardware, batch size) with a price; `label` is "measured" or "projected".

    `usd_per_1k_tokens` is the headline cost: all tokens (embeddings) or a whole request per 1K output tokens,
    prefill included (generation). `usd_per_1k_tokens_low/high` is a projection's band (None when measured).
    """

    variant: str
    hardware: str
    label: str
    kind: str  # "embedding" or "generation"
    batch_size: int
    p95_ms: float | None  # batch latency (embeddings) or inter-token latency (generation)
    usd_per_1k_tokens: float
    tokens_per_s: float | None
    input_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    usd_per_hour: float
    priced_as: str | None = None
    usd_per_1k_tokens_low: float | None = None
    usd_per_1k_tokens_high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        where = f"{self.hardware} ({self.label}" + (f", priced as {self.priced_as})" if self.priced_as else ")")
        band = (f" [{self.usd_per_1k_tokens_low:.3g}-{self.usd_per_1k_tokens_high:.3g}]"
                if self.usd_per_1k_tokens_low is not None else "")
        p95 = "" if self.p95_ms is None else f", p95 {self.p95_ms:.1f} ms"
        return f"{self.variant} on {where} at batch {self.batch_size}: ${self.usd_per_1k_tokens:.3g}{band} per 1K tokens{p95}"


def options(report: dict, include_projected: bool = True) -> list[Option]:
    """Every (variant, hardware, batch size) with a price: measured rows and (if asked) projected rows, labelled."""
    hw = report["hardware"]
    measured_name = hw.get("name") or "local"
    out = []
    for v in report["variants"]:
        for r in v.get("results", []):
            if not r.get("cost"):
                continue
            emb = r["kind"] == "embedding"
            out.append(Option(
                variant=v["name"], hardware=measured_name, label="measured", kind=r["kind"], batch_size=r["batch_size"],
                p95_ms=r["latency"]["p95_ms"] if emb else (r.get("inter_token") or {}).get("p95_ms"),
                usd_per_1k_tokens=r["cost"]["usd_per_1k_tokens"],
                tokens_per_s=r["tokens_per_s"] if emb else r["decode_tokens_per_s"],
                input_tokens_per_s=r.get("input_tokens_per_s") or r.get("tokens_per_s"),
                decode_tokens_per_s=r.get("decode_tokens_per_s"), usd_per_hour=r["cost"]["usd_per_hour"],
                priced_as=hw.get("priced_as")))
    if not include_projected:
        return out
    for p in report["projections"]:
        if p.get("usd_per_1k_tokens") is None:
            continue
        out.append(Option(
            variant=p["variant"], hardware=p["hardware"], label="projected", kind=p["kind"],
            batch_size=p["batch_size"], p95_ms=p["p95_ms"], usd_per_1k_tokens=p["usd_per_1k_tokens"],
            tokens_per_s=p.get("tokens_per_s") or p.get("decode_tokens_per_s"),
            input_tokens_per_s=p.get("input_tokens_per_s") or p.get("tokens_per_s"),
            decode_tokens_per_s=p.get("decode_tokens_per_s"), usd_per_hour=p["usd_per_hour"],
            usd_per_1k_tokens_low=p.get("usd_per_1k_tokens_low"), usd_per_1k_tokens_high=p.get("usd_per_1k_tokens_high")))
    return out


FLOOR_FIELDS = ("min_cosine", "max_sts_drop", "max_ppl_increase_pct")  # the floors a bench config can carry


def floors_of(cfg: dict) -> Floors:
    """The quality floors a bench run was given (its config's floor fields)."""
    return Floors(**{k: cfg.get(k) for k in FLOOR_FIELDS})


def meets_floors(variant: dict, floors: Floors) -> tuple[bool | None, str]:
    """(passes, why) for the quality floors of the run; None when quality can't be known (random weights)."""
    if variant["is_baseline"]:
        return True, "the FP32 reference"
    if variant["weights"] == "random":
        return None, "quality not measurable (random weights)"
    missed = floors.misses(variant.get("quality") or {})
    if missed:
        return False, missed[0]
    return True, "meets the quality floors" if floors.given else "no quality floor given"


def advise(report: dict) -> dict:
    """The cheapest (variant, hardware, batch size) meeting the quality floors and --max-p95-ms, and the runner-up.

    The latency objective applies to the p95 batch latency (embeddings) or the p95 inter-token latency
    (generation). Random-weight variants can't be checked against a quality floor; they stay eligible and
    the advice says so. Projected rows compete only with `include_projected` in the run's config.
    """
    cfg = report["meta"]["config"]
    include_projected = bool(cfg.get("include_projected"))
    floors = floors_of(cfg)
    by_name = {v["name"]: v for v in report["variants"] if v.get("status") in ("ok", "partial")}
    max_p95 = cfg.get("max_p95_ms")
    eligible: list[tuple[Option, str]] = []
    excluded = {"quality": 0, "latency": 0}
    for o in options(report, include_projected):
        v = by_name.get(o.variant)
        if v is None:
            continue
        ok, why = meets_floors(v, floors)
        if ok is False:
            excluded["quality"] += 1
            continue
        if max_p95 is not None and (o.p95_ms is None or o.p95_ms > max_p95):
            excluded["latency"] += 1
            continue
        eligible.append((o, why))
    eligible.sort(key=lambda e: e[0].usd_per_1k_tokens)
    criteria = {"max_p95_ms": max_p95, "include_projected": include_projected,
                **{k: cfg.get(k) for k in FLOOR_FIELDS}}
    if not eligible:
        return {"criteria": criteria, "cheapest": None, "runner_up": None, "excluded": excluded,
                "text": "no priced option meets the criteria" + (
                    "" if report["hardware"]["priced"] else
                    " (the measured machine is unpriced: pass --usd-per-hour or --hardware PROFILE"
                    + ("" if include_projected else ", or --include-projected to consider projected rows") + ")")}
    best = eligible[0]
    # The runner-up is a different choice, not the same option at another batch size.
    runner = next((e for e in eligible[1:] if (e[0].variant, e[0].hardware) != (best[0].variant, best[0].hardware)),
                  None)
    text = f"cheapest: {best[0].text()}"
    if runner:
        text += f"; runner-up: {runner[0].text()}"
    if report["projections"] and not include_projected:
        text += " (measured options only; projected rows are listed apart: --include-projected to compare them)"
    return {"criteria": criteria, "cheapest": _row(*best), "runner_up": _row(*runner) if runner else None,
            "excluded": excluded, "considered": len(eligible), "text": text}


def _row(o: Option, quality: str) -> dict:
    return {**o.to_dict(), "quality": quality}


def run_notes(hw: dict, variants: list[dict]) -> list[str]:
    """Notes for the reader: an unpriced machine, and each variant slower than FP32 with the likely reason."""
    notes = []
    if not hw["priced"]:
        notes.append("the measured machine is unpriced: cost figures are left out for it. Pass --usd-per-hour, "
                     "or --hardware PROFILE to price it as a known instance.")
    for v in variants:
        if v.get("status") == "ok" and not v["is_baseline"]:
            slower = [r for r in v["results"] if (_speedup(r) or 1.0) < 0.95]
            if slower:
                notes.append(f"{v['name']} is slower than FP32 at batch {', '.join(str(r['batch_size']) for r in slower)}"
                             f"{_why_slower(v, hw)}{_faster_alternative(v, variants, slower)}")
    return notes


def _speedup(r: dict) -> float | None:
    """The headline ratio to FP32: tokens/s (embeddings) or decode tokens/s (generation)."""
    ratio = r.get("ratio_to_fp32") or {}
    return ratio.get("tokens_per_s") if r["kind"] == "embedding" else ratio.get("decode_tokens_per_s")


def _steps(v: dict) -> list[dict]:
    """The steps that made a variant: as its build or its artifact's manifest recorded them, else as named."""
    return ((v.get("build") or {}).get("steps") or (v.get("model") or {}).get("steps")
            or (v.get("spec") or {}).get("steps") or [])


def _method(v: dict) -> str | None:
    """The int8 method a variant used ("auto" when only the default is known)."""
    for step in _steps(v):
        if step.get("step") == "int8":
            return step.get("method", "auto")
    return None


def _faster_alternative(v: dict, variants: list[dict], slower: list[dict]) -> str:
    """Names a variant of the run with the same precision that beat FP32 where `v` did not."""
    batches = {r["batch_size"] for r in slower}
    best = None
    for other in variants:
        if other is v or other.get("status") != "ok" or other["is_baseline"]:
            continue
        if other["model"]["state"] != v["model"]["state"]:
            continue
        wins = [r for r in other["results"] if r["batch_size"] in batches and (_speedup(r) or 0) > 1.0]
        if wins and (best is None or min(_speedup(r) for r in wins) > best[1]):
            best = (other, min(_speedup(r) for r in wins))
    if best is None:
        return ""
    other = best[0]
    spec = ",".join(s["step"] + (f":method={s['method']}" if s.get("method") else "")
                    for s in _steps(other)) or other["name"]
    return f"; {other['name']} ({spec}) is faster here: at least {best[1]:.2f}x FP32 at batch " \
           f"{', '.join(str(b) for b in sorted(batches))}"


def _why_slower(v: dict, hw: dict) -> str:
    state = v["model"]["state"]
    isa = set((hw.get("local") or {}).get("isa", ()))
    if state.endswith(":fp16") and hw["profile"]["kind"] == "cpu" and "avx512_fp16" not in isa:
        return ": this CPU has no native FP16 arithmetic, so FP16 matmuls are emulated or converted"
    if state.endswith(":bf16") and hw["profile"]["kind"] == "cpu" and not isa & {"avx512_bf16", "amx_bf16"}:
        return ": this CPU has no native BF16 arithmetic"
    if "bnb" in json.dumps(v["spec"]):
        return ": bitsandbytes dequantizes weights on the fly; it saves memory, not time"
    if state.endswith(":int8") and _method(v) in ("torchao", "torchao-weight-only") and hw["profile"]["kind"] == "cpu":
        return (": torchao's INT8 kernels are slow on CPUs (per-call quantize/dequantize and no fused INT8 GEMM "
                "for small batches); int8:method=torch-dynamic uses FBGEMM's INT8 GEMM")
    if state.endswith(":int8"):
        return (": the INT8 kernels' quantize/dequantize overhead outweighs the smaller weights at this size "
                "(small batches of a small model are not bandwidth-bound)")
    return ""
