"""The pricing of ``bench --endpoint``: the machine's hour over the tokens a level delivered, the split of it
between input and output tokens, the saturation level, the server's meter beside it, and the side-by-side table.
Numbers made by hand: nothing here is measured."""

from __future__ import annotations

import pytest

from leaninfer.benchmarks.endpoint.pricing import MAX_ERROR_FRACTION, metered, price_level, saturation_index
from leaninfer.benchmarks.endpoint.report import compare_rows, usd_per_1k_requests
from leaninfer.benchmarks.endpoint.sweep import EndpointBenchConfig, tariff_of
from leaninfer.cost import usd_per_1k_tokens
from leaninfer.endpoint import Endpoint
from leaninfer.errors import LeaninferError
from leaninfer.finops.price_list import PriceList, load_price_list, save_price_list


def level(c=4, duration_s=10.0, in_tps=1000.0, out_tps=0.0, requests=100, errors=0, **kw) -> dict:
    return {"concurrency": c, "duration_s": duration_s, "input_tokens_per_s": in_tps, "output_tokens_per_s": out_tps,
            "requests": requests, "errors": errors, "requests_per_s": requests / duration_s, **kw}


def test_an_embedding_token_costs_the_machines_hour_over_the_tokens_it_delivered():
    p = price_level("embedding", 3.6, level(duration_s=10.0, in_tps=1000.0))
    # 3.6 $/h x 10 s = 0.01 $ for 10,000 tokens: 0.001 $ per 1K
    assert p["machine_usd"] == pytest.approx(0.01)
    assert p["usd_per_1k_input_tokens"] == pytest.approx(0.001)
    assert p["usd_per_1k_input_tokens"] == pytest.approx(usd_per_1k_tokens(3.6, 1000.0))
    assert p["usd_per_1k_output_tokens"] == 0.0


def test_generation_prices_add_up_to_the_machines_cost_of_the_level():
    main = level(duration_s=10.0, in_tps=500.0, out_tps=400.0)  # 5,000 in + 4,000 out tokens
    probe = level(duration_s=2.0, in_tps=5000.0)  # prefill alone: 5,000 input tokens/s
    p = price_level("causal-lm", 3.6, main, probe)
    assert p["usd_per_1k_input_tokens"] == pytest.approx(usd_per_1k_tokens(3.6, 5000.0))  # the probe's rate
    charged = 5000 * p["usd_per_1k_input_tokens"] / 1000 + 4000 * p["usd_per_1k_output_tokens"] / 1000
    assert charged == pytest.approx(p["machine_usd"]) and p["machine_usd"] == pytest.approx(0.01)
    assert not p["split_clamped"]


def test_a_slower_prefill_moves_cost_from_output_to_input_tokens():
    main = level(duration_s=10.0, in_tps=500.0, out_tps=400.0)
    fast = price_level("causal-lm", 3.6, main, level(in_tps=5000.0))
    slow = price_level("causal-lm", 3.6, main, level(in_tps=1000.0))
    assert slow["usd_per_1k_input_tokens"] > fast["usd_per_1k_input_tokens"]
    assert slow["usd_per_1k_output_tokens"] < fast["usd_per_1k_output_tokens"]


def test_input_cost_beyond_the_whole_level_is_clamped_and_said():
    main = level(duration_s=1.0, in_tps=5000.0, out_tps=10.0)
    p = price_level("causal-lm", 3.6, main, level(in_tps=1000.0))  # the probe says 5 s of prefill in a 1 s level
    assert p["split_clamped"]
    assert p["usd_per_1k_output_tokens"] == 0.0
    assert 5000 * p["usd_per_1k_input_tokens"] / 1000 == pytest.approx(p["machine_usd"])


def test_a_generation_level_needs_its_probe():
    with pytest.raises(LeaninferError, match="prefill probe"):
        price_level("causal-lm", 3.6, level(out_tps=10.0))


def _priced(rows, task="embedding"):
    return [{**r, **price_level(task, 3.6, r, r.get("prefill_probe"))} for r in rows]


def test_saturation_is_the_level_of_the_highest_throughput_and_the_lowest_price():
    rows = _priced([level(1, in_tps=1000.0), level(4, in_tps=3000.0), level(16, in_tps=4000.0),
                    level(64, in_tps=3900.0)])  # past saturation a level may deliver a little less
    sat = rows[saturation_index("embedding", rows)]
    assert sat["concurrency"] == 16
    assert sat["usd_per_1k_input_tokens"] == min(r["usd_per_1k_input_tokens"] for r in rows)
    gen = _priced([level(4, in_tps=900.0, out_tps=300.0, prefill_probe=level(in_tps=5000.0)),
                   level(16, in_tps=500.0, out_tps=600.0, prefill_probe=level(in_tps=5000.0))], task="causal-lm")
    assert gen[saturation_index("causal-lm", gen)]["concurrency"] == 16  # generation: ranked by output tokens/s


