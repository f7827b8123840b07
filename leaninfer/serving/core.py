"""The pure batching and scheduling core: no HTTP, no model, no threads, no asyncio.

Two schedulers live here, each driven by one engine thread (see ``engine.py``) and testable with a fake model:

* :func:`form_embedding_batches` — dynamic batching for embeddings: from the queued items, batches bounded by
  a size and a padded-token budget, grouped by length so that short texts are not padded to long ones.
* :class:`GenerationScheduler` — continuous (iteration-level) batching for generation: each ``step()`` admits
  waiting requests into free slots, prefills them, runs one decode step for every running sequence, samples
  per request, and retires finished or cancelled sequences immediately.

Why our own generation scheduler rather than transformers 5's ``ContinuousBatchingManager``
(``init_continuous_batching`` / ``generate_batch``)? We read it (5.24) and measured it on CPU (it works: about
7x sequential on random:gpt2 at 16 streams). It could not serve what the issue asks for:

1. ``do_sample`` and the seed are per *manager* (``torch.manual_seed`` once, at start): greedy and sampled
   requests cannot share a batch, and a per-request ``seed`` is impossible;
2. its loop runs in a private thread with no step hook, so the engine's busy time cannot be split across
   the requests of each step (the per-request cost in USD) nor exported as utilization;
3. it needs a PyTorch module with paged attention; ONNX Runtime and OpenVINO variants, which only give
   full-sequence logits, must be servable too.

So the scheduler is ours and the model work sits behind the model layer's :class:`Runner` interface
(``Model.runner()``): a KV-cache runner for PyTorch models and a recompute runner for full-sequence-logit
backends. ``Model.generate`` and the benchmark worker drive the same runners.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..models.runner import Runner

# --------------------------------------------------------------------------------------------------------
# Embeddings: dynamic batching


@dataclass
class EmbedItem:
    """One text to embed (an embeddings request with a list of inputs becomes several items)."""

    token_ids: list[int]
    request: object = None  # opaque to the core: whoever submitted it
    index: int = 0  # position within its request
    enqueued_at: float = 0.0


def form_embedding_batches(items: Sequence[EmbedItem], max_batch_size: int,
                           max_batch_tokens: int) -> list[list[EmbedItem]]:
    """Split queued items into batches: at most ``max_batch_size`` items and ``max_batch_tokens`` padded
    tokens (batch size x longest item) each, items of similar length together.

    Design: sort by length, then cut greedily. Every item lands in exactly one batch (an item longer than
    the token budget gets a batch of its own: the budget bounds padding, it never starves a request). The
    batch holding the oldest item comes first so that waiting is bounded.

    >>> b = form_embedding_batches([EmbedItem([1] * n) for n in (3, 30, 4, 31)], 4, 64)
    >>> [[len(i.token_ids) for i in x] for x in b]
    [[3, 4], [30, 31]]
    """
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: (len(items[i].token_ids), i))
    batches: list[list[int]] = [[]]
    longest = 0
    for i in order:
        n = len(items[i].token_ids)
        cur = batches[-1]
        if cur and (len(cur) >= max_batch_size or max(longest, n) * (len(cur) + 1) > max_batch_tokens):
            batches.append([])
            cur, longest = batches[-1], 0
        cur.append(i)
        longest = max(longest, n)
    oldest = min(range(len(items)), key=lambda i: (items[i].enqueued_at, i))
    batches.sort(key=lambda b: oldest not in b)  # stable: the oldest item's batch first, then by length
    return [[items[i] for i in b] for b in batches]


def split_cost(seconds: float, weights: Sequence[float]) -> list[float]:
    """Share ``seconds`` of engine time across the members of a batch in proportion to their tokens.

    >>> split_cost(1.0, [3, 1])
    [0.75, 0.25]
    """
    total = float(sum(weights))
    if total <= 0:
        return [seconds / len(weights)] * len(weights) if weights else []
    return [seconds * w / total for w in weights]


# --------------------------------------------------------------------------------------------------------
# Generation: sampling and stop handling


@dataclass
class SamplingParams:
    """Per-request generation parameters (OpenAI names). ``temperature == 0`` means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Sampler:
    """Picks the next token from one row of logits with the request's own RNG (so ``seed`` is per request).

    >>> Sampler(SamplingParams(temperature=0)).sample(np.array([0.1, 2.0, 0.3]))
    1
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float64)
        if p.greedy:
            return int(np.argmax(logits))
        z = logits / p.temperature
        z = z - z.max()
        probs = np.exp(z)
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, p.top_p) + 1)]  # smallest set reaching top_p
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(len(probs), p=probs))


class TextTracker:
    """Turns generated token ids into text deltas safe to send, and finds stop strings.

    Text that could still become a stop string (a suffix that is a prefix of one) or that ends in an
    incomplete UTF-8 sequence is held back until it is resolved.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.sent = 0  # characters of text already handed out
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Append a token; return the newly safe text (possibly empty). Sets ``stopped`` on a stop string."""
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        for s in self.stop:
            at = self.text.find(s)
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
        if self.stopped:
            return self.flush()
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


# --------------------------------------------------------------------------------------------------------
# Generation: the scheduler


@dataclass
class GenEvent:
    """What the scheduler reports for a sequence after a step: new text, and, once, how it finished."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


