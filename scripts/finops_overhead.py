"""What keys, the ledger and budgets cost: served minilm embeddings with FinOps on vs off, in one run.

    flock /tmp/cpu.lock .venv/bin/python scripts/finops_overhead.py --texts /path/to/stsb-en-dev.csv

Off: ``leaninfer serve minilm --store none`` (no keys, no ledger). On: ``--auth keys`` with a key that has a
daily $ budget, RPM and TPM limits, and the SQLite ledger (every request reserves, settles and waits for its
row's commit). The response cache is off in both (the texts repeat, and a hit would skip the model). The
client is ``wrk`` (one C thread, pre-built requests: `apt-get install wrk`), 32 connections, one sentence per
request; the two servers alternate, ``--rounds`` times each, and the medians are compared. The figures of
docs/finops.md ("Overhead") come from this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from leaninfer.benchmarks.load.launch import run_wrk, start_server, stop_server
from leaninfer.data import default_texts
from leaninfer.finops.store import open_store


def texts_from(path: str | None, n: int) -> list[str]:
    if not path:
        texts = default_texts()
    elif path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            texts = [row[0] for row in csv.reader(f) if row]
    else:
        texts = [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", help="STS-B csv (sentence1 column) or one text per line; default: bundled")
    ap.add_argument("--n-texts", type=int, default=1280)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="finops-overhead-")
    store = str(Path(work) / "leaninfer.db")
    key = subprocess.run([sys.executable, "-m", "leaninfer.cli", "keys", "create", "--team", "bench",
                          "--budget-usd-day", "1000", "--rpm", "10000000", "--tpm", "1000000000", "--store", store],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    bodies = [{"model": "minilm", "input": t} for t in texts_from(a.texts, a.n_texts)]
    common = ["minilm", "--max-batch-size", "32", "--cache-max-bytes", "0", "--usd-per-hour", "1.0"]
    configs = {"off": (["--store", "none"], None), "on": (["--auth", "keys", "--store", store], key)}
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(a.rounds):
        for name, (args, k) in configs.items():
            proc, url = start_server(common + args, a.port, cwd=work)
            try:
                run_wrk(url, "/v1/embeddings", bodies, a.connections, 2, k)  # warm-up
                r = run_wrk(url, "/v1/embeddings", bodies, a.connections, a.seconds, k)
            finally:
                stop_server(proc)
            runs[name].append(r)
            print(name, json.dumps(r), flush=True)
    s = open_store(store)
    rows = s.rows()
    s.close()
    med = {n: statistics.median(r["req_per_s"] for r in rs) for n, rs in runs.items()}
    answered_on = sum(r["requests"] - r["non2xx"] for r in runs["on"])
    result = {"cpu": next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), "?"),
        "nproc": os.cpu_count(), "texts": a.texts or "bundled", "connections": a.connections,
        "seconds": a.seconds, "rounds": a.rounds, "median_req_per_s": med, "on_over_off": med["on"] / med["off"],
        "ledger_rows": len(rows), "answered_with_finops_on": answered_on, "runs": runs}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
