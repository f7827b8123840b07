"""``GET /v1/usage/me``: any key reads its own spend, budgets, what is left and its rate limits
(:func:`leaninfer.finops.key_usage.key_usage`); never another key's: the key is the one presented. The endpoint
function carries no docstring on purpose: FastAPI would publish it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..finops.key_usage import key_usage
from .admin_keys import keyed

router = APIRouter()
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


@router.get("/v1/usage/me", responses={401: {"description": "no valid key, or a server without --auth keys",
                                             "content": _ERROR},
                                       404: {"description": "this server keeps no store", "content": _ERROR}})
async def usage_me(request: Request):
    gate, key = await keyed(request, False, "/v1/usage/me")
    return await asyncio.to_thread(key_usage, gate.store, gate.state, key, gate.tz)
