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
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.grammar import GrammarDeadEnd
from ..models.runner import PromptScores, Runner
from .logprobs import TokenLogprob, prompt_logprobs, token_logprob

# --------------------------------------------------------------------------------------------------------
# Embeddings: dynamic batching


@dataclass
class EmbedItem:
    """One text to embed (an embeddings request with a list of inputs becomes several items)."""

    token_ids: list[int]
    request: object = None  # opaque to the core: whoever submitted it
    index: int = 0  # position within its request
    enqueued_at: float = 0.0


class EmbedQueue:
    """The embeddings waiting room: counted in tokens, fair between requests.

    Design note. Items wait per request, and :meth:`take` deals them round-robin, one item per request per
    turn, a request that still has items going to the back of the line. A request with thousands of inputs
    thus gets the same share of each window as a one-line request that arrived after it, so the small one is
    in the next window taken rather than behind minutes of work. ``tokens`` is the work waiting, what
    admission bounds (a request count says nothing about work).

    >>> q = EmbedQueue()
    >>> q.add([EmbedItem([1] * 5, request="big", index=k) for k in range(4)])
    >>> q.add([EmbedItem([1], request="small")])
    >>> [(i.request, i.index) for i in q.take(3)], q.tokens
    ([('big', 0), ('small', 0), ('big', 1)], 10)
    """

    def __init__(self):
        self._queues: dict[int, deque[EmbedItem]] = {}  # id(request) -> its items not yet taken
        self._turns: deque[int] = deque()  # whose turn is next, one entry per waiting request
        self.tokens = 0
        self.items = 0
        self.newest = 0.0  # when the latest item was queued

    def __len__(self) -> int:
        """Requests with items waiting."""
        return len(self._queues)

    def add(self, items: Sequence[EmbedItem]) -> None:
        """Queue one request's items (all of the same ``request``)."""
        if not items:
            return
        key = id(items[0].request)
        if key not in self._queues:
            self._queues[key] = deque()
            self._turns.append(key)
        self._queues[key].extend(items)
        self.newest = max(self.newest, items[-1].enqueued_at)
        self.tokens += sum(len(i.token_ids) for i in items)
        self.items += len(items)

    def oldest(self) -> float | None:
        """When the longest-waiting item was queued (None when empty)."""
        return min((q[0].enqueued_at for q in self._queues.values()), default=None)

    def take(self, max_items: int) -> list[EmbedItem]:
        """Up to ``max_items`` items, dealt round-robin over the waiting requests."""
        taken: list[EmbedItem] = []
        while self._turns and len(taken) < max_items:
            key = self._turns.popleft()
            q = self._queues[key]
            taken.append(q.popleft())
            if q:
                self._turns.append(key)
            else:
                del self._queues[key]
        self._taken(taken)
        return taken

    def discard(self, request: object) -> list[EmbedItem]:
        """Remove a request's waiting items (it was cancelled); return them."""
        q = self._queues.pop(id(request), None)
        if q is None:
            return []
        self._turns.remove(id(request))
        self._taken(q)
        return list(q)

    def take_all(self) -> list[EmbedItem]:
        return self.take(self.items)

    def _taken(self, items) -> None:
        self.tokens -= sum(len(i.token_ids) for i in items)
        self.items -= len(items)


def wait_for_batch(now: float, queued: int, max_batch_size: int, window_start: float, newest: float,
                   max_wait_s: float, quiet_s: float) -> float:
    """How long the engine should still wait before taking the queue (0: take it now).

    Design note. The window opens when there is both an item and a free engine (``window_start``: the later
    of the two), not when the oldest item arrived: items that queued while the previous batch ran have all
    waited long, and counting from their arrival took them at once. Under a closed loop (N clients that each
    send again when answered) the clients then split into cohorts that never merge (batches of 12, 20, 32, 12,
    ...: the clients of one batch come back while the next runs), each batch small and padded to its own
    longest text. Waiting for the answered clients to come back merges the cohorts. The wait ends as soon as
    the batch is full, once arrivals pause for ``quiet_s`` (nobody else is coming: a lone request waits only
    that long; until a first arrival after the window opened, no pause counts, since the answered clients
    come back only once the event loop has written their answers), and at the latest ``max_wait_s`` after the
    window opened.

    >>> wait_for_batch(now=1.0, queued=32, max_batch_size=32, window_start=1.0, newest=1.0, max_wait_s=.02, quiet_s=.002)
    0.0
    >>> round(wait_for_batch(1.001, 3, 32, 1.0, 1.0005, .02, .002), 4)  # arrivals still coming: wait for a pause
    0.0015
    >>> wait_for_batch(1.003, 3, 32, 1.0, 1.0005, .02, .002)  # a pause: take what is there
    0.0
    >>> round(wait_for_batch(1.005, 3, 32, 1.0, 0.9, .02, .002), 4)  # nobody arrived since the window opened
    0.015
    """
    if queued >= max_batch_size:
        return 0.0
    deadline = window_start + max_wait_s
    if newest > window_start:
        deadline = min(deadline, newest + quiet_s)
    return max(0.0, deadline - now)


