"""The sweep of ``bench --endpoint``: the project's load generator at each concurrency level against one
endpoint's model, priced level by level (``pricing``), and the tariff file from the saturation level.

Design: every level is a closed loop of ``concurrency`` clients for ``duration_s`` (``loadgen.run_level``, the
code ``leaninfer load`` runs: chat streams, so TTFT and ITL are timed as a user sees them; token counts are the
endpoint's own ``usage``). A warm-up level at the highest concurrency runs first and is not recorded: an engine's
first batches of each shape compile, allocate or tune threads. Generation levels are preceded by their prefill
probe (same prompts, ``max_tokens=1``), the measurement the split of the hour between input and output tokens
needs (``pricing``). Embeddings are asked for as base64 (``encoding_format``), as the openai client asks for
them by default: the traffic a tariff prices is its users', and formatting floats as JSON text would add server
(and client) time that such traffic doesn't cost. Each level records the load generator's own CPU time
(``client_cpu_share``: of all the cores of the machine it ran on): where it shares the endpoint's machine, that
time was taken from the engine, the main reason a local endpoint's tariff exceeds its own meter. Nothing is written here: the caller writes the tariff and the report once the whole sweep
has been priced, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...endpoint import Endpoint
from ...errors import LeaninferError
from ...finops.price_list import PriceList
from ...hardware import get_profile
from ..load.loadgen import LevelResult, LoadSpec, run_async, run_level
from .pricing import PRICING_RULE, metered, price_level, saturation_index

WARM_UP_S = 2.0


class EndpointBenchConfig(BaseModel):
    """The settings of ``bench --endpoint`` (flags of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(..., description="the endpoint's URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., min_length=1, description="the endpoint's model id (as its /v1/models lists it)")
    task: Literal["embedding", "causal-lm"] | None = Field(None, description="default: the endpoint's model card")
    hardware: str | None = Field(None, description="the profile whose $/hour prices the machine of the endpoint")
    usd_per_hour: float | None = Field(None, gt=0, description="the machine's $/hour (overrides the profile's)")
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16, 64], min_length=1,
                                   description="closed-loop client counts of the sweep")
    duration_s: float = Field(10.0, gt=0, description="seconds per level")
    prompt_tokens: int = Field(32, ge=1, description="words per generated prompt (without --texts)")
    max_tokens: int = Field(64, ge=2, description="generation: tokens per request (ignore_eos)")
    texts: list[str] | None = Field(None, description="prompts or inputs to send, request i takes text i")
    timeout_s: float = Field(300.0, gt=0, description="per request")
    deduct_client_cpu: bool | None = Field(None, description="price the hour without the load generator's CPU "
                                                             "share (None: when the endpoint is on this machine)")

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("concurrency levels must be >= 1")
        return sorted(set(v))

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            flag = "--" + "-".join(str(x) for x in err["loc"][:1]).replace("_", "-")
            raise LeaninferError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None

    def price(self) -> tuple[float, str | None]:
        """$/hour and the profile it comes from: ``--usd-per-hour`` wins over the profile's own price."""
        if self.hardware is None and self.usd_per_hour is None:
            raise LeaninferError("bench --endpoint needs the machine's price: --hardware PROFILE (see `leaninfer "
                                 "hardware`) or --usd-per-hour X")
        if self.hardware is not None:
            prof = get_profile(self.hardware)  # names the valid profiles
            if self.usd_per_hour is None and prof.usd_per_hour is None:
                raise LeaninferError(f"hardware profile {self.hardware!r} has no price; give --usd-per-hour")
        return float(self.usd_per_hour if self.usd_per_hour is not None else prof.usd_per_hour), self.hardware


def level_row(task: str, usd_per_hour: float, concurrency: int, main: LevelResult,
              probe: LevelResult | None, client_cpu_s: float | None = None, deduct_client_cpu: bool = False) -> dict:
    """One level as the tariff file and the report keep it: throughput, latency percentiles, prices, and the
    server's meter where it sends one. Flat, units in the names.

    ``deduct_client_cpu``: the load generator ran on the endpoint's machine, and its CPU share of the level was
    the engine's to lose (measured: on a 2-vCPU Xeon, minilm at 32 clients, the Python client took 16% of the
    machine and the raw tariff stood 18% above the server's own meter; deducted, within 1%). The hour is then
    priced at ``(1 - client share)`` of its price, the raw prices kept as ``*_with_client``. On a machine of many
    cores the share is small whatever the engine; on a GPU engine the client's CPU costs it little, so there
    the deduction under-prices by that share (``--keep-client-cpu``)."""
    m = main.to_dict()
    row = {"concurrency": concurrency, "duration_s": main.duration_s, "requests": main.requests,
           "errors": main.errors, "requests_per_s": main.requests_per_s,
           "input_tokens_per_s": main.input_tokens_per_s, "output_tokens_per_s": main.output_tokens_per_s,
           "latency_p50_ms": main.e2e.p50_ms, "latency_p99_ms": main.e2e.p99_ms,
           "ttft_p50_ms": main.ttft.p50_ms, "ttft_p99_ms": main.ttft.p99_ms,
           "itl_p50_ms": main.itl.p50_ms, "itl_p99_ms": main.itl.p99_ms,
           "error_examples": main.error_examples}
    if client_cpu_s is not None:
        row |= {"client_cpu_s": client_cpu_s,
                "client_cpu_share": client_cpu_s / (main.duration_s * (os.cpu_count() or 1))}
    if probe is not None:
        row["prefill_probe"] = {"duration_s": probe.duration_s, "requests": probe.requests, "errors": probe.errors,
                                "input_tokens_per_s": probe.input_tokens_per_s,
                                "latency_p50_ms": probe.e2e.p50_ms, "error_examples": probe.error_examples}
    probe_d = probe.to_dict() if probe is not None else None
    share = row.get("client_cpu_share") if deduct_client_cpu else None
    if share:
        raw = price_level(task, usd_per_hour, m, probe_d)
        row |= {f"{k}_with_client": v for k, v in raw.items() if k.startswith("usd_per_1k")}
        row |= price_level(task, usd_per_hour * max(0.0, 1.0 - share), m, probe_d)
    else:
        row |= price_level(task, usd_per_hour, m, probe_d)
    row |= metered(task, usd_per_hour, m)
    return row


