"""Upstream variants priced per token: an exact worst case, a charge at the tariff, and one ranking with local
variants in dollars per token (routes choose across engines on declared quality)."""

from __future__ import annotations

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.finops.price_list import PriceList
from leaninfer.finops.routing import Router
from leaninfer.finops.tariff import Tariff
from leaninfer.finops.token_tariff import TokenTariff
from leaninfer.finops.variant import Variant


def prices(p_in: float, p_out: float = 0.0, quality: dict | None = None, task: str = "embedding") -> PriceList:
    return PriceList(model="m", task=task, usd_per_1k_input_tokens=p_in, usd_per_1k_output_tokens=p_out,
                     source="list", quality=quality)


def local(name: str, usd_per_hour: float, s_per_token: float, quality=None, source="minilm") -> Variant:
    tariff = Tariff(usd_per_hour, typical_input_s=s_per_token)
    return Variant(name, "embedding", name, tariff, quality, source, quality is None, lambda: 0)


def upstream(name: str, p: PriceList | None) -> Variant:
    return Variant.for_upstream(name, p.task if p else "embedding", f"http://{name}/v1", "m", TokenTariff(p, "t.yaml"),
                                lambda: 0)


def test_the_reservation_is_the_exact_worst_case_and_the_charge_the_tariff():
    t = TokenTariff(prices(0.5, 1.5, task="causal-lm"), "t.yaml")
    assert t.cost_nusd(10, 4) == (5_000_000, 6_000_000)
    assert t.worst_nusd(10, 4) == sum(t.cost_nusd(10, 4)) == 11_000_000
    assert t.cost_nusd(9, 3) < t.cost_nusd(10, 4)  # fewer tokens than reserved: charged less, never more
    assert TokenTariff(None, "free").worst_nusd(10**9, 10**9) == 0


def test_local_and_upstream_rank_in_dollars_per_token():
    # local: 1 ms a token at $36/h = $0.00001 a token; upstream A: $0.005/1K = $0.000005; B: $0.02/1K = $0.00002
    lo = local("minilm", 36.0, 0.001)
    a, b = upstream("a", prices(0.005, quality={"sts_drop_pts": 0.2})), upstream("b", prices(0.02, quality={}))
    assert a.tariff.rank_key() < lo.tariff.rank_key() < b.tariff.rank_key()
    router = Router({v.name: v for v in (lo, a, b)}, ["embed=auto:max_sts_drop=0.5"])
    names = [v.name for v in router.candidates("embed")[0]]
    assert names == ["a", "minilm"]  # b declares no sts figure: it never meets the floor
    a.tariff.prices = prices(0.05, quality={"sts_drop_pts": 0.2})  # dearer than the machine now
    assert [v.name for v in router.candidates("embed")[0]] == ["minilm", "a"]


def test_an_upstream_qualifies_only_on_declared_quality():
    lo = local("minilm", 1.0, 0.001)
    bad = upstream("bad", prices(0.001, quality={"sts_drop_pts": 2.0}))
    silent = upstream("silent", prices(0.001))
    router = Router({v.name: v for v in (lo, bad, silent)}, ["embed=auto:max_sts_drop=0.5"])
    assert [v.name for v in router.candidates("embed")[0]] == ["minilm"]
    # upstreams don't count as a second source of the route's model (only local variants must share one)
    router = Router({"bad": bad, "silent": silent, "x": local("x", 1.0, 0.001, source="other")},
                    ["embed=auto:max_sts_drop=3"])
    assert [v.name for v in router.candidates("embed")[0]] == ["x", "bad"]  # $2.8e-7 a token before $1e-6
    with pytest.raises(LeaninferError, match="no served embedding variant meets"):
        Router({"bad": bad, "silent": silent}, ["embed=auto:max_sts_drop=0.5"])
