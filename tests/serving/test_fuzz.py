"""Schema-driven fuzzing of a governed server: ``--auth keys`` (an admin key on every request), the ledger (a
SQLite store) and the response cache on, as in production. schemathesis generates requests from the server's
own /openapi.json and sends them in-process (ASGI, lifespan run: the ledger writer and the gate are live); the
label headers, which the schema doesn't describe, are drawn alongside. No input, valid or not, may get a 5xx,
and answers must match what the schema documents.

Beyond what schemathesis generates, explicit cases the issue 20 audit found (or would have): extra fields,
integers past 64 bits in known and unknown fields, keys that collide once parsed, non-ASCII keys and values, NUL
and control characters in ``model``, ``user`` and the headers, deep nesting, non-finite and negative-zero
floats. Last, the ledger the run wrote holds no control character and no label past its bound.

The operations are driven from one test (rather than ``@schema.parametrize``) because the schema comes from
an app built on session fixtures, and schemathesis' lazy fixture loader doesn't run under pytest 9.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from leaninfer.engines.engine import BatchingConfig
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.keys import KeyPolicy, KeyRecord, new_key
from leaninfer.finops.store import open_store
from leaninfer.serving.app import ServerConfig, create_app

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # schemathesis over every endpoint: tens of seconds

EXAMPLES = 60  # per operation and mode, for the GET endpoints
POST_EXAMPLES = 250  # per mode for the POST endpoints, where the work and the ledger are: ~40 s in all on 2 cores
MAX_GENERATED = 8
POSTS = {"/v1/embeddings", "/v1/completions", "/v1/chat/completions"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class OneLifespan:
    """``app`` whose lifespan runs once, from the first startup schemathesis sends until :meth:`close`, on
    schemathesis' event loop (where every request runs too, as in a server). Its pytest plugin ends an ASGI
    app's lifespan after each test; a server's gate, like a real server, starts once (it can't restart on a
    closed store)."""

    def __init__(self, app):
        self.app = app
        self._started: asyncio.Future | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done = threading.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        await receive()  # lifespan.startup
        if self._started is None:
            self._loop = asyncio.get_running_loop()
            self._started, self._stop = self._loop.create_future(), asyncio.Event()
            self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.shield(self._started)
        except Exception as e:  # noqa: BLE001 (reported to schemathesis as the startup's failure)
            await send({"type": "lifespan.startup.failed", "message": repr(e)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: the test's, not the server's
        await send({"type": "lifespan.shutdown.complete"})

    async def _run(self):
        try:
            async with self.app.router.lifespan_context(self.app):
                self._started.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            if not self._started.done():
                self._started.set_exception(e)
            raise
        finally:
            self._done.set()

    def close(self) -> None:
        """End the lifespan: drain the engines, write the last ledger rows, close the store."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            assert self._done.wait(60), "the app's lifespan did not end"


@pytest.fixture(scope="module")
def governed(served, tmp_path_factory):
    """An app with keys, a SQLite ledger and the response cache, its lifespan held for the module (see
    :class:`OneLifespan`). Yields (the ASGI app, headers with the key, the store's path)."""
    store = str(tmp_path_factory.mktemp("fuzz") / "ledger.db")
    key_id, plaintext, key_hash = new_key()
    s = open_store(store)
    try:  # an admin key, so that /v1/usage is fuzzed past its key check too
        s.add_key(KeyRecord(key_id, key_hash, KeyPolicy(team="fuzz", admin=True), time.time()))
    finally:
        s.close()
    cfg = ServerConfig(BatchingConfig(max_wait_ms=1), request_timeout_s=30, usd_per_hour=3.6,
                       finops=FinOpsConfig(auth="keys", store=store, cache_max_bytes=1 << 22))
    app = OneLifespan(create_app(served, cfg))
    try:
        yield app, {"Authorization": f"Bearer {plaintext}"}, store
    finally:
        app.close()


def _short_generations(case):
    # A valid max_tokens that fits the context runs that many decode steps: cap those at a few, so the examples
    # go to variety rather than to long generations (larger values still reach the context check).
    # A chat that omits both runs 256 steps (its default): ask for a few there too.
    body = case.body if isinstance(case.body, dict) else {}
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and MAX_GENERATED < body[key] <= 512:
            body[key] = MAX_GENERATED
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_GENERATED
    return case


