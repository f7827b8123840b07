"""``leaninfer load``: a load generator for any OpenAI-compatible server.

Closed loop (``concurrency``: N clients, each sends its next request when the previous one ends) or open
loop (``rate``: Poisson arrivals at R requests/s, however the server keeps up). Generation requests are
streamed so that time to first token and inter-token latency are measured at the client, as a user sees
them. Token counts come from the server's ``usage`` (streaming asks for it with ``include_usage``), and so does
the cost a leaninfer server meters for each request (``usage.leaninfer.cost_usd``): other engines send none.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field

from ...data import default_texts
from ...latency import Latency

ENDPOINTS = ("embeddings", "completions", "chat")


@dataclass
class Sample:
    ok: bool
    start: float
    end: float
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    status: int = 0
    error: str | None = None
    cost_usd: float | None = None  # the server's meter (usage.leaninfer), where it sends one
    cost_usd_input: float | None = None


@dataclass
class LevelResult:
    """One load level: what was sent, what came back, how fast."""

    mode: str  # "concurrency" | "rate"
    level: float
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    e2e: Latency
    ttft: Latency
    itl: Latency
    error_examples: list[str]
    # The server's own meter summed over the answered requests (usage.leaninfer: a leaninfer server's busy engine
    # time at its $/hour); None unless every answered request carried it.
    metered_usd: float | None = None
    metered_usd_input: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def make_prompt(prompt_tokens: int, seed: int = 0) -> str:
    """A prompt of about ``prompt_tokens`` tokens: bundled English words (≈ one token each for WordPiece and BPE
    vocabularies on common words), shuffled per seed so that requests differ."""
    words = " ".join(default_texts()).split()
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(max(1, prompt_tokens)))


@dataclass
class LoadSpec:
    base_url: str
    model: str
    endpoint: str = "embeddings"
    prompt_tokens: int = 32
    max_tokens: int = 64
    inputs_per_request: int = 1
    requests: int = 200
    duration_s: float | None = None
    timeout_s: float = 300.0
    ignore_eos: bool = True
    api_key: str | None = None
    texts: list[str] | None = None  # request i sends texts[i % len] (one text each) instead of make_prompt
    encoding_format: str | None = None  # embeddings: sent when set ("base64": what the openai client sends)


def _metered(usage: dict) -> dict:
    """The cost a leaninfer server put in ``usage.leaninfer`` (nothing from other engines)."""
    extras = usage.get("leaninfer") if isinstance(usage, dict) else None
    if not isinstance(extras, dict) or not isinstance(extras.get("cost_usd"), (int, float)):
        return {}
    return {"cost_usd": float(extras["cost_usd"]), "cost_usd_input": float(extras.get("cost_usd_input") or 0.0)}


def _sum_metered(ok: list[Sample], attr: str) -> float | None:
    values = [getattr(s, attr) for s in ok]
    return sum(values) if ok and all(v is not None for v in values) else None


async def one_request(client, spec: LoadSpec, i: int) -> Sample:
    start = time.perf_counter()
    url = spec.base_url.rstrip("/")
    try:
        if spec.endpoint == "embeddings":
            if spec.texts:
                n = len(spec.texts)
                inputs = [spec.texts[(i * spec.inputs_per_request + k) % n] for k in range(spec.inputs_per_request)]
            else:
                inputs = [make_prompt(spec.prompt_tokens, i * 7919 + k) for k in range(spec.inputs_per_request)]
            body = {"model": spec.model, "input": inputs}
            if spec.encoding_format:
                body["encoding_format"] = spec.encoding_format
            r = await client.post(f"{url}/embeddings", json=body)
            end = time.perf_counter()
            if r.status_code != 200:
                return Sample(False, start, end, status=r.status_code, error=r.text[:200])
            u = r.json().get("usage", {})
            return Sample(True, start, end, input_tokens=u.get("prompt_tokens", 0), status=200, **_metered(u))
        prompt = spec.texts[i % len(spec.texts)] if spec.texts else make_prompt(spec.prompt_tokens, i)
        body = {"model": spec.model, "max_tokens": spec.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": spec.ignore_eos}
        if spec.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "chat/completions"
        else:
            body["prompt"] = prompt
            path = "completions"
        s = Sample(False, start, start)
        last = None
        async with client.stream("POST", f"{url}/{path}", json=body) as r:
            s.status = r.status_code
            if r.status_code != 200:
                s.error = (await r.aread()).decode(errors="replace")[:200]
                s.end = time.perf_counter()
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    s.error = str(obj["error"])[:200]
                    break
                if obj.get("usage"):
                    s.input_tokens = obj["usage"].get("prompt_tokens", 0)
                    s.output_tokens = obj["usage"].get("completion_tokens", 0)
                    for k, v in _metered(obj["usage"]).items():
                        setattr(s, k, v)
                for c in obj.get("choices", []):
                    text = c.get("text") or (c.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if s.ttft_s is None:
                            s.ttft_s = now - start
                        else:
                            s.itl_s.append(now - last)
                        last = now
        s.end = time.perf_counter()
        s.ok = s.error is None
        return s
    except Exception as e:  # connection refused, timeout...: an error sample, never a crash
        return Sample(False, start, time.perf_counter(), error=f"{type(e).__name__}: {e}"[:200])


async def run_level(spec: LoadSpec, mode: str, level: float) -> LevelResult:
    """Run one concurrency level (closed loop) or one Poisson rate (open loop)."""
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    samples: list[Sample] = []
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s if spec.duration_s else None
    counter = iter(range(10**9))

    def more() -> bool:
        return (deadline is None or time.perf_counter() < deadline)

    async with httpx.AsyncClient(timeout=spec.timeout_s, limits=limits, headers=headers) as client:
        if mode == "concurrency":
            budget = [spec.requests if deadline is None else 10**9]

            async def worker():
                while more() and budget[0] > 0:
                    budget[0] -= 1
                    samples.append(await one_request(client, spec, next(counter)))

            await asyncio.gather(*(worker() for _ in range(int(level))))
        else:
            rng = random.Random(0)
            tasks = []
            n = 0
            while more() and (deadline is not None or n < spec.requests):
                tasks.append(asyncio.ensure_future(one_request(client, spec, next(counter))))
                n += 1
                await asyncio.sleep(rng.expovariate(level))
            samples = list(await asyncio.gather(*tasks))
    dur = time.perf_counter() - t0
    ok = [s for s in samples if s.ok]
    return LevelResult(
        mode=mode, level=level, requests=len(samples), errors=len(samples) - len(ok), duration_s=dur,
        requests_per_s=len(ok) / dur, input_tokens_per_s=sum(s.input_tokens for s in ok) / dur,
        output_tokens_per_s=sum(s.output_tokens for s in ok) / dur,
        e2e=Latency.from_samples(s.end - s.start for s in ok),
        ttft=Latency.from_samples(s.ttft_s for s in ok if s.ttft_s is not None),
        itl=Latency.from_samples(x for s in ok for x in s.itl_s),
        error_examples=sorted({f"{s.status}: {s.error}" for s in samples if not s.ok})[:3],
        metered_usd=_sum_metered(ok, "cost_usd"), metered_usd_input=_sum_metered(ok, "cost_usd_input"))


def run_load(spec: LoadSpec, concurrency: list[int] | None = None, rates: list[float] | None = None,
             on_level=None) -> list[LevelResult]:
    """Run every level in turn (one warm-up request first) and return the results.

    Example:
        >>> run_load(LoadSpec("http://127.0.0.1:8000/v1", "minilm", requests=64), concurrency=[1, 32])  # doctest: +SKIP
    """
    levels = [("concurrency", float(c)) for c in (concurrency or [])] + [("rate", float(r)) for r in (rates or [])]
    results = []

    async def main():
        warm = LoadSpec(**{**asdict(spec), "requests": 1, "duration_s": None})
        await run_level(warm, "concurrency", 1)
        for mode, level in levels:
            res = await run_level(spec, mode, level)
            results.append(res)
            if on_level:
                on_level(res)

    run_async(main)
    return results


def run_async(main) -> None:
    """``asyncio.run(main())``, also from a running loop (a notebook): then in a thread with its own loop; an
    exception raised by ``main`` is raised here either way."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    failed: list[BaseException] = []

    def target():
        try:
            asyncio.run(main())
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if failed:
        raise failed[0]
