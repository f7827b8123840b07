"""Reports built from hand-made raw results: pooling, generation cost, one output token, the recorded machine."""

import random

import numpy as np
import pytest

from leaninfer.benchmarks.report import build_report, pool_results
from leaninfer.latency import Latency, percentile

from .fakes import MODEL, embedding_result, generation_result, run, state


def test_pooling_merges_rounds_by_their_raw_samples():
    a = embedding_result(2, 8, [0.010, 0.030, 0.020])
    b = embedding_result(2, 8, [0.050, 0.040])
    pooled = pool_results([{"results": [a]}, {"results": [b]}])
    assert len(pooled) == 1
    r = pooled[0]
    # all five samples: median 30 ms (not the median of the two rounds' medians, 20 and 45 -> 32.5)
    assert r["samples_s"] == [0.010, 0.030, 0.020, 0.050, 0.040]
    assert r["latency"]["p50_ms"] == pytest.approx(30.0)
    assert r["latency"]["n"] == 5
    assert r["tokens_per_s"] == pytest.approx(16 / 0.030)
    assert r["processes"] == 2


def test_pooling_keeps_configurations_apart():
    pooled = pool_results([{"results": [embedding_result(1, 8, [0.01]), embedding_result(4, 8, [0.04])]},
                           {"results": [embedding_result(1, 8, [0.03])]}])
    assert [(r["batch_size"], r["latency"]["n"]) for r in pooled] == [(1, 2), (4, 1)]


def test_latency_percentiles_by_hand_and_few_sample_warning():
    lat = Latency.from_samples([0.001 * x for x in range(1, 11)])  # 1..10 ms
    # numpy's linear interpolation: p90 at rank 0.9 x 9 = 8.1 -> 9 + 0.1 x 1 = 9.1 ms
    assert lat.p50_ms == pytest.approx(5.5)
    assert lat.p90_ms == pytest.approx(9.1)
    assert lat.p95_ms == pytest.approx(9.55)
    assert lat.p99_ms == pytest.approx(9.91)
    assert lat.stdev_ms == pytest.approx(3.0276503540974917)
    assert lat.warning() is None
    few = Latency.from_samples([0.001, 0.002, 0.004])
    assert few.few_samples and "n=3" in few.warning("TTFT")


def test_generation_cost_recomputed_by_hand_from_raw_samples():
    # batch 2, prompt 8, 4 new tokens: one prefill then 3 decode steps per pass, 3 passes
    prefill = [0.20, 0.30, 0.25]
    itl = [0.010, 0.012, 0.014,  0.020, 0.020, 0.020,  0.011, 0.011, 0.011]
    st = state({"fp32": [run([generation_result(2, 8, 4, prefill, itl, 3)])]}, usd_per_hour=3.6)
    r = build_report(st)["variants"][0]["results"][0]
    # By hand: $3.6/h = $0.001/s. A pass serves 2 requests with the median prefill (0.25 s) and the median
    # pass's 3 decode steps (passes took 0.036, 0.060, 0.033 s: 0.036 s). Per request: (0.25 + 0.036) / 2 s.
    by_hand = 0.001 * (0.25 + 0.036) / 2
    assert r["cost"]["usd_per_request"] == pytest.approx(by_hand, rel=0.005)
    # per 1K output tokens (4 per request), prefill included
    assert r["cost"]["usd_per_1k_output_tokens"] == pytest.approx(by_hand / 4 * 1000, rel=0.005)
    assert r["cost"]["decode_steps_per_request"] == 3
    assert r["cost"]["decode_tokens_per_s"] == pytest.approx(2 * 3 / 0.036)  # the median pass's rate


def test_one_output_token_priced_run_builds():
    st = state({"fp32": [run([generation_result(2, 8, 1, [0.2, 0.4, 0.3], [], 3)])]}, usd_per_hour=3.6,
               project_to=["aws-c7a.2xlarge", "h100-sxm"])
    report = build_report(st)
    r = report["variants"][0]["results"][0]
    assert r["decode_tokens_per_s"] is None and r["inter_token"] is None
    # only the prefill is paid: 0.3 s for 2 requests of 1 output token each
    assert r["cost"]["usd_per_request"] == pytest.approx(0.001 * 0.3 / 2)
    assert r["cost"]["usd_per_1k_output_tokens"] == pytest.approx(0.001 * 0.3 / 2 * 1000)
    assert r["cost"]["usd_per_1k_decode_tokens"] is None
    assert report["advice"]["cheapest"]["usd_per_1k_tokens"] == pytest.approx(0.15)
    assert {p["hardware"] for p in report["projections"]} == {"aws-c7a.2xlarge", "h100-sxm"}


def test_report_describes_the_recorded_machine_not_this_one():
    st = state({"fp32": [run([generation_result(1, 8, 4, [0.2], [0.01, 0.01, 0.01], 1)])]}, usd_per_hour=1.0,
               threads=2)
    hw = build_report(st)["hardware"]
    assert hw["name"] == "AMD EPYC 9R14, 2 cores (zen4)"
    assert hw["local"]["cpu_mhz"] == 3700.0
    # Zen 4, 2 threads at the recorded 3.7 GHz: 2 x 3.7e9 x 32 FLOP/cycle = 0.2368 TFLOP/s FP32
    assert hw["peak_tflops_per_s"]["fp32"] == pytest.approx(0.2368)
    assert hw["profile"]["description"].startswith("AMD EPYC 9R14, 2 cores")


def test_prefill_roofline_counts_the_lm_head_once():
    st = state({"fp32": [run([generation_result(1, 8, 4, [0.2], [0.01, 0.01, 0.01], 1)])]})
    roofs = build_report(st)["variants"][0]["results"][0]["rooflines"]
    # 8 positions x 1000 body + 200 LM head (last position) + attention 4 x 2 layers x 8 x 8 x 4 hidden
    assert roofs["prefill"]["flops_per_step"] == 8 * 1000 + 200 + 4 * 2 * 8 * 8 * 4
    # decode at mean context 8 + 4/2 = 10: 1000 + 200 + 4 x 2 x 10 x 4
    assert roofs["decode"]["flops_per_step"] == 1000 + 200 + 4 * 2 * 10 * 4
    # bytes: 4000 of weights + K and V (2) x 2 layers x 10 tokens x 4 wide x 4 bytes
    assert roofs["decode"]["bytes_per_step"] == 4000 + 2 * 2 * 10 * 4 * 4


def test_memory_split_is_reported():
    v = build_report(state({"fp32": [run([embedding_result(1, 8, [0.01])], model={**MODEL, "task": "embedding"})]}))
    m = v["variants"][0]["memory"]
    assert (m["baseline_rss_bytes"], m["model_rss_bytes"], m["peak_rss_bytes"]) == (300e6, 10e6, 320e6)


def test_few_samples_are_flagged_in_notes():
    report = build_report(state({"fp32": [run([embedding_result(1, 8, [0.01, 0.02, 0.03])],
                                              model={**MODEL, "task": "embedding"})]}))
    assert any("n=3 samples" in n for n in report["notes"])


def test_percentile_is_numpys_default_to_the_bit():
    # numpy is the reference only: leaninfer.latency doesn't import it
    rng = random.Random(3)
    for _ in range(3000):
        xs = [rng.choice([rng.random(), rng.random() * 1e-3, float(rng.randint(0, 5)), 25.0])
              for _ in range(rng.randint(1, 40))]
        q = rng.choice([0, 50, 90, 95, 99, 100, rng.random() * 100])
        assert percentile(xs, q) == float(np.percentile(np.asarray(xs), q)), (xs, q)
