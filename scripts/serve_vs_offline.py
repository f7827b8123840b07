"""Served embeddings vs offline, in one run: the figures of docs/serving.md ("Measured serving figures").

    flock /tmp/cpu.lock .venv/bin/python scripts/serve_vs_offline.py --texts /path/to/stsb-en-dev.csv

Two servers start first and stay up: ``leaninfer serve minilm`` with batching on (serve's defaults, response
cache off) and with batching off (``--max-batch-size 1 --max-wait-ms 0 --lanes 1``: one text per model call,
one call at a time, as offline batch 1). Then ``--rounds`` rounds, each:
offline ``model.embed(texts, batch_size=32)`` and ``batch_size=1`` in this process, then each server driven
for ``--duration-s`` by a closed loop of 32 clients (wrk where installed, else the project's load generator),
one text per request. A round's ratios compare figures measured seconds apart, so a shared VM's drift (±20%
between minutes, seen here) moves both sides of a ratio alike; the summary is the median over rounds. A
server that is not being driven is idle (its engine waits on a condition), so it costs the other
measurements nothing. The client shares the machine's cores with the server, so its own CPU time (and the
server's) is measured and printed next to the throughput. Then the event-loop check: ``/health`` probed
every 20 ms while the largest request the server takes (``--max-body-bytes`` of embeddings input) is
processed; its p50/p99/max latency is printed.
"""

from __future__ import annotations

import argparse
import asyncio
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
from leaninfer.benchmarks.load import launch
from leaninfer.benchmarks.load.launch import stop_server
from leaninfer.benchmarks.load.loadgen import LoadSpec, run_level
from leaninfer.benchmarks.serve_load import wait_idle
from leaninfer.data import read_sentences


def offline_round(model, texts: list[str], n_batch1: int) -> dict:
    """One pass of offline ``embed`` at batch 32 over ``texts`` and at batch 1 over the first ``n_batch1``."""
    t0 = time.perf_counter()
    model.embed(texts, batch_size=32)
    b32 = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.embed(texts[:n_batch1], batch_size=1)
    return {"batch32_texts_per_s": b32, "batch1_texts_per_s": n_batch1 / (time.perf_counter() - t0)}


SERVER_ENV: dict[str, str] = {}  # extra environment of the server process (--server-env)
# Every level cycles through the same texts, so serve's exact-match response cache would answer most requests
# without the model: off, so that the model's work is what is measured. The ledger stays at serve's default.
SERVER_ARGS: list[str] = ["--cache-max-bytes", "0"]
SERVER_CWD = tempfile.TemporaryDirectory(prefix="serve-vs-offline-")


def start_server(port: int, extra: list[str]):
    proc, _ = launch.start_server(["minilm", *SERVER_ARGS, *extra], port, cwd=SERVER_CWD.name, env=SERVER_ENV,
                                  timeout_s=120)  # cwd: its ledger file goes there, not into the caller's folder
    return proc


