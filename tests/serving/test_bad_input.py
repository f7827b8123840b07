"""Bad input, class by class: each gets a 4xx whose message names the field (and what is valid), never a 5xx.

Values that are valid to OpenAI but were 500s (a negative seed, a subnormal temperature) are served instead.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from leaninfer.serving.prompts import check_ids
from leaninfer.serving.protocol import OpenAIError

from .conftest import app_client

pytestmark = pytest.mark.timeout(120)

CHAT = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMP = {"model": "tiny-gpt2", "prompt": "hi", "max_tokens": 2}
EMB = {"model": "minilm", "input": "hi"}
PATH = {"chat": "/v1/chat/completions", "comp": "/v1/completions", "emb": "/v1/embeddings"}
BASE = {"chat": CHAT, "comp": COMP, "emb": EMB}


def post(served, endpoint: str, body: dict | bytes, headers: dict | None = None):
    async def main():
        async with app_client(served) as c:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return await c.post(PATH[endpoint], content=raw,
                                headers={"content-type": "application/json", **(headers or {})})
    return asyncio.run(main())


def refused(r, param: str, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and param.split(".")[0] in err["message"], err
    return err


RANGES = [  # (endpoint, field, bad value, what the message says is valid)
    ("comp", "seed", 2**64, "18446744073709551616"),
    ("comp", "seed", -(2**63) - 1, "-9223372036854775808"),
    ("chat", "temperature", 2.5, "2"),
    ("chat", "temperature", -1e-300, "0"),
    ("comp", "top_p", 0, "greater than 0"),
    ("comp", "top_p", 1.5, "1"),
    ("chat", "top_p", -1, "greater than 0"),
    ("comp", "max_tokens", -5, "0"),  # 0 is served (the prompt scored alone, with echo and logprobs)
    ("comp", "max_tokens", 2**40, "2147483647"),
    ("chat", "max_completion_tokens", 0, "1"),
    ("chat", "presence_penalty", 3, "2"),
    ("chat", "frequency_penalty", -2.5, "-2"),
    ("comp", "logit_bias", {"5": 101}, "100"),
    ("comp", "logit_bias", {"x": 1}, "pattern"),
    ("comp", "seed", "7", "integer"),  # strict JSON types: a string is not a number
    ("chat", "max_tokens", True, "integer"),
    ("emb", "dimensions", 0, "1"),
    ("emb", "dimensions", 10**40, "2147483647"),
]


@pytest.mark.parametrize("endpoint,field,value,valid", RANGES, ids=[f"{e}-{f}-{v!r}"[:40] for e, f, v, _ in RANGES])
def test_out_of_range_values_are_refused_by_name(served, endpoint, field, value, valid):
    param = f"{field}.{next(iter(value))}" if field == "logit_bias" else field  # names the bad key
    err = refused(post(served, endpoint, {**BASE[endpoint], field: value}), param)
    assert valid in err["message"], err


def test_infinite_and_nan_numbers_are_refused(served):
    r = post(served, "chat", json.dumps(CHAT)[:-1].encode() + b', "temperature": 1e999}')  # parses as inf
    assert "finite" in refused(r, "temperature")["message"]
    for const in (b"NaN", b"Infinity", b"-Infinity"):
        r = post(served, "comp", json.dumps(COMP)[:-1].encode() + b', "top_p": ' + const + b"}")
        assert r.status_code == 400 and const.decode().lstrip("-") in r.json()["error"]["message"], r.text


def test_token_ids_outside_the_smaller_vocabulary_are_refused(served, tiny_gpt2):
    vocab = min(tiny_gpt2.config.vocab_size, len(tiny_gpt2.tokenizer))
    for bad in (vocab, vocab + 5, 10**12):
        err = refused(post(served, "comp", {**COMP, "prompt": [1, bad]}), "prompt")
        assert str(bad) in err["message"] and f"[0, {vocab})" in err["message"], err
    refused(post(served, "comp", {**COMP, "prompt": [1, -1]}), "prompt")
    refused(post(served, "comp", {**COMP, "logit_bias": {str(vocab): 5}}), "logit_bias")
    refused(post(served, "emb", {**EMB, "input": [[1, 2], [10**9]]}), "input")
    refused(post(served, "emb", {**EMB, "input": [3, -2]}), "input")


LABELS = [  # (endpoint, field, value, what the message says): strings that reach the ledger and metric labels
    ("emb", "model", "minilm\x00", "control character '\\x00' at position 6"),
    ("comp", "model", "\x00", "control character"),
    ("chat", "user", "\x00", "control character"),
    ("comp", "user", "\x1b[31mred", "control character '\\x1b'"),
    ("emb", "user", "a\x85b", "control character '\\x85'"),
    ("chat", "user", "a\x7f", "control character '\\x7f'"),
    ("comp", "user", "tab\there", "control character '\\t'"),
    ("emb", "model", "m" * 257, "at most 256"),
    ("chat", "user", "u" * 257, "at most 256"),
]


@pytest.mark.parametrize("endpoint,field,value,says", LABELS, ids=[f"{e}-{f}-{i}" for i, (e, f, _, _) in
                                                                  enumerate(LABELS)])
def test_control_characters_and_long_labels_are_refused_by_name(served, endpoint, field, value, says):
    err = refused(post(served, endpoint, {**BASE[endpoint], field: value}), field)
    assert says in err["message"], err


HEADERS = [("X-Leaninfer-Workflow", "a\x00b", "control character"),
           ("X-Leaninfer-Workflow", "w" * 65, "at most 64"),
           ("X-Leaninfer-Tags", "env=\x1b[2J", "control character"),
           ("X-Leaninfer-Tags", "novalue", "key=value"),
           ("X-Leaninfer-Tags", ",".join(f"k{i}=v" for i in range(17)), "at most 16")]


@pytest.mark.parametrize("header,value,says", HEADERS, ids=range(len(HEADERS)))
def test_label_headers_are_checked_at_the_edge(served, header, value, says):
    r = post(served, "emb", EMB, {header: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == header and header in err["message"] and says in err["message"], err


def test_clean_labels_of_any_script_are_served(served):
    r = post(served, "chat", {**CHAT, "user": "ユーザー naïve 👋 " + "u" * 200},
             {"X-Leaninfer-Workflow": "caf\xe9".encode("latin-1"),  # headers travel as latin-1 octets
              "X-Leaninfer-Tags": "env=prod, \xe9quipe=donn\xe9es".encode("latin-1")})
    assert r.status_code == 200, r.text


SURROGATE = "a\ud800b"
SURROGATES = [
    ("emb", "model", SURROGATE),
    ("emb", "input", SURROGATE),
    ("emb", "input", ["ok", SURROGATE]),
    ("comp", "prompt", SURROGATE),
    ("comp", "prompt", [SURROGATE]),
    ("comp", "user", SURROGATE),
    ("comp", "stop", [SURROGATE]),
    ("chat", "messages.content", [{"role": "user", "content": "\udfff"}]),
    ("chat", "messages.content.text", [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]),
]


@pytest.mark.parametrize("endpoint,param,value", SURROGATES, ids=[f"{e}-{p}" for e, p, _ in SURROGATES])
def test_lone_surrogates_are_refused_by_name(served, endpoint, param, value):
    field = param.split(".")[0]
    err = refused(post(served, endpoint, {**BASE[endpoint], field: value}), param)
    assert "surrogate" in err["message"]


def test_a_surrogate_in_raw_utf8_bytes_is_refused_too(served):
    raw = '{"model": "tiny-gpt2", "prompt": "x\ud800"}'.encode("utf-8", "surrogatepass")
    r = post(served, "comp", raw)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


@pytest.mark.parametrize("endpoint", ["emb", "comp", "chat"])
def test_json_nested_100000_deep_is_a_cheap_400(served, endpoint):
    for raw in (b"[" * 100_000 + b"]" * 100_000,
                b'{"model": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"a": ' * 100_000 + b"1" + b"}" * 100_000):
        r = post(served, endpoint, raw)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    # deep but parseable: refused by the schema where it matters, ignored where it is an unknown field
    deep = json.loads("[" * 500 + "1" + "]" * 500)
    field = {"emb": "input", "comp": "prompt", "chat": "messages"}[endpoint]
    refused(post(served, endpoint, {**BASE[endpoint], field: deep}), field)
    assert post(served, endpoint, {**BASE[endpoint], "x_extension": deep}).status_code == 200


def test_the_context_check_holds_whatever_is_omitted(served, tiny_gpt2):
    long = "hello " * (tiny_gpt2.max_seq_length + 10)
    err = refused(post(served, "chat", {"model": "tiny-gpt2", "messages": [{"role": "user", "content": long}]}),
                  "messages")
    assert err["code"] == "context_length_exceeded" and str(tiny_gpt2.max_seq_length) in err["message"]
    err = refused(post(served, "comp", {"model": "tiny-gpt2", "prompt": long}), "prompt")
    assert err["code"] == "context_length_exceeded"
    near = [5] * (tiny_gpt2.max_seq_length - 3)  # room for 3 tokens: the omitted max_tokens shrinks to them
    r = post(served, "comp", {"model": "tiny-gpt2", "prompt": near, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    err = refused(post(served, "comp", {"model": "tiny-gpt2", "prompt": near, "max_tokens": 4}), "max_tokens")
    assert "at most 3" in err["message"]
    refused(post(served, "chat", {"model": "tiny-gpt2", "max_completion_tokens": tiny_gpt2.max_seq_length,
                                  "messages": [{"role": "user", "content": "hi"}]}), "max_completion_tokens")


UNSUPPORTED = [
    ("chat", "response_format", {"type": "xml"}),  # json_object and json_schema are served (structured output)
    ("comp", "response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
    ("chat", "tool_choice", "required"),  # tools are served (test_tools.py): "required" needs some
    ("chat", "tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("chat", "functions", [{"name": "f"}]),
    ("chat", "function_call", {"name": "f"}),
    ("chat", "top_logprobs", 3),  # served with logprobs: true only
    ("chat", "n", 17),  # at most 16
    ("chat", "modalities", ["text", "audio"]),
    ("chat", "audio", {"voice": "alloy"}),
    ("chat", "prediction", {"type": "content", "content": "x"}),
    ("comp", "logprobs", 21),  # 0-20
    ("comp", "best_of", 17),
    ("comp", "suffix", "end"),
    ("comp", "n", 17),
]


@pytest.mark.parametrize("endpoint,field,value", UNSUPPORTED, ids=[f"{e}-{f}" for e, f, _ in UNSUPPORTED])
def test_unsupported_openai_fields_are_refused_by_name(served, endpoint, field, value):
    refused(post(served, endpoint, {**BASE[endpoint], field: value}), field)


NEUTRAL = [("chat", {"response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "top_logprobs": 0,
                     "modalities": ["text"], "logprobs": False, "n": 1, "user": "u", "store": False}),
           ("comp", {"best_of": 1, "suffix": "", "logprobs": 0, "echo": False, "unknown_extension": {"a": 1}})]


@pytest.mark.parametrize("endpoint,extra", NEUTRAL, ids=[e for e, _ in NEUTRAL])
def test_neutral_values_of_unsupported_fields_are_served(served, endpoint, extra):
    assert post(served, endpoint, {**BASE[endpoint], **extra}).status_code == 200


def test_values_that_were_500s_are_served(served):
    greedy = post(served, "comp", {**COMP, "max_tokens": 6, "temperature": 0}).json()["choices"][0]["text"]
    # 5e-324 overflowed the logits; the limit of a vanishing temperature is greedy decoding
    r = post(served, "comp", {**COMP, "max_tokens": 6, "temperature": 5e-324, "seed": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy, r.text
    # a negative seed is a 64-bit integer like any other: served, and reproducible
    outs = [post(served, "chat", {**CHAT, "max_tokens": 5, "seed": -(2**63), "temperature": 1.5}) for _ in range(2)]
    assert outs[0].status_code == 200 and outs[0].json()["choices"] == outs[1].json()["choices"]


def test_echo_penalties_and_logit_bias_are_applied(served, tiny_gpt2):
    r = post(served, "comp", {**COMP, "prompt": "hello there", "echo": True, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("hello there")
    ids = tiny_gpt2.tokenizer("hello there")["input_ids"]
    r = post(served, "comp", {**COMP, "prompt": ids, "echo": True, "stream": True, "max_tokens": 3})
    chunks = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    assert chunks[0]["choices"][0]["text"] == tiny_gpt2.tokenizer.decode(ids)
    # a +100 bias makes one token certain, sampled or not
    r = post(served, "comp", {**COMP, "max_tokens": 5, "temperature": 1.0, "seed": 3, "logit_bias": {"42": 100},
                              "ignore_eos": True})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == tiny_gpt2.tokenizer.decode([42] * 5)
    # a strong frequency penalty forbids what the bias alone would repeat
    r = post(served, "comp", {**COMP, "max_tokens": 4, "temperature": 0, "logit_bias": {"42": 3},
                              "frequency_penalty": 2.0, "presence_penalty": 2.0, "ignore_eos": True})
    assert r.status_code == 200, r.text


def test_an_unexpected_error_is_a_counted_openai_shaped_500(served, monkeypatch):
    async def main():
        async with app_client(served) as c:
            eng = c.app.state.served["minilm"].engine

            def broken(tokens):
                raise RuntimeError("a bug")

            monkeypatch.setattr(eng, "submit", broken)
            r = await c.post("/v1/embeddings", json=EMB)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
            monkeypatch.undo()
            assert (await c.post("/v1/embeddings", json=EMB)).status_code == 200  # the server goes on
            m = (await c.get("/metrics")).text
            assert 'leaninfer_server_errors_total{endpoint="embeddings",status="500"} 1.0' in m
    asyncio.run(main())


@pytest.mark.parametrize("tokenizer_len,model_vocab", [(120, 100), (100, 120)])
def test_the_smaller_of_tokenizer_and_model_vocab_bounds_token_ids(tokenizer_len, model_vocab):
    # past the model's embedding table the model fails; past the tokenizer the ids can't become text
    s = SimpleNamespace(model=SimpleNamespace(tokenizer=[0] * tokenizer_len,
                                              config=SimpleNamespace(vocab_size=model_vocab)))
    assert check_ids(s, [0, 99], "prompt") == [0, 99]
    with pytest.raises(OpenAIError) as e:
        check_ids(s, [0, 100], "prompt")
    assert e.value.status == 400 and e.value.param == "prompt" and "[0, 100)" in e.value.message
