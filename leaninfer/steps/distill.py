"""Knowledge distillation: train a smaller student to compute what the teacher computes.

The student is, by ``student``:

* ``layers`` (default) — a copy of the teacher keeping only some of its blocks (``student_layers``, or
  ``num_layers`` evenly spaced ones, first and last included), so it starts close to the teacher;
* ``input`` — the model handed to the step (e.g. after ``prune-ffn``), with ``teacher`` naming the original;
* ``config`` — a fresh model built from the teacher's config with ``student_config`` overrides (random init).

Losses: embedding models — ``cosine_weight`` x (1 - cosine) of the normalized mean-pooled embeddings plus
``mse_weight`` x MSE of the raw mean-pooled embeddings (what sentence-transformers' distillation does);
causal LMs — KL divergence of the student's from the teacher's next-token distribution at ``temperature``
(scaled by T², Hinton et al.), plus ``next_token_weight`` x the usual next-token cross-entropy.

Design notes:

* Deterministic under ``seed``: batch ``s`` is a pure function of (seed, s) (one permutation of the corpus per
  epoch), teacher embeddings are computed once in fixed batches, dropout is off (the student trains in eval
  mode: with a teacher to match, dropout only adds noise), and the optimizer state is checkpointed. So a run
  interrupted and resumed ends with the same weights as one that never stopped.
* Checkpoints go to ``checkpoint_dir`` (default ``$LEANINFER_CACHE/distill/<run key>``, the key hashing the
  teacher's weights, the corpus and every training parameter), every ``checkpoint_every`` steps and on
  Ctrl-C. Running the same command again resumes; a finished run removes its checkpoints.
* Bounded by ``max_steps`` and optionally ``max_time_s`` (wall time, accumulated across resumes). The
  learning-rate schedule follows ``max_steps``: size the steps to the time you have (measure steps/s first).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..errors import LeaninferError, StepError
from ..models import load
from .common import StepConfig, StepContext, log, register
from .prune import drop_blocks, num_blocks

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus.txt"


# --------------------------------------------------------------------------------------------------------
# Corpus


def read_corpus(path: str | Path | None = None, columns: tuple[str | int, ...] = ()) -> list[str]:
    """Texts to distill on: one per non-empty line of a text file, or the named columns of a CSV.

    CSV columns are 0-based indices (a file without header) or header names (first row is the header).
    Duplicates are dropped, first occurrence kept, so the order (and the corpus hash) is stable.

    Example:
        >>> len(read_corpus()) > 100   # the shipped default corpus
        True
    """
    path = Path(path) if path is not None else DEFAULT_CORPUS
    if not path.is_file():
        raise LeaninferError(f"corpus {str(path)!r} is not a file")
    texts: list[str] = []
    try:
        if columns:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            by_name = [c for c in columns if isinstance(c, str) and not c.isdigit()]
            if by_name:
                header = rows[0] if rows else []
                missing = [c for c in by_name if c not in header]
                if missing:
                    raise LeaninferError(f"corpus {str(path)!r}: column(s) {missing} not in the header row "
                                         f"{header}; name columns from it, or give 0-based indices for a file "
                                         "without header")
                idx = [header.index(c) if c in by_name else int(c) for c in columns]
                rows = rows[1:]
            else:
                idx = [int(c) for c in columns]
            for line, row in enumerate(rows, start=1):
                for i in idx:
                    if i >= len(row):
                        raise LeaninferError(f"corpus {str(path)!r}: row {line} has {len(row)} columns; column "
                                             f"index {i} does not exist (valid: 0..{len(row) - 1})")
                    if row[i].strip():
                        texts.append(row[i].strip())
        else:
            texts = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise LeaninferError(f"cannot read corpus {str(path)!r}: {e}") from None
    texts = list(dict.fromkeys(texts))
    if len(texts) < 2:
        raise LeaninferError(f"corpus {str(path)!r} has {len(texts)} usable texts; need at least 2")
    return texts


def corpus_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# Students


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` of ``n_teacher`` block indices, spread evenly, first and last included (6 -> 3: 0, 2, 5)."""
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)})


