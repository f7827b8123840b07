"""Request inputs -> token ids, checked against the served model (vocabulary, context length, one prompt).

The routes call these on the event loop for small requests and in a worker thread for big ones (see
``routes.off_loop_if``), so the engine thread only pads, runs and samples. Every refusal is a 400 naming
the parameter.
"""

from __future__ import annotations

import weakref

from tokenizers import Tokenizer

from ..models.tool_calls import renders_tools, template_messages
from .protocol import ChatMessage, OpenAIError
from .state import ServedModel
from .tools import ToolPlan

MAX_EMBED_INPUTS = 2048

# tokenizer -> a private copy of its Rust tokenizer, or None (a tokenizer without one)
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def text_ids(tokenizer, text: str) -> list[int]:
    """``tokenizer(text)["input_ids"]``, through a private copy of the fast tokenizer's Rust backend when it has
    one: the same ids (special tokens added, no truncation, no padding) for about half the CPU (the
    transformers wrapper sets and resets the backend's truncation and padding on every call), which is work
    the event loop does for every embeddings request. A copy, because the wrapper mutates the shared
    backend's settings per call, from whichever thread calls it."""
    enc = _ENCODERS.get(tokenizer, False)
    if enc is False:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            enc = Tokenizer.from_str(backend.to_str())
            enc.no_truncation()
            enc.no_padding()
        else:
            enc = None
        _ENCODERS[tokenizer] = enc
    if enc is None:
        return list(tokenizer(text)["input_ids"])
    return enc.encode(text).ids


def _vocab_size(s: ServedModel) -> int:
    # The smaller of the two: an id past the model's embedding table fails in the model (a 500 for the whole
    # batch), and one past the tokenizer (a padded embedding table) can't be turned into text or echoed.
    model_vocab = getattr(s.model.config, "vocab_size", None) or len(s.model.tokenizer)
    return min(len(s.model.tokenizer), model_vocab)


def check_ids(s: ServedModel, ids: list[int], param: str) -> list[int]:
    vocab = _vocab_size(s)
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise OpenAIError(400, f"{param}: token id {bad} is outside the vocabulary [0, {vocab})", param=param,
                          code="invalid_value")
    return list(ids)


def logit_bias(s: ServedModel, bias: dict[int, float] | None) -> dict[int, float]:
    """``logit_bias`` with every token id checked against the vocabulary (the sampler indexes logits by it)."""
    return dict(zip(check_ids(s, list(bias or {}), "logit_bias"), (bias or {}).values(), strict=True))


def embed_tokens(s: ServedModel, inp: str | list) -> list[list[int]]:
    """Token ids of each input of an embeddings request (a string, strings, ids, or lists of ids)."""
    if isinstance(inp, str):
        inp = [inp]
    if len(inp) > MAX_EMBED_INPUTS:
        raise OpenAIError(400, f"{len(inp)} inputs in one request; at most {MAX_EMBED_INPUTS}", param="input",
                          code="too_many_inputs")
    if isinstance(inp[0], int):
        inp = [inp]
    limit = s.model.max_seq_length
    out = []
    for i, x in enumerate(inp):
        ids = check_ids(s, x, "input") if isinstance(x, list) else text_ids(s.model.tokenizer, x)
        if len(ids) > limit:
            raise OpenAIError(400, f"input[{i}] has {len(ids)} tokens; model {s.name!r} takes at most {limit}",
                              param="input", code="context_length_exceeded")
        out.append(list(ids))
    return out


def completion_prompt(s: ServedModel, prompt: str | list) -> list[int]:
    """Token ids of a completions prompt: one string or one list of ids (several prompts are refused)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise OpenAIError(400, f"{len(prompt)} prompts in one request; send one prompt per request",
                              param="prompt", code="invalid_value")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt:
            raise OpenAIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        return check_ids(s, prompt, "prompt")
    ids = s.model.tokenizer(prompt)["input_ids"]
    if not ids:  # an empty string on a tokenizer without special tokens: start from BOS/EOS
        bos = s.model.tokenizer.bos_token_id
        ids = [bos if bos is not None else (s.model.eos_token_id or 0)]
    return list(ids)


def echo_text(s: ServedModel, prompt: str | list, ids: list[int]) -> str:
    """What ``echo`` puts ahead of a completion: the prompt string as sent, or its token ids decoded."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else s.model.tokenizer.decode(ids)


def chat_prompt(s: ServedModel, messages: list[ChatMessage], tools: ToolPlan | None = None,
                generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation through the model's own chat template, ready for the assistant's turn (or
    not: ``generation_prompt``), with the request's tools where they are in play (:mod:`.tools`)."""
    tok = s.model.tokenizer
    msgs = template_messages(messages, with_tools=renders_tools(tok))
    note = tools.system_note() if tools is not None else None
    if note:
        msgs = [{"role": "system", "content": note}, *msgs]
    kw = {"tools": tools.template_tools()} if tools is not None and tools.template_tools() else {}
    try:
        text = tok.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False, **kw)
    except Exception as e:  # a template that refuses this conversation (e.g. roles out of order)
        raise OpenAIError(400, f"the model's chat template rejected the messages: {e}", param="messages",
                          code="invalid_value") from None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return list(ids) or [tok.bos_token_id or 0]
