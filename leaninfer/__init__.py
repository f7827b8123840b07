"""leaninfer: make open models cheaper to run, and prove it with numbers.

    >>> import leaninfer
    >>> model = leaninfer.load("minilm")
    >>> result = leaninfer.optimize(model, "onnx,ort-int8", "out/minilm-ort-int8")   # doctest: +SKIP
    >>> leaninfer.evaluate(result.model, model)["mean_cosine_to_reference"]          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

__version__ = "0.1.0"

# Offline by default: a user who wants the Hub sets HF_HUB_OFFLINE=0 explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("leaninfer").addHandler(logging.NullHandler())

from .errors import LeaninferError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .models import RANDOM_PRESETS, Model, load  # noqa: E402
from .pipeline import optimize  # noqa: E402

__all__ = ["LeaninferError", "Model", "RANDOM_PRESETS", "evaluate", "load", "optimize", "__version__"]
