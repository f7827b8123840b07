"""The money path without a model: nano-dollars (to_nano/to_usd), seconds to $ (usd_for_busy_seconds), and
the Tariff that prices a request's reservation (worst case) and its typical cost from engine seconds."""

from __future__ import annotations

import math

import pytest

from leaninfer.cost import usd_for_busy_seconds
from leaninfer.errors import LeaninferError
from leaninfer.finops.money import NANO_PER_USD, to_nano, to_usd
from leaninfer.finops.tariff import ALPHA, SAFETY, SCALE_EASE, Tariff

USD_PER_HOUR = 3.6  # $0.001 per busy second: 1 ms of engine time is 1,000 nano-dollars


# --- nano-dollars -------------------------------------------------------------------------------------------


def test_to_nano_rounds_to_the_nearest_nano_dollar():
    assert NANO_PER_USD == 1_000_000_000
    assert to_nano(1.234e-6) == 1234
    assert to_nano(0.1 + 0.2) == 300_000_000  # 0.30000000000000004 $: the float's noise is rounded away
    assert to_nano(1.4e-9) == 1 and to_nano(1.6e-9) == 2 and to_nano(4e-10) == 0
    assert to_nano(0.0) == 0 and to_nano(5) == 5_000_000_000
    assert isinstance(to_nano(0.5), int)


def test_to_nano_breaks_exact_halves_to_even():
    # Python's round(): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (these products are exact in binary floating point)
    assert [to_nano(v) for v in (5e-10, 1.5e-9, 2.5e-9, 3.5e-9)] == [0, 2, 2, 4]


def test_to_nano_refuses_what_no_integer_can_hold():
    # KeyPolicy refuses non-finite budgets, and usd_for_busy_seconds non-finite prices and seconds, before
    # anything reaches here; this is what would happen if one did
    with pytest.raises(OverflowError):
        to_nano(math.inf)
    with pytest.raises(ValueError):
        to_nano(math.nan)


def test_to_usd_and_back_is_exact_for_any_realistic_amount():
    amounts = [0, 1, 7, 999, 123_456_789, 1_000_000_001, 123_456_789_012_345, 2**51]
    assert all(to_nano(to_usd(n)) == n for n in amounts + list(range(0, 200_000, 7)))
    assert to_usd(1_500_000_000) == 1.5 and to_usd(1) == 1e-9


def test_integer_sums_stay_exact_where_float_sums_drift():
    tiny = 1e-7  # a request costing a tenth of a micro-dollar, a million times
    assert sum(to_nano(tiny) for _ in range(1_000_000)) == 100_000_000  # $0.1 to the nano-dollar
    assert sum(tiny for _ in range(1_000_000)) != 0.1  # the float sum is off


# --- seconds to dollars -------------------------------------------------------------------------------------


def test_usd_for_busy_seconds_is_price_times_time():
    assert usd_for_busy_seconds(3.6, 10) == pytest.approx(0.01)
    assert to_nano(usd_for_busy_seconds(USD_PER_HOUR, 0.001)) == 1_000
    assert usd_for_busy_seconds(0, 123.0) == 0.0  # a free machine
    assert usd_for_busy_seconds(2.0, 0) == 0.0
    assert usd_for_busy_seconds(7.2, 3600) == pytest.approx(7.2)


@pytest.mark.parametrize(("price", "seconds", "named"), [
    (-1.0, 1.0, "usd_per_hour"), (math.inf, 1.0, "usd_per_hour"), (math.nan, 1.0, "usd_per_hour"),
    ("cheap", 1.0, "usd_per_hour"), (1.0, -0.5, "seconds"), (1.0, math.inf, "seconds"), (1.0, None, "seconds"),
])
def test_usd_for_busy_seconds_refuses_bad_inputs_naming_them(price, seconds, named):
    with pytest.raises(LeaninferError, match=named):
        usd_for_busy_seconds(price, seconds)


# --- Tariff -------------------------------------------------------------------------------------------------


def _calibrated() -> Tariff:
    """A tariff calibrated like the server does at start-up: batch-1 runs of 1 and 32 input tokens.

    1 token: 11 ms of input time, 2 output tokens in 20 ms; 32 tokens: 42 ms, 3 output tokens in 30 ms.
    So: 1 ms per input token, 10 ms fixed, 10 ms per output token.
    """
    t = Tariff(USD_PER_HOUR)
    t.calibrate((0.011, 0.020, 2), (0.042, 0.030, 3), 32)
    return t


def test_calibrate_fits_the_worst_case_model():
    t = _calibrated()
    assert t.per_input_s == pytest.approx(0.001)
    assert t.fixed_s == pytest.approx(0.010)
    assert t.per_output_s == pytest.approx(0.010)
    assert t.predicted_s(10, 5) == pytest.approx(0.010 + 10 * 0.001 + 5 * 0.010)
    # the 32-token run is also the first observation: typical rates start from it, at full weight
    assert t.n == 1
    assert t.typical_input_s == pytest.approx(0.042 / 32) and t.typical_output_s == pytest.approx(0.010)
    assert t.request_busy_s == pytest.approx(0.072)
    assert t.scale == pytest.approx(1.0)  # the calibration run took exactly what the model predicts


