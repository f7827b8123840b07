"""A measured tariff: one machine's $/hour turned into $ per 1K input and output tokens, level by level, and
the level a tariff file takes its prices from (saturation).

The figure an outside client can measure is throughput; the machine is paid by the hour whether it is busy or
not. So a level's tokens cost the machine's hour over the tokens it delivered in that hour::

    machine $ of a level = usd_per_hour x duration_s / 3600

**Embeddings**: every token is an input token: ``usd_per_1k_input_tokens = machine $ / input tokens x 1000``
(= :func:`leaninfer.cost.usd_per_1k_tokens` at the level's input tokens/s); output tokens cost 0.

**Generation** (the split rule): one hour of the machine buys both the prompts' prefill and the decode steps,
and an outside client sees neither apart. Each level is therefore run twice at the same concurrency: a
*prefill probe* (the same prompts, ``max_tokens=1``: nothing but prefill, whose single token is the prefill's
own output, as in :mod:`leaninfer.cost`) and the *decode level* (``max_tokens`` tokens each). The probe prices
input tokens at what they cost alone on this machine at this load; output tokens take the rest of the decode
level's machine time::

    usd_per_1k_input_tokens  = usd_per_1k_tokens(usd_per_hour, probe input tokens/s)
    usd_per_1k_output_tokens = (machine $ of the decode level - input tokens x usd_per_1k_input_tokens / 1000)
                               / output tokens x 1000

Why this rule: (1) the prices add up — at the measured level, ``input x in-price + output x out-price`` is
exactly the machine's cost of that time, so a gateway that charges the tariff recovers the machine's hour at
the measured traffic mix; (2) traffic with longer prompts is charged for them at the rate prompts actually cost
on this engine (a fixed ratio such as a hosted API's 1:4 would guess it); (3) it needs nothing but the OpenAI
API. Where the probe's input time exceeds the whole decode level's time (noise, or a level whose prompts dwarf
its outputs), input takes the whole cost and output is priced 0: the level says so (``split_clamped``).

**Saturation**: the level of the highest throughput (input tokens/s for embeddings, output tokens/s for
generation) among those that answered at least ``1 - MAX_ERROR_FRACTION`` of their requests: the machine
delivering all it can, so its hour buys the most tokens and the price is the sweep's lowest. Levels below it
cost more per token (the idle share of the hour is paid for too): every level's prices are kept beside it, for
traffic that never fills the machine. Why not the knee (the first level within a few % of the best, at a
fraction of the latency)? There the engine is not yet busy all the time, so the price would carry idle time
that a machine run at capacity does not pay; the report shows each level's latency for whoever wants that trade.

**Against a server's own meter**: a leaninfer server meters each request's share of its busy engine time at
its $/hour (``usage.leaninfer.cost_usd``). Summed over a level, that equals the machine $ above times the
engine's utilization over the level. The two agree when the engine is busy all through the level — at
saturation, with a queue always waiting — and the tariff is higher by the idle share otherwise: time outside
model calls (HTTP, tokenizing, the gaps between batches) is paid for but not metered. Each level records both
(``metered_usd_over_machine_usd``) where the server sends its meter.
"""

from __future__ import annotations

from ...cost import usd_for_busy_seconds, usd_per_1k_tokens
from ...errors import LeaninferError

MAX_ERROR_FRACTION = 0.01
PRICING_RULE = {
    "embedding": "machine $/hour over the input tokens/s the endpoint delivered at this level",
    "causal-lm": "input: machine $/hour over the input tokens/s of a prefill probe (max_tokens=1) at this "
                 "concurrency; output: the rest of the decode level's machine cost over its output tokens",
}


def _tokens(level: dict, key: str) -> float:
    return level[f"{key}_tokens_per_s"] * level["duration_s"]


def throughput(task: str, level: dict) -> float:
    """The tokens/s a level is ranked by: input for embeddings, output for generation."""
    return level["input_tokens_per_s"] if task == "embedding" else level["output_tokens_per_s"]


