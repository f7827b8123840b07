"""OpenVINO conversion and NNCF static INT8 (post-training, calibrated on texts).

On Intel CPUs with VNNI or AMX, OpenVINO's INT8 kernels with statically calibrated activations are the
fastest CPU path measured for BERT-class encoders (see README). The model is converted from a deep copy of
the PyTorch module (tracing must not touch the source) and its FP32 conversion is parity-checked like ONNX.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..data import default_texts
from ..errors import StepError
from .common import FilteredStep, StepContext, log, register
from .onnx import ConversionStep, _wrapper, check_parity, compare, outputs, parity_texts


def _ov_model(model, precision: str, xml: Path):
    return model.derive(graph=xml, precision=precision, manifest={"num_parameters": model.num_parameters()})


@register
class OpenVINOExport(ConversionStep):
    name: ClassVar[str] = "openvino"
    summary: ClassVar[str] = "convert to OpenVINO IR (pooling inside for embeddings), checked against PyTorch"
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)

    def produces(self, state: str) -> str:
        return "openvino:fp32"

    def apply(self, model, ctx: StepContext):
        import openvino as ov
        import torch

        if not str(model.device).startswith("cpu"):
            raise StepError("the openvino step targets CPUs; load the model on cpu")
        texts = parity_texts(ctx)
        before = outputs(model, texts)
        sample = model.tokenize(texts[:2])
        example = tuple(torch.from_numpy(sample[k]) for k in ("input_ids", "attention_mask"))
        with torch.inference_mode():
            ov_model = ov.convert_model(_wrapper(copy.deepcopy(model.module), model.task), example_input=example,
                                        input=[("input_ids", [-1, -1], ov.Type.i64),
                                               ("attention_mask", [-1, -1], ov.Type.i64)])
        xml = Path(ctx.work_dir) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        out = _ov_model(model, "fp32", xml)
        parity = compare(model.task, before, outputs(out, texts))
        check_parity(model.task, parity, "OpenVINO conversion vs PyTorch", self.min_cosine)
        check_parity(model.task, compare(model.task, before, outputs(model, texts)),
                     "PyTorch model after conversion vs before", 0.999999, 1e-6)
        ctx.notes.append(f"openvino conversion parity: {parity}")
        log.info("openvino conversion parity %s", parity)
        return out


@register
class OVInt8(FilteredStep):
    name: ClassVar[str] = "ov-int8"
    summary: ClassVar[str] = "OpenVINO static INT8 by NNCF post-training quantization, calibrated on texts"
    accepts: ClassVar[tuple[str, ...]] = ("openvino:fp32",)
    export_step: ClassVar[str | None] = "openvino"

    calibration_samples: int = Field(300, ge=8, le=100_000,
                                     description="most calibration texts NNCF measures activation ranges on (the "
                                     "--calibration texts, else the bundled default texts), one text per batch")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="NNCF quantization preset: performance (symmetric weights and activations) or "
        "mixed (symmetric weights, asymmetric activations: can be more accurate, can be slower)")
    fast_bias_correction: bool = Field(
        True, description="NNCF's fast bias correction; false uses the full bias correction algorithm (often more "
        "accurate, takes longer)")

    def produces(self, state: str) -> str:
        return "openvino:int8"

    def apply(self, model, ctx: StepContext):
        import nncf
        import openvino as ov

        texts = (ctx.calibration_texts or default_texts())[: self.calibration_samples]
        batches = [model.tokenize(texts[i:i + 1]) for i in range(len(texts))]
        ov_model = ov.Core().read_model(str(model.graph_path))
        ignored = None
        excluded = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
                    if op.get_type_name() == "MatMul" and not self.selects(_op_module(op.get_friendly_name()))]
        if excluded:
            ignored = nncf.IgnoredScope(names=excluded)
        quantized = nncf.quantize(
            ov_model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED if self.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(batches), fast_bias_correction=self.fast_bias_correction, ignored_scope=ignored)
        xml = Path(ctx.work_dir) / "model.int8.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        for p in Path(ctx.work_dir).glob("model.*"):
            if p.suffix in (".xml", ".bin") and not p.name.startswith("model.int8"):
                p.unlink()
        final = Path(ctx.work_dir) / "model.xml"
        xml.replace(final)
        xml.with_suffix(".bin").replace(final.with_suffix(".bin"))
        ctx.notes.append(f"ov-int8: {len(texts)} calibration texts, preset={self.preset}, "
                         f"excluded_matmuls={len(excluded)}")
        return _ov_model(model, "int8", final)


def _op_module(friendly_name: str) -> str:
    """'__module.m.encoder.layer.0.attention.self.query/aten::linear/MatMul' -> 'encoder.layer.0...query'."""
    head = friendly_name.split("/", 1)[0].removeprefix("__module.")
    return head.removeprefix("m.")
