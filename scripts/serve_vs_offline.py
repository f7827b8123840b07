"""Served embeddings vs offline, in one run: the figures of docs/serving.md ("Measured serving figures").

    flock /tmp/cpu.lock .venv/bin/python scripts/serve_vs_offline.py --texts /path/to/stsb-en-dev.csv

Offline: ``model.embed(texts, batch_size=32)`` and ``batch_size=1`` in this process, median of 3. Served:
``leaninfer serve minilm`` in a subprocess, driven by the project's load generator (one text per request,
closed loop, 32 clients) from this process, with batching on and off. The client shares the machine's cores
with the server, so its own CPU time (and the server's) is measured and printed next to the throughput.
Then the event-loop check: ``/health`` probed every 20 ms while the largest request the server takes
(``--max-body-bytes`` of embeddings input) is processed; its p50/p99/max latency is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

import leaninfer
from leaninfer.data import default_texts
from leaninfer.serving import launch
from leaninfer.serving.launch import stop_server
from leaninfer.serving.loadgen import LoadSpec, run_level


def read_sentences(path: str | None) -> list[str]:
    if not path:
        return default_texts()
    if path.endswith(".csv"):  # STS-B: sentence1,sentence2,score
        with open(path, newline="", encoding="utf-8") as f:
            return [row[0] for row in csv.reader(f) if row]
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def offline(texts: list[str], n_batch1: int) -> dict:
    m = leaninfer.load("minilm")
    m.embed(texts[:64], batch_size=32)  # warm-up
    b32 = []
    for _ in range(3):
        t0 = time.perf_counter()
        m.embed(texts, batch_size=32)
        b32.append(len(texts) / (time.perf_counter() - t0))
    b1 = []
    for _ in range(3):
        t0 = time.perf_counter()
        m.embed(texts[:n_batch1], batch_size=1)
        b1.append(n_batch1 / (time.perf_counter() - t0))
    return {"batch32_texts_per_s": statistics.median(b32), "batch1_texts_per_s": statistics.median(b1)}


SERVER_ENV: dict[str, str] = {}  # extra environment of the server process (--server-env)
# Every level cycles through the same texts, so serve's exact-match response cache would answer most requests
# without the model: off, so that the model's work is what is measured. The ledger stays at serve's default.
SERVER_ARGS: list[str] = ["--cache-max-bytes", "0"]
SERVER_CWD = tempfile.TemporaryDirectory(prefix="serve-vs-offline-")


def start_server(port: int, extra: list[str]):
    proc, _ = launch.start_server(["minilm", *SERVER_ARGS, *extra], port, cwd=SERVER_CWD.name, env=SERVER_ENV,
                                  timeout_s=120)  # cwd: its ledger file goes there, not into the caller's folder
    return proc


def served_wrk(texts: list[str], port: int, extra: list[str], concurrency: int, duration_s: float) -> dict:
    proc = start_server(port, extra)
    try:
        url, bodies = f"http://127.0.0.1:{port}", [{"model": "minilm", "input": t} for t in texts]
        launch.run_wrk(url, "/v1/embeddings", bodies, concurrency, 2.0)  # warm-up
        server = psutil.Process(proc.pid)
        s0 = server.cpu_times()
        res = launch.run_wrk(url, "/v1/embeddings", bodies, concurrency, duration_s)
        s1 = server.cpu_times()
        dur = res["duration_us"] / 1e6
        server_cpu = (s1.user + s1.system) - (s0.user + s0.system)
        return {"server_args": " ".join(extra), "client": "wrk", "requests": res["requests"], "errors": res["errors"],
                "req_per_s": res["req_per_s"], "e2e_p50_ms": res["p50_us"] / 1e3, "e2e_p95_ms": res["p95_us"] / 1e3,
                "duration_s": dur, "client_cpu_s": res["client_cpu_s"], "server_cpu_s": server_cpu,
                "client_cpu_ms_per_req": 1e3 * res["client_cpu_s"] / max(1, res["requests"]),
                "server_cpu_ms_per_req": 1e3 * server_cpu / max(1, res["requests"])}
    finally:
        stop_server(proc)


def served(texts: list[str], port: int, extra: list[str], concurrency: int, requests: int) -> dict:
    """The same level driven by the project's own load generator (``leaninfer load``'s), in this process."""
    proc = start_server(port, extra)
    try:
        spec = LoadSpec(base_url=f"http://127.0.0.1:{port}/v1", model="minilm", requests=requests, texts=texts)
        warm = LoadSpec(**{**spec.__dict__, "requests": 2 * concurrency})
        asyncio.run(run_level(warm, "concurrency", concurrency))
        server = psutil.Process(proc.pid)
        s0, c0 = server.cpu_times(), time.process_time()
        res = asyncio.run(run_level(spec, "concurrency", concurrency))
        s1, c1 = server.cpu_times(), time.process_time()
        return {"server_args": " ".join(extra), "requests": res.requests, "errors": res.errors,
                "req_per_s": res.requests_per_s, "e2e_p50_ms": res.e2e.p50_ms, "e2e_p95_ms": res.e2e.p95_ms,
                "duration_s": res.duration_s, "client": "loadgen",
                "client_cpu_s": c1 - c0,
                "server_cpu_s": (s1.user + s1.system) - (s0.user + s0.system),
                "client_cpu_ms_per_req": 1e3 * (c1 - c0) / max(1, res.requests),
                "server_cpu_ms_per_req": 1e3 * ((s1.user + s1.system) - (s0.user + s0.system)) / max(1, res.requests)}
    finally:
        stop_server(proc)


async def _probe_health(base: str, big_body: bytes, period_s: float = 0.02) -> dict:
    lat: list[float] = []
    async with httpx.AsyncClient(timeout=120) as client:
        async def probe():
            while True:
                t0 = time.perf_counter()
                await client.get(f"{base}/health")
                lat.append(time.perf_counter() - t0)
                await asyncio.sleep(period_s)

        prober = asyncio.ensure_future(probe())
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        r = await client.post(f"{base}/v1/embeddings", content=big_body,
                              headers={"content-type": "application/json"})
        big_s = time.perf_counter() - t0
        prober.cancel()
    lat.sort()
    return {"big_request_status": r.status_code, "big_request_s": big_s, "big_request_bytes": len(big_body),
            "health_probes": len(lat), "health_p50_ms": 1000 * lat[len(lat) // 2],
            "health_p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "health_max_ms": 1000 * lat[-1]}


def health_under_big_request(texts: list[str], port: int, max_chars: int = 1_000_000, max_items: int = 2048) -> dict:
    """The largest request serve's default limits take: ``--max-request-items`` inputs holding
    ``--max-request-chars`` characters in all (sentences joined into ~490-character inputs, ~100 tokens each)."""
    per = max_chars // max_items
    inputs, k = [], 0
    for _ in range(max_items):
        x = ""
        while len(x) + len(texts[k % len(texts)]) + 1 <= per:
            x += texts[k % len(texts)] + " "
            k += 1
        inputs.append(x)
    body = json.dumps({"model": "minilm", "input": inputs}).encode()
    proc = start_server(port, ["--max-batch-size", "32"])
    try:
        res = asyncio.run(_probe_health(f"http://127.0.0.1:{port}", body))
        return res | {"big_request_inputs": len(inputs), "big_request_chars": sum(map(len, inputs))}
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", help="STS-B csv (sentence1 column) or one text per line; default: bundled")
    ap.add_argument("--n-texts", type=int, default=1280)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--max-wait-ms", type=float, default=None, help="passed to serve (default: serve's)")
    ap.add_argument("--skip-off", action="store_true", help="skip the batching-off level")
    ap.add_argument("--client", choices=("wrk", "loadgen"), default="wrk" if shutil.which("wrk") else "loadgen",
                    help="wrk (default where installed: `apt-get install wrk`) or the project's load generator")
    ap.add_argument("--duration-s", type=float, default=10.0, help="wrk: seconds per served level (after 2 s "
                                                                     "of warm-up)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument of `leaninfer serve` for the batching-on level (repeatable)")
    ap.add_argument("--skip-health", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of the server process, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    a = ap.parse_args()
    SERVER_ENV.update(kv.split("=", 1) for kv in a.server_env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = read_sentences(a.texts)
    texts = (texts * (a.n_texts // len(texts) + 1))[:a.n_texts]
    out = {"cpu": next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), "?"),
        "nproc": os.cpu_count(), "texts": a.texts or "bundled", "n_texts": len(texts), "server_env": SERVER_ENV,
        "versions": {"leaninfer": leaninfer.__version__ if hasattr(leaninfer, "__version__") else "?",
                     "torch": __import__("torch").__version__}}
    out["offline"] = offline(texts, n_batch1=min(320, len(texts)))
    print(json.dumps(out["offline"]), flush=True)
    on = ["--max-batch-size", "32"] + (["--max-wait-ms", str(a.max_wait_ms)] if a.max_wait_ms is not None else [])
    on += a.serve_arg

    def level(args: list[str], requests: int) -> dict:
        if a.client == "wrk":
            return served_wrk(texts, a.port, args, a.concurrency, a.duration_s)
        return served(texts, a.port, args, a.concurrency, requests)

    out["served_batching_on"] = level(on, len(texts))
    print(json.dumps(out["served_batching_on"]), flush=True)
    if not a.skip_off:
        out["served_batching_off"] = level(["--max-batch-size", "1", "--max-wait-ms", "0"], len(texts) // 4)
        print(json.dumps(out["served_batching_off"]), flush=True)
    off = out["offline"]
    on_r = out["served_batching_on"]["req_per_s"]
    out["served_over_offline"] = on_r / off["batch32_texts_per_s"]
    out["offline_ceiling"] = off["batch32_texts_per_s"] / off["batch1_texts_per_s"]
    if "served_batching_off" in out:
        out["served_batching_gain"] = on_r / out["served_batching_off"]["req_per_s"]
        out["gain_over_ceiling"] = out["served_batching_gain"] / out["offline_ceiling"]
    if not a.skip_health:
        out["health"] = health_under_big_request(read_sentences(a.texts), a.port)
    print(json.dumps(out, indent=2))
    print(f"served {on_r:.0f} req/s = {100 * out['served_over_offline']:.0f}% of offline b32 "
          f"{off['batch32_texts_per_s']:.0f}; gain " + (f"{out['served_batching_gain']:.2f}x of ceiling "
          f"{out['offline_ceiling']:.2f}x = {100 * out['gain_over_ceiling']:.0f}%" if "gain_over_ceiling" in out
                                                        else "-"))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
