"""FP16 / BF16 casts of PyTorch models."""

from __future__ import annotations

from typing import ClassVar

from ..hardware import detect_local
from .common import StepConfig, StepContext, register


class _Cast(StepConfig):
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)
    precision: ClassVar[str] = ""

    def produces(self, state: str) -> str:
        return f"torch:{self.precision}"

    def apply(self, model, ctx: StepContext):
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        hw = detect_local()
        on_cpu = str(getattr(model, "device", "cpu")).startswith("cpu")
        native = hw.native_fp16 if self.precision == "fp16" else hw.native_bf16
        if on_cpu and not native:
            ctx.note(f"{self.precision} on this CPU ({hw.cpu_name}) has no native {self.precision} arithmetic: "
                     f"weights take half the memory, but matmuls convert to FP32 on the fly and usually run "
                     f"slower than FP32. Use int8 or ort-int8 for speed on this CPU.")
        out = model.copy(precision=self.precision)
        out.module.to(dtype)
        return out


@register
class FP16(_Cast):
    name: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "cast weights and compute to float16 (fast on GPUs; slow on CPUs without AVX-512 FP16)"
    precision: ClassVar[str] = "fp16"


@register
class BF16(_Cast):
    name: ClassVar[str] = "bf16"
    summary: ClassVar[str] = "cast weights and compute to bfloat16 (GPUs from Ampere, CPUs with AVX-512 BF16/AMX)"
    precision: ClassVar[str] = "bf16"
