"""FinOps in the server: keys, budgets, rate limits, the response cache, routes and the ledger, wired together.

One :class:`Governance` per app (``app.state.finops``; None when every FinOps feature is off, so an open server
without a ledger pays nothing). Each request gets a :class:`~leaninfer.serving.ticket.Ticket` from
:meth:`Governance.open`, which carries it from authentication to its ledger row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from starlette.requests import Request

from ..errors import LeaninferError
from ..finops.alerts import PrometheusSink, SpendWatch, WebhookSink, log_sink
from ..finops.budgets import BudgetBook
from ..finops.cache import ResponseCache
from ..finops.config import FinOpsConfig
from ..finops.keys import KeyRecord, key_id_of, matches
from ..finops.ledger_writer import LedgerWriter
from ..finops.metrics import FinOpsMetrics
from ..finops.rate_limits import RateLimits
from ..finops.routing import PERFECT, Route, parse_route
from ..finops.shared_budgets import SharedBudgetBook
from ..finops.shared_cache import SharedResponseCache
from ..finops.shared_limits import SharedRateLimits
from ..finops.stores import open_store
from ..finops.tariff import Tariff
from ..finops.variant import measured_quality, source_ref, variant_hash
from ..finops.windows import timezone
from .core import SamplingParams
from .protocol import OpenAIError
from .state import ServedModel

log = logging.getLogger("leaninfer.finops")
CALIBRATION_TOKENS = 32
# A key record is read from the store at most once per this many seconds: a revoke or rotate takes effect
# within it, and a request doesn't pay a database read (~0.6 ms of event-loop time under load, measured).
KEY_CACHE_S = 1.0
TICK_S = 5.0
OPEN_TEAM = "-"  # the team of requests on a server without keys


def bearer(request: Request) -> str:
    """The key a request presents in ``Authorization: Bearer ...`` ("" when none)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


@dataclass
class Variant:
    """A served model as FinOps sees it."""

    served: ServedModel
    hash: str
    tariff: Tariff
    quality: dict | None  # measured against the source; None for the source itself
    source: str
    fp32_source: bool  # the source served as is, in FP32: the counterfactual's price


@dataclass
class Caller:
    key: KeyRecord | None
    team: str


