"""The one decode path: a :class:`Runner` holds the rows of a running batch over a cache.

``Model.generate``, the benchmark worker and the server's scheduler all drive a runner from
``Model.runner()``, so a benchmark times exactly the model calls that serving makes.

* :class:`RecomputeRunner` — backends that give full-sequence logits only (ONNX Runtime, OpenVINO): each
  step recomputes every running row's prefix in one padded batch. Quadratic in length, still batched.
* ``KVCacheRunner`` (``torch_runner.py``) — PyTorch causal LMs with a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Runner(Protocol):
    """What a decode loop needs from a model: rows of a running batch, keyed by sequence id.

    ``prefill`` adds sequences and returns the logits of their last prompt position; ``decode`` feeds one
    token to each given running sequence and returns the next logits; ``release`` drops sequences.
    Logits are float32 arrays [n, vocab] in the order of the ids given. ``has_cache`` says whether a decode
    step costs one token (True) or the whole prefix (False).
    """

    has_cache: bool

    def prefill(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray: ...

    def decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray: ...

    def release(self, seq_ids: list[int]) -> None: ...


def pad_left_or_right(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> dict[str, np.ndarray]:
    """int64 ``input_ids`` and ``attention_mask`` padded to the longest sequence."""
    width = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        if not len(s):
            continue
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[r, sl] = s
        mask[r, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


class RecomputeRunner:
    """Iteration-level batching for models that only give full-sequence logits (no KV cache)."""

    has_cache = False

    def __init__(self, model):
        self.model = model
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.seqs: dict[int, list[int]] = {}

    def _last_logits(self, seq_ids):
        # Right padding: exported graphs may derive positions from the start of the row, and causal attention
        # keeps padding at the end from touching the real tokens. Each row's logits come from its last token.
        seqs = [self.seqs[s] for s in seq_ids]
        enc = pad_left_or_right(seqs, self.pad_id, left=False)
        logits = np.asarray(self.model.logits_batch(enc))
        return logits[np.arange(len(seqs)), [len(s) - 1 for s in seqs], :]

    def prefill(self, seq_ids, prompts):
        for s, p in zip(seq_ids, prompts, strict=True):
            self.seqs[s] = list(p)
        return self._last_logits(seq_ids)

    def decode(self, seq_ids, tokens):
        for s, t in zip(seq_ids, tokens, strict=True):
            self.seqs[s].append(int(t))
        return self._last_logits(seq_ids)

    def release(self, seq_ids):
        for s in seq_ids:
            self.seqs.pop(s, None)


def greedy_generate(runner: Runner, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_token_id: int | None = None, max_seq_len: int | None = None) -> list[list[int]]:
    """Greedy tokens for every prompt, all rows in one running batch; a row leaves at EOS or its limit.

    The server's scheduler runs the same prefill/decode/release calls on the same runner (with sampling and
    admission around them); its greedy outputs equal these, which a test checks.
    """
    ids = list(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    if not prompts or max_new_tokens <= 0:
        return out
    logits = runner.prefill(ids, [list(p) for p in prompts])
    running = ids
    while running:
        nxt, still, done = [], [], []
        for row, s in zip(logits, running, strict=True):
            tok = int(np.argmax(row))
            out[s].append(tok)
            limit = max_seq_len is not None and len(prompts[s]) + len(out[s]) >= max_seq_len
            if tok == eos_token_id or len(out[s]) >= max_new_tokens or limit:
                done.append(s)
            else:
                still.append(s)
                nxt.append(tok)
        if done:  # one release per step: each release rebuilds the cache
            runner.release(done)
        running = still
        if running:
            logits = runner.decode(running, nxt)
    return out
