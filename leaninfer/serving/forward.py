"""A request on an upstream variant: forwarded, and its answer (whole or streamed) relayed with ``usage``
rewritten to the gate's charge, however it ends.

What is sent: the client's request as leaninfer's schemas validated it (what they refuse for local models is
refused here too; tool definitions and calls count in the prompt's bound),
with ``model`` the upstream's model id, an explicit ``max_tokens`` where the client gave none (256 for a chat,
16 for a completion: the reservation covers exactly what may be generated, ``n`` or ``best_of`` times), and,
for a stream, ``stream_options.include_usage`` on.

What is charged: the usage the upstream reports, at its tariff. Where it reports none, leaninfer's own count:
the prompt's bound (:func:`input_bound`) and the output text it saw (every choice), as UTF-8 bytes capped at
max_tokens (times the choices).
Each is at least the true count for the byte-level BPE and SentencePiece tokenizers of today's models (a
token is at least a byte), so an upstream without usage is over- rather than under-charged, and never past
the reservation. A request the upstream never began to answer (refused, unreachable, timed out, the client
gone first) is charged nothing; one whose answer began and then failed is charged what was seen.

The client's own ``stream_options`` decides what it receives: the usage chunk (with ``usage.leaninfer``, the
charge) goes to a client that asked for it and to no other, and ``usage`` fields an upstream puts on content
chunks are taken off.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import orjson
from fastapi import Request
from fastapi.responses import Response

from ..engines.engine import Meter
from ..engines.errors import UpstreamBadResponse, UpstreamError
from ..engines.upstream import Opened
from ..finops.gate import Admission, Plan
from ..finops.money import to_usd
from .disconnect import ReleasingStream, until_disconnect
from .errors import to_openai
from .guard import Ctx, close_soon
from .openai_format import SSE_DONE, completion_usage, json_bytes, sse
from .protocol import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    answer_params,
    constraint,
)
from .upstreams import ServedUpstream

PATHS = {"embeddings": "embeddings", "completions": "completions", "chat.completions": "chat/completions"}
# The prompt's bound, in tokens, where the upstream's tokenizer is out of sight: a text's UTF-8 bytes (a token
# is at least one byte), plus what a tokenizer adds per text (BOS/EOS, CLS/SEP), what a chat template adds per
# message (role markers) and per conversation (its frame; some templates add a default system prompt).
SPECIAL_PER_TEXT = 4
PER_MESSAGE = 8
PER_CHAT = 64
MAX_REPORTED = 2**31 - 1


def _text_tokens(value) -> int:
    """The bound of an ``input`` or ``prompt``: strings, token ids, or lists of either."""
    if isinstance(value, str):
        return len(value.encode()) + SPECIAL_PER_TEXT
    if value and isinstance(value[0], int):
        return len(value) + SPECIAL_PER_TEXT
    return sum(_text_tokens(x) for x in value)


def input_bound(req) -> int:
    """At least as many tokens as the upstream will count in ``req``'s input (see the module's note).

    Example:
        >>> input_bound(EmbeddingRequest(model="m", input=["héllo", "hi"]))  # (6 bytes + 4) + (2 + 4)
        16
    """
    if isinstance(req, ChatCompletionRequest):
        # the tools' definitions are rendered into the prompt too: their JSON's bytes bound their tokens
        tools = len(json.dumps([t.model_dump(exclude_none=True) for t in req.tools]).encode()) if req.tools else 0
        return PER_CHAT + tools + sum(len(m.text().encode()) + len(m.role) + PER_MESSAGE
                                      + len(m.extra_text().encode()) for m in req.messages)
    return _text_tokens(req.input if isinstance(req, EmbeddingRequest) else req.prompt)


def _reported(usage, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REPORTED else None


@dataclass
class Seen:
    """What came back of an answer: its text (for a count when no usage comes), usage, when it began."""

    n_bytes: int = 0
    pieces: int = 0
    usage: dict | None = None
    finished: bool = False  # a choice carried a finish_reason
    first_token_s: float | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def add(self, text) -> None:
        if isinstance(text, str) and text:
            self.n_bytes += len(text.encode())
            self.pieces += 1

    def add_message(self, msg) -> None:
        """A chat message or delta: its content, and its tool calls' JSON (their names and arguments)."""
        if isinstance(msg, dict):
            self.add(msg.get("content"))
            if isinstance(msg.get("tool_calls"), list) and msg["tool_calls"]:
                self.add(json.dumps(msg["tool_calls"]))


