"""A fake OpenAI-compatible endpoint for ``bench --endpoint`` and ``eval --endpoint``, served on 127.0.0.1 from a
thread (a port the OS picks), so the real clients (httpx, the load generator) talk HTTP to it.

Models it lists (``/v1/models``): ``emb`` (its card says ``task: embedding``), ``gen`` (no task in its card, as
vLLM's cards), ``no-usage`` (an embedding model whose answers carry no ``usage``), ``broken`` (every request a
500). ``embed``: how ``emb`` embeds a list of texts (default: a vector per text from its hash). ``key``: when
set, every request needs ``Authorization: Bearer <key>`` (else 401). ``html``: ``/v1/models`` answers a web page.
``meter_usd_per_token``: when set, each answer carries ``usage.leaninfer.cost_usd`` = tokens x it, as a
leaninfer server's meter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time

import numpy as np
import uvicorn

from ..asgi_fakes import read_json

CARDS = [{"id": "emb", "object": "model", "owned_by": "fake", "task": "embedding"},
         {"id": "gen", "object": "model", "owned_by": "fake"},
         {"id": "no-usage", "object": "model", "owned_by": "fake", "task": "embedding"},
         {"id": "broken", "object": "model", "owned_by": "fake", "task": "embedding"}]


def hashed_vectors(texts: list[str], dim: int = 8) -> np.ndarray:
    return np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=dim)
                     for t in texts])


class FakeEndpoint:
    def __init__(self, embed=hashed_vectors, key: str | None = None, html: bool = False,
                 meter_usd_per_token: float | None = None):
        self.embed, self.key, self.html, self.meter = embed, key, html, meter_usd_per_token
        self.requests: list[tuple[str, dict | None]] = []

    def _usage(self, n_in: int, n_out: int = 0) -> dict:
        u = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if self.meter is not None:
            u["leaninfer"] = {"cost_usd": (n_in + n_out) * self.meter, "cost_usd_input": n_in * self.meter}
        return u

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = await read_json(receive)
        path = scope["path"]
        self.requests.append((path, body))
        headers = dict(scope["headers"])

        async def answer(status: int, doc, ctype: bytes = b"application/json"):
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
            await send({"type": "http.response.body", "body": data})

        if self.key is not None and headers.get(b"authorization") != f"Bearer {self.key}".encode():
            return await answer(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
        if path == "/v1/models":
            if self.html:
                return await answer(200, b"<html><body>a web site</body></html>", b"text/html")
            return await answer(200, {"object": "list", "data": CARDS})
        model = (body or {}).get("model")
        if model == "broken":
            return await answer(500, {"error": {"message": "engine failed"}})
        if path == "/v1/embeddings":
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            vecs = np.asarray(self.embed(texts), dtype=np.float32)
            doc = {"object": "list", "model": model,
                   "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}
            if model != "no-usage":
                doc["usage"] = self._usage(sum(len(t.split()) for t in texts))
            return await answer(200, doc)
        if path == "/v1/chat/completions":
            prompt = " ".join(m["content"] for m in body["messages"])
            n_in, n_out = len(prompt.split()), int(body.get("max_tokens") or 16)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(n_out):
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                            "more_body": True})
                await asyncio.sleep(0.002)  # decode dominates a request, as in an engine
            usage = {"object": "chat.completion.chunk", "choices": [], "usage": self._usage(n_in, n_out)}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()})
            return
        await answer(404, {"error": {"message": f"no route {path}"}})


@contextlib.contextmanager
def serving(app):
    """``app`` on 127.0.0.1 at a free port, from a thread; yields the base URL (``http://127.0.0.1:PORT``)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake endpoint did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
