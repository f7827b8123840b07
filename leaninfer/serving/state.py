"""What a server holds: its config and the models it serves, each with its engine.

``create_app`` puts these on ``app.state`` (``config``, ``served``, ``upstreams``, ``metrics``, ``draining``);
the routes read them there, so handlers are plain module-level functions rather than closures over one app.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from ..engines.engine import BatchingConfig, EmbeddingEngine, GenerationEngine
from ..engines.metrics import ServerMetrics
from ..finops.config import FinOpsConfig
from ..models import Model
from .upstreams import UpstreamConfig


class ServerConfig(BaseModel):
    """How one server batches, prices and bounds requests (``leaninfer serve`` flags carry the field names).

    Example:
        >>> ServerConfig(BatchingConfig(max_batch_size=8), usd_per_hour=0.1).request_timeout_s
        600.0
    """

    model_config = ConfigDict(extra="forbid")

    batching: BatchingConfig = Field(default_factory=BatchingConfig,
                                     description="how requests are batched (dynamic for embeddings, continuous "
                                                 "for generation)")
    usd_per_hour: float = Field(0.0, ge=0, description="price of this machine in $/hour: a request costs its "
                                                       "share of the engine's busy time at this price")
    request_timeout_s: float = Field(600.0, gt=0, description="a request not finished within this many seconds "
                                                              "is cancelled and answered with a 504")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1, description="larger request bodies are refused with a 413")
    max_request_chars: int = Field(1_000_000, ge=1, description="characters of text in one request (input, "
                                                                 "prompt or messages; a token id counts as one): "
                                                                 "more is refused with a 413 before tokenizing")
    max_request_items: int = Field(2048, ge=1, description="inputs of one embeddings request, or messages of one "
                                                           "chat: more is refused with a 400 before tokenizing")
    finops: FinOpsConfig = Field(default_factory=FinOpsConfig,
                                 description="keys, ledger, budgets, cache and routes (off by default)")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long open requests may finish (the "
                                                           "listener stays up and /health answers 503) before "
                                                           "the engines stop")
    upstreams: list[UpstreamConfig] = Field(default_factory=list,
                                            description="served names forwarded to OpenAI-compatible engines "
                                                        "(--upstream NAME=URL[,key_env=VAR][,tariff=FILE])")

    # Positional ``batching`` keeps the dataclass-era call ``ServerConfig(BatchingConfig(...), ...)`` working.
    def __init__(self, batching: BatchingConfig | None = None, /, **fields):
        if batching is not None:
            fields["batching"] = batching
        super().__init__(**fields)


@dataclass
class ServedModel:
    """One served name: its handle, its engine, and the facts its model card shows."""

    name: str
    model: Model
    engine: EmbeddingEngine | GenerationEngine
    created: int
    info: dict = field(default_factory=dict)  # Model.describe(), taken once: it may count parameters
    embedding_dim: int | None = None  # an embedding model's vector size, measured at start-up

    @property
    def task(self) -> str:
        return self.model.task


def build_models(models: dict[str, Model], config: ServerConfig, metrics: ServerMetrics) -> list[ServedModel]:
    """Wrap loaded handles (name -> Model) in engines (not started yet)."""
    served = []
    for name, m in models.items():
        cls = EmbeddingEngine if m.task == "embedding" else GenerationEngine
        engine = cls(m, name, config.batching, metrics, config.usd_per_hour)
        served.append(ServedModel(name, m, engine, int(time.time()), m.describe()))
    return served
