"""Quality of a model against a reference: the figures every speedup is shown beside.

Embeddings: mean cosine similarity to the reference's embeddings on evaluation texts, and Spearman x100 of
cosine similarity against human scores on an STS CSV (``sentence1,sentence2,score``, no header).
Causal LMs: perplexity on a text, mean KL divergence from the reference's next-token distribution and top-1
token agreement with it.

Random-weight models have no task quality: their results carry ``weights: random`` and only the fidelity
figures (cosine, KL, agreement), which measure what a transformation changed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .data import default_document, default_texts
from .errors import LeaninferError
from .models import Model

RANDOM_NOTE = "n/a (random weights)"


def read_sts(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Rows of ``sentence1,sentence2,score`` (no header). A bad row is named by its line number."""
    s1, s2, scores = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if len(row) != 3:
                    raise LeaninferError(f"{path}: line {i} has {len(row)} columns; expected 3 "
                                         "(sentence1,sentence2,score, no header)")
                try:
                    scores.append(float(row[2]))
                except ValueError:
                    raise LeaninferError(f"{path}: line {i}: score {row[2]!r} is not a number "
                                         "(expected sentence1,sentence2,score with no header)") from None
                s1.append(row[0])
                s2.append(row[1])
    except OSError as e:
        raise LeaninferError(f"cannot read STS file {str(path)!r}: {e.strerror}") from None
    if len(scores) < 3:
        raise LeaninferError(f"{path}: {len(scores)} rows; need at least 3 sentence pairs")
    return s1, s2, np.asarray(scores)


def sts_spearman(model: Model, s1: list[str], s2: list[str], scores: np.ndarray, batch_size: int = 32) -> float:
    """Spearman x100 between cosine(emb(s1), emb(s2)) and the gold scores."""
    from scipy.stats import spearmanr

    unique = list(dict.fromkeys(s1 + s2))
    emb = model.embed(unique, batch_size=batch_size)
    index = {t: i for i, t in enumerate(unique)}
    a, b = emb[[index[t] for t in s1]], emb[[index[t] for t in s2]]
    cos = (a * b).sum(-1)  # embeddings are L2-normalised
    return float(spearmanr(cos, scores).statistic * 100)


def evaluate(target: Model, reference: Model | None = None, *, sts: str | Path | None = None,
             texts: list[str] | None = None, text: str | None = None) -> dict:
    """Quality of ``target``, against ``reference`` when given.

    Example:
        >>> import leaninfer
        >>> q = leaninfer.evaluate(leaninfer.load("minilm"), leaninfer.load("minilm"))
        >>> round(q["mean_cosine_to_reference"], 4)
        1.0
    """
    if reference is not None and reference.task != target.task:
        raise LeaninferError(f"target is a {target.task} model but reference is a {reference.task} model")
    if target.task == "embedding":
        return _evaluate_embedding(target, reference, sts, texts)
    return _evaluate_causal(target, reference, text)


def _evaluate_embedding(target, reference, sts, texts) -> dict:
    texts = texts or default_texts()
    out: dict = {"task": "embedding", "weights": target.weights}
    if reference is not None:
        cos = (target.embed(texts) * reference.embed(texts)).sum(-1)
        out |= {"num_texts": len(texts), "mean_cosine_to_reference": float(cos.mean()), "min_cosine_to_reference": float(cos.min())}
    if sts is not None:
        if target.is_random:
            out["sts_spearman"] = RANDOM_NOTE
        else:
            s1, s2, scores = read_sts(sts)
            out["sts_pairs"] = len(scores)
            out["sts_spearman"] = sts_spearman(target, s1, s2, scores)
            if reference is not None:
                out["reference_sts_spearman"] = sts_spearman(reference, s1, s2, scores)
                out["sts_drop_pts"] = out["reference_sts_spearman"] - out["sts_spearman"]
    return out


def _windows(model: Model, text: str, max_tokens: int) -> list[np.ndarray]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    size = min(max_tokens, model.max_seq_length, 512)
    return [np.asarray([ids[i:i + size]], dtype=np.int64) for i in range(0, len(ids) - 1, size)
            if len(ids[i:i + size]) > 1]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _evaluate_causal(target, reference, text, max_tokens: int = 256) -> dict:
    text = text or default_document()
    nll, n_tok, kl_sum, agree = 0.0, 0, 0.0, 0
    for ids in _windows(target, text, max_tokens):
        enc = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        logp = _log_softmax(target.logits_batch(enc)[0, :-1].astype(np.float64))
        nxt = ids[0, 1:]
        nll -= float(logp[np.arange(len(nxt)), nxt].sum())
        n_tok += len(nxt)
        if reference is not None:
            ref_logp = _log_softmax(reference.logits_batch(enc)[0, :-1].astype(np.float64))
            kl_sum += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
    if n_tok == 0:
        raise LeaninferError("evaluation text is too short: it needs at least two tokens")
    out: dict = {"task": "causal-lm", "weights": target.weights, "num_tokens": n_tok,
                 "perplexity": RANDOM_NOTE if target.is_random else float(np.exp(nll / n_tok))}
    if reference is not None:
        out |= {"kl_to_reference": kl_sum / n_tok, "top1_agreement": agree / n_tok}
        if not target.is_random:
            ref_ppl = evaluate(reference, text=text)["perplexity"]
            out |= {"reference_perplexity": ref_ppl,
                    "perplexity_increase_pct": (out["perplexity"] / ref_ppl - 1) * 100}
    return out
