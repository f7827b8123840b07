"""``/v1/admin/budgets``: budgets above the key over HTTP (GET lists them with their use, PUT sets one, DELETE
removes one), behind an admin key (``leaninfer keys create --admin``); the same code as ``leaninfer budgets``
(:mod:`leaninfer.finops.budget_admin`). A change lands in the store: every server on it applies it within a
second (this one at once). The endpoint functions carry no docstrings on purpose: FastAPI would publish them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from ..errors import LeaninferError
from ..finops.budget_admin import delete_budget, listing, set_budget
from ..finops.scope_budgets import ALL_KINDS, ScopeLimits
from .admin_keys import keyed
from .guard import read_body
from .protocol import OpenAIError

router = APIRouter()
PATH = "/v1/admin/budgets"
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_REFUSALS = {401: {"description": "no valid key, or a server without --auth keys", "content": _ERROR},
             403: {"description": "not an admin key", "content": _ERROR},
             404: {"description": "this server keeps no store", "content": _ERROR}}


class BudgetPut(ScopeLimits):
    """A scope's budget, every limit at once (one left out is removed)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scope: str = Field(..., max_length=300, description="team:T, tag:k=v, model:M, org, user:U or default-user "
                                                        "(each end user without a budget of their own, apart)")


async def _admin(request: Request):
    """The gate, once the request shows an admin key on a server with keys and a store (the check of
    ``/v1/admin/keys``: an expired key is named as such there and here)."""
    gate, _ = await keyed(request, admin=True, what=PATH)
    return gate


async def _in_store(fn, *args, param: str = "scope"):
    try:
        return await asyncio.to_thread(fn, *args)
    except LeaninferError as e:  # a bad scope or limits, or no such budget: named
        status = 404 if "no budget for" in str(e) else 400
        raise OpenAIError(status, str(e), param=param, code="not_found" if status == 404 else "invalid_value") \
            from None


@router.get(PATH, responses=_REFUSALS)
async def list_budgets(request: Request):
    gate = await _admin(request)
    return {"object": "list", "data": await _in_store(listing, gate.store, gate.tz)}


@router.put(PATH, responses={**_REFUSALS, 400: {"description": "a bad field (named)", "content": _ERROR}},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": BudgetPut.model_json_schema()}}}})
async def put_budget(request: Request):
    gate = await _admin(request)
    body = await read_body(request, BudgetPut)
    limits = ScopeLimits(**body.model_dump(exclude={"scope"}))
    budget = await _in_store(set_budget, gate.store, body.scope, limits)
    gate.scope_budgets.forget(budget.scope)
    return budget.public()


@router.delete(PATH, responses={**_REFUSALS, 400: {"description": "a bad scope (named)", "content": _ERROR}})
async def delete_budget_endpoint(request: Request, scope: str | None = None):
    gate = await _admin(request)
    if not scope:
        raise OpenAIError(400, f"give the budget's scope: ?scope= one of {', '.join(ALL_KINDS)} (team:T, tag:k=v, "
                               "model:M, user:U take a name)", param="scope", code="invalid_value")
    await _in_store(delete_budget, gate.store, scope)
    gate.scope_budgets.forget(scope)
    return {"scope": scope, "deleted": True}
