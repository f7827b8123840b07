"""The OpenAI-compatible endpoints, as module-level handlers on one router.

Bodies are read and validated here (size cap -> 413, JSON and schema -> 400, unknown model -> 404, full
queue -> 503 with Retry-After), so nothing a client sends reaches an engine unvalidated. Every error has an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``. Handlers read what they serve from
``request.app.state`` (see :mod:`leaninfer.serving.state`), so one router serves any number of apps.

The endpoint functions carry no docstrings on purpose: FastAPI would publish them in ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from ..errors import LeaninferError
from ..finops.usage import usage_payload
from .core import SamplingParams
from .disconnect import ReleasingStream, until_disconnect
from .governance import bearer
from .openai_format import (
    SSE_DONE,
    CompletionFormat,
    completion_usage,
    embedding_list,
    json_bytes,
    model_card,
    sse,
)
from .prompts import chat_prompt, completion_prompt, echo_text, embed_tokens, logit_bias
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorResponse,
    OpenAIError,
    parse_json,
    validation_message,
)
from .request_size import check_size, messages_size, text_size
from .state import ServedModel
from .ticket import Ticket, close_soon, open_ticket

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

router = APIRouter()
_REF = "#/components/schemas/{model}"
_ERROR = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}
log = logging.getLogger("leaninfer.serving")


# -- reading a request ------------------------------------------------------------------------------------
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


def _not_served(name: str, served: dict) -> OpenAIError:
    return OpenAIError(404, f"the model {name!r} does not exist; served models: {', '.join(served)}",
                       param="model", code="model_not_found")


def lookup(request: Request, name: str, task: str, ticket: Ticket | None = None,
           user: str | None = None) -> tuple[list[ServedModel], str]:
    """The served models to try for ``name``, best first (one, unless ``name`` is a route), and the route's
    name ("" for a served name)."""
    served, gate = request.app.state.served, request.app.state.finops
    if ticket is not None:
        ticket.requested(name, user)
    candidates, route = gate.choose(name, served) if gate is not None else ([served[name]] if name in served
                                                                            else [], "")
    if not candidates:
        raise _not_served(name, served)
    if candidates[0].task != task:
        raise OpenAIError(400, f"model {name!r} is a {candidates[0].task} model; this endpoint needs a {task} "
                               "model", param="model", code="wrong_task")
    return candidates, route


# -- keeping the event loop free ---------------------------------------------------------------------------
# Below these sizes tokenizing or encoding takes well under a millisecond, less than a hop to a worker thread
# costs; above, it runs in asyncio's thread pool so that the loop keeps answering (/health included) while a
# maximal request is tokenized and its answer written. The tokenizers and orjson release the GIL in C.
OFFLOAD_CHARS = 4096
OFFLOAD_FLOATS = 64 * 1024


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


# -- running a handler --------------------------------------------------------------------------------------
async def guarded(request: Request, endpoint: str, handler):
    """Run a handler; count its status; turn timeouts into 504, a client gone while its body was read into a
    499 (later disconnects are :mod:`~leaninfer.serving.disconnect`'s), and a bug into a logged, counted 500.

    ``handler(ctx)`` sets ``ctx["model"]`` once it knows the served name, so even its errors are counted
    under that model. ``request.state.arrived_at`` is when the request arrived: a stream's latency counts
    from there."""
    state = request.app.state
    timeout = state.config.request_timeout_s
    t0 = request.state.arrived_at = time.perf_counter()
    ctx = {"model": "-"}

    def count(status: int, err_type: str | None = None):
        model = ctx["model"] if ctx["model"] in state.served else "-"
        state.metrics.count_request(model, endpoint, status, err_type)

    try:
        resp = await within(handler(ctx), timeout)
    except ClientDisconnect:  # nothing reached an engine, yet the client did hang up: a cancellation too
        count(499, "client_closed_request")
        await _close(ctx, 499, "client_closed_request")
        raise OpenAIError(499, "client disconnected", code="client_closed_request") from None
    except OpenAIError as e:
        count(e.status, e.type)
        await _close(ctx, e.status, e.type)
        raise
    except TimeoutError:
        count(504, "timeout")
        await _close(ctx, 504, "timeout")
        raise OpenAIError(504, f"request not finished within --request-timeout-s {timeout}",
                          type="timeout", code="timeout") from None
    except Exception as e:
        # Answered here rather than by the app's catch-all: Starlette re-raises from that one, and uvicorn
        # then drops the keep-alive connection.
        log.error("unexpected error in %s", endpoint, exc_info=e)
        count(500, "server_error")
        await _close(ctx, 500, "server_error")
        raise OpenAIError(500, f"internal error: {type(e).__name__}", type="server_error") from None
    if not isinstance(resp, StreamingResponse):  # a stream closes its ticket when it ends
        await _close(ctx, resp.status_code)  # the ledger row is committed before the response leaves
    count(resp.status_code)
    if not isinstance(resp, StreamingResponse):  # a stream observes its own latency when it ends
        state.metrics.e2e.labels(ctx["model"], endpoint).observe(time.perf_counter() - t0)
    return resp


async def _close(ctx: dict, status: int, error_type: str | None = None) -> None:
    ticket = ctx.get("ticket")
    if ticket is not None:
        await ticket.close(status, error_type)


# Request-body models (and the models they nest) by name, for the OpenAPI's components (install_openapi).
BODY_SCHEMAS: dict[str, dict] = {"ErrorResponse": ErrorResponse.model_json_schema(ref_template=_REF)}
BODY_SCHEMAS.update(BODY_SCHEMAS["ErrorResponse"].pop("$defs"))
ERROR_STATUSES = {"400": "invalid request (the message names the parameter)", "404": "no such model",
                  "413": "request body too large", "500": "internal error", "503": "queue full or shutting down",
                  "504": "not finished within the request timeout"}


TASK_OF_BODY = {"EmbeddingRequest": "embedding", "CompletionRequest": "causal-lm",
                "ChatCompletionRequest": "causal-lm"}


def _body_doc(schema, stream: bool = False) -> dict:
    # The handlers read the raw body themselves (for the size cap), so FastAPI can't see the schema: publish
    # it. Nested models go to components/schemas, where the document's references resolve; pydantic's own
    # "#/$defs/..." would dangle once the schema sits inside the document.
    body = schema.model_json_schema(ref_template=_REF)
    BODY_SCHEMAS.update(body.pop("$defs", {}))
    BODY_SCHEMAS[schema.__name__] = body
    # a stream's schema describes one server-sent event, as OpenAPI 3.2 does: each carries a JSON chunk in data
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    ok = {"application/json": {"schema": {}}} | ({"text/event-stream": {"schema": event}} if stream else {})
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema.__name__)}}}},
            "responses": {"200": {"description": "Successful Response", "content": ok}}
            | {status: {"description": what, "content": _ERROR} for status, what in ERROR_STATUSES.items()}}


def install_openapi(app) -> None:
    """Make ``app.openapi()`` carry the request-body models that the endpoints' documentation references,
    with ``model`` listing the names this app serves for each endpoint (so a schema-driven client, a fuzzer
    say, can build requests that reach a model)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = copy.deepcopy(BODY_SCHEMAS)
            for body, task in TASK_OF_BODY.items():
                names = [s.name for s in app.state.served.values() if s.task == task]
                if names:
                    schemas[body]["properties"]["model"]["enum"] = names
            build().setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema

    app.openapi = openapi


# -- service endpoints --------------------------------------------------------------------------------------
@router.get("/health", responses={503: {"description": "draining, or an engine died"}})
async def health(request: Request):
    dead = {s.name: s.engine.dead for s in request.app.state.served.values() if s.engine.dead is not None}
    if dead:
        reason = "; ".join(f"the engine of model {name!r} died: {why}" for name, why in dead.items())
        return JSONResponse({"status": "engine_dead", "reason": reason}, status_code=503)
    if request.app.state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return {"status": "ok", "models": list(request.app.state.served)}


@router.get("/metrics", response_class=PlainTextResponse)  # documents text/plain (Prometheus' format)
async def metrics_endpoint(request: Request):
    metrics = request.app.state.metrics
    for s in request.app.state.served.values():
        metrics.utilization.labels(s.name).set(s.engine.busy.fraction())
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/usage", responses={401: {"description": "no admin key", "content": _ERROR},
                                    404: {"description": "this server keeps no ledger", "content": _ERROR}})
