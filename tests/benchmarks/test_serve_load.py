"""Cost under load: a tiny served run end to end (two variants of random:tiny-gpt2, a subprocess server each,
two short levels), every reported figure recomputed here from the raw samples the run recorded."""

import json

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from leaninfer.benchmarks.plots import cost_under_load_figure  # noqa: E402
from leaninfer.benchmarks.serve_load import ServeGroup, ServeLoadConfig, run_serve_load, serve_load_config  # noqa: E402
from leaninfer.benchmarks.suites import get_suite  # noqa: E402
from leaninfer.errors import LeaninferError  # noqa: E402

PRICE = 0.36
SLO_E2E_MS = 40.0  # about the median end-to-end latency of this tiny run: some requests meet it, some don't
GUIDELLM = ("requests_per_second", "request_concurrency", "request_latency", "prompt_token_count",
            "output_token_count", "time_to_first_token_ms", "inter_token_latency_ms", "time_per_output_token_ms",
            "output_tokens_per_second", "tokens_per_second")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-load")
    group = ServeGroup(model="random:tiny-gpt2", variants=["fp32", "int8"], endpoint="completions", prompt_tokens=8,
                       offline_tokens=10, max_tokens=8, max_batch_size=2, concurrency=[2], rates=[20],
                       duration_s=1.0, slo_e2e_ms=SLO_E2E_MS)
    report = run_serve_load(ServeLoadConfig(groups=[group], usd_per_hour=PRICE, offline_min_time_s=0.05,
                                            offline_gen_repeats=1), out)
    return out, report


def _levels(report):
    (group,) = report["groups"]
    for v in group["variants"]:
        assert v["status"] == "ok", v["error"]
        for summary, raw in zip(v["levels"], v["raw_levels"], strict=True):
            yield v, summary, raw


def _ok(raw):
    return [s for s in raw["samples"] if s["ok"]]


def test_every_level_reported_with_percentiles_of_its_samples(run):
    _, report = run
    (group,) = report["groups"]
    assert [v["name"] for v in group["variants"]] == ["fp32", "int8"]
    for v in group["variants"]:
        assert [lv["label"] for lv in v["levels"]] == ["c=2", "20 req/s"]
    for _, lv, raw in _levels(report):
        ok = _ok(raw)
        assert ok and lv["errors"] == 0
        series = {"e2e": [s["end"] - s["start"] for s in ok], "ttft": [s["ttft_s"] for s in ok],
                  "itl": [x for s in ok for x in s["itl_s"]]}
        for name, xs in series.items():
            d = lv[name]
            assert d["n"] == len(xs) > 0
            want = [1000 * float(np.percentile(xs, q)) for q in (50, 95, 99)]
            assert [d["p50_ms"], d["p95_ms"], d["p99_ms"]] == pytest.approx(want, rel=1e-9)
            assert d["p50_ms"] <= d["p95_ms"] <= d["p99_ms"]
        assert lv["requests_per_s"] == pytest.approx(len(ok) / raw["duration_s"])


def test_metered_cost_is_the_servers_meter_over_the_level(run):
    _, report = run
    for _, lv, raw in _levels(report):
        before, after = raw["metrics_before"], raw["metrics_after"]
        tokens = sum(s["output_tokens"] for s in _ok(raw))
        # every response of the level, and nothing else, is in the server's counters between the two readings
        assert after["leaninfer_output_tokens_total"] - before["leaninfer_output_tokens_total"] == tokens > 0
        cost = after["leaninfer_cost_usd_total"] - before["leaninfer_cost_usd_total"]
        busy = after["leaninfer_engine_busy_seconds_total"] - before["leaninfer_engine_busy_seconds_total"]
        assert cost > 0 and busy > 0
        assert cost == pytest.approx(busy * PRICE / 3600, rel=0.01)  # the meter prices engine busy time
        assert lv["usd_per_1k_tokens_metered"] == pytest.approx(cost / tokens * 1000, rel=1e-9)
        assert lv["usd_per_1k_tokens_all_in"] == pytest.approx(raw["duration_s"] * PRICE / 3600 / tokens * 1000,
                                                                rel=1e-9)
        assert lv["utilization"] == pytest.approx(busy / raw["duration_s"])
        calls = after["leaninfer_batch_size_count:decode"] - before["leaninfer_batch_size_count:decode"]
        rows = after["leaninfer_batch_size_sum:decode"] - before["leaninfer_batch_size_sum:decode"]
        assert lv["mean_batch_size"]["decode"] == pytest.approx(rows / calls) and 1 <= rows / calls <= 2
        # idle time is paid for in the all-in figure only: it can't be below the metered one
        assert lv["usd_per_1k_tokens_all_in"] >= lv["usd_per_1k_tokens_metered"]


