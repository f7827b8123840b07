"""ONNX Runtime handles (CPU, or CUDA when asked for and available).

Embedding graphs are exported with mean pooling and L2 normalisation inside, so the runtime returns final
embeddings; causal-LM graphs return logits for the whole sequence (no KV cache: their runner recomputes the
prefix each step, which is fine for scoring and short outputs, and said in the docs).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .base import Model
from .formats import register_format, register_handle
from .runtime_files import artifact_fields, copy_into, default_threads, files_bytes

GRAPH_FILE = "model.onnx"


@register_handle(".onnx")
class OrtModel(Model):
    """An ONNX model run by ONNX Runtime."""

    backend = "onnx"

    def __init__(self, graph_path: Path, *, threads: int | None = None, **kw):
        super().__init__(**kw)
        import onnxruntime as ort

        self.graph_path = Path(graph_path)
        self._threads = threads or default_threads()
        self._providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            self._providers.insert(0, "CUDAExecutionProvider")
        self.session = self._new_session(self._threads)
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._lane = threading.local()  # share_cores: a lane thread's own session

    def _new_session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.graph_path), opts, providers=self._providers)

    def max_lanes(self) -> int:
        return self._threads if self.session.get_providers()[0] == "CPUExecutionProvider" else 1

    def share_cores(self, lanes: int) -> None:
        """ONNX Runtime's intra-op thread pool belongs to a session, so a lane thread that shares the cores
        gets a session of its own with its share of the threads (the graph and its weights loaded once more,
        on first use); one that has the machine to itself uses the handle's session."""
        threads = max(1, self._threads // max(1, min(lanes, self._threads)))
        if threads == self._threads:
            self._lane.session = None
            return
        own = self._lane.__dict__.setdefault("own", {})
        if threads not in own:
            own[threads] = self._new_session(threads)
        self._lane.session = own[threads]

    def _session(self):
        return getattr(self._lane, "session", None) or self.session

    def num_parameters(self) -> int:
        if self.manifest and self.manifest.get("num_parameters"):
            return int(self.manifest["num_parameters"])
        import onnx

        graph = onnx.load(str(self.graph_path), load_external_data=False).graph
        return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1))

    def weight_bytes(self) -> int:
        return files_bytes(self.graph_path.parent, (".onnx", ".onnx.data", ".data"))

    def _feed(self, enc):
        return {k: enc[k] for k in self._input_names}

    def embed_batch(self, enc):
        return self._session().run(None, self._feed(enc))[0]

    def logits_batch(self, enc):
        return self._session().run(None, self._feed(enc))[0].astype(np.float32, copy=False)

    def moved_to(self, folder: Path, manifest: dict) -> Model:
        # The session already holds the graph; only where its files now live changes.
        self.graph_path = Path(folder) / self.graph_path.name
        return super().moved_to(folder, manifest)

    def save(self, folder: Path) -> dict:
        self.tokenizer.save_pretrained(folder)
        copy_into([self.graph_path], folder, [GRAPH_FILE])
        self.config.save_pretrained(folder)
        return {"format": "onnx"}


@register_format("onnx")
def load_onnx_artifact(path: Path, manifest: dict, device: str) -> OrtModel:
    return OrtModel(Path(path) / GRAPH_FILE, **artifact_fields(path, manifest, device))
