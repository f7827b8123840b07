"""``--upstream NAME=URL[,key_env=VAR][,tariff=FILE]``: every malformed spec, missing variable, unreadable or
missing tariff is refused at start with a message naming the bad part (never the key), and a good one opens."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app as cli
from leaninfer.errors import LeaninferError
from leaninfer.finops.price_list import PriceList, save_price_list
from leaninfer.serving.upstreams import open_upstream, open_upstreams, parse_upstream

SECRET = "sk-upstream-secret-0123456789"


@pytest.fixture
def tariff(tmp_path):
    return str(save_price_list(PriceList(model="Qwen/Qwen2.5-0.5B", task="causal-lm", usd_per_1k_input_tokens=0.1,
                                         usd_per_1k_output_tokens=0.4, source="measured",
                                         quality={"top1_agreement": 0.97}), tmp_path / "t.yaml"))


def test_a_good_spec_parses_and_opens(tariff):
    c = parse_upstream(f"vllm=http://gpu-box:8000,key_env=VLLM_KEY,tariff={tariff},timeout_s=30")
    assert (c.name, c.url, c.key_env, c.timeout_s) == ("vllm", "http://gpu-box:8000/v1", "VLLM_KEY", 30.0)
    u = open_upstream(c, env={"VLLM_KEY": SECRET})
    assert (u.model_id, u.task) == ("Qwen/Qwen2.5-0.5B", "causal-lm")  # from the tariff file
    assert u.client.scrub(f"you sent Bearer {SECRET}!") == "you sent Bearer ***!"
    assert u.tariff.worst_nusd(1000, 1000) == 500_000_000  # $0.1 + $0.4 per 1K
    v = u.variant()
    assert v.upstream and v.quality == {"top1_agreement": 0.97} and v.task == "causal-lm"
    assert "measured tariff" in v.tariff.basis()
    assert parse_upstream("a=https://api.example.com/v1/,tariff=free").url == "https://api.example.com/v1"


@pytest.mark.parametrize("spec, message", [
    ("vllm", "expected NAME=URL"),
    ("vllm=", "expected NAME=URL"),
    ("=http://h", "expected NAME=URL"),
    ("bad name=http://h", "the name 'bad name'"),
    ("a=ftp://h/v1", "is not an http:// or https:// URL"),
    ("a=notaurl", "is not an http:// or https:// URL"),
    ("a=http://user:pw@h/v1", "carries credentials"),
    ("a=http://h/v1?k=1", "must not have a query"),
    ("a=http://h,key_env", "'key_env' is not key=value"),
    ("a=http://h,colour=red", "unknown option 'colour'"),
    ("a=http://h,tariff=x,tariff=y", "tariff is given twice"),
    ("a=http://h,key_env=sk-123", "key_env='sk-123' is not an environment variable's name"),
    ("a=http://h,timeout_s=-1", "timeout_s"),
    ("a=http://h,task=vision", "task"),
])
def test_a_malformed_spec_names_its_bad_part(spec, message):
    with pytest.raises(LeaninferError, match="--upstream") as e:
        parse_upstream(spec)
    assert message in str(e.value)


def test_start_up_refusals_name_the_cause(tariff, tmp_path):
    def refused(spec: str, env=None) -> str:
        with pytest.raises(LeaninferError) as e:
            open_upstream(parse_upstream(spec), env=env or {})
        return str(e.value)

    # no tariff: never priced at $0 silently
    msg = refused("vllm=http://h:8000/v1")
    assert "no tariff=FILE" in msg and "tariff=free" in msg and "leaninfer bench --endpoint" in msg
    msg = refused(f"vllm=http://h/v1,key_env=VLLM_KEY,tariff={tariff}", env={"OTHER": SECRET})
    assert "environment variable VLLM_KEY is not set" in msg and SECRET not in msg
    assert "tariff file" in refused(f"vllm=http://h/v1,tariff={tmp_path / 'missing.yaml'}")
    (tmp_path / "bad.yaml").write_text("model: m\nsource: list\n")  # no price
    assert "usd_per_1k_input_tokens" in refused(f"vllm=http://h/v1,tariff={tmp_path / 'bad.yaml'}")
    assert "prices 'Qwen/Qwen2.5-0.5B'" in refused(f"vllm=http://h/v1,tariff={tariff},model=other")
    assert "says causal-lm" in refused(f"vllm=http://h/v1,tariff={tariff},task=embedding")
    assert "task=embedding or task=causal-lm" in refused("vllm=http://h/v1,tariff=free")


def test_tariff_free_meters_at_zero_on_purpose_and_says_so():
    u = open_upstream(parse_upstream("api=http://h/v1,tariff=free,task=embedding,model=text-embed"))
    assert u.model_id == "text-embed" and u.tariff.worst_nusd(10**6, 0) == 0
    assert "priced at $0 on purpose" in u.tariff.basis()
    assert u.variant().quality is None  # nothing declared: no route's floor admits it


def test_names_must_be_unique_among_models_and_upstreams(tariff):
    c = parse_upstream(f"minilm=http://h/v1,tariff={tariff}")
    with pytest.raises(LeaninferError, match="'minilm'|minilm: the name is already served"):
        open_upstreams([c], taken=["minilm"])
    with pytest.raises(LeaninferError, match="already served"):
        open_upstreams([c, c], taken=[])


@pytest.mark.parametrize("args, message", [
    (["serve"], "nothing to serve"),
    (["serve", "--upstream", "a=http://h/v1"], "no tariff=FILE"),
    (["serve", "--upstream", "a=http://h/v1,tariff=free,task=embedding,key_env=NO_SUCH_VAR_X"],
     "NO_SUCH_VAR_X is not set"),
    (["serve", "--upstream", "a=http://h/v1,tariff=free", "--ray"], "not served on --ray"),
])
def test_the_cli_refuses_with_one_line_and_exit_2(args, message, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_X", raising=False)
    r = CliRunner().invoke(cli, [*args, "--store", "none"])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
