"""Log-probabilities of tokens, from the logits the decode path already computed (no second forward pass).

A sampled token's log-probability is read off the very row of logits the sampler picked it from; a prompt's
tokens are scored from the prefill that fills the cache (``Runner.prefill_scoring``). Both are of the model's
own distribution, ``log_softmax(logits)``, before ``logit_bias``, penalties, temperature, ``top_p`` or a grammar
mask: what vLLM returns by default (``raw_logprobs``) and what an evaluation harness compares with the model
run directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.runner import PromptScores

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on ``logprobs`` / ``top_logprobs``


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the ``k`` most likely tokens at its position (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_softmax(row: np.ndarray) -> np.ndarray:
    """``log_softmax`` of one row of logits, in float64 (accumulated as a max-shifted log-sum-exp).

    >>> np.round(np.exp(log_softmax(np.array([0.0, np.log(3.0)]))), 3)
    array([0.25, 0.75])
    """
    x = np.asarray(row, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def top_k(logp: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """The ``k`` largest entries of ``logp`` as (index, value), largest first (ties: the lower index first)."""
    if k <= 0:
        return ()
    k = min(k, logp.shape[-1])
    idx = np.argpartition(-logp, k - 1)[:k]
    idx = idx[np.lexsort((idx, -logp[idx]))]
    return tuple((int(i), float(logp[i])) for i in idx)


def token_logprob(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """The log-probability of ``token`` under one row of logits, with the top ``k``.

    >>> lp = token_logprob(np.array([0.0, 2.0, 1.0]), 1, 2)
    >>> lp.token, [t for t, _ in lp.top], round(lp.logprob, 4) == round(lp.top[0][1], 4)
    (1, [1, 2], True)
    """
    logp = log_softmax(row)
    return TokenLogprob(int(token), float(logp[token]), top_k(logp, k))


def prompt_logprobs(prompt: list[int], scores: PromptScores) -> list[TokenLogprob | None]:
    """A prompt's tokens scored, in the OpenAI ``echo`` shape: None for the first (nothing precedes it)."""
    out: list[TokenLogprob | None] = [None]
    for i, tok in enumerate(prompt[1:]):
        top = tuple((int(t), float(v)) for t, v in zip(scores.top_ids[i], scores.top_logprobs[i], strict=True))
        out.append(TokenLogprob(int(tok), float(scores.token_logprobs[i]), top))
    return out
