"""PyTorch-native INT8: dynamic quantization of Linear layers.

The default method (``auto``) is chosen per task and device, by measurement:

- **Embedding models, any device: ``torchao``** (``Int8DynamicActivationInt8WeightConfig``: per-channel
  symmetric INT8 weights, per-token dynamic INT8 activations). On all-MiniLM-L6-v2, 2-core Cascade Lake,
  batch 32, torchao keeps mean cosine 0.997 to FP32 where ``torch.ao.quantization.quantize_dynamic``
  (per-tensor weights) drops to 0.95 (~2 STS points); optimum-quanto's W8A8 broke the model (cosine 0.15).
- **Causal LMs on CPU: ``torch-dynamic``** (``quantize_dynamic``: FBGEMM's INT8 GEMM). Decode is what a
  causal LM spends its time on, and there torchao's CPU path is slower than FP32: random:gpt2, batch-1
  greedy decode, ``leaninfer bench --suite llm-cpu`` on a 2-core AMD EPYC Zen 4 (family 25 model 17),
  torchao 0.62x FP32 while torch-dynamic gave 1.87x (1.92x on Zen 5, DESIGN.md); re-measured on the same
  Zen 4 with ``leaninfer bench --variants fp32,<int8 artifact>,torchao=int8:method=torchao --batch-sizes 1``:
  0.70-0.89x against 1.89-2.07x (docs/benchmarks.md). A user asking for ``int8`` must not get a slower
  model. Its quality is checked like every other variant's.
- **Causal LMs on GPU: ``torchao``** (torch.ao's dynamic kernels are CPU-only).

Name a method (``int8:method=torchao``) to override; the artifact's manifest records the method used.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PrivateAttr

from ..errors import StepError
from .common import FilteredStep, StepContext, register


@register
class Int8(FilteredStep):
    name: ClassVar[str] = "int8"
    summary: ClassVar[str] = "PyTorch dynamic INT8 of Linear layers (torchao; method=torch-dynamic for torch.ao)"
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)

    method: Literal["auto", "torchao", "torchao-weight-only", "torch-dynamic"] = Field(
        "auto", description="auto (default): torch-dynamic for causal LMs on CPU (faster decode, measured), torchao "
        "otherwise; torchao: per-channel symmetric INT8 weights and per-token dynamic INT8 activations; "
        "torchao-weight-only: INT8 weights, activations stay floating point; torch-dynamic: "
        "torch.ao.quantization.quantize_dynamic (per-tensor weights, deprecated API, CPU only)")
    _resolved: str | None = PrivateAttr(None)  # what 'auto' became when applied (recorded in the manifest)

    def produces(self, state: str) -> str:
        return "torch:int8"

    def resolve(self, task: str, device: str) -> str:
        """The method used for a model of `task` on `device` (see the module docstring for the measurements)."""
        if self.method != "auto":
            return self.method
        return "torch-dynamic" if task == "causal-lm" and str(device).startswith("cpu") else "torchao"

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self._resolved:
            d["method"] = self._resolved
        return d

    def quantize(self, module, method: str | None = None) -> None:
        """Quantize ``module`` in place with `method` (default: this config's, 'auto' meaning torchao).
        (Loading the artifact never calls this: the saved structure map says which modules to rebuild as what.)"""
        import torch

        method = method or (self._resolved or ("torchao" if self.method == "auto" else self.method))
        names = set(self.linear_names(module))
        if method == "torch-dynamic":
            quantized = torch.ao.quantization.quantize_dynamic(module, names, dtype=torch.qint8, inplace=True)
            assert quantized is module
            return
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        cfg = Int8WeightOnlyConfig() if method == "torchao-weight-only" else Int8DynamicActivationInt8WeightConfig()
        quantize_(module, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in names)

    def apply(self, model, ctx: StepContext):
        if not str(model.device).startswith("cpu") and self.method == "torch-dynamic":
            raise StepError("int8 method 'torch-dynamic' runs on CPU only; use method=torchao on GPUs")
        method = self.resolve(model.task, model.device)
        self._resolved = method
        out = model.copy(precision="int8")
        self.quantize(out.module, method)
        return out
