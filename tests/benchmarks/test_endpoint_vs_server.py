"""``bench --endpoint`` against a real ``leaninfer serve minilm``: the tariff an outside client measures (the
machine's $/hour over the tokens delivered at saturation) against the server's own meter (busy engine time at
the same $/hour, ``usage.leaninfer.cost_usd``) over the same level of the same run.

Why they may differ: the meter charges only the seconds inside model calls; the tariff charges every second of
the paid hour. At saturation a queue is always waiting, the engine is busy all through the level and the two
meet; what remains is the time outside model calls (HTTP, tokenizing, the gap between two batches)."""

from __future__ import annotations

import httpx
import pytest

from leaninfer.benchmarks.endpoint.run import measure_endpoint
from leaninfer.benchmarks.endpoint.sweep import EndpointBenchConfig
from leaninfer.benchmarks.load.launch import start_server, stop_server
from leaninfer.benchmarks.serve_load import parse_metrics
from leaninfer.finops.price_list import load_price_list

USD_PER_HOUR = 0.1


@pytest.mark.slow
def test_the_tariff_is_the_servers_metered_cost_at_saturation(tmp_path):
    proc, url = start_server(["minilm", "--store", "none", "--cache-max-bytes", "0", "--usd-per-hour",
                              str(USD_PER_HOUR)], log=tmp_path / "serve.log", cwd=tmp_path,
                             env={"PYTHONWARNINGS": "ignore"})
    try:
        before = parse_metrics(httpx.get(f"{url}/metrics", timeout=30).text, "minilm")
        cfg = EndpointBenchConfig(endpoint=url, model="minilm", usd_per_hour=USD_PER_HOUR, concurrency=[4, 32],
                                  duration_s=5.0)
        doc = measure_endpoint(cfg, tmp_path / "out", argv=["test"])
        after = parse_metrics(httpx.get(f"{url}/metrics", timeout=30).text, "minilm")
    finally:
        stop_server(proc)
    tariff = load_price_list(doc["meta"]["tariff_file"])
    sat = tariff.level
    assert sat["errors"] == 0 and tariff.task == "embedding"
    # the check: within 15% of the server's own metered cost per 1K tokens at the same load
    assert tariff.usd_per_1k_input_tokens == pytest.approx(sat["metered_usd_per_1k_input_tokens"], rel=0.15)
    # the load generator shared the server's machine: its CPU share was deducted from the hour, the raw price kept
    assert 0 < sat["client_cpu_share"] < 1
    assert sat["usd_per_1k_input_tokens_with_client"] * (1 - sat["client_cpu_share"]) == pytest.approx(
        tariff.usd_per_1k_input_tokens, rel=1e-9)
    # the meter read from the responses is the server's own counter: every metered dollar of the run is in them
    in_responses = sum(lv["metered_usd"] for lv in doc["levels"]) + doc["warm_up"]["metered_usd"]
    assert after["leaninfer_cost_usd_total"] - before["leaninfer_cost_usd_total"] == pytest.approx(in_responses,
                                                                                                   rel=1e-6)
