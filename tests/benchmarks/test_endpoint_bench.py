"""``leaninfer bench --endpoint`` and ``--compare-tariffs`` against a fake OpenAI-compatible endpoint served on
127.0.0.1 (endpoint_fakes): the real load generator and HTTP client, short levels. What is asserted is what the
tariff and the report are made of, never how fast anything ran."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.finops.price_list import PriceList, load_price_list, save_price_list

from .endpoint_fakes import FakeEndpoint, serving

runner = CliRunner()
QUICK = ["--concurrency", "1,3", "--duration-s", "0.3", "--usd-per-hour", "3.6"]


def bench(*args: str):
    return runner.invoke(app, ["bench", *args])


@pytest.fixture(scope="module")
def fake():
    f = FakeEndpoint()
    with serving(f) as url:
        f.url = url
        yield f


def _machine_usd(level: dict, usd_per_hour: float = 3.6) -> float:
    return usd_per_hour * level["duration_s"] / 3600


def test_an_embedding_tariff_from_the_sweep(fake, tmp_path):
    # the whole hour priced (by default a local endpoint's hour is priced less the client's CPU share)
    r = bench("--endpoint", fake.url, "--model", "emb", *QUICK, "--out", str(tmp_path), "--keep-client-cpu")
    assert r.exit_code == 0, r.output
    t = load_price_list(tmp_path / "tariff-emb.yaml")
    assert "usd_per_1k_input_tokens_with_client" not in t.level
    assert (t.model, t.task, t.source, t.usd_per_hour, t.hardware) == ("emb", "embedding", "measured", 3.6, None)
    assert [lv["concurrency"] for lv in t.levels] == [1, 3] and t.level["concurrency"] in (1, 3)
    sat = t.level
    tokens = sat["input_tokens_per_s"] * sat["duration_s"]
    assert tokens > 0 and sat["errors"] == 0
    assert t.usd_per_1k_input_tokens == pytest.approx(_machine_usd(sat) / tokens * 1000)  # machine $ / tokens
    assert t.usd_per_1k_output_tokens == 0.0
    assert sat["latency_p50_ms"] is not None and sat["latency_p99_ms"] >= sat["latency_p50_ms"]
    assert "metered_usd" not in sat  # the fake sends no meter: none is made up
    report = (tmp_path / "report.md").read_text()
    assert "## Levels" in report and "## Tariff" in report and "tariff-emb.yaml" in report
    assert json.loads((tmp_path / "report.json").read_text())["tariff"]["model"] == "emb"
    assert {b["model"] for path, b in fake.requests if path == "/v1/embeddings"} == {"emb"}


def test_a_generation_tariff_splits_the_hour_by_a_prefill_probe(fake, tmp_path):
    fake.requests.clear()
    r = bench("--endpoint", fake.url, "--model", "gen", "--task", "causal-lm", "--gen-tokens", "6", *QUICK,
              "--out", str(tmp_path), "--tariff-out", str(tmp_path / "gen.yaml"), "--keep-client-cpu")
    assert r.exit_code == 0, r.output
    t = load_price_list(tmp_path / "gen.yaml")
    assert t.task == "causal-lm" and t.usd_per_1k_output_tokens > 0 and t.usd_per_1k_input_tokens > 0
    chats = [b for path, b in fake.requests if path == "/v1/chat/completions"]
    assert {b["max_tokens"] for b in chats} == {1, 6}  # the probes and the decode levels
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in chats)
    for lv in t.levels:  # at every level the prices charge exactly the machine's cost of it
        charged = (lv["input_tokens_per_s"] * lv["usd_per_1k_input_tokens"]
                   + lv["output_tokens_per_s"] * lv["usd_per_1k_output_tokens"]) * lv["duration_s"] / 1000
        assert charged == pytest.approx(_machine_usd(lv))
        assert lv["prefill_probe"]["requests"] > 0 and lv["ttft_p50_ms"] is not None and lv["itl_p50_ms"] is not None
        probe = lv["prefill_probe"]
        assert lv["usd_per_1k_input_tokens"] == pytest.approx(3.6 / 3600 / probe["input_tokens_per_s"] * 1000)


def test_a_local_endpoints_hour_is_priced_less_the_clients_cpu_share(fake, tmp_path):
    r = bench("--endpoint", fake.url, "--model", "emb", *QUICK, "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    t = load_price_list(tmp_path / "tariff-emb.yaml")
    for lv in t.levels:
        assert 0 < lv["client_cpu_share"] < 1
        assert lv["usd_per_1k_input_tokens"] == pytest.approx(
            lv["usd_per_1k_input_tokens_with_client"] * (1 - lv["client_cpu_share"]))
        assert lv["usd_per_1k_input_tokens_with_client"] == pytest.approx(
            _machine_usd(lv) / (lv["input_tokens_per_s"] * lv["duration_s"]) * 1000)
    assert "deducted" in (tmp_path / "report.md").read_text()


def test_a_leaninfer_meter_is_reported_beside_the_tariff(tmp_path):
    fake = FakeEndpoint(meter_usd_per_token=2e-6)
    with serving(fake) as url:
        r = bench("--endpoint", url, "--model", "emb", *QUICK, "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "report.json").read_text())
    for lv in doc["levels"]:
        assert lv["metered_usd_per_1k_input_tokens"] == pytest.approx(2e-3)
        assert lv["metered_usd_over_machine_usd"] == pytest.approx(lv["metered_usd"] / _machine_usd(lv))
    assert doc["warm_up"]["metered_usd"] > 0 and "metered / machine" in (tmp_path / "report.md").read_text()


def test_the_key_comes_from_the_environment_variable_named(tmp_path, monkeypatch):
    fake = FakeEndpoint(key="sk-test")
    with serving(fake) as url:
        refused = bench("--endpoint", url, "--model", "emb", *QUICK, "--out", str(tmp_path / "a"))
        monkeypatch.setenv("FAKE_KEY", "sk-test")
        ok = bench("--endpoint", url, "--model", "emb", *QUICK, "--key-env", "FAKE_KEY", "--out", str(tmp_path / "b"))
    assert refused.exit_code != 0 and "401" in refused.output and "--key-env" in refused.output
    assert not (tmp_path / "a").exists()
    assert ok.exit_code == 0, ok.output
    assert "sk-test" not in (tmp_path / "b" / "report.json").read_text()  # the key is never written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (lambda u: ["--endpoint", u, "--model", "nope", *QUICK],
     "--model 'nope' is not served at .*it lists: broken, emb"),
    (lambda u: ["--endpoint", u, "--model", "gen", *QUICK], "does not say which task 'gen' serves: give --task"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--task", "causal-lm", *QUICK], "contradicts the endpoint"),
    (lambda u: ["--endpoint", u, "--model", "gen", "--task", "chat", *QUICK],
     r"--task: .*'embedding' or 'causal-lm' \(got 'chat'\)"),
    (lambda u: ["--endpoint", u, "--model", "broken", *QUICK], "every warm-up request .* failed: 500"),
    (lambda u: ["--endpoint", u, "--model", "no-usage", *QUICK], "without token counts"),
    (lambda u: ["--endpoint", f"http://127.0.0.1:{_free_port()}", "--model", "emb", *QUICK], "can't connect"),
    (lambda u: ["--endpoint", "localhost:8000", "--model", "emb", *QUICK], "'localhost:8000' is not an http"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--concurrency", "1,x"], "--concurrency takes integers"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--concurrency", "0", "--usd-per-hour", "1"], "--concurrency"),
    (lambda u: ["--endpoint", u, "--model", "emb"], "--hardware PROFILE .* or --usd-per-hour"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--hardware", "nope"], "unknown hardware profile 'nope'"),
    (lambda u: ["--endpoint", u, *QUICK], "--endpoint needs --model"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--variants", "fp16", *QUICK], "--variants don't apply"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--key-env", "LEANINFER_NO_SUCH_VAR", *QUICK],
     "LEANINFER_NO_SUCH_VAR is not set"),
    (lambda u: ["--model", "minilm", "--concurrency", "4"], "--concurrency apply only with --endpoint"),
    (lambda u: ["--endpoint", u, "--model", "emb", "--texts", "/no/such/file", *QUICK],
     "--texts '/no/such/file'"),
])
def test_bad_input_is_one_line_and_writes_nothing(fake, tmp_path, args, message):
    assert "LEANINFER_NO_SUCH_VAR" not in os.environ
    r = bench(*args(fake.url), "--out", str(tmp_path / "out"))
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")  # one line, no traceback
    assert re.search(message, " ".join(r.output.split())), r.output
    assert not (tmp_path / "out").exists()  # no tariff, no report


def test_a_page_that_is_not_an_openai_api_is_named(tmp_path):
    with serving(FakeEndpoint(html=True)) as url:
        r = bench("--endpoint", url, "--model", "emb", *QUICK, "--out", str(tmp_path / "out"))
    assert r.exit_code != 0 and "did not answer like an OpenAI-compatible API" in r.output
    assert not (tmp_path / "out").exists()


def test_a_tariff_out_that_is_a_folder_is_refused_before_the_sweep(fake, tmp_path):
    fake.requests.clear()
    r = bench("--endpoint", fake.url, "--model", "emb", *QUICK, "--tariff-out", str(tmp_path))
    assert r.exit_code != 0 and "is a folder" in r.output
    assert not fake.requests  # refused before the first request


def _tariff(path, **kw) -> str:
    save_price_list(PriceList(**{"model": "m", "task": "causal-lm", "source": "list", **kw}), path)
    return str(path)


def test_compare_tariffs_alone_orders_them_for_the_traffic_given(tmp_path):
    box = _tariff(tmp_path / "box.yaml", usd_per_1k_input_tokens=0.0004, usd_per_1k_output_tokens=0.0008,
                  source="measured")
    api = _tariff(tmp_path / "api.yaml", usd_per_1k_input_tokens=0.0001, usd_per_1k_output_tokens=0.002)
    r = bench("--compare-tariffs", f"{box},{api}", "--prompt-tokens", "2000", "--gen-tokens", "50", "--json")
    assert r.exit_code == 0, r.output
    assert [row["name"] for row in json.loads(r.output)] == ["api.yaml", "box.yaml"]
    r = bench("--compare-tariffs", box, "--compare-tariffs", api, "--prompt-tokens", "100", "--gen-tokens", "1000")
    assert r.exit_code == 0 and r.output.index("box.yaml") < r.output.index("api.yaml")
    assert "Tariffs side by side" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nsource: guessed\n")
    r = bench("--compare-tariffs", f"{box},{bad}")
    assert r.exit_code != 0 and "bad.yaml" in r.output and "source" in r.output
    r = bench("--compare-tariffs", box, "--usd-per-hour", "1")
    assert r.exit_code != 0 and "--usd-per-hour apply only with --endpoint" in r.output


def test_the_report_sets_the_measured_tariff_beside_others(fake, tmp_path):
    api = _tariff(tmp_path / "hosted.yaml", model="emb", task="embedding", usd_per_1k_input_tokens=1e-9)
    r = bench("--endpoint", fake.url, "--model", "emb", *QUICK, "--out", str(tmp_path / "out"),
              "--compare-tariffs", api)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [row["name"] for row in doc["compare"]["rows"]] == ["hosted.yaml", "tariff-emb.yaml (this run)"]
    assert doc["compare"]["input_tokens"] > 0  # priced for the traffic just measured
    assert "hosted.yaml" in (tmp_path / "out" / "report.md").read_text()
