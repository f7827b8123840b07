"""Artifacts: a directory with a reloadable model and a ``leaninfer.json`` manifest that tells its story.

This module holds the manifest format and the atomic folder only; it knows no backend. The manifest, never
a file name, says how to load the directory: its ``format`` (``hf``, ``torch-state``, ``onnx``,
``openvino``) picks a loader in ``leaninfer.models``, and a ``torch-state`` carries the ``quantization_map``
its model is rebuilt from. Writing is atomic: everything goes to a hidden temporary sibling folder that is
renamed into place only when complete, so an interrupted run leaves no half-written artifact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from .errors import LeaninferError
from .hardware import detect_local

MANIFEST_NAME = "leaninfer.json"
_VERSIONED = ("leaninfer", "torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "torchao",
              "bitsandbytes", "numpy")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it becomes ``out_dir``, on failure it vanishes.

    Refuses up front (before any work) when ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise LeaninferError(f"output directory {str(out_dir)!r} already exists; pass --overwrite to replace it "
                             "or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():  # overwrite: move the old one aside first so a crash never loses both
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_manifest(model, folder: Path, *, saved: dict, source, steps: list, quality: dict | None,
                   notes: list[str], elapsed_s: float | None = None) -> dict:
    """The manifest of ``model`` as written into ``folder`` (``saved``: what ``Model.save`` returned)."""
    versions = library_versions()
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST_NAME}
    weight_files = [n for n in files if n.endswith((".safetensors", ".onnx", ".bin", ".pt", ".data"))
                    and not n.startswith(("tokenizer", "training_args"))]
    return {
        "leaninfer_version": versions.get("leaninfer"),
        **saved,
        "task": model.task,
        "backend": model.backend,
        "precision": model.precision,
        "state": model.state,
        "weights": model.weights,
        "source": {"ref": source.ref, "weights": source.weights, "num_parameters": source.num_parameters(),
                   "weight_bytes": source.weight_bytes()},
        "steps": [s.to_dict() for s in steps],
        "num_parameters": model.num_parameters(),
        "weight_bytes": model.weight_bytes(),
        "weight_file_bytes": sum(files[n]["bytes"] for n in weight_files),
        "size_bytes": sum(f["bytes"] for f in files.values()),
        "max_seq_length": model.max_seq_length,
        "files": files,
        "quality": quality,
        "notes": notes,
        "library_versions": versions,
        "hardware": detect_local().to_dict(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": elapsed_s,
    }


def read_manifest(path: Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeaninferError(f"{path}: unreadable {MANIFEST_NAME} ({e})") from None
    if not isinstance(manifest, dict) or "task" not in manifest:
        raise LeaninferError(f"{path}: {MANIFEST_NAME} is not a leaninfer manifest (no 'task')")
    return manifest