# Header values a client may send (latin-1 octets, no CR/LF, no leading whitespace: what HTTP carries), for the
# label headers the schema doesn't describe: often well-formed, sometimes anything.
_OCTETS = st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n")
_word = st.text(_OCTETS, max_size=70)
_header = st.one_of(st.sampled_from(["", "nightly", "a" * 64, "a" * 65, "x\x00y", "\x1b[2J", "caf\xe9\x85"]),
                    _word)
_tags = st.one_of(st.lists(st.tuples(_word, _word), max_size=18).map(lambda kv: ",".join(f"{k}={v}" for k, v in kv)),
                  _word)
LABEL_HEADERS = st.fixed_dictionaries({}, optional={"X-Leaninfer-Workflow": _header, "X-Leaninfer-Tags": _tags}).map(
    lambda h: {k: v for k, v in h.items() if re.fullmatch(r"\S[^\r\n]*|", v)})


def test_schemathesis_finds_no_server_error(governed):
    app, auth, _ = governed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= POSTS | {"/health", "/v1/usage", "/v1/usage/me", "/v1/admin/keys",
                                            "/v1/admin/keys/{key_id}", "/v1/admin/keys/{key_id}/rotate"}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:
                strategy = strategy.map(_short_generations)

            @given(case=strategy, headers=LABEL_HEADERS)
            @settings(max_examples=POST_EXAMPLES if op.path in POSTS else EXAMPLES, deadline=None,
                      derandomize=True, database=None, suppress_health_check=list(HealthCheck))
            def fuzz(case, headers):
                # Every other check runs: no 5xx, documented status codes, content types and bodies, invalid
                # data refused. A schema-valid body may still be refused: the prompt's length, token ids and
                # dimensions depend on the model, which a static schema can't say; so may a label header.
                case.call_and_validate(headers={**headers, **auth}, excluded_checks=[positive_data_acceptance])

            try:
                fuzz()
            except Unsatisfiable:  # nothing to get wrong in a request without parameters (GET /health)
                assert mode is GenerationMode.NEGATIVE


# -- explicit cases -----------------------------------------------------------------------------------------------
EMB = {"model": "minilm", "input": "x"}
COMP = {"model": "tiny-gpt2", "prompt": "hi", "max_tokens": 2, "seed": 1}
CHAT = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
PATH = {"emb": "/v1/embeddings", "comp": "/v1/completions", "chat": "/v1/chat/completions"}
BASE = {"emb": EMB, "comp": COMP, "chat": CHAT}
HUGE = 232276198894203238102318912110592  # the reproduction: past 64 bits
DEEP = "[" * 500 + "1" + "]" * 500  # parseable, deeper than pydantic or a cache key would like
VERY_DEEP = "[" * 100_000 + "]" * 100_000
_TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"],
    "additionalProperties": False}}}


def _raw(endpoint: str, tail: str) -> bytes:
    """The base body of ``endpoint`` with ``tail`` (raw JSON members) appended: for what json.dumps can't
    write (duplicate keys, 1e400, deep nesting without building it)."""
    return (json.dumps(BASE[endpoint])[:-1] + ", " + tail + "}").encode()


