"""The client of an upstream engine: an OpenAI-compatible endpoint (vLLM, TGI, ``transformers serve``, another
leaninfer, a hosted API) that a served name forwards to.

Pooled ``httpx.AsyncClient`` connections, with a connect timeout and a read timeout (the longest the upstream
may stay silent), and typed errors (:mod:`.errors`) for every way it can fail: the server in front turns them
into answers and the gate into fallbacks. It knows HTTP as a client and nothing of budgets.

The pool is split into :data:`POOL_SHARDS` clients, taken in turn. Why: httpcore's pool, on every request and
every response, walks all its connections and polls each idle one's socket (``has_expired`` ->
``select.poll``; encode/httpcore#928): with 32 requests in flight that walk was 30% of a front's CPU in
front of a fast upstream (py-spy, minilm embeddings, 2 vCPUs). Shards of a few connections each keep it short.

A request is *opened* (sent, and the status line read: whatever the upstream refuses is known then, so a
route can still try its next candidate), then read: a whole JSON body, or a stream of server-sent events.

The key (``Authorization: Bearer``) lives in the client's default headers only: it is never logged, and any
message that could echo it (an upstream's error text) has it replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator

import httpx
import orjson

from .errors import UpstreamBadResponse, UpstreamDown, UpstreamError, UpstreamRejected

log = logging.getLogger("leaninfer.upstream")

CONNECT_TIMEOUT_S = 5.0
MAX_ERROR_BYTES = 64 * 1024  # of an upstream's error body: enough for its message
MAX_BODY_BYTES = 512 * 1024 * 1024  # of an answer (2,048 embeddings of 8,192 floats as JSON fit)
MAX_RETRY_AFTER_S = 3600
POOL_SHARDS = 8
REJECTED = (400, 413, 422)  # the request itself was refused: the client's to fix, passed on
BUSY = (429, 503)


class UpstreamClient:
    """Pooled HTTP to one upstream. :meth:`start` on the server's event loop, :meth:`aclose` at shutdown.

    Example:
        >>> up = UpstreamClient("vllm", "http://gpu-box:8000/v1", api_key=None, timeout_s=60)   # doctest: +SKIP
        >>> up.start()                                                                          # doctest: +SKIP
        >>> opened = await up.open("chat/completions", body, deadline_s=60)   # raises UpstreamError subclasses
        >>> data = await opened.read(deadline_s=60)                          # bytes of a JSON answer
    """

    def __init__(self, name: str, base_url: str, api_key: str | None = None, *, timeout_s: float = 600.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, max_connections: int = 512):
        self.name, self.base_url = name, base_url.rstrip("/") + "/"
        self.timeout_s, self.connect_timeout_s, self.max_connections = timeout_s, connect_timeout_s, max_connections
        self._key = api_key or None
        self._shards: list[httpx.AsyncClient] = []
        self._next = itertools.cycle(range(POOL_SHARDS))
        self.in_flight = 0  # opened and not yet closed: the route's view of this upstream's load

    def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        per_shard = max(1, math.ceil(self.max_connections / POOL_SHARDS))
        self._shards = [httpx.AsyncClient(
            base_url=self.base_url, headers=headers, follow_redirects=False,
            timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s, pool=self.timeout_s),
            limits=httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard))
            for _ in range(POOL_SHARDS)]

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        await asyncio.gather(*(c.aclose() for c in shards))

    def scrub(self, text: str) -> str:
        """``text`` without the key in it (an upstream may echo what it was sent)."""
        return text.replace(self._key, "***") if self._key else text

    async def open(self, path: str, body: dict, deadline_s: float) -> Opened:
        """Send ``body`` to ``path`` (relative to the base URL) and read the status line, within
        ``deadline_s``. Returns the open response on a 200; raises an :class:`UpstreamError` otherwise."""
        if not self._shards:
            raise UpstreamDown(f"upstream {self.name!r} is not started (the server is starting or stopping)",
                               "upstream_unreachable")
        http = self._shards[next(self._next)]
        request = http.build_request("POST", path, content=_encode(body),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        self.in_flight += 1
        resp = None
        try:
            async with asyncio.timeout(deadline_s):
                resp = await http.send(request, stream=True)
                if resp.status_code != 200:
                    await self._refused(resp)
        except (TimeoutError, httpx.HTTPError) as e:
            await self._abandon(resp)
            raise self._error(e, deadline_s) from None
        except BaseException:  # refused (an UpstreamError), or cancelled: the client left
            await self._abandon(resp)
            raise
        return Opened(self, resp, t0)

    async def _abandon(self, resp: httpx.Response | None) -> None:
        self.in_flight -= 1
        if resp is not None:
            with contextlib.suppress(Exception):
                await resp.aclose()

    def _error(self, e: BaseException, deadline_s: float) -> UpstreamDown:
        """A transport failure (or the deadline) as the typed error it is."""
        if isinstance(e, (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout)):
            return UpstreamDown(f"upstream {self.name!r} did not answer within {deadline_s:g} s", "upstream_timeout")
        if isinstance(e, httpx.PoolTimeout):
            return UpstreamDown(f"all {self.max_connections} connections to upstream {self.name!r} are busy",
                                "upstream_busy", retry_after_s=1)
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            return UpstreamDown(f"upstream {self.name!r} could not be reached ({type(e).__name__})",
                                "upstream_unreachable")
        # the connection dropped before the status line, say
        return UpstreamDown(f"upstream {self.name!r} failed before answering ({type(e).__name__})",
                            "upstream_failed")

    async def _refused(self, resp: httpx.Response) -> None:
        """Raise what a non-200 answer means, with the upstream's own message where it is the client's."""
        raw = b""
        with contextlib.suppress(httpx.HTTPError):
            async for chunk in resp.aiter_bytes():
                raw += chunk
                if len(raw) >= MAX_ERROR_BYTES:
                    break
        status = resp.status_code
        said = self.scrub(_error_message(raw))[:500]
        where = f"upstream {self.name!r} answered {status}"
        if status in BUSY:
            raise UpstreamDown(f"{where}: busy ({said})", "upstream_busy",
                               retry_after_s=_retry_after(resp.headers.get("retry-after")) or 1)
        if status >= 500:
            raise UpstreamDown(f"{where}: {said}", "upstream_failed")
        if status in REJECTED:
            raise UpstreamRejected(f"{where}: {said}")
        # 401/403 (its key), 404 (its model id or path), a redirect: the operator's to fix, not the client's
        raise UpstreamError(f"{where}: check its URL, model id and key_env ({said})", "upstream_misconfigured")


class Opened:
    """A 200 from an upstream, its body not read yet: :meth:`read` it whole, or iterate :meth:`events`.
    :meth:`aclose` (idempotent) releases the connection; a stream not read to its end is closed, which is
    how the upstream learns that the client went away."""

    def __init__(self, client: UpstreamClient, resp: httpx.Response, t0: float):
        self.client, self.resp, self.t0 = client, resp, t0
        self.first_byte_s: float | None = None  # since open()
        self.done = False  # a stream ended with [DONE]
        self.closed = False

    @property
    def name(self) -> str:
        return self.client.name

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.in_flight -= 1
            with contextlib.suppress(Exception):
                await self.resp.aclose()

    async def read(self, deadline_s: float) -> bytes:
        """The whole body (a non-streamed answer), within ``deadline_s``."""
        body = bytearray()
        try:
            async with asyncio.timeout(deadline_s):
                async for chunk in self.resp.aiter_bytes():
                    if self.first_byte_s is None:
                        self.first_byte_s = time.perf_counter() - self.t0
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise UpstreamBadResponse(f"upstream {self.name!r} answered more than {MAX_BODY_BYTES} "
                                                  "bytes")
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamDown(f"upstream {self.name!r} did not finish its answer within {deadline_s:g} s",
                               "upstream_timeout") from None
        except httpx.HTTPError as e:
            raise UpstreamBadResponse(f"upstream {self.name!r}: its answer broke off ({type(e).__name__})",
                                      "upstream_stream_broken") from None
        finally:
            await self.aclose()
        return bytes(body)

    async def events(self) -> AsyncIterator[dict]:
        """The JSON objects of a server-sent event stream, up to ``[DONE]``. A silence longer than the client's
        ``timeout_s`` is an ``upstream_timeout``; a stream that breaks off, an event that is not a JSON
        object, or an error event are raised as :class:`UpstreamError`."""
        name = self.name
        try:
            async for line in self.resp.aiter_lines():
                if self.first_byte_s is None:
                    self.first_byte_s = time.perf_counter() - self.t0
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event:/id:/retry: fields
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise UpstreamBadResponse(f"upstream {name!r} sent a stream event that is not JSON") from None
                if not isinstance(obj, dict):
                    raise UpstreamBadResponse(f"upstream {name!r} sent a stream event that is not a JSON object")
                if obj.get("error") and not obj.get("choices"):
                    said = self.client.scrub(_error_message(json.dumps(obj).encode()))[:500]
                    raise UpstreamBadResponse(f"upstream {name!r} failed mid-stream: {said}", "upstream_failed")
                yield obj
        except httpx.TimeoutException:
            raise UpstreamDown(f"upstream {name!r} sent nothing for {self.client.timeout_s:g} s",
                               "upstream_timeout") from None
        except httpx.HTTPError as e:
            raise UpstreamBadResponse(f"upstream {name!r}: the stream broke off ({type(e).__name__})",
                                      "upstream_stream_broken") from None


def _encode(body: dict) -> bytes:
    """``body`` as JSON: orjson (the request path's hot spot), or the json module for what orjson refuses (an
    integer past 64 bits in a field the client added)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


def _error_message(raw: bytes) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message": ...}}``, a ``detail`` or ``message``
    field, or the start of the text."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip() or "(no body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for field in ("message", "detail"):
                if isinstance(err.get(field), str):
                    return err[field]
        if isinstance(err, str):
            return err
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return json.dumps(data)[:200]


def _retry_after(value: str | None) -> int | None:
    """Retry-After in whole seconds (the delta form; an HTTP date is not honoured), at most an hour."""
    if value and value.strip().isdigit():
        return max(1, min(int(value.strip()), MAX_RETRY_AFTER_S))
    return None
