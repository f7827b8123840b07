"""PyTorch handles: any precision or quantization, on one device; loading and saving their artifacts.

Formats: ``hf`` (``save_pretrained``: plain and bitsandbytes models reload with plain transformers) and
``torch-state`` (config + state dict + the structure map, for models whose modules were swapped).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import LeaninferError, UnknownModelError
from .base import Model
from .formats import register_format, register_handle
from .presets import RandomPreset, bundled_tokenizer, known_references, prepare_tokenizer
from .slot_runner import SlotPoolRunner
from .structure_map import apply_structure_map, structure_map
from .torch_modules import (
    auto_class,
    lookup_only_bytes,
    matmul_flops_per_token,
    mean_pool_normalize,
    module_weight_bytes,
    retie_embeddings,
)
from .torch_runner import KVCacheRunner
from .traced_encoder import TracedEncoder

STATE_FILE = "model_state.pt"
_this_thread = threading.local()  # share_cores: the intra-op threads this thread last set
DECODE_MODES = ("dynamic", "static", "cuda-graphs")


@register_handle("module")
class TorchModel(Model):
    """A PyTorch module (any precision or quantization) on one device."""

    backend = "torch"

    def __init__(self, module, **kw):
        super().__init__(**kw)
        self.module = module.eval()
        _whole_machine_threads()  # read now, in the loading thread, before any lane (share_cores) changes it
        self._encoder = TracedEncoder(self.module, self._vocab_size())  # embed_batch on the CPU (traced_encoder.py)

    def num_parameters(self) -> int:
        if self.manifest and self.manifest.get("num_parameters"):
            return int(self.manifest["num_parameters"])
        return sum(p.numel() for p in self.module.parameters())

    def weight_bytes(self) -> int:
        return module_weight_bytes(self.module)

    def lookup_only_bytes(self) -> int:
        return lookup_only_bytes(self.module)

    def matmul_flops_per_token(self) -> dict:
        return matmul_flops_per_token(self.module)

    def max_lanes(self) -> int:
        return _whole_machine_threads() if str(self.device).startswith("cpu") else 1

    def share_cores(self, lanes: int) -> None:
        """PyTorch keeps its intra-op thread count per calling thread (OpenMP's per-thread setting, and MKL's
        thread-local one), so a lane thread sets its own share, and changes it only when the share changes.
        ``torch.set_num_threads`` also writes the process-wide default that threads read on their first
        parallel op; a short-lived thread puts that back, so threads that start later (another model's engine,
        say) get the whole machine as before."""
        whole = _whole_machine_threads()
        threads = max(1, whole // max(1, min(lanes, whole)))
        if getattr(_this_thread, "threads", None) == threads:
            return
        _set_threads_here(threads)
        _this_thread.threads = threads
        if threads != whole:
            restore = threading.Thread(target=_set_threads_here, args=(whole,), name="leaninfer-threads")
            restore.start()
            restore.join()

    def _inputs(self, enc):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in enc.items()
                if k in ("input_ids", "attention_mask")}

    def embed_batch(self, enc):
        import torch

        with torch.inference_mode():
            inputs = self._inputs(enc)
            hidden = self._encode(inputs["input_ids"], inputs["attention_mask"]).float()
            return mean_pool_normalize(hidden, inputs["attention_mask"]).cpu().numpy()

    def _encode(self, input_ids, attention_mask):
        if not str(self.device).startswith("cpu"):  # traced on the CPU only, where it was measured
            return self.module(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self._encoder.module is not self.module:  # a step swapped the module
            self._encoder = TracedEncoder(self.module, self._vocab_size())
        return self._encoder(input_ids, attention_mask)

    def _vocab_size(self) -> int:
        return getattr(getattr(self.module, "config", None), "vocab_size", 0) or len(self.tokenizer)

    def logits_batch(self, enc):
        import torch

        with torch.inference_mode():
            return self.module(**self._inputs(enc)).logits.float().cpu().numpy()

    def runner(self, decode: str | None = None, max_rows: int = 64) -> KVCacheRunner:
        """The KV-cache runner for at most ``max_rows`` sequences at once. ``decode`` (default:
        ``$LEANINFER_DECODE``, else ``cuda-graphs`` on CUDA and ``dynamic`` elsewhere): ``dynamic`` (a cache that
        grows in place; the fastest on CPUs), ``static`` (a slot pool: static shapes, ``slot_runner.py``) or
        ``cuda-graphs`` (the slot pool's decode steps replayed as CUDA graphs; CUDA only)."""
        self._require("causal-lm")
        cuda = str(self.device).startswith("cuda")
        decode = decode or os.environ.get("LEANINFER_DECODE") or ("cuda-graphs" if cuda else "dynamic")
        if decode not in DECODE_MODES:
            raise LeaninferError(f"unknown decode mode {decode!r}; valid: {', '.join(DECODE_MODES)}")
        if decode == "dynamic":
            return KVCacheRunner(self)
        if decode == "cuda-graphs" and not cuda:
            raise LeaninferError(f"decode mode 'cuda-graphs' needs a CUDA device; this model is on {self.device!r}")
        return SlotPoolRunner(self, slots=max_rows, cuda_graphs=decode == "cuda-graphs",
                              max_seq_len=self.max_seq_length)

    def copy(self, **changes) -> TorchModel:
        """A handle on a deep copy of the module, with ``changes`` to its fields (steps transform copies;
        the source handle stays intact)."""
        module = copy.deepcopy(self.module)
        return self.derive(module=module, **{"config": module.config, **changes})

    def save(self, folder: Path) -> dict:
        import torch

        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        # Quantized through transformers (bitsandbytes): its own save/load round-trips the model.
        hf_quantized = getattr(self.module.config, "quantization_config", None) is not None
        smap = {} if hf_quantized else structure_map(self.module, self.module.config, self.task)
        if not smap:
            self.module.save_pretrained(folder)
            return {"format": "hf"}
        self.module.config.save_pretrained(folder)
        torch.save(self.module.state_dict(), folder / STATE_FILE)
        return {"format": "torch-state", "quantization_map": smap}


# --------------------------------------------------------------------------------------------------------
# Loading


def torch_dtype(name: str | None):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}[name]


