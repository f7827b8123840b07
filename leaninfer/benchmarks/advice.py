"""What a report recommends: the priced options, the cheapest one meeting the criteria, and why a variant is slower.

The options (measured and projected rows alike, each labelled) are also what the cost curves draw and what
a forecast prices, so all three read one list.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..quality import Floors


@dataclass(frozen=True)
class Option:
    """One (variant, hardware, batch size) with a price; `label` is "measured" or "projected"."""

    variant: str
    hardware: str
    label: str
    kind: str  # "embedding" or "generation"
    batch_size: int
    p95_ms: float | None  # batch latency (embeddings) or inter-token latency (generation)
    usd_per_1k_tokens: float
    tokens_per_s: float | None
    input_tokens_per_s: float | None
    output_tokens_per_s: float | None
    usd_per_hour: float

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"{self.variant} on {self.hardware} ({self.label}) at batch {self.batch_size}: "
                f"${self.usd_per_1k_tokens:.3g} per 1K tokens, p95 {self.p95_ms:.1f} ms")


def options(report: dict) -> list[Option]:
    """Every (variant, hardware, batch size) with a price: measured rows and projected rows, labelled."""
    measured_name = report["hardware"].get("name") or "local"
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
                output_tokens_per_s=r.get("decode_tokens_per_s"), usd_per_hour=r["cost"]["usd_per_hour"]))
    for p in report["projections"]:
        if p.get("usd_per_1k_tokens") is None:
            continue
        out.append(Option(
            variant=p["variant"], hardware=p["hardware"], label="projected", kind=p["kind"],
            batch_size=p["batch_size"], p95_ms=p["p95_ms"], usd_per_1k_tokens=p["usd_per_1k_tokens"],
            tokens_per_s=p.get("tokens_per_s") or p.get("decode_tokens_per_s"),
            input_tokens_per_s=p.get("input_tokens_per_s") or p.get("tokens_per_s"),
            output_tokens_per_s=p.get("decode_tokens_per_s"), usd_per_hour=p["usd_per_hour"]))
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
    the advice says so.
    """
    cfg = report["meta"]["config"]
    floors = floors_of(cfg)
    by_name = {v["name"]: v for v in report["variants"] if v.get("status") in ("ok", "partial")}
    max_p95 = cfg.get("max_p95_ms")
    eligible: list[tuple[Option, str]] = []
    excluded = {"quality": 0, "latency": 0}
    for o in options(report):
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
    criteria = {"max_p95_ms": max_p95, **{k: cfg.get(k) for k in FLOOR_FIELDS}}
    if not eligible:
        return {"criteria": criteria, "cheapest": None, "runner_up": None, "excluded": excluded,
                "text": "no priced option meets the criteria" + (
                    "" if report["hardware"]["priced"] or report["projections"] else
                    " (the measured machine is unpriced and nothing was projected: pass --usd-per-hour, "
                    "--hardware PROFILE or --project-to PROFILES)")}
    best = eligible[0]
    # The runner-up is a different choice, not the same option at another batch size.
    runner = next((e for e in eligible[1:] if (e[0].variant, e[0].hardware) != (best[0].variant, best[0].hardware)),
                  None)
    text = f"cheapest: {best[0].text()}"
    if runner:
        text += f"; runner-up: {runner[0].text()}"
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
