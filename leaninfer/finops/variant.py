"""What identifies a served variant and what its manifest says about it: hash, source, measured quality; or,
for an upstream engine leaninfer forwards to, what its tariff file declares."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .tariff import Tariff
from .token_tariff import TokenTariff


@dataclass
class Variant:
    """A served model as the gate sees it: no engine, no HTTP; ``pending`` reads its engine's queue (routing's
    queue SLO)."""

    name: str
    task: str  # "embedding" | "causal-lm"
    hash: str
    tariff: Tariff | TokenTariff
    quality: dict | None  # measured against the source; None for the source itself (an upstream: declared)
    source: str
    fp32_source: bool  # the source served as is, in FP32: the counterfactual's price
    pending: Callable[[], int]
    upstream: bool = False  # forwarded to an OpenAI-compatible engine, priced per token

    @classmethod
    def of(cls, name: str, model, tariff: Tariff, pending: Callable[[], int]) -> Variant:
        """The variant serving ``model`` (a loaded :class:`~leaninfer.models.Model`) as ``name``."""
        quality = measured_quality(model)
        return cls(name, model.task, variant_hash(model), tariff, quality, source_ref(model),
                   quality is None and model.precision == "fp32", pending)


    @classmethod
    def for_upstream(cls, name: str, task: str, url: str, model_id: str, tariff: TokenTariff,
                     pending: Callable[[], int]) -> Variant:
        """An upstream engine serving ``model_id`` at ``url`` as ``name``. Its quality is what its tariff file
        declares (None: none declared, so no route's floor admits it); its hash names the endpoint and the
        model id, so that the response cache never answers one upstream's request with another's answer."""
        quality = tariff.prices.quality if tariff.prices is not None else None
        digest = hashlib.sha256(f"upstream|{url}|{model_id}".encode()).hexdigest()[:16]
        return cls(name, task, digest, tariff, quality, f"upstream:{model_id}", False, pending, upstream=True)


def variant_hash(model) -> str:
    """16 hex digits naming exactly these weights: an artifact's manifest files (their sha256), or for a
    reference served as is (``minilm``, ``random:gpt2``), the reference and its state."""
    manifest = getattr(model, "manifest", None)
    if manifest and manifest.get("files"):
        blob = orjson.dumps({n: f["sha256"] for n, f in manifest["files"].items()}, option=orjson.OPT_SORT_KEYS)
    else:
        blob = f"{model.ref}|{model.state}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_ref(model) -> str:
    """The reference a variant was optimized from (itself for a reference served as is)."""
    manifest = getattr(model, "manifest", None)
    return (manifest or {}).get("source", {}).get("ref") or model.ref


def measured_quality(model) -> dict | None:
    """The quality ``optimize`` measured against the source, or None for the source itself."""
    manifest = getattr(model, "manifest", None)
    return (manifest or {}).get("quality") if manifest else None
