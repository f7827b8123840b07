"""What reaches the ledger, metric labels and the response cache's key, checked at the edge (no model needed).

Labels (``model``, ``user``, the workflow and tags headers) are bounded and hold no control character: a NUL
once failed a PostgreSQL group commit of other tenants' rows, and escapes reached an admin's terminal. The
cache key is built from :func:`answer_params`: the validated parameters that change the answer, normalised,
never extra fields (``2**70`` there once made every request a 500).
"""

from __future__ import annotations

import json
import re

import orjson
import pytest
from pydantic import ValidationError

from leaninfer.serving.labels import MAX_TAG, MAX_TAGS, MAX_WORKFLOW, check_label, parse_tags, workflow_label
from leaninfer.serving.protocol import (
    MAX_NAME,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    answer_params,
    validation_message,
)

# NUL, other C0 (tab, newline, ESC), DEL, C1 (NEL, CSI): each refused wherever a label is taken
CONTROLS = ["\x00", "\t", "\n", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f"]
CLEAN = ["", "nightly-eval", "naïve café", "チーム", "emoji 👋", "a b", "\xa0nbsp", "x" * 64]


def _refused(fn, *args) -> OpenAIError:
    with pytest.raises(OpenAIError) as e:
        fn(*args)
    assert e.value.status == 400 and e.value.type == "invalid_request_error", e.value.body()
    return e.value


# -- headers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", CLEAN, ids=range(len(CLEAN)))
def test_clean_labels_pass_unchanged(text):
    assert check_label(text, "p", 64) == text
    assert workflow_label(f" \t{text}\t ") == text


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_in_the_workflow_header_are_a_400_naming_it(char):
    err = _refused(workflow_label, f"eval{char}run")
    assert err.param == "X-Leaninfer-Workflow" and "X-Leaninfer-Workflow" in err.message
    assert "control character" in err.message and "position 4" in err.message
    assert char not in err.message  # the message shows it escaped, never raw (it reaches terminals too)


def test_the_workflow_header_is_bounded():
    assert workflow_label("w" * MAX_WORKFLOW) == "w" * MAX_WORKFLOW
    err = _refused(workflow_label, "w" * (MAX_WORKFLOW + 1))
    assert err.param == "X-Leaninfer-Workflow" and f"at most {MAX_WORKFLOW}" in err.message


def test_tags_parse_into_a_dict():
    assert parse_tags("") == {}
    assert parse_tags(" env = prod ,, feature=search, ") == {"env": "prod", "feature": "search"}
    assert parse_tags("k=a=b") == {"k": "a=b"}  # the first "=" splits
    assert parse_tags("env=dev,env=prod") == {"env": "prod"}  # the last value of a repeated key
    assert parse_tags("equipe=données,チーム=検索") == {"equipe": "données", "チーム": "検索"}
    assert parse_tags("empty=") == {"empty": ""}
    many = ",".join(f"k{i}=v" for i in range(MAX_TAGS))
    assert len(parse_tags(many)) == MAX_TAGS
    edge = "k" * MAX_TAG + "=" + "v" * MAX_TAG
    assert parse_tags(edge) == {"k" * MAX_TAG: "v" * MAX_TAG}


BAD_TAGS = [
    ("noequals", "key=value"),
    ("=value", "key=value"),
    (",".join(f"k{i}=v" for i in range(MAX_TAGS + 1)), f"at most {MAX_TAGS}"),
    ("k" * (MAX_TAG + 1) + "=v", f"at most {MAX_TAG}"),
    ("k=" + "v" * (MAX_TAG + 1), f"at most {MAX_TAG}"),
    ("env=pr\x00od", "control character"),
    ("e\x1bnv=prod", "control character"),
    ("env=\x85", "control character"),
    ("env=a\x7fb", "control character"),
    ("a=1,b=\x9b31m", "control character"),
    ("\x00", "key=value"),
]


@pytest.mark.parametrize("header,says", BAD_TAGS, ids=range(len(BAD_TAGS)))
def test_malformed_tags_are_a_400_naming_the_header(header, says):
    err = _refused(parse_tags, header)
    assert err.param == "X-Leaninfer-Tags" and "X-Leaninfer-Tags" in err.message, err.message
    assert says in err.message, err.message
    assert not any(c in err.message for c in CONTROLS), err.message
    assert len(err.message) < 300


def test_a_huge_tags_header_is_refused_without_parsing_every_item():
    err = _refused(parse_tags, "k=v," * 100_000)
    assert "100000 tags" in err.message


# -- the body's model and user -----------------------------------------------------------------------------------
BODIES = {"emb": (EmbeddingRequest, {"model": "minilm", "input": "hi"}),
          "comp": (CompletionRequest, {"model": "tiny-gpt2", "prompt": "hi"}),
          "chat": (ChatCompletionRequest, {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}]})}


def _invalid(schema, body: dict) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as e:
        schema.model_validate(body)
    return validation_message(e.value)


@pytest.mark.parametrize("endpoint", BODIES)
@pytest.mark.parametrize("field", ["model", "user"])
@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_in_model_and_user_are_refused_by_name(endpoint, field, char):
    schema, body = BODIES[endpoint]
    msg, param = _invalid(schema, {**body, field: f"ab{char}"})
    assert param == field and "control character" in msg and "position 2" in msg, msg


@pytest.mark.parametrize("endpoint", BODIES)
@pytest.mark.parametrize("field", ["model", "user"])
def test_model_and_user_are_bounded(endpoint, field):
    schema, body = BODIES[endpoint]
    assert getattr(schema.model_validate({**body, field: "é" * MAX_NAME}), field) == "é" * MAX_NAME
    msg, param = _invalid(schema, {**body, field: "é" * (MAX_NAME + 1)})
    assert param == field and f"at most {MAX_NAME}" in msg, msg


@pytest.mark.parametrize("endpoint", BODIES)
def test_the_published_schema_says_what_a_label_may_hold(endpoint):
    schema, _ = BODIES[endpoint]
    props = schema.model_json_schema()["properties"]
    for field in ("model", "user"):
        pattern = re.compile(props[field]["pattern"])
        assert pattern.fullmatch("naïve 👋") and not any(pattern.fullmatch(f"a{c}") for c in CONTROLS)
        assert MAX_NAME in (props[field].get("maxLength"), props[field].get("anyOf", [{}])[0].get("maxLength"))


# -- the cache key's parameters ----------------------------------------------------------------------------------
def _params(schema, **body):
    return answer_params(schema.model_validate(body))


def _dumps(params: dict) -> bytes:
    # what a cache keyed on them would do with them: orjson refuses int dict keys and ints past 64 bits
    return orjson.dumps(params, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)


def test_extra_fields_never_reach_the_cache_key():
    huge = 232276198894203238102318912110592
    p = _params(EmbeddingRequest, model="minilm", input="x", extra=huge)
    assert p == {"input": "x", "encoding_format": "float"}
    _dumps(p)
    for schema, body in BODIES.values():
        plain = answer_params(schema.model_validate(body))
        extras = {"extra": huge, "x": {"deep": [[[2**100]]]}, "ключ": "значение", "inf": float("inf"),
                  "zero": -0.0, "00": 1, "0": 2}
        assert answer_params(schema.model_validate({**body, **extras})) == plain
        _dumps(plain)


def test_who_asks_and_how_it_is_delivered_stay_out_of_the_key():
    base = {"model": "tiny-gpt2", "prompt": "hi", "seed": 1}
    p = _params(CompletionRequest, **base)
    assert _params(CompletionRequest, **{**base, "model": "other", "user": "u", "stream": True,
                                         "stream_options": {"include_usage": True}}) == p
    assert not {"model", "user", "stream", "stream_options"} & set(p)


def test_logit_bias_keys_naming_one_token_are_one_entry_the_last_given():
    # the reproduction of issue 20 (a 500: orjson's "Dict key must be str") and its neighbours
    p = _params(CompletionRequest, model="tiny-gpt2", prompt=[[0]], seed=1, logit_bias={"00": 0.0, "0": 0.0})
    assert p["logit_bias"] == {0: 0.0} and p["prompt"] == [0]
    _dumps(p)
    assert _params(CompletionRequest, model="m", prompt="x", logit_bias={"7": 1, "007": -3})["logit_bias"] == {7: -3.0}
    assert _params(CompletionRequest, model="m", prompt="x", logit_bias={"007": -3, "7": 1})["logit_bias"] == {7: 1.0}
    # parsed JSON with a repeated key keeps the last one too: the same rule
    raw = json.loads('{"model": "m", "prompt": "x", "logit_bias": {"5": 1, "5": 2}}')
    assert answer_params(CompletionRequest.model_validate(raw))["logit_bias"] == {5: 2.0}


