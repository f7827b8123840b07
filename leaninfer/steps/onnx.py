"""ONNX export and ONNX Runtime INT8 (dynamic and static).

Export uses ``torch.onnx.export(dynamo=False)`` on a deep copy: in torch 2.13 the TorchScript exporter
leaves the traced module computing different outputs afterwards (measured: -2 STS points, silently), so the
source model is never traced itself. Parity is checked on both sides every time — the ONNX graph against
PyTorch, and the PyTorch model against its own outputs from before the export.

Quantization is ONNX Runtime's own ``onnxruntime.quantization``. Fusion (attention, LayerNorm, GELU) by
``onnxruntime.transformers.optimizer`` runs before quantizing, so the quantizer sees fewer, bigger nodes.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from ..data import default_texts
from ..errors import ExportParityError, StepError
from ..hardware import detect_local
from ..models.torch_modules import mean_pool_normalize
from .common import FilteredStep, StepConfig, StepContext, log, register

OPSET = 17
# Fused graphs hold com.microsoft ops that ONNX shape inference cannot type; their outputs are float.
_QUANT_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # onnx.TensorProto.FLOAT
_FUSION_TYPES = {"bert": "bert", "gpt2": "gpt2"}  # model_type -> onnxruntime.transformers optimizer type


def _wrapper(module, task: str):
    import torch

    class Embedder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            hidden = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool_normalize(hidden, attention_mask)

    class Scorer(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return (Embedder if task == "embedding" else Scorer)(module).eval()


def parity_texts(ctx: StepContext) -> list[str]:
    texts = ctx.calibration_texts or default_texts()
    return texts[:48]


def outputs(model, texts: list[str], batch_size: int = 16) -> list[np.ndarray]:
    run = model.embed_batch if model.task == "embedding" else model.logits_batch
    return [run(model.tokenize(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]


def compare(task: str, ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Embeddings: mean/min cosine. Logits: max absolute difference relative to the logits' range."""
    if task == "embedding":
        cos = np.concatenate([(a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
                              for a, b in zip(ref, got, strict=True)])
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    scale = max(float(np.abs(a).max()) for a in ref)
    return {"max_abs_logit_diff": diff, "relative_logit_diff": diff / max(scale, 1e-6)}


def check_parity(task: str, metrics: dict, what: str, min_cosine: float = 0.9999, max_rel: float = 1e-3) -> None:
    ok = (metrics["mean_cosine"] >= min_cosine if task == "embedding"
          else metrics["relative_logit_diff"] <= max_rel)
    if not ok:
        raise ExportParityError(f"{what}: parity check failed ({metrics}); required "
                                + (f"mean cosine >= {min_cosine}" if task == "embedding"
                                   else f"relative logit difference <= {max_rel}"))


class ConversionStep(StepConfig):
    """A step that converts a PyTorch model to another runtime and checks the result computes the same."""

    min_cosine: float = Field(0.9999, gt=0, le=1, description=(
        "embeddings: least mean cosine between the converted graph's and PyTorch's outputs on the first 48 "
        "calibration texts (bundled texts if none), else the step fails; causal LMs are checked by relative "
        "logit difference <= 1e-3 instead"))


@register
class OnnxExport(ConversionStep):
    name: ClassVar[str] = "onnx"
    summary: ClassVar[str] = "export to ONNX (pooling inside for embeddings), checked against PyTorch"
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)

    opset: int = Field(OPSET, ge=14, le=21, description="ONNX opset version the graph is exported with")

    def produces(self, state: str) -> str:
        return "onnx:fp32"

    def apply(self, model, ctx: StepContext):
        import torch

        texts = parity_texts(ctx)
        before = outputs(model, texts)
        path = Path(ctx.work_dir) / "model.onnx"
        sample = model.tokenize(texts[:2])
        args = tuple(torch.from_numpy(sample[k]) for k in ("input_ids", "attention_mask"))
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                "output": {0: "batch"} if model.task == "embedding" else {0: "batch", 1: "sequence"}}
        traced = copy.deepcopy(model.module)
        # Encoders: eager attention exports as the MatMul/Softmax pattern ORT's fusion pass recognizes (an SDPA export
        # fuses to 0 Attention nodes); the numbers are the same, the parity check below proves it.
        # Causal LMs keep SDPA: their eager mask construction traces with constant shapes (parity fails).
        if model.task == "embedding":
            with contextlib.suppress(Exception):
                traced.set_attn_implementation("eager")
        with torch.inference_mode():
            torch.onnx.export(_wrapper(traced, model.task), args, str(path), dynamo=False,
                              opset_version=self.opset, input_names=["input_ids", "attention_mask"],
                              output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
        out = model.derive(graph=path, precision="fp32")
        parity = compare(model.task, before, outputs(out, texts))
        check_parity(model.task, parity, "ONNX export vs PyTorch", self.min_cosine)
        source_after = compare(model.task, before, outputs(model, texts))
        check_parity(model.task, source_after, "PyTorch model after export vs before", 0.999999, 1e-6)
        ctx.notes.append(f"onnx export parity: {parity}")
        log.info("onnx export parity %s", parity)
        return out


def _node_module(node_name: str) -> str:
    """'/m/encoder/layer.0/attention/self/query/MatMul' -> 'encoder.layer.0.attention.self.query'."""
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[0] == "m":
        parts = parts[1:]
    return ".".join(parts[:-1])


class _OrtQuant(FilteredStep):
    accepts: ClassVar[tuple[str, ...]] = ("onnx:fp32",)
    export_step: ClassVar[str | None] = "onnx"

    fuse: bool = Field(True, description="run ONNX Runtime's transformer fusion (attention, LayerNorm, GELU) "
                       "before quantizing; only for model types bert and gpt2, others are quantized unfused "
                       "with a note")
    per_channel: bool = Field(True, description="one weight scale per output channel (true) or one per tensor "
                              "(false)")

    def produces(self, state: str) -> str:
        return "onnx:int8"

    def _prepare(self, model, ctx: StepContext) -> tuple[Path, list[str]]:
        """Fuse if we know the architecture, then list MatMul/Gemm nodes the patterns exclude."""
        import onnx

        src = model.graph_path
        model_type = _FUSION_TYPES.get(getattr(model.config, "model_type", ""))
        if self.fuse and model_type:
            from onnxruntime.transformers.optimizer import optimize_model

            cfg = model.config
            heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 0)
            hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
            opt = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1)
            fused = Path(ctx.work_dir) / "model.fused.onnx"
            opt.save_model_to_file(str(fused))
            ctx.notes.append(f"fused graph: {opt.get_fused_operator_statistics()}")
            src = fused
        elif self.fuse:
            ctx.note(f"no fusion pass known for model_type {getattr(model.config, 'model_type', '?')!r}; quantizing unfused")
        graph = onnx.load(str(src), load_external_data=False).graph
        excluded = [n.name for n in graph.node
                    if n.op_type in ("MatMul", "Gemm") and not self.selects(_node_module(n.name))]
        if all(n.op_type not in ("MatMul", "Gemm") or n.name in excluded for n in graph.node):
            raise StepError(f"step {self.name!r}: include={list(self.include)} exclude={list(self.exclude)} "
                            "leaves no MatMul to quantize")
        return src, excluded

    def _finish(self, model, ctx: StepContext, tmp: Path):
        for p in Path(ctx.work_dir).glob("model*.onnx"):
            if p != tmp:
                p.unlink()
        final = Path(ctx.work_dir) / "model.onnx"
        tmp.replace(final)
        return model.derive(graph=final, precision="int8")


