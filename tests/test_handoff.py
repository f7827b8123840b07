"""Results handed from a worker thread to event loops: one wake-up per loop and batch, none to a closed loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from leaninfer.handoff import settle


def test_settle_resolves_each_future_on_its_loop_with_one_wake_up_per_batch():
    async def main():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(4)]
        futs[3].cancel()  # its request gave up: left as it is
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(a), real(*a))[1]
        err = ValueError("row refused")
        worker = threading.Thread(target=settle, args=([(futs[0], None), (futs[1], err), (futs[2], None),
                                                        (futs[3], None)],))
        worker.start()
        worker.join()
        done = await asyncio.gather(*futs[:3], return_exceptions=True)
        return done, len(wakeups), futs[3].cancelled()

    done, wakeups, cancelled = asyncio.run(main())
    assert done[0] is None and done[2] is None and isinstance(done[1], ValueError)
    assert wakeups == 1 and cancelled


def test_settle_skips_a_closed_loop_without_raising_in_the_worker():
    closed = asyncio.new_event_loop()
    orphan = closed.create_future()
    closed.close()

    async def main():
        fut = asyncio.get_running_loop().create_future()
        worker = threading.Thread(target=settle, args=([(orphan, None), (fut, None)],))
        worker.start()
        worker.join()
        return await asyncio.wait_for(fut, timeout=10)

    assert asyncio.run(main()) is None  # the live loop's future still resolved
    assert not orphan.done()
    with pytest.raises(RuntimeError):
        closed.call_soon_threadsafe(print)  # (the premise: a closed loop refuses work)
