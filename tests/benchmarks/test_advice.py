"""Advice and forecast on hand-made reports: measured rows named by machine, projections only when asked,
the faster INT8 method named, monthly bills by hand."""

import pytest

from leaninfer.benchmarks.advice import options
from leaninfer.benchmarks.forecast import forecast
from leaninfer.benchmarks.report import build_report

from .fakes import MODEL, embedding_result, generation_result, run, state

EMB = {**MODEL, "task": "embedding"}


def _emb_state(**config):
    # fp32: 100 ms per batch of 4 x 25 tokens = 1000 tok/s; int8 (torchao): 125 ms = 800 tok/s;
    # int8-dyn (torch-dynamic): 50 ms = 2000 tok/s
    specs = [{"name": "fp32", "steps": [], "artifact": None},
             {"name": "int8", "steps": [{"step": "int8"}], "artifact": None},
             {"name": "int8-dyn", "steps": [{"step": "int8", "method": "torch-dynamic"}], "artifact": None}]
    int8 = {**EMB, "state": "torch:int8", "precision": "int8"}
    measures = {"fp32": [run([embedding_result(4, 25, [0.1] * 10)], model=EMB)],
                "int8": [run([embedding_result(4, 25, [0.125] * 10)], model=int8, pid=2)],
                "int8-dyn": [run([embedding_result(4, 25, [0.05] * 10)], model=int8, pid=3)]}
    st = state(measures, specs=specs, **config)
    st["builds"] = {"int8": {"status": "ok", "steps": [{"step": "int8", "method": "torchao"}]},
                    "int8-dyn": {"status": "ok", "steps": [{"step": "int8", "method": "torch-dynamic"}]}}
    return st


def test_cheapest_measured_option_by_hand():
    report = build_report(_emb_state(usd_per_hour=3.6))
    adv = report["advice"]
    # $0.001/s at 2000 tok/s -> $0.0005 per 1K tokens; runner-up fp32 at 1000 tok/s -> $0.001
    assert adv["cheapest"]["variant"] == "int8-dyn"
    assert adv["cheapest"]["usd_per_1k_tokens"] == pytest.approx(0.0005)
    assert adv["runner_up"]["variant"] == "fp32"
    assert adv["runner_up"]["usd_per_1k_tokens"] == pytest.approx(0.001)
    assert adv["cheapest"]["hardware"] == "AMD EPYC 9R14, 2 cores (zen4)"
    assert adv["cheapest"]["priced_as"] == "local at --usd-per-hour"


def test_slower_default_names_the_faster_method():
    report = build_report(_emb_state(usd_per_hour=3.6))
    note = next(n for n in report["notes"] if n.startswith("int8 is slower"))
    assert "torchao" in note and "int8-dyn (int8:method=torch-dynamic) is faster here: at least 2.00x FP32" in note


def test_latency_objective_excludes_by_p95():
    report = build_report(_emb_state(usd_per_hour=3.6, max_p95_ms=80))
    assert report["advice"]["cheapest"]["variant"] == "int8-dyn"
    assert report["advice"]["runner_up"] is None
    assert report["advice"]["excluded"]["latency"] == 2


def test_measured_machine_and_pricing_profile_are_one_row():
    report = build_report(_emb_state(hardware="aws-c7a.large", project_to=["aws-c7a.large", "aws-c7a.2xlarge"]))
    opts = options(report)
    names = {(o.hardware, o.label) for o in opts}
    assert ("aws-c7a.large", "projected") not in names
    assert {o.priced_as for o in opts if o.label == "measured"} == {"aws-c7a.large"}
    assert {h for h, label in names if label == "projected"} == {"aws-c7a.2xlarge"}


def test_forecast_by_hand_and_projected_only_when_asked():
    # generation at batch 1: prefill of 10 tokens in 0.1 s (100 tok/s), decode steps of 50 ms (20 tok/s)
    st = state({"fp32": [run([generation_result(1, 10, 11, [0.1], [0.05] * 10, 1)])]}, usd_per_hour=1.0,
               project_to=["h100-sxm"])
    report = build_report(st)
    rows = forecast(report, requests_per_day=86400, input_tokens=10, output_tokens=11)
    assert [r["label"] for r in rows] == ["measured"]
    # per request: 10 / 100 = 0.1 s prefill + 10 decode steps / 20 = 0.5 s -> 0.6 s busy of every second
    r = rows[0]
    assert r["utilization"] == pytest.approx(0.6)
    assert r["instances"] == 1 and r["usd_per_month"] == pytest.approx(730.0)
    assert r["usd_per_month_busy_only"] == pytest.approx(730.0 * 0.6)
    both = forecast(report, 86400, 10, 11, include_projected=True)
    assert {x["label"] for x in both} == {"measured", "projected"}
