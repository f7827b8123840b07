"""The one decode path: a :class:`Runner` holds the rows of a running batch over a cache.

``Model.generate``, the benchmark worker and the server's scheduler all drive a runner from
``Model.runner()``, so a benchmark times exactly the model calls that serving makes.

* :class:`RecomputeRunner` — backends that give full-sequence logits only (ONNX Runtime, OpenVINO): each
  step recomputes every running row's prefix in one padded batch. Quadratic in length, still batched.
* ``KVCacheRunner`` (``torch_runner.py``) — PyTorch causal LMs with a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class PromptScores:
    """A prompt's tokens scored by the prefill that read it: for each token after the first, its
    log-probability given the tokens before it, and the ``k`` most likely tokens at that position (best first).
    Arrays of ``len(prompt) - 1`` rows."""

    token_logprobs: np.ndarray  # float32 [L-1]
    top_ids: np.ndarray  # int64 [L-1, k]
    top_logprobs: np.ndarray  # float32 [L-1, k]


class Runner(Protocol):
    """What a decode loop needs from a model: rows of a running batch, keyed by sequence id.

    ``prefill`` adds sequences and returns the logits of their last prompt position; ``decode`` feeds one
    token to each given running sequence and returns the next logits; ``release`` drops sequences.
    Logits are float32 arrays [n, vocab] in the order of the ids given. ``has_cache`` says whether a decode
    step costs one token (True) or the whole prefix (False).

    ``prefill_scoring`` is ``prefill`` that also scores the prompts of the rows whose ``top`` is not None
    (echo with logprobs): the same call, with the LM head over every prompt position instead of the last one.
    ``fork`` adds rows that copy a running row (``n`` continuations of one prompt share its prefill).
    A runner may also offer ``prefill_part(seq_id, tokens, last)`` (chunked prefill: a long prompt fed in parts
    between decode steps, joining the batch with its last part; ``KVCacheRunner``); the scheduler uses it
    where present.
    """

    has_cache: bool

    def prefill(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray: ...

    def prefill_scoring(self, seq_ids: list[int], prompts: list[list[int]],
                        top: Sequence[int | None]) -> tuple[np.ndarray, list[PromptScores | None]]: ...

    def fork(self, seq_id: int, new_ids: list[int]) -> None: ...

    def decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray: ...

    def release(self, seq_ids: list[int]) -> None: ...


def score_prompt(logits: np.ndarray, prompt: Sequence[int], k: int) -> PromptScores:
    """Score ``prompt`` from the logits of its own positions ([len(prompt), vocab], float32): position i
    predicts token i + 1. ``log_softmax`` in float32 with a max shift, as ``torch.log_softmax`` computes it."""
    x = np.asarray(logits[: len(prompt) - 1], dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    logp = x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))
    nxt = np.asarray(prompt[1:], dtype=np.int64)
    token_lp = logp[np.arange(len(nxt)), nxt] if len(nxt) else np.zeros(0, np.float32)
    k = min(max(k, 0), logp.shape[-1])
    if k and len(nxt):
        part = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
        vals = np.take_along_axis(logp, part, axis=-1)
        order = np.lexsort((part, -vals), axis=-1)  # best first, ties by the lower id
        top_ids, top_lp = np.take_along_axis(part, order, -1), np.take_along_axis(vals, order, -1)
    else:
        top_ids, top_lp = np.zeros((len(nxt), 0), np.int64), np.zeros((len(nxt), 0), np.float32)
    return PromptScores(token_lp.astype(np.float32), top_ids.astype(np.int64), top_lp.astype(np.float32))


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

    def _all_logits(self, seq_ids):
        # Right padding: exported graphs may derive positions from the start of the row, and causal attention
        # keeps padding at the end from touching the real tokens.
        seqs = [self.seqs[s] for s in seq_ids]
        enc = pad_left_or_right(seqs, self.pad_id, left=False)
        return seqs, np.asarray(self.model.logits_batch(enc))

    def _last_logits(self, seq_ids):
        seqs, logits = self._all_logits(seq_ids)  # each row's logits come from its last token
        return logits[np.arange(len(seqs)), [len(s) - 1 for s in seqs], :]

    def prefill(self, seq_ids, prompts):
        for s, p in zip(seq_ids, prompts, strict=True):
            self.seqs[s] = list(p)
        return self._last_logits(seq_ids)

    def prefill_scoring(self, seq_ids, prompts, top):
        for s, p in zip(seq_ids, prompts, strict=True):
            self.seqs[s] = list(p)
        seqs, logits = self._all_logits(seq_ids)  # the backend computes every position anyway
        last = logits[np.arange(len(seqs)), [len(s) - 1 for s in seqs], :]
        scores = [None if k is None else score_prompt(logits[r, :len(p)], p, k)
                  for r, (p, k) in enumerate(zip(prompts, top, strict=True))]
        return last, scores

    def fork(self, seq_id, new_ids):
        for s in new_ids:
            self.seqs[s] = list(self.seqs[seq_id])

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
