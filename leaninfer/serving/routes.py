"""The OpenAI-compatible API on one router: the POST endpoints (their handlers live in :mod:`.embeddings` and
:mod:`.generation`), the service endpoints, and the OpenAPI document of the bodies the handlers read themselves.
Handlers read what they serve from ``request.app.state`` (see :mod:`leaninfer.serving.state`), so one router
serves any number of apps.

Which paths answer without a key under ``--auth keys``: ``/health`` (probes), ``/metrics`` unless
``--metrics-auth admin``, and the OpenAPI document and docs; every other path needs a key (``/v1/usage`` an
admin key). The endpoint functions carry no docstrings on purpose: FastAPI would publish them.
"""

from __future__ import annotations

import asyncio
import copy

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..errors import LeaninferError
from ..finops.refusals import InvalidKey, NotAllowed, UnknownModel
from ..finops.usage import usage_payload
from .admin_budgets import router as admin_budgets_router
from .admin_keys import router as admin_keys_router
from .embeddings import embeddings
from .errors import to_openai
from .generation import chat_completions, completions
from .guard import bearer
from .openai_format import model_card
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse, OpenAIError
from .tokenize import DetokenizeRequest, TokenizeRequest, detokenize, tokenize
from .usage_me import router as usage_me_router

router = APIRouter()
_REF = "#/components/schemas/{model}"
_ERROR = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}


# Request-body models (and the models they nest) by name, for the OpenAPI's components (install_openapi).
BODY_SCHEMAS: dict[str, dict] = {"ErrorResponse": ErrorResponse.model_json_schema(ref_template=_REF)}
BODY_SCHEMAS.update(BODY_SCHEMAS["ErrorResponse"].pop("$defs"))
ERROR_STATUSES = {"400": "invalid request (the message names the parameter)", "401": "no valid API key",
                  "403": "the key may not use this model", "404": "no such model",
                  "413": "request body too large", "429": "a rate limit or budget is reached (Retry-After)",
                  "500": "internal error", "503": "queue full or shutting down",
                  "504": "not finished within the request timeout"}


TASK_OF_BODY = {"EmbeddingRequest": "embedding", "CompletionRequest": "causal-lm",
                "ChatCompletionRequest": "causal-lm", "TokenizeRequest": "causal-lm", "DetokenizeRequest": "causal-lm"}


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
                names = [s.name for s in [*app.state.served.values(), *app.state.upstreams.values()]
                         if s.task == task]
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
    return {"status": "ok", "models": [*request.app.state.served, *request.app.state.upstreams]}


@router.get("/metrics", response_class=PlainTextResponse,  # documents text/plain (Prometheus' format)
            responses={401: {"description": "no valid key (--metrics-auth admin)", "content": _ERROR},
                       403: {"description": "not an admin key (--metrics-auth admin)", "content": _ERROR}})
async def metrics_endpoint(request: Request):
    if request.app.state.gate.config.metrics_auth == "admin":
        await _key_or_refuse(request, admin=True, what="/metrics")
    metrics = request.app.state.metrics
    for s in request.app.state.served.values():
        metrics.utilization.labels(s.name).set(s.engine.busy.fraction())
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/usage", responses={401: {"description": "no valid key", "content": _ERROR},
                                    403: {"description": "not an admin key", "content": _ERROR},
                                    400: {"description": "a bad parameter (named)", "content": _ERROR},
                                    404: {"description": "this server keeps no ledger", "content": _ERROR}})
async def usage(request: Request, by: str = "team", period: str | None = None, since: str | None = None,
                until: str | None = None, tz: str = "UTC"):
    gate = request.app.state.gate
    if gate.store is None:
        raise OpenAIError(404, "this server keeps no ledger: start it with --store", code="no_ledger")
    if await _key_or_refuse(request, admin=True, what="/v1/usage") is None:
        raise to_openai(InvalidKey("/v1/usage needs an admin key (leaninfer keys create --admin) on a server "
                                   "run with --auth keys"))
    try:
        return await asyncio.to_thread(usage_payload, gate.store, by.split(","), period, since, until, tz)
    except LeaninferError as e:
        raise OpenAIError(400, str(e), code="invalid_value") from None


@router.get("/v1/models", responses={401: {"description": "no valid key (--auth keys)", "content": _ERROR}})
async def list_models(request: Request):
    await _key_or_refuse(request)
    state = request.app.state
    variants = state.gate.variants
    return {"object": "list", "data": [model_card(s.name, s.created, s.info, variants.get(s.name))
                                       for s in state.served.values()]
            + [model_card(u.name, u.created, u.info()) for u in state.upstreams.values()]}


@router.get("/v1/models/{name:path}", responses={404: {"description": "no such model", "content": _ERROR},
                                                 401: {"description": "no valid key (--auth keys)",
                                                       "content": _ERROR}})
async def get_model(name: str, request: Request):
    await _key_or_refuse(request)
    served, upstreams = request.app.state.served, request.app.state.upstreams
    if name in upstreams:
        return model_card(name, upstreams[name].created, upstreams[name].info())
    if name not in served:
        raise to_openai(UnknownModel(name, [*served, *upstreams]))
    s = served[name]
    return model_card(s.name, s.created, s.info, request.app.state.gate.variants.get(name))


async def _key_or_refuse(request: Request, admin: bool = False, what: str = ""):
    """The request's key on a server with ``--auth keys`` (401 without one; 403 for a non-admin key where
    ``admin``), or None on an open server."""
    gate = request.app.state.gate
    if gate.config.auth != "keys":
        return None
    key = await gate.authenticate(bearer(request))
    if key is None:
        raise to_openai(gate.key_refusal(bearer(request)))
    if admin and not key.policy.admin:
        raise to_openai(NotAllowed(f"{what} needs an admin key (leaninfer keys create --admin)", "not_admin"))
    return key


# POST endpoints that take only the Request and answer every error themselves: the app calls them straight
# from its ASGI entry (fast_path.py), bypassing FastAPI's middleware and routing.
FAST_ROUTES = {"/v1/embeddings": embeddings, "/v1/completions": completions,
               "/v1/chat/completions": chat_completions}
router.add_api_route("/v1/embeddings", embeddings, methods=["POST"], openapi_extra=_body_doc(EmbeddingRequest))


async def tokenize_endpoint(request: Request):
    await _key_or_refuse(request)
    return await tokenize(request)


async def detokenize_endpoint(request: Request):
    await _key_or_refuse(request)
    return await detokenize(request)


router.add_api_route("/tokenize", tokenize_endpoint, methods=["POST"], openapi_extra=_body_doc(TokenizeRequest))
router.add_api_route("/detokenize", detokenize_endpoint, methods=["POST"],
                     openapi_extra=_body_doc(DetokenizeRequest))
router.add_api_route("/v1/completions", completions, methods=["POST"],
                     openapi_extra=_body_doc(CompletionRequest, stream=True))
router.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"],
                     openapi_extra=_body_doc(ChatCompletionRequest, stream=True))
router.include_router(admin_budgets_router)  # /v1/admin/budgets
router.include_router(admin_keys_router)  # /v1/admin/keys
router.include_router(usage_me_router)  # /v1/usage/me
