"""Embedding lanes: several model calls at once, each on its share of the cores, metered at that share."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import leaninfer
from leaninfer.engines.engine import PEAK_MEMORY_S

from ..serving.conftest import app_client

pytestmark = pytest.mark.timeout(120)


def _threads_now() -> int:
    import torch

    return torch.get_num_threads()


def test_share_cores_sets_the_calling_thread_only(minilm):
    whole = minilm.max_lanes()
    if whole < 2:
        pytest.skip("one CPU thread: nothing to share")
    seen = {}

    def lane():
        minilm.share_cores(2)
        seen["lane"] = _threads_now()

    t = threading.Thread(target=lane)
    t.start()
    t.join()
    later = threading.Thread(target=lambda: seen.update(later=_threads_now()))
    later.start()
    later.join()
    assert seen == {"lane": whole // 2, "later": whole}
    assert _threads_now() == whole


def test_an_onnx_lane_gets_a_session_of_its_own_with_its_share_of_the_threads(tmp_path, tiny_bert):
    ort_model = leaninfer.optimize(tiny_bert, "onnx", tmp_path / "o").model
    whole = ort_model.max_lanes()
    if whole < 2:
        pytest.skip("one CPU thread: nothing to share")
    enc = tiny_bert.tokenize(["a lane's own session", "gives the same vectors as the shared one"])
    seen = {}

    def lane():
        ort_model.share_cores(2)
        seen["threads"] = ort_model._session().get_session_options().intra_op_num_threads
        seen["vectors"] = ort_model.embed_batch(enc)
        seen["own"] = ort_model._session() is not ort_model.session

    t = threading.Thread(target=lane)
    t.start()
    t.join()
    assert seen["own"] and seen["threads"] == whole // 2
    assert ort_model._session() is ort_model.session  # other threads keep the shared session
    np.testing.assert_allclose(seen["vectors"], ort_model.embed_batch(enc), atol=1e-6)


@pytest.mark.slow
def test_two_lanes_run_two_calls_at_once_same_vectors_metered_at_their_share(minilm, monkeypatch):
    if minilm.max_lanes() < 2:
        pytest.skip("one CPU thread: one lane")
    texts = ["A man is playing a guitar.", "Two dogs run across the snow.", "A woman slices an onion.",
             "The stock market fell sharply today."]
    expected = minilm.embed(texts)
    meet = threading.Barrier(2, timeout=30)  # broken (an error) unless two calls are inside at the same time
    calls: list[str] = []
    threads: list[int] = []  # intra-op threads each call ran with
    real = minilm.embed_batch

    def embed_batch(enc):
        calls.append(threading.current_thread().name)
        threads.append(_threads_now())
        if len(calls) <= 2:
            meet.wait()
            time.sleep(0.5)  # both inside for 0.5 s: metered at 2 x 0.5 / 2 lanes, not 2 x 0.5
        return real(enc)

    monkeypatch.setattr(minilm, "embed_batch", embed_batch)

    async def main():
        # call_overhead_tokens given: the calls that would measure it at start would meet the barrier
        async with app_client({"minilm": minilm}, max_batch_size=1, lanes=2, call_overhead_tokens=100) as c:
            engine = c.app.state.served["minilm"].engine
            assert engine.lanes == 2
            busy = engine.metrics.busy_seconds.labels("minilm")
            call_s = engine.metrics.call_seconds.labels("minilm")
            b0, s0, t0 = busy._value.get(), call_s._value.get(), time.perf_counter()
            first = await asyncio.gather(*(c.post("/v1/embeddings", json={"model": "minilm", "input": t})
                                           for t in texts[:2]))
            wall, metered = time.perf_counter() - t0, busy._value.get() - b0
            calls_wall = call_s._value.get() - s0
            rest = []
            for t in texts[2:]:
                await asyncio.sleep(PEAK_MEMORY_S + 0.1)  # long after the overlap: no longer under load
                rest.append(await c.post("/v1/embeddings", json={"model": "minilm", "input": t}))
        return first + rest, wall, metered, calls_wall

    responses, wall, metered, calls_wall = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 4
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    assert np.allclose(got, expected, atol=1e-5)
    assert {name.rsplit("-", 1)[-1] for name in calls[:2]} == {"minilm", "1"}  # one call on each lane
    assert 0.5 <= metered <= wall  # two calls of >= 0.5 s at once: the machine's time, not twice it
    assert calls_wall >= 1.0 and metered <= 0.75 * calls_wall  # each call's wall time; each held half the machine
    whole = minilm.max_lanes()
    # two texts at once fill two batches of 1: the lanes pair up, the second call on its half (the first too,
    # unless it began before the second request came); one at a time and a while after, every core again (on
    # lane 0: lane 1 only takes work while the load calls for it)
    assert sorted(threads[:2]) in ([whole // 2, whole], [whole // 2, whole // 2]) and threads[2:] == [whole, whole]
    assert [name.rsplit("-", 1)[-1] for name in calls[2:]] == ["minilm", "minilm"]

