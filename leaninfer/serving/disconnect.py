"""A client that goes away stops its work, on every path, and is counted once.

Three moments a client can leave, each with its own detector:

* while its body is read: Starlette raises ``ClientDisconnect`` (``routes.guarded`` answers it as a 499);
* while a non-streaming answer is computed: :func:`until_disconnect` watches for ``http.disconnect`` and cancels
  the computation;
* once a stream is returned: :class:`ReleasingStream` runs ``on_end`` however the stream ends. Starlette's own
  ``StreamingResponse`` (ASGI spec 2.3, which uvicorn speaks) cancels the body's generator when the client
  leaves, and if the client left before the first byte the generator never starts, so a ``finally`` inside it
  never runs and the sequence decoded to ``max_tokens``; a generator cancelled while suspended was only closed
  whenever the garbage collector got to it, so the cancellation counter missed a third of the hang-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from .protocol import OpenAIError

log = logging.getLogger("leaninfer.serving")


async def _wait_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, aw):
    """Await ``aw``, cancelling it if the client goes away first (then raise a 499)."""
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


class ReleasingStream(StreamingResponse):
    """A ``StreamingResponse`` that calls ``on_end(outcome)`` exactly once when it ends, however it ends.

    ``outcome`` is ``"complete"`` (the last byte was handed to the server), ``"cancelled"`` (the client left,
    or the server cancelled the response) or ``"error"`` (the body raised; logged here, since the status line
    has gone and no error handler can answer it). The body's generator is closed here too, so its cleanup runs
    now rather than at garbage collection.
    """

    def __init__(self, content, *, on_end: Callable[[str], None], **kwargs):
        super().__init__(content, **kwargs)
        self.on_end = on_end
        self.outcome = "cancelled"

    async def stream_response(self, send) -> None:
        await super().stream_response(send)
        self.outcome = "complete"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:  # ASGI spec >= 2.4 servers report a hang-up this way
            pass
        except Exception:
            if self.outcome != "complete":
                self.outcome = "error"
                log.exception("a stream failed after its response had started")
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            self.on_end(self.outcome)
