"""Results handed from a worker thread (an engine lane, the ledger writer) to the event loops that await them.

One ``call_soon_threadsafe`` per loop and batch, not one per future: each writes to the loop's self-pipe and
wakes it, and under load a batch holds dozens of requests. A loop that has closed meanwhile has nobody waiting
on it, so its results are dropped rather than raising in the worker thread (which would kill it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


def settle(results: Iterable[tuple[asyncio.Future, BaseException | None]]) -> None:
    """Resolve each future with ``None`` or fail it with its exception, on its own loop; callable from any
    thread. A future already done (its request cancelled) is left as it is."""
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list]] = {}
    for fut, exc in results:
        loop = fut.get_loop()
        by_loop.setdefault(id(loop), (loop, []))[1].append((fut, exc))
    for loop, batch in by_loop.values():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, batch)
        except RuntimeError:  # the loop is closed
            pass


def _settle_on_loop(batch: list[tuple[asyncio.Future, BaseException | None]]) -> None:
    for fut, exc in batch:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
