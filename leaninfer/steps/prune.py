"""Pruning: unstructured (magnitude, 2:4) and structured (attention heads, FFN neurons, whole layers).

What each buys, honestly:

* ``prune-magnitude`` zeroes weights. Dense kernels do exactly the same work on zeros, so it is **not
  faster**, and a dense file is **not smaller**; it saves disk only when stored sparse (the step reports by
  how much), and it is a starting point for distillation or for sparse runtimes.
* ``prune-heads``, ``prune-ffn``, ``drop-layers`` really remove rows and columns: smaller matrices, fewer
  FLOPs, faster on every backend. The config is rewritten to the new shapes (uniform per layer, because
  transformers 5 has no per-layer sizes and dropped ``pruned_heads``), so the result saves with
  ``save_pretrained`` and reloads with plain transformers.
* ``prune-2of4`` makes every group of four weights hold two zeros and swaps the weights to PyTorch's
  semi-structured sparse kernels, which exist only on NVIDIA GPUs of compute capability 8.0 or newer.

Importance is measured on calibration texts (the ``--calibration`` file, else the bundled default texts):
heads and neurons by the size of their contribution to the block output (activation x outgoing weight
norm), layers by the measured change of the model output when the layer is removed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..data import default_texts
from ..errors import StepError
from ..models.torch_modules import mean_pool_normalize
from .common import FilteredStep, ModuleFilter, StepConfig, StepContext, log, register

# --------------------------------------------------------------------------------------------------------
# Architecture adapters: where the blocks, FFN and attention projections live, and which config fields
# describe their sizes. A table, not if/elif chains; add a row for a new family.


@dataclass(frozen=True)
class Arch:
    layers: tuple[str, ...]  # candidate paths of the ModuleList of blocks (first that exists wins)
    layers_config: str  # config field holding the number of blocks
    ffn_in: tuple[str, ...]  # projections into the FFN (output neurons pruned), relative to a block
    ffn_out: str  # projection out of the FFN (input neurons pruned)
    ffn_config: str  # config field holding the FFN width
    attn_q: str | None = None  # grouped-query attention with an explicit head_dim (Llama family)
    attn_k: str | None = None
    attn_v: str | None = None
    attn_o: str | None = None


_BERT = Arch(layers=("encoder.layer", "bert.encoder.layer", "roberta.encoder.layer"),
             layers_config="num_hidden_layers", ffn_in=("intermediate.dense",), ffn_out="output.dense",
             ffn_config="intermediate_size")
_GPT2 = Arch(layers=("transformer.h", "h"), layers_config="n_layer", ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj",
             ffn_config="n_inner")
_LLAMA = Arch(layers=("model.layers", "layers"), layers_config="num_hidden_layers",
              ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj", ffn_config="intermediate_size",
              attn_q="self_attn.q_proj", attn_k="self_attn.k_proj", attn_v="self_attn.v_proj",
              attn_o="self_attn.o_proj")

ARCHS: dict[str, Arch] = {"bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "gpt2": _GPT2,
                          "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA}


def arch_of(module) -> Arch:
    mt = module.config.model_type
    if mt not in ARCHS:
        raise StepError(f"structured pruning does not know model type {mt!r}; supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[mt]


def layers_of(module, arch: Arch):
    """(parent module, attribute name, ModuleList) of the transformer blocks."""
    for path in arch.layers:
        *head, attr = path.split(".")
        try:
            parent = _sub(module, ".".join(head)) if head else module
            return parent, attr, getattr(parent, attr)
        except AttributeError:
            continue
    raise StepError(f"cannot find the transformer blocks of {type(module).__name__} (looked for {arch.layers})")


def _sub(block, path: str):
    for part in path.split("."):
        block = getattr(block, part)
    return block


def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D"  # GPT-2: weight is [in, out]


def _out_weight(m):
    """Weight as [out, in] whatever the module type (a view, not a copy)."""
    return m.weight.t() if _is_conv1d(m) else m.weight


def keep_outputs(m, idx) -> None:
    """Keep only output features ``idx`` of a Linear/Conv1D, in place."""
    import torch

    with torch.no_grad():
        if _is_conv1d(m):
            m.weight = torch.nn.Parameter(m.weight[:, idx].clone())
            m.nf = len(idx)
        else:
            m.weight = torch.nn.Parameter(m.weight[idx].clone())
            m.out_features = len(idx)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(m.bias[idx].clone())


def keep_inputs(m, idx) -> None:
    """Keep only input features ``idx`` of a Linear/Conv1D, in place."""
    import torch

    with torch.no_grad():
        if _is_conv1d(m):
            m.weight = torch.nn.Parameter(m.weight[idx].clone())
        else:
            m.weight = torch.nn.Parameter(m.weight[:, idx].clone())
            m.in_features = len(idx)


# --------------------------------------------------------------------------------------------------------
# Calibration: run texts through the model, with hooks recording what importance needs.


def calibration_batches(model, ctx: StepContext, num_texts: int, batch_size: int = 16, max_length: int = 128):
    texts = (ctx.calibration_texts or default_texts())[:num_texts]
    if not texts:
        raise StepError("importance scoring needs calibration texts; none were given")
    texts = sorted(texts, key=len)  # less padding
    return [model.tokenize(texts[i:i + batch_size], max_length=max_length) for i in range(0, len(texts), batch_size)]


def _forward(model, module, enc):
    import torch

    inputs = {k: torch.from_numpy(v).to(model.device) for k, v in enc.items()}
    with torch.inference_mode():
        return module(**inputs), inputs["attention_mask"]


def output_signature(model, module, batches) -> list:
    """What the model computes on the batches: pooled embeddings, or next-token log-probabilities."""
    outs = []
    for enc in batches:
        out, mask = _forward(model, module, enc)
        if model.task == "embedding":
            outs.append(mean_pool_normalize(out.last_hidden_state.float(), mask))
        else:
            outs.append((out.logits.float().log_softmax(-1), mask))
    return outs


def output_distance(task: str, ref: list, other: list) -> float:
    """1 - mean cosine (embeddings) or mean KL(ref || other) over real tokens (causal LMs)."""
    import torch

    if task == "embedding":
        return float(1 - torch.cat([(a * b).sum(-1) for a, b in zip(ref, other, strict=True)]).mean())
    total, n = 0.0, 0
    for (lp, mask), (lq, _) in zip(ref, other, strict=True):
        kl = (lp.exp() * (lp - lq)).sum(-1)
        total += float((kl * mask).sum())
        n += int(mask.sum())
    return total / max(n, 1)


@contextlib.contextmanager
def input_hooks(modules: dict, mask_holder: list):
    """Record, per named module, sum over real tokens of the |input| per feature and the token count."""
    stats, handles = {n: [0.0, 0] for n in modules}, []

    def make(name):
        def hook(_mod, args):
            x = args[0].detach().float()
            mask = mask_holder[0]
            m = mask.reshape(-1, 1).to(x.dtype) if mask is not None and mask.numel() * x.shape[-1] == x.numel() else None
            flat = x.reshape(-1, x.shape[-1]).abs()
            if m is not None:
                flat = flat * m
            stats[name][0] = stats[name][0] + flat.sum(0)
            stats[name][1] += int(m.sum()) if m is not None else flat.shape[0]
        return hook

    for name, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(make(name)))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def _collect(model, modules: dict, batches) -> dict:
    holder = [None]
    with input_hooks(modules, holder) as stats:
        for enc in batches:
            import torch

            holder[0] = torch.from_numpy(enc["attention_mask"]).to(model.device)
            _forward(model, model.module, enc)
    return {n: s / max(c, 1) for n, (s, c) in stats.items()}


# --------------------------------------------------------------------------------------------------------
# Steps


def _fraction(name: str, v: float, *, allow_zero: bool = False) -> float:
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v < 1):
        raise ValueError(f"{name}={v} is out of range; valid: {'0' if allow_zero else 'above 0'} up to "
                         "(not including) 1, e.g. 0.5 for half")
    return v


class _Prune(StepConfig):
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32", "torch:fp16", "torch:bf16")

    num_calibration_texts: int = Field(
        256, description="how many calibration texts (the --calibration texts, else the bundled default texts) "
        "importance is measured on, in batches of 16 truncated to 128 tokens")


@register
class PruneMagnitude(FilteredStep):
    name: ClassVar[str] = "prune-magnitude"
    summary: ClassVar[str] = ("zero the smallest weights (unstructured; smaller only when stored sparse, "
                              "not faster with dense kernels)")
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32", "torch:fp16", "torch:bf16")

    sparsity: float = Field(0.5, description="target fraction of the selected weights set to zero, from 0 up to (not "
                            "including) 1; 0.5 zeroes half")
    scope: Literal["global", "layer"] = Field(
        "global", description="global: one magnitude threshold over all selected weights (modules with small "
        "weights lose more); layer: the same fraction zeroed in each selected module")

    @field_validator("sparsity")
    @classmethod
    def _check(cls, v):
        return _fraction("sparsity", v, allow_zero=True)

    def apply(self, model, ctx: StepContext):
        import torch

        out = model.copy()
        mods = selected_linears(out.module, self)
        weights = [m.weight for m in mods.values()]
        with torch.no_grad():
            if self.scope == "global":
                # A threshold on all selected magnitudes at once: layers with small weights lose more.
                mags = torch.cat([w.detach().abs().flatten().float() for w in weights])
                k = int(self.sparsity * mags.numel())
                threshold = mags.kthvalue(k).values if k > 0 else None
                for w in weights:
                    if threshold is not None:
                        w.mul_((w.abs().float() > threshold).to(w.dtype))
            else:
                for w in weights:
                    k = int(self.sparsity * w.numel())
                    if k > 0:
                        t = w.detach().abs().flatten().float().kthvalue(k).values
                        w.mul_((w.abs().float() > t).to(w.dtype))
        zeros = sum(int((w == 0).sum()) for w in weights)
        numel = sum(w.numel() for w in weights)
        dense = sum(w.numel() * w.element_size() for w in weights)
        nnz = numel - zeros
        # Bitmask format: one bit per position plus the non-zero values; CSR: values + int32 column indices.
        bitmask = nnz * weights[0].element_size() + numel // 8
        csr = nnz * (weights[0].element_size() + 4) + sum((w.shape[0] + 1) * 4 for w in weights)
        ctx.note(f"prune-magnitude: {zeros / numel:.1%} of {numel:,} weights in {len(weights)} Linear modules are "
                 f"zero (target {self.sparsity:.0%}, scope {self.scope}). Dense kernels multiply zeros like any "
                 f"other number: this is NOT faster, and the dense file is NOT smaller ({dense / 1e6:.1f} MB of "
                 f"these weights). Stored sparse they would take {bitmask / 1e6:.1f} MB (bitmask) or "
                 f"{csr / 1e6:.1f} MB (CSR). For speed use prune-ffn / drop-layers / distill, or prune-2of4 on GPUs.")
        return out


def selected_linears(module, flt: ModuleFilter) -> dict:
    """Linear and GPT-2 Conv1D modules chosen by the include/exclude patterns (Conv1D kept as is, so the
    saved weights keep transformers' layout and reload with plain transformers)."""
    import torch

    mods = {n: m for n, m in module.named_modules()
            if (isinstance(m, torch.nn.Linear) or _is_conv1d(m)) and flt.selects(n)}
    if not mods:
        raise StepError(f"include={list(flt.include)} exclude={list(flt.exclude)} selects no Linear module "
                        "of this model")
    return mods


class _RatioPrune(_Prune):
    """A structured pruning step that removes a fraction ``ratio`` (0 < ratio < 1) of units per layer."""

    ratio: float = Field(0.3, description="fraction of FFN neurons removed from every layer, above 0 and below 1; "
                         "the width kept is round(width x (1 - ratio)), at least 1")

    @field_validator("ratio")
    @classmethod
    def _check(cls, v):
        return _fraction("ratio", v)


@register
class PruneFFN(_RatioPrune):
    name: ClassVar[str] = "prune-ffn"
    summary: ClassVar[str] = "remove the least important FFN neurons (same count per layer): smaller, faster"

    def apply(self, model, ctx: StepContext):
        import torch

        out = model.copy()
        module = out.module
        arch = arch_of(module)
        _, _, blocks = layers_of(module, arch)
        width = _out_weight(_sub(blocks[0], arch.ffn_out)).shape[1]
        keep = max(1, round(width * (1 - self.ratio)))
        # Importance of neuron i: mean |activation_i| over real tokens x norm of its outgoing weights, i.e.
        # the average size of what the neuron adds to the residual stream.
        downs = {str(i): _sub(b, arch.ffn_out) for i, b in enumerate(blocks)}
        acts = _collect(out, downs, calibration_batches(out, ctx, self.num_calibration_texts))
        kept_frac = []
        for i, block in enumerate(blocks):
            down = downs[str(i)]
            score = acts[str(i)] * _out_weight(down).detach().float().norm(dim=0)
            idx = torch.sort(torch.topk(score, keep).indices).values
            kept_frac.append(float(score[idx].sum() / score.sum().clamp(min=1e-12)))
            for name in arch.ffn_in:
                keep_outputs(_sub(block, name), idx)
            keep_inputs(down, idx)
        setattr(module.config, arch.ffn_config, keep)
        ctx.note(f"prune-ffn: FFN width {width} -> {keep} in each of {len(blocks)} layers "
                 f"({self.ratio:.0%} of neurons removed; they carried on average "
                 f"{1 - sum(kept_frac) / len(kept_frac):.1%} of the measured importance)")
        return out


@register
class PruneHeads(_RatioPrune):
    name: ClassVar[str] = "prune-heads"
    summary: ClassVar[str] = "remove the least important attention heads (KV groups), same count per layer"

    ratio: float = Field(0.25, description="fraction of key/value head groups removed from every layer (the query "
                         "heads sharing a group go with it), above 0 and below 1; it must remove at least one "
                         "group; the groups kept are round(groups x (1 - ratio)), at least 1")

    def apply(self, model, ctx: StepContext):
        import torch

        out = model.copy()
        module = out.module
        arch = arch_of(module)
        cfg = module.config
        if arch.attn_o is None:
            raise StepError(
                f"prune-heads cannot shrink {cfg.model_type} models so that plain transformers reloads them: "
                "transformers 5 removed per-layer `pruned_heads`, and this architecture derives the head size "
                "from hidden_size / num_heads. Use prune-ffn or drop-layers (or distill) instead; prune-heads "
                f"supports {', '.join(k for k, a in ARCHS.items() if a.attn_o)}.")
        _, _, blocks = layers_of(module, arch)
        n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        rep = n_heads // n_kv
        keep = max(1, round(n_kv * (1 - self.ratio)))
        if keep == n_kv:
            raise StepError(f"prune-heads ratio={self.ratio} removes no key/value group of {n_kv} "
                            f"(heads are removed a whole group of {rep} query heads at a time); valid: ratio >= "
                            f"{1 / n_kv:.3f}")
        # Importance of a head: mean size of its share of the output projection (activation x weights),
        # summed over the query heads sharing one key/value group, which must go or stay together.
        outs = {str(i): _sub(b, arch.attn_o) for i, b in enumerate(blocks)}
        holder = [None]
        scores = {k: torch.zeros(n_kv) for k in outs}
        handles = []

        def make(name, o):
            def hook(_m, args):
                x = args[0].detach().float()  # [B, T, heads*head_dim]
                w = o.weight.detach().float()  # [hidden, heads*head_dim]
                mask = holder[0].reshape(-1).float()
                xs = x.reshape(-1, n_heads, head_dim)
                contrib = torch.einsum("thd,ohd->tho", xs, w.reshape(w.shape[0], n_heads, head_dim)).norm(dim=-1)
                per_head = (contrib * mask[:, None]).sum(0) / mask.sum().clamp(min=1)
                scores[name] += per_head.reshape(n_kv, rep).sum(-1).cpu()
            return hook

        for k, o in outs.items():
            handles.append(o.register_forward_pre_hook(make(k, o)))
        try:
            for enc in calibration_batches(out, ctx, self.num_calibration_texts):
                holder[0] = torch.from_numpy(enc["attention_mask"]).to(out.device)
                _forward(out, module, enc)
        finally:
            for h in handles:
                h.remove()
        for i, block in enumerate(blocks):
            groups = torch.sort(torch.topk(scores[str(i)], keep).indices).values.tolist()
            kv_idx = torch.tensor([g * head_dim + d for g in groups for d in range(head_dim)])
            q_idx = torch.tensor([(g * rep + r) * head_dim + d for g in groups for r in range(rep)
                                  for d in range(head_dim)])
            keep_outputs(_sub(block, arch.attn_q), q_idx)
            keep_outputs(_sub(block, arch.attn_k), kv_idx)
            keep_outputs(_sub(block, arch.attn_v), kv_idx)
            keep_inputs(_sub(block, arch.attn_o), q_idx)
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = keep * rep, keep, head_dim
        ctx.note(f"prune-heads: {n_heads} -> {keep * rep} query heads ({n_kv} -> {keep} key/value groups) in each "
                 f"of {len(blocks)} layers, chosen by measured contribution on calibration texts")
        return out


def drop_blocks(module, drop: Sequence[int]) -> None:
    """Remove blocks ``drop`` in place and make the config and layer indices agree with what is left."""
    import torch

    arch = arch_of(module)
    parent, attr, blocks = layers_of(module, arch)
    kept = [i for i in range(len(blocks)) if i not in set(drop)]
    setattr(parent, attr, torch.nn.ModuleList([blocks[i] for i in kept]))
    for new, old in enumerate(kept):  # caches are indexed by layer_idx: renumber
        for m in blocks[old].modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = new
    cfg = module.config
    setattr(cfg, arch.layers_config, len(kept))
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == len(blocks):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]


