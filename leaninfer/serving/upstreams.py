"""Upstream variants: served names that forward to an OpenAI-compatible engine (``leaninfer serve --upstream``).

``--upstream NAME=URL[,key_env=VAR][,tariff=FILE][,model=ID][,task=TASK][,timeout_s=S][,max_connections=N]``:

- ``URL``: the endpoint's base URL as the openai client takes it (``http://gpu-box:8000/v1``; a URL with no
  path gets ``/v1``). Credentials don't go in it: they go in ``key_env``.
- ``key_env``: the environment variable holding the upstream's API key (sent as ``Authorization: Bearer``;
  never logged, stored or echoed).
- ``tariff``: the tariff file pricing the upstream per token (``leaninfer bench --endpoint`` writes one; a
  hosted API's is written by hand from its list prices), or ``free`` to meter it at $0 on purpose. Required:
  an engine is never priced at $0 silently.
- ``model``: the model id sent upstream (default: the tariff file's ``model``; with ``tariff=free``, NAME).
- ``task``: ``embedding`` or ``causal-lm`` (default: the tariff file's ``task``).
- ``timeout_s``: the longest the upstream may take to answer, or stay silent in a stream (default 600).

Everything is checked at start-up, and each problem is a :class:`~leaninfer.errors.LeaninferError` naming
the upstream and the part of its spec at fault.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.upstream import UpstreamClient
from ..errors import LeaninferError, valid_list
from ..finops.price_list import load_price_list
from ..finops.token_tariff import TokenTariff
from ..finops.variant import Variant

FREE = "free"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXAMPLE = "vllm=http://gpu-box:8000/v1,key_env=VLLM_KEY,tariff=vllm-tariff.yaml"


class UpstreamConfig(BaseModel):
    """One ``--upstream`` spec, parsed (:func:`parse_upstream`); no secret in it, only the variable's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    key_env: str | None = None
    tariff: str | None = None  # a tariff file's path, or "free"
    model: str | None = Field(None, min_length=1)
    task: Literal["embedding", "causal-lm"] | None = None
    timeout_s: float = Field(600.0, gt=0, le=86_400)
    max_connections: int = Field(512, ge=1, le=65_536)


OPTIONS = [f for f in UpstreamConfig.model_fields if f not in ("name", "url")]


