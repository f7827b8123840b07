"""An OpenAI-compatible endpoint seen from outside: where it is, whether it answers like one, which models it
lists and what task each serves; and its embeddings, as an embedder ``evaluate`` can score.

What ``bench --endpoint`` and ``eval --endpoint`` share. Every way a user can point them wrong (a URL that is
not one, a server that is down, a key missing or refused, an answer that is not OpenAI's, a model the endpoint
does not list) is a :class:`LeaninferError` naming the value and what would be valid, raised before anything is
measured or written.

Example:
    >>> ep = open_endpoint("http://127.0.0.1:8000", "minilm")  # doctest: +SKIP
    >>> ep.base_url, ep.task  # doctest: +SKIP
    ('http://127.0.0.1:8000/v1', 'embedding')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np

from .errors import LeaninferError, valid_list

TASKS = ("embedding", "causal-lm")
# What other engines call the two tasks in their model cards, where they say at all (leaninfer's ``task``).
_TASK_ALIASES = {"embedding": "embedding", "embed": "embedding", "embeddings": "embedding",
                 "causal-lm": "causal-lm", "generate": "causal-lm", "text-generation": "causal-lm"}


def base_url_of(url: str) -> str:
    """The API root of ``url``: ``http://host:port`` and ``http://host:port/v1/`` both give ``.../v1``.

    >>> base_url_of("http://127.0.0.1:8000"), base_url_of("https://api.example.com/v1/")
    ('http://127.0.0.1:8000/v1', 'https://api.example.com/v1')
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LeaninferError(f"--endpoint {url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def api_key_from_env(var: str | None) -> str | None:
    """The key in environment variable ``var`` (``--key-env``); a key is never taken on the command line, where
    it would land in shell history and in the report's command."""
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise LeaninferError(f"--key-env {var}: the environment variable {var} is not set or empty")
    return key


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _request(method: str, url: str, api_key: str | None, timeout_s: float, **kwargs) -> httpx.Response:
    """One request; a transport failure becomes a one-line error naming the URL."""
    try:
        return httpx.request(method, url, headers=_headers(api_key), timeout=timeout_s, **kwargs)
    except httpx.TimeoutException:
        raise LeaninferError(f"{method} {url}: no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise LeaninferError(f"{method} {url}: can't connect ({type(e).__name__}: {e or 'no detail'}); is the "
                             "server up, and is this its address?") from None


def _refused(r: httpx.Response, what: str) -> LeaninferError:
    if r.status_code in (401, 403):
        return LeaninferError(f"{what} answered {r.status_code} (the key is missing or refused): put a valid key in "
                              "an environment variable and name it with --key-env VAR")
    return LeaninferError(f"{what} answered {r.status_code}: {r.text[:200]!r}")


def _json(r: httpx.Response, what: str, expected: str) -> dict:
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise LeaninferError(f"{what} did not answer like an OpenAI-compatible API (expected {expected}, got "
                             f"{r.text[:120]!r})")
    return doc


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint and one model it serves, checked: it answered ``/v1/models`` and lists it."""

    base_url: str
    model: str
    task: str
    card: dict = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0


def open_endpoint(url: str, model: str, *, task: str | None = None, api_key: str | None = None,
                  timeout_s: float = 30.0) -> Endpoint:
    """Check that ``url`` is an OpenAI-compatible endpoint serving ``model`` and find its task: the model
    card's ``task`` (leaninfer's cards say it), else ``task`` (``--task``). A ``task`` that contradicts the
    card is an error: the sweep would drive the wrong API."""
    if task is not None and task not in TASKS:
        raise LeaninferError(f"--task {task!r} is not a task; valid: {valid_list(TASKS)}")
    base = base_url_of(url)
    what = f"GET {base}/models"
    r = _request("GET", f"{base}/models", api_key, timeout_s)
    if r.status_code != 200:
        raise _refused(r, what)
    doc = _json(r, what, 'a model list {"data": [{"id": ...}]}')
    cards = doc.get("data")
    if not isinstance(cards, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in cards):
        raise LeaninferError(f"{what} did not answer like an OpenAI-compatible API (expected a model list "
                             f'{{"data": [{{"id": ...}}]}}, got {r.text[:120]!r})')
    by_id = {c["id"]: c for c in cards}
    if model not in by_id:
        raise LeaninferError(f"--model {model!r} is not served at {base}; it lists: {valid_list(by_id) or 'nothing'}")
    card = by_id[model]
    declared = _TASK_ALIASES.get(str(card.get("task", "")).lower())
    if declared and task and declared != task:
        raise LeaninferError(f"--task {task} contradicts the endpoint: {base} serves {model!r} as {declared}")
    found = declared or task
    if found is None:
        raise LeaninferError(f"{base} does not say which task {model!r} serves: give --task "
                             f"({valid_list(TASKS)})")
    return Endpoint(base, model, found, card, api_key, timeout_s)


class EndpointEmbedder:
    """The embeddings of an endpoint's model, with the part of the :class:`~leaninfer.models.Model` interface
    that :func:`leaninfer.evaluate.evaluate` reads for embeddings (``task``, ``weights``, ``is_random``,
    ``embed``), so an endpoint is scored by the same code as a local model. Vectors are L2-normalised here:
    ``evaluate`` takes cosines as dot products, and not every engine normalises."""

    task = "embedding"
    weights = "endpoint"
    is_random = False

    def __init__(self, endpoint: Endpoint):
        if endpoint.task != "embedding":
            raise LeaninferError(f"{endpoint.model!r} at {endpoint.base_url} is a {endpoint.task} model; "
                                 "STS needs an embedding model")
        self.endpoint = endpoint

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        ep = self.endpoint
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            what = f"POST {ep.base_url}/embeddings"
            r = _request("POST", f"{ep.base_url}/embeddings", ep.api_key, ep.timeout_s,
                         json={"model": ep.model, "input": chunk})
            if r.status_code != 200:
                raise _refused(r, what)
            data = _json(r, what, 'an embedding list {"data": [{"index": i, "embedding": [...]}]}').get("data")
            try:
                rows = sorted(data, key=lambda d: d["index"])
                vecs = np.asarray([d["embedding"] for d in rows], dtype=np.float32)
            except (TypeError, KeyError, ValueError):
                vecs = None
            if vecs is None or vecs.ndim != 2 or len(vecs) != len(chunk):
                raise LeaninferError(f"{what} did not answer like an OpenAI-compatible API (expected "
                                     f"{len(chunk)} embeddings, got {r.text[:120]!r})")
            out.append(vecs)
        emb = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
        norms = np.linalg.norm(emb, axis=-1, keepdims=True)
        return emb / np.where(norms > 0, norms, 1.0)
