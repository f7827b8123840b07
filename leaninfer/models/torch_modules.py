"""PyTorch module facts and surgery shared by the torch handle, its artifact format and the torch steps."""

from __future__ import annotations


def mean_pool_normalize(hidden, mask):
    """sentence-transformers' mean pooling over the attention mask, then L2 normalisation (torch tensors)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=-1)


def linearize_conv1d(module) -> int:
    """Replace GPT-2's ``Conv1D`` (a Linear with a transposed weight) by ``nn.Linear``, in place.

    Quantizers (torchao, torch.ao) only know ``nn.Linear``; without this GPT-2's matmuls stay FP32. The
    module computes the same function afterwards. Returns how many modules were replaced.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                lin = torch.nn.Linear(n_in, n_out, bias=child.bias is not None, device=child.weight.device,
                                      dtype=child.weight.dtype)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(parent, child_name, lin)
                replaced += 1
    return replaced


def module_weight_bytes(module) -> int:
    """Bytes of parameters and buffers at their stored width (quantized tensors count their packed data)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    # torch.ao dynamic-quantized Linear keeps its weight in packed params, not in parameters().
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    return total


def tensor_bytes(t) -> int:
    # torchao and bitsandbytes tensors are subclasses whose real storage lives in inner tensors.
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t).__name__ not in ("Parameter", "Tensor"):
        try:
            names, _ = t.__tensor_flatten__()
            return sum(tensor_bytes(getattr(t, n)) for n in names)
        except Exception:
            pass
    return t.numel() * t.element_size()


def lookup_only_bytes(module) -> int:
    """Bytes of embedding tables that are only indexed, never read whole (a tied LM head's table is read)."""
    import torch

    lm_head = getattr(module, "lm_head", None)
    head_w = getattr(lm_head, "weight", None) if isinstance(lm_head, torch.nn.Linear) else None
    return sum(m.weight.numel() * m.weight.element_size() for m in module.modules()
               if isinstance(m, torch.nn.Embedding) and (head_w is None or m.weight is not head_w))


def matmul_flops_per_token(module) -> dict:
    """FLOPs one token costs in the module's matmuls, read from each layer's shape: {"body", "lm_head"}.

    2 x in x out per Linear-like layer: ``nn.Linear`` (torchao and bitsandbytes keep it), GPT-2's ``Conv1D``
    and torch.ao's dynamic quantized ``Linear`` (its weight is packed, not a parameter: its in/out features
    are read from the module). The output embedding (LM head) is counted apart: a prefill computes it for
    the last position only. Attention's score and value products are not weights and are not counted here.
    """
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    body = lm_head = 0
    for m in module.modules():
        shape = _linear_shape(m)
        if shape is None:
            continue
        flops = 2 * shape[0] * shape[1]
        if m is head:
            lm_head += flops
        else:
            body += flops
    return {"body": body, "lm_head": lm_head}


def _linear_shape(m) -> tuple[int, int] | None:
    """(in, out) features of a Linear-like module, None for anything else."""
    if type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None:
        n_in, n_out = m.weight.shape
        return int(n_in), int(n_out)
    n_in, n_out = getattr(m, "in_features", None), getattr(m, "out_features", None)
    # A wrapper that holds a Linear-like child is not counted itself (torch.ao's packed-params child is no
    # Linear: it has no in/out features).
    if isinstance(n_in, int) and isinstance(n_out, int) and not any(
            hasattr(c, "in_features") for c in m.children()):
        return n_in, n_out
    return None


def auto_class(task: str):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if task == "causal-lm" else AutoModel


def retie_embeddings(module, config) -> None:
    """Tie the LM head to the input embeddings again where the config says so.

    ``load_state_dict(assign=True)`` gives tied weights (GPT-2's lm_head = wte) separate tensors. Where one side
    was quantized on its own they are different tensors on purpose and stay apart.
    """
    import torch

    if not getattr(config, "tie_word_embeddings", False):
        return
    out_emb, in_emb = module.get_output_embeddings(), module.get_input_embeddings()
    if (out_emb is not None and type(out_emb.weight) is torch.nn.Parameter
            and type(in_emb.weight) is torch.nn.Parameter and out_emb.weight.shape == in_emb.weight.shape):
        out_emb.weight = in_emb.weight
