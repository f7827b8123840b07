"""leaninfer: make open models cheaper to run, and prove it with numbers.

    >>> import leaninfer
    >>> model = leaninfer.load("minilm")
    >>> result = leaninfer.optimize(model, "onnx,ort-int8", "out/minilm-ort-int8")   # doctest: +SKIP
    >>> leaninfer.evaluate(result.model, model)["mean_cosine_to_reference"]          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys

__version__ = "0.1.0"

# Offline by default: a user who wants the Hub sets HF_HUB_OFFLINE=0 explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `leaninfer serve` shares its cores with the HTTP work of every request. OpenMP workers that spin between ops
# (libgomp's default) take those cores from it: measured on 2 vCPUs, minilm served 120 -> 163 req/s and the
# server's CPU time per request fell by a third once they sleep instead (docs/serving.md). libgomp reads this
# when torch loads it, hence here, before any import; a user's own setting wins.
if sys.argv[1:2] == ["serve"]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.getLogger("leaninfer").addHandler(logging.NullHandler())

from . import logs  # noqa: E402

# Quiet by default, in the Python API as in the CLI: library chatter off, LEANINFER_LOG=debug to see it.
# Before the other imports, so nothing they may load speaks first.
logs.configure()

from .errors import LeaninferError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .models import RANDOM_PRESETS, Model, load  # noqa: E402
from .pipeline import optimize  # noqa: E402

__all__ = ["LeaninferError", "Model", "RANDOM_PRESETS", "evaluate", "load", "optimize", "__version__"]
