"""``leaninfer demo``: the optimize job on the bundled minilm, end to end, in a few minutes on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import Progress
from rich.table import Table

from .benchmarks.quick import compare_throughput, make_batches
from .data import default_texts
from .evaluate import evaluate, read_sts
from .hardware import detect_local
from .models import load
from .pipeline import optimize

# (name, steps): PyTorch FP32 is the reference; each row below is built from it and measured beside it.
DEMO_VARIANTS = [
    # ONNX Runtime FP32 separates the runtime's own gain from INT8's (DESIGN.md: name each gain).
    ("onnx (ORT FP32)", "onnx"),
    ("int8 (torchao)", "int8"),
    ("ort-int8", "onnx,ort-int8"),
    ("ov-int8", "openvino,ov-int8"),
]
BASELINE = "fp32 (torch)"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_demo(out_dir: Path, *, sts=None, batch_size: int = 32, repeats: int = 5, console, out) -> list[dict]:
    out_dir = Path(out_dir)
    hw = detect_local()
    console.print(f"leaninfer demo on {hw.cpu_name} ({hw.physical_cores} cores, INT8 path: {hw.int8_isa})")
    reference = load("minilm")
    models, rows = {BASELINE: reference}, {}
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("building variants", total=len(DEMO_VARIANTS))
        for name, steps in DEMO_VARIANTS:
            progress.update(bar, description=f"building {name}")
            t0 = time.perf_counter()
            result = optimize(reference, steps, out_dir / steps.replace(",", "+"), overwrite=True, sts=sts)
            models[name] = result.model
            rows[name] = {"steps": steps, "path": str(result.path), "build_s": time.perf_counter() - t0,
                          "size_bytes": result.manifest["weight_bytes"], "quality": result.manifest["quality"]}
            progress.advance(bar)
        progress.update(bar, description=f"measuring throughput ({repeats} interleaved rounds)")
        if sts:  # measure on the STS sentences themselves: both columns, as in the quality check
            s1, s2, _ = read_sts(sts)
            texts = s1 + s2
        else:
            texts = default_texts() * 3
        speed = compare_throughput(models, make_batches(reference, texts, batch_size), repeats=repeats)
    rows = {BASELINE: {"steps": "-", "path": "(bundled)", "size_bytes": reference.weight_bytes(),
                               "quality": evaluate(reference, reference, sts=sts)}} | rows
    base = speed[BASELINE].tokens_per_s
    table = Table(title=f"minilm variants: batch {batch_size}, {len(texts)} texts, same length-sorted batches "
                        f"for all, {torch_threads()} threads, {hw.cpu_name}")
    for col in ("variant", "size MB", "tokens/s", "speedup vs FP32", "cosine to FP32"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    if sts:
        table.add_column("STS Spearman (Δ pts)", justify="right")
    summary = []
    for name, row in rows.items():
        q, tps = row["quality"], speed[name].tokens_per_s
        cells = [name, f"{row['size_bytes'] / 1e6:.1f}", f"{tps:,.0f}", f"{tps / base:.2f}×",
                 f"{q['mean_cosine_to_reference']:.4f}"]
        if sts:
            cells.append(f"{q['sts_spearman']:.2f} ({-q['sts_drop_pts']:+.2f})")
        table.add_row(*cells)
        summary.append({"variant": name, **row, "tokens_per_s": tps, "speedup": tps / base})
    out.print(table)
    console.print(f"Variants saved under {out_dir.resolve()} (each with its leaninfer.json). Throughput is a quick "
                  f"in-process measurement; `leaninfer bench` measures each variant in a fresh process.")
    return summary
