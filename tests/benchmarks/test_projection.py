"""The projection model: calibration by hand, bands, what is not projected, and the H100 check from records."""

import json
from pathlib import Path

import pytest

from leaninfer.benchmarks.projection import calibrate, calibrations, project
from leaninfer.benchmarks.report import build_report
from leaninfer.hardware import get_profile

from .fakes import generation_result, run, state

DATA = Path(__file__).parent / "data"


def _point(phase, t, flops, bytes_=1e9, batch=1):
    return {"phase": phase, "precision": "fp32", "batch_size": batch, "measured_step_s": t,
            "bytes_per_step": bytes_, "flops_per_step": flops}


def test_calibration_by_hand():
    # On h100-sxm (3.35 TB/s, 67 TFLOP/s FP32), a 10-layer model:
    # prefill 33.5 TFLOP -> roofline 0.5 s, measured 1.0 s: efficiency 0.5 (the best point)
    # decode steps at 20 and 30 ms whose roofline (1 GB -> 0.3 ms) is far below: launch-bound
    entry = {"backend": "torch", "device_kind": "gpu", "workload": "generation", "measured_on": "h100-sxm",
             "source": "by hand", "layers": 10,
             "points": [_point("prefill", 1.0, 33.5e12), _point("decode", 0.020, 1e9), _point("decode", 0.030, 1e9)]}
    c = calibrate(entry)
    assert c.efficiency == {"fp32": pytest.approx(0.5)}
    assert c.overhead_s_per_layer["decode"] == pytest.approx((0.002, 0.0025, 0.003))
    assert c.overhead_s_per_layer["prefill"] == (0.0, 0.0, 0.0)  # its only point is compute-bound
    # modelled decode 25 ms: measured 20 and 30 ms are 0.8x and 1.2x of it; the band is at least 0.8-1.25
    assert c.band == pytest.approx((0.8, 1.25))
    # a 20-layer model: overhead 20 x 2.5 ms = 50 ms, unless the roofline / efficiency is longer
    assert c.step_s("decode", 0.001, "fp32", 20) == pytest.approx(0.050)
    assert c.step_s("decode", 0.040, "fp32", 20) == pytest.approx(0.080)


def test_shipped_calibration_reproduces_docs_gpu_md():
    c = calibrations()[("torch", "gpu", "generation")]
    # decode steps measured on the H100 at batch 1/8/32/64 (batch / decode tokens/s): 1/41.0, 8/369.0,
    # 32/1630.0, 64/3136.7 s (24 layers): all launch-bound, median (20.404 + 21.680) / 2 = 21.042 ms
    assert c.overhead_s_per_layer["decode"][1] * 24 == pytest.approx((0.020404 + 0.021680) / 2)
    # prefill at batch 64: 5.970e12 FLOP / 67e12 = 89.1 ms of roofline in 158.6 ms measured
    assert c.efficiency["fp32"] == pytest.approx(5970249908224 / 67e12 / 0.1586)


def _recorded_qwen_report(**config):
    rec = json.loads((DATA / "qwen2.5-0.5b-cpu-zen4.json").read_text())
    st = state({"fp32": [rec["run"]]}, **{"usd_per_hour": 0.10264, **config})
    st["bandwidth"] = rec["bandwidth"]
    return build_report(st)


def test_cpu_measurement_projected_to_h100_within_2x_of_the_h100_measurement():
    report = _recorded_qwen_report(project_to=["h100-sxm"])
    rows = {p["batch_size"]: p for p in report["projections"] if p["hardware"] == "h100-sxm"}
    # docs/gpu.md, NVIDIA H100 80GB HBM3, random:qwen2.5-0.5b FP32 decode tokens/s at batch 1 and 32
    measured_on_h100 = {1: 41.0, 32: 1630.0}
    for batch, tps in measured_on_h100.items():
        p = rows[batch]
        assert p["label"] == "projected"
        assert tps / 2 <= p["decode_tokens_per_s"] <= tps * 2
        assert p["decode_tokens_per_s_low"] <= tps <= p["decode_tokens_per_s_high"]


def test_projected_rows_have_bands_and_stay_out_of_advice():
    report = _recorded_qwen_report(project_to=["h100-sxm", "aws-c7a.2xlarge"])
    assert report["projections"]
    for p in report["projections"]:
        assert p["usd_per_1k_tokens_low"] < p["usd_per_1k_tokens"] < p["usd_per_1k_tokens_high"]
        assert p["decode_tokens_per_s_low"] < p["decode_tokens_per_s"] < p["decode_tokens_per_s_high"]
    assert report["advice"]["cheapest"]["label"] == "measured"
    assert report["advice"]["considered"] == 2  # the two measured batch sizes only
    with_projected = _recorded_qwen_report(project_to=["h100-sxm", "aws-c7a.2xlarge"], include_projected=True)
    assert with_projected["advice"]["considered"] == 2 + len(with_projected["projections"])


def test_cpu_target_scales_by_the_roofline_ratio():
    # measured: decode steps of 10 ms on a machine of 20 GB/s; the toy model reads 4160 bytes per step
    # (memory-bound on both); a target of 40 GB/s halves the step: 5 ms
    st = state({"fp32": [run([generation_result(1, 8, 4, [0.2], [0.01, 0.01, 0.01], 1)])]}, usd_per_hour=1.0,
               project_to=["aws-c7a.2xlarge"], bandwidth_gb=20.0)
    report = build_report(st)
    v, r = report["variants"][0], report["variants"][0]["results"][0]
    target = get_profile("aws-c7a.2xlarge")
    p = project(v, r, target, 1.0)
    bw_local = 20e9
    roof_local = max(r["rooflines"]["decode"]["bytes_per_step"] / bw_local,
                     r["rooflines"]["decode"]["compute_bound_s"])
    roof_target = max(r["rooflines"]["decode"]["bytes_per_step"] / 50e9,
                      r["rooflines"]["decode"]["flops_per_step"] / 3.7888e12)
    step = 0.01 * roof_target / roof_local
    assert p["decode_tokens_per_s"] == pytest.approx(1 / step)
    assert p["decode_tokens_per_s_low"] == pytest.approx(0.5 / step)  # the CPU band: 0.5x-2x
    assert p["decode_tokens_per_s_high"] == pytest.approx(2 / step)


def test_not_projected_without_a_peak_or_to_the_pricing_profile():
    st = state({"fp32": [run([generation_result(1, 8, 4, [0.2], [0.01, 0.01, 0.01], 1)])]},
               hardware="aws-c7a.large", project_to=["aws-c7a.large", "h100-sxm"])
    report = build_report(st)
    assert {p["hardware"] for p in report["projections"]} == {"h100-sxm"}
    assert any("not projected to aws-c7a.large" in n for n in report["notes"])
    # a bf16 model on a T4 (no BF16 peak): not projected rather than guessed
    v = dict(report["variants"][0], model={**report["variants"][0]["model"], "state": "torch:bf16"})
    assert project(v, v["results"][0], get_profile("aws-g4dn.xlarge"), 1.0) is None
    assert project(v, v["results"][0], get_profile("aws-g6.xlarge"), 1.0) is not None
