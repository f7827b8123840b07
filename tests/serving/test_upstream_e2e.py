"""A second ``leaninfer serve`` as the upstream of a front ``leaninfer serve --auth keys --upstream ...`` (both
processes, on 127.0.0.1): the openai client through the front, streaming and not, gets what the upstream gives,
every request is charged at the tariff on the usage the upstream reported (and the upstream's own ledger agrees
on the tokens), and 200 concurrent requests against a budget for ~50 never overshoot it."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from leaninfer.benchmarks.load.launch import start_server, stop_server
from leaninfer.finops.money import to_nano
from leaninfer.finops.price_list import PriceList, save_price_list

from .test_upstream import make_key, rows, wait_rows

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # two `leaninfer serve` processes

P_IN, P_OUT = 1.0, 2.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    up_store, front_store = str(tmp / "upstream.db"), str(tmp / "front.db")
    up_key = make_key(up_store)  # the upstream itself wants a key: the front sends it from key_env
    front_key = make_key(front_store)
    emb = save_price_list(PriceList(model="minilm", task="embedding", usd_per_1k_input_tokens=P_IN, source="list"),
                          tmp / "emb.yaml")
    gen = save_price_list(PriceList(model="tiny-gpt2", task="causal-lm", usd_per_1k_input_tokens=P_IN,
                                    usd_per_1k_output_tokens=P_OUT, source="list"), tmp / "gen.yaml")
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    up, up_url = start_server(["minilm", "random:tiny-gpt2", "--auth", "keys", "--store", up_store,
                               "--usd-per-hour", "1"], log=tmp / "upstream.log", env=env)
    front = None
    try:
        front, url = start_server(["--auth", "keys", "--store", front_store,
                                   "--upstream", f"emb={up_url}/v1,key_env=E2E_UPSTREAM_KEY,tariff={emb}",
                                   "--upstream", f"gen={up_url},key_env=E2E_UPSTREAM_KEY,tariff={gen}"],
                                  log=tmp / "front.log", env={**env, "E2E_UPSTREAM_KEY": up_key})
        yield {"up": up_url, "url": url, "key": front_key, "up_key": up_key, "front_store": front_store,
               "up_store": up_store}
    finally:
        if front is not None:
            stop_server(front)
        stop_server(up)
        assert up_key not in (tmp / "front.log").read_text()  # the front never printed the upstream's key


def test_the_openai_client_through_a_front(servers):
    from openai import OpenAI

    front = OpenAI(base_url=f"{servers['url']}/v1", api_key=servers["key"], max_retries=0)
    direct = OpenAI(base_url=f"{servers['up']}/v1", api_key=servers["up_key"], max_retries=0)
    texts = ["a cat sat on the mat", "governed engines"]
    via, own = front.embeddings.create(model="emb", input=texts), direct.embeddings.create(model="minilm", input=texts)
    assert via.model == "emb" and via.usage.prompt_tokens == own.usage.prompt_tokens > 0
    assert np.allclose(np.array([d.embedding for d in via.data]), np.array([d.embedding for d in own.data]),
                       atol=1e-5)
    # base64 (the openai client's default) is passed through as the upstream encoded it
    raw = httpx.post(f"{servers['url']}/v1/embeddings", headers={"Authorization": f"Bearer {servers['key']}"},
                     json={"model": "emb", "input": "x", "encoding_format": "base64"}).json()
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 384 * 4

    c = front.completions.create(model="gen", prompt="hello", max_tokens=5, temperature=0)
    d = direct.completions.create(model="tiny-gpt2", prompt="hello", max_tokens=5, temperature=0)
    assert c.choices[0].text == d.choices[0].text and c.usage.completion_tokens == 5
    msgs = [{"role": "user", "content": "hi"}]
    whole = front.chat.completions.create(model="gen", messages=msgs, max_tokens=6, temperature=0)
    parts = list(front.chat.completions.create(model="gen", messages=msgs, max_tokens=6, temperature=0, stream=True,
                                               stream_options={"include_usage": True}))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == whole.choices[0].message.content
    usage = parts[-1].model_dump()["usage"]
    assert usage["completion_tokens"] == whole.usage.completion_tokens
    assert usage["leaninfer"]["usage_counted_by"] == "upstream"

    charged = [(via.model_dump()["usage"], 0), (c.model_dump()["usage"], 1), (whole.model_dump()["usage"], 1),
               (usage, 1)]
    for u, generated in charged:
        want = (to_nano(u["prompt_tokens"] * P_IN / 1000)
                + to_nano(u.get("completion_tokens", 0) * generated * P_OUT / 1000))
        assert to_nano(u["leaninfer"]["cost_usd"]) == want
    front_rows = wait_rows(servers["front_store"], [u["leaninfer"]["request_id"] for u, _ in charged])
    for u, _ in charged:
        row = front_rows[u["leaninfer"]["request_id"]]
        assert row.cost_nusd == to_nano(u["leaninfer"]["cost_usd"]) and row.input_tokens == u["prompt_tokens"]
    # the upstream metered the same tokens in its own ledger
    up_tokens = sorted((r.input_tokens, r.output_tokens) for r in rows(servers["up_store"]).values()
                       if r.status == 200)
    for u, _ in charged:
        assert (u["prompt_tokens"], u.get("completion_tokens", 0)) in up_tokens


def test_budget_race_through_a_leaninfer_upstream(servers):
    key = make_key(servers["front_store"], budget_usd_total=0.3)
    probe = httpx.post(f"{servers['url']}/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "emb", "input": "probe 0"}, timeout=60).json()
    per_request = probe["usage"]["leaninfer"]["cost_usd"]  # ~50 such requests fit the budget
    key = make_key(servers["front_store"], budget_usd_total=round(50 * per_request, 9))

    async def race():
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"},
                                     limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*(c.post(f"{servers['url']}/v1/embeddings",
                                                 json={"model": "emb", "input": f"probe {i + 1}"})
                                          for i in range(200)))

    out = asyncio.run(race())
    ok = [r for r in out if r.status_code == 200]
    assert all(r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded"
               for r in out if r.status_code != 200)
    ledger = wait_rows(servers["front_store"], [r.headers["x-request-id"] for r in out])
    spent = sum(ledger[r.headers["x-request-id"]].cost_nusd for r in out)
    assert len(ok) >= 10 and spent <= to_nano(round(50 * per_request, 9))  # no overshoot
    costs = [to_nano(r.json()["usage"]["leaninfer"]["cost_usd"]) for r in ok]
    assert sum(costs) == spent
    assert all(c == to_nano(r.json()["usage"]["prompt_tokens"] * P_IN / 1000) for c, r in zip(costs, ok, strict=True))