def infer_task(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "causal-lm"
    if getattr(config, "is_decoder", False) or config.model_type in ("gpt2", "llama", "qwen2", "mistral",
                                                                      "gemma", "phi", "opt", "gpt_neox"):
        return "causal-lm"
    return "embedding"


def max_seq_length(path: Path | None, tokenizer, config) -> int:
    if path is not None and (path / "sentence_bert_config.json").exists():
        msl = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
        if msl:
            return int(msl)
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else 512


@cache
def _whole_machine_threads() -> int:
    """PyTorch's intra-op thread count for the whole machine, as the first model handle found it."""
    import torch

    return torch.get_num_threads()


def _set_threads_here(n: int) -> None:
    """``n`` intra-op threads for the calling thread (and the process-wide default ``set_num_threads`` writes)."""
    import torch

    torch.get_num_threads()  # this thread's lazy first-use setup, which would overwrite the setting below
    torch.set_num_threads(n)


def load_random(preset: RandomPreset, *, device: str, dtype: str | None) -> TorchModel:
    import torch

    config = preset.make_config()
    tokenizer = bundled_tokenizer()
    if preset.task == "causal-lm":
        # The bundled tokenizer's [SEP] ends a sequence; [PAD] pads. Random weights rarely emit either.
        config.eos_token_id, config.pad_token_id, config.bos_token_id = (tokenizer.sep_token_id,
                                                                         tokenizer.pad_token_id,
                                                                         tokenizer.cls_token_id)
        tokenizer.eos_token = tokenizer.sep_token
    # Same seed every time: the same preset gives the same weights in every process, so a variant
    # built in one process can be compared with its reference rebuilt in another.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = auto_class(preset.task).from_config(config, attn_implementation="sdpa")
    module = module.to(device).eval()
    if dtype:
        module = module.to(torch_dtype(dtype))
    tokenizer = prepare_tokenizer(tokenizer, preset.task)
    return TorchModel(module, device=device, ref=f"random:{preset.name}", task=preset.task, tokenizer=tokenizer,
                      config=config, weights="random", precision=dtype or "fp32",
                      max_seq_length=max_seq_length(None, tokenizer, config))


def load_hf(ref: str, location: str, *, task: str | None, device: str, dtype: str | None) -> TorchModel:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as e:
        raise UnknownModelError(
            f"could not load model reference {ref!r} ({str(e).splitlines()[0]}). Without network only local "
            f"references work. Valid references: {', '.join(known_references())}") from None
    task = task or infer_task(config)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(location), task)
    kwargs = {"attn_implementation": "sdpa"}
    if dtype:
        kwargs["dtype"] = torch_dtype(dtype)
    if getattr(config, "quantization_config", None) is not None:
        # A bitsandbytes model is placed by its loader: without a device_map transformers puts it on the current
        # GPU, and a later .to("cpu") moves the weights but not the int8 scales Linear8bitLt keeps beside them
        # (bitsandbytes issue #1332), which then fails in int8_mm_dequant (seen on an H200, issue 21).
        module = auto_class(task).from_pretrained(location, device_map={"": device}, **kwargs).eval()
    else:
        module = auto_class(task).from_pretrained(location, **kwargs).to(device).eval()
    path = Path(location) if Path(location).is_dir() else None
    precision = dtype or {"float16": "fp16", "bfloat16": "bf16"}.get(str(module.dtype).replace("torch.", ""), "fp32")
    return TorchModel(module, device=device, ref=ref, task=task, tokenizer=tokenizer, config=config,
                      precision=precision, max_seq_length=max_seq_length(path, tokenizer, config), path=path)


def _artifact_fields(path: Path, manifest: dict, device: str) -> dict:
    return {"ref": str(path), "task": manifest["task"], "weights": manifest.get("weights", "pretrained"),
            "precision": manifest.get("precision", "fp32"), "manifest": manifest, "path": path, "device": device}


@register_format("hf")
def load_hf_artifact(path: Path, manifest: dict, device: str) -> TorchModel:
    model = load_hf(str(path), str(path), task=manifest["task"], device=device, dtype=None)
    model.weights = manifest.get("weights", "pretrained")
    model.precision = manifest.get("precision", "fp32")
    model.manifest = manifest
    return model


@register_format("torch-state")
def load_torch_state(path: Path, manifest: dict, device: str) -> TorchModel:
    """Build the architecture from its config, swap in the modules the structure map names, load the state."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    task = manifest["task"]
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), task)
    module = auto_class(task).from_config(config, attn_implementation="sdpa")
    apply_structure_map(module, manifest.get("quantization_map") or {})
    # Load on the CPU and move the whole module after: assigning quantized (tensor-subclass) CUDA tensors
    # into a CPU-built module fails ("storage on a different device"), seen on an H100.
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    module.load_state_dict(state, assign=True)
    retie_embeddings(module, config)
    return TorchModel(module.to(device).eval(), tokenizer=tokenizer, config=config,
                      max_seq_length=manifest.get("max_seq_length") or max_seq_length(path, tokenizer, config),
                      **_artifact_fields(path, manifest, device))
