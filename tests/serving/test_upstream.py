"""Upstream variants against a fake OpenAI-compatible engine (tests/serving/upstream_fakes.py): requests forwarded
and charged at the tariff, fault drills (slow, 500, 429, reset, bad JSON, no usage: never a 500, never a hang,
every request in the ledger), a client's disconnect reaching the upstream, routes falling back across engines
(local ones included) with each attempt in the ledger, the key kept secret, and the budget race.

The front is the leninfer app served by uvicorn from a thread (real streaming and real disconnects); the fake
upstream too. Only 127.0.0.1, ports picked by the OS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.keys import KeyPolicy, KeyRecord, new_key
from leaninfer.finops.money import to_nano
from leaninfer.finops.price_list import PriceList, save_price_list
from leaninfer.finops.store import open_store
from leaninfer.serving.app import ServerConfig, create_app
from leaninfer.serving.forward import PER_CHAT, PER_MESSAGE
from leaninfer.serving.upstreams import parse_upstream

from ..finops.conftest import ledger_rows
from ..finops.conftest import make_key as finops_key
from .upstream_fakes import PROMPT_TOKENS, FakeUpstream, serving

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # servers in threads, a few seconds each

SECRET = "sk-fake-upstream-key-5f3c9a"
P_IN, P_OUT = 1.0, 2.0  # $ per 1K tokens: every charge is far above a nano-dollar
MODES = ["ok", "no-usage", "slow", "500", "429", "reset", "bad-json", "echo-key", "slow-stream"]
HI = [{"role": "user", "content": "hi"}]
# chat=auto:max_ppl_increase_pct=5 takes cheap (down) then dear; doomed=auto:min_top1_agreement=0.999 takes cheap
# then busy (a 429): every candidate of doomed fails
CHEAP = {"top1_agreement": 0.9995, "perplexity_increase_pct": 1.0}
DEAR = {"top1_agreement": 0.95, "perplexity_increase_pct": 2.0}
HI_BOUND = PER_CHAT + len("hi") + len("user") + PER_MESSAGE  # what leaninfer counts for HI without usage


def make_key(store: str, **policy) -> str:
    return finops_key(store, **{"team": "t", **policy})


def rows(store: str) -> dict:
    return {r.request_id: r for r in ledger_rows(store)}


def wait_rows(store: str, ids: list[str]) -> dict:
    """The ledger rows of ``ids``, once all are written (rows of requests that ended in a hang-up are written
    after the response, by the stream's end callback)."""
    for _ in range(300):
        found = rows(store)
        if all(i in found for i in ids):
            return found
        time.sleep(0.05)
    missing = [i for i in ids if i not in rows(store)]
    raise AssertionError(f"{len(missing)} requests missing from the ledger: {missing[:5]}")


def tariff(tmp_path, model: str, task: str = "causal-lm", p_in: float = P_IN, p_out: float = P_OUT,
           quality: dict | None = None) -> str:
    return str(save_price_list(PriceList(model=model, task=task, usd_per_1k_input_tokens=p_in,
                                         usd_per_1k_output_tokens=p_out, source="list", quality=quality),
                               tmp_path / f"{model}-{task}-{p_in}.yaml"))


def charge(in_tokens: int, out_tokens: int) -> int:
    return to_nano(in_tokens * P_IN / 1000) + to_nano(out_tokens * P_OUT / 1000)


@pytest.fixture(scope="module")
def fake():
    upstream = FakeUpstream()
    with serving(upstream) as url:
        upstream.url = url
        yield upstream


@pytest.fixture(scope="module")
def front(fake, tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("front")
    monkeypatch_module.setenv("FAKE_UPSTREAM_KEY", SECRET)
    specs = [f"{m}={fake.url}/v1,key_env=FAKE_UPSTREAM_KEY,tariff={tariff(tmp, m)},timeout_s=2" for m in MODES]
    specs += [f"emb={fake.url}/v1,key_env=FAKE_UPSTREAM_KEY,tariff={tariff(tmp, 'ok', 'embedding', p_out=0)}",
              f"slow-long={fake.url}/v1,tariff={tariff(tmp, 'slow')},timeout_s=60",
              # a route over upstreams: the cheapest one is down, the next answers; and one where all fail
              f"cheap={fake.url}/v1,tariff={tariff(tmp, '500', p_in=0.1, quality=CHEAP)}",
              f"dear={fake.url}/v1,tariff={tariff(tmp, 'ok', p_in=5.0, quality=DEAR)}",
              f"busy={fake.url}/v1,tariff={tariff(tmp, '429', p_in=0.2, quality={'top1_agreement': 0.9999})}"]
    store = str(tmp / "ledger.db")
    cfg = ServerConfig(upstreams=[parse_upstream(s) for s in specs],
                       finops=FinOpsConfig(auth="keys", store=store, cache_max_bytes=1 << 20,
                                           routes=["chat=auto:max_ppl_increase_pct=5",
                                                   "doomed=auto:min_top1_agreement=0.999"]))
    app = create_app({}, cfg)
    with serving(app, lifespan="on") as url:
        yield url, store, make_key(store), app


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_requests_are_forwarded_and_charged_at_the_tariff(front, fake):
    from openai import OpenAI

    url, store, key, app = front
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    fake.requests.clear()
    ch = client.chat.completions.create(model="ok", messages=HI, max_tokens=4)
    sent = fake.requests[-1]
    assert sent["auth"] == f"Bearer {SECRET}" and sent["body"]["model"] == "ok" and sent["body"]["max_tokens"] == 4
    assert ch.model == "ok" and ch.choices[0].message.content == "w0 w1 w2 w3 "
    assert (ch.usage.prompt_tokens, ch.usage.completion_tokens) == (PROMPT_TOKENS, 4)
    extras = ch.model_dump()["usage"]["leaninfer"]
    assert to_nano(extras["cost_usd"]) == charge(PROMPT_TOKENS, 4) and extras["usage_counted_by"] == "upstream"

    c = client.completions.create(model="ok", prompt="hello")  # no max_tokens: the upstream is told 16
    assert fake.requests[-1]["body"]["max_tokens"] == 16 and c.usage.completion_tokens == 5

    # a stream whose client asked no usage: the upstream is asked for it, the client gets none
    chunks = list(client.chat.completions.create(model="ok", messages=HI, max_tokens=4, stream=True))
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert all(x.usage is None for x in chunks) and all(x.model == "ok" for x in chunks)
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == "w0 w1 w2 w3 "
    # ... and one that asked gets the usage chunk, with the charge
    chunks = list(client.chat.completions.create(model="ok", messages=HI, max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True}))
    last = chunks[-1].model_dump()
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert to_nano(last["usage"]["leaninfer"]["cost_usd"]) == charge(PROMPT_TOKENS, 3)

    e = client.embeddings.create(model="emb", input=["a", "b"])
    assert len(e.data) == 2 and e.usage.prompt_tokens == 2 * PROMPT_TOKENS and e.model == "emb"
    assert fake.requests[-1]["path"] == "/v1/embeddings"
    assert to_nano(e.model_dump()["usage"]["leaninfer"]["cost_usd"]) == to_nano(2 * PROMPT_TOKENS * P_IN / 1000)

    answered = {"ok": [charge(PROMPT_TOKENS, 4), charge(PROMPT_TOKENS, 5), charge(PROMPT_TOKENS, 4),
                       charge(PROMPT_TOKENS, 3)],
                "emb": [to_nano(2 * PROMPT_TOKENS * P_IN / 1000)]}
    ledger = sorted(rows(store).values(), key=lambda r: r.created_at)[-5:]
    assert [(r.served_model, r.status) for r in ledger] == [("ok", 200)] * 4 + [("emb", 200)]
    assert [r.cost_nusd for r in ledger] == answered["ok"] + answered["emb"]
    assert all("upstream tokens x $1/1K input" in r.price_basis for r in ledger)
    assert all(r.cost_nusd <= r.reserved_nusd for r in ledger)
    assert client.models.retrieve("emb").model_dump()["upstream_model"] == "ok"
    # n choices may each run to max_tokens: all of them are reserved
    many = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "ok", "messages": HI, "max_tokens": 4, "n": 3}, timeout=30)
    assert many.status_code == 200 and fake.requests[-1]["body"]["n"] == 3
    assert rows(store)[many.headers["x-request-id"]].reserved_nusd == charge(HI_BOUND, 3 * 4)


