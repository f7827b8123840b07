"""``POST /tokenize`` and ``/detokenize`` in vLLM's shapes: what clients probe to count tokens the way the
served model does.

``/tokenize`` takes a ``prompt`` (tokenized as ``/v1/completions`` does, special tokens added unless
``add_special_tokens`` is false) or chat ``messages`` (through the model's chat template, as
``/v1/chat/completions`` does) and answers ``{"count", "max_model_len", "tokens", "token_strs"}``;
``/detokenize`` takes ``tokens`` and answers ``{"prompt"}``. Only models served here have a tokenizer to ask.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from pydantic import Field, model_validator

from ..finops.refusals import UnknownModel
from .errors import to_openai
from .guard import read_body
from .logprob_format import token_texts
from .prompts import chat_prompt, check_ids, text_ids
from .protocol import ChatMessage, OpenAIError, _Req
from .state import ServedModel

MAX_DETOKENIZE = 1 << 20  # token ids in one /detokenize request


class TokenizeRequest(_Req):
    prompt: str | None = Field(None, description="a text to tokenize (or messages)")
    messages: list[ChatMessage] | None = Field(None, description="a conversation, through the chat template")
    add_special_tokens: bool = Field(True, description="prompt: add the tokenizer's special tokens")
    add_generation_prompt: bool = Field(True, description="messages: end ready for the assistant's turn")
    return_token_strs: bool = Field(False, description="also each token's text")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Req):
    tokens: list[Annotated[int, Field(ge=0)]] = Field(..., max_length=MAX_DETOKENIZE)


def _served(request: Request, name: str) -> ServedModel:
    state = request.app.state
    if name in state.served:
        return state.served[name]
    if name in state.upstreams:
        raise OpenAIError(400, f"model {name!r} is forwarded to an upstream engine: ask it for its tokens",
                          param="model", code="invalid_value")
    raise to_openai(UnknownModel(name, [*state.served, *state.upstreams]))


async def tokenize(request: Request) -> dict:
    req = await read_body(request, TokenizeRequest)
    s = _served(request, req.model)
    tok = s.model.tokenizer
    if req.messages is not None:
        ids = chat_prompt(s, req.messages, generation_prompt=req.add_generation_prompt)
    elif req.add_special_tokens:
        ids = text_ids(tok, req.prompt)
    else:
        ids = list(tok(req.prompt, add_special_tokens=False)["input_ids"])
    texts = token_texts(tok)
    return {"count": len(ids), "max_model_len": s.model.max_seq_length, "tokens": ids,
            "token_strs": [texts(t) for t in ids] if req.return_token_strs else None}


async def detokenize(request: Request) -> dict:
    req = await read_body(request, DetokenizeRequest)
    s = _served(request, req.model)
    ids = check_ids(s, req.tokens, "tokens")
    return {"prompt": s.model.tokenizer.decode(ids)}
