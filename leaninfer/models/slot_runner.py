"""A slot pool for the KV cache: sequence slots x capacity allocated once, so that a decode step keeps its shapes
and addresses whatever joins and leaves: what a GPU needs to replay the step as a CUDA graph.

Design note (issue 21). vLLM and SGLang decode the same way, with paged blocks where this has one slot a row:
- The pool: per layer, keys and values ``[slots, kv_heads, capacity, head_dim]``. Slot s holds its sequence's
  tokens in columns ``[0, length[s])``: no padding, and no row ever moves.
- A join: the newcomers are prefilled as their own batch by the dynamic runner's code (so their keys and values
  are those numbers exactly), and each row's real columns are copied into a free slot, the lowest one, so that
  active slots stay packed low and the decode bucket small. A long prompt may be prefilled in parts
  (``prefill_part``, the scheduler's chunked prefill) in a cache of its own; it takes a slot with its last part.
  A leave marks its slot free; nothing is copied.
- A decode step runs over slots ``[0, bucket)``, the smallest of :func:`buckets` that covers the highest active
  slot. Each row writes its new key and value at column ``length[s]`` (one ``index_put`` per layer) and attends
  over ``[0, length[s]]`` under a 4D additive mask (transformers passes a 4D mask through untouched); a free
  slot inside the bucket computes a pad token at its own column 0, masked and discarded.
- Capacity starts at ``min(max_seq_len, INITIAL_CAPACITY)`` and doubles when a row would pass it: the pool is
  copied (rare, logged), and the graphs are captured again. Every slot grows with it: one long conversation
  costs ``slots`` times its length in memory, where paged blocks would cost its own length (the price of one
  slot a row).
- With ``cuda_graphs``, one graph per bucket is captured by :meth:`SlotPoolRunner.warmup` (the server calls it
  before ``/health`` is green: serving captures nothing after, unless capacity doubles) and replayed per step;
  its inputs (token, position) are copied into static buffers, its logits read from a static one. Capture is
  plain ``torch.cuda.CUDAGraph`` around the eager forward: nothing is compiled, so there is no recompile limit.

Attention is transformers' own (SDPA) over the slot's whole capacity, masked. A paged kernel (FlashInfer) would
skip the unused capacity, but it is neither on the GPU machine (no network; its wheels and JIT cache pass the
64 MiB carry limit) nor needed at the capacities served here; FlexAttention needs torch.compile for its speed.

On CPUs the dynamic runner stays the default: attending over unused capacity costs there, with no launch
overhead to win back (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import heapq
import logging
import time

from .torch_runner import KVCacheRunner

log = logging.getLogger("leaninfer.decode")

INITIAL_CAPACITY = 1024  # columns a slot holds before the pool doubles (prompt + generated tokens)


def buckets(slots: int) -> list[int]:
    """Decode batch sizes captured: powers of two below the pool, and the pool.

    >>> buckets(48), buckets(1)
    ([1, 2, 4, 8, 16, 32, 48], [1])
    """
    out, b = [], 1
    while b < slots:
        out.append(b)
        b *= 2
    return out + [slots]


@functools.cache
def _slot_classes():
    from transformers.cache_utils import Cache, CacheLayerMixin

    class SlotLayer(CacheLayerMixin):
        """One layer's pool. A decode step over ``b`` rows writes each row's new column at ``write_pos[:b]``
        and returns the first ``b`` slots whole (the mask hides what is past each row's length)."""

        is_compileable = True
        is_sliding = False

        def __init__(self, keys, values, rows, write_pos):
            super().__init__()
            self.keys, self.values, self.rows, self.write_pos = keys, values, rows, write_pos
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states) -> None:  # allocated by the pool
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            b = key_states.shape[0]
            rows, pos = self.rows[:b], self.write_pos[:b]
            self.keys[rows, :, pos] = key_states[:, :, 0]
            self.values[rows, :, pos] = value_states[:, :, 0]
            return self.keys[:b], self.values[:b]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.keys.shape[-2], 0

        def get_seq_length(self) -> int:
            return 0

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    return Cache, SlotLayer