def num_blocks(module) -> int:
    return len(layers_of(module, arch_of(module))[2])


@register
class DropLayers(_Prune):
    name: ClassVar[str] = "drop-layers"
    summary: ClassVar[str] = "remove whole transformer blocks, given by index or chosen by measured effect"

    num_layers: int | None = Field(
        None, description="how many blocks to remove, chosen greedily (drop the block whose absence changes the "
        "output least on calibration texts, re-measure, repeat); 1 up to the layer count minus 1; give this or "
        "layers")
    layers: tuple[int, ...] | None = Field(
        None, description="0-based indices of the blocks to remove, distinct, at least one block must remain; "
        "give this or num_layers")
    num_calibration_texts: int = Field(
        128, description="how many calibration texts (the --calibration texts, else the bundled default texts) "
        "the effect of removing a block is measured on, in batches of 16 truncated to 128 tokens; unused with layers")

    @model_validator(mode="after")
    def _check(self):
        if (self.num_layers is None) == (self.layers is None):
            raise ValueError("give exactly one of num_layers (how many blocks to drop, chosen by measured "
                             "effect) or layers (0-based indices to drop)")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers}; valid: 1 up to the model's layer count minus 1")
        if self.layers is not None and (not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers)):
            raise ValueError(f"layers={list(self.layers)}: need distinct 0-based indices >= 0")
        return self

    def apply(self, model, ctx: StepContext):
        out = model.copy()
        n = num_blocks(out.module)
        if self.layers is not None:
            bad = [i for i in self.layers if i >= n]
            if bad or len(self.layers) >= n:
                raise StepError(f"drop-layers layers={list(self.layers)}: the model has {n} layers (indices "
                                f"0..{n - 1}) and at least one must remain")
            drop = sorted(self.layers)
            how = "given"
        else:
            if self.num_layers >= n:
                raise StepError(f"drop-layers num_layers={self.num_layers}: the model has {n} layers; valid: "
                                f"1..{n - 1} (at least one must remain)")
            drop, effects = self.choose(out, ctx)
            how = "chosen by measured effect (" + ", ".join(f"layer {i}: {e:.4f}" for i, e in effects) + ")"
        drop_blocks(out.module, drop)
        ctx.note(f"drop-layers: removed layers {drop} of {n} ({how}); {n - len(drop)} remain")
        return out

    def choose(self, model, ctx) -> tuple[list[int], list[tuple[int, float]]]:
        """Greedy: remove the block whose absence changes the output least, re-measure, repeat.

        Change = 1 - cosine of pooled embeddings (embedding models) or KL of next-token distributions
        (causal LMs) against the full model, on calibration texts.
        """
        batches = calibration_batches(model, ctx, self.num_calibration_texts)
        ref = output_signature(model, model.module, batches)
        n, dropped, effects = num_blocks(model.module), [], []
        for _ in range(self.num_layers):
            best = None
            for i in (i for i in range(n) if i not in dropped):
                trial = copy.deepcopy(model.module)
                drop_blocks(trial, dropped + [i])
                d = output_distance(model.task, ref, output_signature(model, trial, batches))
                if best is None or d < best[1]:
                    best = (i, d)
            dropped.append(best[0])
            effects.append(best)
        return sorted(dropped), effects