def test_goodput_counts_the_requests_meeting_the_slo(run):
    _, report = run
    for _, lv, raw in _levels(report):
        good = [s for s in _ok(raw) if 1000 * (s["end"] - s["start"]) <= SLO_E2E_MS and 1000 * s["ttft_s"] <= 1000]
        assert lv["slo"] == {"slo_e2e_ms": SLO_E2E_MS, "slo_ttft_ms": 1000.0}
        assert lv["goodput_requests"] == len(good)
        assert lv["goodput_requests_per_s"] == pytest.approx(len(good) / raw["duration_s"])


def test_saturation_set_against_the_offline_bench_at_the_max_batch(run):
    out, report = run
    (group,) = report["groups"]
    offline = json.loads((out / "offline" / "random_tiny-gpt2" / "report.json").read_text())
    for v in group["variants"]:
        (off,) = [r for ov in offline["variants"] if ov["name"] == v["name"] for r in ov["results"]
                  if r["batch_size"] == 2]
        sat = v["saturation"]
        c2 = v["levels"][0]
        assert sat["level"] == "c=2" and sat["offline_batch_size"] == 2
        assert sat["offline_usd_per_1k_tokens"] == off["cost"]["usd_per_1k_tokens"]
        assert sat["metered_over_offline"] == pytest.approx(c2["usd_per_1k_tokens_metered"]
                                                            / off["cost"]["usd_per_1k_tokens"])
        assert sat["within_15pct"] == (abs(sat["metered_over_offline"] - 1) <= 0.15)
    md = (out / "report.md").read_text()
    assert "metered / offline" in md and "$/1K all-in" in md


def test_guidellm_named_fields(run):
    _, report = run
    for _, lv, raw in _levels(report):
        g = lv["guidellm"]
        assert set(GUIDELLM) <= set(g)
        ok = _ok(raw)
        assert g["requests_per_second"]["successful"]["mean"] == pytest.approx(len(ok) / raw["duration_s"])
        ttft = g["time_to_first_token_ms"]["successful"]
        assert ttft["count"] == len(ok)
        assert ttft["percentiles"]["p95"] == pytest.approx(np.percentile([1000 * s["ttft_s"] for s in ok], 95))
        assert g["request_latency"]["successful"]["median"] == pytest.approx(
            float(np.median([s["end"] - s["start"] for s in ok])))  # seconds, as GuideLLM's
        assert g["output_token_count"]["successful"]["total_sum"] == sum(s["output_tokens"] for s in ok)


def test_plot_one_line_per_variant_and_cost_next_to_offline(run):
    out, report = run
    fig = cost_under_load_figure(report)
    (ax,) = fig.axes
    by_style = {}
    for line in ax.lines:
        by_style.setdefault(line.get_linestyle(), []).append(line.get_label())
    assert by_style == {"-": ["fp32: all-in", "int8: all-in"], "--": ["fp32: metered", "int8: metered"],
                        ":": ["fp32: offline, batch 2", "int8: offline, batch 2"]}
    (group,) = report["groups"]
    for line in ax.lines:
        v = next(v for v in group["variants"] if line.get_label().startswith(v["name"] + ":"))
        if line.get_linestyle() == ":":  # a horizontal marker at the offline figure
            assert set(line.get_ydata()) == {v["offline"]["usd_per_1k_tokens"]}
        else:
            assert len(line.get_xdata()) == 2  # both levels
    assert ax.get_ylabel().startswith("$ per 1K output tokens")
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert (out / "cost_under_load.png").stat().st_size > 1000
    assert report["plots"] == [str(out / "cost_under_load.png")]


def test_serve_cpu_suite_and_flags():
    settings = get_suite("serve-cpu")
    groups = {g["model"]: g["variants"] for g in settings["serve_load"]["groups"]}
    assert groups == {"minilm": ["fp32", "onnx+ort-int8"], "random:gpt2": ["fp32", "int8"]}
    cfg = serve_load_config("serve-cpu", settings, [], hardware="aws-c7a.large", usd_per_hour=None, duration_s=2.0,
                            slo_e2e_ms=None, slo_ttft_ms=300.0)
    assert [g.duration_s for g in cfg.groups] == [2.0, 2.0]
    assert [g.slo_ttft_ms for g in cfg.groups] == [300.0, 300.0]
    assert cfg.price()[1] == "priced as aws-c7a.large"
    with pytest.raises(LeaninferError, match="--batch-sizes"):
        serve_load_config("serve-cpu", settings, ["--batch-sizes"])
