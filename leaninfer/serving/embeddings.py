"""``POST /v1/embeddings``: read, admit at the gate (key, model, tokens, budget, cache), embed, finish, answer.

The endpoint function carries no docstring on purpose: FastAPI would publish it in ``/openapi.json``.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..finops.gate import Plan
from ..finops.variant import Variant
from .disconnect import until_disconnect
from .forward import Forwarding
from .guard import OFFLOAD_CHARS, OFFLOAD_FLOATS, Ctx, guarded, off_loop_if, read_body, sized
from .openai_format import embedding_list, json_bytes
from .prompts import embed_tokens
from .protocol import EmbeddingRequest, OpenAIError, answer_params
from .request_size import text_size


async def embeddings(request: Request):
    async def handler(ctx: Ctx):
        state = request.app.state
        req: EmbeddingRequest | None = None
        big, n_tokens = False, 0
        fwd: Forwarding | None = None

        async def read():
            nonlocal req, big
            ctx.check_labels()
            req = await read_body(request, EmbeddingRequest)
            big = sized(request, text_size(req.input), "input") > OFFLOAD_CHARS
            return req.model, req.user

        async def plan(v: Variant) -> Plan:
            nonlocal n_tokens, fwd
            ctx.model = v.name
            if v.upstream:
                fwd = Forwarding.of(request, "embeddings", req, state.upstreams[v.name])
                return fwd.plan(request)
            s = state.served[v.name]
            if req.dimensions is not None and s.embedding_dim is not None and req.dimensions != s.embedding_dim:
                raise OpenAIError(400, f"dimensions={req.dimensions} is not served: {s.name} gives "
                                       f"{s.embedding_dim}", param="dimensions", code="invalid_value")
            tokens = await off_loop_if(big, embed_tokens, s, req.input)
            n_tokens = sum(len(t) for t in tokens)
            return Plan(n_tokens, 0, answer_params(req), lambda: s.engine.submit(tokens))

        adm = ctx.admission = await state.gate.admit(ctx.ask(request, "embedding"), read, plan)
        if adm.hit is not None:
            return Response(await off_loop_if(big, json_bytes, adm.hit), media_type="application/json")
        if adm.variant.upstream:
            return await fwd.answer(request, ctx, adm)
        vectors, meter = await until_disconnect(request, adm.work.result())
        s = state.served[adm.variant.name]
        usage = state.gate.finish(adm, meter, n_tokens, 0)  # charged: the engine ran, whatever follows
        dim = vectors.shape[1]
        if req.dimensions is not None and req.dimensions != dim:  # a model whose size wasn't known at start
            raise OpenAIError(400, f"dimensions={req.dimensions} is not served: {s.name} gives {dim}",
                              param="dimensions", code="invalid_value")
        state.metrics.observe_embedding(s.name, n_tokens, meter)
        ctx.body = embedding_list(s.name, vectors, req.encoding_format, n_tokens, usage)
        return Response(await off_loop_if(vectors.size > OFFLOAD_FLOATS, json_bytes, ctx.body),
                        media_type="application/json")
    return await guarded(request, "embeddings", handler)
