"""FinOps fixtures: in-process apps with keys, a ledger and budgets (httpx ASGI transport, lifespan by hand)."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from leaninfer.engines.engine import BatchingConfig
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.keys import KeyPolicy, KeyRecord, new_key
from leaninfer.finops.store import open_store
from leaninfer.serving.app import ServerConfig, create_app

USD_PER_HOUR = 3600.0  # $1 per engine-second: costs of tiny requests stay far above a nano-dollar


def make_key(store: str, **policy) -> str:
    """Create a key in ``store``; return its plaintext."""
    key_id, plaintext, key_hash = new_key()
    s = open_store(store)
    try:
        s.add_key(KeyRecord(key_id, key_hash, KeyPolicy(**policy), time.time()))
    finally:
        s.close()
    return plaintext


def ledger_rows(store: str):
    """Every ledger row in ``store``, oldest first."""
    s = open_store(store)
    try:
        return s.rows()
    finally:
        s.close()


def bearer(key: str, **headers) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


@contextlib.asynccontextmanager
async def finops_client(models: dict, usd_per_hour: float = USD_PER_HOUR, batching: dict | None = None, **finops):
    cfg = ServerConfig(BatchingConfig(**(batching or {})), usd_per_hour=usd_per_hour, finops=FinOpsConfig(**finops))
    app = create_app(models, cfg)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=120) as client:
            client.app = app
            yield client


@pytest.fixture(scope="session")
def served(minilm, tiny_gpt2):
    return {"minilm": minilm, "tiny-gpt2": tiny_gpt2}
