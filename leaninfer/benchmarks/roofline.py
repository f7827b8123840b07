"""Rooflines: the bytes and FLOPs of one step of a model, and where a measured step sits against the bounds.

FLOPs come from the model's layer shapes (``Model.matmul_flops_per_token``: body and LM head apart), not from
a parameter count, so packed quantized weights count like the FP32 weights they replace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Roofline:
    """Where a measurement sits against the hardware's bounds.

    `bytes_per_step` (weights + KV cache read by one forward step) and `flops_per_step` come from the model's
    shape; bound times are bytes / bandwidth and FLOPs / peak. The fractions say how much of each bound
    the measured step time reached (1.0 = at the bound). `bound` is 'memory' or 'compute' (the larger
    bound), or 'unknown' when either the bandwidth or the peak at the model's precision is unknown: a missing
    peak is never filled in from another precision.
    """

    bytes_per_step: float
    flops_per_step: float
    bandwidth_bytes_per_s: float | None
    peak_flops_per_s: float | None
    memory_bound_s: float | None
    compute_bound_s: float | None
    measured_step_s: float | None
    fraction_of_memory_bound: float | None
    fraction_of_compute_bound: float | None
    bound: str

    @classmethod
    def of(cls, bytes_per_step, flops_per_step, measured_step_s=None, bandwidth_bytes_per_s=None,
           peak_flops_per_s=None) -> Roofline:
        """The roofline of one step.

        >>> r = Roofline.of(2e9, 1e9, 0.004, bandwidth_bytes_per_s=1e12, peak_flops_per_s=1e12)
        >>> r.memory_bound_s, r.compute_bound_s, r.bound, r.fraction_of_memory_bound
        (0.002, 0.001, 'memory', 0.5)
        >>> Roofline.of(2e9, 1e9, 0.004, bandwidth_bytes_per_s=1e12).bound
        'unknown'
        """
        mem = bytes_per_step / bandwidth_bytes_per_s if bandwidth_bytes_per_s else None
        comp = flops_per_step / peak_flops_per_s if peak_flops_per_s else None
        bound = "unknown" if mem is None or comp is None else ("memory" if mem >= comp else "compute")
        step = finite(measured_step_s)
        frac = lambda b: None if b is None or not step else b / step  # noqa: E731
        return cls(float(bytes_per_step), float(flops_per_step), bandwidth_bytes_per_s, peak_flops_per_s, mem, comp,
                   step, frac(mem), frac(comp), bound)

    @property
    def roofline_s(self) -> float | None:
        """The larger of the two bounds; None when either is unknown."""
        if self.memory_bound_s is None or self.compute_bound_s is None:
            return None
        return max(self.memory_bound_s, self.compute_bound_s)

    def to_dict(self) -> dict:
        return asdict(self)


def model_shape(config) -> dict:
    """Layers, hidden size and KV width of a transformers config (GPT-2 and Llama/BERT naming alike)."""
    g = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None)), default)  # noqa: E731
    layers = int(g("num_hidden_layers", "n_layer", default=0))
    hidden = int(g("hidden_size", "n_embd", default=0))
    heads = int(g("num_attention_heads", "n_head", default=1))
    kv_heads = int(g("num_key_value_heads", default=heads))
    head_dim = int(g("head_dim", default=hidden // max(heads, 1)))
    return {"layers": layers, "hidden": hidden, "kv_width": kv_heads * head_dim}


def attention_flops(shape: dict, queries: int, context: int) -> float:
    """QK^T and AV of `queries` tokens over `context` keys: 2 products x 2 FLOPs x layers x hidden each."""
    return 4.0 * shape["layers"] * queries * context * shape["hidden"]


def decode_step_cost(weight_bytes: int, flops: dict, shape: dict, batch: int, context: int,
                     kv_bytes_per_elem: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step of `batch` sequences at `context` tokens of KV cache.

    Bytes: every weight once (the batch shares the read) + the KV cache (K and V, every layer, every sequence).
    FLOPs: per sequence, one token through the body and the LM head, + attention over the context.

    >>> decode_step_cost(1000, {"body": 100, "lm_head": 10}, {"layers": 2, "hidden": 4, "kv_width": 4}, 3, 5, 2)
    (1480.0, 810.0)
    """
    kv = 2 * shape["layers"] * batch * context * shape["kv_width"] * kv_bytes_per_elem
    per_seq = flops["body"] + flops["lm_head"] + attention_flops(shape, 1, context)
    return float(weight_bytes + kv), float(batch * per_seq)


def prefill_cost(weight_bytes: int, flops: dict, shape: dict, batch: int, prompt: int) -> tuple[float, float]:
    """(bytes, FLOPs) of the prefill of `batch` prompts of `prompt` tokens: every position through the body,
    the LM head for the last position only (the runner asks for the next token's logits only).

    >>> prefill_cost(1000, {"body": 100, "lm_head": 10}, {"layers": 2, "hidden": 4, "kv_width": 4}, 3, 5)
    (1000.0, 3930.0)
    """
    per_seq = prompt * flops["body"] + flops["lm_head"] + attention_flops(shape, prompt, prompt)
    return float(weight_bytes), float(batch * per_seq)


def forward_cost(weight_bytes: int, flops: dict, shape: dict, batch: int, seq: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one full forward of `batch` x `seq` tokens of an encoder (embeddings: no LM head)."""
    per_seq = seq * (flops["body"] + flops["lm_head"]) + attention_flops(shape, seq, seq)
    return float(weight_bytes), float(batch * per_seq)


def finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else x
