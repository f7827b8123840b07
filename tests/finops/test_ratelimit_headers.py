"""Rate-limit and cost headers: OpenAI's x-ratelimit-* and the IETF RateLimit items on successes and 429s of a
key with rpm/tpm, x-leaninfer-cost-usd on metered answers (not on streams), and the openai client's retry logic
reading a 429 of this server (its retry-after-ms, x-should-retry) without error."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from leaninfer.finops.money import to_nano

from .conftest import bearer, finops_client, make_key

pytestmark = pytest.mark.timeout(300)
EMBED = {"model": "minilm", "input": "a sentence about headers"}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$|^\d+ms$")


def test_success_headers_carry_limits_and_the_charged_cost(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="search", rpm=10, tpm=100_000)
    plain = make_key(store, team="search")

    async def go():
        async with finops_client(served, auth="keys", store=store, cache_max_bytes=1 << 20) as c:
            first = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            hit = await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))
            stream = await c.post("/v1/completions", headers=bearer(key), json={
                "model": "tiny-gpt2", "prompt": "hi", "max_tokens": 3, "stream": True})
            other = await c.post("/v1/embeddings", json=EMBED, headers=bearer(plain))
            return first, hit, stream, other

    first, hit, stream, other = asyncio.run(go())
    h = first.headers
    assert first.status_code == 200
    tokens = first.json()["usage"]["prompt_tokens"]
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("10", "9")
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("100000", str(100_000 - tokens))
    assert GO_DURATION.match(h["x-ratelimit-reset-requests"]) and GO_DURATION.match(h["x-ratelimit-reset-tokens"])
    assert h["RateLimit-Policy"] == '"rpm";q=10;w=60, "tpm";q=100000;w=60'
    assert h["RateLimit"].startswith('"rpm";r=9;t=') and f'"tpm";r={100_000 - tokens};t=' in h["RateLimit"]
    # the cost header is the charge, exactly: the body's dollars and the ledger's nano-dollars
    cost = first.json()["usage"]["leaninfer"]["cost_usd"]
    assert float(h["x-leaninfer-cost-usd"]) == cost > 0
    assert to_nano(float(h["x-leaninfer-cost-usd"])) == to_nano(cost)
    assert hit.json()["usage"]["leaninfer"]["cached"] is True and hit.headers["x-leaninfer-cost-usd"] == "0"
    assert hit.headers["x-ratelimit-remaining-requests"] == "8"
    # a stream: limits yes, a cost no (not known when its headers leave)
    assert stream.status_code == 200 and "x-leaninfer-cost-usd" not in stream.headers
    assert stream.headers["x-ratelimit-remaining-requests"] == "7"
    # a key without rpm/tpm: no rate-limit headers, still its cost
    assert not any(k.startswith("x-ratelimit") or k.startswith("ratelimit") for k in other.headers)
    assert float(other.headers["x-leaninfer-cost-usd"]) == other.json()["usage"]["leaninfer"]["cost_usd"]


def test_openai_client_reads_a_429_and_retries_as_told(served, tmp_path, monkeypatch):
    """The openai SDK against this server (ASGI transport): a rpm 429 is retried after the server's
    retry-after-ms (the SDK's sleep recorded, not slept), then raised as RateLimitError with the headers; a
    spent lifetime budget says x-should-retry: false, and the SDK doesn't retry it."""
    openai = pytest.importorskip("openai")
    import openai._base_client as base

    store = str(tmp_path / "l.db")
    limited = make_key(store, team="search", rpm=1, tpm=100_000)
    spent = make_key(store, team="search", budget_tokens_total=1)
    slept: list[float] = []

    async def no_sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(base.anyio, "sleep", no_sleep)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            transport = httpx.ASGITransport(app=c.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                def client(key, retries):
                    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http,
                                              max_retries=retries)
                ok = await client(limited, 0).embeddings.with_raw_response.create(model="minilm", input="x")
                with pytest.raises(openai.RateLimitError) as rate:
                    await client(limited, 2).embeddings.create(model="minilm", input="x")
                # a budget 429 on the tokens of a first request (1 token can't cover it): no retry
                await c.post("/v1/embeddings", json=EMBED, headers=bearer(spent))
                with pytest.raises(openai.RateLimitError) as budget:
                    await client(spent, 2).embeddings.create(model="minilm", input="x")
                return ok, rate.value, budget.value

    ok, rate, budget = asyncio.run(go())
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    h = rate.response.headers
    assert rate.status_code == 429 and rate.code == "rpm"
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert GO_DURATION.match(h["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in h  # refused at the key, before its tokens were counted
    assert int(h["retry-after-ms"]) == 1000 * int(h["Retry-After"]) and "x-should-retry" not in h
    # two retries, each after the server's wait (the SDK takes retry-after-ms when 0 < it <= its cap)
    assert len(slept) == 2 and all(s == int(h["retry-after-ms"]) / 1000 for s in slept), slept
    bh = budget.response.headers
    assert budget.status_code == 429 and bh["x-should-retry"] == "false" and "Retry-After" not in bh
    assert len(slept) == 2  # the budget 429 was not retried


def test_a_tpm_429_names_what_it_hit_first_and_carries_both_limits(served, tmp_path):
    store = str(tmp_path / "l.db")
    key = make_key(store, team="search", rpm=10, tpm=3)

    async def go():
        async with finops_client(served, auth="keys", store=store) as c:
            return await c.post("/v1/embeddings", json=EMBED, headers=bearer(key))

    r = asyncio.run(go())
    h = r.headers
    assert r.status_code == 429 and r.json()["error"]["code"] == "tpm", r.text
    assert h["RateLimit-Policy"] == '"tpm";q=3;w=60, "rpm";q=10;w=60'
    assert h["RateLimit"].startswith('"tpm";r=3;t=') and '"rpm";r=9;t=' in h["RateLimit"]
    assert (h["x-ratelimit-remaining-requests"], h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) \
        == ("9", "3", "3")
    assert "x-leaninfer-cost-usd" not in h  # refused: nothing charged, nothing metered
