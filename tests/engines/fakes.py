"""A fake embedding model for engine tests: no weights, it records each call (rows, the lane that made it, the
share of the cores that lane had asked for) and can hold calls until the test lets them go."""

from __future__ import annotations

import threading
import types

import numpy as np

from leaninfer.engines.engine import BatchingConfig, EmbeddingEngine
from leaninfer.engines.metrics import ServerMetrics


class FakeEmbedModel:
    def __init__(self, lanes: int = 2, dim: int = 4):
        self.tokenizer = types.SimpleNamespace(pad_token_id=0, padding_side="right")
        self.max_seq_length = 512
        self.dim = dim
        self._lanes = lanes
        self._share = threading.local()
        self.calls: list[dict] = []
        self.share_requests: list[tuple[int, int]] = []  # (lane, share) each time a lane asks for a share
        self.gate: threading.Semaphore | None = None  # set: each call takes a permit first
        self.inside = threading.Semaphore(0)  # released as each call begins
        self._lock = threading.Lock()

    def max_lanes(self) -> int:
        return self._lanes

    def share_cores(self, lanes: int) -> None:
        self._share.lanes = lanes
        with self._lock:
            self.share_requests.append((_lane(), lanes))

    def embed_batch(self, enc):
        rows = enc["input_ids"].shape[0]
        with self._lock:
            self.calls.append({"rows": rows, "lane": _lane(), "share": getattr(self._share, "lanes", 1)})
        self.inside.release()
        if self.gate is not None:
            self.gate.acquire(timeout=30)
        return np.ones((rows, self.dim), np.float32)


def _lane() -> int:
    name = threading.current_thread().name  # leaninfer-engine-<model>[-<lane>]
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def engine_of(model, **batching) -> EmbeddingEngine:
    """An embeddings engine over ``model``; its per-call overhead given, so that nothing is measured at start."""
    return EmbeddingEngine(model, "m", BatchingConfig(call_overhead_tokens=8, **batching), ServerMetrics(), 0.0)
