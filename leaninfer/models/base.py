"""The handle: one small interface over every backend, so eval, bench and serve never branch on one.

``tokenize``, ``embed_batch``/``embed`` for embedding models, ``logits_batch``/``generate`` for causal LMs,
plus ``runner()`` (the one decode path), ``save(folder)`` and ``derive(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import LeaninferError
from .formats import HANDLE_KINDS
from .runner import RecomputeRunner, Runner, greedy_generate


class Model:
    """A loaded model: task, backend, tokenizer, and the few calls everything else needs.

    Example:
        >>> import leaninfer
        >>> m = leaninfer.load("minilm")
        >>> m.embed(["A man is playing a guitar."]).shape
        (1, 384)
    """

    backend = "base"

    def __init__(self, *, ref: str, task: str, tokenizer, config, weights: str = "pretrained",
                 precision: str = "fp32", max_seq_length: int = 512, manifest: dict | None = None,
                 path: Path | None = None, device: str = "cpu"):
        self.ref = ref
        self.task = task
        self.tokenizer = tokenizer
        self.config = config
        self.weights = weights
        self.precision = precision
        self.max_seq_length = max_seq_length
        self.manifest = manifest
        self.path = path  # artifact or model directory, when there is one
        self.device = device

    # -- facts ------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Backend and precision, e.g. ``torch:fp32`` or ``onnx:int8``: what a next step may start from."""
        return f"{self.backend}:{self.precision}"

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def num_parameters(self) -> int:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes the weights take in memory (quantized weights count at their stored width)."""
        raise NotImplementedError

    def lookup_only_params(self) -> int:
        """Parameters of embedding tables a forward pass only indexes, never reads whole: position tables,
        and the token table unless a tied LM head reads it every step."""
        cfg = self.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
        mt = getattr(cfg, "model_type", "")
        positions = {"gpt2": getattr(cfg, "n_positions", 0), "bert": getattr(cfg, "max_position_embeddings", 0)}
        params = (positions.get(mt) or 0) * hidden
        if not (self.task == "causal-lm" and getattr(cfg, "tie_word_embeddings", True)):
            params += getattr(cfg, "vocab_size", 0) * hidden
        return params

    def lookup_only_bytes(self) -> int:
        """Bytes of those tables (roofline input). A runtime graph counts them at its average bytes per
        parameter; the torch handle measures its embedding modules."""
        return int(self.lookup_only_params() * self.weight_bytes() / max(self.num_parameters(), 1))

    def matmul_flops_per_token(self) -> dict:
        """FLOPs per token in the weight matmuls, {"body": ..., "lm_head": ...} (roofline and projections).

        This default counts 2 per parameter a forward reads whole (a runtime graph's initializers); the torch
        handle reads every layer's shape instead, which also counts quantized layers whose weights are packed.
        """
        cfg = self.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
        head = getattr(cfg, "vocab_size", 0) * hidden if self.task == "causal-lm" else 0
        params = max(self.num_parameters() - self.lookup_only_params(), 0)
        return {"body": 2 * max(params - head, 0), "lm_head": 2 * head}

    def describe(self) -> dict:
        return {"ref": self.ref, "task": self.task, "backend": self.backend, "precision": self.precision,
                "weights": self.weights, "num_parameters": self.num_parameters(),
                "weight_bytes": self.weight_bytes(), "max_seq_length": self.max_seq_length}

    def __repr__(self) -> str:
        return f"<leaninfer.Model {self.ref!r} task={self.task} state={self.state} weights={self.weights}>"

    # -- tokenization -----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        """Pad to the longest text of the batch, truncate at the model's max sequence length."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=max_length or self.max_seq_length, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64)}

    # -- embeddings -------------------------------------------------------------------------------------
    def embed_batch(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Mean-pooled (over the attention mask), L2-normalised embeddings of one tokenized batch."""
        raise NotImplementedError(f"{self.backend} models of task {self.task} do not embed")

    def embed(self, texts: Sequence[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        """Embeddings of ``texts`` as float32 [n, dim], in the order given.

        Batches are formed from length-sorted texts (less padding); the order of the result is the input's.
        """
        self._require("embedding")
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            vecs = self.embed_batch(self.tokenize([texts[j] for j in idx]))
            for j, v in zip(idx, vecs, strict=True):
                out[j] = v
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def max_lanes(self) -> int:
        """How many threads may call this model at once, each on its share of the cores (``share_cores``):
        1 where the backend runs one call at a time with all of them."""
        return 1

    def share_cores(self, lanes: int) -> None:
        """Make the model calls of the calling thread use 1/``lanes`` of the CPU threads, so that ``lanes``
        threads (at most ``max_lanes()``) can call this model at once without oversubscribing the cores;
        ``share_cores(1)`` gives the thread the whole machine again. Cheap when the share doesn't change."""

    # -- causal LMs -------------------------------------------------------------------------------------
    def logits_batch(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits [batch, seq, vocab] for one tokenized batch."""
        raise NotImplementedError(f"{self.backend} models of task {self.task} give no logits")

    def runner(self, max_rows: int = 64) -> Runner:
        """A fresh :class:`~leaninfer.models.runner.Runner` over this model for at most ``max_rows`` sequences at
        once: the one decode path, shared by ``generate``, the benchmark worker and the server. Here: recompute
        the prefix each step."""
        self._require("causal-lm")
        return RecomputeRunner(self)

    def generate(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy new token ids for each prompt (a string, tokenized as the server does, or token ids).

        Example:
            >>> import leaninfer
            >>> m = leaninfer.load("random:tiny-gpt2")
            >>> len(m.generate(["Hello"], max_new_tokens=4)[0]) <= 4
            True
        """
        self._require("causal-lm")
        ids = [list(p) if not isinstance(p, str) else self.tokenizer(p)["input_ids"] for p in prompts]
        return greedy_generate(self.runner(max_rows=max(1, len(ids))), ids, max_new_tokens, self.eos_token_id,
                               self.max_seq_length)

    @property
    def eos_token_id(self) -> int | None:
        eos = getattr(self.config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list) else eos

    # -- files and new handles ----------------------------------------------------------------------------
    def save(self, folder: Path) -> dict:
        """Write the model and its tokenizer into ``folder``; return the manifest fields that say how to
        load it: ``format`` always, and whatever the format needs to rebuild the model (a structure map)."""
        raise NotImplementedError

    def moved_to(self, folder: Path, manifest: dict) -> Model:
        """This handle, after the artifact folder it was loaded from was renamed to ``folder``."""
        self.ref, self.path, self.manifest = str(folder), Path(folder), manifest
        return self

    def handle_fields(self) -> dict:
        """What a derived handle inherits: provenance, tokenizer, config, device."""
        return {"ref": self.ref, "task": self.task, "tokenizer": self.tokenizer, "config": self.config,
                "weights": self.weights, "precision": self.precision, "max_seq_length": self.max_seq_length,
                "path": self.path, "device": self.device}

    def derive(self, *, module=None, graph: str | Path | None = None, **changes) -> Model:
        """A new handle from this one, with changes: ``module=`` a PyTorch module (a torch handle), or
        ``graph=`` an ``.onnx`` / ``.xml`` file (an ONNX Runtime / OpenVINO handle); other keywords change
        handle fields such as ``precision`` or ``config``. This handle is left as it was.
        """
        if (module is None) == (graph is None):
            raise TypeError("derive() takes exactly one of module= or graph=")
        kind, thing = ("module", module) if module is not None else (Path(graph).suffix, Path(graph))
        cls = HANDLE_KINDS.get(kind)
        if cls is None:
            raise LeaninferError(f"no handle for {kind!r}; known: {', '.join(sorted(HANDLE_KINDS))}")
        return cls(thing, **{**self.handle_fields(), **changes})

    def _require(self, task: str) -> None:
        if self.task != task:
            raise LeaninferError(f"model {self.ref!r} is a {self.task} model; this needs a {task} model")
