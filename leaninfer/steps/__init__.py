"""The optimization steps: one file per family, each step a validated config plus ``apply``.

Importing this package registers every step in :data:`STEPS` (name -> config class), which the optimize
pipeline (``leaninfer.pipeline``), the CLI and recipes use to turn ``step:key=value`` into a config.
Loading an artifact never needs this registry: the manifest carries what the loader rebuilds from.
"""

from __future__ import annotations

from . import bnb, casts, distill, onnx, openvino, prune, torch_quant  # noqa: F401  (register the steps)
from .common import STEPS, StepConfig, StepContext, get_step

__all__ = ["STEPS", "StepConfig", "StepContext", "get_step"]