def build_student(cfg: Distill, teacher_module, given_module):
    if cfg.student == "input":
        return copy.deepcopy(given_module), None
    if cfg.student == "config":
        from transformers import AutoModel, AutoModelForCausalLM

        config = copy.deepcopy(teacher_module.config)
        for k, v in (cfg.student_config or {}).items():
            if not hasattr(config, k):
                raise StepError(f"distill student_config: {k!r} is not a field of {type(config).__name__}")
            setattr(config, k, v)
        auto = AutoModelForCausalLM if hasattr(teacher_module, "lm_head") or "LMHead" in type(teacher_module).__name__ \
            else AutoModel
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return auto.from_config(config, attn_implementation="sdpa"), None
    n = num_blocks(teacher_module)
    if cfg.student_layers is not None:
        keep = sorted(cfg.student_layers)
        bad = [i for i in keep if i >= n]
        if bad:
            raise StepError(f"distill student_layers={list(cfg.student_layers)}: the teacher has {n} layers "
                            f"(valid indices 0..{n - 1})")
    else:
        k = cfg.num_layers if cfg.num_layers is not None else max(1, n // 2)
        if k >= n:
            raise StepError(f"distill num_layers={k}: the teacher has {n} layers; a student needs fewer "
                            f"(valid: 1..{n - 1})")
        keep = evenly_spaced(n, k)
    student = copy.deepcopy(teacher_module)
    drop_blocks(student, [i for i in range(n) if i not in keep])
    return student, keep


# --------------------------------------------------------------------------------------------------------
# The step


@register
class Distill(StepConfig):
    name: ClassVar[str] = "distill"
    summary: ClassVar[str] = ("train a smaller student (fewer layers, pruned, or a smaller config) to match the "
                              "teacher on a corpus")
    accepts: ClassVar[tuple[str, ...]] = ("torch:fp32",)

    student: Literal["layers", "input", "config"] = Field(
        "layers", description="how the student is made: layers (a copy of the teacher keeping some of its blocks), "
        "input (the model handed to the step, e.g. after prune-ffn; needs teacher) or config (a fresh, randomly "
        "initialized model from the teacher's config with student_config overrides)")
    num_layers: int | None = Field(
        None, description="student=layers: how many teacher blocks the student keeps, evenly spaced with the first "
        "and last included; 1 up to the teacher's layer count minus 1; default half the teacher's (at least 1)")
    student_layers: tuple[int, ...] | None = Field(
        None, description="student=layers: exactly which teacher blocks to keep, distinct 0-based indices "
        "(instead of num_layers)")
    student_config: dict[str, Any] | None = Field(
        None, description="student=config: teacher config fields to override, e.g. {num_hidden_layers: 2} "
        "(required there, refused with any other student)")
    teacher: str | None = Field(
        None, description="model reference of the teacher (minilm, a Hugging Face id, a model or artifact "
        "directory), a PyTorch FP32 model of the same task; default: the model handed to the step; required for "
        "student=input")
    corpus: str | None = Field(
        None, description="path of the training texts: a text file, one text per non-empty line, or a CSV when "
        "corpus_columns is given; duplicates are dropped, at least 2 texts; default: the shipped "
        "leaninfer/data/corpus.txt")
    corpus_columns: tuple[str | int, ...] = Field(
        (), description="CSV columns the texts are read from: 0-based indices (file without header) or header "
        "names (first row is the header), a comma-separated string is accepted; empty: corpus is a plain text file")
    max_steps: int = Field(1000, description="optimizer steps to train (1 or more); the learning-rate schedule "
                           "decays to 0 at this step")
    max_time_s: float | None = Field(
        None, description="wall-clock limit in seconds (above 0), accumulated across resumes: training stops at the "
        "first step boundary after it; none: no limit")
    batch_size: int = Field(32, description="corpus texts per optimizer step (1 or more)")
    max_length: int = Field(128, description="tokens per text, longer texts are truncated (2 or more)")
    lr: float = Field(1e-4, description="peak AdamW learning rate, between 0 and 1: reached linearly over "
                      "warmup_steps, then decayed linearly to 0 at max_steps")
    weight_decay: float = Field(0.01, description="AdamW weight decay")
    warmup_steps: int = Field(50, description="optimizer steps over which the learning rate rises linearly to lr")
    seed: int = Field(0, description="seeds torch, the batch order (one permutation of the corpus per epoch) and "
                      "the random initialization of a student=config student: same seed, same result")
    cosine_weight: float = Field(1.0, description="embedding models: weight (>= 0) of 1 - cosine between the "
                                 "student's and the teacher's mean-pooled embeddings in the loss")
    mse_weight: float = Field(1.0, description="embedding models: weight (>= 0) of the mean squared error between "
                              "the student's and the teacher's raw mean-pooled embeddings in the loss")
    temperature: float = Field(2.0, description="causal LMs: softmax temperature (above 0) of the KL divergence "
                               "between the teacher's and the student's next-token distributions (loss scaled by T²)")
    next_token_weight: float = Field(0.0, description="causal LMs: weight (>= 0) of the usual next-token "
                                     "cross-entropy on the corpus added to the KL loss; 0: off")
    checkpoint_dir: str | None = Field(
        None, description="folder for resumable checkpoints, deleted when the run finishes; default: "
        "$LEANINFER_CACHE/distill/<run key> (LEANINFER_CACHE defaults to ~/.cache/leaninfer)")
    checkpoint_every: int = Field(200, description="save a checkpoint every this many optimizer steps (1 or more); "
                                  "one is also saved on Ctrl-C or an error")
    freeze_embeddings: bool = Field(True, description="keep the student's input token embeddings as the teacher's, "
                                    "untrained (faster, less memory); ignored for student=config")
    progress: bool = Field(True, description="show a progress bar with the running loss while training")

    _lineage: dict | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _drop_record(cls, data):
        # ``lineage`` is what a run recorded (see to_dict), not a parameter: ignore it when a manifest is read.
        if isinstance(data, dict) and "lineage" in data:
            data = {k: v for k, v in data.items() if k != "lineage"}
        return data

    @field_validator("corpus_columns", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, (str, int)):
            v = str(v).split(",")
        return tuple(int(x) if isinstance(x, int) or str(x).strip().isdigit() else str(x).strip() for x in v)

    @model_validator(mode="after")
    def _check(self):
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(self.max_steps >= 1, f"max_steps={self.max_steps}; valid: 1 or more")
        need(self.max_time_s is None or self.max_time_s > 0, f"max_time_s={self.max_time_s}; valid: above 0")
        need(self.batch_size >= 1, f"batch_size={self.batch_size}; valid: 1 or more")
        need(self.max_length >= 2, f"max_length={self.max_length}; valid: 2 or more")
        need(0 < self.lr < 1, f"lr={self.lr}; valid: between 0 and 1 (typically 1e-4)")
        need(self.temperature > 0, f"temperature={self.temperature}; valid: above 0")
        need(min(self.cosine_weight, self.mse_weight, self.next_token_weight) >= 0, "loss weights must be >= 0")
        need(self.checkpoint_every >= 1, f"checkpoint_every={self.checkpoint_every}; valid: 1 or more")
        need(self.num_layers is None or self.num_layers >= 1, f"num_layers={self.num_layers}; valid: 1 or more")
        need(self.student_layers is None or (self.student_layers and min(self.student_layers) >= 0
                                             and len(set(self.student_layers)) == len(self.student_layers)),
             f"student_layers={self.student_layers}: need distinct 0-based layer indices")
        layer_opts = self.num_layers is not None or self.student_layers is not None
        need(not (self.num_layers is not None and self.student_layers is not None),
             "give num_layers or student_layers, not both")
        need(self.student == "layers" or not layer_opts,
             f"num_layers/student_layers apply to student=layers, not student={self.student}")
        need((self.student == "config") == (self.student_config is not None),
             "student=config needs student_config (config field overrides, e.g. {num_hidden_layers: 2}), and "
             "student_config needs student=config")
        need(self.student != "input" or self.teacher is not None,
             "student=input distills the model handed in from a teacher: name it with teacher=<reference>")
        return self

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self._lineage is not None:
            d["lineage"] = self._lineage
        return d

    def run_key(self, teacher_module, corpus_hash: str) -> str:
        """Identifies a training run: same key, same run (so a checkpoint may be resumed)."""
        import torch

        h = hashlib.sha256()
        params = self.model_dump(mode="json", exclude={"max_time_s", "checkpoint_dir", "checkpoint_every", "progress"})
        h.update(json.dumps(params, sort_keys=True).encode())
        h.update(corpus_hash.encode())
        for name, t in sorted(teacher_module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    def apply(self, model, ctx: StepContext):
        teacher = load(self.teacher, task=model.task, device=str(model.device)) if self.teacher else model
        if teacher.backend != "torch" or teacher.precision != "fp32":
            raise StepError(f"distill needs a PyTorch FP32 teacher; {teacher.ref!r} is {teacher.state}")
        if teacher.task != model.task:
            raise StepError(f"distill: teacher is a {teacher.task} model, the student a {model.task} model")
        texts = read_corpus(self.corpus, self.corpus_columns)
        chash = corpus_sha256(texts)
        student, kept = build_student(self, teacher.module, model.module)
        student = student.to(model.device)
        key = self.run_key(teacher.module, chash)
        ckpt_dir = Path(self.checkpoint_dir).expanduser() if self.checkpoint_dir else \
            Path(os.environ.get("LEANINFER_CACHE", "~/.cache/leaninfer")).expanduser() / "distill" / key
        result = train(self, teacher, student, texts, ckpt_dir, key)
        self._lineage = {
            "teacher": {"ref": teacher.ref, "num_parameters": teacher.num_parameters()},
            "student": self.student, "student_layers": kept,
            "num_parameters": sum(p.numel() for p in student.parameters()),
            "corpus": {"path": str(self.corpus) if self.corpus else "leaninfer/data/corpus.txt (shipped)",
                       "columns": list(self.corpus_columns), "num_texts": len(texts), "sha256": chash},
            **result,
        }
        where = "resumed from step " + str(result["resumed_from_step"]) if result["resumed_from_step"] else "fresh"
        ctx.note(f"distill: {result['steps']} steps ({where}, stopped by {result['stopped_by']}) in "
                 f"{result['train_s']:.0f} s on {result['device']}; loss {result['loss_first']:.4f} -> "
                 f"{result['loss_last']:.4f} (mean of the first/last {result['loss_window']} steps)")
        return model.derive(module=student.eval(), tokenizer=teacher.tokenizer, config=student.config,
                            weights=teacher.weights, precision="fp32", path=None)


# --------------------------------------------------------------------------------------------------------
# Training


def _batch_indices(seed: int, n: int, batch_size: int, step: int) -> np.ndarray:
    """Batch ``step`` of the run: a pure function of (seed, step), so a resumed run sees the same data."""
    per_epoch = max(1, n // batch_size)
    epoch, b = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch_size:
        return perm
    return perm[b * batch_size:(b + 1) * batch_size]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _autocast(device: str):
    import torch

    if str(device).startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _teacher_embeddings(teacher, enc_t):
    """Teacher's raw mean-pooled embeddings of one tokenized batch."""
    import torch

    with torch.no_grad(), _autocast(str(teacher.device)):
        h = teacher.module(**enc_t).last_hidden_state.float()
    return _mean_pool(h, enc_t["attention_mask"]).cpu()


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _embedding_loss(cfg: Distill, student, teacher_emb, enc_t, idx):
    import torch.nn.functional as F

    h = student(**enc_t).last_hidden_state.float()
    s = _mean_pool(h, enc_t["attention_mask"])
    t = teacher_emb[idx].to(s.device)
    cos = F.cosine_similarity(s, t, dim=-1)
    return cfg.cosine_weight * (1 - cos).mean() + cfg.mse_weight * F.mse_loss(s, t)


def _causal_loss(cfg: Distill, student, teacher, enc_t):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t_logits = teacher.module(**enc_t).logits.float()
    s_logits = student(**enc_t).logits.float()
    mask = enc_t["attention_mask"].float()
    T = cfg.temperature
    kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                  reduction="none").sum(-1)
    loss = (kl * mask).sum() / mask.sum() * T * T
    if cfg.next_token_weight > 0:
        ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, s_logits.shape[-1]),
                             enc_t["input_ids"][:, 1:].reshape(-1), reduction="none")
        m = mask[:, 1:].reshape(-1) * mask[:, :-1].reshape(-1)
        loss = loss + cfg.next_token_weight * (ce * m).sum() / m.sum().clamp(min=1)
    return loss


