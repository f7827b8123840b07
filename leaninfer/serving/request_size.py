"""The cheap size check every request passes on the event loop, before any tokenizing.

Counting characters and items is a walk over the parsed body, microseconds even at the body cap, so it can
run on the event loop; it bounds what the costly steps (tokenizing, the model, encoding the answer) may be
given. Limits are server options (``--max-request-chars``, ``--max-request-items``); an over-limit request is a
4xx that names the limit and the value.
"""

from __future__ import annotations

import json

from .protocol import ChatMessage, OpenAIError, Tool


def text_size(value) -> tuple[int, int]:
    """(characters, items) of an ``input`` or ``prompt``: a string, strings, ids or lists of ids.

    A token id counts as one character: a list of ids costs a check per id, as a string costs a token per
    few characters. Items are the list's entries (one for a single string or a single list of ids).

    >>> text_size(["ab", "cde"]), text_size("abc"), text_size([[1, 2], [3]]), text_size([5, 6, 7])
    ((5, 2), (3, 1), (3, 2), (3, 1))
    """
    if isinstance(value, str):
        return len(value), 1
    if value and isinstance(value[0], int):
        return len(value), 1
    return sum(len(x) for x in value), len(value)


def messages_size(messages: list[ChatMessage], tools: list[Tool] | None = None) -> tuple[int, int]:
    """(characters, items) of a chat: the text of every message (its tool calls too) and of the tools'
    definitions, and the number of messages."""
    chars = sum(len(m.text()) + len(m.extra_text()) for m in messages)
    if tools:
        chars += len(json.dumps([t.model_dump(exclude_none=True) for t in tools]))
    return chars, len(messages)


def check_size(chars: int, items: int, param: str, max_chars: int, max_items: int) -> None:
    """Refuse a request over ``--max-request-chars`` (413) or ``--max-request-items`` (400)."""
    if items > max_items:
        what = "messages" if param == "messages" else "inputs"
        raise OpenAIError(400, f"{items} {what} in one request; at most {max_items} (--max-request-items)",
                          param=param, code=f"too_many_{what}")
    if chars > max_chars:
        raise OpenAIError(413, f"{param} holds {chars} characters; at most {max_chars} per request "
                               "(--max-request-chars)", param=param, code="request_too_large")
