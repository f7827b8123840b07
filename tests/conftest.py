"""Shared fixtures: tiny models built from configs (no network), the bundled minilm, device parametrization."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in ("torchao", "nncf", "transformers"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_CUDA = _cuda()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(scope="session")
def minilm():
    import leaninfer

    return leaninfer.load("minilm")


@pytest.fixture(scope="session")
def tiny_bert():
    import leaninfer

    return leaninfer.load("random:tiny-bert")


@pytest.fixture(scope="session")
def tiny_gpt2():
    import leaninfer

    return leaninfer.load("random:tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama():
    import leaninfer

    return leaninfer.load("random:tiny-llama")


@pytest.fixture(scope="session")
def gpt2_int8_artifact(tmp_path_factory):
    """random:gpt2 with torch.ao dynamic INT8 Linears, saved: (artifact path, the handle it was built as)."""
    import leaninfer

    r = leaninfer.optimize("random:gpt2", "int8:method=torch-dynamic", tmp_path_factory.mktemp("gpt2") / "int8")
    return r.path, r.model
