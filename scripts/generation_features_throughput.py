"""What logprobs and structured output cost a served model: output tokens/s at N concurrent streams, free against
``logprobs`` (5 alternatives) and against a ``json_schema`` response_format, in one run, interleaved.

    flock /tmp/cpu.lock .venv/bin/python scripts/generation_features_throughput.py [--model random:gpt2]

``leaninfer serve MODEL`` (cache off) is driven by ``--streams`` concurrent clients (asyncio + httpx, one process:
its CPU is measured and printed, since it shares the machine's cores), each sending chat completions of
``--max-tokens`` tokens with temperature 1 and its own seed, for ``--seconds`` per mode and round; modes are
interleaved over ``--rounds`` rounds and the medians compared. Throughput counts the completion tokens the
server reports (a constrained answer may stop early when its JSON is complete).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time

import httpx

from leaninfer.benchmarks.load.launch import start_server, stop_server

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}, "tags": {"type": "array",
          "items": {"type": "string"}}, "score": {"type": "integer"}}, "required": ["title", "tags", "score"]}
MODES = {
    "free": {},
    "logprobs": {"logprobs": True, "top_logprobs": 5},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "item", "schema": SCHEMA}}},
}


async def drive(url: str, mode: dict, streams: int, seconds: float, max_tokens: int) -> dict:
    tokens, requests, errors = 0, 0, 0
    deadline = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal tokens, requests, errors
        seed = 1000 * k
        async with httpx.AsyncClient(timeout=120) as c:
            while time.perf_counter() < deadline:
                seed += 1
                body = {"model": "m", "messages": [{"role": "user", "content": "describe an item"}],
                        "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, **mode}
                r = await c.post(f"{url}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    errors += 1
                    continue
                tokens += r.json()["usage"]["completion_tokens"]
                requests += 1

    c0, t0 = os.times(), time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(streams)))
    wall, c1 = time.perf_counter() - t0, os.times()
    return {"tokens_per_s": tokens / wall, "requests": requests, "errors": errors,
            "client_cpu_share": (c1.user + c1.system - c0.user - c0.system) / wall / (os.cpu_count() or 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    proc, url = start_server([a.model, "--name", "m", "--cache-max-bytes", "0", "--store", "none"])
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        for m in MODES:  # warm-up: a tokenizer's first grammar is converted once
            asyncio.run(drive(url, MODES[m], a.streams, 2, a.max_tokens))
        for _ in range(a.rounds):
            for m, extra in MODES.items():
                r = asyncio.run(drive(url, extra, a.streams, a.seconds, a.max_tokens))
                runs[m].append(r)
                print(m, json.dumps(r), flush=True)
    finally:
        stop_server(proc)
    med = {m: statistics.median(r["tokens_per_s"] for r in rs) for m, rs in runs.items()}
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), "?")
    out = {"cpu": cpu, "model": a.model, "streams": a.streams, "max_tokens": a.max_tokens,
           "median_tokens_per_s": med, "vs_free": {m: med[m] / med["free"] for m in MODES}, "runs": runs}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