def drive(proc, port: int, texts: list[str], client: str, concurrency: int, duration_s: float) -> dict:
    """One closed-loop level against a running server: throughput, latency, and both sides' CPU time."""
    server = psutil.Process(proc.pid)
    s0 = server.cpu_times()
    if client == "wrk":
        res = launch.run_wrk(f"http://127.0.0.1:{port}", "/v1/embeddings",
                             [{"model": "minilm", "input": t} for t in texts], concurrency, duration_s)
        out = {"requests": res["requests"], "errors": res["errors"], "req_per_s": res["req_per_s"],
               "e2e_p50_ms": res["p50_us"] / 1e3, "e2e_p95_ms": res["p95_us"] / 1e3,
               "duration_s": res["duration_us"] / 1e6, "client_cpu_s": res["client_cpu_s"]}
    else:  # the project's own load generator (``leaninfer load``'s), in this process
        spec = LoadSpec(base_url=f"http://127.0.0.1:{port}/v1", model="minilm", duration_s=duration_s, texts=texts)
        c0 = time.process_time()
        res = asyncio.run(run_level(spec, "concurrency", concurrency))
        out = {"requests": res.requests, "errors": res.errors, "req_per_s": res.requests_per_s,
               "e2e_p50_ms": res.e2e.p50_ms, "e2e_p95_ms": res.e2e.p95_ms, "duration_s": res.duration_s,
               "client_cpu_s": time.process_time() - c0}
    s1 = server.cpu_times()
    out["server_cpu_s"] = (s1.user + s1.system) - (s0.user + s0.system)
    # wrk stops with requests queued: the server works them off (or sees them cancelled) for up to a second,
    # which must not overlap the next measurement
    wait_idle(f"http://127.0.0.1:{port}", "minilm", time.perf_counter())
    n = max(1, out["requests"])
    return out | {"client": client, "client_cpu_ms_per_req": 1e3 * out["client_cpu_s"] / n,
                  "server_cpu_ms_per_req": 1e3 * out["server_cpu_s"] / n}


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
    ap.add_argument("--duration-s", type=float, default=10.0, help="seconds per served level")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of offline + served, interleaved")
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
    on = ["--max-batch-size", "32"] + (["--max-wait-ms", str(a.max_wait_ms)] if a.max_wait_ms is not None else [])
    servers = {"on": (start_server(a.port, on + a.serve_arg), a.port, on + a.serve_arg)}
    if not a.skip_off:
        off_args = ["--max-batch-size", "1", "--max-wait-ms", "0", "--lanes", "1"]  # as offline batch 1
        servers["off"] = (start_server(a.port + 1, off_args + ["--store", "ledger-batching-off.db"]), a.port + 1,
                          off_args)
    model = leaninfer.load("minilm")
    n_batch1 = min(320, len(texts))
    rounds = []
    try:
        model.embed(texts[:64], batch_size=32)  # warm-up: offline, then each server
        for proc, port, _ in servers.values():
            drive(proc, port, texts, a.client, a.concurrency, 2.0)
        for k in range(a.rounds):
            r = {"offline": offline_round(model, texts, n_batch1)}
            for which, (proc, port, _) in servers.items():
                r[f"served_batching_{which}"] = drive(proc, port, texts, a.client, a.concurrency, a.duration_s)
            off = r["offline"]
            r["served_over_offline"] = r["served_batching_on"]["req_per_s"] / off["batch32_texts_per_s"]
            r["offline_ceiling"] = off["batch32_texts_per_s"] / off["batch1_texts_per_s"]
            if "served_batching_off" in r:
                r["served_batching_gain"] = (r["served_batching_on"]["req_per_s"]
                                             / r["served_batching_off"]["req_per_s"])
                r["gain_over_ceiling"] = r["served_batching_gain"] / r["offline_ceiling"]
            rounds.append(r)
            print(f"round {k + 1}: offline b32 {off['batch32_texts_per_s']:.0f}, b1 {off['batch1_texts_per_s']:.0f} "
                  f"texts/s; served {r['served_batching_on']['req_per_s']:.0f} req/s "
                  f"({r['served_batching_on']['server_cpu_ms_per_req']:.1f} ms server CPU/req) = "
                  f"{100 * r['served_over_offline']:.0f}% of offline"
                  + (f"; batching off {r['served_batching_off']['req_per_s']:.0f} req/s, gain "
                     f"{r['served_batching_gain']:.2f}x of {r['offline_ceiling']:.2f}x = "
                     f"{100 * r['gain_over_ceiling']:.0f}%" if "gain_over_ceiling" in r else ""), flush=True)
    finally:
        for proc, _, _ in servers.values():
            stop_server(proc)
    out["server_args"] = {which: " ".join(args) for which, (_, _, args) in servers.items()}
    out["rounds"] = rounds
    out["median"] = {key: statistics.median(r[key] for r in rounds)
                     for key in ("served_over_offline", "offline_ceiling", "served_batching_gain", "gain_over_ceiling")
                     if key in rounds[0]}
    if not a.skip_health:
        out["health"] = health_under_big_request(read_sentences(a.texts), a.port)
    print(json.dumps(out, indent=2))
    med = out["median"]
    print(f"median of {len(rounds)} rounds: served / offline b32 = {100 * med['served_over_offline']:.0f}%"
          + (f"; batching gain / offline ceiling = {100 * med['gain_over_ceiling']:.0f}%"
             if "gain_over_ceiling" in med else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