async def usage(request: Request, by: str = "team", period: str | None = None, since: str | None = None,
                until: str | None = None, tz: str = "UTC"):
    gate = request.app.state.finops
    if gate is None or gate.store is None:
        raise OpenAIError(404, "this server keeps no ledger: start it with --store", code="no_ledger")
    key = gate.key_for(bearer(request))
    if key is None or not key.policy.admin:
        raise OpenAIError(401, "/v1/usage needs an admin key (leaninfer keys create --admin)",
                          code="invalid_api_key")
    try:
        return await asyncio.to_thread(usage_payload, gate.store, by.split(","), period, since, until, tz)
    except LeaninferError as e:
        raise OpenAIError(400, str(e), code="invalid_value") from None


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [model_card(s.name, s.created, s.info)
                                       for s in request.app.state.served.values()]}


@router.get("/v1/models/{name:path}", responses={404: {"description": "no such model", "content": _ERROR}})
async def get_model(name: str, request: Request):
    served = request.app.state.served
    if name not in served:
        raise _not_served(name, served)
    s = served[name]
    return model_card(s.name, s.created, s.info)


# -- embeddings ---------------------------------------------------------------------------------------------
@router.post("/v1/embeddings", openapi_extra=_body_doc(EmbeddingRequest))
async def embeddings(request: Request):
    async def handler(ctx):
        ticket = ctx["ticket"] = open_ticket(request, "embeddings")
        req = await read_body(request, EmbeddingRequest)
        candidates, route = lookup(request, req.model, "embedding", ticket, req.user)
        chars = sized(request, text_size(req.input), "input")
        for i, s in enumerate(candidates):  # a route falls back to its next variant when one is overloaded
            ctx["model"] = s.name
            tokens = await off_loop_if(chars > OFFLOAD_CHARS, embed_tokens, s, req.input)
            n_tokens = sum(len(t) for t in tokens)
            if ticket is not None:
                await ticket.use(s, route)
                await ticket.admit(n_tokens, 0)
                hit = await ticket.cached(req.model_dump(exclude_none=True))
                if hit is not None:
                    return Response(await off_loop_if(chars > OFFLOAD_CHARS, json_bytes, hit),
                                    media_type="application/json")
            try:
                vectors, meter = await until_disconnect(request, s.engine.embed(tokens))
                break
            except OpenAIError as e:
                if e.status != 503 or i + 1 == len(candidates):
                    raise
        dim = vectors.shape[1]
        if req.dimensions is not None and req.dimensions != dim:
            raise OpenAIError(400, f"dimensions={req.dimensions} is not served: {s.name} gives {dim}",
                              param="dimensions", code="invalid_value")
        request.app.state.metrics.observe_embedding(s.name, n_tokens, meter)
        extras = ticket.settle(meter, n_tokens, 0) if ticket is not None else meter.to_dict()
        body = embedding_list(s.name, vectors, req.encoding_format, n_tokens, extras)
        if ticket is not None:
            await ticket.remember(body)
        return Response(await off_loop_if(vectors.size > OFFLOAD_FLOATS, json_bytes, body),
                        media_type="application/json")
    return await guarded(request, "embeddings", handler)


