"""Serving fixtures: in-process apps (httpx ASGI transport, lifespan entered by hand)."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from leaninfer.engines.engine import BatchingConfig
from leaninfer.serving.app import ServerConfig, create_app


@contextlib.asynccontextmanager
async def app_client(models: dict, **batching):
    cfg = ServerConfig(BatchingConfig(**batching), usd_per_hour=3.6, **{})
    app = create_app(models, cfg)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app
            yield client


@pytest.fixture(scope="session")
def served(minilm, tiny_gpt2):
    return {"minilm": minilm, "tiny-gpt2": tiny_gpt2}
