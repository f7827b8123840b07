"""bitsandbytes LLM.int8() and NF4 through transformers' ``BitsAndBytesConfig``.

The quantized model is made the way transformers makes one: the source is saved and reloaded with a
quantization config (that is the path bitsandbytes and transformers test). Works on CUDA GPUs and, with
bitsandbytes >= 0.46, on x86 CPUs; where the installed build can't run it we fail with the reason.
LLM.int8() is a memory saving, not a speed-up: its outlier decomposition runs slower than FP16 matmuls.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..errors import StepError
from .common import FilteredStep, StepContext, register


class _Bnb(FilteredStep):
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32", "torch:fp16", "torch:bf16")
    bits: ClassVar[int] = 8

    # Redeclared only to describe what bitsandbytes does with them (defaults as in ModuleFilter).
    include: tuple[str, ...] = Field(
        ("*",), description="accepted for symmetry with the other filtered steps but not used: transformers "
        "quantizes every Linear module except those named by exclude")
    exclude: tuple[str, ...] = Field(
        ("lm_head", "*lm_head"), description="modules to keep unquantized (a comma-separated string is accepted): "
        "each pattern, with leading '*'/'.' and trailing '*' removed, goes to bitsandbytes' skip list, which skips "
        "modules whose qualified names start or end with it; the default keeps the LM head")

    def produces(self, state: str) -> str:
        return "torch:int8" if self.bits == 8 else "torch:nf4"

    def quantization_config(self, skip: list[str]):
        raise NotImplementedError

    def apply(self, model, ctx: StepContext):
        from transformers import AutoModel, AutoModelForCausalLM

        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # an import failure here is the installed build's, not the user's
            raise StepError(f"step {self.name!r} needs bitsandbytes, which failed to import here ({e}); "
                            "use int8 (torchao) or ort-int8 instead") from None
        skip = sorted(set(self.exclude_leaf()))
        src = Path(ctx.work_dir) / "_bnb_source"
        model.module.save_pretrained(src)
        auto = AutoModelForCausalLM if model.task == "causal-lm" else AutoModel
        try:
            module = auto.from_pretrained(src, quantization_config=self.quantization_config(skip),
                                          device_map={"": model.device}, attn_implementation="sdpa")
        except Exception as e:
            raise StepError(f"step {self.name!r} is not supported by bitsandbytes "
                            f"{bitsandbytes.__version__} on device {model.device!r}: {str(e).splitlines()[0]}. "
                            "Use int8 (torchao) or ort-int8 on CPUs.") from None
        finally:
            shutil.rmtree(src, ignore_errors=True)
        return model.derive(module=module.eval(), config=module.config,
                            precision="int8" if self.bits == 8 else "nf4")

    def exclude_leaf(self) -> list[str]:
        """bitsandbytes skips modules by name; our patterns become the leaf names they end with."""
        return [p.lstrip("*.").rstrip("*") for p in self.exclude if p.lstrip("*.").rstrip("*")]


@register
class BnbInt8(_Bnb):
    name: ClassVar[str] = "bnb-int8"
    summary: ClassVar[str] = "bitsandbytes LLM.int8() (memory saving; slower than FP16 matmuls)"
    bits: ClassVar[int] = 8

    threshold: float = Field(6.0, description="LLM.int8() outlier threshold (llm_int8_threshold): activation "
                             "features with a magnitude above it are multiplied in 16-bit, the rest in INT8; "
                             "lower keeps more in 16-bit (more accurate, slower)")

    def quantization_config(self, skip):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.threshold,
                                  llm_int8_skip_modules=skip or None)


@register
class BnbNF4(_Bnb):
    name: ClassVar[str] = "bnb-nf4"
    summary: ClassVar[str] = "bitsandbytes 4-bit NormalFloat weights (QLoRA's NF4), compute in bf16/fp32"
    bits: ClassVar[int] = 4

    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit weight data type: nf4 (NormalFloat, suited to normally distributed weights) or "
        "fp4 (4-bit float)")
    double_quant: bool = Field(True, description="also quantize the per-block quantization constants (QLoRA's "
                               "double quantization): about 0.4 bits per weight less memory")
    compute_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype the 4-bit weights are dequantized to for the matmuls (bnb_4bit_compute_dtype)")

    def quantization_config(self, skip):
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype={"fp32": torch.float32, "bf16": torch.bfloat16,
                                                          "fp16": torch.float16}[self.compute_dtype],
                                  llm_int8_skip_modules=skip or None)
