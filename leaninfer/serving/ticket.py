"""One request's way through FinOps: caller -> model -> admission (limits, budget) -> cache -> settle -> ledger.

The routes drive it in that order; :meth:`Ticket.close` runs exactly once however the request ends (answer,
error, hang-up), so a reservation is always settled and every request that got past authentication has its
ledger row. A response is sent only after its row is committed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

from starlette.requests import Request

from ..cost import usd_for_busy_seconds
from ..finops.budgets import BudgetExceeded, Reservation
from ..finops.cache import cache_key, deterministic
from ..finops.ledger import LedgerRow
from ..finops.money import to_nano, to_usd
from ..finops.rate_limits import RateLimited
from ..finops.windows import WINDOW_SECONDS
from .governance import Caller, Governance, Variant
from .protocol import OpenAIError
from .state import ServedModel

WORKFLOW_HEADER = "x-leaninfer-workflow"
TAGS_HEADER = "x-leaninfer-tags"
MAX_TAGS, MAX_LABEL = 16, 64


# Request ids: a random prefix per process (unique across replicas and restarts) and a counter. uuid4 per
# request reads os.urandom, a system call that gives up the GIL; under load the event loop then waited for
# the engine thread to hand it back (measured at ~0.5 ms a request).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def next_request_id() -> str:
    return f"req-{_ID_PREFIX}{next(_ids):010x}"


def parse_tags(text: str) -> dict[str, str]:
    """``"env=prod,feature=search"`` -> a dict; a malformed header is a 400 naming it."""
    tags = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip() or len(k) > MAX_LABEL or len(v) > MAX_LABEL:
            raise OpenAIError(400, f"X-Leaninfer-Tags item {item[:80]!r} must be key=value, each at most "
                                   f"{MAX_LABEL} characters", param="X-Leaninfer-Tags", code="invalid_value")
        tags[k.strip()] = v.strip()
    if len(tags) > MAX_TAGS:
        raise OpenAIError(400, f"X-Leaninfer-Tags has {len(tags)} tags; at most {MAX_TAGS}",
                          param="X-Leaninfer-Tags", code="invalid_value")
    return tags


class Ticket:
    def __init__(self, gate: Governance, request: Request, endpoint: str, caller: Caller):
        self.gate, self.endpoint, self.caller = gate, endpoint, caller
        self.arrived = time.time()
        self.row = LedgerRow(request_id=next_request_id(), created_at=self.arrived, finished_at=0.0,
                             endpoint=endpoint, requested_model="", team=caller.team,
                             key_id=caller.key.key_id if caller.key else None,
                             workflow=request.headers.get(WORKFLOW_HEADER, "")[:MAX_LABEL],
                             tags=parse_tags(request.headers.get(TAGS_HEADER, "")))
        self.variant: Variant | None = None
        self.reservation: Reservation | None = None
        self.closed = False
        self.meter = None

    # -- choosing -------------------------------------------------------------------------------------------------
    def requested(self, name: str, user: str | None) -> None:
        """The model name (or route) the client asked for; OpenAI's ``user`` is the workflow if no header set it."""
        self.row.requested_model = name
        if not self.row.workflow and user:
            self.row.workflow = user[:MAX_LABEL]
        key = self.caller.key
        if key is not None and key.policy.models is not None and name not in key.policy.models:
            raise OpenAIError(403, f"this key may not use model {name!r}; it may use: "
                                   f"{', '.join(key.policy.models)}", type="permission_error", param="model",
                              code="model_not_allowed")

    async def use(self, s: ServedModel, route: str) -> None:
        """Serve with ``s`` (a retry on the next variant of a route releases the previous reservation)."""
        if self.reservation is not None:
            await self.gate.call(self.gate.book.settle, self.reservation, 0, 0)
            self.reservation = None
        self.variant = self.gate.variants[s.name]
        self.row.served_model, self.row.variant_hash, self.row.route = s.name, self.variant.hash, route

    # -- admission ------------------------------------------------------------------------------------------------
    async def admit(self, input_tokens: int, max_output_tokens: int) -> None:
        """Rate limits, then the budget reservation of the worst case; a 429 with RateLimit headers if over."""
        key = self.caller.key
        self.row.input_tokens = input_tokens
        if key is None:
            return
        worst_tokens = input_tokens + max_output_tokens
        try:
            await self.gate.call(self.gate.limits.check, key, worst_tokens)
        except RateLimited as e:
            self.gate.metrics.rejected.labels(self.gate.metrics.team(self.caller.team), e.limit).inc()
            window = max(1, round(e.reset_at - time.time()))
            raise OpenAIError(429, e.message(), type="rate_limit_exceeded", code=e.limit, headers={
                "Retry-After": str(window),
                "RateLimit-Policy": f'"{e.limit}";q={e.quota};w=60',
                "RateLimit": f'"{e.limit}";r={e.remaining};t={window}'}) from None
        if self.gate.book is None:
            return
        nusd = self.variant.tariff.worst_nusd(input_tokens, max_output_tokens)
        try:
            self.reservation = await self.gate.call(self.gate.book.reserve, key, nusd, worst_tokens)
        except BudgetExceeded as e:
            self.gate.metrics.rejected.labels(self.gate.metrics.team(self.caller.team), "budget_exceeded").inc()
            window = e.budget.split("_")[1]
            headers = {"RateLimit-Policy": f'"{e.budget}";q={e.limit}'
                                           + (f";w={WINDOW_SECONDS[window]}" if window in WINDOW_SECONDS else ""),
                       "RateLimit": f'"{e.budget}";r={max(0, e.limit - e.used)}'}
            if e.reset_at is not None:
                reset = max(1, round(e.reset_at - time.time()))
                headers["Retry-After"] = str(reset)
                headers["RateLimit"] += f";t={reset}"
            raise OpenAIError(429, e.message(), type="budget_exceeded", code=e.budget, headers=headers) from None
        self.row.reserved_nusd, self.row.reserved_tokens = self.reservation.nusd, self.reservation.tokens

    # -- cache ----------------------------------------------------------------------------------------------------
    async def cached(self, params: dict) -> dict | None:
        """The cached answer for these parameters (usage rewritten: cost 0, what it saved), or None."""
        cache = self.gate.cache
        if cache is None or not deterministic(self.endpoint, params):
            self._cache_key = None
            self.row.cache = "off"
            return None
        self._cache_key = cache_key(self.caller.team, self.variant.hash, self.endpoint, params)
        entry = await self.gate.call(cache.get, self._cache_key)
        if entry is None:
            self.row.cache = "miss"
            return None
        body = dict(entry.body)
        if "id" in body:
            body["id"] = body["id"].split("-", 1)[0] + "-" + next_request_id()[4:]
            body["created"] = int(time.time())
        usage = dict(body["usage"])
        n_in, n_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        usage["leaninfer"] = {"cached": True, "saved_usd": to_usd(entry.cost_nusd), "cost_usd": 0.0,
                              "cost_usd_input": 0.0, "cost_usd_output": 0.0, "queue_time_s": 0.0,
                              "duration_s": 0.0, "engine_busy_s": 0.0, **self._names()}
        body["usage"] = usage
        r = self.row
        r.input_tokens, r.output_tokens, r.cached_tokens, r.charged_tokens = n_in, n_out, n_in + n_out, 0
        r.cache, r.cache_saved_nusd = "hit", entry.cost_nusd
        r.fp32_cost_nusd = self.gate.fp32_counterfactual(self.variant, n_in, n_out, entry.cost_nusd)
        self.gate.metrics.cache_hits.labels(self.variant.served.name).inc()
        self.gate.metrics.cache_saved.labels(self.variant.served.name).inc(to_usd(entry.cost_nusd))
        return body

    async def remember(self, body: dict) -> None:
        """Keep a computed answer for the next identical request."""
        if self.gate.cache is not None and getattr(self, "_cache_key", None) and self.row.status == 200:
            await self.gate.call(self.gate.cache.put, self._cache_key, body, self.row.cost_nusd)

    # -- settling -------------------------------------------------------------------------------------------------
    def settle(self, meter, input_tokens: int, output_tokens: int) -> dict:
        """Charge the request its true engine cost (at most its reservation); returns ``usage.leaninfer``
        with the charged cost, which the ledger row repeats exactly."""
        self.meter = meter
        v, r = self.variant, self.row
        price = v.tariff.usd_per_hour
        cost_in = to_nano(usd_for_busy_seconds(price, meter.busy_prefill_s))
        cost_out = to_nano(usd_for_busy_seconds(price, meter.busy_decode_s))
        v.tariff.observe(input_tokens, output_tokens, meter.busy_prefill_s, meter.busy_decode_s)
        tokens = input_tokens + output_tokens
        if self.reservation is not None:  # charged at most what was reserved; the book settles it in close()
            charged = min(cost_in + cost_out, self.reservation.nusd)
            tokens = min(tokens, self.reservation.tokens)
            cost_in = min(cost_in, charged)
            cost_out = charged - cost_in
        r.input_tokens, r.output_tokens, r.charged_tokens = input_tokens, output_tokens, tokens
        r.cost_input_nusd, r.cost_output_nusd, r.cost_nusd = cost_in, cost_out, cost_in + cost_out
        r.queue_s, r.ttft_s, r.duration_s = meter.queue_s, meter.ttft_s, meter.duration_s
        r.busy_s, r.price_basis = meter.busy_prefill_s + meter.busy_decode_s, v.tariff.basis()
        r.fp32_cost_nusd = self.gate.fp32_counterfactual(v, input_tokens, output_tokens, r.cost_nusd)
        if r.route and r.fp32_cost_nusd is not None:
            r.routing_saved_nusd = r.fp32_cost_nusd - r.cost_nusd
        extras = meter.to_dict()
        extras.update(cost_usd=to_usd(r.cost_nusd), cost_usd_input=to_usd(cost_in), cost_usd_output=to_usd(cost_out),
                      **self._names())
        if r.cache != "off":
            extras["cached"] = False
        return extras

    def _names(self) -> dict:
        out = {"request_id": self.row.request_id, "variant": self.row.served_model,
               "variant_hash": self.row.variant_hash}
        if self.row.route:
            out["route"] = self.row.route
        return out

    async def close(self, status: int, error_type: str | None = None) -> None:
        """Settle what is still reserved (an error or hang-up: charge what the engine really spent), write the
        ledger row and wait for its commit, update the per-team series. Runs once; later calls return."""
        if self.closed:
            return
        self.closed = True
        r = self.row
        r.status, r.error_class = status, error_type or ""
        if self.reservation is not None:  # the charge settle() worked out; 0 if the request ended before it
            await self.gate.call(self.gate.book.settle, self.reservation, r.cost_nusd, r.charged_tokens)
        r.finished_at = time.time()
        if r.duration_s == 0.0:
            r.duration_s = r.finished_at - self.arrived
        gate = self.gate
        if self.meter is not None or r.cache == "hit":
            gate.metrics.observe(r.team, r.served_model, r.input_tokens, r.output_tokens, to_usd(r.cost_nusd))
        key = self.caller.key
        if key is not None and gate.book is not None:
            for budget, (used, cap, start) in (await gate.call(gate.book.used, key)).items():
                ratio = used / cap if cap else 1.0
                gate.metrics.budget_used.labels(key.key_id, gate.metrics.team(r.team), budget).set(ratio)
                gate.spend_watch.budget_used(key.key_id, r.team, budget, ratio, start)
        if self.meter is not None:
            gate.spend_watch.observe(r.key_id, r.team, r.served_model, r.charged_tokens, r.cost_nusd)
        if gate.writer is not None:
            await gate.writer.record(r)


def open_ticket(request: Request, endpoint: str) -> Ticket | None:
    """The request's ticket, or None on a server without FinOps. Raises the 401 of a missing or bad key."""
    gate: Governance | None = request.app.state.finops
    if gate is None:
        return None
    return Ticket(gate, request, endpoint, gate.authenticate(request))


def close_soon(ticket: Ticket | None, status: int, error_type: str | None = None) -> None:
    """Close ``ticket`` from synchronous code (a stream's end callback)."""
    if ticket is not None and not ticket.closed:
        asyncio.ensure_future(ticket.close(status, error_type))
