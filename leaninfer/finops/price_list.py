"""What an upstream engine costs per token: a tariff file, measured by ``leaninfer bench --endpoint`` on the
machine that runs the engine, or written by hand from a hosted API's list prices.

A local variant's :class:`~leaninfer.finops.tariff.Tariff` is in engine seconds, metered as it runs; an
upstream's engine time is out of sight, so it is priced per token at the rate this file states. The file is
YAML (JSON is YAML too)::

    version: 1
    model: Qwen/Qwen2.5-0.5B-Instruct      # the endpoint's model id
    task: causal-lm                        # or embedding
    usd_per_1k_input_tokens: 0.00012
    usd_per_1k_output_tokens: 0.00085
    source: measured                       # or list
    measured_at: "2026-12-04T22:10:00Z"
    hardware: aws-g6.xlarge                # the profile priced, or null
    usd_per_hour: 0.805
    level: {concurrency: 32, ...}          # the sweep level the prices come from (measured)
    levels: [...]                          # every level of the sweep (measured)
    quality: {top1_agreement: 0.97}        # the figures --route floors read; none: never routed to by a floor
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import LeaninferError
from .money import to_nano

TARIFF_VERSION = 1


class PriceList(BaseModel):
    """One tariff file: per-token prices of one engine's model and where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = TARIFF_VERSION
    model: str = Field(min_length=1, description="the endpoint's model id")
    task: Literal["embedding", "causal-lm"] | None = None
    usd_per_1k_input_tokens: float = Field(ge=0, description="$ per 1,000 prompt/input tokens")
    usd_per_1k_output_tokens: float = Field(0.0, ge=0, description="$ per 1,000 generated tokens")
    source: Literal["measured", "list"]
    measured_at: datetime | None = None
    hardware: str | None = None
    usd_per_hour: float | None = Field(None, gt=0)
    level: dict | None = None
    levels: list[dict] = Field(default_factory=list)
    quality: dict[str, float] | None = None

    @field_validator("usd_per_1k_input_tokens", "usd_per_1k_output_tokens", "usd_per_hour")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def nusd(self, input_tokens: int, output_tokens: int) -> int:
        """What a request of these tokens costs, in nano-dollars (the ledger's unit)."""
        return to_nano((input_tokens * self.usd_per_1k_input_tokens
                        + output_tokens * self.usd_per_1k_output_tokens) / 1000)

    def nusd_parts(self, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        """What the input and the output tokens of a request cost, each in nano-dollars: the two figures a
        ledger row keeps (their sum is within a nano-dollar of :meth:`nusd`).

        Example:
            >>> PriceList(model="m", usd_per_1k_input_tokens=0.5, usd_per_1k_output_tokens=1.5,
            ...           source="list").nusd_parts(10, 4)
            (5000000, 6000000)
        """
        return (to_nano(input_tokens * self.usd_per_1k_input_tokens / 1000),
                to_nano(output_tokens * self.usd_per_1k_output_tokens / 1000))


def load_price_list(path: str | os.PathLike) -> PriceList:
    """Read and check a tariff file; any problem is a :class:`LeaninferError` naming the file and the field."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise LeaninferError(f"tariff file {str(p)!r}: can't read it ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LeaninferError(f"tariff file {str(p)!r}: not YAML or JSON ({e})") from None
    if not isinstance(data, dict):
        raise LeaninferError(f"tariff file {str(p)!r}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return PriceList.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise LeaninferError(f"tariff file {str(p)!r}: {where}: {first['msg']} "
                             f"(fields: {', '.join(PriceList.model_fields)})") from None


def save_price_list(prices: PriceList, path: str | os.PathLike) -> Path:
    """Write ``prices`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(yaml.safe_dump(prices.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    os.replace(tmp, p)
    return p