def _drill(url: str, key: str, model: str, stream: bool) -> dict:
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "messages": HI, "max_tokens": 4, "stream": stream})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")] if stream else []
    errors = [e["error"] for e in events if "error" in e]
    return {"model": model, "stream": stream, "status": r.status_code, "id": r.headers.get("x-request-id"),
            "retry_after": r.headers.get("retry-after"), "body": r.json() if r.status_code != 200 else None,
            "errors": errors, "pieces": sum(1 for e in events if e.get("choices"))}


DRILLS = {  # mode: (status not streamed, status streamed, the error's code or None)
    "slow": (504, 504, "upstream_timeout"),
    "500": (502, 502, "upstream_failed"),
    "429": (503, 503, "upstream_busy"),
    "reset": (502, 200, "upstream_stream_broken"),
    "bad-json": (502, 200, "upstream_bad_response"),
    "no-usage": (200, 200, None),
}


def test_fault_drills_answer_clearly_and_lose_no_row(front):
    url, store, key, app = front
    cases = [(m, s) for m in DRILLS for s in (False, True) for _ in range(3)]
    with ThreadPoolExecutor(len(cases)) as pool:  # all at once: 0 hangs (each client's timeout would fail it)
        out = list(pool.map(lambda c: _drill(url, key, *c), cases))
    ledger = wait_rows(store, [o["id"] for o in out])
    for o in out:
        want_plain, want_stream, code = DRILLS[o["model"]]
        row = ledger[o["id"]]
        assert o["status"] == (want_stream if o["stream"] else want_plain), o
        assert o["status"] != 500 and all(e.get("code") != "server_error" for e in o["errors"]), o
        if o["status"] != 200:
            assert o["body"]["error"]["code"] == code and row.status == o["status"]
        elif code is not None:  # the stream began, then broke: an error event, and the row says so
            assert [e["code"] for e in o["errors"]] == [code] and row.status == 502
        if o["model"] == "429":
            assert o["retry_after"] == "7"  # the upstream's own
        # the charge: nothing where the upstream never answered; the prompt (and what was streamed) otherwise
        if o["model"] in ("slow", "500", "429"):
            assert row.cost_nusd == 0 and row.output_tokens == 0
        elif o["model"] == "no-usage" or (o["model"] in ("reset", "bad-json") and not o["stream"]):
            assert row.input_tokens == HI_BOUND  # leaninfer's count of the prompt: nothing was reported
        if o["stream"] and o["model"] in ("reset", "bad-json"):
            assert o["pieces"] == 2 and 2 <= row.output_tokens <= 4  # counted from the 2 pieces seen, at most max_tokens
        if o["model"] not in ("slow", "500", "429"):
            assert row.cost_nusd == charge(row.input_tokens, row.output_tokens) > 0
        assert row.cost_nusd <= row.reserved_nusd == charge(HI_BOUND, 4)  # reserved: prompt bound + max_tokens


