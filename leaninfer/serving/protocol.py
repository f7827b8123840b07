"""OpenAI-compatible request schemas and error bodies (the subset leaninfer serves, validated strictly).

Unknown fields are accepted and ignored (clients send many); OpenAI fields whose values we cannot honour
(``suffix``, audio, predicted outputs...) are refused with a 400 naming the field, never silently dropped. Every range is checked here, so nothing a client sends reaches the sampler or the model
outside what they can compute (docs/serving.md lists what is served).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import core_schema

MAX_STOP = 4
# No model has a context (or an embedding) near this; bounding max_tokens and dimensions keeps the arithmetic
# of admission and the cache key in machine integers.
MAX_TOKENS = 2**31 - 1
MAX_LOGIT_BIAS = 1024
# an omitted max_tokens: what a local model generates at most (shrunk to its context), and what an upstream is
# sent explicitly, so that the reservation covers exactly what it may generate
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_N = 16  # choices (n, best_of) of one request: each is a sequence in the running batch
MAX_LOGPROBS = 20  # OpenAI's bound on logprobs (completions) and top_logprobs (chat)
SEED_MIN, SEED_END = -(2**63), 2**64  # what numpy's generators take, once wrapped into 64 bits
TOKEN_KEY = "^[0-9]{1,9}$"  # a token id as a JSON object key


class OpenAIError(Exception):
    """An error a request caused (or a server condition), turned into an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response, 4xx and 5xx: :meth:`OpenAIError.body` (published in the OpenAPI)."""

    error: ErrorDetail


def parse_json(body: bytes) -> dict:
    """A request body as a JSON object, or a 400. NaN/Infinity literals are refused (not JSON), and so is
    nesting deeper than the parser's recursion limit (about 1000): it raises RecursionError, which is cheap,
    since it stops at that depth, and would otherwise surface as a 500."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise OpenAIError(400, "request body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise OpenAIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _check_unicode(v):
    """Strings (alone or in a list) must be encodable: a lone UTF-16 surrogate (``"\\ud800"`` in JSON) would
    break the tokenizer, or the JSON encoder when a message echoes it."""
    for s in [v] if isinstance(v, str) else v if isinstance(v, list) else ():
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"contains a lone UTF-16 surrogate ({s[e.start]!r} at position {e.start}); "
                                 f"strings must be valid Unicode") from None
    return v


def _token_keys(bias: dict[str, float] | None) -> dict[int, float]:
    return {int(k): b for k, b in (bias or {}).items()}


class _served_only:
    """An OpenAI field leaninfer does not implement: its neutral values pass, any other is a 400 naming it.
    The published schema lists only the neutral values, so a schema-driven client sends what is served."""

    def __init__(self, *served, what: str):
        self.served, self.what = served, what

    def _check(self, v):
        if v not in self.served:
            raise ValueError(f"not served by leaninfer: {self.what}")
        return v

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema, handler):
        return {"enum": list(self.served), "description": f"only these values: leaninfer serves no {self.what}"}


# Client strings that reach the ledger and metric labels (``model``, ``user``; the workflow and tags headers in
# labels.py) are bounded and carry no control character: NUL (PostgreSQL TEXT can't hold it, and one row once
# failed a whole group commit of other tenants' rows), C0, DEL or C1 (escapes reach an admin's terminal).
MAX_NAME = 256
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"  # the same rule, as the published schema's pattern


def control_char(text: str) -> str | None:
    """Why ``text`` is refused as a label (its first control character and where), or None when it is clean."""
    bad = CONTROL.search(text)
    if bad is None:
        return None
    return (f"contains the control character {bad.group()!r} at position {bad.start()}; only printable "
            "characters are allowed")


def _printable(v):
    if isinstance(v, str) and (why := control_char(v)) is not None:
        raise ValueError(why)
    return v


class _Req(BaseModel):
    # strict: a value is the JSON type the schema says ("seed": false or "max_tokens": "5" are refused, as
    # a schema-driven client expects). allow_inf_nan: a NaN would pass no range check honestly. Extra fields
    # are allowed (clients send fields of newer API versions) and ignored: nothing downstream reads them, the
    # response cache's key included (answer_params).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    model: str = Field(..., min_length=1, max_length=MAX_NAME, json_schema_extra={"pattern": PRINTABLE})
    user: str | None = Field(None, max_length=MAX_NAME, json_schema_extra={"pattern": PRINTABLE},
                             description="who the request is for (the ledger's workflow when no header names one)")

    _unicode_names = field_validator("model", "user", mode="before")(_check_unicode)
    _printable_names = field_validator("model", "user")(_printable)


class EmbeddingRequest(_Req):
    input: str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]] = Field(
        ..., description="a string, a list of strings, or token ids (a list of ints or a list of such lists)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_TOKENS)

    _unicode_input = field_validator("input", mode="before")(_check_unicode)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        if isinstance(v, list) and v and isinstance(v[0], list) and any(len(x) == 0 for x in v):
            raise ValueError("token id lists must not be empty")
        return v


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _response_format(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """The OpenAI shapes, checked; whether the library compiles the schema is asked where the model is known
    (a 400 naming the construct, serving/generation.py). The value is kept as sent (an upstream gets it whole).
    """
    if v is None:
        return None
    kind = v.get("type")
    if kind not in RESPONSE_FORMATS:
        raise ValueError(f"type {kind!r} is not served; one of {', '.join(RESPONSE_FORMATS)}")
    if kind != "json_schema":
        return v
    spec = v.get("json_schema")
    if not isinstance(spec, dict):
        raise ValueError('type "json_schema" needs a "json_schema" object: {"name": ..., "schema": {...}}')
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError('json_schema.name must be a non-empty string')
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise ValueError(f"json_schema.schema must be a JSON object (a JSON schema), got {type(schema).__name__}")
    if "strict" in spec and not isinstance(spec["strict"], bool) and spec["strict"] is not None:
        raise ValueError("json_schema.strict must be a boolean")
    return v


def constraint(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """A validated ``response_format`` as what constrains the output (None: text): the response cache's key.
    A schema's description and ``strict`` change nothing locally (every schema is enforced)."""
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = response_format["json_schema"]
        return {"type": "json_schema", "json_schema": {"name": spec["name"], "schema": spec.get("schema", {})}}
    return None


class _GenReq(_Req):
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy; any tiny positive value is "
                                                                "served too (it tends to greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=SEED_MIN, lt=SEED_END, description="a 64-bit integer, signed or not")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=MAX_N, description=f"choices to generate (at most {MAX_N}); they share the "
                                                    "prompt's prefill")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from the logit of every "
                                                                      "token generated so far")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from the logit of every "
                                                                       "token, times its count so far")
    logit_bias: Annotated[dict[Annotated[str, Field(pattern=TOKEN_KEY)], Annotated[float, Field(ge=-100.0, le=100.0)]]
                          | None, AfterValidator(_token_keys)] = Field(
        None, max_length=MAX_LOGIT_BIAS, json_schema_extra={"propertyNames": {"pattern": TOKEN_KEY}},
        description="token id (a decimal string) -> bias in [-100, 100] added to its logit")
    ignore_eos: bool = Field(False, description="leaninfer extension: keep generating past EOS (benchmarks)")
    response_format: Annotated[dict[str, Any] | None, AfterValidator(_response_format)] = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": '
                          '{"name": ..., "schema": {...}}}: output constrained by grammar (docs/serving.md)')

    _unicode_stop = field_validator("stop", mode="before")(_check_unicode)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        return stops


