"""Engines: worker threads per served model (embeddings: one per lane; generation: one) run the model; the
asyncio side only submits and awaits.

The HTTP layer tokenizes and formats (on the event loop, or a worker thread for big requests); the engine
thread only pads, runs the model and samples, so neither waits on the other (PyTorch and ONNX Runtime
release the GIL while they compute).
Results cross back to the event loop with ``loop.call_soon_threadsafe`` into each request's own future or
queue (embeddings: one call per model call, settling all the requests it finished). Cancellation is a flag the engine checks between model calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..cost import usd_for_busy_seconds
from ..handoff import settle
from ..models.runner import pad_left_or_right
from .core import (
    ArrivalRate,
    BusyWindow,
    EmbedItem,
    EmbedQueue,
    GenerationScheduler,
    GenEvent,
    GenSequence,
    MachineShares,
    RecentPeak,
    SamplingParams,
    dispatch_wait,
    fill_target,
    form_embedding_batches,
    lanes_for_load,
    split_cost,
)
from .errors import EngineError, EngineFailed, Overloaded, Unavailable
from .metrics import ServerMetrics

log = logging.getLogger("leaninfer.serving")
CALIBRATION_TOKENS = 32  # tokens per text of the calls that measure a model call's fixed cost
DEFAULT_CALL_OVERHEAD_TOKENS = 100  # when it can't be measured (the fixed default before it was measured)
# A call also costs the lane work outside the timed one (padding, cost split, answers to the event loop), more
# under load: ORT INT8 measured 1-3 tokens and, cut there, served 389 requests/s (3 texts a call) against 403-412
# cut at 8 (wrk, c=32, 2-vCPU Zen 4).
MIN_CALL_OVERHEAD_TOKENS, MAX_CALL_OVERHEAD_TOKENS = 8, 1000


class BatchingConfig(BaseModel):
    """How requests are batched (CLI flags of ``leaninfer serve`` carry the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(32, ge=1, description="most sequences in one model call (embeddings) or one "
                                                      "running batch (generation)")
    max_wait_ms: float = Field(20.0, ge=0, description="embeddings: the longest a free engine waits for a batch to "
                                                        "fill up; it waits only when the arrivals it observes "
                                                        "predict the batch full within a model call's time (a "
                                                        "lone request goes at once), and stops sooner once "
                                                        "arrivals pause")
    max_batch_tokens: int = Field(16384, ge=1, description="most padded tokens in one embeddings call; "
                                                          "generation: prompt plus max_tokens of a running batch")
    call_overhead_tokens: int | None = Field(None, ge=0, description="embeddings: the fixed cost of one model "
                                                                   "call, in padded tokens; a window of queued "
                                                                   "texts is cut by length into the calls of least "
                                                                   "total cost (core.py). Default: measured on "
                                                                   "the served model at start")
    prefill_chunk_tokens: int | None = Field(None, ge=0, description="generation: a prompt longer than this is "
                                              "prefilled this many tokens a step, between the running rows' decode "
                                              "steps, so that it delays them by one part, not by its whole "
                                              "prefill (0: whole prompts). Default: the model's runner's (2048 on "
                                              "CUDA, 256 on CPUs)")
    lanes: int = Field(2, ge=1, description="embeddings: model calls that may run at once once the load fills "
                                            "batches, each on 1/lanes of the CPU threads (below that, one call "
                                            "at a time on all of them; PyTorch or ONNX Runtime on the CPU; an "
                                            "ONNX lane loads its own session; others run one call at a time); "
                                            "each call is metered at its share of the machine")
    max_queue: int = Field(256, ge=1, description="requests waiting per model beyond this get a 503 with "
                                                  "Retry-After")
    max_queue_tokens: int = Field(65536, ge=1, description="tokens waiting per model (embeddings: inputs' "
                                                         "tokens; generation: prompt plus max_tokens) beyond "
                                                         "this get a 503 with Retry-After")


@dataclass
class Meter:
    """What one request cost: the leaninfer extras of a response's ``usage``."""

    queue_s: float = 0.0
    ttft_s: float | None = None
    duration_s: float = 0.0
    busy_prefill_s: float = 0.0
    busy_decode_s: float = 0.0
    usd_per_hour: float = 0.0

    def to_dict(self) -> dict:
        cost_in = usd_for_busy_seconds(self.usd_per_hour, self.busy_prefill_s)
        cost_out = usd_for_busy_seconds(self.usd_per_hour, self.busy_decode_s)
        d = {"queue_time_s": round(self.queue_s, 6), "duration_s": round(self.duration_s, 6),
             "engine_busy_s": round(self.busy_prefill_s + self.busy_decode_s, 6),
             "cost_usd": cost_in + cost_out, "cost_usd_input": cost_in, "cost_usd_output": cost_out}
        if self.ttft_s is not None:
            d["time_to_first_token_s"] = round(self.ttft_s, 6)
        return d


QUIET_MS = 3.0  # embeddings: a pause in arrivals this long ends the wait for a fuller batch (core.wait_for_batch)
# embeddings: a free lane waits for a fuller batch only when the arrival rate predicts it full within this fraction
# of a model call's time (core.dispatch_wait); the rate is averaged over ARRIVAL_TAU_S, the batch worth waiting for
# and the lanes in use follow the most texts in the system at once over the last PEAK_MEMORY_S (core.fill_target,
# core.lanes_for_load), and a call's cost per padded token is averaged over the last few calls (COST_WEIGHT: the
# weight of the latest)
FILL_FRACTION = 1.0
ARRIVAL_TAU_S = 0.1
PEAK_MEMORY_S = 1.0
COST_WEIGHT = 0.25


def queue_full(name: str, depth: int) -> Overloaded:
    return Overloaded(f"model {name!r} has {depth} requests waiting (the --max-queue limit): retry later")


def queue_tokens_full(name: str, tokens: int, limit: int) -> Overloaded:
    return Overloaded(f"model {name!r} has {tokens} tokens waiting (the --max-queue-tokens limit is {limit}): "
                      "retry later")


class _EngineBase:
    def __init__(self, model, name: str, config: BatchingConfig, metrics: ServerMetrics, usd_per_hour: float):
        self.model, self.name, self.config, self.metrics = model, name, config, metrics
        self.usd_per_hour = usd_per_hour
        self.busy = BusyWindow()
        self._cv = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._threads: list[threading.Thread] = []
        self.lanes = 1  # engine threads, each running ``_run(lane)``
        self.dead: str | None = None  # why an engine thread died; set once, under ``_cv``

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._main, args=(lane,), daemon=True,
                                          name=f"leaninfer-engine-{self.name}" + (f"-{lane}" if lane else ""))
                         for lane in range(self.lanes)]
        for t in self._threads:
            t.start()
        self.metrics.engine_up.labels(self.name).set(1)

    def _main(self, lane: int) -> None:
        # An exception escaping the loop used to end the thread silently: its requests waited for the 504 and
        # /health said ok. Now the engine is marked dead (/health turns 503), and waiting and future requests
        # fail at once.
        try:
            self._run(lane)
        except BaseException as e:
            log.error("the engine of model %r died", self.name, exc_info=e)
            error = EngineFailed(f"the engine of model {self.name!r} died: {type(e).__name__}: {e}",
                                 code="engine_dead")
            with self._cv:
                self.dead = f"{type(e).__name__}: {e}"
                # before the waiting requests fail: whoever hears of the death finds the gauge at 0 already
                self.metrics.engine_up.labels(self.name).set(0)
                self._stopping = True  # its other lanes stop too
                self._fail_waiting(error)
                self._cv.notify_all()

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight work finish (up to the timeout), then end the thread."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def _record_busy(self, seconds: float, wall: float | None = None) -> None:
        """A model call: the machine time it held (``seconds``) and its wall time (the same for one lane)."""
        self.busy.add(seconds)
        self.metrics.busy_seconds.labels(self.name).inc(seconds)
        self.metrics.call_seconds.labels(self.name).inc(seconds if wall is None else wall)
        self.metrics.utilization.labels(self.name).set(self.busy.fraction())

    def stop_accepting(self) -> None:
        """New requests get a 503 from now on (a drain has begun); work already taken goes on."""
        self._accepting = False

    def _check_accepting(self) -> None:
        if self.dead is not None:
            raise Unavailable(f"the engine of model {self.name!r} died: {self.dead}", code="engine_dead")
        if not self._accepting:
            raise Unavailable("the server is shutting down", code="draining")


