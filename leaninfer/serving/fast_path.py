"""The serving app: FastAPI, with the three OpenAI POST endpoints called straight from the ASGI entry.

Why: under load the event loop is the server's one serial resource, and it is on the critical path of every
batch (a lane waits while the loop reads its next requests). Profiled with py-spy under 32 clients of minilm
embeddings (2 vCPUs), FastAPI's and Starlette's own layers between uvicorn and our handler (error and
telemetry middleware, the body-limit middleware, the exception middleware, the router's matching, dependency
solving) took about 30% of the loop's time, for endpoints that use none of them: each handler reads its own
body (with its own size cap), answers every error itself as an OpenAI body (``routes.guarded``) and takes
nothing but the ``Request``. So a ``POST`` to one of those paths goes through the app's own middlewares (those
given to ``add_middleware``: the drain's open-request count, Ray's replica header) and then straight to its
handler. Everything else (other endpoints, other methods, ``/docs``, the lifespan) takes FastAPI's usual way,
and the routes stay registered, so ``/openapi.json`` still documents them. An error outside a handler's guard
is still logged, counted and answered as a 500 while no byte of the response has gone.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request

from .protocol import OpenAIError
from .routes import FAST_ROUTES

log = logging.getLogger("leaninfer.serving")


def error_response(exc: OpenAIError) -> JSONResponse:
    """An :class:`OpenAIError` as its HTTP answer."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def unexpected_response(app: FastAPI, endpoint: str, exc: Exception) -> JSONResponse:
    """A bug's answer: logged with its traceback, counted as a 500, and an OpenAI-style body."""
    log.error("unexpected error in %s", endpoint, exc_info=exc)
    app.state.metrics.count_request("-", endpoint, 500, "server_error")
    return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error"))


class ServingApp(FastAPI):
    _fast_stack = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in FAST_ROUTES:
            return await super().__call__(scope, receive, send)
        if self._fast_stack is None:  # the app's own middlewares around the handlers, as Starlette wraps its router
            app = self._handle
            for cls, args, kwargs in reversed(self.user_middleware):
                app = cls(app, *args, **kwargs)
            self._fast_stack = app
        scope["app"] = self  # as Starlette sets it: ``request.app`` is this app
        await self._fast_stack(scope, receive, send)

    async def _handle(self, scope, receive, send) -> None:
        started = False

        async def sending(message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response = await FAST_ROUTES[scope["path"]](Request(scope, receive, send))
        except OpenAIError as e:  # the handlers' own errors, already counted by ``routes.guarded``
            response = error_response(e)
        except Exception as e:  # a bug outside the guard
            response = unexpected_response(self, scope["path"], e)
        try:
            await response(scope, receive, sending)
        except Exception as e:
            if started:  # the status line has gone: uvicorn closes the connection, as under FastAPI
                raise
            await unexpected_response(self, scope["path"], e)(scope, receive, send)
