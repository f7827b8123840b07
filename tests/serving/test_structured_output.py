"""Structured output (issue 24, item 3): ``response_format`` json_object and json_schema, enforced by grammar
masks in the sampler (llguidance, models/grammar.py), on both endpoints, streamed or not."""

from __future__ import annotations

import asyncio
import json

import pytest

from leaninfer.serving.protocol import ChatCompletionRequest, CompletionRequest, answer_params

from .conftest import app_client
from .test_openai_surface import _events

GPT = "tiny-gpt2"
# short by construction (every value bounded, one-letter keys), so that each sample ends by the grammar within
# max_tokens, and 512 of them stay cheap
SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": "boolean"},
        "b": {"enum": ["red", "green", "blue"]},
        "c": {"type": "integer", "minimum": -5, "maximum": 99},
        "d": {"type": "string", "maxLength": 3},
        "e": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 1},
    },
    "required": ["a", "b", "c", "d", "e"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "probe", "schema": SCHEMA, "strict": True}}
CHAT = {"model": GPT, "messages": [{"role": "user", "content": "give me json"}]}


def _check(value) -> None:
    """Validates against SCHEMA (with jsonschema where installed, by hand otherwise)."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(value, SCHEMA)
        return
    assert set(value) == set(SCHEMA["required"])
    assert isinstance(value["a"], bool) and value["b"] in ("red", "green", "blue")
    assert type(value["c"]) is int and -5 <= value["c"] <= 99
    assert isinstance(value["d"], str) and len(value["d"]) <= 3
    assert len(value["e"]) <= 1 and all(type(x) is int and 0 <= x <= 9 for x in value["e"])


def test_json_schema_output_always_parses_and_validates(served, requests=32):
    """The issue's check: 512 samples from a random-weight model at temperature 1 (32 requests x n=16, each its
    own seed; half chat, half completions), sharing the running batch: every one parses, validates, and finished
    because the grammar completed. About 5 s on 2 idle cores (20 s with a test run beside it)."""

    async def main():
        async with app_client(served, max_batch_size=256, max_batch_tokens=32768, max_queue=1024) as c:
            half = requests // 2
            bodies = [{**CHAT, "n": 16, "seed": 1000 * i, "temperature": 1.0, "max_tokens": 64,
                       "response_format": FORMAT} for i in range(half)]
            bodies += [{"model": GPT, "prompt": f"record {i}:", "n": 16, "seed": 7 + 1000 * i, "temperature": 1.0,
                        "max_tokens": 64, "response_format": FORMAT} for i in range(half)]
            rs = await asyncio.gather(*[c.post("/v1/chat/completions" if "messages" in b else "/v1/completions",
                                               json=b) for b in bodies])
            texts = []
            for r in rs:
                assert r.status_code == 200, r.text
                for ch in r.json()["choices"]:
                    assert ch["finish_reason"] == "stop", ch
                    texts.append(ch["message"]["content"] if "message" in ch else ch["text"])
            assert len(texts) == 16 * requests
            for t in texts:
                _check(json.loads(t))
            assert len(set(texts)) > len(texts) // 2  # sampled, not one forced answer
            assert max(c.app.state.served[GPT].engine.scheduler.batch_sizes) > 16  # rows shared decode steps
    asyncio.run(main())


def test_json_object_output_parses_and_streams_the_same(served):
    async def main():
        async with app_client(served) as c:
            req = {"model": GPT, "prompt": "{", "n": 16, "seed": 3, "max_tokens": 48,
                   "response_format": {"type": "json_object"}}
            r = await c.post("/v1/completions", json=req)
            choices = r.json()["choices"]
            stopped = [ch["text"] for ch in choices if ch["finish_reason"] == "stop"]
            assert stopped and all(ch["finish_reason"] in ("stop", "length") for ch in choices)
            for t in stopped:
                assert isinstance(json.loads(t), dict)
            for ch in choices:  # cut by max_tokens or not, each is an object's beginning
                assert ch["text"].startswith("{")
            # streamed: the same text (the same seeds), chunk by chunk
            r = await c.post("/v1/completions", json={**req, "stream": True})
            streamed: dict[int, str] = {}
            for e in _events(r.text):
                for ch in e["choices"]:
                    streamed[ch["index"]] = streamed.get(ch["index"], "") + ch["text"]
            assert [streamed[i] for i in range(16)] == [ch["text"] for ch in choices]
            r = await c.post("/v1/chat/completions", json={**CHAT, "seed": 1, "stream": True, "max_tokens": 64,
                                                           "response_format": FORMAT})
            _check(json.loads("".join(e["choices"][0]["delta"].get("content") or "" for e in _events(r.text)
                                      if e["choices"])))
    asyncio.run(main())


def test_max_tokens_cuts_a_constrained_row_with_length(served):
    async def main():
        async with app_client(served) as c:
            r = await c.post("/v1/chat/completions", json={**CHAT, "seed": 2, "max_tokens": 3,
                                                           "response_format": FORMAT})
            ch = r.json()["choices"][0]
            assert ch["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 3
            assert ch["message"]["content"].startswith("{")
            with pytest.raises(json.JSONDecodeError):  # incomplete, as OpenAI's is
                json.loads(ch["message"]["content"])
    asyncio.run(main())


def test_a_mixed_batch_leaves_free_rows_greedy_tokens_unchanged(served):
    async def main():
        async with app_client(served, max_batch_size=16) as c:
            free = {"model": GPT, "prompt": "the cat sat on", "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                    "logprobs": 0}
            alone = (await c.post("/v1/completions", json=free)).json()["choices"][0]
            engine = c.app.state.served[GPT].engine
            before = len(engine.scheduler.batch_sizes)
            constrained = [c.post("/v1/chat/completions", json={**CHAT, "seed": i, "n": 4, "max_tokens": 64,
                                                                "response_format": FORMAT}) for i in range(3)]
            rs = await asyncio.gather(c.post("/v1/completions", json=free), *constrained)
            assert max(engine.scheduler.batch_sizes[before:]) >= 2  # they shared decode steps
            mixed = rs[0].json()["choices"][0]
            assert mixed["text"] == alone["text"]
            assert mixed["logprobs"]["tokens"] == alone["logprobs"]["tokens"]
            for r in rs[1:]:
                for ch in r.json()["choices"]:
                    _check(json.loads(ch["message"]["content"]))
    asyncio.run(main())


UNSUPPORTED_SCHEMAS = [
    ({"type": "object", "if": {"type": "object"}, "then": {"required": ["a"]}}, "if"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "minimum (5) is greater than maximum (2)"),
    # the random presets' WordPiece vocabulary has no token for it: refused up front, not a dead end mid-way
    ({"enum": ["\U0001F9EC"]}, "WordPiece vocabulary can't write: '\U0001F9EC'"),
]


@pytest.mark.parametrize("schema,named", UNSUPPORTED_SCHEMAS, ids=[n[:20] for _, n in UNSUPPORTED_SCHEMAS])
def test_an_unsupported_schema_is_a_400_naming_the_construct(served, schema, named):
    async def main():
        async with app_client(served) as c:
            for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": GPT, "prompt": "x"})):
                for stream in (False, True):
                    r = await c.post(path, json={**body, "stream": stream, "response_format": {
                        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
                    assert r.status_code == 400, r.text
                    err = r.json()["error"]
                    assert err["param"] == "response_format" and err["code"] == "unsupported_schema"
                    assert named in err["message"]
    asyncio.run(main())


BAD_SHAPES = [
    ({"type": "xml"}, "one of text, json_object, json_schema"),
    ({"type": "json_schema"}, '"json_schema" object'),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": [1]}}, "must be a JSON object"),
    ({"type": "json_schema", "json_schema": {"name": "s", "strict": "yes"}}, "strict"),
    ("json", "valid dictionary"),
    ({}, "one of text, json_object, json_schema"),
]


@pytest.mark.parametrize("value,named", BAD_SHAPES, ids=[str(i) for i in range(len(BAD_SHAPES))])
def test_bad_response_format_shapes_are_400s(served, value, named):
    async def main():
        async with app_client(served) as c:
            for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": GPT, "prompt": "x"})):
                r = await c.post(path, json={**body, "response_format": value})
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["param"] == "response_format" and named in err["message"], err
    asyncio.run(main())


def test_the_response_cache_key_includes_the_constraint():
    def key(fmt, req=ChatCompletionRequest, **kw):
        base = {"model": "m", "messages": [{"role": "user", "content": "x"}]} if req is ChatCompletionRequest \
            else {"model": "m", "prompt": "x"}
        return answer_params(req(**base, **kw, **({} if fmt is None else {"response_format": fmt})))

    assert key(None) == key({"type": "text"})  # text is no constraint: the keys written before stay
    assert key({"type": "json_object"}) != key(None)
    assert key(FORMAT) != key({"type": "json_object"})
    other = {"type": "json_schema", "json_schema": {"name": "probe", "schema": {**SCHEMA, "required": ["a"]}}}
    assert key(other) != key(FORMAT)
    # what doesn't change the output doesn't split the cache
    assert key({**FORMAT, "json_schema": {**FORMAT["json_schema"], "strict": False, "description": "d"}}) == key(FORMAT)
    assert key(FORMAT, CompletionRequest) != key(None, CompletionRequest)


class _DeadEndGrammar:
    """A grammar that allows any token for ``steps`` tokens, then none: what a schema can do mid-way on a
    vocabulary that lacks what it needs next."""

    def __init__(self, vocab: int, steps: int):
        self.vocab, self.steps = vocab, steps

    def matcher(self):
        import numpy as np

        from leaninfer.models.grammar import GrammarDeadEnd

        grammar, taken = self, []

        class M:
            def allowed(self):
                if len(taken) >= grammar.steps:
                    raise GrammarDeadEnd("grammar error: no token continues it")
                return np.ones(grammar.vocab, dtype=bool)

            def advance(self, tok):
                taken.append(tok)

            def done(self):
                return False
        return M()

    def decode(self, ids):
        return "x" * len(ids)


def test_a_grammar_dead_end_mid_generation_is_the_requests_400_not_a_500(served, monkeypatch):
    from leaninfer.serving import generation

    monkeypatch.setattr(generation, "json_grammar", lambda model, fmt: _DeadEndGrammar(30522, 3))
    async def main():
        async with app_client(served) as c:
            for stream in (False, True):
                r = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream, "max_tokens": 10,
                                                               "response_format": {"type": "json_object"}})
                if not stream:
                    assert r.status_code == 400, r.text
                    err = r.json()["error"]
                else:  # the status line has gone: the stream's last event is the error
                    assert r.status_code == 200
                    err = _events(r.text)[-1]["error"]
                assert err["code"] == "unsupported_schema" and err["param"] == "response_format"
                assert "can't complete" in err["message"] and err["type"] == "invalid_request_error"
            # a free request alongside is untouched
            free = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
            assert free.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'leaninfer_server_errors_total{endpoint="chat.completions",status="500"}' not in metrics
    asyncio.run(main())
