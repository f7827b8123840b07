"""``POST /v1/completions`` and ``/v1/chat/completions``: read, admit at the gate, generate (whole or streamed),
finish, answer. Every path that submitted a sequence ends it, and charges the engine time it spent.

The endpoint functions carry no docstrings on purpose: FastAPI would publish them in ``/openapi.json``.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import JSONResponse

from ..engines.core import SamplingParams
from ..finops.gate import Admission, Plan
from ..finops.variant import Variant
from ..models.grammar import UnsupportedSchemaError, json_grammar
from .choices import Choices
from .disconnect import ReleasingStream, until_disconnect
from .errors import to_openai
from .forward import Forwarding
from .guard import OFFLOAD_CHARS, Ctx, close_soon, guarded, off_loop_if, read_body, sized
from .logprob_format import token_texts
from .openai_format import SSE_DONE, CompletionFormat, completion_usage, sse
from .prompts import chat_prompt, completion_prompt, echo_text, logit_bias
from .protocol import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    answer_params,
    constraint,
)
from .request_size import messages_size, text_size
from .state import ServedModel
from .tools import ToolPlan


async def completions(request: Request):
    async def handler(ctx: Ctx):
        return await _generate(request, ctx, CompletionRequest, chat=False)
    return await guarded(request, "completions", handler)


async def chat_completions(request: Request):
    async def handler(ctx: Ctx):
        return await _generate(request, ctx, ChatCompletionRequest, chat=True)
    return await guarded(request, "chat.completions", handler)


def _sampling(s: ServedModel, req, n_prompt: int, chat: bool, grammar) -> SamplingParams:
    # The context check holds whatever the client omitted: a prompt that leaves no room for one token is
    # refused before it reaches the engine (where prefill would fail on it).
    limit = s.model.max_seq_length
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    # max_tokens=0 (completions): the prompt alone, scored with echo + logprobs; it may fill the context
    if n_prompt > limit or (n_prompt == limit and asked != 0):
        what = "messages" if chat else "prompt"
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the {what} have "
                               f"{n_prompt}, leaving no room for a completion", param=what,
                          code="context_length_exceeded")
    name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    # an omitted max_tokens defaults to OpenAI's value, shrunk to the room the prompt leaves
    max_tokens = asked if asked is not None else min(DEFAULT_CHAT_MAX_TOKENS if chat
                                                     else DEFAULT_COMPLETION_MAX_TOKENS, limit - n_prompt)
    if n_prompt + max_tokens > limit:
        raise OpenAIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                               f"{n_prompt} and {name} is {max_tokens}: at most {limit - n_prompt}", param=name,
                          code="context_length_exceeded")
    if chat:  # logprobs: the sampled tokens' (and best_of's ranking needs them); echo: the prompt's too
        logprobs, prompt_logprobs = ((req.top_logprobs or 0) if req.logprobs else None), None
    else:
        ranked = (req.best_of or req.n) > req.n
        logprobs = req.logprobs if req.logprobs is not None else (0 if ranked else None)
        prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          stop=list(req.stop or []), ignore_eos=req.ignore_eos,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=logit_bias(s, req.logit_bias), logprobs=logprobs,
                          prompt_logprobs=prompt_logprobs, grammar=grammar)


def _grammar(s: ServedModel, response_format, param: str = "response_format"):
    try:
        return json_grammar(s.model, constraint(response_format))
    except UnsupportedSchemaError as e:
        what = "a function's parameters schema" if param == "tools" else "this JSON schema"
        raise OpenAIError(400, f"{param}: {what} is not supported: {e}", param=param,
                          code="unsupported_schema") from None


async def _generate(request: Request, ctx: Ctx, schema, chat: bool):
    state = request.app.state
    gate = state.gate
    req = None
    big = False
    prompt: list[int] = []
    fmt: CompletionFormat | None = None
    choices: Choices | None = None
    fwd: Forwarding | None = None

    async def read():
        nonlocal req, big
        ctx.check_labels()
        req = await read_body(request, schema)
        size = messages_size(req.messages, req.tools) if chat else text_size(req.prompt)
        big = sized(request, size, "messages" if chat else "prompt") > OFFLOAD_CHARS
        return req.model, req.user

    async def plan(v: Variant) -> Plan:
        nonlocal prompt, fmt, choices, fwd
        ctx.model = v.name
        if v.upstream:
            fwd = Forwarding.of(request, ctx.endpoint, req, state.upstreams[v.name])
            return fwd.plan(request)
        s = state.served[v.name]
        tools = ToolPlan(req, s.model.tokenizer) if chat and req.tool_mode() is not None else None
        prompt = await (off_loop_if(big, chat_prompt, s, req.messages, tools) if chat
                        else off_loop_if(big, completion_prompt, s, req.prompt))
        # Everything that may refuse comes before submit: from submit on, every path must end the sequence.
        fmt = CompletionFormat(s.name, chat, echo=echo_text(s, req.prompt, prompt) if getattr(req, "echo", 0)
                               else "")
        # a schema's grammar is compiled off the loop: a tokenizer's first one is converted (~0.3 s)
        constrained = tools.response_format() if tools is not None else None
        fmt_param = "tools" if constrained else "response_format"
        constrained = constrained or req.response_format
        grammar = await off_loop_if(constrained is not None, _grammar, s, constrained, fmt_param)
        params = _sampling(s, req, len(prompt), chat, grammar)
        generated = req.n if chat else (req.best_of or req.n)
        choices = Choices(fmt, token_texts(s.model.tokenizer), prompt, req.n, generated,
                          logprobs=bool(req.logprobs) if chat else req.logprobs is not None,
                          scored_prompt=params.prompt_logprobs is not None, tools=tools)
        # a stream is answered as it is generated: never from the cache
        cacheable = None if req.stream else answer_params(req)
        # The worst case of the work: every candidate to max_tokens, their prompt prefilled once; scoring the
        # prompt runs the LM head over each prompt position, reserved as a generated token each (more than it
        # costs: a decode step runs the whole model).
        worst_out = generated * params.max_tokens + (len(prompt) if params.prompt_logprobs is not None else 0)
        return Plan(len(prompt), worst_out, cacheable, lambda: s.engine.submit(prompt, params, generated))

    adm = ctx.admission = await gate.admit(ctx.ask(request, "causal-lm"), read, plan)
    if adm.hit is not None:
        return JSONResponse(adm.hit)
    if adm.variant.upstream:
        return await fwd.answer(request, ctx, adm)
    s, handle, n_prompt = state.served[adm.variant.name], adm.work, len(prompt)
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return ReleasingStream(_stream(request, s, adm, choices, include_usage, n_prompt, req),
                               on_end=lambda outcome: _stream_ended(request, s, adm, ctx.endpoint, outcome,
                                                                    n_prompt),
                               media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def collect():
        async for ev in handle:
            if ev.finish_reason == "error":
                raise _failed(ev, req)
            choices.add(ev)

    try:
        await until_disconnect(request, collect())
    finally:  # answered, hung up, timed out or failed: stop the sequences and charge the work they did
        handle.cancel()
        usage = _finish(request, s, adm, n_prompt)
    ctx.body = fmt.response(choices.bodies(), usage=usage)
    return JSONResponse(ctx.body)


def _failed(ev, req) -> OpenAIError:
    """The error of a sequence that failed: the request's own (its grammar reached a dead end on this model's
    vocabulary: a 400 naming the constraint) or the server's (a 500)."""
    if ev.request_error:
        param = "response_format" if getattr(req, "response_format", None) else "tools"
        return OpenAIError(400, f"{param}: this model's vocabulary can't complete the constrained output "
                                f"({ev.error}); simplify the schema or use a model with a byte-level tokenizer",
                           param=param, code="unsupported_schema")
    return OpenAIError(500, f"generation failed: {ev.error}", type="server_error")


