"""Cores follow the load: one lane on every core until the load fills batches, then the lanes pair up, each on
its share of the cores, and collapse back to one full-width lane once the load has been lighter for a while. A
fake model records the share of the cores each lane asked for (``share_cores``) and holds calls open so that
requests arrive while a call runs; the clock is faked."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import pytest

from leaninfer.engines import engine as engine_mod

from .fakes import FakeEmbedModel, engine_of

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(
        perf_counter=lambda: now[0], monotonic=time.monotonic, sleep=time.sleep))
    return now


async def _inside(model) -> None:
    """Until one more call has begun."""
    assert await asyncio.to_thread(model.inside.acquire, True, 30)


def _run(eng, model, scenario):
    async def main():
        eng.start()
        try:
            await scenario()
        finally:
            model.gate = None
            eng.stop()

    asyncio.run(main())
    return [(c["lane"], c["share"], c["rows"]) for c in model.calls]


def test_at_low_load_one_lane_on_every_core_batches_what_arrives_while_it_runs(clock):
    model = FakeEmbedModel(lanes=2)
    model.gate = threading.Semaphore(0)
    eng = engine_of(model, max_batch_size=32)

    async def scenario():
        a = asyncio.ensure_future(eng.embed([[1, 2]]))
        await _inside(model)  # a's call runs on lane 0
        b = asyncio.ensure_future(eng.embed([[3]]))
        c = asyncio.ensure_future(eng.embed([[4]]))
        await asyncio.sleep(0.2)  # lane 1 could take b and c now: it must not, 3 texts don't fill a batch
        assert len(model.calls) == 1
        model.gate.release(2)
        await asyncio.gather(a, b, c)

    # b and c wait for lane 0 and go in one call, on every core
    assert _run(eng, model, scenario) == [(0, 1, 1), (0, 1, 2)]
    assert model.share_requests == [(0, 1), (0, 1)]


def test_lanes_pair_up_when_the_load_fills_batches_and_collapse_after_it(clock):
    model = FakeEmbedModel(lanes=2)
    model.gate = threading.Semaphore(0)
    eng = engine_of(model, max_batch_size=2)  # two texts at once fill a batch: the lanes pair up

    async def scenario():
        a = asyncio.ensure_future(eng.embed([[1, 2]]))  # alone: lane 0, every core
        await _inside(model)
        b = asyncio.ensure_future(eng.embed([[3, 4]]))  # two in the system: lane 1, on its half
        await _inside(model)
        model.gate.release(2)
        await asyncio.gather(a, b)
        clock[0] += engine_mod.PEAK_MEMORY_S / 2  # the load is remembered: a lone call keeps its share
        model.gate.release()
        await eng.embed([[5]])
        clock[0] += engine_mod.PEAK_MEMORY_S + 0.01  # lighter for a while: every core again
        model.gate.release()
        await eng.embed([[6]])

    assert _run(eng, model, scenario) == [(0, 1, 1), (1, 2, 1), (0, 2, 1), (0, 1, 1)]
    # the share each lane asked the model for, in order: lane 1 only ever ran beside lane 0
    assert [s for lane, s in model.share_requests if lane == 1] == [2]
    assert [s for lane, s in model.share_requests if lane == 0] == [1, 2, 1]


def test_one_lane_never_asks_for_a_share(clock):
    model = FakeEmbedModel(lanes=1)
    eng = engine_of(model, lanes=4, max_batch_size=1)  # more lanes asked than the model allows: one

    async def scenario():
        await asyncio.gather(*(eng.embed([[k]]) for k in range(5)))

    calls = _run(eng, model, scenario)
    assert eng.lanes == 1 and model.share_requests == []
    assert {lane for lane, _, _ in calls} == {0} and sum(rows for _, _, rows in calls) == 5
