"""The CPU embedding forward runs as a TorchScript trace (traced_encoder.py): same vectors as eager, eager kept
where tracing fails, rebuilt when the module's weights are swapped."""

from __future__ import annotations

import numpy as np
import torch

import leaninfer
from leaninfer.models import traced_encoder

TEXTS = ["a cat sat on the mat", "hello", "the quick brown fox jumps over the lazy dog " * 3, "a, b; c."]


def _eager(ref: str, monkeypatch):
    monkeypatch.setenv("LEANINFER_TRACE", "0")
    m = leaninfer.load(ref)
    monkeypatch.delenv("LEANINFER_TRACE")
    return m


def test_traced_vectors_equal_eager_in_padded_batches_of_any_shape(monkeypatch):
    eager = _eager("minilm", monkeypatch)
    traced = leaninfer.load("minilm")
    for batch_size in (1, 3, 4):  # padded batches of other sizes and widths than the trace's example
        got, want = traced.embed(TEXTS, batch_size=batch_size), eager.embed(TEXTS, batch_size=batch_size)
        assert np.abs(got - want).max() < 1e-5
    assert traced._encoder.active and not eager._encoder.active


def test_an_encoder_that_does_not_trace_stays_eager(tiny_bert, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("cannot trace this")
    monkeypatch.setattr(torch.jit, "trace", refuse)
    m = leaninfer.load("random:tiny-bert")
    with caplog.at_level("INFO", logger="leaninfer.models"):
        got = m.embed(TEXTS)
    assert not m._encoder.active and "cannot trace this" in caplog.text
    assert np.abs(got - tiny_bert.embed(TEXTS)).max() < 1e-5


def test_a_trace_that_differs_from_eager_is_not_used(monkeypatch):
    monkeypatch.setattr(traced_encoder, "ATOL", -1.0)  # nothing passes the check
    m = leaninfer.load("random:tiny-bert")
    m.embed(TEXTS)
    assert not m._encoder.active


def test_swapped_weights_are_traced_again(monkeypatch):
    eager = _eager("random:tiny-bert", monkeypatch)
    traced = leaninfer.load("random:tiny-bert")
    before = traced.embed(TEXTS)
    for m in (eager, traced):  # a step replaces a weight tensor (as structured pruning does)
        lin = m.module.encoder.layer[0].intermediate.dense
        lin.weight = torch.nn.Parameter(lin.weight.detach() * 3)
    after = traced.embed(TEXTS)
    assert np.abs(after - before).max() > 1e-3  # the new weights are used
    assert np.abs(after - eager.embed(TEXTS)).max() < 1e-5 and traced._encoder.active
