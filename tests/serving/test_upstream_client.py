"""The upstream client's reading of a server-sent event stream (leaninfer/engines/upstream.py), on a stub response:
line ends of every kind and at every chunk boundary, and a stream that breaks with events still buffered."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from leaninfer.engines.errors import UpstreamBadResponse
from leaninfer.engines.upstream import Opened, UpstreamClient


class _Content:
    def __init__(self, chunks: list[bytes], buffered: list[bytes] | None = None):
        self.chunks, self._buffer = chunks, list(buffered or [])

    async def _gen(self):
        for c in self.chunks:
            yield c
        if self._buffer:  # as aiohttp's reader: told of a break, it raises before handing over its buffer
            raise aiohttp.ClientPayloadError("Response payload is not completed")

    def iter_any(self):
        return self._gen()


class _Resp:
    def __init__(self, content: _Content):
        self.content = content

    def close(self):
        pass

    def release(self):
        pass


def _events(chunks: list[bytes], buffered: list[bytes] | None = None) -> list[dict]:
    opened = Opened(UpstreamClient("up", "http://x/v1"), _Resp(_Content(chunks, buffered)), 0.0)

    async def collect():
        return [ev async for ev in opened.events()]

    out = asyncio.run(collect())
    assert opened.done
    return out


STREAM = "".join(f'data: {json.dumps({"i": i, "t": "é€"})}{end}{end}' for i, end in
                 enumerate(["\n", "\r\n", "\r", "\n"])) + ": ping\r\n\r\ndata: [DONE]\r\n\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_events_are_read_whatever_the_line_ends_and_chunk_boundaries(size):
    blob = STREAM.encode()
    chunks = [blob[i:i + size] for i in range(0, len(blob), size)]
    assert _events(chunks) == [{"i": i, "t": "é€"} for i in range(4)]


def test_events_buffered_when_the_stream_breaks_are_still_read_then_the_break_raised():
    first, second = b'data: {"i": 0}\n\n', b'data: {"i": 1}\n\n'
    opened = Opened(UpstreamClient("up", "http://x/v1"), _Resp(_Content([first], [second])), 0.0)
    seen = []

    async def collect():
        async for ev in opened.events():
            seen.append(ev)

    with pytest.raises(UpstreamBadResponse) as e:
        asyncio.run(collect())
    assert seen == [{"i": 0}, {"i": 1}] and e.value.code == "upstream_stream_broken" and not opened.done
