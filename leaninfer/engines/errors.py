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


class UpstreamError(EngineError):
    """An upstream engine (an OpenAI-compatible endpoint leaninfer forwards to) did not answer this request as
    asked. ``code`` says how; ``retry_after_s`` is what the upstream asked for (a 429 or 503), if anything.
    The message names the upstream, never its key."""

    code = "upstream_error"

    def __init__(self, message: str, code: str | None = None, retry_after_s: int | None = None):
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


class UpstreamDown(UpstreamError):
    """The upstream gave no answer to use and did no work we can see: it could not be reached
    (``upstream_unreachable``), took too long (``upstream_timeout``), was busy (``upstream_busy``: a 429 or
    503, or this server's connection pool to it was full) or failed (``upstream_failed``: another 5xx, or the
    connection dropped before the answer began). A route tries its next candidate."""

    code = "upstream_failed"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (a 400, 413 or 422: too long a prompt, a parameter it doesn't
    take); its message is passed on. Another candidate would refuse it too: no fallback."""

    code = "upstream_rejected"


class UpstreamBadResponse(UpstreamError):
    """The upstream answered, but not in the OpenAI format (malformed JSON, a missing field), or its stream
    broke off after it began (``upstream_stream_broken``): its work can't be retried elsewhere unseen."""

    code = "upstream_bad_response"
