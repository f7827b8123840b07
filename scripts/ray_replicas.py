"""minilm embeddings throughput: ``leaninfer serve`` vs ``serve --ray`` with 1 and 2 replicas (docs/scale-out.md).

    flock /tmp/cpu.lock .venv/bin/python scripts/ray_replicas.py --seconds 20

Each setup runs as its own ``leaninfer serve`` process (started, warmed up, measured, stopped, in turn), with
the bundled sentences, one per request, from ``wrk`` (one C thread, pre-built requests, 32 keep-alive
connections, closed loop). Cache off (the texts repeat), ledger on (serve's default). Setups:

- ``single``: ``leaninfer serve minilm`` (no Ray; torch uses every core);
- ``ray-1x<N>cpu``: one replica reserving all N cores (``--replica-cpus N``: Ray sets its threads to N);
- ``ray-2x<N/2>cpu``: two replicas, N/2 cores each.

Prints one JSON line per setup and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from leaninfer.data import default_texts
from leaninfer.benchmarks.load.launch import run_wrk, start_server, stop_server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--port", type=int, default=8871)
    p.add_argument("--max-batch-size", type=int, default=32)
    a = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    cores = os.cpu_count() or 2
    work = tempfile.mkdtemp(prefix="ray-replicas-")
    bodies = [{"model": "minilm", "input": t} for t in default_texts()]
    common = ["minilm", "--cache-max-bytes", "0", "--max-batch-size", str(a.max_batch_size)]
    ray_common = ["--ray", "--replica-metrics-port", "0", "--max-queued-requests", "-1"]
    setups = {
        "single": common,
        f"ray-1x{cores}cpu": common + ray_common + ["--replicas", "1", "--replica-cpus", str(cores)],
        f"ray-2x{cores / 2:g}cpu": common + ray_common + ["--replicas", "2", "--replica-cpus", str(cores / 2)],
    }
    rows = []
    for name, args in setups.items():
        proc, url = start_server(args, a.port, cwd=work)
        try:
            run_wrk(url, "/v1/embeddings", bodies, a.connections, 3)  # warm-up
            r = run_wrk(url, "/v1/embeddings", bodies, a.connections, a.seconds)
        finally:
            stop_server(proc, timeout_s=120)
        r["setup"] = name
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("\n| setup | requests/s | non-2xx | p50 / p95 ms |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setup']} | {r['req_per_s']:.1f} | {r['non2xx']} | {r['p50_us'] / 1000:.0f} / "
              f"{r['p95_us'] / 1000:.0f} |")


if __name__ == "__main__":
    main()
