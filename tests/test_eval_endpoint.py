"""``leaninfer eval --endpoint``: an endpoint's embeddings scored by the same code as a local model's (STS
Spearman, the drop against a local reference, cosine to it), written into a tariff file's ``quality``. The
endpoint is a fake on 127.0.0.1 that embeds with the bundled minilm (then the drop against minilm is 0) or with
vectors unrelated to the text (then it is large)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.finops.price_list import PriceList, load_price_list, save_price_list
from tests.benchmarks.endpoint_fakes import FakeEndpoint, hashed_vectors, serving
from tests.test_evaluate import PAIRS

runner = CliRunner()


@pytest.fixture
def sts_csv(tmp_path):
    p = tmp_path / "sts.csv"
    p.write_text("\n".join(f'"{a}","{b}",{s}' for a, b, s in PAIRS) + "\n")
    return p


@pytest.fixture
def tariff(tmp_path):
    p = tmp_path / "tariff.yaml"
    save_price_list(PriceList(model="emb", task="embedding", usd_per_1k_input_tokens=0.0001, source="measured",
                              usd_per_hour=0.5, quality={"declared_by_hand": 1.0}), p)
    return p


def evaluate_endpoint(*args: str):
    return runner.invoke(app, ["eval", *args])


def test_an_endpoint_serving_the_reference_loses_no_sts_points(minilm, sts_csv, tariff):
    fake = FakeEndpoint(embed=minilm.embed)
    with serving(fake) as url:
        r = evaluate_endpoint("--endpoint", url, "--model", "emb", "--sts", str(sts_csv), "--reference", "minilm",
                              "--tariff", str(tariff), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["sts_spearman"] > 80 and result["sts_drop_pts"] == pytest.approx(0.0, abs=0.05)
    assert result["mean_cosine_to_reference"] == pytest.approx(1.0, abs=1e-4)
    t = load_price_list(tariff)
    assert t.quality["sts_drop_pts"] == pytest.approx(result["sts_drop_pts"])
    assert t.quality["sts_spearman"] == pytest.approx(result["sts_spearman"])
    assert t.quality["declared_by_hand"] == 1.0  # figures already there are kept
    assert t.usd_per_1k_input_tokens == 0.0001 and t.usd_per_hour == 0.5  # nothing else changes


def test_an_endpoint_that_embeds_badly_shows_the_drop(sts_csv, tariff):
    with serving(FakeEndpoint(embed=lambda texts: hashed_vectors(texts, dim=384))) as url:
        r = evaluate_endpoint("--endpoint", url, "--model", "emb", "--sts", str(sts_csv), "--reference", "minilm",
                              "--tariff", str(tariff), "--json")
    assert r.exit_code == 0, r.output
    assert load_price_list(tariff).quality["sts_drop_pts"] > 30  # the floor of a --route would refuse it


def test_sts_alone_writes_the_spearman_and_no_drop(sts_csv, tariff):
    with serving(FakeEndpoint()) as url:
        r = evaluate_endpoint("--endpoint", url, "--model", "emb", "--sts", str(sts_csv), "--tariff", str(tariff))
    assert r.exit_code == 0, r.output
    q = load_price_list(tariff).quality
    assert "sts_spearman" in q and "sts_drop_pts" not in q


@pytest.mark.parametrize("args, message", [
    (["--model", "emb", "--sts", "{sts}", "--reference", "minilm", "--tariff", "{tariff}"],
     "embeds in 384 dimensions, 'emb' .* in 8"),
    (["--model", "other", "--sts", "{sts}", "--tariff", "{tariff}"], "prices 'emb' .*not the embedding model 'other'"),
    (["--model", "gen", "--task", "causal-lm", "--sts", "{sts}"], "is a causal-lm model; STS needs an embedding"),
    (["--model", "nope", "--sts", "{sts}"], "--model 'nope' is not served"),
    (["--sts", "{sts}"], "--endpoint needs --model"),
    (["--model", "emb"], "needs --sts CSV"),
    (["--model", "emb", "--sts", "{sts}", "--tariff", "{tmp}/missing.yaml"], "missing.yaml.*can't read it"),
])
def test_bad_input_is_one_line_and_leaves_the_tariff_alone(sts_csv, tariff, tmp_path, args, message):
    before = tariff.read_bytes()
    with serving(FakeEndpoint()) as url:
        r = evaluate_endpoint("--endpoint", url, *[a.format(sts=sts_csv, tariff=tariff, tmp=tmp_path) for a in args])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, " ".join(r.output.split())), r.output
    assert tariff.read_bytes() == before


def test_a_target_and_an_endpoint_are_one_or_the_other(tariff):
    assert "not both" in evaluate_endpoint("minilm", "--endpoint", "http://127.0.0.1:9/v1").output
    assert "not both" in evaluate_endpoint().output
    r = evaluate_endpoint("minilm", "--tariff", str(tariff))
    assert r.exit_code != 0 and "apply only with --endpoint" in r.output
