"""A KV cache that appends in place: transformers' ``DynamicLayer`` concatenates, copying the whole cache of
every layer at every decode step (at batch 16 on a 2-core CPU that was 15% of GPT-2's step time).

Each layer keeps a buffer with spare columns and exposes ``keys``/``values`` as views of its filled prefix;
a step writes one column in place. When the buffer is full it doubles (amortized O(1) per token). The cache
is still a ``DynamicCache`` to the model, so attention, masks and every architecture work unchanged.
"""

from __future__ import annotations

import functools

SPARE_COLUMNS = 64


@functools.cache
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def fill(self, keys, values) -> None:
            self.lazy_initialization(keys, values)
            self._reserve(keys, values, keys.shape[-2] + SPARE_COLUMNS)
            self._k[..., : keys.shape[-2], :].copy_(keys)
            self._v[..., : values.shape[-2], :].copy_(values)
            self._set_views(keys.shape[-2])

        def _reserve(self, keys, values, columns: int) -> None:
            k = keys.new_empty(*keys.shape[:-2], columns, keys.shape[-1])
            v = values.new_empty(*values.shape[:-2], columns, values.shape[-1])
            if getattr(self, "_k", None) is not None and self.keys is not None:
                n = self.keys.shape[-2]
                k[..., :n, :].copy_(self.keys)
                v[..., :n, :].copy_(self.values)
            self._k, self._v = k, v

        def adopt(self, k, v, n: int) -> None:
            """Take buffers whose first ``n`` columns are filled (the rest spare) as they are: no copy."""
            self.lazy_initialization(k[..., :n, :], v[..., :n, :])
            self._k, self._v = k, v
            self._set_views(n)

        def _set_views(self, n: int) -> None:
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or getattr(self, "_k", None) is None:
                self.fill(key_states, value_states)
                return self.keys, self.values
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if n + m > self._k.shape[-2]:
                self._reserve(key_states, value_states, max(2 * self._k.shape[-2], n + m))
            self._k[..., n:n + m, :].copy_(key_states)
            self._v[..., n:n + m, :].copy_(value_states)
            self._set_views(n + m)
            return self.keys, self.values

    return GrowingLayer


def growing_cache(kv: list[tuple]):
    """A ``DynamicCache`` whose layers hold a copy of ``kv`` ([(keys, values)] per layer, all of one width) and
    append in place."""
    n = int(kv[0][0].shape[-2])
    buffers = []
    for pair in kv:
        copies = []
        for t in pair:
            buf = spare_buffer(t, t.shape[0], n)
            buf[..., :n, :].copy_(t)
            copies.append(buf)
        buffers.append(tuple(copies))
    return adopted_cache(buffers, n)


def spare_buffer(like, rows: int, width: int):
    """An uninitialized ``[rows, heads, width + SPARE_COLUMNS, dim]`` buffer shaped after ``like``, for
    :func:`adopted_cache` (a caller that writes its cache into it in place saves a copy)."""
    return like.new_empty(rows, like.shape[1], width + SPARE_COLUMNS, like.shape[-1])


def adopted_cache(buffers: list[tuple], n: int):
    """A ``DynamicCache`` over ``buffers`` ([(keys, values)] per layer, from :func:`spare_buffer`) whose first
    ``n`` columns are filled: they are used in place and appended to in place."""
    from transformers import DynamicCache

    layer_cls = _growing_layer_class()
    layers = []
    for k, v in buffers:
        layer = layer_cls()
        layer.adopt(k, v, n)
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def empty_growing_cache():
    """An empty ``DynamicCache`` whose layers, made at the first forward, append in place: for a prompt fed in
    parts (chunked prefill), where transformers' own layers would copy everything fed so far at every part."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache
