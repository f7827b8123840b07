"""``tools`` on ``/v1/chat/completions``: what the model is shown, what constrains it, and its output as
``message.tool_calls`` (whole) or ``delta.tool_calls`` (streamed).

- ``tool_choice: "auto"`` (the default with tools): the tools go through the model's chat template, which must
  render them (else a 400 says so and what works instead); the model decides, and its calls are read back in
  its own format (:mod:`leaninfer.models.tool_calls`).
- ``"required"`` or a named function: the output is constrained by grammar (as ``response_format``), so a
  call is always made and always parses: a named function's output is its arguments object, streamed as
  argument deltas as it is generated; ``required`` with several functions writes ``{"name", "arguments"}``,
  one of them, sent as one delta once complete. The tools are rendered by the template where it can; where
  not, a system message lists them (the model must know what the arguments mean).
- ``"none"`` (or no tools): neither rendered nor read.

One call is made under a constraint (``parallel_tool_calls`` changes nothing there); "auto" returns as many
as the model writes.
"""

from __future__ import annotations

import json
import uuid

from ..models.tool_calls import Call, CallReader, call_format, read_call, renders_tools
from .protocol import ChatCompletionRequest, OpenAIError


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolPlan:
    """One request's tools on one model."""

    def __init__(self, req: ChatCompletionRequest, tokenizer):
        self.mode = req.tool_mode()
        self.tools = req.tools or []
        self.names = {t.function.name for t in self.tools}
        self.rendered = renders_tools(tokenizer)
        self.fmt = call_format(tokenizer)
        if self.mode == "auto" and not self.rendered:
            raise OpenAIError(400, f'model {req.model!r} has a chat template that renders no tools, so it can\'t '
                                   'choose to call one ("auto"); send tool_choice "required" or {"type": '
                                   '"function", "function": {"name": ...}} for a call constrained by its schema',
                              param="tool_choice", code="tools_not_supported")
        if self.mode not in (None, "auto") and req.response_format and req.response_format.get("type") != "text":
            raise OpenAIError(400, "response_format constrains the content, a required tool call constrains the "
                                   "call: send one of them", param="response_format", code="invalid_value")

    def _params(self, name: str) -> dict:
        fn = next(t.function for t in self.tools if t.function.name == name)
        return fn.parameters if fn.parameters is not None else {"type": "object"}

    @property
    def single(self) -> str | None:
        """The function a constrained output is the arguments of (named, or "required" with one function)."""
        if self.mode == "required" and len(self.tools) == 1:
            return self.tools[0].function.name
        return self.mode if self.mode not in (None, "auto", "required") else None

    def response_format(self) -> dict | None:
        """The grammar's ``response_format`` of a constrained call; None where the model chooses."""
        if self.mode in (None, "auto"):
            return None
        if self.single:
            schema = self._params(self.single)
        else:
            schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": t.function.name},
                                                                  "arguments": self._params(t.function.name)},
                                 "required": ["name", "arguments"], "additionalProperties": False}
                                for t in self.tools]}
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}

    def template_tools(self) -> list[dict] | None:
        """The ``tools`` a template renders (None: it is given none)."""
        if self.mode is None or not self.rendered:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def system_note(self) -> str | None:
        """Where the template renders no tools, what a constrained call is told of them."""
        if self.mode is None or self.rendered:
            return None
        specs = [t.function.model_dump(exclude_none=True, include={"name", "description", "parameters"})
                 for t in self.tools]
        return "Call one of these functions by answering with its arguments as JSON:\n" + json.dumps(specs)

    def output(self) -> ToolOutput:
        return ToolOutput(self)


class ToolOutput:
    """One choice's generated text as content and tool calls: :meth:`feed` (streamed pieces) and
    :meth:`finish` return delta dicts; :meth:`message` reads a whole text."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.reader = CallReader(plan.fmt, plan.names) if plan.mode == "auto" else None
        self.buf = ""
        self.calls: list[dict] = []  # whole: the message's tool_calls
        self.streamed_args = False  # a named call's first argument delta is out

    def _call(self, c: Call) -> dict:
        return {"index": len(self.calls), "id": _call_id(), "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}}

    def _deltas(self, events: list[tuple]) -> list[dict]:
        out = []
        for kind, value in events:
            if kind == "content":
                out.append({"content": value})
            else:
                call = self._call(value)
                self.calls.append(call)
                out.append({"tool_calls": [call]})
        return out

    def feed(self, text: str) -> list[dict]:
        if not text:
            return []
        if self.reader is not None:
            return self._deltas(self.reader.feed(text))
        if self.plan.single:  # the arguments, as they come
            if not self.streamed_args:
                self.streamed_args = True
                call = {"index": 0, "id": _call_id(), "type": "function",
                        "function": {"name": self.plan.single, "arguments": text}}
                self.calls.append(call)
                return [{"tool_calls": [{**call, "function": dict(call["function"])}]}]  # a copy: it grows
            self.calls[0]["function"]["arguments"] += text
            return [{"tool_calls": [{"index": 0, "function": {"arguments": text}}]}]
        self.buf += text  # "required" among several: the name is known once the object is complete
        return []

    def finish(self, reason: str | None) -> tuple[list[dict], str | None]:
        """The last deltas, and the finish reason: ``tool_calls`` when the choice made calls and ended of
        itself (not at max_tokens, where the arguments may be cut)."""
        if self.reader is not None:
            out = self._deltas(self.reader.finish())
        elif self.plan.single:
            out = []
        else:
            try:
                call = read_call(json.loads(self.buf), self.plan.names) if self.buf else None
            except ValueError:
                call = None  # cut at max_tokens: what was written is the content
            out = self._deltas([("call", call)] if call else [("content", self.buf)] if self.buf else [])
            self.buf = ""
        return out, ("tool_calls" if self.calls and reason == "stop" else reason)

    def message(self, text: str, reason: str | None) -> tuple[str | None, list[dict] | None, str | None]:
        """``(content, tool_calls, finish_reason)`` of a whole choice."""
        deltas = self.feed(text)
        more, reason = self.finish(reason)
        content = "".join(d.get("content", "") for d in deltas + more)
        calls = [{k: v for k, v in c.items() if k != "index"} for c in self.calls]
        if not calls:
            return content, None, reason
        return (content or None), calls, reason
