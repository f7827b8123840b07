"""A fake OpenAI-compatible upstream whose behaviour is the model id it is asked for, and a way to serve any ASGI
app (the fake, or a leaninfer front) on 127.0.0.1 from a thread, on a port the OS picks.

Modes (the request's ``model``): ``ok``; ``no-usage`` (never reports usage, streamed or not); ``slow`` (answers
after a minute, unless the client goes first: it records that moment); ``slow-stream`` (one chunk, then silence until the client goes: it records that moment);
``500``; ``429`` (with ``Retry-After: 7``); ``reset`` (drops the connection midway); ``bad-json``;
``echo-key`` (a 400 whose message repeats the Authorization header it got). ``down``: every request is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import uvicorn

from ..asgi_fakes import read_json

PROMPT_TOKENS = 3  # what the fake reports for any prompt
WORDS = 5  # chunks of an ok stream (fewer if max_tokens is smaller): one reported token each


class FakeUpstream:
    def __init__(self):
        self.requests: list[dict] = []  # {"path", "auth", "body"}
        self.disconnected: list[float] = []  # when slow and slow-stream clients went away (time.monotonic)
        self.down = False  # every request answered 503

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = await read_json(receive)
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode()
        path = scope["path"]
        self.requests.append({"path": path, "auth": auth, "body": body})
        mode = body.get("model")
        stream = bool(body.get("stream"))
        if mode == "500":
            return await _json(send, 500, {"error": {"message": "boom", "type": "server_error"}})
        if mode == "429":
            return await _json(send, 429, {"error": {"message": "slow down"}}, [(b"retry-after", b"7")])
        if mode == "echo-key":
            return await _json(send, 400, {"error": {"message": f"rejected: you sent {auth}"}})
        if self.down:
            return await _json(send, 503, {"error": {"message": "down for maintenance"}})
        if mode == "slow":  # nothing for a minute, unless the client goes first
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.disconnected.append(time.monotonic())
                    return
        n = min(WORDS, body.get("max_tokens") or WORDS)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}
        if path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
            tokens = PROMPT_TOKENS * len(inputs)
            out = {"object": "list", "data": data, "model": mode,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        else:
            chat = path.endswith("/chat/completions")
            text = "".join(f"w{i} " for i in range(n))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            out = {"id": "up-1", "object": "chat.completion" if chat else "text_completion", "created": 1,
                   "model": mode, "choices": [choice], "usage": usage}
            if stream:
                return await self._stream(send, mode, chat, n, usage, body, receive)
        if mode == "no-usage":
            out.pop("usage")
        blob = json.dumps(out).encode()
        if mode == "bad-json":
            blob = b'{"object": "list", "data": [oops'
        if mode == "reset":  # promise a body, send half of it, and drop the connection
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(blob)).encode())]})
            await send({"type": "http.response.body", "body": blob[: len(blob) // 2], "more_body": True})
            raise RuntimeError("fake reset")
        await _json(send, 200, blob)

    async def _stream(self, send, mode, chat, n, usage, body, receive):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def event(obj):
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})

        def chunk(i, finish=None):
            piece = f"w{i} " if finish is None else ""
            choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": finish} if chat
                      else {"index": 0, "text": piece, "finish_reason": finish})
            return {"id": "up-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1,
                    "model": mode, "choices": [choice]}

        if mode == "slow-stream":
            await event(chunk(0))
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.append(time.monotonic())
            return
        for i in range(n):
            if mode == "reset" and i == 2:
                raise RuntimeError("fake reset mid-stream")
            if mode == "bad-json" and i == 2:
                await event(b"{oops")
            await event(chunk(i))
        await event(chunk(n, "length"))
        if mode != "no-usage" and (body.get("stream_options") or {}).get("include_usage"):
            await event({"id": "up-1", "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": 1, "model": mode, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send, status, obj, headers=()):
    blob = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": blob})


@contextlib.contextmanager
def serving(app, lifespan: str = "off"):
    """Serve ``app`` on 127.0.0.1 (a port the OS picks) from a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan=lifespan,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(3000):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
