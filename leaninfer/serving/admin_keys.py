"""``/v1/admin/keys``: keys over HTTP, behind an admin key (``leaninfer keys create --admin``), with the same code
as ``leaninfer keys`` (:mod:`leaninfer.finops.key_admin`).

- ``POST /v1/admin/keys`` creates a key: the answer carries its secret (``key``), once; the store keeps its hash.
- ``GET /v1/admin/keys`` lists keys (``?include_revoked=true`` for all), ``GET /v1/admin/keys/{id}`` one: never a
  hash or a secret.
- ``PATCH /v1/admin/keys/{id}`` changes fields of its policy in place (``null`` removes a budget, limit, model
  list or expiry); ``DELETE`` revokes it; ``POST /v1/admin/keys/{id}/rotate`` gives it a new secret (the old one
  stops working; id, policy and spend stay).

A change lands in the store: this server applies it at once, every other server on the store within
:data:`leaninfer.finops.gate.KEY_CACHE_S`. The endpoint functions carry no docstrings on purpose: FastAPI would
publish them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from ..finops.key_admin import (
    BadField,
    KeyNotFound,
    create_key,
    expiry,
    get_key,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
)
from ..finops.keys import KeyPolicy
from ..finops.refusals import InvalidKey, NotAllowed
from .errors import to_openai
from .guard import bearer, read_body
from .protocol import OpenAIError, validation_message

router = APIRouter()
PATH = "/v1/admin/keys"
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_REFUSALS = {401: {"description": "no valid key, or a server without --auth keys", "content": _ERROR},
             403: {"description": "not an admin key", "content": _ERROR},
             404: {"description": "no such key, or a server without a store", "content": _ERROR}}
_BAD = {400: {"description": "a bad field (named in param)", "content": _ERROR},
        413: {"description": "request body too large", "content": _ERROR}}
_EXPIRES_IN = Field(None, max_length=32, description="the key stops working this long from now: 30d, 12h, 90m, "
                                                      "3600 (seconds), 2w; instead of expires_at")


class KeyCreate(KeyPolicy):
    """A new key's policy, and when it expires."""

    model_config = ConfigDict(extra="forbid", strict=True)

    expires_at: float | str | None = Field(None, description="when the key stops working: unix seconds, or ISO 8601 "
                                                             "with a timezone (2027-01-31T00:00:00Z)")
    expires_in: str | None = _EXPIRES_IN


def _optional(name: str, info: FieldInfo):
    return info.annotation | None, FieldInfo.merge_field_infos(info, default=None)


# Every field of KeyCreate, none required: those given replace the key's (null removes), the others stay.
KeyPatch = create_model("KeyPatch", __config__=ConfigDict(extra="forbid", strict=True),
                        __doc__="Fields of a key's policy to change; null removes a budget, limit, model list or "
                                "expiry.",
                        **{name: _optional(name, info) for name, info in KeyCreate.model_fields.items()})


def _body_doc(schema) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


async def keyed(request: Request, admin: bool, what: str):
    """The gate and the request's key, on a server with keys and a store: 401 without a valid key, 403 for a
    non-admin key where ``admin``, 404 without a store."""
    gate = request.app.state.gate
    if gate.config.auth != "keys":
        raise to_openai(InvalidKey(f"{what} needs a key on a server run with --auth keys"))
    presented = bearer(request)
    key = await gate.authenticate(presented)
    if key is None:
        raise to_openai(gate.key_refusal(presented))
    if admin and not key.policy.admin:
        raise to_openai(NotAllowed(f"{what} needs an admin key (leaninfer keys create --admin)", "not_admin"))
    if gate.store is None:
        raise OpenAIError(404, "this server keeps no store: start it with --store", code="no_store")
    return gate, key


async def _in_store(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except KeyNotFound as e:
        raise OpenAIError(404, str(e), param="key_id", code="key_not_found") from None
    except BadField as e:
        raise OpenAIError(400, str(e), param=e.field, code="invalid_value") from None


def _key(record, **extra) -> dict:
    return {"object": "api_key", **record.public(), **extra}


@router.post(PATH, status_code=201, responses={**_REFUSALS, **_BAD}, openapi_extra=_body_doc(KeyCreate))
async def create_key_endpoint(request: Request):
    gate, _ = await keyed(request, True, PATH)
    body = await read_body(request, KeyCreate)
    fields = body.model_dump(exclude={"expires_at", "expires_in"})
    at = await _in_store(expiry, body.expires_at, body.expires_in)
    try:
        policy = KeyPolicy(**fields, expires_at=at)
    except ValidationError as e:  # the expiry, now a number, past its bound
        msg, param = validation_message(e)
        raise OpenAIError(400, msg, param=param, code="invalid_value") from None
    record, plaintext = await _in_store(create_key, gate.store, policy)
    return JSONResponse(_key(record, key=plaintext), status_code=201)


@router.get(PATH, responses={**_REFUSALS, 400: _BAD[400]})
async def list_keys_endpoint(request: Request, include_revoked: str = "false"):
    gate, _ = await keyed(request, True, PATH)
    if include_revoked not in ("true", "false"):
        raise OpenAIError(400, f"include_revoked {include_revoked!r}: give true or false", param="include_revoked",
                          code="invalid_value")
    data = await _in_store(list_keys, gate.store, include_revoked == "true")
    return {"object": "list", "data": [{"object": "api_key", **k} for k in data]}


@router.get(PATH + "/{key_id}", responses=_REFUSALS)
async def get_key_endpoint(request: Request, key_id: str):
    gate, _ = await keyed(request, True, PATH)
    return _key(await _in_store(get_key, gate.store, key_id))


@router.patch(PATH + "/{key_id}", responses={**_REFUSALS, **_BAD}, openapi_extra=_body_doc(KeyPatch))
async def update_key_endpoint(request: Request, key_id: str):
    gate, _ = await keyed(request, True, PATH)
    body = await read_body(request, KeyPatch)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "expires_at" in changes or "expires_in" in changes:
        changes["expires_at"] = await _in_store(expiry, changes.get("expires_at"), changes.pop("expires_in", None))
    record = await _in_store(update_key, gate.store, key_id, changes)
    gate.forget_key(key_id)
    return _key(record)


@router.delete(PATH + "/{key_id}", responses=_REFUSALS)
async def revoke_key_endpoint(request: Request, key_id: str):
    gate, _ = await keyed(request, True, PATH)
    await _in_store(revoke_key, gate.store, key_id)
    gate.forget_key(key_id)
    return {"object": "api_key", "key_id": key_id, "revoked": True}


@router.post(PATH + "/{key_id}/rotate", responses=_REFUSALS)
async def rotate_key_endpoint(request: Request, key_id: str):
    gate, _ = await keyed(request, True, PATH)
    plaintext = await _in_store(rotate_key, gate.store, key_id)
    gate.forget_key(key_id)
    return _key(await _in_store(get_key, gate.store, key_id), key=plaintext)
