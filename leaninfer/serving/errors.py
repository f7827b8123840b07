"""The one place where typed errors of the layers below HTTP (the gate's refusals, the engines' errors) become
OpenAI-style error responses: status, body and headers."""

from __future__ import annotations

import asyncio
import math
import time

from ..engines.errors import EngineError, EngineFailed, Overloaded, Unavailable, UpstreamError
from ..errors import LeaninferError
from ..finops.budgets import BudgetExceeded
from ..finops.rate_limits import RateLimited
from ..finops.refusals import Refusal
from ..finops.windows import WINDOW_SECONDS
from .protocol import OpenAIError
from .ratelimit_headers import refusal_headers

REQUEST_ID_HEADER = "x-request-id"
# an upstream's failure as this server's answer: busy 503 (with its Retry-After), slow 504, the request itself
# refused 400 (its message passed on); unreachable, failed, malformed or misconfigured: 502, a bad gateway
UPSTREAM_STATUS = {"upstream_busy": 503, "upstream_timeout": 504, "upstream_rejected": 400}
UPSTREAM_TYPE = {503: "server_overloaded", 504: "timeout", 400: "invalid_request_error"}


def _seconds_until(at: float) -> int:
    return max(1, math.ceil(at - time.time()))


def to_openai(exc: BaseException) -> OpenAIError | None:
    """``exc`` as the OpenAI error a client gets, or None when it is not a typed error (a bug: a 500)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, Refusal):
        return OpenAIError(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)
    if isinstance(exc, RateLimited):
        wait = _seconds_until(exc.reset_at)
        # a limit above the key: its kind in the policy's name, its id in param (as a budget's, below)
        name = f"{exc.scope_id.partition(':')[0]}.{exc.limit}" if exc.scope_id else exc.limit
        return OpenAIError(429, exc.message(), type="rate_limit_exceeded", param=exc.scope_id or None,
                           code=exc.limit, headers=refusal_headers({
                               "Retry-After": str(wait), "RateLimit-Policy": f'"{name}";q={exc.quota};w=60',
                               "RateLimit": f'"{name}";r={exc.remaining};t={wait}'},
                               getattr(exc, "rate_limits", {exc.limit: (exc.quota, exc.remaining, exc.reset_at)})))
    if isinstance(exc, BudgetExceeded):
        error = _budget_error(exc)
        error.headers = refusal_headers(error.headers, getattr(exc, "rate_limits", {}))
        return error
    if isinstance(exc, UpstreamError):
        status = UPSTREAM_STATUS.get(exc.code, 502)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s and status == 503 else {}
        return OpenAIError(status, exc.message, type=UPSTREAM_TYPE.get(status, "server_error"), code=exc.code,
                           headers=headers)
    if isinstance(exc, Overloaded):
        return OpenAIError(503, exc.message, type="server_overloaded", code=exc.code,
                           headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, Unavailable):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else {}
        kind = "server_unavailable" if exc.code == "draining" else "server_error"
        return OpenAIError(503, exc.message, type=kind, code=exc.code, headers=headers)
    if isinstance(exc, (EngineFailed, EngineError)):
        return OpenAIError(500, exc.message, type="server_error", code=exc.code)
    if isinstance(exc, LeaninferError):  # a user's value the layers below refused (a timezone, a window)
        return OpenAIError(400, str(exc), code="invalid_value")
    if isinstance(exc, asyncio.CancelledError):
        return None
    return None


def outcome_of(exc: BaseException) -> tuple[int, str]:
    """``(status, error type)`` of a request that ended with ``exc``, as its ledger row records it."""
    if isinstance(exc, asyncio.CancelledError):
        return 499, "client_closed_request"
    error = to_openai(exc)
    return (error.status, error.type) if error is not None else (500, "server_error")


def _budget_error(e: BudgetExceeded) -> OpenAIError:
    """A 429 whose Retry-After says when retrying can succeed: when in-flight reservations free (a second or
    so: requests settle as they finish) if they are what blocks, else when the budget's window starts afresh;
    a lifetime budget spent has no Retry-After."""
    window = e.budget.split("_", 1)[1]
    # a budget above the key: its kind in the policy's name (never its name: a tag or user may be any text)
    name = f"{e.scope_id.partition(':')[0]}.{e.budget}" if e.scope_id else e.budget
    headers = {"RateLimit-Policy": f'"{name}";q={e.limit}'
                                   + (f";w={WINDOW_SECONDS[window]}" if window in WINDOW_SECONDS else ""),
               "RateLimit": f'"{name}";r={max(0, e.limit - e.used)}'}
    wait = 1 if e.in_flight_blocks else (_seconds_until(e.reset_at) if e.reset_at is not None else None)
    if wait is not None:
        headers["Retry-After"] = str(wait)
        headers["RateLimit"] += f";t={wait}"
    # param: the scope whose budget is spent ("team:search", "default-user"); None for the key's own
    return OpenAIError(429, e.message(), type="budget_exceeded", param=e.scope_id or None, code=e.budget,
                       headers=headers)
