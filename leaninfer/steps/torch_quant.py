"""PyTorch-native INT8: dynamic quantization of Linear layers.

Default method ``torchao`` (``Int8DynamicActivationInt8WeightConfig``: per-channel symmetric INT8 weights,
per-token dynamic INT8 activations). Measured against the alternatives on all-MiniLM-L6-v2, 2-core
Cascade Lake, batch 32 (the README has the command): torchao keeps mean cosine 0.997 to FP32 where
``torch.ao.quantization.quantize_dynamic`` (per-tensor weights, deprecated API) drops to 0.95 (~2 STS
points), and optimum-quanto's W8A8 broke the model (cosine 0.15) with no speed gain. ``torch-dynamic`` stays
available as a named method because on some CPUs it is the fastest PyTorch path; its quality is checked
like every other.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..errors import StepError
from .common import FilteredStep, StepContext, register


@register
class Int8(FilteredStep):
    name: ClassVar[str] = "int8"
    summary: ClassVar[str] = "PyTorch dynamic INT8 of Linear layers (torchao; method=torch-dynamic for torch.ao)"
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)

    method: Literal["torchao", "torchao-weight-only", "torch-dynamic"] = Field(
        "torchao", description="torchao: per-channel symmetric INT8 weights and per-token dynamic INT8 activations; "
        "torchao-weight-only: INT8 weights, activations stay floating point; torch-dynamic: "
        "torch.ao.quantization.quantize_dynamic (per-tensor weights, deprecated API, CPU only)")

    def produces(self, state: str) -> str:
        return "torch:int8"

    def quantize(self, module) -> None:
        """Quantize ``module`` in place. (Loading the artifact never calls this: the saved structure map
        says which modules to rebuild as what.)"""
        import torch

        names = set(self.linear_names(module))
        if self.method == "torch-dynamic":
            quantized = torch.ao.quantization.quantize_dynamic(module, names, dtype=torch.qint8, inplace=True)
            assert quantized is module
            return
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        cfg = Int8WeightOnlyConfig() if self.method == "torchao-weight-only" else Int8DynamicActivationInt8WeightConfig()
        quantize_(module, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in names)

    def apply(self, model, ctx: StepContext):
        if not str(model.device).startswith("cpu") and self.method == "torch-dynamic":
            raise StepError("int8 method 'torch-dynamic' runs on CPU only; use method=torchao on GPUs")
        out = model.copy(precision="int8")
        self.quantize(out.module)
        return out