class ArrivalRate:
    """Texts arriving per second, as an engine observes them: an exponentially weighted count of the arrivals
    over the last ``tau_s`` seconds (older ones fade by e per ``tau_s``), divided by ``tau_s``. A steady stream
    of r texts/s reads r once it has run for a few ``tau_s``; a stream that stopped fades to 0. Not
    thread-safe: the caller holds a lock.

    >>> r = ArrivalRate(tau_s=0.1)
    >>> for k in range(100):
    ...     r.add(k * 0.005)            # one text every 5 ms: 200/s
    >>> round(r.rate(0.495), -1), round(r.rate(1.0))  # at the last arrival; half a second after it
    (200.0, 1)
    """

    def __init__(self, tau_s: float):
        self.tau_s = tau_s
        self._count = 0.0  # the decayed count, as of ``_at``
        self._at = -math.inf

    def add(self, now: float, texts: int = 1) -> None:
        self._count = self._decayed(now) + texts
        self._at = now

    def rate(self, now: float) -> float:
        return self._decayed(now) / self.tau_s

    def _decayed(self, now: float) -> float:
        if self._count == 0.0:
            return 0.0
        return self._count * math.exp(-max(0.0, now - self._at) / self.tau_s)


class RecentPeak:
    """The largest value seen over the last ``window_s`` seconds (a sliding maximum). Not thread-safe.

    >>> p = RecentPeak(window_s=1.0)
    >>> for t, v in [(0.0, 3), (0.2, 8), (0.5, 2), (1.1, 1)]:
    ...     p.add(t, v)
    >>> p.peak(1.1), p.peak(1.3), p.peak(5.0)
    (8, 2, 0)
    """

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._q: deque[tuple[float, int]] = deque()  # (when, value), values decreasing from the left

    def add(self, now: float, value: int) -> None:
        while self._q and self._q[-1][1] <= value:
            self._q.pop()
        self._q.append((now, value))

    def peak(self, now: float) -> int:
        while self._q and self._q[0][0] < now - self.window_s:
            self._q.popleft()
        return self._q[0][1] if self._q else 0


