"""Model work behind the scheduler's :class:`~leaninfer.serving.core.Runner` interface.

* :class:`KVCacheRunner` — PyTorch causal LMs: one left-padded batch with a KV cache; sequences join and leave
  between decode steps.
* :class:`RecomputeRunner` — backends with full-sequence logits only (ONNX Runtime, OpenVINO): each step
  recomputes every running sequence's prefix in one padded batch. Quadratic in length, but still batched at
  the iteration level, so concurrent requests share each model call.
"""

from __future__ import annotations

import numpy as np

from .core import pad_left_or_right


class KVCacheRunner:
    """A running batch over a transformers causal LM with a ``DynamicCache``.

    Design note. Rows are left-padded: row r holds ``pad[r]`` padding columns, then its real tokens, so every
    row's newest token sits in the last column and one decode step appends one column for everybody. The
    attention mask hides padding and ``position_ids`` count real tokens only, so a row computes what it would
    compute alone (greedy outputs equal, tested). Joining: the newcomers are prefilled as their own
    left-padded batch, then the two caches are padded on the left to the same width and concatenated along
    the batch. Leaving: rows are dropped and leading columns that became all-padding are trimmed. The cache
    object is kept between steps (the model appends to it), and rebuilt only when membership changes.
    """

    def __init__(self, model):
        import torch

        self.torch = torch
        self.module = model.module
        self.device = model.device
        self.pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        self.ids: list[int] = []
        self.pad = torch.zeros(0, dtype=torch.long)  # left padding per row
        self.length = torch.zeros(0, dtype=torch.long)  # real tokens per row (incl. generated ones fed)
        self.cache = None  # DynamicCache, width == pad + length for every row

    # -- helpers ------------------------------------------------------------------------------------------
    def _kv(self, cache) -> list[tuple]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _set_kv(self, kv: list[tuple]) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(ddp_cache_data=kv) if kv else None

    def _width(self) -> int:
        return 0 if self.cache is None else int(self.cache.layers[0].keys.shape[-2])

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        with self.torch.inference_mode():
            out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=True)  # `cache`: transformers 5 name of past_key_values
        return out.logits[:, -1, :].float(), out.cache

    # -- Runner -------------------------------------------------------------------------------------------
    def prefill(self, seq_ids, prompts):
        torch = self.torch
        enc = pad_left_or_right(prompts, self.pad_id, left=True)
        ids = torch.from_numpy(enc["input_ids"]).to(self.device)
        mask = torch.from_numpy(enc["attention_mask"]).to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        logits, cache = self._forward(ids, mask, pos, DynamicCache())
        new_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        new_pad = ids.shape[1] - new_len
        new_kv = self._kv(cache)
        if self.cache is None:
            kv, pad, length = new_kv, new_pad, new_len
        else:
            old_kv, w_old, w_new = self._kv(self.cache), self._width(), ids.shape[1]
            w = max(w_old, w_new)
            kv = [(torch.cat([_lpad(ko, w), _lpad(kn, w)]), torch.cat([_lpad(vo, w), _lpad(vn, w)]))
                  for (ko, vo), (kn, vn) in zip(old_kv, new_kv, strict=True)]
            pad = torch.cat([self.pad + (w - w_old), new_pad + (w - w_new)])
            length = torch.cat([self.length, new_len])
        self.ids, self.pad, self.length = self.ids + list(seq_ids), pad, length
        self._set_kv(kv)
        return logits.cpu().numpy()

    def decode(self, seq_ids, tokens):
        torch = self.torch
        if list(seq_ids) != self.ids:  # the scheduler decodes exactly the running rows, in row order
            order = {s: i for i, s in enumerate(self.ids)}
            rows = [order[s] for s in seq_ids]
            if sorted(rows) != list(range(len(self.ids))):
                raise RuntimeError("decode must cover every running sequence")
            tok = [0] * len(rows)
            for r, t in zip(rows, tokens, strict=True):
                tok[r] = t
            logits = self.decode(self.ids, tok)
            return logits[rows]
        w = self._width()
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        mask = (torch.arange(w + 1)[None, :] >= self.pad[:, None]).long().to(self.device)
        pos = self.length[:, None].to(self.device)
        logits, self.cache = self._forward(ids, mask, pos, self.cache)
        self.length = self.length + 1
        return logits.cpu().numpy()

    def release(self, seq_ids):
        torch = self.torch
        gone = set(seq_ids)
        keep = [i for i, s in enumerate(self.ids) if s not in gone]
        if len(keep) == len(self.ids):
            return
        if not keep:
            self.ids, self.cache = [], None
            self.pad = self.length = torch.zeros(0, dtype=torch.long)
            return
        idx = torch.tensor(keep, dtype=torch.long)
        pad = self.pad[idx]
        trim = int(pad.min())
        kv = [(k[idx.to(k.device), :, trim:], v[idx.to(v.device), :, trim:]) for k, v in self._kv(self.cache)]
        self.ids = [self.ids[i] for i in keep]
        self.pad, self.length = pad - trim, self.length[idx]
        self._set_kv(kv)


def _lpad(t, width: int):
    """Left-pad a [B, H, L, D] cache tensor with zeros to ``width`` columns (masked out anyway)."""
    import torch

    extra = width - t.shape[-2]
    if extra <= 0:
        return t
    return torch.cat([t.new_zeros(*t.shape[:-2], extra, t.shape[-1]), t], dim=-2)


class RecomputeRunner:
    """Iteration-level batching for models that only give full-sequence logits (no KV cache)."""

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


def runner_for(model):
    """The runner a loaded handle needs: KV cache for PyTorch modules, recompute otherwise."""
    if getattr(model, "backend", None) == "torch" and hasattr(model, "module"):
        return KVCacheRunner(model)
    return RecomputeRunner(model)
