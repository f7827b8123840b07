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
import types

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

# The API's functions are imported on first use (PEP 562), not with the package: ``leaninfer usage`` or
# ``keys`` imports ``leaninfer.finops``, and with it this package, and must not pay ~0.3 s of models, pipeline
# and evaluation imports it never uses (leaninfer/entry.py).
_LAZY = {"evaluate": ".evaluate", "load": ".models", "Model": ".models", "RANDOM_PRESETS": ".models",
         "optimize": ".pipeline"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule leaninfer.evaluate binds it to this name; the API's evaluate() keeps it.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'leaninfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["LeaninferError", "Model", "RANDOM_PRESETS", "evaluate", "load", "optimize", "__version__"]
