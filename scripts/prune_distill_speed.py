"""Speed and quality of pruned / distilled / quantized embedding models, same run: docs/prune_distill.md's table.

    flock /tmp/cpu.lock .venv/bin/python scripts/prune_distill_speed.py --sts stsb-en-dev.csv \\
        "minilm FP32=minilm" "minilm prune-ffn ratio 0.3=pd/prune" "minilm onnx,ort-int8=pd/ort" \\
        "3-layer student FP32=pd/student" "3-layer student onnx,ort-int8=pd/student-ort"

Each ``NAME=REF`` is a variant: anything ``leaninfer.load`` takes (``minilm``, an artifact directory made by
``leaninfer optimize``; the doc gives the commands). The first one is the reference (1.00x, Δ 0).

Method: the first ``--sentences`` sentences of the STS CSV (both columns, file order), in batches of
``--batch-size``, the same batches for every variant (no length sorting: the batches are what is compared),
each tokenized once before timing; one untimed warm-up pass, then ``--rounds`` rounds that cycle through the
variants (a, b, c, a, b, c, ...) so drifting background load hits all alike; tokens/s is non-padding tokens
over the median round time. Quality: STS Spearman of each variant on the whole CSV (``leaninfer.evaluate``).
The CPU, thread count and library versions are printed with the table: ratios differ a lot between CPUs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from importlib.metadata import version

import torch

import leaninfer
from leaninfer.hardware import detect_local


def sentences(path: str, n: int) -> list[str]:
    out: list[str] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            out.extend(row[:2])
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", metavar="NAME=REF")
    ap.add_argument("--sts", required=True, help="STS CSV: sentence1,sentence2,score (STS-B dev)")
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    pairs = [v.rpartition("=")[::2] for v in args.variants]
    if any(not name or not ref for name, ref in pairs):
        ap.error("each variant is NAME=REF, e.g. 'minilm FP32=minilm'")
    models = {name: leaninfer.load(ref) for name, ref in pairs}
    texts = sentences(args.sts, args.sentences)
    batches = {name: [m.tokenize(texts[i:i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
               for name, m in models.items()}
    tokens = {name: int(sum(b["attention_mask"].sum() for b in bs)) for name, bs in batches.items()}

    def one_pass(name: str) -> float:
        t0 = time.perf_counter()
        for enc in batches[name]:
            models[name].embed_batch(enc)
        return time.perf_counter() - t0

    for name in models:
        one_pass(name)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(one_pass(name))

    ref_name = pairs[0][0]
    quality = {name: leaninfer.evaluate(m, None, sts=args.sts)["sts_spearman"] for name, m in models.items()}
    speed = {name: tokens[name] / statistics.median(times[name]) for name in models}

    hw = detect_local()
    print(f"CPU: {hw.cpu_name} ({hw.int8_isa}), {hw.logical_cores} logical cores, torch threads "
          f"{torch.get_num_threads()}; torch {version('torch')}, transformers {version('transformers')}, "
          f"onnxruntime {version('onnxruntime')}")
    print(f"{len(texts)} sentences of {args.sts} in file order, batch {args.batch_size}, same batches, 1 warm-up + "
          f"{args.rounds} interleaved rounds, medians\n")
    print("| variant | tokens/s | vs reference | STS Spearman (Δ pts vs reference) |")
    print("| --- | --- | --- | --- |")
    for name in models:
        d = quality[name] - quality[ref_name]
        print(f"| {name} | {speed[name]:,.0f} | {speed[name] / speed[ref_name]:.2f}× | "
              f"{quality[name]:.2f}" + ("" if name == ref_name else f" ({d:+.2f})") + " |")


if __name__ == "__main__":
    main()
