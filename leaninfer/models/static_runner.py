"""A decode step with static shapes, so that a GPU can replay it as a CUDA graph.

The eager decode step is launch-bound on a GPU: the last H100 run measured ~20 ms per step for
Qwen2.5-0.5B at any batch size (3-5% of the bandwidth bound), i.e. Python and kernel-launch overhead. CUDA
graphs remove that, but need every tensor of the step to keep its shape and address. This runner keeps
the KV runner's layout and join/leave logic and holds the cache in transformers' ``StaticCache``: rows x
capacity stay fixed between membership changes, a step writes one column in place and attends over the
whole capacity under a mask. With ``cuda_graphs=True`` the model's forward is compiled with
``torch.compile(mode="reduce-overhead")``, which captures and replays CUDA graphs per shape.

Which path serves is chosen by measurement (``LEANINFER_DECODE``, see ``TorchModel.runner``): on CPUs the
dynamic runner is faster (no attention over unused capacity), so it stays the default there.
"""

from __future__ import annotations

from .torch_runner import KVCacheRunner

CAPACITY_STEP = 256  # capacity grows in these steps, so shapes (and captured graphs) change rarely


class StaticKVRunner(KVCacheRunner):
    """The KV-cache runner over a ``StaticCache``: same tokens as :class:`KVCacheRunner` (tested), static shapes."""

    def __init__(self, model, cuda_graphs: bool = False):
        super().__init__(model)
        from transformers import StaticCache

        self.StaticCache = StaticCache
        self.capacity = 0
        self._step = self.module
        if cuda_graphs:
            self._step = self.torch.compile(self.module, mode="reduce-overhead", dynamic=False)

    def _set_kv(self, kv: list[tuple]) -> None:
        if not kv:
            self.cache, self.width = None, 0
            return
        width = int(kv[0][0].shape[-2])
        # Room to decode CAPACITY_STEP/2 tokens at least before the next (rare) regrowth.
        self.capacity = -(-(width + CAPACITY_STEP // 2) // CAPACITY_STEP) * CAPACITY_STEP
        cache = self.StaticCache(config=self.module.config, max_cache_len=self.capacity)
        for layer, (k, v) in zip(cache.layers, kv, strict=True):
            layer.lazy_initialization(k, v)
            layer.keys[:, :, :width].copy_(k)
            layer.values[:, :, :width].copy_(v)
            layer.cumulative_length.fill_(width)  # where the next step writes
        self.cache, self.width = cache, width

    def _current_kv(self) -> list[tuple]:
        return [(layer.keys[:, :, :self.width], layer.values[:, :, :self.width]) for layer in self.cache.layers]

    def _decode_mask(self):
        if self.width + 1 > self.capacity:
            self._set_kv([(k.clone(), v.clone()) for k, v in self._current_kv()])
        cols = self.torch.arange(self.capacity)[None, :]
        return ((cols >= self.pad[:, None]) & (cols <= self.width)).long().to(self.device)

    def _decode_forward(self, ids, mask, pos):
        with self.torch.inference_mode():
            out = self._step(input_ids=ids, attention_mask=mask, position_ids=pos, cache=self.cache, use_cache=True)
        return out.logits[:, -1, :].float()