class Governance:
    def __init__(self, config: FinOpsConfig, served: dict[str, ServedModel], usd_per_hour: float, registry):
        self.config = config
        if config.auth == "keys" and config.store is None:
            raise LeaninferError("--auth keys needs a --store for its keys and ledger")
        self.tz = timezone(config.budget_timezone)
        self.store = open_store(config.store) if config.store is not None else None
        # One server keeps budgets, limits and the cache in its memory (atomic on the event loop's thread);
        # several replicas share them through the store (SQL, called off the event loop: see call()).
        self.shared = config.shared_state
        if self.shared and self.store is None:
            raise LeaninferError("shared state (several replicas) needs a --store: a SQLite file on one host, "
                                 "or postgresql://... across hosts")
        if self.store is None:
            self.book = None
        else:
            self.book = SharedBudgetBook(self.store, self.tz) if self.shared else BudgetBook(self.store, self.tz)
        self.writer: LedgerWriter | None = None
        self.limits = SharedRateLimits(self.store) if self.shared else RateLimits(config.rate_limit_storage)
        self.cache = None
        if config.cache_max_bytes:
            self.cache = SharedResponseCache(self.store, config.cache_max_bytes, config.cache_ttl_s) if self.shared \
                else ResponseCache(config.cache_max_bytes, config.cache_ttl_s)
        self.metrics = FinOpsMetrics(registry, config.max_metric_teams)
        self.variants = {name: Variant(s, variant_hash(s.model), Tariff(usd_per_hour), measured_quality(s.model),
                                       source_ref(s.model), measured_quality(s.model) is None and
                                       s.model.precision == "fp32")
                         for name, s in served.items()}
        self._keys: dict[str, tuple[KeyRecord | None, float]] = {}  # key_id -> (record, read at)
        self.routes: dict[str, tuple[Route, list[str]]] = {}
        for text in config.routes:
            route = parse_route(text)
            if route.name in served:
                raise LeaninferError(f"--route {text!r}: {route.name!r} is already a served model's name")
            self.routes[route.name] = (route, self._candidates(route))
        self.webhook = WebhookSink(config.alert_webhook) if config.alert_webhook else None
        self.spend_watch = SpendWatch([log_sink, PrometheusSink(registry)] + ([self.webhook] if self.webhook else []))
        self._ticker: asyncio.Task | None = None

    def _candidates(self, route: Route) -> list[str]:
        # Floors are checked at start-up (manifests don't change); the queue SLO per request.
        task = "embedding" if route.config.min_cosine is not None or route.config.max_sts_drop is not None \
            else "causal-lm"
        of_task = [v for v in self.variants.values() if v.served.task == task]
        sources = {v.source for v in of_task}
        if len(sources) > 1:
            raise LeaninferError(f"--route {route.name}: served {task} models come from several sources "
                                 f"({', '.join(sorted(sources))}); a route picks among variants of one model")
        good = [v.served.name for v in of_task if route.qualifies(PERFECT if v.quality is None else v.quality)]
        if not good:
            raise LeaninferError(f"--route {route.name}: no served {task} variant meets its floors (measured "
                                 f"quality: {', '.join(f'{v.served.name}={v.quality}' for v in of_task) or 'none'})")
        return good

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            self.writer = LedgerWriter(self.store)
        await asyncio.gather(*(self._calibrate(v) for v in self.variants.values()))
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:  # closes a quiet minute of the spike detector even when no request comes
            await asyncio.sleep(TICK_S)
            self.spend_watch.tick()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.webhook is not None:
            await asyncio.to_thread(self.webhook.close)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.store is not None:
            self.store.close()

    async def _calibrate(self, v: Variant) -> None:
        """Batch-1 requests of 1 and :data:`CALIBRATION_TOKENS` tokens (after one to warm up), so the first
        reservation already has a worst-case price."""
        s = v.served
        token = s.model.tokenizer.convert_tokens_to_ids("the") or 1
        runs = [await self._run_once(s, [token] * n) for n in (CALIBRATION_TOKENS, 1, CALIBRATION_TOKENS)]
        v.tariff.calibrate(runs[1], runs[2], CALIBRATION_TOKENS)

    @staticmethod
    async def _run_once(s: ServedModel, prompt: list[int]) -> tuple[float, float, int]:
        if s.task == "embedding":
            _, meter = await s.engine.embed([prompt])
            return meter.busy_prefill_s, 0.0, 0
        handle = s.engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
        async for _ in handle:
            pass
        meter = handle.meter()
        return meter.busy_prefill_s, meter.busy_decode_s, len(handle.seq.output)

    # -- per request --------------------------------------------------------------------------------------------
    async def call(self, fn, *args):
        """``fn(*args)``: in a worker thread when state is shared through the store (database I/O), inline
        when it is this process's memory (microseconds, and atomic on the event loop's thread)."""
        return await asyncio.to_thread(fn, *args) if self.shared else fn(*args)

    def authenticate(self, request: Request) -> Caller:
        if self.config.auth == "none":
            return Caller(None, OPEN_TEAM)
        key = self.key_for(bearer(request))
        if key is None:
            self.metrics.rejected.labels(OPEN_TEAM, "invalid_api_key").inc()
            raise OpenAIError(401, "invalid or revoked API key: pass 'Authorization: Bearer lk_...' with a key "
                                   "from `leaninfer keys create`", code="invalid_api_key")
        return Caller(key, key.policy.team)

    def key_for(self, presented: str) -> KeyRecord | None:
        """The active key matching ``presented``, or None. Never logs what was presented."""
        key_id = key_id_of(presented)
        if key_id is None or self.store is None:
            return None
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is None or now - hit[1] > KEY_CACHE_S:
            hit = self._keys[key_id] = (self.store.get_key(key_id), now)
        key = hit[0]
        return key if key is not None and key.active and matches(key, presented) else None

    def choose(self, name: str, served: dict[str, ServedModel]) -> tuple[list[ServedModel], str]:
        """The served models to try for ``name``, best first, and the route's name ("" for a plain name)."""
        if name not in self.routes:
            return ([served[name]] if name in served else []), ""
        route, names = self.routes[name]
        ranked = sorted(names, key=lambda n: self.variants[n].tariff.rank_key())
        slo_s = route.config.max_queue_ms / 1000
        fits = [n for n in ranked if self.variants[n].tariff.request_busy_s * served[n].engine.pending() <= slo_s]
        # over the SLO everywhere: still try them, cheapest first (the queue's own bound answers 503)
        return [served[n] for n in fits + [n for n in ranked if n not in fits]], name

    def fp32_counterfactual(self, v: Variant, input_tokens: int, output_tokens: int, charged: int) -> int | None:
        if v.fp32_source:
            return charged
        base = next((b for b in self.variants.values() if b.fp32_source and b.source == v.source
                     and b.served.task == v.served.task), None)
        return None if base is None else base.tariff.typical_nusd(input_tokens, output_tokens)