class SlotPoolRunner(KVCacheRunner):
    """The :class:`~.runner.Runner` over a slot pool (see the module's note): the dynamic runner's tokens
    (tested through joins, leaves, bucket changes and capacity growth), static decode shapes."""

    def __init__(self, model, slots: int, cuda_graphs: bool = False, max_seq_len: int | None = None):
        super().__init__(model)
        torch = self.torch
        if slots < 1:
            raise ValueError(f"slots={slots}: a pool needs at least one slot")
        self.slots = slots
        self.buckets = buckets(slots)
        self.max_seq_len = max_seq_len or getattr(model, "max_seq_length", INITIAL_CAPACITY)
        self.capacity = 0  # allocated at the first join (or warmup), when the layers' shapes are known
        self.cuda_graphs = cuda_graphs
        self.slot_of: dict[int, int] = {}  # sequence id -> its slot
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self.lengths = [0] * slots  # real tokens per slot (host copy; the device copy is write_pos)
        self.rows_t = torch.arange(slots, device=self.device)
        self.write_pos = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.layers: list = []
        self.graphs: dict[int, tuple] = {}  # bucket -> (graph, ids buffer, pos buffer, logits buffer)
        self.captures = 0  # graphs captured so far (start-up, and again after a capacity doubling)
        self.capture_s = 0.0

    # -- the pool ---------------------------------------------------------------------------------------
    def _allocate(self, kv_example: list[tuple], capacity: int) -> None:
        """Pool tensors shaped after one prefill's keys/values; the old pool's columns carried over."""
        torch = self.torch
        old = self.layers
        Cache, SlotLayer = _slot_classes()
        layers = []
        for i, (k, v) in enumerate(kv_example):
            keys = torch.zeros(self.slots, k.shape[1], capacity, k.shape[-1], dtype=k.dtype, device=k.device)
            values = torch.zeros(self.slots, v.shape[1], capacity, v.shape[-1], dtype=v.dtype, device=v.device)
            if old:
                keys[:, :, :self.capacity].copy_(old[i].keys)
                values[:, :, :self.capacity].copy_(old[i].values)
            layers.append(SlotLayer(keys, values, self.rows_t, self.write_pos))
        self.layers, self.capacity = layers, capacity
        self.cache = Cache(layers=layers)
        self._cols = torch.arange(capacity, device=self.device)
        self._neg = torch.finfo(kv_example[0][0].dtype).min
        self.graphs = {}

    def _ensure_capacity(self, kv_example: list[tuple], needed: int) -> None:
        if needed <= self.capacity:
            return
        if needed > self.max_seq_len:
            raise RuntimeError(f"a sequence needs {needed} columns, past the model's context of {self.max_seq_len}")
        capacity = max(self.capacity, min(self.max_seq_len, INITIAL_CAPACITY))
        while capacity < needed:
            capacity = min(self.max_seq_len, 2 * capacity)
        grown = bool(self.capacity)
        t0 = time.perf_counter()
        self._allocate(kv_example, capacity)
        if grown:
            log.info("decode slot pool grew to %d columns x %d slots (%.2f s)", capacity, self.slots,
                     time.perf_counter() - t0)
        if self.cuda_graphs and self._captured_once:
            self._capture_all()

    _captured_once = False

    def _take_slot(self) -> int:
        if not self._free:
            raise RuntimeError(f"the slot pool is full ({self.slots} sequences): the scheduler admits at most "
                               "max_batch_size")
        return heapq.heappop(self._free)

    # -- Runner -------------------------------------------------------------------------------------------
    def _join(self, seq_ids, kv, lengths, width):
        self._ensure_capacity(kv, max(int(n) for n in lengths) + 1)
        taken = []
        try:
            for r, (seq_id, n) in enumerate(zip(seq_ids, lengths.tolist(), strict=True)):
                slot = self._take_slot()
                taken.append(slot)
                for layer, (k, v) in zip(self.layers, kv, strict=True):  # this row's real columns only
                    layer.keys[slot, :, :n].copy_(k[r, :, width - n:])
                    layer.values[slot, :, :n].copy_(v[r, :, width - n:])
                self.slot_of[seq_id], self.lengths[slot] = slot, n
        except BaseException:
            for slot in taken:
                heapq.heappush(self._free, slot)
            for seq_id in seq_ids:
                self.slot_of.pop(seq_id, None)
            raise
        self.ids = list(self.slot_of)

    def fork(self, seq_id, new_ids):
        src = self.slot_of[seq_id]
        n = self.lengths[src]
        for new in new_ids:
            slot = self._take_slot()
            for layer in self.layers:
                layer.keys[slot, :, :n].copy_(layer.keys[src, :, :n])
                layer.values[slot, :, :n].copy_(layer.values[src, :, :n])
            self.slot_of[new], self.lengths[slot] = slot, n
        self.ids = list(self.slot_of)

    def release(self, seq_ids):
        for seq_id in seq_ids:
            self._parts.pop(seq_id, None)
            slot = self.slot_of.pop(seq_id, None)
            if slot is not None:
                self.lengths[slot] = 0
                heapq.heappush(self._free, slot)
        self.ids = list(self.slot_of)

    def bucket_for(self, top_slot: int) -> int:
        return next(b for b in self.buckets if b > top_slot)

    def decode(self, seq_ids, tokens):
        torch = self.torch
        slots = [self.slot_of[s] for s in seq_ids]
        longest = max(self.lengths[s] for s in slots)
        self._ensure_capacity([(layer.keys, layer.values) for layer in self.layers], longest + 1)
        b = self.bucket_for(max(slots))
        ids = [self.pad_id] * b
        pos = [0] * b
        for slot, tok in zip(slots, tokens, strict=True):
            ids[slot], pos[slot] = tok, self.lengths[slot]
        ids_t = torch.tensor(ids, dtype=torch.long)[:, None]
        pos_t = torch.tensor(pos, dtype=torch.long)
        if self.cuda_graphs and b in self.graphs:
            graph, ids_buf, pos_buf, out = self.graphs[b]
            ids_buf.copy_(ids_t, non_blocking=True)
            pos_buf.copy_(pos_t[:, None], non_blocking=True)
            self.write_pos[:b].copy_(pos_t, non_blocking=True)
            graph.replay()
            logits = out
        else:
            ids_t, pos_t = ids_t.to(self.device), pos_t.to(self.device)
            self.write_pos[:b].copy_(pos_t)
            logits = self._step(ids_t, pos_t[:, None])
        for slot in slots:
            self.lengths[slot] += 1
        return logits[torch.tensor(slots, device=logits.device)].float().cpu().numpy()

    def _step(self, ids, pos):
        """One decode step of the first ``len(ids)`` slots (``write_pos`` set): logits of the new position."""
        torch = self.torch
        b = ids.shape[0]
        visible = self._cols[None, :] <= self.write_pos[:b, None]
        dtype = self.layers[0].keys.dtype
        mask = torch.zeros(b, 1, 1, self.capacity, dtype=dtype, device=self.device).masked_fill_(
            ~visible[:, None, None, :], self._neg)
        with torch.inference_mode():
            out = self.module(input_ids=ids, attention_mask=mask, position_ids=pos, cache=self.cache,
                              use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    # -- CUDA graphs --------------------------------------------------------------------------------------
    def warmup(self) -> dict:
        """Allocate the pool and, with ``cuda_graphs``, capture one graph per bucket; returns what it did.
        Safe while rows are active: a capture's forward writes only the column each row writes next anyway
        (and column 0 of free slots), which the next real step writes before it reads."""
        torch = self.torch
        t0 = time.perf_counter()
        if not self.layers:
            _, _, kv, _, _ = self._prefill_batch([[self.pad_id]], None)
            self._ensure_capacity(kv, 2)
        if self.cuda_graphs:
            self._capture_all()
            self._captured_once = True
        info = {"slots": self.slots, "capacity": self.capacity, "buckets": self.buckets,
                "captured": sorted(self.graphs), "seconds": round(time.perf_counter() - t0, 3)}
        log.info("decode slot pool ready: %s", info)
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            torch.cuda.synchronize()
        return info

    def _capture_all(self) -> None:
        torch = self.torch
        t0 = time.perf_counter()
        self.graphs = {}
        pool = torch.cuda.graph_pool_handle()
        # Each row's next column (0 for a free slot): the only ones the capture runs write, and the ones the next
        # real step writes before it reads them. (The last step's positions would be columns already written.)
        self.write_pos.copy_(torch.tensor(self.lengths, dtype=torch.long))
        for b in sorted(self.buckets, reverse=True):  # the largest first: the others reuse its memory pool
            ids_buf = torch.full((b, 1), self.pad_id, dtype=torch.long, device=self.device)
            pos_buf = self.write_pos[:b, None].clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up runs on a side stream, as the CUDA graph docs ask
                    self._step(ids_buf, pos_buf)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._step(ids_buf, pos_buf)
            self.graphs[b] = (graph, ids_buf, pos_buf, out)
            self.captures += 1
        torch.cuda.synchronize()
        self.capture_s += time.perf_counter() - t0
        log.info("captured %d decode graphs (buckets %s, capacity %d) in %.2f s", len(self.graphs),
                 sorted(self.graphs), self.capacity, time.perf_counter() - t0)
