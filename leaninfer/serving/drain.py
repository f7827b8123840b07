"""Graceful shutdown that keeps the listener: on SIGTERM the server answers ``/health`` with 503 and refuses new
work while open requests finish, then lets uvicorn close the listener and stop the engines; a clean drain exits 0.

Why not uvicorn's own sequence: on SIGTERM it closes the listening socket first, so a load balancer probing
``/health`` during the drain gets "connection refused" instead of a 503 that says why; and after a graceful
shutdown it re-raises the signal, so even a clean drain ends as "killed by SIGTERM" rather than exit code 0.
"""

from __future__ import annotations

import logging
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("leaninfer.serving")

PROBES = frozenset({"/health", "/metrics"})  # asked all through a drain: they never hold it open


class InFlight:
    """ASGI middleware counting open requests (probes aside) in ``state.in_flight``, so a drain knows when
    it is done. A request stays open until its response is fully sent: a stream counts until its last byte."""

    def __init__(self, app, state):
        self.app, self.state = app, state  # ``state.in_flight`` starts at 0 in ``create_app``: a stack may be
        # built more than once (fast_path.py), and never while requests are open

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def begin_drain(app: FastAPI) -> None:
    """``/health`` turns 503 and new work gets a 503 with Retry-After; work already accepted goes on."""
    app.state.draining = True
    for s in app.state.served.values():
        s.engine.stop_accepting()


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first SIGTERM/SIGINT starts a drain instead of closing the listener.

    The drain ends when no request is open, or ``drain_timeout_s`` after the signal; then uvicorn's usual
    shutdown runs (close the listener, close idle connections, cancel what is left, lifespan shutdown, which
    stops the engines). A second signal stops at once. ``clean`` says whether everything finished in time.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float):
        super().__init__(config)
        self.app, self.drain_timeout_s = app, drain_timeout_s
        self.drain_deadline: float | None = None
        self.clean = True

    def handle_exit(self, sig, frame) -> None:
        # Not recorded in uvicorn's captured signals on purpose: it would re-raise them once shut down.
        if self.drain_deadline is not None:
            log.warning("second signal: stopping without waiting for open requests")
            self.clean = False
            self.should_exit = self.force_exit = True
            return
        self.drain_deadline = time.monotonic() + self.drain_timeout_s
        begin_drain(self.app)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            left = self.drain_deadline - time.monotonic()
            if self.app.state.in_flight == 0 or left <= 0:
                if left <= 0:
                    log.warning("drain timeout: %d requests still open are cancelled", self.app.state.in_flight)
                    self.clean = False
                # uvicorn's own wait for open connections gets what is left of the drain, not a second one
                self.config.timeout_graceful_shutdown = max(left, 1.0)
                self.should_exit = True
        return await super().on_tick(counter)
