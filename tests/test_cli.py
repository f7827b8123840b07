"""The command line: JSON output, and user errors as one line plus a non-zero exit code, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # `python -m leaninfer.cli` processes optimizing and evaluating minilm

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args):
    return subprocess.run([sys.executable, "-m", "leaninfer.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_eval_json_has_the_documented_keys(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("A man plays guitar.,A man is playing a guitar.,4.9\nA dog runs.,A dog is running.,4.5\n"
                   "A cat sleeps.,The market fell.,0.1\nRain fell.,A man is cooking.,0.3\n")
    p = run("eval", "minilm", "--reference", "minilm", "--sts", str(sts), "--json")
    assert p.returncode == 0, p.stderr
    q = json.loads(p.stdout)
    assert q["mean_cosine_to_reference"] == pytest.approx(1.0, abs=1e-6)
    assert q["sts_spearman"] == pytest.approx(q["reference_sts_spearman"]) and q["sts_spearman"] > 70


@pytest.mark.parametrize("args, message, code", [
    (["eval", "random:nope"], "unknown random preset 'nope'", 2),
    (["eval", "minilm", "--sts", "/no/such.csv"], "STS file '/no/such.csv' does not exist", 2),
    (["optimize", "--model", "random:tiny-bert", "--steps", "int7", "--out", "OUT"], "unknown step 'int7'", 2),
    (["optimize", "--model", "random:tiny-gpt2", "--steps", "onnx,bnb-nf4", "--out", "OUT"],
     "'bnb-nf4' cannot run after 'onnx'", 2),
    (["optimize", "--model", "minilm", "--steps", "int8", "--min-cosine", "0.9999", "--out", "OUT"],
     "quality floor missed", 3),
    (["optimize", "--model", "random:tiny-bert", "--out", "OUT"], "exactly one of --steps", 2),
])
def test_user_errors_are_one_line_and_exit_non_zero(tmp_path, args, message, code):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    p = run(*args)
    assert p.returncode == code, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_optimize_writes_an_artifact_and_eval_reads_it(tmp_path):
    out = tmp_path / "a"
    p = run("optimize", "--model", "random:tiny-bert", "--steps", "onnx,ort-int8", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == "onnx:int8"
    p = run("eval", str(out), "--reference", "random:tiny-bert", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["mean_cosine_to_reference"] > 0.9


def test_optimize_steps_take_parameters(tmp_path):
    out = tmp_path / "p"
    p = run("optimize", "--model", "random:tiny-bert", "--steps", "prune-ffn:ratio=0.5,num_calibration_texts=8",
            "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["steps"] == [{"step": "prune-ffn", "num_calibration_texts": 8, "ratio": 0.5}]
    assert any("FFN width 128 -> 64" in n for n in m["notes"])  # the parameters reached the step


def test_a_bad_step_parameter_reads_the_same_in_optimize_and_bench(tmp_path):
    bad = "prune-ffn:ratio=1.5"
    opt = run("optimize", "--model", "random:tiny-bert", "--steps", bad, "--out", str(tmp_path / "o"))
    bench = run("bench", "--model", "random:tiny-bert", "--variants", f"fp32,{bad}", "--out", str(tmp_path / "b"))
    said = []
    for p in (opt, bench):
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        said.append(" ".join(p.stderr.split()))  # the console may wrap a long line
        assert "ratio=1.5 is out of range; valid: above 0 up to (not including) 1" in said[-1]
    assert said[0] == said[1]  # one parser, one message
    assert not (tmp_path / "o").exists()