# --------------------------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity


def semi_structured_support(device: str | None = None) -> str | None:
    """None when PyTorch's 2:4 sparse kernels can run here, else the reason they can't."""
    import torch

    if not torch.cuda.is_available():
        return "PyTorch's semi-structured (2:4) sparse kernels run only on NVIDIA GPUs, and this machine has no CUDA GPU"
    if device is not None and not str(device).startswith("cuda"):
        return f"the model is on {device}; 2:4 sparse kernels run only on CUDA GPUs (use --device cuda)"
    major, minor = torch.cuda.get_device_capability(device if device and str(device).startswith("cuda") else None)
    if major < 8:
        return (f"this GPU ({torch.cuda.get_device_name()}) has compute capability {major}.{minor}; 2:4 sparse "
                "tensor cores need 8.0 or newer (A100, H100, RTX 30xx/40xx)")
    return None


@register
class Prune2of4(FilteredStep):
    name: ClassVar[str] = "prune-2of4"
    summary: ClassVar[str] = "2:4 semi-structured sparsity on sparse tensor cores (NVIDIA GPUs, compute capability >= 8.0)"
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp16", "torch:bf16")
    exclude: tuple[str, ...] = Field(
        ("lm_head", "*lm_head", "*embed*"), description="fnmatch patterns on qualified module names (a "
        "comma-separated string is accepted) of modules left dense even when an include pattern matches; the "
        "default keeps the LM head and embeddings")

    @model_validator(mode="after")
    def _refuse_without_gpu(self):
        # Refused when the recipe is parsed, before loading anything, on a machine that can never run it.
        reason = semi_structured_support()
        if reason is not None and "no CUDA GPU" in reason:
            raise ValueError(f"prune-2of4 is unavailable here: {reason}. On CPUs use prune-ffn or drop-layers "
                             "for speed (unstructured sparsity does not speed up dense CPU kernels)")
        return self

    def apply(self, model, ctx: StepContext):
        reason = semi_structured_support(str(model.device))
        if reason is not None:
            raise StepError(f"prune-2of4 cannot run: {reason}")
        out = model.copy()
        converted = mask_2of4(out.module, self)
        if not converted:
            raise StepError("prune-2of4: no selected Linear has both dimensions a multiple of 64")
        ctx.note(f"prune-2of4: {len(converted)} Linear modules now hold a 2:4 pattern (half their weights zero). "
                 "The artifact stores them dense (it reloads anywhere, at dense speed); "
                 "leaninfer.optimize.prune.to_semi_structured(model) swaps them to the sparse kernels in memory. "
                 "Measured on an H100 (PyTorch 2.11, fp16, batch 128 x 128 tokens) those kernels were SLOWER than "
                 "dense for BERT-sized layers (0.07x minilm, 0.17x BERT-base): benchmark before relying on them.")
        return out


