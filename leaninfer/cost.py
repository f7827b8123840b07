"""The cost model: what an hour of hardware costs, turned into dollars per token, request and month.

Everything here is plain arithmetic on measured (or projected) throughput and a price, so that a user can
recompute every figure in a report by hand:

    usd_per_1k_tokens = usd_per_hour / (tokens_per_s * utilization * 3600) * 1000

`utilization` is the fraction of the paid hour the hardware is actually busy. A GPU busy 40% of the hour
costs 1 / 0.4 = 2.5x per token compared with one kept busy all the time: idle time is paid for, too.

Generation splits a request into its prefill (all input tokens, and the first output token) and its decode
steps (one per further output token). Each is charged for the busy seconds it used; a request's cost is their
sum. No rounding happens here; reports round for display only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import LeaninferError

SECONDS_PER_HOUR = 3600.0
# A month for billing: 730 hours (365 * 24 / 12), the convention of the cloud price pages.
HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = HOURS_PER_MONTH / 24.0


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LeaninferError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or (v < 0 if allow_zero else v <= 0) or math.isinf(v):
        raise LeaninferError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return v


def _check_utilization(utilization: float) -> float:
    u = _check_positive("utilization", utilization)
    if u > 1.0:
        raise LeaninferError(f"utilization must be in (0, 1], got {utilization!r}")
    return u


def usd_for_busy_seconds(usd_per_hour: float, seconds: float) -> float:
    """Dollars for `seconds` of hardware time at `usd_per_hour`.

    >>> usd_for_busy_seconds(3.6, 10)
    0.01
    """
    return _check_positive("usd_per_hour", usd_per_hour, allow_zero=True) * \
        _check_positive("seconds", seconds, allow_zero=True) / SECONDS_PER_HOUR


def usd_per_1k_tokens(usd_per_hour: float, tokens_per_s: float, utilization: float = 1.0) -> float:
    """Dollars per 1000 tokens processed at `tokens_per_s`, the hardware busy `utilization` of the time.

    >>> round(usd_per_1k_tokens(3.6, 1000), 6)   # 3.6 $/h = 0.001 $/s; 1000 tok/s -> 1e-6 $/token
    0.001
    >>> round(usd_per_1k_tokens(3.6, 1000, utilization=0.4), 6)
    0.0025
    """
    price = _check_positive("usd_per_hour", usd_per_hour, allow_zero=True)
    tps = _check_positive("tokens_per_s", tokens_per_s)
    u = _check_utilization(utilization)
    return price / (tps * u * SECONDS_PER_HOUR) * 1000.0


def usd_per_1k_requests(usd_per_hour: float, requests_per_s: float, utilization: float = 1.0) -> float:
    """Dollars per 1000 requests served at `requests_per_s` (same formula as tokens, per request)."""
    return usd_per_1k_tokens(usd_per_hour, _check_positive("requests_per_s", requests_per_s), utilization)


@dataclass(frozen=True)
class GenerationCost:
    """Cost of one generation request, split into its prefill and its decode steps.

    `usd_per_1k_output_tokens` is the whole request (prefill included) per 1K output tokens: what an output
    token costs a user who sends this request shape. `usd_per_1k_input_tokens` and `usd_per_1k_decode_tokens`
    are the marginal rates of the two phases (busy time per token at the measured rates).
    """

    usd_per_1k_input_tokens: float
    usd_per_1k_decode_tokens: float | None
    usd_per_1k_output_tokens: float | None
    usd_per_request: float
    usd_per_1k_requests: float
    decode_steps_per_request: int

    def to_dict(self) -> dict:
        return asdict(self)


def decode_steps(output_tokens: int) -> int:
    """Decode steps a request of `output_tokens` new tokens needs: the prefill already yields the first one.

    >>> decode_steps(32), decode_steps(1), decode_steps(0)
    (31, 0, 0)
    """
    return max(int(output_tokens) - 1, 0)


def generation_cost(usd_per_hour: float, input_tokens_per_s: float, decode_tokens_per_s: float | None,
                    input_tokens: int, output_tokens: int, utilization: float = 1.0) -> GenerationCost:
    """Price a request of `input_tokens` in and `output_tokens` out.

    `input_tokens_per_s` is the prefill rate and `decode_tokens_per_s` the decode rate, both measured at the
    same batch size. The prefill produces the first output token, so a request costs the busy seconds of its
    prefill plus those of `output_tokens - 1` decode steps:

        usd_per_request = usd_per_hour / 3600 / utilization * (input_tokens / in_tps + (output_tokens - 1) / dec_tps)

    A request of one output token needs no decode rate (`decode_tokens_per_s` may be None).

    >>> g = generation_cost(3.6, 1000, 10, input_tokens=500, output_tokens=101)   # 0.5 s + 100 steps x 0.1 s
    >>> round(g.usd_per_request, 6), round(g.usd_per_1k_output_tokens, 6)
    (0.0105, 0.10396)
    """
    u = _check_utilization(utilization)
    n_in = _check_positive("input_tokens", input_tokens, allow_zero=True)
    n_out = _check_positive("output_tokens", output_tokens, allow_zero=True)
    steps = decode_steps(n_out)
    in_cost = usd_per_1k_tokens(usd_per_hour, input_tokens_per_s, u)
    dec_cost = None
    if steps or decode_tokens_per_s is not None:
        dec_cost = usd_per_1k_tokens(usd_per_hour, decode_tokens_per_s, u)
    per_request = in_cost * n_in / 1000.0 + (dec_cost or 0.0) * steps / 1000.0
    per_out = per_request / n_out * 1000.0 if n_out else None
    return GenerationCost(in_cost, dec_cost, per_out, per_request, per_request * 1000.0, steps)


@dataclass(frozen=True)
class Traffic:
    """A traffic profile: how many requests a day, and how many tokens each reads and writes.

    For embeddings `output_tokens_per_request` is 0.
    """

    requests_per_day: float
    input_tokens_per_request: float
    output_tokens_per_request: float = 0.0

    def __post_init__(self):
        _check_positive("requests_per_day", self.requests_per_day, allow_zero=True)
        _check_positive("input_tokens_per_request", self.input_tokens_per_request, allow_zero=True)
        _check_positive("output_tokens_per_request", self.output_tokens_per_request, allow_zero=True)

    @property
    def requests_per_month(self) -> float:
        return self.requests_per_day * DAYS_PER_MONTH


@dataclass(frozen=True)
class MonthlyCost:
    """What serving a traffic profile on one option costs for a month.

    `busy_seconds_per_month` is the hardware time the traffic needs at the measured rates;
    `instances` is how many machines that takes (at least 1: you pay for the machine you keep up), and
    `usd_per_month` the bill for keeping them up all month. `usd_per_month_busy_only` is what the same work
    would cost at 100% utilization (serverless-like pricing): the gap between the two is idle time paid for.
    """

    busy_seconds_per_month: float
    utilization: float
    instances: int
    usd_per_month: float
    usd_per_month_busy_only: float

    def to_dict(self) -> dict:
        return asdict(self)


def usd_per_month(usd_per_hour: float, traffic: Traffic, input_tokens_per_s: float,
                  decode_tokens_per_s: float | None = None, max_utilization: float = 1.0) -> MonthlyCost:
    """Monthly cost of `traffic` on hardware at `usd_per_hour` with the measured throughputs.

    Machines are kept up all month (`HOURS_PER_MONTH`); as many as the load needs with each busy at most
    `max_utilization` of the time (a serving target, e.g. 0.7 to leave headroom for bursts). Output tokens
    after the first take one decode step each at `decode_tokens_per_s` (the prefill yields the first).

    >>> m = usd_per_month(1.0, Traffic(86400, 100), input_tokens_per_s=1000)   # 1 req/s of 100 tokens
    >>> m.instances, round(m.utilization, 3), round(m.usd_per_month, 2)
    (1, 0.1, 730.0)
    """
    price = _check_positive("usd_per_hour", usd_per_hour, allow_zero=True)
    cap = _check_utilization(max_utilization)
    busy = traffic.requests_per_month * traffic.input_tokens_per_request / _check_positive(
        "input_tokens_per_s", input_tokens_per_s)
    steps = max(traffic.output_tokens_per_request - 1.0, 0.0)
    if steps:
        if decode_tokens_per_s is None:
            raise LeaninferError("the traffic has more than one output token per request: give decode_tokens_per_s "
                                 "(a generation result)")
        busy += traffic.requests_per_month * steps / _check_positive("decode_tokens_per_s", decode_tokens_per_s)
    month_s = HOURS_PER_MONTH * SECONDS_PER_HOUR
    instances = max(1, math.ceil(busy / (month_s * cap) - 1e-12))
    return MonthlyCost(
        busy_seconds_per_month=busy,
        utilization=busy / (month_s * instances),
        instances=instances,
        usd_per_month=price * HOURS_PER_MONTH * instances,
        usd_per_month_busy_only=usd_for_busy_seconds(price, busy),
    )
