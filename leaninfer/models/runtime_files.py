"""What the runtime handles (ONNX Runtime, OpenVINO) share: thread count, files, artifact fields."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .presets import prepare_tokenizer
from .torch_model import max_seq_length


def default_threads() -> int:
    """Threads for a runtime session: what torch uses, so baselines and variants get the same."""
    import torch

    return int(os.environ.get("LEANINFER_THREADS", 0)) or torch.get_num_threads()


def files_bytes(folder: Path, suffixes) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(suffixes))


def copy_into(files: list[Path], folder: Path, names: list[str]) -> None:
    """Copy a graph's files into ``folder`` under ``names`` (nothing to do when they are already there)."""
    for src, name in zip(files, names, strict=True):
        if src.resolve() != (Path(folder) / name).resolve():
            shutil.copy2(src, Path(folder) / name)


def artifact_fields(path: Path, manifest: dict, device: str) -> dict:
    """Handle fields of a runtime artifact: tokenizer and config from the folder, the rest from the manifest."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), manifest["task"])
    return {"ref": str(path), "task": manifest["task"], "weights": manifest.get("weights", "pretrained"),
            "precision": manifest.get("precision", "fp32"), "manifest": manifest, "path": path,
            "device": device, "tokenizer": tokenizer, "config": config,
            "max_seq_length": manifest.get("max_seq_length") or max_seq_length(path, tokenizer, config)}
