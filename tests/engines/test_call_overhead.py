"""An embeddings engine measures what one model call of its model costs, in padded tokens, when it starts: the
trade between cutting a window of texts into more calls and padding them to their longest. The clock is faked:
each call "takes" a known overhead plus a known time per padded token, so the measured figure is exact."""

import logging
import time
import types

import pytest

from leaninfer.engines import engine as engine_mod
from leaninfer.engines.engine import DEFAULT_CALL_OVERHEAD_TOKENS, BatchingConfig, EmbeddingEngine
from leaninfer.engines.metrics import ServerMetrics


def _fake_clock(monkeypatch, model, overhead_tokens: float, per_token_s: float = 1e-4, fail: bool = False):
    now = [0.0]
    calls = []

    def embed_batch(enc):
        if fail:
            raise RuntimeError("no kernel for this shape")
        rows, width = enc["input_ids"].shape
        calls.append((rows, width))
        now[0] += (overhead_tokens + rows * width) * per_token_s
        return None

    monkeypatch.setattr(model, "embed_batch", embed_batch)
    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(perf_counter=lambda: now[0], monotonic=time.monotonic,
                                                                       sleep=time.sleep))
    return calls


def _engine(model, **batching):
    return EmbeddingEngine(model, "m", BatchingConfig(**batching), ServerMetrics(), 0.0)


@pytest.mark.parametrize(("overhead", "kept"), [(0, 8), (4, 8), (24, 24), (100, 100), (5000, 1000)])
def test_the_engine_measures_the_cost_of_a_call_in_padded_tokens(minilm, monkeypatch, overhead, kept):
    calls = _fake_clock(monkeypatch, minilm, overhead)
    eng = _engine(minilm)
    assert eng._measure_call_overhead() == kept  # within [8, 1000]: see MIN_CALL_OVERHEAD_TOKENS
    assert sorted(set(calls)) == [(1, 32), (4, 32)]  # a warm-up and 3 timed calls of each


def test_a_given_overhead_is_used_and_nothing_is_measured(minilm, monkeypatch):
    calls = _fake_clock(monkeypatch, minilm, 50)
    eng = _engine(minilm, call_overhead_tokens=7)
    eng.start()
    try:
        assert eng.call_overhead_tokens == 7 and calls == []
    finally:
        eng.stop()


def test_a_model_that_fails_the_measurement_gets_the_default_and_says_so(minilm, monkeypatch, caplog):
    _fake_clock(monkeypatch, minilm, 10, fail=True)
    eng = _engine(minilm)
    with caplog.at_level(logging.WARNING, logger="leaninfer.serving"):
        assert eng._measure_call_overhead() == DEFAULT_CALL_OVERHEAD_TOKENS
    assert "could not be measured (RuntimeError: no kernel for this shape)" in caplog.text
