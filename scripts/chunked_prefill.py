"""What a long prompt costs the rows already decoding, whole or fed in parts (chunked prefill): the figures of
docs/serving.md ("Chunked prefill").

    flock /tmp/cpu.lock .venv/bin/python scripts/chunked_prefill.py [--model random:gpt2] [--json out.json]

The server's own scheduler and runner, stepped in this process as the engine thread steps them (no HTTP, no
client: nothing else shares the cores). ``--streams`` rows decode; once each has its 4th token, one
``--long``-token prompt arrives. For each ``--chunks`` size (0: whole prompts) and each decode mode, it
records the gaps between the decoding rows' tokens while the long prompt is prefilled (from its arrival to its
first token: the stall it causes), their p50 over the whole run, the long prompt's time to first token and the
decode rows' tokens/s. Each configuration runs ``--repeats`` times, interleaved, and the median is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import leaninfer
from leaninfer.engines.core import GenerationScheduler, GenSequence, SamplingParams
from leaninfer.latency import percentile


def run_once(model, decode: str, chunk: int, streams: int, long_tokens: int, gen: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    runner = model.runner(decode, max_rows=streams + 1)
    sched = GenerationScheduler(runner, max_batch_size=streams + 1, max_batch_tokens=1 << 20,
                                eos_token_id=None, max_seq_len=model.max_seq_length, prefill_chunk=chunk)
    stamps: dict[int, list[float]] = {}

    def on_event(seq, ev):
        stamps.setdefault(seq.id, []).append(time.perf_counter())

    def submit(prompt, max_tokens):
        return sched.submit(GenSequence(prompt=[int(t) for t in prompt], on_event=on_event,
                                        params=SamplingParams(max_tokens=max_tokens, temperature=0,
                                                              ignore_eos=True)))

    rows = [submit(rng.integers(1000, 20000, 32), gen) for _ in range(streams)]
    long = None
    t0 = time.perf_counter()
    while sched.has_work():
        if long is None and all(len(stamps.get(r.id, ())) >= 4 for r in rows):
            long, arrived = submit(rng.integers(1000, 20000, long_tokens), 16), time.perf_counter()
        sched.step()
    wall = time.perf_counter() - t0
    first = stamps[long.id][0]
    gaps = [b - a for r in rows for a, b in zip(stamps[r.id], stamps[r.id][1:], strict=False)]
    during = [b - a for r in rows for a, b in zip(stamps[r.id], stamps[r.id][1:], strict=False)
              if b > arrived and a < first]
    return {"stall_max_ms": 1e3 * max(during), "itl_p50_ms": 1e3 * percentile(gaps, 50),
            "itl_p99_ms": 1e3 * percentile(gaps, 99), "long_ttft_ms": 1e3 * (first - arrived),
            "decode_tok_s": streams * gen / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--long", type=int, default=480, help="tokens of the long prompt")
    ap.add_argument("--gen", type=int, default=48, help="tokens each decoding row generates")
    ap.add_argument("--chunks", default="0,64,128,256")
    ap.add_argument("--decode", default="dynamic,static")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    model = leaninfer.load(a.model)
    chunks = [int(c) for c in a.chunks.split(",")]
    modes = a.decode.split(",")
    for mode in modes:  # warm-up: the first call of each shape sets up its kernels
        for chunk in chunks:
            run_once(model, mode, chunk, a.streams, a.long, 8, 99)
    runs: dict[tuple, list[dict]] = {}
    for rep in range(a.repeats):
        for mode in modes:
            for chunk in chunks:
                runs.setdefault((mode, chunk), []).append(run_once(model, mode, chunk, a.streams, a.long, a.gen, rep))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{a.model}, {a.streams} rows decoding {a.gen} tokens, one {a.long}-token prompt arriving; {cpu}, "
          f"{os.cpu_count()} cores; median of {a.repeats}")
    print("| decode | chunk | longest gap while it prefills | ITL p50 | ITL p99 | long prompt TTFT | decode tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    table = []
    for (mode, chunk), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        table.append({"decode": mode, "chunk": chunk, **med})
        print(f"| {mode} | {chunk or 'whole'} | {med['stall_max_ms']:.0f} ms | {med['itl_p50_ms']:.0f} ms | "
              f"{med['itl_p99_ms']:.0f} ms | {med['long_ttft_ms']:.0f} ms | {med['decode_tok_s']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "cpu": cpu, "args": vars(a), "results": table}, f, indent=1)


if __name__ == "__main__":
    main()