def mask_2of4(module, flt: ModuleFilter) -> list[str]:
    """Zero the two smallest of every four consecutive input weights of the selected Linears, in place."""
    import torch

    done = []
    for name, m in selected_linears(module, flt).items():
        w = _out_weight(m)
        rows, cols = w.shape
        # The kernels need both dimensions to be multiples of 64 (fp16/bf16); leave the others dense.
        if _is_conv1d(m) or rows % 64 or cols % 64:
            log.info("prune-2of4: %s %s stays dense (shape not a multiple of 64)", name, tuple(w.shape))
            continue
        with torch.no_grad():
            groups = w.detach().reshape(rows, cols // 4, 4)
            idx = groups.abs().topk(2, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)
            w.mul_(mask.to(w.dtype))
        done.append(name)
    return done


def to_semi_structured(model, flt: ModuleFilter | None = None) -> int:
    """Swap 2:4-patterned Linear weights of a model on a supported GPU to PyTorch's sparse kernels (in memory)."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    reason = semi_structured_support(str(model.device))
    if reason is not None:
        raise StepError(f"2:4 sparse kernels unavailable: {reason}")
    n = 0
    for m in selected_linears(model.module, flt or Prune2of4.model_construct()).values():
        w = m.weight
        if _is_conv1d(m) or w.shape[0] % 64 or w.shape[1] % 64:
            continue
        groups = (w.detach().reshape(w.shape[0], -1, 4) != 0).sum(-1)
        if int(groups.max()) <= 2:
            m.weight = torch.nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
            n += 1
    return n
