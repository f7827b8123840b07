"""An OpenAI-compatible endpoint seen from outside: its API root, its key, its embeddings (normalised)."""

from __future__ import annotations

import numpy as np
import pytest

from leaninfer.endpoint import EndpointEmbedder, api_key_from_env, base_url_of, open_endpoint
from leaninfer.errors import LeaninferError
from tests.benchmarks.endpoint_fakes import FakeEndpoint, serving


@pytest.mark.parametrize("url, base", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://gw.example.com/openai/v1/", "https://gw.example.com/openai/v1"),
])
def test_the_api_root_of_a_url(url, base):
    assert base_url_of(url) == base


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host/v1", "http://", "127.0.0.1"])
def test_a_url_that_is_not_one_is_named(url):
    with pytest.raises(LeaninferError, match=f"--endpoint '{url}' is not an http"):
        base_url_of(url)


def test_the_key_is_read_from_the_variable_named(monkeypatch):
    monkeypatch.setenv("LEANINFER_TEST_KEY", "sk-1")
    assert api_key_from_env("LEANINFER_TEST_KEY") == "sk-1" and api_key_from_env(None) is None
    monkeypatch.setenv("LEANINFER_TEST_KEY", "")
    with pytest.raises(LeaninferError, match="LEANINFER_TEST_KEY is not set or empty"):
        api_key_from_env("LEANINFER_TEST_KEY")


def test_the_task_comes_from_the_card_or_the_flag():
    with serving(FakeEndpoint()) as url:
        assert open_endpoint(url, "emb").task == "embedding"
        assert open_endpoint(url, "gen", task="causal-lm").task == "causal-lm"


def test_the_endpoints_vectors_are_normalised():
    with serving(FakeEndpoint()) as url:
        emb = EndpointEmbedder(open_endpoint(url, "emb")).embed(["a b", "c", "d e f"], batch_size=2)
    assert emb.shape == (3, 8) and np.allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
