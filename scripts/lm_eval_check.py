"""lm-evaluation-harness as a client of ``leaninfer serve``: the same per-item log-likelihoods and accuracy as
lm-eval's own ``hf`` backend on the same weights (issue 24).

What it does, offline (no hub: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set):

1. builds ``random:gpt2`` (seeded random weights, GPT-2 small shapes; or ``--model REF``) and saves it with
   ``save_pretrained`` beside its tokenizer into ``WORKDIR/model``, so both backends load the same files;
2. writes two tiny local lm-eval tasks (``dataset_path: json`` over jsonl files written here): a 4-way
   multiple-choice task (``leaninfer_mc``, scored from ``echo`` + ``logprobs``) and a ``generate_until`` task;
3. starts ``leaninfer serve WORKDIR/model`` on a free port, and runs lm-eval, unmodified, from its command
   line: ``--model local-completions`` against the server (token ids sent, ``tokenized_requests=True``; the
   tokenizer read from the saved folder) and ``--model hf`` on the folder, ``--log_samples`` for both;
4. compares the per-choice log-likelihoods of every item (max |Δ|, must be <= --tolerance, 1e-3 by default)
   and the accuracies (must be equal), checks that the ``generate_until`` task ran through the server, and
   writes ``WORKDIR/lm_eval_check.json``. Exit code 0 when everything holds.

Needs lm-eval in the environment (it is not a dependency of leaninfer; install it without letting it pull
another torch: ``pip install lm-eval -c constraints.txt`` with ``torch==2.13.0`` in the constraints file).

Run (serialized with the other CPU work):
    flock /tmp/cpu.lock .venv/bin/python scripts/lm_eval_check.py --workdir /tmp/lm-eval-check
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from leaninfer.benchmarks.load.launch import start_server, stop_server

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
SERVED = "lm-eval-model"

# A small multiple-choice set: 4 choices each, the gold one first as often as not (random weights: accuracy
# is chance, what matters is that both backends score every choice the same).
MC_ITEMS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("Water boils at a temperature of", ["one hundred degrees", "ten degrees", "zero degrees", "minus five"], 0),
    ("The largest planet in our solar system is", ["Mars", "Jupiter", "Venus", "Mercury"], 1),
    ("A week has", ["five days", "six days", "seven days", "eight days"], 2),
    ("The opposite of hot is", ["cold", "warm", "loud", "bright"], 0),
    ("Cats are known to chase", ["mice", "clouds", "trains", "letters"], 0),
    ("The sun rises in the", ["west", "north", "east", "south"], 2),
    ("Two plus two equals", ["three", "four", "five", "six"], 1),
    ("Ice is the solid form of", ["air", "fire", "water", "sand"], 2),
    ("The color of a clear sky is usually", ["green", "blue", "red", "black"], 1),
    ("Bees make", ["honey", "milk", "silk", "glass"], 0),
    ("A triangle has", ["two sides", "three sides", "four sides", "five sides"], 1),
]
GEN_ITEMS = [("What is two plus two?", "four"), ("Name a color of the sky.", "blue"),
             ("What do bees make?", "honey"), ("Opposite of cold?", "hot")]


def write_tasks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mc.jsonl", "w") as f:
        for q, choices, label in MC_ITEMS:
            f.write(json.dumps({"question": q, "choices": choices, "label": label}) + "\n")
    with open(folder / "gen.jsonl", "w") as f:
        for q, a in GEN_ITEMS:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    (folder / "leaninfer_mc.yaml").write_text(f"""task: leaninfer_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (folder / "leaninfer_gen.yaml").write_text(f"""task: leaninfer_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")


def save_model(ref: str, folder: Path) -> None:
    import leaninfer

    m = leaninfer.load(ref)
    m.module.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)


def serve(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    return start_server([str(model_dir), "--name", SERVED, "--store", "none", "--usd-per-hour", "1.0"],
                        log=log, env=OFFLINE, timeout_s=120)


def lm_eval(args: list[str], out: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "lm_eval", *args, "--output_path", str(out), "--log_samples",
           "--batch_size", "1", "--seed", "1234"]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env={**os.environ, **OFFLINE}, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"lm-eval failed ({' '.join(cmd)}):\n{log.read_text()[-4000:]}")


def samples(out: Path, task: str) -> dict[int, dict]:
    files = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    if not files:
        raise SystemExit(f"no samples of {task} under {out}")
    rows = [json.loads(line) for line in open(sorted(files)[-1])]
    return {r["doc_id"]: r for r in rows}


def results(out: Path) -> dict:
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    return json.load(open(sorted(files)[-1]))["results"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/leaninfer-lm-eval-check")
    ap.add_argument("--model", default="random:gpt2", help="a leaninfer reference to save and serve")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    a = ap.parse_args()
    os.environ.update(OFFLINE)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, tasks = work / "model", work / "tasks"
    save_model(a.model, model_dir)
    write_tasks(tasks)

    t0 = time.perf_counter()
    # add_bos_token=False: tokenize as local-completions does (no special tokens). Left unset, hf lets the
    # tokenizer add its own, and the bundled WordPiece tokenizer of random presets wraps every text in
    # [CLS] ... [SEP]: each continuation is then scored as "[SEP]", the same for every choice.
    lm_eval(["--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32,add_bos_token=False",
             "--device", "cpu",
             "--tasks", "leaninfer_mc", "--include_path", str(tasks)], work / "out-hf", work / "lm-eval-hf.log")
    hf_s = time.perf_counter() - t0

    proc, url = serve(model_dir, work / "server.log")
    try:
        t0 = time.perf_counter()
        api_args = (f"model={SERVED},base_url={url}/v1/completions,tokenizer={model_dir},"
                    "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1")
        lm_eval(["--model", "local-completions", "--model_args", api_args, "--tasks", "leaninfer_mc,leaninfer_gen",
                 "--include_path", str(tasks)], work / "out-api", work / "lm-eval-api.log")
        api_s = time.perf_counter() - t0
    finally:
        stop_server(proc)

    hf, api = samples(work / "out-hf", "leaninfer_mc"), samples(work / "out-api", "leaninfer_mc")
    deltas, per_item = [], []
    for doc_id in sorted(hf):
        h = [r[0][0] if isinstance(r[0], list) else r[0] for r in hf[doc_id]["resps"]]
        p = [r[0][0] if isinstance(r[0], list) else r[0] for r in api[doc_id]["resps"]]
        d = max(abs(float(x) - float(y)) for x, y in zip(h, p, strict=True))
        deltas.append(d)
        per_item.append({"doc_id": doc_id, "hf": [float(x) for x in h], "server": [float(y) for y in p],
                         "max_abs_delta": d})
    acc_hf = results(work / "out-hf")["leaninfer_mc"]["acc,none"]
    res_api = results(work / "out-api")
    acc_api = res_api["leaninfer_mc"]["acc,none"]
    gen = samples(work / "out-api", "leaninfer_gen")
    report = {"model": a.model, "items": len(per_item), "choices": sum(len(x["hf"]) for x in per_item),
              "max_abs_delta_loglikelihood": max(deltas), "tolerance": a.tolerance,
              "acc_hf": acc_hf, "acc_server": acc_api,
              "generate_until": {"items": len(gen), "exact_match": res_api["leaninfer_gen"].get("exact_match,none"),
                                 "outputs": [gen[i]["filtered_resps"] for i in sorted(gen)]},
              "seconds": {"hf": round(hf_s, 1), "server": round(api_s, 1)}, "per_item": per_item}
    (work / "lm_eval_check.json").write_text(json.dumps(report, indent=2))
    ok = max(deltas) <= a.tolerance and acc_hf == acc_api and len(gen) == len(GEN_ITEMS)
    print(json.dumps({k: v for k, v in report.items() if k != "per_item"}, indent=2))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
