"""Artifacts: a directory with a reloadable model and a ``leaninfer.json`` manifest that tells its story.

The manifest, never a file name, says how to load the directory (``format``): ``hf`` (``save_pretrained``),
``torch-state`` (config + quantized state dict, rebuilt by re-applying the recorded steps), ``onnx`` or
``openvino``. Writing is atomic: everything goes to a hidden temporary sibling folder that is renamed into
place only when complete, so an interrupted run leaves no half-written artifact.
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
from .models import MANIFEST_NAME, Model, TorchModel, _load_hf, _max_seq_length, prepare_tokenizer

FORMATS = ("hf", "torch-state", "onnx", "openvino")
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


def save_model_files(model: Model, folder: Path, steps: list) -> str:
    """Write the model in its standard format into ``folder``; return the manifest's ``format``."""
    folder = Path(folder)
    model.tokenizer.save_pretrained(folder)
    if model.backend == "onnx":
        if model.onnx_path.parent.resolve() != folder.resolve():
            shutil.copy2(model.onnx_path, folder / "model.onnx")
        model.config.save_pretrained(folder)
        return "onnx"
    if model.backend == "openvino":
        if model.xml_path.parent.resolve() != folder.resolve():
            shutil.copy2(model.xml_path, folder / "model.xml")
            shutil.copy2(model.xml_path.with_suffix(".bin"), folder / "model.bin")
        model.config.save_pretrained(folder)
        return "openvino"
    if any(hasattr(s, "restructure") for s in steps):
        import torch

        model.module.config.save_pretrained(folder)
        torch.save(model.module.state_dict(), folder / "model_state.pt")
        return "torch-state"
    model.module.save_pretrained(folder)
    return "hf"


def build_manifest(model: Model, folder: Path, *, fmt: str, source: Model, steps: list, quality: dict | None,
                   notes: list[str], elapsed_s: float | None = None) -> dict:
    from . import __version__

    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST_NAME}
    weight_files = [n for n in files if n.endswith((".safetensors", ".onnx", ".bin", ".pt", ".data"))
                    and not n.startswith(("tokenizer", "training_args"))]
    return {
        "leaninfer_version": __version__,
        "format": fmt,
        "task": model.task,
        "backend": model.backend,
        "precision": model.precision,
        "state": model.state,
        "weights": model.weights,
        "source": {"ref": source.ref, "weights": source.weights, "num_parameters": source.num_parameters(),
                   "weight_bytes": source.weight_bytes()},
        "steps": [s.to_dict() for s in steps],
        "num_parameters": model.num_parameters(),
        "weight_bytes": model.weight_bytes() if model.backend == "torch" else sum(files[n]["bytes"] for n in weight_files),
        "size_bytes": sum(f["bytes"] for f in files.values()),
        "max_seq_length": model.max_seq_length,
        "files": files,
        "quality": quality,
        "notes": notes,
        "library_versions": library_versions(),
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
    if manifest.get("format") not in FORMATS:
        raise LeaninferError(f"{path}: manifest format {manifest.get('format')!r} is not one of {', '.join(FORMATS)}")
    return manifest


def load_artifact(path: Path, device: str = "cpu") -> Model:
    """Load an artifact directory into the same handle type as any other reference."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    m = read_manifest(path)
    fmt, task = m["format"], m["task"]
    common = {"ref": str(path), "task": task, "weights": m.get("weights", "pretrained"),
              "precision": m.get("precision", "fp32"), "manifest": m, "path": path}
    if fmt == "hf":
        model = _load_hf(str(path), str(path), task=task, device=device, dtype=None)
        model.weights, model.precision, model.manifest = common["weights"], common["precision"], m
        return model
    config = AutoConfig.from_pretrained(path)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), task)
    common.update(tokenizer=tokenizer, config=config,
                  max_seq_length=m.get("max_seq_length") or _max_seq_length(path, tokenizer, config))
    if fmt == "onnx":
        from .backends import OrtModel

        return OrtModel(path / "model.onnx", device=device, **common)
    if fmt == "openvino":
        from .backends import OpenVINOModel

        return OpenVINOModel(path / "model.xml", device=device, **common)
    return TorchModel(_rebuild_torch_state(path, m, config, device), device=device, **common)


def _rebuild_torch_state(path: Path, manifest: dict, config, device: str):
    """Build the architecture from its config, re-apply the recorded structural steps, load the state."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from .optimize import get_step

    auto = AutoModelForCausalLM if manifest["task"] == "causal-lm" else AutoModel
    module = auto.from_config(config, attn_implementation="sdpa")
    for spec in manifest["steps"]:
        spec = dict(spec)
        step = get_step(spec.pop("step"), **spec)
        if hasattr(step, "restructure"):
            step.restructure(module)
    # Load on the CPU and move the whole module after: assigning quantized (tensor-subclass) CUDA tensors
    # into a CPU-built module fails ("storage on a different device"), seen on an H100.
    state = torch.load(path / "model_state.pt", map_location="cpu", weights_only=False)
    module.load_state_dict(state, assign=True)
    # assign=True gives tied weights (GPT-2's lm_head = wte) separate tensors: tie them again, unless one
    # side was quantized on its own (then they are different tensors on purpose).
    if getattr(config, "tie_word_embeddings", False):
        out_emb, in_emb = module.get_output_embeddings(), module.get_input_embeddings()
        if (out_emb is not None and type(out_emb.weight) is torch.nn.Parameter
                and type(in_emb.weight) is torch.nn.Parameter and out_emb.weight.shape == in_emb.weight.shape):
            out_emb.weight = in_emb.weight
    return module.to(device).eval()