# (id, endpoint, body: dict of fields over the base or raw bytes, headers, expected status, param named on a 400)
CASES = [
    # the two reproductions of issue 20 (500s: orjson over the parsed request, in the cache key)
    ("repro-logit-bias-00-and-0", "comp", {"prompt": [[0]], "seed": 1, "logit_bias": {"00": 0.0, "0": 0.0}},
     {}, 200, None),
    ("repro-extra-past-64-bits", "emb", {"extra": HUGE}, {}, 200, None),
    # extra fields: ignored, whatever they hold
    ("extra-2**70", "comp", {"extra": 2**70}, {}, 200, None),
    ("extra-minus-2**70", "chat", {"extra": -(2**70)}, {}, 200, None),
    ("extra-10**40-nested", "chat", {"x": {"a": [10**40, {"b": 2**64}], "c": None}}, {}, 200, None),
    ("extra-int-like-keys", "comp", {"00": 1, "0": 2, "x": {"00": 0.0, "0": 0.0}}, {}, 200, None),
    ("extra-in-a-message", "chat", {"messages": [{"role": "user", "content": "hi", "name": "\x00",
                                                  "n": 2**70}]}, {}, 200, None),
    ("extra-in-a-text-part", "chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "x": HUGE}]}]}, {}, 200, None),
    ("extra-stream-options", "comp", {"stream_options": {"include_usage": False, "x": HUGE}}, {}, 200, None),
    # integers past 64 bits in known fields: refused by name
    ("seed-2**70", "comp", {"seed": 2**70}, {}, 400, "seed"),
    ("seed-minus-10**40", "chat", {"seed": -(10**40)}, {}, 400, "seed"),
    ("max-tokens-10**40", "comp", {"max_tokens": 10**40}, {}, 400, "max_tokens"),
    ("max-completion-tokens-2**70", "chat", {"max_completion_tokens": 2**70}, {}, 400, "max_completion_tokens"),
    ("dimensions-10**40", "emb", {"dimensions": 10**40}, {}, 400, "dimensions"),
    ("temperature-2**70", "chat", {"temperature": 2**70}, {}, 400, "temperature"),
    ("n-2**70", "comp", {"n": 2**70}, {}, 400, "n"),
    ("logit-bias-value-10**40", "comp", {"logit_bias": {"5": 10**40}}, {}, 400, "logit_bias.5"),
    ("logit-bias-key-10-digits", "comp", {"logit_bias": {"1" * 10: 1}}, {}, 400, "logit_bias.1111111111"),
    ("prompt-token-2**70", "comp", {"prompt": [2**70]}, {}, 400, "prompt"),
    ("input-token-10**40", "emb", {"input": [[1, 10**40]]}, {}, 400, "input"),
    ("top-logprobs-10**40", "chat", {"top_logprobs": 10**40}, {}, 400, "top_logprobs"),
    # keys that collide once parsed
    ("logit-bias-7-and-007", "chat", {"logit_bias": {"7": 1, "007": -1, "0007": 2}}, {}, 200, None),
    ("raw-duplicate-model", "emb", _raw("emb", '"model": "nope", "model": "minilm"'), {}, 200, None),
    ("raw-duplicate-seed", "comp", _raw("comp", f'"seed": {HUGE}, "seed": 3'), {}, 200, None),
    ("raw-duplicate-seed-huge-last", "comp", _raw("comp", f'"seed": 3, "seed": {HUGE}'), {}, 400, "seed"),
    ("raw-duplicate-logit-bias-key", "comp", _raw("comp", '"logit_bias": {"5": 1, "5": 2, "05": 3}'), {}, 200, None),
    ("raw-duplicate-extra", "chat", _raw("chat", f'"x": 1, "x": {HUGE}'), {}, 200, None),
    # non-ASCII keys and values
    ("non-ascii-extra", "emb", {"ключ": "значение", "键": {"值": "🙂"}, "\u00e9": HUGE}, {}, 200, None),
    ("non-ascii-user", "comp", {"user": "ユーザー 👋 naïve"}, {}, 200, None),
    ("non-ascii-input", "emb", {"input": ["héllo", "世界", "🙂"]}, {}, 200, None),
    ("non-ascii-model", "emb", {"model": "minilm\u00e9"}, {}, 404, "model"),
    ("arabic-digit-logit-bias", "comp", {"logit_bias": {"\u0663": 1}}, {}, 400, "logit_bias.\u0663"),
    ("fullwidth-digit-logit-bias", "comp", {"logit_bias": {"\uff15": 1}}, {}, 400, "logit_bias.\uff15"),
    ("non-ascii-headers", "chat", {}, {"X-Leaninfer-Workflow": "caf\xe9", "X-Leaninfer-Tags": "\xe9quipe=donn\xe9es"},
     200, None),
    # NUL and control characters where labels are taken: refused by name, before any work
    ("model-nul", "emb", {"model": "minilm\x00"}, {}, 400, "model"),
    ("model-only-nul", "comp", {"model": "\x00"}, {}, 400, "model"),
    ("user-nul", "comp", {"user": "\x00"}, {}, 400, "user"),
    ("user-esc", "chat", {"user": "\x1b[31mred\x1b[0m"}, {}, 400, "user"),
    ("user-c1-csi", "emb", {"user": "a\x9b2J"}, {}, 400, "user"),
    ("user-del", "comp", {"user": "a\x7f"}, {}, 400, "user"),
    ("user-newline", "chat", {"user": "a\nb"}, {}, 400, "user"),
    ("user-257", "emb", {"user": "u" * 257}, {}, 400, "user"),
    ("model-257", "comp", {"model": "m" * 257}, {}, 400, "model"),
    ("user-256", "emb", {"user": "u" * 256}, {}, 200, None),
    ("rich-markup-user-is-text", "comp", {"user": "[bold red]boss[/]"}, {}, 200, None),
    ("workflow-nul", "emb", {}, {"X-Leaninfer-Workflow": "a\x00b"}, 400, "X-Leaninfer-Workflow"),
    ("workflow-esc", "comp", {}, {"X-Leaninfer-Workflow": "\x1b[2J"}, 400, "X-Leaninfer-Workflow"),
    ("workflow-c1", "chat", {}, {"X-Leaninfer-Workflow": "a\x85b"}, 400, "X-Leaninfer-Workflow"),
    ("workflow-65", "emb", {}, {"X-Leaninfer-Workflow": "w" * 65}, 400, "X-Leaninfer-Workflow"),
    ("workflow-64", "emb", {}, {"X-Leaninfer-Workflow": "w" * 64}, 200, None),
    ("tags-nul", "comp", {}, {"X-Leaninfer-Tags": "env=\x00"}, 400, "X-Leaninfer-Tags"),
    ("tags-c1-key", "emb", {}, {"X-Leaninfer-Tags": "\x9b=1"}, 400, "X-Leaninfer-Tags"),
    ("tags-17", "chat", {}, {"X-Leaninfer-Tags": ",".join(f"k{i}=v" for i in range(17))}, 400, "X-Leaninfer-Tags"),
    ("tags-long-value", "emb", {}, {"X-Leaninfer-Tags": "k=" + "v" * 65}, 400, "X-Leaninfer-Tags"),
    ("tags-malformed", "comp", {}, {"X-Leaninfer-Tags": "novalue"}, 400, "X-Leaninfer-Tags"),
    ("tags-16", "emb", {}, {"X-Leaninfer-Tags": ",".join(f"k{i}=v" for i in range(16))}, 200, None),
    # deep nesting
    ("deep-extra", "comp", _raw("comp", f'"x": {DEEP}'), {}, 200, None),
    ("deep-stream-options", "comp", _raw("comp", f'"stream_options": {{"x": {DEEP}}}'), {}, 200, None),
    ("deep-input", "emb", _raw("emb", f'"input": {DEEP}'), {}, 400, "input"),
    ("deep-messages", "chat", _raw("chat", f'"messages": {DEEP}'), {}, 400, "messages"),
    ("deep-logit-bias", "comp", _raw("comp", f'"logit_bias": {{"5": {DEEP}}}'), {}, 400, "logit_bias.5"),
    ("very-deep-extra", "chat", _raw("chat", f'"x": {VERY_DEEP}'), {}, 400, None),
    ("very-deep-body", "emb", VERY_DEEP.encode(), {}, 400, None),
    # floats: 1e400 parses as inf, 1e-400 as 0.0; -0.0 is 0.0
    ("temperature-1e400", "comp", _raw("comp", '"temperature": 1e400'), {}, 400, "temperature"),
    ("logit-bias-minus-1e400", "comp", _raw("comp", '"logit_bias": {"5": -1e400}'), {}, 400, "logit_bias.5"),
    ("extra-1e400", "emb", _raw("emb", '"x": 1e400, "y": [-1e400]'), {}, 200, None),
    ("extra-nan-literal", "emb", _raw("emb", '"x": NaN'), {}, 400, None),
    ("top-p-1e-400", "chat", _raw("chat", '"top_p": 1e-400'), {}, 400, "top_p"),
    ("temperature-minus-zero", "comp", {"temperature": -0.0, "seed": 5}, {}, 200, None),
    ("penalties-minus-zero", "chat", {"presence_penalty": -0.0, "frequency_penalty": -0.0}, {}, 200, None),
    ("logit-bias-minus-zero", "comp", {"logit_bias": {"5": -0.0}}, {}, 200, None),
    ("extra-minus-zero", "emb", {"x": -0.0}, {}, 200, None),
    ("seed-as-float", "comp", _raw("comp", '"seed": 1.0'), {}, 400, "seed"),
    ("seed-1e2", "comp", _raw("comp", '"seed": 1e2'), {}, 400, "seed"),
    # tools: a constrained call is served on a model without a tool template, "auto" is not; hostile names,
    # arguments and schemas are refused by name
    ("tools-required", "chat", {"tools": [_TOOL], "tool_choice": "required", "max_tokens": 30}, {}, 200, None),
    ("tools-auto-no-template", "chat", {"tools": [_TOOL]}, {}, 400, "tool_choice"),
    ("tool-name-nul", "chat", {"tools": [{"type": "function", "function": {"name": "f\x00"}}],
                               "tool_choice": "required"}, {}, 400, "tools.function.name"),
    ("tool-choice-unknown", "chat", {"tools": [_TOOL], "tool_choice": {"type": "function",
                                                                       "function": {"name": "g"}}},
     {}, 400, "tool_choice"),
    ("tool-schema-not-an-object", "chat", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": 7}}}}}],
        "tool_choice": "required"}, {}, 400, "tools"),
    ("tool-schema-deep", "chat", _raw("chat", '"tool_choice": "required", "tools": [{"type": "function", '
                                              f'"function": {{"name": "f", "parameters": {{"x": {DEEP}}}}}}}]'),
     {}, 400, "tools"),
    ("tool-call-arguments-huge", "chat", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c\x00", "type": "function", "function": {"name": "f", "arguments": f'{{"a": {HUGE}, "b": 1e400}}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "\x00"}, {"role": "user", "content": "hi"}]}, {}, 200, None),
]


def _post(app, endpoint: str, body, headers: dict):
    raw = body if isinstance(body, bytes) else json.dumps({**BASE[endpoint], **body}).encode()
    with asgi.get_client(app) as client:
        return client.post(PATH[endpoint], data=raw, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("endpoint,body,headers,status,param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_bodies_and_headers_get_no_server_error(governed, endpoint, body, headers, status, param):
    app, auth, _ = governed
    r = _post(app, endpoint, body, {**headers, **auth})
    assert r.status_code < 500, r.text
    assert r.status_code == status, r.text
    if status != 200:
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"], err
        if param is not None:
            assert err["param"] == param, err
        assert not CONTROL.search(r.text), r.text  # the error escapes what it quotes


def test_extra_fields_and_spellings_share_one_cache_entry(governed):
    app, auth, _ = governed
    body = {"prompt": "cache me", "seed": 11, "max_tokens": 3, "logit_bias": {"7": 1}}
    first = _post(app, "comp", body, auth)
    assert first.status_code == 200 and first.json()["usage"]["leaninfer"]["cached"] is False, first.text
    respelled = _raw("comp", '"prompt": ["cache me"], "seed": 11, "max_tokens": 3, "logit_bias": {"007": 1.0}, '
                             f'"temperature": 1, "top_p": 1e0, "user": "someone", "x": {HUGE}')
    again = _post(app, "comp", respelled, auth)
    assert again.status_code == 200 and again.json()["usage"]["leaninfer"]["cached"] is True, again.text
    assert again.json()["choices"] == first.json()["choices"]
    other = _post(app, "comp", {**body, "logit_bias": {"7": 2}}, auth)
    assert other.json()["usage"]["leaninfer"]["cached"] is False


def test_the_ledger_holds_only_clean_bounded_labels(governed):
    # last in the module: the fuzzing and the cases above wrote their rows (each committed before its answer);
    # an answer and a refusal on each endpoint, and a cache hit, make sure there are some of each kind
    app, auth, store = governed
    for endpoint in BASE:
        assert _post(app, endpoint, {"user": "after-the-fuzz"}, auth).status_code == 200
        assert _post(app, endpoint, {"user": "u\x00"}, auth).status_code == 400
    assert _post(app, "emb", {"user": "after-the-fuzz"}, auth).status_code == 200
    s = open_store(store)
    try:
        rows = s.rows()
    finally:
        s.close()
    assert any(r.requested_model == "minilm" and r.workflow == "after-the-fuzz" for r in rows)
    # requests got past the key (a refused key writes no row) to answers and refusals on every endpoint
    seen = {(r.endpoint, r.status) for r in rows}
    assert {(e, s) for e in ("embeddings", "completions", "chat.completions") for s in (200, 400)} <= seen, seen
    assert any(r.cache == "hit" for r in rows)
    for r in rows:
        labels = [r.requested_model, r.workflow, *r.tags, *r.tags.values()]
        assert not any(CONTROL.search(x) for x in labels), r
        assert len(r.requested_model) <= 256 and len(r.workflow) <= 64 and len(r.tags) <= 16, r
        assert all(len(x) <= 64 for x in (*r.tags, *r.tags.values())), r