def _save_checkpoint(ckpt_dir: Path, state: dict) -> None:
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / "checkpoint.pt")  # atomic: an interruption never leaves half a checkpoint


# Called after every optimizer step with (step_done, loss); tests use it to simulate an interruption.
_after_step_hook = None


def train(cfg: Distill, teacher, student, texts: list[str], ckpt_dir: Path, key: str) -> dict:
    """The training loop. Returns the lineage facts (steps, losses, time, device, how it stopped)."""
    import torch

    device = str(teacher.device)
    torch.manual_seed(cfg.seed)
    teacher.module.eval()
    student.eval()  # no dropout: deterministic, and the teacher's targets are already clean
    for p in student.parameters():
        p.requires_grad_(True)
    if cfg.freeze_embeddings and cfg.student != "config":
        # A large share of a small model's weights (30522 x 384 of minilm's 22.7M), already right for a
        # student copied from the teacher: training them costs a dense gradient and an AdamW update per step.
        student.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda") and not torch.cuda.is_bf16_supported())
    step, losses, elapsed, resumed_from = 0, [], 0.0, 0
    ckpt_file = ckpt_dir / "checkpoint.pt"
    if ckpt_file.exists():
        state = torch.load(ckpt_file, map_location=device, weights_only=False)
        if state.get("key") == key:
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step, losses, elapsed = state["step"], state["losses"], state["elapsed_s"]
            resumed_from = step
            log.warning("distill: resuming from %s at step %d of %d", ckpt_file, step, cfg.max_steps)
        else:
            log.warning("distill: %s belongs to another run; starting fresh", ckpt_file)

    # Embedding teachers: each text's target is computed the first time a batch holds it, then reused (the
    # teacher is frozen). The cache is part of the checkpoint, so a resumed run computes the same targets.
    teacher_emb = have = None
    if teacher.task == "embedding":
        hidden = teacher.module.config.hidden_size
        if student.config.hidden_size != hidden:
            raise StepError(f"distill: the student's hidden size {student.config.hidden_size} differs from the "
                            f"teacher's {hidden}; embedding distillation needs them equal")
        teacher_emb, have = torch.zeros(len(texts), hidden), torch.zeros(len(texts), dtype=torch.bool)
        if resumed_from and "teacher_emb" in state:
            teacher_emb, have = state["teacher_emb"].cpu(), state["have"].cpu()

    def checkpoint():
        _save_checkpoint(ckpt_dir, {"key": key, "student": student.state_dict(), "optimizer": opt.state_dict(),
                                    "scaler": scaler.state_dict(), "step": step, "losses": losses,
                                    "elapsed_s": elapsed, "teacher_emb": teacher_emb, "have": have})

    stopped_by = "max_steps"
    t_start = time.perf_counter() - elapsed
    bar = _progress(cfg, step)
    try:
        with bar or contextlib.nullcontext():
            task_id = bar.add_task("distill", total=cfg.max_steps, completed=step, loss=float("nan")) if bar else None
            while step < cfg.max_steps:
                if cfg.max_time_s is not None and time.perf_counter() - t_start >= cfg.max_time_s:
                    stopped_by = "max_time_s"
                    break
                idx = _batch_indices(cfg.seed, len(texts), cfg.batch_size, step)
                enc = teacher.tokenize([texts[i] for i in idx], max_length=cfg.max_length)
                enc_t = {k: torch.from_numpy(v).to(device) for k, v in enc.items()}
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(step, cfg.warmup_steps, cfg.max_steps)
                if teacher_emb is not None:
                    t_idx = torch.from_numpy(idx)
                    missing = t_idx[~have[t_idx]]
                    if len(missing) == len(t_idx):
                        teacher_emb[t_idx] = _teacher_embeddings(teacher, enc_t)
                    elif len(missing):
                        enc_m = teacher.tokenize([texts[i] for i in missing.tolist()], max_length=cfg.max_length)
                        teacher_emb[missing] = _teacher_embeddings(
                            teacher, {k: torch.from_numpy(v).to(device) for k, v in enc_m.items()})
                    have[t_idx] = True
                with _autocast(device):
                    if teacher_emb is not None:
                        loss = _embedding_loss(cfg, student, teacher_emb, enc_t, torch.from_numpy(idx))
                    else:
                        loss = _causal_loss(cfg, student, teacher, enc_t)
                if not torch.isfinite(loss):
                    raise StepError(f"distill: loss became {float(loss)} at step {step}; lower lr (now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
                scaler.step(opt)
                scaler.update()
                step += 1
                losses.append(round(loss.item(), 6))
                elapsed = time.perf_counter() - t_start
                if bar:
                    bar.update(task_id, completed=step, loss=float(np.mean(losses[-20:])))
                if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    checkpoint()
                if _after_step_hook is not None:
                    _after_step_hook(step, losses[-1])
    except KeyboardInterrupt:
        checkpoint()
        raise LeaninferError(f"distill interrupted at step {step}; checkpoint saved in {ckpt_dir}: run the same "
                             "command again to resume") from None
    except BaseException:
        if step:
            checkpoint()
        raise
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the artifact is the result
    window = max(1, min(50, len(losses) // 10)) if losses else 1
    return {"steps": step, "max_steps": cfg.max_steps, "stopped_by": stopped_by, "resumed_from_step": resumed_from,
            "train_s": round(elapsed, 1), "device": device, "seed": cfg.seed,
            "loss_first": float(np.mean(losses[:window])) if losses else math.nan,
            "loss_last": float(np.mean(losses[-window:])) if losses else math.nan, "loss_window": window,
            "loss_curve": _curve(losses)}


def _curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """(step, mean loss) at up to ``points`` evenly spaced steps: the shape without every number."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).astype(int)
    return [[int(b), round(float(np.mean(losses[a:b])), 6)] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _progress(cfg: Distill, step: int):
    if not cfg.progress:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=True)
