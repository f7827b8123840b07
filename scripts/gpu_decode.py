"""GPU decode: eager vs static-shape vs CUDA-graph decode of one model, per-step time and % of the HBM bound.

Run on a GPU machine (part of scripts/gpu_check.sh):  python3 scripts/gpu_decode.py [OUT_DIR]
Each decode mode (``LEANINFER_DECODE``) drives the runner the server uses (``Model.runner()``) through the benchmark worker's
``measure_generation``; the bandwidth bound of a decode step is the bytes of weights it reads (the model's
weight bytes) over the GPU's measured device-to-device copy bandwidth.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import leaninfer
from leaninfer.benchmarks.worker import measure_generation

out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")
out.mkdir(parents=True, exist_ok=True)
model = leaninfer.load("random:qwen2.5-0.5b", device="cuda", dtype="bf16")
weight_bytes = model.weight_bytes()

buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB copied: read + write per byte
dst = torch.empty_like(buf)
for _ in range(3):
    dst.copy_(buf)
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(10):
    dst.copy_(buf)
torch.cuda.synchronize()
read_bw = 2 * 10 * buf.numel() / (time.perf_counter() - t0) / 2  # bytes read per second (copy = read + write)
del buf, dst

rows = []
for decode in ("dynamic", "static", "cuda-graphs"):
    os.environ["LEANINFER_DECODE"] = decode  # what Model.runner() reads, as in `leaninfer bench`/`serve`
    for batch in (1, 8):
        t0 = time.perf_counter()
        try:
            r = measure_generation(model, batch, 128, 64, 3)
        except Exception as e:  # record and go on: one failing mode must not hide the others
            rows.append({"decode": decode, "batch": batch, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        step_s = r["inter_token"]["p50_ms"] / 1000
        rows.append({"decode": decode, "batch": batch, "itl_p50_ms": r["inter_token"]["p50_ms"],
                     "itl_p95_ms": r["inter_token"]["p95_ms"], "decode_tokens_per_s": r["decode_tokens_per_s"],
                     "pct_of_hbm_bound": 100 * weight_bytes / step_s / read_bw, "wall_s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "weight_bytes": weight_bytes,
          "measured_read_bytes_per_s": read_bw, "rows": rows}
(out / "gpu_decode.json").write_text(json.dumps(result, indent=2))
