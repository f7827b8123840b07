"""The bench runner on a tiny model: fresh processes, FP32 baseline, report schema, partial runs, CLI.

No timing is asserted: only that figures exist, are consistent with their samples, and are labelled.
"""

import json
import statistics

import pytest

from leaninfer.benchmarks.report import RANDOM_QUALITY, SCHEMA_VERSION, load_report
from leaninfer.benchmarks.runner import BenchConfig, VariantSpec, parse_variants, run_bench
from leaninfer.benchmarks.suites import get_suite
from leaninfer.errors import LeaninferError


def _p95_by_hand(samples_s):
    """Linear interpolation between the two order statistics around rank 0.95 x (n - 1), in ms."""
    s = sorted(samples_s)
    rank = 0.95 * (len(s) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(s) - 1)
    return (s[lo] + (rank - lo) * (s[hi] - s[lo])) * 1000


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    broken = out / "broken-artifact"
    broken.mkdir()
    (broken / "leaninfer.json").write_text("{not json")
    settings = get_suite("tiny") | {"variants": ["fp16", str(broken)], "usd_per_hour": 0.36}
    events = []
    report = run_bench(BenchConfig(**settings), out / "run", on_event=lambda *a: events.append(a),
                       on_stage=lambda line: events.append(("stage", line)))
    return out / "run", report, events


def test_every_child_says_where_its_time_went(tiny_run):
    """Issue 21: a CUDA bench ran past its time box with nothing saying which stage took the time."""
    out, _, events = tiny_run
    said = [e[1] for e in events if e[0] == "stage"]
    assert said[0] == "measuring memory bandwidth ..." and said[2] == "building fp16 ..."  # before each child
    stages = [line for line in said if not line.endswith(" ...")]
    assert [line.split(":")[0] for line in stages] == ["measured bandwidth", "built fp16", "measured fp32",
                                                       "measured fp16", "measured broken-artifact"]
    build = json.loads((out / "raw" / "build-fp16.json").read_text())
    assert set(build["stage_s"]) == {"load_source", "steps", "save", "reload", "evaluate"}
    assert set(build["process"]) == {"startup_s", "torch_import_s", "cuda_init_s", "job_s"}
    assert build["process"]["cuda_init_s"] is None and build["process"]["startup_s"] > 0  # a CPU run
    assert build["process"]["job_s"] >= sum(build["stage_s"].values()) - 0.01
    wall = float(stages[1].split(": ok in ")[1].split(" s")[0])
    assert wall >= build["process"]["job_s"] - 0.1
    assert "load_source" in stages[1] and "evaluate" in stages[1]
    measure = json.loads((out / "raw" / "measure-fp32-r0.json").read_text())
    assert all(r["config_s"] >= sum(r["samples_s"]) for r in measure["results"])
    assert "configs b" in stages[2] and stages[2].startswith("measured fp32: ok in ")
    assert "failed (" in stages[-1]  # the broken artifact's error is on its line


def test_variant_parsing_adds_baseline_and_validates():
    specs = parse_variants("int8,fast=onnx+ort-int8,int8:method=torch-dynamic:exclude=")
    assert [s.name for s in specs] == ["fp32", "int8", "fast", "int8:method=torch-dynamic:exclude="]
    assert specs[2].steps == ({"step": "onnx"}, {"step": "ort-int8"})
    assert specs[3].steps[0] == {"step": "int8", "method": "torch-dynamic", "exclude": ""}
    with pytest.raises(LeaninferError, match="unknown step 'int9'"):
        VariantSpec.parse("int9")
    with pytest.raises(LeaninferError, match="unique"):
        parse_variants("int8,int8")


def test_config_validation_names_the_field():
    with pytest.raises(LeaninferError, match="batch_sizes"):
        BenchConfig(batch_sizes="1,x")
    with pytest.raises(LeaninferError, match="unknown hardware profile 'nope'"):
        BenchConfig(hardware="nope")
    with pytest.raises(LeaninferError, match="unknown suite"):
        get_suite("cpu-slow")


@pytest.mark.slow
def test_report_schema_and_baseline(tiny_run):
    out, report, events = tiny_run
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["meta"]["finished"]
    assert events[-1][0] == "done"
    on_disk = load_report(out)
    assert on_disk["meta"]["config"] == report["meta"]["config"]
    assert (out / "report.md").read_text().startswith("# leaninfer bench")
    names = [v["name"] for v in report["variants"]]
    assert names[0] == "fp32" and "fp16" in names
    fp32, fp16 = report["variants"][0], report["variants"][1]
    for v in (fp32, fp16):
        assert v["status"] == "ok"
        assert v["quality_summary"] == RANDOM_QUALITY
        assert v["weight_bytes"] > 0 and v["threads"] >= 1
        assert {r["batch_size"] for r in v["results"]} == {1, 2}
        for r in v["results"]:
            assert r["latency"]["p50_ms"] == pytest.approx(statistics.median(r["samples_s"]) * 1000)
            assert r["latency"]["p95_ms"] == pytest.approx(_p95_by_hand(r["samples_s"]))
            assert r["latency"]["n"] == len(r["samples_s"])
            assert r["tokens_per_s"] == pytest.approx(r["tokens_per_batch"] / (r["latency"]["p50_ms"] / 1000))
    assert fp16["weight_bytes"] < fp32["weight_bytes"]  # half-width weights
    r16, r32 = fp16["results"][0], fp32["results"][0]
    assert r16["ratio_to_fp32"]["tokens_per_s"] == pytest.approx(r16["tokens_per_s"] / r32["tokens_per_s"])
    # separate fresh processes
    assert fp32["processes"][0] != fp16["processes"][0]
    assert report["library_versions"]["torch"] and report["hardware"]["local"]["cpu_name"]