def test_calibrate_keeps_rates_non_negative_and_takes_the_slowest_decode_step():
    t = Tariff(USD_PER_HOUR)
    # noise: the longer prompt ran faster; the two decode runs disagree (15 ms and 10 ms a step)
    t.calibrate((0.020, 0.030, 2), (0.010, 0.040, 4), 32)
    assert t.per_input_s == 0.0 and t.fixed_s == pytest.approx(0.020)
    assert t.per_output_s == pytest.approx(0.015)
    e = Tariff(USD_PER_HOUR)  # an embedding model: no output tokens at all
    e.calibrate((0.005, 0.0, 0), (0.036, 0.0, 0), 32)
    assert e.per_output_s == 0.0 and e.typical_output_s == 0.0 and e.per_input_s == pytest.approx(0.001)


def test_worst_nusd_is_the_safety_margin_over_the_predicted_seconds():
    t = _calibrated()
    seconds = SAFETY * (0.010 + 10 * 0.001 + 5 * 0.010)  # 1.5 x 70 ms
    assert t.worst_nusd(10, 5) == to_nano(usd_for_busy_seconds(USD_PER_HOUR, seconds)) == 105_000
    assert t.worst_nusd(0, 0) == 15_000  # the fixed part alone
    assert isinstance(t.worst_nusd(10, 5), int)
    assert t.worst_nusd(20, 5) > t.worst_nusd(10, 5) and t.worst_nusd(10, 6) > t.worst_nusd(10, 5)
    assert Tariff(USD_PER_HOUR).worst_nusd(100, 100) == 0  # uncalibrated: nothing known, nothing reserved
    assert Tariff(0.0, fixed_s=1.0).worst_nusd(1, 1) == 0  # a free machine reserves nothing


def test_a_request_slower_than_predicted_raises_the_scale_which_then_eases_back():
    t = _calibrated()
    base = t.worst_nusd(32, 3)
    t.observe(32, 3, 0.084, 0.060)  # twice the predicted 72 ms
    assert t.scale == pytest.approx(2.0)
    assert t.worst_nusd(32, 3) == pytest.approx(2 * base, abs=1)
    t.observe(32, 3, 0.042, 0.030)  # back to normal: the scale eases by 1%, not straight back to 1
    assert t.scale == pytest.approx(2.0 * SCALE_EASE)
    for _ in range(1000):
        t.observe(32, 3, 0.042, 0.030)
    assert t.scale == pytest.approx(1.0)  # back to the worst-case model (within a float's noise of 72/72 ms)
    t.observe(32, 3, 0.0, 0.0)  # faster than predicted: never below 1, the worst-case model stays the floor
    assert t.scale == 1.0


def test_a_later_stall_only_raises_the_scale_when_it_beats_the_eased_one():
    t = _calibrated()
    t.observe(32, 3, 0.084 * 1.5, 0.060 * 1.5)  # 3x
    t.observe(32, 3, 0.084, 0.060)  # 2x: below 3 x 0.99, so the scale only eases
    assert t.scale == pytest.approx(3.0 * SCALE_EASE)


def test_typical_rates_are_an_ewma_of_settled_requests():
    t = _calibrated()
    first_in, first_out = t.typical_input_s, t.typical_output_s
    t.observe(100, 10, 0.2, 0.3)  # 2 ms per input token, 30 ms per output token
    assert t.typical_input_s == pytest.approx(first_in + ALPHA * (0.002 - first_in))
    assert t.typical_output_s == pytest.approx(first_out + ALPHA * (0.030 - first_out))
    assert t.request_busy_s == pytest.approx(0.072 + ALPHA * (0.5 - 0.072))
    assert t.n == 2
    expected = to_nano(usd_for_busy_seconds(USD_PER_HOUR, 7 * t.typical_input_s + 3 * t.typical_output_s))
    assert t.typical_nusd(7, 3) == expected
    seconds = t.typical_input_s + t.typical_output_s  # ranked in $ per token first, then seconds per token
    assert t.rank_key() == pytest.approx((usd_for_busy_seconds(USD_PER_HOUR, seconds), seconds))


def test_typical_rates_skip_what_a_request_did_not_have():
    t = Tariff(USD_PER_HOUR)
    t.observe(10, 0, 0.01, 0.0)  # an embedding: no output tokens, the output rate stays unknown
    assert t.typical_input_s == pytest.approx(0.001) and t.typical_output_s == 0.0
    t.observe(0, 4, 0.0, 0.04)  # the first output seen is taken whole, whatever n is
    assert t.typical_output_s == pytest.approx(0.010)
    assert t.typical_input_s == pytest.approx(0.001)  # no input tokens: the input rate is untouched
    assert t.scale == 1.0  # uncalibrated: nothing predicted, so no ratio to scale by


def test_the_typical_cost_is_below_the_reservation_for_a_typical_request():
    t = _calibrated()
    for i in range(50):  # batched traffic: cheaper per token than batch-1 calibration
        t.observe(32, 3, 0.020 + i * 1e-5, 0.015)
    assert 0 < t.typical_nusd(32, 3) < t.worst_nusd(32, 3)


def test_basis_names_the_price():
    assert Tariff(2.5).basis() == "engine busy seconds x $2.5/h"
