"""The embeddings dispatch policy (``core.dispatch_wait``) on synthetic arrival times, and the engine using it: a
lone request is taken at once, however long ``--max-wait-ms`` allows."""

from __future__ import annotations

import asyncio

import pytest

from leaninfer.engines import engine as engine_mod
from leaninfer.engines.core import ArrivalRate, RecentPeak, dispatch_wait, fill_target, lanes_for_load

from .fakes import FakeEmbedModel, engine_of

MAX_WAIT, QUIET = 0.020, 0.003


def decide(now, queued, window_start, newest, rate, call_s, full=16, fraction=1.0):
    return dispatch_wait(now, queued, full, window_start, newest, rate, call_s, fraction, MAX_WAIT, QUIET)


def stream(rate: ArrivalRate, times) -> float:
    for t in times:
        rate.add(t)
    return times[-1]


def test_arrival_rate_reads_a_steady_stream_and_fades_once_it_stops():
    r = ArrivalRate(tau_s=0.1)
    last = stream(r, [k * 0.002 for k in range(500)])  # 500 texts/s for a second
    assert r.rate(last) == pytest.approx(500, rel=0.05)
    assert r.rate(last + 0.1) == pytest.approx(500 / 2.718, rel=0.05)
    assert r.rate(last + 1.0) < 0.05
    r.add(last + 1.0, texts=16)  # one request of 16 texts counts 16
    assert r.rate(last + 1.0) == pytest.approx(160, rel=0.01)
    assert ArrivalRate(0.1).rate(123.0) == 0.0


def test_the_recent_peak_of_texts_in_the_system_slides_with_time():
    p = RecentPeak(window_s=1.0)
    for t, in_system in [(0.0, 1), (0.1, 32), (0.2, 17), (0.9, 5), (1.5, 2)]:
        p.add(t, in_system)
    assert p.peak(0.95) == 32
    assert p.peak(1.25) == 5  # 32 and 17 are over a second old
    assert p.peak(3.0) == 0
    assert RecentPeak(1.0).peak(0.0) == 0


@pytest.mark.parametrize(("peak", "lanes", "full", "active"), [
    (0, 2, 1, 1), (1, 2, 1, 1),  # a lone request: its batch is full as it is, one lane
    (2, 2, 2, 1), (8, 2, 8, 1), (31, 2, 31, 1),  # a few clients: one lane on every core gathers them
    (32, 2, 16, 2), (500, 2, 16, 2),  # a full batch in the system: the lanes pair up, 16 each at most
    (32, 1, 32, 1),
])
def test_the_batch_worth_waiting_for_and_the_lanes_follow_the_texts_in_the_system(peak, lanes, full, active):
    assert lanes_for_load(peak, lanes, 32) == active
    assert fill_target(peak, active, 32) == full


def test_with_batches_of_one_two_requests_at_once_pair_the_lanes():
    assert lanes_for_load(1, 2, 1) == 1 and lanes_for_load(2, 2, 1) == 2


def test_a_lone_request_at_an_idle_engine_goes_at_once():
    r = ArrivalRate(0.1)
    r.add(5.0)  # the first text in a long while
    assert decide(5.0, 1, 5.0, 5.0, r.rate(5.0), call_s=0.0) == 0.0  # no call timed yet
    assert decide(5.0, 1, 5.0, 5.0, r.rate(5.0), call_s=0.005) == 0.0


@pytest.mark.parametrize(("round_trip_s", "call_s"), [(0.005, 0.004), (0.0023, 0.0014)])
def test_one_client_in_a_closed_loop_never_waits(round_trip_s, call_s):
    # one request per round trip (minilm FP32 and ORT INT8, one text): the batch can't fill, so waiting is lost
    r = ArrivalRate(0.1)
    now = stream(r, [k * round_trip_s for k in range(400)])
    assert decide(now, 1, now, now, r.rate(now), call_s) == 0.0


def test_a_cohort_coming_back_under_load_is_waited_for_until_a_pause():
    # 32 clients, 2 lanes: ~550 texts/s, and a lane's call of 16 texts on one thread takes ~45 ms
    r = ArrivalRate(0.1)
    now = stream(r, [k / 550 for k in range(550)])
    free = now + 0.001
    r.add(free + 0.0005)  # the first of the answered cohort is back
    left = decide(free + 0.001, 1, free, free + 0.0005, r.rate(free + 0.001), call_s=0.045)
    assert 0 < left <= MAX_WAIT
    # arrivals keep coming: the wait goes on until a pause of QUIET
    last = free + 0.004
    assert decide(last + 0.001, 6, free, last, r.rate(last), 0.045) == pytest.approx(QUIET - 0.001)
    assert decide(last + QUIET, 6, free, last, r.rate(last), 0.045) == 0.0  # the pause: take what is there
    assert decide(last + 0.001, 16, free, last, r.rate(last), 0.045) == 0.0  # or full: at once
    assert decide(free + MAX_WAIT, 2, free, free + MAX_WAIT, 1e6, 0.045) == 0.0  # never past --max-wait-ms


def test_the_wait_follows_the_fill_fraction_and_the_call_time():
    # 15 missing texts at 500/s: 30 ms to fill
    assert decide(1.0, 1, 1.0, 1.0, 500.0, call_s=0.030, fraction=1.0) > 0
    assert decide(1.0, 1, 1.0, 1.0, 500.0, call_s=0.030, fraction=0.5) == 0.0
    assert decide(1.0, 1, 1.0, 1.0, 500.0, call_s=0.010, fraction=1.0) == 0.0  # short calls: waiting costs more


def test_after_the_load_stops_a_lone_request_goes_at_once_again():
    r = ArrivalRate(0.1)
    now = stream(r, [k / 550 for k in range(550)])
    assert decide(now, 1, now, now, r.rate(now), 0.045) > 0  # still under load
    later = now + 1.0
    r.add(later)
    assert decide(later, 1, later, later, r.rate(later), 0.045) == 0.0


def test_the_engine_takes_a_lone_request_without_waiting(monkeypatch):
    decisions = []
    real = engine_mod.dispatch_wait

    def spy(*args):
        decisions.append(real(*args))
        return decisions[-1]

    monkeypatch.setattr(engine_mod, "dispatch_wait", spy)
    model = FakeEmbedModel(lanes=2)
    # a wait of up to a minute allowed: the old rule held a lone request for all of it
    eng = engine_of(model, max_wait_ms=60_000)

    async def main():
        eng.start()
        try:
            out = []
            for n in (1, 1, 3):  # one after another, each alone
                vecs, meter = await asyncio.wait_for(eng.embed([[5, 6, 7]] * n), timeout=30)
                out.append(vecs.shape)
            return out
        finally:
            eng.stop()

    assert asyncio.run(main()) == [(1, 4), (1, 4), (3, 4)]
    assert decisions and all(d == 0.0 for d in decisions)
    assert [c["rows"] for c in model.calls] == [1, 1, 3]
    assert all(c["lane"] == 0 and c["share"] == 1 for c in model.calls)  # lane 0, every core
