"""Cost under load: a tiny served run end to end (two variants of random:tiny-gpt2, a subprocess server each,
two short levels, then the wrk level where wrk is installed), every reported figure recomputed here from the raw
samples the run recorded; and the report's arithmetic (offline figure at the served batch size, the wrk level,
the saturation level) on hand-made raw levels, without a server."""

import json
import shutil

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from leaninfer.benchmarks.plots import cost_under_load_figure  # noqa: E402
from leaninfer.benchmarks.serve_load import (  # noqa: E402
    ServeGroup,
    ServeLoadConfig,
    offline_batch_sizes,
    run_serve_load,
    serve_load_config,
    wrk_bodies,
)
from leaninfer.benchmarks.serve_load_report import (  # noqa: E402
    build_serve_load_report,
    offline_figure,
    to_markdown,
    wrk_level_summary,
)
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
                       duration_s=1.0, slo_e2e_ms=SLO_E2E_MS, saturation_rounds=1)
    report = run_serve_load(ServeLoadConfig(groups=[group], usd_per_hour=PRICE, offline_min_time_s=0.05,
                                            offline_gen_repeats=1), out)
    return out, report


HAS_WRK = shutil.which("wrk") is not None


def _levels(report, client="loadgen"):
    (group,) = report["groups"]
    for v in group["variants"]:
        assert v["status"] == "ok", v["error"]
        for summary, raw in zip(v["levels"], v["raw_levels"], strict=True):
            if summary["client"] == client:
                yield v, summary, raw


def _ok(raw):
    return [s for s in raw["samples"] if s["ok"]]


@pytest.mark.slow
def test_every_level_reported_with_percentiles_of_its_samples(run):
    _, report = run
    (group,) = report["groups"]
    assert [v["name"] for v in group["variants"]] == ["fp32", "int8"]
    for v in group["variants"]:
        assert [lv["label"] for lv in v["levels"]] == ["c=2", "20 req/s"] + (["c=2 (wrk)"] if HAS_WRK else [])
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_goodput_counts_the_requests_meeting_the_slo(run):
    _, report = run
    for _, lv, raw in _levels(report):
        good = [s for s in _ok(raw) if 1000 * (s["end"] - s["start"]) <= SLO_E2E_MS and 1000 * s["ttft_s"] <= 1000]
        assert lv["slo"] == {"slo_e2e_ms": SLO_E2E_MS, "slo_ttft_ms": 1000.0}
        assert lv["goodput_requests"] == len(good)
        assert lv["goodput_requests_per_s"] == pytest.approx(len(good) / raw["duration_s"])