class CompletionRequest(_GenReq):
    prompt: str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]] = Field(
        ..., description="a string or token ids; lists of several prompts are refused (one prompt a request)")
    # 0 is served: with echo and logprobs it scores the prompt alone (what lm-evaluation-harness sends)
    max_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)
    echo: bool = Field(False, description="the prompt's text precedes the completion (with logprobs: its "
                                          "tokens scored too, the first one null)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="the log-probability of each token and "
                                                                         "of this many most likely alternatives")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="candidates generated; the n with the highest "
                                                                  "mean log-probability are returned")
    suffix: Annotated[str | None, _served_only(None, "", what="suffix (insertion)")] = None

    _unicode_prompt = field_validator("prompt", mode="before")(_check_unicode)

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v, info):  # n and stream are validated before it (declared earlier)
        n = info.data.get("n", 1)
        if v is not None and v < n:
            raise ValueError(f"best_of ({v}) must be at least n ({n})")
        if v is not None and v > n and info.data.get("stream"):
            raise ValueError("best_of greater than n can't be streamed: the best are known only at the end")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str

    _unicode = field_validator("text", mode="before")(_check_unicode)


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a function's name
MAX_TOOLS = 128  # OpenAI's bound on the tools of one request


class FunctionCall(BaseModel):
    """A call an assistant made (a message of the conversation sent back): ``arguments`` is JSON text."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(..., pattern=FUNCTION_NAME)
    arguments: str = Field(..., description="the arguments as a JSON object's text")

    _unicode = field_validator("arguments", mode="before")(_check_unicode)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str = Field(..., min_length=1, max_length=MAX_NAME)
    type: Literal["function"] = "function"
    function: FunctionCall

    _unicode = field_validator("id", mode="before")(_check_unicode)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls (role assistant)")
    tool_call_id: str | None = Field(None, max_length=MAX_NAME, description="the call a tool message answers")
    name: str | None = Field(None, max_length=MAX_NAME)

    _unicode = field_validator("content", "tool_call_id", "name", mode="before")(_check_unicode)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def extra_text(self) -> str:
        """Everything of the message a template may render besides its role and content, as JSON text (its
        tool calls, the id a tool result answers, fields of newer API versions): what size bounds count."""
        extra = {**(self.model_extra or {})}
        if self.tool_calls:
            extra["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            extra["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            extra["name"] = self.name
        return json.dumps(extra) if extra else ""


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(..., pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=2**20)
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments object")
    strict: bool | None = None

    _unicode = field_validator("description", mode="before")(_check_unicode)


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["function"]
    function: ToolFunction


class _ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(..., pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["function"]
    function: _ChosenFunction


class ChatCompletionRequest(_GenReq):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = Field(None, description="the log-probability of each generated token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="with logprobs: this many most "
                                                                             "likely alternatives per token")
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS, description="functions the model may call: "
                                     "rendered by its chat template; calls come back in message.tool_calls")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description='"auto" (the default with tools), "none", "required" or {"type": "function", '
                          '"function": {"name": ...}}: a required or named call is constrained by its schema')
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[Any] | None, _served_only(None, [], what="function calls")] = None
    function_call: Annotated[str | dict[str, Any] | None, _served_only(
        None, "none", "auto", what="function calls")] = None
    modalities: Annotated[list[str] | None, _served_only(None, ["text"], what="output but text")] = None
    audio: Annotated[dict[str, Any] | None, _served_only(None, what="audio output")] = None
    prediction: Annotated[dict[str, Any] | None, _served_only(None, what="predicted outputs")] = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v, info):  # logprobs is validated before it (declared earlier)
        if v and not info.data.get("logprobs"):  # 0 asks for nothing: clients send it by default
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, v):
        names = [t.function.name for t in v or ()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"function names must be unique; given more than once: {', '.join(twice)}")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v, info):  # tools is validated before it (declared earlier)
        names = [t.function.name for t in info.data.get("tools") or ()]
        if isinstance(v, NamedToolChoice) and v.function.name not in names:
            raise ValueError(f"names function {v.function.name!r}, which is not among tools "
                             f"({', '.join(names) or 'none given'})")
        if v == "required" and not names:
            raise ValueError('"required" needs tools to call')
        return v

    def tool_mode(self) -> str | None:
        """None (no tools in play), "auto", "required" or the name of the function that must be called."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"


