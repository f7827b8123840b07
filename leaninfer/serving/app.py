"""The thin HTTP layer: OpenAI-compatible endpoints over the engines.

Bodies are read and validated here (size cap -> 413, JSON and schema -> 400, unknown model -> 404, full
queue -> 503 with Retry-After), so nothing a client sends reaches an engine unvalidated. Every error has an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .core import SamplingParams
from .engine import BatchingConfig, EmbeddingEngine, GenerationEngine
from .metrics import ServerMetrics
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    validation_message,
)

MAX_EMBED_INPUTS = 2048
DEFAULT_CHAT_MAX_TOKENS = 256


@dataclass
class ServedModel:
    name: str
    model: object  # leaninfer.models.Model
    engine: EmbeddingEngine | GenerationEngine
    created: int

    @property
    def task(self) -> str:
        return self.model.task


@dataclass
class ServerConfig:
    batching: BatchingConfig
    usd_per_hour: float = 0.0
    request_timeout_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024
    drain_timeout_s: float = 30.0


def build_models(models: dict[str, object], config: ServerConfig, metrics: ServerMetrics) -> list[ServedModel]:
    """Wrap loaded handles (name -> Model) in engines (not started yet)."""
    served = []
    for name, m in models.items():
        cls = EmbeddingEngine if m.task == "embedding" else GenerationEngine
        served.append(ServedModel(name, m, cls(m, name, config.batching, metrics, config.usd_per_hour),
                                  int(time.time())))
    return served


def create_app(models: dict[str, object], config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving ``models`` (name -> loaded :class:`~leaninfer.models.Model`).

    Example:
        >>> import leaninfer
        >>> app = create_app({"minilm": leaninfer.load("minilm")})   # doctest: +SKIP
        >>> # uvicorn.run(app)  or  httpx.AsyncClient(transport=httpx.ASGITransport(app))
    """
    config = config or ServerConfig(BatchingConfig())
    metrics = ServerMetrics()
    served = {s.name: s for s in build_models(models, config, metrics)}
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        try:
            yield
        finally:  # SIGTERM: uvicorn stops accepting and waits for open requests; then the engines drain
            state["draining"] = True
            await asyncio.gather(*(asyncio.to_thread(s.engine.stop, config.drain_timeout_s)
                                   for s in served.values()))

    app = FastAPI(title="leaninfer", version="1", lifespan=lifespan,
                  description="OpenAI-compatible serving of leaninfer models, with batching and metering.")
    app.state.served, app.state.metrics, app.state.config = served, metrics, config

    # -- errors -------------------------------------------------------------------------------------------
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        e = OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                        type="invalid_request_error", code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(e.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: still an OpenAI-shaped body
        e = OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(e.body(), status_code=500)

    # -- helpers ------------------------------------------------------------------------------------------
    async def parse(request: Request, schema):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise OpenAIError(413, f"request body larger than {config.max_body_bytes} bytes",
                                  code="request_too_large")
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

    def lookup(name: str, task: str) -> ServedModel:
        s = served.get(name)
        if s is None:
            raise OpenAIError(404, f"the model {name!r} does not exist; served models: {', '.join(served)}",
                              param="model", code="model_not_found")
        if s.task != task:
            raise OpenAIError(400, f"model {name!r} is a {s.task} model; this endpoint needs a {task} model",
                              param="model", code="wrong_task")
        return s

    def record(model: str, endpoint: str, status: int, err_type: str | None = None):
        model = model if model in served else "-"
        metrics.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            metrics.errors.labels(model, endpoint, str(status), err_type or "error").inc()

    async def guarded(request: Request, endpoint: str, handler):
        """Run a handler; count its status; turn timeouts into 504 and disconnects into cancellation."""
        t0 = time.perf_counter()
        ctx = {"model": "-"}
        try:
            resp = await asyncio.wait_for(handler(ctx), timeout=config.request_timeout_s)
        except OpenAIError as e:
            record(ctx["model"], endpoint, e.status, e.type)
            raise
        except TimeoutError:
            record(ctx["model"], endpoint, 504, "timeout")
            raise OpenAIError(504, f"request not finished within --request-timeout-s {config.request_timeout_s}",
                              type="timeout", code="timeout") from None
        model = ctx["model"]
        record(model, endpoint, resp.status_code)
        if not isinstance(resp, StreamingResponse):
            metrics.e2e.labels(model, endpoint).observe(time.perf_counter() - t0)
        return resp

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

    # -- endpoints ----------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok", "models": list(served)}

    @app.get("/metrics")
    async def metrics_endpoint():
        for s in served.values():
            metrics.utilization.labels(s.name).set(s.engine.busy.fraction())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card(s: ServedModel) -> dict:
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "leaninfer",
                "task": s.task, "backend": s.model.backend, "precision": s.model.precision,
                "weights": s.model.weights, "max_seq_length": s.model.max_seq_length}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name not in served:
            raise OpenAIError(404, f"the model {name!r} does not exist; served models: {', '.join(served)}",
                              param="model", code="model_not_found")
        return model_card(served[name])

    def body_doc(schema) -> dict:
        return {"requestBody": {"required": True,
                                "content": {"application/json": {"schema": schema.model_json_schema()}}}}

    @app.post("/v1/embeddings", openapi_extra=body_doc(EmbeddingRequest))
    async def embeddings(request: Request):
        async def handler(ctx):
            req = await parse(request, EmbeddingRequest)
            s = lookup(req.model, "embedding")
            ctx["model"] = s.name
            tokens = _embed_tokens(s, req.input)
            vectors, meter = await until_disconnect(request, s.engine.embed(tokens))
            dim = vectors.shape[1]
            if req.dimensions is not None and req.dimensions != dim:
                raise OpenAIError(400, f"dimensions={req.dimensions} is not served: {s.name} gives {dim}",
                                  param="dimensions", code="invalid_value")
            n_tokens = sum(len(t) for t in tokens)
            metrics.input_tokens.labels(s.name).inc(n_tokens)
            metrics.queue_time.labels(s.name).observe(meter.queue_s)
            extras = meter.to_dict()
            metrics.cost.labels(s.name).inc(extras["cost_usd"])
            data = [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                    for i, v in enumerate(vectors)]
            return JSONResponse({"object": "list", "data": data, "model": s.name,
                                 "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens,
                                           "leaninfer": extras}})
        return await guarded(request, "embeddings", handler)

    @app.post("/v1/completions", openapi_extra=body_doc(CompletionRequest))
    async def completions(request: Request):
        async def handler(ctx):
            req = await parse(request, CompletionRequest)
            s = lookup(req.model, "causal-lm")
            ctx["model"] = s.name
            prompt = _completion_prompt(s, req.prompt)
            return await generate(request, s, req, prompt, chat=False)
        return await guarded(request, "completions", handler)

    @app.post("/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
    async def chat_completions(request: Request):
        async def handler(ctx):
            req = await parse(request, ChatCompletionRequest)
            s = lookup(req.model, "causal-lm")
            ctx["model"] = s.name
            prompt = _chat_prompt(s, req.messages)
            return await generate(request, s, req, prompt, chat=True)
        return await guarded(request, "chat.completions", handler)

    async def generate(request: Request, s: ServedModel, req, prompt: list[int], chat: bool):
        limit = s.model.max_seq_length
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        max_tokens = asked or (min(DEFAULT_CHAT_MAX_TOKENS, limit - len(prompt)) if chat else 16)
        if len(prompt) + max_tokens > limit:
            raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                                   f"{len(prompt)} and max_tokens is {max_tokens}", param="max_tokens",
                              code="context_length_exceeded")
        params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=list(req.stop or []), ignore_eos=req.ignore_eos)
        handle = s.engine.submit(prompt, params)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        if req.stream:
            return StreamingResponse(stream(s, handle, rid, created, chat, include_usage, len(prompt)),
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
        finally:
            if handle.seq.finish_reason is None:
                metrics.cancelled.labels(s.name).inc()
            handle.cancel()  # no-op when finished; frees the slot on disconnect, timeout or error
        usage = finish_metrics(s, handle, len(prompt))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                   "logprobs": None} if chat else
                  {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": s.name, "choices": [choice],
                             "usage": usage})

    def finish_metrics(s: ServedModel, handle, n_prompt: int) -> dict:
        seq, meter = handle.seq, handle.meter()
        n_out = len(seq.output)
        metrics.input_tokens.labels(s.name).inc(n_prompt)
        metrics.output_tokens.labels(s.name).inc(n_out)
        metrics.queue_time.labels(s.name).observe(meter.queue_s)
        if meter.ttft_s is not None:
            metrics.ttft.labels(s.name).observe(meter.ttft_s)
        if n_out > 1 and seq.first_token_at and seq.finished_at:
            metrics.itl.labels(s.name).observe((seq.finished_at - seq.first_token_at) / (n_out - 1))
        extras = meter.to_dict()
        metrics.cost.labels(s.name).inc(extras["cost_usd"])
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out,
                "leaninfer": extras}

    async def stream(s: ServedModel, handle, rid, created, chat, include_usage, n_prompt):
        t0 = time.perf_counter()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text=None, reason=None, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
                choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            return _sse({"id": rid, "object": obj, "created": created, "model": s.name, "choices": [choice]})

        try:
            if chat:
                yield chunk(first=True)
            async for ev in handle:
                if ev.finish_reason == "error":
                    yield _sse(OpenAIError(500, f"generation failed: {ev.error}", type="server_error").body())
                    break
                if ev.text:
                    yield chunk(ev.text)
                if ev.finish_reason:
                    yield chunk(None, ev.finish_reason)
            usage = finish_metrics(s, handle, n_prompt)
            metrics.e2e.labels(s.name, "chat.completions" if chat else "completions").observe(time.perf_counter() - t0)
            if include_usage:
                yield _sse({"id": rid, "object": obj, "created": created, "model": s.name, "choices": [],
                            "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:  # the client went away (generator closed) or we are done: free the slot either way
            if handle.seq.finish_reason is None:
                metrics.cancelled.labels(s.name).inc()
            handle.cancel()

    return app


# --------------------------------------------------------------------------------------------------------
# request -> tokens


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _encode(v: np.ndarray, fmt: str):
    v = np.asarray(v, dtype=np.float32)
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v.tolist()


def _check_ids(s: ServedModel, ids: list[int], param: str) -> list[int]:
    vocab = len(s.model.tokenizer)
    vocab = max(vocab, getattr(s.model.config, "vocab_size", 0) or 0)
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise OpenAIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})", param=param,
                          code="invalid_value")
    return list(ids)