def price_level(task: str, usd_per_hour: float, main: dict, probe: dict | None = None) -> dict:
    """Prices of one level from its measurement (``main``: a :class:`~..load.loadgen.LevelResult` as a dict)
    and, for generation, its prefill probe at the same concurrency. None where a price can't be had (no
    tokens came back).

    >>> level = {"duration_s": 10.0, "input_tokens_per_s": 1000.0, "output_tokens_per_s": 0.0}
    >>> round(price_level("embedding", 3.6, level)["usd_per_1k_input_tokens"], 6)   # 0.01 $ / 10K tokens x 1K
    0.001
    """
    machine = usd_for_busy_seconds(usd_per_hour, main["duration_s"])
    out: dict = {"machine_usd": machine, "split_clamped": False}
    if task == "embedding":
        tps = main["input_tokens_per_s"]
        out |= {"usd_per_1k_input_tokens": usd_per_1k_tokens(usd_per_hour, tps) if tps > 0 else None,
                "usd_per_1k_output_tokens": 0.0}
        return out
    if probe is None:
        raise LeaninferError("a generation level needs its prefill probe to split input from output")
    n_in, n_out = _tokens(main, "input"), _tokens(main, "output")
    probe_tps = probe["input_tokens_per_s"]
    p_in = usd_per_1k_tokens(usd_per_hour, probe_tps) if probe_tps > 0 else None
    p_out = None
    if p_in is not None and n_out > 0:
        input_usd = p_in * n_in / 1000.0
        if input_usd > machine:
            input_usd, out["split_clamped"] = machine, True
            p_in = machine / n_in * 1000.0
        p_out = (machine - input_usd) / n_out * 1000.0
    out |= {"usd_per_1k_input_tokens": p_in, "usd_per_1k_output_tokens": p_out}
    return out


def metered(task: str, usd_per_hour: float, main: dict) -> dict:
    """What the server's own meter charged over the level (``metered_usd``, summed from every response's
    ``usage.leaninfer``), per 1K tokens, and over the machine's cost of the level at this tariff's $/hour
    (``metered_usd_over_machine_usd``: the engine's busy share when the server runs at the same $/hour). Empty
    when the server sends no meter (any engine but leaninfer).

    >>> level = {"duration_s": 10.0, "input_tokens_per_s": 1000.0, "output_tokens_per_s": 0.0, "metered_usd": 0.009}
    >>> metered("embedding", 3.6, level)["metered_usd_over_machine_usd"]
    0.9
    """
    if main.get("metered_usd") is None:
        return {}
    n_in, n_out = _tokens(main, "input"), _tokens(main, "output")
    usd, usd_in = main["metered_usd"], main.get("metered_usd_input") or 0.0
    if task == "embedding":
        usd_in = usd
    machine = usd_for_busy_seconds(usd_per_hour, main["duration_s"])
    return {"metered_usd": usd, "metered_usd_over_machine_usd": usd / machine if machine else None,
            "metered_usd_per_1k_tokens": usd / (n_in + n_out) * 1000.0 if n_in + n_out else None,
            "metered_usd_per_1k_input_tokens": usd_in / n_in * 1000.0 if n_in else None,
            "metered_usd_per_1k_output_tokens": (usd - usd_in) / n_out * 1000.0 if n_out else None}


def saturation_index(task: str, levels: list[dict]) -> int:
    """The index of the saturation level (see the module's note); a sweep with no usable level is an error
    naming what its levels answered."""
    def answered(run: dict | None) -> bool:
        return run is None or (run["requests"] > 0 and run["errors"] <= MAX_ERROR_FRACTION * run["requests"])

    usable = [i for i, lv in enumerate(levels)
              if answered(lv) and answered(lv.get("prefill_probe")) and throughput(task, lv) > 0
              and lv.get("usd_per_1k_input_tokens") is not None and lv.get("usd_per_1k_output_tokens") is not None]
    if not usable:
        seen = "; ".join(f"c={lv['concurrency']:g}: {lv['errors']}/{lv['requests']} failed "
                         f"{lv.get('error_examples') or ''}" for lv in levels)
        raise LeaninferError(f"no level of the sweep answered at least {100 * (1 - MAX_ERROR_FRACTION):g}% of its "
                             f"requests with tokens in the usage: {seen}")
    return max(usable, key=lambda i: (throughput(task, levels[i]), -levels[i]["concurrency"]))
