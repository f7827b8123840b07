"""The gate every request passes through: ``admit`` before any work, ``finish`` once the work is metered,
``close`` exactly once however the request ends. No HTTP here: serving turns refusals into responses.

``admit(ask, plan)``, in order, each step before anything costlier:

1. the key (401), counted against its requests-per-minute at once, so that a refused request is rate-limited
   too (a 400/404 flood is still a flood);
2. the model: the key's policy (403), then the served names or a route's variants (404, wrong task);
3. per candidate, best first (routing and fallback live here and nowhere else): ``plan(variant)`` prepares
   and validates the work (tokenize, context and parameter checks: whatever can refuse a request refuses it
   before compute); tokens per minute and the budget reservation of the worst case (429); the response
   cache; then ``plan.start()`` hands the work to the engine (awaited when it returns an awaitable: an
   upstream engine's answer begins over the network). An engine that is overloaded or down (one of the
   ``fallback_on`` errors) releases the reservation and the next candidate is tried; each such attempt is
   named in the ledger row's ``attempts`` (``name:code``, in order).

A refusal raised inside ``admit`` has been recorded already (its ledger row written): the caller only answers
it. An :class:`Admission` returned must be closed by the caller, with the status it answered.

Budgets, limits and the cache are written once against :class:`~.store.ports.State`: in this process's memory
(inline on the event loop: microseconds, atomic on its thread) or in the store for several replicas (SQL:
called in a worker thread, as every store read of the gate is).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from ..errors import LeaninferError
from . import spend_report
from .alerts import PrometheusSink, SpendWatch, WebhookSink, log_sink
from .budgets import BudgetBook, BudgetExceeded, Reservation
from .cache import ResponseCache, cache_key, deterministic
from .config import FinOpsConfig
from .keys import KeyRecord, key_id_of, matches
from .ledger import LedgerRow
from .ledger_writer import LedgerWriter
from .metrics import FinOpsMetrics
from .money import to_usd
from .rate_limits import RateLimited, RateLimits
from .refusals import GovernanceUnavailable, InvalidKey, NotAllowed, Refusal, UnknownModel, WrongTask
from .routing import Router
from .scope_budgets import Covering
from .scope_cache import ScopeBudgetCache
from .store import open_store
from .store.memory import MemoryState
from .variant import Variant
from .windows import timezone

log = logging.getLogger("leaninfer.finops")
OPEN_TEAM = "-"  # the team of requests on a server without keys
# A key record (or its absence) is read from the store at most once per this many seconds: a revoke or rotate
# takes effect within it, and a request doesn't pay a database read (~0.6 ms of event-loop time, measured).
KEY_CACHE_S = 1.0
# Key ids remembered at once, found or not: an unauthenticated flood of random well-formed ids can't grow the
# server's memory past this (each entry is ~200 bytes).
KEY_CACHE_ENTRIES = 10_000
TICK_S = 5.0
_UNREAD = object()
HOLD_MARGIN_S = 60.0  # a hold outlives its request's timeout and the drain by this much

# Request ids: a random prefix per process (unique across replicas and restarts) and a counter. uuid4 per
# request reads os.urandom, a system call that gives up the GIL; under load the event loop then waited for
# the engine thread to hand it back (measured at ~0.5 ms a request).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def next_request_id() -> str:
    return f"req-{_ID_PREFIX}{next(_ids):010x}"


def outcome_of(e: BaseException) -> tuple[int, str]:
    """``(status, error type)`` the ledger records for a request that ended with ``e``."""
    if isinstance(e, RateLimited):
        return 429, "rate_limit_exceeded"
    if isinstance(e, BudgetExceeded):
        return 429, "budget_exceeded"
    if isinstance(e, asyncio.CancelledError):
        return 499, "client_closed_request"
    return getattr(e, "status", 500), getattr(e, "type", None) or "server_error"


@dataclass
class Ask:
    """What a request asks for, as the gate needs it (validated at the edge: labels are bounded and clean)."""

    endpoint: str  # embeddings | completions | chat.completions
    task: str  # the task the endpoint serves: embedding | causal-lm
    api_key: str = ""  # as presented ("" for none)
    workflow: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=next_request_id)


@dataclass
class Plan:
    """One candidate's work, prepared and validated: its worst case for the reservation, what the cache key
    covers (None: not cacheable), and ``start()``, which hands it to the engine (raising one of the gate's
    ``fallback_on`` errors when the engine can't take it now)."""

    input_tokens: int
    max_output_tokens: int
    cache_params: dict | None
    start: Callable[[], Any]  # the work, or an awaitable of it


@dataclass
class Admission:
    """A request let through: who pays, on which variant, what is reserved, and either a cached answer
    (``hit``) or the work the engine took (``work``: what ``Plan.start`` returned)."""

    ask: Ask
    key: KeyRecord | None
    team: str
    row: LedgerRow | None  # None on a server that keeps no ledger and checks no key
    model: str = ""  # what the client asked for: a served name or a route
    variant: Variant | None = None
    route: str = ""
    reservation: Reservation | None = None
    cache_key: str | None = None
    hit: dict | None = None
    work: Any = None
    metered: bool = False  # finish() ran: the row holds the charge
    closed: bool = False
    # the key's rate limits as last counted, {"rpm"|"tpm": (quota, remaining, reset_at)}: the response's headers
    limits: dict = field(default_factory=dict)
    scopes: list = field(default_factory=list)  # the budgets above the key that cover it (Covering)

    @property
    def request_id(self) -> str:
        return self.ask.request_id


class Gate:
    """Keys, budgets, rate limits, the response cache, routes and the ledger of one server.

    Example:
        >>> gate = Gate(FinOpsConfig(auth="keys", store="leaninfer.db"), variants)     # doctest: +SKIP
        >>> adm = await gate.admit(Ask("embeddings", "embedding", "minilm", key), plan) # raises a refusal
        >>> usage = gate.finish(adm, meter, input_tokens=12, output_tokens=0)
        >>> await gate.close(adm, 200, body=response_body)
    """

    def __init__(self, config: FinOpsConfig, variants: dict[str, Variant], registry=None, *,
                 hold_s: float = 600.0 + 30.0 + HOLD_MARGIN_S, fallback_on: tuple[type[BaseException], ...] = (),
                 outcome: Callable[[BaseException], tuple[int, str]] = outcome_of):
        self.config, self.variants, self.fallback_on, self.outcome = config, variants, fallback_on, outcome
        if config.auth == "keys" and config.store is None:
            raise LeaninferError("--auth keys needs a --store for its keys and ledger")
        if config.spend_report and (config.alert_webhook is None or config.store is None):
            raise LeaninferError("--spend-report needs --alert-webhook URL (where it goes) and a --store (its "
                                 "ledger)")
        if config.shared_state and config.store is None:
            raise LeaninferError("shared state (several replicas) needs a --store: a SQLite file on one host, "
                                 "or postgresql://... across hosts")
        self.governed = config.enabled
        self.tz = timezone(config.budget_timezone)
        self.store = open_store(config.store) if config.store is not None else None
        self.state = self.store if config.shared_state else MemoryState(
            spend=self.store.budget_spend if self.store is not None else None)
        self.owner = uuid.uuid4().hex
        self.book = BudgetBook(self.state, self.tz, hold_s=hold_s, owner=self.owner) if self.store else None
        self.scope_budgets = ScopeBudgetCache(self.store) if self.store else None  # budgets above the key
        self.limits = RateLimits(self.state)
        self.cache = ResponseCache(self.state, config.cache_max_bytes, config.cache_ttl_s,
                                   keep_text=config.cache_store_text) if config.cache_max_bytes else None
        self.router = Router(variants, config.routes)
        self.metrics = FinOpsMetrics(registry, config.max_metric_teams) if registry is not None else None
        self.webhook = WebhookSink(config.alert_webhook) if config.alert_webhook else None
        sinks = [log_sink] + ([PrometheusSink(registry)] if registry is not None else [])
        self.spend_watch = SpendWatch(sinks + ([self.webhook] if self.webhook else []))
        self.writer: LedgerWriter | None = None
        self._keys: TTLCache = TTLCache(maxsize=KEY_CACHE_ENTRIES, ttl=KEY_CACHE_S)
        self._reading: dict[str, asyncio.Future] = {}  # key id -> its store read in flight
        self._ticker: asyncio.Task | None = None
        self._reporter: asyncio.Task | None = None  # --spend-report
        self._claimed = False

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the store for this server: exclusively with state in memory, shared with shared state, so that
        two servers can't each keep their own budgets on one store (a LeaninferError says what to do). Then
        release the reservations of servers that died holding them. ``leaninfer serve`` calls it before it
        listens; :meth:`start` calls it otherwise."""
        if self.store is None or self._claimed:
            return
        self.store.claim(self.owner, shared=self.config.shared_state)
        self._claimed = True
        released = self.store.reclaim_orphans()
        if released:
            log.info("released the reservations of %d requests of servers that died", released)

    async def start(self) -> None:
        if self.store is not None:
            await asyncio.to_thread(self.claim)
            self.writer = LedgerWriter(self.store, self.config.ledger_retention_days)
        self._ticker = asyncio.create_task(self._tick())
        if self.config.spend_report:
            self._reporter = asyncio.create_task(spend_report.schedule(
                self.store, self.webhook, self.config.spend_report, self.config.budget_timezone))

    async def _tick(self) -> None:
        while True:  # closes a quiet minute of the spike detector even when no request comes
            await asyncio.sleep(TICK_S)
            self.spend_watch.tick()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
        if self.webhook is not None:
            await asyncio.to_thread(self.webhook.close)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.store is not None:
            await asyncio.to_thread(self._release)

    def _release(self) -> None:
        if self._claimed:
            self.store.release()
            self._claimed = False
        self.store.close()

    async def _state(self, fn, *args, what: str = "check the budgets and limits", io: bool = False):
        """``fn(*args)`` on the State: in a worker thread when it does I/O (SQL, or ``io``: this call reads the
        store), inline when it is this process's memory. A failure of the state itself (not a refusal)
        becomes a logged, counted 503."""
        try:
            return await asyncio.to_thread(fn, *args) if self.state.blocking or io else fn(*args)
        except (RateLimited, BudgetExceeded, Refusal):
            raise
        except Exception as e:
            raise self._unavailable(what, e) from e

    def _unavailable(self, what: str, cause: BaseException) -> GovernanceUnavailable:
        log.error("FinOps could not %s", what, exc_info=cause)
        self._rejected(OPEN_TEAM, "governance_unavailable")
        return GovernanceUnavailable(what, cause)

    # -- keys -----------------------------------------------------------------------------------------------
    async def authenticate(self, presented: str) -> KeyRecord | None:
        """The active key matching ``presented``, or None. The record is read off the event loop and kept
        :data:`KEY_CACHE_S`; never logs what was presented."""
        key_id = key_id_of(presented)
        if key_id is None or self.store is None:
            return None
        key = self._keys.get(key_id, _UNREAD)
        if key is _UNREAD:
            # One read per key id at a time: the requests that arrive while it runs wait for it, rather than
            # each sending its own when the cached record expires under load.
            reading = self._reading.get(key_id)
            if reading is None:
                reading = self._reading[key_id] = asyncio.ensure_future(asyncio.to_thread(self.store.get_key, key_id))
                reading.add_done_callback(lambda _: self._reading.pop(key_id, None))
            try:
                key = await asyncio.shield(reading)
            except Exception as e:
                raise self._unavailable("read the API key", e) from e
            self._keys[key_id] = key
        return key if key is not None and key.active and not key.expired() and matches(key, presented) else None

    def key_refusal(self, presented: str) -> InvalidKey:
        """The 401 for a key :meth:`authenticate` refused: one that says so for a key past its ``expires_at``
        (only to whoever holds its secret), the generic one otherwise."""
        key = self._keys.get(key_id_of(presented) or "", None)
        if isinstance(key, KeyRecord) and key.active and key.expired() and matches(key, presented):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.policy.expires_at))
            return InvalidKey(f"this API key expired at {when}: ask an admin for a new key, or to extend this one "
                              f"(PATCH /v1/admin/keys/{key.key_id} with a later expires_at)", "expired_api_key")
        return InvalidKey()

    def forget_key(self, key_id: str) -> None:
        """Drop this server's cached record of ``key_id`` (after changing it here: it applies at once)."""
        self._keys.pop(key_id, None)

    # -- admit ----------------------------------------------------------------------------------------------
    async def admit(self, ask: Ask, read: Callable[[], Awaitable[tuple[str, str | None]]],
                    plan: Callable[[Variant], Awaitable[Plan]]) -> Admission:
        """Let the request through on its best candidate, or raise a refusal (recorded before it is raised).

        ``read()`` reads and validates the body once the key is known (a keyed client's bad body is counted
        and recorded; a client without a key learns nothing of the schema); it returns the model name asked
        for and OpenAI's ``user``, the workflow when no header names one. ``plan(variant)`` prepares the work
        for one candidate (see :class:`Plan`)."""
        key = None
        if self.config.auth == "keys":
            key = await self.authenticate(ask.api_key)
            if key is None:
                self._rejected(OPEN_TEAM, "invalid_api_key")
                raise self.key_refusal(ask.api_key)
        team = key.policy.team if key is not None else OPEN_TEAM
        row = LedgerRow(request_id=ask.request_id, created_at=time.time(), finished_at=0.0, endpoint=ask.endpoint,
                        requested_model="", team=team, key_id=key.key_id if key else None,
                        workflow=ask.workflow, tags=ask.tags) if self.governed else None
        adm = Admission(ask, key, team, row)
        try:
            await self._admit(adm, read, plan)
        except BaseException as e:
            if isinstance(e, (RateLimited, BudgetExceeded)):
                e.rate_limits = adm.limits  # the key's rpm/tpm as counted: the 429's headers (serving.errors)
            await self.close(adm, *self.outcome(e))
            raise
        return adm

    async def _admit(self, adm: Admission, read, plan) -> None:
        ask, key, row = adm.ask, adm.key, adm.row
        if key is not None:
            await self._limit(adm, self.limits.check_requests, key)
        adm.model, user = await read()
        if row is not None:
            row.requested_model, row.end_user = adm.model, user or ""
            if not row.workflow and user:
                row.workflow = user[:64]  # the ledger keeps labels of at most 64 characters
        if key is not None and key.policy.models is not None and adm.model not in key.policy.models:
            raise NotAllowed(f"this key may not use model {adm.model!r}; it may use: "
                             f"{', '.join(key.policy.models)}", "model_not_allowed", "model")
        candidates, adm.route = self.router.candidates(adm.model)
        if not candidates:
            raise UnknownModel(adm.model, list(self.variants))
        if candidates[0].task != ask.task:
            raise WrongTask(adm.model, candidates[0].task, ask.task)
        # the budgets above the key that cover the request (team, tags, model, end user, org), kept 1 s
        scopes = await self._scopes(adm, key, user) if key is not None and self.scope_budgets is not None else []
        adm.scopes = scopes
        counted = 0  # tokens counted against the key's tpm: once per request, not once per candidate tried
        requests = 1  # the request, counted against its scopes' rpm once (the key's was counted at authentication)
        for i, v in enumerate(candidates):
            self._use(adm, v)
            p = await plan(v)
            if adm.row is not None:
                adm.row.input_tokens = p.input_tokens
            if key is not None:
                worst = p.input_tokens + p.max_output_tokens
                if worst > counted or requests:  # a fallback counts only what its worst case adds
                    await self._limit(adm, self.limits.check_scoped, key, max(worst - counted, 0), requests, scopes)
                    counted, requests = max(worst, counted), 0
                if self.book is not None:
                    await self._reserve(adm, key, v.tariff.worst_nusd(p.input_tokens, p.max_output_tokens), worst,
                                        scopes)
            if await self._cached(adm, p):
                return
            try:
                work = p.start()
                adm.work = (await work) if inspect.isawaitable(work) else work
                return
            except self.fallback_on as e:
                if row is not None:
                    tried = f"{v.name}:{getattr(e, 'code', type(e).__name__)}"
                    row.attempts = f"{row.attempts},{tried}" if row.attempts else tried
                if i + 1 == len(candidates):
                    raise
                await self._release_reservation(adm)

    def _use(self, adm: Admission, v: Variant) -> None:
        adm.variant = v
        if adm.row is not None:
            adm.row.served_model, adm.row.variant_hash, adm.row.route = v.name, v.hash, adm.route

    async def _limit(self, adm: Admission, check, *args) -> None:
        try:
            for name, counted in (await self._state(check, *args)).items():
                if name not in adm.limits or counted[1] <= adm.limits[name][1]:  # the headers show the tightest
                    adm.limits[name] = counted
        except RateLimited as e:
            self._rejected(adm.team, e.limit)
            adm.limits[e.limit] = (e.quota, e.remaining, e.reset_at)
            raise

    async def _scopes(self, adm: Admission, key: KeyRecord, user: str | None) -> list[Covering]:
        try:
            return await self.scope_budgets.covering(key.policy.team, adm.model, adm.ask.tags, user)
        except Exception as e:
            raise self._unavailable("read the budgets above the key", e) from e

    async def _reserve(self, adm: Admission, key: KeyRecord, nusd: int, tokens: int,
                       scopes: list[Covering]) -> None:
        try:
            # the first reservation of a window in this process reads its spend from the ledger: off the loop
            cold = not self.state.blocking and self.book.cold(key, scopes)
            adm.reservation = await self._state(self.book.reserve, key, nusd, tokens, scopes, io=cold)
        except BudgetExceeded:
            self._rejected(adm.team, "budget_exceeded")
            raise
        adm.row.reserved_nusd, adm.row.reserved_tokens = adm.reservation.nusd, adm.reservation.tokens

    async def _release_reservation(self, adm: Admission) -> None:
        if adm.reservation is not None:
            await self._state(self.book.settle, adm.reservation, 0, 0)
            adm.reservation = None

    def _rejected(self, team: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(self.metrics.team(team), reason).inc()

    # -- cache ----------------------------------------------------------------------------------------------
    async def _cached(self, adm: Admission, p: Plan) -> bool:
        """Answer from the cache when it holds this request (usage rewritten: cost 0, what it saved)."""
        row, v = adm.row, adm.variant
        if self.cache is None or p.cache_params is None or not deterministic(adm.ask.endpoint, p.cache_params):
            return False
        adm.cache_key = cache_key(adm.team, v.hash, adm.ask.endpoint, p.cache_params)
        if adm.cache_key is None:  # parameters it can't key on: not cached, never an error
            return False
        try:
            entry = await self._state(self.cache.get, adm.cache_key, what="read the response cache")
        except GovernanceUnavailable:  # a cache that fails is a cache that misses: the request goes on
            entry, adm.cache_key = None, None
        if entry is None:
            row.cache = "miss"
            return False
        await self._release_reservation(adm)  # a hit costs nothing
        body = dict(entry.body)
        if "id" in body:
            body["id"] = body["id"].split("-", 1)[0] + "-" + adm.request_id[4:]
            body["created"] = int(time.time())
        usage = dict(body["usage"])
        n_in, n_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        usage["leaninfer"] = {"cached": True, "saved_usd": to_usd(entry.cost_nusd), "cost_usd": 0.0,
                              "cost_usd_input": 0.0, "cost_usd_output": 0.0, "queue_time_s": 0.0,
                              "duration_s": 0.0, "engine_busy_s": 0.0, **self._names(adm)}
        body["usage"] = usage
        row.input_tokens, row.output_tokens, row.cached_tokens, row.charged_tokens = n_in, n_out, n_in + n_out, 0
        row.cache, row.cache_saved_nusd = "hit", entry.cost_nusd
        row.fp32_cost_nusd = self._fp32_counterfactual(v, n_in, n_out, entry.cost_nusd)
        if self.metrics is not None:
            self.metrics.cache_hits.labels(v.name).inc()
            self.metrics.cache_saved.labels(v.name).inc(to_usd(entry.cost_nusd))
        adm.hit = body
        return True

    # -- finish ---------------------------------------------------------------------------------------------
    def finish(self, adm: Admission, meter, input_tokens: int, output_tokens: int) -> dict:
        """Charge the engine time ``meter`` measured (at most the reservation), whether the request succeeded
        or failed after the engine ran; returns ``usage.leaninfer``, whose cost the ledger row repeats exactly.
        Once: a later call returns the same figures without charging again."""
        row, v = adm.row, adm.variant
        if row is None:  # an open server: the engine's own figures
            return meter.to_dict()
        cost_in, cost_out = v.tariff.cost_nusd(input_tokens, output_tokens, meter.busy_prefill_s,
                                               meter.busy_decode_s)
        tokens = input_tokens + output_tokens
        if not adm.metered:
            adm.metered = True
            v.tariff.observe(input_tokens, output_tokens, meter.busy_prefill_s, meter.busy_decode_s)
            if adm.reservation is not None:  # never more than was reserved: the book settles this in close()
                charged, tokens = adm.reservation.clamp(cost_in + cost_out, tokens)
                cost_in = min(cost_in, charged)
                cost_out = charged - cost_in
            row.input_tokens, row.output_tokens, row.charged_tokens = input_tokens, output_tokens, tokens
            row.cost_input_nusd, row.cost_output_nusd, row.cost_nusd = cost_in, cost_out, cost_in + cost_out
            row.queue_s, row.ttft_s, row.duration_s = meter.queue_s, meter.ttft_s, meter.duration_s
            row.busy_s, row.price_basis = meter.busy_prefill_s + meter.busy_decode_s, v.tariff.basis()
            row.fp32_cost_nusd = self._fp32_counterfactual(v, input_tokens, output_tokens, row.cost_nusd)
            if row.route and row.fp32_cost_nusd is not None:
                row.routing_saved_nusd = row.fp32_cost_nusd - row.cost_nusd
        extras = meter.to_dict()
        extras.update(cost_usd=to_usd(row.cost_nusd), cost_usd_input=to_usd(row.cost_input_nusd),
                      cost_usd_output=to_usd(row.cost_output_nusd), **self._names(adm))
        if row.cache != "off":
            extras["cached"] = False
        return extras

    def _names(self, adm: Admission) -> dict:
        out = {"request_id": adm.request_id, "variant": adm.variant.name, "variant_hash": adm.variant.hash}
        if adm.route:
            out["route"] = adm.route
        if adm.row is not None and adm.row.attempts:
            out["attempts"] = adm.row.attempts.split(",")
        return out

    def _fp32_counterfactual(self, v: Variant, input_tokens: int, output_tokens: int, charged: int) -> int | None:
        if v.fp32_source:
            return charged
        base = next((b for b in self.variants.values() if b.fp32_source and b.source == v.source
                     and b.task == v.task), None)
        return None if base is None else base.tariff.typical_nusd(input_tokens, output_tokens)

    # -- close ----------------------------------------------------------------------------------------------
    async def close(self, adm: Admission, status: int, error_type: str | None = None,
                    body: dict | None = None) -> None:
        """Settle the reservation at the charge :meth:`finish` worked out (0 if the engine never ran), keep a
        computed answer in the cache, update the series and alerts, and write the ledger row, waiting for its
        commit (a response leaves only once its row is durable). Runs once; later calls return."""
        if adm.closed:
            return
        adm.closed = True
        row = adm.row
        if row is None:
            return
        row.status, row.error_class = status, ("" if status == 200 else error_type or "")
        # Settling, caching and the gauges may fail with the store (logged and counted there); the ledger row
        # is still written: a reservation not settled is released when its hold expires.
        with contextlib.suppress(GovernanceUnavailable):
            if adm.reservation is not None:
                await self._state(self.book.settle, adm.reservation, row.cost_nusd, row.charged_tokens,
                                  what="settle a budget reservation")
            if status == 200 and body is not None and adm.cache_key is not None and adm.hit is None:
                await self._state(self.cache.put, adm.cache_key, body, row.cost_nusd,
                                  adm.ask.endpoint != "embeddings", what="write the response cache")
            await self._gauges(adm)
        row.finished_at = time.time()
        if row.duration_s == 0.0:
            row.duration_s = row.finished_at - row.created_at
        if self.metrics is not None and (adm.metered or adm.hit is not None):
            self.metrics.observe(row.team, row.served_model, row.input_tokens, row.output_tokens,
                                 to_usd(row.cost_nusd))
        if adm.metered:
            self.spend_watch.observe(row.key_id, row.team, row.served_model, row.charged_tokens, row.cost_nusd)
        if self.writer is not None:
            await self.writer.record(row)

    async def _gauges(self, adm: Admission) -> None:
        """The budget gauges and budget alerts of the key and of the budgets above it, from settled spend."""
        key, row = adm.key, adm.row
        if key is None or self.book is None or adm.variant is None:
            return
        used = await self._state(self.book.used, key, what="read the budgets' use")
        for budget, (spent, cap, start) in used.items():
            ratio = spent / cap if cap else 1.0
            if self.metrics is not None:
                self.metrics.budget_used.labels(key.key_id, self.metrics.team(row.team), budget).set(ratio)
            self.spend_watch.budget_used(key.key_id, row.team, budget, ratio, start)
        if adm.scopes:
            scoped = await self._state(self.book.used_scoped, adm.scopes, what="read the budgets' use")
            for c, budget, spent, cap, start in scoped:
                ratio = spent / cap if cap else 1.0
                if self.metrics is not None:
                    self.metrics.scope_budget_used.labels(c.budget.scope, budget).set(ratio)
                kind, _, name = c.budget.scope.partition(":")
                self.spend_watch.budget_used(c.budget.scope, name if kind == "team" else "", budget, ratio, start,
                                             entity_kind="scope")


__all__ = ["Admission", "Ask", "Gate", "Plan", "Refusal", "next_request_id"]
