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