@pytest.mark.slow
def test_partial_run_keeps_valid_report(tiny_run):
    out, report, _ = tiny_run
    broken = next(v for v in report["variants"] if v["name"] == "broken-artifact")
    assert broken["status"] == "failed" and broken["error"]
    assert "broken-artifact: failed" in (out / "report.md").read_text()


@pytest.mark.slow
def test_cost_recomputes_by_hand_from_raw_throughput(tiny_run):
    _, report, _ = tiny_run
    for v in report["variants"]:
        for r in v.get("results", []):
            c = r["cost"]
            assert c["usd_per_hour"] == 0.36
            # from the raw samples: tokens per batch over the median batch time, at $0.36 per 3600 s
            tokens_per_s = r["batch_size"] * r["seq_len"] / statistics.median(r["samples_s"])
            assert c["usd_per_1k_tokens"] == pytest.approx(0.36 / 3600 / tokens_per_s * 1000, rel=1e-9)


@pytest.mark.slow
def test_projections_are_labelled(tiny_run):
    out, report, _ = tiny_run
    assert report["projections"]
    for p in report["projections"]:
        assert p["label"] == "projected" and p["hardware"] == "aws-g6.xlarge"
        assert p["calibration"].startswith("calibrated on h100-sxm, applied to aws-g6.xlarge")
        assert p["tokens_per_s_low"] < p["tokens_per_s"] < p["tokens_per_s_high"]
    md = (out / "report.md").read_text()
    assert "Projected to other hardware (not measured)" in md
    assert (out / "cost_vs_batch.png").stat().st_size > 1000


@pytest.mark.slow
def test_generation_on_tiny_causal_lm(tmp_path):
    cfg = BenchConfig(model="random:tiny-gpt2", variants=["fp32"], batch_sizes=[2], prompt_tokens=8, gen_tokens=4,
                      gen_repeats=3, usd_per_hour=1.0)
    report = run_bench(cfg, tmp_path)
    r = report["variants"][0]["results"][0]
    assert r["kind"] == "generation" and r["batch_size"] == 2
    assert len(r["prefill_samples_s"]) == 3 and len(r["itl_samples_s"]) == 3 * 3  # gen_tokens - 1 steps
    # The cost of a request by hand from the raw samples: a pass serves 2 requests with one prefill (median
    # over passes) and 3 decode steps (the median pass), at $1/h.
    passes = [sum(r["itl_samples_s"][i * 3:(i + 1) * 3]) for i in range(3)]
    by_hand = 1.0 / 3600 * (statistics.median(r["prefill_samples_s"]) + statistics.median(passes)) / 2
    assert r["cost"]["usd_per_request"] == pytest.approx(by_hand, rel=0.005)
    assert r["cost"]["usd_per_1k_output_tokens"] == pytest.approx(by_hand / 4 * 1000, rel=0.005)
    assert r["roofline"]["bytes_per_step"] > 0 and 0 < r["roofline"]["fraction_of_memory_bound"]


@pytest.mark.slow
def test_one_new_token_priced_run(tmp_path):
    cfg = BenchConfig(model="random:tiny-gpt2", variants=["fp32"], batch_sizes=[1], prompt_tokens=8, gen_tokens=1,
                      gen_repeats=3, usd_per_hour=1.0, project_to=["aws-g6.xlarge"])
    report = run_bench(cfg, tmp_path)
    r = report["variants"][0]["results"][0]
    assert r["itl_samples_s"] == [] and r["decode_tokens_per_s"] is None
    assert r["cost"]["usd_per_request"] == pytest.approx(statistics.median(r["prefill_samples_s"]) / 3600, rel=1e-9)
    assert (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_cli_bench_curves_forecast(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from leaninfer.cli import app

    out, _, _ = tiny_run
    runner = CliRunner()
    res = runner.invoke(app, ["curves", str(out), "--project-to", "aws-g4dn.xlarge,h100-sxm"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert {p["hardware"] for p in report["projections"]} == {"aws-g4dn.xlarge", "h100-sxm"}
    res = runner.invoke(app, ["forecast", str(out), "--requests-per-day", "100000", "--input-tokens", "16", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert rows and all(r["instances"] >= 1 for r in rows)
    assert [r["usd_per_month"] for r in rows] == sorted(r["usd_per_month"] for r in rows)
    res = runner.invoke(app, ["bench", "--model", "random:tiny-bert", "--hardware", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown hardware profile 'nope'" in res.output
    res = runner.invoke(app, ["curves", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "no benchmark report" in res.output
