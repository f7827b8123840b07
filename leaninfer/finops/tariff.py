"""What a served variant costs: measured on this machine, from its own engine time.

- ``typical`` seconds per token (input: prefill or embedding; output: decode), an EWMA over settled requests:
  it ranks variants for routing and prices the FP32 counterfactual.
- the worst case of a request, ``fixed + input x per_input + output x per_output`` seconds, from batch-1
  calibration at start-up (a 1-token and a 32-token request: nothing shares the call, so a token costs the
  most it can), times a safety margin, times ``scale``: raised to the ratio whenever a request took longer
  than predicted, and easing back towards 1 by 1% per request after (one stall must not inflate every later
  reservation). Reservations price it; a request is never charged more than its reservation.
Seconds become money at the server's $/hour, so the ranking holds whatever the price.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..cost import usd_for_busy_seconds
from .money import to_nano

SAFETY = 1.5  # a reservation allows 1.5x the predicted worst case
SCALE_EASE = 0.99
ALPHA = 0.1  # EWMA weight of the newest request


@dataclass
class Tariff:
    """Rates of one served variant, in engine seconds (priced at ``usd_per_hour``)."""

    usd_per_hour: float
    typical_input_s: float = 0.0  # per token
    typical_output_s: float = 0.0
    request_busy_s: float = 0.0  # EWMA of one request's busy time: the queue's expected drain per request
    fixed_s: float = 0.0  # the worst-case model: per request ...
    per_input_s: float = 0.0  # ... per input token ...
    per_output_s: float = 0.0  # ... per output token (one batch-1 decode step)
    scale: float = 1.0  # how far the worst-case model has been exceeded (>= 1)
    n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def calibrate(self, one: tuple[float, float, int], many: tuple[float, float, int], n_many: int) -> None:
        """From batch-1 runs of 1 and ``n_many`` input tokens: ``(busy input s, busy output s, output tokens)``."""
        (in1, out1, k1), (in_n, out_n, k_n) = one, many
        self.per_input_s = max(0.0, (in_n - in1) / (n_many - 1))
        self.fixed_s = max(0.0, in1 - self.per_input_s)
        steps = [out / k for out, k in ((out1, k1), (out_n, k_n)) if k]
        self.per_output_s = max(steps, default=0.0)
        self.observe(n_many, k_n, in_n, out_n)

    def predicted_s(self, input_tokens: int, output_tokens: int) -> float:
        return self.fixed_s + input_tokens * self.per_input_s + output_tokens * self.per_output_s

    def observe(self, input_tokens: int, output_tokens: int, busy_input_s: float, busy_output_s: float) -> None:
        busy = busy_input_s + busy_output_s
        with self._lock:
            a = 1.0 if self.n == 0 else ALPHA
            if input_tokens:
                self.typical_input_s += a * (busy_input_s / input_tokens - self.typical_input_s)
            if output_tokens:
                self.typical_output_s += (1.0 if not self.typical_output_s else ALPHA) * (
                    busy_output_s / output_tokens - self.typical_output_s)
            self.request_busy_s += a * (busy - self.request_busy_s)
            predicted = self.predicted_s(input_tokens, output_tokens)
            if predicted > 0:
                self.scale = max(1.0, self.scale * SCALE_EASE, busy / predicted)
            self.n += 1

    def worst_nusd(self, input_tokens: int, output_tokens: int) -> int:
        """The most a request of these tokens may cost: its reservation."""
        seconds = SAFETY * self.scale * self.predicted_s(input_tokens, output_tokens)
        return to_nano(usd_for_busy_seconds(self.usd_per_hour, seconds))

    def typical_nusd(self, input_tokens: int, output_tokens: int) -> int:
        seconds = input_tokens * self.typical_input_s + output_tokens * self.typical_output_s
        return to_nano(usd_for_busy_seconds(self.usd_per_hour, seconds))

    def cost_nusd(self, input_tokens: int, output_tokens: int, busy_input_s: float,
                  busy_output_s: float) -> tuple[int, int]:
        """What a request costs, input and output: the engine time it took, at this machine's price."""
        return (to_nano(usd_for_busy_seconds(self.usd_per_hour, busy_input_s)),
                to_nano(usd_for_busy_seconds(self.usd_per_hour, busy_output_s)))

    def rank_key(self) -> tuple[float, float]:
        """Dollars per token (an input token plus an output token, typically), then seconds per token: lower
        is cheaper. In dollars first, so that a local variant and an upstream priced per token compare; the
        seconds order local variants when the machine's price is 0."""
        seconds = self.typical_input_s + self.typical_output_s
        return usd_for_busy_seconds(self.usd_per_hour, seconds), seconds

    def basis(self) -> str:
        return f"engine busy seconds x ${self.usd_per_hour:g}/h"