# -- generation ---------------------------------------------------------------------------------------------
@router.post("/v1/completions", openapi_extra=_body_doc(CompletionRequest, stream=True))
async def completions(request: Request):
    async def handler(ctx):
        ctx["ticket"] = open_ticket(request, "completions")
        req = await read_body(request, CompletionRequest)
        big = sized(request, text_size(req.prompt), "prompt") > OFFLOAD_CHARS
        return await _generate(request, ctx, req, lambda s: off_loop_if(big, completion_prompt, s, req.prompt),
                               chat=False)
    return await guarded(request, "completions", handler)


@router.post("/v1/chat/completions", openapi_extra=_body_doc(ChatCompletionRequest, stream=True))
async def chat_completions(request: Request):
    async def handler(ctx):
        ctx["ticket"] = open_ticket(request, "chat.completions")
        req = await read_body(request, ChatCompletionRequest)
        big = sized(request, messages_size(req.messages), "messages") > OFFLOAD_CHARS
        return await _generate(request, ctx, req, lambda s: off_loop_if(big, chat_prompt, s, req.messages),
                               chat=True)
    return await guarded(request, "chat.completions", handler)


def _sampling(s: ServedModel, req, n_prompt: int, chat: bool) -> SamplingParams:
    # The context check holds whatever the client omitted: a prompt that leaves no room for one token is
    # refused before it reaches the engine (where prefill would fail on it).
    limit = s.model.max_seq_length
    if n_prompt >= limit:
        what = "messages" if chat else "prompt"
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the {what} have "
                               f"{n_prompt}, leaving no room for a completion", param=what,
                          code="context_length_exceeded")
    name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    # an omitted max_tokens defaults to OpenAI's value, shrunk to the room the prompt leaves
    max_tokens = asked or min(DEFAULT_CHAT_MAX_TOKENS if chat else DEFAULT_COMPLETION_MAX_TOKENS, limit - n_prompt)
    if n_prompt + max_tokens > limit:
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                               f"{n_prompt} and {name} is {max_tokens}: at most {limit - n_prompt}", param=name,
                          code="context_length_exceeded")
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          stop=list(req.stop or []), ignore_eos=req.ignore_eos,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=logit_bias(s, req.logit_bias))


