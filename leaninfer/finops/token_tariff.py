"""What an upstream variant costs: per token, at the rates of its tariff file (:mod:`.price_list`).

A local variant's :class:`~.tariff.Tariff` prices the engine time it watches; an upstream's engine time is
out of sight, so its requests are priced by their tokens, with the same interface for the gate:

- the reservation is the exact worst case, ``prompt bound x input rate + max_tokens x output rate`` (no margin:
  a request can't be charged more than its tokens, and its tokens more than the bound and max_tokens);
- the charge is the usage the upstream reports (or what was counted without it), at the same rates, never
  more than the reservation (the gate clamps, as for local variants);
- routing ranks it by dollars per token, as it ranks local variants (:meth:`.tariff.Tariff.rank_key`).

``tariff=free`` prices an upstream at $0 on purpose (``prices`` None): its ledger rows say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from .price_list import PriceList


@dataclass
class TokenTariff:
    """Per-token rates of one upstream: ``prices`` from the tariff file ``path`` (None: free on purpose)."""

    prices: PriceList | None
    path: str = ""
    request_busy_s: float = 0.0  # the route's queue SLO sees no upstream queue: it is not ours to see
    usd_per_hour: float = 0.0

    def cost_nusd(self, input_tokens: int, output_tokens: int, busy_input_s: float = 0.0,
                  busy_output_s: float = 0.0) -> tuple[int, int]:
        """What ``input_tokens`` and ``output_tokens`` cost (engine time plays no part)."""
        if self.prices is None:
            return 0, 0
        return self.prices.nusd_parts(input_tokens, output_tokens)

    def worst_nusd(self, input_tokens: int, output_tokens: int) -> int:
        return sum(self.cost_nusd(input_tokens, output_tokens))

    def typical_nusd(self, input_tokens: int, output_tokens: int) -> int:
        return sum(self.cost_nusd(input_tokens, output_tokens))

    def observe(self, input_tokens: int, output_tokens: int, busy_input_s: float, busy_output_s: float) -> None:
        """Nothing to learn: the rates are the file's."""

    def rank_key(self) -> tuple[float, float]:
        if self.prices is None:
            return 0.0, 0.0
        return (self.prices.usd_per_1k_input_tokens + self.prices.usd_per_1k_output_tokens) / 1000, 0.0

    def basis(self) -> str:
        if self.prices is None:
            return "upstream tokens x $0 (tariff=free: priced at $0 on purpose)"
        p = self.prices
        return (f"upstream tokens x ${p.usd_per_1k_input_tokens:g}/1K input + ${p.usd_per_1k_output_tokens:g}/1K "
                f"output ({p.source} tariff {self.path})")
