"""Tools on /v1/chat/completions (issue 24, item 4), through the official openai client in-process: a model
with a tool template (the tiny GPT-2 given a Hermes-style one) makes a constrained call, the call and its result
go back through the template, streamed calls assemble into the same call; a model without one takes
constrained calls only; and the cache, the governance and the errors see tools as part of the request."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import httpx
import pytest

import leaninfer
from leaninfer.serving.forward import input_bound
from leaninfer.serving.protocol import ChatCompletionRequest, answer_params

from .conftest import app_client

TEMPLATE = (Path(__file__).parent / "tool_template.jinja").read_text()
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                        "b": {"enum": ["x", "y"]}},
       "required": ["a", "b"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "adds", "parameters": ADD}},
         {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "what is the weather"}]


@pytest.fixture(scope="module")
def models(tiny_gpt2):
    tooled = leaninfer.load("random:tiny-gpt2")
    tooled.tokenizer = copy.deepcopy(tooled.tokenizer)  # its own: the session's tiny_gpt2 keeps the plain one
    tooled.tokenizer.chat_template = TEMPLATE
    return {"tooled": tooled, "plain": tiny_gpt2}


def _valid(name: str, arguments: str) -> bool:
    args = json.loads(arguments)
    if name == "add":
        return set(args) == {"a", "b"} and args["a"] in range(10) and args["b"] in ("x", "y")
    return set(args) == {"days"} and args["days"] in range(1, 8)


def _openai(c: httpx.AsyncClient):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=c, max_retries=0)


def test_a_tool_call_round_trips_through_the_openai_client(models):
    async def main():
        async with app_client(models) as c:
            client = _openai(c)
            r = await client.chat.completions.create(
                model="tooled", messages=ASK, tools=TOOLS, max_tokens=40, seed=3,
                tool_choice={"type": "function", "function": {"name": "add"}})
            (choice,) = r.choices
            (call,) = choice.message.tool_calls
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            assert call.type == "function" and call.id.startswith("call_") and call.function.name == "add"
            assert _valid("add", call.function.arguments), call.function.arguments
            # the prompt rendered the tools through the model's template: they were counted and charged
            bare = await client.chat.completions.create(model="tooled", messages=ASK, max_tokens=1)
            assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 20

            # the call and its result go back: the template renders both, and the model answers
            history = [*ASK, choice.message.model_dump(exclude_none=True),
                       {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21"}]
            again = await client.chat.completions.create(model="tooled", messages=history, tools=TOOLS,
                                                         max_tokens=4, tool_choice="none")
            assert again.choices[0].message.tool_calls is None and again.choices[0].message.content
            rendered = await c.post("/tokenize", json={"model": "tooled", "messages": history,
                                                       "return_token_strs": True})
            text = " ".join(rendered.json()["token_strs"])
            assert "sunny and 21" in text and "< tool _ call >" in text and "< tool _ response >" in text
            assert "add" in text
    asyncio.run(main())


def test_streamed_calls_assemble_into_the_calls_a_whole_answer_has(models):
    async def main():
        async with app_client(models) as c:
            client = _openai(c)
            for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
                kw = dict(model="tooled", messages=ASK, tools=TOOLS, max_tokens=40, seed=5, temperature=0.7,
                          tool_choice=tool_choice)
                whole = (await client.chat.completions.create(**kw)).choices[0]
                stream = await client.chat.completions.create(**kw, stream=True)
                calls: dict[int, dict] = {}
                reasons, content = [], ""
                async for chunk in stream:
                    for ch in chunk.choices:
                        content += ch.delta.content or ""
                        reasons += [ch.finish_reason] if ch.finish_reason else []
                        for d in ch.delta.tool_calls or ():
                            got = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
                            got["name"] += d.function.name or ""
                            got["arguments"] += d.function.arguments or ""
                assert reasons == ["tool_calls"] and content == ""
                (got,) = calls.values()
                want = whole.message.tool_calls[0]
                assert (got["name"], got["arguments"]) == (want.function.name, want.function.arguments)
                assert got["id"].startswith("call_") and _valid(got["name"], got["arguments"])
    asyncio.run(main())


def test_required_calls_always_parse_and_validate(models):
    """Constrained calls on random weights: every sample names a given function with valid arguments."""
    async def main():
        async with app_client(models) as c:
            async def one(seed: int, model: str):
                r = await c.post("/v1/chat/completions", json={
                    "model": model, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 40,
                    "seed": seed, "temperature": 1.0})
                assert r.status_code == 200, r.text
                (ch,) = r.json()["choices"]
                (call,) = ch["message"]["tool_calls"]
                assert ch["finish_reason"] == "tool_calls"
                assert _valid(call["function"]["name"], call["function"]["arguments"])
                return call["function"]["name"]
            names = await asyncio.gather(*(one(s, m) for s in range(24) for m in ("tooled", "plain")))
            assert set(names) == {"add", "get_weather"}  # the grammar leaves the choice to the model
    asyncio.run(main())


def test_n_choices_each_make_their_call(models):
    async def main():
        async with app_client(models) as c:
            r = await c.post("/v1/chat/completions", json={
                "model": "tooled", "messages": ASK, "tools": TOOLS, "n": 3, "max_tokens": 40, "seed": 1,
                "tool_choice": {"type": "function", "function": {"name": "add"}}})
            body = r.json()
            assert [ch["index"] for ch in body["choices"]] == [0, 1, 2]
            ids = {ch["message"]["tool_calls"][0]["id"] for ch in body["choices"]}
            assert len(ids) == 3
            assert all(_valid("add", ch["message"]["tool_calls"][0]["function"]["arguments"])
                       for ch in body["choices"])
    asyncio.run(main())


def test_auto_on_a_model_that_renders_tools_answers_and_without_one_is_a_400(models):
    async def main():
        async with app_client(models) as c:
            r = await c.post("/v1/chat/completions", json={"model": "tooled", "messages": ASK, "tools": TOOLS,
                                                           "max_tokens": 5, "seed": 2})
            # random weights write no call: the text is the content, the finish reason the engine's
            ch = r.json()["choices"][0]
            assert r.status_code == 200 and ch["finish_reason"] == "length" and ch["message"]["content"]
            r = await c.post("/v1/chat/completions", json={"model": "plain", "messages": ASK, "tools": TOOLS})
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "tool_choice" and err["code"] == "tools_not_supported"
            assert "'plain'" in err["message"] and '"required"' in err["message"]
    asyncio.run(main())


BAD = [  # (a change to a tools request, the param named, words of the message)
    ({"tool_choice": {"type": "function", "function": {"name": "sub"}}}, "tool_choice", "not among tools"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "unique"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.function.name", "pattern"),
    ({"tools": [{"type": "retrieval"}]}, "tools.type", "function"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "response_format", "one of them"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "if": {"minLength": 1}, "then": {}}}}}}],
      "tool_choice": "required"}, "tools", "not supported"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                              "function": {"name": "add"}}]}]},
     "messages.tool_calls.function.arguments", "required"),
]


@pytest.mark.parametrize("change,param,words", BAD, ids=[b[1] + "-" + b[2] for b in BAD])
def test_bad_tools_requests_are_400s_naming_the_field(models, change, param, words):
    async def main():
        async with app_client(models) as c:
            body = {"model": "tooled", "messages": ASK, "tools": TOOLS, "max_tokens": 4, **change}
            r = await c.post("/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == param and words in err["message"], err
    asyncio.run(main())


def test_tools_and_calls_are_part_of_the_cache_key_and_the_upstream_bound():
    def req(**kw):
        return ChatCompletionRequest(**{"model": "m", "messages": ASK, **kw})

    call = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "add", "arguments": '{"a": 1, "b": "x"}'}}]}
    other = copy.deepcopy(call)
    other["tool_calls"][0]["function"]["arguments"] = '{"a": 2, "b": "x"}'
    keys = [answer_params(req()), answer_params(req(tools=TOOLS)), answer_params(req(tools=TOOLS[:1])),
            answer_params(req(tools=TOOLS, tool_choice="required")),
            answer_params(req(messages=[*ASK, call])), answer_params(req(messages=[*ASK, other]))]
    assert all(keys[i] != keys[j] for i in range(len(keys)) for j in range(i))
    assert answer_params(req(tools=TOOLS, tool_choice="none")) == keys[0]  # "none": not rendered, not read
    # forwarded to an upstream, the tools' definitions and the calls count in the prompt's bound
    assert input_bound(req(tools=TOOLS)) >= input_bound(req()) + len(json.dumps(TOOLS))
    assert input_bound(req(messages=[*ASK, call])) > input_bound(req()) + len('{"a": 1, "b": "x"}')
