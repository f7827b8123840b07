"""OpenAI response bodies: model cards, embedding lists, completions, their SSE chunks and ``usage``.

Only shapes live here (what the openai client parses); what goes into them is decided by the routes. Our own
numbers (queue time, engine time, cost) travel in ``usage.leaninfer``, a key clients ignore.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..finops.money import to_usd

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def model_card(name: str, created: int, info: dict, variant=None) -> dict:
    """A ``/v1/models`` entry; ``info`` is ``Model.describe()``; ``variant`` (the gate's
    :class:`~leaninfer.finops.variant.Variant`) adds what it is, its quality and its price."""
    card = {"id": name, "object": "model", "created": created, "owned_by": "leaninfer",
            "task": info["task"], "backend": info["backend"], "precision": info["precision"],
            "weights": info["weights"], "max_seq_length": info["max_seq_length"],
            "context_length": info["max_seq_length"]}
    if variant is not None:
        card["variant"] = {"hash": variant.hash, "source": variant.source, "fp32_source": variant.fp32_source}
        card["quality"] = variant.quality  # measured against the source by optimize; None for the source
        # the typical price of 1K tokens at the engine time measured so far (calibrated at start-up)
        card["price"] = {"usd_per_1k_input_tokens": to_usd(variant.tariff.typical_nusd(1000, 0)),
                         "usd_per_1k_output_tokens": to_usd(variant.tariff.typical_nusd(0, 1000)),
                         "basis": variant.tariff.basis(),
                         # a local variant's rates are learned from metered requests (a server with a ledger)
                         "measured": getattr(variant.tariff, "n", 1) > 0}
    if "upstream_model" in info:  # an upstream engine's: the model id it is sent, how it is priced
        card.update(upstream_model=info["upstream_model"], tariff=info["tariff"])
    return card


def encode_embedding(v: np.ndarray, fmt: str) -> np.ndarray | str:
    """A vector for :func:`json_bytes` (float32, written as JSON floats), or base64 of little-endian float32
    (what the openai client decodes)."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v


def json_bytes(obj: dict) -> bytes:
    """A response body. orjson writes numpy float32 arrays directly, each float in its shortest round-trip
    form: 15x faster than ``json.dumps`` of ``tolist()`` (which formats float64 repr strings), and that
    formatting was the largest piece of the event loop's time per embeddings request."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def embedding_list(model: str, vectors: np.ndarray, fmt: str, n_tokens: int, extras: dict) -> dict:
    data = [{"object": "embedding", "index": i, "embedding": encode_embedding(v, fmt)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "leaninfer": extras}}


def completion_usage(n_prompt: int, n_out: int, extras: dict) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out,
            "leaninfer": extras}


@dataclass(frozen=True)
class CompletionFormat:
    """The bodies of one completion (``chat`` or legacy text), whole or streamed: they share id and time."""

    model: str
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    echo: str = ""  # text completions with ``echo``: the prompt's text, ahead of the completion

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24])

    def _body(self, obj: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def choice(self, index: int, text: str | None, finish_reason: str | None, logprobs: dict | None = None,
               tool_calls: list[dict] | None = None) -> dict:
        """One choice of a whole response (a text completion's ``text`` with its echo ahead; a chat message's
        ``tool_calls`` where it made calls, its content then None unless it wrote text besides)."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}
        return {"index": index, "text": self.echo + text, "finish_reason": finish_reason, "logprobs": logprobs}

    def response(self, text: str | list[dict], finish_reason: str | None = None, usage: dict | None = None) -> dict:
        """The whole body: one choice's ``text`` and ``finish_reason``, or the ``choices`` built by
        :meth:`choice`."""
        choices = text if isinstance(text, list) else [self.choice(0, text, finish_reason)]
        return self._body("chat.completion" if self.chat else "text_completion", choices, usage=usage)

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False,
              index: int = 0, logprobs: dict | None = None, delta: dict | None = None) -> bytes:
        """One streamed delta of choice ``index``. A chat stream opens with an empty assistant message
        (``first``), as OpenAI's; a text stream with ``echo`` opens with the prompt's text. ``delta``: a chat
        delta given whole (a tool call's)."""
        if self.chat:
            if delta is None:
                delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        else:
            text = self.echo if first else text
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": logprobs}
        return sse(self._body(self._chunk_object, [choice]))

    def usage_chunk(self, usage: dict) -> bytes:
        """The last chunk before ``[DONE]`` when the client asked ``stream_options.include_usage``."""
        return sse(self._body(self._chunk_object, [], usage=usage))
