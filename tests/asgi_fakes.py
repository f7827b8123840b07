"""What the fake OpenAI-compatible servers of the tests share (raw ASGI apps run by uvicorn on 127.0.0.1)."""

from __future__ import annotations

import json


async def read_json(receive):
    """The request's whole body, parsed as JSON (None when empty)."""
    raw = b""
    while True:
        msg = await receive()
        raw += msg.get("body", b"")
        if not msg.get("more_body"):
            return json.loads(raw) if raw else None
