"""Quick in-process throughput: same batches for every model, interleaved rounds, median of the rounds.

This is the demo's measurement. The ``bench`` command measures each variant in a fresh process instead;
interleaving here makes background load hit every variant alike, so the ratios stay fair.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    sequences_per_s: float
    rounds_s: tuple[float, ...]

    @classmethod
    def from_rounds(cls, rounds_s: list[float], tokens: int, sequences: int) -> Throughput:
        med = statistics.median(rounds_s)
        return cls(tokens / med, sequences / med, tuple(rounds_s))


def make_batches(model, texts: list[str], batch_size: int, sort_by_length: bool = True) -> list[dict]:
    """Tokenize once. Sorting by length is applied to baseline and variants alike (same batches)."""
    if sort_by_length:
        texts = sorted(texts, key=lambda t: len(model.tokenizer(t)["input_ids"]))
    return [model.tokenize(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


def compare_throughput(models: dict, batches: list[dict], repeats: int = 5, warmup: int = 1) -> dict[str, Throughput]:
    """Embedding throughput of each model on the same batches; rounds interleave the models."""
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    seqs = sum(len(b["input_ids"]) for b in batches)
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            for b in batches:
                np.asarray(model.embed_batch(b))
            if r >= warmup:
                rounds[name].append(time.perf_counter() - t0)
    return {name: Throughput.from_rounds(rs, tokens, seqs) for name, rs in rounds.items()}
