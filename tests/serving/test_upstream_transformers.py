"""``transformers serve`` (a third-party engine, started here on a tiny random GPT-2 saved to a temporary folder,
offline) behind a leaninfer front: the openai client, streaming and not, charged on the usage it reports.

Its streams end without ``[DONE]`` and carry ``usage`` on the last content chunk (with the finish reason): the
front takes the usage off that chunk, ends the stream itself, and hands the usage only to a client that asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leaninfer.benchmarks.load.launch import stop_server, wait_healthy
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.money import to_nano
from leaninfer.finops.price_list import PriceList, save_price_list
from leaninfer.serving.app import ServerConfig, create_app
from leaninfer.serving.upstreams import parse_upstream

from .test_server import free_port
from .test_upstream import make_key, wait_rows
from .upstream_fakes import serving

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # transformers serve as a process
EXE = Path(sys.executable).parent / "transformers"
P_IN, P_OUT = 1.0, 2.0


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory, tiny_gpt2):
    if not EXE.exists() and shutil.which("transformers") is None:
        pytest.skip("the transformers CLI is not installed")
    folder = tmp_path_factory.mktemp("tf") / "tiny-gpt2"
    tiny_gpt2.module.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = folder.parent / "transformers-serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(EXE if EXE.exists() else "transformers"), "serve", str(folder), "--device",
                                 "cpu", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, "transformers serve", log, timeout_s=120)
        yield url, str(folder)
    finally:
        stop_server(proc)


def test_transformers_serve_behind_a_front(transformers_serve, tmp_path):
    from openai import OpenAI

    url, model_id = transformers_serve
    tariff = save_price_list(PriceList(model=model_id, task="causal-lm", usd_per_1k_input_tokens=P_IN,
                                       usd_per_1k_output_tokens=P_OUT, source="measured"), tmp_path / "t.yaml")
    store = str(tmp_path / "ledger.db")
    cfg = ServerConfig(upstreams=[parse_upstream(f"tf={url}/v1,tariff={tariff}")],
                       finops=FinOpsConfig(auth="keys", store=store))
    key = make_key(store)
    with serving(create_app({}, cfg), lifespan="on") as front:
        client = OpenAI(base_url=f"{front}/v1", api_key=key, max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        whole = client.chat.completions.create(model="tf", messages=msgs, max_tokens=5)
        plain = list(client.chat.completions.create(model="tf", messages=msgs, max_tokens=5, stream=True))
        counted = list(client.chat.completions.create(model="tf", messages=msgs, max_tokens=5, stream=True,
                                                      stream_options={"include_usage": True}))
        text = client.completions.create(model="tf", prompt="hello", max_tokens=4)
    assert whole.model == "tf" and whole.usage.completion_tokens == 5 and whole.usage.prompt_tokens > 0
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"
    usage = counted[-1].model_dump()["usage"]
    assert counted[-1].choices == [] and usage["completion_tokens"] == 5
    assert usage["prompt_tokens"] == whole.usage.prompt_tokens and usage["leaninfer"]["usage_counted_by"] == "upstream"
    assert text.usage.completion_tokens == 4
    answered = [whole.model_dump()["usage"], usage, text.model_dump()["usage"]]
    ledger = wait_rows(store, [u["leaninfer"]["request_id"] for u in answered])
    for u in answered:
        want = to_nano(u["prompt_tokens"] * P_IN / 1000) + to_nano(u["completion_tokens"] * P_OUT / 1000)
        assert to_nano(u["leaninfer"]["cost_usd"]) == ledger[u["leaninfer"]["request_id"]].cost_nusd == want
    plain_rows = [r for r in ledger.values() if r.status == 200 and r.request_id not in
                  {u["leaninfer"]["request_id"] for u in answered}]
    assert [(r.output_tokens, r.cost_nusd > 0) for r in plain_rows] == [(5, True)]  # charged on reported usage