def fill_target(peak_in_system: int, lanes: int, max_batch_size: int) -> int:
    """The batch a free lane may wait for: its share of the texts that were in the system (queued, computing or
    being answered) at once lately, at most its share of a full batch. A closed loop of N clients has at most N
    texts in the system, so a lane can't gather more than ~N / lanes: waiting for more only waits for a pause.

    >>> fill_target(1, 2, 32), fill_target(8, 2, 32), fill_target(32, 2, 32), fill_target(500, 2, 32)
    (1, 4, 16, 16)
    """
    return max(1, min(max_batch_size // lanes, math.ceil(peak_in_system / lanes)))


def lanes_for_load(peak_in_system: int, lanes: int, max_batch_size: int) -> int:
    """How many embedding lanes the load calls for: one full-width lane until the texts recently in the system at
    once reach a full batch (at least 2), then every lane, each on its share of the cores.

    Design note. Offline, two 1-thread calls at once beat one 2-thread call at every batch size (minilm FP32 1.2-
    1.4x, ORT INT8 1.1-1.7x, OpenVINO INT8 1.2-2.0x; ``scripts/lanes_switch.py``), but served they lost until
    the load filled a batch: on a 2-vCPU Xeon (wrk, one STS-B sentence per request, minilm FP32) one lane
    served 213 / 257 / 288 requests/s at 2 / 4 / 8 clients against 136 / 188 / 241 for two, even at 16 clients
    (338 vs 350) and won only at 32 (335 vs 370). Under lighter load a lane's calls are small, and a lane that
    runs alone on half the cores leaves the other half idle; one lane on every core batches the few requests
    there are into one call. A call on every core beside another lane's costs most: minilm FP32 ran a
    full-width call 2.2x slower with a half-width lane beside it (3 threads on 2 cores); so lanes pair up
    only as a whole, with a memory of the load (the peak over the last second), not call by call.

    >>> lanes_for_load(1, 2, 32), lanes_for_load(16, 2, 32), lanes_for_load(32, 2, 32), lanes_for_load(2, 2, 1)
    (1, 1, 2, 2)
    """
    return lanes if peak_in_system >= max(2, max_batch_size) else 1


def dispatch_wait(now: float, queued: int, full: int, window_start: float, newest: float, rate_per_s: float,
                  call_s: float, fill_fraction: float, max_wait_s: float, quiet_s: float) -> float:
    """The embeddings dispatch policy: how long a free lane should still wait before taking the queue (0: now).

    Design note. Waiting for a batch to fill pays only when the texts it waits for come soon: a text that
    arrives while a call runs waits for that call and then its own, so waiting ``w`` to take it along is worth
    it when ``w`` is a fraction of a call. So a lane waits only when the observed arrival rate predicts the
    missing ``full - queued`` texts within ``fill_fraction`` of one model call's time (``call_s``: a call of
    ``full`` texts, as the lanes' recent calls cost); :func:`wait_for_batch` then bounds the wait (the batch
    full, a pause in arrivals, ``max_wait_s``). Otherwise, and always when the batch is full, the queue goes at
    once. ``full`` is :func:`fill_target`: a lane's share of the texts recently in the system at once, so a
    lone request (1 in the system) never waits, whatever the rate, and 8 clients on 2 lanes wait for 4 texts,
    not for 16 that cannot come.

    Measured (2-vCPU Intel Xeon, family 6 model 167, AVX-512 + AMX, KVM; minilm served, wrk, one STS-B sentence
    per request; docs/serving.md, "Latency against load"): the old rule, which after the window opened always
    waited for a first arrival, held a lone request for the whole ``--max-wait-ms`` (20 ms): p50 28.9 ms (FP32)
    and 23.6 ms (ORT INT8) at one client against offline batch-1 latencies of 4.0 and 1.35 ms; now 5.5 and
    2.4. Under a closed loop of 32 clients the answered cohort comes back well within a call: ~400 texts/s
    brought the missing texts in 11-14 ms (median) against 55-78 ms for a lanes' call of 16, so the rate never
    stopped a wait there and the batches stay merged (served as before: 382 vs 386 requests/s, same run); at
    2-8 clients, with :func:`lanes_for_load`, the engine served 24-46% more requests per second than the old
    rule's wait for 16.

    >>> # a lone request: nothing else in the system, the batch is full as it is
    >>> dispatch_wait(now=1.0, queued=1, full=1, window_start=1.0, newest=1.0, rate_per_s=200.0, call_s=0.004,
    ...               fill_fraction=1.0, max_wait_s=0.02, quiet_s=0.003)
    0.0
    >>> # 16 wanted, 200 texts/s: 15 more in 75 ms, many calls of 50 ms: go now
    >>> dispatch_wait(1.0, 1, 16, 1.0, 1.0, 200.0, 0.05, 1.0, 0.02, 0.003)
    0.0
    >>> # 550 texts/s bring them in 27 ms, within a 50 ms call: wait (here up to --max-wait-ms)
    >>> round(dispatch_wait(1.0, 1, 16, 1.0, 1.0, 550.0, 0.05, 1.0, 0.02, 0.003), 6)
    0.02
    """
    if queued >= full:
        return 0.0
    if rate_per_s <= 0.0 or (full - queued) / rate_per_s > fill_fraction * call_s:
        return 0.0
    return wait_for_batch(now, queued, full, window_start, newest, max_wait_s, quiet_s)


def form_embedding_batches(items: Sequence[EmbedItem], max_batch_size: int, max_batch_tokens: int,
                           call_overhead_tokens: int = 48) -> list[list[EmbedItem]]:
    """Split queued items into batches: at most ``max_batch_size`` items and ``max_batch_tokens`` padded
    tokens (batch size x longest item) each, items of similar length together.

    Design note. A model call costs about ``call_overhead_tokens + padded tokens`` (measured for minilm on a
    2-vCPU CPU: ~8 ms per call plus ~0.16 ms per padded token offline, i.e. ~50 tokens; under serving load 100
    worked better, 48 made calls too small: the engine's default is 100). Sorting by
    length and cutting where that cost is least is what offline ``embed`` gets from sorting all its texts: 32
    random STS-B sentences in one call pad to the longest (~2x their tokens); cut by length into two or three
    calls they ran 20-30% faster. The cuts come from a dynamic programme over the sorted lengths (exact for
    this cost; O(items x max_batch_size)). Every item lands in exactly one batch (an item longer than the token
    budget gets a batch of its own: the budget bounds padding, it never starves a request). The batch holding
    the oldest item comes first so that waiting is bounded.

    >>> b = form_embedding_batches([EmbedItem([1] * n) for n in (3, 30, 4, 31)], 4, 64)
    >>> [[len(i.token_ids) for i in x] for x in b]
    [[3, 4], [30, 31]]
    """
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: (len(items[i].token_ids), i))
    lens = [len(items[i].token_ids) for i in order]
    m = len(order)
    best = [0.0] + [math.inf] * m  # best[j]: least cost of the first j sorted items
    cut = [0] * (m + 1)  # cut[j]: where the last batch of that best split starts
    for j in range(1, m + 1):
        longest = lens[j - 1]  # sorted: the batch's longest item is its last
        for i in range(j - 1, max(-1, j - 1 - max_batch_size), -1):
            n = j - i
            if n > 1 and n * longest > max_batch_tokens:
                break
            c = best[i] + call_overhead_tokens + n * longest
            if c < best[j]:
                best[j], cut[j] = c, i
    batches: list[list[int]] = []
    j = m
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    batches.reverse()
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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    # log-probabilities: of each sampled token with its ``logprobs`` most likely alternatives (None: none),
    # and of the prompt's tokens with ``prompt_logprobs`` alternatives each (None: the prompt is not scored)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # structured output: a compiled grammar (``models/grammar.py``: ``matcher()`` per sequence, ``decode``);
    # None is free text. Its mask applies per row, so constrained and free rows share a batch.
    grammar: Any = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Sampler:
    """Picks the next token from one row of logits with the request's own RNG (so ``seed`` is per request).

    OpenAI's adjustments come first, greedy or not: ``logit_bias``, then the presence and frequency penalties
    over the tokens this sampler has picked so far (the generated ones, not the prompt).

    >>> Sampler(SamplingParams(temperature=0)).sample(np.array([0.1, 2.0, 0.3]))
    1
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        # A negative seed is a valid 64-bit integer to the client; numpy takes unsigned ones only.
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self.counts: dict[int, int] = {}
        self._adjust = bool(params.logit_bias or params.presence_penalty or params.frequency_penalty)
        self.matcher = None if params.grammar is None else params.grammar.matcher()

    def sample(self, logits: np.ndarray) -> int:
        logits = self._adjusted(np.asarray(logits, dtype=np.float64))
        if self.matcher is None:
            tok = self._pick(logits)
        else:  # pick among the allowed tokens only: the same distribution, at the cost of the few allowed
            allowed = self._allowed(len(logits))
            tok = int(allowed[self._pick(logits[allowed])])
            self.matcher.advance(tok)
        self.counts[tok] = self.counts.get(tok, 0) + 1
        return tok

    def _allowed(self, width: int) -> np.ndarray:
        # Applied after the request's own adjustments, so no bias can lift a token the grammar forbids. EOS is
        # allowed only once the grammar accepts; logit columns past the grammar's vocabulary never are.
        allowed = np.flatnonzero(self.matcher.allowed()[:width])
        if not len(allowed):
            raise GrammarDeadEnd("the grammar allows no token of this model's vocabulary")
        return allowed

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        if not self._adjust:
            return logits
        logits = logits.copy()
        for tok, bias in p.logit_bias.items():
            if tok < len(logits):  # ids are checked against the vocabulary upstream; a wider tokenizer isn't
                logits[tok] += bias
        if self.counts and (p.presence_penalty or p.frequency_penalty):
            toks = np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))
            n = np.fromiter(self.counts.values(), dtype=np.float64, count=len(self.counts))
            logits[toks] -= n * p.frequency_penalty + p.presence_penalty
        return logits

    def _pick(self, logits: np.ndarray) -> int:
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        # Shift before dividing: the differences are <= 0, so a tiny temperature (5e-324) sends them to -inf
        # and exp to 0, and the best token keeps probability 1, where dividing first overflowed to inf - inf.
        with np.errstate(over="ignore"):
            z = (logits - logits.max()) / p.temperature
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
    # with "error": the request's own doing, not the server's (its grammar reached a dead end on this model)
    request_error: bool = False
    logprobs: list[TokenLogprob] | None = None  # one per token of ``tokens``, when the request asked
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on a sequence's first event, when asked
    index: int = 0  # which of a request's ``n`` sequences (set by whoever submitted it)


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
    group: object | None = None  # the ``n`` sequences of one request share it (and the prefill of their prompt)
    _prompt_lp: list[TokenLogprob | None] | None = None  # scored at prefill, sent with the first event
    _sampler: Sampler | None = None
    _tracker: TextTracker | None = None
    _next: int | None = None  # sampled but not yet fed to the model
    _fed: int = 0  # chunked prefill: prompt tokens fed so far
    _copies: list[GenSequence] = field(default_factory=list)  # chunked prefill: its group's copies, forked at the end
    _part_s: float = 0.0  # chunked prefill: engine time of the parts so far

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
    allows, and prefill them together — that gives their first token; (4) with ``prefill_chunk``, a longer
    prompt is not prefilled whole in (3) but fed that many tokens a step, and joins with its last part: a long
    prompt delays the running rows by one part a step, not by its whole prefill. Sequences are retired as soon
    as they hit EOS, a stop string, ``max_tokens`` or the context limit. Newcomers join between decode steps
    and finished sequences leave at once, without waiting for their neighbours. Engine time of each model
    call is split across its rows by tokens processed (prompt tokens for a prefill, one per decode row),
    which is what a request's cost is computed from. A request whose own processing fails (an exception in
    its callback or sampler) is finished with an error without touching its neighbours; so is one that makes
    the model fail: a failed prefill or decode call is retried row by row (``_prefill_isolating``), and
    only the rows that fail alone fail.

    Only ``submit`` and ``cancel`` may be called from other threads (they touch a deque and a flag).
    """

    def __init__(self, runner: Runner, *, max_batch_size: int = 16, max_batch_tokens: int = 8192,
                 eos_token_id: int | None = None, max_seq_len: int = 1024, prefill_chunk: int = 0,
                 clock: Callable[[], float] = time.perf_counter,
                 on_step: Callable[[str, float, int], None] | None = None):
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        # chunked prefill: a prompt longer than this is fed this many tokens a step (0: whole prompts)
        self.prefill_chunk = prefill_chunk if callable(getattr(runner, "prefill_part", None)) else 0
        self.prefilling: deque[GenSequence] = deque()  # admitted, prompt partly fed (FIFO: the oldest is fed)
        self.eos_token_id = eos_token_id
        self.max_seq_len = max_seq_len
        self.clock = clock
        self.on_step = on_step  # (kind "prefill"|"decode", busy seconds, rows): metrics hook
        self.inbox: deque[GenSequence] = deque()  # submit() appends here (any thread); step() drains it
        self.waiting: deque[GenSequence] = deque()
        self.running: dict[int, GenSequence] = {}
        self._ids = itertools.count(1)
        self.steps = 0
        self._leaving: list[int] = []  # finished rows still in the runner (``_release_leaving``)
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

    def waiting_tokens(self) -> int:
        """The work queued but not admitted: prompt plus ``max_tokens`` of each (what admission bounds).

        Safe from any thread: ``list()`` copies a deque in one step under the GIL, where iterating it while
        the engine thread pops would raise."""
        return sum(len(s.prompt) + s.params.max_tokens for s in list(self.inbox) + list(self.waiting))

    # -- the engine thread --------------------------------------------------------------------------------
    def admitted(self) -> int:
        """Sequences in the engine: running, or admitted with their prompt partly fed."""
        return len(self.running) + sum(1 + len(s._copies) for s in self.prefilling)

    def has_work(self) -> bool:
        return bool(self.inbox or self.waiting or self.running or self.prefilling)

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
        for seq in [s for s in self.prefilling if s.cancelled]:
            self._drop_prefilling(seq, "cancelled")
        self._release_leaving()
        if self.running:
            self._decode(list(self.running.values()))
        self._release_leaving()
        new = self._admit()
        if new:
            self._prefill(new)
        if self.prefilling:
            self._prefill_next_part()
        self._release_leaving()

    def _admit(self) -> list[GenSequence]:
        new: list[GenSequence] = []
        tokens = sum(len(s.prompt) + len(s.output) for s in self.running.values())
        rows = self.admitted()  # the ones being prefilled hold their rows and tokens while their prompt is fed
        tokens += sum((1 + len(s._copies)) * (len(s.prompt) + s.params.max_tokens) for s in self.prefilling)
        while self.waiting and rows + len(new) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                self._finish(seq, "cancelled")
                continue
            need = len(seq.prompt) + seq.params.max_tokens
            if (rows or new) and tokens + need > self.max_batch_tokens:
                break  # wait for room; an oversized lone request still runs (validated upstream)
            self.waiting.popleft()
            tokens += need
            seq.started_at = self.clock()
            new.append(seq)
        return new

    def _prefill(self, new: list[GenSequence]) -> None:
        """Prefill the admitted sequences in one call. The ``n`` sequences of one request (one ``group``, one
        prompt) admitted together are prefilled once: the others copy its row (``Runner.fork``) and its
        logits, and share its engine time. Prompts are scored in the same call where asked (echo with
        logprobs); a sequence with ``max_tokens == 0`` ends after it (it only wanted its prompt scored).

        With ``prefill_chunk``, a prompt longer than it (not scored) is not prefilled here: it waits in
        ``prefilling`` and is fed one part a step (``_prefill_next_part``), so that the running rows' decode
        steps go on between its parts instead of waiting for the whole prompt."""
        t0 = self.clock()
        leaders, followers = self._group(new)
        if self.prefill_chunk:
            long = {s.id for s in leaders if len(s.prompt) > self.prefill_chunk and s.params.prompt_logprobs is None}
            for s in leaders:
                if s.id in long:
                    s._fed, s._copies = 0, followers.pop(s.id, [])
                    self.prefilling.append(s)
            leaders = [s for s in leaders if s.id not in long]
            if not leaders:
                return
        top = [s.params.prompt_logprobs for s in leaders]
        ok, logits, scores = self._prefill_isolating(leaders, [s.prompt for s in leaders],
                                                     top if any(k is not None for k in top) else None)
        dt = self.clock() - t0
        if self.on_step:
            self.on_step("prefill", dt, len(leaders) + sum(len(followers.get(s.id, ())) for s in leaders))
        self._start(leaders, ok, followers, logits, scores, dt)

    def _prefill_next_part(self) -> None:
        """Feed the oldest partly prefilled prompt its next ``prefill_chunk`` tokens; with its last part it
        joins the running rows (its copies forked from it) and samples its first token."""
        s = self.prefilling[0]
        part = s.prompt[s._fed:s._fed + self.prefill_chunk]
        last = s._fed + len(part) >= len(s.prompt)
        t0 = self.clock()
        try:
            logits = self.runner.prefill_part(s.id, part, last)
        except Exception as e:
            self._drop_prefilling(s, "error", error=f"{type(e).__name__}: {e}")
            return
        dt = self.clock() - t0
        s._fed += len(part)
        s._part_s += dt  # shared with its copies once they exist (``_start``)
        if self.on_step:
            self.on_step("prefill", dt, 1 + len(s._copies))
        if last:
            self.prefilling.popleft()
            self._start([s], [s], {s.id: s._copies} if s._copies else {}, logits, None, s._part_s)

    def _drop_prefilling(self, s: GenSequence, reason: str, error: str | None = None) -> None:
        self.prefilling.remove(s)
        self._release_quietly([s.id])  # what was fed so far
        for q in (s, *s._copies):
            self._finish(q, reason, error=error)

    def _start(self, leaders: list[GenSequence], ok: list[GenSequence], followers: dict[int, list[GenSequence]],
               logits: np.ndarray | None, scores: list[PromptScores | None] | None, dt: float) -> None:
        """Prefilled: the rows in ``ok`` (of ``leaders``) join the running ones, their copies forked from them,
        and sample their first token; ``dt`` (the prefill's engine time) is split across them by prompt."""
        rows, members, forked = [], [], []
        prefilled = {s.id for s in ok}
        for s in leaders:  # the copies of a prompt that failed fail with it
            if s.id not in prefilled:
                for f in followers.get(s.id, []):
                    self._finish(f, "error", error=s.finish_reason and f"the prefill failed: {s.finish_reason}")
        for k, s in enumerate(ok):
            fs = followers.get(s.id, [])
            if fs:
                try:
                    self.runner.fork(s.id, [f.id for f in fs])
                except Exception as e:
                    for f in fs:
                        self._finish(f, "error", error=f"{type(e).__name__}: {e}")
                    fs = []
            members.append([s, *fs])
            forked.extend(fs)
            score = scores[k] if scores is not None else None
            for q in (s, *fs):
                q._prompt_lp = prompt_logprobs(q.prompt, score) if score is not None else None
        for group, share in zip(members, split_cost(dt, [len(g[0].prompt) for g in members]), strict=True):
            for q in group:
                q.busy_prefill_s += share / len(group)
        # into ``running`` in the runner's row order (leaders, then the copies): decode needs no reordering
        for q in [*ok, *forked]:
            self.running[q.id] = q
        lead_rows = {s.id: logits[k] for k, s in enumerate(ok)}
        for group in members:
            rows.extend((q, lead_rows[group[0].id]) for q in group)
        # ordered as ``running``, so that ``_advance`` sees the rows in the order they were added
        order = {q.id: i for i, q in enumerate([*ok, *forked])}
        rows.sort(key=lambda r: order[r[0].id])
        scored_only = [q for q, _ in rows if q.params.max_tokens == 0]
        for q in scored_only:
            plp, q._prompt_lp = q._prompt_lp, None
            self._finish(q, "length", prompt_logprobs=plp)
        rows = [(q, row) for q, row in rows if q.params.max_tokens > 0]
        if rows:
            self._advance([q for q, _ in rows], np.stack([row for _, row in rows]))

    def _group(self, new: list[GenSequence]) -> tuple[list[GenSequence], dict[int, list[GenSequence]]]:
        """The sequences to prefill (one per request's group and prompt), and leader id -> the copies of it."""
        leaders: list[GenSequence] = []
        followers: dict[int, list[GenSequence]] = {}
        first: dict[int, GenSequence] = {}
        can_fork = callable(getattr(self.runner, "fork", None))
        for s in new:
            lead = first.get(id(s.group)) if s.group is not None and can_fork else None
            if lead is not None and lead.prompt == s.prompt and lead.params.prompt_logprobs == s.params.prompt_logprobs:
                followers.setdefault(lead.id, []).append(s)
                continue
            leaders.append(s)
            if s.group is not None:
                first.setdefault(id(s.group), s)
        return leaders, followers

    def _decode(self, seqs: list[GenSequence]) -> None:
        t0 = self.clock()
        try:
            logits = self.runner.decode([s.id for s in seqs], [s._next for s in seqs])
        except Exception:
            # The failed step may have appended to some rows' cache and not others: release every row and
            # prefill each again from prompt + output (whose last token is the one this step fed), which gives
            # the logits the step would have. Only the rows that fail even alone fail.
            self._release_quietly([s.id for s in seqs])
            seqs, logits, _ = self._prefill_isolating(seqs, [s.prompt + s.output for s in seqs])
        dt = self.clock() - t0
        for s in seqs:
            s.busy_decode_s += dt / max(len(seqs), 1)
        if not seqs:
            return
        self.batch_sizes.append(len(seqs))
        if self.on_step:
            self.on_step("decode", dt, len(seqs))
        self._advance(seqs, logits)

    def _prefill_isolating(self, seqs: list[GenSequence], prompts: list[list[int]],
                           top: list[int | None] | None = None
                           ) -> tuple[list[GenSequence], np.ndarray | None, list[PromptScores | None] | None]:
        """Prefill ``seqs`` in one call; if it fails, one by one, so that only a row failing alone fails.

        Returns the rows now in the runner, their logits, and their prompts' scores where ``top`` asks for
        them (``Runner.prefill_scoring``; None when ``top`` is None). A failed call may leave its rows
        half-added, so they are released before the retry. The good rows pay a second prefill on this path only.
        """
        try:
            ids = [s.id for s in seqs]
            if top is None:
                return seqs, self.runner.prefill(ids, prompts), None
            logits, scores = self.runner.prefill_scoring(ids, prompts, top)
            return seqs, logits, scores
        except Exception as e:
            self._release_quietly([s.id for s in seqs])
            if len(seqs) == 1:
                self._finish(seqs[0], "error", error=f"{type(e).__name__}: {e}")
                return [], None, None
        ok, rows, scores = [], [], []
        for k, (s, prompt) in enumerate(zip(seqs, prompts, strict=True)):
            got, logits, score = self._prefill_isolating([s], [prompt], None if top is None else [top[k]])
            if got:
                ok.append(s)
                rows.append(logits[0])
                scores.append(None if score is None else score[0])
        return ok, (np.stack(rows) if rows else None), (None if top is None else scores)

    def _release_quietly(self, ids: list[int]) -> None:
        try:
            self.runner.release(ids)
        except Exception:  # a runner that failed mid-call may not know some ids: nothing left to free
            pass

    def _advance(self, seqs: list[GenSequence], logits: np.ndarray) -> None:
        now = self.clock()
        for s, row in zip(seqs, logits, strict=True):
            try:
                tok = s._sampler.sample(row)
                # read off the row the token was sampled from: no second pass
                lp = None if s.params.logprobs is None else [token_logprob(row, tok, s.params.logprobs)]
                plp, s._prompt_lp = s._prompt_lp, None
                s.output.append(tok)
                s.first_token_at = s.first_token_at or now
                constrained = s._sampler.matcher is not None
                # a constrained row's EOS always ends it: the grammar allowed it only once complete
                is_eos = tok == self.eos_token_id and (constrained or not s.params.ignore_eos)
                text = "" if is_eos else s._tracker.add(tok)
                reason = None
                if is_eos or s._tracker.stopped or (constrained and s._sampler.matcher.done()):
                    reason = "stop"
                elif len(s.output) >= s.params.max_tokens or len(s.prompt) + len(s.output) >= self.max_seq_len:
                    reason = "length"
                if reason:
                    text += s._tracker.flush()
                    self._finish(s, reason, text=text, tokens=[tok], logprobs=lp, prompt_logprobs=plp)
                else:
                    s._next = tok
                    s.on_event(s, GenEvent(text=text, tokens=[tok], logprobs=lp, prompt_logprobs=plp))
            except Exception as e:  # a failing request never fails its neighbours
                self._finish(s, "error", error=f"{type(e).__name__}: {e}",
                             request_error=isinstance(e, GrammarDeadEnd))

    def _finish(self, seq: GenSequence, reason: str, text: str = "", tokens: list[int] | None = None,
                error: str | None = None, logprobs: list[TokenLogprob] | None = None,
                prompt_logprobs: list[TokenLogprob | None] | None = None, request_error: bool = False) -> None:
        if seq.finish_reason is not None:
            return
        seq.finish_reason = reason
        seq.finished_at = self.clock()
        if self.running.pop(seq.id, None) is not None:
            self._leaving.append(seq.id)  # released with the others of this step: see _release_leaving
        try:
            seq.on_event(seq, GenEvent(text=text, tokens=tokens or [], finish_reason=reason, error=error,
                                       request_error=request_error, logprobs=logprobs,
                                       prompt_logprobs=prompt_logprobs))
        except Exception:
            pass

    def fail_all(self, error: str) -> None:
        while self.inbox:
            self.waiting.append(self.inbox.popleft())
        while self.prefilling:
            self._drop_prefilling(self.prefilling[0], "error", error=error)
        for s in list(self.running.values()) + list(self.waiting):
            self._finish(s, "error", error=error)
        self.waiting.clear()
        self._release_leaving()

    def _release_leaving(self) -> None:
        """Release the rows that finished since the last runner call, in one call. A release rebuilds the
        runner's cache without the rows that left (a copy of every layer's keys and values); released one by
        one, a cohort of 16 rows finishing together paid 16 copies instead of one."""
        if self._leaving:
            ids, self._leaving = self._leaving, []
            self._release_quietly(ids)


# --------------------------------------------------------------------------------------------------------
# Utilization


class MachineShares:
    """Machine time of concurrent model calls. Each call holds a fraction of the machine (``weight``: 1 for
    every core, 1/2 for half of them); while calls of total weight W run, each accrues its weight / max(W, 1)
    of the elapsed time. Calls that fit the machine are charged what they hold (a call on half the cores is
    charged half, the idle half is nobody's), and calls that oversubscribe it split it, so the charges never add
    up to more than the elapsed time. (Embedding lanes are metered with it.) Not thread-safe: the caller holds a
    lock.

    >>> clock = iter([0.0, 1.0, 3.0, 4.0]).__next__
    >>> m = MachineShares(clock)
    >>> m.start("a", 0.5); m.start("b", 0.5)   # a alone on half the machine for 1 s, then beside b for 2 s
    >>> m.stop("a"), m.stop("b")               # a: 0.5 + 2 x 0.5; b: 2 x 0.5 + 0.5 alone
    (1.5, 1.5)
    >>> clock = iter([0.0, 1.0, 2.0, 3.0]).__next__
    >>> m = MachineShares(clock)
    >>> m.start("a", 1.0); m.start("b", 0.5)   # a on every core for 1 s, then b joins: 1.5 machines' worth
    >>> round(m.stop("a"), 4), round(m.stop("b"), 4)   # a: 1 + 1 x 2/3; b: 1 x 1/3 + 1 x 0.5
    (1.6667, 0.8333)
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.running: dict[object, list[float]] = {}  # key -> [weight, accrued seconds]
        self.last = 0.0

    def running_now(self) -> int:
        return len(self.running)

    def _advance(self) -> None:
        now = self.clock()
        if self.running:
            scale = (now - self.last) / max(1.0, sum(w for w, _ in self.running.values()))
            for entry in self.running.values():
                entry[1] += entry[0] * scale
        self.last = now

    def start(self, key: object, weight: float = 1.0) -> None:
        self._advance()
        self.running[key] = [weight, 0.0]

    def stop(self, key: object) -> float:
        self._advance()
        return self.running.pop(key)[1]


class BusyWindow:
    """Fraction of the last ``window_s`` seconds the engine spent computing (its utilization).

    The one object here shared across threads: the engine thread calls ``add`` while ``/metrics`` calls
    ``fraction`` on the event loop, and summing a deque another thread appends to raises "deque mutated during
    iteration" (which killed the embeddings engine thread), so both hold a lock.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.perf_counter):
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self.spans: deque[tuple[float, float]] = deque()  # (end time, busy seconds)
        self._lock = threading.Lock()

    def add(self, busy_s: float) -> None:
        with self._lock:
            self.spans.append((self.clock(), busy_s))

    def fraction(self) -> float:
        with self._lock:
            now = self.clock()
            while self.spans and self.spans[0][0] < now - self.window_s:
                self.spans.popleft()
            busy = sum(b for _, b in self.spans)
        span = min(self.window_s, max(now - self.started, 1e-9))
        return min(1.0, busy / span) if not math.isnan(span) else 0.0
