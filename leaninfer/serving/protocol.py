"""OpenAI-compatible request schemas and error bodies (the subset leaninfer serves, validated strictly).

Unknown fields are accepted and ignored (clients send many); values we cannot honour (``n > 1``, logprobs)
are refused with a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4


class OpenAIError(Exception):
    """An error a request caused (or a server condition), turned into an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Req(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(..., min_length=1, max_length=512)
    user: str | None = None


class EmbeddingRequest(_Req):
    input: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a string, a list of strings, or token ids (a list of ints or a list of such lists)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        if isinstance(v, list) and v and isinstance(v[0], list) and any(len(x) == 0 for x in v):
            raise ValueError("token id lists must not be empty")
        return v


class _GenReq(_Req):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is served")
    ignore_eos: bool = Field(False, description="leaninfer extension: keep generating past EOS (benchmarks)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        return stops

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        if v is not None and not (-(2**63) <= v < 2**64):
            raise ValueError("seed must fit in 64 bits")
        return v


class CompletionRequest(_GenReq):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a string or token ids; lists of several prompts are refused (one prompt a request)")
    echo: bool = False
    logprobs: int | None = Field(None, le=0, description="not served: must be absent or 0")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenReq):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="not served: must be absent or false")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not served")
        return v


def validation_message(exc) -> tuple[str, str | None]:
    """One readable line from a pydantic ValidationError, and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return str(exc), None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if not isinstance(p, int)]
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"invalid value for {param!r}: {msg}" if param else msg) + extra, param