def _finish(request: Request, s: ServedModel, adm: Admission, n_prompt: int) -> dict:
    """Record a generation's metrics and charge its engine time (once); return its ``usage``."""
    handle = adm.work
    meter = handle.meter()
    n_out = handle.output_tokens  # of every candidate: all were generated
    if not adm.metered:
        request.app.state.metrics.observe_generation(s.name, n_prompt, n_out, meter)
    return completion_usage(n_prompt, n_out, request.app.state.gate.finish(adm, meter, n_prompt, n_out))


def _stream_ended(request: Request, s: ServedModel, adm: Admission, endpoint: str, outcome: str,
                  n_prompt: int) -> None:
    """A stream's response ended (see :class:`ReleasingStream`): free its slot, count a hang-up or a failure,
    and charge and close it if it ended early."""
    adm.work.cancel()  # a no-op once the sequence finished; otherwise it leaves the batch at the next step
    if adm.closed:
        return
    metrics = request.app.state.metrics
    if outcome == "cancelled":
        metrics.cancelled.labels(s.name).inc()
    elif outcome == "error":
        metrics.server_errors.labels(endpoint, "500").inc()
    _finish(request, s, adm, n_prompt)
    status, kind = (499, "client_closed_request") if outcome == "cancelled" else (500, "server_error")
    close_soon(request.app.state.gate, adm, status, kind)


async def _stream(request: Request, s: ServedModel, adm: Admission, choices: Choices, include_usage: bool,
                  n_prompt: int, req):
    """The SSE body. Its :class:`ReleasingStream` frees the slot and counts hang-ups, however it ends; the
    ledger row of a complete stream is committed before its usage chunk and ``[DONE]`` leave."""
    metrics = request.app.state.metrics
    fmt = choices.fmt
    endpoint = "chat.completions" if fmt.chat else "completions"
    status, error_type = 200, None
    for chunk in choices.opening():
        yield chunk
    async for ev in adm.work:
        if ev.finish_reason == "error":
            error = _failed(ev, req)
            if error.status >= 500:  # the status line said 200; the error is a 5xx
                metrics.server_errors.labels(endpoint, str(error.status)).inc()
            status, error_type = error.status, error.type
            yield sse(error.body())
            break
        for chunk in choices.chunks(ev):
            yield chunk
    usage = _finish(request, s, adm, n_prompt)
    try:
        await request.app.state.gate.close(adm, status, error_type)
    except Exception as e:  # the ledger could not record it: the stream ends with that error, not [DONE]
        error = to_openai(e) or OpenAIError(500, f"internal error: {type(e).__name__}", type="server_error")
        metrics.server_errors.labels(endpoint, str(error.status)).inc()
        yield sse(error.body())
        return
    if include_usage:
        yield fmt.usage_chunk(usage)
    yield SSE_DONE
    metrics.e2e.labels(s.name, endpoint).observe(time.perf_counter() - request.state.arrived_at)
