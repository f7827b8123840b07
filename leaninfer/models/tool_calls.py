"""Tool calls in a model's own words: whether its chat template renders tools, the messages it is given, and the
calls read back out of what it generates.

Chat templates take tools and tool calls in Hugging Face's shape (``apply_chat_template(..., tools=...)``; an
assistant's call as ``{"type": "function", "function": {"name", "arguments": {...}}}``, a tool's result as a
``tool`` message with its ``tool_call_id``), not OpenAI's, whose ``arguments`` are JSON text: that conversion
lives here. Models write calls in one of two ways, read here:

- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes; Qwen 2.5/3, many fine-tunes), found by
  its tag wherever it appears, text around it being the message's content;
- a bare JSON object or list of them, ``{"name": ..., "arguments"|"parameters": {...}}`` (Llama 3.1/3.2), taken
  as calls when the whole output is one and names only given functions.

Mistral's ``[TOOL_CALLS]`` and other formats are not read (their output stays content). A call whose JSON
doesn't parse stays content too: nothing is guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


def _templates(tokenizer) -> list[str]:
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):
        return [v for v in t.values() if isinstance(v, str)]
    return [t] if isinstance(t, str) else []


def renders_tools(tokenizer) -> bool:
    """Whether the model's chat template renders a ``tools`` list (a template that never reads the variable
    would drop the definitions without a word)."""
    return any(re.search(r"\btools\b", t) for t in _templates(tokenizer))


def call_format(tokenizer) -> str:
    """``"hermes"`` when the template writes ``<tool_call>`` tags, else ``"json"``."""
    return "hermes" if any(HERMES_OPEN in t for t in _templates(tokenizer)) else "json"


def _arguments(text: str):
    """OpenAI's JSON-text arguments as the object templates expect; text that isn't JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def template_messages(messages, with_tools: bool) -> list[dict]:
    """Validated chat messages as a template's dicts. Where the template renders no tools, an assistant's
    calls become JSON in its content, so that no part of the conversation is dropped."""
    out = []
    for m in messages:
        d = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            calls = [{"id": c.id, "type": "function",
                      "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                     for c in m.tool_calls]
            if with_tools:
                d["tool_calls"] = calls
            else:
                d["content"] = (d["content"] + "\n" if d["content"] else "") + json.dumps(
                    [c["function"] for c in calls])
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # JSON text of the arguments object


def read_call(obj, names: set[str]) -> Call | None:
    """``{"name": ..., "arguments"|"parameters": {...}}`` naming a given function, as a :class:`Call`."""
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as JSON text already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_calls(text: str, names: set[str]) -> list[Call] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    objs = obj if isinstance(obj, list) else [obj]
    calls = [read_call(o, names) for o in objs]
    return calls if calls and all(calls) else None


class CallReader:
    """Reads one generated sequence as it streams: ``feed`` its text pieces, then ``finish``; each returns the
    events so far, ``("content", text)`` or ``("call", Call)``. Content that may be the start of a call is
    held back until it is known not to be one, so a stream never shows a call's markup as content."""

    def __init__(self, fmt: str, names: set[str]):
        self.fmt, self.names = fmt, names
        self.buf = ""
        self.in_call = False  # hermes: inside <tool_call>...
        self.calls = 0

    def feed(self, text: str) -> list[tuple]:
        self.buf += text
        return self._step(final=False)

    def finish(self) -> list[tuple]:
        return self._step(final=True)

    def _step(self, final: bool) -> list[tuple]:
        if self.fmt == "hermes":
            return self._hermes(final)
        if self.fmt == "json":
            return self._json(final)
        text, self.buf = self.buf, ""  # "text": the output was seen not to be a call
        return self._content(text)

    def _content(self, text: str) -> list[tuple]:
        # once a call was made, whitespace between and after calls is not content
        return [("content", text)] if text and not (self.calls and not text.strip()) else []

    def _hermes(self, final: bool) -> list[tuple]:
        out: list[tuple] = []
        while True:
            if not self.in_call:
                at = self.buf.find(HERMES_OPEN)
                if at < 0:
                    keep = 0 if final else _partial_suffix(self.buf, HERMES_OPEN)
                    out += self._content(self.buf[: len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return out
                out += self._content(self.buf[:at])
                self.buf, self.in_call = self.buf[at + len(HERMES_OPEN):], True
            at = self.buf.find(HERMES_CLOSE)
            if at < 0 and not final:
                return out
            body = self.buf if at < 0 else self.buf[:at]  # final without a closing tag: EOS ended the call
            calls = _json_calls(body.strip(), self.names)
            if calls is None:
                out += self._content(HERMES_OPEN + body + ("" if at < 0 else HERMES_CLOSE))
            else:
                self.calls += len(calls)
                out += [("call", c) for c in calls]
            self.buf, self.in_call = ("" if at < 0 else self.buf[at + len(HERMES_CLOSE):]), False
            if at < 0:
                return out

    def _json(self, final: bool) -> list[tuple]:
        head = self.buf.lstrip()
        if not head:
            return []
        if head[0] not in "{[":  # not a call: content, from here on
            self.fmt, text, self.buf = "text", self.buf, ""
            return self._content(text)
        if not final:
            return []
        calls, text, self.buf = _json_calls(head, self.names), self.buf, ""
        if calls is None:
            return self._content(text)
        self.calls += len(calls)
        return [("call", c) for c in calls]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
