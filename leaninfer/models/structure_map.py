"""The structure map: which modules of a saved PyTorch model differ from what its config builds.

A quantized or restructured model can't be rebuilt from its config alone: GPT-2's ``Conv1D`` became
``nn.Linear`` so it could be quantized, torch.ao dynamic INT8 swapped ``Linear`` for a packed module,
torchao put a tensor subclass in a ``Linear``'s weight. At save time we compare the model with a skeleton
built from its config (on the meta device, no memory) and record every difference, by module name; the
loader builds the skeleton, swaps in what the map names, and loads the state dict. This is optimum-quanto's
``quantization_map`` + ``requantize`` idea; the recipe that made the model is never replayed, so loading
needs no step registry, and a module type we can't record fails the save instead of reloading wrong.
"""

from __future__ import annotations

from ..errors import LeaninferError
from .torch_modules import auto_class


def _skeleton_types(config, task: str) -> dict[str, type]:
    import torch

    with torch.device("meta"):
        skeleton = auto_class(task).from_config(config, attn_implementation="sdpa")
    return {n: type(m) for n, m in skeleton.named_modules()}


def _entry(m) -> dict | None:
    """How to rebuild module ``m`` (None: nothing to record)."""
    import torch

    dyn = torch.ao.nn.quantized.dynamic.Linear
    if isinstance(m, dyn):
        w = m.weight()
        return {"type": "torch-dynamic-int8", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias() is not None, "dtype": str(w.dtype).replace("torch.", "")}
    if type(m) is torch.nn.Linear:
        entry = {"type": "linear", "in_features": m.in_features, "out_features": m.out_features,
                 "bias": m.bias is not None}
        if type(m.weight) is not torch.nn.Parameter:  # torchao: the subclass comes back with the state dict
            entry["weight"] = f"{type(m.weight).__module__.split('.')[0]}:{type(m.weight).__name__}"
        return entry
    return None


def structure_map(module, config, task: str) -> dict[str, dict]:
    """Every module whose type (or weight type) differs from the config's skeleton, by qualified name."""
    import torch

    skeleton = _skeleton_types(config, task)
    out: dict[str, dict] = {}
    for name, m in module.named_modules():
        ref = skeleton.get(name)
        same = ref is type(m) and (not isinstance(m, torch.nn.Linear) or type(m.weight) is torch.nn.Parameter)
        if same or (ref is None and _inside_recorded(name, out)):
            continue
        entry = _entry(m)
        if entry is None:
            raise LeaninferError(
                f"cannot save module {name!r}: its type {type(m).__name__} differs from the architecture's "
                f"({getattr(ref, '__name__', 'none')}) and leaninfer has no rebuild rule for it")
        out[name] = entry
    return out


def _inside_recorded(name: str, recorded: dict) -> bool:
    # Children of a swapped module (a packed-params holder, say) are rebuilt with their parent.
    return any(name.startswith(parent + ".") for parent in recorded)


def _build(entry: dict):
    import torch

    kind = entry["type"]
    if kind == "linear":
        return torch.nn.Linear(entry["in_features"], entry["out_features"], bias=entry["bias"])
    if kind == "torch-dynamic-int8":
        return torch.ao.nn.quantized.dynamic.Linear(entry["in_features"], entry["out_features"],
                                                    bias_=entry["bias"], dtype=getattr(torch, entry["dtype"]))
    raise LeaninferError(f"structure map entry of unknown type {kind!r}; valid: linear, torch-dynamic-int8")


def apply_structure_map(module, smap: dict[str, dict]) -> None:
    """Swap into ``module`` (built from its config) the modules ``smap`` names, in place."""
    for name, entry in smap.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, _build(entry))