def _embed_tokens(s: ServedModel, inp) -> list[list[int]]:
    if isinstance(inp, str):
        inp = [inp]
    if len(inp) > MAX_EMBED_INPUTS:
        raise OpenAIError(400, f"{len(inp)} inputs in one request; at most {MAX_EMBED_INPUTS}", param="input",
                          code="too_many_inputs")
    if isinstance(inp[0], int):
        inp = [inp]
    limit = s.model.max_seq_length
    out = []
    for i, x in enumerate(inp):
        ids = _check_ids(s, x, "input") if isinstance(x, list) else s.model.tokenizer(x)["input_ids"]
        if len(ids) > limit:
            raise OpenAIError(400, f"input[{i}] has {len(ids)} tokens; model {s.name!r} takes at most {limit}",
                              param="input", code="context_length_exceeded")
        out.append(list(ids))
    return out


def _completion_prompt(s: ServedModel, prompt) -> list[int]:
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise OpenAIError(400, f"{len(prompt)} prompts in one request; send one prompt per request",
                              param="prompt", code="invalid_value")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt:
            raise OpenAIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        return _check_ids(s, prompt, "prompt")
    ids = s.model.tokenizer(prompt)["input_ids"]
    if not ids:  # an empty string on a tokenizer without special tokens: start from BOS/EOS
        bos = s.model.tokenizer.bos_token_id
        ids = [bos if bos is not None else (s.model.eos_token_id or 0)]
    return list(ids)


def _chat_prompt(s: ServedModel, messages) -> list[int]:
    tok = s.model.tokenizer
    msgs = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # a template that refuses this conversation (e.g. roles out of order)
        raise OpenAIError(400, f"the model's chat template rejected the messages: {e}", param="messages",
                          code="invalid_value") from None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return list(ids) or [tok.bos_token_id or 0]


async def _wait_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return
