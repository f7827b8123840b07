"""The model layer: the only package that knows a backend.

``load(ref)`` gives a :class:`Model` handle for PyTorch (any precision or quantization), ONNX Runtime and
OpenVINO alike; ``Model.runner()`` is the one decode path (``generate``, the benchmark worker and the server
drive it); ``Model.save(folder)`` writes an artifact's model files and says how to load them back.
"""

from __future__ import annotations

from .base import Model
from .load import TASKS, load, load_artifact
from .presets import RANDOM_PRESETS, RandomPreset, known_references, minilm_path
from .runner import RecomputeRunner, Runner, greedy_generate, pad_left_or_right
from .torch_model import TorchModel

__all__ = ["Model", "RANDOM_PRESETS", "RandomPreset", "RecomputeRunner", "Runner", "TASKS", "TorchModel",
           "greedy_generate", "known_references", "load", "load_artifact", "minilm_path", "pad_left_or_right"]