def test_a_client_that_leaves_closes_the_upstream_request(front, fake):
    url, store, key, app = front
    fake.disconnected.clear()
    with httpx.Client(timeout=30) as c, c.stream("POST", f"{url}/v1/chat/completions",
                                                 headers={"Authorization": f"Bearer {key}"},
                                                 json={"model": "slow-stream", "messages": HI, "max_tokens": 4,
                                                       "stream": True}) as r:
        streamed_id = r.headers["x-request-id"]
        assert next(r.iter_lines()).startswith("data: ")  # the first piece, then the client goes
    # non-streamed, on an upstream that would take a minute (timeout_s=60): the client gives up first
    with httpx.Client(timeout=0.5) as c, pytest.raises(httpx.TimeoutException):
        c.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
               json={"model": "slow-long", "messages": HI, "max_tokens": 4})
    for _ in range(200):  # both upstream requests see their connection close (long before their timeouts)
        if len(fake.disconnected) == 2:
            break
        time.sleep(0.05)
    assert len(fake.disconnected) == 2
    assert all(u.client.in_flight == 0 for u in app.state.upstreams.values())  # every upstream response closed
    row = wait_rows(store, [streamed_id])[streamed_id]
    assert row.status == 499 and row.output_tokens >= 1 and row.cost_nusd == charge(HI_BOUND, row.output_tokens)
    gone = [r for r in rows(store).values() if r.served_model == "slow-long"]
    for _ in range(100):
        if gone:
            break
        time.sleep(0.05)
        gone = [r for r in rows(store).values() if r.served_model == "slow-long"]
    assert [(r.status, r.cost_nusd) for r in gone] == [(499, 0)]  # never answered: charged nothing