@pytest.mark.slow
def test_saturation_set_against_the_offline_bench_at_the_served_batch(run):
    out, report = run
    (group,) = report["groups"]
    offline = json.loads((out / "offline" / "random_tiny-gpt2" / "report.json").read_text())
    for v in group["variants"]:
        costs = {r["batch_size"]: r["cost"]["usd_per_1k_tokens"] for ov in offline["variants"]
                 if ov["name"] == v["name"] for r in ov["results"]}
        assert sorted(costs) == offline_batch_sizes(2) == [1, 2]
        sat = v["saturation"]
        lv = next(lv for lv in v["levels"] if lv["label"] == sat["level"])
        assert sat["level"] == ("c=2 (wrk)" if HAS_WRK else "c=2") and sat["client"] == lv["client"]
        # matched at the server's mean decode batch at that level, between the two measured sizes (1/batch)
        b = lv["mean_batch_size"]["decode"]
        assert sat["mean_batch_size"] == b and 1 <= b <= 2
        at_start = costs[1] + (1 / b - 1) / (1 / 2 - 1) * (costs[2] - costs[1])
        assert sat["metered_over_offline_bench_at_start"] == pytest.approx(lv["usd_per_1k_tokens_metered"] / at_start)
        want = at_start
        if HAS_WRK:  # the wrk round is set against the offline bench run just before and just after it
            assert sat["bracketed"] and len(sat["rounds"]) == 1
            ends = []
            for i in (0, 1):
                raw = json.loads((out / "offline" / "random_tiny-gpt2" / "raw" / f"bracket-{v['name']}-{i}.json")
                                 .read_text())
                # by hand: a request = its prefill + 7 decode steps, per 1K output tokens, at $0.36/h
                c = {r["batch_size"]: PRICE / 3600 * (10 / r["input_tokens_per_s"] + 7 / r["decode_tokens_per_s"])
                     / 8 * 1000 for r in raw["results"]}
                assert sorted(c) == [1, 2]
                ends.append(c[1] + (1 / b - 1) / (1 / 2 - 1) * (c[2] - c[1]))
            want = (ends[0] + ends[1]) / 2
            assert sat["rounds"][0]["offline_before_after"] == pytest.approx(ends, rel=1e-9)
            assert sat["rounds"][0]["offline_drift"] == pytest.approx(ends[1] / ends[0], rel=1e-9)
        assert sat["offline_usd_per_1k_tokens"] == pytest.approx(want, rel=1e-9) and sat["offline_batch_size"] == b
        assert sat["offline_max_batch"]["usd_per_1k_tokens"] == costs[2]
        assert sat["metered_over_offline"] == pytest.approx(lv["usd_per_1k_tokens_metered"] / want)
        assert sat["metered_over_offline_max_batch"] == pytest.approx(lv["usd_per_1k_tokens_metered"] / costs[2])
        assert sat["within_15pct"] == (abs(sat["metered_over_offline"] - 1) <= 0.15)
    md = (out / "report.md").read_text()
    assert "metered / offline" in md and "$/1K all-in" in md and "matching batch" in md
    assert ("| c=2 (wrk) |" in md) == HAS_WRK


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WRK, reason="wrk is not installed")
def test_wrk_level_metered_from_the_servers_counters(run):
    _, report = run
    levels = list(_levels(report, client="wrk"))
    assert len(levels) == 2  # one per variant
    for _, lv, raw in levels:
        before, after = raw["metrics_before"], raw["metrics_after"]
        tokens = after["leaninfer_output_tokens_total"] - before["leaninfer_output_tokens_total"]
        cost = after["leaninfer_cost_usd_total"] - before["leaninfer_cost_usd_total"]
        assert raw["wrk"]["requests"] > 0 and raw["wrk"]["errors"] == 0 and tokens > 0
        assert lv["server_tokens"] == tokens and lv["requests_per_s"] == raw["wrk"]["req_per_s"]
        assert lv["usd_per_1k_tokens_metered"] == pytest.approx(cost / tokens * 1000, rel=1e-9)
        assert raw["duration_s"] >= raw["wrk_duration_s"] * 0.9  # until the server finished wrk's last requests
        assert lv["ttft"]["n"] == 0 and lv["goodput_requests_per_s"] is None and lv["guidellm"] is None
        assert 0 < lv["client_cpu_s"] and lv["e2e"]["p50_ms"] <= lv["e2e"]["p99_ms"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_plot_one_line_per_variant_and_cost_next_to_offline(run):
    out, report = run
    fig = cost_under_load_figure(report)
    (ax,) = fig.axes
    by_style = {}
    for line in ax.lines:
        by_style.setdefault(line.get_linestyle(), []).append(line.get_label())
    (group,) = report["groups"]
    offline = [f"{v['name']}: offline, batch {v['saturation']['offline_matching']['batch_size']:.3g} (matching "
               f"{v['saturation']['level']})" for v in group["variants"]]
    want = {"-": ["fp32: all-in", "int8: all-in"], "--": ["fp32: metered", "int8: metered"], ":": offline}
    if HAS_WRK:  # unconnected markers
        want["None"] = [f"{n}: metered, c=2 (wrk)" for n in ("fp32", "int8")]  # no all-in: wrk cuts requests
    assert by_style == want
    for line in ax.lines:
        v = next(v for v in group["variants"] if line.get_label().startswith(v["name"] + ":"))
        if line.get_linestyle() == ":":  # a horizontal marker at the offline figure the saturation is set against
            assert set(line.get_ydata()) == {v["saturation"]["offline_usd_per_1k_tokens"]}
        elif line.get_linestyle() == "None":
            assert len(line.get_xdata()) == 1
        else:
            assert len(line.get_xdata()) == 2  # both Python levels
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
    assert [g.wrk_duration_s for g in cfg.groups] == [2.0, 2.0]  # the flag sets the wrk level's too
    assert [g.wrk_duration_s for g in serve_load_config("serve-cpu", settings, []).groups] == [8, 12]
    assert [g.saturation_rounds for g in cfg.groups] == [3, 5]
    assert [g.slo_ttft_ms for g in cfg.groups] == [300.0, 300.0]
    assert cfg.price()[1] == "priced as aws-c7a.large"
    with pytest.raises(LeaninferError, match="--batch-sizes"):
        serve_load_config("serve-cpu", settings, ["--batch-sizes"])


# -- the report's arithmetic on hand-made raw levels (no server) --------------------------------------------------
# Offline $/1K at batch 1, 8, 16, 32. Between 8 and 16, cost per token = a + b/batch: a + b/8 = 2e-5 and
# a + b/16 = 1.5e-5, so b = 8e-5, a = 1e-5.
OFFLINE = {"name": "fp32", "results": [{"kind": "embedding", "batch_size": b, "tokens_per_s": 1000.0 * b,
                                        "cost": {"usd_per_1k_tokens": c}}
                                       for b, c in ((1, 1e-4), (8, 2e-5), (16, 1.5e-5), (32, 1.25e-5))]}


def test_offline_figure_interpolated_in_one_over_batch():
    off = offline_figure(OFFLINE, 12)
    assert off["usd_per_1k_tokens"] == pytest.approx(1.6666666666666667e-05, rel=1e-12)  # 1e-5 + 8e-5 / 12
    assert off["interpolated_between"] == [8, 16] and not off["measured"] and off["clamped_to"] is None
    assert off["batch_size"] == 12 and off["tokens_per_s"] is None


def test_offline_figure_exact_hit_and_clamped_at_the_ends():
    exact = offline_figure(OFFLINE, 16)
    assert exact["usd_per_1k_tokens"] == 1.5e-5 and exact["measured"] and exact["interpolated_between"] is None
    assert exact["tokens_per_s"] == 16000.0
    assert offline_figure(OFFLINE, 16.0)["measured"]  # a mean batch of exactly 16 is the measured point
    low, high = offline_figure(OFFLINE, 0.5), offline_figure(OFFLINE, 40)
    assert (low["usd_per_1k_tokens"], low["clamped_to"]) == (1e-4, 1)
    assert (high["usd_per_1k_tokens"], high["clamped_to"]) == (1.25e-5, 32)
    assert offline_figure({"results": []}, 8) is None and offline_figure(None, 8) is None


def _metrics(cost, busy, tokens, calls, rows):
    return {"leaninfer_cost_usd_total": cost, "leaninfer_engine_busy_seconds_total": busy,
            "leaninfer_input_tokens_total": tokens, "leaninfer_output_tokens_total": 0.0,
            "leaninfer_engine_utilization": 0.9, "leaninfer_requests_total": 0.0,
            "leaninfer_batch_size_sum:embedding": rows, "leaninfer_batch_size_count:embedding": calls}


def _wrk_raw():
    # over the level: $0.0002 metered, 3.6 s busy, 8000 input tokens, 25 model calls of 300 rows in all (12 each)
    return {"mode": "wrk", "level": 32.0, "client": "wrk", "duration_s": 4.0, "wrk_duration_s": 3.9,
            "wrk": {"requests": 300, "errors": 0, "non2xx": 0, "duration_us": 3_900_000, "p50_us": 120_000,
                    "p95_us": 180_000, "p99_us": 200_000, "req_per_s": 300 / 3.9, "client_cpu_s": 0.2},
            "metrics_before": _metrics(0.001, 10.0, 1000.0, 100.0, 500.0),
            "metrics_after": _metrics(0.0012, 13.6, 9000.0, 125.0, 800.0),
            "server_cpu_s": 7.5, "client_cpu_s": 0.2}


def _python_raw(c):
    samples = [{"ok": True, "start": 0.1 * i, "end": 0.1 * i + 0.2, "ttft_s": None, "itl_s": [], "input_tokens": 40,
                "output_tokens": 0, "status": 200, "error": None} for i in range(50)]
    # 2000 tokens for $0.0001 metered (5e-5 $/1K), 4 calls of 32 rows
    return {"mode": "concurrency", "level": float(c), "client": "loadgen", "duration_s": 5.0, "samples": samples,
            "metrics_before": _metrics(0.0, 0.0, 0.0, 0.0, 0.0),
            "metrics_after": _metrics(0.0001, 4.0, 2000.0, 4.0, 128.0), "server_cpu_s": 6.0, "client_cpu_s": 1.5}


def test_wrk_level_metered_from_the_metrics_deltas():
    lv = wrk_level_summary(_wrk_raw(), "embeddings", usd_per_hour=0.36)
    assert lv["label"] == "c=32 (wrk)" and lv["client"] == "wrk"
    assert lv["server_tokens"] == 8000.0
    assert lv["usd_per_1k_tokens_metered"] == pytest.approx(2.5e-05, rel=1e-9)  # 0.0002 / 8000 x 1000
    # wrk cut the requests in flight when it stopped: their machine time bought no tokens, so no all-in figure
    assert lv["usd_per_1k_tokens_all_in"] is None and lv["all_in_cost_usd"] is None
    assert lv["utilization"] == pytest.approx(0.9)  # 3.6 busy s / 4 s
    assert lv["mean_batch_size"] == {"embedding": 12.0}
    assert lv["tokens_per_s"] == 2000.0 and lv["requests_per_s"] == pytest.approx(300 / 3.9)
    assert (lv["e2e"]["p50_ms"], lv["e2e"]["p95_ms"], lv["e2e"]["p99_ms"], lv["e2e"]["n"]) == (120, 180, 200, 300)
    assert lv["ttft"] == {"n": 0} and lv["goodput_fraction"] is None
    assert (lv["server_cpu_s"], lv["client_cpu_s"]) == (7.5, 0.2)


def _state(levels, wrk="/usr/bin/wrk"):
    group = ServeGroup(model="m", concurrency=[8, 32], max_batch_size=32).model_dump()
    return {"meta": {"usd_per_hour": 0.36, "priced_as": "--usd-per-hour 0.36", "command": "leaninfer bench",
                     "started": "2026-01-01T00:00:00+00:00", "wrk": wrk},
            "groups": [{"group": group, "offline_dir": "/tmp/offline/m", "offline": {"fp32": OFFLINE},
                        "served": {"fp32": {"status": "ok", "reference": "m", "levels": levels}}}]}


def test_saturation_uses_the_wrk_level_at_the_matching_batch():
    report = build_serve_load_report(_state([_python_raw(8), _python_raw(32), _wrk_raw()]))
    (v,) = report["groups"][0]["variants"]
    sat = v["saturation"]
    assert sat["level"] == "c=32 (wrk)" and sat["client"] == "wrk"
    assert sat["matching_call_kind"] == "embedding" and sat["mean_batch_size"] == 12.0
    assert sat["offline_usd_per_1k_tokens"] == pytest.approx(1.6666666666666667e-05, rel=1e-12)
    assert sat["metered_over_offline"] == pytest.approx(2.5e-05 / 1.6666666666666667e-05)  # 1.5
    assert sat["metered_over_offline_max_batch"] == pytest.approx(2.5e-05 / 1.25e-5)  # 2.0
    assert not sat["within_15pct"]
    md = to_markdown(report)
    assert "| fp32 | c=32 (wrk) | 76.9 | 0 | 120 / 180 / 200 (n=300) | – | – | – |" in md
    # no offline runs around it: against the offline bench at the start, which is also the last columns' figure
    assert "1.67e-05 (batch 12.0, interpolated 8–16) | 1.50x | – | no | 1.50x | 1.25e-05 (batch 32) | 2.00x |" in md
    assert "Driven by the Python client" not in md


def test_saturation_without_wrk_is_the_python_clients_highest_concurrency():
    report = build_serve_load_report(_state([_python_raw(8), _python_raw(32)], wrk=None))
    (v,) = report["groups"][0]["variants"]
    sat = v["saturation"]
    assert sat["level"] == "c=32" and sat["client"] == "loadgen" and sat["client_cpu_s"] == 1.5
    assert sat["mean_batch_size"] == 32.0 and sat["offline_matching"]["measured"]  # 128 rows / 4 calls
    assert sat["metered_over_offline"] == pytest.approx(5e-05 / 1.25e-5)  # 4.0
    md = to_markdown(report)
    assert "`wrk` was not installed" in md and "Driven by the Python client at saturation" in md
    assert "| c=32 (wrk) |" not in md and "| fp32 | c=32 | " in md


def test_a_failed_wrk_level_is_reported_and_saturation_falls_back():
    failed = {"mode": "wrk", "level": 32.0, "client": "wrk", "error": "CalledProcessError: wrk exited 1"}
    report = build_serve_load_report(_state([_python_raw(32), failed]))
    (v,) = report["groups"][0]["variants"]
    assert v["levels"][1] == {"mode": "wrk", "level": 32.0, "client": "wrk", "label": "c=32 (wrk)",
                              "error": "CalledProcessError: wrk exited 1"}
    assert v["saturation"]["level"] == "c=32"
    assert "| fp32 | c=32 (wrk) failed: CalledProcessError: wrk exited 1 |" in to_markdown(report)
    assert cost_under_load_figure(report) is not None


def test_wrk_bodies_are_the_load_generators_prompts_non_streaming():
    emb = ServeGroup(model="m", prompt_tokens=8)
    path, bodies = wrk_bodies(emb, "m", n=3)
    assert path == "/v1/embeddings" and len(bodies) == 3 and len({b["input"][0] for b in bodies}) == 3
    assert all(b["model"] == "m" and len(b["input"]) == 1 and len(b["input"][0].split()) == 8 for b in bodies)
    gen = ServeGroup(model="g", endpoint="completions", prompt_tokens=8, max_tokens=4)
    path, bodies = wrk_bodies(gen, "g", n=2)
    assert path == "/v1/completions"
    assert {k: v for k, v in bodies[0].items() if k != "prompt"} == {
        "model": "g", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": False}
    assert offline_batch_sizes(32) == [1, 8, 16, 32] and offline_batch_sizes(1) == [1]


def _bracket(cost_at_8, cost_at_16):
    """A raw offline run of embeddings at batch 8 and 16 that prices (at $0.36/h) to these $/1K tokens."""
    tps = {8: 0.36 / 3600 / cost_at_8 * 1000, 16: 0.36 / 3600 / cost_at_16 * 1000}
    return {"status": "ok", "results": [{"kind": "embedding", "batch_size": b, "tokens_per_s": t,
                                         "sequences_per_s": t / 40} for b, t in tps.items()]}


def _round(i, n, cost):
    raw = _wrk_raw()
    raw["metrics_after"] = {**raw["metrics_after"], "leaninfer_cost_usd_total": 0.001 + cost}
    return {**raw, "round": i, "rounds": n}


def test_saturation_is_the_median_round_against_its_own_brackets():
    # 8000 tokens a round, mean batch 12 (between 8 and 16). The offline bench drifts: 2e-5/1.5e-5 at the
    # start, then twice as dear, then back. Round costs: 2.4e-5, 4.0e-5, 2.0e-5 $/1K.
    brackets = [_bracket(2e-5, 1.5e-5), _bracket(4e-5, 3e-5), _bracket(2e-5, 1.5e-5), _bracket(2e-5, 1.5e-5)]
    state = _state([_python_raw(32), _round(1, 3, 0.000192), _round(2, 3, 0.00032), _round(3, 3, 0.00016)])
    state["groups"][0]["served"]["fp32"]["offline_brackets"] = brackets
    (v,) = build_serve_load_report(state)["groups"][0]["variants"]
    sat = v["saturation"]
    # at batch 12, a + b/12 with a + b/8 = x, a + b/16 = y: (x + 2y) / 3 -> 1.6667e-5 and 3.3333e-5
    low, high = 5e-5 / 3, 1e-4 / 3
    want = [(2.4e-5, (low + high) / 2), (4.0e-5, (high + low) / 2), (2.0e-5, low)]
    assert [r["offline_usd_per_1k_tokens"] for r in sat["rounds"]] == pytest.approx([w[1] for w in want], rel=1e-9)
    ratios = [c / o for c, o in want]  # 0.96, 1.6, 1.2
    assert [r["metered_over_offline"] for r in sat["rounds"]] == pytest.approx(ratios, rel=1e-9)
    assert [r["offline_drift"] for r in sat["rounds"]] == pytest.approx([2.0, 0.5, 1.0], rel=1e-9)
    assert sat["bracketed"] and sat["level"] == "c=32 (wrk, round 3/3)"  # the median ratio, 1.2
    assert sat["metered_over_offline"] == pytest.approx(1.2) and not sat["within_15pct"]
    # the same round against the offline bench run before serving (OFFLINE: 1.6667e-5 at batch 12)
    assert sat["metered_over_offline_bench_at_start"] == pytest.approx(2.0e-5 / (5e-5 / 3))
    md = to_markdown(build_serve_load_report(state))
    assert "| fp32 | c=32 (wrk, round 2/3) | 76.9 |" in md
    assert "0.96x (+100%), 1.60x (-50%), 1.20x (+0%) | no |" in md
    assert "mean of the runs before / after: 1.67e-05 / 1.67e-05" in md


def test_a_round_without_both_brackets_is_left_out():
    brackets = [_bracket(2e-5, 1.5e-5), {"status": "failed", "error": "the measure process died"},
                _bracket(2e-5, 1.5e-5)]
    state = _state([_round(1, 2, 0.000192), _round(2, 2, 0.00016)])
    state["groups"][0]["served"]["fp32"]["offline_brackets"] = brackets
    (v,) = build_serve_load_report(state)["groups"][0]["variants"]
    assert v["saturation"]["rounds"] == []  # each round lost one side: back to the offline bench at the start
    assert not v["saturation"]["bracketed"] and v["saturation"]["level"] == "c=32 (wrk, round 2/2)"
    assert v["saturation"]["metered_over_offline"] == pytest.approx(2.0e-5 / (5e-5 / 3))


def test_lanes_calls_are_matched_at_rows_over_the_machine_share_they_held():
    # two lanes: 25 calls of 12 rows, 3.6 machine seconds over 7.2 s of calls (each held half the machine), so
    # the machine ran 24 rows at a time: matched with the offline bench at batch 24 (between 16 and 32)
    wrk = _wrk_raw()
    wrk["metrics_before"] = {**wrk["metrics_before"], "leaninfer_engine_call_seconds_total": 20.0}
    wrk["metrics_after"] = {**wrk["metrics_after"], "leaninfer_engine_call_seconds_total": 27.2}
    (v,) = build_serve_load_report(_state([_python_raw(32), wrk]))["groups"][0]["variants"]
    sat = v["saturation"]
    assert sat["machine_share"] == pytest.approx(0.5) and sat["rows_per_call"] == 12.0
    assert sat["mean_batch_size"] == pytest.approx(24.0)
    # a + b/batch between 16 (1.5e-5) and 32 (1.25e-5): b = 8e-5, a = 1e-5; at 24: 1e-5 + 8e-5 / 24
    assert sat["offline_usd_per_1k_tokens"] == pytest.approx(1e-5 + 8e-5 / 24, rel=1e-12)
    assert "| 24.0 (12.0 / 0.50) |" in to_markdown(build_serve_load_report(_state([wrk])))
