"""The ASGI app: wiring only. Engines and metrics go on ``app.state``, the endpoints come from
:mod:`leaninfer.serving.routes`, errors of every kind leave as OpenAI-style bodies, and the lifespan starts the
engines and drains them on shutdown.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engines.errors import Overloaded, Unavailable, UpstreamDown
from ..engines.metrics import ServerMetrics
from ..finops.gate import HOLD_MARGIN_S, Gate
from ..models import Model
from .calibration import calibrate, variants_of
from .drain import InFlight
from .errors import outcome_of
from .fast_path import ServingApp, error_response, unexpected_response
from .protocol import OpenAIError
from .routes import install_openapi, router
from .state import ServedModel, ServerConfig, build_models
from .upstreams import open_upstreams

__all__ = ["ServedModel", "ServerConfig", "build_models", "create_app"]


@asynccontextmanager
async def lifespan(app: FastAPI):
    served = app.state.served.values()
    for s in served:
        s.engine.start()
    for u in app.state.upstreams.values():
        u.client.start()  # on the server's event loop: its connection pool belongs to it
    gate = app.state.gate
    await gate.start()
    if gate.governed:
        await calibrate(gate, app.state.served)
    try:
        yield
    finally:  # SIGTERM: uvicorn stops accepting and waits for open requests; then the engines drain
        app.state.draining = True
        await asyncio.gather(*(asyncio.to_thread(s.engine.stop, app.state.config.drain_timeout_s) for s in served))
        await gate.stop()  # after the drain: the last requests' rows are written first
        await asyncio.gather(*(u.client.aclose() for u in app.state.upstreams.values()))


async def _openai_error(request: Request, exc: OpenAIError):
    return error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException):
    # FastAPI's own errors (unknown path, wrong method) in the same OpenAI shape as ours
    return error_response(OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                      type="invalid_request_error", headers=getattr(exc, "headers", None),
                                      code="not_found" if exc.status_code == 404 else None))


async def _unexpected(request: Request, exc: Exception):
    # A bug outside the handlers' own guard (routes.guarded answers those): still counted, logged with its
    # traceback, and answered with an OpenAI-shaped body.
    return unexpected_response(request.app, getattr(request.scope.get("route"), "path", request.url.path), exc)


def create_app(models: dict[str, Model], config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving ``models`` (name -> loaded :class:`~leaninfer.models.Model`), and the upstream
    engines of ``config.upstreams`` (:mod:`.upstreams`; a LeaninferError for any of them that can't be used).

    Example:
        >>> import leaninfer
        >>> app = create_app({"minilm": leaninfer.load("minilm")})   # doctest: +SKIP
        >>> # uvicorn.run(app)  or  httpx.AsyncClient(transport=httpx.ASGITransport(app))
    """
    config = config or ServerConfig()
    metrics = ServerMetrics()
    app = ServingApp(title="leaninfer", version="1", lifespan=lifespan,
                     description="OpenAI-compatible serving of leaninfer models, with batching and metering.")
    app.state.config, app.state.metrics, app.state.draining, app.state.in_flight = config, metrics, False, 0
    app.state.served = {s.name: s for s in build_models(models, config, metrics)}
    app.state.upstreams = open_upstreams(config.upstreams, list(app.state.served))
    variants = variants_of(app.state.served, config.usd_per_hour)
    variants.update({name: u.variant() for name, u in app.state.upstreams.items()})
    # A reservation's hold outlives any request (its timeout, then the drain): a server that dies holding it
    # has it released by the next server that starts on the store, or by any replica once it expires.
    app.state.gate = Gate(config.finops, variants, metrics.registry if config.finops.enabled else None,
                          hold_s=config.request_timeout_s + config.drain_timeout_s + HOLD_MARGIN_S,
                          fallback_on=(Overloaded, Unavailable, UpstreamDown), outcome=outcome_of)
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(InFlight, state=app.state)  # open requests, for a drain that keeps the listener (drain.py)
    app.include_router(router)
    install_openapi(app)
    return app