def test_routes_fall_back_across_upstreams_and_record_each_attempt(front):
    url, store, key, app = front
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        ok = c.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": HI, "max_tokens": 2})
        doomed = c.post(f"{url}/v1/chat/completions", json={"model": "doomed", "messages": HI, "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["model"] == "dear"
    assert ok.json()["usage"]["leaninfer"]["attempts"] == ["cheap:upstream_failed"]
    ledger = rows(store)
    row = ledger[ok.headers["x-request-id"]]
    assert (row.route, row.served_model, row.attempts, row.status) == ("chat", "dear", "cheap:upstream_failed", 200)
    assert row.cost_nusd == to_nano(PROMPT_TOKENS * 5.0 / 1000) + to_nano(2 * P_OUT / 1000)  # dear's tariff
    # every candidate down: the last one's answer (busy: 503, its Retry-After), both attempts recorded
    assert doomed.status_code == 503 and doomed.headers["retry-after"] == "7"
    row = ledger[doomed.headers["x-request-id"]]
    assert row.attempts == "cheap:upstream_failed,busy:upstream_busy" and row.cost_nusd == 0


def test_a_fallback_counts_the_request_against_tpm_once(front):
    url, store, _, app = front
    body = {"model": "chat", "messages": HI, "max_tokens": 2}  # cheap is down: answered by dear
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {make_key(store)}"}) as c:
        first = c.post(f"{url}/v1/chat/completions", json=body)
    worst = rows(store)[first.headers["x-request-id"]].reserved_tokens  # the same on both candidates
    key = make_key(store, tpm=worst + worst // 2)  # room for one request's worst case, not for two
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        once = c.post(f"{url}/v1/chat/completions", json=body)
        again = c.post(f"{url}/v1/chat/completions", json=body)
    assert first.json()["usage"]["leaninfer"]["attempts"] == ["cheap:upstream_failed"]
    assert once.status_code == 200 and once.json()["model"] == "dear"
    assert again.status_code == 429 and again.json()["error"]["code"] == "tpm"  # the minute's tokens are spent


def test_the_upstream_key_is_never_echoed_logged_or_stored(front, caplog):
    url, store, key, app = front
    caplog.set_level(logging.DEBUG)
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "echo-key", "messages": HI, "max_tokens": 2})
        models = c.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).text
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"
    assert "Bearer ***" in r.json()["error"]["message"] and SECRET not in r.text  # the upstream echoed it: scrubbed
    assert SECRET not in caplog.text and SECRET not in models
    with open(store, "rb") as f:
        assert SECRET.encode() not in f.read()