# --------------------------------------------------------------------------------------------------------


@dataclass
class _EmbedJob:
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued_at: float
    started_at: float | None = None
    vectors: list = field(default_factory=list)
    remaining: int = 0
    busy_s: float = 0.0
    cancelled: bool = False
    in_system: bool = True  # counted in the engine's texts in the system (EmbeddingEngine._leave)


class EmbedHandle:
    """One embeddings request in an engine: ``await handle.result()`` gives ``(vectors, meter)``; cancelling
    that await takes the request out of the queue."""

    def __init__(self, engine: EmbeddingEngine, job: _EmbedJob):
        self.engine, self.job = engine, job

    async def result(self) -> tuple[np.ndarray, Meter]:
        job = self.job
        try:
            await job.future
        except asyncio.CancelledError:
            self.engine._withdraw(job)
            raise
        meter = Meter(queue_s=job.started_at - job.enqueued_at, duration_s=time.perf_counter() - job.enqueued_at,
                      busy_prefill_s=job.busy_s, usd_per_hour=self.engine.usd_per_hour)
        return np.stack(job.vectors), meter


class EmbeddingEngine(_EngineBase):
    """Dynamic batching for embeddings: dispatch at once, or wait (up to ``max_wait_ms``) for a batch that the
    arrivals say will fill soon (``core.dispatch_wait``); group by length.

    Design note: lanes. ``lanes`` engine threads share the queue, each running its own model calls
    (``Model.share_cores``). Once the load fills batches (``core.lanes_for_load``: a full batch of texts in the
    system at once within the last ``PEAK_MEMORY_S``) each call runs on 1/lanes of the cores: on a 2-vCPU CPU,
    minilm offline ran 230-247 texts/s as one call at a time on 2 threads and 289-302 as two calls at once on 1
    thread each (no barrier between the two threads of every op), and in the server the event loop's work then
    slows one lane, not every op of every call. Below that load lane 0 serves alone with every core (the other
    lanes take no work), batching what arrives while it runs: at 2-8 clients two lanes on half the cores each
    served 16-36% fewer requests than one on every core (measured in ``core.lanes_for_load``), and a lone
    request keeps its latency. Each call is metered at the share of the machine it holds
    (``core.MachineShares``: a call on half the cores is charged half its time; calls that oversubscribe the
    cores split them), so idle cores stay out of the meter and the charges never exceed the elapsed time. A
    backend that can't share cores (OpenVINO, a GPU) gets one lane.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.lanes = max(1, min(self.config.lanes, self.model.max_lanes()))
        self.queue = EmbedQueue()  # round-robin between requests, counted in tokens (core.py)
        tok = self.model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.left = getattr(tok, "padding_side", "right") == "left"
        # per lane: taken off the queue, not yet answered (failed if a thread dies), and their requests
        self._taken: dict[int, list[EmbedItem]] = {}
        self._in_flight: dict[int, int] = {}
        self._shares = MachineShares()  # the model calls running now, and the machine time each holds
        self._busy: set[int] = set()  # lanes running a window
        self._arrivals = ArrivalRate(ARRIVAL_TAU_S)  # texts submitted per second, lately (dispatch_wait)
        self._in_system = 0  # texts submitted and not yet answered
        self._peak = RecentPeak(PEAK_MEMORY_S)  # ... the most of them at once, lately (fill_target)
        self._width = 0.0  # padded tokens per text of the recent calls (their longest text)
        self._s_per_cost_token = 0.0  # a call's wall time per (call overhead + padded tokens): none yet, no wait
        given = self.config.call_overhead_tokens  # measured in start() unless given
        self.call_overhead_tokens = DEFAULT_CALL_OVERHEAD_TOKENS if given is None else given

    def start(self) -> None:
        if self.config.call_overhead_tokens is None:
            # In a thread of its own that then ends: the calls of the calling thread (the server's event loop)
            # on every core left that thread's OpenMP team behind, and the lane's calls beside it ran 2.6x
            # slower for good (minilm, one lane: 11.1 ms per lone request's call instead of 4.3; 2-vCPU Xeon).
            got: list[int] = []
            t = threading.Thread(target=lambda: got.append(self._measure_call_overhead()),
                                 name=f"leaninfer-calibrate-{self.name}")
            t.start()
            t.join()
            self.call_overhead_tokens = got[0] if got else DEFAULT_CALL_OVERHEAD_TOKENS
        super().start()

    def _measure_call_overhead(self) -> int:
        """The fixed cost of one model call of this model, in padded tokens: what cutting a window of queued
        texts into calls trades against padding (``form_embedding_batches``).

        Design note. It differs by model far more than one default can cover: on a 2-vCPU Zen 4, minilm's traced
        FP32 encoder measures 23-50 tokens per call, its ONNX Runtime INT8 graph 1-3, and eager PyTorch used to
        cost ~50-100. With the old fixed 100, ORT INT8 calls were never cut and padded to their longest text (9%
        more tokens than the texts held); cut at 8 they padded 1.6% and served 13-17% more requests/s (wrk,
        c=32). So the engine times calls of 1 and 4 texts of CALIBRATION_TOKENS tokens, on a
        lane's share of the cores (the share it has under load, where the cut matters), the median of 3 after
        a warm-up each: overhead = t1 - tokens x (t4 - t1) / (3 x tokens). A model that fails or times
        nonsense gets DEFAULT_CALL_OVERHEAD_TOKENS, said in the log; the figure is kept within
        [MIN_CALL_OVERHEAD_TOKENS, MAX_CALL_OVERHEAD_TOKENS]."""
        tok = self.model.tokenizer
        n = max(1, min(CALIBRATION_TOKENS, self.model.max_seq_length))
        text = tok("the cost of one model call, measured once when the server starts", add_special_tokens=False)
        ids = (list(text["input_ids"]) * n)[:n]

        def timed(rows: int) -> float:
            enc = pad_left_or_right([ids] * rows, self.pad_id, left=self.left)
            self.model.embed_batch(enc)
            samples = []
            for _ in range(3):
                t0 = time.perf_counter()
                self.model.embed_batch(enc)
                samples.append(time.perf_counter() - t0)
            return sorted(samples)[1]

        try:
            if self.lanes > 1:
                self.model.share_cores(self.lanes)
            t1, t4 = timed(1), timed(4)
            per_token = (t4 - t1) / (3 * n)
            if per_token <= 0:
                raise ValueError(f"4 texts took {t4 * 1e3:.2f} ms, 1 text {t1 * 1e3:.2f} ms")
            tokens = int(round(min(MAX_CALL_OVERHEAD_TOKENS, max(MIN_CALL_OVERHEAD_TOKENS, t1 / per_token - n))))
            log.info("model %r: one embeddings call costs as much as %d padded tokens (measured at start: "
                     "%.2f ms for 1 text, %.2f ms for 4, of %d tokens)", self.name, tokens, t1 * 1e3, t4 * 1e3, n)
            return tokens
        except Exception as e:
            log.warning("model %r: the cost of a model call could not be measured (%s: %s); using %d tokens",
                        self.name, type(e).__name__, e, DEFAULT_CALL_OVERHEAD_TOKENS)
            return DEFAULT_CALL_OVERHEAD_TOKENS
        finally:
            if self.lanes > 1:
                self.model.share_cores(1)

    def pending(self) -> int:
        with self._cv:
            return len(self.queue) + sum(self._in_flight.values())

    async def embed(self, token_lists: list[list[int]]) -> tuple[np.ndarray, Meter]:
        """The vectors of ``token_lists`` and what they cost: :meth:`submit`, then its result."""
        return await self.submit(token_lists).result()

    def submit(self, token_lists: list[list[int]]) -> EmbedHandle:
        """Queue ``token_lists`` now (raising :class:`Overloaded` or :class:`Unavailable` when the engine can't
        take them); the handle's ``result()`` waits for the vectors."""
        self._check_accepting()
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        job = _EmbedJob(n=len(token_lists), loop=loop, future=loop.create_future(), enqueued_at=now,
                        vectors=[None] * len(token_lists), remaining=len(token_lists))
        with self._cv:
            self._check_accepting()  # again under the lock: the thread may have died since
            waiting = len(self.queue)
            if waiting >= self.config.max_queue:
                raise queue_full(self.name, waiting)
            tokens = sum(len(t) for t in token_lists)
            # Bounded in work, not requests; a request over the bound alone is still taken when nothing waits
            # (else it could never run), and --max-request-chars bounds what one request can hold.
            if self.queue.items and self.queue.tokens + tokens > self.config.max_queue_tokens:
                raise queue_tokens_full(self.name, self.queue.tokens, self.config.max_queue_tokens)
            self.queue.add([EmbedItem(t, request=job, index=k, enqueued_at=now) for k, t in enumerate(token_lists)])
            self._arrivals.add(now, len(token_lists))
            self._in_system += len(token_lists)
            self._peak.add(now, self._in_system)
            self.metrics.queue_depth.labels(self.name).set(waiting + 1)
            self._cv.notify_all()  # a lane may wait for another to be busy (_take)
        return EmbedHandle(self, job)

    def _withdraw(self, job: _EmbedJob) -> None:
        job.cancelled = True  # its items are skipped if already taken
        with self._cv:
            self.queue.discard(job)  # and leave the queue now, so their tokens stop counting
            self._leave(job)

    def _leave(self, job: _EmbedJob) -> None:
        """``job`` is answered, failed or withdrawn: its texts leave the system (once). Under ``_cv``."""
        if job.in_system:
            job.in_system = False
            self._in_system -= job.n

    def _take(self, lane: int, free_since: float) -> list[EmbedItem]:
        """Wait for a batch to fill when the arrivals predict it full soon (see
        :func:`~leaninfer.engines.core.dispatch_wait`), then take the queue. ``free_since``: when this lane
        finished its last batch."""
        cfg = self.config
        max_wait_s = cfg.max_wait_ms / 1000
        quiet_s = min(QUIET_MS / 1000, max_wait_s)
        active = 1
        with self._cv:
            while not self._stopping:
                now = time.perf_counter()
                peak = self._peak.peak(now)
                active = lanes_for_load(peak, self.lanes, cfg.max_batch_size)  # 1 until the load fills batches
                # A lane takes work only while every lane below it is busy and the load calls for it: at low
                # load lane 0 serves alone, with every core and a warm thread team, instead of the lanes taking
                # turns.
                if self.queue.items and lane < active and all(k in self._busy for k in range(lane)):
                    start = max(free_since, self.queue.oldest())
                    # A closed loop of clients splits into one cohort per lane (each lane's clients come back
                    # while the other lanes run), so a lane waits for its share of the texts lately in the
                    # system, at most of a full batch: not for a batch that can't fill.
                    full = fill_target(peak, active, cfg.max_batch_size)
                    call_s = self._s_per_cost_token * (self.call_overhead_tokens + full * self._width)
                    left = dispatch_wait(now, self.queue.items, full, start, self.queue.newest,
                                         self._arrivals.rate(now), call_s, FILL_FRACTION, max_wait_s, quiet_s)
                    if left <= 0:
                        break
                    self._cv.wait(timeout=left)
                else:
                    self._cv.wait(timeout=0.5)
            # A window wide enough to group lengths, small enough that a request arriving now waits for at
            # most one window: the queue deals it round-robin between requests, so a huge one can't hog it.
            # With several lanes at work, one batch each, so that the next free lane finds work.
            taken = self.queue.take(cfg.max_batch_size * (4 if active == 1 else 1))
            self._taken[lane] = taken
            self._in_flight[lane] = len({id(i.request) for i in taken})
            if taken:
                self._busy.add(lane)
                self._cv.notify_all()  # the next lane may take what arrives now
            self.metrics.queue_depth.labels(self.name).set(len(self.queue))
            return taken

    def _run(self, lane: int) -> None:
        free_since = 0.0
        while not self._stopping:
            taken = [i for i in self._take(lane, free_since) if not i.request.cancelled]
            batches = form_embedding_batches(taken, self.config.max_batch_size, self.config.max_batch_tokens,
                                             self.call_overhead_tokens)
            done: list = []
            for k, batch in enumerate(batches):
                done = self._run_batch([i for i in batch if not i.request.cancelled])
                if k < len(batches) - 1:
                    with self._cv:
                        for job, _ in done:
                            self._leave(job)
                    _settle_all(done)
            # The lane is free before its last answers go out: a client that sends its next request as soon as
            # it is answered then finds lane 0 free (its thread team warm), not busy and lane 1 taking it.
            with self._cv:
                for job, _ in done:
                    self._leave(job)
                self._in_flight[lane] = 0
                self._taken[lane] = []
                self._busy.discard(lane)
                free_since = time.perf_counter()
            _settle_all(done)

    def _fail_waiting(self, error: EngineError) -> None:
        items = self.queue.take_all() + [i for taken in self._taken.values() for i in taken]
        self._taken, self._in_flight = {}, {}
        self._in_system = 0
        for job in {id(i.request): i.request for i in items}.values():
            try:
                job.loop.call_soon_threadsafe(_set_exc, job.future, error)
            except RuntimeError:  # its event loop is closed: nobody is waiting
                pass

    def _run_batch(self, batch: list[EmbedItem]) -> list[tuple[_EmbedJob, Exception | None]]:
        """Run one model call; return the jobs it finished (with the error that failed them, if any)."""
        if not batch:
            return []
        key = object()
        with self._cv:
            now = time.perf_counter()
            # Lanes paired up by the load each keep their share, even while the other is between windows (a call
            # on every core would collide with the other's next one); a call beside another, when the load has
            # just changed, takes its share too. Otherwise a call has every core.
            paired = lanes_for_load(self._peak.peak(now), self.lanes, self.config.max_batch_size) > 1
            share = self.lanes if paired or self._shares.running_now() > 0 else 1
            self._shares.start(key, 1.0 / share)
        t0 = time.perf_counter()
        for i in batch:
            i.request.started_at = i.request.started_at or t0
        try:
            if self.lanes > 1:  # alone, a lane gets every core (latency at low load); else its share
                self.model.share_cores(share)
            enc = pad_left_or_right([i.token_ids for i in batch], self.pad_id, left=self.left)
            vecs = self.model.embed_batch(enc)
            error = None
        except Exception as e:  # fail this batch's requests, keep serving
            vecs, error = None, EngineFailed(f"embedding failed: {type(e).__name__}: {e}")
        finally:
            with self._cv:
                dt = self._shares.stop(key)  # the machine time this call held
                wall = time.perf_counter() - t0
                width = max(len(i.token_ids) for i in batch)
                self._width += COST_WEIGHT * (width - self._width)
                cost_tokens = max(1, self.call_overhead_tokens + len(batch) * width)
                self._s_per_cost_token += COST_WEIGHT * (wall / cost_tokens - self._s_per_cost_token)
        self._record_busy(dt, wall=wall)
        self.metrics.batch_size.labels(self.name, "embedding").observe(len(batch))
        shares = split_cost(dt, [len(i.token_ids) for i in batch])
        done: list[tuple[_EmbedJob, Exception | None]] = []
        for k, (item, share) in enumerate(zip(batch, shares, strict=True)):
            job: _EmbedJob = item.request
            job.busy_s += share
            if error is not None:
                done.append((job, error))
                continue
            job.vectors[item.index] = vecs[k]
            job.remaining -= 1
            if job.remaining == 0:
                done.append((job, None))
        return done


