"""The KV-cache runner for PyTorch causal LMs: what ``TorchModel.runner()`` returns."""

from __future__ import annotations

from .kv_cache import adopted_cache, empty_growing_cache, growing_cache, spare_buffer
from .runner import pad_left_or_right, score_prompt

# Chunked prefill's default part, in tokens. A part delays the running rows by its prefill time, and each part
# also waits a decode step, which lengthens the long prompt's own time to first token. CPUs: at 256, a 480-token
# prompt stalled 8 decoding GPT-2 rows 41% less than whole, for 13% more TTFT (64: 68% less, 2.3x the TTFT; 2-core
# EPYC, scripts/chunked_prefill.py, docs/serving.md). CUDA: a prefill call of up to a few thousand tokens costs
# about its launch overhead, so parts much smaller than vLLM's default step budget (2048) would only add calls.
PREFILL_CHUNK = {"cpu": 256, "cuda": 2048}


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
        self._parts: dict[int, tuple] = {}  # chunked prefills under way: sequence id -> (its own cache, tokens fed)
        # the part size a server uses unless told (--prefill-chunk-tokens): see PREFILL_CHUNK
        self.prefill_chunk = PREFILL_CHUNK["cuda" if str(self.device).startswith("cuda") else "cpu"]

    # -- the cache: what a subclass with another cache layout overrides -------------------------------------
    def _kv(self, cache) -> list[tuple]:
        """[(keys, values)] per layer, [rows, heads, width, dim], of a prefill's cache."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _current_kv(self) -> list[tuple]:
        return self._kv(self.cache)

    def _set_kv(self, kv: list[tuple]) -> None:
        self.cache = growing_cache(kv) if kv else None
        self.width = int(kv[0][0].shape[-2]) if kv else 0

    def _rebuild(self, rows: int, width: int, write) -> None:
        """Replace the cache by one of ``rows`` rows and ``width`` filled columns (and spare ones to append to),
        written in place: ``write(layer, j, t, buf)`` fills ``buf[:, :, :width]`` from the current layer's keys
        (j=0) or values (j=1) ``t``. One allocation and one copy per tensor, where a cat, slice or index and then
        a fill into a growing cache cost two or three: a join of a 480-token prompt into 8 GPT-2 rows took
        123 ms that way, 14 ms this way (2-core EPYC)."""
        buffers = [tuple(write(i, j, t, spare_buffer(t, rows, width)) for j, t in enumerate(pair))
                   for i, pair in enumerate(self._current_kv())]
        self.cache, self.width = adopted_cache(buffers, width), width

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
        logits, scores, new_kv, new_len, width = self._prefill_batch(prompts, top)
        self._join(seq_ids, new_kv, new_len, width)
        return logits.cpu().numpy(), scores

    def prefill_part(self, seq_id, tokens, last: bool):
        """Chunked prefill: feed the next part of ``seq_id``'s prompt. The parts so far are held in a cache of
        the sequence's own (appended in place, ``kv_cache.empty_growing_cache``), outside the running batch, so
        that decode steps go on between parts. With the ``last`` part the sequence joins the batch (as a one-row
        prefill joins it) and the logits of its last prompt position are returned ([1, vocab]); before it, None.
        A part that fails drops what was fed."""
        torch = self.torch
        cache, fed = self._parts.pop(seq_id, (None, 0))
        n = len(tokens)
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        pos = torch.arange(fed, fed + n, device=self.device)[None, :]
        mask = torch.ones(1, fed + n, dtype=torch.long, device=self.device)
        logits, cache = self._forward(ids, mask, pos, cache if cache is not None else empty_growing_cache())
        if not last:
            self._parts[seq_id] = (cache, fed + n)
            return None
        self._join([seq_id], self._kv(cache), torch.tensor([fed + n], dtype=torch.long), fed + n)
        return logits.cpu().numpy()

    def _join(self, seq_ids, new_kv, new_len, width) -> None:
        """Add prefilled rows to the running batch: ``new_kv`` per layer, [rows, heads, width, dim], row r's
        ``new_len[r]`` real tokens in its last columns."""
        torch = self.torch
        new_pad = width - new_len
        if self.cache is None:
            self.ids, self.pad, self.length = list(seq_ids), new_pad, new_len
            self._set_kv(new_kv)
            return
        # both batches padded on the left to a common width, stacked along the rows
        w_old, rows_old = self.width, len(self.ids)
        w = max(w_old, width)

        def write(i, j, old, buf):
            buf[:rows_old, :, :w - w_old].zero_()  # padding: masked, but zeros keep it finite
            buf[:rows_old, :, w - w_old:w].copy_(old)
            buf[rows_old:, :, :w - width].zero_()
            buf[rows_old:, :, w - width:w].copy_(new_kv[i][j])
            return buf

        self._rebuild(rows_old + len(seq_ids), w, write)
        self.pad = torch.cat([self.pad + (w - w_old), new_pad + (w - width)])
        self.length = torch.cat([self.length, new_len])
        self.ids = self.ids + list(seq_ids)

    def fork(self, seq_id, new_ids):
        """Add ``new_ids`` as copies of the running row ``seq_id`` (its cache, padding and length)."""
        if not new_ids:
            return
        torch = self.torch
        row, rows = self.ids.index(seq_id), len(self.ids)

        def write(i, j, old, buf):
            buf[:rows, :, :self.width].copy_(old)
            buf[rows:, :, :self.width].copy_(old[row:row + 1])  # broadcast over the copies
            return buf

        self._rebuild(rows + len(new_ids), self.width, write)
        idx = torch.tensor([row] * len(new_ids), dtype=torch.long)
        self.ids = self.ids + list(new_ids)
        self.pad, self.length = torch.cat([self.pad, self.pad[idx]]), torch.cat([self.length, self.length[idx]])

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
        for s in gone:
            self._parts.pop(s, None)
        keep = [i for i, s in enumerate(self.ids) if s not in gone]
        if len(keep) == len(self.ids):
            return
        if not keep:
            self.ids, self.cache, self.width = [], None, 0
            self.pad = self.length = torch.zeros(0, dtype=torch.long)
            return
        idx = torch.tensor(keep, dtype=torch.long)
        pad = self.pad[idx]
        trim = int(pad.min())  # leading columns that are padding in every row left
        width = self.width - trim
        rows = idx.to(self.cache.layers[0].keys.device)

        def write(i, j, old, buf):
            torch.index_select(old[:, :, trim:], 0, rows, out=buf[:, :, :width])
            return buf

        self._rebuild(len(keep), width, write)
        self.ids = [self.ids[i] for i in keep]
        self.pad, self.length = pad - trim, self.length[idx]