_GEN_ANSWER = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "ignore_eos", "n",
               "logprobs", "response_format")
_FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def answer_params(req: _Req) -> dict:
    """The validated parameters that change a request's answer, normalised: what the response cache keys on.

    Never extra fields (a client may send anything there, ``2**70`` or a nested object), nor who asks
    (``model``, ``user``) or how the answer is delivered (``stream``, ``stream_options``). Values are
    normalised: None is dropped, numbers of float fields are floats, ``logit_bias`` has int keys in order, a
    chat's ``max_completion_tokens`` and ``max_tokens`` are the one limit that applies, and a one-prompt list is
    its prompt. ``logit_bias`` keys that name one token (``"00"`` and ``"0"``) are one entry: the last one given
    wins, as with a JSON object's duplicate keys. Everything in the result is JSON: str, bool, int (64-bit at
    most, except token ids, which the vocabulary check bounds before the cache is asked), float, lists, and
    dicts with int or str keys.

    Example:
        >>> answer_params(EmbeddingRequest(model="m", input="hi", extra=2**70))
        {'input': 'hi', 'encoding_format': 'float'}
        >>> answer_params(CompletionRequest(model="m", prompt=[[0]], seed=1, logit_bias={"00": 1, "0": 0.5}))["logit_bias"]
        {0: 0.5}
    """
    if isinstance(req, EmbeddingRequest):
        out = {"input": req.input, "encoding_format": req.encoding_format, "dimensions": req.dimensions}
        return {k: v for k, v in out.items() if v is not None}
    out = {name: getattr(req, name) for name in _GEN_ANSWER}
    out.update({name: float(getattr(req, name)) + 0.0 for name in _FLOATS})  # + 0.0: -0.0 is 0.0
    bias = req.logit_bias or {}
    out["logit_bias"] = {int(k): float(bias[k]) for k in sorted(bias, key=int)} or None
    out["stop"] = list(req.stop or []) or None
    out["response_format"] = constraint(req.response_format)
    out["n"] = req.n if req.n > 1 else None  # the default keeps the keys that were written before n was served
    if isinstance(req, ChatCompletionRequest):
        # everything a template renders: two conversations differing in a tool call or its id are two prompts
        out["messages"] = [[m.role, m.text()] + ([extra] if (extra := m.extra_text()) else [])
                           for m in req.messages]
        if req.tool_mode() is not None:
            out["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
            out["tool_choice"] = req.tool_mode()
        out["max_tokens"] = req.max_completion_tokens or req.max_tokens
        out["logprobs"] = req.logprobs or None  # false is no logprobs
        out["top_logprobs"] = req.top_logprobs if req.logprobs else None
    else:
        prompt = req.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # one prompt in a list is that prompt (several are refused)
        out["prompt"], out["echo"], out["max_tokens"] = prompt, req.echo, req.max_tokens
        out["best_of"] = req.best_of if req.best_of not in (None, req.n) else None
    return {k: v for k, v in out.items() if v is not None}


def validation_message(exc) -> tuple[str, str | None]:
    """One readable line from a pydantic ValidationError, and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return str(exc), None
    # A union reports one error per member; the member whose type matched says what is actually wrong.
    e = next((x for x in errors if not x.get("type", "").endswith("_type")), errors[0])
    loc = [str(p) for p in e.get("loc", ()) if not isinstance(p, int) and not _union_tag(str(p))]
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"invalid value for {param!r}: {msg}" if param else msg) + extra, param


def _union_tag(part: str) -> bool:
    # pydantic names the member of a union in the error's location: 'str', 'list[int]', 'constrained-int'...
    return "[" in part or part.startswith("constrained-") or part in ("str", "int", "float", "bool", "TextPart")