def _check_warm_up(ep: Endpoint, warm: LevelResult) -> None:
    """The warm-up is the sweep's first contact with the API it measures: an endpoint that refuses every
    request, or answers without the token counts a tariff is made of, stops the run here."""
    if warm.requests and warm.errors == warm.requests:
        raise LeaninferError(f"every warm-up request to {ep.base_url} for {ep.model!r} failed: "
                             f"{'; '.join(warm.error_examples)}")
    if warm.input_tokens_per_s <= 0:
        raise LeaninferError(f"{ep.base_url} answered {ep.model!r} without token counts (usage.prompt_tokens): a "
                             "tariff is priced per token the endpoint reports")


def run_sweep(ep: Endpoint, cfg: EndpointBenchConfig, usd_per_hour: float,
              on_event: Callable[[str], None] | None = None, deduct_client_cpu: bool = False
              ) -> tuple[list[dict], dict]:
    """Warm up, then every concurrency level (generation: its prefill probe first); returns the priced rows and
    what the warm-up sent and was metered (kept apart, so that every request the endpoint answered during the
    run is accounted for in the report)."""
    say = on_event or (lambda msg: None)
    gen = ep.task != "embedding"
    spec = LoadSpec(base_url=ep.base_url, model=ep.model, endpoint="chat" if gen else "embeddings",
                    prompt_tokens=cfg.prompt_tokens, max_tokens=cfg.max_tokens, duration_s=cfg.duration_s,
                    timeout_s=cfg.timeout_s, api_key=ep.api_key, texts=cfg.texts,
                    encoding_format=None if gen else "base64")
    probe_spec = replace(spec, max_tokens=1)
    rows: list[dict] = []
    warm_up: dict = {}

    async def main():
        c = max(cfg.concurrency)
        say(f"warm-up at c={c}")
        warm = await run_level(replace(spec, duration_s=min(WARM_UP_S, cfg.duration_s)), "concurrency", c)
        warm_up.update(concurrency=c, duration_s=warm.duration_s, requests=warm.requests, errors=warm.errors,
                       metered_usd=warm.metered_usd)
        _check_warm_up(ep, warm)
        for c in cfg.concurrency:
            probe = None
            if gen:
                say(f"c={c}: prefill probe (max_tokens=1)")
                probe = await run_level(probe_spec, "concurrency", c)
            say(f"c={c}")
            cpu0 = time.process_time()
            res = await run_level(spec, "concurrency", c)
            rows.append(level_row(ep.task, usd_per_hour, c, res, probe, time.process_time() - cpu0,
                                  deduct_client_cpu))
            say(f"c={c}: {res.requests_per_s:.1f} req/s, {res.errors} errors")

    run_async(main)
    return rows, warm_up


def tariff_of(ep: Endpoint, rows: list[dict], usd_per_hour: float, hardware: str | None,
              measured_at: dt.datetime | None = None) -> PriceList:
    """The tariff file of a priced sweep: the saturation level's prices, every level beside them."""
    i = saturation_index(ep.task, rows)
    sat = rows[i]
    level = {**sat, "endpoint": ep.base_url, "pricing_rule": PRICING_RULE[ep.task],
             "saturation_rule": f"the sweep's highest {'input' if ep.task == 'embedding' else 'output'} "
                                "tokens/s, among levels with at most 1% errors"}
    return PriceList(model=ep.model, task=ep.task, usd_per_1k_input_tokens=sat["usd_per_1k_input_tokens"],
                     usd_per_1k_output_tokens=sat["usd_per_1k_output_tokens"] or 0.0, source="measured",
                     measured_at=measured_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
                     hardware=hardware, usd_per_hour=usd_per_hour, level=level, levels=rows)
