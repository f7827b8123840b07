"""What every step shares: the config base class, the step registry, module selection by name pattern."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import StepError, valid_list

log = logging.getLogger("leaninfer")

STEPS: dict[str, type[StepConfig]] = {}


def register(cls: type[StepConfig]) -> type[StepConfig]:
    """Class decorator: make a step config reachable by its ``name`` from the CLI and from recipes."""
    STEPS[cls.name] = cls
    return cls


@dataclass
class StepContext:
    """What a step may use besides the model: a working folder inside the artifact being written,
    calibration texts, and a list of notes (warnings with reasons) that end up in the manifest."""

    work_dir: Path
    calibration_texts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        log.warning(message)
        self.notes.append(message)


class StepConfig(BaseModel):
    """One transformation: a small validated config plus ``apply``. Subclasses set the class variables.

    ``accepts`` lists the model states (``backend:precision``) the step can start from; ``produces`` maps a
    state to the state after the step. Planning a recipe runs only these, so an impossible combination is
    refused before any work starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("embedding", "causal-lm")
    # A step that runs on another runtime names the step that exports a PyTorch FP32 model to it.
    export_step: ClassVar[str | None] = None

    def produces(self, state: str) -> str:
        return state

    def apply(self, model, ctx: StepContext):  # -> Model
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"step": self.name, **self.model_dump(mode="json")}


class ModuleFilter(BaseModel):
    """Choose modules by fnmatch pattern on their qualified names. Sensible default: keep ``lm_head``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head", "*lm_head")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _split(cls, v):
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else tuple(v)

    def selects(self, name: str) -> bool:
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))


class FilteredStep(StepConfig, ModuleFilter):
    """A step that touches only the modules its include/exclude patterns select."""

    def linear_names(self, module) -> list[str]:
        import torch

        linearize_conv1d(module)
        names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and self.selects(n)]
        if not names:
            raise StepError(f"step {self.name!r}: include={list(self.include)} exclude={list(self.exclude)} "
                            "selects no Linear module of this model")
        return names


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
        total += _tensor_bytes(t)
    # torch.ao dynamic-quantized Linear keeps its weight in packed params, not in parameters().
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    return total


def _tensor_bytes(t) -> int:
    # torchao and bitsandbytes tensors are subclasses whose real storage lives in inner tensors.
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t).__name__ not in ("Parameter", "Tensor"):
        try:
            names, _ = t.__tensor_flatten__()
            return sum(_tensor_bytes(getattr(t, n)) for n in names)
        except Exception:
            pass
    return t.numel() * t.element_size()


def get_step(name: str, **params) -> StepConfig:
    cls = STEPS.get(name)
    if cls is None:
        raise StepError(f"unknown step {name!r}; valid steps: {valid_list(STEPS)}")
    try:
        return cls(**params)
    except Exception as e:  # pydantic ValidationError: name the field and the valid values
        raise StepError(f"step {name!r}: invalid parameters {params}: {_pydantic_message(e)}") from None


def _pydantic_message(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in errors())
    return str(e)
