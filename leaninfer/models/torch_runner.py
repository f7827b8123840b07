"""The KV-cache runner for PyTorch causal LMs: what ``TorchModel.runner()`` returns."""

from __future__ import annotations

from .kv_cache import growing_cache
from .runner import pad_left_or_right, score_prompt


class KVCacheRunner:
    """A running batch over a transformers causal LM with a ``DynamicCache``.

    Design note. Rows are left-padded: row r holds ``pad[r]`` padding columns, then its real tokens, so every
    row's newest token sits in the last column and one decode step appends one column for everybody. The
    attention mask hides padding and ``position_ids`` count real tokens only, so a row computes what it would
    compute alone (greedy outputs equal, tested). Joining: the newcomers are prefilled as their own
    left-padded batch, then the two caches are padded on the left to the same width and concatenated along
    the batch. Leaving: rows are dropped and leading columns that became all-padding are trimmed. The cache
    object is kept between steps (the model appends to it in place, ``kv_cache.py``), and rebuilt only when
    membership changes.
    """

    has_cache = True

    def __init__(self, model):
        import torch
        from transformers import DynamicCache

        self.torch, self.DynamicCache = torch, DynamicCache
        self.module = model.module
        self.device = model.device
        self.pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        self.ids: list[int] = []
        self.pad = torch.zeros(0, dtype=torch.long)  # left padding per row
        self.length = torch.zeros(0, dtype=torch.long)  # real tokens per row (incl. generated ones fed)
        self.cache = None  # DynamicCache, width == pad + length for every row
        self.width = 0  # columns held in the cache

    # -- the cache: what a subclass with another cache layout overrides -------------------------------------
    def _kv(self, cache) -> list[tuple]:
        """[(keys, values)] per layer, [rows, heads, width, dim], of a prefill's cache."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _current_kv(self) -> list[tuple]:
        return self._kv(self.cache)

    def _set_kv(self, kv: list[tuple]) -> None:
        self.cache = growing_cache(kv) if kv else None
        self.width = int(kv[0][0].shape[-2]) if kv else 0

    def _decode_mask(self):
        """Attention mask of a decode step: each row's padding columns hidden, the new column visible."""
        return (self.torch.arange(self.width + 1)[None, :] >= self.pad[:, None]).long().to(self.device)

    def _decode_forward(self, ids, mask, pos):
        logits, self.cache = self._forward(ids, mask, pos, self.cache)
        return logits

    def _forward(self, input_ids, attention_mask, position_ids, cache, every_position: bool = False):
        with self.torch.inference_mode():
            # Logits for the last position only, unless a prompt is scored: the LM head over every prompt
            # position is otherwise wasted work.
            out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=True,
                              logits_to_keep=0 if every_position else 1)  # `cache`: transformers 5 name
        if every_position:
            return out.logits.float(), out.cache
        return out.logits[:, -1, :].float(), out.cache

    # -- Runner -------------------------------------------------------------------------------------------
    def prefill(self, seq_ids, prompts):
        return self._prefill(seq_ids, prompts, None)[0]

    def prefill_scoring(self, seq_ids, prompts, top):
        return self._prefill(seq_ids, prompts, list(top))

    def _prefill_batch(self, prompts, top):
        """The newcomers prefilled as their own left-padded batch: ``(logits of each last position, prompt
        scores or None, [(keys, values)] per layer, real lengths, padded width)``."""
        torch = self.torch
        enc = pad_left_or_right(prompts, self.pad_id, left=True)
        ids = torch.from_numpy(enc["input_ids"]).to(self.device)
        mask = torch.from_numpy(enc["attention_mask"]).to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        scoring = top is not None and any(k is not None for k in top)
        logits, cache = self._forward(ids, mask, pos, self.DynamicCache(), every_position=scoring)
        scores = None
        if scoring:  # left padding: row r's prompt sits in the last len(prompt) columns
            w = ids.shape[1]
            scores = [None if k is None else score_prompt(logits[r, w - len(p):].cpu().numpy(), p, k)
                      for r, (p, k) in enumerate(zip(prompts, top, strict=True))]
            logits = logits[:, -1, :]
        new_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        return logits, scores, self._kv(cache), new_len, int(ids.shape[1])

    def _prefill(self, seq_ids, prompts, top):
        torch = self.torch
        logits, scores, new_kv, new_len, width = self._prefill_batch(prompts, top)
        new_pad = width - new_len
        if self.cache is None:
            kv, pad, length = new_kv, new_pad, new_len
        else:
            old_kv, w_old, w_new = self._current_kv(), self.width, width
            w = max(w_old, w_new)
            kv = [(torch.cat([_lpad(ko, w), _lpad(kn, w)]), torch.cat([_lpad(vo, w), _lpad(vn, w)]))
                  for (ko, vo), (kn, vn) in zip(old_kv, new_kv, strict=True)]
            pad = torch.cat([self.pad + (w - w_old), new_pad + (w - w_new)])
            length = torch.cat([self.length, new_len])
        self.ids, self.pad, self.length = self.ids + list(seq_ids), pad, length
        self._set_kv(kv)
        return logits.cpu().numpy(), scores

    def fork(self, seq_id, new_ids):
        """Add ``new_ids`` as copies of the running row ``seq_id`` (its cache, padding and length)."""
        if not new_ids:
            return
        torch = self.torch
        row = self.ids.index(seq_id)
        idx = torch.tensor([row] * len(new_ids), dtype=torch.long)
        kv = [(torch.cat([k, k[idx.to(k.device)]]), torch.cat([v, v[idx.to(v.device)]]))
              for k, v in self._current_kv()]
        self.ids = self.ids + list(new_ids)
        self.pad, self.length = torch.cat([self.pad, self.pad[idx]]), torch.cat([self.length, self.length[idx]])
        self._set_kv(kv)

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
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        pos = self.length[:, None].to(self.device)
        logits = self._decode_forward(ids, self._decode_mask(), pos)
        self.length = self.length + 1
        self.width += 1
        return logits.cpu().numpy()

    def release(self, seq_ids):
        torch = self.torch
        gone = set(seq_ids)
        keep = [i for i, s in enumerate(self.ids) if s not in gone]
        if len(keep) == len(self.ids):
            return
        if not keep:
            self.ids, self.cache, self.width = [], None, 0
            self.pad = self.length = torch.zeros(0, dtype=torch.long)
            return
        idx = torch.tensor(keep, dtype=torch.long)
        pad = self.pad[idx]
        trim = int(pad.min())
        kv = [(k[idx.to(k.device), :, trim:], v[idx.to(v.device), :, trim:]) for k, v in self._current_kv()]
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
