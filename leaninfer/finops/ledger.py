"""One ledger row per request. It holds who, what, how long and how much — never prompt or completion text.

Money is integer nano-dollars (:mod:`.money`). ``cost_nusd`` is what the request was charged (and what its
response's ``usage.leaninfer.cost_usd`` says); ``fp32_cost_nusd`` is what the same tokens would have cost on
the FP32 variant, where one is served (the counterfactual that routing savings are measured against).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class LedgerRow:
    request_id: str
    created_at: float  # unix seconds, when the request arrived
    finished_at: float
    endpoint: str  # embeddings | completions | chat.completions
    requested_model: str  # what the client asked for: a served name or a route
    served_model: str = ""  # the served name that answered ("" when refused before a model was chosen)
    variant_hash: str = ""  # the served variant's identity (its manifest's files, or its reference)
    key_id: str | None = None
    team: str = ""
    workflow: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens + output_tokens, answered from the response cache
    charged_tokens: int = 0  # what token budgets were charged: 0 for a cache hit
    queue_s: float = 0.0
    ttft_s: float | None = None
    duration_s: float = 0.0
    busy_s: float = 0.0
    cost_input_nusd: int = 0
    cost_output_nusd: int = 0
    cost_nusd: int = 0
    price_basis: str = ""  # how cost was computed, e.g. "engine-busy-seconds at $0.10/h"
    reserved_nusd: int = 0
    reserved_tokens: int = 0
    status: int = 200  # the HTTP status answered (499: the client left)
    error_class: str = ""  # the OpenAI error type, "" on success
    cache: str = "off"  # hit | miss | off
    cache_saved_nusd: int = 0
    route: str = ""  # the route that chose served_model, "" when the client named a model
    fp32_cost_nusd: int | None = None
    routing_saved_nusd: int = 0
    attempts: str = ""  # candidates tried before served_model that could not take it, "name:code,...", in order
    end_user: str = ""  # OpenAI's ``user``: the client's id of the person it serves ("" when not sent)

    def to_record(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every value, and the ledger thread does this per row while
        # holding the GIL the event loop and the engine lanes wait for. The values are immutable but ``tags``.
        return {name: dict(self.tags) if name == "tags" else getattr(self, name) for name in LEDGER_FIELDS}


LEDGER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow))