def parse_upstream(text: str) -> UpstreamConfig:
    """``"NAME=URL[,key=value...]"`` -> :class:`UpstreamConfig` (a LeaninferError naming the bad part).

    Example:
        >>> parse_upstream("vllm=http://gpu:8000,tariff=t.yaml").url
        'http://gpu:8000/v1'
    """
    where = f"--upstream {text!r}"
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq or not name or not rest.strip():
        raise LeaninferError(f"{where}: expected NAME=URL[,key_env=VAR][,tariff=FILE], e.g. {EXAMPLE}")
    if not NAME.match(name):
        raise LeaninferError(f"{where}: the name {name!r} must be 1-128 letters, digits or ._:/- (starting with "
                             "a letter or digit)")
    url, *parts = rest.split(",")
    fields: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise LeaninferError(f"{where}: {part.strip()!r} is not key=value (options: {', '.join(OPTIONS)})")
        if key not in OPTIONS:
            raise LeaninferError(f"{where}: unknown option {key!r} (options: {', '.join(OPTIONS)})")
        if key in fields:
            raise LeaninferError(f"{where}: {key} is given twice")
        fields[key] = value
    if "key_env" in fields and not ENV_VAR.match(fields["key_env"]):
        raise LeaninferError(f"{where}: key_env={fields['key_env']!r} is not an environment variable's name "
                             "(the key itself never goes on the command line)")
    try:
        return UpstreamConfig(name=name, url=_base_url(url.strip(), where), **fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise LeaninferError(f"{where}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _base_url(url: str, where: str) -> str:
    try:
        u = httpx.URL(url)
    except Exception as e:  # noqa: BLE001 (httpx raises several kinds for a malformed URL)
        raise LeaninferError(f"{where}: {url!r} is not a URL ({e})") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise LeaninferError(f"{where}: {url!r} is not an http:// or https:// URL with a host, e.g. "
                             "http://gpu-box:8000/v1")
    if u.userinfo:
        raise LeaninferError(f"{where}: the URL carries credentials; put the key in an environment variable and "
                             "name it with key_env=VAR")
    if u.query or u.fragment:
        raise LeaninferError(f"{where}: the URL must not have a query or fragment: give the base URL, e.g. "
                             "http://gpu-box:8000/v1")
    path = u.path.rstrip("/")
    return str(u.copy_with(path=path or "/v1")).rstrip("/")


@dataclass
class ServedUpstream:
    """One upstream as the server holds it: its client, the model id it is sent, its task and its tariff."""

    config: UpstreamConfig
    model_id: str
    task: str
    tariff: TokenTariff
    client: UpstreamClient
    created: int

    @property
    def name(self) -> str:
        return self.config.name

    def variant(self) -> Variant:
        return Variant.for_upstream(self.name, self.task, self.config.url, self.model_id, self.tariff,
                                    lambda: self.client.in_flight)

    def info(self) -> dict:
        """What its model card shows (no URL: it may be an internal address)."""
        prices = self.tariff.prices
        return {"task": self.task, "backend": "upstream", "precision": None, "weights": None,
                "max_seq_length": None, "upstream_model": self.model_id,
                "tariff": prices.source if prices is not None else FREE}


def open_upstream(config: UpstreamConfig, env: Mapping[str, str] = os.environ) -> ServedUpstream:
    """The upstream of ``config``: its tariff read and checked, its key read from the environment, its client
    built (started by the app's lifespan)."""
    where = f"--upstream {config.name}"
    if config.tariff is None:
        raise LeaninferError(
            f"{where}: no tariff=FILE. leaninfer never prices an engine at $0 unless told to: measure it with "
            f"`leaninfer bench --endpoint {config.url} --model ID --hardware PROFILE` (which writes the tariff "
            "file), write one from a hosted API's list prices (docs/upstream.md), or give tariff=free to meter "
            "it at $0 on purpose")
    prices = None
    if config.tariff != FREE:
        try:
            prices = load_price_list(config.tariff)
        except LeaninferError as e:
            raise LeaninferError(f"{where}: {e}") from None
    if prices is not None and config.model is not None and config.model != prices.model:
        raise LeaninferError(f"{where}: model={config.model!r}, but its tariff file {config.tariff!r} prices "
                             f"{prices.model!r}: measure this model's tariff, or drop model=")
    model_id = config.model or (prices.model if prices is not None else config.name)
    declared = prices.task if prices is not None else None
    if config.task is not None and declared is not None and config.task != declared:
        raise LeaninferError(f"{where}: task={config.task}, but its tariff file {config.tariff!r} says "
                             f"{declared}")
    task = config.task or declared
    if task is None:
        raise LeaninferError(f"{where}: which endpoints does it serve? Give task=embedding or task=causal-lm "
                             "(its tariff file names no task)")
    key = None
    if config.key_env is not None:
        key = env.get(config.key_env)
        if not key:
            raise LeaninferError(f"{where}: key_env={config.key_env}, but the environment variable "
                                 f"{config.key_env} is not set (or empty)")
    client = UpstreamClient(config.name, config.url, key, timeout_s=config.timeout_s,
                            max_connections=config.max_connections)
    return ServedUpstream(config, model_id, task, TokenTariff(prices, config.tariff), client, int(time.time()))


def open_upstreams(configs: list[UpstreamConfig], taken: list[str]) -> dict[str, ServedUpstream]:
    """Every upstream of a server, checked: names unique among themselves and the local models' ``taken``."""
    out: dict[str, ServedUpstream] = {}
    for c in configs:
        if c.name in out or c.name in taken:
            raise LeaninferError(f"--upstream {c.name}: the name is already served (served: "
                                 f"{valid_list([*taken, *out])}); names must be unique")
        out[c.name] = open_upstream(c)
    return out
