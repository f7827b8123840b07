"""When do two lanes beat one full-width call? The measurement behind ``EmbeddingEngine``'s lanes (docs/serving.md).

    flock /tmp/cpu.lock .venv/bin/python scripts/lanes_switch.py --texts /path/to/stsb-en-dev.csv \
        --int8-dir DIR   # DIR: `leaninfer optimize --model minilm --steps onnx,ort-int8 --out DIR`

For each variant, in a fresh process, and each batch size: calls of that many STS-B sentences (padded to the
longest of the call, as the server pads)
- **one call at a time on every core** (``share_cores(1)``, what a lone lane does): latency and texts/s;
- **two calls at once on half the cores each** (two threads, ``share_cores(2)``: two lanes under load): the
  latency of one call and the texts/s of both together;
- **the switch**: the first call on every core right after calls on half the cores, and the reverse, in the
  same thread (PyTorch resizes its OpenMP team; ONNX Runtime swaps to the lane's own session).
Each figure is the median over ``--seconds`` of calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from leaninfer.data import read_sentences


def child(ref: str, texts_path: str | None, batches: list[int], seconds: float) -> dict:
    import leaninfer

    model = leaninfer.load(ref)
    texts = read_sentences(texts_path)
    texts = texts * (64 * max(batches) // len(texts) + 1)
    encs = {b: [model.tokenize(texts[i:i + b]) for i in range(0, 64 * b, b)] for b in batches}
    out = {"backend": model.backend, "max_lanes": model.max_lanes(), "batches": {}}

    def loop(b: int, share: int, samples: list, start: threading.Barrier | None):
        model.share_cores(share)
        for e in encs[b][:8]:
            model.embed_batch(e)
        if start:
            start.wait()
        t_end, i = time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            model.embed_batch(encs[b][i % len(encs[b])])
            samples.append(time.perf_counter() - t0)
            i += 1
        model.share_cores(1)

    for b in batches:
        one: list[float] = []
        t = threading.Thread(target=loop, args=(b, 1, one, None))
        t.start()
        t.join()
        two: list[list[float]] = [[], []]
        start = threading.Barrier(2)
        ts = [threading.Thread(target=loop, args=(b, 2, two[k], start)) for k in range(2)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        lat2 = statistics.median(two[0] + two[1])
        out["batches"][b] = {
            "one_call_ms": 1e3 * statistics.median(one), "one_call_texts_per_s": b * len(one) / sum(one),
            "two_lanes_call_ms": 1e3 * lat2,
            "two_lanes_texts_per_s": b * (len(two[0]) + len(two[1])) / max(sum(two[0]), sum(two[1]))}

    # a collision: one call on every core while another lane runs on its half (3 threads on 2 cores, say): what
    # a lone call on every core costs when the other lane starts beside it
    b = max(b for b in batches if b <= 8)
    full: list[float] = []
    half: list[float] = []
    start = threading.Barrier(2)
    ts = [threading.Thread(target=loop, args=(b, 1, full, start)), threading.Thread(target=loop, args=(b, 2, half, start))]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    out["collision"] = {"batch": b, "full_call_ms": 1e3 * statistics.median(full),
                        "half_call_ms": 1e3 * statistics.median(half),
                        "texts_per_s": b * (len(full) + len(half)) / max(sum(full), sum(half))}

    # the switch, in one thread: half the cores for a while, then every core (first call timed), and back
    def switch() -> None:
        e = encs[1][0]
        res = {"to_whole_first_ms": [], "to_half_first_ms": [], "whole_steady_ms": [], "half_steady_ms": []}
        for _ in range(10):
            model.share_cores(2)
            for _ in range(5):
                model.embed_batch(e)
            t0 = time.perf_counter()
            model.embed_batch(e)
            res["half_steady_ms"].append(1e3 * (time.perf_counter() - t0))
            model.share_cores(1)
            t0 = time.perf_counter()
            model.embed_batch(e)
            res["to_whole_first_ms"].append(1e3 * (time.perf_counter() - t0))
            for _ in range(5):
                model.embed_batch(e)
            t0 = time.perf_counter()
            model.embed_batch(e)
            res["whole_steady_ms"].append(1e3 * (time.perf_counter() - t0))
            model.share_cores(2)
            t0 = time.perf_counter()
            model.embed_batch(e)
            res["to_half_first_ms"].append(1e3 * (time.perf_counter() - t0))
        model.share_cores(1)
        out["switch_batch1_ms"] = {k: statistics.median(v) for k, v in res.items()}

    t = threading.Thread(target=switch)
    t.start()
    t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts")
    ap.add_argument("--int8-dir", help="a minilm onnx,ort-int8 artifact (without it: FP32 only)")
    ap.add_argument("--ov-dir", help="a minilm openvino,ov-int8 artifact (optional)")
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.child:
        print(json.dumps(child(a.child, a.texts, batches, a.seconds)))
        return
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), "?")
    refs = {"fp32": "minilm"} | ({"ort-int8": a.int8_dir} if a.int8_dir else {}) | (
        {"ov-int8": a.ov_dir} if a.ov_dir else {})
    results = {}
    for label, ref in refs.items():
        cmd = [sys.executable, __file__, "--child", ref, "--batches", a.batches, "--seconds", str(a.seconds)]
        if a.texts:
            cmd += ["--texts", a.texts]
        results[label] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                                    .stdout.strip().splitlines()[-1])
    print(f"CPU: {cpu}")
    print("| variant | batch | one call, every core: ms / texts/s | two lanes at once: ms per call / texts/s | "
          "two lanes / one |")
    print("|---|---:|---:|---:|---:|")
    for label, r in results.items():
        for b, x in r["batches"].items():
            print(f"| {label} | {b} | {x['one_call_ms']:.2f} / {x['one_call_texts_per_s']:.0f} | "
                  f"{x['two_lanes_call_ms']:.2f} / {x['two_lanes_texts_per_s']:.0f} | "
                  f"{x['two_lanes_texts_per_s'] / x['one_call_texts_per_s']:.2f}x |")
    for label, r in results.items():
        c = r["collision"]
        x = r["batches"][str(c["batch"])]
        print(f"{label} collision, batch {c['batch']}: a call on every core beside a lane on half: "
              f"{c['full_call_ms']:.2f} ms (alone {x['one_call_ms']:.2f}), the half lane {c['half_call_ms']:.2f} ms "
              f"(beside another half: {x['two_lanes_call_ms']:.2f}); {c['texts_per_s']:.0f} texts/s "
              f"(two half lanes: {x['two_lanes_texts_per_s']:.0f})")
    for label, r in results.items():
        s = r.get("switch_batch1_ms")
        if s:
            print(f"{label} switch, batch 1: whole {s['whole_steady_ms']:.2f} ms steady, first after half "
                  f"{s['to_whole_first_ms']:.2f}; half {s['half_steady_ms']:.2f} steady, first after whole "
                  f"{s['to_half_first_ms']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))


if __name__ == "__main__":
    main()
