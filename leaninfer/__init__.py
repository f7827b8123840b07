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
# OpenMP's wait policy is left at libgomp's default (workers spin briefly between ops, then sleep). `serve` used to
# set PASSIVE (workers sleep at once): that helped one 2-thread embeddings engine share 2 vCPUs with the event
# loop, but it made every op of a decode step wake its workers: gpt2 INT8 served 23-35% dearer per token than at
# the default. Embedding lanes (engines/engine.py) now run 1-thread calls on 2 vCPUs, where the policy changes
# nothing (227 vs 230 req/s, same run). Measured in docs/serving.md; a user's OMP_WAIT_POLICY still applies.
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