def test_levels_with_errors_are_not_saturation():
    rows = _priced([level(4, in_tps=3000.0), level(64, in_tps=4000.0, requests=100, errors=5)])
    assert 5 > MAX_ERROR_FRACTION * 100
    assert rows[saturation_index("embedding", rows)]["concurrency"] == 4


def test_a_generation_level_whose_probe_failed_is_not_saturation():
    probe_ok, probe_failed = level(in_tps=5000.0), level(in_tps=0.0, requests=10, errors=10)
    rows = _priced([level(4, in_tps=500.0, out_tps=300.0, prefill_probe=probe_ok),
                    level(64, in_tps=900.0, out_tps=600.0, prefill_probe=probe_failed)], task="causal-lm")
    assert rows[saturation_index("causal-lm", rows)]["concurrency"] == 4


def test_a_sweep_without_a_usable_level_names_what_its_levels_answered():
    rows = _priced([level(4, in_tps=0.0, requests=10, errors=10, error_examples=["503: queue full"])])
    with pytest.raises(LeaninferError, match=r"c=4: 10/10 failed.*503: queue full"):
        saturation_index("embedding", rows)


def test_the_servers_meter_is_set_against_the_machines_cost_at_the_same_price():
    m = metered("causal-lm", 3.6, level(duration_s=10.0, in_tps=500.0, out_tps=400.0, metered_usd=0.009,
                                        metered_usd_input=0.001))
    assert m["metered_usd_over_machine_usd"] == pytest.approx(0.9)  # 0.009 of the 0.01 $ the 10 s cost
    assert m["metered_usd_per_1k_input_tokens"] == pytest.approx(0.001 / 5000 * 1000)
    assert m["metered_usd_per_1k_output_tokens"] == pytest.approx(0.008 / 4000 * 1000)
    assert metered("embedding", 3.6, level()) == {}  # an engine without a meter: nothing made up


def test_the_tariff_takes_the_saturation_levels_prices_and_keeps_every_level(tmp_path):
    rows = _priced([level(1, in_tps=1000.0), level(8, in_tps=4000.0)])
    ep = Endpoint("http://127.0.0.1:1/v1", "minilm", "embedding")
    t = tariff_of(ep, rows, 3.6, "aws-c7a.large")
    assert t.source == "measured" and t.task == "embedding" and t.model == "minilm"
    assert t.usd_per_1k_input_tokens == pytest.approx(usd_per_1k_tokens(3.6, 4000.0))
    assert t.usd_per_1k_output_tokens == 0.0 and t.level["concurrency"] == 8
    assert [lv["concurrency"] for lv in t.levels] == [1, 8]
    assert t.level["endpoint"] == ep.base_url and "prefill" not in t.level["pricing_rule"]
    back = load_price_list(save_price_list(t, tmp_path / "t.yaml"))
    assert back.usd_per_1k_input_tokens == t.usd_per_1k_input_tokens and back.hardware == "aws-c7a.large"


def test_the_price_comes_from_the_flag_or_the_profile():
    base = {"endpoint": "http://x", "model": "m"}
    assert EndpointBenchConfig(**base, usd_per_hour=0.5).price() == (0.5, None)
    price, hw = EndpointBenchConfig(**base, hardware="aws-c7a.large").price()
    assert hw == "aws-c7a.large" and price > 0
    assert EndpointBenchConfig(**base, hardware="aws-c7a.large", usd_per_hour=0.5).price() == (0.5, "aws-c7a.large")
    with pytest.raises(LeaninferError, match="--hardware PROFILE.*--usd-per-hour"):
        EndpointBenchConfig(**base).price()
    with pytest.raises(LeaninferError, match="unknown hardware profile 'nope'; valid:"):
        EndpointBenchConfig(**base, hardware="nope").price()
    with pytest.raises(LeaninferError, match="--usd-per-hour"):
        EndpointBenchConfig(**base, usd_per_hour=0)
    with pytest.raises(LeaninferError, match="--concurrency"):
        EndpointBenchConfig(**base, usd_per_hour=1, concurrency=[0, 4])


def test_which_engine_is_cheaper_depends_on_the_traffic():
    box = PriceList(model="qwen", task="causal-lm", usd_per_1k_input_tokens=0.0004, usd_per_1k_output_tokens=0.0008,
                    source="measured")
    api = PriceList(model="qwen", task="causal-lm", usd_per_1k_input_tokens=0.0001, usd_per_1k_output_tokens=0.002,
                    source="list")
    tariffs = [("box.yaml", box), ("api.yaml", api)]
    prompt_heavy = compare_rows(tariffs, input_tokens=2000, output_tokens=50)
    chatty = compare_rows(tariffs, input_tokens=100, output_tokens=1000)
    assert [r["name"] for r in prompt_heavy] == ["api.yaml", "box.yaml"]
    assert [r["name"] for r in chatty] == ["box.yaml", "api.yaml"]
    assert chatty[0]["usd_per_1k_requests"] == pytest.approx(usd_per_1k_requests(box, 100, 1000))
    assert usd_per_1k_requests(box, 100, 1000) == pytest.approx(100 * 0.0004 + 1000 * 0.0008)
