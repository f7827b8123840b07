"""What an engine raises when it refuses or fails a request. The engines know no HTTP: serving turns each kind
into its status, OpenAI error body and headers in one place (``serving.errors.from_engine``)."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine could not run. ``code`` is a stable machine-readable reason."""

    code = "engine_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Overloaded(EngineError):
    """The queue is full (requests or tokens): retry in ``retry_after_s``; a route tries its next variant."""

    code = "queue_full"
    retry_after_s = 1


class Unavailable(EngineError):
    """The engine takes no more work: it is draining (``draining``) or died (``engine_dead``)."""

    code = "draining"

    @property
    def retry_after_s(self) -> int | None:
        return 5 if self.code == "draining" else None


class EngineFailed(EngineError):
    """The model call failed for this request (a bug or a bad input the engine could not catch earlier)."""

    code = "engine_failed"
