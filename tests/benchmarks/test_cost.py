"""The cost model, to the cent: every figure recomputable by hand."""

import pytest

from leaninfer.cost import (
    HOURS_PER_MONTH,
    Traffic,
    generation_cost,
    usd_for_busy_seconds,
    usd_per_1k_requests,
    usd_per_1k_tokens,
    usd_per_month,
)
from leaninfer.errors import LeaninferError


def test_usd_per_1k_tokens_by_hand():
    # $3.60/h = $0.001/s; 100 tok/s -> $0.00001/token -> $0.01 per 1K tokens
    assert usd_per_1k_tokens(3.60, 100) == pytest.approx(0.01, abs=1e-12)
    # g5.xlarge price, 500 tok/s: 1.006 / (500 * 3600) * 1000
    assert round(usd_per_1k_tokens(1.006, 500) * 1e6) == 559  # $0.000559 per 1K
    assert round(usd_per_1k_tokens(36.0, 10), 2) == 1.00


def test_utilization_scales_cost_inversely():
    full = usd_per_1k_tokens(2.0, 1000)
    assert usd_per_1k_tokens(2.0, 1000, utilization=0.4) == pytest.approx(full * 2.5)


def test_busy_seconds():
    assert usd_for_busy_seconds(3.60, 10) == pytest.approx(0.01)
    assert round(usd_for_busy_seconds(0.357, 3600 * 24 * 30), 2) == 257.04


def test_requests():
    assert usd_per_1k_requests(3.60, 10) == pytest.approx(0.1)


def test_generation_cost_charges_one_decode_step_less_than_output_tokens():
    # prefill 1000 tok/s, decode 10 tok/s on a $3.60/h ($0.001/s) machine; 500 in, 101 out: the prefill gives
    # the first token, 100 decode steps give the rest
    c = generation_cost(3.60, 1000, 10, input_tokens=500, output_tokens=101)
    assert c.decode_steps_per_request == 100
    assert c.usd_per_1k_input_tokens == pytest.approx(0.001)
    assert c.usd_per_1k_decode_tokens == pytest.approx(0.1)
    # 0.5 s prefill + 100 x 0.1 s decode = 10.5 s
    assert c.usd_per_request == pytest.approx(0.0105)
    assert round(c.usd_per_1k_requests, 2) == 10.50
    # the whole request per 1K output tokens: 0.0105 / 101 x 1000
    assert c.usd_per_1k_output_tokens == pytest.approx(0.0105 / 101 * 1000)


def test_short_generations_are_not_overcharged():
    # 4 new tokens: 3 decode steps, not 4 (+33%); at 0 s prefill cost (free input) only decode is paid
    c = generation_cost(3.60, 1e12, 10, input_tokens=0, output_tokens=4)
    assert c.usd_per_request == pytest.approx(0.001 * 3 * 0.1)


def test_one_output_token_needs_no_decode_rate():
    c = generation_cost(3.60, 1000, None, input_tokens=500, output_tokens=1)
    assert c.usd_per_request == pytest.approx(0.0005) and c.usd_per_1k_output_tokens == pytest.approx(0.5)
    assert c.usd_per_1k_decode_tokens is None and c.decode_steps_per_request == 0


def test_month_for_traffic_profile():
    t = Traffic(requests_per_day=86400, input_tokens_per_request=100, output_tokens_per_request=11)
    m = usd_per_month(1.0, t, input_tokens_per_s=1000, decode_tokens_per_s=20)
    # per request 0.1 s prefill + 10 decode steps / 20 = 0.5 s busy; one request per second -> 60% busy
    assert m.instances == 1
    assert m.utilization == pytest.approx(0.6)
    assert round(m.usd_per_month, 2) == round(HOURS_PER_MONTH * 1.0, 2) == 730.00
    assert round(m.usd_per_month_busy_only, 2) == 438.00
    # at 50% max utilization it needs two machines
    m2 = usd_per_month(1.0, t, 1000, 20, max_utilization=0.5)
    assert m2.instances == 2 and round(m2.usd_per_month, 2) == 1460.00


@pytest.mark.parametrize("kwargs", [dict(tokens_per_s=0), dict(tokens_per_s=-1), dict(utilization=0),
                                    dict(utilization=1.5), dict(usd_per_hour=-1)])
def test_bad_inputs_name_the_field(kwargs):
    args = dict(usd_per_hour=1.0, tokens_per_s=10.0) | kwargs
    with pytest.raises(LeaninferError, match=next(iter(kwargs))):
        usd_per_1k_tokens(**args)


def test_generation_traffic_needs_output_rate():
    with pytest.raises(LeaninferError, match="decode_tokens_per_s"):
        usd_per_month(1.0, Traffic(10, 10, 10), input_tokens_per_s=100)