def _finish(request: Request, s: ServedModel, handle, n_prompt: int, ticket: Ticket | None) -> dict:
    """Record a finished generation's metrics and settle its cost; return its ``usage``."""
    meter = handle.meter()
    request.app.state.metrics.observe_generation(s.name, n_prompt, handle.seq, meter)
    n_out = len(handle.seq.output)
    extras = ticket.settle(meter, n_prompt, n_out) if ticket is not None else meter.to_dict()
    return completion_usage(n_prompt, n_out, extras)


def _settle_unfinished(ticket: Ticket | None, handle, n_prompt: int) -> None:
    """A generation that ended without its usage (hang-up, timeout, failure) is charged what it spent."""
    if ticket is not None and ticket.meter is None:
        ticket.settle(handle.meter(), n_prompt, len(handle.seq.output))


def _stream_ended(request: Request, s: ServedModel, handle, endpoint: str, outcome: str, ticket: Ticket | None,
                  n_prompt: int) -> None:
    """A stream's response ended (see :class:`ReleasingStream`): free its slot, count a hang-up or a failure,
    and settle and record it if it ended early."""
    handle.cancel()  # a no-op once the sequence finished; otherwise it leaves the batch at the next step
    metrics = request.app.state.metrics
    if outcome == "cancelled":
        metrics.cancelled.labels(s.name).inc()
    elif outcome == "error":
        metrics.server_errors.labels(endpoint, "500").inc()
    _settle_unfinished(ticket, handle, n_prompt)
    close_soon(ticket, 499 if outcome == "cancelled" else 500, "client_closed_request" if outcome == "cancelled"
               else "server_error")