@dataclass
class GenSequence:
    """One generation request inside the scheduler."""

    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[GenSequence, GenEvent], None]
    decode_text: Callable[[list[int]], str] = lambda ids: " ".join(map(str, ids))
    id: int = -1
    enqueued_at: float = 0.0
    started_at: float | None = None  # admitted (prefill begins)
    first_token_at: float | None = None
    finished_at: float | None = None
    busy_prefill_s: float = 0.0  # engine time attributed to this sequence's prompt tokens
    busy_decode_s: float = 0.0  # ... and to its generated tokens
    cancelled: bool = False
    finish_reason: str | None = None
    output: list[int] = field(default_factory=list)
    _sampler: Sampler | None = None
    _tracker: TextTracker | None = None
    _next: int | None = None  # sampled but not yet fed to the model

    @property
    def queue_s(self) -> float:
        return (self.started_at or self.finished_at or self.enqueued_at) - self.enqueued_at

    @property
    def busy_s(self) -> float:
        return self.busy_prefill_s + self.busy_decode_s


class GenerationScheduler:
    """Iteration-level (continuous) batching over a :class:`Runner`.

    Design note. One ``step()``: (1) retire cancelled sequences; (2) one decode step over every running
    sequence; (3) admit waiting sequences (FIFO) while there are free slots and the batch's token budget
    allows, and prefill them together — that gives their first token. Sequences are retired as soon as they
    hit EOS, a stop string, ``max_tokens`` or the context limit. Newcomers join between decode steps
    and finished sequences leave at once, without waiting for their neighbours. Engine time of each model
    call is split across its rows by tokens processed (prompt tokens for a prefill, one per decode row),
    which is what a request's cost is computed from. A request whose own processing fails (an exception in
    its callback or sampler) is finished with an error without touching its neighbours.

    Only ``submit`` and ``cancel`` may be called from other threads (they touch a deque and a flag).
    """

    def __init__(self, runner: Runner, *, max_batch_size: int = 16, max_batch_tokens: int = 8192,
                 eos_token_id: int | None = None, max_seq_len: int = 1024,
                 clock: Callable[[], float] = time.perf_counter,
                 on_step: Callable[[str, float, int], None] | None = None):
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.eos_token_id = eos_token_id
        self.max_seq_len = max_seq_len
        self.clock = clock
        self.on_step = on_step  # (kind "prefill"|"decode", busy seconds, rows): metrics hook
        self.inbox: deque[GenSequence] = deque()  # submit() appends here (any thread); step() drains it
        self.waiting: deque[GenSequence] = deque()
        self.running: dict[int, GenSequence] = {}
        self._ids = itertools.count(1)
        self.steps = 0
        self.batch_sizes: list[int] = []  # rows of each decode step (tests look at it)

    # -- called from any thread ---------------------------------------------------------------------------
    def submit(self, seq: GenSequence) -> GenSequence:
        seq.id = next(self._ids)
        seq.enqueued_at = seq.enqueued_at or self.clock()
        seq._sampler = Sampler(seq.params)
        seq._tracker = TextTracker(seq.decode_text, seq.params.stop)
        self.inbox.append(seq)
        return seq

    @staticmethod
    def cancel(seq: GenSequence) -> None:
        seq.cancelled = True

    # -- the engine thread --------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.inbox or self.waiting or self.running)

    def step(self) -> None:
        self.steps += 1
        while self.inbox:
            self.waiting.append(self.inbox.popleft())
        if any(s.cancelled for s in self.waiting):
            for s in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(s)
                self._finish(s, "cancelled")
        for seq in [s for s in self.running.values() if s.cancelled]:
            self._finish(seq, "cancelled")
        if self.running:
            self._decode(list(self.running.values()))
        new = self._admit()
        if new:
            self._prefill(new)

    def _admit(self) -> list[GenSequence]:
        new: list[GenSequence] = []
        tokens = sum(len(s.prompt) + len(s.output) for s in self.running.values())
        while self.waiting and len(self.running) + len(new) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                self._finish(seq, "cancelled")
                continue
            need = len(seq.prompt) + seq.params.max_tokens
            if (self.running or new) and tokens + need > self.max_batch_tokens:
                break  # wait for room; an oversized lone request still runs (validated upstream)
            self.waiting.popleft()
            tokens += need
            seq.started_at = self.clock()
            new.append(seq)
        return new

    def _prefill(self, new: list[GenSequence]) -> None:
        t0 = self.clock()
        try:
            logits = self.runner.prefill([s.id for s in new], [s.prompt for s in new])
        except Exception as e:  # the model failed on this group: fail them, keep the running batch alive
            for s in new:
                self._finish(s, "error", error=f"{type(e).__name__}: {e}")
            return
        dt = self.clock() - t0
        for s, share in zip(new, split_cost(dt, [len(s.prompt) for s in new]), strict=True):
            s.busy_prefill_s += share
            self.running[s.id] = s
        if self.on_step:
            self.on_step("prefill", dt, len(new))
        self._advance(new, logits)

    def _decode(self, seqs: list[GenSequence]) -> None:
        t0 = self.clock()
        try:
            logits = self.runner.decode([s.id for s in seqs], [s._next for s in seqs])
        except Exception as e:
            for s in seqs:
                self._finish(s, "error", error=f"{type(e).__name__}: {e}")
            return
        dt = self.clock() - t0
        for s in seqs:
            s.busy_decode_s += dt / len(seqs)
        self.batch_sizes.append(len(seqs))
        if self.on_step:
            self.on_step("decode", dt, len(seqs))
        self._advance(seqs, logits)

    def _advance(self, seqs: list[GenSequence], logits: np.ndarray) -> None:
        now = self.clock()
        for s, row in zip(seqs, logits, strict=True):
            try:
                tok = s._sampler.sample(row)
                s.output.append(tok)
                s.first_token_at = s.first_token_at or now
                is_eos = tok == self.eos_token_id and not s.params.ignore_eos
                text = "" if is_eos else s._tracker.add(tok)
                reason = None
                if is_eos or s._tracker.stopped:
                    reason = "stop"
                elif len(s.output) >= s.params.max_tokens or len(s.prompt) + len(s.output) >= self.max_seq_len:
                    reason = "length"
                if reason:
                    text += s._tracker.flush()
                    self._finish(s, reason, text=text, tokens=[tok])
                else:
                    s._next = tok
                    s.on_event(s, GenEvent(text=text, tokens=[tok]))
            except Exception as e:  # a failing request never fails its neighbours
                self._finish(s, "error", error=f"{type(e).__name__}: {e}")

    def _finish(self, seq: GenSequence, reason: str, text: str = "", tokens: list[int] | None = None,
                error: str | None = None) -> None:
        if seq.finish_reason is not None:
            return
        seq.finish_reason = reason
        seq.finished_at = self.clock()
        if self.running.pop(seq.id, None) is not None:
            try:
                self.runner.release([seq.id])
            except Exception:
                pass
        try:
            seq.on_event(seq, GenEvent(text=text, tokens=tokens or [], finish_reason=reason, error=error))
        except Exception:
            pass

    def fail_all(self, error: str) -> None:
        while self.inbox:
            self.waiting.append(self.inbox.popleft())
        for s in list(self.running.values()) + list(self.waiting):
            self._finish(s, "error", error=error)
        self.waiting.clear()


# --------------------------------------------------------------------------------------------------------
# Utilization


class BusyWindow:
    """Fraction of the last ``window_s`` seconds the engine spent computing (its utilization)."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.perf_counter):
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self.spans: deque[tuple[float, float]] = deque()  # (end time, busy seconds)

    def add(self, busy_s: float) -> None:
        self.spans.append((self.clock(), busy_s))

    def fraction(self) -> float:
        now = self.clock()
        while self.spans and self.spans[0][0] < now - self.window_s:
            self.spans.popleft()
        span = min(self.window_s, max(now - self.started, 1e-9))
        return min(1.0, sum(b for _, b in self.spans) / span) if not math.isnan(span) else 0.0