def test_budget_race_through_an_upstream_never_overshoots(front):
    url, store, _, app = front
    budget = 50 * PROMPT_TOKENS * P_IN / 1000  # ~50 requests at what the upstream reports (3 tokens each)
    key = make_key(store, budget_usd_total=budget)

    async def race():
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"},
                                     limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*(c.post(f"{url}/v1/embeddings", json={"model": "emb", "input": f"t{i}"})
                                          for i in range(200)))

    out = asyncio.run(race())
    ok = [r for r in out if r.status_code == 200]
    refused = [r for r in out if r.status_code != 200]
    assert all(r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded" for r in refused)
    ledger = wait_rows(store, [r.headers["x-request-id"] for r in out])
    mine = [ledger[r.headers["x-request-id"]] for r in out]
    spent = sum(row.cost_nusd for row in mine)
    assert len(ok) >= 10 and spent <= to_nano(budget)  # no overshoot
    costs = [to_nano(r.json()["usage"]["leaninfer"]["cost_usd"]) for r in ok]
    assert sum(costs) == spent  # the ledger's $ = the responses' $
    assert all(cost == to_nano(r.json()["usage"]["prompt_tokens"] * P_IN / 1000) for cost, r in zip(costs, ok, strict=True))


def test_the_cache_answers_an_upstream_request_once_per_team(front, fake):
    url, store, key, app = front
    other = make_key(store)  # another key of team t... and one of another team
    s = open_store(store)
    try:
        key_id, outsider, key_hash = new_key()
        s.add_key(KeyRecord(key_id, key_hash, KeyPolicy(team="other-team"), time.time()))
    finally:
        s.close()
    body = {"model": "emb", "input": "cache me"}
    sent = len(fake.requests)
    with httpx.Client(timeout=30) as c:
        out = [c.post(f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {k}"})
               for k in (key, other, outsider)]
    assert [r.status_code for r in out] == [200] * 3
    assert len(fake.requests) == sent + 2  # the second key of team t was answered from the cache
    hit = out[1].json()["usage"]["leaninfer"]
    assert hit["cached"] is True and hit["cost_usd"] == 0.0 and hit["saved_usd"] == out[0].json()["usage"][
        "leaninfer"]["cost_usd"]
    ledger = rows(store)
    assert [ledger[r.headers["x-request-id"]].cache for r in out] == ["miss", "hit", "miss"]


def test_a_route_ranks_local_and_upstream_variants_by_dollars_per_token(fake, minilm, tmp_path):
    """minilm served here at $3600/h costs far more a token than the upstreams' tariffs: the route takes the
    cheapest upstream that answers, and the local model when every upstream is down."""
    quality = {"sts_drop_pts": 0.1}
    specs = [f"emb-down={fake.url}/v1,tariff={tariff(tmp_path, '500', 'embedding', 0.0001, 0, quality)}",
             f"emb={fake.url}/v1,tariff={tariff(tmp_path, 'ok', 'embedding', 0.001, 0, quality)}"]
    store = str(tmp_path / "ledger.db")
    cfg = ServerConfig(usd_per_hour=3600.0, upstreams=[parse_upstream(s) for s in specs],
                       finops=FinOpsConfig(store=store, routes=["embed=auto:max_sts_drop=0.5"]))
    with serving(create_app({"minilm": minilm}, cfg), lifespan="on") as url, httpx.Client(timeout=60) as c:
        first = c.post(f"{url}/v1/embeddings", json={"model": "embed", "input": "route me"})
        fake.down = True
        try:
            last = c.post(f"{url}/v1/embeddings", json={"model": "embed", "input": "route me too"})
        finally:
            fake.down = False
    assert first.status_code == 200 and first.json()["model"] == "emb"
    assert first.json()["usage"]["leaninfer"]["attempts"] == ["emb-down:upstream_failed"]
    assert last.status_code == 200 and last.json()["model"] == "minilm"
    assert len(last.json()["data"][0]["embedding"]) == 384
    ledger = rows(store)
    row = ledger[last.headers["x-request-id"]]
    assert (row.served_model, row.attempts) == ("minilm", "emb-down:upstream_failed,emb:upstream_busy")
    assert row.price_basis.startswith("engine busy seconds")  # the local variant's own tariff
