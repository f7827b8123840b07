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

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def model_card(name: str, created: int, info: dict) -> dict:
    """A ``/v1/models`` entry; ``info`` is ``Model.describe()``."""
    return {"id": name, "object": "model", "created": created, "owned_by": "leaninfer",
            "task": info["task"], "backend": info["backend"], "precision": info["precision"],
            "weights": info["weights"], "max_seq_length": info["max_seq_length"]}


def encode_embedding(v: np.ndarray, fmt: str) -> list[float] | str:
    """A vector as JSON floats, or as base64 of little-endian float32 (what the openai client decodes)."""
    v = np.asarray(v, dtype=np.float32)
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v.tolist()


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

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24])

    def _body(self, obj: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def response(self, text: str, finish_reason: str | None, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return self._body("chat.completion" if self.chat else "text_completion", [choice], usage=usage)

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False) -> bytes:
        """One streamed delta. A chat stream opens with an empty assistant message (``first``), as OpenAI's."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return sse(self._body(self._chunk_object, [choice]))

    def usage_chunk(self, usage: dict) -> bytes:
        """The last chunk before ``[DONE]`` when the client asked ``stream_options.include_usage``."""
        return sse(self._body(self._chunk_object, [], usage=usage))
