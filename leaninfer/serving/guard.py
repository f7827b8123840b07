"""What every POST handler shares: reading a body, keeping the event loop free, and the guard that runs a handler
under the request timeout, answers every error as an OpenAI body with the request's id, counts its status, and
closes its admission at the gate with the status it answered.

Bodies are read and validated here (size cap -> 413, JSON and schema -> 400), so nothing a client sends reaches
a model unvalidated.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from ..finops.gate import Admission, Ask, next_request_id
from .errors import REQUEST_ID_HEADER, outcome_of, to_openai
from .labels import TAGS_HEADER, WORKFLOW_HEADER, parse_tags, workflow_label
from .protocol import OpenAIError, parse_json, validation_message
from .ratelimit_headers import COST_HEADER, limit_headers, usd_text
from .request_size import check_size

log = logging.getLogger("leaninfer.serving")

# Below these sizes tokenizing or encoding takes well under a millisecond, less than a hop to a worker thread
# costs; above, it runs in asyncio's thread pool so that the loop keeps answering (/health included) while a
# maximal request is tokenized and its answer written. The tokenizers and orjson release the GIL in C.
OFFLOAD_CHARS = 4096
OFFLOAD_FLOATS = 64 * 1024


def bearer(request: Request) -> str:
    """The key a request presents in ``Authorization: Bearer ...`` ("" when none)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


async def read_body(request: Request, schema):
    """The body validated against ``schema``; read in chunks so an oversized body is refused early."""
    limit = request.app.state.config.max_body_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise OpenAIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    data = parse_json(bytes(body))
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        msg, param = validation_message(e)
        raise OpenAIError(400, msg, param=param, code="invalid_value") from None


async def off_loop_if(big: bool, fn, *args):
    """``fn(*args)``, in a worker thread when ``big``."""
    return await asyncio.to_thread(fn, *args) if big else fn(*args)


def sized(request: Request, size: tuple[int, int], param: str) -> int:
    """The cheap size check (characters, items) against the server's limits; returns the characters."""
    cfg = request.app.state.config
    check_size(*size, param, cfg.max_request_chars, cfg.max_request_items)
    return size[0]


if sys.version_info >= (3, 11):
    async def within(aw, timeout_s: float):
        """``aw`` under a deadline (TimeoutError past it), without the extra task ``wait_for`` makes on 3.11."""
        async with asyncio.timeout(timeout_s):
            return await aw
else:  # pragma: no cover - Python 3.10
    within = asyncio.wait_for


@dataclass
class Ctx:
    """One request's way through its handler: its id, the served name once known (its metrics' label), the
    gate's admission once let through, and the body answered (what the gate may cache)."""

    endpoint: str
    request_id: str
    model: str = "-"
    admission: Admission | None = None
    body: dict | None = None
    label_error: OpenAIError | None = None

    def ask(self, request: Request, task: str) -> Ask:
        """The gate's view of this request. Its labels are checked here, at the edge; a bad one is raised by
        :meth:`check_labels` from the handler's ``read``, after the key is known (so the refusal is counted
        against the key's rpm and recorded like any other 400)."""
        headers = request.headers
        try:
            workflow = workflow_label(headers.get(WORKFLOW_HEADER, ""))
            tags = parse_tags(headers.get(TAGS_HEADER, ""))
        except OpenAIError as e:
            self.label_error, workflow, tags = e, "", {}
        return Ask(self.endpoint, task, bearer(request), workflow, tags, self.request_id)

    def check_labels(self) -> None:
        if self.label_error is not None:
            raise self.label_error


def answer_headers(adm: Admission, stream: bool) -> dict[str, str]:
    """The rate-limit headers of the key's rpm/tpm, and the charged cost of a metered answer that isn't a stream
    (a stream's cost is not known when its headers leave: :mod:`.ratelimit_headers`)."""
    out = limit_headers(adm.limits)
    if not stream and adm.row is not None and (adm.metered or adm.hit is not None):
        out[COST_HEADER] = usd_text(adm.row.cost_nusd)
    return out


_closing: set[asyncio.Task] = set()  # closes started from synchronous code, held until done


def close_soon(gate, adm: Admission, status: int, error_type: str | None = None, closing=None) -> None:
    """Close ``adm`` at ``gate`` from synchronous code (a stream's end callback); ``closing``, a coroutine that
    closes it after some cleanup of its own, runs instead when given."""
    task = asyncio.ensure_future(closing if closing is not None else gate.close(adm, status, error_type))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def guarded(request: Request, endpoint: str, handler):
    """Run ``handler(ctx)``; turn timeouts into 504, a client gone while its body was read into a 499 (later
    disconnects are :mod:`~leaninfer.serving.disconnect`'s), typed errors into their answers
    (:func:`~.errors.to_openai`), and a bug into a logged, counted 500. A stream closes its own admission when
    it ends; any other answer closes it here, so its ledger row is committed before the response leaves.
    ``request.state.arrived_at`` is when the request arrived: a stream's latency counts from there."""
    state = request.app.state
    timeout = state.config.request_timeout_s
    t0 = request.state.arrived_at = time.perf_counter()
    ctx = Ctx(endpoint, next_request_id())

    def count(status: int, err_type: str | None = None):
        model = ctx.model if ctx.model in state.served or ctx.model in state.upstreams else "-"
        state.metrics.count_request(model, endpoint, status, err_type)

    try:
        resp = await within(handler(ctx), timeout)
        if ctx.admission is not None and not isinstance(resp, StreamingResponse):  # a stream closes its own
            # the ledger row is committed before the response leaves; a row that can't be is this request's 503
            await state.gate.close(ctx.admission, resp.status_code, body=ctx.body)
    except ClientDisconnect:  # nothing reached an engine, yet the client did hang up: a cancellation too
        error = OpenAIError(499, "client disconnected", code="client_closed_request")
    except TimeoutError:
        error = OpenAIError(504, f"request not finished within --request-timeout-s {timeout}", type="timeout",
                            code="timeout")
    except Exception as e:
        error = to_openai(e)
        if error is None:
            # Answered here rather than by the app's catch-all: Starlette re-raises from that one, and uvicorn
            # then drops the keep-alive connection.
            log.error("unexpected error in %s", endpoint, exc_info=e)
            error = OpenAIError(500, f"internal error: {type(e).__name__}", type="server_error")
    else:
        if not isinstance(resp, StreamingResponse):  # a stream observes its latency when it ends
            state.metrics.e2e.labels(ctx.model, endpoint).observe(time.perf_counter() - t0)
        resp.headers[REQUEST_ID_HEADER] = ctx.request_id
        if ctx.admission is not None:
            resp.headers.update(answer_headers(ctx.admission, isinstance(resp, StreamingResponse)))
        count(resp.status_code)
        return resp
    if ctx.admission is not None:
        try:
            await state.gate.close(ctx.admission, *outcome_of(error))
        except Exception as e:  # its row could not be written either: say that instead
            error = to_openai(e) or error
    count(error.status, error.type)
    error.headers[REQUEST_ID_HEADER] = ctx.request_id
    raise error from None