async def _generate(request: Request, ctx: dict, req, make_prompt, chat: bool):
    ticket: Ticket | None = ctx["ticket"]
    candidates, route = lookup(request, req.model, "causal-lm", ticket, req.user)
    for i, s in enumerate(candidates):  # a route falls back to its next variant when one is overloaded
        ctx["model"] = s.name
        prompt = await make_prompt(s)
        # Everything that may raise comes before submit: from submit on, every path must end the sequence.
        fmt = CompletionFormat(s.name, chat, echo=echo_text(s, req.prompt, prompt) if getattr(req, "echo", 0)
                               else "")
        params = _sampling(s, req, len(prompt), chat)
        if ticket is not None:
            await ticket.use(s, route)
            await ticket.admit(len(prompt), params.max_tokens)
            hit = await ticket.cached(req.model_dump(exclude_none=True))
            if hit is not None:
                return JSONResponse(hit)
        try:
            handle = s.engine.submit(prompt, params)
            break
        except OpenAIError as e:
            if e.status != 503 or i + 1 == len(candidates):
                raise
    n_prompt = len(prompt)
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        endpoint = "chat.completions" if chat else "completions"
        return ReleasingStream(_stream(request, s, handle, fmt, include_usage, n_prompt, ticket),
                               on_end=lambda outcome: _stream_ended(request, s, handle, endpoint, outcome, ticket,
                                                                    n_prompt),
                               media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def collect():
        parts, reason = [], None
        async for ev in handle:
            parts.append(ev.text)
            if ev.finish_reason:
                reason, error = ev.finish_reason, ev.error
        if reason == "error":
            raise OpenAIError(500, f"generation failed: {error}", type="server_error")
        return "".join(parts), reason

    try:
        text, reason = await until_disconnect(request, collect())
    except BaseException:  # disconnect (counted by guarded, as a 499), timeout or error: charge its work
        _settle_unfinished(ticket, handle, n_prompt)
        raise
    finally:  # and stop the sequence
        handle.cancel()
    body = fmt.response(text, reason, _finish(request, s, handle, n_prompt, ticket))
    if ticket is not None:
        await ticket.remember(body)
    return JSONResponse(body)


async def _stream(request: Request, s: ServedModel, handle, fmt: CompletionFormat, include_usage: bool,
                  n_prompt: int, ticket: Ticket | None):
    """The SSE body. Its :class:`ReleasingStream` frees the slot and counts hang-ups, however it ends; the
    ledger row of a complete stream is committed before its usage chunk and ``[DONE]`` leave."""
    metrics = request.app.state.metrics
    endpoint = "chat.completions" if fmt.chat else "completions"
    status, error_type = 200, None
    if fmt.chat or fmt.echo:
        yield fmt.chunk(first=True)
    async for ev in handle:
        if ev.finish_reason == "error":
            metrics.server_errors.labels(endpoint, "500").inc()  # the status line said 200; the error is a 5xx
            status, error_type = 500, "server_error"
            yield sse(OpenAIError(500, f"generation failed: {ev.error}", type="server_error").body())
            break
        if ev.text:
            yield fmt.chunk(ev.text)
        if ev.finish_reason:
            yield fmt.chunk(None, ev.finish_reason)
    usage = _finish(request, s, handle, n_prompt, ticket)
    if ticket is not None:
        await ticket.close(status, error_type)
    if include_usage:
        yield fmt.usage_chunk(usage)
    yield SSE_DONE
    metrics.e2e.labels(s.name, endpoint).observe(time.perf_counter() - request.state.arrived_at)


# POST endpoints that take only the Request and answer every error themselves: the app calls them straight
# from its ASGI entry (fast_path.py), bypassing FastAPI's middleware and routing.
FAST_ROUTES = {"/v1/embeddings": embeddings, "/v1/completions": completions,
               "/v1/chat/completions": chat_completions}