@dataclass
class Forwarding:
    """One request on one upstream: what is sent, what it may cost, and how its answer is relayed."""

    upstream: ServedUpstream
    endpoint: str  # embeddings | completions | chat.completions
    req: EmbeddingRequest | CompletionRequest | ChatCompletionRequest
    body: dict
    input_bound: int
    max_tokens: int  # the most output tokens of all its choices (0 for embeddings)
    deadline_s: float
    stream: bool = False
    client_usage: bool = False  # the client asked for stream_options.include_usage

    @classmethod
    def of(cls, request: Request, endpoint: str, req, upstream: ServedUpstream) -> Forwarding:
        body = req.model_dump(mode="json", exclude_unset=True)
        body["model"] = upstream.model_id
        max_tokens, stream, client_usage = 0, False, False
        if endpoint != "embeddings":
            asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
            if asked is None:
                asked = body["max_tokens"] = (DEFAULT_CHAT_MAX_TOKENS if endpoint == "chat.completions"
                                              else DEFAULT_COMPLETION_MAX_TOKENS)
            # every choice may run to max_tokens, and a completion's best_of candidates are generated too
            generated = max(req.n, getattr(req, "best_of", None) or 0)
            max_tokens, stream = asked * generated, req.stream
            if stream:
                options = dict(req.stream_options or {})
                client_usage = bool(options.get("include_usage"))
                body["stream_options"] = {**options, "include_usage": True}
        timeout = request.app.state.config.request_timeout_s
        # the upstream's deadline falls inside the request's, so that its 504 (and a fallback) comes first
        deadline = min(upstream.config.timeout_s, 0.95 * timeout)
        return cls(upstream, endpoint, req, body, input_bound(req), max_tokens, deadline, stream, client_usage)

    def plan(self, request: Request) -> Plan:
        """The gate's plan: the worst case to reserve, the cache's parameters (extra fields included: an
        upstream may honour them), and a start that opens the request upstream (a client gone meanwhile
        cancels it)."""
        # a constraining response_format as sent: an upstream may honour what the local key leaves out (strict)
        fmt = getattr(self.req, "response_format", None)
        cache = None if self.stream else {**answer_params(self.req), "extra": self.req.model_extra or None,
                                          "response_format": fmt if constraint(fmt) else None}

        async def start() -> Opened:
            return await until_disconnect(request, self.upstream.client.open(
                PATHS[self.endpoint], self.body, self.deadline_s))

        return Plan(self.input_bound, self.max_tokens, cache, start)

    # -- the charge ---------------------------------------------------------------------------------------------
    def _charge(self, request: Request, adm: Admission, opened: Opened, seen: Seen) -> dict:
        """Charge what the upstream reported, or leaninfer's count of what it saw (once: the gate's finish is
        idempotent); returns the response's ``usage``."""
        n_in, n_out = _reported(seen.usage, "prompt_tokens"), _reported(seen.usage, "completion_tokens")
        counted = n_in is None or (self.endpoint != "embeddings" and n_out is None)
        if n_in is None:
            n_in = self.input_bound
        if self.endpoint == "embeddings":
            n_out = 0
        elif n_out is None:
            n_out = min(self.max_tokens, max(seen.n_bytes, seen.pieces))
        meter = Meter(ttft_s=seen.first_token_s, duration_s=time.perf_counter() - opened.t0)
        extras = request.app.state.gate.finish(adm, meter, n_in, n_out)
        if adm.row is None:  # an open server keeps no row: price the tokens here, as the row would
            cost_in, cost_out = adm.variant.tariff.cost_nusd(n_in, n_out)
            extras.update(cost_usd=to_usd(cost_in + cost_out), cost_usd_input=to_usd(cost_in),
                          cost_usd_output=to_usd(cost_out))
        extras["usage_counted_by"] = "leaninfer" if counted else "upstream"
        usage = {k: v for k, v in seen.usage.items() if k != "leaninfer"} if isinstance(seen.usage, dict) else {}
        if self.endpoint == "embeddings":
            return {**usage, "prompt_tokens": n_in, "total_tokens": n_in, "leaninfer": extras}
        return {**usage, **completion_usage(n_in, n_out, extras)}

    # -- a whole answer -------------------------------------------------------------------------------------------
    async def answer(self, request: Request, ctx: Ctx, adm: Admission):
        if self.stream:
            return self._stream(request, ctx, adm)
        opened: Opened = adm.work
        seen = Seen()
        try:
            raw = await until_disconnect(request, opened.read(self.deadline_s))
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamBadResponse(f"upstream {self.upstream.name!r} answered with malformed JSON") from None
            items = "data" if self.endpoint == "embeddings" else "choices"
            if not isinstance(data, dict) or not isinstance(data.get(items), list):
                raise UpstreamBadResponse(f"upstream {self.upstream.name!r} answered without a {items!r} list")
        except BaseException:
            # the answer began: the upstream did the work, so the prompt is charged (nothing of the output was
            # seen), whether the body broke off, was malformed, or the client left while it was read
            await opened.aclose()
            self._charge(request, adm, opened, seen)
            raise
        seen.usage = data.get("usage")
        if self.endpoint != "embeddings":
            for choice in data["choices"]:
                if isinstance(choice, dict):
                    msg = choice.get("message")
                    seen.add_message(msg) if isinstance(msg, dict) else seen.add(choice.get("text"))
        data["usage"] = self._charge(request, adm, opened, seen)
        data["model"] = self.upstream.name
        ctx.body = data
        return Response(json_bytes(data), media_type="application/json")

    # -- a stream -------------------------------------------------------------------------------------------------
    def _stream(self, request: Request, ctx: Ctx, adm: Admission) -> ReleasingStream:
        seen = Seen()
        return ReleasingStream(self._relay(request, adm, seen),
                               on_end=lambda outcome: self._ended(request, ctx, adm, seen, outcome),
                               media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, request: Request, adm: Admission, seen: Seen):
        """The SSE body: the upstream's chunks (``model`` renamed, ``usage`` taken off), then, once the ledger
        row is committed, the usage chunk if the client asked for it, and ``[DONE]``. A stream that fails
        midway ends with an error event (the status line has gone)."""
        opened: Opened = adm.work
        chat = self.endpoint == "chat.completions"
        error: OpenAIError | None = None
        try:
            async for ev in opened.events():
                usage = ev.pop("usage", None)
                if isinstance(usage, dict):
                    seen.usage = usage
                seen.id = ev.get("id", seen.id) if isinstance(ev.get("id"), str) else seen.id
                choices = ev.get("choices")
                if not choices:
                    continue  # the upstream's usage chunk: ours is sent at the end, if asked for
                for c in choices if isinstance(choices, list) else ():
                    if isinstance(c, dict):
                        delta = c.get("delta")
                        seen.add_message(delta) if chat else seen.add(c.get("text"))
                        seen.finished = seen.finished or bool(c.get("finish_reason"))
                if seen.first_token_s is None and seen.pieces:
                    seen.first_token_s = time.perf_counter() - opened.t0
                ev["model"] = self.upstream.name
                yield sse(ev)
            if not opened.done and not seen.finished:
                raise UpstreamBadResponse(f"upstream {self.upstream.name!r} ended the stream before it finished",
                                          "upstream_stream_broken")
        except UpstreamError as e:
            error = to_openai(e)
        await opened.aclose()
        usage = self._charge(request, adm, opened, seen)
        metrics = request.app.state.metrics
        try:
            if error is not None:
                metrics.server_errors.labels(self.endpoint, str(error.status)).inc()
            # shielded: a client leaving now must not cut the ledger row's write short
            await asyncio.shield(request.app.state.gate.close(
                adm, *((error.status, error.type) if error else (200, None))))
        except Exception as e:  # the ledger could not record it: the stream ends with that error, not [DONE]
            failed = to_openai(e) or OpenAIError(500, f"internal error: {type(e).__name__}", type="server_error")
            metrics.server_errors.labels(self.endpoint, str(failed.status)).inc()
            yield sse(failed.body())
            return
        if error is not None:
            yield sse(error.body())
        if self.client_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield sse({"id": seen.id, "object": obj, "created": seen.created, "model": self.upstream.name,
                       "choices": [], "usage": usage})
        yield SSE_DONE
        metrics.e2e.labels(self.upstream.name, self.endpoint).observe(
            time.perf_counter() - request.state.arrived_at)

    def _ended(self, request: Request, ctx: Ctx, adm: Admission, seen: Seen, outcome: str) -> None:
        """The stream's response ended (:class:`ReleasingStream`): if the relay did not close it (the client
        left, or the body failed), close the upstream's stream now, charge what was seen, and close."""
        if adm.closed:
            return
        metrics = request.app.state.metrics
        if outcome == "cancelled":
            metrics.cancelled.labels(self.upstream.name).inc()
        elif outcome == "error":
            metrics.server_errors.labels(self.endpoint, "500").inc()
        status, kind = (499, "client_closed_request") if outcome == "cancelled" else (500, "server_error")

        async def closing():
            await adm.work.aclose()  # the upstream sees its connection close: it stops generating
            self._charge(request, adm, adm.work, seen)
            await request.app.state.gate.close(adm, status, kind)

        close_soon(request.app.state.gate, adm, status, kind, closing=closing())
