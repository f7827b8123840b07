"""Routes: the cheapest served variant whose measured quality meets the floor; fall back when it is overloaded."""

from __future__ import annotations

import asyncio
import json

import pytest

import leaninfer
from leaninfer.errors import LeaninferError
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.routing import parse_route
from leaninfer.finops.store import open_store
from leaninfer.serving.app import ServerConfig, create_app

from .conftest import finops_client

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def int8_minilm(tmp_path_factory, minilm):
    """minilm with dynamic INT8 Linears, its manifest saying it lost 0.3 STS points (as optimize --sts records)."""
    out = tmp_path_factory.mktemp("route") / "minilm-int8"
    leaninfer.optimize(minilm, "int8:method=torch-dynamic", out)
    manifest = json.loads((out / "leaninfer.json").read_text())
    manifest["quality"] = {**(manifest["quality"] or {}), "sts_drop_pts": 0.3}
    (out / "leaninfer.json").write_text(json.dumps(manifest))
    return leaninfer.load(str(out))


def _make_int8_cheaper(client):
    # Ranking follows each variant's measured seconds per token; pin them so this test doesn't depend on
    # which variant this CPU runs faster (the benchmarks measure that).
    v = client.app.state.gate.variants
    v["minilm"].tariff.typical_input_s, v["minilm-int8"].tariff.typical_input_s = 1.0, 0.1


def test_auto_route_serves_the_cheapest_good_enough_variant(minilm, int8_minilm, tmp_path):
    models = {"minilm": minilm, "minilm-int8": int8_minilm}
    body = {"model": "embed", "input": "route me"}

    async def go(route):
        async with finops_client(models, store=str(tmp_path / f"{route[-4:]}.db"), routes=[route]) as c:
            _make_int8_cheaper(c)
            first = await c.post("/v1/embeddings", json=body)
            # overloaded (here: draining) INT8 variant: the route falls back to the next one
            c.app.state.served["minilm-int8"].engine.stop_accepting()
            fallback = await c.post("/v1/embeddings", json=body)
            return first, fallback

    first, fallback = asyncio.run(go("embed=auto:max_sts_drop=0.5"))
    assert first.status_code == 200 and first.json()["model"] == "minilm-int8"
    u = first.json()["usage"]["leaninfer"]
    assert u["route"] == "embed" and u["variant"] == "minilm-int8"
    assert fallback.status_code == 200 and fallback.json()["model"] == "minilm"

    strict, _ = asyncio.run(go("embed=auto:max_sts_drop=0.1"))  # INT8's 0.3-point loss misses it: FP32 serves
    assert strict.json()["model"] == "minilm"


def test_route_records_its_saving_against_fp32(minilm, int8_minilm, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        async with finops_client({"minilm": minilm, "minilm-int8": int8_minilm}, store=store,
                                 routes=["embed=auto:max_sts_drop=0.5"]) as c:
            _make_int8_cheaper(c)
            return await c.post("/v1/embeddings", json={"model": "embed", "input": "route me"})

    r = asyncio.run(go())
    (row,) = open_store(store).rows()
    assert row.route == "embed" and row.served_model == "minilm-int8" and row.requested_model == "embed"
    assert row.fp32_cost_nusd is not None and row.routing_saved_nusd == row.fp32_cost_nusd - row.cost_nusd
    assert r.json()["usage"]["leaninfer"]["request_id"] == row.request_id


@pytest.mark.parametrize("text, message", [
    ("embed", "expected NAME=auto"),
    ("embed=cheapest:max_sts_drop=1", "policy must be 'auto'"),
    ("embed=auto", "sets no quality floor"),
    ("embed=auto:max_sts_drop=-1", "max_sts_drop"),
    ("embed=auto:min_quality=0.9", "valid: min_cosine"),
])
def test_bad_routes_are_named(text, message):
    with pytest.raises(LeaninferError, match=message):
        parse_route(text)


def test_a_route_no_variant_meets_is_refused_at_start(minilm, int8_minilm, tmp_path):
    cfg = ServerConfig(finops=FinOpsConfig(routes=["chat=auto:min_top1_agreement=0.99"]))
    with pytest.raises(LeaninferError, match="no served causal-lm variant meets"):
        create_app({"minilm": minilm, "minilm-int8": int8_minilm}, cfg)
    cfg = ServerConfig(finops=FinOpsConfig(routes=["minilm=auto:max_sts_drop=1"]))
    with pytest.raises(LeaninferError, match="already a served model's name"):
        create_app({"minilm": minilm}, cfg)