def test_answer_params_are_canonical():
    a = _params(CompletionRequest, model="m", prompt="x", temperature=0, seed=3, max_tokens=5, stop="\n",
                logit_bias={"9": 1, "2": -1}, top_p=1)
    b = _params(CompletionRequest, top_p=1.0, logit_bias={"2": -1.0, "09": 1.0}, stop=["\n"], max_tokens=5,
                seed=3, temperature=0.0, prompt=["x"], model="m", user="someone")
    assert a == b and list(a["logit_bias"]) == [2, 9]
    assert all(isinstance(a[k], float) for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty"))
    assert _dumps(a) == _dumps(b)
    # -0.0 is 0.0; None is dropped
    z = _params(CompletionRequest, model="m", prompt="x", temperature=-0.0)
    assert str(z["temperature"]) == "0.0" and "seed" not in z and "max_tokens" not in z and "stop" not in z
    # chat: the limit that applies, whichever field named it; the messages' text, parts joined
    c1 = _params(ChatCompletionRequest, model="m", max_completion_tokens=4,
                 messages=[{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}])
    c2 = _params(ChatCompletionRequest, model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert c1 == c2 and c1["messages"] == [["user", "hi"]] and c1["max_tokens"] == 4
    # a message's name, tool calls and other fields may be rendered by a template: they are part of the key
    named = _params(ChatCompletionRequest, model="m", max_tokens=4,
                    messages=[{"role": "user", "content": "hi", "name": "ann"}])
    assert named != c2 and named["messages"] == [["user", "hi", '{"name": "ann"}']]


def test_what_changes_the_answer_changes_the_params():
    base = {"model": "m", "prompt": "x", "seed": 1}
    p = _params(CompletionRequest, **base)
    for change in ({"prompt": "y"}, {"seed": 2}, {"temperature": 0.5}, {"top_p": 0.5}, {"max_tokens": 3},
                   {"stop": ["."]}, {"echo": True}, {"ignore_eos": True}, {"presence_penalty": 1},
                   {"frequency_penalty": 1}, {"logit_bias": {"3": 1}}):
        assert _params(CompletionRequest, **{**base, **change}) != p, change
    e = _params(EmbeddingRequest, model="m", input="x")
    for change in ({"input": "y"}, {"input": ["x", "x"]}, {"encoding_format": "base64"}, {"dimensions": 8}):
        assert _params(EmbeddingRequest, **{"model": "m", "input": "x", **change}) != e, change


HUGE_KNOWN = [("comp", "seed", 2**70), ("comp", "max_tokens", 10**40), ("chat", "max_completion_tokens", 2**70),
              ("emb", "dimensions", 10**40), ("comp", "temperature", 10**40), ("comp", "n", 2**70),
              ("comp", "logit_bias", {"5": 10**40}), ("comp", "logit_bias", {"1" * 10: 1}),
              ("chat", "top_logprobs", 10**40), ("comp", "best_of", 2**70)]


@pytest.mark.parametrize("endpoint,field,value", HUGE_KNOWN, ids=[f"{e}-{f}" for e, f, _ in HUGE_KNOWN])
def test_huge_integers_in_known_fields_are_refused_by_name(endpoint, field, value):
    schema, body = BODIES[endpoint]
    msg, param = _invalid(schema, {**body, field: value})
    assert param is not None and param.split(".")[0] == field, msg


def test_every_accepted_value_fits_the_cache():
    # the largest values each schema accepts still give params orjson can write: 64-bit at most
    p = _params(CompletionRequest, model="m", prompt="x", seed=2**64 - 1, max_tokens=2**31 - 1,
                logit_bias={"999999999": 100, "0": -100})
    _dumps(p)
    _dumps(_params(CompletionRequest, model="m", prompt="x", seed=-(2**63)))
    _dumps(_params(EmbeddingRequest, model="m", input=[[2**62]], dimensions=2**31 - 1))
