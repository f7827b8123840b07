"""What the gate learns from the engines at start-up: each variant's worst-case price (batch-1 requests of 1
and :data:`CALIBRATION_TOKENS` tokens, after one to warm up, so that the first reservation has a price) and
each embedding model's vector size (so that a wrong ``dimensions`` is refused before compute)."""

from __future__ import annotations

import asyncio

from ..engines.core import SamplingParams
from ..finops.gate import Gate
from ..finops.tariff import Tariff
from ..finops.variant import Variant
from .state import ServedModel

CALIBRATION_TOKENS = 32


def variants_of(served: dict[str, ServedModel], usd_per_hour: float) -> dict[str, Variant]:
    """The gate's view of each served model (tariffs uncalibrated until :func:`calibrate`)."""
    return {name: Variant.of(name, s.model, Tariff(usd_per_hour), s.engine.pending) for name, s in served.items()}


async def calibrate(gate: Gate, served: dict[str, ServedModel]) -> None:
    await asyncio.gather(*(_calibrate(gate.variants[name].tariff, s) for name, s in served.items()))


async def _calibrate(tariff: Tariff, s: ServedModel) -> None:
    token = s.model.tokenizer.convert_tokens_to_ids("the") or 1
    runs = [await _run_once(s, [token] * n) for n in (CALIBRATION_TOKENS, 1, CALIBRATION_TOKENS)]
    tariff.calibrate(runs[1], runs[2], CALIBRATION_TOKENS)


async def _run_once(s: ServedModel, prompt: list[int]) -> tuple[float, float, int]:
    if s.task == "embedding":
        vectors, meter = await s.engine.embed([prompt])
        s.embedding_dim = int(vectors.shape[1])
        return meter.busy_prefill_s, 0.0, 0
    handle = s.engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    async for _ in handle:
        pass
    meter = handle.meter()
    return meter.busy_prefill_s, meter.busy_decode_s, len(handle.seq.output)
