"""OpenVINO handles: an IR model (``model.xml`` + ``model.bin``) compiled for the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Model
from .formats import register_format, register_handle
from .runtime_files import artifact_fields, copy_into, default_threads

GRAPH_FILE = "model.xml"


@register_handle(".xml")
class OpenVINOModel(Model):
    """An OpenVINO IR model compiled for the CPU."""

    backend = "openvino"

    def __init__(self, graph_path: Path, *, threads: int | None = None, **kw):
        super().__init__(**kw)
        import openvino as ov

        self.graph_path = Path(graph_path)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or default_threads(), "PERFORMANCE_HINT": "LATENCY",
                  # Keep FP32 activations: the default on BF16-capable CPUs would change numerics silently.
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(self.graph_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._input_names = [p.get_any_name() for p in self.compiled.inputs]

    def num_parameters(self) -> int:
        return int(self.manifest.get("num_parameters", 0)) if self.manifest else 0

    def weight_bytes(self) -> int:
        return self.graph_path.with_suffix(".bin").stat().st_size

    def _run(self, enc):
        return self.request.infer({k: enc[k] for k in self._input_names})[0].copy()

    def embed_batch(self, enc):
        return self._run(enc)

    def logits_batch(self, enc):
        return self._run(enc).astype(np.float32, copy=False)

    def moved_to(self, folder: Path, manifest: dict) -> Model:
        # The session already holds the graph; only where its files now live changes.
        self.graph_path = Path(folder) / self.graph_path.name
        return super().moved_to(folder, manifest)

    def save(self, folder: Path) -> dict:
        self.tokenizer.save_pretrained(folder)
        copy_into([self.graph_path, self.graph_path.with_suffix(".bin")], folder, [GRAPH_FILE, "model.bin"])
        self.config.save_pretrained(folder)
        return {"format": "openvino"}


@register_format("openvino")
def load_openvino_artifact(path: Path, manifest: dict, device: str) -> OpenVINOModel:
    return OpenVINOModel(Path(path) / GRAPH_FILE, **artifact_fields(path, manifest, device))
