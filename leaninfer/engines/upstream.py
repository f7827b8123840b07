"""The client of an upstream engine: an OpenAI-compatible endpoint (vLLM, TGI, ``transformers serve``, another
leaninfer, a hosted API) that a served name forwards to.

Pooled ``aiohttp`` connections, with a connect timeout, a read timeout (the longest the upstream may stay
silent) and the request's deadline over all, and typed errors (:mod:`.errors`) for every way it can fail: the
server in front turns them into answers and the gate into fallbacks. It knows HTTP as a client and nothing of
budgets.

Why aiohttp, not httpx: in front of a fast upstream the client's own CPU per request is the front's overhead.
httpcore's pool polls every idle socket on every request (encode/httpcore#928) and its sends over anyio were
~14% of a front's CPU (py-spy, minilm embeddings, 2 vCPUs); aiohttp (C-accelerated parser; closed connections
dropped by the event loop's callback, not polled) is ~5% of the loop's busy time, and a front reaches 0.85-0.91
of its upstream's req/s where it reached 0.76 (docs/upstream.md, "Overhead").

A request is *opened* (sent, and the status line read: whatever the upstream refuses is known then, so a
route can still try its next candidate), then read: a whole JSON body, or a stream of server-sent events.

The key (``Authorization: Bearer``) lives in the session's default headers only: it is never logged, and any
message that could echo it (an upstream's error text) has it replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from yarl import URL

from .errors import UpstreamBadResponse, UpstreamDown, UpstreamError, UpstreamRejected

log = logging.getLogger("leaninfer.upstream")

CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 4.0  # an idle connection is dropped before the upstream drops it (uvicorn's default is 5 s)
MAX_ERROR_BYTES = 64 * 1024  # of an upstream's error body: enough for its message
MAX_BODY_BYTES = 512 * 1024 * 1024  # of an answer (2,048 embeddings of 8,192 floats as JSON fit)
MAX_RETRY_AFTER_S = 3600
REJECTED = (400, 413, 422)  # the request itself was refused: the client's to fix, passed on
BUSY = (429, 503)
JSON_HEADERS = {"Content-Type": "application/json"}
# a failure to connect (refused, DNS, TLS, the connect timeout): the upstream was never reached
UNREACHABLE = (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)
# what a read may raise once the status line came: the connection dropped, a malformed body or chunk
BROKEN = (aiohttp.ClientError, ValueError)


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
        self._http: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self.in_flight = 0  # opened and not yet closed: the route's view of this upstream's load

    def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        # no total: the request's deadline bounds it (open, read); sock_read: the longest silence
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s, sock_read=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=KEEPALIVE_S)
        self._http = aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout,
                                           trust_env=False, raise_for_status=False)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def scrub(self, text: str) -> str:
        """``text`` without the key in it (an upstream may echo what it was sent)."""
        return text.replace(self._key, "***") if self._key else text

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    async def open(self, path: str, body: dict, deadline_s: float) -> Opened:
        """Send ``body`` to ``path`` (relative to the base URL) and read the status line, within
        ``deadline_s``. Returns the open response on a 200; raises an :class:`UpstreamError` otherwise."""
        http = self._http
        if http is None or http.closed:
            raise UpstreamDown(f"upstream {self.name!r} is not started (the server is starting or stopping)",
                               "upstream_unreachable")
        data = _encode(body)
        t0 = time.perf_counter()
        self.in_flight += 1
        resp = None
        try:
            async with asyncio.timeout(deadline_s):
                resp = await http.post(self._url(path), data=data, headers=JSON_HEADERS, allow_redirects=False)
                if resp.status != 200:
                    await self._refused(resp)
        except (TimeoutError, aiohttp.ClientError) as e:
            self._abandon(resp)
            raise self._error(e, deadline_s) from None
        except BaseException:  # refused (an UpstreamError), or cancelled: the client left
            self._abandon(resp)
            raise
        return Opened(self, resp, t0)

    def _abandon(self, resp: aiohttp.ClientResponse | None) -> None:
        self.in_flight -= 1
        if resp is not None:
            resp.close()

    def _error(self, e: BaseException, deadline_s: float) -> UpstreamDown:
        """A transport failure (or the deadline) as the typed error it is."""
        if isinstance(e, UNREACHABLE):
            return UpstreamDown(f"upstream {self.name!r} could not be reached ({type(e).__name__})",
                                "upstream_unreachable")
        if isinstance(e, TimeoutError):  # the deadline (a wait for a free connection included), or sock_read
            return UpstreamDown(f"upstream {self.name!r} did not answer within {deadline_s:g} s", "upstream_timeout")
        # the connection dropped before the status line, say
        return UpstreamDown(f"upstream {self.name!r} failed before answering ({type(e).__name__})",
                            "upstream_failed")

    async def _refused(self, resp: aiohttp.ClientResponse) -> None:
        """Raise what a non-200 answer means, with the upstream's own message where it is the client's."""
        raw = b""
        with contextlib.suppress(*BROKEN):
            async for chunk in resp.content.iter_any():
                raw += chunk
                if len(raw) >= MAX_ERROR_BYTES:
                    break
        status = resp.status
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

    def __init__(self, client: UpstreamClient, resp: aiohttp.ClientResponse, t0: float):
        self.client, self.resp, self.t0 = client, resp, t0
        self.first_byte_s: float | None = None  # since open()
        self.done = False  # a stream ended with [DONE]
        self.closed = False
        self._whole = False  # the body was read to its end: the connection goes back to the pool

    @property
    def name(self) -> str:
        return self.client.name

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.in_flight -= 1
            with contextlib.suppress(Exception):
                if self._whole:
                    self.resp.release()
                else:  # unread: the connection is closed, not reused (the upstream sees the client leave)
                    self.resp.close()

    async def read(self, deadline_s: float) -> bytes:
        """The whole body (a non-streamed answer), within ``deadline_s``."""
        body = bytearray()
        try:
            async with asyncio.timeout(deadline_s):
                async for chunk in self.resp.content.iter_any():
                    if self.first_byte_s is None:
                        self.first_byte_s = time.perf_counter() - self.t0
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise UpstreamBadResponse(f"upstream {self.name!r} answered more than {MAX_BODY_BYTES} "
                                                  "bytes")
            self._whole = True
        except TimeoutError:  # the deadline, or a silence past sock_read (aiohttp's SocketTimeoutError)
            raise UpstreamDown(f"upstream {self.name!r} did not finish its answer within {deadline_s:g} s",
                               "upstream_timeout") from None
        except BROKEN as e:
            raise UpstreamBadResponse(f"upstream {self.name!r}: its answer broke off ({type(e).__name__})",
                                      "upstream_stream_broken") from None
        finally:
            await self.aclose()
        return bytes(body)

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes, up to the end or a break; what arrived before a break included."""
        content = self.resp.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except BROKEN:
            # aiohttp's reader raises a break as soon as it is told of it, dropping what it had buffered
            # (StreamReader.readany): the events the upstream sent before it broke are still relayed and counted,
            # as the upstream generated them. Private, hence the getattr; tests/serving/test_upstream.py's reset
            # drill fails if it goes.
            left = getattr(content, "_buffer", None)
            if left:
                tail = b"".join(left)
                left.clear()
                yield tail
            raise

    async def _lines(self) -> AsyncIterator[str]:
        """The body's lines (split at LF, CRLF or CR, as server-sent events are), decoded as UTF-8. A line that
        comes in many pieces is joined once, when its end comes."""
        pending: list[bytes] = []  # the start of a line whose end has not come (a trailing CR kept: half a CRLF?)
        size = 0
        async for chunk in self._chunks():
            if self.first_byte_s is None:
                self.first_byte_s = time.perf_counter() - self.t0
            if b"\n" not in chunk and b"\r" not in chunk:
                pending.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise UpstreamBadResponse(f"upstream {self.name!r} sent a stream line of more than "
                                              f"{MAX_BODY_BYTES} bytes")
                continue
            rest = b"".join(pending) + chunk if pending else chunk
            keep_cr = rest.endswith(b"\r")
            *lines, rest = _split_lines(rest[:-1] if keep_cr else rest)
            for line in lines:
                yield line.decode("utf-8", "replace")
            pending = [rest + b"\r"] if keep_cr else [rest] if rest else []
            size = len(rest)
        if pending:
            for line in _split_lines(b"".join(pending)):
                if line:
                    yield line.decode("utf-8", "replace")

    async def events(self) -> AsyncIterator[dict]:
        """The JSON objects of a server-sent event stream, up to ``[DONE]``. A silence longer than the client's
        ``timeout_s`` is an ``upstream_timeout``; a stream that breaks off, an event that is not a JSON
        object, or an error event are raised as :class:`UpstreamError`."""
        name = self.name
        try:
            async for line in self._lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event:/id:/retry: fields
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    return
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamBadResponse(f"upstream {name!r} sent a stream event that is not JSON") from None
                if not isinstance(obj, dict):
                    raise UpstreamBadResponse(f"upstream {name!r} sent a stream event that is not a JSON object")
                if obj.get("error") and not obj.get("choices"):
                    said = self.client.scrub(_error_message(json.dumps(obj).encode()))[:500]
                    raise UpstreamBadResponse(f"upstream {name!r} failed mid-stream: {said}", "upstream_failed")
                yield obj
        except TimeoutError:  # a silence past sock_read
            raise UpstreamDown(f"upstream {name!r} sent nothing for {self.client.timeout_s:g} s",
                               "upstream_timeout") from None
        except BROKEN as e:
            raise UpstreamBadResponse(f"upstream {name!r}: the stream broke off ({type(e).__name__})",
                                      "upstream_stream_broken") from None


def _split_lines(data: bytes) -> list[bytes]:
    """``data`` split at LF, CRLF and CR; the last item is what follows the last line end (maybe empty)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.split(b"\n")


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
