"""Tool calls read back out of generated text (models/tool_calls.py), whole and streamed in pieces split
anywhere, and the request-level output (serving/tools.py) that turns them into OpenAI deltas and messages."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from leaninfer.models.tool_calls import Call, CallReader, call_format, renders_tools, template_messages
from leaninfer.serving.protocol import ChatCompletionRequest, ChatMessage
from leaninfer.serving.tools import ToolPlan

NAMES = {"get_weather", "add"}
TEMPLATE = (Path(__file__).parents[1] / "serving" / "tool_template.jinja").read_text()


def _read(fmt: str, pieces: list[str]) -> list[tuple]:
    r = CallReader(fmt, NAMES)
    events = [e for p in pieces for e in r.feed(p)] + r.finish()
    merged: list[tuple] = []  # consecutive content pieces as one
    for e in events:
        if merged and e[0] == merged[-1][0] == "content":
            merged[-1] = ("content", merged[-1][1] + e[1])
        else:
            merged.append(e)
    return merged


HERMES = [
    ('let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
     [("content", "let me look. "), ("call", Call("get_weather", '{"city": "Oslo"}'))]),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>{"name": "add", "arguments": '
     '{"a": 2}}</tool_call>\n', [("call", Call("add", '{"a": 1}')), ("call", Call("add", '{"a": 2}'))]),
    # EOS before the closing tag: the call stands
    ('<tool_call>{"name": "add", "arguments": {"a": 3}}', [("call", Call("add", '{"a": 3}'))]),
    # not JSON, or a function that wasn't given: content, as written
    ('<tool_call>{"name": "add", "arguments": {"a": </tool_call>',
     [("content", '<tool_call>{"name": "add", "arguments": {"a": </tool_call>')]),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
     [("content", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>')]),
    # a tag's start that turns out to be text is released
    ("1 <tool 2 <tool_cal", [("content", "1 <tool 2 <tool_cal")]),
    ("no calls at all", [("content", "no calls at all")]),
]


@pytest.mark.parametrize("text,want", HERMES)
def test_hermes_calls_are_read_whole_and_in_pieces_split_anywhere(text, want):
    assert _read("hermes", [text]) == want
    for cut in range(1, len(text)):
        assert _read("hermes", [text[:cut], text[cut:]]) == want, cut
    assert _read("hermes", list(text)) == want  # a character at a time


def test_a_stream_never_shows_a_calls_markup_as_content():
    r = CallReader("hermes", NAMES)
    shown = []
    for ch in 'ok <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>':
        shown += [v for k, v in r.feed(ch) if k == "content"]
    assert "".join(shown) == "ok "


JSON_STYLE = [
    ('{"name": "add", "parameters": {"a": 1}}', [("call", Call("add", '{"a": 1}'))]),  # Llama 3.x
    ('  [{"name": "add", "arguments": {"a": 1}}, {"name": "get_weather", "arguments": "{\\"city\\": \\"x\\"}"}]',
     [("call", Call("add", '{"a": 1}')), ("call", Call("get_weather", '{"city": "x"}'))]),
    ('{"name": "nope", "parameters": {}}', [("content", '{"name": "nope", "parameters": {}}')]),
    ('{"a": 1} and more', [("content", '{"a": 1} and more')]),
    ("plain text {\"name\": \"add\"}", [("content", "plain text {\"name\": \"add\"}")]),
]


@pytest.mark.parametrize("text,want", JSON_STYLE)
def test_json_calls_are_read_only_when_the_whole_output_is_one(text, want):
    assert _read("json", [text]) == want
    assert _read("json", list(text)) == want


def test_templates_are_recognised_by_what_they_render():
    tok = SimpleNamespace(chat_template=TEMPLATE)
    assert renders_tools(tok) and call_format(tok) == "hermes"
    plain = SimpleNamespace(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert not renders_tools(plain) and call_format(plain) == "json"
    assert renders_tools(SimpleNamespace(chat_template={"default": "x", "tool_use": "{{ tools }}"}))
    assert not renders_tools(SimpleNamespace(chat_template=None))


def test_calls_in_the_conversation_reach_the_template_as_objects_or_as_text():
    msgs = [ChatMessage(role="assistant", content=None, tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]),
        ChatMessage(role="tool", content="2", tool_call_id="c1")]
    with_tools = template_messages(msgs, with_tools=True)
    assert with_tools[0]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1}}
    assert with_tools[1] == {"role": "tool", "content": "2", "tool_call_id": "c1"}
    without = template_messages(msgs, with_tools=False)
    assert "tool_calls" not in without[0] and json.loads(without[0]["content"]) == [
        {"name": "add", "arguments": {"a": 1}}]


TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_weather"}}]


def _plan(tool_choice, template=TEMPLATE) -> ToolPlan:
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                tool_choice=tool_choice)
    return ToolPlan(req, SimpleNamespace(chat_template=template))


def test_a_named_calls_arguments_stream_as_deltas_of_one_call():
    out = _plan({"type": "function", "function": {"name": "add"}}).output()
    deltas = out.feed('{"a"') + out.feed(": 1}")
    more, reason = out.finish("stop")
    first, second = deltas
    assert first["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a"'}
    assert first["tool_calls"][0]["id"].startswith("call_") and first["tool_calls"][0]["index"] == 0
    assert second == {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}
    assert more == [] and reason == "tool_calls"
    assert out.calls[0]["function"]["arguments"] == '{"a": 1}'


def test_required_among_several_is_one_call_once_complete_or_content_when_cut():
    plan = _plan("required")
    schema = plan.response_format()["json_schema"]["schema"]
    assert [a["properties"]["name"] for a in schema["anyOf"]] == [{"const": "add"}, {"const": "get_weather"}]
    content, calls, reason = plan.output().message('{"name": "get_weather", "arguments": {}}', "stop")
    assert content is None and reason == "tool_calls" and calls[0]["function"] == {"name": "get_weather",
                                                                                  "arguments": "{}"}
    content, calls, reason = plan.output().message('{"name": "get_wea', "length")  # max_tokens cut it
    assert (content, calls, reason) == ('{"name": "get_wea', None, "length")


def test_auto_needs_a_template_that_renders_tools():
    from leaninfer.serving.protocol import OpenAIError

    with pytest.raises(OpenAIError) as e:
        _plan("auto", template="{{ messages }}")
    assert e.value.status == 400 and e.value.param == "tool_choice" and "required" in e.value.message
    plan = _plan("required", template="{{ messages }}")  # constrained: served, the tools told in a system turn
    assert plan.template_tools() is None and '"add"' in plan.system_note()
