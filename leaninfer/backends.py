"""Non-PyTorch runtimes behind the same :class:`~leaninfer.models.Model` interface.

Embedding graphs are exported with mean pooling and L2 normalisation inside, so a runtime returns final
embeddings; causal-LM graphs return logits for the whole sequence (no KV cache: generation through them
recomputes the prefix each step, which is fine for scoring and short outputs, and said in the docs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .models import Model


def default_threads() -> int:
    """Threads for a runtime session: what torch uses, so baselines and variants get the same."""
    import torch

    return int(os.environ.get("LEANINFER_THREADS", 0)) or torch.get_num_threads()


class OrtModel(Model):
    """An ONNX model run by ONNX Runtime (CPU, or CUDA when asked for and available)."""

    backend = "onnx"

    def __init__(self, onnx_path: Path, *, device: str = "cpu", threads: int | None = None, **kw):
        super().__init__(**kw)
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.device = device
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=providers)
        self._input_names = [i.name for i in self.session.get_inputs()]

    def num_parameters(self) -> int:
        if self.manifest and self.manifest.get("num_parameters"):
            return int(self.manifest["num_parameters"])
        import onnx

        graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
        return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1))

    def weight_bytes(self) -> int:
        return _files_bytes(self.onnx_path.parent, (".onnx", ".onnx.data", ".data"))

    def _feed(self, enc):
        return {k: enc[k] for k in self._input_names}

    def embed_batch(self, enc):
        return self.session.run(None, self._feed(enc))[0]

    def logits_batch(self, enc):
        return self.session.run(None, self._feed(enc))[0].astype(np.float32, copy=False)


class OpenVINOModel(Model):
    """An OpenVINO IR model (``model.xml`` + ``model.bin``) compiled for the CPU."""

    backend = "openvino"

    def __init__(self, xml_path: Path, *, device: str = "cpu", threads: int | None = None, **kw):
        super().__init__(**kw)
        import openvino as ov

        self.xml_path = Path(xml_path)
        self.device = device
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or default_threads(), "PERFORMANCE_HINT": "LATENCY",
                  # Keep FP32 activations: the default on BF16-capable CPUs would change numerics silently.
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(self.xml_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._input_names = [p.get_any_name() for p in self.compiled.inputs]

    def num_parameters(self) -> int:
        return int(self.manifest.get("num_parameters", 0)) if self.manifest else 0

    def weight_bytes(self) -> int:
        return self.xml_path.with_suffix(".bin").stat().st_size

    def _run(self, enc):
        return self.request.infer({k: enc[k] for k in self._input_names})[0].copy()

    def embed_batch(self, enc):
        return self._run(enc)

    def logits_batch(self, enc):
        return self._run(enc).astype(np.float32, copy=False)


def _files_bytes(folder: Path, suffixes) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(suffixes))
