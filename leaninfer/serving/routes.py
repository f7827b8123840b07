"""The OpenAI-compatible endpoints, as module-level handlers on one router.

Bodies are read and validated here (size cap -> 413, JSON and schema -> 400, unknown model -> 404, full
queue -> 503 with Retry-After), so nothing a client sends reaches an engine unvalidated. Every error has an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``. Handlers read what they serve from
``request.app.state`` (see :mod:`leaninfer.serving.state`), so one router serves any number of apps.

The endpoint functions carry no docstrings on purpose: FastAPI would publish them in ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from .core import SamplingParams
from .openai_format import SSE_DONE, CompletionFormat, completion_usage, embedding_list, model_card, sse
from .prompts import chat_prompt, completion_prompt, embed_tokens
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    validation_message,
)
from .state import ServedModel

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

router = APIRouter()


# -- reading a request ------------------------------------------------------------------------------------
async def read_body(request: Request, schema):
    """The body validated against ``schema``; read in chunks so an oversized body is refused early."""
    limit = request.app.state.config.max_body_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise OpenAIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise OpenAIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        msg, param = validation_message(e)
        raise OpenAIError(400, msg, param=param, code="invalid_value") from None


def _not_served(name: str, served: dict) -> OpenAIError:
    return OpenAIError(404, f"the model {name!r} does not exist; served models: {', '.join(served)}",
                       param="model", code="model_not_found")


def lookup(request: Request, name: str, task: str) -> ServedModel:
    served = request.app.state.served
    s = served.get(name)
    if s is None:
        raise _not_served(name, served)
    if s.task != task:
        raise OpenAIError(400, f"model {name!r} is a {s.task} model; this endpoint needs a {task} model",
                          param="model", code="wrong_task")
    return s


# -- running a handler --------------------------------------------------------------------------------------
async def guarded(request: Request, endpoint: str, handler):
    """Run a handler; count its status; turn timeouts into 504 (disconnects are :func:`until_disconnect`'s).

    ``handler(ctx)`` sets ``ctx["model"]`` once it knows the served name, so even its errors are counted
    under that model."""
    state = request.app.state
    timeout = state.config.request_timeout_s
    t0 = time.perf_counter()
    ctx = {"model": "-"}

    def count(status: int, err_type: str | None = None):
        model = ctx["model"] if ctx["model"] in state.served else "-"
        state.metrics.count_request(model, endpoint, status, err_type)

    try:
        resp = await asyncio.wait_for(handler(ctx), timeout=timeout)
    except OpenAIError as e:
        count(e.status, e.type)
        raise
    except TimeoutError:
        count(504, "timeout")
        raise OpenAIError(504, f"request not finished within --request-timeout-s {timeout}",
                          type="timeout", code="timeout") from None
    count(resp.status_code)
    if not isinstance(resp, StreamingResponse):  # a stream observes its own latency when it ends
        state.metrics.e2e.labels(ctx["model"], endpoint).observe(time.perf_counter() - t0)
    return resp


async def _wait_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, aw):
    """Await ``aw``, cancelling it if the client goes away first."""
    task = asyncio.ensure_future(aw)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise OpenAIError(499, "client disconnected", code="client_closed_request")
        return task.result()
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()


def _body_doc(schema) -> dict:
    # The handlers read the raw body themselves (for the size cap), so FastAPI can't see the schema: publish it.
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema.model_json_schema()}}}}


# -- service endpoints --------------------------------------------------------------------------------------
@router.get("/health")
async def health(request: Request):
    if request.app.state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return {"status": "ok", "models": list(request.app.state.served)}


@router.get("/metrics")
async def metrics_endpoint(request: Request):
    metrics = request.app.state.metrics
    for s in request.app.state.served.values():
        metrics.utilization.labels(s.name).set(s.engine.busy.fraction())
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [model_card(s.name, s.created, s.info)
                                       for s in request.app.state.served.values()]}


@router.get("/v1/models/{name:path}")
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
        req = await read_body(request, EmbeddingRequest)
        s = lookup(request, req.model, "embedding")
        ctx["model"] = s.name
        tokens = embed_tokens(s, req.input)
        vectors, meter = await until_disconnect(request, s.engine.embed(tokens))
        dim = vectors.shape[1]
        if req.dimensions is not None and req.dimensions != dim:
            raise OpenAIError(400, f"dimensions={req.dimensions} is not served: {s.name} gives {dim}",
                              param="dimensions", code="invalid_value")
        n_tokens = sum(len(t) for t in tokens)
        request.app.state.metrics.observe_embedding(s.name, n_tokens, meter)
        return JSONResponse(embedding_list(s.name, vectors, req.encoding_format, n_tokens, meter.to_dict()))
    return await guarded(request, "embeddings", handler)


# -- generation ---------------------------------------------------------------------------------------------
@router.post("/v1/completions", openapi_extra=_body_doc(CompletionRequest))
async def completions(request: Request):
    async def handler(ctx):
        req = await read_body(request, CompletionRequest)
        s = lookup(request, req.model, "causal-lm")
        ctx["model"] = s.name
        return await _generate(request, s, req, completion_prompt(s, req.prompt), chat=False)
    return await guarded(request, "completions", handler)


@router.post("/v1/chat/completions", openapi_extra=_body_doc(ChatCompletionRequest))
async def chat_completions(request: Request):
    async def handler(ctx):
        req = await read_body(request, ChatCompletionRequest)
        s = lookup(request, req.model, "causal-lm")
        ctx["model"] = s.name
        return await _generate(request, s, req, chat_prompt(s, req.messages), chat=True)
    return await guarded(request, "chat.completions", handler)


def _sampling(s: ServedModel, req, n_prompt: int, chat: bool) -> SamplingParams:
    limit = s.model.max_seq_length
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    max_tokens = asked or (min(DEFAULT_CHAT_MAX_TOKENS, limit - n_prompt) if chat else DEFAULT_COMPLETION_MAX_TOKENS)
    if max_tokens < 1:  # the chat default shrinks to the room left: messages that fill the context leave none
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the messages have "
                               f"{n_prompt}", param="messages", code="context_length_exceeded")
    if n_prompt + max_tokens > limit:
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                               f"{n_prompt} and max_tokens is {max_tokens}", param="max_tokens",
                          code="context_length_exceeded")
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          stop=list(req.stop or []), ignore_eos=req.ignore_eos)


def _finish(request: Request, s: ServedModel, handle, n_prompt: int) -> dict:
    """Record a finished generation's metrics; return its ``usage``."""
    meter = handle.meter()
    request.app.state.metrics.observe_generation(s.name, n_prompt, handle.seq, meter)
    return completion_usage(n_prompt, len(handle.seq.output), meter.to_dict())


def _release(request: Request, s: ServedModel, handle) -> None:
    """Free the engine slot (a no-op when finished); a generation stopped early counts as cancelled."""
    if handle.seq.finish_reason is None:
        request.app.state.metrics.cancelled.labels(s.name).inc()
    handle.cancel()


async def _generate(request: Request, s: ServedModel, req, prompt: list[int], chat: bool):
    handle = s.engine.submit(prompt, _sampling(s, req, len(prompt), chat))
    fmt = CompletionFormat(s.name, chat)
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream(request, s, handle, fmt, include_usage, len(prompt)),
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
    finally:  # disconnect, timeout or error
        _release(request, s, handle)
    return JSONResponse(fmt.response(text, reason, _finish(request, s, handle, len(prompt))))


async def _stream(request: Request, s: ServedModel, handle, fmt: CompletionFormat, include_usage: bool,
                  n_prompt: int):
    t0 = time.perf_counter()
    try:
        if fmt.chat:
            yield fmt.chunk(first=True)
        async for ev in handle:
            if ev.finish_reason == "error":
                yield sse(OpenAIError(500, f"generation failed: {ev.error}", type="server_error").body())
                break
            if ev.text:
                yield fmt.chunk(ev.text)
            if ev.finish_reason:
                yield fmt.chunk(None, ev.finish_reason)
        usage = _finish(request, s, handle, n_prompt)
        endpoint = "chat.completions" if fmt.chat else "completions"
        request.app.state.metrics.e2e.labels(s.name, endpoint).observe(time.perf_counter() - t0)
        if include_usage:
            yield fmt.usage_chunk(usage)
        yield SSE_DONE
    finally:  # the client went away (generator closed) or we are done: free the slot either way
        _release(request, s, handle)