def _settle_all(done: list[tuple[_EmbedJob, Exception | None]]) -> None:
    """Hand finished jobs to their event loops (:func:`~leaninfer.handoff.settle`: one wake-up per loop)."""
    settle((job.future, exc) for job, exc in done)


def _set_exc(fut: asyncio.Future, exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


# --------------------------------------------------------------------------------------------------------


class GenerationHandle:
    """One generation request as seen from the event loop: an async iterator of :class:`GenEvent` over its
    ``n`` sequences (``ev.index`` says whose), ending once every one of them has finished."""

    def __init__(self, engine: GenerationEngine, seqs: list[GenSequence], queue: asyncio.Queue):
        self.engine, self.seqs, self.queue = engine, seqs, queue
        self._open = len(seqs)

    @property
    def seq(self) -> GenSequence:
        """The first sequence (the only one when ``n == 1``)."""
        return self.seqs[0]

    @property
    def output_tokens(self) -> int:
        return sum(len(s.output) for s in self.seqs)

    def cancel(self) -> None:
        live = [s for s in self.seqs if s.finish_reason is None]
        for s in live:
            self.engine.scheduler.cancel(s)
        if live:
            self.engine.wake()

    def __aiter__(self):
        return self

    async def __anext__(self) -> GenEvent:
        if self.queue is None:
            raise StopAsyncIteration
        ev = await self.queue.get()
        if ev.finish_reason is not None:
            self._open -= 1
            if self._open == 0:
                self.queue = None
        return ev

    def meter(self) -> Meter:
        """The request's cost: the engine time of all its sequences; its waits and latencies from the first."""
        seqs = self.seqs
        s = seqs[0]
        ends = [q.finished_at for q in seqs]
        end = max(ends) if all(ends) else time.perf_counter()
        firsts = [q.first_token_at for q in seqs if q.first_token_at]
        return Meter(queue_s=s.queue_s, duration_s=end - s.enqueued_at,
                     ttft_s=(min(firsts) - s.enqueued_at) if firsts else None,
                     busy_prefill_s=sum(q.busy_prefill_s for q in seqs),
                     busy_decode_s=sum(q.busy_decode_s for q in seqs), usd_per_hour=self.usd_per_hour)

    @property
    def usd_per_hour(self) -> float:
        return self.engine.usd_per_hour


class GenerationEngine(_EngineBase):
    """Continuous batching for generation: a :class:`GenerationScheduler` stepped by the engine thread."""

    def __init__(self, model, name, config, metrics, usd_per_hour, runner=None):
        super().__init__(model, name, config, metrics, usd_per_hour)
        runner = runner or model.runner(max_rows=config.max_batch_size)
        chunk = config.prefill_chunk_tokens
        self.scheduler = GenerationScheduler(
            runner, max_batch_size=config.max_batch_size, max_batch_tokens=config.max_batch_tokens,
            eos_token_id=model.eos_token_id, max_seq_len=model.max_seq_length,
            prefill_chunk=getattr(runner, "prefill_chunk", 0) if chunk is None else chunk,
            clock=time.perf_counter, on_step=self._on_step)
        tok = model.tokenizer
        self.decode_text = lambda ids: tok.decode(ids, skip_special_tokens=True)

    def start(self) -> None:
        # before the engine thread and before /health is green: a slot pool allocates, a CUDA one captures its
        # decode graphs (models/slot_runner.py), so that serving captures and compiles nothing
        warmup = getattr(self.scheduler.runner, "warmup", None)
        if warmup is not None:
            t0 = time.perf_counter()
            info = warmup()
            log.info("model %r: decode warm-up in %.2f s: %s", self.name, time.perf_counter() - t0, info)
            self.metrics.graph_captures.labels(self.name).set(self.scheduler.runner.captures)
        super().start()

    def pending(self) -> int:
        s = self.scheduler
        return len(s.inbox) + len(s.waiting) + s.admitted()

    def waiting(self) -> int:
        return len(self.scheduler.inbox) + len(self.scheduler.waiting)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def submit(self, prompt: list[int], params: SamplingParams, n: int = 1) -> GenerationHandle:
        """Queue ``n`` continuations of ``prompt`` (one request's ``n``): they share its prefill where they are
        admitted together, and sequence ``i`` samples with ``seed + i`` (each its own stream)."""
        self._check_accepting()
        waiting = self.waiting()
        if waiting >= self.config.max_queue:
            raise queue_full(self.name, waiting)
        queued = self.scheduler.waiting_tokens() if waiting else 0
        if waiting and queued + len(prompt) + n * params.max_tokens > self.config.max_queue_tokens:
            raise queue_tokens_full(self.name, queued, self.config.max_queue_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        itl = self.metrics.itl.labels(self.name)
        index: dict[int, int] = {}  # id(sequence) -> its place among the n
        last_token_at: dict[int, float] = {}  # ... -> when its last token came out

        def on_event(seq: GenSequence, ev: GenEvent) -> None:  # engine thread
            # One ITL observation per inter-token gap of each sequence, taken as the tokens come out of the
            # engine: a per-request mean would hide the stalls that ITL percentiles exist to show.
            ev.index = i = index[id(seq)]
            if ev.tokens:
                now = time.perf_counter()
                if i in last_token_at:
                    for _ in ev.tokens:
                        itl.observe((now - last_token_at[i]) / len(ev.tokens))
                last_token_at[i] = now
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        group = object() if n > 1 else None
        now = time.perf_counter()
        # a constrained output is decoded as its grammar read it (models/grammar.py)
        decode = self.decode_text if params.grammar is None else params.grammar.decode
        seqs = [GenSequence(prompt=list(prompt), on_event=on_event, decode_text=decode, enqueued_at=now,
                            group=group, params=params if params.seed is None or i == 0
                            else dataclasses.replace(params, seed=params.seed + i))
                for i in range(n)]
        index.update((id(q), i) for i, q in enumerate(seqs))
        with self._cv:  # checked again under the lock: a thread that died since must not get the sequence
            self._check_accepting()
            for q in seqs:
                self.scheduler.submit(q)
        self.metrics.queue_depth.labels(self.name).set(self.waiting())
        self.wake()
        return GenerationHandle(self, seqs, queue)

    def _on_step(self, kind: str, seconds: float, rows: int) -> None:
        self._record_busy(seconds)
        self.metrics.batch_size.labels(self.name, kind).observe(rows)
        captures = getattr(self.scheduler.runner, "captures", None)
        if captures is not None:
            self.metrics.graph_captures.labels(self.name).set(captures)

    def _run(self, lane: int) -> None:  # one lane: the scheduler steps one running batch
        s = self.scheduler
        while True:
            with self._cv:
                while not s.has_work() and not self._stopping:
                    self._cv.wait(timeout=0.5)
                if self._stopping:
                    break
            try:
                s.step()
            except Exception as e:  # a bug in the step itself: fail what is in flight, keep the engine alive
                s.fail_all(f"{type(e).__name__}: {e}")
            self.metrics.queue_depth.labels(self.name).set(self.waiting())
            self.metrics.running.labels(self.name).set(s.admitted())
        s.fail_all("the server stopped")

    def _fail_waiting(self, error: EngineError) -> None:
        self.scheduler.fail_all(error.message)
        self.metrics.running.labels(self.name).set(0)