@register
class OrtInt8(_OrtQuant):
    name: ClassVar[str] = "ort-int8"
    summary: ClassVar[str] = "ONNX Runtime dynamic INT8, per-channel weights, instruction-set aware"

    def apply(self, model, ctx: StepContext):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src, excluded = self._prepare(model, ctx)
        # Without VNNI, u8s8 products saturate 16-bit intermediates (AVX2 vpmaddubsw): 7-bit weights fix it.
        reduce_range = detect_local().int8_isa in ("avx2", "generic")
        out = Path(ctx.work_dir) / "model.int8.onnx"
        quantize_dynamic(str(src), str(out), per_channel=self.per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options=_QUANT_OPTIONS)
        ctx.notes.append(f"ort-int8: isa={detect_local().int8_isa} reduce_range={reduce_range} "
                         f"excluded_nodes={len(excluded)}")
        return self._finish(model, ctx, out)


@register
class OrtInt8Static(_OrtQuant):
    name: ClassVar[str] = "ort-int8-static"
    summary: ClassVar[str] = "ONNX Runtime static INT8 (QDQ), activations calibrated on texts"

    # Not fused by default: the fused graph's com.microsoft ops carry no type information, so the static
    # quantizer skips their outputs and leaves activations in FP32 (weight-only INT8, measured 1.5x slower).
    fuse: bool = Field(False, description="run ONNX Runtime's transformer fusion (bert and gpt2 only) before "
                       "quantizing; off by default because activations after fused ops then stay FP32")
    calibration_samples: int = Field(256, ge=8, le=100_000,
                                     description="most calibration texts activation ranges are measured on, in "
                                     "batches of 8 (the --calibration texts, or the bundled default texts when fewer "
                                     "than 8 are given)")
    method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="how activation ranges are set from calibration: minmax (observed min/max), "
        "percentile (clips outliers) or entropy (minimizes KL divergence of the distribution)")
    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="qdq: QuantizeLinear/DequantizeLinear pairs around float ops; qoperator: quantized "
        "operators (QLinearMatMul and the like)")

    def apply(self, model, ctx: StepContext):
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        texts = (ctx.calibration_texts or [])[: self.calibration_samples]
        if len(texts) < 8:
            texts = default_texts()[: self.calibration_samples]
        src, excluded = self._prepare(model, ctx)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([model.tokenize(texts[i:i + 8]) for i in range(0, len(texts), 8)])

            def get_next(self):
                return next(self.batches, None)

        out = Path(ctx.work_dir) / "model.int8.onnx"
        quantize_static(str(src), str(out), Reader(),
                        quant_format=QuantFormat.QDQ if self.quant_format == "qdq" else QuantFormat.QOperator,
                        per_channel=self.per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=excluded,
                        reduce_range=detect_local().int8_isa in ("avx2", "generic"),
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[self.method],
                        extra_options=_QUANT_OPTIONS)
        for p in Path(ctx.work_dir).glob("augmented_model*.onnx"):
            p.unlink()
        ctx.notes.append(f"ort-int8-static: {len(texts)} calibration texts, method={self.method}")
        return self._finish(model, ctx, out)


