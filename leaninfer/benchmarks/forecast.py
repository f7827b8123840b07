"""`leaninfer forecast`: a traffic profile -> a monthly bill for every option a bench report measured or projected."""

from __future__ import annotations

from ..cost import Traffic, usd_per_month
from ..errors import LeaninferError
from .advice import options

DEFAULT_MAX_UTILIZATION = 0.7  # headroom for bursts: a machine planned at 100% busy queues every spike


def forecast(report: dict, requests_per_day: float, input_tokens: float, output_tokens: float = 0.0, *,
             max_utilization: float = DEFAULT_MAX_UTILIZATION, max_p95_ms: float | None = None,
             include_projected: bool = False) -> list[dict]:
    """One row per (variant, hardware): the batch size giving the lowest monthly bill, cheapest first.

    Throughputs are the report's measured ones at each batch size, and its labelled projected ones only with
    `include_projected`; a generation report prices input tokens at the prefill rate and each output token
    after the first at the decode rate.
    """
    traffic = Traffic(requests_per_day, input_tokens, output_tokens)
    best: dict[tuple, dict] = {}
    for o in options(report, include_projected):
        if max_p95_ms is not None and (o.p95_ms is None or o.p95_ms > max_p95_ms):
            continue
        if o.kind == "embedding" and output_tokens:
            raise LeaninferError("this is an embedding report: --output-tokens must be 0")
        m = usd_per_month(o.usd_per_hour, traffic, o.input_tokens_per_s, o.decode_tokens_per_s,
                          max_utilization=max_utilization)
        row = {"variant": o.variant, "hardware": o.hardware, "label": o.label, "batch_size": o.batch_size,
               "usd_per_hour": o.usd_per_hour, **m.to_dict()}
        key = (o.variant, o.hardware)
        if key not in best or (row["usd_per_month"], row["usd_per_month_busy_only"]) < (
                best[key]["usd_per_month"], best[key]["usd_per_month_busy_only"]):
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["usd_per_month"], r["usd_per_month_busy_only"]))
